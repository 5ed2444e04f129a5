"""Every benchmark of the project in one run, one table, and a JSON copy to compare later runs with.

    python -m bench                      # all of them (a few minutes on 2 cores)
    python -m bench --quick              # smaller sizes, for a smoke test
    python -m bench --compare bench/results/latest.json

Ratios are measured side by side in the same run (see bench/README.md, "Reading the benchmark table").
The JSON goes to bench/results/bench-<time>.json and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import Row, print_rows

RESULTS = Path(__file__).parent / "results"


def _suites(quick: bool):
    from bench import (analysis_reports, export_speed, pipeline_vs_diffusers, profiling_overhead, ranks, sqlite_load,
                       streaming, trace_set, whatif_accuracy)

    repeats = 3 if quick else 7
    sizes = (200_000, 600_000) if quick else (1_000_000, 3_000_000, 10_000_000)
    return [
        ("pipeline vs diffusers", lambda: pipeline_vs_diffusers.run(("tiny",) if quick else ("tiny", "medium"), repeats)),
        ("profiling overhead", lambda: profiling_overhead.run("medium", 1, repeats)),
        ("profiling 2 of 28 steps", lambda: profiling_overhead.run_selected_steps("medium", 28, "20:22",
                                                                                  2 if quick else 3)),
        ("export", lambda: export_speed.run("medium", 1, 4 if quick else 28, 3 if quick else 5)),
        ("sqlite load", lambda: sqlite_load.run(1, 200_000 if quick else 1_000_000, 3)),
        ("streaming", lambda: streaming.run(sizes)),
        ("trace set", lambda: trace_set.run(4 if quick else 8, 200_000 if quick else 600_000, 1 if quick else 3)),
        ("1,000 traces", lambda: trace_set.many_runs(3 if quick else 30, 4 if quick else 28, 1)),
        ("rank split", lambda: ranks.run(("tiny",) if quick else ("tiny", "medium"), repeats)),
        ("analysis reports", lambda: analysis_reports.run(200_000 if quick else 1_000_000, repeats=1 if quick else 3)),
        ("whatif accuracy", lambda: whatif_accuracy.run(("tiny",) if quick else ("tiny", "medium"), 3 if quick else 9)),
    ]


def _compare(rows: list[Row], previous: Path) -> None:
    before = {(r["benchmark"], r["variant"]): r for r in json.loads(previous.read_text())["rows"]}
    print(f"\nagainst {previous}:")
    for r in rows:
        old = before.get((r.benchmark, r.variant))
        if old and old["value"]:
            print(f"  {r.benchmark:22} {r.variant:44} {old['value']:>12,.4g} -> {r.value:>12,.4g} {r.unit:8} "
                  f"({r.value / old['value']:.2f}x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON to print changes against")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default bench/results/bench-<time>.json)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    rows: list[Row] = []
    seconds = {}
    for name, suite in _suites(args.quick):
        t = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows.extend(suite())
        seconds[name] = round(time.perf_counter() - t, 1)
    total = time.perf_counter() - started
    print()
    print_rows(rows)
    print(f"\n{total:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}) on "
          f"{platform.machine()}, {platform.python_version()}")

    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "seconds": seconds,
              "machine": platform.platform(), "rows": [asdict(r) for r in rows]}
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if args.compare:
        _compare(rows, args.compare)
    text = json.dumps(record, indent=2)
    out.write_text(text)
    if args.out is None:
        (RESULTS / "latest.json").write_text(text)
    print(f"\ntable written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
