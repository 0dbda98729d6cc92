"""The ranking features: name -> what it is, in the column order of every feature matrix
(features/retrieval/ranking.py's `candidate_features` computes them; a learned ranker stores the
names it was trained on)."""

from __future__ import annotations

# name -> what it is (all in [0, 1] except the cosines, which are in [-1, 1])
FEATURES: dict[str, str] = {
    "query_sim": "cosine(query embedding, item embedding); 0 without a query",
    "query_sim_gap": "the best query_sim among the candidates minus this one's (query difficulty factored out)",
    "lexical": "BM25 score of the query against the item text / the best BM25 score among the candidates",
    "intent_sim": "alpha * cosine(session intent, item); alpha = how fresh the session is",
    "session_alpha": "alpha itself (0: no recent session, alpha_max: an event just now)",
    "pref_sim": "(1 - alpha) * cosine(long-term preference, item): the two mix as in the user vector",
    "context_sim": "cosine(context item, item); 0 without a context item",
    "cooc": "co-occurrence with the context item and the last 10 items, discounted 0.85 per step back, capped at 1",
    "popularity": "log1p(7-day decayed popularity) / the catalog maximum",
    "popularity_1d": "the same with a 1-day half-life: what sells today (trend against the 30-day one)",
    "popularity_30d": "the same with a 30-day half-life",
    "category_affinity": "the shopper's decayed share of interactions in the item's category",
    "price_affinity": "exp(-z^2 / 2), z = distance of log1p(price) from the shopper's usual, in std units",
    "seen_before": "1 when the item is among the shopper's recent items",
    "title_match": "share of the query's distinct tokens found in the item's title; 0 without a query",
    "text_match": "share of the query's distinct tokens found anywhere in the item's text; 0 without a query",
    "seq_score": "the behaviour model's score (user . item) minus the best among the candidates (<= 0); "
                 "-1 without a model or a history",
    "seq_rank": "rank by the behaviour model's score among the candidates / their number (0: best); 1 without",
    "category_recency": "exp(-days since the shopper's newest recent interaction in the item's category / 7); "
                        "0 without one",
    "dense_rank": "1 / log2(2 + the candidate's rank by query_sim, best 0): the dense retriever's list position; "
                  "0 without a query",
    "lexical_rank": "1 / log2(2 + its rank by BM25 among the items with a match): the lexical list position; "
                    "0 without a match",
    "ease": "EASE score (item-to-item regression, features/data/ease.py) from the shopper's recent and purchased "
            "items / the best among the candidates (0 for the others and without a history)",
    "item_age": "exp(-days since the item's first interaction in the features version / 30): 1 for an item new "
                "in the shop (first interacted with just now, or never), towards 0 for long-standing ones",
    "history_max_sim": "the largest cosine(item, one of the shopper's recent items other than itself): the nearest "
                       "thing they had; 0 without a history",
    "als": "ALS score (matrix factorisation, features/data/als.py: the shopper vector solved from their recent "
           "and purchased items) minus the best among the candidates (<= 0); 0 without a history the fit knows",
    "als_rank": "rank by the ALS score among the candidates / their number (0: best); 1 without",
    "head_match": "1 when the query's head term is the item title's (what each names: the last term of its first "
                  "phrase, features/retrieval/lexical.py's Analyzer.head; 'coffee cup' names a cup, '12-Cup Coffee "
                  "Maker with Timer' a maker); 0 otherwise and without a query",
    "phrase_match": "share of the query's adjacent term pairs found adjacent, in the same order, in the item's title "
                    "('coffee cup' in 'Coffee Cup Set', not in '12-Cup Coffee Maker'); 0 for a one-term query and "
                    "without a query",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
