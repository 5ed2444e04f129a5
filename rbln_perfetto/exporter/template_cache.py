"""Program templates kept across exports: built once per compiled program, not once per export.

A template's bytes depend on its program's content, its parameters (timestamp width, sequence-index
digits, step arg, memory baseline, command budget) and the iids the export's `Interner` gives the
program's annotation strings. The first two make the key; the iids are checked on every use: the
program's strings are interned in the order the template first used them, which is exactly what
building it would do to the interner, and the template is reused when they get the iids it was
built with (always, when the same capture is exported again with the same options). Otherwise one is
built for those iids, so an export's bytes never depend on what was exported before it in the process.

Memory is bounded by `MAX_BYTES` of template bytes; the least recently used templates go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .interning import Interner
from .program_template import ProgramTemplate
from .tracks import TrackIds

MAX_BYTES = 256 << 20  # the templates of several SD3-medium runs (about 2 MB a transformer program)


def _size(key: tuple, group: dict) -> int:
    return len(key[0]) + sum(t.nbytes for t in group.values())


class TemplateCache:
    """Templates by (program record bytes, parameters), then by string iids; safe to share between threads.

    A program's strings, and their order, depend on the program and the parameters alone, so the
    templates under one key differ only in their iids: exports with other interning (say, without
    the aggregate, whose host events intern strings too) keep their own template beside the others.
    """

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, dict[tuple[int, ...], ProgramTemplate]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, program, program_record: bytes, interner: Interner, baseline_bytes: int, width: int, digits: int,
            command_budget: int = 0, with_step: bool = False) -> ProgramTemplate:
        """The template of `program` (a capture `Program`, read from the capture record `program_record`)
        for this export."""
        key = (program_record, baseline_bytes, width, digits, command_budget, with_step)
        with self._lock:
            group = self._entries.get(key)
            if group is not None:
                self._entries.move_to_end(key)
                strings = next(iter(group.values())).strings
                template = group.get(tuple(map(interner.string, strings)))
                if template is not None:
                    return template
        template = ProgramTemplate(program, TrackIds(), interner, baseline_bytes, width, digits,
                                   command_budget=command_budget, with_step=with_step)
        with self._lock:
            group = self._entries.pop(key, {})
            self._bytes -= _size(key, group) if group else 0
            group[template.string_iids] = template
            self._entries[key] = group
            self._bytes += _size(key, group)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= _size(*self._entries.popitem(last=False))
        return template

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


TEMPLATES = TemplateCache()
