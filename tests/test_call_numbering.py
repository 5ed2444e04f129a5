"""`sequence_index` is a submodule call's place among all submodule calls of the run, profiled or
not: leaving a submodule unprofiled changes no other call's file name or command slice names."""

import pytest
from conftest import run
from trace_checks import track_name
from trace_objects import read_trace

import rbln_perfetto
from rbln_perfetto.naming import parse_invocation_file_name


def profiled_runs(make_pipe, out, calls, **overrides):
    """`calls` pipeline calls profiled into one capture."""
    pipe = make_pipe({}, **overrides)
    with rbln_perfetto.profile(out) as prof:
        for _ in range(calls):
            run(pipe, steps=2)
    return prof


def slice_names(path, track):
    trace = read_trace(path)
    return [s.name for s in trace.slices if track_name(trace, s) == track]


def workloads(path):
    """(submodule, sequence_index, call_index) of every invocation in a trace, in order."""
    trace = read_trace(path)
    return [(s.args["debug.submodule"], s.args["debug.sequence_index"], s.args["debug.call_index"])
            for s in trace.slices if track_name(trace, s) == "Workload"]


@pytest.mark.parametrize(
    "left_out,calls",
    [("text_encoder_3", 1), ("text_encoder", 2)],
    ids=["t5-unprofiled", "first-encoder-unprofiled-two-calls"],
)
def test_an_unprofiled_submodule_shifts_no_other_number(make_pipe, tmp_path, left_out, calls):
    full = profiled_runs(make_pipe, tmp_path / "full", calls)
    partial = profiled_runs(make_pipe, tmp_path / "partial", calls, **{left_out: {"activate_profiler": False}})

    kept = [p for p in full.invocation_files if parse_invocation_file_name(p.name)[1] != left_out]
    assert len(kept) < len(full.invocation_files)
    assert [p.name for p in partial.invocation_files] == [p.name for p in kept]
    if calls == 1:  # the example: the transformer stays the 7th call of the run
        assert "0006_transformer_0.pb" in [p.name for p in partial.invocation_files]
    for mine, theirs in zip(partial.invocation_files, kept):
        assert slice_names(mine, "Compute") == slice_names(theirs, "Compute"), mine.name
        assert slice_names(mine, "Workload") == slice_names(theirs, "Workload"), mine.name

    full_calls = workloads(full.aggregate_file)
    assert [w for w in full_calls if w[0] != left_out] == workloads(partial.aggregate_file)
    # Every call of the run holds a number: the profiled ones keep theirs, the gaps are the left-out ones.
    assert [w[1] for w in full_calls] == list(range(len(full_calls)))
