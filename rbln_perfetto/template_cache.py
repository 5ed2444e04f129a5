"""Program templates kept across exports: built once per compiled program, not once per export.

A template's bytes depend on its program's content, its parameters (timestamp width, sequence-index
digits, step arg, memory baseline, command budget) and the iids the export's `Interner` gives the
program's annotation strings. The first two make the key; the iids are checked on every use: the
program's strings are interned in the order the template first used them, which is exactly what
building it would do to the interner, and the template is reused when they get the iids it was
built with (always, when the same capture is exported again). Otherwise it is built afresh, so an
export's bytes never depend on what was exported before it in the process.

Memory is bounded by `MAX_BYTES` of template bytes; the least recently used templates go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .interning import Interner
from .program_template import ProgramTemplate
from .tracks import TrackIds

MAX_BYTES = 256 << 20  # the templates of several SD3-medium runs (about 2 MB a transformer program)


def _size(key: tuple, template: ProgramTemplate) -> int:
    return len(key[0]) + template.nbytes


class TemplateCache:
    """Templates by (program record bytes, parameters); safe to share between threads."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, ProgramTemplate] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, program, program_record: bytes, interner: Interner, baseline_bytes: int, width: int, digits: int,
            command_budget: int = 0, with_step: bool = False) -> ProgramTemplate:
        """The template of `program` (a capture `Program`, read from the capture record `program_record`)
        for this export."""
        key = (program_record, baseline_bytes, width, digits, command_budget, with_step)
        with self._lock:
            template = self._entries.get(key)
            if template is not None:
                self._entries.move_to_end(key)
        if template is not None and tuple(map(interner.string, template.strings)) == template.string_iids:
            return template
        template = ProgramTemplate(program, TrackIds(), interner, baseline_bytes, width, digits,
                                   command_budget=command_budget, with_step=with_step)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _size(key, old)
            self._entries[key] = template
            self._bytes += _size(key, template)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= _size(*self._entries.popitem(last=False))
        return template

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


TEMPLATES = TemplateCache()
