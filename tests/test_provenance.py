"""Provenance: every trace says how its numbers were taken, from what the capture recorded at the run's start."""

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run
from trace_checks import check_scanner_agrees, check_trace, track_name
from trace_objects import iter_packets

import rbln_perfetto
from pipeline.contract import (
    CUDA_EVENT_TIMING,
    HOST_CLOCK_TIMING,
    SUBMODULES,
    CommandSpec,
    DeviceInfo,
    PipelineInfo,
    ProgramInfo,
    TransferSpec,
    timing_method,
)
from pipeline.runtime import weights_digest
from rbln_perfetto.recorder.capture import CaptureWriter, read_info
from rbln_perfetto.exporter.provenance import CLOCK, trace_uuid
from rbln_perfetto.query import open_trace
from rbln_perfetto.recorder.run_directory import run_identity

SPLIT = {"text_encoder_3": {"device": 1}}
OLD_CAPTURE = Path(__file__).parent / "data" / "golden" / "capture.rblncap"  # written before provenance existed
TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")


@pytest.fixture(scope="module")
def profiled_run(compiled_dirs, tmp_path_factory):
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(SPLIT))
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path_factory.mktemp("provenance-run")
    with rbln_perfetto.profile(out) as prof:
        run(pipe, steps=1)
    return pipe, prof


def _run_slice(trace):
    (run_slice,) = [s for s in trace.slices if track_name(trace, s) == "Run"]
    return run_slice


def test_capture_records_the_host_the_runtime_and_how_durations_were_taken(profiled_run):
    pipe, prof = profiled_run
    info = read_info(prof.capture_file)
    host = info.header.host
    assert host.sysname == os.uname().sysname and host.machine == os.uname().machine
    assert host.cpu_count == os.cpu_count() and host.usable_cpus == len(os.sched_getaffinity(0))
    assert host.cpu_model and len(host.load_average) == 3 and all(v >= 0 for v in host.load_average)
    (pipeline,) = info.pipelines
    assert pipeline.runtime.torch_version == torch.__version__
    assert pipeline.runtime.intra_op_threads == torch.get_num_threads()
    assert pipeline.runtime.weights_digest.startswith("sha256:") and len(pipeline.runtime.weights_digest) == 7 + 64
    assert [(d.torch_device, d.timing) for d in pipeline.devices] == [("cpu", HOST_CLOCK_TIMING)] * 2
    assert not info.measured_devices  # nothing is measured on CPU devices


def test_weights_digest_is_of_the_weights_the_programs_read(profiled_run, compiled_dirs):
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe, prof = profiled_run
    recorded = read_info(prof.capture_file).pipelines[0].runtime.weights_digest
    again = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(SPLIT))
    parts = [getattr(again, name).compiled.partition for name in SUBMODULES]
    assert weights_digest(parts) == recorded  # the same weights loaded again
    weight = next(v for v in parts[-1].constants.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    with torch.no_grad():
        weight.add_(1.0)
    assert weights_digest(parts) != recorded


def test_every_file_shows_the_provenance(profiled_run):
    pipe, prof = profiled_run
    info = read_info(prof.capture_file)
    cfg = pipe.rbln_config
    identity = run_identity(info.header)
    files = prof.invocation_files + [prof.aggregate_file]
    uuids = set()
    for path in files:
        packets = list(iter_packets(path))
        (system,) = [p.system_info for p in packets if p.HasField("system_info")]
        assert (system.utsname.sysname, system.utsname.release, system.num_cpus) == (
            os.uname().sysname, os.uname().release, os.cpu_count())
        assert system.tracing_service_version == f"rbln-perfetto {info.header.tool_version}"
        (trace_id,) = [p.trace_uuid for p in packets if p.HasField("trace_uuid")]
        assert (trace_id.msb, trace_id.lsb) == trace_uuid(identity, path.name)
        uuids.add((trace_id.msb, trace_id.lsb))

        trace = check_trace(path)
        run_slice = _run_slice(trace)
        args = {k.removeprefix("debug."): v for k, v in run_slice.args.items()}
        assert run_slice.name == f"run {info.header.run_id}"
        assert args["clock"] == CLOCK and args["timing"] == HOST_CLOCK_TIMING
        assert (args["torch_version"], args["intra_op_threads"]) == (torch.__version__, torch.get_num_threads())
        assert (args["cpu_count"], args["usable_cpus"]) == (os.cpu_count(), len(os.sched_getaffinity(0)))
        assert args["cpu_model"] == info.header.host.cpu_model
        assert [args[f"load_average_{m}m"] for m in (1, 5, 15)] == [round(v, 2) for v in info.header.host.load_average]
        assert (args["img_height"], args["img_width"], args["batch_size"], args["guidance_scale"],
                args["command_budget"], args["dtype"]) == (cfg.img_height, cfg.img_width, cfg.batch_size,
                                                            cfg.guidance_scale, cfg.command_budget, cfg.dtype)
        assert json.loads(args["rbln_config"]) == cfg.to_dict()
        assert args["model_dir"] == pipe._rbln_model
        assert args["weights_digest"] == info.pipelines[0].runtime.weights_digest
        assert (args["tool_version"], args["run_id"], args["status"]) == (
            info.header.tool_version, info.header.run_id, "ok")

        # The Run slice spans the file's invocations and host work.
        timed = [s for s in trace.slices if track_name(trace, s) in ("Workload", "Host")]
        assert run_slice.ts == min(s.ts for s in timed)
        assert run_slice.ts + run_slice.dur == max(s.ts + s.dur for s in timed)
        for t in trace.tracks.values():
            if t.name.startswith("Device "):
                assert HOST_CLOCK_TIMING in t.description and "shares the host's" in t.description
    assert len(uuids) == len(files)


def test_exporting_a_capture_again_gives_the_same_bytes(profiled_run, tmp_path):
    _, prof = profiled_run
    a = rbln_perfetto.export(prof.capture_file, tmp_path / "a")
    b = rbln_perfetto.export(prof.capture_file, tmp_path / "b")
    names = [p.name for p in a.invocation_files + [a.aggregate_file]]
    assert names == [p.name for p in b.invocation_files + [b.aggregate_file]]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() == (prof.out_dir / name).read_bytes(), name


def test_a_capture_without_provenance_still_exports_without_it(tmp_path):
    info = read_info(OLD_CAPTURE)
    assert not info.header.HasField("host") and not info.pipelines[0].HasField("runtime")
    result = rbln_perfetto.export(OLD_CAPTURE, tmp_path)
    for path in result.invocation_files + [result.aggregate_file]:
        packets = list(iter_packets(path))
        assert not any(p.HasField("system_info") for p in packets)
        (trace_id,) = [p.trace_uuid for p in packets if p.HasField("trace_uuid")]
        assert (trace_id.msb, trace_id.lsb) == trace_uuid(run_identity(info.header), path.name)
        trace = check_trace(path)
        args = _run_slice(trace).args
        assert args["debug.run_id"] == info.header.run_id and args["debug.model_dir"] == info.pipelines[0].model
        for absent in ("timing", "torch_version", "intra_op_threads", "weights_digest", "cpu_model", "load_average_1m"):
            assert f"debug.{absent}" not in args
        for t in trace.tracks.values():
            if t.name.startswith("Device "):
                assert "durations:" not in t.description


def _cuda_capture(path: Path, measured) -> Path:
    """A run of one program on cuda:0 (measured memory at each call's start and end, as the runtime
    reports it) and one on a CPU device, written through the real capture writer."""
    def program(submodule, device, torch_device):
        commands = tuple(CommandSpec(f"{submodule}.layer{i}", "linear", 0, 1, "[4, 8] x [8, 8] -> [4, 8]", 512, 1024,
                                     128 * (i + 1)) for i in range(3))
        return ProgramInfo(submodule, device, torch_device, 4096, (TransferSpec("x", (4, 8), "float32", 128, 0),),
                           commands, (TransferSpec("output_0", (4, 8), "float32", 128, 2),))

    programs = (program("transformer", 0, "cuda:0"), program("vae", 1, "cpu"))
    info = PipelineInfo("synthetic", {"command_budget": 1 << 20},
                        (DeviceInfo(0, "cuda:0", 1 << 34), DeviceInfo(1, "cpu", 1 << 34)), programs,
                        {p.submodule: 0 for p in programs}, {p.submodule: True for p in programs})
    writer = CaptureWriter(path, "cuda-synthetic")
    pid = writer.pipeline(info, {p.submodule for p in programs})
    ids = [writer.program(p, pid) for p in programs]
    now = 10**12
    for k, allocated in enumerate(measured):
        ticks = (now + 1000 * np.arange(6)).tolist()
        writer.invocation(ids[0], ticks, allocated)
        now = ticks[-1] + 500
        ticks = (now + 1000 * np.arange(6)).tolist()
        writer.invocation(ids[1], ticks)
        now = ticks[-1] + 500
    writer.close()
    return path


def test_cuda_devices_get_a_measured_memory_counter_beside_the_plan(tmp_path):
    measured = [(4096 + 300, 4096 + 64), (4096 + 250, 4096 + 0)]
    capture = _cuda_capture(tmp_path / "capture.rblncap", measured)
    info = read_info(capture)
    assert info.measured_devices == {0}
    assert [(d.torch_device, d.timing) for d in info.pipelines[0].devices] == [
        ("cuda:0", CUDA_EVENT_TIMING), ("cpu", HOST_CLOCK_TIMING)]
    result = rbln_perfetto.export(capture, tmp_path / "out")
    offset = info.header.clock.boottime_ns - info.header.clock.monotonic_ns
    check_scanner_agrees(result.aggregate_file)  # the reader's C and Python paths read the counters alike
    for path in [result.aggregate_file, result.invocation_files[0]]:
        trace = check_trace(path)
        children = {}
        for t in trace.tracks.values():
            if t.parent_uuid is not None:
                children.setdefault(trace.tracks[t.parent_uuid].name, set()).add(t.name)
        assert {"Memory (planned)", "Memory (measured)"} <= children["Device 0"]
        assert "Memory (measured)" not in children.get("Device 1", set())
        workloads = [s for s in trace.slices if track_name(trace, s) == "Workload" and s.name.startswith("transformer")]
        samples = sorted((c.ts, c.value) for c in trace.counters
                         if trace.tracks[c.track_uuid].name == "Memory (measured)")
        want = [(w.ts, float(m[0])) for w, m in zip(workloads, measured)] + [
            (w.ts + w.dur, float(m[1])) for w, m in zip(workloads, measured)]
        assert samples == sorted(want)
        assert workloads[0].ts >= 10**12 + offset
    with open_trace(result.aggregate_file, backend="sqlite") as tr:
        df = tr.query("select t.name, t.description from track t where t.name like 'Memory%' order by t.id")
        measured_desc = df[df.name == "Memory (measured)"].description.tolist()
        assert len(measured_desc) == 1 and "torch.cuda.memory_allocated of cuda:0" in measured_desc[0]


def test_the_runtime_measures_memory_only_where_it_times_with_cuda_events():
    assert timing_method("cuda:1") == timing_method("cuda") == CUDA_EVENT_TIMING
    assert timing_method("cpu") == timing_method("mps") == HOST_CLOCK_TIMING


def _run_args(tr) -> dict:
    """The Run slice's args as {key: (value type, value)}, on either backend."""
    df = tr.query("select a.key, a.value_type, a.int_value, a.string_value, a.real_value from slice s "
                  "join args a using (arg_set_id) where s.name like 'run %'")
    return {r.key: (r.value_type, r.string_value if r.value_type == "string" else
                    float(r.real_value) if r.value_type == "real" else int(r.int_value)) for r in df.itertuples()}


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
def test_trace_processor_shows_system_info_and_the_uuid_in_metadata(profiled_run, tmp_path):
    _, prof = profiled_run
    info = read_info(prof.capture_file)
    measured = rbln_perfetto.export(_cuda_capture(tmp_path / "capture.rblncap", [(5000, 4100)]), tmp_path / "out")
    files = [(prof.aggregate_file, prof.capture_file), (prof.invocation_files[0], prof.capture_file),
             (measured.aggregate_file, tmp_path / "capture.rblncap")]
    for path, capture in files:
        with open_trace(path, backend="trace_processor") as tr:
            meta = {r.name: (r.str_value if isinstance(r.str_value, str) else r.int_value)
                    for r in tr.query("select name, str_value, int_value from metadata").itertuples()}
            errors = tr.query("select name, value from stats where severity in ('error', 'data_loss') and value > 0")
            assert errors.empty, f"{path}: {errors.values.tolist()}"
            msb, lsb = trace_uuid(run_identity(read_info(capture).header), path.name)
            raw = msb.to_bytes(8, "big", signed=True) + lsb.to_bytes(8, "big", signed=True)
            assert meta["trace_uuid"] == str(uuid.UUID(bytes=raw))
            assert meta["system_name"] == os.uname().sysname and meta["system_release"] == os.uname().release
            tp_args = _run_args(tr)
        with open_trace(path, backend="sqlite") as tr:
            ours = _run_args(tr)
        assert tp_args == ours and "debug.run_id" in ours
        if capture == prof.capture_file:
            assert {"debug.torch_version", "debug.weights_digest", "debug.cpu_model"} <= set(ours)
    assert info.header.host.cpu_count == os.cpu_count()
