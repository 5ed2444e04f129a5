"""Traces whose analysis answers are known by construction, for the analysis tests.

`fork_join_trace`: a hand-built trace (Perfetto protos) in which device 1 runs while device 0 waits
for it, a device -> device DMA whose flow ends in a device 0 command, host work at both ends, and a
split op; the expected idle gaps and critical path are written out below from the timeline.
`synthetic_run`: a capture written through the real capture writer (tests/synthetic.py), exported.
"""

from __future__ import annotations

from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from synthetic import program, write_capture

import rbln_perfetto

BASE_NS = 10**9  # the hand-built trace's time 0
US = 1000  # its times below are in microseconds


def _device_tracks(d: int) -> dict[str, int]:
    root = 100 + 10 * d
    return {"root": root, "Workload": root + 1, "Host": root + 2, "Compute": root + 3, "DMA": root + 4}


# (device, track, name, start_us, end_us, args, flow_out, flow_in)
FORK_JOIN = [
    (0, "Host", "tokenize", 0, 10, {}, None, None),
    (0, "Workload", "text_encoder #0", 10, 202, {"submodule": "text_encoder", "device": 0, "sequence_index": 1,
                                                  "call_index": 0}, None, None),
    (0, "DMA", "dma x host -> device 0", 10, 22, {"submodule": "text_encoder"}, None, None),
    (0, "Compute", "1_a_0", 22, 40, {"op": "linear", "command_index": 0, "command_count": 1}, None, None),
    (0, "Compute", "1_b_0", 120, 190, {"op": "linear", "command_index": 0, "command_count": 1}, None, 7),
    (0, "DMA", "dma y device 0 -> host", 190, 202, {"submodule": "text_encoder"}, None, None),
    (1, "Workload", "text_encoder_3 #0", 15, 115, {"submodule": "text_encoder_3", "device": 1, "sequence_index": 2,
                                                     "call_index": 0}, None, None),
    (1, "DMA", "dma t host -> device 1", 15, 27, {"submodule": "text_encoder_3"}, None, None),
    (1, "Compute", "c", 27, 100, {"op": "bmm", "command_count": 2}, None, None),
    (1, "Compute", "2_c_0", 27, 60, {"op": "bmm", "command_index": 0, "command_count": 2}, None, None),
    (1, "Compute", "2_c_1", 60, 100, {"op": "bmm", "command_index": 1, "command_count": 2}, None, None),
    (1, "DMA", "dma t2 device 1 -> device 0", 100, 115, {"submodule": "text_encoder_3"}, 7, None),
    (0, "Host", "postprocess", 202, 210, {}, None, None),
]
SPAN_US = 210

# Idle gaps per device: (kind, start_us, end_us, {cause: us}, main cause, detail).
FORK_JOIN_GAPS = {
    0: [("before first command", 0, 22, {"dma": 12, "host": 10}, "dma", "dma x host -> device 0"),
        ("between commands", 40, 120, {"other_device": 75, "unrecorded": 5}, "other_device",
         "text_encoder_3 #0 (device 1)"),
        # After its last invocation (ending at 202) the device is done: the host's postprocess is no cause.
        ("after last command", 190, 210, {"dma": 12, "done": 8}, "dma", "dma y device 0 -> host")],
    1: [("before first command", 0, 27, {"dma": 12, "host": 10, "unrecorded": 5}, "dma", "dma t host -> device 1"),
        # After its last invocation (ending at 115) device 1 is done: nothing it waits for, no idle cause
        # but that (text_encoder #0 on device 0 and the host's postprocess are not its causes).
        ("after last command", 100, 210, {"dma": 15, "done": 95}, "done", "")],
}

# Critical path segments: (kind, device, name, start_us, on_path_us, elements, via).
FORK_JOIN_PATH = [
    ("host", None, "tokenize", 0, 10, 1, ""),
    ("gap", None, "(nothing recorded)", 10, 5, 0, ""),
    ("invocation", 1, "text_encoder_3 #0", 15, 100, 3, "host order"),  # its DMA in, split op c, DMA out
    ("gap", None, "(nothing recorded)", 115, 5, 0, ""),
    ("invocation", 0, "text_encoder #0", 120, 82, 2, "flow"),
    ("host", None, "postprocess", 202, 8, 1, "host order"),
]


def _annotation(name, value):
    a = pt.DebugAnnotation(name=name)
    if isinstance(value, str):
        a.string_value = value
    else:
        a.int_value = value
    return a


def fork_join_trace(path: Path) -> Path:
    """Write the FORK_JOIN timeline as a Perfetto trace; returns `path`."""
    trace = pt.Trace()
    first = trace.packet.add(trusted_packet_sequence_id=1, sequence_flags=pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)
    first.track_descriptor.uuid = _device_tracks(0)["root"]
    first.track_descriptor.name = "Device 0"
    for d in (0, 1):
        ids = _device_tracks(d)
        if d:
            trace.packet.add(trusted_packet_sequence_id=1).track_descriptor.MergeFrom(
                pt.TrackDescriptor(uuid=ids["root"], name=f"Device {d}"))
        for name in ("Workload", "Host", "Compute", "DMA"):
            if name == "Host" and d:
                continue
            trace.packet.add(trusted_packet_sequence_id=1).track_descriptor.MergeFrom(
                pt.TrackDescriptor(uuid=ids[name], parent_uuid=ids["root"], name=name))
    events = []
    for order, (d, track, name, start, end, args, flow_out, flow_in) in enumerate(FORK_JOIN):
        if track == "Compute" and name[0].isdigit():
            args = {**args, "submodule": "text_encoder" if d == 0 else "text_encoder_3", "device": d,
                    "sequence_index": int(name.split("_")[0])}
        begin = pt.TrackEvent(type=pt.TrackEvent.TYPE_SLICE_BEGIN, track_uuid=_device_tracks(d)[track], name=name,
                              debug_annotations=[_annotation(k, v) for k, v in args.items()])
        if flow_out:
            begin.flow_ids.append(flow_out)
        if flow_in:
            begin.terminating_flow_ids.append(flow_in)
        end_event = pt.TrackEvent(type=pt.TrackEvent.TYPE_SLICE_END, track_uuid=_device_tracks(d)[track])
        # Ends before begins at one time; a parent begins before, and ends after, its children.
        events.append((start, 1, order, begin))
        events.append((end, 0, -order, end_event))
    for ts, _, _, event in sorted(events, key=lambda e: e[:3]):
        p = trace.packet.add(trusted_packet_sequence_id=1, timestamp=BASE_NS + ts * US)
        p.track_event.CopyFrom(event)
    path.write_bytes(trace.SerializeToString())
    return path


def synthetic_run(out: Path, programs, calls, host=()) -> Path:
    """A capture of `programs` called as `calls` (see synthetic.write_capture), exported; the aggregate."""
    out.mkdir(parents=True, exist_ok=True)
    capture = write_capture(out / "capture.rblncap", programs, calls, host)
    return rbln_perfetto.export(capture, out, per_invocation=False).aggregate_file


def command(layer, index=0, count=1, op="linear"):
    """A CommandSpec tuple for synthetic.program."""
    return (layer, op, index, count, "[1]", 1024, 1000, 0)


def layers_program(submodule, device, layers, inputs=1, outputs=1):
    """A program whose commands are `layers`: (layer, command_count[, op]) in order."""
    cmds = [command(layer, i, count, *rest) for layer, count, *rest in layers for i in range(count)]
    ins = [(f"in{j}", (1,), "float32", 64, 0) for j in range(inputs)]
    outs = [(f"out{j}", (1,), "float32", 64, len(cmds) - 1) for j in range(outputs)]
    return program(submodule, device, cmds, ins, outs)
