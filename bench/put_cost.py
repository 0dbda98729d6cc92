"""What a catalog write costs through the API: a price change against a new text, same server, same run.

    python -m bench.put_cost [--url http://127.0.0.1:8000] [--items 50] [--rounds 3]
                             [--out bench/results/put_cost.json]

Needs a running app (`make demo` or `make serve`) and, when the server has one, its write key in
INTENTLY_API_KEY. A shop keeps serving's catalog current with `PUT /v1/items/{id}`: mostly price
and stock changes, now and then a new title. A write whose text is new is encoded (the QueryEncoder
deployment) before it is logged; one whose text is the item's already reuses the item's vector and
is not encoded. The bench creates `--items` items with a title and a description, then in each of
`--rounds` rounds changes every item's price only (the text as it is), then every item's title,
one request at a time, and reports p50 / p90 of each kind and their ratio. The new-title writes
take the path every write took before writes with an unchanged text skipped the encoder, so their
time is that baseline, measured in the same run. The items are left in the catalog under
`bench-put-<n>`; `DELETE /v1/items/{id}` removes them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.feature_job import RESULTS, machine, write_result
from features.artifacts import git_commit

DESCRIPTION = "A sturdy enamel mug for camping and the kitchen, with a lid that keeps the heat in."


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))], 2)


def run(url: str, items: int, rounds: int, key: str | None) -> dict:
    import requests

    s = requests.Session()
    if key:
        s.headers["X-API-Key"] = key

    def put(i: int, title: str, price: float) -> float:
        t0 = time.perf_counter()
        r = s.put(f"{url}/v1/items/bench-put-{i}", json={"title": title, "description": DESCRIPTION, "price": price},
                  timeout=30)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"PUT bench-put-{i}: HTTP {r.status_code} {r.text[:200]}")
        return (time.perf_counter() - t0) * 1e3

    titles = {i: f"ENAMEL MUG WITH LID no {i}" for i in range(items)}
    for i in range(items):
        put(i, titles[i], 3.0)
    price_only, new_text = [], []
    for rnd in range(rounds):
        price_only += [put(i, titles[i], 4.0 + rnd) for i in range(items)]
        titles = {i: f"ENAMEL MUG WITH LID no {i} v{rnd}" for i in range(items)}
        new_text += [put(i, titles[i], 4.0 + rnd) for i in range(items)]
        print(f"round {rnd + 1}: price only p50 {statistics.median(price_only[-items:]):.1f} ms, new title p50 "
              f"{statistics.median(new_text[-items:]):.1f} ms", flush=True)
    health = s.get(f"{url}/healthz", timeout=30).json()
    p50_new, p50_same = statistics.median(new_text), statistics.median(price_only)
    return {"writes_each": len(price_only),
            "price_only": {"p50_ms": round(p50_same, 2), "p90_ms": _pct(price_only, 0.9)},
            "new_title": {"p50_ms": round(p50_new, 2), "p90_ms": _pct(new_text, 0.9)},
            "p50_ratio": round(p50_new / max(p50_same, 1e-9), 2),
            "server_versions": health.get("versions"), "server_retriever": health.get("retriever")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "put_cost.json"))
    a = ap.parse_args(argv)
    if a.items < 1 or a.rounds < 1:
        ap.error("--items and --rounds: >= 1")
    result = {"benchmark": "put_cost", "commit": git_commit(), "machine": machine(), "url": a.url,
              "items": a.items, "rounds": a.rounds,
              **run(a.url.rstrip("/"), a.items, a.rounds, os.environ.get("INTENTLY_API_KEY"))}
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
