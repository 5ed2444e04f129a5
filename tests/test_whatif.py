"""What-if: a run replayed with submodules sped up, slowed down or moved, checked against what the traces
hold read independently (`trace_kinds.truth`: the slices as plain Python, no SQL), on every kind of trace
(one process, selected steps, an unprofiled submodule, merged 2-rank runs: whole, selected steps, a killed
rank; a re-exported trace) and on a real profiled run;
the predicted run written as a trace and read back by `diff`; the command line and its one-line errors."""

import os

import pytest
from trace_kinds import build, truth

from rbln_perfetto.analysis import diff
from rbln_perfetto.analysis.whatif import predict, whatif
from rbln_perfetto.analysis.whatif_trace import write_prediction
from rbln_perfetto.cli.main import main
from rbln_perfetto.errors import UsageError

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])
KINDS = ("single", "selected", "unprofiled", "merged", "merged_selected", "merged_killed", "reexported")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("whatif-kinds")
    return {kind: build(root, kind) for kind in KINDS}


def _command_ns(t, submodule) -> int:
    return sum(dur for _, _, sub, _, dur in t.commands if sub == submodule)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_no_change_predicts_the_measured_run(traces, kind, backend):
    t = truth(traces[kind])
    p = predict(traces[kind], backend=backend)
    assert p.measured_span_ns == p.predicted_span_ns == t.span
    assert p.ts.tolist() == p.deps.ts.tolist() and p.end.tolist() == p.deps.end.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("submodule,factor", [("transformer", 2.0), ("text_encoder_3", 1.25), ("vae", 0.5)])
def test_a_faster_or_slower_submodule_shortens_or_stretches_the_run_by_its_commands(traces, kind, backend,
                                                                                    submodule, factor):
    """The runs are sequential (the host waits for every call, across ranks too), so the span changes by
    exactly what the submodule's commands gain or lose."""
    t = truth(traces[kind])
    commands = _command_ns(t, submodule)
    if not commands:  # not profiled in this trace: nothing to scale, said as an error
        with pytest.raises(UsageError, match=f"no invocation of {submodule}"):
            predict(traces[kind], {submodule: factor}, backend=backend)
        return
    if kind == "merged_killed" and submodule == "text_encoder_3":
        # It ran on rank 1, killed after its last call: rank 1's transfer back to rank 0 is not in the trace,
        # so a replay could not carry the change to rank 0 (it would predict the measured span): refused,
        # naming the submodules of the synthetic run (no text_encoder_2) that ran on a complete rank.
        with pytest.raises(UsageError, match=r"^--speedup text_encoder_3: it ran on rank 1, whose trace is "
                                             r"incomplete .*; valid: text_encoder, transformer, vae$"):
            predict(traces[kind], {submodule: factor}, backend=backend)
        return
    p = predict(traces[kind], {submodule: factor}, backend=backend)
    assert p.predicted_span_ns == pytest.approx(t.span - commands * (1 - 1 / factor), abs=2)
    table = whatif(traces[kind], {submodule: factor}, backend=backend).set_index("what")
    calls = sum(end - ts for _, _, sub, ts, end in t.invocations if sub == submodule)
    assert table.loc[submodule, "measured_ms"] == pytest.approx(calls / 1e6)
    assert table.loc[submodule, "predicted_ms"] == pytest.approx((calls - commands * (1 - 1 / factor)) / 1e6, abs=1e-5)
    assert table.loc["span", "predicted_ms"] == pytest.approx(p.predicted_span_ns / 1e6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_move_puts_the_invocations_on_the_other_device_at_the_same_span(traces, backend):
    """Both logical devices are CPU devices: the copies keep their measured time, and nothing runs in
    parallel, so the span stays; the moved submodule's busy time moves with it."""
    t = truth(traces["single"])
    p = predict(traces["single"], moves={"vae": 1}, backend=backend)
    assert p.predicted_span_ns == t.span
    vae_busy = sum(dur for unit, _, sub, _, dur in t.commands if sub == "vae") + sum(
        s.dur for unit, s in t.dmas if s.args.get("debug.submodule") == "vae")
    devices = p.devices().set_index("device")
    assert devices.loc[1, "predicted_busy_ms"] == pytest.approx(devices.loc[1, "measured_busy_ms"] + vae_busy / 1e6)
    assert devices.loc[0, "predicted_busy_ms"] == pytest.approx(devices.loc[0, "measured_busy_ms"] - vae_busy / 1e6)
    assert p.placement["vae"] == 1 and p.facts.placement["vae"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_predicted_run_is_a_trace_that_diff_compares(traces, tmp_path, backend):
    t = truth(traces["merged"])
    p = predict(traces["merged"], {"transformer": 2.0}, backend=backend)
    out = write_prediction(p, tmp_path / "pred.pb")
    pred = truth(out)
    assert pred.span == p.predicted_span_ns
    assert len(pred.invocations) == len(t.invocations) and len(pred.host) == len(t.host)
    assert sorted(u[:2] for u in pred.units) == sorted(u[:2] for u in t.units)
    table = diff(traces["merged"], out, by="submodule", backend=backend).set_index("submodule")
    transformer = _command_ns(t, "transformer")
    assert table.loc["transformer", "delta_ms"] == pytest.approx(-transformer / 2 / 1e6, abs=1e-5)
    assert table.loc["vae", "delta_ms"] == pytest.approx(0, abs=1e-6)
    by_layer = diff(traces["merged"], out, by="layer", backend=backend)
    assert set(by_layer.status) == {"both"}


def test_moves_across_ranks_and_beyond_the_devices_are_refused_naming_the_valid_ones(traces):
    with pytest.raises(UsageError, match=r"^--move vae=1: vae runs on rank 0 \(device 0\).*valid devices for vae: 0$"):
        predict(traces["merged"], moves={"vae": 1})
    with pytest.raises(UsageError, match=r"^--move vae=3: this run has logical devices 0..1; valid: 0..2 "):
        predict(traces["single"], moves={"vae": 3})
    with pytest.raises(UsageError, match="'unet' is not a submodule; valid: text_encoder, "):
        predict(traces["single"], {"unet": 2.0})
    with pytest.raises(UsageError, match="speedup vae=0 is not valid; valid: a positive number"):
        predict(traces["single"], {"vae": 0})


def test_a_real_run_speeds_up_by_its_commands(shared_run, tmp_path, capsys):
    """On a profiled device-split run (one process): no change predicts its span, a transformer 1.25x
    faster shortens it by a fifth of the transformer's command time (summed here from the trace's own
    command slices), and the command line prints it, writes the predicted run and the memory plan."""
    prof = shared_run({"text_encoder_3": {"device": 1}}, steps=2)
    trace = prof.aggregate_file
    t = truth(trace)
    commands = _command_ns(t, "transformer")
    assert predict(trace).predicted_span_ns == t.span
    assert predict(trace, {"transformer": 1.25}).predicted_span_ns == pytest.approx(t.span - commands * 0.2, abs=2)

    out = tmp_path / "pred.pb"
    assert main(["whatif", str(trace), "--slowdown", "transformer=1.25", "--move", "vae=1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"what-if of {trace}: transformer 1.25x slower; vae on device 1"
    span = next(line.split() for line in lines if line.split()[:1] == ["span"])
    assert float(span[-2]) == pytest.approx((t.span + commands * 0.25) / 1e6, abs=2e-3)
    assert any(line.strip().startswith("device 1:") and line.strip().endswith("fits") for line in lines)
    assert truth(out).span == pytest.approx(t.span + commands * 0.25, abs=2)


@pytest.mark.parametrize("argv,message", [
    (["--speedup", "unet=2"], "--speedup 'unet=2': 'unet' is not a submodule; valid: text_encoder, text_encoder_2, "
                              "text_encoder_3, transformer, vae"),
    (["--speedup", "vae"], "--speedup 'vae': give SUBMODULE=FACTOR with a positive number, e.g. vae=1.25"),
    (["--slowdown", "vae=-1"], "--slowdown 'vae=-1': give SUBMODULE=FACTOR with a positive number, e.g. vae=1.25"),
    (["--move", "vae=one"], "--move 'vae=one': give SUBMODULE=DEVICE with a logical device number, e.g. vae=1"),
    (["--move", "vae=7"], "--move vae=7: this run has logical devices 0..1; valid: 0..2 (2: a new logical device)"),
])
def test_bad_arguments_are_one_line_errors(traces, capsys, argv, message):
    assert main(["whatif", str(traces["single"]), *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rbln-perfetto whatif: error: {message}"]
