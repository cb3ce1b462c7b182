"""Lab-server security baseline: optional bearer-token authentication and a request body-size limit.

`SecurityMiddleware` is a pure ASGI middleware, registered on the BentoML service with `add_asgi_middleware` so it
runs inside BentoML's metrics middleware (refused requests are still counted) and before BentoML reads a body.

Environment variables (read when a worker starts, i.e. at each ASGI lifespan start-up):
  CELLMFG_API_TOKEN       the bearer token clients must send as `Authorization: Bearer <token>`. Unset or empty:
                          authentication is off, which suits a local run on 127.0.0.1; set it on every server other
                          people's machines can reach. At least 16 visible ASCII characters, e.g. from
                          `python -c "import secrets; print(secrets.token_urlsafe(32))"`.
  CELLMFG_API_TOKEN_FILE  a file holding the token (a Docker or Kubernetes secret), used when CELLMFG_API_TOKEN is
                          unset: the token then never appears in the container's environment or `docker inspect`.
  CELLMFG_OPEN_PATHS      comma-separated paths answered without a token (default `/livez,/readyz,/metrics`, so
                          probes and Prometheus need no secret, plus the page's files and the API docs:
                          `service.web.open_paths`); set it empty to protect every path.
  CELLMFG_MAX_BODY_BYTES  the largest request body accepted, in bytes (default 16 MiB; a 10,000-row request is
                          ~1.5 MB); larger bodies are answered 413 before they are parsed, whether they announce their
                          size with Content-Length or arrive chunked.

The token is compared in constant time (`hmac.compare_digest` over SHA-256 digests, so not even its length leaks),
never logged and never echoed: a 401 says only whether a token was missing or wrong.

The OpenAPI document tells clients about the token and the 401s (service.web.openapi).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from pydantic import Field, SecretStr

from service.engine.config import ConfigError, EnvironmentVariables
from service.web.guards import ASGIApp, Message, Receive, Scope, Send, header_values, send_error
from service.web.logs import show_service_logs
from service.web.open_paths import DEFAULT_OPEN_PATHS

log = logging.getLogger("cellmfg.service")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MIN_TOKEN_LENGTH = 16
# An over-size body is read and thrown away up to this many bytes (and for at most DRAIN_SECONDS) before the 413
# is sent: a client still sending its body would otherwise see the connection reset instead of the answer.
# Beyond either bound the connection is simply closed after the 413.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0
REALM = "cellmfg"


def token_verdict(authorization: list[bytes], token_digest: bytes) -> str:
    """'ok', 'missing' or 'invalid' for a request's Authorization header values against the SHA-256 digest of the
    server's token; constant time in the token, and a second Authorization header is never 'ok'."""
    if not authorization:
        return "missing"
    scheme, _, credentials = authorization[0].strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return "missing"
    given = hashlib.sha256(credentials.strip()).digest()
    return "ok" if hmac.compare_digest(given, token_digest) and len(authorization) == 1 else "invalid"


def _ascii_token(text: str, source: str) -> bytes:
    token = text.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{source}: the token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
                          "the output of `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
    if not all(33 <= ord(char) <= 126 for char in token):
        raise ConfigError(f"{source}: the token must be visible ASCII characters only (no spaces), since clients "
                          "send it in an HTTP header")
    return token.encode("ascii")


class _SecurityVariables(EnvironmentVariables):
    """The security variables (see the module docstring); the token is a SecretStr, so no repr or log shows it."""

    KEEP_EMPTY = frozenset({"CELLMFG_OPEN_PATHS"})  # set but empty: no path is open

    CELLMFG_API_TOKEN: SecretStr | None = None
    CELLMFG_API_TOKEN_FILE: str = ""
    CELLMFG_OPEN_PATHS: str | None = None
    CELLMFG_MAX_BODY_BYTES: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)


@dataclass(frozen=True)
class SecuritySettings:
    """What the middleware enforces; `repr` never shows the token."""

    token: bytes | None = field(default=None, repr=False)
    open_paths: frozenset[str] = frozenset(DEFAULT_OPEN_PATHS)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    token_source: str = ""

    @property
    def auth_enabled(self) -> bool:
        return self.token is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecuritySettings:
        variables = _SecurityVariables.read(os.environ if env is None else env)
        token: bytes | None = None
        source = ""
        if variables.CELLMFG_API_TOKEN is not None:
            source = "CELLMFG_API_TOKEN"
            token = _ascii_token(variables.CELLMFG_API_TOKEN.get_secret_value(), source)
        elif variables.CELLMFG_API_TOKEN_FILE:
            path = Path(variables.CELLMFG_API_TOKEN_FILE).expanduser()
            source = f"CELLMFG_API_TOKEN_FILE={path}"
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"{source}: cannot read the token file: {type(error).__name__}") from None
            token = _ascii_token(text, source)
        if variables.CELLMFG_OPEN_PATHS is None:
            open_paths = frozenset(DEFAULT_OPEN_PATHS)
        else:
            open_paths = frozenset(p.strip() for p in variables.CELLMFG_OPEN_PATHS.split(",") if p.strip())
            bad = sorted(p for p in open_paths if not p.startswith("/"))
            if bad:
                raise ConfigError(f"CELLMFG_OPEN_PATHS: paths must start with '/', got {', '.join(bad)}")
        return cls(token=token, open_paths=open_paths, max_body_bytes=variables.CELLMFG_MAX_BODY_BYTES,
                   token_source=source)

    def describe(self) -> str:
        """One log line; names where the token came from, never the token."""
        limit = f"request bodies up to {self.max_body_bytes} bytes"
        if not self.auth_enabled:
            return (f"API authentication off (CELLMFG_API_TOKEN unset): anyone who can reach this port can use the "
                    f"API; {limit}")
        opened = ", ".join(sorted(self.open_paths)) or "none"
        return f"API authentication on (bearer token from {self.token_source}; open paths: {opened}); {limit}"


class SecurityMiddleware:
    """Bearer-token authentication (optional) and the request body-size limit; see the module docstring.

    `settings` fixes the configuration (tests); without it the environment is read when the app is built and again
    at every lifespan start-up, so a worker always enforces the environment it was started with.
    """

    def __init__(self, app: ASGIApp, settings: SecuritySettings | None = None) -> None:
        self.app = app
        self._fixed = settings is not None
        self._error: ConfigError | None = None
        self.settings = settings or SecuritySettings(token=b"\0unusable", open_paths=frozenset())
        self._token_digest = b""
        if settings is None:
            self._reload()
        else:
            self._apply(settings)

    def _apply(self, settings: SecuritySettings) -> None:
        self.settings = settings
        self._token_digest = hashlib.sha256(settings.token).digest() if settings.token is not None else b""

    def _reload(self) -> None:
        try:
            self._apply(SecuritySettings.from_env())
            self._error = None
        except ConfigError as error:
            # Fail closed: until the configuration is fixed nothing but the lifespan failure gets through.
            self._error = error

    # -- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and not self._authorized(scope):
            await send({"type": "websocket.close", "code": 1008, "reason": "authentication required"})
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] == "lifespan.startup":
            if not self._fixed:
                self._reload()
            if self._error is not None:
                log.error("cannot start: %s", self._error)
                await send({"type": "lifespan.startup.failed", "message": f"cellmfg security settings: {self._error}"})
                return
            show_service_logs()  # this line is one an operator must be able to see
            log.info("%s", self.settings.describe())
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope: Scope) -> bool:
        if self._error is not None:
            return False
        if not self.settings.auth_enabled or scope.get("path", "") in self.settings.open_paths:
            return True
        return self._check_token(scope) == "ok"

    def _check_token(self, scope: Scope) -> str:
        return token_verdict(header_values(scope, b"authorization"), self._token_digest)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._error is not None:
            await send_error(send, 500, "the server's security settings are invalid; see the server log")
            return
        settings = self.settings
        if settings.auth_enabled and scope.get("path", "") not in settings.open_paths:
            verdict = self._check_token(scope)
            if verdict != "ok":
                challenge = f'Bearer realm="{REALM}"'
                if verdict == "invalid":
                    challenge += ', error="invalid_token"'
                    message = "the bearer token is not valid for this server"
                else:
                    message = ("authentication required: send the header 'Authorization: Bearer <token>' with the "
                               "token this server was configured with (CELLMFG_API_TOKEN)")
                await send_error(send, 401, message, [(b"www-authenticate", challenge.encode())])
                return

        limit = settings.max_body_bytes
        lengths = header_values(scope, b"content-length")
        if lengths:
            try:
                declared = {int(value) for value in b",".join(lengths).split(b",")}
            except ValueError:
                declared = set()
            if len(declared) != 1 or min(declared) < 0:
                await send_error(send, 400, "invalid Content-Length header")
                return
            size = declared.pop()
            if size > limit:
                await self._refuse_oversize(receive, send, size, limit, drain=size <= DRAIN_LIMIT_BYTES)
                return
            # The HTTP server stops the body at the announced length, so nothing more can arrive.
            await self.app(scope, receive, send)
            return
        if not header_values(scope, b"transfer-encoding"):
            await self.app(scope, receive, send)  # no body at all
            return
        # A chunked body: read it here, up to the limit, and hand it on only if it fits.
        chunks: list[Message] = []
        received = 0
        while True:
            chunk = await receive()
            if chunk["type"] != "http.request":
                chunks.append(chunk)  # a disconnect: let the app see it
                break
            received += len(chunk.get("body", b""))
            if received > limit:
                await self._refuse_oversize(receive, send, None, limit, drain=True, already=received)
                return
            chunks.append(chunk)
            if not chunk.get("more_body", False):
                break
        queued = iter(chunks)

        async def replay() -> Message:
            for queued_message in queued:
                return queued_message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse_oversize(self, receive: Receive, send: Send, size: int | None, limit: int, drain: bool,
                               already: int = 0) -> None:
        if drain:
            drained = already
            with anyio.move_on_after(DRAIN_SECONDS):
                while drained <= DRAIN_LIMIT_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away: nobody to answer
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        told = f"{size} bytes" if size is not None else f"more than {limit} bytes (chunked)"
        await send_error(send, 413, f"request body of {told} is larger than this server accepts ({limit} bytes, "
                                    f"CELLMFG_MAX_BODY_BYTES): split the batch into smaller requests",
                         [(b"connection", b"close")])
