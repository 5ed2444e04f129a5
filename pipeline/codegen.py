"""Emit a partitioned submodule as straight-line Python bound to one torch device.

Two functions come out of one partition: `run(*inputs)` and `run_timed(T, *inputs)`. The timed
one writes one timestamp into `T` at every command boundary and nothing else, so command i spans
T[first_tick + i] .. T[first_tick + i + 1]. On CUDA the timestamps are `torch.cuda.Event`s recorded on the
current stream, resolved after the invocation, never synchronised per command. Weights are bound
as globals of the generated code (no attribute lookups per call), and every intermediate is
deleted right after its last reader, as the device would free it (`Partition.liveness.frees`).
A split op's chunks are emitted by its rule in `split_rules`. With a slowdown factor (the test-only
knob of `pipeline.slowdown`) every command ends with a spin that stretches it to that factor.
"""

from __future__ import annotations

import math
import operator
import time

import torch
from torch.fx import Node

from .partition import Partition
from .slowdown import spinner


class _Emitter:
    """Python expressions for one partition's nodes on one device; also what a split rule emits through."""

    def __init__(self, part: Partition, device: torch.device):
        self.part = part
        self.device = device
        self.resolve = part.resolve
        self.globals: dict[str, object] = {"_now": time.monotonic_ns}
        self._bound: dict[int, str] = {}
        self._moved: dict[int, torch.Tensor] = {}

    def bind(self, obj, hint: str) -> str:
        key = id(obj)
        if key in self._bound:
            return self._bound[key]
        name = f"_{hint}_{len(self.globals)}"
        self.globals[name] = obj
        self._bound[key] = name
        return name

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        """The constant moved to this device, once per tensor."""
        if t.device == self.device:
            return t
        moved = self._moved.get(id(t))
        if moved is None:
            moved = self._moved[id(t)] = t.to(self.device)
        return moved

    def weight(self, n: Node) -> torch.Tensor:
        """The constant that n names, on this device."""
        return self.on_device(self.part.constants[self.resolve(n)])

    def expr(self, a) -> str:
        if isinstance(a, Node):
            a = self.resolve(a)
            if a in self.part.constants:
                value = self.part.constants[a]
                if isinstance(value, torch.Tensor):
                    return self.bind(self.on_device(value), "w")
                return self.bind(type(value)(self.on_device(v) for v in value), "w")
            return a.name
        if isinstance(a, list):
            return "[" + ", ".join(self.expr(x) for x in a) + "]"
        if isinstance(a, tuple):
            return "(" + "".join(self.expr(x) + ", " for x in a) + ")"
        if isinstance(a, torch.device):
            return self.bind(self.device, "device")
        if isinstance(a, bool) or a is None or isinstance(a, (int, str)):
            return repr(a)
        if isinstance(a, float) and math.isfinite(a):
            return repr(a)
        return self.bind(a, "c")

    def call(self, target, args, kwargs) -> str:
        fn = self.bind(target._op if isinstance(target, torch._ops.OpOverload) else target, "op")
        parts = [self.expr(a) for a in args] + [f"{k}={self.expr(v)}" for k, v in kwargs.items()]
        return f"{fn}({', '.join(parts)})"

    def node(self, n: Node) -> str:
        if n.target is operator.getitem:
            return f"{n.name} = {self.expr(n.args[0])}[{n.args[1]!r}]"
        return f"{n.name} = {self.call(n.target, n.args, n.kwargs)}"


def _commands_code(em: _Emitter) -> list[list[str]]:
    """Source lines of every command, in order, each followed by the deletes its liveness allows."""
    part = em.part
    commands: list[list[str]] = []
    for g in part.groups:
        if g.split is None:
            commands.append([em.node(n) for n in g.nodes])
            continue
        pos = g.nodes.index(g.primary_op)
        chunks = g.split.rule.emit_chunks(g.primary_op, g.split, em)
        chunks[0][:0] = [em.node(n) for n in g.nodes[:pos]]
        chunks[-1].extend(em.node(n) for n in g.nodes[pos + 1:])
        commands.extend(chunks)
    for lines, names in zip(commands, part.liveness.frees):
        if names:
            lines.append("del " + ", ".join(names))
    return commands


def generate(part: Partition, device: torch.device, *, first_tick: int, tick: str,
             slowdown: float = 1.0) -> tuple[object, object, str]:
    """Return (run, run_timed, source). `tick` is the statement template, e.g. 'T[{i}] = _now()';
    `slowdown` > 1 makes every command take that many times its work (`pipeline.slowdown`)."""
    em = _Emitter(part, device)
    commands = _commands_code(em)
    if slowdown != 1.0:
        em.globals["_spin"] = spinner(slowdown)
        commands = [["_c0 = _now()", *lines, "_spin(_c0)"] for lines in commands]
    args = ", ".join(p.name for p in part.inputs)
    outs = "".join(em.expr(o) + ", " for o in part.outputs)
    plain = [f"def run({args}):"]
    timed = [f"def run_timed(T, {args}):"]
    for i, lines in enumerate(commands):
        timed.append("    " + tick.format(i=first_tick + i))
        for line in lines:
            plain.append("    " + line)
            timed.append("    " + line)
    timed.append("    " + tick.format(i=first_tick + len(commands)))
    plain.append(f"    return ({outs})")
    timed.append(f"    return ({outs})")
    source = "\n".join(plain) + "\n\n\n" + "\n".join(timed) + "\n"
    namespace = dict(em.globals)
    exec(compile(source, f"<rbln-compiled {part.submodule}>", "exec"), namespace)
    return namespace["run"], namespace["run_timed"], source
