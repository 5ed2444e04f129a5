"""Run a compiled SD3, as the RBLN model zoo's inference.py does.

    python examples/compile.py && python examples/inference.py
    RBLN_PROFILER=1 python examples/inference.py     # profile every submodule: traces under ./rbln_profile/<run-id>/
"""

import argparse

import torch

from pipeline import RBLNStableDiffusion3Pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", default="sd3-compiled", help="directory written by examples/compile.py")
    parser.add_argument("--prompt", default="a photo of a cat holding a sign that says hello world")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="cat.png")
    args = parser.parse_args()

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(args.compiled, export=False)
    image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=pipe.rbln_config.guidance_scale,
                 generator=torch.Generator().manual_seed(0)).images[0]
    image.save(args.out)
    print(f"image saved to {args.out}")


if __name__ == "__main__":
    main()
