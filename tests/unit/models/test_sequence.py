"""The behaviour model: it learns a sequential pattern (with and without text, full and sampled
softmax), cold items are scored through their text, serving's history gives the offline user
vector, and early stopping keeps the best epoch."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from features.data import schema as S
from features.models import sequence as SQ
from features.models.sequence_io import load_model, save_model, scorer_for

N = 8
P = SQ.SequenceParams(dim=16, heads=2, layers=1, max_len=10, dropout=0.0, lr=1e-2, batch_size=32, max_epochs=40,
                      patience=12, min_delta=0.0, valid_users=0)


def cycle_seqs(n_users: int = 60, length: int = 12) -> dict[str, SQ.Seq]:
    """Every user walks 0 -> 1 -> ... -> 7 -> 0 from a random start, one step an hour: the next
    item is fixed by the last one, which popularity (uniform here) cannot know."""
    rng = np.random.default_rng(0)
    return {f"u{n}": SQ.Seq([int((s + t) % N) for t in range(length)], [SQ.EVENT_CODE["view"]] * length,
                            [3600.0 * t for t in range(length)]) for n, s in enumerate(rng.integers(0, N, n_users))}


def text_vectors(dim: int = 12) -> np.ndarray:
    v = np.random.default_rng(1).normal(size=(N, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def next_item_hits(model: SQ.SequenceModel, vectors: np.ndarray | None) -> int:
    scorer = SQ.SequenceScorer(model, [f"i{r}" for r in range(N)], [f"i{r}" for r in range(N)],
                               vectors if vectors is not None else np.zeros((N, 1), np.float32))
    hits = 0
    for s in range(N):
        seq = SQ.Seq([(s + t) % N for t in range(10)], [SQ.EVENT_CODE["view"]] * 10, [3600.0 * t for t in range(10)])
        hits += int(np.argmax(scorer.vectors @ scorer.user_vector_of(seq)) == (s + 10) % N)
    return hits


@pytest.mark.parametrize("params", [replace(P, text=False, events=False),  # the ID-only SASRec baseline
                                    P,  # text + ID + event/time
                                    replace(P, ids=False),  # text only
                                    replace(P, sampled_softmax_above=0, negatives=4)])  # sampled softmax + logQ
def test_learns_a_cycle(params):
    torch.manual_seed(0)
    seqs = cycle_seqs()
    train, hist, targets = SQ.split_valid(seqs, params, exclude_history=False)
    vecs = text_vectors() if params.text else None
    model = SQ.SequenceModel(N, vecs.shape[1] if vecs is not None else 1, params, vecs)
    st = SQ.fit(model, train, hist, targets, exclude_history=False, log=None)
    assert next_item_hits(model, vecs) == N, st["curve"][-3:]
    assert st["best"] > 0.9 and st["epoch"] >= st["best_epoch"] >= 1


def test_windows_cover_long_sequences_and_pad_left():
    s = SQ.Seq(list(range(30)), [1] * 30, [60.0 * t for t in range(30)])
    ids, types, gaps, y = SQ.windows([s], 10)
    # ids are rows + 1 (0 pads): the newest window holds rows 19..28 and targets rows 20..29
    assert ids.shape == (3, 10) and ids[0].tolist() == list(range(20, 30)) and y[0].tolist() == list(range(21, 31))
    assert ids[-1].tolist()[:1] == [0] and y[-1].tolist()[-1] == ids[-2].tolist()[0]  # the oldest window, padded
    assert set(gaps[0].tolist()) == {int(SQ.gap_bucket(np.array([60.0]))[0])}  # one minute apart


def test_sequences_follow_time_collapse_repeats_and_match_serving_history():
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    ev = pl.DataFrame({S.EVENT_ID: ["e1", "e2", "e3", "e4", "e5"], S.USER_ID: ["u"] * 5,
                       S.TS: [t + dt.timedelta(hours=h) for h in (3, 1, 2, 2.5, 4)],
                       S.EVENT_TYPE: ["purchase", "view", "view", "add_to_cart", "return"],
                       S.ITEM_ID: ["b", "a", "c", "c", "a"]})
    row = {"a": 0, "b": 1, "c": 2}
    seq = SQ.sequences(ev, row)["u"]
    assert seq.rows == [0, 2, 1]  # the return is not positive; c twice in a row counts once (its newest event)
    assert seq.types == [SQ.EVENT_CODE["view"], SQ.EVENT_CODE["add_to_cart"], SQ.EVENT_CODE["purchase"]]
    # serving's profile keeps (item, event type, ts) newest first: the same sequence comes out
    history = [("b", "purchase", seq.ts[2]), ("c", "add_to_cart", seq.ts[1]), ("a", "view", seq.ts[0]),
               ("zz-unknown", "view", seq.ts[0] - 1), ("c", "return", seq.ts[0] - 2)]
    got = SQ.history_seq(history, row)
    assert (got.rows, got.types, got.ts) == (seq.rows, seq.types, seq.ts)


def test_validation_excludes_past_purchases_not_past_views():
    """In a log with views, the next purchase is mostly an item viewed before: it is a validation
    target, as it is a recommendation (recommend excludes purchases only); one bought before is not."""
    v, b = SQ.EVENT_CODE["view"], SQ.EVENT_CODE["purchase"]
    seqs = {"viewed-then-bought": SQ.Seq([0, 1, 0], [v, v, b], [1.0, 2.0, 3.0]),
            "bought-again": SQ.Seq([0, 1, 0], [b, v, b], [1.0, 2.0, 3.0])}
    train, hist, targets = SQ.split_valid(seqs, SQ.SequenceParams(valid_users=0), exclude_history=True)
    assert targets.tolist() == [0] and hist[0].rows == [0, 1] and len(train) == 2
    assert seqs["bought-again"].bought() == [0, 0] and hist[0].bought() == []


def test_cold_items_are_scored_by_text_and_upserts_update_the_vectors(tmp_path):
    vecs = text_vectors()
    model = SQ.SequenceModel(N, vecs.shape[1], P, vecs)
    save_model(tmp_path, model, [f"i{r}" for r in range(N)], vecs.shape[1])
    loaded, ids = load_model(str(tmp_path))
    assert ids == [f"i{r}" for r in range(N)]
    # The catalog has the 8 trained items in another order and a new one the model never saw.
    cat_ids = [f"i{r}" for r in reversed(range(N))] + ["new"]
    cat_vecs = np.concatenate([vecs[::-1], vecs[:1]])
    scorer = scorer_for(str(tmp_path), cat_ids, cat_vecs)
    with torch.no_grad():
        text_part = (torch.from_numpy(cat_vecs) @ loaded.adapter.weight.T).numpy()
        id_part = loaded.item_id.weight[1:].numpy()
    assert np.allclose(scorer.vectors[-1], text_part[-1], atol=1e-6)  # cold: text only
    assert np.allclose(scorer.vectors[0], text_part[0] + id_part[N - 1], atol=1e-6)  # i7: text + its ID
    scorer.set_row(len(cat_ids), "newer", vecs[3])  # an upsert appends
    assert len(scorer.vectors) == N + 2
    scorer.set_row(0, "i7", vecs[5])  # a change replaces the row's vector
    assert np.allclose(scorer.vectors[0], (torch.from_numpy(vecs[5]) @ loaded.adapter.weight.T).detach().numpy()
                       + id_part[N - 1], atol=1e-5)
    assert scorer.user_vector([], {"i0": 0}) is None
    with pytest.raises(ValueError, match="different encoder"):
        scorer_for(str(tmp_path), cat_ids, np.zeros((N + 1, 5), np.float32))


def test_early_stopping_keeps_the_best_epoch_and_bad_params_name_the_key():
    seqs = cycle_seqs(20)
    p = replace(P, max_epochs=30, patience=2, min_delta=0.5, lr=1e-2)  # a gain of 0.5 NDCG never comes
    train, hist, targets = SQ.split_valid(seqs, p, exclude_history=False)
    model = SQ.SequenceModel(N, 1, replace(p, text=False), None)
    st = SQ.fit(model, train, hist, targets, exclude_history=False, log=None)
    assert st["stopped_by"] == "patience" and st["epoch"] == 3  # epoch 1 sets the best, 2 and 3 are not 0.5 better
    assert st["best"] == max(c["valid_ndcg@10"] for c in st["curve"]) or abs(
        st["best"] - max(c["valid_ndcg@10"] for c in st["curve"])) < 1e-4
    with pytest.raises(ValueError, match="sequence.dim"):
        SQ.SequenceParams(dim=10, heads=3)
    with pytest.raises(ValueError, match="text and ids"):
        SQ.SequenceParams(text=False, ids=False)


def test_a_checkpoint_resumes_weights_optimizer_and_best(tmp_path):
    from features.models.sequence_io import load_state, save_state

    seqs = cycle_seqs(20)
    p = replace(P, max_epochs=2, text=False)
    train, hist, targets = SQ.split_valid(seqs, p, exclude_history=False)
    torch.manual_seed(0)
    model = SQ.SequenceModel(N, 1, p)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    st = SQ.fit(model, train, hist, targets, False, opt=opt, log=None)
    save_state(tmp_path, model, opt, st)
    again = SQ.SequenceModel(N, 1, replace(p, max_epochs=4))
    opt2 = torch.optim.Adam(again.parameters(), lr=p.lr)
    st2 = load_state(tmp_path, again, opt2)
    assert st2["epoch"] == 2 and st2["best"] == st["best"] and len(st2["curve"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    st3 = SQ.fit(again, train, hist, targets, False, state=st2, opt=opt2, log=None)
    assert st3["epoch"] == 4 and [c["epoch"] for c in st3["curve"]] == [1, 2, 3, 4]


def test_a_log_too_small_to_train_on_says_so_before_any_training_worker_starts(tmp_path):
    """One shopper with two items: its last is held out for validation, leaving nothing to learn a
    next item from. The job says so itself (before, Ray Train's worker failed with a traceback)."""
    from jobs import train_sequence as TS
    from tests.helpers import small_catalog

    _, index = small_catalog()
    index.save(tmp_path / "index")
    t = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    pl.DataFrame({S.EVENT_ID: ["e1", "e2", "e3"], S.USER_ID: ["u1", "u1", "u2"], S.ITEM_ID: ["i001", "i002", "i003"],
                  S.EVENT_TYPE: ["purchase"] * 3, S.TS: [t, t + dt.timedelta(hours=1), t + dt.timedelta(hours=2)]}
                 ).write_parquet(tmp_path / "events.parquet")
    cfg = TS.TrainSequenceConfig(events=str(tmp_path / "events.parquet"), index=str(tmp_path / "index"),
                                 output_root=str(tmp_path / "art"))
    with pytest.raises(ValueError, match=r"no shopper has two or more items to learn a next item from once each "
                                         r"validation shopper's last item is held out \(2 shoppers, 2 interactions\)"):
        TS.run(cfg)


def _row_gradients(gather, threads: int = 2, repeats: int = 6) -> list[torch.Tensor]:
    """E's gradient through `gather` for one batch, `repeats` times: a batch like training's
    (256 windows of 50) naming few rows many times, so threads add into the same rows."""
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, 40, size=(256, 50)))
    upstream = torch.randn(256, 50, 64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = []
        for _ in range(repeats):
            E = torch.zeros(400, 64, requires_grad=True)
            (gather(E, rows) * upstream).sum().backward()
            out.append(E.grad)
        return out
    finally:
        torch.set_num_threads(before)


def test_item_rows_gradient_is_the_same_every_run_on_several_threads():
    # Indexing's backward (E[rows]) adds with atomic adds from every thread, in a different order
    # each run: two trainings from one seed drifted apart. The lookup's is one fixed order.
    grads = _row_gradients(SQ.item_rows)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
    indexed = _row_gradients(lambda E, rows: E[rows], repeats=1)[0]
    assert torch.allclose(grads[0], indexed, rtol=1e-5, atol=1e-4)  # the same gradient, up to rounding


def test_two_trainings_from_one_seed_end_with_the_same_weights():
    seqs = cycle_seqs(n_users=200, length=40)
    p = replace(P, dim=32, max_len=40, batch_size=128, max_epochs=2, patience=2, dropout=0.1)
    train, hist, targets = SQ.split_valid(seqs, replace(p, valid_users=20), exclude_history=False)
    weights = []
    for _ in range(2):
        torch.manual_seed(p.seed)
        model = SQ.SequenceModel(N, 12, p, text_vectors())
        SQ.fit(model, train, hist, targets, exclude_history=False)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
