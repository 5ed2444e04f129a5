"""CLIP text encoders with projection (`text_encoder`, `text_encoder_2`: CLIP-L and CLIP-G)."""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection
from transformers.models.clip.modeling_clip import CLIPTextModelOutput

from ..graph_capture import Adapter, InputSpec
from ..runtime import RBLNRuntimeModule
from .kind import SubmoduleKind


class CLIPTextAdapter(Adapter):
    """Outputs (text_embeds, last_hidden_state, *hidden_states): what SD3 reads with output_hidden_states."""

    def forward(self, input_ids):
        out = self.m(input_ids, output_hidden_states=True)
        return (out.text_embeds, out.last_hidden_state, *out.hidden_states)


def input_specs(name, cfg, configs, dtype) -> list[InputSpec]:
    return [InputSpec("input_ids", (cfg.batch_size, configs[name].max_position_embeddings), torch.int64)]


class RBLNCLIPTextModelWithProjection(RBLNRuntimeModule):
    def forward(self, input_ids, output_hidden_states=True, return_dict=True, **kwargs):
        text_embeds, last_hidden_state, *hidden_states = self._invoke(input_ids)
        return CLIPTextModelOutput(
            text_embeds=text_embeds, last_hidden_state=last_hidden_state, hidden_states=tuple(hidden_states)
        )


CLIP_TEXT = SubmoduleKind(
    adapter=CLIPTextAdapter,
    input_specs=input_specs,
    runtime_class=RBLNCLIPTextModelWithProjection,
    config_from_dict=CLIPTextConfig.from_dict,
    meta_model=lambda config_dir: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir)),
)
