"""The trace_processor backend with the real binary (`RBLN_PERFETTO_TP_BIN`; skipped without it):
start-up answers queries, a file that is not a trace is one line naming it, a bad query is a
QueryError, closing ends the trace_processor process, and `--httpd` (what `serve` runs) answers
`/status` on 127.0.0.1 and stops."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from rbln_perfetto.errors import QueryError, TraceReadError
from rbln_perfetto.query import open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
CORPUS = Path(__file__).parent / "data" / "tp_corpus"
pytestmark = pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")


def _our_trace_processors() -> list[int]:
    """Pids of live trace_processor processes that this test process started."""
    binary, pids = os.path.realpath(TP_BIN), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if int(ppid) == os.getpid() and exe == binary and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_start_query_and_close(tmp_path):
    trace = tmp_path / "names.pb"
    trace.write_bytes((CORPUS / "track_names.pb").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the trace has a conflicting descriptor, counted in stats)
        tr = open_trace(trace, backend="trace_processor", tp_bin=TP_BIN)
        embedded = open_trace(trace, backend="sqlite")
    sql = "select id, name, parent_id from track order by id"
    assert tr.backend == "trace_processor"
    assert tr.query(sql).astype(object).where(lambda d: d.notna(), None).values.tolist() == \
        embedded.query(sql).astype(object).where(lambda d: d.notna(), None).values.tolist()
    with pytest.raises(QueryError, match=r"^SQL error: .*no_such_table"):
        tr.query("select * from no_such_table")
    assert len(tr.query("select * from slice")) == 7  # still answering after a failed query
    running = Path("/proc").is_dir() and _our_trace_processors()
    assert running or not Path("/proc").is_dir(), "no trace_processor process while the trace is open"
    tr.close()
    embedded.close()
    if Path("/proc").is_dir():
        deadline = time.monotonic() + 10
        while _our_trace_processors():
            assert time.monotonic() < deadline, "trace_processor still runs after close()"
            time.sleep(0.1)


def test_a_file_that_is_not_a_trace_is_one_line(tmp_path):
    bad = tmp_path / "notes.pb"
    bad.write_bytes(b"these are notes, not a trace\n" * 4)
    with pytest.raises(TraceReadError) as err:
        open_trace(bad, backend="trace_processor", tp_bin=TP_BIN)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_httpd_answers_status_on_127_0_0_1_and_stops(tmp_path):
    trace = tmp_path / "t.pb"
    trace.write_bytes((CORPUS / "annotation_types.pb").read_bytes())
    port = _free_port()
    proc = subprocess.Popen([TP_BIN, "--httpd", "--http-ip-address", "127.0.0.1", "--http-port", str(port), str(trace)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
                    assert response.status == 200 and response.read()
                break
            except OSError:
                assert proc.poll() is None, "trace_processor --httpd exited"
                assert time.monotonic() < deadline, "trace_processor --httpd did not answer /status"
                time.sleep(0.2)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) is not None
    with pytest.raises(OSError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
