"""A ranked item's reasons: short human texts for its largest per-feature contributions.

The hand-set scorer's contributions are weight x feature, a learned ranker's are TreeSHAP values
(features/retrieval/ranking.py's scorers); the largest positive ones above a floor become the
result's `reasons` ("matches \"red mug\"", "because you viewed WHITE MUG", "popular this week").
Every feature a shopper could recognise has a text, so an item is not left unexplained because
the model leaned on, say, the behaviour model's score or a recent view of the item itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from features.retrieval.catalog import Catalog
from features.retrieval.feature_names import FEATURE_NAMES

if TYPE_CHECKING:
    from features.retrieval.ranking import RankContext

RECENT_FOR_COOC = 10  # co-occurrence reads the context item and the shopper's last 10 items
OFTEN = 3  # "you often shop X" needs this many of the shopper's recent items in X (one view is not "often")
VERB = {"view": "viewed", "click": "clicked", "add_to_cart": "added to cart", "purchase": "bought", "return": "returned"}
# The reasons that name an item of the shopper's history (bench/serve_latency.py's freshness check reads them);
# what other shoppers did is said with the log's main kind of interaction (Catalog.main_interaction)
BECAUSE = "because you {verb} {title}"
OFTEN_WITH = {"purchase": "often bought with {title}", "add_to_cart": "often added to cart with {title}",
              "click": "often clicked with {title}", "view": "often viewed with {title}"}
TOGETHER = {"purchase": "shoppers who bought {title} buy it too",
            "add_to_cart": "shoppers who added {title} to their cart add it too",
            "click": "shoppers who clicked {title} click it too", "view": "shoppers who viewed {title} view it too"}
LIKED = {"purchase": "popular with shoppers who bought {title}",
         "add_to_cart": "popular with shoppers who added {title} to their cart",
         "click": "popular with shoppers who clicked {title}", "view": "popular with shoppers who viewed {title}"}
SEEN = {"view": "you viewed it recently", "click": "you clicked it recently",
        "add_to_cart": "you added it to your cart recently", "purchase": "you bought it before"}

_NAMING = re.compile("^(?:" + "|".join(t.replace("{verb}", "(?:" + "|".join(VERB.values()) + ")").replace("{title}", "(.+)")
                                        for t in (BECAUSE, *OFTEN_WITH.values(), *TOGETHER.values(), *LIKED.values()))
                     + ")$")
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
_LIKENESS = frozenset({"intent_sim", "pref_sim", "context_sim", "history_max_sim"})  # text vectors' similarity
_QUERY = frozenset({"query_sim", "query_sim_gap", "lexical", "title_match", "text_match", "dense_rank", "lexical_rank",
                    "head_match", "phrase_match"})
_FIXED = {"pref_sim": "matches your long-term taste", "popularity": "popular this week",
          "popularity_1d": "trending today", "popularity_30d": "popular this month",
          "price_affinity": "in your usual price range",
          "seq_score": "fits your recent shopping", "seq_rank": "fits your recent shopping"}


def reasons(ctx: RankContext, row: int, contrib: np.ndarray, catalog: Catalog, values: np.ndarray | None = None,
            max_reasons: int = 2, min_contribution: float = 0.05) -> list[str]:
    """Short human reasons for one candidate from its (F,) contributions, largest first. `values`:
    its (F,) features, so that a signal it lacks is never named (below)."""
    out: list[str] = []
    for f in np.argsort(-contrib, kind="stable"):
        if len(out) >= max_reasons or contrib[f] < min_contribution:
            break
        if values is not None and not _present(FEATURE_NAMES[f], ctx, values, catalog):
            continue
        text = _text(FEATURE_NAMES[f], ctx, row, catalog)
        if text and text not in out and not (_names(text) and _names(text) in map(_names, out)):
            out.append(text)  # (a second reason naming the same history item says nothing new)
    return out


def _names(text: str) -> str | None:
    """The history item's title a reason names ("often bought with MUG" -> "MUG"), else None."""
    m = _NAMING.match(text)
    return next((g for g in m.groups() if g), None) if m else None


def _present(name: str, ctx: RankContext, values: np.ndarray, catalog: Catalog) -> bool:
    """Whether the candidate has the signal a reason would name (`values`: its features). A learned
    ranker's TreeSHAP value can be positive for a signal's absence (a shopper without a history has
    no behaviour-model score, which the trees split on): that must not read "fits your recent
    shopping" or "matches your long-term taste" to someone with no shopping at all. "Popular" (this
    week, this month, trending today) needs the item among the catalog's top 5% by that measure
    (Catalog.popular_floor), and "trending today" a rise as well: the item stands higher among
    today's sales than among the month's (a steady best seller is popular, not trending). A query
    reason needs the query and "new in the shop" the item's age; both are checked by the text itself."""
    if name in _QUERY or name == "item_age":
        return True
    if name in ("seq_score", "seq_rank"):  # -1 / 1 without a user vector; the top item's score is 0
        return ctx.seq_vector is not None
    if name in ("als", "als_rank"):  # 0 / 1 without a shopper vector; the top item's score is 0
        return float(values[_COL["als_rank"]]) < 1.0
    value = float(values[_COL[name]])
    if name in catalog.popular_floor and value < catalog.popular_floor[name]:
        return False
    if name == "popularity_1d":
        return value > float(values[_COL["popularity_30d"]])
    return value > 0.0


def _text(name: str, ctx: RankContext, row: int, catalog: Catalog) -> str | None:
    if name in _LIKENESS and not catalog.has_text:
        return None  # ids without words: how alike their vectors are explains nothing (Catalog.has_text)
    if name in _QUERY:
        return f'matches "{ctx.query}"' if ctx.query else None
    if name in _FIXED:
        return _FIXED[name]
    category = raw_category = catalog.category[row]
    if name == "intent_sim":
        return _because(ctx, catalog.vectors[row], catalog)
    if name == "context_sim" and ctx.context_item in catalog.row:
        return f"similar to {catalog.title[catalog.row[ctx.context_item]]}"
    if name == "cooc":
        return _often_with(ctx, catalog.item_ids[row], catalog)
    if name == "ease":
        return _bought_together(ctx, row, catalog)
    if name in ("als", "als_rank"):
        return _liked_by(ctx, row, catalog)
    if name == "history_max_sim":
        return _like_before(ctx, row, catalog)
    if name == "seen_before":
        return next((SEEN.get(t) for i, t in ctx.recent_items if i == catalog.item_ids[row]), None)
    if name == "item_age" and catalog.item_age(np.array([row]), ctx.now)[0] >= 0.5:  # first seen < 3 weeks ago
        return "new in the shop"
    if category and not any(ch.isalpha() for ch in category):  # a catalog's category ids (RetailRocket's 1338)
        category = f"category {category}"
    if name == "category_affinity" and category:
        n = sum(1 for i, _ in ctx.recent_items if i in catalog.row and catalog.category[catalog.row[i]] == raw_category)
        return f"you often shop {category}" if n >= OFTEN else f"you shopped {category} before"
    if name == "category_recency" and category:
        return f"you recently shopped {category}"
    return None


def _because(ctx: RankContext, vec: np.ndarray, catalog: Catalog) -> str | None:
    """The session event that contributes most to cos(intent, item): argmax of weight * (v . item)
    over the intent's sources (the intent is their decayed weighted sum)."""
    best, best_text = 0.0, None
    for etype, ref, src_vec, w in ctx.intent_sources:
        if etype == "search":
            share = w * float(src_vec @ vec)
            text = f'because you searched "{ref}"'
        elif ref in catalog.row:
            share = w * float(catalog.vectors[catalog.row[ref]] @ vec)
            text = BECAUSE.format(verb=VERB.get(etype, "viewed"), title=catalog.title[catalog.row[ref]])
        else:
            continue
        if share > best:
            best, best_text = share, text
    return best_text


def _like_before(ctx: RankContext, row: int, catalog: Catalog) -> str | None:
    """The shopper's recent item nearest to `row` (what the "history_max_sim" feature reads)."""
    near = int(catalog.nearest(np.array([row]), ctx.history_rows(catalog))[1][0])
    etype = next((t for i, t in ctx.recent_items if near >= 0 and i == catalog.item_ids[near]), None)
    return None if etype is None else BECAUSE.format(verb=VERB.get(etype, "viewed"), title=catalog.title[near])


def _bought_together(ctx: RankContext, row: int, catalog: Catalog) -> str | None:
    """The history item with the largest EASE weight to `row` (what the "ease" feature sums)."""
    src = catalog.ease.strongest(ctx.ease_history(catalog), row)
    return None if src is None else TOGETHER[catalog.main_interaction].format(title=catalog.title[src])


def _liked_by(ctx: RankContext, row: int, catalog: Catalog) -> str | None:
    """The history item that adds most to `row`'s ALS score (what the "als" feature reads), named;
    "shoppers like you" when none adds to it alone."""
    src = catalog.als.strongest(ctx.ease_history(catalog), row)
    return "popular with shoppers like you" if src is None else LIKED[catalog.main_interaction].format(title=catalog.title[src])


def _often_with(ctx: RankContext, item_id: str, catalog: Catalog) -> str | None:
    sources = ([ctx.context_item] if ctx.context_item else []) + [i for i, _ in ctx.recent_items[:RECENT_FOR_COOC]]
    for src in sources:
        nbrs = catalog.cooc.get(src)
        if nbrs is not None and item_id in nbrs[0] and src in catalog.row:
            return OFTEN_WITH[catalog.main_interaction].format(title=catalog.title[catalog.row[src]])
    return None
