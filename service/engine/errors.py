"""The one error a request is refused with, and how much of a refusal is spelt out.

Every refusal the service answers itself (a bad row, a bad CSV, unreadable outcomes, an infeasible design, an
unknown model) is a `RequestRejectedError` or a subclass: one status, one message, the same `{"error", "detail"}`
body, so an endpoint needs one `except` and a client one parser. Server-side failures (a model that cannot load, a
ledger that is down) are not refusals and keep their own types.
"""

from __future__ import annotations

from typing import Any

# A response lists at most this many problems: a 10,000-row batch with one bad column would otherwise answer
# with 10,000 entries.
MAX_ERRORS_REPORTED = 20


def short_repr(value: Any) -> str:
    """repr() cut to 80 characters, for error messages that quote a bad value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class RequestRejectedError(Exception):
    """A request that cannot be answered as asked; `status` is the HTTP status to send, `detail` one entry per
    problem ({"type", "loc", "msg"})."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or []

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "detail": self.detail}


class CsvInputError(RequestRejectedError, ValueError):
    """A CSV that cannot be scored (400, or 413 for too many rows); `detail` names each problem's line and column."""

    def __init__(self, message: str, detail: list[dict[str, Any]], status: int = 400) -> None:
        super().__init__(status, message, detail)


class OutcomesInputError(RequestRejectedError, ValueError):
    """A body that is not a readable list of outcomes (400); `detail` names each problem."""

    def __init__(self, message: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(400, message, detail[:MAX_ERRORS_REPORTED])
