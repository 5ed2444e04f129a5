"""The runtime contract between `pipeline` and a profiler: what it may know, and nothing heavy.

Commands are static: a compiled submodule runs the same command list on every call. So the
pipeline describes each compiled program once (`ProgramInfo`, inside `PipelineInfo`) and then
reports each call of it as one list of timestamps laid out by `TickLayout`. A profiler implements
`Profiler` (and the `Sink` it returns per pipeline call) and installs itself through
`pipeline.profiling_hooks`.

Importing this module imports neither torch nor diffusers (a test checks it): the capture writer,
the exporter and the trace readers use it without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

# diffusers' SD3 submodule names, in the order the pipeline first calls them.
SUBMODULES = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae")


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
class TickLayout:
    """Where each item of one call sits in that call's timestamps.

    A call runs [input DMAs..., commands..., output DMAs...] one after another; its timestamps are
    the boundaries between them, so item k spans ticks[k] .. ticks[k + 1] and there is one tick more
    than there are items: the last one ends the call. `of()` takes anything with `inputs`,
    `commands` and `outputs` sequences (a `ProgramInfo`, or the capture's program record).
    """

    inputs: int
    commands: int
    outputs: int

    @classmethod
    def of(cls, program) -> TickLayout:
        return cls(len(program.inputs), len(program.commands), len(program.outputs))

    @property
    def num_ticks(self) -> int:
        return self.inputs + self.commands + self.outputs + 1

    def input(self, i: int) -> int:
        """The tick at which input DMA i starts (it ends at the next one)."""
        return i

    def command(self, c: int) -> int:
        """The tick at which command c starts (it ends at the next one)."""
        return self.inputs + c

    def output(self, j: int) -> int:
        """The tick at which output DMA j starts (it ends at the next one)."""
        return self.inputs + self.commands + j

    @property
    def end(self) -> int:
        """The last tick: the call is over."""
        return self.num_ticks - 1


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
    def tick_layout(self) -> TickLayout:
        return TickLayout.of(self)


@dataclass(frozen=True)
class DeviceInfo:
    logical: int
    torch_device: str
    capacity_bytes: int


@dataclass(frozen=True, eq=False)
class PipelineInfo:
    """A compiled pipeline as a profiler sees it: where everything runs, and what is asked to be profiled.

    Built once per assembled pipeline; compared and hashed by identity, so a profiler can key what
    it recorded about a pipeline by the object itself.
    """

    model: str
    rbln_config: dict
    devices: tuple[DeviceInfo, ...]
    programs: tuple[ProgramInfo, ...]  # every compiled submodule, profiled or not
    activation_bytes: dict  # submodule -> peak activation bytes reserved on its device
    activate_profiler: dict  # submodule -> True / False / None (follow the profiler's default)


class Sink(Protocol):
    """Receives what one profiled pipeline call does; returned by `Profiler.begin_call`."""

    profiled: frozenset[str]  # the submodules whose invocations it records

    def invocation(self, submodule: str, ticks: Sequence[int]) -> None:
        """One call of `submodule` finished; `ticks` (monotonic ns) are laid out by `TickLayout`."""

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        """Host work (tokenization, scheduler step, ...), attributed to root device 0."""

    def end(self, error: BaseException | None) -> None:
        """The pipeline call is over (`error`: the exception it raised, if any)."""


class Profiler(Protocol):
    """What `pipeline.profiling_hooks.install_profiler` takes."""

    def begin_call(self, info: PipelineInfo) -> Sink | None:
        """A pipeline call starts; a sink records it, None leaves it unprofiled (and costs nothing)."""
