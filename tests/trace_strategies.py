"""Hypothesis strategies for Perfetto TrackEvent traces, built with Perfetto's own protos, over what
the embedded backend claims to read: several sequences with interning (`SEQ_INCREMENTAL_STATE_CLEARED`,
`SEQ_NEEDS_INCREMENTAL_STATE`, `name` vs `name_iid`, interned annotation names and string values),
packet defaults, track descriptors (re-sent and renamed, unnamed, parent/child, child ordering,
counter tracks absolute and incremental), clocks (BOOTTIME, MONOTONIC through a ClockSnapshot,
sequence-scoped incremental and custom clocks with `unit_multiplier_ns`, timestamps that overflow),
slices (nested, overlapping, never ending, ends that close nothing), instants, counters, flows,
debug annotations of every value type, and `compressed_packets`.

`traces()` draws a list of `TracePacket`s; `serialize` turns it into trace bytes."""

from __future__ import annotations

import zlib

from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

TE = pt.TrackEvent
BEGIN, END, INSTANT, COUNTER = TE.TYPE_SLICE_BEGIN, TE.TYPE_SLICE_END, TE.TYPE_INSTANT, TE.TYPE_COUNTER
CLEARED, NEEDS_STATE = pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED, pt.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
BOOTTIME, MONOTONIC = pt.BUILTIN_CLOCK_BOOTTIME, pt.BUILTIN_CLOCK_MONOTONIC

# Short names from a small alphabet, so that names repeat, sort in interesting ways and look like ours.
NAMES = st.sampled_from(["a", "b", "B", "op", "op_1", "12_layer_0", "0", "7x", "é", "dma", " "])
TEXT = st.one_of(NAMES, st.text(st.characters(blacklist_categories=("Cs",)), max_size=6))
UUIDS = st.sampled_from([1, 2, 3, 4, 5, 6, 2**63 + 5, 2**64 - 1])
INT64 = st.one_of(st.integers(-1000, 1000), st.integers(-2**63, 2**63 - 1))
UINT64 = st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1))
DOUBLES = st.one_of(st.sampled_from([0.0, -0.0, 0.5, 100.0, 1e-7, 1e300, 1 / 3]), st.floats(allow_nan=False,
                                                                                          allow_infinity=False))


# Each clock keeps one offset to BOOTTIME (the global MONOTONIC the same on every sequence), and
# `monotonic_snapshots` keeps every clock's snapshot values rising in file order: trace_processor
# ignores a snapshot in which a clock goes back, and picks the snapshot nearest an event, where the
# embedded reader takes the latest (the same offset when they agree).
MONOTONIC_OFFSET = 7
OFFSETS = st.sampled_from([0, 7, 10**6])


def serialize(packets) -> bytes:
    return pt.Trace(packet=packets).SerializeToString()


@st.composite
def annotation_value(draw, a: pt.DebugAnnotation, strings: dict, depth: int) -> None:
    """Fill `a`'s value: one of every DebugAnnotation value type, nested dicts and arrays included."""
    kinds = ["bool", "uint", "int", "double", "string", "pointer"] * 4 + ["legacy_json"]  # (legacy JSON is refused)
    if strings:
        kinds.append("string_iid")
    if depth < 2:
        kinds += ["dict", "array"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bool":
        a.bool_value = draw(st.booleans())
    elif kind == "uint":
        a.uint_value = draw(UINT64)
    elif kind == "int":
        a.int_value = draw(INT64)
    elif kind == "double":
        a.double_value = draw(DOUBLES)
    elif kind == "string":
        a.string_value = draw(TEXT)
    elif kind == "pointer":
        a.pointer_value = draw(UINT64)
    elif kind == "legacy_json":
        a.legacy_json_value = draw(st.sampled_from(['{"k": 1}', "[1, 2]", '"s"', "3"]))
    elif kind == "string_iid":
        a.string_value_iid = draw(st.sampled_from(sorted(strings)))
    elif kind == "dict":
        for _ in range(draw(st.integers(0, 3))):
            e = a.dict_entries.add(name=draw(NAMES))
            draw(annotation_value(e, strings, depth + 1))
    else:
        for _ in range(draw(st.integers(0, 3))):
            draw(annotation_value(a.array_values.add(), strings, depth + 1))


@st.composite
def annotations(draw, event: TE, interned: dict) -> None:
    for _ in range(draw(st.integers(0, 3))):
        a = event.debug_annotations.add()
        if interned["annotation_names"] and draw(st.booleans()):
            a.name_iid = draw(st.sampled_from(sorted(interned["annotation_names"])))
        else:
            a.name = draw(NAMES)
        draw(annotation_value(a, interned["strings"], 0))


@st.composite
def interned_data(draw) -> tuple[pt.InternedData, dict]:
    """Interned event names, annotation names and string values (iids 1..4), and what they map to."""
    data, maps = pt.InternedData(), {"names": {}, "annotation_names": {}, "strings": {}}
    for iid in draw(st.sets(st.integers(1, 4), max_size=3)):
        maps["names"][iid] = name = draw(NAMES)
        data.event_names.add(iid=iid, name=name)
    for iid in draw(st.sets(st.integers(1, 4), max_size=3)):
        maps["annotation_names"][iid] = name = draw(NAMES)
        data.debug_annotation_names.add(iid=iid, name=name)
    for iid in draw(st.sets(st.integers(1, 4), max_size=3)):
        maps["strings"][iid] = text = draw(TEXT)
        data.debug_annotation_string_values.add(iid=iid, str=text.encode())
    return data, maps


@st.composite
def track_descriptors(draw) -> list[pt.TrackDescriptor]:
    """Tracks: slice or counter (absolute or incremental), named or not, children of earlier tracks."""
    uuids = draw(st.lists(UUIDS, min_size=1, max_size=5, unique=True))
    out = []
    for i, uuid in enumerate(uuids):
        d = pt.TrackDescriptor(uuid=uuid)
        # Siblings with one name are merged by trace_processor (refused here): mostly distinct names.
        name = draw(st.one_of(st.none(), NAMES, st.just(f"track {i}"), st.just(f"track {i}")))
        if name is not None:
            d.name = name
        parents = [t.uuid for t in out if not t.HasField("counter")]
        if parents and draw(st.booleans()):
            d.parent_uuid = draw(st.sampled_from(parents))
        if draw(st.integers(0, 3)) == 0:
            d.counter.SetInParent()
            if draw(st.booleans()):
                d.counter.is_incremental = True
            if draw(st.booleans()):
                d.counter.unit_multiplier = draw(st.sampled_from([1, 3, 1000]))
        if draw(st.booleans()):
            d.child_ordering = draw(st.sampled_from(list(pt.TrackDescriptor.ChildTracksOrdering.values())))
            d.sibling_order_rank = draw(st.integers(-3, 3))
        out.append(d)
    return out


@st.composite
def clock_plan(draw, seq_id: int) -> dict:
    """How one sequence stamps its packets: the clock, whether a ClockSnapshot links it to BOOTTIME,
    its unit, and whether timestamps are deltas."""
    kind = draw(st.sampled_from(["boottime", "monotonic", "incremental", "custom"]))
    if kind == "boottime":
        return {"clock": BOOTTIME, "snapshot": False, "mult": 1, "incremental": False}
    if kind == "monotonic":
        return {"clock": MONOTONIC, "snapshot": draw(st.integers(0, 4)) > 0, "offset": MONOTONIC_OFFSET, "mult": 1,
                "incremental": False}
    return {"clock": draw(st.integers(64, 127)), "snapshot": draw(st.integers(0, 4)) > 0, "offset": draw(OFFSETS),
            "mult": draw(st.sampled_from([1, 1, 1000])), "incremental": kind == "incremental"}


@st.composite
def sequence_packets(draw, seq_id: int, tracks: list[pt.TrackDescriptor], base: int) -> list[pt.TracePacket]:
    """One sequence's packets in order: state clears with interning and defaults, a clock snapshot,
    track descriptors (some re-sent renamed) and events."""
    clock = draw(clock_plan(seq_id))
    packets = []
    interned: dict = {"names": {}, "annotation_names": {}, "strings": {}}
    now = base + draw(st.integers(0, 50))  # this sequence's time, in ns
    last_stamp = None  # the last value of an incremental clock, in its units

    def stamp(p: pt.TracePacket, t: int) -> None:
        nonlocal last_stamp
        units = t // clock["mult"]
        if clock["clock"] != BOOTTIME or draw(st.booleans()):
            p.timestamp_clock_id = clock["clock"]
        if clock["incremental"]:
            p.timestamp, last_stamp = (units - last_stamp) % 2**64, units
        else:
            p.timestamp = units

    def clear(first: bool) -> None:
        nonlocal last_stamp
        p = pt.TracePacket(trusted_packet_sequence_id=seq_id)
        if draw(st.integers(0, 5)) > 0 or not first:
            p.sequence_flags = CLEARED
        elif draw(st.booleans()):
            p.incremental_state_cleared = True
        data, maps = draw(interned_data())
        interned.update(maps)
        p.interned_data.CopyFrom(data)
        if draw(st.booleans()):
            p.trace_packet_defaults.timestamp_clock_id = clock["clock"]
            if draw(st.booleans()):
                p.trace_packet_defaults.track_event_defaults.track_uuid = draw(st.sampled_from([t.uuid for t in tracks]))
        packets.append(p)
        if clock["snapshot"]:
            snap = pt.TracePacket(trusted_packet_sequence_id=seq_id)
            units = now // clock["mult"]
            snap.clock_snapshot.clocks.add(clock_id=BOOTTIME, timestamp=now + clock["offset"])
            c = snap.clock_snapshot.clocks.add(clock_id=clock["clock"], timestamp=units)
            if clock["mult"] != 1:
                c.unit_multiplier_ns = clock["mult"]
            if clock["incremental"]:
                c.is_incremental = True
                last_stamp = units
            packets.append(snap)
        elif clock["incremental"]:
            last_stamp = 0

    if draw(st.integers(0, 6)) == 0:  # an event before any state: skipped by both
        p = pt.TracePacket(trusted_packet_sequence_id=seq_id, sequence_flags=NEEDS_STATE, timestamp=now)
        p.track_event.type, p.track_event.name, p.track_event.track_uuid = INSTANT, "early", tracks[0].uuid
        packets.append(p)
    clear(first=True)
    for _ in range(draw(st.integers(1, 14))):
        step = draw(st.sampled_from(["event"] * 8 + ["descriptor", "clear", "overflow"]))
        if step == "clear":
            clear(first=False)
            continue
        if step == "descriptor":
            d = pt.TrackDescriptor()
            d.CopyFrom(draw(st.sampled_from(tracks)))
            if draw(st.booleans()):
                d.name = draw(NAMES)
            packets.append(pt.TracePacket(trusted_packet_sequence_id=seq_id, track_descriptor=d))
            continue
        now += draw(st.sampled_from([0, 1, 5, 100, 10**6]))
        p = pt.TracePacket(trusted_packet_sequence_id=seq_id)
        if draw(st.booleans()):
            p.sequence_flags = NEEDS_STATE
        stamp(p, now)
        if step == "overflow":  # a timestamp past int64, or a delta that takes it there
            p.timestamp = draw(st.sampled_from([2**63, 2**64 - 1, 2**63 - 1]))
            if clock["incremental"]:
                last_stamp = (last_stamp + p.timestamp) % 2**64
        e = p.track_event
        track = draw(st.sampled_from(tracks))
        if draw(st.integers(0, 4)) > 0:
            e.track_uuid = track.uuid
        is_counter = track.HasField("counter")
        if draw(st.integers(0, 15)) == 0:  # the wrong kind of event for the track
            is_counter = not is_counter
        if is_counter:
            e.type = COUNTER
            if draw(st.booleans()):
                e.counter_value = draw(st.one_of(st.integers(-100, 100), INT64))
            else:
                e.double_counter_value = draw(DOUBLES)
        else:
            e.type = draw(st.sampled_from([BEGIN, BEGIN, END, END, INSTANT]))
            plain_end = e.type == END and draw(st.integers(0, 9)) > 0  # (an END with fields is refused)
            naming = "none" if e.type == END else draw(st.sampled_from(["name", "iid", "none"]))
            if naming == "name":
                e.name = draw(NAMES)
            elif naming == "iid":
                e.name_iid = draw(st.sampled_from(sorted(interned["names"]) or [1]))
            if not plain_end:
                e.categories.extend(draw(st.lists(NAMES, max_size=2)))
                draw(annotations(e, interned))
            if not plain_end and draw(st.integers(0, 2)) == 0:
                e.flow_ids.extend(draw(st.lists(st.integers(1, 3), max_size=2, unique=True)))
            if not plain_end and draw(st.integers(0, 3)) == 0:
                e.terminating_flow_ids.extend(draw(st.lists(st.integers(1, 3), max_size=1)))
        packets.append(p)
    return packets


@st.composite
def traces(draw) -> list[pt.TracePacket]:
    """A trace of one to three sequences, their packets interleaved, some runs zlib-bundled."""
    tracks = draw(track_descriptors())
    # Some tracks are seen only in a re-sent descriptor, or never; a parent is always sent before its children.
    sent = {d.uuid for d in tracks if draw(st.integers(0, 5)) > 0}
    for d in reversed(tracks):
        if d.uuid in sent and d.parent_uuid:
            sent.add(d.parent_uuid)
    descriptors = [pt.TracePacket(trusted_packet_sequence_id=9, track_descriptor=d) for d in tracks if d.uuid in sent]
    base = 10**9
    queues = [draw(sequence_packets(seq_id, tracks, base)) for seq_id in range(1, draw(st.integers(1, 3)) + 1)]
    packets = list(descriptors)
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        packets.append(q.pop(0))
    monotonic_snapshots(packets)
    out, i = [], 0
    while i < len(packets):
        n = draw(st.integers(0, 4))
        if n > 1 and draw(st.integers(0, 3)) == 0:
            out.append(pt.TracePacket(compressed_packets=zlib.compress(serialize(packets[i:i + n]))))
            i += n
        else:
            out.append(packets[i])
            i += 1
    return out


def monotonic_snapshots(packets) -> None:
    """Shift snapshots (in file order) whose BOOTTIME goes back to the latest one so far: every clock in
    one moves by the same time, so each clock keeps its offset to BOOTTIME."""
    latest = 0
    for p in packets:
        if not p.HasField("clock_snapshot"):
            continue
        boot = next(c for c in p.clock_snapshot.clocks if c.clock_id == BOOTTIME)
        shift = -(-(latest - boot.timestamp) // 1000) * 1000 if boot.timestamp < latest else 0
        for c in p.clock_snapshot.clocks:
            c.timestamp += shift // (c.unit_multiplier_ns or 1)
        latest = boot.timestamp
