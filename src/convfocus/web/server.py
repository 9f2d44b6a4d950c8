"""A small, careful HTTP layer shared by the web apps.

Apps implement :class:`App` (``handle(request) -> Response``); this module does the
socket work, static files, security headers and error hygiene: an expected error
becomes a JSON message with its status, anything else a bare ``500 internal error``
(details go to the log only, never to the client).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("convfocus.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 64 * 1024
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
        """The body as a JSON object (400 when it is not one)."""
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "expected Content-Type: application/json")
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        return data


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

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._send(Response.json({"error": "method not allowed"}, 405))

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _dispatch(self, method: str) -> None:
        try:
            request = self._parse(method)
            response = self.server.app.handle(request)
        except HttpError as exc:
            response = Response.json({"error": exc.message}, exc.status)
        except Exception:  # never leak a stack trace to the client
            log.exception("internal error serving %s", self.path[:200])
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
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise HttpError(400, "bad Content-Length") from None
            if length < 0 or length > MAX_BODY_BYTES:
                raise HttpError(413, "request body too large")
            body = self.rfile.read(length)
        return Request(method if method != "HEAD" else "GET", path, query, body, headers)

    def _check_host(self, host: str) -> None:
        """Refuse foreign Host headers on a loopback server (DNS rebinding)."""
        if not self.server.loopback_only:
            return
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name.strip("[]") not in LOOPBACK_HOSTS:
            raise HttpError(421, "unexpected Host header")

    def _send(self, response: Response, *, head: bool = False) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in {**_SECURITY_HEADERS, **response.headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away")


class AppServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one app."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: App, host: str, port: int) -> None:
        self.app = app
        self.loopback_only = host in LOOPBACK_HOSTS
        if ":" in host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"


def make_server(app: App, host: str = "127.0.0.1", port: int = 0) -> AppServer:
    """Bind (``port=0``: an ephemeral port) without serving yet."""
    from convfocus.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range: {port}")
    try:
        return AppServer(app, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def start_in_thread(app: App, host: str = "127.0.0.1", port: int = 0) -> AppServer:
    """Serve in a daemon thread (tests, notebooks); stop with ``server.shutdown()``."""
    server = make_server(app, host, port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     name="convfocus-web", daemon=True).start()
    return server


def serve(app: App, host: str = "127.0.0.1", port: int = 0) -> None:
    """Print the URL and serve until interrupted."""
    server = make_server(app, host, port)
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
