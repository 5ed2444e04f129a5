"""TrackEvent debug annotations flattened into trace_processor's args: `debug.<name>` keys, nested
dicts as `.key`, arrays as `[i]`, interned names and strings resolved on the packet's sequence."""

from __future__ import annotations

import json

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .sequence_state import SequenceState


# What the embedded backend does not flatten (trace_processor parses proto values into args; nested values
# it flattens as their own tree): counted in `stats` as unsupported_debug_annotation:<kind>, so that the reader
# says so.
_UNREAD = ("nested_value", "proto_value")


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


def _flatten(a: pt.DebugAnnotation, seq: SequenceState, out: dict, key: str, unread: list, indices: dict) -> bool:
    """Add annotation `a`'s args under `key`; whether it added an entry (trace_processor's `added_entry`, which
    decides whether an array element takes an index: a dict always does, even an empty one).
    `indices`: the next index of each array key, shared by all annotations of one event, as trace_processor's
    args inserter keeps them (two annotations of one name that hold arrays number their elements on)."""
    kind = a.WhichOneof("value")
    if kind == "string_value_iid":
        if a.string_value_iid not in seq.strings:  # trace_processor stops reading the annotation there
            raise _StopAnnotation
        out[key] = seq.strings[a.string_value_iid]
    elif kind == "legacy_json_value":
        return _add_json(as_text(a.legacy_json_value), out, key, indices)
    elif kind in _UNREAD:
        unread.append(kind)
        return False
    elif kind is not None:
        value = as_text(getattr(a, kind))
        out[key] = _TYPED[kind](value) if kind in _TYPED else value
    elif a.dict_entries:
        for e in a.dict_entries:
            _flatten(e, seq, out, f"{key}.{as_text(e.name) or seq.annotation_names.get(e.name_iid, '')}", unread,
                     indices)
    elif a.array_values:
        added = False
        for e in a.array_values:
            i = indices.get(key, 0)
            if _flatten(e, seq, out, f"{key}[{i}]", unread, indices):
                indices[key] = i + 1
                added = True
        return added
    else:
        return False
    return True


def _add_json(text: str, out: dict, key: str, indices: dict) -> bool:
    """A `legacy_json_value` as trace_processor v58.2's JSON iterator adds it: an object's members as
    `.name`, an array's elements as `[i]` (every element but null takes an index), nulls skipped; whether it
    added a value inside an object or array. A bare string or bool is added but reports no entry; a bare
    number adds nothing (its parser reads a number that ends the text as cut short); text that is not JSON
    adds nothing."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if isinstance(value, (dict, list)):
        return _add_json_members(value, out, key, indices)
    if isinstance(value, (str, bool)):
        out[key] = value
    return False


def _add_json_members(value, out: dict, key: str, indices: dict) -> bool:
    added = False
    for name, member in value.items() if isinstance(value, dict) else ((None, v) for v in value):
        if member is None:
            continue
        if name is None:
            i = indices.get(key, 0)
            indices[key] = i + 1
            child = f"{key}[{i}]"
        else:
            child = f"{key}.{name}"
        if isinstance(member, (dict, list)):
            added |= _add_json_members(member, out, child, indices)
        else:
            out[child] = member
            added = True
    return added


def _annotation_pairs(blob: bytes, seq: SequenceState, indices: dict, unread: list) -> dict:
    """{key: value} of one serialized annotation (`indices`: the event's array indices, updated)."""
    a = pt.DebugAnnotation.FromString(blob)
    name = as_text(a.name) if a.HasField("name") else seq.annotation_names.get(a.name_iid)
    pairs: dict = {}
    if name is not None:  # (an annotation whose name is not interned is dropped, as trace_processor does)
        try:
            _flatten(a, seq, pairs, f"debug.{name}", unread, indices)
        except _StopAnnotation:
            pass
    return pairs


def arg_value_ids(raw: tuple, seq: SequenceState, memo: dict, value_id, stats) -> tuple:
    """An argument set (serialized annotations `raw`) as value ids (`value_id(key, value)`); `memo` keeps
    each distinct annotation's ids (and the array indices it used), so a set costs a lookup per annotation
    once its annotations were seen. Values it does not read are counted in `stats` once per distinct
    annotation."""
    ids: tuple = ()
    indices: dict = {}
    for blob in raw:
        one = memo.get(blob)
        if one is None:
            unread: list = []
            used: dict = {}
            one = (tuple(value_id(k, v) for k, v in _annotation_pairs(blob, seq, used, unread).items()), used)
            for kind in unread:
                stats[f"unsupported_debug_annotation:{kind}"] += 1
            if len(memo) < 1 << 18:
                memo[blob] = one
        if one[1].keys() & indices.keys():  # arrays an earlier annotation of the event numbered already
            ids += tuple(value_id(k, v) for k, v in _annotation_pairs(blob, seq, indices, []).items())
        else:
            ids += one[0]
            indices.update(one[1])
    return ids
