"""Reduce an exported graph to the ops a device must run: out-of-place, no no-ops, constants folded.

1. `functionalize_inplace`: `x.add_(y)` becomes `x2 = x.add(y)`;
2. `simplify_and_fold`: drop runtime asserts and no-op ops (eval-mode dropout, same-dtype casts),
   and evaluate every node that depends only on weights and constants once, at compile time
   (T5's relative position bias, CLIP's causal mask).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch.fx import Node

from .graph_utils import CASTS, map_nodes, resolve_alias, tensor_nodes, traced_value

aten = torch.ops.aten

_NOOP_ASSERTS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}


class SimplifiedGraph(NamedTuple):
    live: list[Node]  # the call_function nodes left to run, in program order
    aliases: dict[Node, Node]  # dropped no-op -> the node whose value it passes on
    constants: dict[Node, torch.Tensor]  # weights, buffers and folded nodes -> their values


def functionalize_inplace(graph: torch.fx.Graph) -> None:
    """Turn `x.add_(y)` into `x2 = x.add(y)` and make later readers of `x` read `x2`.

    Folded constants are shared by every call, so nothing may write into them; out-of-place ops
    also give the liveness analysis one buffer per value.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in list(graph.nodes):
        t = n.target
        if n.op != "call_function" or not isinstance(t, torch._ops.OpOverload) or not t._schema.is_mutable:
            continue
        base_name = t._opname
        if not base_name.endswith("_") or not hasattr(aten, base_name[:-1]):
            continue
        packet = getattr(aten, base_name[:-1])
        if t._overloadname not in packet.overloads():
            continue
        n.target = getattr(packet, t._overloadname)
        mutated = n.args[0]
        for user in list(mutated.users):
            if order[user] > order[n]:
                user.replace_input_with(mutated, n)


def simplify_and_fold(gm: torch.fx.GraphModule) -> SimplifiedGraph:
    """The live nodes in order, the aliases of dropped no-ops, and the constants (weights and folded nodes)."""
    constants: dict[Node, torch.Tensor] = {}
    aliases: dict[Node, Node] = {}
    canonical = _Canonical()
    # (op, its inputs' values, its other arguments) -> the folded value: a computation that the graph
    # repeats (every T5 layer re-derives the position bias) is folded once. Values are unknown on the
    # meta device, so this is what lets a plan made there share them as the real compile does.
    folded: dict[tuple, object] = {}

    def resolve(n):
        return resolve_alias(aliases, n)

    live: list[Node] = []
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            constants[n] = obj
            continue
        if n.op != "call_function":
            continue
        if n.target in _NOOP_ASSERTS:
            continue
        if _is_noop(n):
            aliases[n] = resolve(n.args[0])
            continue
        deps = [resolve(d) for d in tensor_nodes((n.args, n.kwargs))]
        if all(d in constants for d in deps) and _foldable(n):
            key = _fold_key(n, lambda a: id(constants[resolve(a)]))
            if key in folded:
                constants[n] = folded[key]
                continue
            with torch.no_grad():
                value = n.target(*map_nodes(n.args, lambda a: constants[resolve(a)]),
                                 **map_nodes(n.kwargs, lambda a: constants[resolve(a)]))
            if isinstance(value, torch.Tensor):
                value = canonical.get(value)
            elif not (isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value)):
                live.append(n)
                continue
            constants[n] = value
            if key is not None:
                folded[key] = value
            continue
        live.append(n)
    return SimplifiedGraph(live, aliases, constants)


def _is_noop(n: Node) -> bool:
    t = n.target
    if t is aten.dropout.default:
        return not n.args[2]  # train=False
    if t in CASTS or t is aten.alias.default or t is aten.contiguous.default:
        src, out = traced_value(n.args[0]), traced_value(n)
        if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
            return False
        if t is aten.contiguous.default:
            return src.is_contiguous()
        return src.dtype == out.dtype and src.device == out.device and not n.kwargs.get("copy", False)
    return False


def _fold_key(n: Node, value_id) -> tuple | None:
    """What a foldable node computes: its op and arguments, each input node replaced by `value_id(node)`;
    None when an argument cannot be compared that way (the node is then folded on its own)."""

    def freeze(a):
        if isinstance(a, Node):
            return ("value", value_id(a))
        if isinstance(a, (list, tuple)):
            return tuple(map(freeze, a))
        if isinstance(a, dict):
            return tuple(sorted((k, freeze(v)) for k, v in a.items()))
        return (type(a), a)  # 1 and 1.0 and True stay distinct arguments

    key = (n.target, freeze(n.args), freeze(n.kwargs))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _foldable(n: Node) -> bool:
    t = n.target
    if not isinstance(t, torch._ops.OpOverload):
        return t is operator.getitem
    return torch.Tag.nondeterministic_seeded not in t.tags


class _Canonical:
    """Share one tensor among folded constants with equal values (every T5 layer re-derives the bias)."""

    def __init__(self):
        self._seen: dict[tuple, list[torch.Tensor]] = {}

    def get(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "meta" or t._base is not None:
            return t
        key = (tuple(t.shape), t.dtype, t.device)
        for other in self._seen.setdefault(key, []):
            if torch.equal(other, t):
                return other
        self._seen[key].append(t)
        return t
