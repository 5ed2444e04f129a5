"""Run compiled submodules on their logical devices, as RBLN runtimes do.

A runtime module takes host tensors and returns host tensors. Each call copies its inputs to the
submodule's torch device (DMA host->device), runs the command program there, and copies the
outputs back (DMA device->host). The copies are real even when both sides are the CPU.

Outside a profiled call (see `pipeline.profiling_hooks`) a call costs one context-variable read more
than the bare program. Inside one, one timestamp is taken at every DMA/command boundary: the host clock on CPU devices; on CUDA a
`torch.cuda.Event` per boundary, resolved after the call onto the host clock through an anchor
taken at the start of the call (no synchronisation between commands).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .codegen import generate
from .contract import ProgramInfo
from .dtypes import dtype_name
from .graph_capture import InputSpec
from .partition import Partition
from .profiling_hooks import active_call

HOST = torch.device("cpu")


class CompiledSubmodule:
    """A partitioned submodule bound to one torch device, with plain and timed entry points."""

    def __init__(self, part: Partition, specs: list[InputSpec], device: int, torch_device: torch.device):
        self.partition = part
        self.specs = specs
        self.device = device
        self.torch_device = torch_device
        self.is_cuda = torch_device.type == "cuda"
        self.info = ProgramInfo(
            submodule=part.submodule,
            device=device,
            torch_device=str(torch_device),
            weight_bytes=part.weight_bytes,
            inputs=part.input_transfers,
            commands=part.commands,
            outputs=part.output_transfers,
        )
        self.layout = self.info.tick_layout
        tick = "T[{i}].record()" if self.is_cuda else "T[{i}] = _now()"
        self.run, self.run_timed, self.source = generate(part, torch_device, first_tick=self.layout.command(0), tick=tick)
        self._events = None

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for spec, x in zip(self.specs, inputs):
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise ValueError(
                    f"{self.partition.submodule} was compiled for {spec.name} of shape {list(spec.shape)} "
                    f"({dtype_name(spec.dtype)}); this call passes shape {list(x.shape)} ({dtype_name(x.dtype)}). "
                    "Shapes are fixed at compile time, as on RBLN: compile with rbln_config keys "
                    "img_height/img_width, batch_size, guidance_scale and max_seq_len matching the call."
                )

    def __call__(self, inputs: tuple[torch.Tensor, ...], on_ticks: Callable[[list[int]], None] | None = None) -> tuple:
        """Run one call; with `on_ticks`, time it and pass its timestamps (laid out by `TickLayout`)."""
        dev = self.torch_device
        if on_ticks is None:
            outs = self.run(*[x.to(dev, copy=True) for x in inputs])
            return tuple(o.to(HOST, copy=True) for o in outs)
        if self.is_cuda:
            return self._call_cuda(inputs, on_ticks)
        now = time.monotonic_ns
        layout = self.layout
        ticks = [0] * layout.num_ticks
        dev_in = []
        ticks[0] = now()
        for i, x in enumerate(inputs):
            dev_in.append(x.to(dev, copy=True))
            ticks[layout.input(i) + 1] = now()
        outs = self.run_timed(ticks, *dev_in)
        del dev_in
        host_out = []
        for j, o in enumerate(outs):
            host_out.append(o.to(HOST, copy=True))
            ticks[layout.output(j) + 1] = now()
        on_ticks(ticks)
        return tuple(host_out)

    def _call_cuda(self, inputs, on_ticks: Callable[[list[int]], None]) -> tuple:
        dev = self.torch_device
        layout = self.layout
        if self._events is None:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(layout.num_ticks)]
        events = self._events
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev)
            stream.synchronize()  # the anchor: host clock and stream agree here
            anchor_ns = time.monotonic_ns()
            events[0].record(stream)
            dev_in = []
            for i, x in enumerate(inputs):
                dev_in.append(x.to(dev, copy=True))
                events[layout.input(i) + 1].record(stream)
            outs = self.run_timed(events, *dev_in)
            del dev_in
            host_out = []
            for j, o in enumerate(outs):
                host_out.append(o.to(HOST, copy=True))
                events[layout.output(j) + 1].record(stream)
            events[-1].synchronize()
        on_ticks([anchor_ns + round(events[0].elapsed_time(e) * 1e6) for e in events])
        return tuple(host_out)


class RBLNRuntimeModule(torch.nn.Module):
    """Stands in for one diffusers/transformers submodule inside the SD3 pipeline; each kind's
    subclass (in `pipeline.submodules`) gives it that model's forward signature and outputs."""

    def __init__(self, compiled: CompiledSubmodule, config, dtype: torch.dtype):
        super().__init__()
        self.compiled = compiled
        self.config = config
        self._dtype = dtype

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
        call = active_call()
        submodule = self.compiled.info.submodule
        if call is None or not call.profiles(submodule):
            return self.compiled(inputs)
        return self.compiled(inputs, lambda ticks: call.invocation(submodule, ticks))
