"""A shop's category column as the contract's one path, "A > B > C".

Shops write category paths with their own separators (a Kaggle event log's
"electronics.smartphone", Magento's "Default Category/Gear/Bags") and often list several
categories in one cell (WooCommerce's "Clothing > Hoodies, Clothing", Magento's
"Default Category/Gear,Default Category/Gear/Bags"). The contract holds one path per item, which
the category filter matches by prefix and the ranker's category features compare whole; a list
kept as one string would make every combination a category of its own. So a mapping's
`category_separator` turns a path's separator into " > ", and `category_list_separator` keeps
the most specific category of a list (the path with the most levels; the first of those on a
tie): "Clothing > Hoodies, Clothing" -> "Clothing > Hoodies". `category_root` drops a first level
every path starts with and which says nothing of an item (Magento's "Default Category"), so a
filter names "Gear", as the shop's storefront does. `guess` proposes the separators from a sample
of the column and `shared_root` the root (`make mapping`).
"""

from __future__ import annotations

import re

import polars as pl

from features.data.validate import SchemaError

PATH_SEPARATORS = (">", "/", "|", ".", "::")
LIST_SEPARATORS = (",", ";", "|")
_LEVEL = re.compile(r"^[^\W\d_][\w&'+ -]*$")  # a level of a path: words, not a number or a sentence


def one_path(col: pl.Series, separator: str | None, list_separator: str | None, root: str | None = None) -> pl.Series:
    """The category column as one path per item: levels split at `separator` (None: " > " already,
    or no path) and joined by " > "; with `list_separator`, the list's path with the most levels;
    with `root`, that first level dropped (a path of the root alone is no category)."""
    if not separator and not list_separator and not root:
        return col
    df = pl.DataFrame({"v": col.cast(pl.String)}).with_row_index("row")
    if list_separator:
        df = df.with_columns(pl.col("v").str.split(list_separator)).explode("v")
    levels = (pl.col("v").str.split(separator or ">").list.eval(pl.element().str.strip_chars())
              .list.eval(pl.element().filter(pl.element() != "")))
    if root:
        levels = pl.when(levels.list.first() == root.strip()).then(levels.list.slice(1)).otherwise(levels)
    df = df.with_columns(levels.alias("p")).with_columns(pl.col("p").list.len().fill_null(0).alias("n"))
    best = (df.with_row_index("k").sort(["row", "n", "k"], descending=[False, True, False])
            .unique("row", keep="first", maintain_order=True).sort("row"))
    return best.select(pl.when(pl.col("n") > 0).then(pl.col("p").list.join(" > ")).alias(col.name)).to_series()


def check(where: str, table: str, separator: str | None, list_separator: str | None, root: str | None) -> None:
    """SchemaError naming the field when a category setting is blank, on an events file, or the list
    separator is the path separator."""
    for key, value, e in (("category_separator", separator, 'paths, e.g. "." or "/"'),
                          ("category_list_separator", list_separator, 'lists, e.g. ","'),
                          ("category_root", root, 'paths\' first level, e.g. "Default Category"')):
        if value is not None and (table != "items" or not value.strip() or (key == "category_list_separator"
                                                                           and value == separator)):
            raise SchemaError(f"{where}.{key}: {value!r}; a non-blank {'name' if 'root' in key else 'separator'} of the "
                              f"items' category {e}" + (", other than the path separator" if "list" in key else ""))


def _path_separator(pieces: list[str]) -> str | None:
    """The separator that splits most pieces into levels of words with shared roots, if any."""
    for sep in PATH_SEPARATORS:
        split = [[lv.strip() for lv in p.split(sep)] for p in pieces if sep in p]
        if len(split) < 0.3 * len(pieces) or not all(len(s) > 1 and all(_LEVEL.match(lv) for lv in s) for s in split):
            continue
        if len({s[0] for s in split}) < len({tuple(s) for s in split}):  # roots repeat: a tree, not a phrase
            return sep
    return None


def guess(col: pl.Series) -> dict[str, str]:
    """`category_separator` and `category_list_separator` for a sampled category column ({} when its
    values are single names or already " > " paths). A list separator is guessed only where the
    pieces are paths of the same tree or names found alone in other rows: "Bags, Backpacks" alone
    stays a name."""
    values = [v.strip() for v in col.drop_nulls().cast(pl.String).to_list() if v.strip()]
    if len(values) < 3:
        return {}
    out: dict[str, str] = {}
    for sep in LIST_SEPARATORS:
        listed = [v for v in values if sep in v]
        if len(listed) < 0.1 * len(values):
            continue
        pieces = [p.strip() for v in values for p in v.split(sep) if p.strip()]
        path = _path_separator(pieces)
        alone = {v for v in values if sep not in v}
        in_list = [p.strip() for v in listed for p in v.split(sep) if p.strip()]
        if path != sep and (path or sum(p in alone for p in in_list) >= 0.5 * len(in_list)):
            out["category_list_separator"] = sep
            values = pieces
            break
    path = _path_separator(values)
    if path and not (path == ">" and all(" > " in v for v in values if ">" in v)):  # " > ": the contract's own
        out["category_separator"] = path
    return out


def shared_root(col: pl.Series, settings: dict[str, str]) -> str | None:
    """The first level every sampled path shares, when each has more below it (Magento's "Default
    Category"): a category filter must then start with it, as filters match a path's prefix."""
    paths = one_path(col, settings.get("category_separator"), settings.get("category_list_separator"))
    levels = [p.split(" > ") for p in paths.drop_nulls().cast(pl.String).to_list() if p.strip()]
    roots = {lv[0] for lv in levels}
    return roots.pop() if len(levels) >= 3 and len(roots) == 1 and all(len(lv) > 1 for lv in levels) else None
