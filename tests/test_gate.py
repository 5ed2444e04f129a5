"""The regression gate that knows noise: several runs a side, a significance test per metric, the
verdict's effect, interval and sample sizes, `check --json`, and the trace-summary spec's units and
polarities read back through Perfetto's own TraceSummarySpec descriptor.

The synthetic runs are real traces: captures written through the real CaptureWriter and exported;
their durations are chosen, so what the gate must say is known by construction."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from analysis_cases import layers_program, synthetic_run

from rbln_perfetto.analysis import check, metrics
from rbln_perfetto.analysis.check import ALL_METRICS, metric_samples, sample_sources
from rbln_perfetto.analysis.check_json import JSON_SCHEMA
from rbln_perfetto.analysis.significance import compare, holm, min_p
from rbln_perfetto.analysis.trace_summary_spec import metric_name, summary_spec_text
from rbln_perfetto.cli import main
from rbln_perfetto.query import open_trace

# One baseline's five runs: the transformer's one command in us, +-3% of noise around 1000.
NOISE = [1000, 970, 1030, 990, 1015]


def _run(out: Path, transformer_us: float, encoder_us: float = 500) -> Path:
    """text_encoder once (device 1), the transformer twice (device 0), 2 us DMAs either side; its run dir."""
    encoder = layers_program("text_encoder", 1, [("embed", 1)])
    transformer = layers_program("transformer", 0, [("proj", 1)])
    calls = [(0, [2000, int(encoder_us * 1000), 2000])] + [(1, [2000, int(transformer_us * 1000), 2000])] * 2
    host = [(i, "scheduler_step", 7000, "") for i in range(len(calls))]
    return synthetic_run(out, [encoder, transformer], calls, host).parent


def _sample(root: Path, name: str, transformer_us) -> Path:
    """A directory of run directories, one per entry (what `run --runs N` writes)."""
    for i, us in enumerate(transformer_us):
        _run(root / name / f"run-{i:03d}", us)
    return root / name


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    rng = np.random.default_rng(7)
    shuffled = [float(x) for x in rng.permutation(NOISE)]
    return {
        "base": _sample(root, "base", NOISE),
        "same": _sample(root, "same", shuffled),  # the same times in another order: an A/A pair
        "slow30": _sample(root, "slow30", [1.3 * x for x in shuffled]),
        # +4% on the median, inside the noise: one pair of runs can show +9%, the samples show no regression
        "slow4": _sample(root, "slow4", [1040, 1005, 1060, 980, 1050]),
    }


def test_rank_sum_and_hodges_lehmann_known_values():
    # Every candidate above every baseline: U = 25 of 25, the one ordering in C(10, 5) = 252.
    c = compare([1.0, 1.02, 0.98, 1.01, 0.99], [1.3, 1.28, 1.33, 1.31, 1.29])
    assert c.p == pytest.approx(1 / 252) and min_p(5, 5) == pytest.approx(1 / 252)
    ratios = np.array([[x / y for y in [1.0, 1.02, 0.98, 1.01, 0.99]] for x in [1.3, 1.28, 1.33, 1.31, 1.29]])
    assert c.effect == pytest.approx(np.median(ratios) - 1)
    # The 90% interval (alpha 0.05 each side) is the 5th smallest and 5th largest of the 25 ratios:
    # P(U <= 4) = 12/252 <= 0.05 < P(U <= 5) = 19/252.
    assert c.low == pytest.approx(np.sort(ratios.ravel())[4] - 1)
    assert c.high == pytest.approx(np.sort(ratios.ravel())[-5] - 1)
    assert c.low <= c.effect <= c.high
    # Alike samples: nothing significant; one value a side: no interval at all.
    assert compare([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]).p > 0.4
    one = compare([1.0], [1.3])
    assert one.effect == pytest.approx(0.3) and math.isinf(one.low) and not one.judges_noise
    # Holm: the smallest p against alpha/3, the next against alpha/2, ...; it stops at the first that fails.
    assert holm([0.01, 0.02, 0.04], 0.05) == [True, True, True]
    assert holm([0.02, 0.01, 0.2], 0.05) == [True, True, False]
    assert holm([0.03, 0.01, 0.04], 0.05) == [False, True, False]


def test_a_known_30_percent_slowdown_fails_at_n5(samples, capsys):
    result = check(samples["slow30"], baseline=samples["base"], max_regression="5%")
    assert not result.ok and result.judges_noise and (result.n_cand, result.n_base) == (5, 5)
    by_metric = {r["metric"]: r for r in result.comparisons}
    row = by_metric["transformer.mean_ms"]
    assert row["regressed"] and row["significant"] and row["p"] == pytest.approx(1 / 252)
    # The transformer's invocation is its command and 4 us of DMA: a bit under +30%.
    assert 25 < row["effect_pct"] < 30 and row["ci_low_pct"] > 5
    assert not by_metric["text_encoder.mean_ms"]["regressed"]
    assert main(["check", str(samples["slow30"]), "--baseline", str(samples["base"]), "--max-regression", "5%"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    fail = next(line for line in lines if line.startswith("FAIL transformer.mean_ms"))
    assert "(medians of 5 and 5 runs)" in fail and "90% CI" in fail and "p = 0.00397" in fail
    assert lines[-1].startswith("check: ") and "5 candidate vs 5 baseline runs, alpha 0.05, Holm over" in lines[-1]
    assert "largest: transformer.mean_ms +2" in lines[-1]


def test_identical_and_noise_sized_changes_pass(samples, capsys):
    assert check(samples["same"], baseline=samples["base"], max_regression="5%").ok
    assert check(samples["base"], baseline=samples["base"], max_regression="0%").ok
    noisy = check(samples["slow4"], baseline=samples["base"], max_regression="5%")
    assert noisy.ok and noisy.judges_noise
    # ... where a single pair of those runs, judged alone, cries wolf (+9%)
    one = check(sample_sources(samples["slow4"])[2], baseline=sample_sources(samples["base"])[1], max_regression="5%")
    assert not one.ok and not one.judges_noise


def test_a_single_pair_says_it_cannot_judge_noise(samples, capsys):
    base, cand = sample_sources(samples["base"])[0], sample_sources(samples["slow30"])[0]
    result = check(cand, baseline=base, max_regression="5%")
    assert not result.ok and not result.judges_noise
    assert result.notes and "cannot judge noise" in result.notes[0]
    assert main(["check", str(cand), "--baseline", str(base), "--max-regression", "5%"]) == 1
    out = capsys.readouterr().out
    assert "note: 1 candidate run against 1 baseline run cannot judge noise" in out
    # Too few runs a side for Holm over the metrics: said, and the medians are held to the threshold.
    few = check(sample_sources(samples["slow30"])[:2], baseline=sample_sources(samples["base"])[:2],
                max_regression="5%")
    assert not few.ok and not few.judges_noise and "2 candidate vs 2 baseline runs cannot judge noise" in few.notes[0]


def test_check_json_schema(samples, capsys):
    runs = sample_sources(samples["slow30"])
    assert main(["check", *map(str, runs), "--baseline", str(samples["base"]), "--max-regression", "5%",
                 "--max", "transformer.mean_ms<=10", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == JSON_SCHEMA and doc["ok"] is False and doc["judges_noise"] is True
    assert set(doc) == {"schema", "ok", "verdict", "candidate", "baseline", "max_regression_pct", "alpha",
                        "judges_noise", "notes", "violations", "rules", "regressions", "metrics"}
    assert doc["candidate"]["runs"] == 5 and doc["baseline"]["runs"] == 5
    assert doc["candidate"]["sources"] == [str(r / "aggregate.pb") for r in runs]
    assert doc["rules"] == [{"rule": "transformer.mean_ms<=10", "metric": "transformer.mean_ms",
                             "value": pytest.approx(1.3 * 1000 / 1000 + 0.004), "runs": 5, "ok": True}]
    reg = {r["metric"]: r for r in doc["regressions"]}
    assert set(reg) == {"run.span_ms", "text_encoder.mean_ms", "transformer.mean_ms"}
    assert set(reg["transformer.mean_ms"]) == {
        "metric", "unit", "polarity", "candidate", "baseline", "candidate_runs", "baseline_runs", "change_pct",
        "effect_pct", "ci_low_pct", "ci_high_pct", "p", "alpha", "significant", "regressed"}
    assert reg["transformer.mean_ms"]["unit"] == "TIME_MILLIS" and reg["transformer.mean_ms"]["regressed"]
    calls = next(m for m in doc["metrics"] if m["metric"] == "transformer.calls")
    assert calls == {"metric": "transformer.calls", "unit": "COUNT", "polarity": "NOT_APPLICABLE", "value": 2.0,
                     "runs": 5, "baseline": 2.0, "baseline_runs": 5, "change_pct": 0.0}
    # One run a side: null where there is no interval (JSON has no infinity).
    one = sample_sources(samples["base"])[0]
    assert main(["check", str(one), "--baseline", str(one), "--max-regression", "5%", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["judges_noise"] is False and doc["notes"]
    assert all(r["ci_low_pct"] is None and r["ci_high_pct"] is None for r in doc["regressions"])


def test_metric_samples_one_value_per_run(samples):
    got = metric_samples(samples["base"])
    assert got["transformer.mean_ms"] == pytest.approx([(us + 4) / 1000 for us in NOISE])
    assert len(got["run.span_ms"]) == 5
    assert metric_samples([sample_sources(samples["base"])[0]]) == {k: [v] for k, v in
                                                                  metrics(sample_sources(samples["base"])[0]).items()}


def _spec_message(text: str):
    """The spec parsed into Perfetto's own TraceSummarySpec (the perfetto package's descriptor set)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
    import perfetto.trace_processor as tp

    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString((Path(tp.__file__).parent / "trace_processor.descriptor").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("perfetto.protos.TraceSummarySpec"))
    return text_format.Parse(text, cls()), pool


def test_summary_spec_round_trips_values_units_and_polarity(samples):
    spec, pool = _spec_message(summary_spec_text())
    metric_desc = pool.FindMessageTypeByName("perfetto.protos.TraceMetricV2Spec")
    unit_name = metric_desc.enum_types_by_name["MetricUnit"].values_by_number
    polarity_name = metric_desc.enum_types_by_name["MetricPolarity"].values_by_number
    assert [m.id for m in spec.metric_spec] == [m.id for m in ALL_METRICS]
    units = {m.id: (unit_name[m.unit].name, polarity_name[m.polarity].name) for m in spec.metric_spec}
    assert units == {m.id: (m.unit, m.polarity) for m in ALL_METRICS}
    assert units["rbln_submodule_mean_ms"] == ("TIME_MILLIS", "LOWER_IS_BETTER")
    assert units["rbln_submodule_calls"] == ("COUNT", "NOT_APPLICABLE")
    assert units["rbln_device_idle_pct"] == ("BOUNDED_PERCENTAGE", "LOWER_IS_BETTER")
    assert units["rbln_layer_ms"] == ("TIME_MILLIS", "LOWER_IS_BETTER")
    # Each metric's query, as the spec holds it, gives check's values for a real trace.
    run = sample_sources(samples["slow30"])[0]
    values = {}
    with open_trace(run / "aggregate.pb", backend="sqlite") as tr:
        for m in spec.metric_spec:
            df = tr.query(m.query.sql.sql)
            assert list(df.columns) == list(m.query.sql.column_names)
            dim = m.dimensions_specs[0].name if m.dimensions_specs else None
            for row in df.itertuples(index=False):
                values[metric_name(m.id, getattr(row, dim) if dim else None)] = float(getattr(row, m.value))
    assert values == pytest.approx(metrics(run, layers=True))


@pytest.mark.slow
def test_real_runs_a_30_percent_slower_transformer_fails_the_gate_at_n5(make_pipe, monkeypatch, tmp_path):
    """Ten real tiny-model runs in one process, plain and with RBLN_PIPELINE_SLOWDOWN="transformer=1.3"
    taking turns (so a slow stretch of the machine hits both), after a warm-up call: the gate fails on
    the transformer, judged as significant."""
    from conftest import run

    import rbln_perfetto

    pipe = make_pipe()
    run(pipe, steps=4)  # warm-up
    for i in range(5):
        for side, knob in (("base", None), ("slow", "transformer=1.3")):
            if knob:
                monkeypatch.setenv("RBLN_PIPELINE_SLOWDOWN", knob)
            else:
                monkeypatch.delenv("RBLN_PIPELINE_SLOWDOWN", raising=False)
            with rbln_perfetto.profile(tmp_path / side / f"run-{i:03d}", submodules="transformer,vae"):
                run(pipe, steps=4)  # 4 transformer calls a run: its mean_ms averages some of the noise out
    # The gate on the slowed submodule's metric: one metric, no multiplicity to pay for at N = 5 (the
    # default metrics need every slowed run above every plain one; a machine shared with other work
    # may swap a pair or two).
    result = check(tmp_path / "slow", baseline=tmp_path / "base", max_regression="5%",
                   regression_metrics=("transformer.mean_ms",))
    (row,) = result.comparisons
    assert result.judges_noise and (result.n_cand, result.n_base) == (5, 5)
    values = {side: metric_samples(tmp_path / side)["transformer.mean_ms"] for side in ("base", "slow")}
    assert not result.ok and row["regressed"] and row["significant"], (row, values)
    assert 10 < row["effect_pct"] < 60, row
    assert result.violations[0].startswith("transformer.mean_ms = ")
    # The slowed runs say so (the knob's record in their Run slice); the plain ones do not.
    assert result.notes == ["5 candidate run(s) were made with RBLN_PIPELINE_SLOWDOWN (transformer=1.3): slowed "
                            "on purpose by a test knob, not real runs"]


def test_bad_gate_arguments_are_named(samples, capsys):
    assert main(["run", "--runs", "0"]) == 2
    assert "--runs 0 must be >= 1" in capsys.readouterr().err
    assert main(["check", str(samples["base"]), "--baseline", str(samples["base"]), "--max-regression", "5%",
                 "--alpha", "1.5"]) == 2
    assert "--alpha 1.5 is not valid; valid: a probability between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
def test_run_runs_writes_one_run_directory_per_sample(tmp_path, capsys):
    assert main(["run", "--steps", "1", "--runs", "2", "--out", str(tmp_path / "runs")]) == 0
    assert "2 runs (after one unprofiled warm-up call)" in capsys.readouterr().out
    runs = sample_sources(tmp_path / "runs")
    assert [r.name for r in runs] == ["run-000", "run-001"]
    samples = metric_samples(tmp_path / "runs")
    assert all(len(v) == 2 for v in samples.values()) and samples["transformer.calls"] == [1.0, 1.0]  # 1 step, CFG in one batch


def test_the_ranks_of_an_unmerged_run_are_not_samples(samples, tmp_path):
    for rank in (0, 1):
        _run(tmp_path / "split" / f"rank{rank}", 1000)
    with pytest.raises(Exception, match="is a directory without aggregate.pb"):
        sample_sources(tmp_path / "split")
    assert len(sample_sources([samples["base"], sample_sources(samples["same"])[0]])) == 6


def test_links_point_into_the_first_candidate_run(samples, capsys):
    assert main(["check", str(samples["slow30"]), "--baseline", str(samples["base"]), "--max-regression", "5%",
                 "--links"]) == 1
    lines = capsys.readouterr().out.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL transformer.mean_ms"))
    assert "ui.perfetto.dev" in lines[fail + 1] and "(medians of 5 and 5 runs)" in lines[fail]


def test_per_layer_time_is_a_metric_of_each_run(samples):
    runs = sample_sources(samples["base"])
    got = metrics(runs[0], layers=True)
    # The transformer's one command (layer "proj") twice per run; the text encoder's ("embed") once.
    assert got["transformer/proj.layer_ms"] == pytest.approx(2 * NOISE[0] / 1000)
    assert got["text_encoder/embed.layer_ms"] == pytest.approx(0.5)
    assert set(got) - set(metrics(runs[0])) == {"transformer/proj.layer_ms", "text_encoder/embed.layer_ms"}
    result = check(samples["slow30"], baseline=samples["base"], max_regression="5%", layers=True,
                   regression_metrics=("*.layer_ms",))
    rows = {r["metric"]: r for r in result.comparisons}
    assert rows["transformer/proj.layer_ms"]["regressed"] and not rows["text_encoder/embed.layer_ms"]["regressed"]
    assert rows["transformer/proj.layer_ms"]["effect_pct"] == pytest.approx(30, abs=0.5)
