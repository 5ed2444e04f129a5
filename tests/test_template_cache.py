"""Program templates kept across exports: reused only when the bytes they would get are the same."""

import numpy as np
from golden_export import CAPTURE

from rbln_perfetto.recorder.capture import read_info
from rbln_perfetto.exporter.interning import Interner
from rbln_perfetto.exporter.program_template import ProgramTemplate
from rbln_perfetto.exporter.template_cache import TemplateCache
from rbln_perfetto.exporter.tracks import TrackIds


INFO = read_info(CAPTURE)


def _programs():
    return list(INFO.programs.values())


def _assembled(template: ProgramTemplate) -> bytes:
    ticks = np.arange(template.layout.num_ticks, dtype=np.int64) * 1000 + 10**9
    return template.assemble(ticks, 7, 2, 3, 5_000, step=1)


def _shifted() -> Interner:
    """An export's interner that met another string before the program's (a host event's detail)."""
    interner = Interner()
    interner.string("tokenize: 77 tokens")
    return interner


def _get(cache: TemplateCache, program, interner: Interner, baseline: int = 1024) -> ProgramTemplate:
    return cache.get(program, INFO.program_records[program.program_id], interner, baseline, 4, 1)


def test_a_program_seen_again_with_the_same_iids_reuses_its_template():
    cache = TemplateCache()
    program = _programs()[0]
    assert _get(cache, program, Interner()) is _get(cache, program, Interner())


def test_other_parameters_or_other_iids_build_the_template_the_export_needs():
    cache = TemplateCache()
    program = _programs()[0]
    cached = _get(cache, program, Interner())
    assert _get(cache, program, Interner(), baseline=2048) is not cached
    template = _get(cache, program, _shifted())
    fresh = ProgramTemplate(program, TrackIds(), _shifted(), 1024, 4, 1)
    assert template is not cached and template.string_iids == fresh.string_iids != cached.string_iids
    assert _assembled(template) == _assembled(fresh) != _assembled(cached)
    assert template.static_interned == fresh.static_interned
    # Both stay: exports with either interning find theirs.
    assert _get(cache, program, Interner()) is cached and _get(cache, program, _shifted()) is template


def test_memory_stays_under_the_bound_dropping_the_least_recently_used():
    programs = _programs()[:3]
    sizes = [ProgramTemplate(p, TrackIds(), Interner(), 1024, 4, 1).nbytes + len(INFO.program_records[p.program_id])
             for p in programs]
    cache = TemplateCache(max_bytes=sizes[0] + max(sizes[1], sizes[2]))
    kept = [_get(cache, p, Interner()) for p in programs[:2]]
    _get(cache, programs[0], Interner())  # used again: now the second is the least recently used
    _get(cache, programs[2], Interner())  # over the bound: the second goes
    assert _get(cache, programs[0], Interner()) is kept[0]
    assert _get(cache, programs[1], Interner()) is not kept[1]
