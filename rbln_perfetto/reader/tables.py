"""What a read trace holds: its tracks and its slice, counter, args and flow columns (`TraceTables`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Track:
    """A track descriptor as trace_processor reserves it (the first one sent for a uuid; see decoding)."""

    uuid: int
    name: str | None = None  # None: unnamed (a used track then takes its first event's name)
    parent_uuid: int | None = None
    description: str = ""
    is_counter: bool = False
    unit: str = ""
    id: int | None = None  # assigned when first used, as trace_processor does
    mergeable: bool = True  # False: SIBLING_MERGE_BEHAVIOR_NONE (its own track, renamed by every descriptor)
    counter_multiplier: int = 1
    counter_incremental: bool = False
    first_used_as_parent: bool = False  # given an id for a child's event before any event of its own
    is_state: bool = False  # its descriptor has a `state` field (the only tracks TYPE_STATE events change)
    # A track of a merged set (see merged_tracks): the key's name is its name, never its first event's
    merged: bool = False
    # The used track its parent_id shows, when not its parent's own (a merged parent's first track)
    parent_track: int | None = None
    thread: tuple | None = None  # (pid, tid, thread name or None) from its descriptor's `thread`
    process: tuple | None = None  # (pid, process name or None, cmdline or None) from its descriptor's `process`

    @property
    def shown_parent(self) -> int | None:
        """The uuid of the used track its `parent_id` is."""
        return self.parent_track if self.parent_track is not None else self.parent_uuid

    @property
    def type(self) -> str:
        """trace_processor's `track.type` for a global TrackEvent track of this kind."""
        if self.is_counter:
            return "global_counter_track_event"
        return "global_merged_track_event" if self.mergeable else "global_track_event"


@dataclass
class TraceTables:
    """Columns of the decoded trace: slice i is row i of every `slice_*` column."""

    tracks: dict[int, Track] = field(default_factory=dict)
    used_tracks: list[int] = field(default_factory=list)  # uuids in track-id order
    slice_ts: np.ndarray = None
    slice_dur: np.ndarray = None
    slice_instant: np.ndarray = None  # bool: made by a TYPE_INSTANT event (not a BEGIN/END pair)
    slice_track: np.ndarray = None  # track uuid
    slice_depth: np.ndarray = None
    slice_parent: np.ndarray = None  # slice id, -1 for none
    slice_arg_set: np.ndarray = None  # -1 for none
    # A name is strings[name_id] after the decimal name_prefix (-1: none), as the SQL backend stores it;
    # name_id -1: the event has no name (NULL).
    slice_name_prefix: np.ndarray = None
    slice_name_id: np.ndarray = None
    slice_category_id: np.ndarray = None  # into strings, -1 for none
    strings: list[str] = field(default_factory=list)
    # Argument sets, normalized: each distinct (key, value) once, a set as the ids of its values.
    arg_values: list[tuple] = field(default_factory=list)  # value id -> (key, value)
    arg_set_values: list[tuple] = field(default_factory=list)  # arg_set_id -> value ids, in key order
    _arg_dicts: list = field(default_factory=list, repr=False)
    counter_ts: np.ndarray = None
    counter_track: np.ndarray = None
    counter_value: np.ndarray = None
    flows: list[tuple[int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Every track descriptor packet that names a thread or a process, as (time trace_processor parses it at,
    # file position, track uuid, ("thread", pid, tid, name) or ("process", pid, name)): the thread and process
    # tables are filled in that order (see reader.threads)
    owner_descriptors: list[tuple] = field(default_factory=list)

    @property
    def slice_count(self) -> int:
        return len(self.slice_ts)

    def arg_set(self, arg_set_id: int) -> dict:
        """{key: value} of one argument set (built on first use)."""
        if len(self._arg_dicts) < len(self.arg_set_values):
            self._arg_dicts.extend([None] * (len(self.arg_set_values) - len(self._arg_dicts)))
        d = self._arg_dicts[arg_set_id]
        if d is None:
            values = self.arg_values
            d = self._arg_dicts[arg_set_id] = dict(values[v] for v in self.arg_set_values[arg_set_id])
        return d

    # Whole columns as Python lists: slow, for inspection and for comparing the reader's two paths
    # (tests/trace_checks.py); the SQL loader reads the arrays above instead.
    def descriptor_owner(self, uuid: int) -> Track | None:
        """The track (`uuid`'s, or its nearest ancestor's) whose descriptor names a thread or a process."""
        seen = set()
        while uuid is not None and uuid not in seen:
            seen.add(uuid)
            t = self.tracks.get(uuid)
            if t is None:
                return None
            if t.thread is not None or t.process is not None:
                return t
            uuid = t.parent_uuid
        return None

    @property
    def arg_sets(self) -> list[dict]:
        return [self.arg_set(i) for i in range(len(self.arg_set_values))]

    @property
    def slice_name(self) -> list[str]:
        s = self.strings
        return [None if i < 0 else s[i] if p < 0 else f"{p}{s[i]}"
                for p, i in zip(self.slice_name_prefix.tolist(), self.slice_name_id.tolist())]

    @property
    def slice_category(self) -> list[str | None]:
        return [None if i < 0 else self.strings[i] for i in self.slice_category_id.tolist()]
