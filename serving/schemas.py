"""Request and response models of the HTTP API (pydantic lives only here, at the boundary).

Types are strict where a silent coercion would hide a client bug: k must be a JSON integer (not
"10"), flags must be JSON booleans, prices and weights JSON numbers (not true/false, which lax
parsing would read as 1/0; bench/fuzz_api.py found that). Limits that depend on the deployment's config (k, query
length, events per request) are checked by the Ingress, which names the field and the limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from features.data.text import strip_markup
from features.errors import InvalidValue
from features.profiles import events as EV

EventTypeName = Literal[EV.EVENT_TYPES]  # the event contract's types, in funnel order
REASONS_DOC = ("false: every result's reasons empty, and their cost skipped (for a learned ranker, its TreeSHAP: "
               "about a third of a recommendation's time); the same results in the same order")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FiltersIn(_Strict):
    category: StrictStr | None = Field(None, min_length=1, max_length=EV.MAX_ID_CHARS,
                                       description='category path or a prefix of it, e.g. "Home" or "Home > Kitchen"')
    price_min: StrictFloat | None = Field(None, ge=0)
    price_max: StrictFloat | None = Field(None, ge=0)
    in_stock: StrictBool | None = None

    @model_validator(mode="after")
    def _range(self) -> "FiltersIn":
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min ({self.price_min}) must be <= price_max ({self.price_max})")
        return self


class SearchRequest(_Strict):
    query: StrictStr = Field(description="what the shopper typed; not blank")
    user_id: StrictStr | None = Field(None, min_length=1, max_length=EV.MAX_ID_CHARS)
    k: StrictInt = Field(10, ge=1, description="results wanted (at most the server's max_k)")
    filters: FiltersIn | None = None
    diversity: StrictFloat = Field(0.0, ge=0.0, le=1.0, description="MMR weight: 0 = pure relevance")
    exclude_purchased: StrictBool = True
    reasons: StrictBool = Field(True, description=REASONS_DOC)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be blank")
        return v.strip()


class RecommendRequest(_Strict):
    user_id: StrictStr = Field(min_length=1, max_length=EV.MAX_ID_CHARS)
    k: StrictInt = Field(10, ge=1)
    context_item_id: StrictStr | None = Field(None, min_length=1, max_length=EV.MAX_ID_CHARS,
                                              description="the product on screen, if any")
    filters: FiltersIn | None = None
    diversity: StrictFloat = Field(0.0, ge=0.0, le=1.0)
    exclude_purchased: StrictBool = True
    reasons: StrictBool = Field(True, description=REASONS_DOC)


class EventIn(_Strict):
    event_id: StrictStr | None = Field(None, min_length=1, max_length=EV.MAX_ID_CHARS,
                                       description="de-duplication key; a new id is made when absent")
    user_id: StrictStr = Field(min_length=1, max_length=EV.MAX_ID_CHARS)
    event_type: EventTypeName
    item_id: StrictStr | None = Field(None, min_length=1, max_length=EV.MAX_ID_CHARS)
    query: StrictStr | None = Field(None, max_length=EV.MAX_QUERY_CHARS)
    ts: dt.datetime | None = Field(None, description="ISO 8601; default: the time the server received it")
    session_id: StrictStr | None = Field(None, max_length=EV.MAX_ID_CHARS)
    quantity: StrictInt | None = Field(None, ge=1, le=EV.MAX_QUANTITY)
    price: StrictFloat | None = Field(None, ge=0, le=EV.MAX_PRICE)

    @model_validator(mode="after")
    def _fields_for_type(self) -> "EventIn":
        if self.event_type == EV.SEARCH:
            if not self.query or not self.query.strip():
                raise ValueError("a search event needs a non-blank query")
        elif self.item_id is None:
            raise ValueError(f"a {self.event_type} event needs item_id")
        return self


def event_records(events: list[EventIn], now: dt.datetime, max_future_s: float) -> list[dict]:
    """The log records (features/profiles/events.py) of validated events; `ts` defaults to `now`
    (UTC), and an event stamped more than `max_future_s` after it raises InvalidValue naming it."""
    out = []
    for i, e in enumerate(events):
        ts = e.ts if e.ts is not None else now
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        if (ts - now).total_seconds() > max_future_s:
            raise InvalidValue(f"[{i}].ts: {ts.isoformat()} is in the future; allowed: up to {max_future_s:g}s "
                               "after the server's clock", f"[{i}].ts")
        out.append(EV.record(e.event_id, ts, e.user_id, e.event_type, e.item_id, e.query, e.session_id, e.quantity,
                             e.price))
    return out


class ItemIn(_Strict):
    title: StrictStr = Field(min_length=1, max_length=1000)
    description: StrictStr | None = Field(None, max_length=10_000)
    category: StrictStr | None = Field(None, max_length=EV.MAX_ID_CHARS)
    brand: StrictStr | None = Field(None, max_length=EV.MAX_ID_CHARS)
    price: StrictFloat | None = Field(None, ge=0, le=EV.MAX_PRICE)
    in_stock: StrictBool = True

    @field_validator("title", "description", "category", "brand")
    @classmethod
    def _text(cls, v: str | None, info: ValidationInfo) -> str | None:
        # HTML markup goes, as the feature job's validation strips it from a batch catalog.
        if v is not None and ("<" in v or "&" in v):
            v = strip_markup({"v": v})["v"]
        if info.field_name == "title" and not (v or "").strip():
            raise ValueError("title must not be blank (nor only HTML markup)")
        return v


class ItemOut(BaseModel):
    item_id: str
    title: str
    category: str | None
    price: float | None
    in_stock: bool
    score: float
    reasons: list[str]


class ResultsOut(BaseModel):
    results: list[ItemOut]
    user_known: bool = False
    took_ms: float  # inside the Ingress, from the body read to the reply
    timings_ms: dict[str, float] = {}  # wall time of each downstream call (encode, profile, retrieve, rank)
    versions: dict[str, str]


class EventsOut(BaseModel):
    accepted: int
    duplicates: int
    event_ids: list[str]


class ItemUpsertOut(BaseModel):
    item_id: str
    created: bool


class ItemRemoveOut(BaseModel):
    item_id: str
    removed: bool


class ForgetOut(BaseModel):
    user_id: str
    events_removed: int
    profile_removed: bool


class ErrorOut(BaseModel):
    error: str
    field: str | None = None
    problems: list[dict] = []
