"""Run compiled submodules on their logical devices, as RBLN runtimes do.

A runtime module takes host tensors and returns host tensors. Each call copies its inputs to the
submodule's torch device (DMA host->device), runs the command program there, and copies the
outputs back (DMA device->host). The copies are real even when both sides are the CPU.

Outside a profiled call (see `pipeline.profiling_hooks`) a call costs one context-variable read more
than the bare program. Inside one, one timestamp is taken at every DMA/command boundary: the host clock on CPU devices; on CUDA a
`torch.cuda.Event` per boundary, resolved after the call onto the host clock through an anchor
taken at the start of the call (no synchronisation between commands), and the device's allocated
bytes (`torch.cuda.memory_allocated`) measured at the call's start and end.

`RuntimeProbe` answers `PipelineInfo.runtime`: the torch build, its intra-op threads, and a
digest of the weights the programs read.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Sequence

import torch

from .codegen import generate
from .config import ConfigError
from .contract import CUDA_EVENT_TIMING, ProgramInfo, RuntimeInfo, timing_method
from .dtypes import dtype_name
from .graph_capture import InputSpec
from .partition import Partition
from .profiling_hooks import active_call
from . import slowdown

HOST = torch.device("cpu")


class CompiledSubmodule:
    """A partitioned submodule bound to one torch device, with plain and timed entry points."""

    def __init__(self, part: Partition, specs: list[InputSpec], device: int, torch_device: torch.device):
        self.partition = part
        self.specs = specs
        self.device = device
        self.torch_device = torch_device
        self.is_cuda = timing_method(str(torch_device)) == CUDA_EVENT_TIMING
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
        self._events = None
        self._generate(1.0)

    def _generate(self, factor: float) -> None:
        """(Re)emit the programs for a slowdown factor (1.0: the plain ones)."""
        if factor != 1.0 and self.is_cuda:
            raise ConfigError(
                f"{slowdown.ENV_SLOWDOWN} names {self.partition.submodule}, which runs on {self.torch_device}; "
                "valid: only submodules on CPU devices (a host spin cannot lengthen a CUDA stream's work)")
        tick = "T[{i}].record()" if self.is_cuda else "T[{i}] = _now()"
        self.run, self.run_timed, self.source = generate(self.partition, self.torch_device,
                                                         first_tick=self.layout.command(0), tick=tick, slowdown=factor)
        self.slowdown = factor

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for spec, x in zip(self.specs, inputs):
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise ValueError(
                    f"{self.partition.submodule} was compiled for {spec.name} of shape {list(spec.shape)} "
                    f"({dtype_name(spec.dtype)}); this call passes shape {list(x.shape)} ({dtype_name(x.dtype)}). "
                    "Shapes are fixed at compile time, as on RBLN: compile with rbln_config keys "
                    "img_height/img_width, batch_size, guidance_scale and max_seq_len matching the call."
                )

    def __call__(self, inputs: tuple[torch.Tensor, ...], on_ticks: Callable[..., None] | None = None) -> tuple:
        """Run one call; with `on_ticks`, time it and pass its timestamps (laid out by `TickLayout`),
        and on CUDA the device's allocated bytes at its start and end: `on_ticks(ticks, (start, end))`."""
        dev = self.torch_device
        factor = slowdown.factor(self.partition.submodule)
        if factor != self.slowdown:
            self._generate(factor)
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

    def _call_cuda(self, inputs, on_ticks: Callable[..., None]) -> tuple:
        dev = self.torch_device
        layout = self.layout
        if self._events is None:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(layout.num_ticks)]
        events = self._events
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev)
            stream.synchronize()  # the anchor: host clock and stream agree here
            allocated_at_start = torch.cuda.memory_allocated(dev)
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
            outs = o = None  # the call's device buffers are gone at its end, as the plan frees them
            allocated_at_end = torch.cuda.memory_allocated(dev)
        on_ticks([anchor_ns + round(events[0].elapsed_time(e) * 1e6) for e in events],
                 (allocated_at_start, allocated_at_end))
        return tuple(host_out)


def _tensors(value):
    """The tensors in a constant: a tensor, or a (nested) tuple or list of them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def weights_digest(parts: Sequence[Partition]) -> str:
    """SHA-256 of the constants (weights and the values folded from them) the programs read, in
    program and graph order: dtype, shape and bytes of each. Meta tensors (no data) give "meta"."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.submodule.encode() + b"\0")
        for value in part.constants.values():
            for t in _tensors(value):
                if t.device.type == "meta":
                    return "meta"
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                flat = t.detach().to(HOST).contiguous().reshape(-1)
                h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return "sha256:" + h.hexdigest()


class RuntimeProbe:
    """`PipelineInfo.runtime` of a pipeline of compiled submodules: torch's version and intra-op
    thread count when asked, and the digest of their weights (computed on the first ask, then kept)."""

    def __init__(self, compiled: Sequence[CompiledSubmodule]):
        self._parts = tuple(c.partition for c in compiled)
        self._submodules = {c.partition.submodule for c in compiled}
        self._digest: str | None = None

    def __call__(self) -> RuntimeInfo:
        if self._digest is None:
            self._digest = weights_digest(self._parts)
        return RuntimeInfo(torch_version=torch.__version__, intra_op_threads=torch.get_num_threads(),
                           weights_digest=self._digest, slowdown=slowdown.describe(
                               {n: f for n, f in slowdown.current().items() if n in self._submodules}))


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
        if call is None or not call.invocation_starts(submodule):
            return self.compiled(inputs)
        return self.compiled(inputs, lambda ticks, memory=(): call.invocation(submodule, ticks, memory))
