"""Two indexes of one features version hold the same items in different row orders (the index
job's actors finish in any order). The evaluation scores every method in the zero-shot catalog's
rows, so a method run on another catalog must get its fallback in that catalog's rows and return
its lists in the zero-shot rows: the scores may not depend on the order the index was written in."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.data import schema as S
from features.evaluation import methods as EM
from features.evaluation.splits import Requests
from features.profiles.profile import ProfileParams
from features.retrieval.catalog import Catalog

IDS = [f"i{n:02d}" for n in range(12)]


def catalog(order: list[int]) -> Catalog:
    ids = [IDS[o] for o in order]
    vecs = np.eye(12, dtype=np.float32)[order]  # each item keeps its own vector
    return Catalog(ids, vecs, pl.DataFrame({S.ITEM_ID: IDS, S.TITLE: [f"item {i}" for i in IDS]}), {})


def requests() -> Requests:
    return Requests(users=["a", "b", "c"], ts=np.zeros(3), relevant=[{"i03"}, {"i07", "i01"}, {"i11"}],
                    exclude=[frozenset({"i05"}), frozenset(), frozenset({"i00", "i02"})], profiles=[None] * 3)


def test_a_method_on_a_reordered_catalog_scores_as_on_the_reference():
    ref = catalog(list(range(12)))
    other = catalog(list(np.random.default_rng(0).permutation(12)))
    pop = np.linspace(1.0, 2.0, 12)[::-1].copy()  # over ref's rows: i00 most popular
    pop[7] = 5.0
    per_q = lambda q: pop + 0.5 * (np.arange(12) == q)  # noqa: E731 - a per-request popularity (leave-last)
    reqs = requests()
    share = np.full(12, 0.1)
    for fb in (pop, per_q):
        want = EM.embedding_method("m", reqs, ref, ProfileParams(), fb, 5)
        got = EM.lists_in(EM.embedding_method("m", reqs, other, ProfileParams(), EM.fallback_in(fb, ref, other), 5),
                          other, ref)
        assert got.lists.tolist() == want.lists.tolist()
        a, b = (EM.score_method(r, reqs, ref, (5,), share, 10) for r in (want, got))
        assert a["ndcg@5"] == b["ndcg@5"] > 0
    # what the evaluation did before: the reference's rows read as the other catalog's rows
    wrong = EM.embedding_method("m", reqs, other, ProfileParams(), pop, 5)
    assert wrong.lists.tolist() != want.lists.tolist()


def test_rows_in_marks_items_the_other_catalog_lacks():
    small = Catalog(IDS[:3], np.eye(3, 12, dtype=np.float32), pl.DataFrame({S.ITEM_ID: IDS}), {})
    assert EM.rows_in(small, catalog(list(range(12)))).tolist() == [0, 1, 2]
    assert EM.rows_in(catalog(list(range(12))), small).tolist() == [0, 1, 2] + [-1] * 9
    fb = EM.fallback_in(np.array([3.0, 2.0, 1.0]), small, catalog(list(range(12))))
    assert fb(0).tolist() == [3.0, 2.0, 1.0] + [0.0] * 9
