"""Read Perfetto TrackEvent traces into slice, track, args, counter and flow tables (`read_tables`).

Follows trace_processor's semantics for what rbln-perfetto writes and what its reference traces
exercise: sequence-scoped interning (event names, categories, annotation names, annotation string
values), incremental-state clearing, `TracePacketDefaults` (timestamp clock, default track), clock
snapshots with builtin and sequence-scoped (incremental) clocks converted to BOOTTIME through the
snapshot at or before each timestamp (events before their clock's first snapshot deferred to the end of
the file), legacy microsecond timestamps, sibling tracks merged by name as trace_processor places them,
zlib `compressed_packets`, events sorted by timestamp (stable)
before slices are built, begin/end stacks per track (END events matched by name and category, instants
kept on the stack as trace_processor's SliceTracker does), v1 and v2 flow ids, counter tracks, debug
annotations (and legacy JSON values) as `debug.<name>` args with identical argument sets shared, thread
and process descriptors listed, as trace_processor does.

What it does not understand (other payloads, zstd bundles, unknown event types) is counted in
`stats`, with trace_processor's stat names where one exists, never mis-read.
Slices that begin and never end keep dur = -1, as in trace_processor, and are counted in `stats` as
`unfinished_slices` (a row of ours: trace_processor v58.2 has no stat for them).

Speed: the optional C scanner (`scanner`) records plain TrackEvent packets, which are decoded a
batch at a time with numpy (`scanned_batches`); other packets are split by protobuf's C parser through a
bytes view (`packet_view`) and decoded one at a time (`decoding`); each distinct TrackEvent byte
string and argument set is decoded once; slices are built with numpy (`slices`).

Modules: `tables` (what a read trace holds), `decoding` (packets -> event columns, one at a time),
`scanned_batches` (batches of scanned packets -> event columns), `read_state` (what a pass accumulates),
`merged_tracks` (sibling tracks trace_processor merges), `threads` (the thread and process tables),
`sequence_state`, `columns`, `debug_args`, `clocks`, `memory`, `scanner`, `packet_view`, `slices`, `track_names`, `diagnosis` (what is wrong
with a file as a trace: the messages both query backends give).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import TraceReadError
from .decoding import PacketDecoder
from .diagnosis import EMPTY, UNFINISHED_SLICES, describe_non_trace
from .memory import keep_big_arrays_mmapped
from .merged_tracks import merge_sibling_tracks
from .scanner import SCANNER, scanner_available
from .slices import build_slices
from .tables import TraceTables, Track
from .track_names import first_event_names, name_tracks

__all__ = ["TraceReadError", "TraceTables", "Track", "read_tables", "scanner_available"]


def read_tables(path: str | os.PathLike, *, scanner="auto") -> TraceTables:
    """Decode a trace. `scanner`: "auto" (the C packet scanner when it is built), or None (pure Python)."""
    path = Path(path)
    keep_big_arrays_mmapped()
    tables = TraceTables()
    data = path.read_bytes()
    if not data:
        raise TraceReadError(f"{path}: {EMPTY}")
    decoder = PacketDecoder(path, tables, SCANNER if scanner == "auto" else scanner)
    try:
        decoder.read_buffer(data, top_level=True)
    except DecodeError as exc:  # a packet that frames well but whose payload does not parse
        what = re.search(r"type '(?:[\w.]*\.)?(\w+)'", str(exc))
        raise TraceReadError(f"{path}: a corrupt {what.group(1) if what else 'packet'} in it, not a well-formed "
                             "Perfetto trace") from None
    if not decoder.top_level_packets:
        raise TraceReadError(f"{path}: {describe_non_trace(data)}")  # (framing that holds no packet)
    del data
    decoder.read_deferred()
    columns = decoder.columns
    if columns.count == 0 and not tables.tracks and any(k.startswith("unsupported_packet_field:") for k in tables.stats):
        found = ", ".join(f"{k.split(':', 1)[1]} x{v}" for k, v in tables.stats.items() if k.startswith("unsupported"))
        raise TraceReadError(f"{path}: holds no TrackEvent data this reader understands (found {found}); "
                             "read it with the trace_processor backend")
    declared = set(tables.tracks)  # (tracks with a descriptor; build_slices adds the others)
    flow_events, counters, match_ends = decoder.flow_events, columns.counters(), decoder.matched_ends > 0
    del decoder  # (its caches; the event columns are taken out of `columns` one at a time)
    events = {k: columns.column(k) for k in ("ts", "track", "name_prefix", "name_id", "type")}
    events["track"] = merge_sibling_tracks(tables, events["ts"], events["track"], events["type"],
                                           events["name_prefix"], events["name_id"])
    first_names = first_event_names(tables, events["ts"], events["track"], events["name_prefix"], events["name_id"])
    events.update((k, columns.column(k)) for k in ("cat_id", "argset"))
    del columns
    build_slices(tables, events, counters, flow_events, match_ends)
    name_tracks(tables, declared, first_names)
    unfinished = int(np.count_nonzero(tables.slice_dur == -1))
    if unfinished:  # trace_processor shows them as dur = -1 only; the stats row and the warning are ours
        tables.stats[UNFINISHED_SLICES] = unfinished
    return tables
