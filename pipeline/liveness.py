"""Where every value of a partitioned graph lives: computed once, read by the memory counter, the
transfer table and codegen's buffer freeing.

Commands are numbered in program order; a split group's chunks run views before its op with
chunk 0, and the op and the views after it with the last chunk (the only chunk whose code reads
them). A buffer is born in the command that produces it (a split op's output: with chunk 0, as
its chunks accumulate from there on) and dies after its last reader; views hold no bytes of
their own, they keep their buffer alive. Inputs are live from the start, outputs to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from torch.fx import Node

from .command_grouping import Group
from .graph_utils import is_free, tensor_nodes, traced_value
from .op_costs import nbytes


@dataclass(frozen=True, eq=False)
class Liveness:
    """The lifetimes of one partition's values, per command."""

    command_of: Mapping[Node, int]  # node -> the command it runs in
    first_command: tuple[int, ...]  # group -> the command its first chunk is
    readers: Mapping[Node, tuple[Node, ...]]  # value -> the nodes that read it, in program order
    buffer_of: Mapping[Node, Node]  # node -> the buffer it views (ops: themselves); see `buffer`
    first_reader: Mapping[Node, int]  # buffer -> the first command that reads it
    last_reader: Mapping[Node, int]  # value -> the last command that reads it
    live_bytes: tuple[int, ...]  # command -> activation bytes held on the device while it runs
    frees: tuple[tuple[str, ...], ...]  # command -> names no later command reads (sorted; outputs never)

    @property
    def command_count(self) -> int:
        return len(self.live_bytes)

    def buffer(self, n: Node) -> Node:
        """The buffer that holds n's bytes: n itself unless n is a view."""
        return self.buffer_of.get(n, n)


def analyze_liveness(groups: Sequence[Group], inputs: Sequence[Node], outputs: Sequence[Node],
                     constants: Mapping[Node, object], resolve: Callable[[Node], Node]) -> Liveness:
    """The one liveness analysis of a partition, over its groups once their splits are planned."""
    command_of, first_command, count = number_commands(groups)
    buffer_of: dict[Node, Node] = {}
    for g in groups:
        for n in g.nodes:
            deps = [resolve(d) for d in tensor_nodes(n.args)]
            buffer_of[n] = buffer_of.get(deps[0], deps[0]) if is_free(n) and deps else n

    readers: dict[Node, list[Node]] = {}
    first_reader: dict[Node, int] = {}
    last_reader: dict[Node, int] = {}
    for g in groups:
        for n in g.nodes:
            for d in tensor_nodes((n.args, n.kwargs)):
                d = resolve(d)
                readers.setdefault(d, []).append(n)
                first_reader.setdefault(buffer_of.get(d, d), command_of[n])
                last_reader[d] = max(last_reader.get(d, -1), command_of[n])

    # A buffer dies after the last reader of any of its views; outputs (index `count`) never do.
    buffer_end: dict[Node, int] = {}
    for d, c in last_reader.items():
        b = buffer_of.get(d, d)
        buffer_end[b] = max(buffer_end.get(b, -1), c)
    resolved_outputs = {resolve(o) for o in outputs}
    for o in resolved_outputs:
        buffer_end[buffer_of.get(o, o)] = count

    live_bytes = _live_bytes(groups, inputs, command_of, first_command, count, buffer_of, buffer_end)
    frees: list[list[str]] = [[] for _ in range(count)]
    for d, c in last_reader.items():
        if d not in constants and d not in resolved_outputs:
            frees[c].append(d.name)
    return Liveness(
        command_of=MappingProxyType(command_of),
        first_command=first_command,
        readers=MappingProxyType({d: tuple(rs) for d, rs in readers.items()}),
        buffer_of=MappingProxyType(buffer_of),
        first_reader=MappingProxyType(first_reader),
        last_reader=MappingProxyType(last_reader),
        live_bytes=live_bytes,
        frees=tuple(tuple(sorted(names)) for names in frees),
    )


def number_commands(groups: Sequence[Group]) -> tuple[dict[Node, int], tuple[int, ...], int]:
    """(the command each node runs in, each group's first command, the number of commands)."""
    command_of: dict[Node, int] = {}
    first_command: list[int] = []
    index = 0
    for g in groups:
        first_command.append(index)
        last = index + g.command_count - 1
        before_op = g.nodes.index(g.primary_op) if g.split else 0
        for i, n in enumerate(g.nodes):
            command_of[n] = index if i < before_op else last
        index += g.command_count
    return command_of, tuple(first_command), index


def _live_bytes(groups, inputs, command_of, first_command, count, buffer_of, buffer_end) -> tuple[int, ...]:
    born = [0] * (count + 1)
    dies = [0] * (count + 1)
    live = 0
    for p in inputs:
        size = nbytes(traced_value(p))
        live += size
        dies[min(buffer_end.get(p, 0), count)] += size if buffer_end.get(p, count) < count else 0
    for g, first in zip(groups, first_command):
        for n in g.nodes:
            if buffer_of.get(n, n) is n and not is_free(n):
                value = traced_value(n)
                size = sum(nbytes(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
                born[command_of[n] if g.split is None else first] += size
                end = buffer_end.get(n, command_of[n])
                if end < count:
                    dies[end] += size
    per_command = []
    for c in range(count):
        live += born[c]
        per_command.append(live)
        live -= dies[c]
    return tuple(per_command)
