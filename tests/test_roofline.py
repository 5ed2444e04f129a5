"""The roofline (`analysis.roofline`, `report roofline`, `plot --roofline`) on every kind of trace the
project writes (single process, selected steps, an unprofiled submodule, merged 2-rank, merged with a
killed rank, re-exported, a per-invocation file), against answers computed here in Python from the
trace's slices (durations and the `flops` / `bytes` args, read without SQL) and the device profiles the
captures were written with (not read back from the trace)."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np
import pytest
from trace_kinds import KINDS, PROGRAMS, build
from trace_objects import read_trace

from pipeline.contract import DeviceProfile
from rbln_perfetto.analysis.roofline import (OVERHEAD_EFFICIENCY, bound_of, device_profiles, draw_roofline,
                                             roofline)
from rbln_perfetto.errors import UsageError
from rbln_perfetto.query import open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])

# Device 0's roofs put the synthetic commands (1000 flops, 1024 bytes, 4-8 us) near the memory roof
# (5.12 us) or, in PROFILES_B, the compute roof (5 us); device 1's far below both (overhead).
PROFILES_A = {0: DeviceProfile(1e10, 2e8, 1 << 34, "float32", "given", "slow memory"),
              1: DeviceProfile(1e10, 1e10, 1 << 33, "float32", "measured", "fast")}
PROFILES_B = {0: DeviceProfile(2e8, 1e10, 1 << 34, "float16", "given", "slow compute"),
              1: DeviceProfile(1e10, 1e10, 1 << 33, "float16", "measured", "fast")}
SETS = {"A": PROFILES_A, "B": PROFILES_B}


@pytest.fixture(scope="session")
def roofline_traces(tmp_path_factory):
    """{(profile set, kind): trace file}, and the kinds without profiles under set None."""
    root = tmp_path_factory.mktemp("roofline_kinds")
    out = {}
    for name, profiles in SETS.items():
        for kind in KINDS:
            out[name, kind] = build(root / name, kind, profiles)
    for kind in ("single", "merged"):
        out[None, kind] = build(root / "none", kind)
    return out


def expected(path, profiles, keys):
    """Per group of `keys` (from unit, rank, device, submodule, layer, op, command_index): the sums and
    roofline numbers of its commands, computed from the slices alone."""
    data = read_trace(path)
    tracks = data.tracks
    groups = defaultdict(lambda: defaultdict(float))
    for s in data.slices:
        track = tracks[s.track_uuid]
        parent = tracks.get(track.parent_uuid) if track.parent_uuid is not None else None
        if parent is None or track.name != "Compute" or "debug.command_index" not in s.args:
            continue
        head, _, dev = parent.name.rpartition("Device ")
        rank = int(head.split()[1]) if head.startswith("Rank ") else 0
        name = s.name.removeprefix(f"i{rank}_") if head else s.name
        index = s.args["debug.command_index"]
        layer = name.partition("_")[2].removesuffix(f"_{index}")
        row = {"rank": rank, "device": int(dev), "submodule": s.args["debug.submodule"], "layer": layer,
               "op": s.args["debug.op"], "command_index": index}
        flops, nbytes = s.args["debug.flops"], s.args["debug.bytes"]
        p = profiles.get(int(dev)) if profiles else None
        g = groups[tuple(row[k] for k in keys)]
        g["commands"] += 1
        g["dur"] += s.dur
        g["flops"] += flops
        g["bytes"] += nbytes
        if p is not None:
            roof = 1e9 * max(flops / p.peak_flops_per_s, nbytes / p.mem_bandwidth_bytes_per_s)
            g["roof"] += roof
            g["above"] += max(0.0, s.dur - roof)
            g["compute_s"] += flops / p.peak_flops_per_s
            g["memory_s"] += nbytes / p.mem_bandwidth_bytes_per_s
            g["peak"], g["bw"] = p.peak_flops_per_s, p.mem_bandwidth_bytes_per_s
        else:
            g["roof"] = g["above"] = math.nan
    return groups


def _label(rank, device, merged):
    return f"rank {rank} device {device}" if merged else f"device {device}"


CASES = [(s, kind, b) for s in SETS for kind in KINDS for b in BACKENDS]


@pytest.mark.parametrize("profile_set,kind,backend", CASES, ids=[f"{s}-{k}-{b}" for s, k, b in CASES])
def test_roofline_per_layer_and_submodule_matches_the_slices(roofline_traces, profile_set, kind, backend):
    path = roofline_traces[profile_set, kind]
    profiles = SETS[profile_set]
    merged = kind.startswith("merged")
    with open_trace(path, backend=backend) as tr:
        for by, keys in (("layer", ("rank", "device", "submodule", "layer", "op")),
                         ("submodule", ("rank", "device", "submodule")),
                         ("command", ("rank", "device", "submodule", "layer", "op", "command_index")),
                         ("device", ("rank", "device"))):
            table = roofline(tr, by=by)
            want = expected(path, profiles, keys)
            assert len(table) == len(want) > 0
            total_above = sum(g["above"] for g in want.values())
            got = {}
            for r in table.itertuples():
                key = [r.device] + [getattr(r, k) for k in keys[2:]]
                got[tuple(key)] = r
            for key, g in want.items():
                r = got[(_label(key[0], key[1], merged), *key[2:])]
                assert r.commands == g["commands"]
                assert r.flops == g["flops"] and r.bytes == g["bytes"]
                assert r.time_ms == pytest.approx(g["dur"] / 1e6)
                assert r.roofline_ms == pytest.approx(g["roof"] / 1e6)
                assert r.above_roof_ms == pytest.approx(g["above"] / 1e6, abs=1e-12)
                assert r.above_roof_pct == pytest.approx(100 * g["above"] / total_above)
                assert r.gflop_per_s == pytest.approx(g["flops"] / g["dur"])  # FLOP/ns = GFLOP/s
                assert r.gb_per_s == pytest.approx(g["bytes"] / g["dur"])
                assert r.intensity == pytest.approx(g["flops"] / g["bytes"])
                assert r.mfu_pct == pytest.approx(100 * g["flops"] / (g["dur"] / 1e9) / g["peak"])
                assert r.mbu_pct == pytest.approx(100 * g["bytes"] / (g["dur"] / 1e9) / g["bw"])
                assert r.roof_pct == pytest.approx(100 * g["roof"] / g["dur"])
                bound = ("overhead" if g["roof"] < OVERHEAD_EFFICIENCY * g["dur"] else
                         "compute" if g["compute_s"] >= g["memory_s"] else "memory")
                assert r.bound == bound, key
            # Ranked by time above the roof: the first row is where the most time is lost.
            assert list(table.above_roof_ms) == sorted(table.above_roof_ms, reverse=True)
            assert table.above_roof_ms.iloc[0] == pytest.approx(max(g["above"] for g in want.values()) / 1e6)


def test_the_profile_sets_give_every_bound(roofline_traces):
    """The cases above are not all one label: memory, compute and overhead each occur."""
    seen = set()
    for s in SETS:
        seen |= set(roofline(roofline_traces[s, "single"], by="command").bound)
    assert {"memory", "compute", "overhead"} <= seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["single", "merged", "invocation_file"])
def test_device_profiles_read_back_as_recorded(roofline_traces, kind, backend):
    path = roofline_traces["A", kind]
    with open_trace(path, backend=backend) as tr:
        table = device_profiles(tr)
    merged = kind == "merged"
    # Each rank's Run slice holds its own devices; a per-invocation file, those of its capture.
    want = {(1 if merged and d == 1 else 0, d): p for d, p in PROFILES_A.items()}
    assert {(r.rank, r.device) for r in table.itertuples()} == set(want)
    for r in table.itertuples():
        p = want[r.rank, r.device]
        assert (r.source, r.dtype, r.label) == (p.source, p.dtype, p.label)
        assert float(r.peak_flops_per_s) == p.peak_flops_per_s
        assert float(r.mem_bandwidth_bytes_per_s) == p.mem_bandwidth_bytes_per_s
        assert int(r.capacity_bytes) == p.capacity_bytes


@pytest.mark.parametrize("kind", ["single", "merged"])
def test_a_trace_without_profiles_still_gets_rates_and_no_roof(roofline_traces, kind):
    path = roofline_traces[None, kind]
    assert device_profiles(path).empty
    table = roofline(path, by="submodule")
    want = expected(path, None, ("rank", "device", "submodule"))
    assert len(table) == len(want)
    assert set(table.bound) == {"unknown"}
    assert table.roofline_ms.isna().all() and table.mfu_pct.isna().all()
    assert (table.gflop_per_s > 0).all() and (table.intensity > 0).all()
    # Ranked by time where there is no roof.
    assert list(table.time_ms) == sorted(table.time_ms, reverse=True)


def test_the_synthetic_commands_cost_what_their_programs_say(roofline_traces):
    """The flops and bytes the roofline reads are the captured programs' (independent of the trace)."""
    table = roofline(roofline_traces["A", "single"], by="command")
    programs = {(p.submodule, c.layer, c.command_index): (c.flops, c.bytes) for p in PROGRAMS.values()
                for c in p.commands}
    for r in table.itertuples():
        flops, nbytes = programs[r.submodule, r.layer, r.command_index]
        assert r.flops == flops * r.commands and r.bytes == nbytes * r.commands


def test_bound_rule():
    # 1000 flops, 1000 bytes on 1e12 FLOP/s, 1e9 B/s: roofs 1 ns and 1000 ns.
    assert bound_of(1000, 1000, 1500, 1000, 1e12, 1e9) == "memory"
    assert bound_of(1000, 1000, 1500, 1000, 1e9, 1e12) == "compute"
    assert bound_of(1000, 1000, 20_000, 1000, 1e9, 1e12) == "overhead"  # roof 5% of the time
    assert bound_of(1000, 1000, 10_000, 1000, 1e9, 1e12) == "compute"  # exactly 10%: not overhead
    assert bound_of(1000, 1000, 1500, float("nan"), float("nan"), float("nan")) == "unknown"
    labels = bound_of(np.array([1000, 1000]), np.array([1000, 1000]), np.array([1500, 20_000]),
                      np.array([1000, 1000]), np.array([1e9, 1e9]), np.array([1e12, 1e12]))
    assert list(labels) == ["compute", "overhead"]


def test_bad_by_names_the_choices(roofline_traces):
    with pytest.raises(UsageError, match=r"by='op' is not valid; valid: layer, command, submodule, device$"):
        roofline(roofline_traces["A", "single"], by="op")


def test_roofline_plot_has_a_point_per_layer_and_a_roof_per_device(roofline_traces):
    path = roofline_traces["A", "merged"]
    fig = draw_roofline(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    table = roofline(path, by="layer")
    points = {c.get_gid(): len(c.get_offsets()) for c in ax.collections if (c.get_gid() or "").startswith("layers:")}
    assert points == {f"layers:{s}": n for s, n in table.groupby("submodule").size().items()}
    roofs = sorted(line.get_gid() for line in ax.lines if (line.get_gid() or "").startswith("roof:"))
    assert roofs == ["roof:rank 0 device 0", "roof:rank 1 device 1"]
    # Each roof is min(peak, intensity x bandwidth) of its device's profile.
    for line in ax.lines:
        p = PROFILES_A[0 if line.get_gid().endswith("device 0") else 1]
        x, y = line.get_data()
        assert np.allclose(y, np.minimum(p.peak_flops_per_s, np.asarray(x) * p.mem_bandwidth_bytes_per_s))
    # Point sizes grow with the layer's time.
    for c in ax.collections:
        sub = c.get_gid().removeprefix("layers:")
        mine = table[table.submodule == sub]
        order = np.argsort(mine.time_ms.to_numpy(), kind="stable")
        assert list(np.diff(c.get_sizes()[order]) >= 0) == [True] * (len(order) - 1)


def test_report_roofline_and_plot_from_the_command_line(roofline_traces, tmp_path, capsys):
    import io

    import pandas as pd

    from rbln_perfetto.cli import main

    path = roofline_traces["A", "merged"]
    assert main(["report", "roofline", str(path), "--by", "submodule", "--csv"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    table = roofline(path, by="submodule")
    assert list(printed.columns) == list(table.columns)
    assert list(printed.submodule) == list(table.submodule)
    assert printed.above_roof_ms.tolist() == pytest.approx(table.above_roof_ms.tolist())
    assert main(["report", "roofline", str(path), "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert len([line for line in text.splitlines() if line.startswith("rank ")]) == 2 + len(PROFILES_A)
    assert "rank 1 device 1: measured profile" in text and "rank 0 device 0: given profile" in text
    assert "bound: overhead when the roofline time is under 10% of the time" in text
    assert main(["report", "roofline", str(path), "--by", "op"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rbln-perfetto report: error: by='op' is not valid; valid: layer, command, submodule, device"]
    out = tmp_path / "roofline.png"
    assert main(["plot", str(path), "--roofline", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_commands_without_flops_and_bytes_args_are_timed_but_not_costed(tmp_path):
    from analysis_cases import fork_join_trace

    from rbln_perfetto.errors import PlotError

    path = fork_join_trace(tmp_path / "fork_join.pb")  # another writer's trace: commands carry no flops or bytes
    table = roofline(path, by="submodule")
    assert dict(zip(table.submodule, table.time_ms)) == pytest.approx({"text_encoder": 0.088, "text_encoder_3": 0.073})
    assert table.flops.isna().all() and table.roofline_ms.isna().all() and set(table.bound) == {"unknown"}
    with pytest.raises(PlotError, match="has no command with flops and bytes to plot"):
        draw_roofline(path)


@pytest.mark.parametrize("profile_set,kind,backend", CASES, ids=[f"{s}-{k}-{b}" for s, k, b in CASES])
def test_the_sql_package_module_gives_each_command_the_same_roofline(roofline_traces, profile_set, kind, backend):
    """`rbln.roofline` (the PerfettoSQL package): per command, the roofline time, the time above the roof
    and the bound of the module's rule, as computed here from the slices; summed, the report's rows."""
    path = roofline_traces[profile_set, kind]
    profiles = SETS[profile_set]
    with open_trace(path, backend=backend) as tr:
        rows = tr.query("INCLUDE PERFETTO MODULE rbln.roofline; SELECT * FROM rbln_command_roofline")
        roofs = tr.query("INCLUDE PERFETTO MODULE rbln.roofline; SELECT * FROM rbln_device_roofs")
        table = roofline(tr, by="command")
    assert {(r.device, r.source, r.peak_flops_per_s, r.mem_bandwidth_bytes_per_s) for r in roofs.itertuples()} == {
        (d, p.source, p.peak_flops_per_s, p.mem_bandwidth_bytes_per_s) for d, p in profiles.items()
        if (roofs.device == d).any()}
    assert len(rows) == table.commands.sum()
    for r in rows.itertuples():
        p = profiles[r.device]
        roof = 1e9 * max(r.flops / p.peak_flops_per_s, r.bytes / p.mem_bandwidth_bytes_per_s)
        assert r.roofline_dur == pytest.approx(roof)
        assert r.above_roof_dur == pytest.approx(max(0.0, r.dur - roof), abs=1e-9)
        assert r.bound == bound_of(r.flops, r.bytes, r.dur, roof, p.peak_flops_per_s, p.mem_bandwidth_bytes_per_s)
    merged = kind.startswith("merged")
    sums = rows.groupby(["rank", "device", "submodule", "layer", "op", "command_index"]).agg(
        roofline=("roofline_dur", "sum"), above=("above_roof_dur", "sum")).reset_index()
    got = {(r.device, r.submodule, r.layer, r.op, r.command_index): r for r in table.itertuples()}
    for r in sums.itertuples():
        row = got[_label(r.rank, r.device, merged), r.submodule, r.layer, r.op, r.command_index]
        assert row.roofline_ms == pytest.approx(r.roofline / 1e6)
        assert row.above_roof_ms == pytest.approx(r.above / 1e6, abs=1e-12)


def test_the_sql_package_module_without_profiles(roofline_traces):
    with open_trace(roofline_traces[None, "merged"], backend="sqlite") as tr:
        roofs = tr.query("INCLUDE PERFETTO MODULE rbln.roofline; SELECT * FROM rbln_device_roofs")
        rows = tr.query("INCLUDE PERFETTO MODULE rbln.roofline; SELECT * FROM rbln_command_roofline")
    assert sorted(zip(roofs["rank"], roofs.device)) == [(0, 0), (1, 1)] and roofs.source.isna().all()
    assert set(rows.bound) == {"unknown"} and rows.roofline_dur.isna().all() and len(rows) > 0
