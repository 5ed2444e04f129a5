"""Compile = partition one exported submodule graph into an ordered list of device commands.

`partition()` runs these steps, each a function of its own module or below:
1. simplify (`graph_simplify`): functionalize in-place ops, drop runtime asserts and no-ops, fold
   everything that depends only on weights and constants;
2. group (`command_grouping`): one command per op, a leaf module's ops together, adjacent
   elementwise ops fused, views riding along;
3. split (`split_rules`, `plan_splits`): an op whose working set exceeds the command budget becomes
   k commands along one output dimension;
4. liveness (`liveness`): the command each node runs in, and the activation bytes each command
   holds, for the device memory counter, the plan and codegen's frees;
5. `command_specs` and `input_transfers` / `output_transfers`: the static tables a profiler sees.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch.fx import Node

from .command_grouping import Group, group_commands
from .contract import CommandSpec, TransferSpec
from .dtypes import dtype_name
from .graph_simplify import functionalize_inplace, simplify_and_fold
from .graph_utils import alias_resolver, resolve_alias, tensor_nodes, traced_value
from .liveness import Liveness, analyze_liveness
from .op_costs import nbytes, op_flops, shape_str
from .split_rules import plan_split


@dataclass(frozen=True, eq=False)
class Partition:
    """One compiled submodule: the static command and transfer tables, and what codegen emits them from."""

    submodule: str
    graph: torch.fx.Graph
    inputs: tuple[Node, ...]  # the graph's placeholders, in order
    outputs: tuple[Node, ...]  # the nodes the graph returns (before alias resolution)
    constants: Mapping[Node, torch.Tensor]  # the weights and folded values the program reads
    aliases: Mapping[Node, Node]  # dropped no-op -> the node whose value it passes on
    groups: tuple[Group, ...]
    liveness: Liveness
    budget: int  # the command budget it was compiled for, in bytes
    commands: tuple[CommandSpec, ...]
    input_transfers: tuple[TransferSpec, ...]
    output_transfers: tuple[TransferSpec, ...]

    def resolve(self, n):
        """The node that computes n's value (n itself unless n was a dropped no-op)."""
        return resolve_alias(self.aliases, n)

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


def partition(submodule: str, gm: torch.fx.GraphModule, budget: int) -> Partition:
    """Compile one exported submodule (`ExportedProgram.module()`) into commands."""
    functionalize_inplace(gm.graph)
    live, aliases, constants = simplify_and_fold(gm)
    resolve = alias_resolver(aliases)
    inputs = tuple(n for n in gm.graph.nodes if n.op == "placeholder")
    outputs = tuple(next(n for n in gm.graph.nodes if n.op == "output").args[0])
    constants = used_constants(constants, live, outputs, resolve)
    groups = plan_splits(group_commands(live), budget)
    liveness = analyze_liveness(groups, inputs, outputs, constants, resolve)
    return Partition(
        submodule=submodule,
        graph=gm.graph,
        inputs=inputs,
        outputs=outputs,
        constants=MappingProxyType(constants),
        aliases=MappingProxyType(aliases),
        groups=groups,
        liveness=liveness,
        budget=budget,
        commands=tuple(command_specs(groups, constants, outputs, resolve, liveness)),
        input_transfers=input_transfers(inputs, liveness),
        output_transfers=output_transfers(outputs, constants, resolve, liveness),
    )


def used_constants(constants: dict, live: list[Node], outputs: Sequence[Node], resolve: Callable) -> dict:
    """The constants that a live node reads or the graph returns."""
    used = {resolve(d) for n in live for d in tensor_nodes((n.args, n.kwargs))}
    used |= {resolve(o) for o in outputs}
    return {n: v for n, v in constants.items() if n in used}


def plan_splits(groups: list[Group], budget: int) -> tuple[Group, ...]:
    """The groups, each single-op group over the budget split by its op's rule."""
    return tuple(
        dataclasses.replace(g, split=plan_split(g.primary_op, budget)) if len(g.compute_nodes) == 1 else g
        for g in groups
    )


def command_specs(groups: Sequence[Group], constants: Mapping, outputs: Sequence[Node], resolve: Callable,
                  liveness: Liveness) -> list[CommandSpec]:
    """One spec per command: layer, op, chunk index, shapes, working set, flops and live bytes."""
    returned = {resolve(o) for o in outputs}

    def read_outside(n: Node, inside: set[Node]) -> bool:
        return n in returned or any(u not in inside for u in liveness.readers.get(n, ()))

    commands: list[CommandSpec] = []
    for g in groups:
        chunks = _whole_spec(g, constants, resolve, read_outside) if g.split is None else _chunk_specs(g)
        for i, (shapes, ws, flops) in enumerate(chunks):
            live = liveness.live_bytes[len(commands)]
            commands.append(CommandSpec(g.layer, g.op, i, len(chunks), shapes, ws, flops, live))
    return commands


def _whole_spec(g: Group, constants: Mapping, resolve: Callable, read_outside) -> list[tuple[str, int, int]]:
    """(shapes, working set, flops) of an unsplit group: its working set is what it reads from
    outside and what it leaves for later commands."""
    inside = set(g.nodes)
    ins: list[Node] = []
    for n in g.nodes:
        for d in tensor_nodes((n.args, n.kwargs)):
            d = resolve(d)
            if d not in inside and d not in ins:
                ins.append(d)
    outs = [n for n in g.nodes if read_outside(n, inside)]
    ws = sum(nbytes(traced_value(d)) if d not in constants else nbytes(constants[d]) for d in ins)
    ws += sum(nbytes(traced_value(o)) for o in outs)
    op = g.primary_op
    op_in = [traced_value(a) for a in op.args if isinstance(a, Node)]
    shapes = ", ".join(shape_str(v) for v in op_in if isinstance(v, torch.Tensor))
    out = traced_value(op)
    shapes = f"{shapes} -> {shape_str(out)}" if isinstance(out, torch.Tensor) else shapes
    flops = sum(op_flops(n.target, [traced_value(a) for a in n.args], traced_value(n)) for n in g.compute_nodes)
    return [(shapes, ws, flops)]


def _chunk_specs(g: Group) -> list[tuple[str, int, int]]:
    """(shapes, working set, flops) of each chunk of a split group; flops divide as the split dimension does."""
    n, plan = g.primary_op, g.split
    total_flops = op_flops(n.target, [traced_value(a) for a in n.args], traced_value(n))
    return [
        (plan.rule.chunk_shapes(n, plan.dim_name, *plan.chunk(i)), plan.rule.chunk_working_set(n, plan, i),
         int(total_flops * plan.share(i)))
        for i in range(plan.k)
    ]


def input_transfers(inputs: Sequence[Node], liveness: Liveness) -> tuple[TransferSpec, ...]:
    """One host-to-device copy per input, feeding the first command that reads it."""
    return tuple(
        TransferSpec(p.name, tuple(traced_value(p).shape), dtype_name(traced_value(p).dtype),
                     nbytes(traced_value(p)), liveness.first_reader.get(p, 0))
        for p in inputs
    )


def output_transfers(outputs: Sequence[Node], constants: Mapping, resolve: Callable,
                     liveness: Liveness) -> tuple[TransferSpec, ...]:
    """One device-to-host copy per output, after the command that produces its buffer."""
    transfers = []
    for i, o in enumerate(outputs):
        r = resolve(o)
        v = constants.get(r, traced_value(r))
        producer = liveness.command_of.get(liveness.buffer(r), liveness.command_of.get(r, liveness.command_count - 1))
        transfers.append(TransferSpec(f"output_{i}", tuple(v.shape), dtype_name(v.dtype), nbytes(v), producer))
    return tuple(transfers)
