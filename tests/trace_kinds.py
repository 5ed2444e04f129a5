"""Every kind of trace the project writes, built from captures written through the real capture
writer and exported (and merged) by the real exporter, for `test_trace_kinds`; and what the traces
hold, read back slice by slice (`trace_objects.read_trace`) into plain Python, to compute expected
answers independently of the SQL that every report and analysis runs.

The timeline (in microseconds), as one process runs it; a run split across processes runs
text_encoder_3 on rank 1 (inputs sent to it and its outputs sent back), the rest on rank 0:

    host tokenize, text_encoder #0 (device 0), text_encoder_3 #0 (device 1), then per step a scheduler
    step on the host and transformer #k (device 0), then vae #0 (device 0), then host postprocess.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from analysis_cases import layers_program
from trace_objects import read_trace

import rbln_perfetto
from pipeline.contract import DeviceInfo, PipelineInfo, RankTransfer
from rbln_perfetto.exporter.merge import merge, rank_dir
from rbln_perfetto.naming import CAPTURE_FILE
from rbln_perfetto.recorder.capture import CaptureWriter, iter_records

US = 1000
T0 = 10**12
STEPS = 5
SELECTED = (0, 4)  # the steps a selected run traces: 1..3 run untraced

PROGRAMS = {
    "text_encoder": layers_program("text_encoder", 0, [("embed", 1), ("attn", 2, "bmm"), ("proj", 1)]),
    "text_encoder_3": layers_program("text_encoder_3", 1, [("embed", 1), ("mlp", 3, "matmul")]),
    "transformer": layers_program("transformer", 0, [("blocks.0.attn", 2, "bmm"), ("blocks.0.ff", 1), ("out", 1)]),
    "vae": layers_program("vae", 0, [("conv_in", 1, "conv"), ("up", 2, "conv")]),
}


def _ticks(program, start: int, k: int) -> list[int]:
    """Boundaries of one call of `program` from `start`: DMAs 3 us, commands (4 + k) us, 1 us gaps
    between ops of different layers (so that idle finds gaps inside an invocation)."""
    n_in, n_cmd, n_out = len(program.inputs), len(program.commands), len(program.outputs)
    gaps = [3 * US] * n_in
    for c, cmd in enumerate(program.commands):
        gaps.append((4 + k + c % 3) * US)
    gaps += [3 * US] * n_out
    return (start + np.concatenate(([0], np.cumsum(gaps)))).tolist()


@dataclass
class _Process:
    """One process's capture being written, and the time its host has reached."""

    writer: CaptureWriter
    ids: dict
    now: int = T0
    calls: int = 0


def _pipeline(rank: int, world: int, submodules, profiles=None) -> PipelineInfo:
    """`profiles`: logical device -> its DeviceProfile (none by default, as traces recorded before them)."""
    programs = tuple(PROGRAMS[s] for s in submodules)
    devices = sorted({p.device for p in programs})
    profiles = profiles or {}
    return PipelineInfo("synthetic", {}, tuple(DeviceInfo(d, "cpu", 1 << 34,
                                                          (lambda p=profiles[d]: p) if d in profiles else None)
                                               for d in devices), programs,
                        {p.submodule: 0 for p in programs}, {p.submodule: True for p in programs},
                        rank=rank, world_size=world)


def write_run(out: Path, *, ranks: bool = False, selected: bool = False, unprofiled: str | None = None,
              profiles=None) -> list[Path]:
    """The captures of one run into `out` (`out/rank{r}/` with `ranks`); their paths, rank 0's first.
    `selected`: steps 1..3 run untraced; `unprofiled`: that submodule's calls are not traced."""
    placement = {s: (1 if s == "text_encoder_3" and ranks else 0) for s in PROGRAMS}
    world = 2 if ranks else 1
    procs, paths = [], []
    for rank in range(world):
        directory = rank_dir(out, rank) if ranks else out
        directory.mkdir(parents=True, exist_ok=True)
        paths.append(directory / CAPTURE_FILE)
        writer = CaptureWriter(paths[-1], "synthetic")
        mine = [s for s in PROGRAMS if placement[s] == rank]
        info = _pipeline(rank, world, mine, profiles)
        profiled = {s for s in mine if s != unprofiled}
        pid = writer.pipeline(info, profiled)
        procs.append(_Process(writer, {s: writer.program(PROGRAMS[s], pid) for s in mine if s in profiled}))
        if rank:
            writer.clock_sync("start", rank, 0, 2 * US, 4 * US)
    host = procs[0]
    flow = iter(range(1, 100))

    def call(submodule: str, k: int = 0):
        rank = placement[submodule]
        p = procs[rank]
        if rank:  # rank 0 sends the inputs, rank 1 receives them, runs the call and sends its outputs back
            sent = next(flow)
            end = host.now + 2 * US
            host.writer.transfer(RankTransfer(submodule, "send", rank, 0, ("x",), 64, host.now, end, sent))
            p.now = max(p.now, host.now + 1 * US)
            p.writer.transfer(RankTransfer(submodule, "recv", 0, 1, ("x",), 64, p.now, p.now + 3 * US, sent))
            p.now += 3 * US
        if submodule == unprofiled:
            p.writer.skip(submodule)
            p.now += 40 * US
        else:
            ticks = _ticks(PROGRAMS[submodule], p.now, k)
            p.writer.invocation(p.ids[submodule], ticks)
            p.now = ticks[-1]
        for other in procs:
            if other is not p:
                other.writer.elsewhere(1)
        if rank:
            back = next(flow)
            p.writer.transfer(RankTransfer(submodule, "send", 0, 1, ("y",), 64, p.now, p.now + 2 * US, back))
            start = p.now + 1 * US  # rank 0 waited for it since its send
            host.writer.transfer(RankTransfer(submodule, "recv", rank, 0, ("y",), 64, start, start + 3 * US, back))
            host.now = start + 3 * US
        else:
            host.now = p.now

    def on_host(name: str, dur_us: int):
        host.writer.host(name, host.now, host.now + dur_us * US)
        host.now += dur_us * US

    on_host("tokenize", 10)
    range_start = host.now
    call("text_encoder")
    call("text_encoder_3")
    host.writer.range("encode", range_start, host.now, [])
    untraced_from = None
    for step in range(STEPS):
        if selected and step not in SELECTED:
            if untraced_from is None:
                untraced_from = (host.now, host.writer.next_sequence_index, step)
            host.writer.skip("transformer")
            host.now += 50 * US
            continue
        if untraced_from is not None:
            start, first_seq, first_step = untraced_from
            host.writer.untraced("steps", first_step, step - 1, 0, start, host.now, first_seq,
                                 host.writer.next_sequence_index)
            if ranks:  # rank 1 left the same stretch untraced (a selection of calls does on every rank)
                procs[1].writer.untraced("calls", first_step, step - 1, 1, start + 1 * US, host.now - 1 * US,
                                         procs[1].writer.next_sequence_index, procs[1].writer.next_sequence_index)
            untraced_from = None
        on_host("scheduler step", 5)
        call("transformer", step)
    call("vae")
    on_host("postprocess", 8)
    for rank, p in enumerate(procs):
        if rank:
            p.writer.clock_sync("end", rank, 0, 2 * US, 4 * US)
        p.writer.close()
    return paths


def cut_short(capture: Path) -> None:
    """Leave `capture` as a process killed right after its last invocation leaves it: nothing after."""
    offsets = [(offset, r.WhichOneof("kind")) for offset, r in iter_records(capture)]
    last = max(i for i, (_, kind) in enumerate(offsets) if kind == "invocation")
    with open(capture, "r+b") as f:
        f.truncate(offsets[last + 1][0])


KINDS = ("single", "selected", "unprofiled", "merged", "merged_selected", "merged_killed", "reexported",
         "invocation_file")


def build(root: Path, kind: str, profiles=None) -> Path:
    """The trace file of `kind` (one of KINDS), written under `root`; `profiles`: device -> DeviceProfile."""
    out = root / kind
    if kind in ("merged", "merged_selected", "merged_killed"):
        captures = write_run(out, ranks=True, selected=kind == "merged_selected", profiles=profiles)
        for capture in captures:
            rbln_perfetto.export(capture, capture.parent)
        if kind == "merged_killed":
            cut_short(captures[1])
            for pb in captures[1].parent.glob("*.pb"):
                pb.unlink()  # the killed rank left no traces; merge exports what its capture holds
        return merge(out).aggregate_file
    if kind == "reexported":
        first = build(root, "single", profiles).parent
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / CAPTURE_FILE, out / CAPTURE_FILE)
        return rbln_perfetto.export(out / CAPTURE_FILE, out).aggregate_file
    if kind == "invocation_file":
        files = rbln_perfetto.export(write_run(out, profiles=profiles)[0], out).invocation_files
        return next(f for f in files if f.name.endswith("_transformer_1.pb"))
    if (root / kind / "aggregate.pb").is_file():
        return root / kind / "aggregate.pb"
    unprofiled = "text_encoder_3" if kind == "unprofiled" else None
    capture = write_run(out, selected=kind == "selected", unprofiled=unprofiled, profiles=profiles)[0]
    return rbln_perfetto.export(capture, out).aggregate_file


@dataclass
class Unit:
    rank: int
    device: int
    label: str  # the top-level track's name
    tracks: dict = field(default_factory=dict)  # category -> list of slices


@dataclass
class Truth:
    """What a trace holds, computed here from its slices (no SQL)."""

    units: dict  # (rank, device) -> Unit
    invocations: list  # (unit, own name, submodule, ts, end)
    untraced: list  # (ts, end)
    commands: list  # (unit, own layer, submodule, ts, dur)
    ops: dict  # unit -> sorted [(ts, end)]
    dmas: list  # (unit, slice)
    host: list  # (ts, end)
    flows: list
    ranges: list  # slices of the Ranges track
    lo: int = 0
    hi: int = 0

    @property
    def span(self) -> int:
        return self.hi - self.lo

    @property
    def untraced_covered(self) -> list:
        """The untraced stretches inside the span as disjoint (ts, end), sorted: overlapping ones joined."""
        covered: list = []
        for s, e in sorted((max(s, self.lo), min(e, self.hi)) for s, e in self.untraced):
            if e <= s:
                continue
            if covered and s <= covered[-1][1]:
                covered[-1] = (covered[-1][0], max(covered[-1][1], e))
            else:
                covered.append((s, e))
        return covered

    @property
    def untraced_ns(self) -> int:
        """Of the span, the time inside some untraced stretch (each moment once where stretches overlap)."""
        return sum(e - s for s, e in self.untraced_covered)

    @property
    def traced(self) -> int:
        return self.span - self.untraced_ns


def truth(path: Path) -> Truth:
    data = read_trace(path)
    tracks = data.tracks
    units: dict = {}
    category = {}
    for uuid, t in tracks.items():
        parent = tracks.get(t.parent_uuid) if t.parent_uuid is not None else None
        if parent is None or t.name not in ("Workload", "Host", "Compute", "DMA"):
            continue
        head, _, dev = parent.name.rpartition("Device ")
        rank = int(head.split()[1]) if head.startswith("Rank ") else 0
        key = (rank, int(dev))
        units.setdefault(key, Unit(rank, int(dev), parent.name))
        category[uuid] = (t.name, key, f"i{rank}_" if head else "")
    inv, skipped, commands, dmas, host, ranges = [], [], [], [], [], []
    ops: dict = {}
    by_id = {s.id: s for s in data.slices}
    for s in data.slices:
        if tracks[s.track_uuid].name == "Ranges":
            ranges.append(s)
        if s.track_uuid not in category:
            continue
        cat, key, prefix = category[s.track_uuid]
        assert s.name.startswith(prefix)
        name = s.name[len(prefix):]
        args = {k.removeprefix("debug."): v for k, v in s.args.items()}
        if cat == "Workload" and s.depth == 0:
            if "untraced" in args:
                skipped.append((s.ts, s.ts + s.dur))
            else:
                inv.append((key, name, args["submodule"], s.ts, s.ts + s.dur))
        elif cat == "Host":
            host.append((s.ts, s.ts + s.dur))
        elif cat == "DMA":
            dmas.append((key, s))
        elif cat == "Compute":
            if s.depth == 0:
                ops.setdefault(key, []).append((s.ts, s.ts + s.dur))
            if "command_index" in args:
                rest = name.partition("_")[2]
                layer = rest.rsplit("_", 1)[0]
                if s.parent_id is not None:
                    assert by_id[s.parent_id].name == s.name[:len(prefix)] + layer
                commands.append((key, layer, args["submodule"], s.ts, s.dur))
    edges = [(ts, end) for _, _, _, ts, end in inv] + host
    out = Truth(units, inv, skipped, commands, {k: sorted(v) for k, v in ops.items()}, dmas, host, data.flows, ranges)
    out.lo, out.hi = min(e[0] for e in edges), max(e[1] for e in edges)
    return out
