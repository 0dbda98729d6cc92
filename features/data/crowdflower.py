"""The Crowdflower search-relevance judgments -> canonical items + a judgments table.

Products have no id in the file: an item is identified by its text (sha1 of title + description),
so a product judged for several queries is one item. Descriptions may hold HTML: tags and
entities are stripped. Grades are the raters' median relevance, 1 (irrelevant) .. 4 (perfect).
"""

from __future__ import annotations

import hashlib
import html
import re

import polars as pl

from features.data import schema as S

REQUIRED = ("query", "product_title", "product_description", "median_relevance")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    out = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()
    return out or None


def item_id(title: str, description: str | None) -> str:
    return "cf-" + hashlib.sha1(f"{title}\x1f{description or ''}".encode()).hexdigest()[:16]


def import_crowdflower(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(items in the canonical item columns, judgments: query, item_id, grade)."""
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"crowdflower file: missing column(s) {missing}; required: {', '.join(REQUIRED)}")
    rows = []
    for q, title, desc, grade in raw.select(REQUIRED).iter_rows():
        t, d = clean_text(title), clean_text(desc)
        if not t or q is None or grade is None:
            continue
        rows.append((str(q).strip(), item_id(t, d), t, d, float(grade)))
    df = pl.DataFrame(rows, schema={"query": pl.String, S.ITEM_ID: pl.String, S.TITLE: pl.String,
                                    S.DESCRIPTION: pl.String, "grade": pl.Float64}, orient="row")
    bad = df.filter(~pl.col("grade").is_between(1, 4))
    if bad.height:
        raise ValueError(f"crowdflower file: median_relevance must be in 1..4, found {bad['grade'][0]}")
    items = df.unique(S.ITEM_ID, keep="first", maintain_order=True).select(S.ITEM_ID, S.TITLE, S.DESCRIPTION)
    judgments = df.group_by("query", S.ITEM_ID, maintain_order=True).agg(pl.col("grade").max())
    return items, judgments
