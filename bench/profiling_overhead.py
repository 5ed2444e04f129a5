"""Profiling overhead: profiled / unprofiled pipeline wall time, with torch.profiler beside it.

The profiled variant runs inside an active `rbln_perfetto.profile()` (every call timed, the capture
streaming to disk); its export happens once at the end and is measured by `bench.export_speed`.

    python -m bench.profiling_overhead [--scale medium] [--steps 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from bench.common import Row, interleaved, print_rows

PROMPT = "a photo of a cat holding a sign that says hello world"


def run(scale: str = "medium", steps: int = 1, repeats: int = 7) -> list[Row]:
    import rbln_perfetto
    from pipeline.compile_cache import embedded_model, load_or_compile

    pipe = load_or_compile(embedded_model(scale), {"text_encoder_3": {"device": 1}})
    pipe.set_progress_bar_config(disable=True)

    def call():
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))

    def with_torch_profiler():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            call()

    with tempfile.TemporaryDirectory() as out, rbln_perfetto.profile(out):
        from rbln_perfetto import activation

        session = activation._active

        def profiled():
            activation._active = session
            call()

        def unprofiled():
            activation._active = None
            call()

        t = interleaved({"unprofiled": unprofiled, "rbln-perfetto": profiled, "torch.profiler": with_torch_profiler},
                        repeats)
        activation._active = session
    base = t["unprofiled"]
    note = f"{scale} model, {steps} step(s), CFG, median of {repeats}"
    return [
        Row("profiling-overhead", "unprofiled", base * 1e3, "ms", note=note),
        Row("profiling-overhead", "rbln-perfetto profile()", t["rbln-perfetto"] * 1e3, "ms", t["rbln-perfetto"] / base,
            "<= 1.05x"),
        Row("profiling-overhead", "torch.profiler (CPU activity)", t["torch.profiler"] * 1e3, "ms",
            t["torch.profiler"] / base, "yardstick"),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="medium", choices=["tiny", "medium"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print_rows(run(args.scale, args.steps, args.repeats))


if __name__ == "__main__":
    main()
