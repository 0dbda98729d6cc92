"""A column mapping to start from, guessed from a shop's export (`make mapping EVENTS=... [ITEMS=...]`).

Writing the mapping (features/data/mapping.py) is the one step between a shop's export and `make run
MAPPING=...`. This reads the first rows of each file (any format the import reads) and guesses:

- which column feeds which canonical one, by the column's name (`event_time`, `visitorid`,
  `Lineitem sku`, `product_id`, ...; each column used once, exact names before names that contain
  a known word);
- the delimiter of a CSV that is not comma-separated (`;`, tab, `|`);
- how the times are written: ISO 8601 or epoch numbers (read as they are), else the common
  `ts_format` pattern that reads the most sampled times (all but 1%: a stray row is named, not a
  reason to give up); day-first and month-first are only chosen where the sample tells them apart
  (a day above 12), otherwise the guess says it is unsure;
- in a nested export (JSON lines, Parquet), `key_values` for a list of {key, value} records and
  `explode` for a list of records that names products, the item id, quantity and price then read
  from the list's element first and the record second;
- the shop's event words (`addtocart`, `transaction`) and the contract's type each most likely
  means; a log without an event column is taken as purchases, and says so;
- a decimal comma in prices, an items file (or the events file's product columns, or the item id as
  the title); `fill_down` where rows continue the order or product above (fill.py), `properties` for
  a catalog with a row per item and property (pivot.py), order numbers (`#1001`) as the session.

Every guess is a starting point, printed with the reasons and doubts as comments to read before
`make run`. Nothing is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from features.data import schema as S
from features.data.categories import guess as guess_category
from features.data.categories import shared_root
from features.data.column_names import EVENT_NAMES, ITEM_NAMES, LATER, TS_NAMES, USER_NAMES, match_columns, norm, tokens
from features.data.fill import find_parent, guess_fill_down
from features.data.joins import Join, Joiner, find_joins
from features.data.pivot import find_properties, pivot_properties, property_names
from features.data.sniff import decimal_comma, element_fields, sample, time_settings, without_header, workbook_sheets
from features.data.validate import iso_times
from features.data.values import event_type_words, is_offset, time_text

DAY = r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$"  # 25/01/2024, 2024-01-25
DATE = DAY[:-1] + r"( \d{1,2}:\d\d(:\d\d)?)?$"  # ... or with a time of day: 2024-01-25 10:00
CODES = {"no", "id", "code", "number", "num", "nr"}  # a column of codes beside its names (department_no, _name)
FILE_EVENTS = {"views": "view", "view": "view", "clicks": "click", "click": "click", "carts": "add_to_cart"}


@dataclass
class Suggestion:
    events: dict | list = field(default_factory=dict)  # a list for several events files
    items: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was guessed, and what to check
    unsure: list[str] = field(default_factory=list)  # notes a person must settle before an import (blockers)

    def blockers(self) -> list[str]:
        """What keeps the guess from an import as it is (mapping: auto): a `<...>` placeholder, a doubt."""
        tables = [("events", d) for d in (self.events if isinstance(self.events, list) else [self.events])]
        holes = [f"{table}.{k}: {v}" for table, d in (*tables, ("items", self.items))
                 for k, v in [*d.items(), *d.get("columns", {}).items()] if isinstance(v, str) and v.startswith("<")]
        return self.unsure + holes


def _nested(ev: pl.DataFrame, s: Suggestion) -> tuple[str | None, str | None]:
    """`key_values` (a list of {key, value} records: GA4's event_params) and `explode` (a list of
    records one of whose fields names a product: an order's products) for a nested export."""
    lists = {c: f for c in ev.columns if (f := element_fields(ev.get_column(c)))}
    key_values = next((c for c, f in lists.items() if {"key", "value"} <= set(f) and len(f) <= 3), None)
    explode = next((c for c, f in lists.items() if c != key_values and S.ITEM_ID in match_columns(
        f, {S.ITEM_ID: EVENT_NAMES[S.ITEM_ID]})), None)
    if key_values:
        s.notes.append(f"{key_values!r} is a list of {{key, value}} records: key_values makes a column "
                       f"{key_values}.<key> of each key")
    if explode:
        s.notes.append(f"{explode!r} lists products ({', '.join(lists[explode][:6])}): explode makes each of them an "
                       "event of its own (the record's user, time and type); a record without it stays one row")
    return explode, key_values


def _split_match(columns: list[str], names: dict[str, tuple[str, ...]], explode: str | None,
                 inner_keys: tuple[str, ...], several: tuple[str, ...] = ()) -> dict[str, str | list[str]]:
    """match_columns with an exploded list: the columns `inner_keys` take the list's own field where it
    has one (those in `several` list a matching record-level column second: the first non-blank wins,
    as a view names its one product at the record level and an order in its list); the others come
    from the record level only."""
    columns = [c for c in columns if not c.endswith("#")]  # the list position `explode` adds
    if not explode:
        return dict(match_columns(columns, names))
    inner = [c for c in columns if c.startswith(f"{explode}.")]
    a = match_columns(inner, {k: v for k, v in names.items() if k in inner_keys})
    b = match_columns([c for c in columns if c not in inner and c != explode], names)
    out: dict[str, str | list[str]] = {}
    for k in names:
        if k in a and k in b and k in several:
            out[k] = [a[k], b[k]]
        elif k in a or k in b:
            out[k] = a.get(k) or b[k]
    return out


def _all(col: pl.Series, pattern: str) -> bool:  # every sampled value (some there) matches
    v = col.drop_nulls().cast(pl.String).str.strip_chars()
    return bool(v.len()) and bool(v.str.contains(pattern).all())


def _sheet(path: str, events: bool) -> str | None:
    """Of a workbook with several sheets (orders and products), the first whose columns look like
    events (a time and an item) or like a catalog (a title and no time); None otherwise."""
    names = workbook_sheets(path)
    for name in names if len(names) > 1 else []:
        cols = sample(path, sheet=name)[0].columns
        got, timed = match_columns(cols, EVENT_NAMES if events else ITEM_NAMES), S.TS in match_columns(cols, TS_NAMES)
        if (S.ITEM_ID in got and timed) if events else (S.TITLE in got and not timed):
            return name
    return None


def _names_shopper(column: str) -> bool:  # customer_unique_id, buyer_email; not customer_city
    return bool(match_columns([column], USER_NAMES)) and bool(tokens(column) & {"id", "email", "uid", "uuid"})


def _first(c: str | list[str]) -> str:
    return c[0] if isinstance(c, list) else c


def _fill_down(df: pl.DataFrame, cols: dict[str, str], s: Suggestion, table: dict, events: bool) -> None:
    """Rows without a time (events) or a title (items) that continue the order or product above
    them (features/data/fill.py): fill_down those columns within it, or say what becomes of them."""
    key, also = (S.TS, (S.USER_ID,)) if events else (S.TITLE, (S.DESCRIPTION, S.CATEGORY, S.BRAND))
    g = guess_fill_down(df, cols[key], [v for k, v in cols.items() if k != S.SESSION_ID or not events],
                        [cols[k] for k in also if k in cols])
    what = "time" if events else "title"
    if g is not None and g.by:
        table.update({"fill_down": g.columns, "fill_down_by": g.by})
        if events:
            table["columns"].setdefault(S.SESSION_ID, g.by)
        s.notes.append(f"{g.share:.0%} of the sampled {'rows' if events else 'item rows'} have no {what}: they "
                       f"continue the {'order' if events else 'product'} above them ({g.by!r} repeats on exactly "
                       f"those rows), so fill_down fills {g.columns} within each {g.by!r}")
    elif g is not None:
        s.notes.append(f"{g.share:.0%} of the sampled {'rows' if events else 'item rows'} have no {what} in "
                       f"{cols[key]!r} and no {'order' if events else 'product'} column explains them: if the export "
                       f"writes a record's fields on its first line only, add fill_down: [that column, ...] and "
                       f"fill_down_by: <its id>; otherwise those rows are quarantined "
                       f"({'null_ts' if events else 'missing_title'})")


def _headerless(ev: pl.DataFrame, path: str, read: dict, s: Suggestion, table: dict, events: bool) -> pl.DataFrame:
    """A CSV whose first row is data (sniff.py `without_header`): sampled again with `column_names`."""
    found = without_header(ev, path, read, events=events)
    if found is None:
        return ev
    s.notes.append(f"the first line of {path} reads as data, not a header ({', '.join(ev.columns[:4])}, ...): "
                   "column_names names the columns in order; rename them for what they hold (user, session, item, "
                   "title, ...) and map them")
    s.unsure.append(s.notes[-1])
    table["column_names"] = list(found.columns)
    return found


def _read_note(read: dict, given: str | None, path: str, s: Suggestion) -> dict:
    said = {"encoding": f"{path} is not UTF-8 text: read as {read.get('encoding')} (encoding); check accented letters",
            "format": f"{path} is not Parquet whatever its name: read as {read.get('format')} (format: {read.get('format')})",
            "sheet": f"{path}: sheet {read.get('sheet')!r} (a workbook of several sheets; the import reads this one)"}
    s.notes += [n for k, n in said.items() if read.get(k) and not (k == "encoding" and given)]
    return read


def _events(s: Suggestion, events: str, encoding: str | None, many: bool,
            joins: list[dict]) -> tuple[dict, pl.DataFrame, dict, str | None]:
    """One events file's part of the mapping: (its table, the sample, the columns matched, explode).
    With `many` files, its notes name it; `joins`: the tables its rows look up (find_joins)."""
    noted, unsure, table = len(s.notes), len(s.unsure), {}
    ev, read = sample(events, encoding=encoding, sheet=_sheet(events, True))
    table.update({"path": events, **_read_note(read, encoding, events, s), **({"join": joins} if joins else {})})
    if joins:  # the sample as the import will read it: each line with its order's (and customer's) columns
        joiner = Joiner(tuple(Join(**j) for j in joins), "events")
        ev = pl.DataFrame(joiner(ev.to_arrow()))
        s.notes.append("look-ups: " + "; ".join(f"{j['path']} by {j['key']!r}" for j in joins))
    ev = _headerless(ev, events, read, s, table, True)
    explode, key_values = _nested(ev, s)
    if explode or key_values:  # sampled again as the import will read it
        ev, _ = sample(events, explode, key_values, encoding=read.get("encoding"))
        table.update({k: v for k, v in (("explode", explode), ("key_values", key_values)) if v})
    per_product = (S.ITEM_ID, S.QUANTITY, S.PRICE)
    cols = _split_match(ev.columns, EVENT_NAMES, explode, per_product, several=per_product)
    taken = {c for v in cols.values() for c in ([v] if isinstance(v, str) else v)}
    orders = [c for c in ev.columns if c not in taken and ev.get_column(c).cast(pl.String).str.contains(r"^#\d+$").all()]
    if S.SESSION_ID not in cols and orders:  # order numbers (#1001, Shopify's Name): an order is a session
        cols[S.SESSION_ID] = orders[0]
    dates = [c for c in ev.columns if c not in taken and _all(ev.get_column(c), DAY)]
    times = [c for c in ev.columns if c not in taken and (_all(ev.get_column(c), DATE) or _all(
        ev.get_column(c), ".") and iso_times(ev.get_column(c).drop_nulls().cast(pl.String)).is_not_null().all())]
    if S.TS not in cols and times:  # a name it does not know (H&M's t_dat): the column of dates or times
        cols[S.TS] = times[0]
        s.notes.append(f"the time is {times[0]!r}, the column whose values are all dates or times")
    if isinstance(cols.get(S.TS), str) and _all(ev.get_column(cols[S.TS]), r"^\d{1,2}:\d\d(:\d\d(\.\d+)?)?$") and dates:
        cols[S.TS] = [dates[0], cols[S.TS]]  # a till's export: the date in one column, the time of day in another
    offsets = [c for c in ev.columns if c not in taken and S.TS in match_columns([c], TS_NAMES) and _all(ev[c], r"^\d{1,9}$")]
    if isinstance(cols.get(S.TS), str) and _all(ev.get_column(cols[S.TS]), DAY) and offsets:
        cols[S.TS] = [cols[S.TS], offsets[0]]  # Diginetica: the day, and the ms since the session began (timeframe)
    if joins and (person := joiner.person(cols.get(S.USER_ID), _names_shopper)):
        s.notes.append(f"the shopper is {person!r}, the person behind each {cols[S.USER_ID]!r} of the table looked up by it")
        cols[S.USER_ID] = person
    for need in (S.TS, S.USER_ID, S.ITEM_ID):
        if need not in cols:
            s.notes.append(f"no column of the events looks like {need}; the file has: {', '.join(ev.columns)}")
            if need != S.USER_ID or S.SESSION_ID not in cols:  # a session alone is a guest shopper
                s.unsure.append(s.notes[-1])
    if S.ITEM_ID in cols and cols.get(S.USER_ID) == cols[S.ITEM_ID]:
        cols.pop(S.USER_ID)
    table["columns"] = {k: cols[k] for k in EVENT_NAMES if k in cols}
    one = {k: _first(v) for k, v in cols.items()}
    if S.TS in cols:
        _fill_down(ev, one, s, table, True)
        ts = [cols[S.TS]] if isinstance(cols[S.TS], str) else cols[S.TS]  # (several: as the import joins them)
        if later := [c for c in ts if tokens(c) & LATER]:
            s.notes.append(f"the time is {later[0]!r}, named for what came after the shopper acted (shipping, delivery): "
                           "map the time of the order or event instead where another file has it (join)")
        day = is_offset(parts := [ev[c] for c in ts])  # a day and an offset: the day's format is the time's
        table.update(time_settings(parts[0] if day else time_text(parts, "auto"), s.notes, " + ".join(ts), s.unsure))
    if S.EVENT_TYPE in cols:
        words = event_type_words(ev.get_column(one[S.EVENT_TYPE]), s.notes, one[S.EVENT_TYPE])
        if words:
            table["values"] = {S.EVENT_TYPE: words}
    else:  # a file named for its events (train-item-views.csv, yoochoose-clicks.dat), else purchases
        named = next((FILE_EVENTS[t] for t in tokens(events.rstrip("/").rsplit("/", 1)[-1].split(".")[0]) if t in FILE_EVENTS),
                     S.EventType.PURCHASE.value)
        table["constants"] = {S.EVENT_TYPE: named}
        s.notes.append(f"no event type column: every row is taken as a {named} (constants.event_type)"
                       + ("; use view for a browsing log" if named == S.EventType.PURCHASE.value else
                          ", as the file's name says"))
    if S.PRICE in cols and decimal_comma(ev.get_column(one[S.PRICE])):
        table["decimal_separator"] = ","
    if S.QUANTITY in cols and (ev.get_column(one[S.QUANTITY]).cast(pl.Float64, strict=False) < 0).any():
        table["negative_quantity"] = "return"
        s.notes.append(f"some quantities in {one[S.QUANTITY]!r} are negative: negative_quantity: return makes each "
                       "such line a return of that many units (without it, the feature job quarantines them)")
    if many:
        name = events.rstrip("/").rsplit("/", 1)[-1]
        s.notes[noted:], s.unsure[unsure:] = ([f"{name}: {n}" for n in x] for x in (s.notes[noted:], s.unsure[unsure:]))
    return table, ev, cols, explode


def suggest(events: str | list[str], items: str | None = None, encoding: str | None = None) -> Suggestion:
    """A mapping to start from for the files `events` (one, or several with their own columns: a list)
    and `items`, with notes on what to check. `encoding`: the files' character set (None: UTF-8,
    else the first fallback that reads them). Items from the events file come from the first."""
    s = Suggestion()
    paths = [events] if isinstance(events, str) else list(events)
    paths, joins = find_joins([(p, sample(p, encoding=encoding)[0] if len(paths) > 1 else None) for p in paths],
                              lambda cols: S.ITEM_ID in match_columns(cols, {S.ITEM_ID: EVENT_NAMES[S.ITEM_ID]}))
    found = [_events(s, p, encoding, len(paths) > 1, joins if k == 0 else []) for k, p in enumerate(paths)]
    s.events = found[0][0] if len(found) == 1 else [f[0] for f in found]  # type: ignore[assignment]
    _, ev, cols, explode = found[0]
    sheet = _sheet(items or paths[0], False)
    items = items or (paths[0] if sheet else None)  # one workbook of orders and products: its products sheet
    if items:
        it, iread = sample(items, encoding=encoding, sheet=sheet)
        s.items = {"path": items, **_read_note(iread, encoding, items, s)}
        it = _headerless(it, items, iread, s, s.items, False)
        icols = {k: v for k, v in match_columns(it.columns, ITEM_NAMES).items()  # a count is no text (Olist's
                 if k not in (S.DESCRIPTION, S.BRAND) or not _all(it.get_column(v), r"^\d+$")}  # description_lenght)
        for k in (S.CATEGORY, S.BRAND):  # a category's (a brand's) name, not its code, where the file has both
            if k in icols and tokens(icols[k]) & CODES:
                named = (tokens(icols[k]) - CODES) | {"name"}
                icols[k] = next((c for c in it.columns if tokens(c) == named and c not in icols.values()), icols[k])
        if S.ITEM_ID in icols and (parent := find_parent(it, icols[S.ITEM_ID], {_first(v) for v in icols.values()})):
            s.items["parent"] = parent
            s.notes.append(f"rows name a parent row in {parent['column']!r} (a product's variations): parent fills "
                           "their blank description, category and brand from it")
        if S.ITEM_ID not in icols:
            s.notes.append(f"no column of the items looks like an item id; the file has: {', '.join(it.columns)}")
            s.unsure.append(s.notes[-1])
        elif props := find_properties(it, iid := icols[S.ITEM_ID], match_columns(it.columns, TS_NAMES).get(S.TS)):
            names, it = property_names(it, props), pivot_properties(it, props, iid, "items")
            s.items["properties"] = {k: v for k, v in vars(props).items() if v}
            icols = {S.ITEM_ID: iid, **match_columns(names, {k: v for k, v in ITEM_NAMES.items() if k != S.ITEM_ID})}
            s.notes.append(f"a row per item and property: properties makes a column of each property name in "
                           f"{props.key!r} (sampled: {', '.join(names[:20])}{', ...' * (len(names) > 20)}); map them")
        priced = [c for c in it.columns if "price" in tokens(c) and not {"date", "time"} & tokens(c)]
        sale = [c for c in priced if {"sale", "special"} & tokens(c)]
        regular = [c for c in priced if "regular" in tokens(c)] or [c for c in priced if norm(c) == "price"]
        if S.PRICE in icols and sale and regular:  # WooCommerce, Magento: the sale price where there is one
            icols[S.PRICE] = [sale[0], regular[0]]  # type: ignore[assignment]
            s.notes.append(f"price: {sale[0]!r} where set, else {regular[0]!r}")
        if S.PRICE in icols and decimal_comma(it.get_column(_first(icols[S.PRICE]))):
            s.items["decimal_separator"] = ","
        if S.TITLE in icols:
            _fill_down(it, icols, s, s.items, False)
    else:  # the catalog from the events file's own product columns
        used = {c for v in cols.values() for c in ([v] if isinstance(v, str) else v)}
        names = {k: v for k, v in ITEM_NAMES.items() if k not in (S.ITEM_ID, S.PRICE)}
        icols = _split_match([c for c in ev.columns if c not in used], names, explode, tuple(names))
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
    if isinstance(cat := icols.get(S.CATEGORY), str):
        col = (it if items else ev).get_column(cat)
        if paths := guess_category(col):
            s.items.update(paths)
            s.notes.append(f"{cat!r} holds category paths: {', '.join(f'{k}: {v!r}' for k, v in paths.items())} make "
                           "each item's category one path \"A > B\" (of a list, its deepest), which filters match by prefix")
        if root := shared_root(col, paths):
            s.items["category_root"] = root
            s.notes.append(f"every sampled category starts with {root!r}, dropped (category_root) so a filter names "
                           "the level below it; delete that line to keep it (filters then start with it)")
    return s


def to_yaml(s: Suggestion) -> str:
    """The suggestion as a mapping file, with its notes as comments at the top."""
    import yaml

    head = ["# A mapping to start from, guessed from the files' first rows (features/data/suggest.py).",
            "# Check it, then: make run MAPPING=<this file>   (every key: docs/data.md)"]
    head += [f"# CHECK: {n}" for n in s.notes]
    body = yaml.safe_dump({"events": s.events, "items": s.items}, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(head) + "\n" + body

