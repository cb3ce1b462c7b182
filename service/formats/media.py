"""The media types the service reads and writes, and how a request asks for one (no numpy: the ASGI guards that
route a CSV body import this at the service's definition)."""

from __future__ import annotations

CSV_MEDIA_TYPE = "text/csv"
# What a CSV body may be sent as.
CSV_MEDIA_TYPES = frozenset({"text/csv", "application/csv"})


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header value, lower case, without parameters ("" when absent)."""
    return (content_type or "").split(";")[0].strip().lower()
