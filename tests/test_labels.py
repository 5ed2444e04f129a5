"""Honest labels: the memory counter says it is a plan, `run` and `summary` count and measure alike,
and a command that does not fit the command budget says by how much."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import program, write_capture
from trace_checks import check_trace, track_name
from trace_objects import read_trace

import rbln_perfetto
from pipeline.contract import DeviceInfo, PipelineInfo, ProgramInfo
from pipeline.partition import partition
from rbln_perfetto.recorder.capture import CaptureWriter
from rbln_perfetto.query import open_trace

BACKENDS = ["sqlite"] + (["trace_processor"] if os.environ.get("RBLN_PERFETTO_TP_BIN") else [])

# Two devices; a 2-way and a 3-way split op; inputs and outputs; host work before, between and after.
PROGRAMS = [
    program("text_encoder", 0, [("enc.proj", "linear", 0, 1, "[1, 4]", 100, 10, 10),
                                ("enc.attn", "sdpa", 0, 2, "[1, 2]", 200, 20, 20),
                                ("enc.attn", "sdpa", 1, 2, "[1, 2]", 200, 20, 20)],
            inputs=[("input_ids", (1, 4), "int64", 32, 0)], outputs=[("output_0", (1, 4), "float32", 16, 2)],
            weight_bytes=1000),
    program("transformer", 1, [("blk.ff", "linear", 0, 3, "[2, 8]", 300, 30, 40),
                               ("blk.ff", "linear", 1, 3, "[2, 8]", 300, 30, 40),
                               ("blk.ff", "linear", 2, 3, "[2, 8]", 300, 30, 40),
                               ("blk.norm", "layer_norm", 0, 1, "[2, 8]", 64, 8, 8)],
            inputs=[("latents", (2, 8), "float32", 64, 0), ("timestep", (2,), "float32", 8, 3)],
            outputs=[("output_0", (2, 8), "float32", 64, 3)], weight_bytes=5000),
]
CALLS = [(0, [1000, 5000, 7000, 6000, 900]), (1, [800, 700, 3000, 3100, 2900, 1200, 600]),
         (1, [810, 690, 3050, 3000, 2950, 1100, 650])]
HOST = [(0, "tokenize", 4000, "tokenizer"), (1, "scheduler_step", 2500, ""), (2, "postprocess", 9000, "")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    capture = write_capture(tmp / "capture.rblncap", PROGRAMS, CALLS, HOST)
    return rbln_perfetto.export(capture, tmp / "out")


def test_memory_counter_is_named_and_described_as_a_plan(exported):
    for path in exported.invocation_files + [exported.aggregate_file]:
        trace = check_trace(path)
        counters = {trace.tracks[c.track_uuid].name for c in trace.counters}
        assert counters == {"Memory (planned)"}  # CPU devices: nothing measured
    for backend in BACKENDS:
        # trace_processor keeps a track's description among its source args; the embedded backend in a column.
        description = "extract_arg(source_arg_set_id, 'description')" if backend == "trace_processor" else "description"
        with open_trace(exported.aggregate_file, backend=backend) as tr:
            df = tr.query(f"select name, {description} as description from track where name like 'Memory%'")
        assert set(df.name) == {"Memory (planned)"} and len(df) == 2  # one per device
        assert all("not measured" in d and "weights" in d and "activations" in d for d in df.description)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_summary_and_devices_report_give_the_same_numbers(exported, backend):
    summary = exported.summary()
    with open_trace(exported.aggregate_file, backend=backend) as tr:
        report = tr.report("devices")
        invocations = tr.report("invocations")
        slices = int(tr.query("select count(*) as n from slice").n[0])
    assert slices == exported.slices  # what `run` prints as the aggregate's slices
    rows = {(r.device, r.category): r for r in report.itertuples()}
    per_category = {"Workload": ("invocations", "busy_ms"), "Compute": ("commands", "compute_ms"),
                    "DMA": ("transfers", "dma_ms"), "Host": ("host_events", "host_ms")}
    expected_rows = set()
    for d in summary.devices.itertuples():
        for category, (count, ms) in per_category.items():
            if getattr(d, count) == 0:
                continue
            expected_rows.add((f"Device {d.device}", category))
            r = rows[(f"Device {d.device}", category)]
            assert r.items == getattr(d, count), (d.device, category)
            assert r.counted == {"host_events": "host events"}.get(count, count)
            assert r.busy_ms == pytest.approx(getattr(d, ms), abs=1e-9)
        workload = rows[(f"Device {d.device}", "Workload")]
        assert workload.utilisation_pct == pytest.approx(d.utilisation_pct, rel=1e-12)
    assert set(rows) == expected_rows
    # The commands counted are commands, not split parents: 3 + 4 + 4 of them here.
    assert summary.devices.commands.tolist() == [3, 8]
    for s in summary.submodules.itertuples():
        (r,) = [r for r in invocations.itertuples() if r.submodule == s.submodule]
        assert (r.calls, r.total_ms) == (s.calls, pytest.approx(s.total_ms, abs=1e-9))


class AttentionAndLinear(torch.nn.Module):
    """Attention over 2 heads (cannot be split into more than 2 commands) and a linear of 512
    output features (can be split as finely as a small budget asks)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 512)

    def forward(self, q, k, v, x):
        return F.scaled_dot_product_attention(q, k, v), self.proj(x)


def test_a_command_over_the_command_budget_carries_the_excess(tmp_path):
    budget = 4096
    inputs = (*(torch.randn(1, 2, 64, 16) for _ in range(3)), torch.randn(1, 8))
    part = partition("transformer", torch.export.export(AttentionAndLinear().eval(), inputs).module(), budget)
    attention = [c for c in part.commands if c.op == "sdpa"]
    linear = [c for c in part.commands if c.op == "linear"]
    # 2 heads cap the attention at 2 commands of 16 KiB each; the linear's 6 commands fit.
    assert len(attention) == 2 and all(c.bytes > budget for c in attention)
    assert len(linear) > 2 and all(c.bytes <= budget for c in linear)
    prog = ProgramInfo("transformer", 0, "cpu", part.weight_bytes, part.input_transfers, part.commands,
                       part.output_transfers)
    info = PipelineInfo("synthetic", {"command_budget": budget}, (DeviceInfo(0, "cpu", 1 << 34),), (prog,),
                        {"transformer": 0}, {"transformer": True})
    writer = CaptureWriter(tmp_path / "capture.rblncap", "budget")
    pid = writer.pipeline(info, {"transformer"})
    writer.invocation(writer.program(prog, pid), (10**12 + 1000 * np.arange(prog.tick_layout.num_ticks)).tolist())
    writer.close()
    result = rbln_perfetto.export(tmp_path / "capture.rblncap", tmp_path / "out")
    trace = read_trace(result.invocation_files[0])
    commands = [s for s in trace.slices if track_name(trace, s) == "Compute" and "debug.command_index" in s.args]
    assert len(commands) == len(part.commands)
    for s in commands:
        over = s.args["debug.bytes"] - budget
        assert s.args.get("debug.bytes_over_budget") == (over if over > 0 else None), s.name
    for backend in BACKENDS:
        with open_trace(result.invocation_files[0], backend=backend) as tr:
            df = tr.query("select extract_arg(arg_set_id, 'debug.bytes_over_budget') as over from slice "
                          "where extract_arg(arg_set_id, 'debug.bytes_over_budget') is not null")
        assert sorted(df.over.tolist()) == sorted(c.bytes - budget for c in attention)


@pytest.mark.parametrize("budget", [4096, 16384])
def test_split_ops_equal_the_unsplit_op_within_the_tolerance_the_readme_states(budget):
    from test_splits import CASES, _compile

    for case, (module, inputs, _) in CASES.items():
        with torch.no_grad():
            expected = module(*inputs)
            _, run, _ = _compile(module, inputs, budget=budget)
            (out,) = run(*inputs)
        assert (out - expected).abs().max().item() <= 1e-6 * expected.abs().max().item(), case
