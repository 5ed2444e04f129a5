"""Every analysis gives identical rows on the embedded backend and on trace_processor: on the
reference traces, on a hand-built cross-device trace and on a profiled run; and the command line
prints them (`report`, `summary`'s "what stands out")."""

import json
import os
import warnings

import pytest
from analysis_cases import fork_join_trace
from reference_traces import CASES, reference_trace

from rbln_perfetto.analysis import critical_path, diff, idle, metrics, stands_out, variance
from rbln_perfetto.cli import main
from rbln_perfetto.query import REPORTS, open_trace

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
ANALYSES = {
    "idle": lambda tr: idle(tr),
    "idle gaps": lambda tr: idle(tr, min_gap_ms=0, gaps=True),
    "critical path": lambda tr: critical_path(tr),
    "critical path elements": lambda tr: critical_path(tr, by="element"),
    "critical path layers": lambda tr: critical_path(tr, by="layer"),
    "variance": lambda tr: variance(tr),
    "variance layers": lambda tr: variance(tr, by="layer"),
    "variance outliers": lambda tr: variance(tr, by="layer", outliers=True),
    "diff layers": lambda tr: diff(tr, tr),
    "diff ops": lambda tr: diff(tr, tr, by="op"),
    "diff devices": lambda tr: diff(tr, tr, by="device"),
}


def _rows(df):
    return [list(df.columns)] + df.astype(object).where(df.notna(), None).values.tolist()


def _answers(path, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the reference trace that drops every event says so
        tr = open_trace(path, backend=backend)
    with tr:
        out = {name: _rows(fn(tr)) for name, fn in ANALYSES.items()}
        out["metrics"] = metrics(tr)
        out["stands out"] = stands_out(tr)
    return out


@pytest.fixture(scope="module")
def profiled(shared_run):
    return shared_run({"text_encoder_3": {"device": 1}, "command_budget": "64KiB"}, steps=2)


def _traces(tmp_path, profiled_path=None):
    cases = {f"reference/{case}": reference_trace(case) for case in CASES}
    cases["fork-join"] = fork_join_trace(tmp_path / "fork-join.pb")
    if profiled_path is not None:
        cases["profiled run"] = profiled_path
    return cases


def test_analyses_run_on_every_reference_trace(tmp_path):
    for name, path in _traces(tmp_path).items():
        answers = _answers(path, "sqlite")
        # A diff of a trace with itself changes nothing.
        for key in ("diff layers", "diff ops", "diff devices"):
            header, *rows = answers[key]
            assert all(row[header.index("delta_ms")] == 0 for row in rows), (name, key)


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
def test_analyses_are_identical_on_both_backends(profiled, tmp_path):
    for name, path in _traces(tmp_path, profiled.aggregate_file).items():
        embedded, tp = _answers(path, "sqlite"), _answers(path, "trace_processor")
        for analysis in embedded:
            assert embedded[analysis] == tp[analysis], f"{name}: {analysis}"


def test_report_command_prints_analyses_and_canned_reports(profiled, tmp_path, capsys):
    trace = str(profiled.aggregate_file)
    assert main(["report", "idle", str(profiled.aggregate_file.parent), "--json", "--backend", "sqlite"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in rows] == [0, 1] and all(0 < r["idle_pct"] < 100 for r in rows)
    assert main(["report", "critical-path", trace, "--csv", "--backend", "sqlite", "--overlay",
                 str(tmp_path / "cp.pb")]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "position,kind,rank,device,name,ts,start_ms,on_path_ms,share_pct,elements,via"
    assert "'Critical path' track written to" in out.err
    with open_trace(tmp_path / "cp.pb", backend="sqlite") as tr:
        assert tr.query("select count(*) as n from track where name = 'Critical path'").n[0] == 1
    assert main(["report", "critical-path", trace, "--by", "layer", "--top", "3", "--backend", "sqlite"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    assert main(["report", "top_layers", trace, "--top", "2", "--csv", "--backend", "sqlite"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["report", "idle", trace, "--overlay", str(tmp_path / "x.pb")]) == 2
    assert "--overlay goes with `report critical-path` only" in capsys.readouterr().err
    assert main(["report", "stalls", trace]) == 2
    assert f"valid: {', '.join(REPORTS)}, idle, critical-path, variance" in capsys.readouterr().err


def test_summary_says_what_stands_out(profiled, capsys):
    assert main(["summary", str(profiled.aggregate_file), "--backend", "sqlite"]) == 0
    text = capsys.readouterr().out
    section = text[text.index("what stands out:"):].splitlines()
    assert section[1].startswith("  device 1 is idle ") and ", mostly " in section[1]
    path = critical_path(profiled.aggregate_file, backend="sqlite")
    top = path.loc[path[path.kind != "gap"].on_path_ms.idxmax()]
    assert section[2].startswith(f"  critical path: {top['name']} (device {top.device}) is its largest element, "
                                 f"{top.share_pct:.1f}% of the run; gaps with nothing recorded ")
