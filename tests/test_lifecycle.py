"""What a run leaves behind and what it never does: a script is not run again by the library's worker
processes, a `run --force` replaces every file the tool wrote into the run directory, and a rank
stopped by its launcher says what it kept and leaves no temporary file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A user's script as the README shows it, without `if __name__ == "__main__":`. Its top level runs once
# per process that imports it as the main module: the marker counts how often it ran.
PROFILE_THEN_QUERY = """
import os, sys, threading
import torch
import rbln_perfetto
from pipeline import RBLNStableDiffusion3Pipeline

print("TOP LEVEL RAN", flush=True)
compiled, out, with_thread = sys.argv[1], sys.argv[2], sys.argv[3] == "thread"
if with_thread:  # a thread of the program's own (a progress bar, a server) still runs when it queries
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled, export=False)
pipe.set_progress_bar_config(disable=True)
with rbln_perfetto.profile(out, overwrite=True):
    pipe("a cat", num_inference_steps=2, guidance_scale=7.0, output_type="np",
         generator=torch.Generator().manual_seed(0))
print("THREADS", *[t.name for t in threading.enumerate()], flush=True)
listing = lambda: sorted((e.name, e.inode(), e.stat().st_mtime_ns) for e in os.scandir(out))
before = listing()
with rbln_perfetto.open_traces(out, backend="sqlite", workers=2) as ts:
    slices = int(ts.query("select count(*) as n from slice")["n"].sum())
print("SLICES", slices, "UNCHANGED" if listing() == before else f"CHANGED {before} -> {listing()}", flush=True)
"""


@pytest.mark.parametrize("thread", ["thread", "alone"])
def test_open_traces_after_profile_in_a_script_runs_the_script_once(compiled_dirs, tmp_path, thread):
    script = tmp_path / "profile_then_query.py"
    script.write_text(PROFILE_THEN_QUERY)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(compiled_dirs({})), str(out), thread], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines.count("TOP LEVEL RAN") == 1, done.stdout
    slices = [line.split() for line in lines if line.startswith("SLICES")]
    assert len(slices) == 1 and slices[0][2] == "UNCHANGED", done.stdout
    assert int(slices[0][1]) > 0
    threads = [line.split()[1:] for line in lines if line.startswith("THREADS")]
    assert not [t for t in threads[0] if t.startswith("rbln-perfetto")], threads  # the exporter's end with it


def test_force_removes_the_traces_the_tool_wrote_into_the_run_directory_too(tmp_path, capsys):
    """The README's own example writes `critical-path.pb` into the run directory; the next run there with
    --force replaces it with the rest of the run, and leaves the user's own files (a `.pb` too) alone."""
    from synthetic import program, write_capture

    from rbln_perfetto.analysis import write_overlay
    from rbln_perfetto.cli import main
    from rbln_perfetto.query import open_traces

    def capture(name: str, submodule: str) -> Path:
        prog = program(submodule, 0, [(f"{submodule}.ff", "linear", i, 2, "[1, 8]", 64, 128, 64) for i in range(2)])
        (tmp_path / name).mkdir()
        return write_capture(tmp_path / name / "capture.rblncap", [prog], [(0, [5, 5])] * 2)

    first, second = capture("a", "transformer"), capture("b", "vae")
    out = tmp_path / "out"
    assert main(["export", str(first), "-o", str(out)]) == 0
    write_overlay(out / "aggregate.pb", out / "critical-path.pb", backend="sqlite")
    (out / "mine.pb").write_bytes(b"not a trace of ours")
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert main(["export", str(second), "-o", str(out)]) == 1
    assert "already holds 5 files of another run" in capsys.readouterr().err  # 2 traces, aggregate, run id, overlay
    assert main(["export", str(second), "-o", str(out), "--force"]) == 0
    assert capsys.readouterr().err == f"rbln-perfetto: removed 5 files of an earlier run from {out}\n"
    assert sorted(p.name for p in out.iterdir()) == ["0000_vae_0.pb", "0001_vae_1.pb", "aggregate.pb", "mine.pb",
                                                     "notes.txt", "run-id.txt"]
    with open_traces([out / "0000_vae_0.pb", out / "0001_vae_1.pb", out / "aggregate.pb"], backend="sqlite",
                     workers=1) as ts:
        assert "transformer" not in " ".join(ts.query("select name from slice")["name"])


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_leaves_one_line_and_no_temporary(tiny_model, tmp_path):
    """torchrun stops rank 0 with SIGTERM once rank 1 died: rank 0 says in one line which rank died and
    how to merge what was kept, and leaves no temporary file, wherever the SIGTERM caught it."""
    import signal
    import time

    from test_ranks import TIMEOUT, TORCHRUN, _env, _free_port, _run_args

    from rbln_perfetto.cli import main
    from rbln_perfetto.naming import CAPTURE_FILE
    from rbln_perfetto.recorder.capture import read_info

    config = {"transformer": {"device": 1}, "devices": ["cpu", "cpu"], "ranks": [0, 1]}
    torchrun = subprocess.Popen([str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                 "--master-port", str(_free_port()), "-m", "rbln_perfetto.cli",
                                 *_run_args(tiny_model, tmp_path, config, steps=200)],
                                cwd=ROOT, env=_env(RBLN_RANK_TIMEOUT_S="60"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    capture = tmp_path / "rank1" / CAPTURE_FILE
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (capture.is_file() and read_info(capture).invocations >= 3):
            assert time.monotonic() < deadline and torchrun.poll() is None, torchrun.communicate()
            time.sleep(0.2)
        os.kill(read_info(capture).header.pid, signal.SIGKILL)
        _, err = torchrun.communicate(timeout=TIMEOUT)
    finally:
        if torchrun.poll() is None:
            torchrun.kill()
    assert torchrun.returncode != 0
    ours = [line for line in err.splitlines() if "rbln-perfetto" in line]
    assert len(ours) == 1, err[-3000:]
    assert ours[0].startswith("rbln-perfetto run: error: rank 1 ")
    assert "rank 1's capture ends early" in ours[0] and f"`rbln-perfetto merge {tmp_path}`" in ours[0], ours[0]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert main(["merge", str(tmp_path)]) == 1  # (1: rank 1 is cut short) and what was kept merges
    assert (tmp_path / "aggregate.pb").is_file()


@pytest.mark.slow
def test_a_send_to_a_busy_rank_holds_the_transfer_not_the_wait(tiny_model, tmp_path):
    """Rank 1 is busy 2 s as it enters the pipeline call (RBLN_TEST_BUSY_MS); a gloo send would block
    until it posts its recv. Rank 0's send slices (its DMA busy) hold the transfers only, not that wait
    (less the little rank 0 ran before its first send), while the call as a whole took it."""
    from test_ranks import TIMEOUT, TORCHRUN, TWO_RANKS, _env, _free_port, _run_args

    from rbln_perfetto.query import open_trace

    busy_ns = 2_000_000_000
    done = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", str(_free_port()), "-m", "rbln_perfetto.cli",
                           *_run_args(tiny_model, tmp_path, TWO_RANKS)],
                          cwd=ROOT, env=_env(RBLN_TEST_BUSY_MS=f"1:{busy_ns // 1_000_000}"), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    with open_trace(tmp_path / "rank0" / "aggregate.pb", backend="sqlite") as tr:
        sends = tr.query("""select s.dur from slice s where extract_arg(s.arg_set_id, 'debug.transfer') = 'send'""")
        run = tr.query("select dur from slice where name like 'run %'")
    assert len(sends) == 2  # text_encoder_3's inputs, prompt and negative
    assert (sends.dur < busy_ns // 2).all(), sends
    assert run.dur.iloc[0] > busy_ns  # (the wait happened: rank 0 waited for rank 1, idle)
