"""TrackEvent debug annotations flattened into trace_processor's args: `debug.<name>` keys, nested
dicts as `.key`, arrays as `[i]`, interned names and strings resolved on the packet's sequence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

if TYPE_CHECKING:
    from .decoding import SequenceState


# What the embedded backend does not flatten (trace_processor parses JSON and proto values into args):
# counted in `stats` as unsupported_debug_annotation:<kind>, so that the reader says so.
_UNREAD = ("nested_value", "legacy_json_value", "proto_value")


class Uint(int):
    """A `uint_value`: trace_processor's value_type 'uint'."""


class Pointer(int):
    """A `pointer_value`: trace_processor's value_type 'pointer'."""


_TYPED = {"uint_value": Uint, "pointer_value": Pointer}


def as_text(value):
    """protobuf hands back a string field that is not valid UTF-8 as bytes; trace_processor reads it lossily,
    and as a C string (up to its first NUL)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.split("\x00", 1)[0] if isinstance(value, str) and "\x00" in value else value


class _StopAnnotation(Exception):
    """A string iid never interned: trace_processor keeps the args read before it and drops the rest."""


def _flatten(a: pt.DebugAnnotation, seq: SequenceState, out: dict, key: str, unread: list) -> None:
    kind = a.WhichOneof("value")
    if kind == "string_value_iid":
        if a.string_value_iid not in seq.strings:  # trace_processor stops reading the annotation there
            raise _StopAnnotation
        out[key] = seq.strings[a.string_value_iid]
    elif kind in _UNREAD:
        unread.append(kind)
    elif kind is not None:
        value = as_text(getattr(a, kind))
        out[key] = _TYPED[kind](value) if kind in _TYPED else value
    elif a.dict_entries:
        for e in a.dict_entries:
            _flatten(e, seq, out, f"{key}.{as_text(e.name) or seq.annotation_names.get(e.name_iid, '')}", unread)
    elif a.array_values:
        i = 0  # as trace_processor: an element that adds no arg (a string iid never interned, no value) takes no index
        for e in a.array_values:
            before = len(out)
            _flatten(e, seq, out, f"{key}[{i}]", unread)
            i += len(out) > before


def arg_value_ids(raw: tuple, seq: SequenceState, memo: dict, value_id, stats) -> tuple:
    """An argument set (serialized annotations `raw`) as value ids (`value_id(key, value)`); `memo` keeps
    each distinct annotation's ids, so a set costs a lookup per annotation once its annotations were seen.
    Values it does not read are counted in `stats` once per distinct annotation."""
    ids: tuple = ()
    for blob in raw:
        one = memo.get(blob)
        if one is None:
            a = pt.DebugAnnotation.FromString(blob)
            name = as_text(a.name) if a.HasField("name") else seq.annotation_names.get(a.name_iid)
            pairs: dict = {}
            unread: list = []
            if name is not None:  # (an annotation whose name is not interned is dropped, as trace_processor does)
                try:
                    _flatten(a, seq, pairs, f"debug.{name}", unread)
                except _StopAnnotation:
                    pass
            for kind in unread:
                stats[f"unsupported_debug_annotation:{kind}"] += 1
            one = tuple(value_id(k, v) for k, v in pairs.items())
            if len(memo) < 1 << 18:
                memo[blob] = one
        ids += one
    return ids
