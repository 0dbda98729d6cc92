"""HTTP plumbing of the Ingress: error bodies, the ONE mapping from typed errors to status codes,
request body reading and parsing, and the OpenAPI helpers.

Every error answer has the shape of `ErrorOut`: {"error": message, "field": the field at fault,
"problems": [...] for validation}. Deployments raise the typed errors of features/errors.py;
`STATUS_OF` below is the only place that turns them into HTTP statuses.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.errors import CatalogFull, InvalidValue, ServingError, UnknownItem, UnknownReference, UnknownUser
from serving.schemas import ErrorOut


class AnyIdConvertor(Convertor):
    """`{item_id:id}` in a route: any id the data contract allows, a slash or a line break
    included (sent percent-encoded), so every item and shopper is addressable. Starlette's own
    `str` stops at a slash and `path` at a line break."""

    regex = "[\\s\\S]*"  # empty too: the parameter's min_length answers it with a 422 naming the field

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", AnyIdConvertor())

# Typed errors of the deployments -> HTTP status (most specific class first).
STATUS_OF: tuple[tuple[type[ServingError], int], ...] = (
    (UnknownReference, 422), (InvalidValue, 422), (UnknownItem, 404), (UnknownUser, 404), (CatalogFull, 409),
    (ServingError, 400))


class _ClientErrorFilter(logging.Filter):
    """Drops Serve's "Request failed." record (with its traceback) when what failed is a typed
    client error: an unknown item asked for is answered with a 404, not logged as a server fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ServingError)


def quiet_client_errors() -> None:
    """Call in a deployment that raises typed errors (once per process is enough; idempotent)."""
    log = logging.getLogger("ray.serve")
    if not any(isinstance(f, _ClientErrorFilter) for f in log.filters):
        log.addFilter(_ClientErrorFilter())


class ApiError(Exception):
    """A client mistake found by the Ingress itself: HTTP status, message, and the field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None, problems: list | None = None,
                   retry_after_s: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if problems:
        body["problems"] = problems
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def as_api_error(exc: ServingError) -> ApiError:
    """The ApiError of a deployment's typed error (Ray may hand it over wrapped as its cause)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, ServingError) else exc
    status = next(code for cls, code in STATUS_OF if isinstance(err, cls))
    return ApiError(status, err.message, err.field)


def _field(loc: tuple) -> str:
    """pydantic's error location as the client wrote it: "filters.price_max", "[3].item_id"."""
    out = ""
    for p in (str(p) for p in loc if p != "body"):
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for e in exc.errors():
        field = _field(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = "body is not valid JSON: " + str(e.get("ctx", {}).get("error", ""))
            field = "body"
        elif e.get("type") == "literal_error" and "expected" in e.get("ctx", {}) and e["ctx"]["expected"] not in msg:
            msg = f"{msg}; allowed values: {e['ctx']['expected']}"
        elif str(e.get("type", "")).startswith(("datetime_", "date_")):
            msg = f"{msg}; allowed: ISO 8601 (2024-01-05T10:27:00Z, an offset or none for UTC) or epoch seconds"
        elif e.get("type") == "extra_forbidden":
            allowed = e.get("ctx", {}).get("allowed")
            msg = "unknown field" + (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
        problems.append({"field": field, "message": msg})
    first = problems[0] if problems else {"field": None, "message": "invalid request"}
    return error_response(422, f"{first['field']}: {first['message']}", first["field"], problems)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.field)


async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
    return await _api_error(_, as_api_error(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


# --- requests --------------------------------------------------------------------------------
def sent_key(request: Request) -> str | None:
    """The API key the client sent: X-API-Key, else `Authorization: Bearer <key>`."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if key is None and auth.lower().startswith("bearer "):
        key = auth[7:]
    return key


async def read_json(request: Request, limit_bytes: int) -> Any:
    """The JSON body, refusing more than `limit_bytes` (413) and anything that is not JSON text (422)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise ApiError(413, f"body of {declared} bytes is over the limit of {limit_bytes} bytes", "body")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit_bytes:
            raise ApiError(413, f"body is over the limit of {limit_bytes} bytes", "body")
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


def parse(model: Any, data: Any, at: tuple = ()) -> Any:
    """Validate `data` as the pydantic `model`; errors carry the location `at` (e.g. an event's position)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [{**err, "loc": (*at, *err["loc"])} for err in e.errors()]
        for err, raw in zip(errors, e.errors()):
            if err["type"] == "extra_forbidden":  # name the fields the object allows
                err["ctx"] = {**err.get("ctx", {}), "allowed": _fields_at(model, raw["loc"][:-1])}
        raise RequestValidationError(errors) from None


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the pydantic object at `loc` inside `model` (through lists and optionals)."""
    import typing

    from pydantic import BaseModel

    def unwrap(tp: Any) -> Any:  # Optional[Filters] -> Filters, list[Event] -> Event
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else unwrap(args[0]) if len(args) == 1 else tp

    tp = unwrap(model) if not isinstance(model, type) else model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
            return []
        tp = unwrap(tp.model_fields[part].annotation)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


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


# --- OpenAPI ---------------------------------------------------------------------------------
ERROR_DOCS = {
    401: "missing or wrong API key (writes need it when the server has one)",
    403: "writes are disabled: the server has no API key and allow_anonymous_writes is false",
    404: "unknown item or user; `field` names it",
    409: "the catalog is full (retriever.max_items): a new item was refused, nothing was stored",
    413: "body over max_body_bytes, or too many events in one request",
    422: "invalid request: `field` names the first problem and the allowed values, `problems` lists all",
    429: "over the per-client rate limit; retry after the Retry-After seconds",
    503: "overloaded (in-flight limit) or a replica is being replaced: nothing was done; retry after Retry-After",
}


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an endpoint can answer (all in ErrorOut's shape)."""
    return {c: {"model": ErrorOut, "description": ERROR_DOCS[c]} for c in codes}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.split("/")[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def json_body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra for a JSON body the handler reads itself (to answer 413 and name fields):
    the model's JSON schema with its $defs inlined, so the spec has no dangling references."""
    return {"requestBody": {"content": {"application/json": {"schema": _inline_refs(schema, schema.get("$defs", {}))}},
                            "required": True}}


def limits_into_spec(spec: dict[str, Any], max_k: int, max_events_per_request: int) -> dict[str, Any]:
    """Write the deployment's own limits into its OpenAPI document, so a client or a fuzzer reading
    /openapi.json knows them."""
    paths = spec.get("paths", {})
    for path in ("/v1/search", "/v1/recommend"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["k"]["maximum"] = max_k
    for param in paths["/v1/items/{item_id}/similar"]["get"].get("parameters", []):
        if param.get("name") == "k":
            param["schema"]["maximum"] = max_k
    paths["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["maxItems"] = \
        max_events_per_request
    return spec
