/* Table building and EXTRACT_ARG in C, for the embedded SQL backend (query/sqlite_backend.py).
 *
 * build_database(page_size, schema, tables) writes a whole SQLite database file image from numpy
 * column buffers and Python lists, which the backend hands to `Connection.deserialize`: no SQL
 * statement per row (the SQL path costs ~0.5 us a row even from C; this writes a row in ~30 ns).
 *
 * EXTRACT_ARG: Python's sqlite3 gives no handle to its connection and cannot load extensions, but it
 * links the same libsqlite3 as this module; while `arm()` is in effect, every connection opened gets
 * `__rbln_index_args()` (sqlite3_auto_extension), so the backend arms, opens its connection, disarms.
 * That function registers extract_arg(arg_set_id, key), whose first call reads __arg and __arg_value
 * into compact arrays: then a lookup in C per call, with no Python and no SQL. Both run on the
 * connection whose tables they read (sqlite3_context_db_handle), so no pointer crosses into Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLUMNS 16

/* ------------------------------------------------------------------ the database image
 * SQLite's file format (https://www.sqlite.org/fileformat2.html), written front to back: every table
 * is a rowid b-tree whose leaves are filled in rowid order and whose interior levels are built on
 * top, as a bulk load would leave them. Page 1 holds the header and sqlite_schema (which must fit).
 */

typedef struct {
    PyObject *bytes; /* the image, grown by doubling (_PyBytes_Resize) */
    size_t pages, page_size;
} Image;

static unsigned char *page_at(Image *im, size_t page) { /* pages are numbered from 1 */
    return (unsigned char *)PyBytes_AS_STRING(im->bytes) + (page - 1) * im->page_size;
}

/* A new zeroed page's number, 0 on failure. */
static size_t new_page(Image *im) {
    size_t have = (size_t)PyBytes_GET_SIZE(im->bytes) / im->page_size;
    if (im->pages == have) {
        if (_PyBytes_Resize(&im->bytes, (Py_ssize_t)(2 * have * im->page_size)) < 0) return 0;
    }
    im->pages++;
    memset(page_at(im, im->pages), 0, im->page_size);
    return im->pages;
}

static int put_varint(unsigned char *p, uint64_t v) {
    if (v < 0x80) { /* (every serial type but text and blobs, most sizes and rowids of a few bytes) */
        p[0] = (unsigned char)v;
        return 1;
    }
    if (v > 0x00ffffffffffffffULL) { /* 9 bytes: 8 of 7 bits, the last of 8 */
        p[8] = (unsigned char)v;
        v >>= 8;
        for (int i = 7; i >= 0; i--) {
            p[i] = (unsigned char)((v & 0x7f) | 0x80);
            v >>= 7;
        }
        return 9;
    }
    unsigned char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (unsigned char)((v & 0x7f) | 0x80);
        v >>= 7;
    } while (v);
    tmp[0] &= 0x7f;
    for (int i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
    return n;
}

static void put_u16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16); p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

/* One column of a table to write: 'r' the rowid (an INTEGER PRIMARY KEY: NULL in the record),
 * 'z' NULL, 'i' int64, 'n' int64 with negatives as NULL, 'f' float64, 'o' a Python list (None, int,
 * float, str), 'c' one such Python value for every row. */
typedef struct {
    char kind;
    const unsigned char *data;
    PyObject *list;
} Column;

/* A value's serial type and bytes (up to 8; text points elsewhere). */
typedef struct {
    uint64_t type;
    unsigned char bytes[8];
    int size;
    const char *text;
} Value;

static void int_value(Value *v, int64_t x) {
    if (x == 0 || x == 1) { v->type = 8 + (uint64_t)x; v->size = 0; return; }
    int size;
    if (x >= -128 && x <= 127) { v->type = 1; size = 1; }
    else if (x >= -32768 && x <= 32767) { v->type = 2; size = 2; }
    else if (x >= -8388608 && x <= 8388607) { v->type = 3; size = 3; }
    else if (x >= -2147483648LL && x <= 2147483647LL) { v->type = 4; size = 4; }
    else if (x >= -140737488355328LL && x <= 140737488355327LL) { v->type = 5; size = 6; }
    else { v->type = 6; size = 8; }
    uint64_t u = (uint64_t)x;
    for (int i = size - 1; i >= 0; i--) { v->bytes[i] = (unsigned char)u; u >>= 8; }
    v->size = size;
}

static void real_value(Value *v, double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    v->type = 7;
    v->size = 8;
    for (int i = 7; i >= 0; i--) { v->bytes[i] = (unsigned char)u; u >>= 8; }
}

/* 0 on success; -1 with a Python error set. */
static int column_value(const Column *c, Py_ssize_t row, Value *v) {
    int64_t x;
    double d;
    v->text = NULL;
    v->size = 0;
    switch (c->kind) {
    case 'r': case 'z': v->type = 0; return 0;
    case 'i': memcpy(&x, c->data + 8 * row, 8); int_value(v, x); return 0;
    case 'n':
        memcpy(&x, c->data + 8 * row, 8);
        if (x < 0) v->type = 0;
        else int_value(v, x);
        return 0;
    case 'f': memcpy(&d, c->data + 8 * row, 8); real_value(v, d); return 0;
    default: break;
    }
    PyObject *o = c->kind == 'c' ? c->list : PyList_GET_ITEM(c->list, row);
    if (o == Py_None) { v->type = 0; return 0; }
    if (PyFloat_Check(o)) { real_value(v, PyFloat_AS_DOUBLE(o)); return 0; }
    if (PyLong_Check(o)) {
        long long y = PyLong_AsLongLong(o);
        if (y == -1 && PyErr_Occurred()) return -1;
        int_value(v, y);
        return 0;
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        v->text = PyUnicode_AsUTF8AndSize(o, &n);
        if (!v->text) return -1;
        v->type = 13 + 2 * (uint64_t)n;
        v->size = (int)n;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "a table value must be None, int, float or str, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
}

static int varint_len(uint64_t v) {
    int n = 1;
    while (n < 9 && v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A record's bytes in `buf` (grown as needed); its size, or -1 with a Python error set. */
static Py_ssize_t make_record(const Column *cols, int width, Py_ssize_t row, unsigned char **buf, size_t *cap) {
    Value values[MAX_COLUMNS];
    size_t header = 0, body = 0;
    for (int j = 0; j < width; j++) {
        if (column_value(&cols[j], row, &values[j]) < 0) return -1;
        header += (size_t)varint_len(values[j].type);
        body += (size_t)values[j].size;
    }
    size_t header_size = header + 1;
    if (header_size > 127) header_size = header + (size_t)varint_len(header + 2); /* (never with 16 columns) */
    size_t total = header_size + body;
    if (total > *cap) {
        unsigned char *grown = realloc(*buf, total * 2);
        if (!grown) { PyErr_NoMemory(); return -1; }
        *buf = grown;
        *cap = total * 2;
    }
    unsigned char *p = *buf;
    p += put_varint(p, header_size);
    for (int j = 0; j < width; j++) p += put_varint(p, values[j].type);
    for (int j = 0; j < width; j++) {
        memcpy(p, values[j].text ? (const unsigned char *)values[j].text : values[j].bytes, (size_t)values[j].size);
        p += values[j].size;
    }
    return (Py_ssize_t)total;
}

/* A b-tree page being filled: cells are placed from the end of the page towards its header. */
typedef struct {
    size_t page;
    int header_at; /* 100 on page 1 */
    int header_size, cells, content; /* content: where the cell content area starts */
} Filling;

static void start_page(Image *im, Filling *f, size_t page, int header_at, unsigned char flag) {
    f->page = page;
    f->header_at = header_at;
    f->header_size = flag == 0x0d ? 8 : 12;
    f->cells = 0;
    f->content = (int)im->page_size;
    page_at(im, page)[header_at] = flag;
}

static int page_room(const Filling *f) {
    return f->content - (f->header_at + f->header_size + 2 * f->cells);
}

static void add_cell(Image *im, Filling *f, const unsigned char *cell, int size) {
    unsigned char *pg = page_at(im, f->page);
    f->content -= size;
    memcpy(pg + f->content, cell, (size_t)size);
    put_u16(pg + f->header_at + f->header_size + 2 * f->cells, (unsigned)f->content);
    f->cells++;
}

static void finish_page(Image *im, Filling *f) {
    unsigned char *pg = page_at(im, f->page) + f->header_at;
    put_u16(pg + 3, (unsigned)f->cells);
    put_u16(pg + 5, f->content == 65536 ? 0 : (unsigned)f->content);
}

/* Child pages of one b-tree level and the largest rowid under each. */
typedef struct {
    size_t n, cap;
    uint32_t *page;
    int64_t *max_rowid;
} Level;

static int level_add(Level *l, size_t page, int64_t rowid) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        uint32_t *p = realloc(l->page, cap * sizeof(uint32_t));
        if (!p) return -1;
        l->page = p;
        int64_t *r = realloc(l->max_rowid, cap * sizeof(int64_t));
        if (!r) return -1;
        l->max_rowid = r;
        l->cap = cap;
    }
    l->page[l->n] = (uint32_t)page;
    l->max_rowid[l->n++] = rowid;
    return 0;
}

/* Writes a leaf cell for `record` (with overflow pages when it does not fit in a page); -1 on failure. */
static int leaf_cell(Image *im, Filling *f, Level *leaves, int64_t rowid, int64_t prev_rowid,
                     const unsigned char *record, size_t size, unsigned char **cell, size_t *cell_cap) {
    size_t usable = im->page_size, max_local = usable - 35, min_local = ((usable - 12) * 32 / 255) - 23;
    size_t local = size;
    if (size > max_local) {
        size_t k = min_local + (size - min_local) % (usable - 4);
        local = k <= max_local ? k : min_local;
    }
    size_t need = 18 + local + (local < size ? 4 : 0);
    if (need > *cell_cap) {
        unsigned char *grown = realloc(*cell, need);
        if (!grown) { PyErr_NoMemory(); return -1; }
        *cell = grown;
        *cell_cap = need;
    }
    unsigned char *c = *cell;
    int n = put_varint(c, size);
    n += put_varint(c + n, (uint64_t)rowid);
    memcpy(c + n, record, local);
    n += (int)local;
    int cell_size = n + (local < size ? 4 : 0);
    if (page_room(f) < cell_size + 2) { /* next leaf */
        finish_page(im, f);
        if (level_add(leaves, f->page, prev_rowid) < 0) { PyErr_NoMemory(); return -1; }
        size_t page = new_page(im);
        if (!page) return -1;
        start_page(im, f, page, 0, 0x0d);
    }
    if (local < size) { /* the rest in a chain of overflow pages */
        size_t first = 0, prev = 0, at = local;
        while (at < size) {
            size_t page = new_page(im);
            if (!page) return -1;
            size_t chunk = size - at < usable - 4 ? size - at : usable - 4;
            memcpy(page_at(im, page) + 4, record + at, chunk);
            if (prev) put_u32(page_at(im, prev), (uint32_t)page);
            else first = page;
            prev = page;
            at += chunk;
        }
        put_u32(c + n, (uint32_t)first);
    }
    add_cell(im, f, c, cell_size);
    return 0;
}

/* Interior levels over `level` until one page is left: the root, returned (0 on failure). Children are
 * spread evenly over the pages of a level, so that none is left with a single child. */
static size_t build_interior(Image *im, Level *level) {
    size_t per_page = (im->page_size - 12) / (2 + 13) + 1; /* (cells of up to 13 bytes, plus the right-most) */
    while (level->n > 1) {
        Level up = {0};
        size_t pages = (level->n + per_page - 1) / per_page, i = 0;
        for (size_t k = 0; k < pages; k++) {
            size_t take = level->n / pages + (k < level->n % pages);
            size_t page = new_page(im);
            if (!page) { free(up.page); free(up.max_rowid); return 0; }
            Filling f;
            start_page(im, &f, page, 0, 0x05);
            for (size_t j = i; j + 1 < i + take; j++) {
                unsigned char cell[13];
                put_u32(cell, level->page[j]);
                add_cell(im, &f, cell, 4 + put_varint(cell + 4, (uint64_t)level->max_rowid[j]));
            }
            put_u32(page_at(im, page) + 8, level->page[i + take - 1]);
            finish_page(im, &f);
            if (level_add(&up, page, level->max_rowid[i + take - 1]) < 0) {
                free(up.page); free(up.max_rowid); PyErr_NoMemory(); return 0;
            }
            i += take;
        }
        free(level->page);
        free(level->max_rowid);
        *level = up;
    }
    return level->page[0];
}

/* A table's rows as a b-tree: its root page, 0 on failure. Rowids are the 'r' column's row numbers
 * (0, 1, ...), or 1, 2, ... as SQLite numbers the rows of a table without an INTEGER PRIMARY KEY. */
static size_t build_table(Image *im, const Column *cols, int width, Py_ssize_t rows) {
    int64_t first = 1;
    for (int j = 0; j < width; j++) if (cols[j].kind == 'r') first = 0;
    Level leaves = {0};
    unsigned char *record = NULL, *cell = NULL;
    size_t record_cap = 0, cell_cap = 0, root = 0;
    size_t page = new_page(im);
    if (!page) return 0;
    Filling f;
    start_page(im, &f, page, 0, 0x0d);
    for (Py_ssize_t row = 0; row < rows; row++) {
        Py_ssize_t size = make_record(cols, width, row, &record, &record_cap);
        if (size < 0 || leaf_cell(im, &f, &leaves, first + row, first + row - 1, record, (size_t)size, &cell, &cell_cap) < 0)
            goto done;
    }
    finish_page(im, &f);
    if (level_add(&leaves, f.page, first + rows - 1) < 0) { PyErr_NoMemory(); goto done; }
    root = build_interior(im, &leaves);
done:
    free(record);
    free(cell);
    free(leaves.page);
    free(leaves.max_rowid);
    return root;
}

/* Reads one table's (rows, spec, [column, ...]) into `cols`; buffers are held in `views`. */
static int table_columns(PyObject *entry, Column *cols, Py_buffer *views, int *nviews, int *width, Py_ssize_t *rows) {
    PyObject *columns;
    const char *spec;
    if (!PyArg_ParseTuple(entry, "nsO!", rows, &spec, &PyList_Type, &columns)) return -1;
    *width = (int)strlen(spec);
    if (*width < 1 || *width > MAX_COLUMNS || PyList_GET_SIZE(columns) != *width) {
        PyErr_SetString(PyExc_ValueError, "a table needs 1 to 16 columns, one spec letter each");
        return -1;
    }
    for (int j = 0; j < *width; j++) {
        PyObject *c = PyList_GET_ITEM(columns, j);
        cols[j].kind = spec[j];
        cols[j].data = NULL;
        cols[j].list = NULL;
        if (spec[j] == 'r' || spec[j] == 'z') continue;
        if (spec[j] == 'o') {
            if (!PyList_Check(c) || PyList_GET_SIZE(c) != *rows) {
                PyErr_SetString(PyExc_ValueError, "an 'o' column is a list, one value per row");
                return -1;
            }
            cols[j].list = c;
            continue;
        }
        if (strchr("inf", spec[j]) == NULL) {
            PyErr_Format(PyExc_ValueError, "spec letter %c: valid are r, z, i, n, f, o", spec[j]);
            return -1;
        }
        if (PyObject_GetBuffer(c, &views[*nviews], PyBUF_C_CONTIGUOUS) < 0) return -1;
        Py_buffer *v = &views[(*nviews)++];
        if (v->len != *rows * 8) {
            PyErr_SetString(PyExc_ValueError, "a column buffer must hold 8 bytes per row");
            return -1;
        }
        cols[j].data = v->buf;
    }
    return 0;
}

static PyObject *build_database(PyObject *self, PyObject *args) {
    int page_size;
    PyObject *schema, *tables;
    if (!PyArg_ParseTuple(args, "iO!O!", &page_size, &PyList_Type, &schema, &PyDict_Type, &tables)) return NULL;
    if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1))) {
        PyErr_SetString(PyExc_ValueError, "page_size: a power of two from 512 to 65536");
        return NULL;
    }
    Py_ssize_t nschema = PyList_GET_SIZE(schema);
    PyObject *roots = PyList_New(nschema);
    if (!roots) return NULL;
    Image im = {PyBytes_FromStringAndSize(NULL, (Py_ssize_t)page_size * 16), 0, (size_t)page_size};
    if (!im.bytes || !new_page(&im)) goto fail; /* page 1: the header and sqlite_schema, written last */
    for (Py_ssize_t i = 0; i < nschema; i++) {
        PyObject *row = PyList_GET_ITEM(schema, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 4) {
            PyErr_SetString(PyExc_ValueError, "schema rows are (type, name, tbl_name, sql)");
            goto fail;
        }
        size_t root = 0;
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(row, 0), "table") == 0) {
            PyObject *entry = PyDict_GetItemWithError(tables, PyTuple_GET_ITEM(row, 1));
            Column cols[MAX_COLUMNS];
            Py_buffer views[MAX_COLUMNS];
            int nviews = 0, width = 1;
            Py_ssize_t rows = 0;
            if (!entry && PyErr_Occurred()) goto fail;
            if (!entry) { /* an empty table */
                cols[0].kind = 'z';
                root = build_table(&im, cols, width, 0);
            } else if (table_columns(entry, cols, views, &nviews, &width, &rows) == 0) {
                root = build_table(&im, cols, width, rows);
            }
            for (int v = 0; v < nviews; v++) PyBuffer_Release(&views[v]);
            if (!root) goto fail;
        }
        PyList_SET_ITEM(roots, i, PyLong_FromSize_t(root));
    }
    /* sqlite_schema on page 1 */
    Filling f;
    start_page(&im, &f, 1, 100, 0x0d);
    unsigned char *record = NULL, *cell = NULL;
    size_t record_cap = 0, cell_cap = 0;
    for (Py_ssize_t i = 0; i < nschema; i++) {
        PyObject *row = PyList_GET_ITEM(schema, i);
        Column cols[5] = {{'c', NULL, PyTuple_GET_ITEM(row, 0)}, {'c', NULL, PyTuple_GET_ITEM(row, 1)},
                          {'c', NULL, PyTuple_GET_ITEM(row, 2)}, {'c', NULL, PyList_GET_ITEM(roots, i)},
                          {'c', NULL, PyTuple_GET_ITEM(row, 3)}};
        Py_ssize_t size = make_record(cols, 5, 0, &record, &record_cap);
        if (size < 0) break;
        int n = put_varint(cell ? cell : (cell = malloc(cell_cap = 4096)), (uint64_t)size);
        if ((size_t)size + 20 > cell_cap) { PyErr_SetString(PyExc_ValueError, "schema row too long"); size = -1; break; }
        n += put_varint(cell + n, (uint64_t)(i + 1));
        memcpy(cell + n, record, (size_t)size);
        if (page_room(&f) < n + size + 2) {
            PyErr_SetString(PyExc_ValueError, "the schema does not fit in page 1; use a larger page_size");
            break;
        }
        add_cell(&im, &f, cell, n + size);
    }
    free(record);
    free(cell);
    if (PyErr_Occurred()) goto fail;
    finish_page(&im, &f);
    unsigned char *h = page_at(&im, 1);
    memcpy(h, "SQLite format 3", 16);
    put_u16(h + 16, page_size == 65536 ? 1 : (unsigned)page_size);
    h[18] = h[19] = 1; /* legacy (rollback journal) read and write versions */
    h[21] = 64; h[22] = 32; h[23] = 32;
    put_u32(h + 24, 1);                 /* file change counter */
    put_u32(h + 28, (uint32_t)im.pages);
    put_u32(h + 40, 1);                 /* schema cookie */
    put_u32(h + 44, 4);                 /* schema format */
    put_u32(h + 56, 1);                 /* UTF-8 */
    put_u32(h + 92, 1);                 /* the page count is valid for change counter 1 */
    put_u32(h + 96, (uint32_t)sqlite3_libversion_number());
    Py_DECREF(roots);
    if (_PyBytes_Resize(&im.bytes, (Py_ssize_t)(im.pages * im.page_size)) < 0) return NULL;
    return im.bytes;
fail:
    Py_DECREF(roots);
    Py_XDECREF(im.bytes);
    return NULL;
}

/* The args as extract_arg reads them: set s holds values value_of[start[s] .. start[s + 1]). */
typedef struct {
    int built; /* 0 until the first call: a load that never calls EXTRACT_ARG never pays for the index */
    sqlite3_int64 sets, values;
    int64_t *start;
    int32_t *value_of;
    /* per value */
    char **key;
    int *key_len;
    char *kind; /* 'i' int_value, 'f' real_value, 's' string_value, 0 NULL */
    int64_t *ints;
    double *reals;
    char **strings;
    int *string_len;
} ArgIndex;

/* Frees the index's arrays, leaving it unbuilt. */
static void clear_index(ArgIndex *x) {
    for (sqlite3_int64 v = 0; v < x->values; v++) {
        if (x->key) free(x->key[v]);
        if (x->strings) free(x->strings[v]);
    }
    free(x->start);
    free(x->value_of);
    free(x->key);
    free(x->key_len);
    free(x->kind);
    free(x->ints);
    free(x->reals);
    free(x->strings);
    free(x->string_len);
    memset(x, 0, sizeof(*x));
}

static void free_index(void *p) {
    if (!p) return;
    clear_index(p);
    free(p);
}

static int build_index(sqlite3 *db, ArgIndex *x);
static void clear_index(ArgIndex *x);

static void extract_arg(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    ArgIndex *x = sqlite3_user_data(ctx);
    if (!x->built) {
        if (build_index(sqlite3_context_db_handle(ctx), x)) {
            clear_index(x);
            sqlite3_result_error(ctx, "extract_arg: __arg / __arg_value missing or out of order", -1);
            return;
        }
        x->built = 1;
    }
    if (sqlite3_value_type(argv[0]) != SQLITE_INTEGER || sqlite3_value_type(argv[1]) != SQLITE_TEXT) return;
    sqlite3_int64 s = sqlite3_value_int64(argv[0]);
    if (s < 0 || s >= x->sets) return;
    const char *key = (const char *)sqlite3_value_text(argv[1]);
    int n = sqlite3_value_bytes(argv[1]);
    for (int64_t i = x->start[s]; i < x->start[s + 1]; i++) {
        int32_t v = x->value_of[i];
        if (x->key_len[v] != n || memcmp(x->key[v], key, (size_t)n) != 0) continue;
        switch (x->kind[v]) {
        case 'i': sqlite3_result_int64(ctx, x->ints[v]); break;
        case 'f': sqlite3_result_double(ctx, x->reals[v]); break;
        case 's': sqlite3_result_text(ctx, x->strings[v], x->string_len[v], SQLITE_STATIC); break;
        default: break;
        }
        return;
    }
}

static char *copy_text(sqlite3_stmt *stmt, int col, int *len) {
    const unsigned char *t = sqlite3_column_text(stmt, col);
    *len = sqlite3_column_bytes(stmt, col);
    char *out = malloc((size_t)*len + 1);
    if (out) {
        memcpy(out, t ? (const char *)t : "", (size_t)*len);
        out[*len] = 0;
    }
    return out;
}

static sqlite3_int64 count_rows(sqlite3 *db, const char *sql) {
    sqlite3_stmt *stmt;
    sqlite3_int64 n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(stmt) == SQLITE_ROW) n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return n;
}

/* 0 on success; the index's values are ids 0..values-1 of __arg_value, its sets 0..sets-1 of __arg. */
static int build_index(sqlite3 *db, ArgIndex *x) {
    x->values = count_rows(db, "SELECT count(*) FROM __arg_value");
    x->sets = count_rows(db, "SELECT coalesce(max(arg_set_id) + 1, 0) FROM __arg");
    sqlite3_int64 args = count_rows(db, "SELECT count(*) FROM __arg");
    if (x->values < 0 || x->sets < 0 || args < 0) return 1;
    size_t nv = (size_t)x->values + 1;
    x->key = calloc(nv, sizeof(char *));
    x->key_len = calloc(nv, sizeof(int));
    x->kind = calloc(nv, 1);
    x->ints = calloc(nv, sizeof(int64_t));
    x->reals = calloc(nv, sizeof(double));
    x->strings = calloc(nv, sizeof(char *));
    x->string_len = calloc(nv, sizeof(int));
    x->start = calloc((size_t)x->sets + 1, sizeof(int64_t));
    x->value_of = calloc((size_t)args + 1, sizeof(int32_t));
    if (!x->key || !x->key_len || !x->kind || !x->ints || !x->reals || !x->strings || !x->string_len || !x->start ||
        !x->value_of)
        return 1;
    sqlite3_stmt *stmt;
    if (sqlite3_prepare_v2(db, "SELECT id, key, int_value, real_value, string_value, value_type FROM __arg_value",
                           -1, &stmt, NULL) != SQLITE_OK)
        return 1;
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        sqlite3_int64 v = sqlite3_column_int64(stmt, 0);
        if (v < 0 || v >= x->values) break;
        x->key[v] = copy_text(stmt, 1, &x->key_len[v]);
        const char *type = (const char *)sqlite3_column_text(stmt, 5);
        if (type && strcmp(type, "string") == 0 && sqlite3_column_type(stmt, 4) != SQLITE_NULL) {
            x->kind[v] = 's';
            x->strings[v] = copy_text(stmt, 4, &x->string_len[v]);
        } else if (type && strcmp(type, "real") == 0 && sqlite3_column_type(stmt, 3) != SQLITE_NULL) {
            x->kind[v] = 'f';
            x->reals[v] = sqlite3_column_double(stmt, 3);
        } else if (sqlite3_column_type(stmt, 2) != SQLITE_NULL) {
            x->kind[v] = 'i';
            x->ints[v] = sqlite3_column_int64(stmt, 2);
        }
    }
    sqlite3_finalize(stmt);
    /* __arg rows come in arg_set_id order (the loader writes them so): a set's values are a run. */
    if (sqlite3_prepare_v2(db, "SELECT arg_set_id, value_id FROM __arg ORDER BY id", -1, &stmt, NULL) != SQLITE_OK)
        return 1;
    sqlite3_int64 i = 0, last = -1;
    int ok = 1;
    while (sqlite3_step(stmt) == SQLITE_ROW && i < args) {
        sqlite3_int64 s = sqlite3_column_int64(stmt, 0), v = sqlite3_column_int64(stmt, 1);
        if (s < last || s >= x->sets || v < 0 || v >= x->values) { ok = 0; break; }
        while (last < s) x->start[++last] = i;
        x->value_of[i++] = (int32_t)v;
    }
    sqlite3_finalize(stmt);
    while (last < x->sets) x->start[++last] = i;
    return ok ? 0 : 1;
}

static void index_args(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc, (void)argv;
    sqlite3 *db = sqlite3_context_db_handle(ctx);
    ArgIndex *x = calloc(1, sizeof(ArgIndex));
    if (!x) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    /* (extract_arg's destructor frees the index when the function is replaced or the connection closes) */
    if (sqlite3_create_function_v2(db, "extract_arg", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, x, extract_arg, NULL,
                                   NULL, free_index) != SQLITE_OK) {
        sqlite3_result_error(ctx, sqlite3_errmsg(db), -1);
        return;
    }
    sqlite3_result_int(ctx, 1);
}

static int register_functions(sqlite3 *db, char **error, const void *api) {
    (void)error, (void)api;
    return sqlite3_create_function_v2(db, "__rbln_index_args", 0, SQLITE_UTF8, NULL, index_args, NULL, NULL, NULL);
}

typedef void (*entry_point)(void);

static PyObject *arm(PyObject *self, PyObject *unused) {
    if (sqlite3_auto_extension((entry_point)register_functions) != SQLITE_OK) {
        PyErr_SetString(PyExc_RuntimeError, "sqlite3_auto_extension failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *disarm(PyObject *self, PyObject *unused) {
    sqlite3_cancel_auto_extension((entry_point)register_functions);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"build_database", build_database, METH_VARARGS,
     "build_database(page_size, [(type, name, tbl_name, sql)], {table: (rows, spec, [column])}) -> image bytes"},
    {"arm", arm, METH_NOARGS, "connections opened from now on get __rbln_index_args()"},
    {"disarm", disarm, METH_NOARGS, "connections opened from now on do not"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sqlite_tables", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sqlite_tables(void) { return PyModule_Create(&module); }
