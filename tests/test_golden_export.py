"""Refactors keep what users get byte for byte: exports of the kept capture, compiled command tables."""

import json

from golden_export import DIGESTS, PROGRAMS, VARIANTS, export_digests, program_digests


def test_export_is_byte_identical_to_the_recorded_digests(tmp_path):
    assert export_digests(tmp_path) == json.loads(DIGESTS.read_text())


def test_export_bytes_do_not_depend_on_the_exports_made_before_in_the_process(tmp_path):
    """Templates outlive an export (`template_cache`); in another order, and again, the bytes stay the recorded ones."""
    recorded = json.loads(DIGESTS.read_text())
    for i, variant in enumerate((*reversed(VARIANTS), "default")):
        assert export_digests(tmp_path / str(i), order=(variant,))[variant] == recorded[variant]


def test_compiled_programs_match_the_recorded_digests(tiny_model):
    assert program_digests(tiny_model) == json.loads(PROGRAMS.read_text())
