"""The evaluation report: one self-contained HTML page (inline SVG plots, no scripts, no network)."""

from __future__ import annotations

import html
import json

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def _esc(x) -> str:
    return html.escape(str(x))


def line_chart(title: str, xs: list[int], series: dict[str, list[float]], y_label: str, w: int = 560, h: int = 300) -> str:
    """One line per method over k."""
    left, right, top, bottom = 50, 170, 30, 40
    pw, ph = w - left - right, h - top - bottom
    ymax = max([v for vals in series.values() for v in vals] + [1e-9]) * 1.1
    def px(i: int) -> float:
        return left + (pw * i / max(len(xs) - 1, 1))
    def py(v: float) -> float:
        return top + ph * (1 - v / ymax)
    out = [f'<svg width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">',
           f'<text x="{left}" y="18" font-weight="bold">{_esc(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>']
    for t in range(5):
        v = ymax * t / 4
        out.append(f'<text x="{left - 5}" y="{py(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3f}</text>')
    for i, x in enumerate(xs):
        out.append(f'<text x="{px(i):.1f}" y="{top + ph + 15}" text-anchor="middle" font-size="11">{x}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 5}" text-anchor="middle" font-size="11">k</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" font-size="11" transform="rotate(-90 12 {top + ph / 2})" '
               f'text-anchor="middle">{_esc(y_label)}</text>')
    for n, (name, vals) in enumerate(series.items()):
        c = COLORS[n % len(COLORS)]
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{c}"/>' for i, v in enumerate(vals)]
        out.append(f'<rect x="{left + pw + 10}" y="{top + 14 * n}" width="10" height="10" fill="{c}"/>'
                   f'<text x="{left + pw + 24}" y="{top + 14 * n + 9}" font-size="11">{_esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(title: str, values: dict[str, float], fmt: str = "{:.3f}", w: int = 560, bar_h: int = 18,
              log: bool = False) -> str:
    import math

    left, top = 200, 28
    h = top + bar_h * len(values) + 10
    vmax = max(list(values.values()) + [1e-9])
    span = w - left - 70
    def length(v: float) -> float:
        if log:
            return span * math.log10(1 + v) / math.log10(1 + vmax)
        return span * v / vmax
    out = [f'<svg width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">',
           f'<text x="0" y="16" font-weight="bold">{_esc(title)}</text>']
    for n, (name, v) in enumerate(values.items()):
        y = top + n * bar_h
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" font-size="11">{_esc(name)}</text>'
                   f'<rect x="{left}" y="{y + 2}" width="{max(length(v), 0.5):.1f}" height="{bar_h - 5}" '
                   f'fill="{COLORS[n % len(COLORS)]}"/>'
                   f'<text x="{left + length(v) + 4:.1f}" y="{y + 12}" font-size="11">{_esc(fmt.format(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def latency_chart(title: str, lat: dict[str, dict[str, float]], w: int = 560) -> str:
    """p50 / p95 / p99 per method, log scale (ms)."""
    import math

    left, top, row = 200, 28, 30
    h = top + row * len(lat) + 30
    vmax = max([d.get("p99", 0.0) for d in lat.values()] + [1.0])
    span = w - left - 20
    def x(v: float) -> float:
        return left + span * math.log10(1 + v) / math.log10(1 + vmax)
    out = [f'<svg width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">',
           f'<text x="0" y="16" font-weight="bold">{_esc(title)}</text>']
    for n, (name, d) in enumerate(lat.items()):
        y = top + n * row + 10
        c = COLORS[n % len(COLORS)]
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="11">{_esc(name)}</text>'
                   f'<line x1="{x(d["p50"]):.1f}" y1="{y}" x2="{x(d["p99"]):.1f}" y2="{y}" stroke="{c}" stroke-width="2"/>'
                   f'<rect x="{x(d["p50"]) - 3:.1f}" y="{y - 6}" width="6" height="12" fill="{c}"/>'
                   f'<line x1="{x(d["p95"]):.1f}" y1="{y - 5}" x2="{x(d["p95"]):.1f}" y2="{y + 5}" stroke="{c}"/>'
                   f'<text x="{x(d["p99"]) + 4:.1f}" y="{y + 4}" font-size="10">p50 {d["p50"]:.2f} / p99 {d["p99"]:.2f} ms</text>')
    for v in (0.1, 1, 10, 100, 1000):
        if v <= vmax:
            out.append(f'<text x="{x(v):.1f}" y="{h - 5}" font-size="10" text-anchor="middle">{v:g} ms</text>')
    out.append("</svg>")
    return "".join(out)


def table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{_esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _with_ci(methods: list[dict], key: str) -> list[dict]:
    return [m | ({f"{key} 95% CI": f"{m['ci95'][key][0]:.4f} to {m['ci95'][key][1]:.4f}"} if key in m.get("ci95", {})
                 else {}) for m in methods]


def _verdict(v: dict | None) -> str:
    if not v or "paired_difference_ci95" not in v:
        return ""
    lo, hi = v["paired_difference_ci95"]
    word = "beats" if v["full_beats_strongest_baseline"] else "does not beat"
    return (f"<p>Full system {v['full_system']:.4f} vs the strongest baseline ({_esc(v['strongest_baseline'])}) "
            f"{v['strongest_baseline_value']:.4f}: paired difference {v['paired_difference']:+.4f}, 95% CI "
            f"[{lo:+.4f}, {hi:+.4f}] (bootstrap over requests or queries): it {word} it."
            + (f" <strong>{_esc(v['note'])}.</strong>" if v.get("note") else "") + "</p>")


def render(result: dict) -> str:
    """The HTML page of an evaluation result (jobs/evaluate.py's metrics.json)."""
    parts = [f"<h1>intently evaluation {_esc(result.get('run', ''))}</h1>",
             f"<p>{_esc(result.get('summary', ''))}</p>"]
    rec = result.get("recommend")
    if rec:
        ks = rec["ks"]
        methods = rec["methods"]
        at = f" (at {rec['split_at']}" + (", shortened to fit the log: see the notes" if rec.get("split_adapted")
                                          else "") + ")" if rec.get("split_at") and not rec["split"].startswith("time:") else ""
        parts.append(f"<h2>Recommendation: {_esc(rec['dataset'])}, split {_esc(rec['split'] + at)}</h2>")
        parts.append(f"<p>{rec['requests']} test requests ({rec['dropped']} dropped without a relevant item), "
                     f"{rec['catalog_items']} catalog items, full-catalog ranking, top {max(ks)} per method. "
                     f"{_esc(rec.get('protocol', ''))}</p>")
        key = "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
        cols = ["method"] + [f"ndcg@{k}" for k in ks] + [f"{key} 95% CI"] + [f"hit_rate@{k}" for k in ks] + \
               [f"recall@{k}" for k in ks] + ["mrr", f"precision@{ks[0]}", f"f1@{ks[0]}", f"coverage@{ks[0]}",
                                                f"diversity@{ks[0]}", f"novelty@{ks[0]}"]
        if rec.get("skipped"):
            parts.append(f"<p>Next basket skipped: {_esc(rec['skipped'])}</p>")
        parts.append(table(_with_ci(methods, key), cols))
        parts.append(_verdict(rec.get("verdict")))
        parts.append(table([{"method": m["method"], **{f"latency {q} ms": m["latency_ms"][q] for q in ("p50", "p95", "p99")}}
                            for m in methods], ["method", "latency p50 ms", "latency p95 ms", "latency p99 ms"]))
        for metric in ("ndcg", "hit_rate", "recall"):
            parts.append(line_chart(f"{metric}@k", ks, {m["method"]: [m[f"{metric}@{k}"] for k in ks] for m in methods}, metric))
        ins = rec.get("in_session") or {}
        if ins.get("skipped"):
            parts.append(f"<h3>In session: skipped</h3><p>{_esc(ins['skipped'])}</p>")
        elif ins.get("methods"):
            parts.append(f"<h3>In session: the rest of the basket given its first half ({ins['requests']} requests)</h3>")
            parts.append(table(_with_ci(ins["methods"], key), ["method"] + [f"ndcg@{k}" for k in ks] + [f"{key} 95% CI"]
                               + [f"hit_rate@{k}" for k in ks] + ["mrr"]))
            parts.append(_verdict(ins.get("verdict")))
            parts.append(line_chart("in session: ndcg@k", ks, {m["method"]: [m[f"ndcg@{k}"] for k in ks] for m in ins["methods"]}, "ndcg"))
        parts.append(bar_chart(f"catalog coverage@{ks[0]}", {m["method"]: m[f"coverage@{ks[0]}"] for m in methods}))
        parts.append(latency_chart("latency per request (in process)", {m["method"]: m["latency_ms"] for m in methods}))
    srch = result.get("search")
    if srch:
        ks = srch["ks"]
        parts.append(f"<h2>Search relevance: {_esc(srch['dataset'])}</h2>")
        parts.append(f"<p>{srch['queries']} queries, {srch['judgments']} judgments, {srch['catalog_items']} items; "
                     f"{_esc(srch.get('protocol', ''))}</p>")
        if srch.get("judgments_from"):
            parts.append(f"<p>Judgments: {_esc(srch['judgments_from'])}.</p>")
        if srch.get("judgments_left_out"):
            parts.append(f"<p>{_esc(srch['judgments_left_out'])}.</p>")
        for setting in ("rerank", "full_catalog"):
            rows = srch[setting]
            parts.append(f"<h3>{'re-ranking the judged items' if setting == 'rerank' else 'retrieving from the whole catalog'}</h3>")
            key = "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
            parts.append(table(_with_ci(rows, key), ["method"] + [f"ndcg@{k}" for k in ks] + [f"{key} 95% CI"]))
            if setting == "rerank" and srch.get("rerank_note"):
                parts.append(f"<p>{_esc(srch['rerank_note'])}.</p>")
            parts.append(_verdict(srch.get("verdict", {}).get(setting)))
            parts.append(line_chart(f"nDCG@k ({setting})", ks, {m["method"]: [m[f"ndcg@{k}"] for k in ks] for m in rows}, "nDCG"))
        if srch.get("latency"):
            parts.append(latency_chart("search latency per query (in process)", srch["latency"]))
    if result.get("search_skipped"):
        parts.append(f"<h2>Search relevance</h2><p>{_esc(result['search_skipped'])}</p>")
    if result.get("ranker"):
        imp = result["ranker"].get("importances", {})
        if imp:
            parts.append("<h2>Learned ranker</h2>")
            parts.append(bar_chart("feature importance (gain share)", {k: v["gain_share"] for k, v in imp.items()}))
    parts.append("<h2>Raw result</h2><pre>" + _esc(json.dumps(result, indent=1)[:200_000]) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}svg{display:block;margin:1em 0}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto;max-height:400px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>intently evaluation</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
