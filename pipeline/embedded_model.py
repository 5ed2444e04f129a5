"""The embedded default model: a random-weight SD3 in diffusers' on-disk layout, built offline.

`tiny` is for tests and demos (a 1-step 64x64 image in well under a second); `medium` keeps
SD3-medium's depth (24 joint blocks, 12-layer CLIP-L, 32-layer CLIP-G, 24-layer T5, the full
4-block VAE decoder) at reduced widths, so benchmarks see realistic numbers of commands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .library_logging import import_diffusers_quietly, quiet_loading

import_diffusers_quietly()

from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: E402

from .offline_tokenizers import build_clip_tokenizer, build_t5_tokenizer  # noqa: E402

SCALES = {
    "tiny": {
        "clip_l": dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4),
        "clip_g": dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4),
        "t5": dict(d_model=64, d_ff=37, d_kv=8, num_layers=2, num_heads=4),
        "transformer": dict(
            sample_size=32, patch_size=2, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=64,
        ),
        "vae": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
    },
    "medium": {
        "clip_l": dict(hidden_size=64, intermediate_size=256, projection_dim=64, num_hidden_layers=12, num_attention_heads=4),
        "clip_g": dict(hidden_size=64, intermediate_size=256, projection_dim=64, num_hidden_layers=32, num_attention_heads=4),
        "t5": dict(d_model=128, d_ff=320, d_kv=32, num_layers=24, num_heads=4),
        "transformer": dict(
            sample_size=16, patch_size=2, num_layers=24, attention_head_dim=32, num_attention_heads=4,
            caption_projection_dim=128, joint_attention_dim=128, pooled_projection_dim=128, pos_embed_max_size=96,
        ),
        "vae": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=16),
    },
}

# Written next to the model so that a rebuild with the same arguments can be skipped.
_STAMP = "rbln_embedded_model.json"
_BUILD_VERSION = 1


def _clip(tokenizer, params: dict, hidden_act: str) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **params,
    )
    return CLIPTextModelWithProjection(config)


def build_tiny_sd3(path: str | os.PathLike, *, scale: str = "tiny", seed: int = 0) -> str:
    """Write a random-weight SD3 that diffusers' `StableDiffusion3Pipeline.from_pretrained` loads.

    Nothing is downloaded. The same (scale, seed) always gives the same weights and tokenizers;
    an existing directory built with the same arguments is reused as is. Returns the path.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not a known embedded model scale; valid choices: {sorted(SCALES)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an int")
    out = Path(path)
    stamp = {"scale": scale, "seed": seed, "version": _BUILD_VERSION}
    stamp_file = out / _STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return str(out)

    p = SCALES[scale]
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    tokenizer_3 = build_t5_tokenizer()
    text_encoder = _clip(tokenizer, p["clip_l"], "quick_gelu")
    text_encoder_2 = _clip(tokenizer_2, p["clip_g"], "gelu")
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_3),
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=tokenizer_3.pad_token_id,
            eos_token_id=tokenizer_3.eos_token_id,
            **p["t5"],
        )
    )
    transformer = SD3Transformer2DModel(in_channels=16, out_channels=16, **p["transformer"])
    n_blocks = len(p["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,
        **p["vae"],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    out.mkdir(parents=True, exist_ok=True)
    with quiet_loading():
        pipe.save_pretrained(out)
    stamp_file.write_text(json.dumps(stamp))
    return str(out)
