"""`check` for CI: metrics known by construction, rules and regressions against a baseline, exit
codes, and the shipped trace-summary spec run by the real trace_processor giving `check`'s values."""

import os
import re
import subprocess

import pytest
from analysis_cases import layers_program, synthetic_run

from rbln_perfetto.analysis import check, metrics
from rbln_perfetto.analysis.trace_summary_spec import metric_name, write_summary_spec
from rbln_perfetto.cli import main

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])
HOST_US = 7


def _run(out, transformer_us):
    """text_encoder once on device 1, then the transformer once per entry of `transformer_us` (us of
    its one command) on device 0, each call with 2 us DMA on either side; HOST_US of host work after each."""
    encoder = layers_program("text_encoder", 1, [("embed", 1)])
    transformer = layers_program("transformer", 0, [("proj", 1)])
    calls = [(0, [2000, 10_000, 2000])] + [(1, [2000, us * 1000, 2000]) for us in transformer_us]
    host = [(i, "scheduler_step", HOST_US * 1000, "") for i in range(len(calls))]
    return synthetic_run(out, [encoder, transformer], calls, host)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    return _run(root / "base", [100, 100, 100]), _run(root / "slow", [100, 130, 100])


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_are_known_by_construction(runs, backend):
    got = metrics(runs[1], backend=backend)
    transformer = [104, 134, 104]
    span = 14 + sum(transformer) + 4 * HOST_US
    assert got == pytest.approx({
        "run.span_ms": span / 1e3,
        "text_encoder.calls": 1, "text_encoder.total_ms": 0.014, "text_encoder.mean_ms": 0.014,
        "text_encoder.max_ms": 0.014,
        "transformer.calls": 3, "transformer.total_ms": sum(transformer) / 1e3,
        "transformer.mean_ms": sum(transformer) / 3e3, "transformer.max_ms": 0.134,
        "device0.busy_ms": sum(transformer) / 1e3, "device0.compute_ms": 0.33,
        "device0.idle_pct": 100 * (span - 330) / span,
        "device1.busy_ms": 0.014, "device1.compute_ms": 0.01, "device1.idle_pct": 100 * (span - 10) / span,
    })


def test_rules_and_regressions(runs):
    base, slow = runs
    assert check(slow, rules=["transformer.mean_ms<=0.115", "run.span_ms < 1"]).ok
    result = check(slow, rules=["transformer.mean_ms<=0.11", "device1.idle_pct>=99"])
    assert result.violations == ["transformer.mean_ms = 0.114, breaks transformer.mean_ms<=0.11",
                                 f"device1.idle_pct = {100 * (384 - 10) / 384:.6g}, breaks device1.idle_pct>=99"]
    result = check(slow, baseline=base, max_regression="5%")
    # transformer.mean_ms +9.6%, run.span_ms +8.4%; the text encoder's did not change
    assert [v.split(" = ")[0] for v in result.violations] == ["run.span_ms", "transformer.mean_ms"]
    assert "(+9.6%), more than the 5% allowed" in result.violations[1]
    assert check(slow, baseline=base, max_regression="10%").ok
    assert check(slow, baseline=base, max_regression=5, regression_metrics=("text_encoder.*",)).ok
    assert check(base, baseline=base, max_regression="0%").ok
    table = result.metrics.set_index("metric")
    assert table.loc["transformer.mean_ms"].change_pct == pytest.approx(100 * (114 - 104) / 104)


def test_check_cli_exit_codes_and_messages(runs, capsys):
    base, slow = runs
    assert main(["check", str(slow), "--baseline", str(base), "--max-regression", "10%",
                 "--max", "transformer.mean_ms<=0.2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "check: ok, 4 rules hold"
    assert lines[1].startswith("note: 1 candidate run against 1 baseline run cannot judge noise")
    assert main(["check", str(slow.parent), "--baseline", str(base), "--max-regression", "5%",
                 "--max", "transformer.mean_ms<=0.11"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "FAIL transformer.mean_ms = 0.114, breaks transformer.mean_ms<=0.11"
    assert [line.split(" = ")[0] for line in lines[1:3]] == ["FAIL run.span_ms", "FAIL transformer.mean_ms"]
    assert lines[3] == "check: 3 of 4 rules broken"
    assert "cannot judge noise" in lines[4]
    for argv, message in [
        (["--max", "transformer.p99_ms<=1"], "no metric 'transformer.p99_ms' in"),
        (["--max", "transformer.mean_ms=<1"], "is not of the form METRIC<=NUMBER"),
        (["--max-regression", "5%"], "--max-regression needs --baseline BASE"),
        (["--baseline", str(base), "--max-regression", "five"], "'five' is not a percentage"),
    ]:
        assert main(["check", str(slow), *argv]) == 2
        assert message in capsys.readouterr().err
    # A gate that checks nothing fails loudly; --metrics alone only lists them.
    assert main(["check", str(slow)]) == 2
    assert "check has nothing to check" in capsys.readouterr().err
    assert main(["check", str(slow), "--metrics", "--csv"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split(",")[:2] == ["metric", "value"]
    assert any(line.startswith("transformer.mean_ms,") for line in listed)


def _summary_values(text: str) -> dict:
    """check's metric names -> values from trace_processor's textproto TraceSummary (v58 writes one
    `metric_bundles` block per metric, rows with a `dimension` and `values { double_value }`)."""
    out = {}
    for block in re.split(r"^metric_bundles \{", text, flags=re.M)[1:]:
        metric_id = re.search(r'^\s*bundle_id: "([^"]+)"', block, re.M).group(1)
        for row in re.findall(r"^  row \{(.*?)^  \}", block, re.S | re.M):
            value = float(re.search(r"double_value: ([-0-9.eE+]+)", row).group(1))
            dim = re.search(r'(string_value|int64_value): "?([^"\n]*)"?', row)
            key = None if dim is None else (int(dim.group(2)) if dim.group(1) == "int64_value" else dim.group(2))
            out[metric_name(metric_id, key)] = value
    return out


@pytest.mark.skipif(not TP_BIN, reason="RBLN_PERFETTO_TP_BIN is not set")
def test_trace_summary_spec_gives_checks_values(runs, tmp_path, capsys):
    assert main(["check", "--write-summary-spec", str(tmp_path / "rbln.textproto")]) == 0
    assert "trace-summary spec written to" in capsys.readouterr().out
    spec = write_summary_spec(tmp_path / "again.textproto")
    assert spec.read_text() == (tmp_path / "rbln.textproto").read_text()
    for trace in runs:
        proc = subprocess.run([TP_BIN, "--summary", "--summary-spec", str(spec), "--summary-metrics-v2", "all",
                               str(trace)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # The textproto prints values with 6 decimals.
        assert _summary_values(proc.stdout) == pytest.approx(metrics(trace, backend="sqlite", layers=True), abs=5.1e-7,
                                                            rel=1e-12)
