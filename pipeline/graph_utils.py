"""Small questions about torch.fx nodes that every compile step asks: values, arguments, aliases, op kinds."""

from __future__ import annotations

import operator
from typing import Callable

import torch
from torch.fx import Node

aten = torch.ops.aten

# Dtype and device casts: elementwise ops, never views (a cast may copy).
CASTS = {aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default}


def traced_value(a):
    """The value export traced for a node (a fake or meta tensor, or a list of them); other arguments as they are."""
    return a.meta.get("val") if isinstance(a, Node) else a


def tensor_nodes(args) -> list[Node]:
    """The nodes inside (possibly nested) arguments, in order, repeats kept."""
    out: list[Node] = []

    def visit(a):
        if isinstance(a, Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(args)
    return out


def map_nodes(args, fn):
    """(Possibly nested) arguments with every node replaced by fn(node)."""
    if isinstance(args, Node):
        return fn(args)
    if isinstance(args, (list, tuple)):
        return type(args)(map_nodes(a, fn) for a in args)
    if isinstance(args, dict):
        return {k: map_nodes(v, fn) for k, v in args.items()}
    return args


def resolve_alias(aliases: dict[Node, Node], n):
    """The node that computes n's value, following dropped no-ops (n itself when it was kept)."""
    while n in aliases:
        n = aliases[n]
    return n


def alias_resolver(aliases: dict[Node, Node]) -> Callable:
    return lambda n: resolve_alias(aliases, n)


def is_free(n: Node) -> bool:
    """Views and reshapes: they move no data on a device, so they ride along with a neighbour."""
    t = n.target
    if t is operator.getitem:
        return True
    return isinstance(t, torch._ops.OpOverload) and t.is_view and t not in CASTS


def is_elementwise(n: Node) -> bool:
    t = n.target
    return t in CASTS or (isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags)
