"""serving/http.py: the one mapping from typed errors to statuses, and client errors kept out of
the replicas' failure log."""

from __future__ import annotations

import logging
import sys

import pytest

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
