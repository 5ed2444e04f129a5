"""Interned ids of one export, and the debug annotations (slice args) that refer to them.

Every file of an export shares one `Interner`: a static string or name keeps its iid in every
file, so an invocation's bytes are valid in its own file and in the aggregate alike. The debug
annotation names are fixed (`ANNOTATION_IID`) and interned at the start of every file.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import ExportError
from ..proto_bytes import FieldNumber, Slot, f_bytes, f_varint, tag, varint

NAME_IID_WIDTH = 4  # bytes of the slot that holds a Workload slice's name iid: up to 2**28 names per export
MAX_NAMES = 1 << (7 * NAME_IID_WIDTH)

# Debug annotation names, interned with these iids in every file.
ANNOTATIONS = (
    "submodule", "op", "shapes", "bytes", "flops", "device", "sequence_index",
    "command_index", "command_count", "call_index", "commands", "src", "dst", "tensor", "torch_device",
    "detail", "bytes_over_budget",
)
ANNOTATION_IID = {name: i + 1 for i, name in enumerate(ANNOTATIONS)}


class Interner:
    """Iids for one export. Static strings and names keep one iid in every file of the export."""

    def __init__(self):
        self.names: dict[str, int] = {}
        self.strings: dict[str, int] = {}
        self._next_name = 1

    def name(self, text: str) -> int:
        iid = self.names.get(text)
        if iid is None:
            iid = self.names[text] = self._next_name
            self._next_name += 1
        return iid

    def string(self, text: str) -> int:
        iid = self.strings.get(text)
        if iid is None:
            iid = self.strings[text] = len(self.strings) + 1
        return iid

    def reserve_names(self, count: int) -> int:
        base = self._next_name
        self._next_name += count
        if self._next_name >= MAX_NAMES:
            raise ExportError(f"more than {MAX_NAMES} slice names in one export; export fewer invocations per file")
        return base


def interned_entry(number: int, iid: int, text: bytes, text_field: int) -> bytes:
    """One InternedData entry (field `number`): an iid and its text (in field `text_field`)."""
    return f_bytes(number, f_varint(FieldNumber.INTERNED_IID, iid) + f_bytes(text_field, text))


def annotation_names_payload() -> bytes:
    """The InternedData of every file's first packet: the debug annotation names."""
    return b"".join(interned_entry(FieldNumber.INTERNED_ANNOTATION_NAMES, iid, n.encode(), FieldNumber.INTERNED_NAME)
                    for n, iid in ANNOTATION_IID.items())


def interned_strings_payload(strings: dict[str, int]) -> bytes:
    """InternedData entries of debug annotation string values, `{text: iid}`."""
    return b"".join(interned_entry(FieldNumber.INTERNED_STRINGS, iid, t.encode(), FieldNumber.INTERNED_STRING)
                    for t, iid in strings.items())


def annotation_string(name: str, string_iid: int) -> bytes:
    """A string arg whose value is the interned string `string_iid`."""
    body = (f_varint(FieldNumber.ANNOTATION_NAME_IID, ANNOTATION_IID[name])
            + f_varint(FieldNumber.ANNOTATION_STRING_IID, string_iid))
    return f_bytes(FieldNumber.DEBUG_ANNOTATIONS, body)


@lru_cache(maxsize=None)
def annotation_int(name: str, value: int) -> bytes:
    """An integer arg: int_value (int64) when it fits, else uint_value (byte counts and flops can reach 2**64)."""
    if value >= 2**63:
        field, encoded = FieldNumber.ANNOTATION_UINT, value
    else:
        field, encoded = FieldNumber.ANNOTATION_INT, value & (2**64 - 1)
    body = f_varint(FieldNumber.ANNOTATION_NAME_IID, ANNOTATION_IID[name]) + f_varint(field, encoded)
    return f_bytes(FieldNumber.DEBUG_ANNOTATIONS, body)


def annotation_int_slot(name: str, slot: Slot) -> tuple[bytes, Slot]:
    """An integer arg whose value is a slot, as (the bytes before the slot, the slot). A name outside
    `ANNOTATIONS` is written inline (so that every file's interned names stay as they are)."""
    iid = ANNOTATION_IID.get(name)
    name_iid = (f_varint(FieldNumber.ANNOTATION_NAME_IID, iid) if iid is not None
                else f_bytes(FieldNumber.ANNOTATION_NAME, name.encode()))
    value_tag = tag(FieldNumber.ANNOTATION_INT, 0)
    prefix = tag(FieldNumber.DEBUG_ANNOTATIONS, 2) + varint(len(name_iid) + len(value_tag) + slot.width) + name_iid + value_tag
    return (prefix, slot)
