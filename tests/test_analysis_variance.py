"""`variance` across repeated calls: a synthetic run with a slow first step and one step whose
layer was slowed, every statistic and outlier known by construction."""

import os

import numpy as np
import pytest
from analysis_cases import layers_program, synthetic_run

from rbln_perfetto.analysis import variance
from rbln_perfetto.cli import main

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])
LAYERS = [("blocks.0.attn", 2, "bmm", 20), ("blocks.0.mlp", 1, "linear", 30), ("blocks.1.attn", 2, "bmm", 20),
          ("blocks.1.mlp", 1, "linear", 30)]
STEPS = 6
WARMUP = 1.5  # the first step's commands take this much longer
SLOWED_STEP, SLOWED_LAYER, SLOWDOWN = 3, "blocks.1.attn", 4.0


def _durations():
    """ns per command of each transformer step, {step: {layer: [ns per command]}}, with 1% jitter."""
    out = {}
    for step in range(STEPS):
        per = {}
        for k, (layer, count, _, us) in enumerate(LAYERS):
            factor = (WARMUP if step == 0 else 1.0) * (SLOWDOWN if (step, layer) == (SLOWED_STEP, SLOWED_LAYER) else 1.0)
            jitter = 1 + 0.01 * ((step + k) % 3 - 1)
            per[layer] = [round(us * 1000 * factor * jitter)] * count
        out[step] = per
    return out


@pytest.fixture(scope="module")
def slowed(tmp_path_factory):
    encoder = layers_program("text_encoder", 0, [("embed", 1)])
    transformer = layers_program("transformer", 0, [(layer, count, op) for layer, count, op, _ in LAYERS])
    calls = [(0, [5000, 40_000, 5000])]
    for step, per in _durations().items():
        calls.append((1, [5000] + [ns for layer, *_ in LAYERS for ns in per[layer]] + [5000]))
    return synthetic_run(tmp_path_factory.mktemp("variance"), [encoder, transformer], calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_submodule_variance_and_outliers(slowed, backend):
    steps = _durations()
    totals = np.array([10_000 + sum(sum(v) for v in steps[s].values()) for s in range(STEPS)]) / 1e6
    table = variance(slowed, backend=backend).set_index("submodule")
    t = table.loc["transformer"]
    assert t.calls == STEPS
    assert (t.mean_ms, t.std_ms, t.min_ms, t.max_ms) == pytest.approx(
        (totals.mean(), totals.std(ddof=1), totals.min(), totals.max()))
    assert (t.first_ms, t.rest_mean_ms) == pytest.approx((totals[0], totals[1:].mean()))
    assert t.first_vs_rest == pytest.approx(totals[0] / totals[1:].mean())
    assert t.outliers == 2
    e = table.loc["text_encoder"]
    assert e.calls == 1 and np.isnan(e.std_ms) and np.isnan(e.rest_mean_ms) and e.outliers == 0
    hits = variance(slowed, outliers=True, backend=backend)
    # sequence index 0 is the text encoder; step s of the transformer is sequence index s + 1
    assert hits.sequence_index.tolist() == [1, SLOWED_STEP + 1]
    assert hits.call_index.tolist() == [0, SLOWED_STEP]
    assert hits.ms.tolist() == pytest.approx([totals[0], totals[SLOWED_STEP]])
    assert hits.median_ms.tolist() == pytest.approx([np.median(totals)] * 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_variance_finds_the_slowed_layer(slowed, backend):
    steps = _durations()
    table = variance(slowed, by="layer", backend=backend)
    assert set(table.submodule) == {"transformer"}  # the text encoder is called once
    assert table.layer.iloc[0] == SLOWED_LAYER  # the most variable first
    for row in table.itertuples(index=False):
        per_step = np.array([sum(steps[s][row.layer]) for s in range(STEPS)]) / 1e6
        assert row.calls == STEPS
        assert (row.mean_ms, row.std_ms, row.min_ms, row.max_ms, row.first_ms) == pytest.approx(
            (per_step.mean(), per_step.std(ddof=1), per_step.min(), per_step.max(), per_step[0]))
    hits = variance(slowed, by="layer", outliers=True, backend=backend)
    # The warm-up step is an outlier in every layer; the slowed step only in the slowed layer.
    assert sorted(zip(hits.layer, hits.sequence_index)) == sorted(
        [(layer, 1) for layer, *_ in LAYERS] + [(SLOWED_LAYER, SLOWED_STEP + 1)])
    slow = hits[hits.sequence_index == SLOWED_STEP + 1].iloc[0]
    assert slow.vs_median == pytest.approx(SLOWDOWN, rel=0.03)


def test_variance_cli(slowed, capsys):
    assert main(["report", "variance", str(slowed), "--by", "layer", "--outliers"]) == 0
    text = capsys.readouterr().out
    assert SLOWED_LAYER in text and "outlier: more than 3 x 1.4826 x MAD" in text
    assert main(["report", "variance", str(slowed), "--by", "step"]) == 2
    assert "by='step' is not valid; valid: submodule, layer" in capsys.readouterr().err
