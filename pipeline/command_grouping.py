"""Group the live ops of a graph into commands, each named after the module and ops it runs.

One command per op. The ops of a leaf module (Linear, LayerNorm, T5LayerNorm, ...) form one
command named after the module; in other modules each op is a command named `{module}.{op}`,
adjacent elementwise ops fused into one command named `a+b`; views and reshapes ride along with
the command before them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.fx import Node

from .graph_capture import ADAPTER_PREFIX
from .graph_utils import is_elementwise, is_free
from .split_rules import SplitPlan

_SHORT_OP = {"scaled_dot_product_attention": "sdpa", "upsample_nearest2d": "upsample"}


@dataclass(frozen=True)
class Group:
    """Ops that run as one command, or as several once a split divides its op."""

    layer: str  # the name the trace shows: a leaf module's path, or `{module}.{op}+{op}`
    op: str  # the op, the leaf module's class, or `fused_elementwise`
    nodes: tuple[Node, ...]  # in program order, the views riding along included
    primary_op: Node  # the group's first op: its shapes describe the command, and a split divides it
    split: SplitPlan | None = None

    @property
    def command_count(self) -> int:
        return self.split.k if self.split else 1

    @property
    def compute_nodes(self) -> list[Node]:
        """The nodes that do work on a device: all but the views riding along."""
        return [n for n in self.nodes if not is_free(n)]


@dataclass
class _OpenGroup:
    """A group while ops are still added to it."""

    layer: str
    op: str
    nodes: list[Node]
    primary_op: Node
    op_names: list[str] = field(default_factory=list)  # for a command named after its ops

    def close(self) -> Group:
        return Group(self.layer, self.op, tuple(self.nodes), self.primary_op)


def group_commands(live: list[Node]) -> list[Group]:
    """The live nodes, in order, cut into commands."""
    leaves = _leaf_scopes(live)
    groups: list[_OpenGroup] = []
    leading_free: list[Node] = []
    used_layers: Counter = Counter()

    def unique(layer: str) -> str:
        used_layers[layer] += 1
        n = used_layers[layer]
        return layer if n == 1 else f"{layer}#{n - 1}"

    current_kind = None
    current_scope = None
    for n in live:
        if is_free(n):
            if groups:
                groups[-1].nodes.append(n)
            else:
                leading_free.append(n)
            continue
        scope, cls_name = _scope(n)
        op = _op_name(n)
        if scope and scope in leaves:
            if current_kind == "leaf" and current_scope == scope:
                groups[-1].nodes.append(n)
                groups[-1].op = cls_name
                continue
            groups.append(_OpenGroup(layer=unique(scope), op=op, nodes=[n], primary_op=n))
            current_kind, current_scope = "leaf", scope
            continue
        if is_elementwise(n) and current_kind == "elementwise" and current_scope == scope:
            # Fused elementwise ops: `{scope}.a+b+c`, the scope written once.
            g = groups[-1]
            g.op_names.append(op)
            g.op = "fused_elementwise"
            g.nodes.append(n)
            continue
        groups.append(_OpenGroup(layer=scope, op=op, nodes=[n], primary_op=n, op_names=[op]))
        current_kind, current_scope = ("elementwise" if is_elementwise(n) else "op"), scope
    if groups:
        groups[0].nodes[:0] = leading_free
    for g in groups:
        if g.op_names:  # named after the op(s) inside a non-leaf module
            names = "+".join(g.op_names)
            g.layer = unique(f"{g.layer}.{names}" if g.layer else names)
    return [g.close() for g in groups]


def _scope(n: Node) -> tuple[str, str]:
    """(module path without the adapter prefix, module class name) of the innermost module."""
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    path = path.split("@")[0]
    if path == ADAPTER_PREFIX.rstrip("."):
        return "", cls_name
    return path[len(ADAPTER_PREFIX):] if path.startswith(ADAPTER_PREFIX) else path, cls_name


def _op_name(n: Node) -> str:
    name = n.target._opname if isinstance(n.target, torch._ops.OpOverload) else getattr(n.target, "__name__", "op")
    return _SHORT_OP.get(name, name)


def _leaf_scopes(nodes: list[Node]) -> set[str]:
    """Module paths (without the adapter prefix) that contain no other module of the graph."""
    paths = set()
    for n in nodes:
        for path, _ in (n.meta.get("nn_module_stack") or {}).values():
            paths.add(path.split("@")[0])
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    return {p[len(ADAPTER_PREFIX):] if p.startswith(ADAPTER_PREFIX) else p for p in leaves}
