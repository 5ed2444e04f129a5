"""Profiling overhead: profiled / unprofiled pipeline wall time, with torch.profiler beside it.

The profiled variant runs inside an active `rbln_perfetto.profile()` (every call timed, the capture
streaming to disk); its export happens once at the end and is measured by `bench.export_speed`.
`run_selected_steps` does the same for a long run that traces a few of its steps
(`profile(steps="20:22")`): the untraced steps should cost what unprofiled steps cost.

    python -m bench.profiling_overhead [--scale medium] [--steps 1] [--repeats 7] [--selected-steps 28]
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
        from rbln_perfetto.recorder import activation

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


def run_selected_steps(scale: str = "medium", steps: int = 28, traced: str = "20:22", repeats: int = 3) -> list[Row]:
    """A `steps`-step call unprofiled, inside `profile(steps=traced)` and inside `profile()` (every step),
    interleaved; the export at the end of each block is not timed (`bench.export_speed` measures it)."""
    import rbln_perfetto
    from pipeline.compile_cache import embedded_model, load_or_compile
    from rbln_perfetto.recorder import activation
    from rbln_perfetto.recorder.selection import parse_numbers

    pipe = load_or_compile(embedded_model(scale), {"text_encoder_3": {"device": 1}})
    pipe.set_progress_bar_config(disable=True)

    def call():
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))

    # Two blocks cannot be active at once: each variant makes its own block active while it runs.
    with tempfile.TemporaryDirectory() as out:
        blocks = {"selected": rbln_perfetto.profile(f"{out}/selected", steps=traced),
                  "every": rbln_perfetto.profile(f"{out}/every")}
        for block in blocks.values():
            block.__enter__()
            activation._active = None

        def under(block):
            def variant():
                activation._active = block
                try:
                    call()
                finally:
                    activation._active = None
            return variant

        t = interleaved({"unprofiled": call, "selected": under(blocks["selected"]), "every": under(blocks["every"])},
                        repeats)
        for block in blocks.values():
            activation._active = block
            block.__exit__(None, None, None)
    base = t["unprofiled"]
    n = sum(1 for i in range(steps) if i in parse_numbers(traced, "steps"))
    note = f"{scale} model, {steps} steps, CFG, median of {repeats}"
    return [
        Row("selected steps", f"unprofiled, {steps} steps", base * 1e3, "ms", note=note),
        Row("selected steps", f"profile(steps={traced!r}): {n} of {steps} steps traced", t["selected"] * 1e3, "ms",
            t["selected"] / base, "~1.00x: untraced steps cost what unprofiled steps cost"),
        Row("selected steps", f"profile(), all {steps} steps traced", t["every"] * 1e3, "ms", t["every"] / base,
            "<= 1.05x"),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="medium", choices=["tiny", "medium"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--selected-steps", type=int, metavar="N",
                        help="instead: an N-step call tracing 2 of its steps, against unprofiled and all traced")
    args = parser.parse_args()
    if args.selected_steps:
        print_rows(run_selected_steps(args.scale, args.selected_steps, repeats=args.repeats))
    else:
        print_rows(run(args.scale, args.steps, args.repeats))


if __name__ == "__main__":
    main()
