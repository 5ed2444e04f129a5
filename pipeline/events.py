"""What the runtime tells a profiler: the contract between `pipeline` and `rbln_perfetto.capture`.

Commands are static: a compiled submodule runs the same command list on every call. So the
runtime describes each compiled program once (`ProgramInfo`) and then reports each call as one
`Invocation` carrying only timestamps: one per boundary between consecutive items of
[input DMAs..., commands..., output DMAs...]. `Invocation.events()` expands that into one
`CommandEvent` per DMA and command for consumers that want them one by one.

This module imports nothing heavy: the capture side must not need torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

HOST_DEVICE = -1  # the `src`/`dst` of a transfer that starts or ends in host memory


@dataclass(frozen=True)
class CommandSpec:
    layer: str
    op: str
    command_index: int
    command_count: int
    shapes: str
    bytes: int
    flops: int
    live_bytes: int  # activation bytes held on the device while this command runs


@dataclass(frozen=True)
class TransferSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    command: int  # the command that consumes this input, or that produces this output


@dataclass(frozen=True)
class ProgramInfo:
    """One compiled submodule placed on one logical device."""

    submodule: str
    device: int
    torch_device: str
    weight_bytes: int
    inputs: tuple[TransferSpec, ...]
    commands: tuple[CommandSpec, ...]
    outputs: tuple[TransferSpec, ...]

    @property
    def num_ticks(self) -> int:
        return len(self.inputs) + len(self.commands) + len(self.outputs) + 1


@dataclass(frozen=True)
class DeviceInfo:
    logical: int
    torch_device: str
    capacity_bytes: int


@dataclass(frozen=True)
class PipelineInfo:
    """A compiled pipeline as a profiler sees it: where everything runs, and what is asked to be profiled."""

    model: str
    rbln_config: dict
    devices: tuple[DeviceInfo, ...]
    programs: tuple[ProgramInfo, ...]  # every compiled submodule, profiled or not
    activation_bytes: dict  # submodule -> peak activation bytes reserved on its device
    activate_profiler: dict  # submodule -> True / False / None (follow the environment)


@dataclass(frozen=True)
class CommandEvent:
    category: str  # "compute" | "dma"
    name: str  # `{sequence_index}_{layer}_{command_index}` for commands, the tensor name for DMA
    layer: str
    op: str
    command_index: int
    command_count: int
    device: int
    start_ns: int
    end_ns: int
    bytes: int
    flops: int
    src: int = 0
    dst: int = 0


def command_name(sequence_index: int, layer: str, command_index: int) -> str:
    """RBLN's command naming: `{sequence_index}_{layer_name}_{command_index}`."""
    return f"{sequence_index}_{layer}_{command_index}"


@dataclass(frozen=True)
class Invocation:
    program: ProgramInfo
    sequence_index: int  # order of this call among all submodule calls of the run
    call_index: int  # nth call of this submodule in the run
    ticks: tuple[int, ...]  # monotonic ns, program.num_ticks boundaries

    @property
    def start_ns(self) -> int:
        return self.ticks[0]

    @property
    def end_ns(self) -> int:
        return self.ticks[-1]

    def events(self) -> Iterator[CommandEvent]:
        p, t = self.program, self.ticks
        n_in, n_cmd = len(p.inputs), len(p.commands)
        for i, x in enumerate(p.inputs):
            yield CommandEvent("dma", x.name, x.name, "dma", 0, 1, p.device, t[i], t[i + 1], x.bytes, 0,
                               HOST_DEVICE, p.device)
        for i, c in enumerate(p.commands):
            yield CommandEvent("compute", command_name(self.sequence_index, c.layer, c.command_index), c.layer,
                               c.op, c.command_index, c.command_count, p.device, t[n_in + i], t[n_in + i + 1],
                               c.bytes, c.flops)
        base = n_in + n_cmd
        for i, x in enumerate(p.outputs):
            yield CommandEvent("dma", x.name, x.name, "dma", 0, 1, p.device, t[base + i], t[base + i + 1], x.bytes, 0,
                               p.device, HOST_DEVICE)


class Sink(Protocol):
    """Receives what a profiled pipeline call does. Implemented by `rbln_perfetto.capture`."""

    def program(self, info: ProgramInfo) -> int:
        """Register a compiled program once; returns the id that `invocation` takes."""

    def invocation(self, program_id: int, ticks: list[int]) -> None:
        """One submodule call finished; `ticks` are its `num_ticks` boundaries."""

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        """Host work (tokenization, scheduler step, ...), attributed to root device 0."""
