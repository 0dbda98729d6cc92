"""The metric code against trec_eval (through ir-measures) on random runs, and the bootstrap
interval's coverage: the numbers in every report are only as good as these functions."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from ir_measures import MRR, RR, Success, nDCG

from features import metrics as M


def random_run(seed: int, q: int = 40, L: int = 20, n_items: int = 60):
    rng = np.random.default_rng(seed)
    lists = np.stack([rng.permutation(n_items)[:L] for _ in range(q)])
    for r in range(0, q, 7):
        lists[r, L - 1 - r % 5:] = -1  # tail padding where a method had fewer results
    relevant = []
    for _ in range(q):
        rel = set(rng.choice(n_items, rng.integers(1, 6), replace=False).tolist())
        if rng.random() < 0.3:
            rel.add(-2)  # a relevant item outside the catalog: never found, still counted
        relevant.append(rel)
    return lists, relevant


def as_trec(lists, relevant, gains=None):
    qrels, run = [], []
    for q, (row, rel) in enumerate(zip(lists, relevant)):
        for j, item in enumerate(sorted(rel)):
            g = 1 if gains is None else int(gains[q][j])
            qrels.append(ir_measures.Qrel(str(q), f"d{item}", g))
        for rank, item in enumerate(int(r) for r in row):
            if item >= 0:
                run.append(ir_measures.ScoredDoc(str(q), f"d{item}", float(len(row) - rank)))
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_list_metrics_match_trec_eval(seed):
    lists, relevant = random_run(seed)
    qrels, run = as_trec(lists, relevant)
    per = M.per_request_metrics(lists, relevant, (5, 10))
    theirs = {(m, r.query_id): r.value for m in (nDCG @ 5, nDCG @ 10, Success @ 10, RR @ 20)
              for r in ir_measures.iter_calc([m], qrels, run) if r.measure == m}
    for q in range(len(lists)):
        assert per["ndcg@5"][q] == pytest.approx(theirs.get((nDCG @ 5, str(q)), 0.0), abs=1e-6)
        assert per["ndcg@10"][q] == pytest.approx(theirs.get((nDCG @ 10, str(q)), 0.0), abs=1e-6)
        assert per["hit_rate@10"][q] == pytest.approx(theirs.get((Success @ 10, str(q)), 0.0), abs=1e-9)
        assert per["mrr"][q] == pytest.approx(theirs.get((RR @ 20, str(q)), 0.0), abs=1e-6)
    means = M.list_metrics(lists, relevant, (10,))
    agg = ir_measures.calc_aggregate([nDCG @ 10, MRR @ 20], qrels, run)
    assert means["ndcg@10"] == pytest.approx(agg[nDCG @ 10], abs=1e-6)
    assert means["mrr"] == pytest.approx(agg[MRR @ 20], abs=1e-6)


def test_graded_ndcg_matches_trec_eval_with_exponential_gains():
    rng = np.random.default_rng(3)
    ranked, ideal, lists, relevant, gains = [], [], [], [], []
    for _ in range(30):
        judged = rng.choice(50, 8, replace=False)
        grades = rng.integers(1, 5, size=8).astype(float)  # 1..4 -> gains 0, 1, 3, 7
        g = M.grade_gain(grades)
        order = rng.permutation(50)[:10]
        gain_of = dict(zip(judged.tolist(), g.tolist()))
        ranked.append(np.array([gain_of.get(int(i), 0.0) for i in order]))
        ideal.append(g)
        lists.append(order)
        relevant.append(set(judged.tolist()))
        gains.append([gain_of[i] for i in sorted(judged.tolist())])
    qrels, run = as_trec(np.stack(lists), relevant, gains)
    theirs = {r.query_id: r.value for r in ir_measures.iter_calc([nDCG @ 10], qrels, run)}
    per = M.graded_ndcg_per_query(ranked, ideal, 10)
    for q in range(30):
        if np.isnan(per[q]):
            assert max(gains[q]) == 0
        else:
            assert per[q] == pytest.approx(theirs.get(str(q), 0.0), abs=1e-6)


def test_bootstrap_interval_covers_the_mean_and_pairs_cancel_shared_noise():
    rng = np.random.default_rng(0)
    x = rng.random(2000)
    lo, hi = M.bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.05
    # Two methods sharing most of their per-request noise: the paired interval is much tighter
    # than either method's own, and excludes 0 for a real 0.02 gain.
    base = rng.random(1500)
    a, b = base + 0.02 + rng.normal(0, 0.01, 1500), base
    plo, phi = M.bootstrap_ci(a - b)
    assert 0 < plo < 0.02 < phi and (phi - plo) < (M.bootstrap_ci(a)[1] - M.bootstrap_ci(a)[0]) / 5
    assert all(np.isnan(M.bootstrap_ci(np.array([]))))
