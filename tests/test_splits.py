"""Splitting large ops into commands: per op type, the split program equals the unsplit op."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.codegen import generate
from pipeline.partition import partition


class Wrapped(torch.nn.Module):
    """Puts the op under test inside an adapter-like `m` so layer names look like real ones."""

    def __init__(self, inner):
        super().__init__()
        self.m = inner

    def forward(self, *xs):
        return (self.m(*xs),)


class Attention(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


class Elementwise(torch.nn.Module):
    def forward(self, x):
        return torch.sigmoid(x * 2.0 + 1.0) - x


torch.manual_seed(0)
CASES = {
    "linear": (torch.nn.Linear(96, 256), (torch.randn(2, 37, 96),), "out_features"),
    "linear-no-bias": (torch.nn.Linear(64, 130, bias=False), (torch.randn(5, 64),), "out_features"),
    "conv2d-channels": (torch.nn.Conv2d(64, 128, 3, padding=1), (torch.randn(1, 64, 6, 6),), "out_channels"),
    "conv2d-rows": (torch.nn.Conv2d(8, 8, 3, padding=1), (torch.randn(2, 8, 40, 33),), "out_rows"),
    "conv2d-rows-strided": (torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), (torch.randn(1, 4, 45, 20),), "out_rows"),
    "sdpa-heads": (Attention(torch.randn(1, 1, 50, 50)), tuple(torch.randn(2, 8, 50, 16) for _ in range(3)), "heads"),
    "sdpa-per-head-mask": (Attention(torch.randn(1, 8, 50, 50)), tuple(torch.randn(1, 8, 50, 16) for _ in range(3)), "heads"),
    "group_norm": (torch.nn.GroupNorm(8, 64), (torch.randn(2, 64, 12, 12),), "groups"),
}


def _compile(module, inputs, budget):
    ep = torch.export.export(Wrapped(module).eval(), inputs)
    part = partition("test", ep.module(), budget)
    run, run_timed, _ = generate(part, torch.device("cpu"), first_tick=0, tick="T[{i}] = _now()")
    return part, run, run_timed


@pytest.mark.parametrize("case", list(CASES))
def test_split_program_equals_unsplit_op(case):
    module, inputs, dim = CASES[case]
    with torch.no_grad():
        expected = module(*inputs)
        part, run, run_timed = _compile(module, inputs, budget=4096)
        split = [g for g in part.groups if g.split is not None]
        assert len(split) == 1 and split[0].split.dim_name == dim
        k = split[0].split.k
        assert k >= 2
        commands = [c for c in part.commands if c.layer == split[0].layer]
        assert [c.command_index for c in commands] == list(range(k))
        assert {c.command_count for c in commands} == {k}
        unsplit, _, _ = _compile(module, inputs, budget=2**40)
        whole = next(c for c in unsplit.commands if c.layer == split[0].layer)
        assert sum(c.flops for c in commands) == pytest.approx(whole.flops, rel=1e-6)
        (out,) = run(*inputs)
        ticks = [0] * (len(part.commands) + 1)
        (timed,) = run_timed(ticks, *inputs)
    assert (out - expected).abs().max().item() <= 1e-5
    assert torch.equal(out, timed)
    assert all(t > 0 for t in ticks) and ticks == sorted(ticks)


def test_large_budget_does_not_split():
    module, inputs, _ = CASES["linear"]
    part, _, _ = _compile(module, inputs, budget=2**30)
    assert all(c.command_count == 1 for c in part.commands)


def test_adjacent_elementwise_ops_fuse_into_one_named_command():
    x = torch.randn(4, 8)
    part, run, _ = _compile(Elementwise(), (x,), budget=2**30)
    assert [c.layer for c in part.commands] == ["mul+add+sigmoid+sub"]
    assert part.commands[0].op == "fused_elementwise"
    assert torch.equal(run(x)[0], Elementwise()(x))


def test_split_count_follows_working_set_over_budget():
    module = torch.nn.Linear(100, 400, bias=False)
    x = torch.randn(10, 100)
    ws = (10 * 100 + 400 * 100 + 10 * 400) * 4
    for budget, k in ((ws // 3, 3), (ws // 3 - 1, 4), (ws, 1)):
        part, _, _ = _compile(module, (x,), budget=budget)
        assert part.commands[0].command_count == k  # ceil(working set / budget)
        assert sum(c.bytes for c in part.commands) == ws + (k - 1) * 10 * 100 * 4  # every chunk reads all of x


class ViewThenLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.m = torch.nn.Linear(96, 256)

    def forward(self, x):
        return (self.m(x.view(2, 37, 96)),)


def test_a_value_read_only_before_a_split_op_is_freed_after_its_first_chunk():
    """Codegen frees what the partition's liveness says: the input, read only by the view that runs
    with chunk 0, is deleted there, not after the last chunk."""
    module, x = ViewThenLinear().eval(), torch.randn(74, 96)
    ep = torch.export.export(module, (x,))
    part = partition("test", ep.module(), 4096)
    run, _, source = generate(part, torch.device("cpu"), first_tick=0, tick="T[{i}] = _now()")
    (g,) = part.groups
    assert g.split is not None and g.split.k >= 2
    assert part.liveness.frees[0] == ("x",)
    assert [c.live_bytes for c in part.commands] == list(part.liveness.live_bytes)
    plain = source.split("\n\n\n")[0].splitlines()
    assert plain.index("    del x") < [i for i, line in enumerate(plain) if "out=linear_o" in line][1]
    with torch.no_grad():
        assert (run(x)[0] - module(x)[0]).abs().max().item() <= 1e-5
