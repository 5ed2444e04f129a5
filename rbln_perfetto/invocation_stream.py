"""The Perfetto packets of one invocation, assembled from a per-program template.

A compiled program runs the same commands on every call, so everything about its packets is
static except timestamps, the sequence index (in names `{sequence_index}_{layer}_{command_index}`
and args), the call index and flow ids. `ProgramTemplate` encodes the static bytes once with
fixed-width slots for those; `ProgramTemplate.assemble` fills the slots of one invocation with a
handful of numpy operations. The stream starts with its own ClockSnapshot, which anchors the
incremental clock at the invocation start, so the same bytes are valid at any position of any
file: the per-invocation file and the aggregate share them, compressed once.

Layout, chosen by measuring zlib on real invocations: in every event the static fields come
first and the per-call slots last; command names are written inline (no per-call interning).
A command slice carries no `layer` arg: its name `{sequence_index}_{layer}_{command_index}`
holds the layer exactly (a split op's parent slice is named after the layer), and the arg cost
3 bytes per command slice after compression, a fifth of the budget.

Packets per invocation, in time order:
  ClockSnapshot; Workload begin; memory counter; per input DMA begin/end (with a flow);
  per command begin/end (a split op inside a parent slice named after its layer; a command that
  reads an input terminates that input's flow; memory counter where it moves); per output DMA
  begin/end; memory counter; Workload end.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .proto_bytes import (
    CLOCK_BOOTTIME,
    CLOCK_INCREMENTAL,
    CLOCK_MONOTONIC,
    COUNTER,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    SLICE_BEGIN,
    SLICE_END,
    F,
    Slot,
    f_bytes,
    f_double,
    f_varint,
    padded_varints,
    tag,
    varint,
)
from .tracks import TrackIds

HOST = -1
NAME_IID_WIDTH = 4  # Workload slice names (`transformer #3`): up to 2**28 per export
INDEX_WIDTH = 3  # sequence and call indices: up to 2**21
MAX_NAMES = 1 << (7 * NAME_IID_WIDTH)
MEMORY_SAMPLES = 48  # at most about this many memory counter samples per invocation

# Debug annotation names, interned with these iids in every file.
ANNOTATIONS = (
    "submodule", "op", "shapes", "bytes", "flops", "device", "sequence_index",
    "command_index", "command_count", "call_index", "commands", "src", "dst", "tensor", "torch_device",
    "detail",
)
ANNOTATION_IID = {name: i + 1 for i, name in enumerate(ANNOTATIONS)}


def flow_id(sequence_index: int, input_index: int) -> int:
    return (sequence_index << 16) | (input_index + 1)


class Interner:
    """Iids for one export. Static strings and names keep one iid in every file of the export."""

    def __init__(self):
        self.names: dict[str, int] = {}
        self.strings: dict[str, int] = {}
        self._next_name = 1

    def name(self, text: str) -> int:
        iid = self.names.get(text)
        if iid is None:
            iid = self.names[text] = self._next_name
            self._next_name += 1
        return iid

    def string(self, text: str) -> int:
        iid = self.strings.get(text)
        if iid is None:
            iid = self.strings[text] = len(self.strings) + 1
        return iid

    def reserve_names(self, count: int) -> int:
        base = self._next_name
        self._next_name += count
        if self._next_name >= MAX_NAMES:
            raise OverflowError(f"more than {MAX_NAMES} slice names in one export; export fewer invocations per file")
        return base


NAME_FIELD = 23  # TrackEvent.name, written inline


def interned_entry(number: int, iid: int, text: bytes, text_field: int) -> bytes:
    return f_bytes(number, f_varint(F.INTERNED_IID, iid) + f_bytes(text_field, text))


def annotation_names_payload() -> bytes:
    return b"".join(interned_entry(F.INTERNED_ANNOTATION_NAMES, iid, n.encode(), F.INTERNED_NAME)
                    for n, iid in ANNOTATION_IID.items())


def _ann_int(name: str, value: int) -> bytes:
    """An integer arg: int_value (int64) when it fits, else uint_value (byte counts and flops can reach 2**64)."""
    if value >= 2**63:
        field, encoded = F.ANNOTATION_UINT, value
    else:
        field, encoded = F.ANNOTATION_INT, value & (2**64 - 1)
    body = f_varint(F.ANNOTATION_NAME_IID, ANNOTATION_IID[name]) + f_varint(field, encoded)
    return f_bytes(F.DEBUG_ANNOTATIONS, body)


def split_runs(commands) -> tuple[list[bool], list[bool]]:
    """Which commands open and close a split op's parent slice.

    A parent spans a maximal run of consecutive commands of one layer and command_count > 1 whose
    command_index counts up from 0; runs always close, so the slices nest whatever the capture says.
    """
    n = len(commands)
    opens, closes = [False] * n, [False] * n
    in_run = False
    for c, cmd in enumerate(commands):
        prev = commands[c - 1] if c else None
        continues = (in_run and prev.layer == cmd.layer and prev.command_count == cmd.command_count
                     and cmd.command_index == prev.command_index + 1)
        if not continues:
            if in_run:
                closes[c - 1] = True
            in_run = cmd.command_count > 1 and cmd.command_index == 0
            opens[c] = in_run
    if in_run:
        closes[n - 1] = True
    return opens, closes


class _Packets:
    """Template under construction: framed packets as bytes, the slots inside them, each packet's tick.

    Built once per program on the export's critical path, so it does the least per event: callers
    pass pre-joined static bytes and shared `Slot` objects; offsets are computed arithmetically,
    and the hot events (a command's begin and end) have their own straight-line paths.
    """

    def __init__(self, width: int, digits: int):
        self.width = width
        self.digits = digits
        self.chunks: list[bytes] = []
        self.slots: list[tuple[int, str, int]] = []  # (offset, kind, ref) of the rarer slots
        self.ts_offsets: list[int] = []
        self.ticks: list[int] = []  # the tick of each timestamp slot, in order
        self.seq_offsets: list[int] = []
        self.prefix_offsets: list[int] = []
        self.size = 0
        self._ts_tail = _TS_TAG + bytes(width)
        self._end_packets: dict[int, bytes] = {}
        self._command_tail = bytes(INDEX_WIDTH)

    def _packet(self, head: bytes | None, fields, tail: bytes, tick: int | None) -> None:
        """Frame `head + len + fields + tail` as one packet on our sequence; fields are bytes or Slots."""
        parts, rel, length = [], [], 0
        for f in fields:
            if f.__class__ is Slot:
                rel.append((length, f.kind, f.ref))
                parts.append(_ZEROS[f.width])
                length += f.width
            else:
                parts.append(f)
                length += len(f)
        head = head + varint(length) if head is not None else b""
        body_len = len(_SEQ) + len(head) + length + len(tail)
        prefix = _FRAME_TAG + varint(body_len) + _SEQ + head
        base = self.size + len(prefix)
        self.slots.extend((base + off, kind, ref) for off, kind, ref in rel)
        self.chunks.append(prefix)
        self.chunks.extend(parts)
        self.chunks.append(tail)
        self.size = base + length + len(tail)
        if tick is not None:
            self.ts_offsets.append(self.size - self.width)
            self.ticks.append(tick)

    def raw_packet(self, field_tag: bytes, fields) -> None:
        """A packet holding one length-delimited field (tag `field_tag`) made of `fields`."""
        self._packet(field_tag, fields, b"", None)

    def event(self, tick: int, track: int, kind: int, *fields, interned: bool = True) -> None:
        """One TrackEvent packet: fields in the order given (static first, per-call slots last), then
        the timestamp slot, so consecutive packets differ in a few trailing bytes, which zlib exploits."""
        self._packet((_FLAGS if interned else b"") + _TE_TAG, (_head(kind, track), *fields), self._ts_tail, tick)

    def end(self, tick: int, track: int) -> None:
        """A SLICE_END: the same bytes on a track every time, but for the timestamp."""
        packet = self._end_packets.get(track)
        if packet is None:
            te = _head(SLICE_END, track)
            body = _SEQ + _TE_TAG + varint(len(te)) + te + self._ts_tail
            packet = self._end_packets[track] = _FRAME_TAG + varint(len(body)) + body
        self.chunks.append(packet)
        self.size += len(packet)
        self.ts_offsets.append(self.size - self.width)
        self.ticks.append(tick)

    def command(self, tick: int, te_head: bytes, name_head: bytes, suffix: bytes, flows: list[int]) -> None:
        """A command's SLICE_BEGIN: `te_head` (type, track, static args, the sequence_index tag), the
        sequence_index slot, the inline name `{prefix slot}{suffix}`, flows it ends, the timestamp."""
        d = self.digits
        te_len = len(te_head) + INDEX_WIDTH + len(name_head) + d + len(suffix) + (len(_END_FLOW_TAG) + 8) * len(flows)
        head = _FLAGS + _TE_TAG + varint(te_len)
        prefix = _FRAME_TAG + varint(len(_SEQ) + len(head) + te_len + len(self._ts_tail)) + _SEQ + head
        seq_at = self.size + len(prefix) + len(te_head)
        self.seq_offsets.append(seq_at)
        name_at = seq_at + INDEX_WIDTH + len(name_head)
        self.prefix_offsets.append(name_at)
        pos = name_at + d + len(suffix)
        flow_bytes = b""
        for i in flows:
            self.slots.append((pos + len(_END_FLOW_TAG), "flow", i))
            flow_bytes += _END_FLOW_TAG + _ZEROS[8]
            pos += len(_END_FLOW_TAG) + 8
        self.chunks.append(prefix + te_head + self._command_tail + name_head + _ZEROS[d] + suffix + flow_bytes
                           + self._ts_tail)
        self.size = pos + len(self._ts_tail)
        self.ts_offsets.append(self.size - self.width)
        self.ticks.append(tick)

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def slot_table(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        by_kind: dict[str, list[tuple[int, int]]] = {}
        for offset, kind, ref in self.slots:
            by_kind.setdefault(kind, []).append((offset, ref))
        table = {k: (np.array([o for o, _ in v], dtype=np.int64), np.array([r for _, r in v], dtype=np.int64))
                 for k, v in by_kind.items()}
        table["ts"] = (np.asarray(self.ts_offsets, dtype=np.int64), np.asarray(self.ticks, dtype=np.int64))
        for kind, offsets in (("seq", self.seq_offsets), ("prefix", self.prefix_offsets)):
            if offsets:
                old = table.get(kind, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
                table[kind] = (np.concatenate([old[0], offsets]).astype(np.int64), np.zeros(len(old[0]) + len(offsets), np.int64))
        return table


_ZEROS = [bytes(n) for n in range(16)]
_FRAME_TAG = tag(F.TRACE_PACKET, 2)
_SEQ = f_varint(F.SEQUENCE_ID, SEQUENCE_ID)


@lru_cache(maxsize=None)
def _head(kind: int, track: int) -> bytes:
    return f_varint(F.EVENT_TYPE, kind) + f_varint(F.TRACK_UUID, track)


_FLAGS = f_varint(F.SEQUENCE_FLAGS, SEQ_NEEDS_STATE)
_TE_TAG = tag(F.TRACK_EVENT, 2)
_TS_TAG = tag(F.TIMESTAMP, 0)
_FLOW_TAG = tag(F.FLOW_IDS, 1)
_END_FLOW_TAG = tag(F.TERMINATING_FLOW_IDS, 1)


@lru_cache(maxsize=None)
def _ann_int_cached(name: str, value: int) -> bytes:
    return _ann_int(name, value)


def _ann_slot_parts(name: str, slot: Slot) -> tuple:
    """A debug annotation whose int value is a slot, as (prefix bytes, slot)."""
    inner_len = len(f_varint(F.ANNOTATION_NAME_IID, ANNOTATION_IID[name])) + len(tag(F.ANNOTATION_INT, 0)) + slot.width
    prefix = (tag(F.DEBUG_ANNOTATIONS, 2) + varint(inner_len) + f_varint(F.ANNOTATION_NAME_IID, ANNOTATION_IID[name])
              + tag(F.ANNOTATION_INT, 0))
    return (prefix, slot)


class ProgramTemplate:
    """Static packet bytes of one program's invocations, with slots for what changes per call.

    One template serves every call whose largest gap fits `width` varint bytes and whose sequence
    index has `digits` decimal digits.
    """

    def __init__(self, program, tracks: TrackIds, interner: Interner, baseline_bytes: int, width: int, digits: int):
        self.program = program
        self.width = width
        self.digits = digits
        p = program
        dev = p.device
        n_in, n_cmd = len(p.inputs), len(p.commands)
        self.n_ticks = n_in + n_cmd + len(p.outputs) + 1
        used_strings: dict[str, int] = {}
        str_cache: dict[tuple[str, str], bytes] = {}

        def ann_str(key: str, text: str) -> bytes:
            enc = str_cache.get((key, text))
            if enc is None:
                used_strings[text] = interner.string(text)
                body = f_varint(F.ANNOTATION_NAME_IID, ANNOTATION_IID[key]) + f_varint(F.ANNOTATION_STRING_IID, used_strings[text])
                enc = str_cache[key, text] = f_bytes(F.DEBUG_ANNOTATIONS, body)
            return enc

        def inline_name(text: str) -> bytes:
            return f_bytes(NAME_FIELD, text.encode())

        ann = _ann_int_cached
        seq = _ann_slot_parts("sequence_index", Slot("seq", INDEX_WIDTH))
        out = _Packets(width, digits)

        # The snapshot anchors the incremental clock (and MONOTONIC/BOOTTIME) at the invocation start.
        clocks = []
        for clock_id, kind, incremental in ((CLOCK_INCREMENTAL, "mono", True), (CLOCK_MONOTONIC, "mono", False),
                                            (CLOCK_BOOTTIME, "boot", False)):
            head = f_varint(F.CLOCK_ID, clock_id) + tag(F.CLOCK_TIMESTAMP, 0)
            tail = f_varint(F.CLOCK_INCREMENTAL, 1) if incremental else b""
            clocks += [tag(F.CLOCKS, 2) + varint(len(head) + 9 + len(tail)) + head, Slot(kind, 9), tail]
        out.raw_packet(tag(F.CLOCK_SNAPSHOT, 2), clocks)

        out.event(0, tracks.workload(dev), SLICE_BEGIN, ann_str("submodule", p.submodule) + ann("device", dev)
                  + ann_str("torch_device", p.torch_device) + ann("commands", n_cmd) + seq[0], seq[1],
                  *_ann_slot_parts("call_index", Slot("call", INDEX_WIDTH)), tag(F.NAME_IID, 0), Slot("name", NAME_IID_WIDTH))

        memory = tracks.memory(dev)
        live = [baseline_bytes + c.live_bytes for c in p.commands]
        step = max(1, (max(live, default=baseline_bytes) - baseline_bytes) // MEMORY_SAMPLES)
        peak = int(np.argmax(live)) if live else -1

        def counter(tick: int, value: int) -> None:
            out.event(tick, memory, COUNTER, f_double(F.DOUBLE_COUNTER_VALUE, float(value)), interned=False)

        counter(0, baseline_bytes)

        consumers: dict[int, list[int]] = {}
        for i, x in enumerate(p.inputs):
            consumers.setdefault(x.command, []).append(i)
            shape = "[" + ", ".join(str(s) for s in x.shape) + "]"
            out.event(i, tracks.dma(dev), SLICE_BEGIN, ann_str("submodule", p.submodule) + ann_str("tensor", x.name)
                      + ann_str("shapes", shape)
                      + ann("bytes", x.bytes) + ann("src", HOST) + ann("dst", dev)
                      + inline_name(f"dma {x.name} host -> device {dev}") + _FLOW_TAG, Slot("flow", 8, i, fixed=True))
            out.end(i + 1, tracks.dma(dev))

        compute = tracks.compute(dev)
        last = baseline_bytes
        context = ann_str("submodule", p.submodule) + ann("device", dev)
        name_tag = tag(NAME_FIELD, 2)
        begin_head = _head(SLICE_BEGIN, compute)
        static_cache: dict[tuple, bytes] = {}
        opens, closes = split_runs(p.commands)
        for c, cmd in enumerate(p.commands):
            tick = n_in + c
            count, index = cmd.command_count, cmd.command_index
            if opens[c]:
                out.event(tick, compute, SLICE_BEGIN, ann_str("op", cmd.op) + ann("command_count", count)
                          + inline_name(cmd.layer))
            if c == peak or abs(live[c] - last) >= step:
                counter(tick, live[c])
                last = live[c]
            key = (cmd.op, cmd.shapes, cmd.bytes, cmd.flops, index, count)
            te_head = static_cache.get(key)
            if te_head is None:
                te_head = static_cache[key] = b"".join((
                    begin_head, ann_str("op", cmd.op), ann_str("shapes", cmd.shapes), ann("bytes", cmd.bytes),
                    ann("flops", cmd.flops), ann("command_index", index), ann("command_count", count), context,
                    seq[0]))
            suffix = f"_{cmd.layer}_{index}".encode()
            out.command(tick, te_head, name_tag + varint(digits + len(suffix)), suffix, consumers.get(c, ()))
            out.end(tick + 1, compute)
            if closes[c]:
                out.end(tick + 1, compute)

        base = n_in + n_cmd
        counter(base, baseline_bytes + sum(x.bytes for x in p.outputs))
        for j, x in enumerate(p.outputs):
            shape = "[" + ", ".join(str(s) for s in x.shape) + "]"
            out.event(base + j, tracks.dma(dev), SLICE_BEGIN, ann_str("submodule", p.submodule) + ann_str("tensor", x.name)
                      + ann_str("shapes", shape)
                      + ann("bytes", x.bytes) + ann("src", dev) + ann("dst", HOST)
                      + inline_name(f"dma {x.name} device {dev} -> host"))
            out.end(base + j + 1, tracks.dma(dev))
        end = self.n_ticks - 1
        counter(end, baseline_bytes)
        out.end(end, tracks.workload(dev))

        self.template = np.frombuffer(out.data(), dtype=np.uint8)
        self.slots = out.slot_table()
        self.packet_ticks = self.slots["ts"][1]
        self.n_slices = 1 + n_in + n_cmd + len(p.outputs) + sum(opens)
        # What a file needs interned to read this template: the annotation string values.
        self.static_interned = b"".join(
            interned_entry(F.INTERNED_STRINGS, iid, t.encode(), F.INTERNED_STRING) for t, iid in used_strings.items())
        self.workload_label = p.submodule

    def names_packet(self, call_index: int, iid: int) -> bytes:
        """The interned name of one call's Workload slice, `transformer #3`."""
        entry = interned_entry(F.INTERNED_EVENT_NAMES, iid, f"{self.workload_label} #{call_index}".encode(), F.INTERNED_NAME)
        body = f_varint(F.SEQUENCE_ID, 1) + f_bytes(F.INTERNED_DATA, entry) + f_varint(F.SEQUENCE_FLAGS, SEQ_NEEDS_STATE)
        return f_bytes(F.TRACE_PACKET, body)

    def assemble(self, ticks: np.ndarray, sequence_index: int, call_index: int, name_iid: int,
                 boot_offset: int) -> bytes:
        """The packets of one invocation with boundaries `ticks` (CLOCK_MONOTONIC ns)."""
        buf = self.template.copy()

        def fill(kind: str, data: np.ndarray, width: int) -> None:
            if kind in self.slots:
                buf[self.slots[kind][0][:, None] + np.arange(width)] = data

        def fill_varint(kind: str, values, width: int) -> None:
            if kind in self.slots:
                values = np.broadcast_to(np.asarray(values, dtype=np.int64), self.slots[kind][0].shape)
                fill(kind, padded_varints(values, width), width)

        stamps = ticks[self.packet_ticks]
        fill_varint("ts", np.diff(stamps, prepend=ticks[0]), self.width)
        fill_varint("mono", ticks[0], 9)
        fill_varint("boot", ticks[0] + boot_offset, 9)
        fill_varint("name", name_iid, NAME_IID_WIDTH)
        fill_varint("seq", sequence_index, INDEX_WIDTH)
        fill_varint("call", call_index, INDEX_WIDTH)
        fill("prefix", np.frombuffer(str(sequence_index).encode(), dtype=np.uint8), self.digits)
        if "flow" in self.slots:  # programs without inputs have no flows
            flows = (np.int64(sequence_index) << 16) | (self.slots["flow"][1] + 1)
            fill("flow", flows.astype("<u8").view(np.uint8).reshape(-1, 8), 8)
        return buf.tobytes()
