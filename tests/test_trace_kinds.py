"""Every report, analysis, check metric and the summary on every kind of trace the project writes
(single process; selected steps; an unprofiled submodule; merged 2-rank; merged with a killed rank;
a re-exported capture; a per-invocation file), each against answers computed here from the trace's
slices in Python (`trace_kinds.truth`), not by the SQL under test.

What makes them agree is `query.trace_model`: one definition of a device track (rank-aware), an
invocation, a command, a DMA, an untraced stretch and the run span, read by all of them.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest
from trace_kinds import KINDS, SELECTED, STEPS, build, truth

from rbln_perfetto.analysis import check, critical_path, diff, idle, metrics, stands_out, variance
from rbln_perfetto.errors import UsageError
from rbln_perfetto.exporter.run_totals import RunTotals, Summary
from rbln_perfetto.query import open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])


@pytest.fixture(scope="session")
def traces(tmp_path_factory):
    """{kind: (trace file, Truth)}, built once per session."""
    root = tmp_path_factory.mktemp("trace_kinds")
    out = {}
    for kind in KINDS:
        path = build(root, kind)
        out[kind] = (path, truth(path))
    return out


CASES = [(kind, backend) for kind in KINDS for backend in BACKENDS]


@pytest.fixture(params=CASES, ids=[f"{k}-{b}" for k, b in CASES])
def case(request, traces):
    kind, backend = request.param
    path, t = traces[kind]
    with open_trace(path, backend=backend) as tr:
        yield kind, tr, t


def _ms(ns) -> float:
    return ns / 1e6


def _per_submodule(t):
    out = defaultdict(list)
    for _, _, sub, ts, end in t.invocations:
        out[sub].append(end - ts)
    return out


def test_the_traces_are_the_kinds_they_claim(traces):
    _, merged = traces["merged"]
    assert set(merged.units) == {(0, 0), (1, 1)} and len(merged.flows) > len(traces["single"][1].flows)
    assert len(traces["selected"][1].untraced) == 1 and len(traces["selected"][1].invocations) == 3 + len(SELECTED)
    assert len(traces["merged_selected"][1].untraced) == 2  # one per rank, overlapping
    assert "text_encoder_3" not in _per_submodule(traces["unprofiled"][1])
    assert len(traces["merged_killed"][1].dmas) < len(merged.dmas)
    assert len(traces["invocation_file"][1].invocations) == 1


def test_invocations_report(case):
    _, tr, t = case
    got = tr.report("invocations").groupby("submodule").agg(calls=("calls", "sum"), total_ms=("total_ms", "sum"))
    want = _per_submodule(t)
    assert sorted(got.index) == sorted(want)
    for sub, durs in want.items():
        assert got.loc[sub].calls == len(durs)
        assert got.loc[sub].total_ms == pytest.approx(_ms(sum(durs)))


def _working(t):
    """The units that ran an invocation (an unprofiled submodule's device has tracks, and no slices)."""
    return {key: unit for key, unit in t.units.items() if any(u == key for u, *_ in t.invocations)}


def test_devices_report(case):
    _, tr, t = case
    got = tr.report("devices").set_index(["device", "category"])
    assert set(got.index.get_level_values(0)) == {unit.label for unit in _working(t).values()}
    for key, unit in _working(t).items():
        busy = sum(end - ts for u, _, _, ts, end in t.invocations if u == key)
        row = got.loc[(unit.label, "Workload")]
        assert row["items"] == sum(u == key for u, *_ in t.invocations)
        assert row.busy_ms == pytest.approx(_ms(busy))
        # Untraced stretches are no work and no idle time: utilisation is of the traced span.
        assert row.utilisation_pct == pytest.approx(100 * busy / t.traced)
        assert got.loc[(unit.label, "Compute")]["items"] == sum(u == key for u, *_ in t.commands)
        assert got.loc[(unit.label, "DMA")]["items"] == sum(u == key for u, _ in t.dmas)


def test_top_layers_and_split_ops_name_layers_as_the_run_does(case):
    _, tr, t = case
    want = defaultdict(lambda: [0, 0])
    for _, layer, sub, _, dur in t.commands:
        want[(layer, sub)][0] += 1
        want[(layer, sub)][1] += dur
    top = tr.report("top_layers")
    assert len(top) == min(len(want), 25)
    for row in top.itertuples():
        assert [row.commands, row.total_ms] == pytest.approx([want[(row.layer, row.submodule)][0],
                                                              _ms(want[(row.layer, row.submodule)][1])])
    split = tr.report("split_ops")
    assert set(zip(split.layer, split.submodule)) <= set(want) and len(split)
    for row in split.itertuples():
        assert row.commands == want[(row.layer, row.submodule)][0]


def test_dma_report_counts_every_dma(case):
    _, tr, t = case
    report = tr.report("dma")
    assert report.transfers.sum() == len(t.dmas)
    assert report.total_ms.sum() == pytest.approx(_ms(sum(s.dur for _, s in t.dmas)))


def test_ranges_report_counts_commands_and_transfers_apart(case):
    _, tr, t = case
    report = tr.report("ranges")
    assert report.name.tolist() == ["encode"] * len(t.ranges)  # (a merged trace's `i0_` left out)
    for row, r in zip(report.itertuples(), t.ranges):
        inside = lambda ts: r.ts <= ts < r.ts + r.dur  # noqa: E731
        assert row.transfers == sum(inside(s.ts) for _, s in t.dmas)
        assert row.commands == sum(inside(ts) for _, _, _, ts, _ in t.commands)


def test_check_metrics(case):
    kind, tr, t = case
    got = metrics(tr)
    assert got["run.span_ms"] == pytest.approx(_ms(t.span))
    for sub, durs in _per_submodule(t).items():
        assert got[f"{sub}.calls"] == len(durs)
        assert got[f"{sub}.mean_ms"] == pytest.approx(_ms(sum(durs) / len(durs)))
    for key in _working(t):
        compute = sum(end - ts for ts, end in t.ops.get(key, []))
        assert got[f"device{key[1]}.compute_ms"] == pytest.approx(_ms(compute))
        assert got[f"device{key[1]}.idle_pct"] == pytest.approx(100 * (t.traced - compute) / t.traced)


def _overlap(a, b, intervals) -> int:
    return sum(max(0, min(b, e) - max(a, s)) for s, e in intervals)


def test_idle(case):
    kind, tr, t = case
    per_device = idle(tr, min_gap_ms=0).set_index(["rank", "device"])
    assert sorted(per_device.index) == sorted(k for k in t.units if k in t.ops)
    for key, ops in t.ops.items():
        row = per_device.loc[key]
        gaps = t.span - sum(e - s for s, e in ops)
        untraced = sum(_overlap(s, e, t.untraced_covered) for s, e in _complement(ops, t.lo, t.hi))
        assert row.untraced_ms == pytest.approx(_ms(untraced))
        assert row.idle_ms == pytest.approx(_ms(gaps - untraced))  # untraced stretches are no idle time
        assert row.idle_pct == pytest.approx(100 * (gaps - untraced) / t.traced)
        last = max(end for u, _, _, _, end in t.invocations if u == key)
        # After its last invocation the device is done (where no untraced stretch comes first).
        assert row.done_ms == pytest.approx(_ms(t.hi - last - _overlap(last, t.hi, t.untraced_covered)))


def _complement(ops, lo, hi):
    out, at = [], lo
    for s, e in ops:
        if s > at:
            out.append((at, s))
        at = max(at, e)
    return out + ([(at, hi)] if hi > at else [])


def test_idle_on_one_rank_names_the_other_rank_that_it_waited_for(traces):
    path, _ = traces["merged"]
    gaps = idle(path, gaps=True, backend="sqlite")
    waits = gaps[(gaps["rank"] == 0) & (gaps.cause == "other_rank")]
    assert len(waits) == 1 and waits.detail.iloc[0] == "text_encoder_3 #0 (rank 1 device 1)"
    assert waits.other_rank_ms.iloc[0] > 0
    assert idle(path, backend="sqlite").set_index("rank").loc[0].other_rank_ms > 0


def test_critical_path(case):
    kind, tr, t = case
    segs = critical_path(tr)
    assert segs.on_path_ms.sum() == pytest.approx(_ms(t.span))
    for row in segs[segs.kind == "gap"].itertuples():  # an untraced stretch is no gap: its own kind
        assert _overlap(row.ts, row.ts + row.on_path_ms * 1e6, t.untraced_covered) == 0
    assert segs[segs.kind == "untraced"].on_path_ms.sum() == pytest.approx(_ms(t.untraced_ns))
    if kind == "merged":  # (the killed rank never sent its outputs back: no flow leads from it)
        elements = critical_path(tr, by="element")
        # rank 1's call is on the path, reached from rank 0's send through the flow to rank 1's recv
        assert ((elements["rank"] == 1) & (elements.kind == "op")).any()
        recv = elements[(elements["rank"] == 1) & elements.name.str.startswith("recv ")]
        assert len(recv) and set(recv.via) == {"flow"}


def test_variance(case):
    _, tr, t = case
    got = variance(tr).set_index("submodule")
    for sub, durs in _per_submodule(t).items():
        assert got.loc[sub].calls == len(durs)
        assert got.loc[sub].mean_ms == pytest.approx(_ms(sum(durs) / len(durs)))
    layers = variance(tr, by="layer")
    assert not layers.layer.str.match(r"^(i[0-9]+_)?[0-9]+_").any()


def test_diff_of_a_trace_with_itself(case):
    _, tr, t = case
    by_sub = diff(tr, tr, by="submodule")
    assert sorted(by_sub.submodule) == sorted(_per_submodule(t)) and set(by_sub.status) == {"both"}
    by_layer = diff(tr, tr, by="layer")
    assert set(zip(by_layer.submodule, by_layer.layer)) == {(s, layer) for _, layer, s, _, _ in t.commands}
    assert set(by_layer.status) == {"both"} and (by_layer.delta_ms == 0).all()
    # by layer the command count is per call of the layer, and says so in its name
    calls = Counter(sub for _, _, sub, _, _ in t.invocations)
    per_call = Counter((sub, layer) for _, layer, sub, _, _ in t.commands)
    assert "base_commands" not in by_layer
    for row in by_layer.itertuples():
        assert row.base_commands_per_call == per_call[(row.submodule, row.layer)] // calls[row.submodule]
    by_op = diff(tr, tr, by="op")
    assert by_op.base_commands.sum() == len(t.commands)  # by op: every command of the run


def test_summary_lines(case):
    _, tr, t = case
    lines = stands_out(tr)
    assert lines and "critical path:" in lines[1] and "not traced" not in lines[1]
    merged = any(r for r, _ in t.units)
    devices = {f"rank {r} device {d}" if merged else f"device {d}" for r, d in t.units}
    assert lines[0].split(" is idle")[0] in devices


def test_a_merged_trace_compares_with_the_single_process_one(traces):
    single, merged = traces["single"][0], traces["merged"][0]
    table = diff(single, merged, by="submodule", backend="sqlite")
    assert set(table.status) == {"both"}
    layers = diff(single, merged, by="layer", backend="sqlite")
    assert set(layers.status) == {"both"}
    assert check(merged, rules=["transformer.mean_ms<=1"], backend="sqlite").ok


def test_a_check_that_checks_nothing_fails(traces):
    path = traces["single"][0]
    with pytest.raises(UsageError, match="nothing to check"):
        check(path, backend="sqlite")
    with pytest.raises(UsageError, match="'vea.\\*' matches no metric of both runs; valid: .*transformer.mean_ms"):
        check(path, baseline=path, max_regression=5, regression_metrics=("vea.*",), backend="sqlite")


def test_the_run_summary_leaves_untraced_stretches_out_of_utilisation():
    stats = RunTotals(devices={0: "cpu"})
    stats.submodules["transformer"].device = 0
    stats.submodules["transformer"].calls = 2
    stats.submodules["transformer"].total_ns = 40
    stats.add_host("tokenize", 0, 10)
    stats.add_untraced(20, 60)
    stats.add_host("postprocess", 90, 100)
    devices, _ = stats.tables()
    assert stats.span_ns == 100
    assert devices.utilisation_pct.iloc[0] == pytest.approx(100 * 40 / (100 - 40))
    stats.add_untraced(30, 70)  # (another rank's stretch over the same steps) counts once where they overlap
    stats.add_untraced(95, 120)  # (and only inside the span)
    assert stats.traced_span_ns == 100 - 50 - 5


def test_the_printed_summary_says_its_utilisation_is_a_share_of_the_traced_span():
    ms = 1_000_000
    stats = RunTotals(devices={0: "cpu"})
    stats.add_host("tokenize", 0, 10 * ms)
    stats.add_untraced(20 * ms, 60 * ms)
    stats.add_host("postprocess", 90 * ms, 100 * ms)
    assert str(Summary(stats)).splitlines()[0] == (
        "run span 100.0 ms, 60.0 ms of it traced (utilisation_pct = busy_ms, the Workload time, as % of the "
        "traced span; 40.0 ms ran untraced)")
    whole = RunTotals(devices={0: "cpu"})
    whole.add_host("tokenize", 0, 10 * ms)
    assert str(Summary(whole)).splitlines()[0] == ("run span 10.0 ms (utilisation_pct = busy_ms, the Workload time, "
                                                   "as % of the span)")


def test_selected_steps_are_the_trace_steps_that_ran(traces):
    _, t = traces["selected"]
    assert len([i for i in t.invocations if i[2] == "transformer"]) == len(SELECTED) < STEPS
    assert Counter(i[2] for i in traces["single"][1].invocations)["transformer"] == STEPS


def test_timeline_plot_has_a_row_per_device_with_its_utilisation(case):
    from rbln_perfetto.analysis.plot import draw_timeline

    _, tr, t = case
    fig = draw_timeline(tr, level="invocations")
    got = sorted(label.get_text() for label in fig.axes[0].get_yticklabels())
    want = []
    for key, unit in _working(t).items():
        busy = sum(end - ts for u, _, _, ts, end in t.invocations if u == key)
        want.append(f"{unit.label}\n{100 * busy / t.traced:.1f}% busy")
    assert got == sorted(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_merged_trace_answers_per_rank_as_each_rank_own_trace_does(traces, backend):
    """Per (rank, device) and per submodule, the merged trace's metrics and variance equal those of the rank's
    own trace (its `rank{r}/aggregate.pb`); only what spans ranks differs: the run span, and the idle share
    of a device whose rank waits for another (rank 0 spans the run, so its idle share agrees too)."""
    merged = traces["merged"][0]
    own = {r: merged.parent / f"rank{r}" / "aggregate.pb" for r in (0, 1)}
    together = metrics(merged, backend=backend)
    apart = {r: metrics(path, backend=backend) for r, path in own.items()}
    spanning = {"run.span_ms", "device1.idle_pct"}
    for name, value in together.items():
        if name in spanning:
            continue
        holders = [r for r in apart if name in apart[r]]
        assert len(holders) == 1, (name, holders)
        assert value == pytest.approx(apart[holders[0]][name]), name
    assert set(together) - spanning == (set(apart[0]) | set(apart[1])) - spanning
    rows = variance(merged, backend=backend).set_index("submodule")
    for path in own.values():
        for sub, row in variance(path, backend=backend).set_index("submodule").iterrows():
            assert rows.loc[sub].calls == row.calls and rows.loc[sub].mean_ms == pytest.approx(row.mean_ms), sub
