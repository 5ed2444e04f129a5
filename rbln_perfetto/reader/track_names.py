"""The names used tracks show, as trace_processor gives them, and what it would lay out otherwise.

A track without a name in its descriptor (or with no descriptor) takes the name of its first event
(none for an END), unless a child's event used it first (then it has none).
trace_processor merges sibling slice tracks that share a parent and a name (the default
`SIBLING_MERGE_BEHAVIOR_BY_TRACK_NAME`, placing each slice on whichever merged track is free): the embedded
reader places global ones alike (`merged_tracks`); merged tracks under a thread or a process, which it
does not lay out, are counted (`unsupported_merged_sibling_tracks`) and the backend warns, rather than
answer with other track ids."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .tables import TraceTables

MERGED_SIBLINGS = "unsupported_merged_sibling_tracks"
PARENT_WITHOUT_DESCRIPTOR = "unsupported_track_parent_without_descriptor"
# A track whose descriptor (or an ancestor's) names a thread or a process: trace_processor makes it a thread
# or process track, with its own type and name; the embedded reader lists the thread and process (the
# `thread`, `process`, `thread_track`, ... tables) but gives the track the global kind.
THREAD_PROCESS_TRACKS = "unsupported_thread_or_process_tracks"


def first_event_names(tables: TraceTables, ts, tracks, name_prefix, name_id) -> dict:
    """{uuid: (prefix, string id)} of the first event (in processing order) on each track that may need a
    name: declared without one, or never declared. Called before the slices are built."""
    named = {u for u, t in tables.tracks.items() if t.name is not None or t.is_counter or t.merged}
    candidates = np.setdiff1d(np.unique(tracks), np.asarray(sorted(named), dtype=np.uint64)) if len(tracks) else []
    if not len(candidates):
        return {}
    rows = np.flatnonzero(np.isin(tracks, candidates))
    rows = rows[np.argsort(ts[rows], kind="stable")]
    uuids, first = np.unique(tracks[rows], return_index=True)
    return {u: (int(name_prefix[r]), int(name_id[r])) for u, r in zip(uuids.tolist(), rows[first].tolist())}


def name_tracks(tables: TraceTables, declared: set, first_names: dict) -> None:
    """Name the unnamed used slice tracks after their first event (`first_event_names`); count sibling tracks
    that trace_processor would merge into one, and tracks whose parent has no descriptor (`declared`: the
    uuids that have one)."""
    strings = tables.strings
    for uuid, (prefix, i) in first_names.items():
        t = tables.tracks.get(uuid)
        if t is not None and t.name is None and not t.first_used_as_parent:
            t.name = None if i < 0 else strings[i] if prefix < 0 else f"{prefix}{strings[i]}"
    siblings: dict = defaultdict(int)
    for uuid in tables.used_tracks:
        t = tables.tracks[uuid]
        if t.mergeable and not t.is_counter and not t.merged:  # (merged sets are placed: see merged_tracks)
            siblings[(t.parent_uuid, t.name)] += 1
    merged = sum(n - 1 for n in siblings.values())
    if merged:
        tables.stats[MERGED_SIBLINGS] += merged
    orphans = sum(1 for u in tables.used_tracks
                  if tables.tracks[u].parent_uuid is not None and tables.tracks[u].parent_uuid not in declared)
    if orphans:  # trace_processor drops their events until the parent track exists, if ever
        tables.stats[PARENT_WITHOUT_DESCRIPTOR] += orphans
    owned = sum(1 for u in tables.used_tracks if tables.descriptor_owner(u) is not None)
    if owned:
        tables.stats[THREAD_PROCESS_TRACKS] += owned
