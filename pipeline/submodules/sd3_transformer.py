"""The SD3 joint transformer (`transformer`), compiled for the doubled batch when guidance is on."""

from __future__ import annotations

from diffusers import SD3Transformer2DModel
from diffusers.configuration_utils import FrozenDict
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ..graph_capture import Adapter, InputSpec, latent_size
from ..runtime import RBLNRuntimeModule
from .kind import SubmoduleKind


class SD3TransformerAdapter(Adapter):
    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        return self.m(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            return_dict=False,
        )


def input_specs(name, cfg, configs, dtype) -> list[InputSpec]:
    t = configs["transformer"]
    b = cfg.batch_size * (2 if cfg.do_classifier_free_guidance else 1)
    clip_seq = configs["text_encoder"].max_position_embeddings
    return [
        InputSpec("hidden_states", (b, t.in_channels, *latent_size(cfg, configs)), dtype),
        InputSpec("encoder_hidden_states", (b, clip_seq + cfg.max_seq_len, t.joint_attention_dim), dtype),
        InputSpec("pooled_projections", (b, t.pooled_projection_dim), dtype),
        InputSpec("timestep", (b,), dtype),
    ]


class RBLNSD3Transformer2DModel(RBLNRuntimeModule):
    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep,
                joint_attention_kwargs=None, return_dict=True, skip_layers=None, **kwargs):
        if skip_layers is not None:
            raise ValueError(
                "skip_layers (skip-layer guidance) is not supported by the compiled transformer; "
                "call the pipeline without skip_guidance_layers"
            )
        if joint_attention_kwargs:
            raise ValueError(
                f"joint_attention_kwargs {sorted(joint_attention_kwargs)} are not supported by the compiled "
                "transformer (no LoRA scale or IP-Adapter at run time); valid: None"
            )
        (sample,) = self._invoke(hidden_states, encoder_hidden_states, pooled_projections, timestep)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)


SD3_TRANSFORMER = SubmoduleKind(
    adapter=SD3TransformerAdapter,
    input_specs=input_specs,
    runtime_class=RBLNSD3Transformer2DModel,
    config_from_dict=FrozenDict,
    meta_model=lambda config_dir: SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(config_dir)),
)
