"""One run per output directory: `profile(dir)`, `rbln-perfetto export -o DIR` and `run --out DIR`
refuse a directory that holds another run's traces or capture (before any model is loaded),
`--force` / `overwrite=True` removes exactly that run's files and says how many, and exporting a
capture again into a directory that holds its own export is the same run."""

import re
import shutil
from pathlib import Path

import pytest
from conftest import run
from golden_export import CAPTURE
from synthetic import program, write_capture
from trace_checks import check_trace
from trace_objects import read_trace

import rbln_perfetto
from rbln_perfetto.recorder.capture import read_info
from rbln_perfetto.cli import main
from rbln_perfetto.naming import parse_workload_slice_name
from rbln_perfetto.naming import RUN_ID_FILE

# What a user may keep beside a run; no option of the tool ever touches them.
USER_FILES = {"notes.txt": b"mine", "mine.pb": b"not a trace of ours", "timeline.png": b"a plot"}
GOLDEN_TRACES = ["0000_text_encoder_0.pb", "0001_text_encoder_2_0.pb", "0002_text_encoder_3_0.pb",
                 "0003_text_encoder_1.pb", "0004_text_encoder_2_1.pb", "0005_text_encoder_3_1.pb",
                 "0006_transformer_0.pb", "0007_vae_0.pb"]


def _capture(path: Path, submodule: str, calls: int) -> Path:
    """A real capture (written by the CaptureWriter) of `calls` calls of one two-command program."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prog = program(submodule, 0, [(f"{submodule}.ff", "linear", i, 2, "[1, 8]", 64, 128, 64) for i in range(2)])
    return write_capture(path, [prog], [(0, [5, 5])] * calls)


@pytest.fixture
def run_a(tmp_path):
    return _capture(tmp_path / "a" / "capture.rblncap", "transformer", 3)


@pytest.fixture
def run_b(tmp_path):
    return _capture(tmp_path / "b" / "capture.rblncap", "vae", 1)


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def add_user_files(directory: Path) -> None:
    for name, data in USER_FILES.items():
        (directory / name).write_bytes(data)


def workloads(trace: Path) -> list[str]:
    return sorted(s.name for s in read_trace(trace).slices if parse_workload_slice_name(s.name))


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    return err


# ------------------------------------------------------------------------------ export


def test_export_refuses_another_runs_traces_and_force_removes_only_them(run_a, run_b, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(run_a), "-o", str(out)]) == 0
    add_user_files(out)
    before = listing(out)
    capsys.readouterr()

    assert main(["export", str(run_b), "-o", str(out)]) == 1
    stdout, err = capsys.readouterr()
    assert stdout == ""
    assert re.fullmatch(
        rf"rbln-perfetto export: error: {re.escape(str(out))} already holds 5 files of another run "
        r"\(0000_transformer_0\.pb, 0001_transformer_1\.pb, 0002_transformer_2\.pb, \.\.\.\); .* pass --force .*\n",
        one_line(err)), err
    assert listing(out) == before, "a refused export changed the directory"

    assert main(["export", str(run_b), "-o", str(out), "--force"]) == 0
    assert capsys.readouterr().err == f"rbln-perfetto: removed 5 files of an earlier run from {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(["0000_vae_0.pb", "aggregate.pb", RUN_ID_FILE, *USER_FILES])
    assert {name: (out / name).read_bytes() for name in USER_FILES} == USER_FILES
    for trace in ("0000_vae_0.pb", "aggregate.pb"):
        check_trace(out / trace)
    assert workloads(out / "aggregate.pb") == ["vae #0"]


def test_force_removes_the_runs_own_extra_traces_but_not_a_copy_of_another_runs(run_a, run_b, tmp_path, capsys):
    """A trace of the tool under another name counts as the run's only when its UUID is one of the run's
    files' (an overlay copied from its aggregate); a copy of a third run's trace is the user's file."""
    out, elsewhere = tmp_path / "out", tmp_path / "c-export"
    rbln_perfetto.export(run_a, out)
    shutil.copyfile(out / "aggregate.pb", out / "critical-path.pb")  # as write_overlay leaves it: the same UUID
    rbln_perfetto.export(_capture(tmp_path / "c" / "capture.rblncap", "text_encoder", 1), elsewhere)
    shutil.copyfile(elsewhere / "aggregate.pb", out / "from-c.pb")
    kept = (out / "from-c.pb").read_bytes()
    capsys.readouterr()

    assert main(["export", str(run_b), "-o", str(out), "--force"]) == 0
    assert capsys.readouterr().err == f"rbln-perfetto: removed 6 files of an earlier run from {out}\n"
    assert sorted(p.name for p in out.iterdir()) == ["0000_vae_0.pb", "aggregate.pb", "from-c.pb", RUN_ID_FILE]
    assert (out / "from-c.pb").read_bytes() == kept


@pytest.mark.parametrize("left", ["traces", "capture-only", "traces-without-run-id", "run-directory"])
def test_export_refuses_every_trace_of_another_run(run_a, run_b, tmp_path, left):
    """Whatever another run left (its export, its bare capture, traces that no longer say whose
    they are, its own run directory), an export of another capture into it is refused."""
    out = tmp_path / "out"
    if left == "capture-only":
        out.mkdir()
        shutil.copyfile(run_a, out / "capture.rblncap")
    elif left == "run-directory":
        rbln_perfetto.export(run_a)  # into the capture's own directory
        out = run_a.parent
    else:
        rbln_perfetto.export(run_a, out)
        if left == "traces-without-run-id":
            (out / RUN_ID_FILE).unlink()
    before = listing(out)
    with pytest.raises(rbln_perfetto.OutputExistsError, match=r"already holds \d+ files? of another run"):
        rbln_perfetto.export(run_b, out)
    assert listing(out) == before


def test_a_capture_exported_again_is_the_same_run(run_a, tmp_path):
    rbln_perfetto.export(run_a)
    own = listing(run_a.parent)
    rbln_perfetto.export(run_a)  # into its own directory, again
    assert listing(run_a.parent) == own

    out = tmp_path / "out"
    rbln_perfetto.export(run_a, out)
    first = listing(out)
    result = rbln_perfetto.export(run_a, out, per_invocation=False)  # elsewhere, again, other options
    assert result.invocation_files == [] and listing(out) == first

    copy = tmp_path / "copy"
    shutil.copytree(run_a.parent, copy)  # the run directory moved: its capture is still the same run
    rbln_perfetto.export(copy / "capture.rblncap")
    assert listing(copy) == own


def test_force_never_removes_the_capture_being_exported(run_a, run_b, tmp_path, capsys):
    """A capture copied into another run's directory and exported there: that run's traces go, the capture stays."""
    out = tmp_path / "out"
    rbln_perfetto.export(run_a, out)
    shutil.copyfile(run_b, out / "capture.rblncap")
    with pytest.raises(rbln_perfetto.OutputExistsError, match=r"already holds 5 files of another run"):
        rbln_perfetto.export(out / "capture.rblncap")
    result = rbln_perfetto.export(out / "capture.rblncap", overwrite=True)
    assert "removed 5 files" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["0000_vae_0.pb", "aggregate.pb", "capture.rblncap", RUN_ID_FILE]
    assert (out / "capture.rblncap").read_bytes() == run_b.read_bytes()
    assert workloads(result.aggregate_file) == ["vae #0"]


# ------------------------------------------------------------------------------ profile()


def test_profile_refuses_another_runs_directory_before_the_block_runs(run_a, tmp_path):
    out = tmp_path / "out"
    rbln_perfetto.export(run_a, out)
    before = listing(out)
    with pytest.raises(rbln_perfetto.OutputExistsError, match=r"already holds 5 files of another run.*overwrite=True"):
        with rbln_perfetto.profile(out):
            pytest.fail("the profile() block ran")
    assert listing(out) == before


def test_profile_overwrite_replaces_the_earlier_run(make_pipe, tmp_path, capsys):
    out = tmp_path / "out"
    rbln_perfetto.export(CAPTURE, out)  # 1 step with CFG: 8 invocation files
    shutil.copyfile(CAPTURE, out / "capture.rblncap")
    (out / "image.png").write_bytes(b"the earlier run's image")
    add_user_files(out)
    pipe = make_pipe({})
    capsys.readouterr()
    with rbln_perfetto.profile(out, overwrite=True) as prof:
        run(pipe, steps=2)
    # 8 traces, aggregate.pb, run-id.txt, capture.rblncap and the image of the earlier run.
    assert capsys.readouterr().err == f"rbln-perfetto: removed 12 files of an earlier run from {out}\n"
    traces = GOLDEN_TRACES[:6] + ["0006_transformer_0.pb", "0007_transformer_1.pb", "0008_vae_0.pb"]
    assert [p.name for p in prof.invocation_files] == traces
    assert sorted(p.name for p in out.iterdir()) == sorted(
        traces + ["aggregate.pb", "capture.rblncap", RUN_ID_FILE, *USER_FILES])
    assert read_info(out / "capture.rblncap").header.run_id == prof.run_id
    for path in out.glob("*.pb"):
        if path.name not in USER_FILES:
            check_trace(path)
    assert len(workloads(out / "aggregate.pb")) == 9


# ------------------------------------------------------------------------------ rbln-perfetto run


def test_run_refuses_another_runs_directory_before_loading_or_compiling(run_a, tmp_path, monkeypatch, capsys):
    import rbln_perfetto.cli.pipeline_run as pipeline_run

    for name in ("embedded_model", "load_or_compile"):
        monkeypatch.setattr(pipeline_run, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} was called"))
    out = tmp_path / "out"
    rbln_perfetto.export(run_a, out)
    before = listing(out)
    assert main(["run", "--steps", "1", "--out", str(out)]) == 1
    stdout, err = capsys.readouterr()
    assert stdout == "" and re.fullmatch(
        rf"rbln-perfetto run: error: {re.escape(str(out))} already holds 5 files of another run .*--force.*\n",
        one_line(err)), err
    assert listing(out) == before


def test_run_force_replaces_the_earlier_run(tmp_path, capsys):
    out = tmp_path / "out"
    rbln_perfetto.export(CAPTURE, out)
    (out / "image.png").write_bytes(b"the earlier run's image")
    add_user_files(out)
    assert main(["run", "--steps", "1", "--guidance", "1.0", "--out", str(out), "--force"]) == 0
    assert f"rbln-perfetto: removed 11 files of an earlier run from {out}\n" in capsys.readouterr().err
    traces = ["0000_text_encoder_0.pb", "0001_text_encoder_2_0.pb", "0002_text_encoder_3_0.pb",
              "0003_transformer_0.pb", "0004_vae_0.pb"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        traces + ["aggregate.pb", "capture.rblncap", "image.png", RUN_ID_FILE, *USER_FILES])
    assert (out / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the new run's image
    assert len(workloads(out / "aggregate.pb")) == 5
