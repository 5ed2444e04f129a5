"""A wire-compatible view of Perfetto's TracePacket and TrackEvent for fast reading.

Perfetto's own messages decode every debug annotation into a Python object. The view declares the
same field numbers (read from the shipped Perfetto descriptors) but keeps `track_event`, its debug
annotations and the rarer payloads as raw bytes: protobuf's C parser splits a trace into packets,
and the reader decodes each distinct byte string once and reuses the result (an END event, a
counter sample or a command's argument set repeats thousands of times in one trace). Also here:
the TrackEvent types and sequence flags the reader tests, as Perfetto numbers them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

_T = descriptor_pb2.FieldDescriptorProto


def _number(msg, name: str) -> int:
    return msg.DESCRIPTOR.fields_by_name[name].number


# (view field, Perfetto field, view type, repeated)
_PACKET = [
    ("timestamp", "timestamp", _T.TYPE_UINT64, False),
    ("timestamp_clock_id", "timestamp_clock_id", _T.TYPE_UINT32, False),
    ("trusted_packet_sequence_id", "trusted_packet_sequence_id", _T.TYPE_UINT32, False),
    ("sequence_flags", "sequence_flags", _T.TYPE_UINT32, False),
    ("incremental_state_cleared", "incremental_state_cleared", _T.TYPE_BOOL, False),
    ("track_event", "track_event", _T.TYPE_BYTES, False),
    ("interned_data", "interned_data", _T.TYPE_BYTES, False),
    ("clock_snapshot", "clock_snapshot", _T.TYPE_BYTES, False),
    ("trace_packet_defaults", "trace_packet_defaults", _T.TYPE_BYTES, False),
    ("track_descriptor", "track_descriptor", _T.TYPE_BYTES, False),
    ("compressed_packets", "compressed_packets", _T.TYPE_BYTES, False),
    ("zstd_compressed_packets", "zstd_compressed_packets", _T.TYPE_BYTES, False),
]
_EVENT = [
    ("type", "type", _T.TYPE_UINT32, False),
    ("track_uuid", "track_uuid", _T.TYPE_UINT64, False),
    ("name_iid", "name_iid", _T.TYPE_UINT64, False),
    ("name", "name", _T.TYPE_STRING, False),
    ("category_iids", "category_iids", _T.TYPE_UINT64, True),
    ("categories", "categories", _T.TYPE_STRING, True),
    ("debug_annotations", "debug_annotations", _T.TYPE_BYTES, True),
    ("flow_ids", "flow_ids", _T.TYPE_FIXED64, True),
    ("flow_ids_old", "flow_ids_old", _T.TYPE_UINT64, True),
    ("terminating_flow_ids", "terminating_flow_ids", _T.TYPE_FIXED64, True),
    ("terminating_flow_ids_old", "terminating_flow_ids_old", _T.TYPE_UINT64, True),
    ("counter_value", "counter_value", _T.TYPE_INT64, False),
    ("double_counter_value", "double_counter_value", _T.TYPE_DOUBLE, False),
    # legacy microsecond timestamps (see decoding.event_time)
    ("timestamp_delta_us", "timestamp_delta_us", _T.TYPE_INT64, False),
    ("timestamp_absolute_us", "timestamp_absolute_us", _T.TYPE_INT64, False),
]


def _build():
    fdp = descriptor_pb2.FileDescriptorProto(name="rbln_perfetto_view.proto", package="rbln_perfetto.view",
                                             syntax="proto2")
    for name, source, fields in (("Packet", pt.TracePacket, _PACKET), ("Event", pt.TrackEvent, _EVENT)):
        msg = fdp.message_type.add(name=name)
        for view_name, field_name, kind, repeated in fields:
            msg.field.add(name=view_name, number=_number(source, field_name), type=kind,
                          label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
    trace = fdp.message_type.add(name="Trace")
    trace.field.add(name="packet", number=_number(pt.Trace, "packet"), type=_T.TYPE_MESSAGE,
                    label=_T.LABEL_REPEATED, type_name=".rbln_perfetto.view.Packet")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"rbln_perfetto.view.{n}"))
                 for n in ("Trace", "Packet", "Event"))


ViewTrace, ViewPacket, ViewEvent = _build()
# Payloads the reader understands; any other TracePacket field is counted as unsupported.
KNOWN_PACKET_FIELDS = frozenset(f for _, f, _, _ in _PACKET) | {
    "previous_packet_dropped", "first_packet_on_sequence", "trusted_uid", "trusted_pid", "trace_config",
    "trace_stats", "trace_uuid", "system_info", "service_event", "synchronization_marker", "machine_id",
}
