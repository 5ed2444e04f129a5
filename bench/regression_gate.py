"""How often the regression gate cries wolf (A/A) and how often it catches a real slowdown (A/B).

    python -m bench.regression_gate                       # the full experiment (see docs/regression-gate.md)
    python -m bench.regression_gate --scale tiny --aa-pairs 2 --ab-pairs 2 --levels 30   # a smoke test
    python -m bench.regression_gate --out DIR             # resume DIR, or judge it again (--eval-n 3,4,5)

Design: one *side* is what one CI job makes, one fresh process of `rbln-perfetto run --runs N` (the
pipeline loaded once, an unprofiled warm-up call, N profiled runs). A pair is two sides:
`check CAND_SIDE --baseline BASE_SIDE --max-regression 5% --alpha 0.05` judges it, with the default
metrics (run.span_ms, *.mean_ms). A/A pair i is sides A[2i] and A[2i+1]; A/B pair i at level L is
A[2i] against B_L[i], made with `RBLN_PIPELINE_SLOWDOWN="SUBMODULE=1+L/100"`. Every side is made
once and no side is used twice in a row of the table, so the pairs of a row are independent (the rows
share A sides: rates of different rows are correlated, each row's own rate is not biased).
The sides of block i (A[2i], A[2i+1], one B per level) run one after another in a shuffled order
(seeded), so a slow stretch of the machine hits A and B alike rather than one level.

`--eval-n 3,4` also judges each pair on the first k runs of each side (k < N): the same independent
pairs at a smaller N, for choosing N. Each side's runs are read once (check's metrics), then every
pair is judged from those (`check.check_samples`).

Output: a table (rows: A/A, A/B at each level; columns: pairs, N, gate failures, the rate and its
95% Wilson interval, how often SUBMODULE.mean_ms itself was flagged and its median effect) printed
as Markdown and written to OUT/gate.json. A side already complete in OUT is not made again (resume).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path


RESULTS = Path(__file__).parent / "results"


def side_names(aa_pairs: int, ab_pairs: int, levels: list[float]) -> list[list[tuple[str, float]]]:
    """Blocks of (side name, slowdown percent): block i holds A[2i], A[2i+1] (i < aa_pairs) and B_L[i]
    (i < ab_pairs) for every level L."""
    blocks = []
    for i in range(max(aa_pairs, ab_pairs)):
        block = [(f"A{2 * i:03d}", 0.0)]
        if i < aa_pairs:
            block.append((f"A{2 * i + 1:03d}", 0.0))
        if i < ab_pairs:
            block += [(f"B{level:g}-{i:03d}", level) for level in levels]
        blocks.append(block)
    return blocks


def _complete(side: Path, n: int) -> bool:
    return (side / "done").is_file() and all((side / f"run-{k:03d}" / "aggregate.pb").is_file() for k in range(n))


def make_side(side: Path, slowdown_pct: float, *, submodule: str, scale: str, steps: int, n: int,
              threads: int, process_per_run: bool = False) -> float:
    """One fresh process of `run --runs n` into `side` (`process_per_run`: n fresh processes of `run`,
    one per run, no warm-up call); its wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("RBLN_PIPELINE_SLOWDOWN", None)
    if slowdown_pct:
        env["RBLN_PIPELINE_SLOWDOWN"] = f"{submodule}={1 + slowdown_pct / 100:g}"
    t = time.perf_counter()
    base = [sys.executable, "-m", "rbln_perfetto.cli", "run", "--scale", scale, "--steps", str(steps), "--force"]
    commands = ([[*base, "--out", str(side / f"run-{k:03d}")] for k in range(n)] if process_per_run
                else [[*base, "--runs", str(n), "--out", str(side)]])
    for command in commands:
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"side {side.name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    (side / "done").write_text(env.get("RBLN_PIPELINE_SLOWDOWN", "") + "\n")
    return time.perf_counter() - t


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of a rate k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _first(samples: dict[str, list[float]], k: int) -> dict[str, list[float]]:
    return {name: values[:k] for name, values in samples.items()}


def judge(out: Path, blocks, *, n: int, eval_n: list[int], levels: list[float], aa_pairs: int, ab_pairs: int,
          submodule: str, max_regression: float, alpha: float) -> dict:
    """Every pair judged at every k in eval_n; the table's rows."""
    from rbln_perfetto.analysis.check import check_samples, metric_samples

    read = {}
    for block in blocks:
        for name, level in block:
            side = out / "sides" / name
            runs = [side / f"run-{k:03d}" for k in range(n)]
            want = f"{submodule}={1 + level / 100:g}" if level else ""
            slowed = {}
            read[name] = metric_samples(runs, slowed=slowed)
            for run in runs:  # a knob that did nothing would make every A/B row an A/A row: the traces say
                got = slowed.get(str(run / "aggregate.pb"), "")
                if got != want:
                    raise SystemExit(f"{run}: its Run slice records slowdown {got!r}, expected {want!r}")
    target = f"{submodule}.mean_ms"
    configs = [("A/A", 0.0, [(f"A{2 * i:03d}", f"A{2 * i + 1:03d}") for i in range(aa_pairs)])]
    configs += [(f"A/B {level:g}%", level, [(f"A{2 * i:03d}", f"B{level:g}-{i:03d}") for i in range(ab_pairs)])
                for level in levels]
    rows = []
    for k in eval_n:
        for label, level, pairs in configs:
            fails = flagged = judged = 0
            effects, failing_metrics = [], {}
            for base, cand in pairs:
                result = check_samples(_first(read[cand], k), _first(read[base], k), n_cand=k, n_base=k,
                                       max_regression=max_regression, alpha=alpha)
                fails += not result.ok
                judged += result.judges_noise
                for row in result.comparisons:
                    if row["regressed"]:
                        failing_metrics[row["metric"]] = failing_metrics.get(row["metric"], 0) + 1
                    if row["metric"] == target:
                        flagged += row["regressed"]
                        effects.append(row["effect_pct"])
            low, high = wilson(fails, len(pairs))
            rows.append({"config": label, "slowdown_pct": level, "n": k, "pairs": len(pairs), "judged": judged,
                         "gate_failed": fails,
                         "rate": fails / len(pairs) if pairs else math.nan, "rate_low": low, "rate_high": high,
                         "target_flagged": flagged, "target_median_effect_pct": _median(effects),
                         "failing_metrics": failing_metrics})
    return {"rows": rows}


def _median(values):
    values = sorted(v for v in values if v == v)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def markdown(rows, submodule: str, max_regression: float, alpha: float) -> str:
    head = (f"| pairs | N | noise judged | gate failed (--max-regression {max_regression:g}%, alpha {alpha:g}) | rate | 95% interval "
            f"| {submodule}.mean_ms flagged | its median effect |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['config']} x {r['pairs']} | {r['n']} | {r['judged']} | {r['gate_failed']} | {100 * r['rate']:.0f}% | "
                     f"{100 * r['rate_low']:.0f}-{100 * r['rate_high']:.0f}% | {r['target_flagged']} | "
                     f"{r['target_median_effect_pct']:+.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.regression_gate", description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("tiny", "medium"), default="medium")
    p.add_argument("--steps", type=int, default=1, help="denoising steps per run (default 1)")
    p.add_argument("--n", type=int, default=5, help="runs per side (default 5)")
    p.add_argument("--aa-pairs", type=int, default=20, help="A/A pairs (default 20)")
    p.add_argument("--ab-pairs", type=int, default=20, help="A/B pairs per level (default 20)")
    p.add_argument("--levels", default="5,10,20", help="slowdowns in percent, comma-separated (default 5,10,20)")
    p.add_argument("--submodule", default="transformer", help="the submodule slowed down (default transformer)")
    p.add_argument("--max-regression", type=float, default=5.0, help="check's --max-regression in %% (default 5)")
    p.add_argument("--alpha", type=float, default=0.05, help="check's --alpha (default 0.05)")
    p.add_argument("--eval-n", default="", help="also judge at these smaller N (first k runs of each side), e.g. 3,4")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each side's process (default 1)")
    p.add_argument("--process-per-run", action="store_true",
                   help="each run of a side its own fresh process (`run`, no warm-up call) rather than one "
                        "`run --runs N` process per side: N times the start-up cost, and samples that hold the "
                        "process-to-process noise (use a new --out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order of the sides in a block")
    p.add_argument("--out", type=Path, help="where the sides go (default bench/results/gate-<time>/); resumed if given")
    args = p.parse_args(argv)
    levels = [float(x) for x in args.levels.split(",") if x.strip()]
    eval_n = sorted({int(x) for x in args.eval_n.split(",") if x.strip()} | {args.n})
    if args.n < 1 or any(not 1 <= k <= args.n for k in eval_n) or not levels or min(levels) <= 0:
        p.error("--n >= 1, --eval-n values in 1..N, --levels > 0")
    out = args.out or RESULTS / f"gate-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "sides").mkdir(parents=True, exist_ok=True)
    blocks = side_names(args.aa_pairs, args.ab_pairs, levels)
    order = random.Random(args.seed)
    todo = sum(not _complete(out / "sides" / name, args.n) for block in blocks for name, _ in block)
    total = sum(len(b) for b in blocks)
    print(f"[gate] {total} sides of {args.n} {args.scale} runs ({todo} to make) into {out}", file=sys.stderr)
    made, seconds = 0, 0.0
    for block in blocks:
        block = list(block)
        order.shuffle(block)
        for name, level in block:
            side = out / "sides" / name
            if _complete(side, args.n):
                continue
            seconds += make_side(side, level, submodule=args.submodule, scale=args.scale, steps=args.steps,
                                 n=args.n, threads=args.threads, process_per_run=args.process_per_run)
            made += 1
            left = (todo - made) * seconds / made
            print(f"[gate] {name} done ({made}/{todo}, {seconds / made:.0f} s a side, ~{left / 60:.0f} min left)",
                  file=sys.stderr, flush=True)
    result = judge(out, blocks, n=args.n, eval_n=eval_n, levels=levels, aa_pairs=args.aa_pairs,
                   ab_pairs=args.ab_pairs, submodule=args.submodule, max_regression=args.max_regression,
                   alpha=args.alpha)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": {k: str(v) for k, v in vars(args).items()},
              "load_average": os.getloadavg(), "cpus": os.cpu_count(), **result}
    (out / "gate.json").write_text(json.dumps(record, indent=1))
    print(markdown(result["rows"], args.submodule, args.max_regression, args.alpha))
    print(f"\n{out / 'gate.json'}; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
