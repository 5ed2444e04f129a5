"""The names the exporter gives slices and files, and how to read them back: one home for each format.

    command slice      `{sequence_index}_{layer}_{command_index}`   e.g. `6_blocks.0.attn.to_q_1`
    split op's parent  `{layer}`                                     (its children are command slices)
    Workload slice     `{submodule} #{call_index}`                   e.g. `transformer #3`
    untraced stretch   `not traced: {unit} {first}-{last}`           e.g. `not traced: steps 0-9` (Workload track)
    DMA slices         `dma {tensor} host -> device {d}`, `dma {tensor} device {d} -> host`
    rank transfers     `send {submodule} -> rank {r}`, `recv {submodule} <- rank {r}`   (runs split across processes)
    invocation file    `{sequence_index:04d}_{submodule}_{call_index}.pb`   e.g. `0006_transformer_0.pb`
    aggregate file     `aggregate.pb`
    merge archive      `ranks.tar` (a merged run: each rank's trace and a `perfetto_manifest`)
    a run directory    its traces, `capture.rblncap`, `run-id.txt` (`merged ...` after a merge), `image.png`,
                       and `rank{r}/` per rank of a run split across processes

A layer may hold `_`, digits and any other character, so a command slice name is read from both
ends: the sequence index is everything before the first `_`, the command index everything after
the last. `LAYER_SQL` does the same in SQL, where there is no "last `_`": it counts the command
index's digits from the slice's `command_index` arg instead.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import NamedTuple

AGGREGATE_FILE_NAME = "aggregate.pb"
MERGE_ARCHIVE_FILE = "ranks.tar"  # a merged run as a Perfetto merge archive: a trace per rank and a manifest
CAPTURE_FILE = "capture.rblncap"
CAPTURE_MAGIC = b"RBLNCAP1"  # how a capture file starts (`recorder.capture`); readers of traces name it when given one
RUN_ID_FILE = "run-id.txt"
IMAGE_FILE = "image.png"  # what `rbln-perfetto run` saves; a run's file only beside the others
RANK_DIR = re.compile(r"^rank([0-9]+)\Z")  # a rank's own run, inside the directory of a run split across processes
MERGED = "merged "  # how `run-id.txt` of a merged run starts (`rbln-perfetto merge`)
# How `system_info.tracing_service_version` starts in every trace the tool writes (then its version).
TRACING_SERVICE = "rbln-perfetto "


def trace_uuid(identity: str, file_name: str) -> tuple[int, int]:
    """(msb, lsb) of the name-based UUID (version 8) of one file of one run (its `trace_uuid` packet):
    what tells a run's own traces from a copy of another run's."""
    raw = bytearray(hashlib.sha256(f"{identity}\0{file_name}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return struct.unpack(">qq", bytes(raw))


def merged_ranks(out_dir: Path) -> bool:
    """Whether `out_dir` holds the merged traces of its `rank<N>/` directories (whose own traces they repeat)."""
    try:
        return (out_dir / RUN_ID_FILE).read_text().startswith(MERGED)
    except (OSError, UnicodeDecodeError):
        return False


class CommandName(NamedTuple):
    """The parts of a command slice's name."""

    sequence_index: int
    layer: str
    command_index: int


def command_name_prefix(sequence_index: int) -> str:
    """The part of a command slice's name before its layer: the sequence index, in decimal.

    The program template leaves a slot of `len(command_name_prefix(i))` bytes for it.
    """
    return str(sequence_index)


def command_name_suffix(layer: str, command_index: int) -> str:
    """The part of a command slice's name after the sequence index: `_{layer}_{command_index}`.

    Static per command, so the program template writes it once, after the sequence index slot.
    """
    return f"_{layer}_{command_index}"


def command_slice_name(sequence_index: int, layer: str, command_index: int) -> str:
    """`{sequence_index}_{layer}_{command_index}`: prefix and suffix together."""
    return command_name_prefix(sequence_index) + command_name_suffix(layer, command_index)


# Groups: sequence_index, layer, command_index. `.+` is greedy, so the layer runs to the last `_`.
COMMAND_SLICE_NAME = re.compile(r"^([0-9]+)_(.+)_([0-9]+)\Z", re.DOTALL)


def parse_command_slice_name(name: str, command_index: int | None = None) -> CommandName | None:
    """The parts of a command slice name; None for a name of another shape.

    `command_index`, where known (the slice's `command_index` arg), must be what ends the name, as
    `LAYER_SQL` relies on; either way the digits after the last `_` are the command index.
    """
    m = COMMAND_SLICE_NAME.match(name)
    if m is None or (command_index is not None and m.group(3) != str(command_index)):
        return None
    return CommandName(int(m.group(1)), m.group(2), int(m.group(3)))


def split_op_slice_name(layer: str) -> str:
    """The parent slice of a split op's commands is named after their layer."""
    return layer


def workload_slice_name(submodule: str, call_index: int) -> str:
    """`transformer #3`: the Workload slice of one call of a submodule."""
    return f"{submodule} #{call_index}"


UNTRACED_PREFIX = "not traced: "




def untraced_slice_name(unit: str, first: int, last: int) -> str:
    """`not traced: steps 0-9`, `not traced: step 5`, `not traced: calls 0-1`: the Workload slice over a
    stretch of the run that ran but was not traced (`first` and `last` inclusive)."""
    single = unit[:-1] if unit.endswith("s") else unit
    return UNTRACED_PREFIX + (f"{single} {first}" if first == last else f"{unit} {first}-{last}")


def parse_workload_slice_name(name: str) -> tuple[str, int] | None:
    """(submodule, call_index) of a Workload slice name; None for a name of another shape."""
    submodule, sep, index = name.rpartition(" #")
    if not (sep and index.isascii() and index.isdigit()):
        return None
    return submodule, int(index)


def dma_to_device_slice_name(tensor: str, device: int) -> str:
    """The DMA slice of an input copied to the device."""
    return f"dma {tensor} host -> device {device}"


def dma_to_host_slice_name(tensor: str, device: int) -> str:
    """The DMA slice of an output copied back to the host."""
    return f"dma {tensor} device {device} -> host"


def rank_transfer_slice_name(direction: str, submodule: str, peer: int) -> str:
    """The DMA slice of a submodule call's tensors sent to, or received from, another process."""
    return f"send {submodule} -> rank {peer}" if direction == "send" else f"recv {submodule} <- rank {peer}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_INVOCATION_FILE = re.compile(r"^([0-9]{4,})_([A-Za-z0-9._-]*)_([0-9]+)\.pb\Z")
MAX_SUBMODULE_CHARS = 64  # of the submodule's name in a file name


def invocation_file_name(sequence_index: int, submodule: str, call_index: int) -> str:
    """`ls` order is run order: 0006_transformer_0.pb. Characters a file name cannot hold become `_`."""
    return f"{sequence_index:04d}_{_UNSAFE.sub('_', submodule)[:MAX_SUBMODULE_CHARS]}_{call_index}.pb"


def parse_invocation_file_name(name: str) -> tuple[int, str, int] | None:
    """(sequence_index, submodule as the file name holds it, call_index); None for another name."""
    m = _INVOCATION_FILE.match(name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2), int(m.group(3))


def layer_sql(name: str = "s.name", command_index: str = "extract_arg(s.arg_set_id, 'debug.command_index')") -> str:
    """SQL that recovers the layer of a command slice from its name (`name`, an SQL expression) and
    its command index (`command_index`, an SQL expression): what lies between the first `_` and the
    `_{command_index}` suffix. Plain SQLite functions only, so it runs on both query backends."""
    return (f"substr({name}, instr({name}, '_') + 1, length({name}) - instr({name}, '_') "
            f"- length(cast({command_index} AS text)) - 1)")


# The layer of a slice `s` of the Compute track, as the canned reports select it.
LAYER_SQL = layer_sql()


# A logical device's profile (`pipeline.device_profiles`) as Run slice args `device_{d}_{field}`: written
# by `exporter.provenance`, read back by `analysis.roofline`.
DEVICE_PROFILE_FIELDS = ("source", "peak_flops_per_s", "mem_bandwidth_bytes_per_s", "capacity_bytes", "dtype", "label")


def device_profile_arg(device: int, field: str) -> str:
    """The Run slice arg that holds `field` of logical device `device`'s profile."""
    return f"device_{device}_{field}"
