"""The VAE decoder (`vae`): SD3 text-to-image never runs the encoder."""

from __future__ import annotations

from diffusers import AutoencoderKL
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderOutput

from ..graph_capture import Adapter, InputSpec, latent_size
from ..runtime import RBLNRuntimeModule
from .kind import SubmoduleKind


class VAEDecodeAdapter(Adapter):
    def forward(self, latents):
        return (self.m.decode(latents, return_dict=False)[0],)


def input_specs(name, cfg, configs, dtype) -> list[InputSpec]:
    return [InputSpec("latents", (cfg.batch_size, configs["vae"].latent_channels, *latent_size(cfg, configs)), dtype)]


class RBLNAutoencoderKL(RBLNRuntimeModule):
    """The VAE decoder only."""

    def forward(self, *args, **kwargs):
        return self.decode(*args, **kwargs)

    def decode(self, z, return_dict=True, **kwargs):
        (sample,) = self._invoke(z)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)


VAE_DECODER = SubmoduleKind(
    adapter=VAEDecodeAdapter,
    input_specs=input_specs,
    runtime_class=RBLNAutoencoderKL,
    config_from_dict=FrozenDict,
    meta_model=lambda config_dir: AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir)),
)
