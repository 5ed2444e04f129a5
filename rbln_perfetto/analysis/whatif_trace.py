"""The predicted run of a what-if (`whatif.predict`) as a trace file: one track group per unit with its
Workload, Host, Compute and DMA tracks, named and given args as the exporter names them, so that `diff`,
the reports and the UI read it as they read a profiled run; its Run slice says it is a prediction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..errors import UsageError
from ..exporter.slice_packets import annotation, boottime_slice_packets
from ..proto_bytes import SEQ_CLEARED, SEQ_NEEDS_STATE
from ..query.trace_model import RANK_STRIDE, unit_device, unit_rank
from .overlay import write_atomically
from .whatif import DMA, HOST, UNTRACED, Prediction

WHATIF_SEQUENCE_ID = 0x5749_4600  # a sequence of its own ("WIF")
_TRACK_BASE = 0x5749_0000


def _tracks(units: list[int], merged: bool) -> tuple[bytes, dict, int]:
    """(the packets of the track descriptors, {(unit, category): track uuid}, the Run track's uuid): one
    group per unit, named as the exporter names it, with its Workload, Host, Compute and DMA tracks."""
    descriptors = []
    uuid: dict[tuple[int, str], int] = {}
    for k, u in enumerate(units):
        group = _TRACK_BASE + 16 * k
        name = f"Rank {unit_rank(u)} / Device {unit_device(u)}" if merged else f"Device {unit_device(u)}"
        descriptors.append(pt.TrackDescriptor(uuid=group, name=name, description="predicted by rbln-perfetto whatif"))
        for j, category in enumerate(("Workload", "Host", "Compute", "DMA")):
            uuid[(u, category)] = group + 1 + j
            descriptors.append(pt.TrackDescriptor(uuid=group + 1 + j, name=category, parent_uuid=group))
    run_uuid = _TRACK_BASE + 16 * len(units)
    descriptors.append(pt.TrackDescriptor(uuid=run_uuid, name="Run"))
    out = b"".join(pt.Trace(packet=[pt.TracePacket(trusted_packet_sequence_id=WHATIF_SEQUENCE_ID,
                                                   sequence_flags=SEQ_CLEARED if i == 0 else SEQ_NEEDS_STATE,
                                                   track_descriptor=t)]).SerializeToString()
                   for i, t in enumerate(descriptors))
    return out, uuid, run_uuid


def prediction_packets(p: Prediction) -> bytes:
    """The predicted run as a trace: one track group per unit with its Workload, Host, Compute and DMA
    tracks (named as the exporter names them, so that `diff` and the reports read it), and a Run slice
    that says it is a prediction."""
    d = p.deps
    host_unit = np.where(d.device >= 0, p.unit, d.rank * RANK_STRIDE)  # host work: its rank's device 0
    out, uuid, run_uuid = _tracks(sorted({int(u) for u in host_unit}), p.merged)

    def slice_(track, name, start, end, args):
        return boottime_slice_packets(track, name, int(start), int(end), args, sequence_id=WHATIF_SEQUENCE_ID,
                                      sequence_flags=SEQ_NEEDS_STATE)

    def prefix(u):
        return f"i{unit_rank(u)}_" if p.merged else ""

    config = json.loads(json.dumps(p.facts.rbln_config))
    for name, device in p.moves.items():
        config.setdefault(name, {})["device"] = device
    run_args = [annotation("prediction", f"rbln-perfetto whatif of {p.trace}: {p.describe()}"),
                annotation("rbln_config", json.dumps(config, sort_keys=True))]
    chunks = [out, slice_(run_uuid, "run (predicted)", p.ts.min() if len(p.ts) else 0,
                          (p.ts.min() if len(p.ts) else 0) + p.predicted_span_ns, run_args)]
    inv = d.invocations
    for k in range(len(inv)):
        mine = np.flatnonzero(d.item == k)
        if not len(mine):
            continue
        u = int(p.unit[mine[0]])
        args = [annotation("submodule", inv.submodule.iloc[k]), annotation("device", unit_device(u)),
                annotation("sequence_index", int(inv.seq.iloc[k])), annotation("call_index", int(inv.call_index.iloc[k]))]
        chunks.append(slice_(uuid[(u, "Workload")], prefix(u) + inv.name.iloc[k], p.ts[mine].min(), p.end[mine].max(),
                             args))
    op_info = {i: [annotation(k, v) for k, v in zip(("op", "command_index", "command_count"), args) if v is not None]
               for i, args in p.op_args.items()}
    for i in range(len(d.ts)):
        u = int(host_unit[i])
        kind = int(d.kind[i])
        name = prefix(u) + d.names[i]
        if kind == HOST:
            chunks.append(slice_(uuid[(u, "Host")], name, p.ts[i], p.end[i], []))
        elif kind == UNTRACED:
            chunks.append(slice_(uuid[(u, "Workload")], name, p.ts[i], p.end[i], [annotation("untraced", d.names[i])]))
        else:
            where = [annotation("device", unit_device(u))]
            if d.item[i] >= 0:
                where.append(annotation("submodule", str(inv.submodule.iloc[int(d.item[i])])))
            if kind == DMA:
                chunks.append(slice_(uuid[(u, "DMA")], name, p.ts[i], p.end[i],
                                     [annotation("bytes", int(p.dma_bytes[i])), *where]))
            else:
                chunks.append(slice_(uuid[(u, "Compute")], name, p.ts[i], p.end[i],
                                     [*op_info.get(int(d.ids[i]), []), *where]))
    return b"".join(chunks)


def write_prediction(p: Prediction, out: str | os.PathLike) -> Path:
    """Write the predicted run as a trace file, atomically; `rbln-perfetto diff TRACE OUT` compares it."""
    out = Path(out)
    if Path(p.trace).exists() and out.exists() and out.resolve() == Path(p.trace).resolve():
        raise UsageError(f"--out {out} is the measured trace itself; give another path")
    return write_atomically(out, "prediction", lambda f: f.write(prediction_packets(p)))
