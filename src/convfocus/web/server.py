"""A small, careful HTTP layer shared by the web apps.

Apps implement :class:`App` (``handle(request) -> Response``); this module does the
socket work, static files, security headers and error hygiene: an expected error
becomes a JSON message with its status, anything else a bare ``500 internal error``
(details go to the log only, never to the client). Every connection has a socket
timeout, and a response sent before the request body was read closes the connection.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("convfocus.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 20.0
"""Default socket timeout of a connection: an idle or stalled client is dropped after it."""
LINGER_S = 1.0
LINGER_MAX_BYTES = 1024 * 1024
"""After an early error, how long and how much unread input is drained before closing."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
}


class HttpError(Exception):
    """An expected failure with an HTTP status and a message safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


@dataclass
class Request:
    """One parsed request."""

    method: str
    path: str  # percent-decoded path, without the query
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 when it is not one, or repeats a key)."""
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "expected Content-Type: application/json")
        try:
            data = json.loads(self.body.decode("utf-8"), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HttpError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a JSON object, refusing a key given twice (400)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise HttpError(400, f"key {key!r} given more than once in the JSON body")
        data[key] = value
    return data


def _for_log(text: str, limit: int = 200) -> str:
    """Client-supplied text made safe for one log line (no control characters)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])


@dataclass
class Response:
    """What a handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode("utf-8")
        return cls(status, body, "application/json; charset=utf-8", {"Cache-Control": "no-store"})


class App(Protocol):
    """A web app: one method from request to response."""

    title: str

    def handle(self, request: Request) -> Response: ...


def query_int(query: dict[str, str], name: str, *, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi] (400 otherwise)."""
    text = query.get(name)
    if text is None:
        raise HttpError(400, f"missing parameter {name!r}")
    if not re.fullmatch(r"-?\d{1,12}", text):
        raise HttpError(400, f"parameter {name!r} must be an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise HttpError(400, f"parameter {name!r} out of range [{lo}, {hi}]")
    return value


def query_float(query: dict[str, str], name: str, *, lo: float, hi: float) -> float:
    """A finite float query parameter within [lo, hi] (400 otherwise)."""
    text = query.get(name)
    if text is None:
        raise HttpError(400, f"missing parameter {name!r}")
    if not re.fullmatch(r"-?\d{1,12}(\.\d{0,12})?([eE][-+]?\d{1,3})?", text):
        raise HttpError(400, f"parameter {name!r} must be a number")
    value = float(text)
    if not lo <= value <= hi:
        raise HttpError(400, f"parameter {name!r} out of range")
    return value


def safe_child(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing anything that leaves ``root`` (403)."""
    if "\x00" in relative or "\\" in relative:
        raise HttpError(400, "bad path")
    root = root.resolve()
    target = (root / relative.lstrip("/")).resolve()
    if target != root and root not in target.parents:
        raise HttpError(403, "path outside the served folder")
    return target


def static_file(relative: str) -> Response:
    """A file from the package's ``static/`` folder (404 when absent)."""
    path = safe_child(STATIC_DIR, relative)
    if not path.is_file():
        raise HttpError(404, "not found")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype == "application/javascript":
        ctype += "; charset=utf-8"
    return Response(200, path.read_bytes(), ctype, {"Cache-Control": "no-cache"})


class _Handler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.1"
    server_version = "convfocus"
    sys_version = ""

    def version_string(self) -> str:
        return "convfocus"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout_s)
        self._body_pending = False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), _for_log(format % args, 500))

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors found by the stdlib parser (bad request line, 414, 431, 501): JSON, close."""
        text = message or self.responses.get(code, ("error",))[0]
        log.info("%s %s -> %d %s", self.address_string(),
                 _for_log(getattr(self, "requestline", "") or "-"), code, _for_log(text))
        self._body_pending = True  # whatever follows on this connection cannot be trusted
        self._send(Response.json({"error": text}, code),
                   head=getattr(self, "command", None) == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._body_pending = self._declares_body()
        self._send(Response.json({"error": "method not allowed"}, 405))

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _declares_body(self) -> bool:
        """Whether the request announces a body (read or not yet)."""
        length = self.headers.get("content-length", "0").strip()
        return "transfer-encoding" in self.headers or length not in ("", "0")

    def _dispatch(self, method: str) -> None:
        self._body_pending = self._declares_body()
        try:
            request = self._parse(method)
            response = self.server.app.handle(request)
        except HttpError as exc:  # expected: one plain log line, no traceback
            log.info("%s %s %s -> %d %s", self.address_string(), method,
                     _for_log(self.path), exc.status, _for_log(exc.message))
            response = Response.json({"error": exc.message}, exc.status)
        except ConnectionError:
            log.debug("%s went away during the request", self.address_string())
            self.close_connection = True
            return
        except Exception:  # never leak a stack trace to the client
            log.exception("internal error serving %s", _for_log(self.path))
            response = Response.json({"error": "internal error"}, 500)
        self._send(response, head=method == "HEAD")

    def _parse(self, method: str) -> Request:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._check_host(headers.get("host", ""))
        if len(self.path) > 2048:
            raise HttpError(414, "URL too long")
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query: dict[str, str] = {}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if len(values) != 1:
                raise HttpError(400, f"parameter {key!r} given more than once")
            query[key] = values[0]
        body = b""
        if method == "POST":
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != headers.get("host"):
                raise HttpError(403, "cross-origin request refused")
            if "transfer-encoding" in headers:
                raise HttpError(411, "chunked bodies are not supported: send Content-Length")
            text = headers.get("content-length", "0").strip()
            if not re.fullmatch(r"[0-9]{1,12}", text):
                raise HttpError(400, "bad Content-Length")
            length = int(text)
            if length > MAX_BODY_BYTES:
                raise HttpError(413, "request body too large")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise HttpError(408, "timed out reading the request body") from None
            if len(body) != length:
                raise HttpError(400, "request body shorter than its Content-Length")
            self._body_pending = False
        return Request(method if method != "HEAD" else "GET", path, query, body, headers)

    def _check_host(self, host: str) -> None:
        """Refuse foreign Host headers on a loopback server (DNS rebinding)."""
        if not self.server.loopback_only:
            return
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name.strip("[]") not in LOOPBACK_HOSTS:
            raise HttpError(421, "unexpected Host header")

    def _send(self, response: Response, *, head: bool = False) -> None:
        """Write the response; close the connection when a request body was left unread."""
        close = self._body_pending
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in {**_SECURITY_HEADERS, **response.headers}.items():
                self.send_header(key, value)
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(response.body)
            if close:
                self._linger()
        except OSError as exc:  # the client went away or stalled
            log.debug("%s: response not delivered: %s", self.address_string(), exc)
            self.close_connection = True

    def _linger(self) -> None:
        """Finish sending, then drain (bounded) what the client still sends before closing.

        Closing a socket with unread input resets the connection, and the reset can destroy
        the answer before the client has read it (a 413 while the client still uploads).
        """
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_S
        left = LINGER_MAX_BYTES
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            self.connection.settimeout(remaining)
            try:
                chunk = self.connection.recv(min(left, 64 * 1024))
            except TimeoutError:
                break
            if not chunk:
                break
            left -= len(chunk)


class AppServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one app.

    ``request_timeout_s`` is the socket timeout of every connection: a client that sends
    nothing (an idle keep-alive, a body shorter than its Content-Length) is dropped after it.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: App, host: str, port: int, *,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        from convfocus.errors import ConfigError

        if not 0 < request_timeout_s <= 3600:
            raise ConfigError(f"request timeout out of range: {request_timeout_s} s")
        self.app = app
        self.request_timeout_s = float(request_timeout_s)
        self.loopback_only = host in LOOPBACK_HOSTS
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failure outside a request's handling: one log line, a traceback only if unexpected."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a reset, a broken pipe, a timeout: the client's doing
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.error("unexpected error on a connection from %s", client_address[0],
                      exc_info=exc)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"


def make_server(app: App, host: str = "127.0.0.1", port: int = 0, *,
                request_timeout_s: float = REQUEST_TIMEOUT_S) -> AppServer:
    """Bind (``port=0``: an ephemeral port) without serving yet."""
    from convfocus.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range: {port}")
    try:
        return AppServer(app, host, port, request_timeout_s=request_timeout_s)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def start_in_thread(app: App, host: str = "127.0.0.1", port: int = 0, *,
                    request_timeout_s: float = REQUEST_TIMEOUT_S) -> AppServer:
    """Serve in a daemon thread (tests, notebooks); stop with ``server.shutdown()``."""
    server = make_server(app, host, port, request_timeout_s=request_timeout_s)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     name="convfocus-web", daemon=True).start()
    return server


def serve(app: App, host: str = "127.0.0.1", port: int = 0, *,
          request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
    """Print the URL and serve until interrupted."""
    server = make_server(app, host, port, request_timeout_s=request_timeout_s)
    if host not in LOOPBACK_HOSTS:
        log.warning("listening on %s: anyone who can reach this machine can use %s",
                    host, app.title)
    print(f"{app.title}: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
