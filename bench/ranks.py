"""A run split across 2 processes (gloo on 127.0.0.1) vs the same placement in one process, no profiler.

    python -m bench.ranks [--scales tiny medium] [--repeats 7] [--steps 1]

Two rank processes are started as torchrun starts them. Rank 0 holds both pipelines: the one-process
pipeline, and its rank-0 part of the split one (`text_encoder_3` on rank 1), and calls them in turn
(interleaved, medians), so machine noise hits both alike; rank 1 serves. The ratio is the cost of the
split: one message per remote call each way (`pipeline.remote_calls`), the serving process's wake-up
for each call, and the outputs' copy through loopback TCP. Targets (issue 26): <= 1.25x tiny, <= 1.03x
medium.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.common import Row, interleaved, judged, print_rows

PROMPT = "a photo of a cat holding a sign that says hello world"
SPLIT = {"text_encoder_3": {"device": 1}, "devices": ["cpu", "cpu"]}
RANKS = {**SPLIT, "ranks": [0, 1]}
TARGETS = {"tiny": 1.25, "medium": 1.03}  # split / one process, at most


def _worker(scale: str, repeats: int, steps: int) -> None:
    import torch

    from pipeline.compile_cache import embedded_model, load_or_compile
    from pipeline.config import RBLNConfig
    from pipeline.placement import torch_devices
    from pipeline.ranks import join_process_group, leave_process_group
    from pipeline.remote_calls import distribute, serve

    cfg = RBLNConfig.from_dict(RANKS)
    group = join_process_group(cfg, torch_devices(cfg))
    model = embedded_model(scale)
    split = load_or_compile(model, RANKS)
    link = distribute(split, group)
    round_trip = _round_trip(group.rank)
    if link is None:
        serve(split, group)
        leave_process_group()
        return
    single = load_or_compile(model, SPLIT)
    for pipe in (single, split):
        pipe.set_progress_bar_config(disable=True)

    def call(pipe):
        return lambda: pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, output_type="latent",
                            generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        t = interleaved({"single": call(single), "split": call(split)}, repeats)
    link.stop()
    leave_process_group()
    print(json.dumps({**t, "round_trip": round_trip}))


def _round_trip(rank: int, rounds: int = 64) -> float:
    """Median seconds of a 6-int64 ping-pong between the two ranks (what one header costs both ways)."""
    import statistics
    import time

    import torch
    import torch.distributed as dist

    buf = torch.zeros(6, dtype=torch.int64)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(scales=("tiny",), repeats: int = 7, steps: int = 1) -> list[Row]:
    from pipeline.compile_cache import embedded_model, load_or_compile

    rows = []
    for scale in scales:
        for config in (RANKS, SPLIT):  # built and compiled once here, not by both ranks at once
            load_or_compile(embedded_model(scale), config)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        root = str(Path(__file__).resolve().parent.parent)
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.ranks", "--worker", "--scales", scale, "--repeats", str(repeats),
             "--steps", str(steps)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": root, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                 "RANK": str(rank), "WORLD_SIZE": "2"}) for rank in range(2)]
        outputs = [p.communicate() for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"rank processes failed: {[o[1][-2000:] for o in outputs]}")
        t = json.loads(outputs[0][0].strip().splitlines()[-1])
        rows.append(Row("rank split", f"{scale}: one process", t["single"] * 1e3, "ms"))
        rows.append(Row("rank split", f"{scale}: 2 ranks (text_encoder_3 on rank 1)", t["split"] * 1e3, "ms",
                        t["split"] / t["single"],
                        judged(f"<= {TARGETS[scale]:.2f}x", t["split"] / t["single"], TARGETS[scale], at_most=True,
                               fmt="{:.3f}", unit="x") if scale in TARGETS else "overhead of the split",
                        f"{steps} step(s), CFG, no profiler, gloo on 127.0.0.1"))
        rows.append(Row("rank split", f"{scale}: gloo round trip of one header", t["round_trip"] * 1e6, "us",
                        note="median of 64 ping-pongs between the 2 ranks; a remote call sends a header and one packed message of tensors each way"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "medium"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.scales[0], args.repeats, args.steps)
        return
    print_rows(run(args.scales, args.repeats, args.steps))


if __name__ == "__main__":
    main()
