"""Streaming export at scale: synthetic SD3-medium captures of 1M, 3M and 10M commands.

Each capture is written through the real capture writer (`bench.synthetic_capture`), then exported
(aggregate + per-invocation files) in a fresh process, so that the peak RSS printed is the export's
own (VmHWM of that process). Linear growth shows as a flat per-command cost.

    python -m bench.streaming [--sizes 1000000 3000000 10000000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.common import Row, print_rows, run_child

RSS_LIMIT_MB = 300

_EXPORT = """
import json, sys, time
import rbln_perfetto
start = time.perf_counter()
result = rbln_perfetto.export(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "commands": result.command_slices, "slices": result.slices,
                  "files": len(result.invocation_files) + 1, "bytes": result.bytes_written,
                  "aggregate_bytes": result.aggregate_file.stat().st_size, "rss": peak_rss_mb()}))
"""


def run(sizes=(1_000_000, 3_000_000, 10_000_000)) -> list[Row]:
    from bench.synthetic_capture import write_capture

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rbln-streaming-"))
    try:
        for n in sizes:
            capture = tmp / f"capture-{n}.rblncap"
            made = write_capture(capture, n)
            r = run_child(_EXPORT, str(capture), str(tmp / f"out-{n}"))
            rss = r["rss"]
            ns = r["seconds"] / r["commands"] * 1e9
            label = f"{r['commands'] / 1e6:.1f}M commands"
            rows.append(Row("streaming export", f"{label}: time", r["seconds"], "s", None, "linear",
                            f"{r['files']} files, {r['bytes'] / 1e6:,.0f} MB; capture {made['bytes'] / 1e6:,.0f} MB"))
            rows.append(Row("streaming export", f"{label}: per command", ns, "ns", None, "flat",
                            f"{r['commands'] / r['seconds'] / 1e6:.2f}M commands/s"))
            rows.append(Row("streaming export", f"{label}: peak RSS", rss, "MB", None, f"<= {RSS_LIMIT_MB}",
                            f"aggregate {r['aggregate_bytes'] / r['commands']:.1f} B/command"))
            shutil.rmtree(tmp / f"out-{n}")
            capture.unlink()
        per = [r for r in rows if r.unit == "ns"]
        for r in per[1:]:
            r.ratio = r.value / per[0].value  # per-command cost relative to the smallest size: 1.0 is linear
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    args = parser.parse_args()
    print_rows(run(args.sizes))


if __name__ == "__main__":
    main()
