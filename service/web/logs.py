"""Logging of refused requests: one line each, never the request body.

BentoML logs every request its input model refuses (a 400) at ERROR with the whole traceback, ~25 lines that end
in an excerpt of the body. On a line where a client sends a bad batch in a loop, that floods the log, hides real
errors and copies lab data into it. `ClientErrorLogFilter` replaces those records with one INFO line on the
`cellmfg.service` logger naming the route and the number of problems; server errors (5xx) keep their traceback.
"""

from __future__ import annotations

import logging

log = logging.getLogger("cellmfg.service")

# The logger BentoML's HTTP app reports endpoint exceptions on (bentoml._internal.server.http_app.log_exception),
# and the source hash of that function in bentoml 1.4.40: the filter reads its record's (path, method) arguments.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
LOG_EXCEPTION_SHA256 = "8e37ab2b4433dff1b39b8e3e31e86f2cf6706294a2749f688a6b8c0e12b9ff70"


def _client_error(error: BaseException | None) -> str | None:
    """A one-line summary when `error` is the client's fault (answered 4xx), else None."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return f"{error.error_count()} problem(s) in {error.title}"
    if isinstance(error, BentoMLException) and int(error.error_code) < 500:
        return f"{int(error.error_code)} {type(error).__name__}"
    return None


class ClientErrorLogFilter(logging.Filter):
    """Drops BentoML's traceback records for 4xx answers and logs one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        summary = _client_error(error)
        if summary is None:
            return True
        path, method = (record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?"))
        log.info("refused %s %s: %s", method, path, summary)
        return False


def show_service_logs() -> None:
    """Let the service's INFO lines (model loads and swaps, security settings) through, unless the operator set a
    level: BentoML sets the root logger to WARNING."""
    service_logger = logging.getLogger("cellmfg")
    if service_logger.level == logging.NOTSET:
        service_logger.setLevel(logging.INFO)


def quiet_client_errors() -> None:
    """Install `ClientErrorLogFilter` once per process (called when the service starts, never at import); fails
    loudly (PatchedCodeChangedError) when BentoML's exception logging is not the code the filter was written for."""
    from bentoml._internal.server import http_app

    from cellmfg.patch_guard import expect_source

    expect_source(http_app.log_exception, LOG_EXCEPTION_SHA256, "service/web/logs.py (one line per refused request)")
    target = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorLogFilter) for f in target.filters):
        target.addFilter(ClientErrorLogFilter())
