"""BM25, live retrieval with upserts and filters, the ranking feature function, reasons and MMR."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from features.data import schema as S
from features.retrieval.catalog import ItemUpdate
from features.retrieval.diversity import mmr
from features.retrieval.index import brute_force
from features.retrieval.lexical import BM25, Analyzer, tokenize
from features.retrieval.live import Filters, LiveCatalog, RetrievalConfig
from features.retrieval.ranking import (
    FEATURE_NAMES,
    HandWeights,
    RankContext,
    candidate_features,
    context_for,
    rank_candidates,
)
from tests.helpers import D, small_catalog


# --- BM25 --------------------------------------------------------------------------------------
def test_tokenize_stems_with_snowball_and_none_keeps_a_plural_fold():
    assert tokenize("Lunch BAGS, boxes & glass") == ["lunch", "bag", "box", "glass"]
    assert tokenize("Running Lights") == ["run", "light"]
    assert Analyzer("none").tokens("Running Lights boxes") == ["running", "light", "box"]
    with pytest.raises(ValueError, match="retriever.stemmer: 'klingon'; allowed: 'none', .*'english'"):
        Analyzer("klingon")
    with pytest.raises(ValueError, match="retriever.stemmer"):
        RetrievalConfig(stemmer="klingon")
    with pytest.raises(ValueError, match="retriever.field_weights: unknown field.*'colour'.*allowed: title, brand"):
        RetrievalConfig(field_weights={"title": 2.0, "colour": 1.0})
    with pytest.raises(ValueError, match="weights must be > 0"):
        BM25(fields={"title": 0.0})


def test_candidate_counts_are_checked_naming_the_setting():
    # A negative source size used to be accepted, and EASE's [:-1] then kept all its candidates but one.
    with pytest.raises(ValueError, match=r"retriever.ease_candidates: -1; allowed: >= 0 \(0: none\)"):
        RetrievalConfig(ease_candidates=-1)
    for name in ("cooc_candidates", "popular_candidates", "sequence_candidates"):
        with pytest.raises(ValueError, match=f"retriever.{name}: -5"):
            RetrievalConfig(**{name: -5})
    with pytest.raises(ValueError, match="retriever.num_candidates: 0; allowed: >= 1"):
        RetrievalConfig(num_candidates=0)
    assert RetrievalConfig(ease_candidates=0, cooc_candidates=0).ease_candidates == 0  # 0: that source adds none


def test_bm25f_weights_fields_and_normalises_each_on_its_own():
    docs = [{"title": "red mug", "description": "a mug for tea"},
            {"title": "tea pot", "description": "red glaze, matches the red mug"},
            {"title": "blue lamp", "description": None}]
    bm = BM25.build(docs, fields={"title": 2.0, "description": 1.0})
    s = bm.scores("red", 3)
    assert s[0] > s[1] > 0 and s[2] == 0  # once in a title beats twice in a description
    flat = BM25.build(docs, fields={"title": 1.0, "description": 1.0})
    assert flat.scores("red", 3)[1] > flat.scores("red", 3)[0]  # equal weights: the two mentions win
    # by hand: tf~ = sum_f w_f tf_f / (1 - b + b len_f / avg_f), saturated once
    avg_t, avg_d = 6 / 3, 10 / 3  # descriptions: 4 + 6 + 0 terms
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    tf1 = 1.0 * 2 / (0.25 + 0.75 * 6 / avg_d)
    assert flat.scores("red", 3)[1] == pytest.approx(idf * tf1 * 2.2 / (tf1 + 1.2))
    tf0 = 2.0 * 1 / (0.25 + 0.75 * 2 / avg_t)
    assert s[0] == pytest.approx(idf * tf0 * 2.2 / (tf0 + 1.2))
    bm.set_doc(0, {"title": "green mug"})  # re-indexing moves df and the field lengths
    assert bm.scores("red", 3)[0] == 0 and bm.scores("green", 3)[0] > 0


def test_typos_match_the_closest_catalog_word_and_known_words_are_never_changed():
    titles = ["angle bracket steel", "samsung galaxy case", "brake pads", "bracelet silver"]
    bm = BM25.build(titles)
    assert int(np.argmax(bm.scores("angle braket", 4))) == 0
    assert int(np.argmax(bm.scores("samsun case", 4))) == 1
    assert bm.query_terms("braket") == ["bracket", "brake"]  # every closest word (equally frequent: a-z)
    assert bm.query_terms("brake") == ["brake"]  # a word the catalog holds stays itself
    assert bm.query_terms("qz") == []  # too short to correct, not in the catalog: dropped
    assert bm.query_terms("xylophone") == []  # nothing within 2 edits
    assert bm.query_terms("xamsung") == []  # a correction keeps the first letter (Lucene's prefixLength 1)
    assert bm.scores("samsun", 4).max() > 0
    off = BM25.build(titles, typo_tolerance=False)
    assert off.scores("samsun", 4).max() == 0
    bm.set_doc(4, "samsun tv")  # the word now exists: it is matched as itself
    assert bm.query_terms("samsun") == ["samsun"]
    many = BM25.build(["brake"] * 3 + ["bracket"])
    assert many.query_terms("braket") == ["brake", "bracket"]  # most frequent first


def test_cjk_text_is_indexed_as_character_bigrams_so_partial_queries_match():
    assert tokenize("夏季新款连衣裙") == ["夏季", "季新", "新款", "款连", "连衣", "衣裙"]
    assert tokenize("iPhone手机壳 Cases") == ["iphon", "手机", "机壳", "case"]
    assert tokenize("裙") == ["裙"]
    titles = ["夏季新款连衣裙 女", "男士运动鞋", "不锈钢保温杯 500ml", "儿童连体衣", "手机壳 iPhone 15"]
    bm = BM25.build(titles)
    for query, want in (("连衣裙", 0), ("衣裙", 0), ("运动鞋", 1), ("保温杯", 2), ("手机壳", 4), ("保温", 2)):
        s = bm.scores(query, len(titles))
        assert int(np.argmax(s)) == want and s[want] > 0, (query, s)
    assert bm.scores("咖啡", len(titles)).max() == 0.0  # no shared bigram, no match


def test_bm25_matches_a_hand_computation():
    docs = ["red mug", "red red bag", "blue lamp"]
    bm = BM25.build(docs, k1=1.2, b=0.75)
    avg = 7 / 3
    idf_red = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def term(tf: int, dl: int) -> float:
        return idf_red * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avg))

    s = bm.scores("red", 3)
    assert s == pytest.approx([term(1, 2), term(2, 3), 0.0])
    bm.set_doc(2, "red lamp")  # re-index one document: df and lengths follow
    idf2 = math.log(1 + (3 - 3 + 0.5) / (3 + 0.5))
    assert bm.scores("red", 3)[2] == pytest.approx(idf2 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / avg)))


# --- retrieval ---------------------------------------------------------------------------------
def test_ann_with_upserts_matches_brute_force(tmp_path):
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, tmp_path / "items", fsync=False)
    rng = np.random.default_rng(1)
    changed = rng.normal(size=D).astype(np.float32)
    changed /= np.linalg.norm(changed)
    live.upsert(ItemUpdate("i007", "changed thing"), changed)  # replaces a vector the index holds
    live.upsert(ItemUpdate("new1", "brand new thing", category="Toys", price=3.0), -changed)
    q = rng.normal(size=D).astype(np.float32)
    for k in (1, 5, 52):
        scores, rows = live.ann(q, k)
        want_s, want_rows = brute_force(q, cat.vectors, k)
        assert rows.tolist() == want_rows[0].tolist() and np.allclose(scores, want_s[0], atol=1e-5)


def test_upserts_reach_other_replicas_through_the_item_log(tmp_path):
    a_cat, a_idx = small_catalog()
    b_cat, b_idx = small_catalog()
    a = LiveCatalog(a_cat, a_idx, tmp_path / "items", fsync=False)
    b = LiveCatalog(b_cat, b_idx, tmp_path / "items", fsync=False)
    vec = np.ones(D, np.float32) / math.sqrt(D)
    a.upsert(ItemUpdate("new1", "velvet cushion"), vec)
    assert "new1" not in b.catalog.row
    assert b.sync() == 1 and "new1" in b.catalog.row
    ids, _, bm = b.search("velvet cushion", vec)
    assert ids[0] == "new1" and bm[0] > 0
    # a process started later replays the log
    c_cat, c_idx = small_catalog()
    assert "new1" in LiveCatalog(c_cat, c_idx, tmp_path / "items", fsync=False).catalog.row


def test_a_removed_item_is_no_candidate_anywhere_until_upserted_again(tmp_path):
    """DELETE /v1/items/{id}: a tombstone in the item log, applied by every replica and replayed by
    a process started later; no source (ANN, BM25, co-occurrence, popularity, EASE, behaviour
    model, similar items) returns the item, and a PUT brings it back."""
    a_cat, a_idx = small_catalog()
    a = LiveCatalog(a_cat, a_idx, tmp_path / "items", fsync=False)
    b = LiveCatalog(*small_catalog(), tmp_path / "items", fsync=False)
    gone = "i004"
    q = a.catalog.vectors[a.catalog.row[gone]]
    assert gone in a.search(a.catalog.title[a.catalog.row[gone]], q)[0]
    assert a.remove(gone) and not a.remove("no-such-item") and a.remove(gone)  # idempotent
    assert a.n_removed == 1 and a.log_records == 1
    b.sync()
    for live in (a, b, LiveCatalog(*small_catalog(), tmp_path / "items", fsync=False)):
        cat = live.catalog
        row = cat.row[gone]
        assert live.is_removed(gone)
        assert gone not in live.search(cat.title[row], q)[0]
        assert row not in live.ann(q, 10)[1].tolist() and row not in live.ann(q, 10, np.arange(len(cat)))[1].tolist()
        cat.popularity[row] = 1e9  # the most popular item, and everyone's co-occurring neighbour
        cat.cooc = {i: ([gone], None) for i in cat.item_ids}
        recs = live.recommend(q, ["i001"], "i002", ease=(np.array([row]), np.array([5.0])))
        assert gone not in recs and len(recs) > 0
    a.upsert(ItemUpdate(gone, "blue mug 4 is back"), q)
    assert not a.is_removed(gone) and gone in a.search("blue mug back", q)[0]
    assert b.sync() == 1 and not b.is_removed(gone)


def test_over_a_newer_batch_the_latest_write_wins(tmp_path):
    """An upsert written before the batch read its catalog yields to the batch for an item the batch
    lists (its fresher price stays); an item only the API added, a removal, and every upsert
    written after the batch still apply. Nothing leaves the log."""
    import time as _time

    a = LiveCatalog(*small_catalog(), tmp_path / "items", fsync=False)
    vec = np.ones(D, np.float32) / math.sqrt(D)
    a.upsert(ItemUpdate("i001", "stale title", price=999.0), vec)  # an item the batch lists
    a.upsert(ItemUpdate("api-only", "velvet cushion"), vec)  # one it does not
    a.remove("i002")
    cat_b, idx_b = small_catalog()
    fresh_price = float(cat_b.price[cat_b.row["i001"]])
    b = LiveCatalog(cat_b, idx_b, tmp_path / "items", fsync=False, batch_time=_time.time() + 1)  # a newer batch
    assert b.superseded == 1 and b.log_records == 3
    assert b.catalog.price[b.catalog.row["i001"]] == fresh_price and b.catalog.title[b.catalog.row["i001"]] != "stale title"
    assert "api-only" in b.catalog.row and b.is_removed("i002") and b.n_changed == 1
    older = LiveCatalog(*small_catalog(), tmp_path / "items", fsync=False, batch_time=0.0)  # a batch older than all
    assert older.superseded == 0 and older.catalog.price[older.catalog.row["i001"]] == 999.0
    b.batch_time = _time.time() - 3600  # written now, after the batch: applies (here and on replay)
    b.upsert(ItemUpdate("i001", "new title", price=5.0), vec)
    assert b.catalog.price[b.catalog.row["i001"]] == 5.0
    again = LiveCatalog(*small_catalog(), tmp_path / "items", fsync=False, batch_time=b.batch_time)
    assert again.catalog.title[again.catalog.row["i001"]] == "new title"


def test_search_fuses_lexical_and_ann_and_honours_filters(tmp_path):
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=10))
    q = cat.vectors[cat.row["i004"]]  # "blue mug 4"
    ids, cos, bm = live.search("red lamp", q)
    assert ids[0] in ("i004",) or "i004" in ids[:3]
    assert any(cat.title[cat.row[i]].startswith("red lamp") for i in ids[:5])  # lexical brings its matches
    f = Filters(category="Home", price_max=20.0, in_stock=True)
    ids, _, _ = live.search("red lamp", q, f)
    for i in ids:
        r = cat.row[i]
        assert cat.category[r].startswith("Home") and cat.price[r] <= 20 and cat.in_stock[r]
    excluded, _, _ = live.search("red lamp", q, exclude=frozenset({"i004"}))
    assert "i004" not in excluded


@pytest.mark.parametrize("filters", [Filters(in_stock=True), Filters(price_max=1e9), Filters(category="toys"),
                                     Filters(category="Home > Kitchen", price_min=10.0)])
def test_filtered_dense_retrieval_is_the_exact_top_k_of_the_rows_that_pass(filters):
    """Most rows passing (every one is scored in one pass) or few (the passing rows are copied out
    and scored): the same exact top k, with the category matched case-blind on whole levels."""
    cat, index = small_catalog(200)
    cat.category[7] = None  # an item without a category never passes a category filter
    live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=15))
    q = cat.vectors[3] + 0.5 * cat.vectors[50]

    def passes(r: int) -> bool:
        c, want = (cat.category[r] or "").lower(), (filters.category or "").lower()
        return ((not want or c == want or c.startswith(want + " >")) and r != 10  # i010: excluded
                and (filters.price_min or -np.inf) <= cat.price[r] <= (filters.price_max or np.inf)
                and filters.in_stock in (None, cat.in_stock[r]))

    passing = np.array([r for r in range(len(cat)) if passes(r)])
    expect = passing[np.argsort(-(cat.vectors[passing] @ q), kind="stable")[:15]]
    scores, rows = live.ann(q, 15, live.allowed(filters), cat.rows(["i010"]))
    assert len(passing) > 15 and rows.tolist() == expect.tolist()
    np.testing.assert_allclose(scores, cat.vectors[rows] @ q, rtol=1e-5)


def test_recommend_candidates_include_cooc_context_and_popular(tmp_path):
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=5, popular_candidates=3))
    ids = live.recommend(None, ["i000"], None)
    assert {"i010", "i020"} <= set(ids) and {"i000", "i001", "i002"} & set(ids)
    ids = live.recommend(None, [], "i000", exclude=frozenset({"i010"}))
    assert "i000" not in ids and "i010" not in ids and "i020" in ids


# --- ranking -----------------------------------------------------------------------------------
def test_rank_features_of_serving_candidates_equal_the_offline_catalog_wide_ranks():
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, None, RetrievalConfig(num_candidates=50))
    q = cat.vectors[cat.row["i004"]]
    ids, _, bm = live.search("red lamp", q)
    rows = cat.rows(ids)
    ctx = RankContext(mode="search", query="red lamp", query_emb=q)
    x = candidate_features(ctx, rows, cat, bm)
    f = {n: x[:, i] for i, n in enumerate(FEATURE_NAMES)}
    top = int(np.argmax(f["query_sim"]))
    assert f["dense_rank"][top] == pytest.approx(1.0)  # 1 / log2(2 + 0)
    best = np.flatnonzero(bm == bm.max())
    first = best[np.argmin(rows[best])]  # ties rank by catalog row, as a catalog-wide ranking does
    assert (f["lexical_rank"][bm == 0] == 0).all() and f["lexical_rank"][first] == pytest.approx(1.0)
    # offline: ranks over the whole catalog (methods.query_features); every item is a candidate here
    from features.evaluation.methods import query_features

    off = query_features("red lamp", q, rows, cat, live.bm25)
    np.testing.assert_allclose(off[:, FEATURE_NAMES.index("dense_rank")], f["dense_rank"], atol=1e-6)
    np.testing.assert_allclose(off[:, FEATURE_NAMES.index("lexical_rank")], f["lexical_rank"], atol=1e-6)
    anon = candidate_features(RankContext(mode="recommend"), rows, cat)
    assert (anon[:, FEATURE_NAMES.index("dense_rank")] == 0).all()


def test_match_features_follow_upserts_and_the_analyzer(tmp_path):
    """The title/text terms behind title_match and text_match are kept per row: a changed item, a
    replica that applies it from the item log, and a different analyzer all see fresh terms."""
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, tmp_path / "items", RetrievalConfig(stemmer="none"), fsync=False)
    other = LiveCatalog(*small_catalog(), tmp_path / "items", RetrievalConfig(stemmer="none"), fsync=False)
    rows = cat.rows(["i001", "i002"])

    def match(c, query: str) -> list[float]:
        ctx = RankContext(mode="search", intent=None, alpha=1.0, preference=None, recent_items=[],
                          context_item=None, query=query, query_emb=c.vectors[0])
        x = candidate_features(ctx, c.rows(["i001", "i002"]), c)
        return x[:, FEATURE_NAMES.index("title_match")].tolist()

    assert match(cat, "velvet cushions") == [0.0, 0.0] and match(other.catalog, "velvet cushions") == [0.0, 0.0]
    live.upsert(ItemUpdate("i001", "velvet cushion"), cat.vectors[rows[0]])
    assert match(cat, "velvet cushions") == [1.0, 0.0]  # "cushions" folds to "cushion" without a stemmer
    other.sync()
    assert match(other.catalog, "velvet cushions") == [1.0, 0.0]
    assert cat.terms(int(rows[0]))[0] == frozenset(cat.analyzer.tokens("velvet cushion"))
    cat.analyzer = Analyzer("english")  # terms are analysed again by the new analyzer
    assert match(cat, "velveting cushion") == [1.0, 0.0]  # stems: "velvet" both


def test_the_head_term_is_the_last_term_of_the_first_phrase():
    a = Analyzer()
    assert a.head("Mr. Coffee 12-Cup Programmable Coffee Maker with Timer") == "maker"
    assert a.head("coffee cups") == "cup" and a.head("Shoes for Women") == "shoe"
    assert a.head("Oakley Radar Lenses, Yellow") == "lens" and a.head("Leather Case | iPhone 5") == "case"
    assert a.head("Apple - iPhone 5") == "appl" and a.head("Blender-Jar Lid") == "lid"  # a spaced dash only
    assert a.head("(Refurbished) Blendtec Blender") == "blender"  # an empty first phrase is skipped
    assert a.head("") is None and a.head(None) is None and a.head(" , ( ") is None
    # the connecting words are English: other languages end a phrase at separators only
    assert Analyzer("german").head("Kaffeetasse mit Untertasse, blau") == Analyzer("german").tokens("Untertasse")[-1]
    assert Analyzer("german").head("tasse with saucer") == Analyzer("german").tokens("saucer")[-1]


def test_head_match_says_whether_the_query_names_what_the_title_names(tmp_path):
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, tmp_path / "items", RetrievalConfig(), fsync=False)
    live.upsert(ItemUpdate("i001", "Coffee Cup Set with Saucers"), cat.vectors[1])
    live.upsert(ItemUpdate("i002", "12-Cup Coffee Maker with Timer"), cat.vectors[2])
    live.upsert(ItemUpdate("i003", "Coffee Cup"), cat.vectors[3])
    rows = cat.rows(["i001", "i002", "i003"])
    col = FEATURE_NAMES.index("head_match")

    def head(query: str | None, mode: str = "search") -> list[float]:
        ctx = RankContext(mode=mode, query=query, query_emb=cat.vectors[0] if query else None)
        return candidate_features(ctx, rows, cat)[:, col].tolist()

    assert head("coffee cups") == [0.0, 0.0, 1.0]  # the set names a set, the maker a maker
    assert head("coffee maker for the office") == [0.0, 1.0, 0.0]
    assert head("cup set") == [1.0, 0.0, 0.0]
    assert head(None, "recommend") == [0.0, 0.0, 0.0] and head("   ") == [0.0, 0.0, 0.0]
    live.upsert(ItemUpdate("i003", "Coffee Maker"), cat.vectors[3])  # an upsert is seen at once
    assert head("coffee maker") == [0.0, 1.0, 1.0]


def test_phrase_match_counts_the_querys_word_pairs_in_the_title_in_order(tmp_path):
    cat, index = small_catalog()
    live = LiveCatalog(cat, index, tmp_path / "items", RetrievalConfig(), fsync=False)
    live.upsert(ItemUpdate("i001", "Fantastic 2 Piece Coffee Cup Set"), cat.vectors[1])
    live.upsert(ItemUpdate("i002", "12-Cup Coffee Maker", description="a coffee cup of joy"), cat.vectors[2])
    live.upsert(ItemUpdate("i003", "Blue Coffee Cups, Set of 4"), cat.vectors[3])
    rows = cat.rows(["i001", "i002", "i003"])
    col = FEATURE_NAMES.index("phrase_match")

    def phrase(query: str | None) -> list[float]:
        ctx = RankContext(mode="search" if query else "recommend", query=query, query_emb=cat.vectors[0] if query else None)
        return candidate_features(ctx, rows, cat)[:, col].tolist()

    # "cup coffee" in the maker's title is the wrong order; its description does not count
    assert phrase("coffee cups") == [1.0, 0.0, 1.0]  # stems: "cups" is "cup"
    assert phrase("blue coffee cup set") == [pytest.approx(2 / 3), 0.0, 1.0]  # a comma does not part a pair
    assert phrase("cup") == [0.0, 0.0, 0.0] and phrase(None) == [0.0, 0.0, 0.0]  # no pair to find
    assert cat.terms(int(rows[2])).title_pairs == frozenset({("blue", "coffe"), ("coffe", "cup"), ("cup", "set"), ("set", "of"),
                                                             ("of", "4")})


def test_ranked_rows_ranks_as_rank_candidates_for_every_scorer():
    """Fitting search weights over a grid ranks each query once per weight set: `ranked_rows`
    computes the features once and must return exactly what `rank_candidates` returns for each."""
    from features.retrieval.ranking import HandWeights, ranked_rows

    cat, _ = small_catalog(80)
    rng = np.random.default_rng(3)
    ids = [cat.item_ids[k] for k in rng.permutation(80)[:60]] + ["not-in-catalog"]
    bm25 = rng.random(len(ids))
    base = HandWeights()
    scorers = [base] + [HandWeights(search={**base.search, "title_match": t, "head_match": h})
                        for t in (0.0, 0.4) for h in (0.1, 0.4)]
    for query in ("red lamp", "blue mug 7", "green"):
        ctx = RankContext(mode="search", query=query, query_emb=cat.vectors[int(rng.integers(80))])
        got = ranked_rows(ctx, ids, cat, scorers, 10, bm25)
        for scorer, rows in zip(scorers, got):
            want = [r.row for r in rank_candidates(ctx, ids, cat, scorer, 10, bm25, explain=False)]
            assert rows.tolist() == want and len(want) == 10


def test_candidate_features_by_hand():
    cat, _ = small_catalog()
    intent = cat.vectors[cat.row["i001"]]
    ctx = RankContext(mode="recommend", intent=intent, alpha=0.5, preference=None,
                      recent_items=[("i000", "view")], context_item=None,
                      category_affinity={"Toys": 1.0}, price_stats=(math.log1p(3.0), 0.5))
    rows = cat.rows(["i001", "i010", "i002"])
    x = candidate_features(ctx, rows, cat)
    f = {n: x[:, i] for i, n in enumerate(FEATURE_NAMES)}
    assert f["intent_sim"][0] == pytest.approx(0.5)  # alpha * cos(intent, itself)
    assert f["session_alpha"].tolist() == [0.5] * 3
    assert f["cooc"].tolist() == pytest.approx([0.0, 0.9, 0.0])
    assert f["category_affinity"].tolist() == [0.0, 0.0, 1.0]  # i002 is in Toys
    assert f["price_affinity"][0] == pytest.approx(math.exp(-0.5 * ((math.log1p(2.0) - math.log1p(3.0)) / 0.5) ** 2))
    pop_max = math.log1p(50.0)
    assert f["popularity"].tolist() == pytest.approx([math.log1p(49) / pop_max, math.log1p(40) / pop_max,
                                                      math.log1p(48) / pop_max])
    assert f["query_sim"].tolist() == [0.0] * 3 and f["seen_before"].tolist() == [0.0] * 3


def test_item_age_marks_new_items_and_fades_with_days_since_the_first_interaction():
    cat, _ = small_catalog()
    now = 1_700_000_000.0
    first = np.full(len(cat), np.nan)
    first[cat.row["i001"]] = now - 30 * 86_400.0  # a month old
    first[cat.row["i002"]] = now  # first sold just now
    first[cat.row["i010"]] = now + 86_400.0  # a clock ahead of the features: never older than new
    cat.set_first_seen(first)
    x = candidate_features(RankContext(mode="recommend", now=now), cat.rows(["i001", "i002", "i010", "i011"]), cat)
    age = x[:, FEATURE_NAMES.index("item_age")]
    assert age.tolist() == pytest.approx([math.exp(-1.0), 1.0, 1.0, 1.0])  # i011: never interacted with
    with pytest.raises(ValueError, match="set_first_seen"):
        cat.set_first_seen(first[:-1])
    r, created = cat.upsert(ItemUpdate("brand-new", "A new lamp"), cat.vectors[0])
    assert created and np.isnan(cat.first_seen[r])  # an item added live is new until a features version sees it
    assert candidate_features(RankContext(mode="recommend", now=now), np.array([r]), cat)[0, FEATURE_NAMES.index(
        "item_age")] == pytest.approx(1.0)


def test_history_max_sim_is_the_nearest_other_recent_item_and_names_it():
    cat, _ = small_catalog()
    v, r = cat.vectors, cat.row
    ctx = RankContext(mode="recommend", recent_items=[("i001", "purchase"), ("i002", "view"), ("gone", "view")])
    rows = cat.rows(["i001", "i010", "i002"])
    x = candidate_features(ctx, rows, cat)[:, FEATURE_NAMES.index("history_max_sim")]
    cos = lambda a, b: float(v[r[a]] @ v[r[b]])  # noqa: E731
    expected = [cos("i001", "i002"), max(cos("i010", "i001"), cos("i010", "i002")), cos("i002", "i001")]
    assert x.tolist() == pytest.approx([max(e, 0.0) for e in expected], abs=1e-6)  # never the item itself
    assert not candidate_features(RankContext(mode="recommend"), rows, cat)[:, FEATURE_NAMES.index(
        "history_max_sim")].any()  # no history: 0
    only_itself = RankContext(mode="recommend", recent_items=[("i001", "view")])
    assert candidate_features(only_itself, cat.rows(["i001"]), cat)[0, FEATURE_NAMES.index("history_max_sim")] == 0.0
    # Its reason names the nearest item and what the shopper did with it (i005 is nearest to the
    # viewed i002, i007 to the bought i001, each at cosine > 0.3 in this seeded catalog).
    ranked = rank_candidates(ctx, ["i005", "i007"], cat, HandWeights(recommend={"history_max_sim": 1.0}), k=2)
    assert {x.item_id: x.reasons for x in ranked} == {"i005": [f"because you viewed {cat.title[r['i002']]}"],
                                                      "i007": [f"because you bought {cat.title[r['i001']]}"]}
    assert cat.nearest(np.array([], np.int64), np.array([1]))[1].tolist() == []


def test_ranking_explains_itself():
    cat, _ = small_catalog()
    ctx = RankContext(mode="search", query="red mug", query_emb=cat.vectors[cat.row["i012"]])
    ranked = rank_candidates(ctx, ["i012", "i013", "unknown"], cat, HandWeights(), k=5)
    assert [r.item_id for r in ranked][0] == "i012" and len(ranked) == 2  # unknown ids are dropped
    assert ranked[0].reasons[0] == 'matches "red mug"'
    far = -cat.vectors[cat.row["i010"]]  # a query pointing away from i010
    ctx = RankContext(mode="recommend", intent=cat.vectors[cat.row["i010"]], alpha=0.8,
                      recent_items=[("i010", "purchase")],
                      intent_sources=[("search", "far away", far, 3.0), ("purchase", "i010", np.zeros(0), 4.0)])
    top = rank_candidates(ctx, ["i011", "i010"], cat, HandWeights(), k=1)[0]
    assert top.reasons[0] == f"because you bought {cat.title[cat.row['i010']]}"
    # the search explains an item close to the query instead
    ctx.intent_sources[0] = ("search", "near", cat.vectors[cat.row["i011"]], 3.0)
    ctx.intent = cat.vectors[cat.row["i011"]]
    assert rank_candidates(ctx, ["i011"], cat, HandWeights(), k=1)[0].reasons[0] == 'because you searched "near"'


def test_every_shopper_facing_feature_has_a_reason_text():
    """An item the model ranked for a recent view of itself, the behaviour model's score, a trend or
    a recently shopped category is explained by that, not left with no reason at all."""
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    cat, _ = small_catalog()
    ctx = RankContext(mode="recommend", recent_items=[("i004", "add_to_cart"), ("i004", "view")], query=None)
    row = cat.row["i004"]

    def only(name: str) -> list[str]:
        contrib = np.zeros(len(NAMES), np.float32)
        contrib[NAMES.index(name)] = 1.0
        return reasons(ctx, row, contrib, cat)

    assert only("seen_before") == ["you added it to your cart recently"]
    assert only("seq_score") == only("seq_rank") == ["fits your recent shopping"]
    assert only("popularity_1d") == ["trending today"] and only("popularity_30d") == ["popular this month"]
    assert only("category_recency") == [f"you recently shopped {cat.category[row]}"]
    assert only("dense_rank") == []  # a query feature without a query says nothing
    ctx.query = "blue box"
    assert only("dense_rank") == only("lexical_rank") == only("query_sim_gap") == ['matches "blue box"']
    silent = [n for n in NAMES if not only(n) and n not in ("session_alpha", "item_age", "context_sim", "cooc", "ease",
                                                              "intent_sim", "history_max_sim")]
    assert silent == [], silent  # the listed ones need a context, a history source or a new item to name


def test_context_for_lists_the_sessions_intent_sources():
    from features.profiles.profile import Profile, ProfileParams

    cat, _ = small_catalog()
    p = ProfileParams(session_gap_s=100.0)
    prof = Profile("u")
    prof.fold("purchase", 0.0, p, vector=cat.vectors[0], item_id="i000")  # an earlier session
    prof.fold("view", 1000.0, p, vector=cat.vectors[1], item_id="i001")
    prof.fold("search", 1001.0, p, vector=cat.vectors[2], query="lamp")
    ctx = context_for("recommend", prof, 1002.0, p)
    assert [(s[0], s[1], s[3]) for s in ctx.intent_sources] == [("search", "lamp", 3.0), ("view", "i001", 1.0)]
    assert ctx.purchased == frozenset({"i000"}) and ctx.alpha == pytest.approx(p.alpha_max * 0.5 ** (1 / 1800))


def test_hand_weights_reject_unknown_features():
    with pytest.raises(ValueError, match="unknown feature"):
        HandWeights(search={"colour": 1.0})


def test_mmr_trades_relevance_for_diversity():
    vecs = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    scores = np.array([1.0, 0.95, 0.5])
    assert mmr(scores, vecs, 2, 0.0).tolist() == [0, 1]
    assert mmr(scores, vecs, 2, 0.5).tolist() == [0, 2]  # the near-duplicate gives way
    with pytest.raises(ValueError, match="diversity"):
        mmr(scores, vecs, 2, 1.5)


def test_a_shopper_without_history_is_never_told_about_their_shopping():
    """A learned ranker's TreeSHAP value can be positive for a signal's absence (no behaviour-model
    score, no taste, no price range): the reasons name only signals the item has for this shopper."""
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES

    class AbsenceLover(HandWeights):  # contributions as trees give them: the absent signals pushed it up
        def contributions(self, x, mode):
            c = np.zeros((len(x), len(NAMES)), np.float32)
            for name in ("seq_score", "seq_rank", "pref_sim", "price_affinity", "category_affinity"):
                c[:, NAMES.index(name)] = 1.0
            c[:, NAMES.index("popularity")] = 0.5
            return c

    cat, _ = small_catalog()
    guest = RankContext(mode="recommend")
    ranked = rank_candidates(guest, ["i001", "i002"], cat, AbsenceLover(), k=2)
    assert [r.reasons for r in ranked] == [["popular this week"]] * 2
    # the same contributions for a shopper the behaviour model has a vector for do name it
    known = RankContext(mode="recommend", seq_vector=np.ones(4, np.float32))
    assert rank_candidates(known, ["i001"], cat, AbsenceLover(), k=1)[0].reasons[0] == "fits your recent shopping"


def test_a_second_reason_naming_the_same_history_item_gives_way_to_the_next():
    """"shoppers who bought MUG buy it too; often bought with MUG" says one thing twice: the second
    slot goes to the next reason instead."""
    from features.retrieval.catalog import ItemNeighbours
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    cat, _ = small_catalog()  # i000 -> i010 in its co-occurrence, and here in its EASE neighbours too
    cat.ease = ItemNeighbours({"i000": (["i010"], np.array([0.5], np.float32))}, cat.row)
    ctx = RankContext(mode="recommend", recent_items=[("i000", "purchase")], purchased=["i000"])
    contrib = np.zeros(len(NAMES), np.float32)
    contrib[NAMES.index("ease")], contrib[NAMES.index("cooc")], contrib[NAMES.index("popularity")] = 3.0, 2.0, 1.0
    mug = cat.title[cat.row["i000"]]
    assert reasons(ctx, cat.row["i010"], contrib, cat) == [f"shoppers who bought {mug} buy it too", "popular this week"]


def test_the_bought_together_reason_names_the_history_item_with_the_largest_weight():
    """ItemNeighbours.strongest (one lookup per result, whatever the history's length) against the
    plain scan over every history item it replaced."""
    from features.retrieval.catalog import ItemNeighbours

    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(60)]
    row = {i: r for r, i in enumerate(ids)}
    table = {a: (list(rng.choice(ids, 8, replace=False)), rng.choice([-0.2, 0.1, 0.3, 0.5], 8).astype(np.float32))
             for a in ids[:40]}
    nb = ItemNeighbours(table, row)

    def scan(history, target):
        best, best_src = 0.0, None
        for src in sorted(history):
            nbrs = nb.by_row.get(src)
            hit = np.flatnonzero(nbrs[0] == target) if nbrs is not None else ()
            if len(hit) and nbrs[1][hit[0]] > best:
                best, best_src = float(nbrs[1][hit[0]]), src
        return best_src

    for _ in range(300):
        history = frozenset(int(r) for r in rng.choice(60, rng.integers(1, 30), replace=False))
        target = int(rng.integers(60))
        assert nb.strongest(history, target) == scan(history, target)
    assert nb.strongest(frozenset(), 3) is None


def test_trending_today_needs_a_rise_not_just_a_sale_today():
    """"trending today" for an item that stands higher among today's sales than among the month's;
    a steady best seller (or an item that sold once today) is not trending."""
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    cat, _ = small_catalog()
    ctx = RankContext(mode="recommend")
    contrib = np.zeros(len(NAMES), np.float32)
    contrib[NAMES.index("popularity_1d")], contrib[NAMES.index("popularity")] = 2.0, 1.0

    def said(p1d: float, p30d: float) -> list[str]:
        values = np.zeros(len(NAMES), np.float32)
        values[NAMES.index("popularity_1d")], values[NAMES.index("popularity_30d")] = p1d, p30d
        values[NAMES.index("popularity")] = 1.0  # the catalog's best seller this week
        return reasons(ctx, 0, contrib, cat, values)

    assert said(0.9, 0.6) == ["trending today", "popular this week"]
    assert said(0.4, 0.6) == said(1.0, 1.0) == said(0.0, 0.0) == ["popular this week"]


def test_what_other_shoppers_did_is_said_with_the_logs_main_interaction():
    """A clickstream of views must not read "shoppers who bought MUG buy it too": the reasons about
    other shoppers use the kind of interaction most of the features version's are."""
    from features.retrieval.catalog import Catalog, ItemNeighbours
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    base, _ = small_catalog()
    n = len(base.item_ids)

    def catalog(counts: dict[str, int]) -> Catalog:
        items = pl.DataFrame({S.ITEM_ID: base.item_ids, S.TITLE: base.title,
                              **{S.n_col(t): [c] * n for t, c in counts.items()}})
        cat = Catalog(base.item_ids, base.vectors, items, {"i000": (["i010"], np.array([0.9]))})
        cat.ease = ItemNeighbours({"i000": (["i010"], np.array([0.5], np.float32))}, cat.row)
        return cat

    ctx = RankContext(mode="recommend", recent_items=[("i000", "view")], purchased=frozenset())
    mug = base.title[0]
    for counts, verb, often in (({"view": 90, "purchase": 10}, "viewed {t} view", "often viewed with"),
                                ({"view": 10, "purchase": 90}, "bought {t} buy", "often bought with"),
                                ({}, "bought {t} buy", "often bought with")):  # no counts: a purchase log
        cat = catalog(counts)
        for name, text in (("ease", f"shoppers who {verb.format(t=mug)} it too"), ("cooc", f"{often} {mug}")):
            contrib = np.zeros(len(NAMES), np.float32)
            contrib[NAMES.index(name)] = 1.0
            assert reasons(ctx, cat.row["i010"], contrib, cat) == [text], (counts, name)


def test_only_the_catalogs_top_sellers_are_called_popular():
    """Every item with a sale has a popularity above 0, and a tree can credit a little of it: only an
    item among the top 5% of the catalog (at least 10 items) by that measure is "popular this
    week" (the 7-day popularity of small_catalog's items is 50, 49, ..., 1)."""
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES

    class PopularityLover(HandWeights):
        def contributions(self, x, mode):
            c = np.zeros((len(x), len(NAMES)), np.float32)
            c[:, NAMES.index("popularity")], c[:, NAMES.index("category_affinity")] = 1.0, 0.5
            return c

    cat, _ = small_catalog()
    assert sum(cat.popularity_norm(np.arange(50)) >= cat.popular_floor["popularity"]) == 10
    ctx = RankContext(mode="recommend", category_affinity={c: 1.0 for c in set(cat.category)})
    ranked = {r.item_id: r.reasons for r in rank_candidates(ctx, ["i001", "i009", "i010", "i040"], cat,
                                                              PopularityLover(), k=4)}
    assert ranked["i001"][0] == ranked["i009"][0] == "popular this week"
    assert "popular this week" not in ranked["i010"] + ranked["i040"]
    assert ranked["i040"] == [f"you shopped {cat.category[cat.row['i040']]} before"]  # the next reason steps up


def test_a_category_that_is_only_an_id_is_called_a_category():
    """RetailRocket's categories are ids (1338): "you often shop 1338" reads as nothing."""
    from features.retrieval.catalog import Catalog
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    base, _ = small_catalog()
    items = pl.DataFrame({S.ITEM_ID: base.item_ids, S.TITLE: base.title,
                          S.CATEGORY: ["1338" if k % 2 else "Home > Kitchen" for k in range(len(base.item_ids))]})
    cat = Catalog(base.item_ids, base.vectors, items, {})
    ctx = RankContext(mode="recommend", category_affinity={"1338": 1.0, "Home > Kitchen": 1.0},
                      recent_items=[("i003", "view"), ("i005", "purchase"), ("i007", "view"), ("i004", "view")])
    contrib = np.zeros(len(NAMES), np.float32)
    contrib[NAMES.index("category_affinity")] = 1.0
    assert reasons(ctx, cat.row["i001"], contrib, cat) == ["you often shop category 1338"]
    assert reasons(ctx, cat.row["i002"], contrib, cat) == ["you shopped Home > Kitchen before"]


def test_one_look_at_a_category_is_not_often():
    """A new shopper who viewed one item was told "you often shop Toys": "often" needs three of
    the shopper's recent items in the category."""
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import OFTEN, reasons

    cat, _ = small_catalog()  # categories cycle: i000 Home > Kitchen, i001 Home > Light, i002 Toys, i003 ...
    contrib = np.zeros(len(NAMES), np.float32)
    contrib[NAMES.index("category_affinity")] = 1.0
    toys = [f"i{k:03d}" for k in range(2, 50, 3)]
    for n, want in ((1, "you shopped Toys before"), (OFTEN - 1, "you shopped Toys before"), (OFTEN, "you often shop Toys")):
        ctx = RankContext(mode="recommend", category_affinity={"Toys": 1.0},
                          recent_items=[(i, "view") for i in toys[1:n + 1]] + [("i000", "purchase")])
        assert reasons(ctx, cat.row[toys[0]], contrib, cat) == [want], n


def test_a_catalog_of_ids_without_words_gives_no_likeness_reasons():
    """RetailRocket, YooChoose and Diginetica name items by ids (or hashed tokens): the encoder's
    vectors of digit strings are alike by their digits, so "similar to 155" would explain nothing;
    the next reason steps up instead."""
    from features.retrieval.catalog import Catalog
    from features.retrieval.feature_names import FEATURE_NAMES as NAMES
    from features.retrieval.reasons import reasons

    base, _ = small_catalog()
    ids = [str(100 + k) for k in range(len(base.item_ids))]
    for titles, text, worded in ((ids, [f"{i} | 7" for i in ids], False), (base.title, base.title, True)):
        items = pl.DataFrame({S.ITEM_ID: ids, S.TITLE: titles, S.ITEM_TEXT: text, S.CATEGORY: ["Mugs"] * len(ids)})
        cat = Catalog(ids, base.vectors, items, {})
        assert cat.has_text is worded
        ctx = RankContext(mode="recommend", context_item="100", category_affinity={"Mugs": 1.0})
        contrib = np.zeros(len(NAMES), np.float32)
        contrib[NAMES.index("context_sim")], contrib[NAMES.index("category_affinity")] = 1.0, 0.5
        want = [f"similar to {titles[0]}", "you shopped Mugs before"] if worded else ["you shopped Mugs before"]
        assert reasons(ctx, cat.row["101"], contrib, cat) == want
