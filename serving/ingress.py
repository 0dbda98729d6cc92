"""Ingress deployment: the FastAPI HTTP API (DESIGN.md section 4) in front of the other deployments.

It validates, authorises writes, fans out to QueryEncoder / Profiles / Retriever / Ranker through
Serve handles (awaited, never `.result()`), and maps every client mistake to a 4xx that names the
field: 422 invalid body, 401 missing or wrong API key, 404 unknown item or user, 413 body too big.
"""

import asyncio
import datetime as dt
import math
import os
import time
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from features import schema as S
from features.catalog import ItemUpdate
from features.ranking import context_for
from features.ratelimit import InFlightLimit, RateLimiter, client_address, client_id, parse_networks, write_refusal
from features.profile_store import TS_US, QUERY_VECTOR, encode_vector, to_epoch_us
from features.retrieval import Filters
from serving.schemas import (ErrorOut, EventIn, EventsOut, FiltersIn, ForgetOut, ItemIn, ItemUpsertOut,
                             RecommendRequest, ResultsOut, SearchRequest)
from serving.settings import Resolved, ServingConfig

class ApiError(Exception):
    """A client mistake: HTTP status, message, and the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _err(status: int, message: str, field: str | None = None, problems: list | None = None,
         retry_after_s: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if problems:
        body["problems"] = problems
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


app = FastAPI(title="intently", version="0.1.0",
              description="Real-time e-commerce search and recommendation (Ray Serve).")


@app.exception_handler(RequestValidationError)
async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for e in exc.errors():
        field = _loc(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = "body is not valid JSON: " + str(e.get("ctx", {}).get("error", ""))
            field = "body"
        elif e.get("type") == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"{msg}; allowed values: {e['ctx']['expected']}"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field"
        problems.append({"field": field, "message": msg})
    first = problems[0] if problems else {"field": None, "message": "invalid request"}
    return _err(422, f"{first['field']}: {first['message']}", first["field"], problems)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _err(exc.status, exc.message, exc.field)


def _unavailable_types() -> tuple[type, ...]:
    """Errors that mean "a downstream replica is gone or overloaded right now", not a bug."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    return (rx.RayActorError, rx.ActorUnavailableError, sx.BackPressureError, sx.DeploymentUnavailableError,
            sx.ReplicaUnavailableError)


UNAVAILABLE = _unavailable_types()
WRITES = frozenset({"events", "put_item", "forget"})  # endpoints that may use the write reserve


_ERROR_DOCS = {
    401: "missing or wrong API key (writes need it when the server has one)",
    403: "writes are disabled: the server has no API key and allow_anonymous_writes is false",
    404: "unknown item or user; `field` names it",
    413: "body over max_body_bytes, or too many events in one request",
    422: "invalid request: `field` names the first problem and the allowed values, `problems` lists all",
    429: "over the per-client rate limit; retry after the Retry-After seconds",
    503: "overloaded (in-flight limit) or a replica is being replaced: nothing was done; retry after Retry-After",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an endpoint can answer (all in ErrorOut's shape)."""
    return {c: {"model": ErrorOut, "description": _ERROR_DOCS[c]} for c in codes}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.split("/")[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra for a JSON body the handler reads itself (to answer 413 and name fields):
    the model's JSON schema with its $defs inlined, so the spec has no dangling references."""
    return {"requestBody": {"content": {"application/json": {"schema": _inline_refs(schema, schema.get("$defs", {}))}},
                            "required": True}}


def _limits_into_spec(spec: dict[str, Any], cfg: ServingConfig) -> dict[str, Any]:
    """Write the deployment's own limits (max_k, max_events_per_request) into its OpenAPI document,
    so a client or a fuzzer reading /openapi.json knows them."""
    paths = spec.get("paths", {})
    for path in ("/v1/search", "/v1/recommend"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["k"]["maximum"] = cfg.max_k
    for param in paths["/v1/items/{item_id}/similar"]["get"].get("parameters", []):
        if param.get("name") == "k":
            param["schema"]["maximum"] = cfg.max_k
    paths["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["maxItems"] = \
        cfg.max_events_per_request
    return spec


_EVENT = EventIn.model_json_schema()
_EVENTS_BODY = {"type": "array", "minItems": 1, "items": _EVENT, "$defs": _EVENT.get("$defs", {})}
READ_ERRORS = _errors(413, 422, 429, 503)
WRITE_ERRORS = _errors(401, 403, 413, 422, 429, 503)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _err(exc.status_code, str(exc.detail))


class Hops:
    """Wall time per downstream call of one request, returned as `timings_ms`."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ms: dict[str, float] = {}

    async def __call__(self, name: str, awaitable: Any) -> Any:
        t = time.perf_counter()
        out = await awaitable
        self.ms[name] = round((time.perf_counter() - t) * 1e3, 2)
        return out

    def total_ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1e3, 2)


def _filters(f: FiltersIn | None) -> Filters | None:
    return None if f is None else Filters(f.category, f.price_min, f.price_max, f.in_stock)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, cfg: ServingConfig, res: Resolved, encoder: Any, retriever: Any, ranker: Any,
                 profiles: Any) -> None:
        self.cfg, self.res = cfg, res
        self.encoder, self.retriever, self.ranker, self.profiles = encoder, retriever, ranker, profiles
        self.api_keys = tuple(k.strip() for k in os.environ.get(cfg.api_key_env, "").split(",") if k.strip())
        self.trusted_proxies = parse_networks(cfg.rate_limit.trusted_proxies)
        print(f"Ingress: writes {self.write_policy()}", flush=True)
        _limits_into_spec(app.openapi(), cfg)  # app.openapi() caches the document it returns
        rl = cfg.rate_limit
        self.limiter = RateLimiter(rl.requests_per_s, rl.burst, rl.max_clients)
        self.admission = InFlightLimit(cfg.overload.max_in_flight, cfg.overload.write_reserve)
        reg = self.registry = CollectorRegistry()
        self.m_requests = Counter("intently_requests", "HTTP requests", ["endpoint", "status"], registry=reg)
        self.m_latency = Histogram("intently_request_latency_seconds", "request latency", ["endpoint"], registry=reg,
                                   buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5))
        self.m_events = Counter("intently_events_accepted", "events durably logged", registry=reg)
        self.m_inflight = Gauge("intently_requests_in_flight", "requests being served", registry=reg)
        self.m_shed = Counter("intently_requests_shed", "requests refused with 503 by the in-flight limit",
                              ["endpoint"], registry=reg)

    # --- cross-cutting -----------------------------------------------------------------------
    @staticmethod
    def _sent_key(request: Request) -> str | None:
        """The API key the client sent: X-API-Key, else `Authorization: Bearer <key>`."""
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:]
        return key

    def write_policy(self) -> str:
        """How writes are authorised, in words (the start-up banner and /healthz)."""
        if self.api_keys:
            return f"need an API key ({len(self.api_keys)} configured in ${self.cfg.api_key_env})"
        if self.cfg.allow_anonymous_writes:
            return "are OPEN to anyone: no API key configured and allow_anonymous_writes is true"
        return f"are refused: no API key configured (set ${self.cfg.api_key_env}) and allow_anonymous_writes is false"

    def _authorise(self, request: Request) -> None:
        refusal = write_refusal(self._sent_key(request), self.api_keys, self.cfg.allow_anonymous_writes,
                                self.cfg.api_key_env)
        if refusal is not None:
            raise ApiError(*refusal, "X-API-Key")

    async def _body(self, request: Request) -> Any:
        """The JSON body, refusing more than max_body_bytes (413) and non-JSON (422)."""
        import json

        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {limit} bytes", "body")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"body is over the limit of {limit} bytes", "body")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(422, f"body is not valid JSON: {e}", "body") from None
        except RecursionError:
            raise ApiError(422, "body is not valid JSON: nested too deeply", "body") from None
        try:  # JSON may escape lone UTF-16 surrogates ("\ud800"): valid JSON, but not text
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "body holds a lone unicode surrogate escape; strings must be valid UTF-8 text",
                           "body") from None
        return data

    def _check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise ApiError(422, f"k: {k} is over the limit; allowed: 1..{self.cfg.max_k}", "k")

    def _parse(self, model: Any, data: Any, at: tuple = ()) -> Any:
        """Validate `data` as `model`; errors carry the location `at` (e.g. the event's position)."""
        from pydantic import ValidationError

        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": (*at, *err["loc"])} for err in e.errors()]) from None

    def _client(self, request: Request) -> str:
        """Who a rate limit applies to: a valid API key (hashed, never stored), else the client's
        address (X-Forwarded-For only from a trusted proxy)."""
        peer = request.client.host if request.client else None
        address = client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        return client_id(self._sent_key(request), self.api_keys, address)

    async def _timed(self, endpoint: str, fn: Any, request: Request | None = None) -> Any:
        t0 = time.perf_counter()
        if not self.admission.try_enter(write=endpoint in WRITES):
            # Load shedding: refused before reading the body, so it costs next to nothing.
            self.m_shed.labels(endpoint).inc()
            self.m_requests.labels(endpoint, "503").inc()
            lim = self.admission
            return _err(503, f"overloaded: {lim.in_flight} requests in progress on this replica (limit "
                             f"{lim.limit}{f' + {lim.write_reserve} for writes' if lim.write_reserve else ''}); "
                             "nothing was done; retry after 1 s", retry_after_s=1)
        self.m_inflight.inc()
        status = 500
        try:
            if request is not None and self.limiter.enabled:
                ok, wait = self.limiter.allow(self._client(request), time.monotonic())
                if not ok:
                    status = 429
                    rl = self.cfg.rate_limit
                    return _err(429, f"rate limit: {rl.requests_per_s:g} requests/s per client (burst {rl.burst}); "
                                     f"retry after {wait:.2f}s", retry_after_s=max(1, math.ceil(wait)))
            resp = await fn()
            status = getattr(resp, "status_code", 200)
            return resp
        except ApiError as e:
            status = e.status
            raise
        except RequestValidationError:
            status = 422
            raise
        except UNAVAILABLE as e:
            # A replica died or is restarting (Serve replaces it): the client may retry. Nothing
            # was acknowledged; events that reached the log before the failure are de-duplicated
            # on retry when they carry an event_id.
            status = 503
            return _err(503, f"temporarily unavailable: {type(e).__name__}; retry shortly", retry_after_s=1)
        finally:
            self.admission.leave()
            self.m_inflight.dec()
            self.m_requests.labels(endpoint, str(status)).inc()
            self.m_latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _answer(self, results: list[dict], user_known: bool, hops: "Hops") -> dict:
        return {"results": results, "user_known": user_known, "took_ms": hops.total_ms(), "timings_ms": hops.ms,
                "versions": self.res.versions}

    # --- read endpoints ----------------------------------------------------------------------
    @app.post("/v1/search", response_model=ResultsOut, summary="Search the catalog, personalised when user_id is given",
              responses=READ_ERRORS, openapi_extra=_json_body(SearchRequest.model_json_schema()))
    async def search(self, request: Request) -> Any:
        async def run() -> Any:
            hops = Hops()
            req: SearchRequest = self._parse(SearchRequest, await self._body(request))
            self._check_k(req.k)
            if len(req.query) > self.cfg.max_query_chars:
                raise ApiError(422, f"query: {len(req.query)} characters; allowed: at most {self.cfg.max_query_chars}",
                               "query")
            now = time.time()
            if req.user_id is None:  # anonymous: no Profiles hop
                emb = await hops("encode", self.encoder.encode_query.remote(req.query))
                ctx, known = context_for("search", None, now, self.cfg.profiles.params, req.query), False
            else:
                emb, (ctx, known) = await hops("encode+profile", asyncio.gather(
                    self.encoder.encode_query.remote(req.query),
                    self.profiles.context.remote(req.user_id, "search", now, req.query)))
            ctx.query_emb = emb
            exclude = ctx.purchased if req.exclude_purchased else frozenset()
            ids, _, bm25 = await hops("retrieve", self.retriever.search.remote(req.query, emb, _filters(req.filters),
                                                                               exclude))
            results = await hops("rank", self.ranker.rank.remote(ctx, ids, req.k, bm25, req.diversity))
            return self._answer(results, known, hops)
        return await self._timed("search", run, request)

    @app.post("/v1/recommend", response_model=ResultsOut, summary="Recommendations for a shopper (cold start included)",
              responses={**READ_ERRORS, **_errors(404)}, openapi_extra=_json_body(RecommendRequest.model_json_schema()))
    async def recommend(self, request: Request) -> Any:
        async def run() -> Any:
            hops = Hops()
            req: RecommendRequest = self._parse(RecommendRequest, await self._body(request))
            self._check_k(req.k)
            ctx, known = await hops("profile", self.profiles.context.remote(req.user_id, "recommend", time.time(),
                                                                            context_item=req.context_item_id))
            exclude = ctx.purchased if req.exclude_purchased else frozenset()
            ids = await hops("retrieve", self.retriever.recommend.remote(
                ctx.user_vector(), [i for i, _ in ctx.recent_items], req.context_item_id, _filters(req.filters),
                exclude))
            if ids is None:
                raise ApiError(404, f"context_item_id: unknown item {req.context_item_id!r}", "context_item_id")
            results = await hops("rank", self.ranker.rank.remote(ctx, ids, req.k, None, req.diversity))
            return self._answer(results, known, hops)
        return await self._timed("recommend", run, request)

    @app.get("/v1/items/{item_id}/similar", response_model=ResultsOut, summary="Items similar to one item",
             responses=_errors(404, 422, 429, 503))
    async def similar(self, request: Request, item_id: str = Path(min_length=1, max_length=256),
                      k: int = Query(10, ge=1)) -> Any:
        async def run() -> Any:
            t0 = time.perf_counter()
            self._check_k(k)
            results = await self.retriever.similar.remote(item_id, k)
            if results is None:
                raise ApiError(404, f"item_id: unknown item {item_id!r}", "item_id")
            return {"results": results, "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
                    "versions": self.res.versions}
        return await self._timed("similar", run, request)

    # --- write endpoints ---------------------------------------------------------------------
    @app.post("/v1/events", response_model=EventsOut, summary="Log shopper events (durable before the reply)",
              responses=WRITE_ERRORS, openapi_extra=_json_body(_EVENTS_BODY))
    async def events(self, request: Request) -> Any:
        async def run() -> Any:
            self._authorise(request)
            data = await self._body(request)
            if isinstance(data, dict) and "events" in data:
                data = data["events"]
            if not isinstance(data, list):
                raise ApiError(422, "body: expected a JSON array of events", "body")
            if not data:
                raise ApiError(422, "body: the array of events is empty", "body")
            if len(data) > self.cfg.max_events_per_request:
                raise ApiError(413, f"body: {len(data)} events; allowed: at most {self.cfg.max_events_per_request} "
                                    "per request", "body")
            events = []
            for i, e in enumerate(data):
                if not isinstance(e, dict):
                    raise ApiError(422, f"[{i}]: expected an event object", f"[{i}]")
                events.append(self._parse(EventIn, e, (i,)))
            now = dt.datetime.now(dt.timezone.utc)
            records = []
            searches = []
            for i, e in enumerate(events):
                ts = e.ts if e.ts is not None else now
                if ts.tzinfo is None:
                    ts = ts.replace(tzinfo=dt.timezone.utc)
                if (ts - now).total_seconds() > self.cfg.max_future_s:
                    raise ApiError(422, f"[{i}].ts: {ts.isoformat()} is in the future; allowed: up to "
                                        f"{self.cfg.max_future_s:g}s after the server's clock", f"[{i}].ts")
                rec = {S.EVENT_ID: e.event_id, TS_US: to_epoch_us(ts), S.USER_ID: e.user_id, S.SESSION_ID: e.session_id,
                       S.EVENT_TYPE: e.event_type, S.ITEM_ID: e.item_id, S.QUERY: e.query, S.QUANTITY: e.quantity,
                       S.PRICE: e.price}
                if e.event_type == S.EventType.SEARCH.value:
                    searches.append(rec)
                records.append(rec)
            vecs = await asyncio.gather(*[self.encoder.encode_query.remote(r[S.QUERY].strip()) for r in searches])
            for rec, vec in zip(searches, vecs):
                rec[QUERY_VECTOR] = encode_vector(vec)
            out = await self.profiles.append.remote(records)
            if "unknown_items" in out:
                pos, item = out["unknown_items"][0]
                raise ApiError(422, f"[{pos}].item_id: unknown item {item!r} (nothing in this request was logged; "
                                    "PUT /v1/items/{id} first)", f"[{pos}].item_id")
            self.m_events.inc(len(out["accepted"]))
            return {"accepted": len(out["accepted"]), "duplicates": len(out["duplicates"]),
                    "event_ids": out["accepted"]}
        return await self._timed("events", run, request)

    @app.put("/v1/items/{item_id}", response_model=ItemUpsertOut, summary="Add or change an item (searchable at once)",
             responses={201: {"model": ItemUpsertOut, "description": "a new item was created"}, **WRITE_ERRORS},
             openapi_extra=_json_body(ItemIn.model_json_schema()))
    async def put_item(self, request: Request, item_id: str = Path(min_length=1, max_length=256)) -> Any:
        async def run() -> Any:
            self._authorise(request)
            body: ItemIn = self._parse(ItemIn, await self._body(request))
            item = ItemUpdate(item_id=item_id, title=body.title, description=body.description,
                              category=body.category, brand=body.brand, price=body.price, in_stock=body.in_stock)
            vec = (await self.encoder.encode_items.remote([item.text()]))[0]
            created = await self.retriever.upsert.remote(item, vec)
            return JSONResponse({"item_id": item_id, "created": created}, status_code=201 if created else 200)
        return await self._timed("put_item", run, request)

    @app.delete("/v1/users/{user_id}", response_model=ForgetOut, summary="Forget a shopper: profile and logged events",
                responses=_errors(401, 403, 404, 422, 429, 503))
    async def forget(self, request: Request, user_id: str = Path(min_length=1, max_length=256)) -> Any:
        async def run() -> Any:
            self._authorise(request)
            out = await self.profiles.forget.remote(user_id)
            if out is None:
                raise ApiError(404, f"user_id: unknown user {user_id!r}", "user_id")
            return {"user_id": user_id, "events_removed": out["events_removed"],
                    "profile_removed": bool(out["profile_removed"])}
        return await self._timed("forget", run, request)

    # --- operations --------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness and the loaded versions",
             responses={503: {"description": "a downstream deployment is not answering: {status, reason}"}})
    async def healthz(self) -> Any:
        try:
            infos = await asyncio.wait_for(asyncio.gather(
                self.encoder.info.remote(), self.retriever.info.remote(), self.profiles.info.remote()), timeout=5.0)
        except Exception as e:  # noqa: BLE001 - any failing dependency makes the app unhealthy
            return JSONResponse({"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:500]}, status_code=503)
        enc, ret, prof = infos
        return {"status": "ok", "versions": self.res.versions, "writes_need_api_key": bool(self.api_keys),
                "writes": self.write_policy(),
                "encoder": enc, "retriever": ret, "profiles": prof}

    @app.get("/metrics", summary="Prometheus metrics of this Ingress replica", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
