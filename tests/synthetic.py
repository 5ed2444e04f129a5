"""Captures written through the real CaptureWriter from arbitrary programs, and the slices they must give."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.contract import CommandSpec, DeviceInfo, PipelineInfo, ProgramInfo, TransferSpec
from rbln_perfetto.recorder.capture import CaptureWriter, iter_records, read_info


def program(submodule, device, commands, inputs=(), outputs=(), weight_bytes=0):
    """commands: (layer, op, command_index, command_count, shapes, bytes, flops, live_bytes) tuples."""
    return ProgramInfo(submodule, device, "cpu", weight_bytes,
                       tuple(TransferSpec(*t) for t in inputs), tuple(CommandSpec(*c) for c in commands),
                       tuple(TransferSpec(*t) for t in outputs))


def write_capture(path: Path, programs, calls, host=(), start_ns=10**12):
    """calls: (program index, gaps) with one gap per boundary; host: (after call index, name, dur, detail)."""
    devices = sorted({p.device for p in programs} | {0})
    info = PipelineInfo("synthetic", {}, tuple(DeviceInfo(d, "cpu", 1 << 34) for d in devices), tuple(programs),
                        {p.submodule: 0 for p in programs}, {p.submodule: True for p in programs})
    writer = CaptureWriter(path, "synthetic")
    pid = writer.pipeline(info, {p.submodule for p in programs})
    ids = [writer.program(p, pid) for p in programs]
    now = start_ns
    for i, (index, gaps) in enumerate(calls):
        ticks = (now + np.concatenate(([0], np.cumsum(np.asarray(gaps, dtype=np.int64))))).tolist()
        writer.invocation(ids[index], ticks)
        now = ticks[-1]
        for after, name, dur, detail in host:
            if after == i:
                writer.host(name, now, now + dur, detail)
                now += dur
    writer.close()
    return path


def expected_slices(capture: Path):
    """(track, device, name, ts, dur, depth) of every slice the aggregate must hold, from the capture alone."""
    info = read_info(capture)
    offset = info.header.clock.boottime_ns - info.header.clock.monotonic_ns
    out = []
    for _, rec in iter_records(capture):
        kind = rec.WhichOneof("kind")
        if kind == "host":
            h = rec.host
            out.append(("Host", 0, h.name, h.start_ns + offset, h.end_ns - h.start_ns, 0))
        if kind != "invocation":
            continue
        r = rec.invocation
        p = info.programs[r.program_id]
        t = (r.start_ns + np.concatenate(([0], np.cumsum(np.asarray(r.durations_ns, dtype=np.int64)))) + offset).tolist()
        d, n_in, n_cmd = p.device, len(p.inputs), len(p.commands)
        out.append(("Workload", d, f"{p.submodule} #{r.call_index}", t[0], t[-1] - t[0], 0))
        for i, x in enumerate(p.inputs):
            out.append(("DMA", d, f"dma {x.name} host -> device {d}", t[i], t[i + 1] - t[i], 0))
        run_start = None
        for c, cmd in enumerate(p.commands):
            prev = p.commands[c - 1] if c else None
            continues = run_start is not None and prev.layer == cmd.layer and \
                prev.command_count == cmd.command_count and cmd.command_index == prev.command_index + 1
            if not continues:
                if run_start is not None:
                    out.append(("Compute", d, p.commands[run_start].layer, t[n_in + run_start],
                                t[n_in + c] - t[n_in + run_start], 0))
                run_start = c if cmd.command_count > 1 and cmd.command_index == 0 else None
            depth = 1 if run_start is not None else 0
            out.append(("Compute", d, f"{r.sequence_index}_{cmd.layer}_{cmd.command_index}", t[n_in + c],
                        t[n_in + c + 1] - t[n_in + c], depth))
        if run_start is not None:
            out.append(("Compute", d, p.commands[run_start].layer, t[n_in + run_start],
                        t[n_in + n_cmd] - t[n_in + run_start], 0))
        for j, x in enumerate(p.outputs):
            k = n_in + n_cmd + j
            out.append(("DMA", d, f"dma {x.name} device {d} -> host", t[k], t[k + 1] - t[k], 0))
    return out
