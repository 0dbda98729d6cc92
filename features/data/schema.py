"""The canonical input contract (DESIGN.md section 2): column names, types and enums.

Column names exist once, here. Everything else imports these constants.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

# --- events -------------------------------------------------------------------------------
EVENT_ID = "event_id"
TS = "ts"
USER_ID = "user_id"
SESSION_ID = "session_id"
EVENT_TYPE = "event_type"
ITEM_ID = "item_id"
QUERY = "query"
QUANTITY = "quantity"
PRICE = "price"

# --- items --------------------------------------------------------------------------------
TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
BRAND = "brand"
IN_STOCK = "in_stock"
CREATED_AT = "created_at"

# --- quarantine ---------------------------------------------------------------------------
REASON = "reason"
RAW = "raw"  # the offending row as JSON, so a value that could not be typed is never lost

TS_TYPE = pa.timestamp("us", tz="UTC")


class EventType(str, Enum):
    """The event types of the contract, in funnel order."""

    SEARCH = "search"
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RETURN = "return"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)

# Field limits of the contract: the API refuses more (422 naming the field), validation
# quarantines more; features/profiles/events.py and serving/schemas.py read them from here.
MAX_ID_CHARS = 256  # event_id, user_id, item_id, session_id, category and brand
MAX_QUERY_CHARS = 1024  # a logged search query
MAX_QUANTITY = 100_000
ANONYMOUS = "anon:"  # the user id prefix of a shopper known only by a session or an invoice
MAX_PRICE = 1_000_000.0
MAX_FUTURE_S = 300.0  # an event stamped later than now + this is refused
# Event types that say "the shopper wanted this item" (used as targets and history).
POSITIVE_EVENT_TYPES: tuple[str, ...] = (
    EventType.VIEW.value,
    EventType.CLICK.value,
    EventType.ADD_TO_CART.value,
    EventType.PURCHASE.value,
)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field(EVENT_ID, pa.string(), nullable=False),
        pa.field(TS, TS_TYPE, nullable=False),
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(SESSION_ID, pa.string()),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string()),
        pa.field(QUERY, pa.string()),
        pa.field(QUANTITY, pa.int32()),
        pa.field(PRICE, pa.float64()),
    ]
)
EVENTS_REQUIRED: tuple[str, ...] = (EVENT_ID, TS, USER_ID, EVENT_TYPE)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TITLE, pa.string(), nullable=False),
        pa.field(DESCRIPTION, pa.string()),
        pa.field(CATEGORY, pa.string()),
        pa.field(BRAND, pa.string()),
        pa.field(PRICE, pa.float64()),
        pa.field(IN_STOCK, pa.bool_()),
        pa.field(CREATED_AT, TS_TYPE),
    ]
)
ITEMS_REQUIRED: tuple[str, ...] = (ITEM_ID, TITLE)


class Reason(str, Enum):
    """Why a row was quarantined. The value is what the `reason` column holds."""

    NULL_EVENT_ID = "null_event_id"
    NULL_TS = "null_ts"
    NULL_USER_ID = "null_user_id"
    NULL_EVENT_TYPE = "null_event_type"
    UNPARSEABLE_TS = "unparseable_ts"
    FUTURE_TS = "future_ts"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    SEARCH_WITHOUT_QUERY = "search_without_query"
    MISSING_ITEM_ID = "missing_item_id"
    UNKNOWN_ITEM = "unknown_item"
    NEGATIVE_PRICE = "negative_price"
    ABSURD_PRICE = "absurd_price"
    NON_POSITIVE_QUANTITY = "non_positive_quantity"
    ABSURD_QUANTITY = "absurd_quantity"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    # items
    NULL_ITEM_ID = "null_item_id"
    MISSING_TITLE = "missing_title"
    DUPLICATE_ITEM_ID = "duplicate_item_id"


# --- feature outputs (artifacts/features/<version>/...) ------------------------------------
ITEM_TEXT = "item_text"
HALF_LIFE_PREFIX = "pop_hl_"  # pop_hl_<days>d: decayed interaction weight
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
N_USERS = "n_users"
N_PREFIX = "n_"  # n_<event_type>: event counts per type
PRICE_MEAN = "price_mean"
PRICE_MIN = "price_min"
PRICE_MAX = "price_max"
PRICE_STD = "price_std"
RECENT_ITEMS = "recent_items"
RECENT_EVENT_TYPES = "recent_event_types"
RECENT_TS = "recent_ts"
RECENT_QUERIES = "recent_queries"
CATEGORY_AFFINITY = "category_affinity"  # list<struct<category, score>>, scores sum to 1
PRICE_AFFINITY_LOG_MEAN = "price_log_mean"
PRICE_AFFINITY_LOG_STD = "price_log_std"
N_SESSIONS = "n_sessions"
ITEM_A = "item_a"
ITEM_B = "item_b"
COUNT = "count"
SCORE = "score"
RANK = "rank"
EXAMPLE_KIND = "kind"  # "query" or "history"
ANCHOR_TEXT = "anchor_text"
TARGET_ITEM_ID = "target_item_id"
SPLIT = "split"


class ExampleKind(str, Enum):
    QUERY = "query"
    HISTORY = "history"


class Split(str, Enum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


def n_col(event_type: str) -> str:
    """Column name of the per-type event count, e.g. n_purchase."""
    return f"{N_PREFIX}{event_type}"


def half_life_col(days: float) -> str:
    """Column name of the decayed popularity at a half-life in days, e.g. pop_hl_7d."""
    return f"{HALF_LIFE_PREFIX}{days:g}d"
