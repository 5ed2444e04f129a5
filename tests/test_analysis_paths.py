"""Idle time and the critical path: on a hand-built trace whose answers are known by construction
(device 0 waits for device 1 through a cross-device flow), on a profiled device-split run checked
against its capture, and the critical-path overlay loaded back by both backends."""

import os
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from analysis_cases import BASE_NS, FORK_JOIN_GAPS, FORK_JOIN_PATH, SPAN_US, US, fork_join_trace

from rbln_perfetto.analysis import critical_path, idle, write_overlay
from rbln_perfetto.analysis.idle import CAUSES
from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.query import open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])


@pytest.fixture(scope="module")
def fork_join(tmp_path_factory):
    return fork_join_trace(tmp_path_factory.mktemp("fork-join") / "trace.pb")


@pytest.fixture(scope="module")
def profiled(shared_run):
    return shared_run({"text_encoder_3": {"device": 1}, "command_budget": "64KiB"}, steps=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_idle_gaps_of_the_fork_join_trace(fork_join, backend):
    gaps = idle(fork_join, gaps=True, backend=backend)
    got = defaultdict(list)
    for g in gaps.itertuples(index=False):
        got[g.device].append((g.kind, g.start_ms, g.start_ms + g.dur_ms, {c: getattr(g, f"{c}_ms") for c in CAUSES},
                              g.cause, g.detail))
    assert set(got) == set(FORK_JOIN_GAPS)
    for device, expected in FORK_JOIN_GAPS.items():
        assert len(got[device]) == len(expected)
        for (kind, start, end, causes, cause, detail), want in zip(got[device], expected):
            w_kind, w_start, w_end, w_causes, w_cause, w_detail = want
            assert (kind, cause, detail) == (w_kind, w_cause, w_detail)
            assert start == pytest.approx(w_start * US / 1e6) and end == pytest.approx(w_end * US / 1e6)
            assert causes == pytest.approx({c: w_causes.get(c, 0) * US / 1e6 for c in CAUSES})

    per_device = idle(fork_join, backend=backend).set_index("device")
    for device, expected in FORK_JOIN_GAPS.items():
        row = per_device.loc[device]
        durations = [(end - start) * US / 1e6 for _, start, end, *_ in expected]
        assert row.gaps == len(expected)
        assert row.idle_ms == pytest.approx(sum(durations))
        assert row.idle_pct == pytest.approx(100 * sum(durations) / (SPAN_US * US / 1e6))
        assert row.median_ms == pytest.approx(float(np.median(durations)))
        assert row.max_ms == pytest.approx(max(durations))
        for c in CAUSES:
            assert getattr(row, f"{c}_ms") == pytest.approx(sum(e[3].get(c, 0) for e in expected) * US / 1e6)
    # Device 0 waits mostly for device 1; device 1 is mostly done (after its last invocation).
    assert per_device.main_cause.to_dict() == {0: "other_device: text_encoder_3 #0 (device 1)", 1: "done"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_critical_path_of_the_fork_join_trace_follows_host_order_and_the_flow(fork_join, backend):
    path = critical_path(fork_join, backend=backend)
    got = [(r.kind, None if pd.isna(r.device) else int(r.device), r.name, r.start_ms, r.on_path_ms, r.elements, r.via)
           for r in path.itertuples(index=False)]
    want = [(k, d, n, start * US / 1e6, on * US / 1e6, e, via) for k, d, n, start, on, e, via in FORK_JOIN_PATH]
    assert [g[:3] + g[5:] for g in got] == [w[:3] + w[5:] for w in want]
    assert [x for g in got for x in g[3:5]] == pytest.approx([x for w in want for x in w[3:5]])
    assert path.ts.tolist() == [BASE_NS + start * US for _, _, _, start, *_ in FORK_JOIN_PATH]
    assert path.share_pct.sum() == pytest.approx(100.0)
    # device 0's first command (1_a_0) is not on the path: device 0 waited for device 1's transfer.
    elements = critical_path(fork_join, by="element", backend=backend)
    assert "1_a_0" not in set(elements.name)
    assert elements[elements.kind != "gap"].name.tolist() == [
        "tokenize", "dma t host -> device 1", "c", "dma t2 device 1 -> device 0", "1_b_0",
        "dma y device 0 -> host", "postprocess"]
    assert elements.on_path_ms.sum() == pytest.approx(SPAN_US * US / 1e6)
    layers = critical_path(fork_join, by="layer", backend=backend)
    assert [(r.kind, r.submodule, r.name, r.elements) for r in layers.head(2).itertuples()] == [
        ("op", "text_encoder_3", "c", 1), ("op", "text_encoder", "b", 1)]  # c: 33 + 40 us, b: 70 us
    assert layers.on_path_ms.head(2).tolist() == pytest.approx([73 * US / 1e6, 70 * US / 1e6])
    assert layers.on_path_ms.sum() == pytest.approx(SPAN_US * US / 1e6)


def _capture_timeline(capture):
    """From the capture alone: per device the command durations, and the run's items in time order
    as (kind, name, start, end) (host work and invocations)."""
    info = read_info(capture)
    commands, items = defaultdict(int), []
    offset = info.header.clock.boottime_ns - info.header.clock.monotonic_ns
    for _, rec in iter_records(capture):
        kind = rec.WhichOneof("kind")
        if kind == "host":
            items.append(("host", rec.host.name, rec.host.start_ns + offset, rec.host.end_ns + offset))
        elif kind == "invocation":
            r = rec.invocation
            p = info.programs[r.program_id]
            ticks = r.start_ns + np.concatenate(([0], np.cumsum(r.durations_ns))) + offset
            n_in, n_cmd = len(p.inputs), len(p.commands)
            commands[p.device] += int(ticks[n_in + n_cmd] - ticks[n_in])
            items.append(("invocation", f"{p.submodule} #{r.call_index}", int(ticks[0]), int(ticks[-1])))
    return commands, sorted(items, key=lambda i: (i[2], i[3]))


def test_profiled_run_idle_and_critical_path_match_the_capture(profiled):
    compute, items = _capture_timeline(profiled.capture_file)
    start, end = min(i[2] for i in items), max(i[3] for i in items)
    with open_trace(profiled.aggregate_file, backend="sqlite") as tr:
        gaps = idle(tr, min_gap_ms=0, gaps=True)
        per_device = idle(tr, min_gap_ms=0).set_index("device")
        path = critical_path(tr)
    # Idle = the span less the device's commands (they run back to back inside an invocation).
    for device, busy in compute.items():
        assert per_device.loc[device].idle_ms == pytest.approx((end - start - busy) / 1e6, abs=1e-6)
    assert (gaps[[f"{c}_ms" for c in CAUSES]].sum(axis=1) - gaps.dur_ms).abs().max() < 1e-9
    # Device 1 (text_encoder_3 only) waits on device 0 between its two calls; after its last one no other
    # device's work is its cause.
    last = gaps[gaps.device == 1].iloc[-1]
    assert last.kind == "after last command" and last.other_device_ms == 0
    assert (gaps[(gaps.device == 1) & (gaps.kind == "between invocations")].other_device_ms > 0).all()
    # The pipeline calls everything one after another, so the path is every host event and
    # invocation in run order, each whole, and the gaps between them.
    work = path[path.kind != "gap"]
    assert [(r.kind, r.name) for r in work.itertuples()] == [(k, n) for k, n, _, _ in items]
    assert work.on_path_ms.tolist() == pytest.approx([(e - s) / 1e6 for _, _, s, e in items], abs=1e-9)
    assert path.on_path_ms.sum() == pytest.approx((end - start) / 1e6, abs=1e-6)
    assert set(work.via[1:]) <= {"host order", "program order"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlay_adds_a_critical_path_track_that_both_backends_read(fork_join, tmp_path, backend):
    out = write_overlay(fork_join, tmp_path / "overlay.pb")
    assert out.read_bytes().startswith(fork_join.read_bytes())
    with open_trace(out, backend=backend) as tr, open_trace(fork_join, backend=backend) as orig:
        slices = tr.query("select s.ts, s.dur, s.name, extract_arg(s.arg_set_id, 'debug.share_pct') as share "
                          "from slice s join track t on s.track_id = t.id where t.name = 'Critical path' order by s.ts")
        assert len(tr.query("select * from slice")) == len(orig.query("select * from slice")) + len(FORK_JOIN_PATH)
        assert tr.query("select count(*) as n from stats where severity in ('error', 'data_loss') and value > 0").n[0] == 0
    labels = [n if k != "invocation" else f"{n} (device {d})" for k, d, n, *_ in FORK_JOIN_PATH]
    assert slices.name.tolist() == labels
    assert slices.ts.tolist() == [BASE_NS + s * US for _, _, _, s, *_ in FORK_JOIN_PATH]
    assert slices.dur.tolist() == [on * US for _, _, _, _, on, *_ in FORK_JOIN_PATH]
    assert slices.share.sum() == pytest.approx(100.0)
    # The path of the overlay is the path of the original: the added track is no work.
    assert critical_path(out, backend=backend).equals(critical_path(fork_join, backend=backend))


def test_overlay_of_a_profiled_run(profiled, tmp_path):
    out = write_overlay(profiled.aggregate_file, tmp_path / "overlay.pb")
    with open_trace(out, backend="sqlite") as tr:
        got = tr.query("select sum(s.dur) as ns, count(*) as n from slice s join track t on s.track_id = t.id "
                       "where t.name = 'Critical path'")
    path = critical_path(profiled.aggregate_file, backend="sqlite")
    assert got.n[0] == len(path)
    assert got.ns[0] == round(path.on_path_ms.sum() * 1e6)
