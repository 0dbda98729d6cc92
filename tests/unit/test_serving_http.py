"""serving/http.py: the one mapping from typed errors to statuses, and client errors kept out of
the replicas' failure log."""

from __future__ import annotations

import logging
import sys

import pytest
from fastapi import Request  # (module level: the handler's annotation is resolved here)

from features.errors import CatalogFull, InvalidValue, ServingError, UnknownItem, UnknownReference, UnknownUser
from serving.http import as_api_error, quiet_client_errors


@pytest.mark.parametrize("err, status", [(UnknownItem("item_id: unknown", "item_id"), 404),
                                         (UnknownUser("user_id: unknown", "user_id"), 404),
                                         (UnknownReference("[0].item_id: unknown", "[0].item_id"), 422),
                                         (InvalidValue("[0].ts: future", "[0].ts"), 422),
                                         (CatalogFull("item_id: full", "item_id"), 409)])
def test_each_typed_error_has_one_status_and_keeps_its_field(err, status):
    api = as_api_error(err)
    assert (api.status, api.message, api.field) == (status, err.message, err.field)

    class Wrapped(Exception):  # what Ray hands the caller: the deployment's error as `cause`
        cause = err
    assert as_api_error(Wrapped()).status == status  # type: ignore[arg-type]


def test_a_typed_error_survives_pickling_between_processes():
    import pickle

    back = pickle.loads(pickle.dumps(UnknownItem("item_id: unknown item 'x'", "item_id")))
    assert isinstance(back, ServingError) and back.field == "item_id" and "unknown item" in back.message


def test_client_errors_are_not_logged_as_request_failures():
    quiet_client_errors()
    quiet_client_errors()  # idempotent
    log = logging.getLogger("ray.serve")
    assert len([f for f in log.filters if type(f).__name__ == "_ClientErrorFilter"]) == 1

    def record_of(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            return log.makeRecord(log.name, logging.ERROR, __file__, 1, "Request failed.", (), sys.exc_info())

    assert not log.filters[-1].filter(record_of(UnknownItem("x", "item_id")))
    assert log.filters[-1].filter(record_of(RuntimeError("a real fault")))  # bugs are still logged


@pytest.mark.parametrize("model,body,field,allowed", [
    ("SearchRequest", {"query": "mug", "filters": {"colour": "red"}}, "filters.colour", "category, price_min, price_max"),
    ("SearchRequest", {"query": "mug", "colour": "red"}, "colour", "query, user_id, k, filters"),
    ("EventIn", {"user_id": "u", "event_type": "view", "item_id": "i", "sku": "x"}, "[3].sku", "user_id"),
])
def test_an_unknown_field_is_answered_with_the_fields_allowed_there(model, body, field, allowed):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving import schemas
    from serving.http import install_error_handlers, parse

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    async def handler(request: Request) -> dict:
        parse(getattr(schemas, model), await request.json(), (3,) if model == "EventIn" else ())
        return {}

    r = TestClient(app).post("/x", json=body)
    out = r.json()
    assert r.status_code == 422 and out["field"] == field
    assert out["error"].startswith(f"{field}: unknown field; allowed fields: ")
    assert allowed in out["error"]


def test_a_bad_event_type_or_time_names_what_is_allowed_once():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.http import install_error_handlers, parse
    from serving.schemas import EventIn

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    async def handler(request: Request) -> dict:
        parse(EventIn, await request.json(), (0,))
        return {}

    client = TestClient(app)
    out = client.post("/x", json={"user_id": "u", "event_type": "vue", "item_id": "i"}).json()
    assert out["field"] == "[0].event_type" and out["error"].count("'add_to_cart'") == 1
    out = client.post("/x", json={"user_id": "u", "event_type": "view", "item_id": "i", "ts": "yesterday"}).json()
    assert out["field"] == "[0].ts" and "allowed: ISO 8601" in out["error"]
    # an epoch number is a time too
    assert client.post("/x", json={"user_id": "u", "event_type": "view", "item_id": "i", "ts": 1700000000}).json() == {}
