"""What a shop's column name most likely means: the canonical column each export's names usually
stand for (`event_time`, `visitorid`, `Lineitem sku`, `product_id`), and `match_columns`, which
picks one shop column per canonical column by name (features/data/suggest.py's guesses)."""

from __future__ import annotations

import re

from features.data import schema as S

# Canonical column -> shop column names that usually mean it (normalised: lower case, no separators),
# most specific first. A name equal to one wins over a name that merely contains one.
EVENT_NAMES = {
    S.TS: ("eventtime", "timestamp", "eventtimestamp", "datetime", "time", "ts", "createdat", "invoicedate",
           "orderdate", "eventdate", "date", "timeframe"),
    S.USER_ID: ("userid", "customerid", "visitorid", "clientid", "userpseudoid", "shopperid", "memberid", "buyerid",
                "accountid", "user", "customer", "visitor", "client", "email"),
    S.ITEM_ID: ("itemid", "productid", "articleid", "variantid", "parentasin", "asin", "sku", "stockcode", "movieid",
                "bookid", "isbn", "trackid", "songid", "listingid", "contentid", "item", "product", "article", "offerid"),
    S.EVENT_TYPE: ("eventtype", "eventname", "event", "action", "behavior", "behaviour", "interaction", "=type"),
    S.SESSION_ID: ("sessionid", "usersession", "visitid", "session", "invoiceno", "orderid", "ordernumber", "receipt",
                   "=invoice"),
    S.QUANTITY: ("quantity", "qty", "units"),
    S.PRICE: ("unitprice", "price", "saleprice"),
    S.QUERY: ("searchterm", "searchquery", "query", "keyword"),
    S.EVENT_ID: ("eventid", "messageid"),
}
ITEM_NAMES = {
    S.ITEM_ID: (*EVENT_NAMES[S.ITEM_ID], "=id"),  # a catalog's own "id" column (an event log's "id" is the event's)
    S.TITLE: ("title", "productname", "prodname", "itemname", "productdisplayname", "name"),
    S.DESCRIPTION: ("description", "productdescription", "details", "bodyhtml", "desc"),
    S.CATEGORY: ("categorycode", "category", "categories", "maincategory", "producttype", "department",
                 "categoryid", "genres", "genre"),
    S.BRAND: ("brand", "manufacturer", "vendor"),
    S.PRICE: EVENT_NAMES[S.PRICE],
    S.IN_STOCK: ("instock", "available", "availability", "stockstatus"),
}
TS_NAMES, USER_NAMES = {S.TS: EVENT_NAMES[S.TS]}, {S.USER_ID: EVENT_NAMES[S.USER_ID]}
GENERIC_LEAVES = ("name", "amount", "value", "id", "code")  # a nested record's field named by its parent too
# a date named for what happens after the shopper acted (Olist's shipping_limit_date): the time only when no other is
LATER = {"ship", "shipping", "shipped", "delivery", "delivered", "limit", "due", "estimated", "expiry", "expires"}


def leaf(name: str) -> str:
    """A nested column's own name: its last part (`properties.product_id` -> `product_id`), with its
    parent where that part alone says nothing (`brand.name`, `price.amount`, `user.id`)."""
    parts = name.split(".")
    if len(parts) > 1 and re.sub(r"[^0-9a-z]", "", parts[-1].lower()) in GENERIC_LEAVES:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", leaf(name).lower())


def tokens(name: str) -> set[str]:
    """`Lineitem sku` -> {lineitem, sku}; `CustomerID` -> {customer, id}; `user_session` -> {user, session}."""
    return {t.lower() for t in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", leaf(name))}


def match_columns(columns: list[str], names: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Canonical column -> the shop column whose name most likely means it (each used once). Per
    canonical column its words are tried in order, each as the whole name first, then as a word of
    the name or (six letters or more) its ending; a word written `=type` only as the whole name. An
    item id is a column named for an order or line, and the time a date named for what came after
    (shipping, delivery), only when no other fits."""
    normed, toks, out = {c: norm(c) for c in columns}, {c: tokens(c) for c in columns}, {}

    def first(free: list[str], words: tuple[str, ...]) -> str | None:
        for w in words:
            exact_only, w = w.startswith("="), w.lstrip("=")
            hit = next((c for c in free if normed[c] == w or normed[c].removesuffix("name") == w), None)  # producttypename
            if hit is None and not exact_only:
                hit = next((c for c in free if w in toks[c] or (len(w) >= 6 and normed[c].endswith(w))), None)
            if hit is not None:
                return hit
        return None

    for canonical, words in names.items():  # a date's column ("Date sale price starts") only as the time
        free = [c for c in columns if c not in out.values() and (canonical == S.TS or not toks[c] & {"date", "time"})]
        last = [c for c in free if (canonical == S.ITEM_ID and toks[c] & {"order", "line"})  # Olist's order_item_id
                or (canonical == S.TS and toks[c] & LATER)]  # ... numbers lines; shipping_limit_date: after the act
        hit = first([c for c in free if c not in last], words) or first(last, words)  # tried only when no other fits
        if hit is not None:
            out[canonical] = hit
    return out
