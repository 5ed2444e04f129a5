"""Capture each SD3 submodule as one static ATen graph with `torch.export`.

Each submodule is wrapped in an adapter with flat tensor inputs and a flat tuple of tensor
outputs, the way an RBLN compiled model has fixed input and output buffers. The shapes are fixed
at compile time from `rbln_config` (image size, batch, guidance, sequence length), as on RBLN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import RBLNConfig


class _CLIPAdapter(torch.nn.Module):
    """Outputs (text_embeds, last_hidden_state, *hidden_states): what SD3 reads with output_hidden_states."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids):
        out = self.m(input_ids, output_hidden_states=True)
        return (out.text_embeds, out.last_hidden_state, *out.hidden_states)


class _T5Adapter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids):
        return (self.m(input_ids)[0],)


class _TransformerAdapter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        return self.m(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            return_dict=False,
        )


class _VAEDecodeAdapter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, latents):
        return (self.m.decode(latents, return_dict=False)[0],)


ADAPTERS = {
    "text_encoder": _CLIPAdapter,
    "text_encoder_2": _CLIPAdapter,
    "text_encoder_3": _T5Adapter,
    "transformer": _TransformerAdapter,
    "vae": _VAEDecodeAdapter,
}
# The adapter keeps the model under this attribute; layer names drop it.
ADAPTER_PREFIX = "m."


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def image_size(cfg: RBLNConfig, transformer_config, vae_scale_factor: int) -> tuple[int, int]:
    if cfg.img_height is not None:
        return cfg.img_height, cfg.img_width
    side = transformer_config.sample_size * vae_scale_factor
    return side, side


def input_specs(name: str, cfg: RBLNConfig, configs: dict, dtype: torch.dtype) -> list[InputSpec]:
    """The fixed input buffers of one submodule, as diffusers' SD3 pipeline calls it."""
    vae_scale = 2 ** (len(configs["vae"].block_out_channels) - 1)
    height, width = image_size(cfg, configs["transformer"], vae_scale)
    batch = cfg.batch_size
    if name in ("text_encoder", "text_encoder_2"):
        seq = configs[name].max_position_embeddings
        return [InputSpec("input_ids", (batch, seq), torch.int64)]
    if name == "text_encoder_3":
        return [InputSpec("input_ids", (batch, cfg.max_seq_len), torch.int64)]
    if name == "transformer":
        t = configs["transformer"]
        b = batch * (2 if cfg.do_classifier_free_guidance else 1)
        clip_seq = configs["text_encoder"].max_position_embeddings
        latent = (t.in_channels, height // vae_scale, width // vae_scale)
        return [
            InputSpec("hidden_states", (b, *latent), dtype),
            InputSpec("encoder_hidden_states", (b, clip_seq + cfg.max_seq_len, t.joint_attention_dim), dtype),
            InputSpec("pooled_projections", (b, t.pooled_projection_dim), dtype),
            InputSpec("timestep", (b,), dtype),
        ]
    if name == "vae":
        v = configs["vae"]
        return [InputSpec("latents", (batch, v.latent_channels, height // vae_scale, width // vae_scale), dtype)]
    raise KeyError(name)


def example_inputs(specs: list[InputSpec], device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    out = []
    for spec in specs:
        if spec.dtype == torch.int64:
            out.append(torch.zeros(spec.shape, dtype=spec.dtype, device=device))
        else:
            out.append(torch.ones(spec.shape, dtype=spec.dtype, device=device))
    return tuple(out)


def export_submodule(name: str, model: torch.nn.Module, specs: list[InputSpec]) -> torch.export.ExportedProgram:
    """Trace one submodule into a static ATen graph (the expensive part of compiling)."""
    adapter = ADAPTERS[name](model).eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.export.export(adapter, example_inputs(specs, device))
