"""`diff` of two runs: synthetic captures whose every number is known by construction (a layer
split into more commands, a layer removed and one added, more steps), and two real runs of the
pipeline compiled with different `command_budget`s, checked against their captures."""

import os
from collections import defaultdict

import matplotlib.image
import numpy as np
import pytest
from analysis_cases import layers_program, synthetic_run
from conftest import run

import rbln_perfetto
from rbln_perfetto.analysis import diff
from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.cli import main

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")
BACKENDS = ["sqlite"] + (["trace_processor"] if TP_BIN else [])
DMA_US = 5

# Per side: per submodule (device, [(layer, command_count, op, us per command)]), and the calls.
BASE = {"text_encoder": (0, [("embed", 1, "embedding", 10), ("attn", 2, "bmm", 20), ("mlp", 1, "linear", 30),
                             ("old", 1, "relu", 7)]),
        "transformer": (1, [("blocks.0.proj", 3, "linear", 50), ("norm", 1, "layer_norm", 8)])}
CAND = {"text_encoder": (0, [("embed", 1, "embedding", 10), ("attn", 3, "bmm", 15), ("mlp", 1, "linear", 36),
                             ("new", 1, "gelu", 4)]),
        "transformer": (1, [("blocks.0.proj", 3, "linear", 50), ("norm", 1, "layer_norm", 8)])}
CALLS = {"base": ["text_encoder", "transformer", "transformer"],
         "cand": ["text_encoder", "transformer", "transformer", "transformer"]}


def _write(out, spec, calls):
    names = list(spec)
    programs = [layers_program(n, spec[n][0], [(layer, count, op) for layer, count, op, _ in spec[n][1]]) for n in names]
    gaps = {n: [DMA_US * 1000] + [us * 1000 for _, count, _, us in spec[n][1] for _ in range(count)] + [DMA_US * 1000]
            for n in names}
    return synthetic_run(out, programs, [(names.index(n), gaps[n]) for n in calls])


def _oracle(spec, calls):
    """Per `by`: {key: (count, total_us[, commands per call, op])} from the constants alone."""
    out = {"layer": {}, "op": defaultdict(lambda: [0, 0]), "submodule": defaultdict(lambda: [0, 0]),
           "device": defaultdict(lambda: [0, 0])}
    for name in calls:
        device, layers = spec[name]
        call_us = 2 * DMA_US + sum(count * us for _, count, _, us in layers)
        for key, by in ((name, "submodule"), (device, "device")):
            out[by][key][0] += 1
            out[by][key][1] += call_us
        for layer, count, op, us in layers:
            calls_, total, _, _ = out["layer"].get((name, layer), (0, 0, count, op))
            out["layer"][(name, layer)] = (calls_ + 1, total + count * us, count, op)
            out["op"][op][0] += count
            out["op"][op][1] += count * us
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    return _write(root / "base", BASE, CALLS["base"]), _write(root / "cand", CAND, CALLS["cand"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("by", ["layer", "op", "submodule", "device"])
def test_diff_of_synthetic_runs_is_known_by_construction(runs, by, backend):
    base, cand = runs
    table = diff(base.parent, cand, by=by, backend=backend)  # a run directory and a trace file
    want_base, want_cand = _oracle(BASE, CALLS["base"])[by], _oracle(CAND, CALLS["cand"])[by]
    keys = sorted(set(want_base) | set(want_cand), key=str)
    count = {"layer": "calls", "submodule": "calls", "op": "commands", "device": "invocations"}[by]
    assert len(table) == len(keys)
    for row in table.itertuples(index=False):
        key = (row.submodule, row.layer) if by == "layer" else getattr(row, by)
        b, c = want_base.get(key), want_cand.get(key)
        assert getattr(row, f"base_{count}") == (b[0] if b else 0)
        assert getattr(row, f"cand_{count}") == (c[0] if c else 0)
        assert row.base_total_ms == pytest.approx((b[1] if b else 0) / 1e3)
        assert row.cand_total_ms == pytest.approx((c[1] if c else 0) / 1e3)
        assert row.delta_ms == pytest.approx(((c[1] if c else 0) - (b[1] if b else 0)) / 1e3)
        if b and c:
            assert row.ratio == pytest.approx(c[1] / b[1])
            assert row.cand_mean_ms == pytest.approx(c[1] / c[0] / 1e3)
        else:
            assert row.status == ("added" if c else "removed")
        if by == "layer":
            assert (row.base_commands_per_call if b else None) == (b[2] if b else None)
            assert (row.cand_commands_per_call if c else None) == (c[2] if c else None)
            assert row.op == (c or b)[3]
            if b and c:
                assert row.status == ("resplit" if b[2] != c[2] else "both")
    deltas = table.delta_ms.abs().tolist()
    assert deltas == sorted(deltas, reverse=True)
    if by == "layer":
        assert dict(zip(table.layer, table.status)) == {
            "blocks.0.proj": "both", "norm": "both", "old": "removed", "mlp": "both", "attn": "resplit",
            "new": "added", "embed": "both"}
        assert table.layer.tolist() == ["blocks.0.proj", "norm", "old", "mlp", "attn", "new", "embed"]


def test_diff_cli_top_csv_and_plot(runs, tmp_path, capsys):
    base, cand = runs
    png = tmp_path / "diff.png"
    assert main(["diff", str(base), str(cand), "--top", "3", "--csv", "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",")[:3] == ["submodule", "layer", "op"] and len(lines) == 4
    assert [line.split(",")[1] for line in lines[1:]] == ["blocks.0.proj", "norm", "old"]
    image = matplotlib.image.imread(png)
    red = (image[..., 0] > 0.7) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)
    green = (image[..., 1] > 0.5) & (image[..., 0] < 0.3) & (image[..., 2] < 0.3)
    assert red.any() and green.any()  # slower and faster layers both drawn
    with pytest.raises(SystemExit):
        main(["diff", str(base), str(cand), "--by", "stage"])
    assert "invalid choice: 'stage'" in capsys.readouterr().err
    assert main(["diff", str(base), str(tmp_path)]) == 1
    assert "without aggregate.pb" in capsys.readouterr().err


def _layer_truth(capture):
    """From the capture: per (submodule, layer) the command count per call and the total time."""
    info = read_info(capture)
    out = defaultdict(lambda: [0, 0])
    for _, rec in iter_records(capture):
        if rec.WhichOneof("kind") != "invocation":
            continue
        r = rec.invocation
        p = info.programs[r.program_id]
        ticks = np.concatenate(([0], np.cumsum(r.durations_ns)))
        for i, c in enumerate(p.commands):
            entry = out[(p.submodule, c.layer)]
            entry[0] = c.command_count
            entry[1] += int(ticks[len(p.inputs) + i + 1] - ticks[len(p.inputs) + i])
    return out


def test_diff_of_two_command_budgets(compiled_dirs, tmp_path):
    from pipeline import RBLNStableDiffusion3Pipeline

    profiles = []
    for name, config in (("big", {"text_encoder_3": {"device": 1}}),
                         ("small", {"text_encoder_3": {"device": 1}, "command_budget": "64KiB"})):
        pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(config))
        pipe.set_progress_bar_config(disable=True)
        with rbln_perfetto.profile(tmp_path / name) as prof:
            run(pipe, steps=1)
        profiles.append(prof)
    table = diff(profiles[0].aggregate_file.parent, profiles[1].aggregate_file, backend="sqlite")
    base, cand = _layer_truth(profiles[0].capture_file), _layer_truth(profiles[1].capture_file)
    assert set(zip(table.submodule, table.layer)) == set(base) == set(cand)
    for row in table.itertuples(index=False):
        b, c = base[(row.submodule, row.layer)], cand[(row.submodule, row.layer)]
        assert (row.base_commands_per_call, row.cand_commands_per_call) == (b[0], c[0])
        assert row.base_total_ms == pytest.approx(b[1] / 1e6, abs=1e-9)
        assert row.cand_total_ms == pytest.approx(c[1] / 1e6, abs=1e-9)
        assert row.status == ("resplit" if b[0] != c[0] else "both")
    assert (table.status == "resplit").sum() > 0
