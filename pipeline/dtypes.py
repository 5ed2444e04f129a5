"""Names of torch dtypes, both ways: rbln_config, plans and transfers store names, torch wants dtypes."""

from __future__ import annotations

import torch


def torch_dtype(name: str) -> torch.dtype:
    """`float16` -> torch.float16; any torch dtype name (plans also record int64 inputs)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype name")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> `float16`."""
    return str(dtype).removeprefix("torch.")
