"""Search judgments: (query, item_id, grade) rows, read from a file or derived from the event log.

A judgments file (Parquet or CSV) has the columns query, item_id and grade (1 = irrelevant up to
4 = perfect; averaged grades such as 2.33 are fine). A shop without one still has judgments in its
log: a search followed, in the same session (the same shopper where sessions are missing) and
within `window_s`, by a click (grade 2), an add to cart (3) or a purchase (4) of an item, before
the next search. An event that carries a query itself (logs that record each click or view with the
search it came from, one row each) counts as that search followed at once by it. A
(query, item) pair seen several times keeps its best grade and counts how often it was seen.
Queries are compared after trimming and lower-casing.
"""

from __future__ import annotations

import polars as pl

from features.data import schema as S

GRADE_OF_EVENT = {"click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
REQUIRED = ("query", S.ITEM_ID, "grade")


def read_judgments(path: str) -> pl.DataFrame:
    """query, item_id, grade (float) from a Parquet or CSV file; a missing column is named."""
    from features import artifacts as A

    if path.lower().endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):  # text as written: item id 00123 stays 00123
        from features.data.reading import read_table

        df = pl.from_arrow(read_table(path))
    else:
        df = A.read_parquet(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"judgments {path}: missing column(s) {missing}; required: {', '.join(REQUIRED)}")
    out = df.select(pl.col("query").cast(pl.String), pl.col(S.ITEM_ID).cast(pl.String),
                    pl.col("grade").cast(pl.Float64, strict=False))
    unreadable = df.filter(pl.col("grade").is_not_null() & pl.col("grade").cast(pl.Float64, strict=False).is_null())
    if unreadable.height:
        r = unreadable.row(0, named=True)
        raise ValueError(f"judgments {path}: {unreadable.height} row(s) with a grade that is not a number, "
                         f"e.g. query={r['query']!r} item_id={r[S.ITEM_ID]!r} grade={r['grade']!r}")
    bad = out.filter(pl.col("grade").is_null() | ~pl.col("grade").is_between(1.0, 4.0) | pl.col("query").is_null()
                     | pl.col(S.ITEM_ID).is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise ValueError(f"judgments {path}: {bad.height} row(s) with a null query/item_id or a grade outside 1..4, "
                         f"e.g. query={r['query']!r} item_id={r[S.ITEM_ID]!r} grade={r['grade']}")
    return out


def judgments_from_events(events: pl.DataFrame, window_s: float = 1800.0) -> pl.DataFrame:
    """query, item_id, grade, n: what shoppers did after each search (see module doc)."""
    need = (S.USER_ID, S.TS, S.EVENT_TYPE, S.ITEM_ID)
    missing = [c for c in need if c not in events.columns]
    if missing:
        raise ValueError(f"events: missing column(s) {missing}; see docs/data.md for the canonical schema")
    if S.QUERY not in events.columns:  # optional in the contract: a log without searches judges nothing
        return pl.DataFrame(schema={"query": pl.String, S.ITEM_ID: pl.String, "grade": pl.Float64, "n": pl.UInt32})
    key = pl.coalesce(pl.col(S.SESSION_ID), pl.col(S.USER_ID)) if S.SESSION_ID in events.columns else pl.col(S.USER_ID)
    ev = (events.filter(pl.col(S.EVENT_TYPE).is_in(["search", *GRADE_OF_EVENT]))
          .select(key.alias("_k"), S.TS, S.EVENT_TYPE, S.ITEM_ID, S.QUERY)
          .sort("_k", S.TS, maintain_order=True))
    # a search, or an action that names its own search, starts what the next actions are judged for
    names_query = (pl.col(S.EVENT_TYPE) == "search") | (pl.col(S.QUERY).str.strip_chars().str.len_chars() > 0)
    ev = ev.with_columns(
        pl.when(names_query).then(pl.col(S.QUERY).str.strip_chars().str.to_lowercase()).forward_fill().over("_k").alias("_q"),
        pl.when(names_query).then(pl.col(S.TS)).forward_fill().over("_k").alias("_qts"))
    pairs = ev.filter((pl.col(S.EVENT_TYPE) != "search") & pl.col("_q").is_not_null() & (pl.col("_q") != "")
                      & pl.col(S.ITEM_ID).is_not_null()
                      & ((pl.col(S.TS) - pl.col("_qts")).dt.total_microseconds() <= int(window_s * 1e6)))
    grade = pl.col(S.EVENT_TYPE).replace_strict(GRADE_OF_EVENT, return_dtype=pl.Float64)
    return (pairs.group_by("_q", S.ITEM_ID, maintain_order=True)
            .agg(grade.max().alias("grade"), pl.len().alias("n"))
            .rename({"_q": "query"}))
