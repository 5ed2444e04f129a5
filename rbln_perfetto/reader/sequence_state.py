"""One packet sequence's incremental state (`SequenceState`), as trace_processor keeps it per
trusted_packet_sequence_id: interning tables, packet defaults, whether it is valid (cleared since the
sequence began), and its generation (a new one at every clearing, so cached argument sets do not outlive it)."""

from __future__ import annotations


class SequenceState:
    """One packet sequence's incremental state: its interning tables and packet defaults."""

    __slots__ = ("names", "annotation_names", "strings", "categories", "clock_id", "default_track", "valid",
                 "generation", "counter_values")

    def __init__(self, valid=False, generation=0):
        self.names, self.annotation_names, self.strings, self.categories = {}, {}, {}, {}
        self.counter_values: dict[int, float] = {}  # incremental counter track -> its value so far
        self.clock_id = 0
        self.default_track = None
        self.valid = valid
        self.generation = generation
