"""Both query backends fail the same way: a file that is not a whole trace gives one line naming the
file and what is wrong with it, whichever backend reads it; a trace_processor binary that cannot
start says so instead; a trace whose slices never end is reported, never read as a shorter trace.

The trace_processor half runs the real binary (`RBLN_PERFETTO_TP_BIN`) and is skipped without it;
the binaries that cannot start are made here."""

import os
import re
import warnings
import zlib
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from reference_traces import reference_trace
from synthetic import program, write_capture

import rbln_perfetto
from rbln_perfetto.cli import main
from rbln_perfetto.errors import TraceProcessorError, TraceReadError
from rbln_perfetto.query import open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
needs_tp = pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
BEGIN, END = pt.TrackEvent.TYPE_SLICE_BEGIN, pt.TrackEvent.TYPE_SLICE_END


def _packets(data: bytes, expand: bool) -> list:
    """The trace's packets as Perfetto's messages; with `expand`, compressed bundles in their place."""
    out = []
    for p in pt.Trace.FromString(data).packet:
        if expand and p.HasField("compressed_packets"):
            out.extend(pt.Trace.FromString(zlib.decompress(p.compressed_packets)).packet)
        else:
            out.append(p)
    return out


def _open_slices(packets) -> int:
    """Slices begun and not ended by these packets (every event names its track)."""
    depth: dict[int, int] = {}
    for p in packets:
        if p.HasField("track_event") and p.track_event.type in (BEGIN, END):
            assert p.track_event.HasField("track_uuid")
            t = p.track_event.track_uuid
            depth[t] = depth.get(t, 0) + (1 if p.track_event.type == BEGIN else -1)
            assert depth[t] >= 0
    return sum(depth.values())


def _prefix(path: Path, packets, n: int) -> Path:
    path.write_bytes(pt.Trace(packet=packets[:n]).SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An exported run with host events, and files cut from it: mid-packet, inside a host event (at a
    top-level packet boundary, as written), and deep inside an invocation (bundles expanded)."""
    d = tmp_path_factory.mktemp("backend-errors")
    prog = program("transformer", 0, [("blocks.0.ff", "linear", i, 2, "[1, 8]", 64, 128, 64) for i in range(2)]
                   + [("blocks.0.norm", "layer_norm", 0, 1, "[1, 8]", 64, 32, 64)],
                   inputs=[("hidden", (1, 8), "float32", 32, 0)], outputs=[("out", (1, 8), "float32", 32, 2)])
    capture = write_capture(d / "capture.rblncap", [prog], [(0, [5] * 5)] * 3,
                            host=[(0, "scheduler_step", 7, "step 0"), (1, "scheduler_step", 7, "step 1")])
    rbln_perfetto.export(capture, d / "run")
    aggregate = d / "run" / "aggregate.pb"
    data = aggregate.read_bytes()
    top = _packets(data, expand=False)
    in_host = next(i + 1 for i, p in enumerate(top) if p.track_event.type == BEGIN)  # the first top-level BEGIN: host
    flat = _packets(data, expand=True)
    deepest = max(range(len(flat) + 1), key=lambda n: _open_slices(flat[:n]))
    (d / "empty").write_bytes(b"")
    (d / "text").write_bytes(b"hello, not a trace\n")
    (d / "truncated").write_bytes(data[: len(data) * 2 // 3])
    return {
        "aggregate": aggregate, "capture": capture, "empty": d / "empty", "text": d / "text",
        "truncated": d / "truncated",
        "cut-in-host": _prefix(d / "cut-in-host.pb", top, in_host),
        "cut-in-invocation": _prefix(d / "cut-in-invocation.pb", flat, deepest),
        "open": {"cut-in-host": _open_slices(top[:in_host]), "cut-in-invocation": _open_slices(flat[:deepest])},
    }


NOT_TRACES = {
    "empty": "empty file, not a Perfetto trace",
    "text": r"not a Perfetto protobuf trace \(its bytes do not parse as TracePackets\)",
    "truncated": r"a truncated or corrupt Perfetto trace: a packet of \d+ bytes cut short after \d+ at byte offset \d+",
    "capture": "an rbln-perfetto capture, not a trace: export it first with `rbln-perfetto export`",
}


def _cli_error(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


@pytest.mark.parametrize("name", NOT_TRACES)
def test_embedded_backend_names_the_file_and_its_problem(files, name, capsys):
    code, err = _cli_error(["query", str(files[name]), "select 1", "--backend", "sqlite"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert re.fullmatch(rf"rbln-perfetto query: error: {re.escape(str(files[name]))}: {NOT_TRACES[name]}\n", err), err


@needs_tp
@pytest.mark.parametrize("command", ["query", "summary", "plot"])
@pytest.mark.parametrize("name", NOT_TRACES)
def test_trace_processor_gives_the_embedded_backends_line(files, name, command, tmp_path, capsys):
    extra = {"query": ["select 1"], "summary": [], "plot": ["-o", str(tmp_path / "t.png")]}[command]
    lines = {}
    for backend in ("sqlite", "trace_processor", "auto"):
        code, lines[backend] = _cli_error([command, str(files[name]), *extra, "--backend", backend], capsys)
        assert code == 1, (backend, lines[backend])
    assert lines["trace_processor"] == lines["auto"] == lines["sqlite"]
    assert not (tmp_path / "t.png").exists()


@needs_tp
def test_trace_processor_reads_what_it_reads_and_the_embedded_reader_does_not(tmp_path):
    """JSON traces are trace_processor's to read: the file check passes them on."""
    path = tmp_path / "chrome.json"
    path.write_text('{"traceEvents": [{"name": "x", "ph": "X", "ts": 1, "dur": 2, "pid": 1, "tid": 1}]}')
    with open_trace(path, backend="trace_processor") as tr:
        assert tr.query("select name, dur from slice").values.tolist() == [["x", 2000]]
    with pytest.raises(TraceReadError, match="a JSON trace"):
        open_trace(path, backend="sqlite")


def _binaries(tmp_path: Path) -> dict:
    garbage = tmp_path / "garbage-bin"
    garbage.write_bytes(os.urandom(256).replace(b"#", b"x"))
    failing = tmp_path / "failing-bin"
    failing.write_text("#!/bin/sh\necho 'no such library' >&2\nexit 3\n")
    for p in (garbage, failing):
        p.chmod(0o755)
    return {"garbage": garbage, "failing": failing}


@pytest.mark.parametrize("kind,reason", [("garbage", r"OSError: Exec format error"),
                                         ("failing", r"Trace processor failed to start.*no such library")])
def test_a_binary_that_cannot_start_is_named_not_the_file(files, kind, reason, tmp_path, capsys):
    binary = _binaries(tmp_path)[kind]
    code, err = _cli_error(["query", str(files["aggregate"]), "select 1", "--backend", "trace_processor",
                            "--tp-bin", str(binary)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert re.match(rf"rbln-perfetto query: error: trace_processor binary {re.escape(str(binary))} cannot start "
                    rf"\({reason}", err), err
    assert str(files["aggregate"]) not in err
    # A file that is not a trace is still the file's fault, whatever the binary.
    with pytest.raises(TraceReadError, match=re.escape(f"{files['empty']}: empty file")):
        open_trace(files["empty"], backend="trace_processor", tp_bin=str(binary))
    with pytest.raises(TraceProcessorError, match="cannot start"):
        open_trace(files["aggregate"], backend="trace_processor", tp_bin=str(binary))


@pytest.mark.parametrize("cut", ["cut-in-host", "cut-in-invocation"])
def test_slices_that_never_end_are_reported(files, cut, capsys):
    n = files["open"][cut]
    assert n >= (1 if cut == "cut-in-host" else 3)  # the invocation cut leaves nested slices open
    with pytest.warns(UserWarning) as caught:
        tr = open_trace(files[cut], backend="sqlite")
    with tr:
        (w,) = caught
        said = "1 slice never ends" if n == 1 else f"{n} slices never end"
        assert str(w.message).startswith(f"{files[cut]}: {said} (dur = -1): the trace was cut short")
        assert tr.query("select count(*) as n from slice where dur = -1").n.iloc[0] == n
        stats = tr.query("select name, severity, value from stats where value > 0 and severity != 'info'")
        assert stats.values.tolist() == [["unfinished_slices", "data_loss", n]]
    # The command line: one warning line, then the reports.
    assert main(["summary", str(files[cut]), "--backend", "sqlite"]) == 0
    out, err = capsys.readouterr()
    assert err == f"rbln-perfetto summary: warning: {w.message}\n" and "[devices]" in out


def test_a_whole_trace_warns_nothing(files):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_trace(files["aggregate"], backend="sqlite") as tr:
            assert tr.query("select count(*) as n from stats where name = 'unfinished_slices'").n.iloc[0] == 0


_SLICES = """select s.id, s.ts, s.dur, s.depth, s.name, t.name as track, s.parent_id, s.category,
             s.arg_set_id is null as no_args from slice s join track t on s.track_id = t.id order by s.id"""
_ARGS = """select s.id, a.flat_key, a.key, a.int_value, a.string_value, a.real_value, a.value_type
           from slice s join args a using(arg_set_id) order by s.id, a.key"""
_TRACKS = "select t.id, t.name, t.type, t.parent_id from track t order by t.id"
_STATS = "select name, idx, severity, source, value from stats where value > 0 and severity != 'info' order by name"


def _rows(tr, sql):
    df = tr.query(sql)
    return df.astype(object).where(df.notna(), None).values.tolist()


def _compare_backends(path: Path) -> int:
    """Open `path` on both backends: identical slices, args, tracks and warnings; trace_processor's stats rows all
    in the embedded backend's, which adds only `unfinished_slices`. The unfinished count."""
    with pytest.warns(UserWarning) as on_sqlite:
        a = open_trace(path, backend="sqlite")
    with pytest.warns(UserWarning) as on_tp:
        b = open_trace(path, backend="trace_processor")
    with a, b:
        assert [str(w.message) for w in on_sqlite] == [str(w.message) for w in on_tp]
        for sql in (_SLICES, _ARGS, _TRACKS):
            assert _rows(a, sql) == _rows(b, sql), sql
        mine, theirs = _rows(a, _STATS), _rows(b, _STATS)
        assert [r for r in mine if r[0] != "unfinished_slices"] == theirs
        (n,) = [r[4] for r in mine if r[0] == "unfinished_slices"]
        unfinished = "select id from slice where dur = -1"
        assert n == len(a.query(unfinished)) == len(b.query(unfinished))
        return n


@needs_tp
@pytest.mark.parametrize("cut", ["cut-in-host", "cut-in-invocation"])
def test_unfinished_slices_match_trace_processor(files, cut):
    assert _compare_backends(files[cut]) == files["open"][cut]


@needs_tp
def test_unfinished_slices_match_trace_processor_at_every_packet_boundary(tmp_path):
    """Trace_processor's own reference trace cut after every packet that leaves a slice open."""
    packets = _packets(reference_trace("device_tracks_nested").read_bytes(), expand=True)
    cuts = [n for n in range(1, len(packets)) if _open_slices(packets[:n])]
    assert len(cuts) >= 3
    for n in cuts:
        assert _compare_backends(_prefix(tmp_path / f"cut-{n}.pb", packets, n)) == _open_slices(packets[:n]), n
