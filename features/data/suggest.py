"""A column mapping to start from, guessed from a shop's export (`make mapping EVENTS=... [ITEMS=...]`).

Writing the mapping (features/data/mapping.py) is the one step between a shop's export and `make run
MAPPING=...`. This reads the first rows of each file (any format the import reads) and guesses:

- which column feeds which canonical one, by the column's name (`event_time`, `visitorid`,
  `Lineitem sku`, `product_id`, ...; each column used once, exact names before names that contain
  a known word);
- the delimiter of a CSV that is not comma-separated (`;`, tab, `|`);
- how the times are written: ISO 8601 or epoch numbers (read as they are), else the first of a few
  common `ts_format` patterns that reads every sampled time; day-first and month-first are only
  chosen where the sample tells them apart (a day above 12), otherwise the guess says it is unsure;
- the shop's event words (`addtocart`, `transaction`) and the contract's type each most likely
  means; a log without an event column is taken as purchases, and says so;
- a decimal comma in prices, and an items file (or the events file's own product columns, or the
  item id as the title).

Every guess is a starting point: the file is printed with the reasons and doubts as comments, to be
read before `make run`. Nothing is imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl

from features import artifacts as A
from features.data import schema as S
from features.data.reading import format_of, iter_tables
from features.data.validate import iso_times
from features.data.values import guess_event_type

SAMPLE_ROWS = 20_000
# Canonical column -> shop column names that usually mean it (normalised: lower case, no separators),
# most specific first. A name equal to one wins over a name that merely contains one.
EVENT_NAMES = {
    S.TS: ("eventtime", "timestamp", "eventtimestamp", "datetime", "time", "ts", "createdat", "invoicedate",
           "orderdate", "eventdate", "date", "timeframe"),
    S.USER_ID: ("userid", "customerid", "visitorid", "clientid", "userpseudoid", "shopperid", "memberid", "buyerid",
                "accountid", "user", "customer", "visitor", "client", "email"),
    S.ITEM_ID: ("itemid", "productid", "articleid", "variantid", "parentasin", "asin", "sku", "stockcode", "item",
                "product", "article", "offerid"),
    S.EVENT_TYPE: ("eventtype", "eventname", "event", "action", "behavior", "behaviour", "interaction", "=type"),
    S.SESSION_ID: ("sessionid", "usersession", "visitid", "session", "invoiceno", "orderid", "ordernumber",
                   "=invoice"),
    S.QUANTITY: ("quantity", "qty", "units"),
    S.PRICE: ("unitprice", "price", "saleprice"),
    S.QUERY: ("searchterm", "searchquery", "query", "keyword"),
    S.EVENT_ID: ("eventid", "messageid"),
}
ITEM_NAMES = {
    S.ITEM_ID: EVENT_NAMES[S.ITEM_ID],
    S.TITLE: ("title", "productname", "prodname", "itemname", "productdisplayname", "name"),
    S.DESCRIPTION: ("description", "productdescription", "details", "bodyhtml", "desc"),
    S.CATEGORY: ("categorycode", "category", "categories", "maincategory", "producttype", "department",
                 "categoryid"),
    S.BRAND: ("brand", "manufacturer", "vendor"),
    S.PRICE: EVENT_NAMES[S.PRICE],
    S.IN_STOCK: ("instock", "available", "availability", "stockstatus"),
}
TS_FORMATS = ("%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M",
              "%d.%m.%Y %H:%M:%S", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y %H:%M", "%d-%m-%Y")
DELIMITERS = (";", "\t", "|")


@dataclass
class Suggestion:
    events: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was guessed, and what to check


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower().rsplit(".", 1)[-1])


def _tokens(name: str) -> set[str]:
    """`Lineitem sku` -> {lineitem, sku}; `CustomerID` -> {customer, id}; `user_session` -> {user, session}."""
    return {t.lower() for t in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name.rsplit(".", 1)[-1])}


def match_columns(columns: list[str], names: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Canonical column -> the shop column whose name most likely means it (each used once). Per
    canonical column its words are tried in order, each as the whole name first, then as a word of
    the name or (six letters or more) its ending; a word written `=type` only as the whole name."""
    norm = {c: _norm(c) for c in columns}
    toks = {c: _tokens(c) for c in columns}
    out: dict[str, str] = {}
    for canonical, words in names.items():
        free = [c for c in columns if c not in out.values()]
        for w in words:
            exact_only, w = w.startswith("="), w.lstrip("=")
            hit = next((c for c in free if norm[c] == w), None)
            if hit is None and not exact_only:
                hit = next((c for c in free if w in toks[c] or (len(w) >= 6 and norm[c].endswith(w))), None)
            if hit is not None:
                out[canonical] = hit
                break
    return out


def _sample(path: str) -> tuple[pl.DataFrame, str | None]:
    """The first rows of the first file under `path`, and the delimiter a CSV needs (None: the comma)."""
    delimiter = None
    fs, first_file = next(iter(A.list_files(path)))
    if format_of(first_file, "auto") == "csv":  # the header line's most frequent separator
        with fs.open_input_stream(first_file, compression="detect") as f:
            header = (f.read(1 << 16).decode("utf-8", "replace").splitlines() or [""])[0]
        counts = {d: header.count(d) for d in (",", *DELIMITERS)}
        best = max(counts, key=lambda d: counts[d])
        delimiter = best if best != "," and counts[best] > counts[","] else None
    t = next(iter_tables(path, delimiter=delimiter, chunk_rows=SAMPLE_ROWS))
    return pl.from_arrow(t.slice(0, SAMPLE_ROWS)), delimiter  # type: ignore[return-value]


def _ts(values: pl.Series, notes: list[str], col: str) -> dict:
    """The mapping's time settings for a sampled time column."""
    text = values.drop_nulls().cast(pl.String).str.strip_chars()
    text = text.filter(text != "")
    if text.is_empty():
        return {}
    if text.cast(pl.Float64, strict=False).is_not_null().all():
        return {"ts_unit": "auto"}  # epoch numbers: the unit is read from their size
    if iso_times(text).is_not_null().all():
        return {}
    fits = [f for f in TS_FORMATS if text.str.to_datetime(f, strict=False).is_not_null().all()]
    if not fits:
        notes.append(f"the times in {col!r} (e.g. {text[0]!r}) are neither ISO 8601 nor a common pattern: set "
                     "ts_format (a strftime pattern)")
        return {"ts_format": "<strftime pattern, e.g. %d/%m/%Y %H:%M>"}
    twin = fits[0].replace("%d", "%D").replace("%m", "%d").replace("%D", "%m")
    if twin in fits:  # both day-first and month-first read every sampled time
        notes.append(f"the times in {col!r} (e.g. {text[0]!r}) read both day-first and month-first in this "
                     f"sample: ts_format {fits[0]!r} is a guess; check it against a date you know")
    return {"ts_format": fits[0]}


def _blank(col: pl.Series) -> pl.Series:
    return col.is_null() | (col.cast(pl.String).str.strip_chars() == "")


def _fill_down(ev: pl.DataFrame, cols: dict[str, str], s: Suggestion) -> None:
    """Rows without a time that continue the order above them (an export that writes an order's
    fields on its first line item only): fill_down the time (and a customer left blank the same
    way) within the order, found as a column never blank that repeats on exactly those rows."""
    blank = _blank(ev.get_column(cols[S.TS]))
    share = float(blank.mean() or 0.0)
    if share <= 0.05:
        return
    starts = ~blank & (pl.int_range(ev.height, eager=True) > 0)
    for c in ev.columns:
        col = ev.get_column(c)
        if c in cols.values() and c != cols.get(S.SESSION_ID) or _blank(col).any():
            continue
        same = (col == col.shift(1)).fill_null(False)
        if (same | ~blank).all() and float((~same).filter(starts).mean() or 0.0) >= 0.9:
            fill = [cols[S.TS]] + [cols[k] for k in (S.USER_ID,) if k in cols and _blank(ev.get_column(cols[k])).any()]
            s.events.update({"fill_down": fill, "fill_down_by": c})
            s.events["columns"].setdefault(S.SESSION_ID, c)
            s.notes.append(f"{share:.0%} of the sampled rows have no time: they continue the order above them "
                           f"({c!r} repeats on exactly those rows), so fill_down fills {fill} within each {c!r}")
            return
    s.notes.append(f"{share:.0%} of the sampled rows have no time in {cols[S.TS]!r} and no order column explains "
                   "them: if the export writes an order's fields on its first line only, add fill_down: [that "
                   "column, ...] and fill_down_by: <order id>; otherwise those rows are quarantined (null_ts)")


def _event_types(values: pl.Series, notes: list[str], col: str) -> dict:
    words = values.drop_nulls().cast(pl.String).value_counts(sort=True).head(50)
    out, unknown = {}, []
    for v, _ in words.iter_rows():
        if v in S.EVENT_TYPES:
            continue
        g = guess_event_type(v)
        if g:
            out[v] = g
        else:
            unknown.append(v)
    if unknown:
        notes.append(f"event words in {col!r} with no guess: {unknown[:10]}; map them in values.event_type "
                     f"(the types: {', '.join(S.EVENT_TYPES)}) or the feature job quarantines them")
    return out


def _decimal(values: pl.Series) -> str | None:
    text = values.drop_nulls().cast(pl.String).str.strip_chars()
    comma = text.str.contains(r"^\D{0,4}\d+,\d{1,2}\D{0,4}$").sum()
    point = text.str.contains(r"^\D{0,4}\d+\.\d{1,2}\D{0,4}$").sum()
    return "," if comma > point else None


def suggest(events: str, items: str | None = None) -> Suggestion:
    """A mapping to start from for the files `events` (and `items`), with notes on what to check."""
    s = Suggestion()
    ev, delim = _sample(events)
    cols = match_columns(ev.columns, EVENT_NAMES)
    s.events = {"path": events, **({"delimiter": delim} if delim else {})}
    for need in (S.TS, S.USER_ID, S.ITEM_ID):
        if need not in cols:
            s.notes.append(f"no column of the events looks like {need}; the file has: {', '.join(ev.columns)}")
    if S.ITEM_ID in cols and cols.get(S.USER_ID) == cols[S.ITEM_ID]:
        cols.pop(S.USER_ID)
    s.events["columns"] = {k: cols[k] for k in EVENT_NAMES if k in cols}
    if S.TS in cols:
        _fill_down(ev, cols, s)
        s.events.update(_ts(ev.get_column(cols[S.TS]), s.notes, cols[S.TS]))
    if S.EVENT_TYPE in cols:
        words = _event_types(ev.get_column(cols[S.EVENT_TYPE]), s.notes, cols[S.EVENT_TYPE])
        if words:
            s.events["values"] = {S.EVENT_TYPE: words}
    else:
        s.events["constants"] = {S.EVENT_TYPE: S.EventType.PURCHASE.value}
        s.notes.append("no event type column: every row is taken as a purchase (constants.event_type); "
                       "use view for a browsing log")
    if S.PRICE in cols and _decimal(ev.get_column(cols[S.PRICE])):
        s.events["decimal_separator"] = ","
    if items:
        it, idelim = _sample(items)
        icols = match_columns(it.columns, ITEM_NAMES)
        s.items = {"path": items, **({"delimiter": idelim} if idelim else {})}
        if S.ITEM_ID not in icols:
            s.notes.append(f"no column of the items looks like an item id; the file has: {', '.join(it.columns)}")
        if S.PRICE in icols and _decimal(it.get_column(icols[S.PRICE])):
            s.items["decimal_separator"] = ","
    else:  # the catalog from the events file's own product columns
        rest = [c for c in ev.columns if c not in s.events["columns"].values()]
        icols = match_columns(rest, {k: v for k, v in ITEM_NAMES.items() if k not in (S.ITEM_ID, S.PRICE)})
        icols[S.ITEM_ID] = cols.get(S.ITEM_ID, "<item id column>")
        if S.PRICE in cols:
            icols[S.PRICE] = cols[S.PRICE]
    if S.TITLE not in icols and S.DESCRIPTION in icols:  # a short description is often the only name
        icols[S.TITLE] = icols.pop(S.DESCRIPTION)
        s.notes.append(f"no product name column: the description ({icols[S.TITLE]!r}) is the title")
    if S.TITLE not in icols:
        icols[S.TITLE] = icols.get(S.ITEM_ID, "<title column>")
        s.notes.append("no product name found: the item id is the title (search then sees only ids); map a "
                       "name column to title if the export has one")
    s.items["columns"] = {k: icols[k] for k in ITEM_NAMES if k in icols}
    return s


def to_yaml(s: Suggestion) -> str:
    """The suggestion as a mapping file, with its notes as comments at the top."""
    import yaml

    head = ["# A mapping to start from, guessed from the files' first rows (features/data/suggest.py).",
            "# Check it, then: make run MAPPING=<this file>   (every key: docs/data.md)"]
    head += [f"# CHECK: {n}" for n in s.notes]
    body = yaml.safe_dump({"events": s.events, "items": s.items}, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(head) + "\n" + body

