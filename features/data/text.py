"""Text rendering for the encoder: item text, and a shopper's recent history as text.

Both towers of the encoder read text produced here, offline and online, so the two cannot drift.
"""

from __future__ import annotations

import re

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


# Markup in shop text (a Shopify "Body (HTML)" description, an eBay listing): scripts, styles and
# comments go whole, tags become a space, the common entities their characters and other numeric
# ones a space. Escaped text (&lt;b&gt;) is text, so entities are read after the tags.
_MARKUP = (r"(?is)<script\b[^>]*>.*?</script\s*>", r"(?is)<style\b[^>]*>.*?</style\s*>", r"(?s)<!--.*?-->",
           r"</?[A-Za-z][^<>]*>")
_NUMERIC_ENTITY = r"&#(?:[0-9]{1,7}|[xX][0-9a-fA-F]{1,6});"
_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&ndash;": "-", "&mdash;": "-",
             "&rsquo;": "'", "&lsquo;": "'", "&rdquo;": '"', "&ldquo;": '"', "&hellip;": "...", "&reg;": "®",
             "&trade;": "™", "&copy;": "©", "&deg;": "°", "&frac12;": "½", "&times;": "×", "&#39;": "'",
             "&#34;": '"', "&#38;": "&", "&#160;": " ", "&#8211;": "-", "&#8212;": "-", "&#8216;": "'",
             "&#8217;": "'", "&#8220;": '"', "&#8221;": '"', "&amp;": "&"}
MARKUP_FIELDS = (S.TITLE, S.DESCRIPTION, S.CATEGORY, S.BRAND)


def strip_markup_expr(expr: pl.Expr) -> pl.Expr:
    """Text without HTML markup (see _MARKUP), its whitespace then collapsed; text without a `<`
    or `&` is left exactly as it is."""
    text = expr.cast(pl.String)
    out = text
    for pattern in _MARKUP:
        out = out.str.replace_all(pattern, " ")
    out = out.str.replace_many(list(_ENTITIES), list(_ENTITIES.values()), ascii_case_insensitive=True)
    out = out.str.replace_all(_NUMERIC_ENTITY, " ").str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(text.str.contains("[<&]")).then(out).otherwise(text)


def strip_markup(fields: dict[str, str | None]) -> dict[str, str | None]:
    """The scalar twin of `strip_markup_expr` over a few named fields (an item from the API)."""
    df = pl.DataFrame({k: [v] for k, v in fields.items()}, schema={k: pl.String for k in fields})
    return df.select(strip_markup_expr(pl.col(k)).alias(k) for k in fields).row(0, named=True)


# Unicode White_Space, spelled out so that Polars (Rust's regex) and Python's re read it alike.
_WS_CHARS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"
_WS = "[" + _WS_CHARS + "]+"
_WS_RE = re.compile(_WS)


def _clean(expr: pl.Expr) -> pl.Expr:
    # Collapse whitespace (titles in real logs carry double spaces and trailing blanks).
    return expr.cast(pl.String).str.replace_all(_WS, " ").str.strip_chars(_WS_CHARS)


def _clean_text(text: str | None) -> str | None:
    """`_clean` of one string, in Python."""
    return None if text is None else _WS_RE.sub(" ", text).strip(_WS_CHARS)


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
    """One item's text; the scalar twin of `item_text_expr` in plain Python (an upsert, or a replica
    replaying the item log, renders one at a time; the same output, proven by a test)."""
    parts = (_clean_text(v) for v in (title, category, brand, description))
    return " | ".join(p for p in parts if p)[:max_chars]


def title_query(title: object, words: int = 2) -> str:
    """What a shopper might type for an item: the first `words` words of its title (lower case,
    no bare numbers or codes), else its first 30 characters."""
    picked = [w for w in str(title).lower().replace(",", " ").split() if w.isalpha() or len(w) > 2][:words]
    return " ".join(picked) or str(title)[:30]


def popular_title_queries(items: pl.DataFrame, n: int) -> list[str]:
    """Up to n distinct `title_query`s of the items most shoppers chose (N_USERS, then item id):
    searches that mean something on this shop's catalog, for the jobs' and the demo's samples."""
    out: list[str] = []
    titled = items.filter(pl.col(S.TITLE).is_not_null() & (pl.col(S.TITLE).str.strip_chars() != ""))
    for title in titled.sort([S.N_USERS, S.ITEM_ID], descending=[True, False], nulls_last=True)[S.TITLE]:
        if len(out) >= n:
            break
        if (q := title_query(title)) not in out:
            out.append(q)
    return out


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
