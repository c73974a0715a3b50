/* The DWCP chain's hot paths (novacron_dwcp.encoding._native): the encoder's one native pass
 * that classifies a part of a batch and gathers its literals (``classify``), and the decoder's
 * page rebuild (``rebuild``).
 *
 * It makes exactly the decisions of classify.py (the numpy fallback), row for row, so both
 * produce the same payload bytes: zero test and fingerprint in one pass over each page;
 * "same" against the page's stored version; duplicates through the encoder's fingerprint
 * index (a Python dict, read with the GIL held), confirmed byte for byte; copies of earlier
 * pages of the part; the rewrite sample; XBZRLE-like runs; and the literal section (whole
 * pages, then the runs' new bytes). The heavy loops run without the GIL, so parts of a batch
 * are classified on several threads at once. Only reads the store.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Must match wire.py and classify.py / delta.py. */
enum { OP_ZERO = 0, OP_SAME = 1, OP_DUP = 2, OP_DELTA = 3, OP_FULL = 4, OP_COPY = 5 };
#define REWRITE_STRIDE 8
#define RUN_GAP_WORDS 2   /* RUN_GAP (16 bytes) // 8 */
#define RUN_OVERHEAD 4
#define PAGE_OVERHEAD 2
#define GOLDEN 0x9E3779B97F4A7C15ULL

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

static int get_buffer(PyObject *object, Buffer *buffer, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, &buffer->view, flags) != 0) {
        PyErr_Format(PyExc_TypeError, "native classify: %s must be a contiguous buffer", what);
        return -1;
    }
    buffer->held = 1;
    return 0;
}

static void release(Buffer *buffer) {
    if (buffer->held) {
        PyBuffer_Release(&buffer->view);
        buffer->held = 0;
    }
}

/* Zero test and fingerprint of one page: one pass over its words. */
static uint64_t scan_page(const uint64_t *page, Py_ssize_t words, const uint64_t *weights,
                          int *is_zero) {
    uint64_t any = 0, a = 0, b = 0, c = 0, d = 0;
    Py_ssize_t i = 0;
    for (; i + 4 <= words; i += 4) {
        any |= page[i] | page[i + 1] | page[i + 2] | page[i + 3];
        a += page[i] * weights[i];
        b += page[i + 1] * weights[i + 1];
        c += page[i + 2] * weights[i + 2];
        d += page[i + 3] * weights[i + 3];
    }
    for (; i < words; i++) {
        any |= page[i];
        a += page[i] * weights[i];
    }
    *is_zero = any == 0;
    return any ? a + b + c + d : 0;
}

/* Open addressing over a part's fingerprints: the first row of each (for copies). */
typedef struct {
    uint64_t *keys;
    int64_t *rows;
    size_t mask;
} FirstRows;

static int first_rows_init(FirstRows *table, Py_ssize_t count) {
    size_t size = 16;
    while (size < (size_t)count * 2) size <<= 1;
    table->keys = malloc(size * sizeof(uint64_t));
    table->rows = malloc(size * sizeof(int64_t));
    table->mask = size - 1;
    if (!table->keys || !table->rows) return -1;
    for (size_t i = 0; i < size; i++) table->rows[i] = -1;
    return 0;
}

/* The first row recorded with ``key``; records ``row`` when there is none. */
static int64_t first_row(FirstRows *table, uint64_t key, int64_t row) {
    size_t at = (size_t)((key * GOLDEN) >> 32) & table->mask;
    while (table->rows[at] >= 0) {
        if (table->keys[at] == key) return table->rows[at];
        at = (at + 1) & table->mask;
    }
    table->keys[at] = key;
    table->rows[at] = row;
    return row;
}

typedef struct {
    /* inputs */
    const uint64_t *table; /* the part's rows */
    Py_ssize_t count, words;
    const int64_t *slots;
    const uint64_t *slab;
    Py_ssize_t slab_rows;
    const uint64_t *stored_fp;
    Py_ssize_t stored_fp_rows;
    const int64_t *owner;
    Py_ssize_t owner_rows;
    /* per row */
    uint8_t *ops;
    int64_t *refs;
    uint64_t *fps;
    int64_t *candidate;
    /* outputs in row order */
    int64_t *sources;
    Py_ssize_t source_count;
    int64_t *full_rows;
    Py_ssize_t full_count;
    uint16_t *run_counts;
    Py_ssize_t delta_count;
    uint16_t *offsets, *lengths;
    Py_ssize_t run_total;
    uint8_t *delta_bytes;
    Py_ssize_t delta_size;
    uint8_t *full_bytes;
} Part;

static const uint64_t *stored(const Part *part, int64_t slot) {
    return part->slab + (size_t)slot * (size_t)part->words;
}

static const uint64_t *row_of(const Part *part, Py_ssize_t row) {
    return part->table + (size_t)row * (size_t)part->words;
}

static int valid_slot(const Part *part, int64_t slot) {
    return slot >= 0 && slot < part->slab_rows && slot < part->stored_fp_rows &&
           slot < part->owner_rows;
}

/* Pass 1 (no GIL): zero pages, fingerprints, pages equal to their stored version. */
static void pass_scan(Part *part, const uint64_t *weights) {
    size_t bytes = (size_t)part->words * 8;
    for (Py_ssize_t r = 0; r < part->count; r++) {
        int zero;
        part->fps[r] = scan_page(row_of(part, r), part->words, weights, &zero);
        part->ops[r] = OP_ZERO;
        part->refs[r] = 0;
        part->candidate[r] = -1;
        if (zero) continue;
        part->ops[r] = OP_FULL; /* undecided for now: "rest" */
        int64_t slot = part->slots[r];
        if (valid_slot(part, slot) && part->stored_fp[slot] == part->fps[r] &&
            memcmp(row_of(part, r), stored(part, slot), bytes) == 0)
            part->ops[r] = OP_SAME;
    }
}

/* Pass 2 (GIL held): candidate slots of undecided rows from the fingerprint index. */
static int pass_lookup(Part *part, PyObject *index) {
    for (Py_ssize_t r = 0; r < part->count; r++) {
        if (part->ops[r] != OP_FULL) continue;
        PyObject *key = PyLong_FromUnsignedLongLong(part->fps[r]);
        if (!key) return -1;
        PyObject *value = PyDict_GetItemWithError(index, key);
        Py_DECREF(key);
        if (!value) {
            if (PyErr_Occurred()) return -1;
            continue;
        }
        long long slot = PyLong_AsLongLong(value);
        if (slot == -1 && PyErr_Occurred()) return -1;
        /* The index is never trusted: the slot must be held with the same fingerprint. */
        if (valid_slot(part, slot) && part->owner[slot] >= 0 &&
            part->stored_fp[slot] == part->fps[r])
            part->candidate[r] = slot;
    }
    return 0;
}

/* Runs of changed words of ``row`` against ``base``; emits them when ``emit``.
 * Returns the number of runs, or -1 when the page should go whole. */
static Py_ssize_t find_runs(Part *part, const uint64_t *row, const uint64_t *base, int emit) {
    Py_ssize_t words = part->words, size = words * 8, changed = 0;
    for (Py_ssize_t i = 0; i < words; i++) changed += row[i] != base[i];
    if (changed * 8 + PAGE_OVERHEAD + RUN_OVERHEAD >= size) return -1;
    Py_ssize_t runs = 0, literal = 0, start = -1, last = -1;
    for (Py_ssize_t i = 0; i <= words; i++) {
        int differs = i < words && row[i] != base[i];
        if (i < words && !differs) continue;
        if (start >= 0 && (i == words || i - last > RUN_GAP_WORDS)) {
            Py_ssize_t length = last + 1 - start;
            if (emit) {
                Py_ssize_t at = part->run_total + runs;
                part->offsets[at] = (uint16_t)(start * 8);
                part->lengths[at] = (uint16_t)(length * 8);
                memcpy(part->delta_bytes + part->delta_size + literal * 8, row + start,
                       (size_t)length * 8);
            }
            runs++;
            literal += length;
            start = -1;
        }
        if (differs) {
            if (start < 0) start = i;
            last = i;
        }
    }
    if (PAGE_OVERHEAD + RUN_OVERHEAD * runs + literal * 8 >= size) return -1;
    if (emit) {
        part->run_total += runs;
        part->delta_size += literal * 8;
    }
    return runs;
}

/* Pass 3 (no GIL): duplicates, copies, rewrites, deltas and the literal section. */
static int pass_decide(Part *part) {
    size_t bytes = (size_t)part->words * 8;
    Py_ssize_t words = part->words;
    for (Py_ssize_t r = 0; r < part->count; r++) {
        int64_t slot = part->candidate[r];
        if (part->ops[r] == OP_FULL && slot >= 0 &&
            memcmp(row_of(part, r), stored(part, slot), bytes) == 0) {
            part->ops[r] = OP_DUP;
            part->refs[r] = part->owner[slot];
            part->sources[part->source_count++] = slot;
        }
    }
    FirstRows first;
    if (first_rows_init(&first, part->count) != 0) {
        free(first.keys);
        free(first.rows);
        return -1;
    }
    /* Every undecided row is recorded before any is marked, as the fallback does. */
    for (Py_ssize_t r = 0; r < part->count; r++) {
        if (part->ops[r] != OP_FULL) continue;
        int64_t original = first_row(&first, part->fps[r], r);
        if (original != r && memcmp(row_of(part, r), row_of(part, original), bytes) == 0) {
            part->ops[r] = OP_COPY;
            part->refs[r] = original;
        }
    }
    free(first.keys);
    free(first.rows);
    Py_ssize_t samples = (words + REWRITE_STRIDE - 1) / REWRITE_STRIDE;
    for (Py_ssize_t r = 0; r < part->count; r++) {
        if (part->ops[r] != OP_FULL) continue;
        int64_t slot = part->slots[r];
        if (!valid_slot(part, slot)) continue;
        const uint64_t *row = row_of(part, r), *base = stored(part, slot);
        Py_ssize_t changed = 0;
        for (Py_ssize_t i = 0; i < words; i += REWRITE_STRIDE) changed += row[i] != base[i];
        if (changed * 2 > samples) continue; /* rewritten: goes whole */
        Py_ssize_t runs = find_runs(part, row, base, 0);
        if (runs < 0) continue;
        find_runs(part, row, base, 1);
        part->ops[r] = OP_DELTA;
        part->run_counts[part->delta_count++] = (uint16_t)runs;
    }
    for (Py_ssize_t r = 0; r < part->count; r++) {
        if (part->ops[r] != OP_FULL) continue;
        memcpy(part->full_bytes + (size_t)part->full_count * bytes, row_of(part, r), bytes);
        part->full_rows[part->full_count++] = r;
    }
    return 0;
}

static PyObject *sized(PyObject *object, Py_ssize_t size) {
    if (object && _PyBytes_Resize(&object, size) != 0) return NULL;
    return object;
}

/* classify(table, start, stop, slots, slab, stored_fp, owner, index, weights, full, delta)
 * -> tuple; ``full`` and ``delta`` are the caller's writable buffers for the literal section
 * (reused from batch to batch: fresh memory would cost page faults every time). */
static PyObject *classify(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *table_obj, *slots_obj, *slab_obj, *fp_obj, *owner_obj, *index, *weights_obj;
    PyObject *full_obj, *delta_obj;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OnnOOOOO!OOO", &table_obj, &start, &stop, &slots_obj,
                          &slab_obj, &fp_obj, &owner_obj, &PyDict_Type, &index, &weights_obj,
                          &full_obj, &delta_obj))
        return NULL;
    Buffer table = {0}, slots = {0}, slab = {0}, stored_fp = {0}, owner = {0}, weights = {0};
    Buffer full = {0}, delta = {0};
    PyObject *result = NULL;
    PyObject *ops = NULL, *refs = NULL, *fps = NULL, *sources = NULL, *full_rows = NULL;
    PyObject *run_counts = NULL, *offsets = NULL, *lengths = NULL;
    int64_t *candidate = NULL;
    if (get_buffer(table_obj, &table, 0, "table") || get_buffer(slots_obj, &slots, 0, "slots") ||
        get_buffer(slab_obj, &slab, 0, "slab") || get_buffer(fp_obj, &stored_fp, 0, "fp") ||
        get_buffer(owner_obj, &owner, 0, "owner") ||
        get_buffer(weights_obj, &weights, 0, "weights") ||
        get_buffer(full_obj, &full, 1, "full") || get_buffer(delta_obj, &delta, 1, "delta"))
        goto done;
    Py_ssize_t words = weights.view.len / 8;
    Py_ssize_t size = words * 8;
    Py_ssize_t rows = size ? table.view.len / size : 0;
    if (words <= 0 || table.view.len != rows * size || start < 0 || stop < start ||
        stop > rows || slots.view.len != rows * 8 || slab.view.len % size != 0 ||
        full.view.len < (stop - start) * size || delta.view.len < (stop - start) * size) {
        PyErr_SetString(PyExc_ValueError, "native classify: inconsistent array sizes");
        goto done;
    }
    Py_ssize_t count = stop - start;
    Py_ssize_t max_runs = count * (words / 2 + 1);
    ops = PyBytes_FromStringAndSize(NULL, count);
    refs = PyBytes_FromStringAndSize(NULL, count * 8);
    fps = PyBytes_FromStringAndSize(NULL, count * 8);
    sources = PyBytes_FromStringAndSize(NULL, count * 8);
    full_rows = PyBytes_FromStringAndSize(NULL, count * 8);
    run_counts = PyBytes_FromStringAndSize(NULL, count * 2);
    offsets = PyBytes_FromStringAndSize(NULL, max_runs * 2);
    lengths = PyBytes_FromStringAndSize(NULL, max_runs * 2);
    candidate = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(int64_t));
    if (!ops || !refs || !fps || !sources || !full_rows || !run_counts || !offsets ||
        !lengths || !candidate) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    Part part = {
        .table = (const uint64_t *)table.view.buf + (size_t)start * (size_t)words,
        .count = count,
        .words = words,
        .slots = (const int64_t *)slots.view.buf + start,
        .slab = slab.view.buf,
        .slab_rows = slab.view.len / size,
        .stored_fp = stored_fp.view.buf,
        .stored_fp_rows = stored_fp.view.len / 8,
        .owner = owner.view.buf,
        .owner_rows = owner.view.len / 8,
        .ops = (uint8_t *)PyBytes_AS_STRING(ops),
        .refs = (int64_t *)PyBytes_AS_STRING(refs),
        .fps = (uint64_t *)PyBytes_AS_STRING(fps),
        .candidate = candidate,
        .sources = (int64_t *)PyBytes_AS_STRING(sources),
        .full_rows = (int64_t *)PyBytes_AS_STRING(full_rows),
        .run_counts = (uint16_t *)PyBytes_AS_STRING(run_counts),
        .offsets = (uint16_t *)PyBytes_AS_STRING(offsets),
        .lengths = (uint16_t *)PyBytes_AS_STRING(lengths),
        .delta_bytes = delta.view.buf,
        .full_bytes = full.view.buf,
    };
    Py_BEGIN_ALLOW_THREADS;
    pass_scan(&part, weights.view.buf);
    Py_END_ALLOW_THREADS;
    if (PyDict_GET_SIZE(index) && pass_lookup(&part, index) != 0) goto done;
    int failed;
    Py_BEGIN_ALLOW_THREADS;
    failed = pass_decide(&part);
    Py_END_ALLOW_THREADS;
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    sources = sized(sources, part.source_count * 8);
    full_rows = sized(full_rows, part.full_count * 8);
    run_counts = sized(run_counts, part.delta_count * 2);
    offsets = sized(offsets, part.run_total * 2);
    lengths = sized(lengths, part.run_total * 2);
    if (!sources || !full_rows || !run_counts || !offsets || !lengths) goto done;
    result = Py_BuildValue("(OOOOOOOOnn)", ops, refs, fps, sources, full_rows, run_counts,
                           offsets, lengths, part.full_count * size, part.delta_size);
done:
    Py_XDECREF(ops);
    Py_XDECREF(refs);
    Py_XDECREF(fps);
    Py_XDECREF(sources);
    Py_XDECREF(full_rows);
    Py_XDECREF(run_counts);
    Py_XDECREF(offsets);
    Py_XDECREF(lengths);
    PyMem_Free(candidate);
    release(&table);
    release(&slots);
    release(&slab);
    release(&stored_fp);
    release(&owner);
    release(&weights);
    release(&full);
    release(&delta);
    return result;
}

/* The decoder's rebuild: every page of a batch written straight into the bytes object the
 * decoder returns. The caller (decoder.py) has already checked the plan against the payload;
 * every count, slot and run is checked again here, so inconsistent arrays raise ValueError and
 * nothing is read or written out of bounds. */
typedef struct {
    const uint8_t *ops;
    Py_ssize_t count, size;
    const int64_t *slots;
    const int64_t *sources;
    Py_ssize_t source_count;
    const int64_t *copy_rows, *copy_refs;
    Py_ssize_t copy_count;
    const int64_t *run_counts;
    Py_ssize_t delta_count;
    const int64_t *offsets, *lengths;
    Py_ssize_t run_total;
    const uint8_t *literal;
    Py_ssize_t literal_size;
    const uint8_t *slab;
    Py_ssize_t slab_rows;
    uint8_t *out;
} Rebuild;

/* NULL when all went well, else what was inconsistent. */
static const char *rebuild_pages(Rebuild *job) {
    Py_ssize_t size = job->size, full_count = 0;
    for (Py_ssize_t r = 0; r < job->count; r++) {
        if (job->ops[r] > OP_COPY) return "unknown page operation";
        full_count += job->ops[r] == OP_FULL;
    }
    if (full_count > job->literal_size / size) return "literal section shorter than its pages";
    Py_ssize_t whole = 0, delta_bytes = full_count * size, dup = 0, delta = 0, run = 0;
    for (Py_ssize_t r = 0; r < job->count; r++) {
        uint8_t *page = job->out + (size_t)r * (size_t)size;
        int64_t slot;
        switch (job->ops[r]) {
        case OP_ZERO:
        case OP_COPY: /* copies are written last, from their final source row */
            memset(page, 0, (size_t)size);
            break;
        case OP_SAME:
        case OP_DELTA:
            slot = job->slots[r];
            if (slot < 0 || slot >= job->slab_rows) return "a page's slot is not held";
            memcpy(page, job->slab + (size_t)slot * (size_t)size, (size_t)size);
            if (job->ops[r] == OP_SAME) break;
            if (delta >= job->delta_count) return "more deltas than run counts";
            for (int64_t n = job->run_counts[delta++]; n > 0; n--, run++) {
                if (run >= job->run_total) return "more runs than offsets";
                int64_t offset = job->offsets[run], length = job->lengths[run];
                if (offset < 0 || length <= 0 || offset > size - length ||
                    length > job->literal_size - delta_bytes)
                    return "a delta run out of bounds";
                memcpy(page + offset, job->literal + delta_bytes, (size_t)length);
                delta_bytes += length;
            }
            break;
        case OP_DUP:
            if (dup >= job->source_count) return "more duplicates than sources";
            slot = job->sources[dup++];
            if (slot < 0 || slot >= job->slab_rows) return "a duplicate's slot is not held";
            memcpy(page, job->slab + (size_t)slot * (size_t)size, (size_t)size);
            break;
        default: /* OP_FULL */
            memcpy(page, job->literal + (size_t)whole * (size_t)size, (size_t)size);
            whole++;
        }
    }
    if (dup != job->source_count || delta != job->delta_count || run != job->run_total ||
        delta_bytes != job->literal_size)
        return "counts do not match the operations";
    for (Py_ssize_t i = 0; i < job->copy_count; i++) {
        int64_t row = job->copy_rows[i], ref = job->copy_refs[i];
        if (row < 0 || row >= job->count || job->ops[row] != OP_COPY || ref < 0 || ref >= row ||
            job->ops[ref] == OP_COPY)
            return "a copy does not name an earlier page that is not a copy";
        memcpy(job->out + (size_t)row * (size_t)size, job->out + (size_t)ref * (size_t)size,
               (size_t)size);
    }
    return NULL;
}

/* rebuild(ops, slots, sources, copy_rows, copy_refs, run_counts, offsets, lengths, literal,
 * slab, page_size) -> bytes: the batch's pages; int64 arrays except ops (uint8), literal and
 * slab (bytes). */
static PyObject *rebuild(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[10];
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOn", &objects[0], &objects[1], &objects[2],
                          &objects[3], &objects[4], &objects[5], &objects[6], &objects[7],
                          &objects[8], &objects[9], &size))
        return NULL;
    static const char *names[10] = {"ops",        "slots",   "sources", "copy_rows",
                                    "copy_refs",  "run_counts", "offsets", "lengths",
                                    "literal",    "slab"};
    Buffer buffers[10];
    memset(buffers, 0, sizeof buffers);
    PyObject *result = NULL;
    for (int i = 0; i < 10; i++)
        if (get_buffer(objects[i], &buffers[i], 0, names[i])) goto done;
    Py_ssize_t count = buffers[0].view.len;
    if (size <= 0 || size % 8 || buffers[1].view.len != count * 8 ||
        buffers[3].view.len != buffers[4].view.len || buffers[6].view.len != buffers[7].view.len ||
        buffers[9].view.len % size || count > PY_SSIZE_T_MAX / size) {
        PyErr_SetString(PyExc_ValueError, "native rebuild: inconsistent array sizes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, count * size);
    if (!result) goto done;
    Rebuild job = {
        .ops = buffers[0].view.buf,
        .count = count,
        .size = size,
        .slots = buffers[1].view.buf,
        .sources = buffers[2].view.buf,
        .source_count = buffers[2].view.len / 8,
        .copy_rows = buffers[3].view.buf,
        .copy_refs = buffers[4].view.buf,
        .copy_count = buffers[3].view.len / 8,
        .run_counts = buffers[5].view.buf,
        .delta_count = buffers[5].view.len / 8,
        .offsets = buffers[6].view.buf,
        .lengths = buffers[7].view.buf,
        .run_total = buffers[6].view.len / 8,
        .literal = buffers[8].view.buf,
        .literal_size = buffers[8].view.len,
        .slab = buffers[9].view.buf,
        .slab_rows = buffers[9].view.len / size,
        .out = (uint8_t *)PyBytes_AS_STRING(result),
    };
    const char *problem;
    Py_BEGIN_ALLOW_THREADS;
    problem = rebuild_pages(&job);
    Py_END_ALLOW_THREADS;
    if (problem) {
        PyErr_Format(PyExc_ValueError, "native rebuild: %s", problem);
        Py_CLEAR(result);
    }
done:
    for (int i = 0; i < 10; i++) release(&buffers[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"classify", classify, METH_VARARGS,
     "classify(table, start, stop, slots, slab, stored_fp, owner, index, weights, full, delta): "
     "the ops, refs, fingerprints, sources, full rows, run counts, offsets and lengths of rows "
     "start..stop, exactly as classify.classify decides them, and the sizes of the whole pages "
     "and delta bytes written to the buffers full and delta."},
    {"rebuild", rebuild, METH_VARARGS,
     "rebuild(ops, slots, sources, copy_rows, copy_refs, run_counts, offsets, lengths, literal, "
     "slab, page_size): the decoder's pages of one batch as bytes (int64 arrays but ops)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native hot paths of the DWCP chain (encoder classification, decoder rebuild).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
