"""Choosing what is traced (`profile(steps=, calls=, submodules=)`, `RBLN_PROFILER_STEPS/_CALLS/_SUBMODULES`,
`rbln-perfetto run --profile-*`) without changing the run: the traced part keeps the full run's numbers,
untraced stretches are labelled slices on the Workload track, untraced calls are not timed, and a bad
value is one line before anything runs."""

import os

import pytest
from conftest import run
from tp_compare import TP_BIN, differences, embedded_rows, tp_rows
from trace_checks import check_scanner_agrees, check_trace, device_of, track_name
from trace_objects import read_trace

import rbln_perfetto
from rbln_perfetto.cli import main
from rbln_perfetto.errors import UsageError
from rbln_perfetto.naming import parse_invocation_file_name
from rbln_perfetto.recorder.selection import ENV_CALLS, ENV_STEPS, ENV_SUBMODULES, parse_numbers

TRANSFORMER_ON_1 = {"transformer": {"device": 1}}  # so that the steps' gaps are on device 1, not the root
STEPS, CALLS = 5, 2
ENCODES = 6  # 3 text encoders x prompt / negative prompt (CFG)
PER_CALL = ENCODES + STEPS + 1


@pytest.fixture(autouse=True)
def _no_selection_in_env(monkeypatch):
    for name in (ENV_STEPS, ENV_CALLS, ENV_SUBMODULES):
        monkeypatch.delenv(name, raising=False)


def profiled(pipe, out, calls=CALLS, num_steps=STEPS, **selection):
    with rbln_perfetto.profile(out, **selection) as prof:
        for _ in range(calls):
            run(pipe, steps=num_steps)
    return prof


@pytest.fixture(scope="module")
def full_run(compiled_dirs, tmp_path_factory):
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(TRANSFORMER_ON_1))
    pipe.set_progress_bar_config(disable=True)
    return profiled(pipe, tmp_path_factory.mktemp("full") / "out")


def workload(path):
    """(name, ts, dur, device, args) of every Workload slice, in time order."""
    trace = read_trace(path)
    return sorted(((s.name, s.ts, s.dur, device_of(trace, s), s.args) for s in trace.slices
                   if track_name(trace, s) == "Workload"), key=lambda w: w[1])


def names_in(path, track):
    trace = read_trace(path)
    return [s.name for s in trace.slices if track_name(trace, s) == track]


def files_by_name(prof):
    return {p.name: p for p in prof.invocation_files}


# ----------------------------------------------------------------------------------- syntax


@pytest.mark.parametrize("text,inside,outside", [
    ("3", [3], [2, 4]),
    ("10:12", [10, 11], [9, 12]),          # end exclusive, as a python slice
    ("2:", [2, 3, 1000], [0, 1]),
    (":2", [0, 1], [2]),
    ("0,5,9:", [0, 5, 9, 40], [1, 4, 6, 8]),
    (" 1 : 3 , 7 ", [1, 2, 7], [3, 6, 8]),
    (4, [4], [3, 5]),
    (range(2, 4), [2, 3], [1, 4]),
])
def test_numbers_parse_as_python_slices(text, inside, outside):
    numbers = parse_numbers(text, "steps")
    assert all(n in numbers for n in inside) and not any(n in numbers for n in outside)


@pytest.mark.parametrize("bad", ["", "a", "3-5", "5:3", "4:4", "1:2:3", "-1", "1,,2", ",", "1.5", True, [1, "x"], []])
def test_a_bad_selection_is_one_line_naming_the_syntax(bad):
    with pytest.raises(UsageError) as info:
        parse_numbers(bad, "--profile-steps")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--profile-steps={bad!r}")
    assert "10:12" in message and "end exclusive" in message and "0,5,9:" in message


# ----------------------------------------------------------------------------------- steps


@pytest.fixture(scope="module")
def steps_run(compiled_dirs, tmp_path_factory):
    """Steps 2 and 3 of each of two calls traced; the calls of unselected steps counted, not timed."""
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(TRANSFORMER_ON_1))
    pipe.set_progress_bar_config(disable=True)
    compiled = pipe.transformer.compiled
    timed_runs = []
    real = compiled.run_timed

    def counting(*args):
        timed_runs.append(1)
        return real(*args)

    compiled.run_timed = counting
    try:
        prof = profiled(pipe, tmp_path_factory.mktemp("steps") / "out", steps="2:4")
    finally:
        compiled.run_timed = real
    return prof, len(timed_runs)


def test_selected_steps_keep_the_full_runs_file_and_slice_names(full_run, steps_run):
    prof, _ = steps_run
    full = files_by_name(full_run)
    kept = [name for name in full if parse_invocation_file_name(name)[1] != "transformer"
            or parse_invocation_file_name(name)[2] % STEPS in (2, 3)]
    assert [p.name for p in prof.invocation_files] == kept
    assert "0008_transformer_2.pb" in kept and f"{PER_CALL + ENCODES + 3:04d}_transformer_{STEPS + 3}.pb" in kept
    for path in prof.invocation_files:
        for track in ("Workload", "Compute", "DMA"):
            assert names_in(path, track) == names_in(full[path.name], track), (path.name, track)

    # The traced part of the aggregate: the full run's invocations, with the same names and numbers.
    def invocations(path):
        return [(name, dev, {k: v for k, v in args.items() if k != "debug.step"} | {"step": args.get("debug.step")})
                for name, _, _, dev, args in workload(path) if not name.startswith("not traced")]

    mine = invocations(prof.aggregate_file)
    assert mine == [w for w in invocations(full_run.aggregate_file)
                    if not w[0].startswith("transformer") or w[2]["step"] in (2, 3)]
    assert [w[2]["step"] for w in mine if w[0].startswith("transformer")] == [2, 3, 2, 3]
    assert all(w[2]["step"] is None for w in mine if not w[0].startswith("transformer"))


def test_untraced_steps_are_one_labelled_slice_per_stretch_on_the_transformers_device(full_run, steps_run):
    prof, _ = steps_run
    slices = workload(prof.aggregate_file)
    gaps = [w for w in slices if w[0].startswith("not traced")]
    assert [(name, dev) for name, _, _, dev, _ in gaps] == [("not traced: steps 0-1", 1), ("not traced: step 4", 1)] * 2
    full_seq = {args["debug.sequence_index"]: name for name, _, _, _, args in workload(full_run.aggregate_file)}
    for name, ts, dur, dev, args in gaps:
        # It covers the untraced calls: the full run's transformer calls of those steps, and nothing else.
        covered = [full_seq[i] for i in range(args["debug.first_sequence_index"],
                                              args["debug.first_sequence_index"] + args["debug.invocations"])]
        assert covered and all(n.startswith("transformer") for n in covered)
        assert args["debug.untraced"] == "steps" and args["debug.last"] - args["debug.first"] + 1 == len(covered)
        # ... and sits between its neighbours on the device, after what ran before and before what follows.
        before = [w for w in slices if w[3] == dev and w[1] < ts]
        after = [w for w in slices if w[3] == dev and w[1] > ts]
        assert all(b[1] + b[2] <= ts for b in before) and all(ts + dur <= a[1] for a in after) and dur > 0


def test_untraced_steps_are_not_timed_and_record_no_host_work(full_run, steps_run):
    prof, timed_runs = steps_run
    assert timed_runs == 2 * CALLS  # the transformer's timed program ran for the traced steps only
    steps_in = {p: names_in(p.aggregate_file, "Host").count("scheduler_step") for p in (prof, full_run)}
    assert steps_in[full_run] == STEPS * CALLS and steps_in[prof] == 2 * CALLS


def test_a_selected_run_keeps_the_trace_invariants_on_both_backends(steps_run):
    prof, _ = steps_run
    for path in [*prof.invocation_files, prof.aggregate_file]:
        check_trace(path)
    check_scanner_agrees(prof.aggregate_file)
    with rbln_perfetto.open_trace(prof.aggregate_file, backend="sqlite") as trace:
        summary = trace.report("invocations")
    assert "not traced" not in summary.to_string() and summary["calls"].sum() == len(prof.invocation_files)
    if TP_BIN:
        want, (got, _) = tp_rows(prof.aggregate_file), embedded_rows(prof.aggregate_file)
        assert not differences(want, got), differences(want, got)


# ----------------------------------------------------------------------------------- calls, env, CLI


def test_calls_from_the_environment_skip_warm_up_calls_in_a_profile_block(make_pipe, full_run, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CALLS, "1:")
    prof = profiled(make_pipe(TRANSFORMER_ON_1), tmp_path / "out")
    second = [name for name in files_by_name(full_run) if parse_invocation_file_name(name)[0] >= PER_CALL]
    assert [p.name for p in prof.invocation_files] == second
    (gap,) = [w for w in workload(prof.aggregate_file) if w[0].startswith("not traced")]
    name, ts, dur, dev, args = gap
    assert (name, dev, args["debug.invocations"], args["debug.first_sequence_index"]) == ("not traced: call 0", 0, PER_CALL, 0)
    first_traced = min(w[1] for w in workload(prof.aggregate_file) if not w[0].startswith("not traced"))
    assert ts + dur <= first_traced
    assert "tokenize" in names_in(prof.aggregate_file, "Host")


def test_rbln_profiler_selection_from_the_environment(make_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("RBLN_PROFILER", "1")
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_CALLS, "1")
    monkeypatch.setenv(ENV_STEPS, "0")
    monkeypatch.setenv(ENV_SUBMODULES, "transformer")
    # `calls` counts the process's RBLN_PROFILER calls: start this process's count afresh (other tests made some).
    from rbln_perfetto.recorder import activation

    monkeypatch.setattr(activation, "_env_calls", 0)
    pipe = make_pipe(TRANSFORMER_ON_1)
    for _ in range(3):
        run(pipe, steps=2)
    (run_dir,) = tmp_path.iterdir()  # each RBLN_PROFILER call is a run; calls 0 and 2 wrote nothing
    assert sorted(p.name for p in run_dir.glob("*.pb")) == ["0006_transformer_0.pb", "aggregate.pb"]
    assert [w[0] for w in workload(run_dir / "aggregate.pb")] == ["transformer #0", "not traced: step 1"]


def test_run_flags_select_steps_calls_and_submodules(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--steps", "3", "--repeat", "2", "--profile-calls", "1", "--profile-steps", "1:",
                 "--profile-submodules", "transformer,vae", "--out", str(out)]) == 0
    # 10 submodule calls per pipeline call; the second call's steps 1 and 2 and its VAE are traced.
    assert sorted(p.name for p in out.glob("0*.pb")) == ["0017_transformer_4.pb", "0018_transformer_5.pb", "0019_vae_1.pb"]
    assert [w[0] for w in workload(out / "aggregate.pb") if w[0].startswith("not")] == ["not traced: call 0",
                                                                                        "not traced: step 0"]


@pytest.mark.parametrize("where", ["api", "env", "cli", "rbln-profiler"])
def test_a_bad_value_fails_before_anything_runs(make_pipe, tmp_path, monkeypatch, capsys, where):
    import rbln_perfetto.cli.pipeline_run as pipeline_run

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded despite a bad selection")

    monkeypatch.setattr(pipeline_run, "load_or_compile", never)
    out = tmp_path / "out"
    if where == "api":
        with pytest.raises(UsageError, match=r"^submodules=\['unet'\] names unknown unet; accepted: submodule names"):
            rbln_perfetto.profile(out, submodules=["unet"])
    elif where == "env":
        monkeypatch.setenv(ENV_STEPS, "10-12")
        with pytest.raises(UsageError, match=r"^RBLN_PROFILER_STEPS='10-12' is not a valid selection; accepted"):
            rbln_perfetto.profile(out)
    elif where == "cli":
        assert main(["run", "--profile-calls", "2:1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--profile-calls='2:1' is not a valid selection (2:1 is empty)" in err
    else:
        monkeypatch.setenv("RBLN_PROFILER", "1")
        monkeypatch.setenv("RBLN_PROFILER_DIR", str(out))
        monkeypatch.setenv(ENV_CALLS, "x")
        pipe = make_pipe(TRANSFORMER_ON_1)
        pipe.text_encoder.compiled.run = never
        with pytest.raises(UsageError, match=r"^RBLN_PROFILER_CALLS='x'"):
            run(pipe, steps=1)
    assert not out.exists()


# ----------------------------------------------------------------------------------- precedence


def test_activate_profiler_wins_over_submodules_for_its_submodule(make_pipe, tmp_path):
    pipe = make_pipe(TRANSFORMER_ON_1, text_encoder_3={"activate_profiler": True},
                     transformer={"activate_profiler": False})
    prof = profiled(pipe, tmp_path / "out", calls=1, num_steps=2, submodules=["transformer", "vae"])
    assert [p.name for p in prof.invocation_files] == ["0002_text_encoder_3_0.pb", "0005_text_encoder_3_1.pb",
                                                        "0008_vae_0.pb"]
    assert not any(w[0].startswith("not traced") for w in workload(prof.aggregate_file))


def test_selection_env_does_not_leak_into_unprofiled_runs(make_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_STEPS, "not checked unless profiling")
    monkeypatch.chdir(tmp_path)
    run(make_pipe(TRANSFORMER_ON_1), steps=1)  # RBLN_PROFILER off: nothing is read, nothing written
    assert not os.listdir(tmp_path)


def test_analyses_of_a_selected_run_count_only_what_was_traced(steps_run):
    # The "not traced: ..." slices sit on the Workload track but are not invocations, nor busy or idle time.
    prof, _ = steps_run
    traced = [w for w in workload(prof.aggregate_file) if not w[0].startswith("not traced")]
    transformer_calls = sum(1 for w in traced if w[0].startswith("transformer"))
    var = rbln_perfetto.variance(prof.aggregate_file, backend="sqlite")
    assert int(var.set_index("submodule").loc["transformer", "calls"]) == transformer_calls == 4
    values = rbln_perfetto.analysis.metrics(prof.aggregate_file, backend="sqlite")
    assert values["transformer.calls"] == 4
    assert sum(v for k, v in values.items() if k.endswith(".calls")) == len(traced)
