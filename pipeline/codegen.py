"""Emit a partitioned submodule as straight-line Python bound to one torch device.

Two functions come out of one partition: `run(*inputs)` and `run_timed(T, *inputs)`. The timed
one writes one timestamp into `T` at every command boundary and nothing else, so command i spans
T[base + i] .. T[base + i + 1]. On CUDA the timestamps are `torch.cuda.Event`s recorded on the
current stream, resolved after the invocation, never synchronised per command. Weights are bound
as globals of the generated code (no attribute lookups per call), and every intermediate is
deleted right after its last reader, as the device would free it.
"""

from __future__ import annotations

import math
import operator
import time

import torch
from torch.fx import Node

from .partition import Partition, _tensor_nodes, _val, part_resolver

aten = torch.ops.aten


class _Emitter:
    def __init__(self, part: Partition, device: torch.device):
        self.part = part
        self.device = device
        self.resolve = part_resolver(part)
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

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """The constant moved to this device, once per tensor."""
        if t.device == self.device:
            return t
        moved = self._moved.get(id(t))
        if moved is None:
            moved = self._moved[id(t)] = t.to(self.device)
        return moved

    def expr(self, a) -> str:
        if isinstance(a, Node):
            a = self.resolve(a)
            if a in self.part.constants:
                value = self.part.constants[a]
                if isinstance(value, torch.Tensor):
                    return self.bind(self.tensor(value), "w")
                return self.bind(type(value)(self.tensor(v) for v in value), "w")
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

    # Split ops: each chunk is one command; the last chunk assembles the output.

    def split_chunks(self, n: Node, plan) -> list[list[str]]:
        t = n.target
        args = list(n.args)
        chunks: list[list[str]] = []
        if t is aten.linear.default:
            x, w = args[0], self.part.constants[self.resolve(args[1])]
            b = self.part.constants[self.resolve(args[2])] if len(args) > 2 and args[2] is not None else None
            out = _val(n)
            k_in, n_out = w.shape[1], w.shape[0]
            rows = math.prod(out.shape[:-1])
            addmm, mm, empty = self.bind(torch.addmm, "op"), self.bind(torch.mm, "op"), self.bind(torch.empty, "op")
            dtype = self.bind(out.dtype, "dtype")
            dev = self.bind(self.device, "device")
            wd = self.tensor(w)
            bd = self.tensor(b) if b is not None else None
            for i, (s, e) in enumerate(zip(plan.bounds, plan.bounds[1:])):
                lines = []
                if i == 0:
                    lines.append(f"{n.name}_x = {self.expr(x)}.reshape(-1, {k_in})")
                    lines.append(f"{n.name}_o = {empty}(({rows}, {n_out}), dtype={dtype}, device={dev})")
                wt = self.bind(wd[s:e].t(), "w")
                if bd is None:
                    lines.append(f"{mm}({n.name}_x, {wt}, out={n.name}_o[:, {s}:{e}])")
                else:
                    lines.append(f"{addmm}({self.bind(bd[s:e], 'w')}, {n.name}_x, {wt}, out={n.name}_o[:, {s}:{e}])")
                chunks.append(lines)
            chunks[-1].append(f"{n.name} = {n.name}_o.view({tuple(out.shape)})")
            chunks[-1].append(f"del {n.name}_x, {n.name}_o")
            return chunks

        cat = self.bind(torch.cat, "op")
        if plan.dim_name == "out_rows":
            return self._conv_rows(n, plan, cat)
        for i, (s, e) in enumerate(zip(plan.bounds, plan.bounds[1:])):
            if t is aten.conv2d.default:
                w = self.tensor(self.part.constants[self.resolve(args[1])])
                bias = args[2] if len(args) > 2 else None
                b = self.tensor(self.part.constants[self.resolve(bias)]) if bias is not None else None
                chunk_args = [args[0], w[s:e], None if b is None else b[s:e], *args[3:]]
            elif t is aten.scaled_dot_product_attention.default:
                q, k, v = (f"{self.expr(a)}[:, {s}:{e}]" for a in args[:3])
                rest = args[3:]
                mask = rest[0] if rest else n.kwargs.get("attn_mask")
                mask_val = _val(mask)
                mask_expr = self.expr(mask)
                if isinstance(mask_val, torch.Tensor) and mask_val.dim() == 4 and mask_val.shape[1] > 1:
                    mask_expr = f"{mask_expr}[:, {s}:{e}]"
                others = [self.expr(a) for a in rest[1:]] + [f"{k_}={self.expr(v_)}" for k_, v_ in n.kwargs.items() if k_ != "attn_mask"]
                fn = self.bind(t._op, "op")
                chunks.append([f"{n.name}_c{i} = {fn}({q}, {k}, {v}, {', '.join([mask_expr] + others)})"])
                continue
            else:  # group_norm(x, num_groups, weight, bias, eps, cudnn_enabled)
                channels = _val(args[0]).shape[1]
                c0, c1 = s * channels // args[1], e * channels // args[1]
                w = self.tensor(self.part.constants[self.resolve(args[2])]) if args[2] is not None else None
                b = self.tensor(self.part.constants[self.resolve(args[3])]) if args[3] is not None else None
                x = f"{self.expr(args[0])}[:, {c0}:{c1}]"
                fn = self.bind(t._op, "op")
                rest = ", ".join(self.expr(a) for a in args[4:])
                wexpr = "None" if w is None else self.bind(w[c0:c1], "w")
                bexpr = "None" if b is None else self.bind(b[c0:c1], "w")
                chunks.append([f"{n.name}_c{i} = {fn}({x}, {e - s}, {wexpr}, {bexpr}{', ' + rest if rest else ''})"])
                continue
            fn = self.bind(t._op, "op")
            parts = [self.expr(a) if not isinstance(a, torch.Tensor) else self.bind(a, "w") for a in chunk_args]
            chunks.append([f"{n.name}_c{i} = {fn}({', '.join(parts)})"])
        names = ", ".join(f"{n.name}_c{i}" for i in range(plan.k))
        chunks[-1].append(f"{n.name} = {cat}([{names}], 1)")
        chunks[-1].append(f"del {names}")
        return chunks


    def _conv_rows(self, n: Node, plan, cat: str) -> list[list[str]]:
        """Output rows [s, e) of conv2d read input rows [s*stride - pad, ...) plus the kernel's halo;
        the zero padding that falls inside a chunk is added to that chunk alone."""
        args = list(n.args) + [None] * (7 - len(n.args))
        x, w_node, b_node, stride, padding, dilation, groups = args
        stride = stride or [1, 1]
        padding = padding or [0, 0]
        dilation = dilation or [1, 1]
        height = _val(x).shape[2]
        kh = _val(w_node).shape[2]
        fn = self.bind(aten.conv2d.default._op, "op")
        pad = self.bind(aten.constant_pad_nd.default._op, "op")
        w = self.expr(w_node)
        b = self.expr(b_node) if b_node is not None else "None"
        chunks = []
        for i, (s, e) in enumerate(zip(plan.bounds, plan.bounds[1:])):
            lo = s * stride[0] - padding[0]
            hi = (e - 1) * stride[0] - padding[0] + dilation[0] * (kh - 1) + 1
            top, bottom = max(0, -lo), max(0, hi - height)
            rows = f"{self.expr(x)}[:, :, {max(lo, 0)}:{min(hi, height)}]"
            if top or bottom:
                rows = f"{pad}({rows}, [0, 0, {top}, {bottom}], 0.0)"
            conv_args = f"{rows}, {w}, {b}, {list(stride)}, [0, {padding[1]}], {list(dilation)}, {groups or 1}"
            chunks.append([f"{n.name}_c{i} = {fn}({conv_args})"])
        names = ", ".join(f"{n.name}_c{i}" for i in range(plan.k))
        chunks[-1].append(f"{n.name} = {cat}([{names}], 2)")
        chunks[-1].append(f"del {names}")
        return chunks


def _commands_code(em: _Emitter) -> list[list[str]]:
    """Source lines of every command, in order, each followed by the deletes it allows."""
    part = em.part
    commands: list[list[str]] = []
    for g in part.groups:
        if g.split is None:
            commands.append([em.node(n) for n in g.nodes])
            continue
        pos = g.nodes.index(g.main)
        chunks = em.split_chunks(g.main, g.split)
        chunks[0][:0] = [em.node(n) for n in g.nodes[:pos]]
        chunks[-1].extend(em.node(n) for n in g.nodes[pos + 1:])
        commands.extend(chunks)

    # Free every value right after the command that reads it last.
    resolve = em.resolve
    last: dict[str, int] = {}
    ci = 0
    for g in part.groups:
        span = g.split.k if g.split else 1
        for n in g.nodes:
            for d in _tensor_nodes((n.args, n.kwargs)):
                d = resolve(d)
                if d not in part.constants:
                    last[d.name] = ci + span - 1
        ci += span
    keep = {resolve(o).name for o in part.outputs}
    frees: dict[int, list[str]] = {}
    for name, c in last.items():
        if name not in keep:
            frees.setdefault(c, []).append(name)
    for c, names in frees.items():
        commands[c].append("del " + ", ".join(sorted(names)))
    return commands


def generate(part: Partition, device: torch.device, *, base: int, tick: str) -> tuple[object, object, str]:
    """Return (run, run_timed, source). `tick` is the statement template, e.g. 'T[{i}] = _now()'."""
    em = _Emitter(part, device)
    commands = _commands_code(em)
    args = ", ".join(p.name for p in part.inputs)
    outs = "".join(em.expr(o) + ", " for o in part.outputs)
    plain = [f"def run({args}):"]
    timed = [f"def run_timed(T, {args}):"]
    for i, lines in enumerate(commands):
        timed.append("    " + tick.format(i=base + i))
        for line in lines:
            plain.append("    " + line)
            timed.append("    " + line)
    timed.append("    " + tick.format(i=base + len(commands)))
    plain.append(f"    return ({outs})")
    timed.append(f"    return ({outs})")
    source = "\n".join(plain) + "\n\n\n" + "\n".join(timed) + "\n"
    namespace = dict(em.globals)
    exec(compile(source, f"<rbln-compiled {part.submodule}>", "exec"), namespace)
    return namespace["run"], namespace["run_timed"], source
