"""How each splittable op divides into chunks: one rule per op, read by both the partitioner and codegen.

An op whose working set (weights + inputs + outputs) exceeds the command budget becomes
k = ceil(working set / budget) commands along one output dimension, at most one per index of
it: a linear along its output features, a conv2d along its output channels or output rows
(whichever re-reads less), attention along its heads, a group norm along its groups. The k
commands share the layer name and differ by command_index.

The budget is a target, not a guarantee: k is capped at the length of the split dimension (an
attention of 2 heads gives at most 2 commands, whatever the budget asks), and the bytes every
chunk needs whole (a linear's input, a row-split conv's filters) are in each chunk. A command whose
working set still exceeds the budget is exported with `bytes_over_budget`, as is an op no rule splits.

A rule owns everything op-specific: whether a node can be split, along which dimension and how
long it is, which bytes every chunk needs whole and which divide, the shapes and working set of
chunk i, and the code that computes chunk i. To make another op splittable, write one
`SplitRule` subclass here and decorate it with `@_rule`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.fx import Node

from .graph_utils import traced_value
from .op_costs import nbytes, shape_str

aten = torch.ops.aten


class ChunkEmitter(Protocol):
    """What a rule's `emit_chunks` may ask of the code generator."""

    device: torch.device

    def expr(self, a) -> str:
        """The Python expression of a node or a literal argument."""

    def bind(self, obj, hint: str) -> str:
        """A global of the generated code that holds obj (one per object)."""

    def weight(self, n: Node) -> torch.Tensor:
        """The constant that n names, on the emitter's device."""


@dataclass(frozen=True)
class SplitPlan:
    """How one op divides: the rule that divides it, along which dimension, and where."""

    rule: SplitRule
    dim_name: str  # out_features | out_channels | out_rows | heads | groups
    bounds: tuple[int, ...]  # k + 1 boundaries along the split dimension

    @property
    def k(self) -> int:
        return len(self.bounds) - 1

    def chunk(self, i: int) -> tuple[int, int]:
        """[start, end) of chunk i along the split dimension."""
        return self.bounds[i], self.bounds[i + 1]

    def share(self, i: int) -> float:
        """The fraction of the split dimension that chunk i covers."""
        return (self.bounds[i + 1] - self.bounds[i]) / self.bounds[-1]


class SplitRule(ABC):
    """Everything op-specific about dividing one aten op into chunks."""

    op: torch._ops.OpOverload
    dim_name: str  # the dimension split, unless `dimension` chooses

    def accepts(self, n: Node) -> bool:
        """Whether this node of the op can be split at all."""
        return True

    def dimension(self, n: Node) -> str:
        return self.dim_name

    @abstractmethod
    def dim_size(self, n: Node, dim: str) -> int:
        """How many indices the split dimension has (the most chunks there can be)."""

    @abstractmethod
    def fixed_and_divisible_bytes(self, n: Node, dim: str) -> tuple[int, int]:
        """Bytes every chunk needs whole, and bytes that divide among the chunks."""

    @abstractmethod
    def chunk_shapes(self, n: Node, dim: str, start: int, end: int) -> str:
        """The shapes string of the chunk covering [start, end) of the split dimension."""

    @abstractmethod
    def emit_chunks(self, n: Node, plan: SplitPlan, em: ChunkEmitter) -> list[list[str]]:
        """Source lines of each chunk's command; the last chunk assembles n's value and frees the pieces."""

    def plan(self, n: Node, budget: int) -> SplitPlan | None:
        """Split n into ceil(working set / budget) chunks, or None if it fits or cannot be split."""
        if not self.accepts(n):
            return None
        dim = self.dimension(n)
        fixed, divisible = self.fixed_and_divisible_bytes(n, dim)
        if fixed + divisible <= budget:
            return None
        size = self.dim_size(n, dim)
        k = min(size, math.ceil((fixed + divisible) / budget))
        if k < 2:
            return None
        return SplitPlan(self, dim, tuple(size * i // k for i in range(k + 1)))

    def chunk_working_set(self, n: Node, plan: SplitPlan, i: int) -> int:
        fixed, divisible = self.fixed_and_divisible_bytes(n, plan.dim_name)
        return fixed + int(divisible * plan.share(i))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


SPLIT_RULES: dict[torch._ops.OpOverload, SplitRule] = {}


def _rule(cls: type[SplitRule]) -> type[SplitRule]:
    SPLIT_RULES[cls.op] = cls()
    return cls


def plan_split(n: Node, budget: int) -> SplitPlan | None:
    """The split of n that fits the budget, or None (the op has no rule, fits, or cannot be split)."""
    rule = SPLIT_RULES.get(n.target)
    return rule.plan(n, budget) if rule is not None else None


def _weight_bytes(n: Node) -> int:
    """Weight and bias bytes of a linear or conv2d."""
    return sum(nbytes(traced_value(a)) for a in n.args[1:3] if isinstance(traced_value(a), torch.Tensor))


def _assemble(n: Node, chunks: list[list[str]], cat: str, dim: int) -> list[list[str]]:
    names = ", ".join(f"{n.name}_c{i}" for i in range(len(chunks)))
    chunks[-1].append(f"{n.name} = {cat}([{names}], {dim})")
    chunks[-1].append(f"del {names}")
    return chunks


@_rule
class LinearSplit(SplitRule):
    """Output features: chunk i multiplies the whole input by rows [s, e) of the weight, into its columns of one output."""

    op = aten.linear.default
    dim_name = "out_features"

    def dim_size(self, n, dim):
        return traced_value(n.args[1]).shape[0]

    def fixed_and_divisible_bytes(self, n, dim):
        return nbytes(traced_value(n.args[0])), _weight_bytes(n) + nbytes(traced_value(n))

    def chunk_shapes(self, n, dim, start, end):
        w = list(traced_value(n.args[1]).shape)
        w[0] = end - start
        o = list(traced_value(n).shape)
        o[-1] = end - start
        return f"{shape_str(traced_value(n.args[0]))} x {w} -> {o}"

    def emit_chunks(self, n, plan, em):
        args = list(n.args)
        x, w = args[0], em.weight(args[1])
        b = em.weight(args[2]) if len(args) > 2 and args[2] is not None else None
        out = traced_value(n)
        k_in, n_out = w.shape[1], w.shape[0]
        rows = math.prod(out.shape[:-1])
        addmm, mm, empty = em.bind(torch.addmm, "op"), em.bind(torch.mm, "op"), em.bind(torch.empty, "op")
        dtype = em.bind(out.dtype, "dtype")
        dev = em.bind(em.device, "device")
        chunks: list[list[str]] = []
        for i in range(plan.k):
            s, e = plan.chunk(i)
            lines = []
            if i == 0:
                lines.append(f"{n.name}_x = {em.expr(x)}.reshape(-1, {k_in})")
                lines.append(f"{n.name}_o = {empty}(({rows}, {n_out}), dtype={dtype}, device={dev})")
            wt = em.bind(w[s:e].t(), "w")
            if b is None:
                lines.append(f"{mm}({n.name}_x, {wt}, out={n.name}_o[:, {s}:{e}])")
            else:
                lines.append(f"{addmm}({em.bind(b[s:e], 'w')}, {n.name}_x, {wt}, out={n.name}_o[:, {s}:{e}])")
            chunks.append(lines)
        chunks[-1].append(f"{n.name} = {n.name}_o.view({tuple(out.shape)})")
        chunks[-1].append(f"del {n.name}_x, {n.name}_o")
        return chunks


@_rule
class Conv2dSplit(SplitRule):
    """Output channels (each chunk reads the whole input and its filters) or output rows (each chunk
    reads its input rows plus the kernel's halo, and all filters): a convolution whose input
    outweighs its weights is split by rows, as a tiling compiler would choose."""

    op = aten.conv2d.default
    dim_name = "out_channels"

    def accepts(self, n):
        groups = n.args[6] if len(n.args) > 6 else n.kwargs.get("groups", 1)
        return groups == 1

    def dimension(self, n):
        if nbytes(traced_value(n.args[0])) > nbytes(traced_value(n.args[1])):
            return "out_rows"
        return "out_channels"

    def dim_size(self, n, dim):
        return traced_value(n).shape[2] if dim == "out_rows" else traced_value(n.args[1]).shape[0]

    def fixed_and_divisible_bytes(self, n, dim):
        x, out = nbytes(traced_value(n.args[0])), nbytes(traced_value(n))
        if dim == "out_rows":
            return _weight_bytes(n), x + out
        return x, _weight_bytes(n) + out

    def chunk_shapes(self, n, dim, start, end):
        x, w, o = traced_value(n.args[0]), list(traced_value(n.args[1]).shape), list(traced_value(n).shape)
        if dim == "out_rows":
            o[2] = end - start
        else:
            w[0] = o[1] = end - start
        return f"{shape_str(x)} x {w} -> {o}"

    def emit_chunks(self, n, plan, em):
        cat = em.bind(torch.cat, "op")
        if plan.dim_name == "out_rows":
            return _assemble(n, self._row_chunks(n, plan, em), cat, 2)
        args = list(n.args)
        w = em.weight(args[1])
        bias = args[2] if len(args) > 2 else None
        b = em.weight(bias) if bias is not None else None
        fn = em.bind(self.op._op, "op")
        chunks = []
        for i in range(plan.k):
            s, e = plan.chunk(i)
            chunk_args = [args[0], w[s:e], None if b is None else b[s:e], *args[3:]]
            parts = [em.expr(a) if not isinstance(a, torch.Tensor) else em.bind(a, "w") for a in chunk_args]
            chunks.append([f"{n.name}_c{i} = {fn}({', '.join(parts)})"])
        return _assemble(n, chunks, cat, 1)

    def _row_chunks(self, n, plan, em) -> list[list[str]]:
        """Output rows [s, e) read input rows [s*stride - pad, ...) plus the kernel's halo; the zero
        padding that falls inside a chunk is added to that chunk alone."""
        args = list(n.args) + [None] * (7 - len(n.args))
        x, w_node, b_node, stride, padding, dilation, groups = args
        stride = stride or [1, 1]
        padding = padding or [0, 0]
        dilation = dilation or [1, 1]
        height = traced_value(x).shape[2]
        kh = traced_value(w_node).shape[2]
        fn = em.bind(self.op._op, "op")
        pad = em.bind(aten.constant_pad_nd.default._op, "op")
        w = em.expr(w_node)
        b = em.expr(b_node) if b_node is not None else "None"
        chunks = []
        for i in range(plan.k):
            s, e = plan.chunk(i)
            lo = s * stride[0] - padding[0]
            hi = (e - 1) * stride[0] - padding[0] + dilation[0] * (kh - 1) + 1
            top, bottom = max(0, -lo), max(0, hi - height)
            rows = f"{em.expr(x)}[:, :, {max(lo, 0)}:{min(hi, height)}]"
            if top or bottom:
                rows = f"{pad}({rows}, [0, 0, {top}, {bottom}], 0.0)"
            conv_args = f"{rows}, {w}, {b}, {list(stride)}, [0, {padding[1]}], {list(dilation)}, {groups or 1}"
            chunks.append([f"{n.name}_c{i} = {fn}({conv_args})"])
        return chunks


@_rule
class AttentionSplit(SplitRule):
    """Heads: chunk i attends with heads [s, e) of q, k and v (and of the mask, if it has heads)."""

    op = aten.scaled_dot_product_attention.default
    dim_name = "heads"

    def accepts(self, n):
        q, k, v = (traced_value(a) for a in n.args[:3])
        if q.dim() != 4 or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
            return False
        dropout = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
        return not dropout

    def dim_size(self, n, dim):
        return traced_value(n.args[0]).shape[1]

    def fixed_and_divisible_bytes(self, n, dim):
        vals = [traced_value(a) for a in n.args]
        mask = vals[3] if len(vals) > 3 and isinstance(vals[3], torch.Tensor) else None
        qkv = sum(nbytes(v) for v in vals[:3])
        if _has_heads(mask):
            return 0, qkv + nbytes(traced_value(n)) + nbytes(mask)
        return nbytes(mask), qkv + nbytes(traced_value(n))

    def chunk_shapes(self, n, dim, start, end):
        q = list(traced_value(n.args[0]).shape)
        q[1] = end - start
        return f"{q} x3 -> {q}"

    def emit_chunks(self, n, plan, em):
        cat = em.bind(torch.cat, "op")
        args = list(n.args)
        chunks = []
        for i in range(plan.k):
            s, e = plan.chunk(i)
            q, k, v = (f"{em.expr(a)}[:, {s}:{e}]" for a in args[:3])
            rest = args[3:]
            mask = rest[0] if rest else n.kwargs.get("attn_mask")
            mask_expr = em.expr(mask)
            if _has_heads(traced_value(mask)):
                mask_expr = f"{mask_expr}[:, {s}:{e}]"
            others = [em.expr(a) for a in rest[1:]]
            others += [f"{k_}={em.expr(v_)}" for k_, v_ in n.kwargs.items() if k_ != "attn_mask"]
            fn = em.bind(self.op._op, "op")
            chunks.append([f"{n.name}_c{i} = {fn}({q}, {k}, {v}, {', '.join([mask_expr] + others)})"])
        return _assemble(n, chunks, cat, 1)


def _has_heads(mask) -> bool:
    """An attention mask with one slice per head (split with the heads), not one broadcast to all."""
    return isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] > 1


@_rule
class GroupNormSplit(SplitRule):
    """Groups: chunk i normalises groups [s, e), i.e. their channels, with their slice of weight and bias."""

    op = aten.group_norm.default
    dim_name = "groups"

    def accepts(self, n):
        return len(traced_value(n.args[0]).shape) >= 2

    def dim_size(self, n, dim):
        return n.args[1]  # num_groups

    def fixed_and_divisible_bytes(self, n, dim):
        vals = [traced_value(a) for a in n.args]
        return 0, sum(nbytes(v) for v in vals if isinstance(v, torch.Tensor)) + nbytes(traced_value(n))

    def chunk_shapes(self, n, dim, start, end):
        x = list(traced_value(n.args[0]).shape)
        x[1] = x[1] * (end - start) // n.args[1]
        return f"{x} -> {x}"

    def emit_chunks(self, n, plan, em):
        # group_norm(x, num_groups, weight, bias, eps, cudnn_enabled)
        cat = em.bind(torch.cat, "op")
        args = list(n.args)
        channels = traced_value(args[0]).shape[1]
        w = em.weight(args[2]) if args[2] is not None else None
        b = em.weight(args[3]) if args[3] is not None else None
        chunks = []
        for i in range(plan.k):
            s, e = plan.chunk(i)
            c0, c1 = s * channels // args[1], e * channels // args[1]
            x = f"{em.expr(args[0])}[:, {c0}:{c1}]"
            fn = em.bind(self.op._op, "op")
            rest = ", ".join(em.expr(a) for a in args[4:])
            wexpr = "None" if w is None else em.bind(w[c0:c1], "w")
            bexpr = "None" if b is None else em.bind(b[c0:c1], "w")
            chunks.append([f"{n.name}_c{i} = {fn}({x}, {e - s}, {wexpr}, {bexpr}{', ' + rest if rest else ''})"])
        return _assemble(n, chunks, cat, 1)
