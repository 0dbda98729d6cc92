"""Ingress deployment: the FastAPI HTTP API (DESIGN.md section 4) in front of the other deployments.

It admits (load shedding, per-client rate limits), authorises writes, validates, and fans out to QueryEncoder /
Profiles / Retriever through Serve handles (awaited, never `.result()`). With the default placements it encodes
queries (encoder.placement) and retrieves + ranks reads (retriever_placement) itself: an anonymous search makes no
Serve hop, a recommendation one (Profiles); writes go to their deployment. HTTP plumbing (bodies, error answers,
the typed-error -> status mapping, OpenAPI helpers) is in serving/http.py; admission in features/admission.py.
"""

import asyncio
import datetime as dt
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve

from features.admission import InFlightLimit, RateLimiter, client_address, client_id, parse_networks, write_refusal
from features.data import schema as S
from features.errors import ServingError
from features.profiles import events as EV
from features.retrieval.catalog import ItemUpdate
from features.retrieval.live import Filters
from features.retrieval.ranking import context_for
from serving.encoder import InlineQueryEncoder
from serving.http import (
    ApiError,
    Hops,
    as_api_error,
    error_docs,
    error_response,
    install_error_handlers,
    json_body_doc,
    limits_into_spec,
    parse,
    read_json,
    sent_key,
)
from serving.metrics import IngressMetrics
from serving.retriever import RetrieverCore
from serving.schemas import (
    EventIn,
    EventsOut,
    FiltersIn,
    ForgetOut,
    ItemIn,
    ItemRemoveOut,
    ItemUpsertOut,
    RecommendRequest,
    ResultsOut,
    SearchRequest,
    event_records,
)
from serving.settings import Resolved, ServingConfig

app = FastAPI(title="intently", version="0.1.0",
              description="Real-time e-commerce search and recommendation (Ray Serve).")
install_error_handlers(app)


def _unavailable_types() -> tuple[type, ...]:
    """Errors that mean "a downstream replica is gone or overloaded right now", not a bug."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    return (rx.RayActorError, rx.ActorUnavailableError, sx.BackPressureError, sx.DeploymentUnavailableError,
            sx.ReplicaUnavailableError)


UNAVAILABLE = _unavailable_types()
WRITES = frozenset({"events", "put_item", "remove_item", "forget"})  # endpoints that may use the write reserve
_EVENT = EventIn.model_json_schema()
_EVENTS_BODY = {"type": "array", "minItems": 1, "items": _EVENT, "$defs": _EVENT.get("$defs", {})}
READ_ERRORS = error_docs(413, 422, 429, 503)
WRITE_ERRORS = error_docs(401, 403, 413, 422, 429, 503)
DELETE_ERRORS = error_docs(401, 403, 404, 422, 429, 503)  # removals by id in the path: no body


def _filters(f: FiltersIn | None) -> Filters | None:
    return None if f is None else Filters(f.category, f.price_min, f.price_max, f.in_stock)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, cfg: ServingConfig, res: Resolved, encoder: Any, retriever: Any,
                 profiles: Any, telemetry: Any) -> None:
        self.cfg, self.res = cfg, res
        self.encoder, self.retriever, self.profiles = encoder, retriever, profiles
        # queries encoded in this replica (placement ingress) or by the QueryEncoder deployment
        self.inline = InlineQueryEncoder(cfg, res) if cfg.encoder.placement == "ingress" else None
        # reads retrieved and ranked in this replica (retriever_placement ingress) or by the Retriever
        self.local = RetrieverCore(cfg, res) if cfg.retriever_placement == "ingress" else None
        # ... on one worker thread: the event loop stays free to admit or shed the next requests
        # while a read is computed, and the catalog copy is only ever touched by that thread
        self.read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reads") if self.local else None
        if self.local is not None:  # the warm-up again on the reads' thread: its first torch/BLAS calls set up
            self.read_pool.submit(self.local.warm_up)
        self.telemetry = telemetry
        self.api_keys = tuple(k.strip() for k in os.environ.get(cfg.api_key_env, "").split(",") if k.strip())
        self.trusted_proxies = parse_networks(cfg.rate_limit.trusted_proxies)
        limits_into_spec(app.openapi(), cfg.max_k, cfg.max_events_per_request)  # app.openapi() caches it
        rl = cfg.rate_limit
        self.limiter = RateLimiter(rl.requests_per_s, rl.burst, rl.max_clients)
        self.admission = InFlightLimit(cfg.overload.max_in_flight, cfg.overload.write_reserve)
        self.metrics = IngressMetrics()
        try:
            self.replica = str(serve.get_replica_context().replica_id)
        except Exception:  # noqa: BLE001 - outside a replica (never in serving): any unique name will do
            self.replica = uuid.uuid4().hex
        self._pushed_at, self._push_pending = 0.0, False
        try:  # a handle's first call sets up its routing (~40 ms of each replica's first recommendation): now
            self._warming: asyncio.Task | None = asyncio.get_running_loop().create_task(self._warm())
        except RuntimeError:  # outside a replica there is no loop, and nothing to warm
            self._warming = None
        print(f"Ingress: writes {self.write_policy()}", flush=True)

    async def _warm(self) -> None:
        try:
            await self.profiles.context.remote(None, "recommend", time.time())
        except Exception:  # noqa: BLE001 - a warm-up never fails a replica; the first request says why
            pass

    # --- cross-cutting -----------------------------------------------------------------------
    def write_policy(self) -> str:
        """How writes are authorised, in words (the start-up banner and /healthz)."""
        if self.api_keys:
            return f"need an API key ({len(self.api_keys)} configured in ${self.cfg.api_key_env})"
        if self.cfg.allow_anonymous_writes:
            return "are OPEN to anyone: no API key configured and allow_anonymous_writes is true"
        return f"are refused: no API key configured (set ${self.cfg.api_key_env}) and allow_anonymous_writes is false"

    def _authorise(self, request: Request) -> None:
        refusal = write_refusal(sent_key(request), self.api_keys, self.cfg.allow_anonymous_writes, self.cfg.api_key_env)
        if refusal is not None:
            raise ApiError(*refusal, "X-API-Key")

    def _client(self, request: Request) -> str:
        """Who a rate limit applies to: a valid API key (hashed, never stored), else the client's
        address (X-Forwarded-For only from a trusted proxy)."""
        peer = request.client.host if request.client else None
        address = client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        return client_id(sent_key(request), self.api_keys, address)

    def _encode(self, query: str) -> Any:
        """An awaitable of the query's (d,) vector."""
        return self.inline.encode_query(query) if self.inline else self.encoder.encode_query.remote(query)

    def _read(self, method: str, *args: Any) -> Any:
        """An awaitable of a read (search, recommend, similar) on this replica's own RetrieverCore,
        or through the Retriever deployment (retriever_placement deployment)."""
        if self.local is not None:
            return asyncio.get_running_loop().run_in_executor(self.read_pool, getattr(self.local, method), *args)
        return getattr(self.retriever, method).remote(*args)

    def _check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise ApiError(422, f"k: {k} is over the limit; allowed: 1..{self.cfg.max_k}", "k")

    def _schedule_push(self) -> None:
        """Report within metrics_push_s of any request, and at most once per metrics_push_s."""
        if self._push_pending:
            return
        self._push_pending = True
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._pushed_at + self.cfg.metrics_push_s - time.monotonic())
        loop.call_later(delay, lambda: loop.create_task(self._push_metrics()))

    async def _push_metrics(self) -> None:
        """Report this replica's cumulative metrics to Telemetry (best effort: the next report replaces a lost one)."""
        self._pushed_at = time.monotonic()
        self._push_pending = False
        try:
            await self.telemetry.report.remote(self.replica, self.metrics.snapshot())
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            pass

    async def _timed(self, endpoint: str, fn: Any, request: Request | None = None) -> Any:
        t0 = time.perf_counter()
        m = self.metrics
        if not self.admission.try_enter(write=endpoint in WRITES):
            # Load shedding: refused before reading the body, so it costs next to nothing.
            m.shed.labels(endpoint).inc()
            m.requests.labels(endpoint, "503").inc()
            lim = self.admission
            return error_response(503, f"overloaded: {lim.in_flight} requests in progress on this replica (limit "
                                       f"{lim.limit}{f' + {lim.write_reserve} for writes' if lim.write_reserve else ''}); "
                                       "nothing was done; retry after 1 s", retry_after_s=1)
        m.in_flight.inc()
        status = 500
        try:
            if request is not None and self.limiter.enabled:
                ok, wait = self.limiter.allow(self._client(request), time.monotonic())
                if not ok:
                    status = 429
                    rl = self.cfg.rate_limit
                    return error_response(429, f"rate limit: {rl.requests_per_s:g} requests/s per client (burst "
                                               f"{rl.burst}); retry after {wait:.2f}s",
                                          retry_after_s=max(1, math.ceil(wait)))
            resp = await fn()
            status = getattr(resp, "status_code", 200)
            return resp
        except ServingError as e:  # a deployment's typed error: the one mapping in serving/http.py
            err = as_api_error(e)
            status = err.status
            raise err from None
        except ApiError as e:
            status = e.status
            raise
        except RequestValidationError:
            status = 422
            raise
        except UNAVAILABLE as e:
            # A replica died or is restarting (Serve replaces it): the client may retry. Nothing was acknowledged;
            # events that reached the log before the failure are de-duplicated on retry when they carry an event_id.
            status = 503
            return error_response(503, f"temporarily unavailable: {type(e).__name__}; retry shortly", retry_after_s=1)
        finally:
            self.admission.leave()
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)
            self._schedule_push()

    def _answer(self, results: list[dict], user_known: bool, hops: Hops) -> dict:
        return {"results": results, "user_known": user_known, "took_ms": hops.total_ms(), "timings_ms": hops.ms,
                "versions": self.res.versions}

    # --- read endpoints ----------------------------------------------------------------------
    @app.post("/v1/search", response_model=ResultsOut, summary="Search the catalog, personalised when user_id is given",
              responses=READ_ERRORS, openapi_extra=json_body_doc(SearchRequest.model_json_schema()))
    async def search(self, request: Request) -> Any:
        async def run() -> Any:
            hops = Hops()
            req: SearchRequest = parse(SearchRequest, await read_json(request, self.cfg.max_body_bytes))
            self._check_k(req.k)
            if len(req.query) > self.cfg.max_query_chars:
                raise ApiError(422, f"query: {len(req.query)} characters; allowed: at most {self.cfg.max_query_chars}",
                               "query")
            now = time.time()
            if req.user_id is None:  # anonymous: no Profiles hop
                emb = await hops("encode", self._encode(req.query))
                ctx, known = context_for("search", None, now, self.cfg.profiles.params, req.query), False
            else:
                emb, (ctx, known) = await hops("encode+profile", asyncio.gather(
                    self._encode(req.query),
                    self.profiles.context.remote(req.user_id, "search", now, req.query)))
            ctx.query_emb = emb
            exclude = ctx.purchased if req.exclude_purchased else frozenset()
            results, inner = await hops("retrieve+rank", self._read(
                "search", ctx, _filters(req.filters), exclude, req.k, req.diversity, req.reasons))
            hops.ms.update(inner)
            return self._answer(results, known, hops)
        return await self._timed("search", run, request)

    @app.post("/v1/recommend", response_model=ResultsOut, summary="Recommendations for a shopper (cold start included)",
              responses={**READ_ERRORS, **error_docs(404)},
              openapi_extra=json_body_doc(RecommendRequest.model_json_schema()))
    async def recommend(self, request: Request) -> Any:
        async def run() -> Any:
            hops = Hops()
            req: RecommendRequest = parse(RecommendRequest, await read_json(request, self.cfg.max_body_bytes))
            self._check_k(req.k)
            ctx, known = await hops("profile", self.profiles.context.remote(req.user_id, "recommend", time.time(),
                                                                            context_item=req.context_item_id))
            exclude = ctx.purchased if req.exclude_purchased else frozenset()
            results, inner = await hops("retrieve+rank", self._read(
                "recommend", ctx, _filters(req.filters), exclude, req.k, req.diversity, req.reasons))
            hops.ms.update(inner)
            return self._answer(results, known, hops)
        return await self._timed("recommend", run, request)

    @app.get("/v1/items/{item_id:id}/similar", response_model=ResultsOut, summary="Items similar to one item",
             responses=error_docs(404, 422, 429, 503))
    async def similar(self, request: Request, item_id: str = Path(min_length=1, max_length=256),
                      k: int = Query(10, ge=1)) -> Any:
        async def run() -> Any:
            t0 = time.perf_counter()
            self._check_k(k)
            results = await self._read("similar", item_id, k)
            return {"results": results, "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
                    "versions": self.res.versions}
        return await self._timed("similar", run, request)

    # --- write endpoints ---------------------------------------------------------------------
    @app.post("/v1/events", response_model=EventsOut, summary="Log shopper events (durable before the reply)",
              responses=WRITE_ERRORS, openapi_extra=json_body_doc(_EVENTS_BODY))
    async def events(self, request: Request) -> Any:
        async def run() -> Any:
            self._authorise(request)
            data = await read_json(request, self.cfg.max_body_bytes)
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
                events.append(parse(EventIn, e, (i,)))
            records = event_records(events, dt.datetime.now(dt.timezone.utc), self.cfg.max_future_s)
            # A search, or an event that names the search it came from (a click with its query):
            # the query moves the session's intent either way (features/profiles/events.py).
            searches = [r for r in records if r[S.QUERY] and r[S.QUERY].strip()]
            vecs = await asyncio.gather(*[self._encode(r[S.QUERY].strip()) for r in searches])
            for rec, vec in zip(searches, vecs):
                rec[EV.QUERY_VECTOR] = EV.encode_vector(vec)
            accepted, duplicates = await self.profiles.append.remote(records)
            self.metrics.events.inc(len(accepted))
            return {"accepted": len(accepted), "duplicates": len(duplicates), "event_ids": accepted}
        return await self._timed("events", run, request)

    @app.put("/v1/items/{item_id:id}", response_model=ItemUpsertOut, summary="Add or change an item (searchable at once)",
             responses={201: {"model": ItemUpsertOut, "description": "a new item was created"}, **WRITE_ERRORS,
                        **error_docs(409)},
             openapi_extra=json_body_doc(ItemIn.model_json_schema()))
    async def put_item(self, request: Request, item_id: str = Path(min_length=1, max_length=256)) -> Any:
        async def run() -> Any:
            self._authorise(request)
            body: ItemIn = parse(ItemIn, await read_json(request, self.cfg.max_body_bytes))
            item = ItemUpdate(item_id=item_id, title=body.title, description=body.description,
                              category=body.category, brand=body.brand, price=body.price, in_stock=body.in_stock)
            # A price or stock change keeps the text, and so the vector: no encoding (read off this
            # replica's catalog copy, or the Retriever's; a vector of the same text is right either way).
            vec = known = await self._read("known_vector", item)
            if vec is None:
                vec = (await self.encoder.encode_items.remote([item.text()]))[0]
            created = await self.retriever.upsert.remote(item, vec)
            self.metrics.upserts.labels(text="new" if known is None else "unchanged").inc()
            return JSONResponse({"item_id": item_id, "created": created}, status_code=201 if created else 200)
        return await self._timed("put_item", run, request)

    @app.delete("/v1/items/{item_id:id}", response_model=ItemRemoveOut,
                summary="Remove an item: never a candidate again, until it is upserted again",
                description="Logged durably and applied by every replica before its next request, and over "
                            "every new artifacts version (a batch export that still lists the item does not "
                            "bring it back; a PUT does). Shoppers' past events on it are kept.",
                responses=DELETE_ERRORS)
    async def remove_item(self, request: Request, item_id: str = Path(min_length=1, max_length=256)) -> Any:
        async def run() -> Any:
            self._authorise(request)
            if not await self.retriever.remove.remote(item_id):
                raise ApiError(404, f"item_id: unknown item {item_id!r}", "item_id")
            return {"item_id": item_id, "removed": True}
        return await self._timed("remove_item", run, request)

    @app.delete("/v1/users/{user_id:id}", response_model=ForgetOut,
                summary="Forget a shopper in serving: profile, logged events and event ids",
                description="Removes the shopper from the serving state (profile snapshot, event log, "
                            "de-duplication window) at once. Batch artifacts (the feature job's users table, "
                            "evaluation runs) are scrubbed by `python -m jobs.forget_user` (`make forget`), "
                            "which calls this endpoint too.",
                responses=DELETE_ERRORS)
    async def forget(self, request: Request, user_id: str = Path(min_length=1, max_length=256)) -> Any:
        async def run() -> Any:
            self._authorise(request)
            out = await self.profiles.forget.remote(user_id)
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
        enc = {**enc, "placement": self.cfg.encoder.placement, **({"inline": self.inline.info()} if self.inline else {})}
        ret = {**ret, "placement": self.cfg.retriever_placement,
               **({"inline": await self._read("info")} if self.local else {})}
        return {"status": "ok", "versions": self.res.versions, "revision": self.cfg.revision,
                "writes_need_api_key": bool(self.api_keys),
                "writes": self.write_policy(), "encoder": enc, "retriever": ret, "profiles": prof}

    @app.get("/metrics", summary="Prometheus metrics of the whole application (every Ingress replica summed)",
             response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        await self._push_metrics()  # this replica's latest counts are in the sum
        try:
            text = await asyncio.wait_for(self.telemetry.text.remote(), timeout=5.0)
        except Exception as e:  # noqa: BLE001 - still answer, saying the sum is missing
            text = (f"# intently: the application-wide sum is unavailable ({type(e).__name__}); "
                    "this Ingress replica only\n").encode() + self.metrics.text()
        return Response(text, media_type=CONTENT_TYPE_LATEST)
