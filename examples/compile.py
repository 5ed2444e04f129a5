"""Compile SD3 into device-split submodules, as the RBLN model zoo's compile.py does.

    python examples/compile.py                      # the embedded tiny SD3, text_encoder_3 on device 1
    python examples/compile.py --model /path/to/stable-diffusion-3-medium-diffusers --out sd3-compiled
"""

import argparse
import json

from pipeline import RBLNStableDiffusion3Pipeline
from pipeline.compile_cache import embedded_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local diffusers SD3 directory (default: the embedded tiny model)")
    parser.add_argument("--out", default="sd3-compiled", help="where to save the compiled pipeline")
    parser.add_argument("--height", type=int, help="image height the graphs are compiled for")
    parser.add_argument("--width", type=int, help="image width the graphs are compiled for")
    parser.add_argument("--config", default='{"text_encoder_3": {"device": 1}}', help="rbln_config as JSON")
    args = parser.parse_args()

    rbln_config = json.loads(args.config)
    if args.height:
        rbln_config.update(img_height=args.height, img_width=args.width or args.height)
    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(args.model or embedded_model(), export=True, rbln_config=rbln_config)
    pipe.save_pretrained(args.out)
    print(pipe.memory_plan)
    print(f"compiled pipeline saved to {args.out}")


if __name__ == "__main__":
    main()
