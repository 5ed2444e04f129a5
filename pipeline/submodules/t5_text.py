"""The T5 text encoder (`text_encoder_3`), compiled for `max_seq_len` tokens."""

from __future__ import annotations

import torch
from transformers import T5Config, T5EncoderModel
from transformers.modeling_outputs import BaseModelOutput

from ..graph_capture import Adapter, InputSpec
from ..runtime import RBLNRuntimeModule
from .kind import SubmoduleKind


class T5Adapter(Adapter):
    def forward(self, input_ids):
        return (self.m(input_ids)[0],)


def input_specs(name, cfg, configs, dtype) -> list[InputSpec]:
    return [InputSpec("input_ids", (cfg.batch_size, cfg.max_seq_len), torch.int64)]


class RBLNT5EncoderModel(RBLNRuntimeModule):
    def forward(self, input_ids, return_dict=True, **kwargs):
        (last_hidden_state,) = self._invoke(input_ids)
        return BaseModelOutput(last_hidden_state=last_hidden_state)


T5_TEXT = SubmoduleKind(
    adapter=T5Adapter,
    input_specs=input_specs,
    runtime_class=RBLNT5EncoderModel,
    config_from_dict=T5Config.from_dict,
    meta_model=lambda config_dir: T5EncoderModel(T5Config.from_pretrained(config_dir)),
)
