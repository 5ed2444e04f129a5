"""The submodule registry: one entry per kind of SD3 submodule, one file per kind.

A `SubmoduleKind` holds everything the pipeline knows about one kind of submodule, the way
optimum-rbln keeps one file per model: the adapter that flattens it for `torch.export`, the
fixed input buffers diffusers' SD3 pipeline passes it, the runtime module that stands in for it,
how its config is read back from a compiled artifact, and how to build it on the meta device from
a config directory (for memory plans without weights). Adding a submodule kind touches one file
here and this table.
"""

from __future__ import annotations

from ..contract import SUBMODULES
from .clip_text import CLIP_TEXT
from .kind import SubmoduleKind
from .sd3_transformer import SD3_TRANSFORMER
from .t5_text import T5_TEXT
from .vae_decoder import VAE_DECODER

SUBMODULE_KINDS: dict[str, SubmoduleKind] = {
    "text_encoder": CLIP_TEXT,
    "text_encoder_2": CLIP_TEXT,
    "text_encoder_3": T5_TEXT,
    "transformer": SD3_TRANSFORMER,
    "vae": VAE_DECODER,
}
assert tuple(SUBMODULE_KINDS) == SUBMODULES, "the registry and pipeline.contract.SUBMODULES name the same submodules"

__all__ = ["SUBMODULE_KINDS", "SubmoduleKind"]
