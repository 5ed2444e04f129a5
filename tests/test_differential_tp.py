"""The embedded backend against the real trace_processor on generated TrackEvent traces
(`trace_strategies.traces`): identical rows for slice, track, counter, flow, args and the
error-severity stats, or a refusal (a stats row and the one-line warning) for what it does not read.

Runs where `RBLN_PERFETTO_TP_BIN` names a trace_processor (CI sets it) with
`RBLN_PERFETTO_FUZZ_EXAMPLES` examples (default 300; `make fuzz` runs thousands); skipped elsewhere.
A failure prints the shrunk trace's packets; keep it under tests/data/tp_corpus/ (see
test_tp_corpus.py) once fixed."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from tp_compare import TP_BIN, differences, embedded_rows, refusals, tp_rows
from trace_checks import check_scanner_agrees
from trace_strategies import serialize, traces

from rbln_perfetto.reader import scanner_available

EXAMPLES = int(os.environ.get("RBLN_PERFETTO_FUZZ_EXAMPLES", "300"))

pytestmark = pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")


# CI runs a fixed set of examples (derandomized), so a pass stays a pass; `make fuzz` sets
# RBLN_PERFETTO_FUZZ_EXAMPLES and explores new ones each run.
@settings(max_examples=EXAMPLES, deadline=None, print_blob=True, derandomize="RBLN_PERFETTO_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(packets=traces())
def test_embedded_backend_answers_as_trace_processor(tmp_path_factory, packets):
    path = tmp_path_factory.mktemp("diff") / "trace.pb"
    path.write_bytes(serialize(packets))
    want = tp_rows(path)
    got, warned = embedded_rows(path)
    refused = refusals(got)
    if refused:  # what it does not read: said in stats and in the one-line warning
        assert any(name in w for w in warned for name in refused), (refused, warned)
        return
    assert not differences(want, got), differences(want, got) + "\n" + "\n".join(map(str, packets))
    if scanner_available():  # the reader's two paths agree on it too
        check_scanner_agrees(path)
