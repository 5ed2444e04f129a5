"""Submodules that run in another process: rank 0 drives the pipeline, the other ranks serve calls.

Every rank assembles the same compiled pipeline (the compile cache and the deterministic embedded
model make them equal), so both ends know every program's input and output shapes and only tensors
travel. Rank 0 runs diffusers' `__call__` (tokenize, scheduler, VAE postprocess: host work stays on
the root device); a submodule placed on a logical device of another rank (`rbln_config['ranks']`)
is called through a `RemoteSubmodule`, which sends the call (a header, then the inputs packed into
one message) with `dist.send` and receives the outputs with `dist.recv`. The other ranks run
`serve`: receive a call, run the compiled program (profiled by their own profiler, as any call),
send the outputs, until rank 0 says stop.

A call is two messages each way, whatever the number of tensors: a header, then the inputs packed
into one buffer (both ends know its size from the program: shapes are fixed at compile time); the
reply is a header, then the outputs packed into one. A recv is timed from its header's arrival to the
end of its tensors, so the wait for the peer is idle time, not transfer, and a recv never starts
before its send. (One message a call would wake the serving rank once, but its recv could then not
tell its wait from its transfer.)

A gloo send does not return before the receiver has posted its recv, so a send timed while the peer
is still busy (entering a pipeline call, say) would hold that wait as transfer time, DMA busy on the
sender. So rank 0 sends to a serving rank only once it knows that rank waits for its next message:
the rank said `READY` (a header; it does at its start and after each pipeline-call bracket), or it
has just sent the outputs of a call (it goes straight back to its recv). Rank 0 takes a `READY`
untimed (its wait for the peer is idle time): a timed send starts when the peer's recv is posted
and spans only the transfer.

A header is six int64s: `(op, submodule, call number, calls started, timed, 0)`. `BEGIN` and `END`
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
INPUTS, OUTPUTS = 0, 1  # which message of a call: flow = 2 * call number + this


def _header(op: int, submodule: int = 0, number: int = 0, started: int = -1, timed: bool = False) -> torch.Tensor:
    return torch.tensor([op, submodule, number, started, int(timed), 0], dtype=torch.int64)


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


def _pack(tensors, specs) -> torch.Tensor:
    """One uint8 message of `_packed_bytes(specs)`: each tensor at its offset."""
    buf = torch.empty(_packed_bytes(specs), dtype=torch.uint8)
    for at, spec, x in zip(_offsets(specs, 0), specs, tensors):
        buf[at:at + spec.bytes] = x.detach().contiguous().to("cpu").reshape(-1).view(torch.uint8)
    return buf


def _unpack(buf: torch.Tensor, specs) -> list[torch.Tensor]:
    """The tensors of `specs` in a packed message (views of it)."""
    return [buf[at:at + spec.bytes].view(torch_dtype(spec.dtype)).view(spec.shape)
            for at, spec in zip(_offsets(specs, 0), specs)]


def _recv_packed(specs, peer: int, comm) -> list[torch.Tensor]:
    packed = torch.empty(_packed_bytes(specs), dtype=torch.uint8, device=comm)
    recv(packed, peer)
    return _unpack(packed, specs)


class RankLink:
    """Rank 0's end: the header of every remote call, and the pipeline-call brackets to every rank."""

    def __init__(self, group: RankGroup):
        self.group = group
        self.calls = 0  # remote calls so far, on any rank: each one's number
        self._waiting: set[int] = set()  # serving ranks known to wait for their next message

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

    def _send(self, *messages: torch.Tensor) -> None:
        *messages, peer = messages
        self._waiting.discard(peer)
        for message in messages:
            send(message.to(self.group.comm_device), peer)

    def _send_header(self, op: int, peer: int, started: int = -1) -> None:
        self._await_ready(peer)
        self._send(_header(op, started=started), peer)

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
        header = _header(CALL, SUBMODULES.index(info.submodule), number, started, timed).to(comm)
        packed = _pack(inputs, info.inputs).to(comm)
        self._await_ready(peer)
        t0 = time.monotonic_ns()  # the peer's recv is posted: from here on the send is the transfer
        self._send(header, packed, peer)
        t1 = time.monotonic_ns()
        done = torch.empty(HEADER_SIZE, dtype=torch.int64, device=comm)
        recv(done, peer)
        t2 = time.monotonic_ns()
        outputs = [out.to("cpu", copy=True) for out in _recv_packed(info.outputs, peer, comm)]
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
    header = torch.empty(HEADER_SIZE, dtype=torch.int64, device=comm)
    ready = _header(READY).to(comm)
    busy_s = busy_for_tests_s(group.rank)
    served = 0
    say_ready = True
    # The last timed call's transfers, recorded when the next message comes: a serving rank records
    # nothing between a reply and its next recv (rank 0 takes the reply as the sign that the rank
    # waits: any work there would be timed as rank 0's send).
    pending: list = []
    with ExitStack() as pipeline_call:
        while True:
            if say_ready:
                send(ready, 0)  # rank 0 sends the next header once it has this (or a call's outputs)
            recv(header, 0)
            t0 = time.monotonic_ns()  # what came before was waiting for rank 0, not a transfer
            op, submodule_index, number, started, timed, _ = (int(v) for v in header.tolist())
            call = active_call()
            if call is not None:
                for transfer in pending:
                    call.transfer(transfer)
            pending = []
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
            inputs = [x.to("cpu") for x in _recv_packed(info.inputs, 0, comm)]
            t1 = time.monotonic_ns()
            if call is not None and started >= 0:
                call.catch_up(started - 1)  # the calls rank 0 started before this one
            outputs = module._invoke(*inputs)
            reply, packed = _header(CALL, submodule_index, number).to(comm), _pack(outputs, info.outputs).to(comm)
            t2 = time.monotonic_ns()
            send(reply, 0)
            send(packed, 0)
            t3 = time.monotonic_ns()
            if call is not None and timed:
                pending = [_transfer(info, "recv", INPUTS, 0, info.device, number, t0, t1),
                           _transfer(info, "send", OUTPUTS, 0, info.device, number, t2, t3)]
            served += 1


def distribute(pipe, group: RankGroup) -> RankLink | None:
    """Make `pipe` one rank's part of a run split across ranks: on rank 0, submodules of other ranks
    are called remotely (returns the link that brackets calls and stops the others); on the others,
    the pipeline describes only what the rank runs and is driven by `serve`. Returns None there."""
    ranks = pipe.rbln_config.ranks or (0,) * pipe.rbln_config.num_logical_devices
    link = RankLink(group) if group.rank == 0 else None
    if link is not None:
        for name in SUBMODULES:
            module = getattr(pipe, name)
            owner = ranks[module.compiled.device]
            if owner != 0:
                module.compiled = RemoteSubmodule(module.compiled, owner, link)
    pipe.join_ranks(group.rank, group.world_size, ranks, link)
    return link
