"""Request and response models of the HTTP API (pydantic lives only here, at the boundary).

Types are strict where a silent coercion would hide a client bug: k must be a JSON integer (not
"10"), flags must be JSON booleans, prices and weights JSON numbers (not true/false, which lax
parsing would read as 1/0; bench/fuzz_api.py found that). Limits that depend on the deployment's config (k, query
length, events per request) are checked by the Ingress, which names the field and the limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator,
                      model_validator)

from features import schema as S

EventTypeName = Literal["search", "view", "click", "add_to_cart", "purchase", "return"]
Id = Field(min_length=1, max_length=256)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FiltersIn(_Strict):
    category: StrictStr | None = Field(None, min_length=1, max_length=256,
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
    user_id: StrictStr | None = Field(None, min_length=1, max_length=256)
    k: StrictInt = Field(10, ge=1, description="results wanted (at most the server's max_k)")
    filters: FiltersIn | None = None
    diversity: StrictFloat = Field(0.0, ge=0.0, le=1.0, description="MMR weight: 0 = pure relevance")
    exclude_purchased: StrictBool = True

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be blank")
        return v.strip()


class RecommendRequest(_Strict):
    user_id: StrictStr = Field(min_length=1, max_length=256)
    k: StrictInt = Field(10, ge=1)
    context_item_id: StrictStr | None = Field(None, min_length=1, max_length=256,
                                              description="the product on screen, if any")
    filters: FiltersIn | None = None
    diversity: StrictFloat = Field(0.0, ge=0.0, le=1.0)
    exclude_purchased: StrictBool = True


class EventIn(_Strict):
    event_id: StrictStr | None = Field(None, min_length=1, max_length=256,
                                       description="de-duplication key; a new id is made when absent")
    user_id: StrictStr = Field(min_length=1, max_length=256)
    event_type: EventTypeName
    item_id: StrictStr | None = Field(None, min_length=1, max_length=256)
    query: StrictStr | None = Field(None, max_length=1024)
    ts: dt.datetime | None = Field(None, description="ISO 8601; default: the time the server received it")
    session_id: StrictStr | None = Field(None, max_length=256)
    quantity: StrictInt | None = Field(None, ge=1, le=100_000)
    price: StrictFloat | None = Field(None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _fields_for_type(self) -> "EventIn":
        if self.event_type == S.EventType.SEARCH.value:
            if not self.query or not self.query.strip():
                raise ValueError("a search event needs a non-blank query")
        elif self.item_id is None:
            raise ValueError(f"a {self.event_type} event needs item_id")
        return self


class ItemIn(_Strict):
    title: StrictStr = Field(min_length=1, max_length=1000)
    description: StrictStr | None = Field(None, max_length=10_000)
    category: StrictStr | None = Field(None, max_length=256)
    brand: StrictStr | None = Field(None, max_length=256)
    price: StrictFloat | None = Field(None, ge=0, le=1_000_000)
    in_stock: StrictBool = True

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("title must not be blank")
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


class ForgetOut(BaseModel):
    user_id: str
    events_removed: int
    profile_removed: bool


class ErrorOut(BaseModel):
    error: str
    field: str | None = None
    problems: list[dict] = []
