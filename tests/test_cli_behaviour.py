"""The command line's behaviour around the main job: help for every command, argument errors that come
back before torch loads, where `--debug` may go, which errors are one line and which are bugs, what an
export and an interrupted run say, and one rule for the trace paths every trace-reading command takes."""

import re
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from golden_export import CAPTURE

import rbln_perfetto
from rbln_perfetto.cli import main
from rbln_perfetto.recorder.capture import iter_records, read_info

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "export", "summary", "query", "plot", "serve", "open", "merge", "diff", "report", "check"]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    return out


def _options_without_help(text: str) -> list[str]:
    """The options in a --help text that have no description (on their line or indented under it)."""
    lines = text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (-[^ ].*?)(?:  +\S.*)?$", line)
        if m and not re.search(r"  +\S", line[2 + len(m.group(1)):]):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if not re.match(r"^ {4,}[^ -]", following):
                bare.append(m.group(1))
    return bare


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS), ["report", "idle"], ["report", "variance"]],
                         ids=lambda argv: " ".join(argv) or "top")
def test_every_help_prints_and_exits_0_and_every_option_says_what_it_does(argv, capsys):
    text = _help(argv, capsys)
    assert text.startswith("usage: rbln-perfetto")
    assert _options_without_help(text) == []


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps 0 must be >= 1"),
    (["--repeat", "0"], "--repeat 0 must be >= 1"),
    (["--profile-steps", "abc"], "--profile-steps"),
    (["--profile-submodules", "unet"], "--profile-submodules"),
])
def test_run_argument_errors_come_back_before_torch_is_imported(argv, message):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rbln_perfetto.cli", "run", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("rbln-perfetto run: error: ") and message in errors[0]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "rbln_perfetto.cli" in imported  # (the check below sees the imports)
    assert "torch" not in imported and "pipeline.compile_cache" not in imported


def test_debug_goes_before_or_after_the_command(tmp_path, capsys):
    missing = str(tmp_path / "missing.pb")
    assert main(["summary", missing]) == 1
    assert capsys.readouterr().err.startswith("rbln-perfetto summary: error: ")
    for argv in (["--debug", "summary", missing], ["summary", missing, "--debug"], ["summary", "--debug", missing]):
        with pytest.raises(rbln_perfetto.TraceNotFoundError):
            main(argv)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"rbln-perfetto {version('rbln-perfetto')}\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An exported run directory: per-invocation traces and aggregate.pb."""
    out = tmp_path_factory.mktemp("run")
    rbln_perfetto.export(CAPTURE, out)
    return out


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError])
def test_a_bug_inside_an_analysis_shows_its_traceback(bug, run_dir, monkeypatch):
    import rbln_perfetto.cli.analysis_commands as commands

    def broken(*args, **kwargs):
        raise bug("a bug, not a bad input")

    monkeypatch.setattr(commands, "idle", broken)
    with pytest.raises(bug, match="a bug, not a bad input"):
        main(["report", "idle", str(run_dir), "--backend", "sqlite"])


def test_the_pipelines_own_config_errors_stay_one_line(capsys):
    assert main(["run", "--config", '{"vae": {"devcie": 1}}']) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rbln-perfetto run: error: rbln_config['vae'] key 'devcie'")


def test_export_of_the_aggregate_alone_counts_the_runs_invocations(tmp_path, capsys):
    invocations = read_info(CAPTURE).invocations
    assert invocations > 1
    assert main(["export", str(CAPTURE), "-o", str(tmp_path / "out"), "--no-per-invocation"]) == 0
    out = capsys.readouterr().out
    assert f"aggregate.pb  (whole run: {invocations} invocations, " in out


def _cut(tmp_path: Path, inside_record: bool) -> tuple[Path, int]:
    """The capture as a process killed after its last invocation leaves it: without its end record, or
    cut inside the last invocation's record; and how many invocations it still holds whole."""
    records = list(iter_records(CAPTURE))
    end = next(o for o, r in records if r.WhichOneof("kind") == "end")
    invocations = [o for o, r in records if r.WhichOneof("kind") == "invocation"]
    at, whole = (invocations[-1] + 5, len(invocations) - 1) if inside_record else (end, len(invocations))
    path = tmp_path / "killed" / "capture.rblncap"
    path.parent.mkdir()
    path.write_bytes(CAPTURE.read_bytes()[:at])
    return path, whole


@pytest.mark.parametrize("inside_record", [False, True], ids=["at-a-record", "inside-a-record"])
def test_export_of_a_killed_run_says_it_is_incomplete_and_what_was_recovered(inside_record, tmp_path, capsys):
    capture, whole = _cut(tmp_path, inside_record)
    assert main(["export", str(capture), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("0*.pb"))) == whole
    assert re.search(rf"the run is incomplete .*: recovered {whole} invocations", out), out


def test_ctrl_c_in_run_says_what_was_kept(make_pipe, tmp_path, monkeypatch, capsys):
    """A real profiled pipeline call, then Ctrl-C: what the profile block saved is named, exit 130."""
    import rbln_perfetto.cli.pipeline_run as pipeline_run
    from conftest import run as run_pipeline

    out = tmp_path / "out"

    def interrupted(config, **kwargs):
        with rbln_perfetto.profile(out) as prof:
            run_pipeline(make_pipe(), steps=1)
            raise KeyboardInterrupt
        pytest.fail(f"the interrupt was swallowed ({prof})")

    monkeypatch.setattr(pipeline_run, "profile_pipeline", interrupted)
    assert main(["run", "--steps", "1", "--out", str(out)]) == 128 + signal.SIGINT
    saved = len(list(out.glob("0*.pb")))
    err = capsys.readouterr().err
    assert saved > 0
    assert err.startswith("rbln-perfetto run: interrupted")
    assert f"{saved} invocation traces and aggregate.pb saved to {out}" in err, err


def test_every_command_that_reads_one_trace_takes_a_run_directory(run_dir, tmp_path, monkeypatch, capsys):
    aggregate = run_dir / "aggregate.pb"
    assert main(["summary", str(run_dir), "--backend", "sqlite"]) == 0
    assert capsys.readouterr().out.startswith(f"{aggregate} (sqlite backend)")
    assert main(["plot", str(run_dir), "-o", str(tmp_path / "t.png"), "--backend", "sqlite"]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0

    import rbln_perfetto.cli.open_in_ui as open_in_ui

    opened = []
    monkeypatch.setattr(open_in_ui, "open_in_ui", lambda path, **kwargs: opened.append(path))
    assert main(["open", str(run_dir), "--no-browser"]) == 0
    assert opened == [aggregate]

    served = []
    monkeypatch.setattr(subprocess, "call", lambda argv: served.append(argv[-1]) or 0)
    assert main(["serve", str(run_dir), "--tp-bin", "/bin/true"]) == 0
    assert served == [str(aggregate)]


@pytest.mark.parametrize("argv", [["summary"], ["plot"], ["open"], ["serve", "--tp-bin", "/bin/true"],
                                  ["report", "devices"], ["check"]])
def test_a_directory_without_a_run_gets_one_answer_from_every_command(argv, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    command, *options = argv
    args = [command, *options[:1], str(empty), *options[1:]] if command == "report" else [command, str(empty), *options]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (f"rbln-perfetto {command}: error: {empty} is a directory without aggregate.pb: give a trace file "
                   "or a run directory (one that `rbln-perfetto run` or `export` wrote)\n")
