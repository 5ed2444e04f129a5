"""What refactors must not change, byte for byte: the export of a kept capture, and the compiled programs.

`tests/data/golden/capture.rblncap` is a real 1-step run of the embedded tiny SD3 (CFG, text_encoder_3
on device 1, host events, split commands). `digests.json` holds the SHA-256 of every file that
`export()` writes from it, for each option set in `VARIANTS`. A change that alters the traces on
purpose regenerates them, and says why in its commit:

    .venv/bin/python tests/golden_export.py --regenerate

`programs.json` likewise holds the SHA-256 of every compiled program's command and transfer tables
(what the capture records) for the embedded tiny SD3 at the budgets in `BUDGETS`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).parent / "data" / "golden"
CAPTURE = GOLDEN / "capture.rblncap"
DIGESTS = GOLDEN / "digests.json"
PROGRAMS = GOLDEN / "programs.json"
BUDGETS = ("1MiB", "16KiB")
VARIANTS = {
    "default": {},
    "aggregate-only-level-1": {"per_invocation": False, "compression_level": 1},
    "per-invocation-only": {"aggregate": False},
}


def export_digests(out_root: Path, order=tuple(VARIANTS)) -> dict[str, dict[str, str]]:
    """The digests of the exports of `VARIANTS`, made in `order`."""
    from rbln_perfetto import export

    digests = {}
    for variant in order:
        out = out_root / variant
        export(CAPTURE, out, **VARIANTS[variant])
        digests[variant] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                            for f in sorted(out.iterdir()) if f.suffix == ".pb"}
    return digests


def program_digests(model_dir) -> dict[str, dict[str, str]]:
    """Compile the model at each budget; per submodule, the digest of its command and transfer tables."""
    from dataclasses import asdict

    from pipeline import RBLNStableDiffusion3Pipeline

    digests = {}
    for budget in BUDGETS:
        pipe = RBLNStableDiffusion3Pipeline.from_pretrained(
            model_dir, export=True, rbln_config={"command_budget": budget, "text_encoder_3": {"device": 1}})
        digests[budget] = {}
        for program in pipe.pipeline_info().programs:
            table = {k: v for k, v in asdict(program).items() if k != "torch_device"}
            digests[budget][program.submodule] = hashlib.sha256(json.dumps(table).encode()).hexdigest()
    return digests


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    from pipeline import build_tiny_sd3

    with tempfile.TemporaryDirectory() as tmp:
        DIGESTS.write_text(json.dumps(export_digests(Path(tmp)), indent=2) + "\n")
        PROGRAMS.write_text(json.dumps(program_digests(build_tiny_sd3(Path(tmp) / "tiny")), indent=2) + "\n")
    print(f"wrote {DIGESTS} and {PROGRAMS}")
