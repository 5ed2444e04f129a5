"""The Perfetto packets of one invocation, assembled from a per-program template.

A compiled program runs the same commands on every call, so everything about its packets is
static except timestamps, the sequence index (in command slice names and args), the call index
and flow ids. `ProgramTemplate` encodes the static bytes once with fixed-width slots for those;
`ProgramTemplate.assemble` fills the slots of one invocation with a handful of numpy operations.
The stream starts with its own ClockSnapshot, which anchors the incremental clock at the
invocation start, so the same bytes are valid at any position of any file: the per-invocation
file and the aggregate share them, compressed once.

Layout, chosen by measuring zlib on real invocations: in every event the static fields come
first and the per-call slots last; command names are written inline (no per-call interning).
A command slice carries no `layer` arg: its name (`naming.command_slice_name`) holds the layer
exactly (a split op's parent slice is named after the layer), and the arg cost 3 bytes per
command slice after compression, a fifth of the budget.

Packets per invocation, in time order (ticks as `pipeline.contract.TickLayout` lays them out):
  ClockSnapshot; Workload begin; planned memory counter; per input DMA begin/end (with a flow);
  per command begin/end (a split op inside a parent slice named after its layer; a command that
  reads an input terminates that input's flow; memory counter where it moves); per output DMA
  begin/end; memory counter; Workload end.
"""

from __future__ import annotations

import numpy as np

from pipeline.contract import TickLayout

from .interning import (
    NAME_IID_WIDTH,
    Interner,
    annotation_int,
    annotation_int_slot,
    annotation_string,
    interned_entry,
    interned_strings_payload,
)
from ..naming import (
    command_name_prefix,
    command_name_suffix,
    dma_to_device_slice_name,
    dma_to_host_slice_name,
    split_op_slice_name,
    workload_slice_name,
)
from .packet_builder import FLOW_TAG, INDEX_WIDTH, INLINE_NAME_FIELD, INLINE_NAME_TAG, PacketBuilder, event_head
from ..proto_bytes import (
    CLOCK_BOOTTIME,
    CLOCK_INCREMENTAL,
    CLOCK_MONOTONIC,
    COUNTER,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    SLICE_BEGIN,
    FieldNumber,
    Slot,
    f_bytes,
    f_double,
    f_varint,
    padded_varint,
    padded_varints,
    tag,
    varint,
)
from .tracks import TrackIds

HOST = -1  # the `src` / `dst` of a DMA from or to the host
MEMORY_SAMPLES = 48  # at most about this many memory counter samples per invocation


def split_op_bounds(commands) -> tuple[list[bool], list[bool]]:
    """Which commands open and close a split op's parent slice.

    A parent spans the longest stretch of consecutive commands of one layer and command_count > 1
    whose command_index counts up from 0; every parent closes, so the slices nest whatever the capture says.
    """
    n = len(commands)
    opens, closes = [False] * n, [False] * n
    in_parent = False
    for c, cmd in enumerate(commands):
        prev = commands[c - 1] if c else None
        continues = (in_parent and prev.layer == cmd.layer and prev.command_count == cmd.command_count
                     and cmd.command_index == prev.command_index + 1)
        if not continues:
            if in_parent:
                closes[c - 1] = True
            in_parent = cmd.command_count > 1 and cmd.command_index == 0
            opens[c] = in_parent
    if in_parent:
        closes[n - 1] = True
    return opens, closes


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _inline_name(text: str) -> bytes:
    return f_bytes(INLINE_NAME_FIELD, text.encode())


class _TemplatePackets:
    """Writes the packets of one program's template, in time order, into a `PacketBuilder`.

    Annotation string values are interned on first use; `strings` keeps them, with their iids, in
    that order (the order matters: it fixes the iids, which `template_cache` checks).
    """

    def __init__(self, program, layout: TickLayout, tracks: TrackIds, interner: Interner, baseline_bytes: int,
                 out: PacketBuilder):
        self.program = program
        self.layout = layout
        self.tracks = tracks
        self.interner = interner
        self.baseline_bytes = baseline_bytes
        self.out = out
        self.strings: dict[str, int] = {}
        self._string_args: dict[tuple[str, str], bytes] = {}
        self.seq = annotation_int_slot("sequence_index", Slot("seq", INDEX_WIDTH))

    def string_arg(self, key: str, text: str) -> bytes:
        enc = self._string_args.get((key, text))
        if enc is None:
            self.strings[text] = self.interner.string(text)
            enc = self._string_args[key, text] = annotation_string(key, self.strings[text])
        return enc

    def memory(self, tick: int, value: int) -> None:
        self.out.counter(tick, self.tracks.memory(self.program.device), float(value))

    def clock_snapshot(self) -> None:
        """The snapshot that anchors the incremental clock (and MONOTONIC/BOOTTIME) at the invocation start."""
        clocks = []
        for clock_id, kind, incremental in ((CLOCK_INCREMENTAL, "mono", True), (CLOCK_MONOTONIC, "mono", False),
                                            (CLOCK_BOOTTIME, "boot", False)):
            head = f_varint(FieldNumber.CLOCK_ID, clock_id) + tag(FieldNumber.CLOCK_TIMESTAMP, 0)
            tail = f_varint(FieldNumber.CLOCK_INCREMENTAL, 1) if incremental else b""
            clocks += [tag(FieldNumber.CLOCKS, 2) + varint(len(head) + 9 + len(tail)) + head, Slot(kind, 9), tail]
        self.out.raw_packet(tag(FieldNumber.CLOCK_SNAPSHOT, 2), clocks)

    def workload_begin(self, with_step: bool) -> None:
        """The Workload slice's begin (its name and call index, and its step `with_step`, are per-call
        slots) and the planned memory at the call's start."""
        p, start, arg, seq = self.program, self.layout.input(0), self.string_arg, self.seq
        self.out.event(start, self.tracks.workload(p.device), SLICE_BEGIN,
                       arg("submodule", p.submodule) + annotation_int("device", p.device)
                       + arg("torch_device", p.torch_device) + annotation_int("commands", self.layout.commands)
                       + seq[0], seq[1],
                       *annotation_int_slot("call_index", Slot("call", INDEX_WIDTH)),
                       *(annotation_int_slot("step", Slot("step", INDEX_WIDTH)) if with_step else ()),
                       tag(FieldNumber.NAME_IID, 0),
                       Slot("name", NAME_IID_WIDTH))
        self.memory(start, self.baseline_bytes)

    def input_dmas(self) -> dict[int, list[int]]:
        """The host -> device copies of the inputs, each with a flow; returns the inputs each command reads."""
        p, arg, dma = self.program, self.string_arg, self.tracks.dma(self.program.device)
        consumers: dict[int, list[int]] = {}
        for i, x in enumerate(p.inputs):
            consumers.setdefault(x.command, []).append(i)
            self.out.event(self.layout.input(i), dma, SLICE_BEGIN, arg("submodule", p.submodule)
                           + arg("tensor", x.name) + arg("shapes", _shape_text(x.shape))
                           + annotation_int("bytes", x.bytes) + annotation_int("src", HOST)
                           + annotation_int("dst", p.device) + _inline_name(dma_to_device_slice_name(x.name, p.device))
                           + FLOW_TAG, Slot("flow", 8, i, fixed=True))
            self.out.end(self.layout.input(i) + 1, dma)
        return consumers

    def commands(self, consumers: dict[int, list[int]], command_budget: int) -> int:
        """The command slices (a split op's inside a parent slice named after its layer), each ending the
        flows of the inputs it reads, and the planned memory where it moves; returns the parents written."""
        p, out, arg, ann = self.program, self.out, self.string_arg, annotation_int
        compute = self.tracks.compute(p.device)
        live = [self.baseline_bytes + c.live_bytes for c in p.commands]
        step = max(1, (max(live, default=self.baseline_bytes) - self.baseline_bytes) // MEMORY_SAMPLES)
        peak = int(np.argmax(live)) if live else -1
        last = self.baseline_bytes
        context = arg("submodule", p.submodule) + ann("device", p.device)
        begin_head = event_head(SLICE_BEGIN, compute)
        static_heads: dict[tuple, bytes] = {}
        opens, closes = split_op_bounds(p.commands)
        for c, cmd in enumerate(p.commands):
            tick = self.layout.command(c)
            count, index = cmd.command_count, cmd.command_index
            if opens[c]:
                out.event(tick, compute, SLICE_BEGIN, arg("op", cmd.op) + ann("command_count", count)
                          + _inline_name(split_op_slice_name(cmd.layer)))
            if c == peak or abs(live[c] - last) >= step:
                self.memory(tick, live[c])
                last = live[c]
            key = (cmd.op, cmd.shapes, cmd.bytes, cmd.flops, index, count)
            te_head = static_heads.get(key)
            if te_head is None:
                te_head = static_heads[key] = b"".join((
                    begin_head, arg("op", cmd.op), arg("shapes", cmd.shapes), ann("bytes", cmd.bytes),
                    ann("flops", cmd.flops), ann("command_index", index), ann("command_count", count),
                    ann("bytes_over_budget", cmd.bytes - command_budget) if 0 < command_budget < cmd.bytes else b"",
                    context, self.seq[0]))
            # The name is written in two pieces: the sequence index (a slot of `digits` bytes), then this.
            suffix = command_name_suffix(cmd.layer, index).encode()
            out.command(tick, te_head, INLINE_NAME_TAG + varint(out.digits + len(suffix)), suffix,
                        consumers.get(c, ()))
            out.end(tick + 1, compute)
            if closes[c]:
                out.end(tick + 1, compute)
        return sum(opens)

    def output_dmas_and_end(self) -> None:
        """The device -> host copies of the outputs, the planned memory around them, the Workload end."""
        p, arg, dma, layout = self.program, self.string_arg, self.tracks.dma(self.program.device), self.layout
        self.memory(layout.output(0), self.baseline_bytes + sum(x.bytes for x in p.outputs))
        for j, x in enumerate(p.outputs):
            self.out.event(layout.output(j), dma, SLICE_BEGIN, arg("submodule", p.submodule)
                           + arg("tensor", x.name) + arg("shapes", _shape_text(x.shape))
                           + annotation_int("bytes", x.bytes) + annotation_int("src", p.device)
                           + annotation_int("dst", HOST) + _inline_name(dma_to_host_slice_name(x.name, p.device)))
            self.out.end(layout.output(j) + 1, dma)
        self.memory(layout.end, self.baseline_bytes)
        self.out.end(layout.end, self.tracks.workload(p.device))


class ProgramTemplate:
    """Static packet bytes of one program's invocations, with slots for what changes per call.

    One template serves every call whose largest gap fits `width` varint bytes and whose sequence
    index has `digits` decimal digits. `command_budget`: the budget the program was compiled for (0:
    unknown); a command whose working set exceeds it carries `bytes_over_budget`, the excess.
    `with_step`: the Workload slice carries the call's denoising step as arg `step` (transformer calls).
    """

    def __init__(self, program, tracks: TrackIds, interner: Interner, baseline_bytes: int, width: int, digits: int,
                 command_budget: int = 0, with_step: bool = False):
        self.program = program
        self.width = width
        self.digits = digits
        self.layout = layout = TickLayout.of(program)
        packets = _TemplatePackets(program, layout, tracks, interner, baseline_bytes, PacketBuilder(width, digits))
        packets.clock_snapshot()
        packets.workload_begin(with_step)
        parents = packets.commands(packets.input_dmas(), command_budget)
        packets.output_dmas_and_end()

        self.template = np.frombuffer(packets.out.data(), dtype=np.uint8)
        self.n_slices = 1 + layout.inputs + layout.commands + layout.outputs + parents
        self.split_commands = sum(1 for cmd in program.commands if cmd.command_count > 1)
        # What a file needs interned to read this template: the annotation string values.
        self.static_interned = interned_strings_payload(packets.strings)
        # The strings in the order the template first used them, and their iids (see `template_cache`).
        self.strings = tuple(packets.strings)
        self.string_iids = tuple(packets.strings.values())
        self._locate_slots(packets.out.slot_table())
        self.nbytes = sum(a.nbytes for a in (self.template, self.packet_ticks, self.previous_ticks, self.ts_at,
                                             self.flow_at, self.flow_ids, self.per_call_at, self.per_call_from))

    def _locate_slots(self, slots: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Where `assemble` writes, as byte positions, so that a call is filled by three fancy-index stores:
        the timestamps; the values that are one per call (gathered from one short byte string); the flow ids."""
        ts_offsets, self.packet_ticks = slots.pop("ts")
        # Each packet's timestamp is a delta from the one before (the first: from the call's start, tick 0).
        self.previous_ticks = np.concatenate(([0], self.packet_ticks[:-1]))
        self.ts_at = _byte_positions(ts_offsets, self.width)
        flow_offsets, flow_refs = slots.pop("flow", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        self.flow_at = _byte_positions(flow_offsets, 8)
        self.flow_ids = (flow_refs + 1).astype(np.uint64)  # input i's flow: (sequence_index << 16) | (i + 1)
        at, source, base = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)], 0
        for kind, field_width in self._per_call_fields():
            if kind in slots:
                offsets = slots[kind][0]
                at.append(_byte_positions(offsets, field_width))
                source.append(np.tile(np.arange(base, base + field_width), len(offsets)))
            base += field_width
        self.per_call_at = np.concatenate(at)
        self.per_call_from = np.concatenate(source)

    def _per_call_fields(self) -> tuple[tuple[str, int], ...]:
        """The slot kinds holding one value per call, with their widths, in the order `assemble` joins them."""
        return (("mono", 9), ("boot", 9), ("name", NAME_IID_WIDTH), ("seq", INDEX_WIDTH), ("call", INDEX_WIDTH),
                ("step", INDEX_WIDTH), ("prefix", self.digits))

    def names_packet(self, call_index: int, iid: int) -> bytes:
        """A packet interning the name of one call's Workload slice, `transformer #3`, as `iid`."""
        name = workload_slice_name(self.program.submodule, call_index)
        entry = interned_entry(FieldNumber.INTERNED_EVENT_NAMES, iid, name.encode(), FieldNumber.INTERNED_NAME)
        body = (f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID) + f_bytes(FieldNumber.INTERNED_DATA, entry)
                + f_varint(FieldNumber.SEQUENCE_FLAGS, SEQ_NEEDS_STATE))
        return f_bytes(FieldNumber.TRACE_PACKET, body)

    def assemble(self, ticks: np.ndarray, sequence_index: int, call_index: int, name_iid: int,
                 boot_offset: int, step: int = 0) -> bytes:
        """The packets of one invocation with boundaries `ticks` (CLOCK_MONOTONIC ns); `step` fills the
        `step` arg of a template made `with_step`."""
        buf = self.template.copy()
        stamps = ticks[self.packet_ticks]
        buf[self.ts_at] = padded_varints(stamps - ticks[self.previous_ticks], self.width).ravel()
        start = int(ticks[0])
        per_call = b"".join((
            padded_varint(start, 9), padded_varint(start + boot_offset, 9), padded_varint(name_iid, NAME_IID_WIDTH),
            padded_varint(sequence_index, INDEX_WIDTH), padded_varint(call_index, INDEX_WIDTH),
            padded_varint(step, INDEX_WIDTH), command_name_prefix(sequence_index).encode()))
        buf[self.per_call_at] = np.frombuffer(per_call, dtype=np.uint8)[self.per_call_from]
        if len(self.flow_ids):  # programs without inputs have no flows
            flows = (np.uint64(sequence_index) << np.uint64(16)) | self.flow_ids
            buf[self.flow_at] = flows.astype("<u8").view(np.uint8)
        return buf.tobytes()


def _byte_positions(offsets: np.ndarray, width: int) -> np.ndarray:
    """The positions of the bytes of slots `width` wide at `offsets`, slot after slot."""
    return (offsets[:, None] + np.arange(width)).ravel().astype(np.intp)


def measured_memory_packets(track: int, start_ns: int, end_ns: int, allocated, boot_offset: int) -> bytes:
    """The measured memory counter of one call (CUDA): `allocated` bytes at its start and end, stamped
    on BOOTTIME so that they may follow the call's own packets in the stream."""
    out = b""
    for ts, value in zip((int(start_ns), int(end_ns)), allocated):
        event = (f_varint(FieldNumber.EVENT_TYPE, COUNTER) + f_varint(FieldNumber.TRACK_UUID, track)
                 + f_double(FieldNumber.DOUBLE_COUNTER_VALUE, float(value)))
        body = (f_varint(FieldNumber.TIMESTAMP, ts + boot_offset)
                + f_varint(FieldNumber.TIMESTAMP_CLOCK_ID, CLOCK_BOOTTIME)
                + f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID) + f_bytes(FieldNumber.TRACK_EVENT, event))
        out += f_bytes(FieldNumber.TRACE_PACKET, body)
    return out
