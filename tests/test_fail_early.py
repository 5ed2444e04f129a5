"""Fail early, with the reason: a bad `RBLN_PROFILER` is an error wherever profiling can start
(`profile()`, every pipeline call, `rbln-perfetto run` before it compiles), and a reader that
stops early (`rbln-perfetto query ... | head`) ends the command quietly."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run
from golden_export import CAPTURE

import rbln_perfetto
from rbln_perfetto.recorder.capture import read_info
from rbln_perfetto.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rbln_perfetto.cli"]
BAD = "maybe"
MESSAGE = (r"RBLN_PROFILER='maybe' is not valid; valid: 1, true, yes, on to enable, "
           r"0, false, no, off or unset to disable")
SIGPIPE_EXIT = 128 + 13  # what a shell reports for a writer that the closed pipe ended


def test_bad_rbln_profiler_fails_profile_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("RBLN_PROFILER", BAD)
    with pytest.raises(rbln_perfetto.UsageError, match=MESSAGE):
        with rbln_perfetto.profile(tmp_path / "out"):
            pytest.fail("the profile() block ran")
    assert not (tmp_path / "out").exists()


def test_bad_rbln_profiler_fails_a_pipeline_call_inside_profile(make_pipe, tmp_path, monkeypatch):
    pipe = make_pipe({})
    calls = []
    pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    with rbln_perfetto.profile(tmp_path / "out") as prof:
        monkeypatch.setenv("RBLN_PROFILER", BAD)
        with pytest.raises(ValueError, match=MESSAGE):
            run(pipe, steps=1)
        monkeypatch.delenv("RBLN_PROFILER")
    assert not calls, "a submodule ran"
    assert read_info(prof.capture_file).invocations == 0


def test_bad_rbln_profiler_fails_run_before_loading_or_compiling(tmp_path, monkeypatch, capsys):
    import rbln_perfetto.cli.pipeline_run as pipeline_run

    for name in ("embedded_model", "load_or_compile"):
        monkeypatch.setattr(pipeline_run, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} was called"))
    monkeypatch.setenv("RBLN_PROFILER", BAD)
    assert main(["run", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and err.count("\n") == 1 and err.startswith("rbln-perfetto run: error: ")
    assert re.search(MESSAGE, err), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ | head


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return rbln_perfetto.export(CAPTURE, tmp_path_factory.mktemp("pipe")).aggregate_file


# Far more output than a pipe buffers (64 KiB), so the command is still writing when the reader leaves.
MANY_ROWS = "with recursive n(i) as (select 1 union all select i + 1 from n where i < 50000) select i, 2 * i as twice from n"


@pytest.mark.parametrize("fmt", [[], ["--csv"]], ids=["table", "csv"])
def test_query_into_a_reader_that_stops_after_one_line_exits_quietly(trace, fmt):
    child = subprocess.Popen([*CLI, "query", str(trace), MANY_ROWS, *fmt, "--backend", "sqlite"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()  # like `head -1`
    err = child.stderr.read()
    child.wait(timeout=120)
    assert first.replace(b",", b" ").replace(b'"', b"").split() == [b"i", b"twice"]  # (CSV quotes its header)
    assert err == b"" and child.returncode == SIGPIPE_EXIT, err


def test_summary_into_a_closed_pipe_exits_quietly(trace):
    child = subprocess.Popen([*CLI, "summary", str(trace), "--backend", "sqlite"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before the child, still importing, can have written anything
    err = child.stderr.read()
    child.wait(timeout=120)
    assert err == b"" and child.returncode == SIGPIPE_EXIT, err


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(trace, monkeypatch, capsys):
    """Only a reader that left makes a broken pipe quiet: one inside the work (a trace_processor
    connection, say) is reported like any other error."""
    import rbln_perfetto.cli.query_commands as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_query", broken)
    assert main(["query", str(trace), "select 1"]) == 1
    assert capsys.readouterr().err == "rbln-perfetto query: error: [Errno 32] Broken pipe\n"
