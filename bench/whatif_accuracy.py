"""What-if checked against reality: predict a changed run from a normal trace, run the change, compare.

    python -m bench.whatif_accuracy [--scales tiny medium] [--repeats 5] [--steps 2]

Changes (`OMP_NUM_THREADS=1`, one process): commands made slower by the test-only knob
`RBLN_PIPELINE_SLOWDOWN` (predicted from the normal trace with `whatif --slowdown`), a slowed run's
commands made faster again (predicted from the slowed trace with `--speedup`: the normal run is the
reality), and submodules moved to another logical device (`--move`). Every variant is its own
pipeline, loaded once, and each round profiles one call of every variant in turn (interleaved), so
machine noise hits them alike. A row's value is the prediction's error against the measured span,
(predicted - measured) / measured: each round's prediction (from that round's trace of the source
variant) against that round's run, the median over the rounds. The note gives the error of the best
rounds beside it (the fastest prediction against the fastest run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.common import Row, print_rows

PROMPT = "a photo of a cat holding a sign that says hello world"
BASE = {"text_encoder_3": {"device": 1}}
# variant -> (rbln_config, RBLN_PIPELINE_SLOWDOWN, what whatif is told, from which variant's trace)
VARIANTS = {
    "slowdown transformer=1.25": (BASE, "transformer=1.25", {"slowdown": {"transformer": 1.25}}, "base"),
    "slowdown vae=1.5,text_encoder_3=1.5": (BASE, "vae=1.5,text_encoder_3=1.5",
                                            {"slowdown": {"vae": 1.5, "text_encoder_3": 1.5}}, "base"),
    "speedup transformer=1.25 (of a slowed run)": (BASE, "", {"speedup": {"transformer": 1.25}},
                                                   "slowdown transformer=1.25"),
    "move vae=1": ({**BASE, "vae": {"device": 1}}, "", {"moves": {"vae": 1}}, "base"),
    "move transformer=1, text_encoder_3=0": ({"transformer": {"device": 1}}, "",
                                             {"moves": {"transformer": 1, "text_encoder_3": 0}}, "base"),
}
TARGET_MEDIAN, TARGET_WORST = 5.0, 10.0


def _change(spec: dict) -> tuple[dict, dict]:
    speedup = dict(spec.get("speedup", {}))
    for name, f in spec.get("slowdown", {}).items():
        speedup[name] = speedup.get(name, 1.0) / f
    return speedup, dict(spec.get("moves", {}))


def measure_scale(scale: str, repeats: int, steps: int, verbose: bool = False) -> dict[str, list[tuple[float, float]]]:
    """variant -> per round, (predicted ms, measured ms): the prediction from that round's trace of its source
    variant, the measurement that round's run of the variant (or, for a speedup, of the normal run)."""
    import sys

    import torch

    import rbln_perfetto
    from pipeline.compile_cache import embedded_model, load_or_compile
    from rbln_perfetto.analysis.whatif import measure, predict

    model = embedded_model(scale)
    configs = {"base": (BASE, "")} | {name: (cfg, slow) for name, (cfg, slow, _, _) in VARIANTS.items()}
    pipes = {}
    for name, (cfg, slow) in configs.items():
        pipes[name] = load_or_compile(model, cfg)
        pipes[name].set_progress_bar_config(disable=True)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for r in range(repeats + 1):  # round 0 warms every variant up
            traces = {}
            for name, (cfg, slow) in configs.items():
                os.environ["RBLN_PIPELINE_SLOWDOWN"] = slow
                run_dir = Path(tmp) / f"{r}-{len(traces)}"
                with rbln_perfetto.profile(run_dir):
                    pipes[name](PROMPT, num_inference_steps=steps, guidance_scale=7.0, output_type="np",
                                generator=torch.Generator().manual_seed(0))
                traces[name] = measure(run_dir)
            os.environ.pop("RBLN_PIPELINE_SLOWDOWN", None)
            if r == 0:
                continue
            for name, (_, _, spec, source) in VARIANTS.items():
                speedup, moves = _change(spec)
                p = predict(traces[source], speedup, moves)
                real = traces["base" if "speedup" in name else name]
                out[name].append((p.predicted_span_ns / 1e6, real.span_ns / 1e6))
                if verbose:
                    got = predict(real).submodules().set_index("submodule").measured_ms
                    print(scale, r, name, " ".join(f"{s}={v:.1f}/{got.get(s, float('nan')):.1f}"
                                                   for s, v in zip(p.submodules().submodule,
                                                                   p.submodules().predicted_ms)),
                          file=sys.stderr)
    return out


def run(scales=("tiny", "medium"), repeats: int = 5, steps: int = 2, verbose: bool = False) -> list[Row]:
    rows = []
    errors = []
    for scale in scales:
        for name, pairs in measure_scale(scale, repeats, steps, verbose).items():
            error = statistics.median(100.0 * (p - m) / m for p, m in pairs)
            best = 100.0 * (min(p for p, _ in pairs) - min(m for _, m in pairs)) / min(m for _, m in pairs)
            errors.append(abs(error))
            pred, real = statistics.median(p for p, _ in pairs), statistics.median(m for _, m in pairs)
            rows.append(Row("whatif accuracy", f"{scale}: {name}", error, "% error", None,
                            f"<= {TARGET_WORST:g}% worst",
                            f"median over {len(pairs)} rounds of each round's error; predicted {pred:.2f} ms, "
                            f"measured {real:.2f} ms (medians); best of the rounds {best:+.1f}% ({steps} steps)"))
    median, worst = statistics.median(errors), max(errors)
    rows.append(Row("whatif accuracy", "median |error| over the rows", median, "%", None,
                    f"<= {TARGET_MEDIAN:g}% ({'met' if median <= TARGET_MEDIAN else 'missed'})"))
    rows.append(Row("whatif accuracy", "worst |error| over the rows", worst, "%", None,
                    f"<= {TARGET_WORST:g}% ({'met' if worst <= TARGET_WORST else 'missed'})"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "medium"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="per round: predicted/measured ms per submodule")
    args = parser.parse_args(argv)
    print_rows(run(tuple(args.scales), args.repeats, args.steps, args.verbose))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
