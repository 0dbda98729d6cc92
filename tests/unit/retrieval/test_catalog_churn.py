"""A day of catalog writes between batch runs: price and stock changes keep the index's vectors,
and removed or changed items are skipped inside FAISS, so searches cost what they cost fresh."""

from __future__ import annotations

import numpy as np
import pytest

from features.profiles.events import encode_vector
from features.retrieval.catalog import ItemUpdate
from features.retrieval.index import IndexConfig, ItemIndex, brute_force
from features.retrieval.live import COMPACT_SLACK, LiveCatalog
from tests.helpers import D, small_catalog


def _same_text(cat, item_id: str, **change) -> ItemUpdate:
    """The item as the batch has it (the encoder's text unchanged), with `change` applied."""
    r = cat.row[item_id]
    fields = dict(title=cat.title[r], description=cat.description[r], category=cat.category[r], brand=cat.brand[r])
    return ItemUpdate(item_id, **(fields | change))


def _catalog():
    cat, index = small_catalog()
    cat.text = [_same_text(cat, i).text() for i in cat.item_ids]  # the batch's text, as the feature job builds it
    return cat, index


def _unit(rng) -> np.ndarray:
    v = rng.normal(size=D).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_price_or_stock_change_keeps_the_index_vector_and_a_new_title_does_not(tmp_path):
    rng = np.random.default_rng(3)
    a = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)
    cat = a.catalog
    r = cat.row["i003"]
    before = cat.vectors[r].copy()
    # PUT with the text as it was: the encoder's vector of it (here: any) is not used.
    a.upsert(_same_text(cat, "i003", price=1.25, in_stock=False), _unit(rng))
    assert (a.n_upserted, a.n_changed) == (1, 0)
    assert cat.price[r] == 1.25 and not cat.in_stock[r] and np.array_equal(cat.vectors[r], before)
    b = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)  # a replica started later replays it
    assert (b.n_upserted, b.n_changed) == (1, 0) and b.catalog.price[r] == 1.25
    q = _unit(rng)
    assert a.ann(q, 10)[1].tolist() == brute_force(q, cat.vectors, 10)[1][0].tolist()
    # A new title is a new vector: scored exactly, the index's stale one skipped.
    new = _unit(rng)
    a.upsert(_same_text(cat, "i003", title="velvet cushion"), new)
    assert (a.n_upserted, a.n_changed) == (1, 1) and np.allclose(cat.vectors[r], new)
    assert a.ann(new, 1)[1].tolist() == [r]
    # ... and a later price change of it keeps the new vector, not the index's.
    a.upsert(_same_text(cat, "i003", price=2.0), _unit(rng))
    assert a.n_changed == 1 and np.allclose(cat.vectors[r], new) and cat.price[r] == 2.0
    assert b.sync() == 2 and np.allclose(b.catalog.vectors[r], new) and b.n_changed == 1


def test_a_write_that_keeps_the_text_needs_no_encoding(tmp_path):
    """known_vector: what the API's PUT uses instead of encoding an unchanged text."""
    rng = np.random.default_rng(5)
    a = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False, encoder_id="enc-1")
    cat, r = a.catalog, a.catalog.row["i004"]
    got = a.known_vector(_same_text(cat, "i004", price=9.0))
    assert np.array_equal(got, cat.vectors[r]) and got is not cat.vectors[r]  # a copy, not a view
    assert a.known_vector(_same_text(cat, "i004", title="another title")) is None  # new text: encode it
    assert a.known_vector(ItemUpdate("i-new", title="a new item")) is None
    new = _unit(rng)
    a.upsert(_same_text(cat, "i004", brand="Zed"), new)  # the brand is part of the encoder's text
    assert np.allclose(a.known_vector(_same_text(cat, "i004", brand="Zed")), new)
    a.remove("i004")  # a removed item PUT back with its text keeps its vector too
    assert np.allclose(a.known_vector(_same_text(cat, "i004", brand="Zed")), new)
    # A vector another encoder logged is not reused: the next PUT encodes with this one.
    old = _same_text(cat, "i005", title="retitled by an older version")
    a.log.append([{"item": old.to_record(), "vector": encode_vector(new), "written": 0.0, "encoder": "enc-0"}])
    b = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False, encoder_id="enc-1")
    assert b.n_other_encoder == 1 and b.known_vector(old) is None


def test_price_only_writes_keep_the_item_log_compacted(tmp_path):
    a = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)
    for n in range(COMPACT_SLACK + 300):
        a.upsert(_same_text(a.catalog, f"i{n % 3:03d}", price=float(n)), np.zeros(D, np.float32))
    assert a.n_changed == 0 and a.log_records <= 2 * 3 + COMPACT_SLACK + 1
    again = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)
    last = {n % 3: float(n) for n in range(COMPACT_SLACK + 300)}  # each item's last price
    assert [again.catalog.price[again.catalog.row[f"i{k:03d}"]] for k in range(3)] == [last[k] for k in range(3)]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_rows_skips_rows_inside_faiss(kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, D))
    vecs = (centres[rng.integers(8, size=600)] + 0.3 * rng.normal(size=(600, D))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex.build([f"x{i}" for i in range(600)], vecs, IndexConfig(kind=kind, ivf_nlist=8, ivf_nprobe=8))
    skip = rng.choice(600, 450, replace=False)
    q = vecs[int(np.setdiff1d(np.arange(600), skip)[0])]
    s, rows = index.search_rows(q, 20, skip)
    assert len(rows) == 20 and not np.isin(rows, skip).any() and np.all(np.diff(s) <= 1e-6)
    left = np.setdiff1d(np.arange(600), skip)
    truth = left[np.argsort(-(vecs[left] @ q))[:20]]
    hit = len(np.intersect1d(rows, truth)) / 20
    assert hit == 1.0 if kind == "flat" else hit >= 0.8
    s_all, rows_all = index.search_rows(q, 1000, skip)  # more than remain: every remaining row once
    assert sorted(rows_all.tolist()) == left.tolist() if kind != "hnsw" else len(rows_all) <= 150
    assert index.search_rows(q, 5, np.arange(600))[1].tolist() == []


def test_after_many_removals_and_exclusions_ann_is_still_the_exact_top_k(tmp_path):
    rng = np.random.default_rng(5)
    live = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)
    cat = live.catalog
    gone = rng.choice(len(cat), 35, replace=False)
    for r in gone:
        live.remove(cat.item_ids[int(r)])
    live.upsert(_same_text(cat, cat.item_ids[int(gone[0])], title="back again"), _unit(rng))  # one returns
    bought = frozenset(cat.item_ids[int(r)] for r in rng.choice(len(cat), 5, replace=False))
    q = _unit(rng)
    excluded = live.excluded(bought)
    s, rows = live.ann(q, 10, None, excluded)
    scores = cat.vectors @ q
    scores[excluded] = -np.inf
    want = np.argsort(-scores, kind="stable")[:min(10, int(np.isfinite(scores).sum()))]
    assert rows.tolist() == want.tolist() and np.allclose(s, scores[want], atol=1e-5)


def test_items_added_one_at_a_time_keep_every_per_row_array_aligned():
    """The per-row arrays grow by doubling (no copy of every row per new item); values, in-place
    changes and an array replaced meanwhile (the evaluation's set_popularity) all stay right."""
    cat, _ = small_catalog()
    n0 = len(cat)
    for k in range(100):
        cat.upsert(ItemUpdate(f"n{k}", f"thing {k}", price=float(k), in_stock=k % 2 == 0), np.full(D, 0.25, np.float32))
    assert all(len(getattr(cat, a)) == n0 + 100 for a in ("price", "in_stock", "popularity", "popularity_short",
                                                            "popularity_long", "n_users", "first_seen"))
    assert cat.price[n0 + 7] == 7.0 and not cat.in_stock[n0 + 7] and cat.popularity[-1] == 0.0
    assert np.isnan(cat.first_seen[-1]) and cat.n_users[-1] == 0
    cat.upsert(ItemUpdate("n7", "thing 7", price=70.0), np.full(D, 0.25, np.float32))  # in place
    assert cat.price[n0 + 7] == 70.0
    cat.set_popularity(np.ones(len(cat)), np.ones(len(cat)), np.ones(len(cat)))
    cat.upsert(ItemUpdate("late", "late thing"), np.full(D, 0.25, np.float32))
    assert len(cat.popularity) == len(cat) and cat.popularity[0] == 1.0 and cat.popularity[-1] == 0.0


def test_vectors_logged_by_another_encoder_are_counted_until_put_again(tmp_path):
    """A new artifacts version may come with another encoder: an API-only item's or a re-texted
    item's logged vector is then the old encoder's. It is counted (serving's /healthz and a warning
    say so) until a PUT logs a vector of the current encoder; an upsert that kept the batch text
    takes the new index's own vector and is fine."""
    rng = np.random.default_rng(7)
    old = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False, encoder_id="zero-shot:bundled")
    old.upsert(ItemUpdate("api-only", "velvet cushion"), _unit(rng))
    old.upsert(_same_text(old.catalog, "i001", title="renamed lamp"), _unit(rng))
    old.upsert(_same_text(old.catalog, "i002", price=9.0), _unit(rng))
    assert old.n_other_encoder == 0
    new = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False, encoder_id="sha256:abc")
    assert new.n_other_encoder == 2 and new.n_upserted == 3
    fresh = _unit(rng)
    new.upsert(ItemUpdate("api-only", "velvet cushion"), fresh)  # the same text, PUT again: the new vector
    assert new.n_other_encoder == 1 and np.allclose(new.catalog.vectors[new.catalog.row["api-only"]], fresh)
    unknown = LiveCatalog(*_catalog(), tmp_path / "items", fsync=False)  # no encoder id: nothing to compare
    assert unknown.n_other_encoder == 0


def test_an_index_names_the_encoder_of_its_vectors(tmp_path):
    import json

    from serving.retriever import index_encoder_id

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({"inputs": {"encoder": {"zero_shot": True}},
                                                              "config": {"zero_shot": {"model_dir": None}}}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"inputs": {"encoder": {"weights_sha256": "f00"}},
                                                              "config": {"zero_shot": {"model_dir": None}}}))
    assert index_encoder_id(str(tmp_path / "a")) == "zero-shot:bundled"
    assert index_encoder_id(str(tmp_path / "b")) == "sha256:f00"


def test_an_approximate_search_that_skips_most_rows_still_finds_the_rows_left(monkeypatch):
    """HNSW with 97% of its rows skipped (a shop that removed most of a seasonal catalog): the rows
    left are scanned exactly; with more left than EXACT_LIVE_ROWS the candidate list is widened."""
    from features.retrieval import index as IX

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, D))
    vecs = (centres[rng.integers(30, size=3000)] + 0.8 * rng.normal(size=(3000, D))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex.build([f"x{i}" for i in range(3000)], vecs, IndexConfig(kind="hnsw", hnsw_m=8, hnsw_ef_search=16))
    skip = np.sort(rng.choice(3000, 2910, replace=False)).astype(np.int64)
    live = np.setdiff1d(np.arange(3000), skip)
    q = vecs[live[0]] + 0.2 * rng.normal(size=D).astype(np.float32)
    truth = live[np.argsort(-(vecs[live] @ q))[:50]]
    s, rows = index.search_rows(q, 50, skip)
    assert rows.tolist() == truth.tolist() and np.allclose(s, vecs[rows] @ q, atol=1e-5)  # exact, inner product
    monkeypatch.setattr(IX, "EXACT_LIVE_ROWS", 0)  # the widened graph search instead
    widened = len(np.intersect1d(index.search_rows(q, 50, skip)[1], truth))
    monkeypatch.setattr(IX, "MAX_WIDEN", 1)  # the search before: efSearch as configured
    fixed = index.search_rows(q, 50, skip)[1]
    assert widened > len(np.intersect1d(fixed, truth)) and widened >= 40
