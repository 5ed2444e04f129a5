"""Many traces queried as one (`open_traces`): which files a directory gives, the `trace` column, the
embedded process pool against open_trace one trace at a time and against BatchTraceProcessor, errors."""

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import run
from reference_traces import CASES, REFERENCE, reference_trace
from tp_compare import QUERY, differences

import rbln_perfetto
from rbln_perfetto.cli import main
from rbln_perfetto.query import open_trace, open_traces

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
needs_tp = pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
BACKENDS = ["sqlite", pytest.param("trace_processor", marks=needs_tp)]
PER_NAME = "select name, count(*) as n, sum(dur) as total from slice group by name order by name"


@pytest.fixture(scope="module")
def runs(compiled_dirs, tmp_path_factory):
    """A directory of two profiled runs (2 steps, 1 step): run-a/, run-b/."""
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs({"text_encoder_3": {"device": 1}}))
    pipe.set_progress_bar_config(disable=True)
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for name, steps in (("run-a", 2), ("run-b", 1)):
        with rbln_perfetto.profile(root / name) as prof:
            run(pipe, steps=steps)
        results[name] = prof
    return root, results


def test_a_run_directory_gives_its_invocation_traces_in_run_order(runs):
    root, results = runs
    a = results["run-a"]
    with open_traces(root / "run-a", backend="sqlite") as ts:
        assert ts.paths == a.invocation_files and len(ts) == len(a.invocation_files) > 1
        assert ts.traces == [p.name for p in a.invocation_files]
    with open_traces(root, backend="sqlite", files="aggregate") as ts:
        assert ts.traces == ["run-a/aggregate.pb", "run-b/aggregate.pb"]
    with open_traces(root, backend="sqlite", files="all") as ts:
        every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pb"))
        assert ts.traces == every and "run-a/aggregate.pb" in every
    given = [a.aggregate_file, *a.invocation_files[:2]]  # a list keeps its order
    with open_traces(given, backend="sqlite") as ts:
        assert ts.paths == given and ts.traces == [p.name for p in given]


def test_pool_answers_as_open_trace_does_trace_by_trace(runs):
    """Same frames as one open_trace per trace (same dtypes too); `query` stacks them after a trace column."""
    root, results = runs
    paths = results["run-a"].invocation_files + results["run-b"].invocation_files
    with open_traces(root, backend="sqlite", workers=2) as ts:
        per_trace = ts.query_dict(PER_NAME)
        stacked = ts.query(PER_NAME)
        assert list(per_trace) == ts.traces == [p.relative_to(root).as_posix() for p in paths]
    for label, path in zip(per_trace, paths):
        with open_trace(path, backend="sqlite") as tr:
            pd.testing.assert_frame_equal(per_trace[label], tr.query(PER_NAME))
    assert list(stacked.columns) == ["trace", "name", "n", "total"]
    want = pd.concat([f.assign(trace=label)[["trace", *f.columns]] for label, f in per_trace.items()], ignore_index=True)
    pd.testing.assert_frame_equal(stacked, want)


@pytest.mark.parametrize("sql", [
    "select id, parent_id from slice where depth <= 1 order by id",  # NULLs among integers: Int64
    "select name, dur from slice where name like '%transformer%' order by id",  # no rows in most traces
    "select name from slice where 0",  # no rows anywhere
])
def test_pool_rows_join_into_the_frames_open_trace_gives(runs, sql):
    """The pool sends rows and `query` builds one DataFrame of them: the same as the per-trace frames stacked."""
    from rbln_perfetto.query.trace_set import combine

    root, _ = runs
    with open_traces(root, backend="sqlite", workers=2) as ts:
        stacked = ts.query(sql)
        want = combine(ts.traces, list(ts.query_dict(sql).values()))
    pd.testing.assert_frame_equal(stacked, want)


def test_any_number_of_workers_gives_the_same_rows(runs):
    root, _ = runs
    answers = []
    for workers in (1, 3, 64):  # one process; shards; more workers than traces (one per trace)
        with open_traces(root, backend="sqlite", workers=workers) as ts:
            answers.append(ts.query(PER_NAME))
    for got in answers[1:]:
        pd.testing.assert_frame_equal(got, answers[0])


def test_traces_stay_loaded_between_queries(runs):
    """A table made by one query is there for the next: each worker keeps its traces' databases open."""
    root, _ = runs
    with open_traces(root / "run-a", backend="sqlite", workers=2) as ts:
        ts.query("create temp table kept as select count(*) as n from slice")
        kept = ts.query("select n from kept")
        assert kept.n.tolist() == ts.query("select count(*) as n from slice").n.tolist()
        assert kept.trace.tolist() == ts.traces


def test_empty_results_keep_the_columns(runs):
    root, _ = runs
    with open_traces(root / "run-a", backend="sqlite") as ts:
        none = ts.query("select name, dur from slice where dur < 0")
        assert list(none.columns) == ["trace", "name", "dur"] and none.empty
        some = ts.query("select name, dur from slice where name like 'transformer%' and depth = 0")
        assert set(some.trace) == {t for t in ts.traces if "transformer" in t}
        assert some.dur.dtype == "int64"  # traces without rows do not turn the column into objects


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sql_error_names_the_first_trace_it_fails_on(runs, backend):
    root, results = runs
    paths = results["run-a"].invocation_files
    big = next(i for i, p in enumerate(paths) if "transformer" in p.name)  # the first trace with > 60 slices
    fails_on_big = "select case when (select count(*) from slice) > 60 then json('{') else 1 end as x"
    with open_traces(root / "run-a", backend=backend) as ts:
        with pytest.raises(rbln_perfetto.QueryError, match=rf"^{re.escape(str(paths[big]))}: SQL error: .*malformed JSON"):
            ts.query(fails_on_big)
        with pytest.raises(rbln_perfetto.QueryError, match=rf"^{re.escape(str(paths[0]))}: SQL error: .*nonsense"):
            ts.query("select nonsense from slice")
        with pytest.raises(rbln_perfetto.QueryError, match="returns a column named 'trace'"):
            ts.query("select 1 as trace")
        assert ts.query("select 1 as x").x.tolist() == [1] * len(paths)  # still usable
    with pytest.raises(rbln_perfetto.QueryError, match="this trace set is closed"):
        ts.query("select 1 as x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_that_is_not_a_trace_is_named(runs, tmp_path, backend):
    root, results = runs
    notes = tmp_path / "notes.pb"
    notes.write_text("not a trace\n")
    with pytest.raises(rbln_perfetto.TraceReadError, match=rf"^{re.escape(str(notes))}: not a Perfetto protobuf trace"):
        open_traces([*results["run-a"].invocation_files, notes], backend=backend)


def test_bad_sets_are_refused_in_one_line(runs, tmp_path):
    root, results = runs
    trace = results["run-a"].invocation_files[0]
    cases = [
        ([], rbln_perfetto.UsageError, "no traces given"),
        ([trace, tmp_path / "missing.pb"], rbln_perfetto.TraceNotFoundError,
         rf"^{re.escape(str(tmp_path))}/missing\.pb: no such trace file or directory$"),
        ([root / "run-a", trace], rbln_perfetto.UsageError, rf"^{re.escape(str(trace))}: given twice \(also as {re.escape(str(trace))}\)"),
        (tmp_path, rbln_perfetto.TraceNotFoundError, rf"^{re.escape(str(tmp_path))}: no per-invocation traces .* under this directory"),
    ]
    for given, error, message in cases:
        with pytest.raises(error, match=message):
            open_traces(given, backend="sqlite")
    with pytest.raises(rbln_perfetto.UsageError, match="files='every' is not valid; valid: invocations, aggregate, all"):
        open_traces(root, files="every")
    with pytest.raises(rbln_perfetto.UsageError, match="workers=0 is not valid"):
        open_traces(root, backend="sqlite", workers=0)
    with pytest.raises(rbln_perfetto.UsageError, match="backend='duckdb' is not valid"):
        open_traces(root, backend="duckdb")


def test_a_folder_of_other_traces_needs_files_all_and_warns_as_open_trace_does():
    with pytest.raises(rbln_perfetto.TraceNotFoundError, match=r"it holds 8 other \.pb files .*files='all'"):
        open_traces(REFERENCE, backend="sqlite")
    with pytest.warns(UserWarning, match=r"monotonic_without_snapshot/trace\.pb: reading it found problems: .*clock_sync"):
        ts = open_traces(REFERENCE, backend="sqlite", files="all")
    with ts:
        assert ts.traces == [f"{case}/trace.pb" for case in CASES]


@needs_tp
def test_pool_and_batch_trace_processor_give_the_same_rows(runs):
    """Every table's rows (tp_compare's query) from the embedded pool and from BatchTraceProcessor, trace by trace,
    on profiled runs and on the trace_processor reference cases."""
    root, _ = runs
    for given, files in ((root, "invocations"), (root, "aggregate"), (REFERENCE, "all")):
        with pytest.warns(UserWarning) if given == REFERENCE else _nothing():
            embedded = open_traces(given, backend="sqlite", files=files)
        with embedded, open_traces(given, backend="trace_processor", tp_bin=TP_BIN, files=files) as tp:
            assert tp.backend == "trace_processor" and tp.traces == embedded.traces
            mine, theirs = embedded.query_dict(QUERY), tp.query_dict(QUERY)
            for label in embedded.traces:
                diff = differences(json.loads(theirs[label].rows[0]), json.loads(mine[label].rows[0]))
                assert diff == "", f"{given}/{label}:\n{diff}"
            a, b = embedded.query(PER_NAME), tp.query(PER_NAME)
            assert a.astype(object).values.tolist() == b.astype(object).values.tolist()


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def test_cli_queries_several_traces_with_a_trace_column(runs, capsys):
    root, results = runs
    a = results["run-a"]
    assert main(["query", str(root / "run-a"), "select count(*) as n from slice", "--backend", "sqlite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["trace", "n"] and [line.split()[0] for line in lines[1:]] == [p.name for p in a.invocation_files]
    files = [str(a.aggregate_file), str(results["run-b"].aggregate_file)]
    assert main(["query", *files, "select count(*) as n from slice", "--csv", "--backend", "sqlite", "--workers", "1"]) == 0
    counts = []
    for f in files:
        with open_trace(f, backend="sqlite") as tr:
            counts.append(int(tr.query("select count(*) as n from slice").n.iloc[0]))
    assert capsys.readouterr().out == f'"trace","n"\n"run-a/aggregate.pb",{counts[0]}\n"run-b/aggregate.pb",{counts[1]}\n'
    assert main(["query", str(root), "select 1", "--files", "aggregate", "--json", "--backend", "sqlite"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"trace": "run-a/aggregate.pb", "1": 1}, {"trace": "run-b/aggregate.pb", "1": 1}]


def test_cli_names_the_bad_path_of_a_set(runs, tmp_path, capsys):
    root, _ = runs
    empty = tmp_path / "empty"
    shutil.copytree(root / "run-b", empty, ignore=shutil.ignore_patterns("0*.pb"))
    assert main(["query", str(root / "run-a"), str(empty), "select 1", "--backend", "sqlite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rbln-perfetto query: error: {empty}: no per-invocation traces") and "files='aggregate'" in err
    assert err.count("\n") == 1


def test_a_worker_that_dies_is_reported_and_the_others_end(runs):
    root, _ = runs
    ts = open_traces(root / "run-a", backend="sqlite", workers=2)
    (victim, _), (other, _) = ts._impl.workers
    victim.kill()
    victim.join()
    with pytest.raises(rbln_perfetto.WorkerError, match=r"^the worker process holding .*\.pb.* died"):
        ts.query("select count(*) from slice")
    ts.close()
    assert not other.is_alive()


def test_an_interrupted_query_ends_the_pool_so_no_stale_reply_answers_the_next(runs):
    """Ctrl-C while the replies are read leaves the other workers' replies in their pipes: the pool ends
    rather than hand them to the next query as its rows."""
    root, _ = runs

    class Interrupted:
        def __init__(self, conn):
            self.conn = conn

        def send(self, request):
            self.conn.send(request)

        def recv(self):
            raise KeyboardInterrupt

        def close(self):
            self.conn.close()

    ts = open_traces(root / "run-a", backend="sqlite", workers=2)
    processes = [process for process, _ in ts._impl.workers]
    (first, first_conn), (second, second_conn) = ts._impl.workers
    ts._impl.workers = [(first, first_conn), (second, Interrupted(second_conn))]
    with pytest.raises(KeyboardInterrupt):
        ts.query("select 'first query'")
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(rbln_perfetto.QueryError, match=r"workers were ended \(a query was interrupted\); open_traces opens the traces again"):
        ts.query("select 'second query'")
    ts.close()


def test_workers_are_forked_only_while_no_other_thread_runs(runs):
    """Forked from the caller when it runs one thread; new interpreters while others run (one could hold a
    lock that the forked child then waits on forever). The same rows either way."""
    import subprocess
    import sys
    import threading

    root, _ = runs
    code = (f"from rbln_perfetto.query import open_traces\n"
            f"with open_traces({str(root)!r}, backend='sqlite', workers=2) as ts:\n"
            f"    print(sorted({{type(p).__name__ for p, _ in ts._impl.workers}}), ts.query({PER_NAME!r}).to_json())")
    alone = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                           timeout=120)
    assert alone.returncode == 0, alone.stderr
    kinds, forked = alone.stdout.split(" ", 1)
    assert kinds == "['ForkProcess']"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with open_traces(root, backend="sqlite", workers=2) as ts:
            assert {type(p).__name__ for p, _ in ts._impl.workers} == {"WorkerSubprocess"}
            assert ts.query(PER_NAME).to_json() == forked.strip()
    finally:
        stop.set()
        other.join()


def test_auto_takes_the_embedded_backend_for_small_traces_even_with_a_binary(tmp_path, monkeypatch):
    """Issue 20 item 16: trace_processor starts one process per trace (10.9 s for 18 tiny traces against
    1.0 s embedded), so "auto" loads a set of small traces in the embedded pool. A configured binary that
    would leave a mark if it were ever started is never started."""
    from rbln_perfetto.query.trace_set import SMALL_TRACE_BYTES, all_small

    mark = tmp_path / "started"
    binary = tmp_path / "trace_processor_shell"
    binary.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    binary.chmod(0o755)
    monkeypatch.setenv("RBLN_PERFETTO_TP_BIN", str(binary))
    paths = [reference_trace(case) for case in CASES]
    assert all_small(paths) and max(p.stat().st_size for p in paths) < SMALL_TRACE_BYTES
    with open_traces(paths, workers=1) as ts:
        assert ts.backend == "sqlite"
        assert len(ts.query("select count(*) as n from slice")) == len(paths)
    assert not mark.exists()
    big = tmp_path / "big.pb"
    big.write_bytes(b"\0" * SMALL_TRACE_BYTES)
    assert not all_small([*paths, big])
