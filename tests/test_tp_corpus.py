"""The corpus of traces on which the embedded backend once answered differently from trace_processor
(tests/data/tp_corpus/, written by tp_corpus_cases.py): it now gives the rows trace_processor gave,
stored beside each trace, so this runs without the binary. Where `RBLN_PERFETTO_TP_BIN` is set, the
stored rows are checked against the binary too."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from tp_compare import TP_BIN, differences, embedded_rows, tp_rows
from tp_corpus_cases import CASES
from trace_checks import check_scanner_agrees

from rbln_perfetto.reader import scanner_available

CORPUS = Path(__file__).parent / "data" / "tp_corpus"


@pytest.mark.parametrize("case", sorted(CASES))
def test_embedded_backend_gives_trace_processors_rows(case):
    want = json.loads((CORPUS / f"{case}.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (several cases hold what trace_processor counts in stats)
        got, _ = embedded_rows(CORPUS / f"{case}.pb")
    assert not differences(want, got), differences(want, got)
    if scanner_available():  # (check_scanner_agrees would skip the test without it)
        check_scanner_agrees(CORPUS / f"{case}.pb")


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
@pytest.mark.parametrize("case", sorted(CASES))
def test_stored_rows_are_trace_processors(case, tmp_path):
    trace = tmp_path / "trace.pb"
    trace.write_bytes((CORPUS / f"{case}.pb").read_bytes())
    assert tp_rows(trace) == json.loads((CORPUS / f"{case}.json").read_text())
