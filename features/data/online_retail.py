"""Map the UCI Online Retail log to the canonical events and items tables.

Choices (also in docs/data.md):
- One `purchase` event per invoice line; a cancellation invoice ("C" prefix) gives `return`
  events with the absolute quantity.
- user_id is "c<CustomerID>". A line without a CustomerID cannot be linked to any other invoice,
  so its invoice is an anonymous shopper of its own: user_id "anon:<InvoiceNo>". Pooling all of
  them into one "anonymous" user would create a fake super-user with 135k lines and poison
  popularity-by-user and co-occurrence.
- session_id is the InvoiceNo: an invoice is one basket, bought at one instant.
- event_id is "<InvoiceNo>:<line>" with the line's position inside its invoice in file order,
  so identical repeated lines (the log has ~5k) stay distinct events, as they were distinct lines.
- Lines that are not merchandise (postage, fees, manual adjustments, bank charges, ...) and
  non-cancellation lines with a non-positive quantity (stock write-offs such as "damaged") are
  not shopper behaviour: they are returned as rejected rows with a reason, never dropped silently.
- Items: StockCode -> item_id; title = the most frequent description on priced lines (ties: the
  alphabetically first); price = median unit price of its purchase lines; created_at = first
  time seen. The log has no category, brand or description.
- Both UCI layouts are read: Online Retail (InvoiceNo, UnitPrice, CustomerID) and Online Retail II
  (Invoice, Price, Customer ID); the second is renamed to the first before anything else.
- InvoiceDate is UK local time without a zone; it is taken as UTC (off by at most one hour in
  summer, irrelevant to daily-scale features).
"""

from __future__ import annotations

import polars as pl

from features.data import schema as S

# UCI Online Retail II names the same columns differently.
II_RENAMES = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}
RAW_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "m", "D", "C2", "CRUK", "BANK CHARGES", "AMAZONFEE", "PADS", "B", "S"}
)
REASON_NON_PRODUCT = "non_product_line"
REASON_STOCK_ADJUSTMENT = "stock_adjustment"
REASON_NULL_FIELD = "null_required_field"


def _typed(raw: pl.DataFrame) -> pl.DataFrame:
    """CSV exports carry every column as text ("13085.0", "12/1/2010 8:26"): type them as the
    Parquet/Excel files are typed. A value that does not parse becomes null and the line is then
    rejected as null_required_field (or, for CustomerID, an anonymous invoice)."""
    out = []
    if raw.schema["InvoiceDate"] == pl.String:
        text = pl.col("InvoiceDate").str.strip_chars()
        out.append(pl.coalesce(text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
                               text.str.to_datetime("%m/%d/%Y %H:%M", strict=False, time_unit="us"),
                               text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us")).alias("InvoiceDate"))
    for col, tp in (("Quantity", pl.Int64), ("UnitPrice", pl.Float64), ("CustomerID", pl.Float64)):
        if raw.schema[col] == pl.String:
            out.append(pl.col(col).str.strip_chars().cast(pl.Float64, strict=False).cast(tp, strict=False))
    return raw.with_columns(out) if out else raw


def import_online_retail(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Return (events, items, rejected) from the raw UCI table.

    events/items follow the canonical schema (features.data.schema); rejected holds the raw columns
    plus `reason`. len(events) + len(rejected) == len(raw).
    """
    if not set(II_RENAMES.values()) & set(raw.columns):
        raw = raw.rename({k: v for k, v in II_RENAMES.items() if k in raw.columns})
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"Online Retail input: column(s) {missing} missing; expected {list(RAW_COLUMNS)} "
                         f"(Online Retail) or with {', '.join(II_RENAMES)} (Online Retail II); found {raw.columns}")
    raw = _typed(raw)
    df = raw.with_columns(
        pl.col("InvoiceNo").cast(pl.String).str.strip_chars(),
        pl.col("StockCode").cast(pl.String).str.strip_chars(),
    ).with_columns(pl.int_range(pl.len()).over("InvoiceNo").alias("__line"))
    cancel = pl.col("InvoiceNo").str.starts_with("C")
    reason = (
        pl.when(pl.col("InvoiceNo").is_null() | pl.col("StockCode").is_null() | pl.col("InvoiceDate").is_null()
                | pl.col("Quantity").is_null())
        .then(pl.lit(REASON_NULL_FIELD))
        .when(pl.col("StockCode").is_in(list(NON_PRODUCT_CODES)) | pl.col("StockCode").str.starts_with("gift_0001"))
        .then(pl.lit(REASON_NON_PRODUCT))
        .when(~cancel & (pl.col("Quantity") <= 0))
        .then(pl.lit(REASON_STOCK_ADJUSTMENT))
        .otherwise(pl.lit(None, pl.String))
        .alias(S.REASON)
    )
    df = df.with_columns(reason)
    rejected = df.filter(pl.col(S.REASON).is_not_null()).drop("__line")
    lines = df.filter(pl.col(S.REASON).is_null())

    customer = pl.col("CustomerID").cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
    events = lines.select(
        pl.concat_str([pl.col("InvoiceNo"), pl.lit(":"), pl.col("__line").cast(pl.String)]).alias(S.EVENT_ID),
        pl.col("InvoiceDate").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(S.TS),
        pl.when(customer.is_not_null())
        .then(pl.concat_str([pl.lit("c"), customer.cast(pl.String)]))
        .otherwise(pl.concat_str([pl.lit(S.ANONYMOUS), pl.col("InvoiceNo")]))
        .alias(S.USER_ID),
        pl.col("InvoiceNo").alias(S.SESSION_ID),
        pl.when(cancel).then(pl.lit(S.EventType.RETURN.value)).otherwise(pl.lit(S.EventType.PURCHASE.value)).alias(S.EVENT_TYPE),
        pl.col("StockCode").alias(S.ITEM_ID),
        pl.lit(None, pl.String).alias(S.QUERY),
        pl.col("Quantity").abs().clip(upper_bound=2**31 - 1).cast(pl.Int32).alias(S.QUANTITY),
        pl.col("UnitPrice").cast(pl.Float64).alias(S.PRICE),
    )

    desc = pl.col("Description").cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars()
    described = lines.with_columns(desc.alias("__desc")).filter(pl.col("__desc").is_not_null() & (pl.col("__desc") != ""))
    priced = described.filter(pl.col("UnitPrice") > 0)

    def mode_title(frame: pl.DataFrame) -> pl.DataFrame:
        return (
            frame.group_by("StockCode", "__desc").len()
            .sort(["StockCode", "len", "__desc"], descending=[False, True, False])
            .group_by("StockCode", maintain_order=True).first()
            .select("StockCode", pl.col("__desc").alias("__title"))
        )

    title = mode_title(priced).join(mode_title(described), on="StockCode", how="full", coalesce=True, suffix="_any")
    title = title.select("StockCode", pl.coalesce("__title", "__title_any").alias(S.TITLE))
    stats = lines.group_by("StockCode").agg(
        pl.col("UnitPrice").filter(~cancel & (pl.col("UnitPrice") > 0)).median().alias(S.PRICE),
        pl.col("InvoiceDate").min().cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(S.CREATED_AT),
    )
    items = (
        stats.join(title, on="StockCode", how="left")
        .select(
            pl.col("StockCode").alias(S.ITEM_ID),
            S.TITLE,
            pl.lit(None, pl.String).alias(S.DESCRIPTION),
            pl.lit(None, pl.String).alias(S.CATEGORY),
            pl.lit(None, pl.String).alias(S.BRAND),
            S.PRICE,
            pl.lit(True).alias(S.IN_STOCK),
            S.CREATED_AT,
        )
        .sort(S.ITEM_ID)
    )
    return events, items, rejected
