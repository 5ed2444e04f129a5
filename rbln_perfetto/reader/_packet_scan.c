/* Column scan of Perfetto TracePackets, for the embedded SQL backend's reader.
 *
 * scan(buffer) walks a serialized `Trace` (repeated TracePacket, field 1) once and returns one
 * fixed-size record per packet (layout: PacketRecord below, mirrored by a numpy dtype in
 * reader/scanner.py). A packet is "simple" when it is a plain TrackEvent packet: a timestamp, and only
 * timestamp_clock_id, trusted_packet_sequence_id, sequence_flags and a track_event that holds only
 * type, track_uuid, name_iid, name, debug_annotations, counter_value, double_counter_value. Those are
 * decoded here; every other packet is left to the Python reader (simple = 0), which keeps the full
 * semantics. Field numbers are checked against Perfetto's descriptors at import time.
 *
 * Inline names are split as the SQL backend stores them: a canonical decimal prefix of up to 18
 * ASCII digits followed by a non-empty rest ("6_transformer_blocks.0.ff_1" -> 6, "_transformer_...").
 * Names and argument sets are identified by a 64-bit hash of their bytes, so that Python decodes
 * each distinct one once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    TRACE_PACKET = 1,
    P_TIMESTAMP = 8, P_CLOCK_ID = 58, P_SEQUENCE_ID = 10, P_SEQUENCE_FLAGS = 13, P_TRACK_EVENT = 11,
    E_TYPE = 9, E_TRACK_UUID = 11, E_NAME_IID = 10, E_NAME = 23, E_DEBUG_ANNOTATIONS = 4,
    E_COUNTER_VALUE = 30, E_DOUBLE_COUNTER_VALUE = 44,
};

typedef struct {
    int64_t off, len;           /* the packet's body in the buffer */
    uint64_t ts, track, name_iid;
    int64_t name_prefix;        /* -1: none */
    int64_t name_off, name_len; /* the name (its rest when split); name_off -1: no inline name */
    uint64_t name_hash, args_hash; /* args_hash 0: no debug annotations */
    int64_t te_off, te_len;     /* the track_event message */
    double counter;
    uint32_t clock_id, seq_id, flags, type;
    uint8_t simple, has_track, has_clock, has_counter, has_name_iid, pad[3];
} PacketRecord;

static int varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* Skips a field's value; 0 on a malformed or unsupported (group) wire type. */
static int skip(const uint8_t **pp, const uint8_t *end, int wire) {
    uint64_t v;
    switch (wire) {
    case 0: return varint(pp, end, &v);
    case 1: if (end - *pp < 8) return 0; *pp += 8; return 1;
    case 5: if (end - *pp < 4) return 0; *pp += 4; return 1;
    case 2:
        if (!varint(pp, end, &v) || v > (uint64_t)(end - *pp)) return 0;
        *pp += v;
        return 1;
    default: return 0;
    }
}

static uint64_t hash_update(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t hash_final(uint64_t h, size_t n) {
    h ^= (uint64_t)n * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h ? h : 1;
}

#define HASH_SEED 0xcbf29ce484222325ULL

static void split_name(const uint8_t *s, int64_t n, PacketRecord *r, const uint8_t *base) {
    int64_t d = 0;
    while (d < n && d < 19 && s[d] >= '0' && s[d] <= '9') d++;
    r->name_prefix = -1;
    if (d >= 1 && d <= 18 && d < n && (d == 1 || s[0] != '0') && !(s[d] >= '0' && s[d] <= '9')) {
        int64_t v = 0;
        for (int64_t i = 0; i < d; i++) v = v * 10 + (s[i] - '0');
        r->name_prefix = v;
        s += d;
        n -= d;
    }
    r->name_off = s - base;
    r->name_len = n;
    r->name_hash = hash_final(hash_update(HASH_SEED, s, (size_t)n), (size_t)n);
}

/* Decodes a track_event; 0 when it holds anything the Python reader must see. */
static int scan_event(const uint8_t *p, const uint8_t *end, PacketRecord *r, const uint8_t *base) {
    uint64_t args = HASH_SEED, v;
    size_t args_bytes = 0;
    int has_args = 0, has_double = 0;
    int64_t int_counter = 0;
    double double_counter = 0;
    while (p < end) {
        const uint8_t *field = p;
        uint64_t tag;
        if (!varint(&p, end, &tag)) return 0;
        int wire = (int)(tag & 7);
        uint64_t number = tag >> 3;
        if (number == E_DEBUG_ANNOTATIONS && wire == 2) {
            if (!skip(&p, end, 2)) return 0;
            args = hash_update(args, field, (size_t)(p - field));
            args_bytes += (size_t)(p - field);
            has_args = 1;
        } else if (number == E_NAME && wire == 2) {
            if (!varint(&p, end, &v) || v > (uint64_t)(end - p)) return 0;
            split_name(p, (int64_t)v, r, base);
            p += v;
        } else if (wire == 0 && (number == E_TYPE || number == E_TRACK_UUID || number == E_NAME_IID ||
                                 number == E_COUNTER_VALUE)) {
            if (!varint(&p, end, &v)) return 0;
            if (number == E_TYPE) r->type = (uint32_t)v;
            else if (number == E_TRACK_UUID) { r->track = v; r->has_track = 1; }
            else if (number == E_NAME_IID) { r->name_iid = v; r->has_name_iid = 1; }
            else { int_counter = (int64_t)v; r->has_counter = 1; }
        } else if (number == E_DOUBLE_COUNTER_VALUE && wire == 1) {
            if (end - p < 8) return 0;
            memcpy(&double_counter, p, 8);
            p += 8;
            has_double = 1;
            r->has_counter = 1;
        } else {
            return 0;
        }
    }
    r->counter = has_double ? double_counter : (double)int_counter;
    r->args_hash = has_args ? hash_final(args, args_bytes) : 0;
    return 1;
}

static int scan_packet(const uint8_t *p, const uint8_t *end, PacketRecord *r, const uint8_t *base) {
    uint64_t v;
    int has_event = 0, has_ts = 0;
    while (p < end) {
        uint64_t tag;
        if (!varint(&p, end, &tag)) return 0;
        int wire = (int)(tag & 7);
        uint64_t number = tag >> 3;
        if (number == P_TRACK_EVENT && wire == 2) {
            if (has_event) return 0; /* a second track_event merges into the first: left to protobuf */
            if (!varint(&p, end, &v) || v > (uint64_t)(end - p)) return 0;
            r->te_off = p - base;
            r->te_len = (int64_t)v;
            has_event = 1;
            p += v;
        } else if (wire == 0 && (number == P_TIMESTAMP || number == P_CLOCK_ID || number == P_SEQUENCE_ID ||
                                 number == P_SEQUENCE_FLAGS)) {
            if (!varint(&p, end, &v)) return 0;
            if (number == P_TIMESTAMP) { r->ts = v; has_ts = 1; }
            else if (number == P_CLOCK_ID) { r->clock_id = (uint32_t)v; r->has_clock = 1; }
            else if (number == P_SEQUENCE_ID) r->seq_id = (uint32_t)v;
            else r->flags = (uint32_t)v;
        } else {
            return 0;
        }
    }
    /* Without a timestamp trace_processor drops the event (track_event_missing_timestamp): left to Python. */
    if (!has_event || !has_ts) return 0;
    /* Decoded last, so that a repeated track_event field reads as protobuf merges it: not simple. */
    return scan_event(base + r->te_off, base + r->te_off + r->te_len, r, base);
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const uint8_t *base = (const uint8_t *)buf.buf, *p = base, *end = base + buf.len;
    size_t cap = 1024, n = 0;
    PacketRecord *recs = malloc(cap * sizeof(PacketRecord));
    const char *error = NULL;
    int64_t error_at = 0;
    if (!recs) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    while (p < end) {
        const uint8_t *start = p;
        uint64_t tag, len;
        if (!varint(&p, end, &tag)) { error = "bad tag"; error_at = start - base; break; }
        if (tag != ((TRACE_PACKET << 3) | 2)) {
            if (!skip(&p, end, (int)(tag & 7))) { error = "bad field"; error_at = start - base; break; }
            continue;
        }
        if (!varint(&p, end, &len) || len > (uint64_t)(end - p)) { error = "packet cut short"; error_at = start - base; break; }
        if (n == cap) {
            PacketRecord *grown = realloc(recs, 2 * cap * sizeof(PacketRecord));
            if (!grown) { error = "out of memory"; break; }
            recs = grown;
            cap *= 2;
        }
        PacketRecord *r = &recs[n++];
        memset(r, 0, sizeof(*r));
        r->off = p - base;
        r->len = (int64_t)len;
        r->name_off = -1;
        r->name_prefix = -1;
        r->simple = (uint8_t)scan_packet(p, p + len, r, base);
        p += len;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (error) {
        free(recs);
        return PyErr_Format(PyExc_ValueError, "%s at byte offset %lld", error, (long long)error_at);
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)recs, (Py_ssize_t)(n * sizeof(PacketRecord)));
    free(recs);
    return out;
}

static PyObject *hash_bytes(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    uint64_t h = hash_final(hash_update(HASH_SEED, buf.buf, (size_t)buf.len), (size_t)buf.len);
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLongLong(h);
}

/* uint64 -> int64 lookups for the reader's name and argument-set hashes (reader/columns.py HashIdTable):
 * open addressing over two numpy buffers, `keys` (0: empty; the scan's hashes are never 0) and `ids`,
 * of a power-of-two size that the caller keeps at most half full. */
static int table_buffers(PyObject *keys_obj, PyObject *ids_obj, Py_buffer *keys, Py_buffer *ids, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(keys_obj, keys, flags) < 0) return -1;
    if (PyObject_GetBuffer(ids_obj, ids, flags) < 0) { PyBuffer_Release(keys); return -1; }
    size_t slots = (size_t)keys->len / 8;
    if (keys->len != ids->len || slots == 0 || (slots & (slots - 1))) {
        PyBuffer_Release(keys);
        PyBuffer_Release(ids);
        PyErr_SetString(PyExc_ValueError, "keys and ids: equal buffers of a power-of-two count of 8-byte slots");
        return -1;
    }
    return 0;
}

static size_t slot_of(uint64_t h, size_t mask) { return (size_t)((h * 0x9e3779b97f4a7c15ULL) >> 17) & mask; }

static PyObject *table_lookup(PyObject *self, PyObject *args) {
    PyObject *keys_obj, *ids_obj;
    Py_buffer keys, ids, hashes;
    if (!PyArg_ParseTuple(args, "OOy*", &keys_obj, &ids_obj, &hashes)) return NULL;
    if (table_buffers(keys_obj, ids_obj, &keys, &ids, 0) < 0) { PyBuffer_Release(&hashes); return NULL; }
    Py_ssize_t n = hashes.len / 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 8);
    if (out) {
        const uint64_t *k = keys.buf, *h = hashes.buf;
        const int64_t *v = ids.buf;
        int64_t *o = (int64_t *)PyBytes_AS_STRING(out);
        size_t mask = (size_t)keys.len / 8 - 1;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t want;
            memcpy(&want, (const char *)h + 8 * i, 8);
            size_t s = slot_of(want, mask);
            while (k[s] != 0 && k[s] != want) s = (s + 1) & mask;
            o[i] = k[s] == want ? v[s] : -1;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&keys);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&hashes);
    return out;
}

static PyObject *table_insert(PyObject *self, PyObject *args) {
    PyObject *keys_obj, *ids_obj;
    Py_buffer keys, ids, hashes, values;
    if (!PyArg_ParseTuple(args, "OOy*y*", &keys_obj, &ids_obj, &hashes, &values)) return NULL;
    if (hashes.len != values.len || (hashes.len % 8)) {
        PyBuffer_Release(&hashes);
        PyBuffer_Release(&values);
        PyErr_SetString(PyExc_ValueError, "hashes and ids to insert: 8 bytes each, as many of each");
        return NULL;
    }
    if (table_buffers(keys_obj, ids_obj, &keys, &ids, 1) < 0) {
        PyBuffer_Release(&hashes);
        PyBuffer_Release(&values);
        return NULL;
    }
    uint64_t *k = keys.buf;
    int64_t *v = ids.buf;
    size_t mask = (size_t)keys.len / 8 - 1, n = (size_t)hashes.len / 8, used = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t h;
        int64_t id;
        memcpy(&h, (const char *)hashes.buf + 8 * i, 8);
        memcpy(&id, (const char *)values.buf + 8 * i, 8);
        if (h == 0) continue; /* (never a scan hash) */
        size_t s = slot_of(h, mask);
        while (k[s] != 0 && k[s] != h) s = (s + 1) & mask;
        used += k[s] == 0;
        k[s] = h;
        v[s] = id;
    }
    PyBuffer_Release(&keys);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&hashes);
    PyBuffer_Release(&values);
    return PyLong_FromSize_t(used);
}

/* The debug_annotations of a TrackEvent the scan called simple, as protobuf's repeated bytes view
 * gives them (each field's payload, in order); None when the bytes do not parse. */
static PyObject *annotations(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const uint8_t *p = buf.buf, *end = p + buf.len;
    PyObject *list = PyList_New(0);
    while (list && p < end) {
        uint64_t tag, len;
        if (!varint(&p, end, &tag)) goto malformed;
        if ((tag >> 3) == E_DEBUG_ANNOTATIONS && (tag & 7) == 2) {
            if (!varint(&p, end, &len) || len > (uint64_t)(end - p)) goto malformed;
            PyObject *one = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
            if (!one || PyList_Append(list, one) < 0) { Py_XDECREF(one); Py_CLEAR(list); break; }
            Py_DECREF(one);
            p += len;
        } else if (!skip(&p, end, (int)(tag & 7))) {
            goto malformed;
        }
    }
    PyBuffer_Release(&buf);
    if (!list) return NULL;
    PyObject *out = PyList_AsTuple(list);
    Py_DECREF(list);
    return out;
malformed:
    PyBuffer_Release(&buf);
    Py_DECREF(list);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"annotations", annotations, METH_VARARGS, "annotations(track_event_bytes) -> tuple of debug annotation bytes"},
    {"table_lookup", table_lookup, METH_VARARGS, "table_lookup(keys, ids, hashes) -> bytes of int64 ids, -1 unknown"},
    {"table_insert", table_insert, METH_VARARGS, "table_insert(keys, ids, hashes, ids) -> how many slots it filled"},
    {"scan", scan, METH_VARARGS, "scan(trace_bytes) -> bytes of PacketRecord, one per TracePacket"},
    {"hash_bytes", hash_bytes, METH_VARARGS, "the 64-bit hash scan() gives names and argument sets"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_packet_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__packet_scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(PacketRecord));
    const char *names[] = {"P_TIMESTAMP", "P_CLOCK_ID", "P_SEQUENCE_ID", "P_SEQUENCE_FLAGS", "P_TRACK_EVENT",
                           "E_TYPE", "E_TRACK_UUID", "E_NAME_IID", "E_NAME", "E_DEBUG_ANNOTATIONS",
                           "E_COUNTER_VALUE", "E_DOUBLE_COUNTER_VALUE"};
    const int values[] = {P_TIMESTAMP, P_CLOCK_ID, P_SEQUENCE_ID, P_SEQUENCE_FLAGS, P_TRACK_EVENT, E_TYPE,
                          E_TRACK_UUID, E_NAME_IID, E_NAME, E_DEBUG_ANNOTATIONS, E_COUNTER_VALUE,
                          E_DOUBLE_COUNTER_VALUE};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) PyModule_AddIntConstant(m, names[i], values[i]);
    return m;
}
