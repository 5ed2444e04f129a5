"""Track layout: one top-level `Device i` track per logical device, with ordered child tracks.

    Device 0  (torch device, capacity in the description)
      Workload   one slice per submodule invocation
      Host       tokenization, scheduler steps, guidance combine, latents, post-processing (device 0 only)
      Compute    commands; a split op is a parent slice with one child per command
      DMA        host<->device copies of inputs and outputs
      Memory     counter: bytes in use (resident weights + live activations)

Custom tracks with `parent_uuid` and explicit child ordering; no fake processes or threads.
Uuids are small so that each event spends one byte on its track.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .proto_bytes import SEQUENCE_ID, FieldNumber, f_bytes

CHILDREN = ("Workload", "Host", "Compute", "DMA", "Memory")


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
        return self.device(d) + 5


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def descriptor_packets(devices, *, with_host: bool) -> bytes:
    """Framed TrackDescriptor packets for `devices`: (logical, torch device, capacity bytes) triples."""
    ids = TrackIds()
    out = []
    for logical, torch_device, capacity in devices:
        root = pt.TrackDescriptor(
            uuid=ids.device(logical),
            name=f"Device {logical}",
            description=f"logical device {logical} on torch device {torch_device}; capacity {_gib(capacity)}",
            child_ordering=pt.TrackDescriptor.EXPLICIT,
            sibling_order_rank=logical,
        )
        out.append(root)
        for rank, child in enumerate(CHILDREN):
            if child == "Host" and not (with_host and logical == 0):
                continue
            desc = pt.TrackDescriptor(
                uuid=ids.device(logical) + 1 + rank, parent_uuid=ids.device(logical), name=child,
                sibling_order_rank=rank,
            )
            if child == "Memory":
                desc.counter.unit = pt.CounterDescriptor.UNIT_SIZE_BYTES
            out.append(desc)
    packets = []
    for desc in out:
        p = pt.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID, track_descriptor=desc)
        packets.append(f_bytes(FieldNumber.TRACE_PACKET, p.SerializeToString()))
    return b"".join(packets)
