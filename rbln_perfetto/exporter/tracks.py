"""Track layout: a top-level `Run` track, then one `Device i` track per logical device, with ordered children.

    Run        one slice spanning the trace, with the run's provenance as args (see `provenance`)
    Device 0   (torch device, capacity, how durations were taken, in the description)
      Workload   one slice per submodule invocation; in the aggregate, one "not traced: steps 0-9" slice over
                 each stretch a selection left out (`host_events.untraced_packets`)
      Host       tokenization, scheduler steps, guidance combine, latents, post-processing (device 0 only)
      Compute    commands; a split op is a parent slice with one child per command
      DMA        host<->device copies of inputs and outputs
      Memory (planned)    counter: resident weights + live activations, as planned at compile time
      Memory (measured)   counter: torch.cuda.memory_allocated at invocation boundaries (CUDA devices only)

Custom tracks with `parent_uuid` and explicit child ordering; no fake processes or threads.
Uuids are small so that each event spends one byte on its track.
"""

from __future__ import annotations

from typing import NamedTuple

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..proto_bytes import SEQUENCE_ID, FieldNumber, f_bytes

PLANNED_MEMORY = "Memory (planned)"
MEASURED_MEMORY = "Memory (measured)"
CHILDREN = ("Workload", "Host", "Compute", "DMA", PLANNED_MEMORY, MEASURED_MEMORY)
RUN_TRACK = 1  # below every device's uuids
RUN_TRACK_NAME = "Run"

PLANNED_MEMORY_DESCRIPTION = (
    "Planned at compile time, not measured: the resident weights of every submodule placed on this device "
    "plus the live activations of the running program as the compiler's liveness analysis plans them, "
    "stepped at command boundaries.")
MEASURED_MEMORY_DESCRIPTION = (
    "Measured: torch.cuda.memory_allocated of {torch_device} at the start and the end of each invocation "
    "(every tensor torch holds on that device, whoever allocated it).")
CPU_DEVICE_NOTE = (
    "On the CPU, every logical device shares the host's {cpus} and the devices run one after another, "
    "never side by side; a DMA is a host memory copy. Torch's intra-op thread count changes the timings.")
RUN_TRACK_DESCRIPTION = (
    "The run this trace belongs to. Its one slice spans the trace; its args say how the numbers were taken: "
    "clock and timing method, torch version and threads, host CPU and load, rbln_config as compiled, model "
    "directory and weights digest, tool version.")


class DeviceTrack(NamedTuple):
    """What a device's tracks show of it: from the capture's device and pipeline records."""

    logical: int
    torch_device: str
    capacity: int
    timing: str = ""  # how durations on it were taken; "" when the capture does not say
    measured_memory: bool = False  # the capture holds measured memory for it (CUDA devices)
    host_cpus: int = 0  # CPUs the profiled process could use; 0 when the capture does not say


class TrackIds:
    @staticmethod
    def device(d: int) -> int:
        return (d + 1) << 3

    def workload(self, d: int) -> int:
        return self.device(d) + 1

    def host(self, d: int) -> int:
        return self.device(d) + 2

    def compute(self, d: int) -> int:
        return self.device(d) + 3

    def dma(self, d: int) -> int:
        return self.device(d) + 4

    def memory(self, d: int) -> int:
        """The planned memory counter."""
        return self.device(d) + 5

    def measured_memory(self, d: int) -> int:
        return self.device(d) + 6


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def device_description(device: DeviceTrack) -> str:
    text = f"logical device {device.logical} on torch device {device.torch_device}; capacity {_gib(device.capacity)}"
    if device.timing:
        text += f"; durations: {device.timing}"
    if device.torch_device.split(":")[0] == "cpu":
        cpus = f"{device.host_cpus} CPU cores" if device.host_cpus else "CPU cores"
        text += ". " + CPU_DEVICE_NOTE.format(cpus=cpus)
    return text


def descriptor_packets(devices, *, with_host: bool) -> bytes:
    """Framed TrackDescriptor packets: the Run track, then per `DeviceTrack` its group of tracks."""
    ids = TrackIds()
    out = [pt.TrackDescriptor(uuid=RUN_TRACK, name=RUN_TRACK_NAME, description=RUN_TRACK_DESCRIPTION,
                              sibling_order_rank=-1)]
    for device in devices:
        device = DeviceTrack(*device)
        logical = device.logical
        out.append(pt.TrackDescriptor(
            uuid=ids.device(logical),
            name=f"Device {logical}",
            description=device_description(device),
            child_ordering=pt.TrackDescriptor.EXPLICIT,
            sibling_order_rank=logical,
        ))
        for rank, child in enumerate(CHILDREN):
            if child == "Host" and not (with_host and logical == 0):
                continue
            if child == MEASURED_MEMORY and not device.measured_memory:
                continue
            desc = pt.TrackDescriptor(
                uuid=ids.device(logical) + 1 + rank, parent_uuid=ids.device(logical), name=child,
                sibling_order_rank=rank,
            )
            if child == PLANNED_MEMORY:
                desc.description = PLANNED_MEMORY_DESCRIPTION
            elif child == MEASURED_MEMORY:
                desc.description = MEASURED_MEMORY_DESCRIPTION.format(torch_device=device.torch_device)
            if child in (PLANNED_MEMORY, MEASURED_MEMORY):
                desc.counter.unit = pt.CounterDescriptor.UNIT_SIZE_BYTES
            out.append(desc)
    packets = []
    for desc in out:
        p = pt.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID, track_descriptor=desc)
        packets.append(f_bytes(FieldNumber.TRACE_PACKET, p.SerializeToString()))
    return b"".join(packets)
