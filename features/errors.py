"""Typed errors that the serving deployments raise and the Ingress maps to HTTP statuses in one
place (serving/http.py). Each carries the request field it is about and a message that names it."""

from __future__ import annotations


class ServingError(Exception):
    """A request that cannot be served as asked; `field` names the part of the request at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field

    def __reduce__(self):  # keeps message and field when Ray ships the error between processes
        return (type(self), (self.message, self.field))


class UnknownItem(ServingError):
    """An item id in the path or the request (404)."""


class UnknownUser(ServingError):
    """A user with nothing to act on (404)."""


class UnknownReference(ServingError):
    """A body that refers to something that does not exist, e.g. an event's item_id (422)."""


class CatalogFull(ServingError):
    """A new item over the catalog's configured size limit (409)."""


class InvalidValue(ServingError):
    """A field whose value breaks a rule only the server can check, e.g. a timestamp in the future (422)."""
