"""The embedded backend's hidden helper index (`sqlite_tables.INDEXES`, `__rbln_slice_track_depth`):
it is there after either load path, it finds exactly the slices a full scan finds, and every report
and analysis answers the same with it as after it is dropped (SQLite then scans every slice), on
every kind of trace the project writes (`trace_kinds`)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from trace_kinds import KINDS, build

from rbln_perfetto.analysis import critical_path, diff, idle, metrics, variance
from rbln_perfetto.query import REPORTS, open_trace, sqlite_tables

INDEX = "__rbln_slice_track_depth"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_kinds")
    return {kind: build(root, kind) for kind in KINDS}


def _answers(tr) -> dict:
    out = {f"report {name}": tr.report(name) for name in REPORTS}
    out.update({"idle": idle(tr),
                "critical path": critical_path(tr), "critical path by layer": critical_path(tr, by="layer"),
                "variance": variance(tr), "variance by layer": variance(tr, by="layer"),
                "diff": diff(tr, tr), "metrics": metrics(tr)})
    return out


def _same(a, b, what: str) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=what)
    else:
        assert repr(a) == repr(b), what


@pytest.mark.parametrize("kind", KINDS)
def test_index_finds_what_a_full_scan_finds(traces, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = open_trace(traces[kind], backend="sqlite")
    with tr:
        db = tr._impl.db
        assert db.execute("SELECT tbl_name FROM sqlite_schema WHERE type = 'index' AND name = ?",
                          (INDEX,)).fetchall() == [("__slice",)]
        keys = db.execute("SELECT DISTINCT track_id, depth FROM __slice NOT INDEXED").fetchall()
        assert keys
        for track_id, depth in keys:
            q = "SELECT id, parent_id FROM __slice {} WHERE track_id = ? AND depth = ? ORDER BY parent_id, id"
            through = db.execute(q.format(f"INDEXED BY {INDEX}"), (track_id, depth)).fetchall()
            assert through == db.execute(q.format("NOT INDEXED"), (track_id, depth)).fetchall()
        assert db.execute("SELECT count(*) FROM __slice INDEXED BY __rbln_slice_track_depth "
                          "WHERE track_id IS NOT NULL").fetchone() == db.execute(
            "SELECT count(*) FROM __slice WHERE track_id IS NOT NULL").fetchone()


def test_python_loader_makes_the_index_too(traces, monkeypatch):
    monkeypatch.setattr(sqlite_tables, "EXTENSION", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = open_trace(traces["single"], backend="sqlite")
    with tr:
        assert tr._impl._args is not None  # (the Python loader it is)
        assert tr._impl.db.execute("SELECT count(*) FROM sqlite_schema WHERE name = ?", (INDEX,)).fetchone() == (1,)


@pytest.mark.parametrize("kind", ["single", "selected", "merged", "merged_killed"])
def test_every_report_and_analysis_answers_the_same_without_the_index(traces, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed = open_trace(traces[kind], backend="sqlite")
        plain = open_trace(traces[kind], backend="sqlite")
    with indexed, plain:
        plain._impl.db.execute(f"DROP INDEX {INDEX}")
        with_index, without = _answers(indexed), _answers(plain)
        assert with_index.keys() == without.keys()
        for what in with_index:
            _same(with_index[what], without[what], what)
