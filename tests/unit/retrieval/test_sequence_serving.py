"""The behaviour model where serving uses it: the user vector from a profile folded event by event
equals the one from the log's sequence (training's input), its top items become recommend
candidates, and its score and rank are ranking features; live upserts get a text-only vector."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import torch

from features.data import schema as S
from features.models import sequence as SQ
from features.profiles.profile import Profile, ProfileParams
from features.retrieval.catalog import ItemUpdate
from features.retrieval.live import LiveCatalog, RetrievalConfig
from features.retrieval.ranking import FEATURE_NAMES, attach_sequence, candidate_features, context_for
from tests.helpers import small_catalog


def bound_catalog():
    torch.manual_seed(0)
    catalog, index = small_catalog(50)
    model = SQ.SequenceModel(len(catalog), catalog.dim, SQ.SequenceParams(dim=16, heads=2, layers=1, dropout=0.0),
                             catalog.vectors)
    catalog.sequence = SQ.SequenceScorer(model.eval(), catalog.item_ids[:40], catalog.item_ids, catalog.vectors)
    return catalog, index


def test_serving_history_gives_the_training_sequence_vector_and_features_use_it():
    catalog, index = bound_catalog()
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    log = [("i003", "view", 0), ("i007", "add_to_cart", 50), ("i007", "purchase", 60), ("i012", "view", 4000)]
    p = ProfileParams()
    prof = Profile("u1")
    for item, etype, sec in log:
        v, cat, price = catalog.lookup(item)
        prof.fold(etype, (t0 + dt.timedelta(seconds=sec)).timestamp(), p, v, item_id=item, category=cat, price=price)
    events = pl.DataFrame({S.EVENT_ID: [f"e{n}" for n in range(len(log))], S.USER_ID: ["u1"] * len(log),
                           S.TS: [t0 + dt.timedelta(seconds=s) for _, _, s in log], S.EVENT_TYPE: [e for _, e, _ in log],
                           S.ITEM_ID: [i for i, _, _ in log]})
    offline = catalog.sequence.user_vector_of(SQ.sequences(events, catalog.row)["u1"])
    now = (t0 + dt.timedelta(seconds=5000)).timestamp()
    ctx = context_for("recommend", prof, now, p)
    online = attach_sequence(ctx, catalog)
    assert np.allclose(online, offline, atol=1e-6)

    live = LiveCatalog(catalog, index, None, RetrievalConfig(lexical=False, num_candidates=5, cooc_candidates=0,
                                                             popular_candidates=0, sequence_candidates=7))
    ids = live.recommend(None, [], None, None, frozenset({"i003"}), online)
    scores = catalog.sequence.vectors @ online
    scores[catalog.row["i003"]] = -np.inf
    assert ids == [catalog.item_ids[r] for r in np.argsort(-scores, kind="stable")[:7]]  # exactly its top 7

    rows = catalog.rows(ids)
    x = candidate_features(ctx, rows, catalog)
    s = catalog.sequence.vectors[rows] @ online
    assert np.allclose(x[:, FEATURE_NAMES.index("seq_score")], s - s.max(), atol=1e-5)
    assert np.allclose(x[:, FEATURE_NAMES.index("seq_rank")], [n / len(rows) for n in range(len(rows))])
    # the newest interaction in i012's category was 1000 s before the request
    rec = x[:, FEATURE_NAMES.index("category_recency")]
    same = [catalog.category[r] == catalog.category[catalog.row["i012"]] for r in rows]
    assert np.allclose(rec[same], np.exp(-(1000 / 86400) / 7), atol=1e-6)
    # without a history: neutral values, no model call
    anon = context_for("recommend", None, now, p)
    assert attach_sequence(anon, catalog) is None
    x0 = candidate_features(anon, rows, catalog)
    assert set(x0[:, FEATURE_NAMES.index("seq_score")]) == {-1.0} and set(x0[:, FEATURE_NAMES.index("seq_rank")]) == {1.0}


def test_an_upserted_item_gets_a_text_only_behaviour_vector_at_once():
    catalog, _ = bound_catalog()
    v = catalog.vectors[5].copy()
    r, created = catalog.upsert(ItemUpdate("new-item", "red mug new"), v)
    assert created and len(catalog.sequence.vectors) == len(catalog)
    with torch.no_grad():
        want = catalog.sequence.model.adapter(torch.from_numpy(v)).numpy()
    assert np.allclose(catalog.sequence.vectors[r], want, atol=1e-6)


def test_items_added_one_at_a_time_keep_the_behaviour_vectors_aligned():
    """Appends grow the scorer's storage by doubling (no copy of every row per new item); rows,
    the torch view the model scores with and in-place replacements stay in step."""
    catalog, _ = bound_catalog()
    seq = catalog.sequence
    n0 = len(seq.vectors)
    rng = np.random.default_rng(0)
    added = []
    for k in range(40):
        v = rng.normal(size=catalog.dim).astype(np.float32)
        r, created = catalog.upsert(ItemUpdate(f"new-{k}", f"thing {k}"), v / np.linalg.norm(v))
        assert created and r == n0 + k
        added.append(v / np.linalg.norm(v))
    assert len(seq.vectors) == len(catalog) == n0 + 40 and len(seq._E) == n0 + 40
    with torch.no_grad():
        want = seq.model.adapter(torch.from_numpy(np.stack(added))).numpy()
    assert np.allclose(seq.vectors[n0:], want, atol=1e-5) and np.array_equal(seq._E.numpy(), seq.vectors)
    catalog.upsert(ItemUpdate("new-3", "renamed thing"), added[0])  # replace in place
    assert np.allclose(seq._E.numpy()[n0 + 3], want[0], atol=1e-5)
