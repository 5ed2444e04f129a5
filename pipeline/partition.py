"""Compile = partition one exported submodule graph into an ordered list of device commands.

Steps, each a function below:
1. simplify: drop runtime asserts and no-op ops (eval-mode dropout, same-dtype casts);
2. fold: evaluate every node that depends only on weights and constants once, at compile time
   (T5's relative position bias, CLIP's causal mask);
3. group: one command per op. The ops of a leaf module (Linear, LayerNorm, T5LayerNorm, ...) form
   one command named after the module; in other modules each op is a command named
   `{module}.{op}`, adjacent elementwise ops fused into one command named `a+b`; views and
   reshapes ride along with the command before them;
4. split: a linear, conv2d, attention or group norm whose working set (weights + inputs +
   outputs) exceeds the command budget becomes k = ceil(working set / budget) commands along its
   output features, output channels, heads or groups (at most one per feature, channel, head or
   group); the k commands share the layer name and differ by command_index;
5. liveness: the activation bytes each command holds, for the device memory counter and plan.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.fx import Node

from .events import CommandSpec, TransferSpec
from .graph_capture import ADAPTER_PREFIX
from .op_costs import nbytes, op_flops, shape_str

aten = torch.ops.aten

_NOOP_ASSERTS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}
_CASTS = {aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default}
SPLITTABLE = {
    aten.linear.default: "out_features",
    aten.conv2d.default: "out_channels",
    aten.scaled_dot_product_attention.default: "heads",
    aten.group_norm.default: "groups",
}
_SHORT_OP = {"scaled_dot_product_attention": "sdpa", "upsample_nearest2d": "upsample"}


@dataclass
class SplitPlan:
    dim_name: str  # out_features | out_channels | heads | groups
    bounds: list[int]  # k + 1 boundaries along the split dimension

    @property
    def k(self) -> int:
        return len(self.bounds) - 1


@dataclass
class Group:
    """One op of the compiled program, before a split turns it into several commands."""

    layer: str
    op: str
    nodes: list[Node]
    main: Node  # the op that a split divides
    ops: list[str] = field(default_factory=list)  # op names, for commands named after their ops
    split: SplitPlan | None = None
    first_command: int = 0


@dataclass
class Partition:
    """The result of compiling one submodule: static command table plus the graph to emit."""

    submodule: str
    graph: torch.fx.Graph
    inputs: list[Node]
    outputs: list[Node]
    constants: dict[Node, torch.Tensor]
    aliases: dict[Node, Node]
    groups: list[Group]
    commands: list[CommandSpec] = field(default_factory=list)
    input_transfers: list[TransferSpec] = field(default_factory=list)
    output_transfers: list[TransferSpec] = field(default_factory=list)
    budget: int = 0

    @property
    def weight_bytes(self) -> int:
        seen, total = set(), 0
        for t in self.constants.values():
            key = (t.untyped_storage().data_ptr(), t.device) if t.device.type != "meta" else id(t)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes() if t.device.type != "meta" else nbytes(t)
        return total

    @property
    def peak_live_bytes(self) -> int:
        io = sum(t.bytes for t in self.input_transfers)
        return max([c.live_bytes for c in self.commands] + [io])


def _val(n):
    return n.meta.get("val") if isinstance(n, Node) else n


def _tensor_nodes(args) -> list[Node]:
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


def _map_args(args, fn):
    if isinstance(args, Node):
        return fn(args)
    if isinstance(args, (list, tuple)):
        return type(args)(_map_args(a, fn) for a in args)
    if isinstance(args, dict):
        return {k: _map_args(v, fn) for k, v in args.items()}
    return args


def is_free(n: Node) -> bool:
    """Views and reshapes: they move no data on a device, so they ride along with a neighbour."""
    t = n.target
    if t is operator.getitem:
        return True
    return isinstance(t, torch._ops.OpOverload) and t.is_view and t not in _CASTS


def is_elementwise(n: Node) -> bool:
    t = n.target
    return t in _CASTS or (isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags)


def _is_noop(n: Node) -> bool:
    t = n.target
    if t is aten.dropout.default:
        return not n.args[2]  # train=False
    if t in _CASTS or t is aten.alias.default or t is aten.contiguous.default:
        src, out = _val(n.args[0]), _val(n)
        if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
            return False
        if t is aten.contiguous.default:
            return src.is_contiguous()
        return src.dtype == out.dtype and src.device == out.device and not n.kwargs.get("copy", False)
    return False


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


def simplify_and_fold(gm: torch.fx.GraphModule):
    """Return (live nodes in order, aliases, constants) after dropping no-ops and folding constants."""
    constants: dict[Node, torch.Tensor] = {}
    aliases: dict[Node, Node] = {}
    canonical = _Canonical()

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
        deps = [resolve(d) for d in _tensor_nodes((n.args, n.kwargs))]
        if all(d in constants for d in deps) and _foldable(n):
            with torch.no_grad():
                value = n.target(*_map_args(n.args, lambda a: constants[resolve(a)]),
                                 **_map_args(n.kwargs, lambda a: constants[resolve(a)]))
            if isinstance(value, torch.Tensor):
                constants[n] = canonical.get(value)
                continue
            if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
                constants[n] = value
                continue
        live.append(n)
    return live, aliases, constants


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


def _leaf_scopes(nodes: list[Node]) -> set[str]:
    paths = set()
    for n in nodes:
        for path, _ in (n.meta.get("nn_module_stack") or {}).values():
            paths.add(path.split("@")[0])
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    return {p[len(ADAPTER_PREFIX):] if p.startswith(ADAPTER_PREFIX) else p for p in leaves}


def group_commands(live: list[Node]) -> list[Group]:
    leaves = _leaf_scopes(live)
    groups: list[Group] = []
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
            groups.append(Group(layer=unique(scope), op=op, nodes=[n], main=n, ops=[]))
            current_kind, current_scope = "leaf", scope
            continue
        if is_elementwise(n) and current_kind == "elementwise" and current_scope == scope:
            # Fused elementwise ops: `{scope}.a+b+c`, the scope written once.
            g = groups[-1]
            g.ops.append(op)
            g.op = "fused_elementwise"
            g.nodes.append(n)
            continue
        groups.append(Group(layer=scope, op=op, nodes=[n], main=n, ops=[op]))
        current_kind, current_scope = ("elementwise" if is_elementwise(n) else "op"), scope
    if groups:
        groups[0].nodes[:0] = leading_free
    for g in groups:
        if g.ops:  # named after the op(s) inside a non-leaf module
            g.layer = unique(f"{g.layer}.{'+'.join(g.ops)}" if g.layer else "+".join(g.ops))
    return groups


# ---------------------------------------------------------------------------------------------
# Splitting


def _split_dim(n: Node) -> str:
    """The output dimension a split divides.

    A convolution whose input outweighs its weights is split by output rows (each chunk reads
    its rows plus a halo); otherwise by output channels (each chunk reads the whole input).
    Either way the chunk that re-reads less wins, as a tiling compiler would choose.
    """
    kind = SPLITTABLE[n.target]
    if kind == "out_channels" and nbytes(_val(n.args[0])) > nbytes(_val(n.args[1])):
        return "out_rows"
    return kind


def _split_dim_size(n: Node, dim: str) -> int:
    if dim in ("out_features", "out_channels"):
        return _val(n.args[1]).shape[0]
    if dim == "out_rows":
        return _val(n).shape[2]
    if dim == "heads":
        return _val(n.args[0]).shape[1]
    return n.args[1]  # group_norm's num_groups


def _splittable(n: Node) -> bool:
    if n.target not in SPLITTABLE:
        return False
    if n.target is aten.conv2d.default:
        groups = n.args[6] if len(n.args) > 6 else n.kwargs.get("groups", 1)
        return groups == 1
    if n.target is aten.scaled_dot_product_attention.default:
        q, k, v = (_val(a) for a in n.args[:3])
        if q.dim() != 4 or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
            return False
        dropout = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
        return not dropout
    if n.target is aten.group_norm.default:
        return len(_val(n.args[0]).shape) >= 2
    return True


def _fixed_and_split_bytes(n: Node, dim: str) -> tuple[int, int]:
    """Bytes every chunk needs whole, and bytes that divide among the chunks."""
    vals = [_val(a) for a in n.args]
    out = nbytes(_val(n))
    if n.target in (aten.linear.default, aten.conv2d.default):
        weights = sum(nbytes(v) for v in vals[1:3] if isinstance(v, torch.Tensor))
        if dim == "out_rows":
            return weights, nbytes(vals[0]) + out
        return nbytes(vals[0]), weights + out
    if n.target is aten.scaled_dot_product_attention.default:
        mask = vals[3] if len(vals) > 3 and isinstance(vals[3], torch.Tensor) else None
        per_head_mask = mask is not None and mask.dim() == 4 and mask.shape[1] > 1
        qkv = sum(nbytes(v) for v in vals[:3])
        return (0 if per_head_mask else nbytes(mask)), qkv + out + (nbytes(mask) if per_head_mask else 0)
    return 0, sum(nbytes(v) for v in vals if isinstance(v, torch.Tensor)) + out


def plan_split(n: Node, budget: int) -> SplitPlan | None:
    if not _splittable(n):
        return None
    dim = _split_dim(n)
    fixed, divisible = _fixed_and_split_bytes(n, dim)
    if fixed + divisible <= budget:
        return None
    size = _split_dim_size(n, dim)
    k = min(size, math.ceil((fixed + divisible) / budget))
    if k < 2:
        return None
    return SplitPlan(dim, [size * i // k for i in range(k + 1)])


# ---------------------------------------------------------------------------------------------
# Metadata of the finished program


def _group_io(g: Group, resolve, users_outside) -> tuple[list[Node], list[Node]]:
    inside = set(g.nodes)
    ins: list[Node] = []
    for n in g.nodes:
        for d in _tensor_nodes((n.args, n.kwargs)):
            d = resolve(d)
            if d not in inside and d not in ins:
                ins.append(d)
    outs = [n for n in g.nodes if users_outside(n, inside)]
    return ins, outs


def _chunk_shapes(g: Group, i: int) -> tuple[str, int]:
    """Shapes string and working-set bytes of chunk i of a split group."""
    n, plan = g.main, g.split
    s, e = plan.bounds[i], plan.bounds[i + 1]
    frac = (e - s) / plan.bounds[-1]
    vals = [_val(a) for a in n.args]
    out = _val(n)
    fixed, divisible = _fixed_and_split_bytes(n, plan.dim_name)
    ws = fixed + int(divisible * frac)
    if plan.dim_name == "out_rows":
        o = list(out.shape)
        o[2] = e - s
        return f"{shape_str(vals[0])} x {list(vals[1].shape)} -> {o}", ws
    if plan.dim_name in ("out_features", "out_channels"):
        w = list(vals[1].shape)
        w[0] = e - s
        o = list(out.shape)
        o[-1 if plan.dim_name == "out_features" else 1] = e - s
        return f"{shape_str(vals[0])} x {w} -> {o}", ws
    if plan.dim_name == "heads":
        q = list(vals[0].shape)
        q[1] = e - s
        return f"{q} x3 -> {q}", ws
    x = list(vals[0].shape)
    x[1] = x[1] * (e - s) // n.args[1]
    return f"{x} -> {x}", ws


def finish(part: Partition, budget: int) -> None:
    """Apply split plans, then fill in the command table, transfers and liveness."""
    resolve = part_resolver(part)
    users: dict[Node, list[Node]] = {}
    for g in part.groups:
        for n in g.nodes:
            for d in _tensor_nodes((n.args, n.kwargs)):
                users.setdefault(resolve(d), []).append(n)
    outputs = {resolve(o) for o in part.outputs}

    def users_outside(n, inside):
        return n in outputs or any(u not in inside for u in users.get(n, []))

    # Which command each node runs in, after splits.
    command_of: dict[Node, int] = {}
    specs_per_group = []
    index = 0
    for g in part.groups:
        g.first_command = index
        ins, outs = _group_io(g, resolve, users_outside)
        if g.split is None:
            ws = sum(nbytes(_val(d)) if d not in part.constants else nbytes(part.constants[d]) for d in ins)
            ws += sum(nbytes(_val(o)) for o in outs)
            main_in = [_val(a) for a in g.main.args if isinstance(a, Node)]
            shapes = ", ".join(shape_str(v) for v in main_in if isinstance(v, torch.Tensor))
            shapes = f"{shapes} -> {shape_str(_val(g.main))}" if isinstance(_val(g.main), torch.Tensor) else shapes
            flops = sum(op_flops(n.target, [_val(a) for a in n.args], _val(n)) for n in g.nodes if not is_free(n))
            specs_per_group.append([(shapes, ws, flops)])
            for n in g.nodes:
                command_of[n] = index
            index += 1
        else:
            total_flops = op_flops(g.main.target, [_val(a) for a in g.main.args], _val(g.main))
            chunks = []
            for i in range(g.split.k):
                shapes, ws = _chunk_shapes(g, i)
                share = (g.split.bounds[i + 1] - g.split.bounds[i]) / g.split.bounds[-1]
                chunks.append((shapes, ws, int(total_flops * share)))
            specs_per_group.append(chunks)
            for n in g.nodes:
                command_of[n] = index + g.split.k - 1  # views after the op run with the last chunk
            main_pos = g.nodes.index(g.main)
            for n in g.nodes[:main_pos]:
                command_of[n] = index
            index += g.split.k
    n_commands = index

    # Liveness: a buffer is born in the command that produces it and dies after its last reader.
    base: dict[Node, Node] = {}
    for g in part.groups:
        for n in g.nodes:
            deps = [resolve(d) for d in _tensor_nodes(n.args)]
            base[n] = base.get(deps[0], deps[0]) if is_free(n) and deps else n
    last_use: dict[Node, int] = {}
    for g in part.groups:
        for n in g.nodes:
            for d in _tensor_nodes((n.args, n.kwargs)):
                d = resolve(d)
                b = base.get(d, d)
                last_use[b] = max(last_use.get(b, -1), command_of[n])
    for o in outputs:
        last_use[base.get(o, o)] = n_commands
    born = [0] * (n_commands + 1)
    dies = [0] * (n_commands + 1)
    live_inputs = 0
    for p in part.inputs:
        live_inputs += nbytes(_val(p))
        dies[min(last_use.get(p, 0), n_commands)] += nbytes(_val(p)) if last_use.get(p, n_commands) < n_commands else 0
    for g in part.groups:
        for n in g.nodes:
            if base.get(n, n) is n and not is_free(n):
                size = sum(nbytes(v) for v in (_val(n) if isinstance(_val(n), (list, tuple)) else [_val(n)]))
                born[command_of[n] if g.split is None else g.first_command] += size
                end = last_use.get(n, command_of[n])
                if end < n_commands:
                    dies[end] += size
    live = live_inputs
    commands: list[CommandSpec] = []
    ci = 0
    for g, chunks in zip(part.groups, specs_per_group):
        for i, (shapes, ws, flops) in enumerate(chunks):
            live += born[ci]
            commands.append(CommandSpec(g.layer, g.op, i, len(chunks), shapes, ws, flops, live))
            live -= dies[ci]
            ci += 1
    part.commands = commands
    part.budget = budget

    first_reader: dict[Node, int] = {}
    for g in part.groups:
        for n in g.nodes:
            for d in _tensor_nodes((n.args, n.kwargs)):
                b = base.get(resolve(d), resolve(d))
                first_reader.setdefault(b, command_of[n])
    part.input_transfers = [
        TransferSpec(p.name, tuple(_val(p).shape), str(_val(p).dtype).replace("torch.", ""), nbytes(_val(p)),
                     first_reader.get(p, 0))
        for p in part.inputs
    ]
    out_transfers = []
    for i, o in enumerate(part.outputs):
        r = resolve(o)
        v = part.constants.get(r, _val(r))
        out_transfers.append(
            TransferSpec(f"output_{i}", tuple(v.shape), str(v.dtype).replace("torch.", ""), nbytes(v),
                         command_of.get(base.get(r, r), command_of.get(r, n_commands - 1)))
        )
    part.output_transfers = out_transfers


def resolve_alias(aliases: dict[Node, Node], n):
    while n in aliases:
        n = aliases[n]
    return n


def part_resolver(part: Partition):
    return lambda n: resolve_alias(part.aliases, n)


def partition(submodule: str, gm: torch.fx.GraphModule, budget: int) -> Partition:
    """Compile one exported submodule (`ExportedProgram.module()`) into commands."""
    functionalize_inplace(gm.graph)
    live, aliases, constants = simplify_and_fold(gm)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = list(output_node.args[0])
    groups = group_commands(live)
    resolve = lambda n: resolve_alias(aliases, n)  # noqa: E731
    used = {resolve(d) for n in live for d in _tensor_nodes((n.args, n.kwargs))}
    used |= {resolve(o) for o in outputs}
    constants = {n: v for n, v in constants.items() if n in used}
    for g in groups:
        if len([n for n in g.nodes if not is_free(n)]) == 1:
            g.split = plan_split(g.main, budget)
    part = Partition(submodule, gm.graph, inputs, outputs, constants, aliases, groups)
    finish(part, budget)
    return part
