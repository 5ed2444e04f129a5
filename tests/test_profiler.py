"""Profiling real runs of the embedded pipeline and the Perfetto traces written for them."""

import os
from collections import Counter

import pytest
from conftest import run
from trace_checks import NAME, check_trace, device_of, track_name
from trace_objects import read_trace

import rbln_perfetto
from pipeline.profiling_hooks import active_call
from rbln_perfetto.recorder.capture import read_info

SPLIT = {"text_encoder_3": {"device": 1}, "command_budget": "64KiB"}
ENCODERS = ["text_encoder", "text_encoder_2", "text_encoder_3"]


def profiled(make_pipe, out, rbln_config=None, steps=2, guidance=7.0, **kwargs):
    pipe = make_pipe(rbln_config or {})
    with rbln_perfetto.profile(out) as prof:
        run(pipe, steps=steps, guidance=guidance, **kwargs)
    return prof


@pytest.fixture(scope="module")
def split_run(shared_run):
    return shared_run(SPLIT, steps=2)


def expected_files(calls, unprofiled=frozenset()):
    """The files of a run's submodule calls: numbered among all of them, written for the profiled ones."""
    seen = Counter()
    names = []
    for seq, sub in enumerate(calls):
        if sub in unprofiled:
            continue
        names.append(f"{seq:04d}_{sub}_{seen[sub]}.pb")
        seen[sub] += 1
    return names


@pytest.mark.parametrize(
    "rbln_config,steps,guidance,calls",
    [
        ({}, 2, 7.0, ENCODERS * 2 + ["transformer"] * 2 + ["vae"]),
        ({}, 1, 7.0, ENCODERS * 2 + ["transformer", "vae"]),
        ({"guidance_scale": 1.0}, 2, 1.0, ENCODERS + ["transformer"] * 2 + ["vae"]),
        ({"text_encoder": {"activate_profiler": False}, "vae": {"activate_profiler": False}}, 2, 7.0,
         ENCODERS * 2 + ["transformer"] * 2 + ["vae"]),
    ],
    ids=["cfg-2-steps", "cfg-1-step", "no-cfg", "two-not-profiled"],
)
def test_file_counts(make_pipe, tmp_path, rbln_config, steps, guidance, calls):
    prof = profiled(make_pipe, tmp_path, rbln_config, steps, guidance)
    unprofiled = {name for name, sub in rbln_config.items() if isinstance(sub, dict) and sub.get("activate_profiler") is False}
    files = expected_files(calls, unprofiled)
    assert [p.name for p in prof.invocation_files] == files
    assert sorted(p.name for p in tmp_path.glob("*.pb")) == sorted(files + ["aggregate.pb"])
    workloads = [s.name for s in read_trace(prof.aggregate_file).slices if s.name.split(" #")[0] in
                 ENCODERS + ["transformer", "vae"]]
    assert [w.split(" #")[0] for w in workloads] == [c for c in calls if c not in unprofiled]


def test_every_file_keeps_the_trace_invariants(split_run):
    files = split_run.invocation_files + [split_run.aggregate_file]
    for path in files:
        trace = check_trace(path)
        workloads = [s for s in trace.slices if track_name(trace, s) == "Workload"]
        hosts = [s for s in trace.slices if track_name(trace, s) == "Host"]
        if path == split_run.aggregate_file:
            assert len(workloads) == len(split_run.invocation_files)
            assert hosts and {device_of(trace, s) for s in hosts} == {0}
            assert {"tokenize", "scheduler_step", "guidance_combine", "prepare_latents", "postprocess"} <= {
                s.name for s in hosts}
        else:
            assert len(workloads) == 1 and not hosts
            (w,) = workloads
            device = 1 if w.args["debug.submodule"] == "text_encoder_3" else 0
            (run_slice,) = [s for s in trace.slices if track_name(trace, s) == "Run"]
            assert (run_slice.ts, run_slice.dur) == (w.ts, w.dur)
            assert {device_of(trace, s) for s in trace.slices if s is not run_slice} == {device}
            assert all(w.ts <= s.ts and s.ts + s.dur <= w.ts + w.dur for s in trace.slices)


def test_command_names_args_and_split_children(split_run):
    splits = 0
    for path in split_run.invocation_files:
        trace = read_trace(path)
        (w,) = [s for s in trace.slices if track_name(trace, s) == "Workload"]
        seq = w.args["debug.sequence_index"]
        assert path.name.startswith(f"{seq:04d}_{w.args['debug.submodule']}_{w.args['debug.call_index']}")
        compute = [s for s in trace.slices if track_name(trace, s) == "Compute"]
        children = {}
        for s in compute:
            if s.depth == 0 and "debug.shapes" not in s.args:  # a split op's parent, named after its layer
                children[s.id] = [c for c in compute if c.parent_id == s.id]
                continue
            m = NAME.match(s.name)
            assert m and int(m.group(1)) == seq and int(m.group(3)) == s.args["debug.command_index"], s.name
            for key in ("op", "shapes", "bytes", "flops", "command_index", "command_count", "submodule", "device"):
                assert f"debug.{key}" in s.args, (s.name, key)
            assert s.args["debug.sequence_index"] == seq and s.args["debug.submodule"] == w.args["debug.submodule"]
        for parent_id, kids in children.items():
            parent = trace.slices[parent_id]
            k = parent.args["debug.command_count"]
            assert [c.args["debug.command_index"] for c in kids] == list(range(k))
            assert [c.name for c in kids] == [f"{seq}_{parent.name}_{i}" for i in range(k)]
            assert {c.args["debug.command_count"] for c in kids} == {k} and k >= 2
            splits += 1
    assert splits > 10


def test_aggregate_holds_exactly_the_union_of_the_invocation_files(split_run):
    def key(trace, s):
        return (s.name, s.dur, track_name(trace, s), device_of(trace, s), s.depth)

    union = Counter()
    for path in split_run.invocation_files:
        trace = read_trace(path)
        union.update(key(trace, s) for s in trace.slices if track_name(trace, s) != "Run")
    agg = read_trace(split_run.aggregate_file)
    assert Counter(key(agg, s) for s in agg.slices if track_name(agg, s) not in ("Host", "Run")) == union


def test_flows_link_each_input_dma_to_its_first_reader(split_run):
    for path in split_run.invocation_files:
        trace = read_trace(path)
        dma_in = [s for s in trace.slices if track_name(trace, s) == "DMA" and s.name.endswith(
            f"-> device {device_of(trace, s)}")]
        flows = dict(trace.flows)
        assert set(flows) == {s.id for s in dma_in}
        for src, dst in trace.flows:
            reader = trace.slices[dst]
            assert track_name(trace, reader) == "Compute" and reader.ts >= trace.slices[src].ts + trace.slices[src].dur


def test_memory_counter_per_device(split_run):
    trace = read_trace(split_run.aggregate_file)
    info = read_info(split_run.capture_file)
    weights = Counter()
    for p in info.pipelines[0].placement:
        weights[p.device] += p.weight_bytes
    by_device = {}
    for c in trace.counters:
        assert trace.tracks[c.track_uuid].name == "Memory (planned)"
        by_device.setdefault(int(trace.tracks[trace.tracks[c.track_uuid].parent_uuid].name.split()[-1]), []).append(c.value)
    assert set(by_device) == {0, 1}
    for device, values in by_device.items():
        assert min(values) == weights[device]  # resident weights between invocations
        peak = max(info.programs[p].commands[i].live_bytes for p in info.programs if info.programs[p].device == device
                   for i in range(len(info.programs[p].commands)))
        assert max(values) == weights[device] + peak


def test_capture_is_flushed_at_every_invocation_end(make_pipe, tmp_path):
    seen = []

    def on_step_end(pipe, step, timestep, kwargs):
        seen.append(read_info(tmp_path / "capture.rblncap").invocations)
        return {}

    profiled(make_pipe, tmp_path, steps=3, callback_on_step_end=on_step_end)
    assert seen == [7, 8, 9]  # six encoder calls, then one transformer call per step


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"])
def test_error_inside_profile_propagates_and_leaves_valid_files(make_pipe, tmp_path, error):
    def on_step_end(pipe, step, timestep, kwargs):
        if step == 1:
            raise error
        return {}

    with pytest.raises(type(error)):
        profiled(make_pipe, tmp_path, steps=3, callback_on_step_end=on_step_end)
    files = sorted(p.name for p in tmp_path.glob("0*.pb"))
    assert files == expected_files(ENCODERS * 2 + ["transformer"] * 2)
    for path in tmp_path.glob("*.pb"):
        check_trace(path)
    agg = read_trace(tmp_path / "aggregate.pb")
    assert sum(1 for s in agg.slices if track_name(agg, s) == "Workload") == 8
    status = read_info(tmp_path / "capture.rblncap").end.status
    assert status == ("interrupted" if isinstance(error, KeyboardInterrupt) else "error")


def test_unwritable_output_directory_fails_before_the_pipeline_runs(make_pipe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    pipe = make_pipe({})
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(rbln_perfetto.ExportError, match=f"output directory {blocker}/out is not writable"):
        with rbln_perfetto.profile(blocker / "out"):
            run(pipe)
    assert not calls


def test_nested_profile_is_a_clear_error(tmp_path):
    with rbln_perfetto.profile(tmp_path / "outer"):
        with pytest.raises(RuntimeError, match="already active.*cannot be nested"):
            with rbln_perfetto.profile(tmp_path / "inner"):
                pass


@pytest.mark.parametrize("value,enabled", [("1", True), ("true", True), ("YES", True), (" on ", True),
                                           ("0", False), ("false", False), ("no", False), ("off", False), ("", False)])
def test_environment_switch(make_pipe, tmp_path, monkeypatch, value, enabled):
    monkeypatch.setenv("RBLN_PROFILER", value)
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path))
    run(make_pipe({}), steps=1)
    runs = list(tmp_path.iterdir())
    if not enabled:
        assert runs == []
        return
    (run_dir,) = runs
    assert sorted(p.name for p in run_dir.glob("0*.pb")) == expected_files(ENCODERS * 2 + ["transformer", "vae"])


def test_bad_environment_value_is_a_clear_error(make_pipe, monkeypatch):
    monkeypatch.setenv("RBLN_PROFILER", "maybe")
    with pytest.raises(ValueError, match="RBLN_PROFILER='maybe' is not valid; valid: 1, true, yes, on to enable"):
        run(make_pipe({}), steps=1)


def test_activate_profiler_overrides_the_environment_both_ways(make_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path / "env-off"))
    run(make_pipe({}, vae={"activate_profiler": True}), steps=1)  # environment off, vae on
    (run_dir,) = (tmp_path / "env-off").iterdir()
    assert [p.name for p in sorted(run_dir.glob("0*.pb"))] == ["0007_vae_0.pb"]  # the run's 8th submodule call

    monkeypatch.setenv("RBLN_PROFILER", "1")
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path / "env-on"))
    run(make_pipe({}, transformer={"activate_profiler": False}), steps=1)  # environment on, transformer off
    (run_dir,) = (tmp_path / "env-on").iterdir()
    names = [p.name for p in sorted(run_dir.glob("0*.pb"))]
    assert len(names) == 7 and not any("transformer" in n for n in names)
    agg = read_trace(run_dir / "aggregate.pb")
    assert not any(s.name.startswith("transformer") for s in agg.slices)


def test_unprofiled_submodules_are_not_timed(make_pipe, tmp_path, monkeypatch):
    pipe = make_pipe({}, text_encoder={"activate_profiler": False})

    def never(*args, **kwargs):
        raise AssertionError("an unprofiled submodule ran its timed program")

    monkeypatch.setattr(pipe.text_encoder.compiled, "run_timed", never)
    seen = {}

    def on_step_end(p, step, t, kwargs):
        call = active_call()
        seen.update({n: call.profiles(n) for n in ENCODERS + ["transformer", "vae"]})
        return {}

    with rbln_perfetto.profile(tmp_path):
        run(pipe, steps=1, callback_on_step_end=on_step_end)
    assert seen == {"text_encoder": False, "text_encoder_2": True, "text_encoder_3": True, "transformer": True,
                    "vae": True}
    assert active_call() is None  # the call is over


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
def test_files_load_in_trace_processor(split_run):
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    for path in split_run.invocation_files + [split_run.aggregate_file]:
        with TraceProcessor(trace=str(path), config=TraceProcessorConfig(bin_path=os.environ["RBLN_PERFETTO_TP_BIN"])) as tp:
            errors = tp.query("select name, value from stats where severity in ('error', 'data_loss') and value > 0")
            assert list(errors) == [], f"{path}: {[(r.name, r.value) for r in errors]}"
            (row,) = list(tp.query("select count(*) as n from slice"))
            assert row.n == len(read_trace(path).slices)
