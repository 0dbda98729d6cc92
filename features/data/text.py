"""Text rendering for the encoder: item text, and a shopper's recent history as text.

Both towers of the encoder read text produced here, offline and online, so the two cannot drift.
"""

from __future__ import annotations

import polars as pl

from features.data import schema as S

ITEM_TEXT_MAX_CHARS = 512
# How an event reads inside a history text; searches are rendered with their query.
VERBS = {
    S.EventType.VIEW.value: "viewed",
    S.EventType.CLICK.value: "clicked",
    S.EventType.ADD_TO_CART.value: "carted",
    S.EventType.PURCHASE.value: "bought",
    S.EventType.RETURN.value: "returned",
    S.EventType.SEARCH.value: "searched",
}


def _clean(expr: pl.Expr) -> pl.Expr:
    # Collapse whitespace (titles in real logs carry double spaces and trailing blanks).
    return expr.cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars()


def item_text_expr(max_chars: int = ITEM_TEXT_MAX_CHARS) -> pl.Expr:
    """Polars expression rendering `title | category | brand | description` (nulls skipped)."""
    parts = [_clean(pl.col(c)) for c in (S.TITLE, S.CATEGORY, S.BRAND, S.DESCRIPTION)]
    parts = [pl.when(p.is_not_null() & (p != "")).then(p) for p in parts]
    return pl.concat_str(parts, separator=" | ", ignore_nulls=True).str.slice(0, max_chars).alias(S.ITEM_TEXT)


def item_text(
    title: str | None,
    category: str | None = None,
    brand: str | None = None,
    description: str | None = None,
    max_chars: int = ITEM_TEXT_MAX_CHARS,
) -> str:
    """One item's text; the scalar twin of `item_text_expr` (same output, proven by a test)."""
    df = pl.DataFrame(
        {S.TITLE: [title], S.CATEGORY: [category], S.BRAND: [brand], S.DESCRIPTION: [description]},
        schema={c: pl.String for c in (S.TITLE, S.CATEGORY, S.BRAND, S.DESCRIPTION)},
    )
    return df.select(item_text_expr(max_chars)).item()


def title_text_expr() -> pl.Expr:
    """A title as it reads inside a history text (clean, lower case). Computed once per catalog
    item and joined to events, rather than once per event."""
    return _clean(pl.col(S.TITLE)).str.to_lowercase()


def history_entry_expr(title_text: str = "__title_text") -> pl.Expr:
    """One history entry: `bought: white mug` or `searched: red mug`.

    Needs event_type, query, item_id and the column `title_text` made by `title_text_expr`.
    """
    verb = pl.col(S.EVENT_TYPE).replace_strict(VERBS, default="interacted")
    what = pl.when(pl.col(S.EVENT_TYPE) == S.EventType.SEARCH.value).then(
        _clean(pl.col(S.QUERY)).str.to_lowercase()
    ).otherwise(pl.col(title_text).fill_null(pl.col(S.ITEM_ID)))
    return pl.concat_str([verb, pl.lit(": "), what])


def history_text(entries_newest_first: list[str]) -> str:
    """Join rendered entries, newest first, so a max token length drops the oldest."""
    return "; ".join(entries_newest_first)
