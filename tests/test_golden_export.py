"""Refactors keep what users get byte for byte: exports of the kept capture, compiled command tables."""

import json

from golden_export import DIGESTS, PROGRAMS, export_digests, program_digests


def test_export_is_byte_identical_to_the_recorded_digests(tmp_path):
    assert export_digests(tmp_path) == json.loads(DIGESTS.read_text())


def test_compiled_programs_match_the_recorded_digests(tiny_model):
    assert program_digests(tiny_model) == json.loads(PROGRAMS.read_text())
