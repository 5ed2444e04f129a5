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
from typing import Callable, Protocol, Sequence

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


# How the runtime takes a call's timestamps, by the kind of torch device it runs on.
HOST_CLOCK_TIMING = "host CLOCK_MONOTONIC read around each command and each copy (the host waits for each)"
CUDA_EVENT_TIMING = ("CUDA events recorded on the device's stream around each command and each copy, "
                     "resolved after the call onto host CLOCK_MONOTONIC through an anchor taken at its start")


def timing_method(torch_device: str) -> str:
    """How durations are taken on `torch_device` ("cpu", "cuda:1", ...): the runtime decides by this."""
    return CUDA_EVENT_TIMING if torch_device.split(":")[0] == "cuda" else HOST_CLOCK_TIMING


@dataclass(frozen=True)
class DeviceProfile:
    """What one logical device can do at best: the roofs a command's time is measured against.

    `source` is "measured" (a short calibration on the torch device, `pipeline.device_profiles.calibrate`)
    or "given" (`rbln_config['device_profile']`, e.g. a target NPU's datasheet figures); `label` says
    which (how it was measured, or the name the user gave)."""

    peak_flops_per_s: float  # at `dtype`
    mem_bandwidth_bytes_per_s: float
    capacity_bytes: int
    dtype: str
    source: str  # "measured" | "given"
    label: str = ""

    @property
    def ridge_intensity(self) -> float:
        """FLOP per byte at which the compute roof meets the memory roof."""
        return self.peak_flops_per_s / self.mem_bandwidth_bytes_per_s

    def roofline_ns(self, flops: float, nbytes: float) -> float:
        """The least time a command of `flops` and `nbytes` can take on this device: max of both roofs."""
        return 1e9 * max(flops / self.peak_flops_per_s, nbytes / self.mem_bandwidth_bytes_per_s)


@dataclass(frozen=True)
class DeviceInfo:
    logical: int
    torch_device: str
    capacity_bytes: int
    # Asked when the pipeline is first recorded (a measured profile is calibrated then, once per machine).
    profile: Callable[[], DeviceProfile] | None = None


@dataclass(frozen=True)
class RuntimeInfo:
    """What a run's numbers depend on beyond the config: the torch build and its intra-op thread
    count when a profiled call starts, and a digest of the weights the compiled programs read."""

    torch_version: str
    intra_op_threads: int
    weights_digest: str
    slowdown: str = ""  # the test-only slowdown knob's factors for these programs (`pipeline.slowdown`); "" when off


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
    # Asked when a profiled call starts (the thread count may have changed since the pipeline was built).
    runtime: Callable[[], RuntimeInfo] | None = None
    # In a run split across processes (`rbln_config['ranks']`, under torchrun): this process's rank and
    # how many there are. `devices` and `programs` then hold only what this rank runs.
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class RankTransfer:
    """The tensors of one submodule call that crossed processes (torch.distributed send or recv).

    Each call to a submodule on another rank is two transfers each way: its inputs (rank 0 sends,
    the submodule's rank receives) and its outputs (back). Both ends report one with the same `flow`,
    which pairs a send with its recv. A send spans the sending; a recv starts when the message's
    header has arrived (its wait for the peer is idle time, not transfer), so a recv never starts
    before its send.
    """

    submodule: str
    direction: str  # "send" | "recv"
    peer: int  # the rank at the other end
    device: int  # the logical device of this rank whose DMA track shows it
    tensors: tuple[str, ...]
    bytes: int
    start_ns: int
    end_ns: int
    flow: int  # the same at both ends, unique within the run


class Sink(Protocol):
    """Receives what one profiled pipeline call does; returned by `Profiler.begin_call`.

    Optional, for a sink that chooses call by call (`pipeline.profiling_hooks.ActiveCall` looks for
    it): `starts(submodule, step) -> bool` is asked as each submodule call starts (`step`: its denoising
    step within the pipeline call for the step submodule, else None) and replaces `profiled` and
    `unprofiled`; after it, the bool attribute `records_host` says whether host work is timed now.

    Optional, for a run split across processes (`pipeline.remote_calls`): `elsewhere(calls)`: that many
    submodule calls ran in other processes (their invocations are in those processes' captures) and
    take their places in the run's order here; `transfer(t: RankTransfer)`: tensors crossed processes.
    """

    profiled: frozenset[str]  # the submodules whose invocations it records

    def invocation(self, submodule: str, ticks: Sequence[int], memory_allocated: Sequence[int] = ()) -> None:
        """One call of `submodule` finished; `ticks` (monotonic ns) are laid out by `TickLayout`.
        On a CUDA device `memory_allocated` holds the device's allocated bytes at the call's first and
        last tick, as measured (`torch.cuda.memory_allocated`); elsewhere it is not passed."""

    def unprofiled(self, submodule: str) -> None:
        """A call of `submodule`, which this sink does not record, starts: it still takes its place in
        the run's order of submodule calls, so numbers do not depend on what is profiled."""

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        """Host work (tokenization, scheduler step, ...), attributed to root device 0."""

    def end(self, error: BaseException | None) -> None:
        """The pipeline call is over (`error`: the exception it raised, if any)."""


class Profiler(Protocol):
    """What `pipeline.profiling_hooks.install_profiler` takes."""

    def begin_call(self, info: PipelineInfo) -> Sink | None:
        """A pipeline call starts; a sink records it, None leaves it unprofiled (and costs nothing)."""
