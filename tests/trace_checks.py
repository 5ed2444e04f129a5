"""Invariants every rbln-perfetto trace must satisfy, checked on traces parsed with the perfetto protos."""

import re
from collections import defaultdict

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from trace_objects import iter_packets, read_trace

# The command-slice name format of docs/traces.md, written out here as an oracle independent of rbln_perfetto.naming.
NAME = re.compile(r"^([0-9]+)_(.+)_([0-9]+)\Z", re.DOTALL)  # groups: sequence_index, layer, command_index


def raw_events_per_track(path):
    """(type, resolved timestamp) per track in file order, decoding the incremental clock by hand."""
    events = defaultdict(list)
    clock = None
    for p in iter_packets(path):
        if p.HasField("clock_snapshot"):
            for c in p.clock_snapshot.clocks:
                if c.clock_id == 64:
                    assert c.is_incremental
                    clock = c.timestamp
            continue
        if not p.HasField("track_event"):
            continue
        if p.timestamp_clock_id == pt.BUILTIN_CLOCK_BOOTTIME:
            ts = ("boot", p.timestamp)
        else:
            assert p.timestamp_clock_id in (0, 64)
            clock += p.timestamp
            ts = ("mono", clock)
        events[p.track_event.track_uuid].append((p.track_event.type, ts))
    return events


def check_trace(path):
    """Nesting, ordering, begin/end pairing and naming; returns the parsed trace."""
    for track, evs in raw_events_per_track(path).items():
        depth = 0
        stamps = [ts for _, (kind, ts) in evs if kind == "mono"]
        assert stamps == sorted(stamps), f"{path}: timestamps go backwards on track {track}"
        for kind, _ in evs:
            if kind == pt.TrackEvent.TYPE_SLICE_BEGIN:
                depth += 1
            elif kind == pt.TrackEvent.TYPE_SLICE_END:
                depth -= 1
                assert depth >= 0, f"{path}: end without begin on track {track}"
        assert depth == 0, f"{path}: {depth} slices never end on track {track}"

    trace = read_trace(path)
    assert not dict(trace.stats), f"{path}: reader stats {dict(trace.stats)}"
    by_track = defaultdict(list)
    for s in trace.slices:
        assert s.dur >= 0, f"{path}: slice {s.name} never ends"
        by_track[s.track_uuid].append(s)
    for slices in by_track.values():
        for s in slices:
            if s.parent_id is not None:
                parent = trace.slices[s.parent_id]
                assert parent.ts <= s.ts and s.ts + s.dur <= parent.ts + parent.dur, f"{s.name} escapes {parent.name}"
        for depth in {s.depth for s in slices}:
            level = sorted((s for s in slices if s.depth == depth), key=lambda s: s.ts)
            for a, b in zip(level, level[1:]):
                if a.parent_id == b.parent_id:
                    assert a.ts + a.dur <= b.ts, f"{path}: siblings {a.name} and {b.name} overlap"
    return trace


def track_name(trace, s):
    return trace.tracks[s.track_uuid].name


def device_of(trace, s):
    parent = trace.tracks[trace.tracks[s.track_uuid].parent_uuid]
    return int(parent.name.split()[-1])


def check_scanner_agrees(path):
    """The reader's C scanner path and its pure-Python path decode `path` to the same tables."""
    import numpy as np

    from rbln_perfetto.reader import read_tables, scanner_available

    if not scanner_available():
        pytest.skip("the C packet scanner is not built (or RBLN_PERFETTO_PURE_PYTHON=1): nothing to compare")
    fast, pure = read_tables(path), read_tables(path, scanner=None)
    for column in ("slice_ts", "slice_dur", "slice_track", "slice_depth", "slice_parent", "slice_arg_set",
                   "counter_ts", "counter_track", "counter_value"):
        assert np.array_equal(getattr(fast, column), getattr(pure, column)), column
    assert fast.slice_name == pure.slice_name and fast.slice_category == pure.slice_category
    assert fast.arg_sets == pure.arg_sets and fast.flows == pure.flows and fast.used_tracks == pure.used_tracks
    assert {k: v for k, v in fast.stats.items() if v} == {k: v for k, v in pure.stats.items() if v}


def check_loaders_agree(path):
    """The embedded backend's two loaders (the C extension's database image with its C EXTRACT_ARG, and
    INSERTs from Python with the Python EXTRACT_ARG) give the same tables and the same EXTRACT_ARG
    answers, NULLs included; the image passes SQLite's integrity check."""
    import warnings

    from rbln_perfetto.query import sqlite_tables
    from rbln_perfetto.query.sqlite_backend import SqliteBackend

    if sqlite_tables.EXTENSION is None:
        pytest.skip("the C table writer is not built (or RBLN_PERFETTO_PURE_PYTHON=1): nothing to compare")
    extension = sqlite_tables.EXTENSION
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (what the trace holds that the reader counts in stats)
        fast = SqliteBackend(path)
        try:
            sqlite_tables.EXTENSION = None
            pure = SqliteBackend(path)
        finally:
            sqlite_tables.EXTENSION = extension
    assert pure._args is not None, "the Python loader's backend has the Python EXTRACT_ARG"
    assert fast.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    objects = pure.db.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY rowid").fetchall()
    assert fast.db.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY rowid").fetchall() == objects
    for kind, name, _ in objects:
        if kind == "index":  # (an index holds no rows of its own: the tables' rows are compared)
            continue
        q = f"SELECT *, {', '.join(f'typeof({c})' for c in _columns(pure.db, name))} FROM {name}"
        assert fast.db.execute(q).fetchall() == pure.db.execute(q).fetchall(), name
    keys = [k for (k,) in pure.db.execute("SELECT DISTINCT key FROM args")] + ["debug.no_such_key"]
    sets = pure.db.execute("SELECT count(DISTINCT arg_set_id) FROM args").fetchone()[0]
    probes = [(s, k) for s in [*range(-1, sets + 1), None, 1.5, "0"] for k in [*keys, None, 1]]
    q = "SELECT extract_arg(?, ?), typeof(extract_arg(?, ?))"
    for s, k in probes:
        assert fast.db.execute(q, (s, k, s, k)).fetchall() == pure.db.execute(q, (s, k, s, k)).fetchall(), (s, k)
    fast.close()
    pure.close()


def _columns(db, table):
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
