"""Write realistic SD3-shaped captures of any size through the real capture writer.

Programs are the real SD3-medium command tables: every submodule compiled on the meta device at
1024x1024, fp16, text_encoder_3 on device 1 (16k transformer commands per step). The tables are
cached as JSON under bench/results/ after the first compile. Timings follow a roofline model of a
device (100 TFLOP/s, 500 GB/s, 2 us per command, log-normal noise), DMA at 16 GB/s, and host work
between calls, in the order a CFG pipeline makes them: 6 encoder calls, 28 transformer steps, VAE.

    python -m bench.synthetic_capture OUT.rblncap --commands 10000000
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
STEPS = 28


def sd3_medium_pipeline():
    """PipelineInfo of SD3-medium (weights not needed: compiled on the meta device)."""
    from pipeline.contract import CommandSpec, DeviceInfo, PipelineInfo, ProgramInfo, TransferSpec

    cache = RESULTS / "sd3-medium-programs.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
    else:
        from pipeline.compiler import compile_on_meta
        from pipeline.config import RBLNConfig

        cfg = RBLNConfig.from_dict({"dtype": "float16", "text_encoder_3": {"device": 1}})
        programs = []
        for name, compiled in compile_on_meta("sd3-medium", cfg).items():
            part = compiled.partition
            programs.append(asdict(ProgramInfo(name, cfg.submodules[name].device, "cpu", part.weight_bytes,
                                               tuple(part.input_transfers), tuple(part.commands),
                                               tuple(part.output_transfers))) | {"activation": part.peak_live_bytes})
        data = {"rbln_config": cfg.to_dict(), "programs": programs}
        RESULTS.mkdir(exist_ok=True)
        cache.write_text(json.dumps(data))
    programs = []
    for p in data["programs"]:
        programs.append(ProgramInfo(
            p["submodule"], p["device"], p["torch_device"], p["weight_bytes"],
            tuple(TransferSpec(t["name"], tuple(t["shape"]), t["dtype"], t["bytes"], t["command"]) for t in p["inputs"]),
            tuple(CommandSpec(**c) for c in p["commands"]),
            tuple(TransferSpec(t["name"], tuple(t["shape"]), t["dtype"], t["bytes"], t["command"]) for t in p["outputs"]),
        ))
    return PipelineInfo(
        model="sd3-medium (meta)", rbln_config=data["rbln_config"],
        devices=(DeviceInfo(0, "cpu", 16 << 30), DeviceInfo(1, "cpu", 16 << 30)),
        programs=tuple(programs), activation_bytes={p["submodule"]: p["activation"] for p in data["programs"]},
        activate_profiler={p.submodule: True for p in programs},
    )


def _durations(program, rng) -> np.ndarray:
    """Gaps between the program's boundaries: input DMAs, commands, output DMAs."""
    flops = np.array([c.flops for c in program.commands], dtype=np.float64)
    nbytes = np.array([c.bytes for c in program.commands], dtype=np.float64)
    compute = 2e3 + np.maximum(flops / 100e12, nbytes / 500e9) * 1e9
    dma = [t.bytes / 16e9 * 1e9 + 1e3 for t in program.inputs + program.outputs]
    n_in = len(program.inputs)
    all_ = np.concatenate([dma[:n_in], compute, dma[n_in:]])
    return np.maximum(0, all_ * rng.lognormal(0.0, 0.15, len(all_))).astype(np.int64)


def write_capture(path: str | Path, commands: int, seed: int = 0) -> dict:
    """Write a capture of at least `commands` commands (whole invocations); returns its size."""
    from rbln_perfetto.recorder.capture import CaptureWriter

    info = sd3_medium_pipeline()
    by_name = {p.submodule: p for p in info.programs}
    rng = np.random.default_rng(seed)
    writer = CaptureWriter(path, run_id=f"synthetic-{commands}")
    pipeline_id = writer.pipeline(info, set(by_name))
    ids = {name: writer.program(p, pipeline_id) for name, p in by_name.items()}
    call = ["text_encoder", "text_encoder_2", "text_encoder_3"] * 2 + ["transformer"] * STEPS + ["vae"]
    now = time.monotonic_ns()
    written = invocations = 0
    started = time.perf_counter()
    while written < commands:
        for i, name in enumerate(call):
            if written >= commands:
                break
            host = "tokenize" if name.startswith("text") else ("prepare_latents" if i == 6 else "postprocess")
            writer.host(host, now, now + 40_000, name)
            now += 50_000
            gaps = _durations(by_name[name], rng)
            ticks = (now + np.concatenate(([0], np.cumsum(gaps)))).tolist()
            writer.invocation(ids[name], ticks)
            now = ticks[-1] + 20_000
            if name == "transformer":
                writer.host("scheduler_step", now, now + 30_000)
                now += 40_000
            written += len(by_name[name].commands)
            invocations += 1
    writer.close()
    return {"commands": written, "invocations": invocations, "bytes": Path(path).stat().st_size,
            "seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="capture file to write")
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_capture(args.out, args.commands, args.seed))


if __name__ == "__main__":
    main()
