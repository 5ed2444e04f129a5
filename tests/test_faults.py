"""Fault injection on real processes: SIGKILL, a full disk, permission errors, Ctrl-C during export.

Whatever happens, a final-named `.pb` is a complete, valid trace; a killed run's capture gives back
every invocation it completed; a failed export says which file and why, leaves the files committed
before it intact and no temporary file behind.
"""

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from synthetic import program, write_capture
from trace_checks import check_trace

import rbln_perfetto
from rbln_perfetto import rbln_capture_pb2 as pb
from rbln_perfetto.recorder.capture import MAGIC
from rbln_perfetto.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rbln_perfetto.cli"]
SPLIT = {"text_encoder_3": {"device": 1}}
STEPS = 2
INVOCATIONS = 6 + STEPS + 1  # three encoders x (prompt, negative prompt), one transformer call per step, the VAE


def complete_records(capture: Path) -> list[tuple[str, int]]:
    """The kind and end offset of each record that lies wholly inside the file, found by walking the
    framing by hand."""
    data = capture.read_bytes()
    assert data[: len(MAGIC)] == MAGIC
    pos, kinds = len(MAGIC), []
    while pos < len(data):
        length = shift = 0
        while pos < len(data):
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        else:
            break
        if pos + length > len(data):
            break
        kinds.append((pb.Record.FromString(data[pos : pos + length]).WhichOneof("kind"), pos + length))
        pos += length
    return kinds


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def check_final_files(directory: Path) -> list[Path]:
    """Every final-named trace in `directory` parses and keeps the invariants."""
    traces = sorted(directory.glob("*.pb"))
    for path in traces:
        check_trace(path)
    return traces


def check_recoverable(run_dir: Path, tmp_path: Path) -> int:
    """`rbln-perfetto export` of a killed run's capture recovers every invocation the capture completed."""
    capture = run_dir / "capture.rblncap"
    recovered = tmp_path / f"recovered-{run_dir.name}"
    kinds = [kind for kind, _ in complete_records(capture)]
    if not kinds:  # killed while writing the header: nothing to recover, and export says so
        assert main(["export", str(capture), "-o", str(recovered)]) == 1
        assert not recovered.exists() or not list(recovered.iterdir())
        return 0
    expected = kinds.count("invocation")
    assert main(["export", str(capture), "-o", str(recovered)]) == 0
    files = sorted(recovered.glob("0*.pb"))
    assert [int(p.name[:4]) for p in files] == list(range(expected))
    check_final_files(recovered)
    # What the killed run had already exported is exactly what the recovery writes.
    for path in run_dir.glob("0*.pb"):
        assert path.read_bytes() == (recovered / path.name).read_bytes()
    return expected


CHILD = """
import builtins, os, signal, sys
import rbln_perfetto
from rbln_perfetto.recorder import capture
from rbln_perfetto.exporter import trace_file
from pipeline import RBLNStableDiffusion3Pipeline

where, at = sys.argv[1], int(sys.argv[2])

class Tearing:
    '''A file that writes `at` bytes in all, flushes them to the OS and dies by SIGKILL.'''
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, data):
        if self.n + len(data) > at:
            self.f.write(data[: at - self.n]); self.f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        self.n += len(data)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)

if where == "capture":   # die after the capture file has taken `at` bytes (inside a record, most likely)
    capture.open = lambda *a, **k: Tearing(builtins.open(*a, **k))
else:                    # die half-way through the `at`-th write of the export
    calls = [0]
    write = trace_file.TraceFile.write
    def dying_write(self, data):
        calls[0] += 1
        if calls[0] == at:
            self._file.write(data[: len(data) // 2]); self._file.flush(); os.kill(os.getpid(), signal.SIGKILL)
        write(self, data)
    trace_file.TraceFile.write = dying_write

pipe = RBLNStableDiffusion3Pipeline.from_pretrained(sys.argv[3])
pipe.set_progress_bar_config(disable=True)
with rbln_perfetto.profile(sys.argv[4]):
    pipe("a cat", num_inference_steps=%d, guidance_scale=7.0)
""" % STEPS


@pytest.fixture(scope="module")
def capture(shared_run):
    """The capture of a whole profiled run like the children's."""
    return shared_run(SPLIT, steps=STEPS).capture_file


def _kill_child(compiled_dirs, tmp_path, where, at):
    run_dir = tmp_path / f"run-{where}-{at}"
    proc = subprocess.run([sys.executable, "-c", CHILD, where, str(at), str(compiled_dirs(SPLIT)), str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return run_dir


# Kill points as fractions of a whole capture: in the header, in the program tables, two seeded random ones.
_rng = random.Random(5)
CAPTURE_POINTS = [0.002, 0.1] + sorted(_rng.uniform(0.2, 0.97) for _ in range(2))


@pytest.mark.parametrize("fraction", CAPTURE_POINTS, ids=[f"{f:.2f}" for f in CAPTURE_POINTS])
def test_sigkill_while_capturing_leaves_every_completed_invocation_recoverable(
        compiled_dirs, capture, tmp_path, fraction):
    run_dir = _kill_child(compiled_dirs, tmp_path, "capture", int(fraction * capture.stat().st_size))
    assert not list(run_dir.glob("*.pb")), "nothing is exported before the run ends"
    recovered = check_recoverable(run_dir, tmp_path)
    assert recovered < INVOCATIONS


@pytest.mark.parametrize("write_number", [2, 9, 17])
def test_sigkill_during_export_leaves_no_partial_trace(compiled_dirs, tmp_path, write_number):
    run_dir = _kill_child(compiled_dirs, tmp_path, "export", write_number)
    assert temporaries(run_dir), "the kill came while a temporary file was open"
    check_final_files(run_dir)
    assert not (run_dir / "aggregate.pb").exists()
    assert check_recoverable(run_dir, tmp_path) == INVOCATIONS
    # Exporting into the killed run's directory finishes the job and clears the dead export's temporaries.
    assert main(["export", str(run_dir / "capture.rblncap")]) == 0
    assert temporaries(run_dir) == []
    assert len(check_final_files(run_dir)) == INVOCATIONS + 1


def _kill_when(run_dir: Path, ready) -> bool:
    """Start `rbln-perfetto run` into `run_dir` and SIGKILL it as soon as `ready(run_dir)` holds; whether the
    kill found it still running."""
    child = subprocess.Popen([*CLI, "run", "--steps", str(STEPS), "--out", str(run_dir)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None and not ready(run_dir):
        time.sleep(0.001)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    return child.wait(timeout=60) == -signal.SIGKILL


def _invocations_done(count: int):
    def ready(run_dir: Path) -> bool:
        capture = run_dir / "capture.rblncap"
        if not capture.exists() or capture.stat().st_size <= len(MAGIC):  # (just opened: nothing flushed yet)
            return False
        return [kind for kind, _ in complete_records(capture)].count("invocation") >= count

    return ready


def _export_started(run_dir: Path) -> bool:
    return run_dir.exists() and any(p.suffix in (".tmp", ".pb") for p in run_dir.iterdir())


@pytest.mark.slow
def test_sigkill_of_the_cli_while_capturing_and_exporting(tmp_path):
    """`rbln-perfetto run` killed from outside while it captures, and as its export starts.

    Building and compiling the model take nearly all of a run (measured: the capture starts after about
    20 s and lasts about 0.5 s), so the kill points are not times but places in the run: seeded random
    numbers of invocations completed in its capture file, which is watched as it grows, and the first
    file of its export."""
    counts = sorted(random.Random(11).sample(range(1, INVOCATIONS), 2))
    # (name, when to kill, how many invocations the capture holds by then)
    targets = [(f"capture-{n}", _invocations_done(n), n) for n in counts]
    targets.append(("export", _export_started, INVOCATIONS))
    landed = {}
    for name, ready, done in targets:
        run_dir = tmp_path / f"killed-{name}"
        if not _kill_when(run_dir, ready):
            continue  # the run ended before the kill: that kill checks nothing
        check_final_files(run_dir)
        recovered = check_recoverable(run_dir, tmp_path)
        assert recovered >= done, (name, recovered)
        landed[name] = "capture" if recovered < INVOCATIONS else "export"
        if recovered < INVOCATIONS:
            assert not list(run_dir.glob("*.pb")), f"{name}: nothing is exported before the run ends"
    # A kill is missed only when this process sleeps through the rest of the child's run; one may be.
    assert len(landed) >= len(targets) - 1 and "capture" in landed.values(), landed


# ------------------------------------------------------------------------------ failing exports


def _limited(max_file_bytes):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return set_limit


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-dir", "over-earlier-export"])
def test_disk_full_during_export(capture, tmp_path, fresh):
    """RLIMIT_FSIZE just above the largest text-encoder trace: the export fails part-way through."""
    reference = tmp_path / "reference"
    rbln_perfetto.export(capture, reference)
    sizes = {p.name: p.stat().st_size for p in reference.glob("0*.pb")}
    limit = max(s for n, s in sizes.items() if "text_encoder" in n) + 1
    out = tmp_path / "out"
    if not fresh:
        shutil.copytree(reference, out)
    before = snapshot(out) if not fresh else {}

    proc = subprocess.run([*CLI, "export", str(capture), "-o", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited(limit))
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("rbln-perfetto export: error: writing ") and "File too large" in err, err
    assert temporaries(out) == []
    if fresh:  # a prefix of the run's files, each equal to a successful export's; then the one that failed
        written = sorted(p.name for p in out.glob("*.pb"))
        assert written and written == sorted(sizes)[: len(written)]
        failed = err.split("writing ", 1)[1].split(" ", 1)[0]
        assert failed in ("aggregate.pb", sorted(sizes)[len(written)])
        for name in written:
            assert (out / name).read_bytes() == (reference / name).read_bytes()
        check_final_files(out)
    else:
        assert snapshot(out) == before


@contextmanager
def unprivileged():
    """Run as `nobody` when the tests run as root (root ignores permission bits)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_permission_denied_output_directory_changes_nothing(capture):
    shared = Path(tempfile.mkdtemp(prefix="rbln-perm-"))  # a place `nobody` can read
    try:
        shared.chmod(0o755)
        cap = shared / "capture.rblncap"
        shutil.copyfile(capture, cap)
        cap.chmod(0o644)
        out = shared / "out"
        rbln_perfetto.export(cap, out)
        for p in out.iterdir():
            p.chmod(0o644)
        out.chmod(0o555)
        before = snapshot(out)
        with unprivileged(), pytest.raises(rbln_perfetto.ExportError, match=f"output directory {out} is not writable: Permission denied"):
            rbln_perfetto.export(cap, out)
        assert snapshot(out) == before
    finally:
        for p in shared.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(shared)


def test_directory_in_the_way_of_a_trace_fails_mid_export(capture, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "0004_text_encoder_2_1.pb").mkdir(parents=True)
    assert main(["export", str(capture), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbln-perfetto export: error: writing 0004_text_encoder_2_1.pb in ") and "Is a directory" in err
    assert "\n" not in err
    assert temporaries(out) == []
    assert sorted(p.name for p in out.glob("*.pb") if p.is_file()) == [
        "0000_text_encoder_0.pb", "0001_text_encoder_2_0.pb", "0002_text_encoder_3_0.pb", "0003_text_encoder_1.pb"]
    for path in out.glob("*.pb"):
        if path.is_file():
            check_trace(path)


# ------------------------------------------------------------------------------ Ctrl-C


def test_sigint_during_export_of_a_large_capture(tmp_path):
    """Ctrl-C once the export has written a few files: exit 130, one line, no temporaries, valid files."""
    commands = [(f"block.{i}.linear", "linear", 0, 1, "[1, 64]", 4096, 8192, 4096) for i in range(150)]
    prog = program("transformer", 0, commands, inputs=[("x", (1, 64), "float32", 256, 0)],
                   outputs=[("y", (1, 64), "float32", 256, 149)])
    capture = write_capture(tmp_path / "capture.rblncap", [prog], [(0, [700 + (i % 7)] * 152) for i in range(4000)])
    out = tmp_path / "out"
    child = subprocess.Popen([*CLI, "export", str(capture), "-o", str(out)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and len(list(out.glob("0*.pb"))) >= 20):
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip() == "rbln-perfetto export: interrupted"
    assert temporaries(out) == []
    written = check_final_files(out)
    assert 20 <= len(written) < 4000 and not (out / "aggregate.pb").exists()
