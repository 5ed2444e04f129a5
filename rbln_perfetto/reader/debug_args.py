"""TrackEvent debug annotations flattened into trace_processor's args: `debug.<name>` keys, nested
dicts as `.key`, arrays as `[i]`, interned names and strings resolved on the packet's sequence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

if TYPE_CHECKING:
    from .decoding import SequenceState


def as_text(value):
    """protobuf hands back a string field that is not valid UTF-8 as bytes; trace_processor reads it lossily."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _flatten(a: pt.DebugAnnotation, seq: SequenceState, out: dict, key: str) -> None:
    kind = a.WhichOneof("value")
    if kind == "string_value_iid":
        out[key] = seq.strings.get(a.string_value_iid, "")
    elif kind is not None and kind not in ("nested_value", "legacy_json_value", "proto_value"):
        out[key] = as_text(getattr(a, kind))
    elif a.dict_entries:
        for e in a.dict_entries:
            _flatten(e, seq, out, f"{key}.{as_text(e.name) or seq.annotation_names.get(e.name_iid, '')}")
    elif a.array_values:
        for i, e in enumerate(a.array_values):
            _flatten(e, seq, out, f"{key}[{i}]")


def arg_value_ids(raw: tuple, seq: SequenceState, memo: dict, value_id) -> tuple:
    """An argument set (serialized annotations `raw`) as value ids (`value_id(key, value)`); `memo` keeps
    each distinct annotation's ids, so a set costs a lookup per annotation once its annotations were seen."""
    ids: tuple = ()
    for blob in raw:
        one = memo.get(blob)
        if one is None:
            a = pt.DebugAnnotation.FromString(blob)
            name = as_text(a.name) if a.HasField("name") else seq.annotation_names.get(a.name_iid, f"iid_{a.name_iid}")
            pairs: dict = {}
            _flatten(a, seq, pairs, f"debug.{name}")
            one = tuple(value_id(k, v) for k, v in pairs.items())
            if len(memo) < 1 << 18:
                memo[blob] = one
        ids += one
    return ids
