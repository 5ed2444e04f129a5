"""Run compiled submodules on their logical devices, as RBLN runtimes do.

A runtime module takes host tensors and returns host tensors. Each call copies its inputs to the
submodule's torch device (DMA host->device), runs the command program there, and copies the
outputs back (DMA device->host). The copies are real even when both sides are the CPU.

With no sink attached a call costs one attribute check more than the bare program. With a sink,
one timestamp is taken at every DMA/command boundary: the host clock on CPU devices; on CUDA a
`torch.cuda.Event` per boundary, resolved after the call onto the host clock through an anchor
taken at the start of the call (no synchronisation between commands).
"""

from __future__ import annotations

import time

import torch
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip.modeling_clip import CLIPTextModelOutput

from .codegen import generate
from .events import ProgramInfo, Sink
from .graph_capture import InputSpec
from .partition import Partition

HOST = torch.device("cpu")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class CompiledSubmodule:
    """A partitioned submodule bound to one torch device, with plain and timed entry points."""

    def __init__(self, part: Partition, specs: list[InputSpec], device: int, torch_device: torch.device):
        self.partition = part
        self.specs = specs
        self.device = device
        self.torch_device = torch_device
        n_in = len(part.inputs)
        self.is_cuda = torch_device.type == "cuda"
        tick = "T[{i}].record()" if self.is_cuda else "T[{i}] = _now()"
        self.run, self.run_timed, self.source = generate(part, torch_device, base=n_in, tick=tick)
        self.info = ProgramInfo(
            submodule=part.submodule,
            device=device,
            torch_device=str(torch_device),
            weight_bytes=part.weight_bytes,
            inputs=tuple(part.input_transfers),
            commands=tuple(part.commands),
            outputs=tuple(part.output_transfers),
        )
        self._events = None

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for spec, x in zip(self.specs, inputs):
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise ValueError(
                    f"{self.partition.submodule} was compiled for {spec.name} of shape {list(spec.shape)} "
                    f"({_dtype_name(spec.dtype)}); this call passes shape {list(x.shape)} ({_dtype_name(x.dtype)}). "
                    "Shapes are fixed at compile time, as on RBLN: compile with rbln_config keys "
                    "img_height/img_width, batch_size, guidance_scale and max_seq_len matching the call."
                )

    def __call__(self, inputs: tuple[torch.Tensor, ...], sink: Sink | None, program_id: int) -> tuple:
        dev = self.torch_device
        if sink is None:
            outs = self.run(*[x.to(dev, copy=True) for x in inputs])
            return tuple(o.to(HOST, copy=True) for o in outs)
        if self.is_cuda:
            return self._call_cuda(inputs, sink, program_id)
        now = time.monotonic_ns
        n_in, n_cmd = len(inputs), len(self.info.commands)
        ticks = [0] * self.info.num_ticks
        dev_in = []
        ticks[0] = now()
        for i, x in enumerate(inputs):
            dev_in.append(x.to(dev, copy=True))
            ticks[i + 1] = now()
        outs = self.run_timed(ticks, *dev_in)
        del dev_in
        host_out = []
        base = n_in + n_cmd
        for j, o in enumerate(outs):
            host_out.append(o.to(HOST, copy=True))
            ticks[base + j + 1] = now()
        sink.invocation(program_id, ticks)
        return tuple(host_out)

    def _call_cuda(self, inputs, sink: Sink, program_id: int) -> tuple:
        dev = self.torch_device
        n_in, n_cmd = len(inputs), len(self.info.commands)
        if self._events is None:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(self.info.num_ticks)]
        events = self._events
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev)
            stream.synchronize()  # the anchor: host clock and stream agree here
            anchor_ns = time.monotonic_ns()
            events[0].record(stream)
            dev_in = []
            for i, x in enumerate(inputs):
                dev_in.append(x.to(dev, copy=True))
                events[i + 1].record(stream)
            outs = self.run_timed(events, *dev_in)
            del dev_in
            host_out = []
            base = n_in + n_cmd
            for j, o in enumerate(outs):
                host_out.append(o.to(HOST, copy=True))
                events[base + j + 1].record(stream)
            events[-1].synchronize()
        ticks = [anchor_ns + round(events[0].elapsed_time(e) * 1e6) for e in events]
        sink.invocation(program_id, ticks)
        return tuple(host_out)


class RBLNRuntimeModule(torch.nn.Module):
    """Stands in for one diffusers/transformers submodule inside the SD3 pipeline."""

    def __init__(self, compiled: CompiledSubmodule, config, dtype: torch.dtype):
        super().__init__()
        self.compiled = compiled
        self.config = config
        self._dtype = dtype
        self.sink: Sink | None = None
        self.program_id = 0
        self.last_call_end_ns: int | None = None  # set while profiled: when the outputs reached the host

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Where the module's inputs and outputs live: host memory, as for an RBLN runtime."""
        return HOST

    @property
    def rbln_device(self) -> int:
        return self.compiled.device

    @property
    def torch_device(self) -> torch.device:
        return self.compiled.torch_device

    def _invoke(self, *inputs: torch.Tensor) -> tuple:
        inputs = tuple(x.to(HOST) for x in inputs)
        self.compiled.check_inputs(inputs)
        sink = self.sink
        outputs = self.compiled(inputs, sink, self.program_id)
        if sink is not None:
            self.last_call_end_ns = time.monotonic_ns()
        return outputs


class RBLNCLIPTextModelWithProjection(RBLNRuntimeModule):
    def forward(self, input_ids, output_hidden_states=True, return_dict=True, **kwargs):
        text_embeds, last_hidden_state, *hidden_states = self._invoke(input_ids)
        return CLIPTextModelOutput(
            text_embeds=text_embeds, last_hidden_state=last_hidden_state, hidden_states=tuple(hidden_states)
        )


class RBLNT5EncoderModel(RBLNRuntimeModule):
    def forward(self, input_ids, return_dict=True, **kwargs):
        (last_hidden_state,) = self._invoke(input_ids)
        return BaseModelOutput(last_hidden_state=last_hidden_state)


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
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)


class RBLNAutoencoderKL(RBLNRuntimeModule):
    """The VAE decoder only: SD3 text-to-image never runs the encoder."""

    def forward(self, *args, **kwargs):
        return self.decode(*args, **kwargs)

    def decode(self, z, return_dict=True, **kwargs):
        (sample,) = self._invoke(z)
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)


RUNTIME_CLASSES = {
    "text_encoder": RBLNCLIPTextModelWithProjection,
    "text_encoder_2": RBLNCLIPTextModelWithProjection,
    "text_encoder_3": RBLNT5EncoderModel,
    "transformer": RBLNSD3Transformer2DModel,
    "vae": RBLNAutoencoderKL,
}
