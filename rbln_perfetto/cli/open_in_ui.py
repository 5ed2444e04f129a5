"""Open one trace in the Perfetto UI with one command, as Perfetto's own `tools/open_trace_in_ui` does.

`serve_trace_once` serves that one file over HTTP on 127.0.0.1 (port 9001 by default: the only
port the UI's content security policy lets it fetch from), answers every other path and method
with 404, sends `Access-Control-Allow-Origin` for the UI's origin and `Cache-Control: no-cache`,
and returns once the file has been served in full. The UI is pointed at it with
`{origin}/#!/?url=http://127.0.0.1:9001/<file>` (`trace_url`). Bound to 127.0.0.1 only: nothing
outside this machine can reach it. `trace_processor_url` is the link for `rbln-perfetto serve`
(trace_processor's `--httpd`), which the UI finds on the same port.
"""

from __future__ import annotations

import errno
import http.server
import os
import shutil
import socketserver
import sys
import webbrowser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..analysis.ui_links import startup_arg
from ..errors import PortUnavailableError, UsageError

HOST = "127.0.0.1"
DEFAULT_PORT = 9001
DEFAULT_ORIGIN = "https://ui.perfetto.dev"
REQUEST_TIMEOUT_S = 30  # a client that connects and sends nothing does not hold the server forever


def check_origin(origin: str) -> str:
    """`origin` (scheme://host[:port] of a Perfetto UI) without a trailing slash; `UsageError` otherwise."""
    parts = urlsplit(origin.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise UsageError(f"--origin {origin!r} is not a UI origin; give scheme://host[:port], e.g. {DEFAULT_ORIGIN} "
                         "or http://localhost:10000")
    return f"{parts.scheme}://{parts.netloc}"


def trace_url(origin: str, port: int, file_name: str) -> str:
    """The UI link that makes the UI fetch `file_name` from this machine's server."""
    return f"{origin}/#!/?url=http://{HOST}:{port}/{quote(file_name)}"


def trace_processor_url(origin: str, port: int) -> str:
    """The UI link for a trace_processor `--httpd` on `port` (the UI probes 9001 by itself)."""
    return f"{origin}/#!/" if port == DEFAULT_PORT else f"{origin}/#!/?rpc_port={port}"


def browser_available() -> bool:
    """Whether `webbrowser` can show a page: `$BROWSER` is set, or a desktop session exists (on Linux
    and BSD a display; elsewhere assumed). Without one, `webbrowser` would fall back to a console
    browser, which cannot run the UI."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class _OneFileHandler(http.server.BaseHTTPRequestHandler):
    """GET (and HEAD) of the served file's path; 404 for every other path and method."""

    server: TraceServer
    timeout = REQUEST_TIMEOUT_S

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", self.server.origin)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def _is_the_file(self) -> bool:
        return unquote(urlsplit(self.path).path) == "/" + self.server.path.name

    def _head(self) -> bool:
        if not self._is_the_file():
            self.send_error(404, "File not found")
            return False
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(self.server.size))
        self.end_headers()
        return True

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        if not self._head():
            return
        try:
            with open(self.server.path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away: the file was not served, keep waiting
        self.server.served_to = self.client_address[0]

    def _not_found(self) -> None:
        self.send_error(404, "File not found")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_found

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass  # one line per request would bury the link; the command says what was served


class TraceServer(socketserver.TCPServer):
    """An HTTP server on 127.0.0.1:`port` (0: any free port) for the one file `path`."""

    allow_reuse_address = True  # a port left in TIME_WAIT by the previous run is free; a listening one is not

    def __init__(self, path: str | os.PathLike, port: int = DEFAULT_PORT, origin: str = DEFAULT_ORIGIN):
        self.path = Path(path).resolve()
        self.size = self.path.stat().st_size
        self.origin = check_origin(origin)
        self.served_to: str | None = None
        try:
            super().__init__((HOST, port), _OneFileHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortUnavailableError(f"port {port} on {HOST} is already in use: stop what holds it (another "
                                           "`rbln-perfetto open` or `serve`?) or pick another with --port") from None
            if exc.errno == errno.EACCES:
                raise PortUnavailableError(f"port {port} on {HOST} cannot be bound: permission denied (ports below "
                                           "1024 need privileges); pick another with --port") from None
            raise

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return trace_url(self.origin, self.port, self.path.name)

    def handle_error(self, request, client_address) -> None:
        pass  # a client's broken connection is not the server's failure; keep serving

    def serve_until_served(self) -> str:
        """Answer requests until the file has been sent in full once; returns the client's address."""
        while self.served_to is None:
            self.handle_request()
        return self.served_to


def open_in_ui(path: str | os.PathLike, *, port: int = DEFAULT_PORT, origin: str = DEFAULT_ORIGIN,
               browser: bool = True, out=None, commands=()) -> str:
    """Serve `path` once and open it in the UI (or print the link); returns the link. Blocks until
    the UI has fetched the file; Ctrl-C raises KeyboardInterrupt, with the socket closed. `commands`:
    UI startup commands (`analysis.ui_views`) the link carries."""
    out = sys.stdout if out is None else out
    with TraceServer(path, port, origin) as server:
        url = server.url + (f"&{startup_arg(commands)}" if commands else "")
        print(f"serving {server.path} ({server.size / 2**20:.1f} MiB) on http://{HOST}:{server.port}/"
              f"{quote(server.path.name)}: bound to {HOST} only (this machine), this one file, until the UI has "
              "fetched it (Ctrl-C stops)", file=out, flush=True)
        opened = browser and browser_available() and webbrowser.open_new_tab(url)
        if opened:
            print(f"opened in your browser: {url}", file=out, flush=True)
        else:
            why = "" if not browser else " (no browser available here)"
            print(f"open this link in a browser on this machine{why}: {url}", file=out, flush=True)
        client = server.serve_until_served()
        print(f"served {server.path.name} to {client}; done", file=out, flush=True)
    return url
