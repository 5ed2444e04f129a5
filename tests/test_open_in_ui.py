"""`rbln-perfetto open` and `serve`, run as the user runs them (a subprocess) and spoken to with a
real HTTP client: what is served, to whom, with which headers, and how each one ends."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from golden_export import CAPTURE

from rbln_perfetto import export
from rbln_perfetto.cli import main

ROOT = Path(__file__).resolve().parent.parent
TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
LINK = re.compile(r"(https?://\S+/#!/\?url=http://127\.0\.0\.1:(\d+)/(\S+))")


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return export(CAPTURE, tmp_path_factory.mktemp("open"), per_invocation=False).aggregate_file


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class Cli:
    """`rbln-perfetto ARGS` in a subprocess, with SIGINT at its default (a test runner may ignore it)."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rbln_perfetto.cli", *map(str, args)], cwd=ROOT, env=env or _env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.watchdog = threading.Timer(120, self.proc.kill)  # a hung server fails the test, not the session
        self.watchdog.start()
        self.lines: list[str] = []

    def line_matching(self, pattern) -> re.Match:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matched {pattern!r}; stdout: {self.lines}; stderr: {self.proc.stderr.read()}")

    def finish(self, timeout=60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.watchdog.cancel()
        return self.proc.returncode, "".join(self.lines) + out, err

    def kill(self):
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _get(url, method="GET"):
    """(status, headers, body) of one request, 4xx answers included."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _refused(host, port) -> bool:
    with socket.socket() as s:
        s.settimeout(10)
        return s.connect_ex((host, port)) != 0


@pytest.mark.parametrize("origin", [None, "http://localhost:10000"])
def test_open_serves_the_one_file_once_with_the_ui_headers(trace, origin):
    cli = Cli("open", trace, "--port", 0, "--no-browser", *(["--origin", origin] if origin else []))
    try:
        link, port, name = cli.line_matching(LINK).groups()
        port = int(port)
        origin = origin or "https://ui.perfetto.dev"
        assert link == f"{origin}/#!/?url=http://127.0.0.1:{port}/aggregate.pb" and name == "aggregate.pb"
        assert any("bound to 127.0.0.1 only" in line for line in cli.lines)
        base = f"http://127.0.0.1:{port}"
        # Anything but the file's path, and any method but GET/HEAD: 404, and the server keeps waiting.
        for path, method in (("/", "GET"), ("/capture.rblncap", "GET"), ("/../aggregate.pb", "GET"),
                             ("/aggregate.pb", "POST"), ("/aggregate.pb", "DELETE")):
            status, headers, _ = _get(base + path, method)
            assert (path, method, status) == (path, method, 404)
            assert headers["Access-Control-Allow-Origin"] == origin
        status, headers, body = _get(base + "/aggregate.pb", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == trace.stat().st_size
        assert cli.proc.poll() is None
        # Bound to 127.0.0.1 only: another loopback address of this machine is refused.
        assert _refused("127.0.0.2", port)

        status, headers, body = _get(base + "/aggregate.pb")
        assert status == 200 and body == trace.read_bytes()
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Cache-Control"] == "no-cache"
        code, out, err = cli.finish()
        assert code == 0, err
        assert "served aggregate.pb to 127.0.0.1" in out and "Traceback" not in err
        assert _refused("127.0.0.1", port)  # it has exited and closed its socket
    finally:
        cli.kill()


def test_open_prints_the_link_when_there_is_no_browser(trace):
    cli = Cli("open", trace, "--port", 0)  # no --no-browser; the environment has no display and no $BROWSER
    try:
        link, port, _ = cli.line_matching(LINK).groups()
        assert "(no browser available here)" in cli.lines[-1]
        assert _get(f"http://127.0.0.1:{port}/aggregate.pb")[0] == 200
        assert cli.finish()[0] == 0
    finally:
        cli.kill()


def test_open_opens_the_link_in_the_users_browser(trace, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(0o755)
    cli = Cli("open", trace, "--port", 0, env=_env(BROWSER=str(browser)))
    try:
        link, port, _ = cli.line_matching(LINK).groups()
        assert cli.lines[-1].startswith("opened in your browser:")
        assert opened.read_text() == link
        assert _get(f"http://127.0.0.1:{port}/aggregate.pb")[0] == 200  # what the browser's UI would fetch
        assert cli.finish()[0] == 0
    finally:
        cli.kill()


def test_open_on_a_port_in_use_is_one_clear_line(trace):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "rbln_perfetto.cli", "open", str(trace), "--port", str(port),
                               "--no-browser"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1:] == [
        f"rbln-perfetto open: error: port {port} on 127.0.0.1 is already in use: stop what holds it (another "
        "`rbln-perfetto open` or `serve`?) or pick another with --port"]
    assert proc.stdout == ""


def test_open_stops_cleanly_on_ctrl_c(trace):
    cli = Cli("open", trace, "--port", 0, "--no-browser")
    try:
        port = int(cli.line_matching(LINK).group(2))
        cli.proc.send_signal(signal.SIGINT)
        code, _, err = cli.finish()
        assert code == 130
        assert err.strip().splitlines()[-1:] == ["rbln-perfetto open: interrupted"] and "Traceback" not in err
        with socket.socket() as again:  # the port is free again
            again.bind(("127.0.0.1", port))
    finally:
        cli.kill()


def test_open_argument_errors(trace, tmp_path, capsys):
    assert main(["open", str(trace), "--origin", "ui.perfetto.dev", "--no-browser"]) == 2
    assert "--origin 'ui.perfetto.dev' is not a UI origin; give scheme://host[:port]" in capsys.readouterr().err
    assert main(["open", str(tmp_path / "missing.pb"), "--no-browser"]) == 1
    assert "missing.pb: no such trace file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["open", str(trace), "--port", "70000"])
    assert "'70000' is not a port; valid: 0..65535" in capsys.readouterr().err


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
def test_serve_binds_127_0_0_1_and_prints_the_ui_link(trace):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = Cli("serve", trace, "--port", port, "--tp-bin", TP_BIN)
    try:
        m = cli.line_matching(r"bound to 127\.0\.0\.1 only.*open (\S+) ")
        assert m.group(1) == f"https://ui.perfetto.dev/#!/?rpc_port={port}"
        deadline = time.monotonic() + 60
        while _refused("127.0.0.1", port):
            assert time.monotonic() < deadline and cli.proc.poll() is None, "trace_processor did not start"
            time.sleep(0.2)
        status, _, body = _get(f"http://127.0.0.1:{port}/status")
        assert status == 200
        assert _refused("127.0.0.2", port)
        cli.proc.send_signal(signal.SIGINT)
        code, _, err = cli.finish()
        assert code == 130 and "Traceback" not in err
    finally:
        cli.kill()
