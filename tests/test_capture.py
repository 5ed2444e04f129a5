"""The capture file: schema freshness, crash safety, and clear errors for what is not a capture."""

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reference_traces import reference_trace
from trace_checks import check_trace

import rbln_perfetto
from rbln_perfetto.recorder.capture import MAGIC, CaptureError, iter_records, read_info
from rbln_perfetto.cli import main
from rbln_perfetto.proto_bytes import varint

ROOT = Path(__file__).resolve().parents[1]


def test_generated_capture_module_is_not_stale(tmp_path):
    """rbln_perfetto/rbln_capture_pb2.py must be what protoc makes of proto/rbln_capture.proto today."""
    from grpc_tools import protoc

    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}", str(ROOT / "proto" / "rbln_capture.proto")])
    assert rc == 0
    fresh = (tmp_path / "rbln_capture_pb2.py").read_text()
    checked_in = (ROOT / "rbln_perfetto" / "rbln_capture_pb2.py").read_text()
    assert fresh == checked_in, "regenerate: python -m grpc_tools.protoc -Iproto --python_out=rbln_perfetto proto/rbln_capture.proto"


@pytest.fixture(scope="module")
def capture(shared_run):
    return shared_run({"text_encoder_3": {"device": 1}}, steps=2).capture_file


def test_truncated_capture_exports_every_complete_invocation(capture, tmp_path):
    data = capture.read_bytes()
    ends = [(offset, rec.WhichOneof("kind")) for offset, rec in iter_records(capture)]
    invocation_starts = [o for o, kind in ends if kind == "invocation"]
    # Cut inside the 4th invocation record (3 complete before it), and inside the final RunEnd record.
    for cut, complete in ((invocation_starts[3] + 5, 3), (len(data) - 2, len(invocation_starts))):
        cut_file = tmp_path / f"cut-{cut}.rblncap"
        cut_file.write_bytes(data[:cut])
        out = tmp_path / f"out-{cut}"
        result = rbln_perfetto.export(cut_file, out)
        assert len(result.invocation_files) == complete
        assert result.truncation is not None and result.truncation.offset == max(o for o, _ in ends if o < cut)
        assert result.status == "truncated"
        for path in out.glob("*.pb"):
            check_trace(path)


def test_skipped_records_are_passed_over_and_the_rest_read_as_before(capture, tmp_path):
    every = [(offset, rec) for offset, rec in iter_records(capture)]
    skip = {"program", "header"}
    assert [(o, r) for o, r in iter_records(capture, skip=skip)] == [(o, r) for o, r in every
                                                                    if r.WhichOneof("kind") not in skip]
    # A record holding more than the one field its tag names is parsed: the last field of a oneof wins.
    program = next(r for _, r in every if r.WhichOneof("kind") == "program")
    host = next(r for _, r in every if r.WhichOneof("kind") == "host")
    both = program.SerializeToString() + host.SerializeToString()
    odd = tmp_path / "odd.rblncap"
    odd.write_bytes(MAGIC + varint(len(both)) + both)
    assert [r.WhichOneof("kind") for _, r in iter_records(odd, skip={"program"})] == ["host"]


def test_capture_killed_mid_run_is_recoverable(compiled_dirs, tmp_path):
    compiled = compiled_dirs({"text_encoder_3": {"device": 1}})
    script = textwrap.dedent(f"""
        import os, signal, torch
        import rbln_perfetto
        from pipeline import RBLNStableDiffusion3Pipeline
        pipe = RBLNStableDiffusion3Pipeline.from_pretrained({str(compiled)!r})
        pipe.set_progress_bar_config(disable=True)
        def die(p, step, t, kw):
            if step == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return {{}}
        with rbln_perfetto.profile({str(tmp_path / 'run')!r}):
            pipe("a cat", num_inference_steps=4, callback_on_step_end=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    capture = tmp_path / "run" / "capture.rblncap"
    assert not list((tmp_path / "run").glob("*.pb"))  # killed before any export
    assert main(["export", str(capture), "-o", str(tmp_path / "recovered")]) == 0
    names = sorted(p.name for p in (tmp_path / "recovered").glob("0*.pb"))
    assert names[-2:] == ["0006_transformer_0.pb", "0007_transformer_1.pb"] and len(names) == 8
    for path in (tmp_path / "recovered").glob("*.pb"):
        check_trace(path)
    assert read_info(capture).end is None


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", r"not an rbln-perfetto capture \(empty file\) at byte offset 0"),
        (b"PK\x03\x04 not a capture", r"not an rbln-perfetto capture \(starts with b'PK"),
        (MAGIC + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "corrupt record length at byte offset 8"),
        (MAGIC + b"\x05\x0a\x03\xff\xff\xff", "corrupt record .* at byte offset 8"),
        (MAGIC + b"\x02\x38\x01", "record of unknown kind .* at byte offset 8"),
        (MAGIC, "capture has no header record at byte offset 8"),
    ],
    ids=["empty", "zip", "bad-length", "bad-record", "foreign-record", "no-header"],
)
def test_bad_capture_files_name_the_byte_offset(tmp_path, content, reason):
    bad = tmp_path / "bad.rblncap"
    bad.write_bytes(content)
    with pytest.raises(CaptureError, match=reason):
        rbln_perfetto.export(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_foreign_perfetto_trace_is_not_a_capture(tmp_path, capsys):
    assert main(["export", str(reference_trace("flows")), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbln-perfetto export: error:") and "not an rbln-perfetto capture" in err
    assert "byte offset 0" in err and "\n" not in err


def test_export_to_unwritable_directory_keeps_what_is_there(capture, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(rbln_perfetto.ExportError, match="is not writable"):
        rbln_perfetto.export(capture, blocker / "out")
    assert blocker.read_text() == "keep me"


def test_export_replaces_earlier_traces_atomically(capture, tmp_path):
    out = tmp_path / "out"
    first = rbln_perfetto.export(capture, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = rbln_perfetto.export(capture, out)
    assert [p.name for p in second.invocation_files] == [p.name for p in first.invocation_files]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # deterministic, no temporaries left
    shutil.rmtree(out)


def test_traces_too_large_for_the_browser_get_the_serve_hint(capture, tmp_path, monkeypatch, capsys):
    export_module = sys.modules["rbln_perfetto.exporter.export"]  # (the package re-exports the function under that name)
    sizes = {p.name: p.stat().st_size for p in rbln_perfetto.export(capture, tmp_path / "sizes").invocation_files}
    limit = max(sizes.values()) - 1  # only the largest invocation files (and the aggregate) exceed it
    monkeypatch.setattr(export_module, "UI_LIMIT_BYTES", limit)
    assert main(["export", str(capture), "-o", str(tmp_path / "out")]) == 0
    hints = [line for line in capsys.readouterr().out.splitlines() if "rbln-perfetto serve" in line]
    largest = sorted(name for name, size in sizes.items() if size > limit)  # (two files may tie)
    assert len(largest) < len(sizes) and [h.split()[0] for h in hints] == [*largest, "aggregate.pb"]
    assert all("more than the browser UI loads" in h and str(tmp_path / "out") in h for h in hints)
