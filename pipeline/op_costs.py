"""What one ATen op costs: floating-point operations and bytes moved, from its fake-tensor metadata."""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten


def numel(t) -> int:
    return math.prod(t.shape) if isinstance(t, torch.Tensor) else 0


def nbytes(t) -> int:
    return numel(t) * t.element_size() if isinstance(t, torch.Tensor) else 0


def shape_str(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else repr(t)


def _matmul_flops(a, b) -> int:
    m, k = a.shape[-2], a.shape[-1]
    n = b.shape[-1]
    batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    return 2 * batch * m * n * k


def op_flops(target, args: list, out) -> int:
    """Multiply-adds count twice; elementwise ops and norms count a few flops per output element."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if target is aten.linear.default:
        x, w = args[0], args[1]
        return 2 * numel(x) // x.shape[-1] * w.shape[0] * w.shape[1] + (numel(out) if len(args) > 2 and args[2] is not None else 0)
    if target in (aten.addmm.default, aten.mm.default):
        a, b = (args[1], args[2]) if target is aten.addmm.default else (args[0], args[1])
        return _matmul_flops(a, b)
    if target in (aten.matmul.default, aten.bmm.default, aten.baddbmm.default):
        a, b = (args[1], args[2]) if target is aten.baddbmm.default else (args[0], args[1])
        return _matmul_flops(a, b)
    if target in (aten.conv2d.default, aten.convolution.default):
        w = args[1]  # [C_out, C_in / groups, kh, kw]
        return 2 * numel(out) * math.prod(w.shape[1:])
    if target is aten.scaled_dot_product_attention.default:
        q, k = args[0], args[1]
        b_h_sq = numel(q) // q.shape[-1]
        return 4 * b_h_sq * k.shape[-2] * q.shape[-1]
    if target is aten.einsum.default:
        return 2 * sum(numel(t) for t in args[1]) if isinstance(args[1], (list, tuple)) else numel(out)
    if target in (aten.layer_norm.default, aten.group_norm.default, aten.native_layer_norm.default):
        return 5 * numel(tensors[0])
    if target in (aten.embedding.default, aten.index.Tensor, aten.cat.default, aten.arange.default, aten.arange.start):
        return 0
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(numel(o) for o in outs if isinstance(o, torch.Tensor)) or sum(numel(t) for t in tensors)
