"""Capture each SD3 submodule as one static ATen graph with `torch.export`.

Each submodule is wrapped in an adapter (one per kind, in `pipeline.submodules`) with flat tensor
inputs and a flat tuple of tensor outputs, the way an RBLN compiled model has fixed input and
output buffers. The shapes are fixed at compile time from `rbln_config` (image size, batch,
guidance, sequence length), as on RBLN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import RBLNConfig

# The adapter keeps the model under this attribute; layer names drop it.
ADAPTER_PREFIX = "m."


class Adapter(torch.nn.Module):
    """Base of the submodule adapters: the wrapped model lives at `ADAPTER_PREFIX`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model


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


def latent_size(cfg: RBLNConfig, configs: dict) -> tuple[int, int]:
    """(height, width) of the latents the transformer and the VAE decoder see."""
    vae_scale = 2 ** (len(configs["vae"].block_out_channels) - 1)
    height, width = image_size(cfg, configs["transformer"], vae_scale)
    return height // vae_scale, width // vae_scale


def example_inputs(specs: list[InputSpec], device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    out = []
    for spec in specs:
        if spec.dtype == torch.int64:
            out.append(torch.zeros(spec.shape, dtype=spec.dtype, device=device))
        else:
            out.append(torch.ones(spec.shape, dtype=spec.dtype, device=device))
    return tuple(out)


def export_submodule(adapter: Adapter, specs: list[InputSpec]) -> torch.export.ExportedProgram:
    """Trace one adapted submodule into a static ATen graph (the expensive part of compiling)."""
    adapter = adapter.eval()
    device = next(adapter.parameters()).device
    with torch.no_grad():
        return torch.export.export(adapter, example_inputs(specs, device))
