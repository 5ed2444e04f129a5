"""Submodules that run in another process: rank 0 drives the pipeline, the other ranks serve calls.

Every rank assembles the same compiled pipeline (the compile cache and the deterministic embedded
model make them equal), so both ends know every program's input and output shapes and only tensors
travel. Rank 0 runs diffusers' `__call__` (tokenize, scheduler, VAE postprocess: host work stays on
the root device); a submodule placed on a logical device of another rank (`rbln_config['ranks']`)
is called through a `RemoteSubmodule`, which sends the call (a header and the inputs, packed into
one message) with `dist.send` and receives the outputs with `dist.recv`. The other ranks run
`serve`: receive a call, run the compiled program (profiled by their own profiler, as any call),
send the outputs, until rank 0 says stop.

Every message to a serving rank has one size, fixed when the pipeline is assembled: a header and
room for the largest inputs of the submodules that rank serves (shapes are fixed at compile time),
so the rank posts one recv per call and wakes once. That recv cannot tell its wait from the transfer,
so the serving rank takes the transfer's duration from rank 0, which timed its send and says it in
its next message's header: the recv is recorded then, ending when the call arrived. A reply is two
messages: its header, then the outputs packed into one; rank 0's recv of the outputs starts when the
header has arrived, so the wait for the peer's compute is idle time, not transfer.

A gloo send does not return before the receiver has posted its recv, so a send timed while the peer
is still busy (entering a pipeline call, say) would hold that wait as transfer time, DMA busy on the
sender. So rank 0 sends to a serving rank only once it knows that rank waits for its next message:
the rank said `READY` (a header; it does at its start and after each pipeline-call bracket), or it
has just sent the outputs of a call (it goes straight back to its recv). Rank 0 takes a `READY`
untimed (its wait for the peer is idle time): a timed send starts when the peer's recv is posted
and spans only the transfer.

A header is six int64s: `(op, submodule, call number, calls started, timed, ns the previous call's
send to this rank took)`. `BEGIN` and `END`
bracket each pipeline call, so that a serving rank profiles the same pipeline calls as rank 0;
`calls started` (rank 0's count of submodule calls in the pipeline call so far) keeps every
rank's sequence indices those of the whole run. Inside a profiled call both ends report each
message as a `RankTransfer`; the call number pairs a send with its recv (`flow`).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import torch

from .contract import SUBMODULES, RankTransfer
from .dtypes import torch_dtype
from .pipeline_sd3 import STEP_SUBMODULE
from .profiling_hooks import active_call, profiled_call
from .ranks import RankGroup, recv, send, busy_for_tests_s

BEGIN, CALL, END, STOP, READY = range(5)
HEADER_SIZE = 6
HEADER_BYTES = 8 * HEADER_SIZE
INPUTS, OUTPUTS = 0, 1  # which message of a call: flow = 2 * call number + this


def _header(op: int, submodule: int = 0, number: int = 0, started: int = -1, timed: bool = False,
            previous_send_ns: int = 0) -> torch.Tensor:
    return torch.tensor([op, submodule, number, started, int(timed), previous_send_ns], dtype=torch.int64)


def _offsets(specs, start: int) -> list[int]:
    """Where each tensor of `specs` starts in a packed message, from `start`, each 8-byte aligned (so
    that a view of the bytes as any dtype is aligned)."""
    offsets, at = [], start
    for spec in specs:
        offsets.append(at)
        at += -(-spec.bytes // 8) * 8
    return offsets


def _packed_bytes(specs, start: int = 0) -> int:
    """The size of a message that packs `specs` from `start` (`_offsets`)."""
    return start + sum(-(-spec.bytes // 8) * 8 for spec in specs)


def _pack(tensors, specs, size: int, start: int = 0, header: torch.Tensor | None = None) -> torch.Tensor:
    """One uint8 message of `size` bytes: `header` (if any) then each tensor at its offset."""
    buf = torch.empty(size, dtype=torch.uint8)
    if header is not None:
        buf[:HEADER_BYTES] = header.view(torch.uint8)
    for at, spec, x in zip(_offsets(specs, start), specs, tensors):
        buf[at:at + spec.bytes] = x.detach().contiguous().to("cpu").reshape(-1).view(torch.uint8)
    return buf


def _unpack(buf: torch.Tensor, specs, start: int = 0) -> list[torch.Tensor]:
    """The tensors of `specs` in a packed message (views of it)."""
    return [buf[at:at + spec.bytes].view(torch_dtype(spec.dtype)).view(spec.shape)
            for at, spec in zip(_offsets(specs, start), specs)]


def request_bytes(pipe, ranks, rank: int) -> int:
    """The size of every message rank 0 sends to serving rank `rank`: a header and room for the largest
    inputs of the submodules it serves (rank 0 and that rank compute the same from the same pipeline)."""
    served = [getattr(pipe, name).compiled.info for name in SUBMODULES
              if ranks[getattr(pipe, name).compiled.device] == rank]
    return max([HEADER_BYTES] + [_packed_bytes(info.inputs, HEADER_BYTES) for info in served])


class RankLink:
    """Rank 0's end: the header of every remote call, and the pipeline-call brackets to every rank."""

    def __init__(self, group: RankGroup, request_bytes: dict[int, int]):
        self.group = group
        self.calls = 0  # remote calls so far, on any rank: each one's number
        self.request_bytes = request_bytes  # serving rank -> the size of every message to it
        self._waiting: set[int] = set()  # serving ranks known to wait for their next message
        self._sent_ns: dict[int, int] = {}  # serving rank -> how long the last call's send to it took

    def _await_ready(self, peer: int) -> None:
        """Make sure `peer` waits for its next message: it just replied to a call, or wait (idle time)
        for its `READY`."""
        if peer in self._waiting:
            return
        ready = torch.empty(HEADER_SIZE, dtype=torch.int64, device=self.group.comm_device)
        recv(ready, peer)
        if int(ready[0]) != READY:
            raise RuntimeError(f"rank {peer} sent op {int(ready[0])} where READY ({READY}) was due: the ranks disagree "
                               "on the calls (a bug)")
        self._waiting.add(peer)

    def _send(self, message: torch.Tensor, peer: int) -> None:
        self._waiting.discard(peer)
        send(message.to(self.group.comm_device), peer)

    def _send_header(self, op: int, peer: int, started: int = -1) -> None:
        self._await_ready(peer)
        header = _header(op, started=started, previous_send_ns=self._sent_ns.pop(peer, 0))
        self._send(_pack((), (), self.request_bytes[peer], HEADER_BYTES, header), peer)

    @contextmanager
    def pipeline_call(self):
        """Bracket one pipeline call on every serving rank."""
        for peer in range(1, self.group.world_size):
            self._send_header(BEGIN, peer)
        try:
            yield
        finally:
            call = active_call()
            started = call.calls_started if call is not None else -1
            for peer in range(1, self.group.world_size):
                self._send_header(END, peer, started)

    def stop(self) -> None:
        """End every serving rank's `serve` loop."""
        for peer in range(1, self.group.world_size):
            self._send_header(STOP, peer)

    def call(self, remote: RemoteSubmodule, inputs: tuple[torch.Tensor, ...], timed: bool) -> tuple:
        info, peer, comm = remote.info, remote.rank, self.group.comm_device
        call = active_call()
        number, self.calls = self.calls, self.calls + 1
        started = call.calls_started if call is not None else -1
        header = _header(CALL, SUBMODULES.index(info.submodule), number, started, timed, self._sent_ns.pop(peer, 0))
        message = _pack(inputs, info.inputs, self.request_bytes[peer], HEADER_BYTES, header).to(comm)
        self._await_ready(peer)
        t0 = time.monotonic_ns()  # the peer's recv is posted: from here on the send is the transfer
        self._send(message, peer)
        t1 = time.monotonic_ns()
        self._sent_ns[peer] = t1 - t0  # the peer records its recv with this, from our next message
        done = torch.empty(HEADER_SIZE, dtype=torch.int64, device=comm)
        recv(done, peer)
        t2 = time.monotonic_ns()
        packed = torch.empty(_packed_bytes(info.outputs), dtype=torch.uint8, device=comm)
        recv(packed, peer)
        outputs = [out.to("cpu", copy=True) for out in _unpack(packed, info.outputs)]
        t3 = time.monotonic_ns()
        self._waiting.add(peer)  # it went straight back to wait for its next message
        if call is not None and timed:
            call.transfer(_transfer(info, "send", INPUTS, peer, 0, number, t0, t1))
            call.transfer(_transfer(info, "recv", OUTPUTS, peer, 0, number, t2, t3))
            call.ran_elsewhere(info.submodule)
        return tuple(outputs)


def _transfer(info, direction: str, message: int, peer: int, device: int, number: int, start: int, end: int):
    specs = info.inputs if message == INPUTS else info.outputs
    return RankTransfer(submodule=info.submodule, direction=direction, peer=peer, device=device,
                        tensors=tuple(s.name for s in specs), bytes=sum(s.bytes for s in specs),
                        start_ns=start, end_ns=end, flow=2 * number + message)


class RemoteSubmodule:
    """Stands in for a `CompiledSubmodule` of another rank: same description, calls go over the link."""

    def __init__(self, local, rank: int, link: RankLink):
        self.local = local  # the same program, assembled here too: its shapes and description
        self.rank = rank
        self.link = link

    def __getattr__(self, name):
        return getattr(self.local, name)

    def __call__(self, inputs: tuple[torch.Tensor, ...], on_ticks=None) -> tuple:
        return self.link.call(self, inputs, timed=on_ticks is not None)


@torch.no_grad()  # as diffusers' __call__ runs the submodules on rank 0
def serve(pipe, group: RankGroup) -> int:
    """A serving rank's loop: run the calls rank 0 sends until it says stop; returns the calls served."""
    comm = group.comm_device
    ranks = pipe.rbln_config.ranks or (0,) * pipe.rbln_config.num_logical_devices
    size = request_bytes(pipe, ranks, group.rank)
    ready = _header(READY).to(comm)
    busy_s = busy_for_tests_s(group.rank)
    served = 0
    say_ready = True
    # The last timed call's transfers, recorded when the next message comes: its recv needs the duration
    # that message says, and a serving rank records nothing between a reply and its next recv (rank 0
    # takes the reply as the sign that the rank waits: any work there would be timed as rank 0's send).
    pending = None  # (program, call number, arrival ns, (send start, send end))
    with ExitStack() as pipeline_call:
        while True:
            if say_ready:
                send(ready, 0)  # rank 0 sends the next message once it has this (or a call's outputs)
            message = torch.empty(size, dtype=torch.uint8, device=comm)
            recv(message, 0)
            t1 = time.monotonic_ns()  # the message is here; what came before was waiting, then the transfer
            op, submodule_index, number, started, timed, previous_send_ns = (
                message[:HEADER_BYTES].to("cpu").view(torch.int64).tolist())
            call = active_call()
            if pending is not None:
                info, done, arrived_ns, (sent_ns, sent_end_ns) = pending
                if call is not None:
                    call.transfer(_transfer(info, "recv", INPUTS, 0, info.device, done, arrived_ns - previous_send_ns,
                                            arrived_ns))
                    call.transfer(_transfer(info, "send", OUTPUTS, 0, info.device, done, sent_ns, sent_end_ns))
                pending = None
            say_ready = op != CALL
            if op == STOP:
                return served
            if op == BEGIN:
                pipeline_call.enter_context(profiled_call(pipe.pipeline_info(), STEP_SUBMODULE))
                time.sleep(busy_s)
                continue
            if op == END:
                if call is not None and started >= 0:
                    call.catch_up(started)
                pipeline_call.close()
                continue
            module = getattr(pipe, SUBMODULES[submodule_index])
            info = module.compiled.info
            inputs = [x.to("cpu") for x in _unpack(message, info.inputs, HEADER_BYTES)]
            if call is not None and started >= 0:
                call.catch_up(started - 1)  # the calls rank 0 started before this one
            outputs = module._invoke(*inputs)
            header, packed = _header(CALL, submodule_index, number).to(comm), _pack(outputs, info.outputs,
                                                                                    _packed_bytes(info.outputs)).to(comm)
            t2 = time.monotonic_ns()
            send(header, 0)
            send(packed, 0)
            t3 = time.monotonic_ns()
            if call is not None and timed:
                pending = (info, number, t1, (t2, t3))
            served += 1


def distribute(pipe, group: RankGroup) -> RankLink | None:
    """Make `pipe` one rank's part of a run split across ranks: on rank 0, submodules of other ranks
    are called remotely (returns the link that brackets calls and stops the others); on the others,
    the pipeline describes only what the rank runs and is driven by `serve`. Returns None there."""
    ranks = pipe.rbln_config.ranks or (0,) * pipe.rbln_config.num_logical_devices
    link = None
    if group.rank == 0:
        link = RankLink(group, {peer: request_bytes(pipe, ranks, peer) for peer in range(1, group.world_size)})
    if link is not None:
        for name in SUBMODULES:
            module = getattr(pipe, name)
            owner = ranks[module.compiled.device]
            if owner != 0:
                module.compiled = RemoteSubmodule(module.compiled, owner, link)
    pipe.join_ranks(group.rank, group.world_size, ranks, link)
    return link
