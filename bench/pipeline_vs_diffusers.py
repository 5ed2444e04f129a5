"""Device-split pipeline (no profiler) vs diffusers' StableDiffusion3Pipeline on the same weights.

    python -m bench.pipeline_vs_diffusers [--scales tiny medium] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import Row, interleaved, print_rows

PROMPT = "a photo of a cat holding a sign that says hello world"


def run(scales=("tiny", "medium"), repeats: int = 7) -> list[Row]:
    from pipeline.compile_cache import embedded_model, load_or_compile
    from pipeline.library_logging import quiet_loading

    from diffusers import StableDiffusion3Pipeline

    rows = []
    for scale in scales:
        model = embedded_model(scale)
        ours = load_or_compile(model, {"text_encoder_3": {"device": 1}})
        with quiet_loading():
            ref = StableDiffusion3Pipeline.from_pretrained(model)
        for p in (ours, ref):
            p.set_progress_bar_config(disable=True)

        def call(pipe):
            return lambda: pipe(PROMPT, num_inference_steps=1, guidance_scale=7.0, output_type="latent",
                                generator=torch.Generator().manual_seed(0))

        with torch.no_grad():
            t = interleaved({"diffusers": call(ref), "device-split": call(ours)}, repeats)
        splits = sum(c.command_count > 1 for n in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae")
                     for c in getattr(ours, n).compiled.info.commands)
        rows.append(Row("pipeline-vs-diffusers", f"{scale}: diffusers", t["diffusers"] * 1e3, "ms"))
        rows.append(Row("pipeline-vs-diffusers", f"{scale}: device-split, no profiler", t["device-split"] * 1e3, "ms",
                        t["device-split"] / t["diffusers"], "<= 1.05x", f"1 step, CFG; {splits} split commands"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "medium"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print_rows(run(args.scales, args.repeats))


if __name__ == "__main__":
    main()
