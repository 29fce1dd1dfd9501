/* The hot loops of the per-class mask writer (io/writers.py, MaskGzipEncoder), in C.
 *
 * Finding the runs of a uint8 label map (grouped by label), packing the deflate tokens of one mask from its
 * runs, and summing the CRC-32 contribution of its runs. The Huffman tables and the CRC tables are built in
 * Python and passed in, so the format is defined in one place; these functions only walk the runs. writers.py
 * does the same in numpy when this module is not built (it is an optional extension), with identical bytes.
 * Every function releases the GIL while it works, so several threads can run it at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_MATCH 258
#define PAIR_STRIDE (MAX_MATCH + 1)
#define CRC_CHUNK_BITS 16

/* A contiguous buffer of `count` items of `itemsize` bytes (count < 0: any count). */
static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t count, int writable,
                      const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != itemsize || view->len % itemsize
        || (count >= 0 && view->len / itemsize != count)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes", name, count,
                     itemsize, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static inline uint64_t load8(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---- runs of a label map ------------------------------------------------------------------------------ */

static PyObject *next_boundary(PyObject *self, PyObject *args)
{
    PyObject *flat_obj;
    Py_ssize_t i;
    Py_buffer flat;
    if (!PyArg_ParseTuple(args, "On", &flat_obj, &i) || get_buffer(flat_obj, &flat, 1, -1, 0, "flat") < 0)
        return NULL;
    const uint8_t *p = flat.buf;
    Py_ssize_t n = flat.len;
    if (i <= 0)
        i = 0;
    else {
        while (i < n && p[i] == p[i - 1])
            i++;
    }
    PyBuffer_Release(&flat);
    return PyLong_FromSsize_t(i < n ? i : n);
}

/* Checks that [begin, end) is a slice of the n bytes that starts and ends at run boundaries. */
static int check_range(const uint8_t *p, Py_ssize_t n, Py_ssize_t begin, Py_ssize_t end)
{
    if (begin < 0 || end > n || begin > end || (begin > 0 && begin < n && p[begin] == p[begin - 1])
        || (end > 0 && end < n && p[end] == p[end - 1])) {
        PyErr_SetString(PyExc_ValueError, "range must lie within the data and begin and end at run boundaries");
        return -1;
    }
    return 0;
}

static PyObject *count_runs(PyObject *self, PyObject *args)
{
    PyObject *flat_obj, *counts_obj;
    Py_ssize_t begin, end;
    Py_buffer flat, counts;
    if (!PyArg_ParseTuple(args, "OnnO", &flat_obj, &begin, &end, &counts_obj)
        || get_buffer(flat_obj, &flat, 1, -1, 0, "flat") < 0)
        return NULL;
    if (get_buffer(counts_obj, &counts, 8, 256, 1, "counts") < 0) {
        PyBuffer_Release(&flat);
        return NULL;
    }
    const uint8_t *p = flat.buf;
    int64_t *out = counts.buf;
    int ok = check_range(p, flat.len, begin, end) == 0;
    if (ok && begin < end) {
        Py_BEGIN_ALLOW_THREADS
        /* four tables, so that runs of one label do not wait on each other's increments */
        int64_t tab[4][256];
        memset(tab, 0, sizeof(tab));
        tab[0][p[begin]]++;
        Py_ssize_t i = begin + 1;
        while (i + 8 <= end) {
            if (load8(p + i) != load8(p + i - 1)) {
                for (int j = 0; j < 8; j++)
                    tab[j & 3][p[i + j]] += p[i + j] != p[i + j - 1];
            }
            i += 8;
        }
        for (; i < end; i++)
            tab[0][p[i]] += p[i] != p[i - 1];
        for (int c = 0; c < 256; c++)
            out[c] += tab[0][c] + tab[1][c] + tab[2][c] + tab[3][c];
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&flat);
    PyBuffer_Release(&counts);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *fill_runs(PyObject *self, PyObject *args)
{
    PyObject *flat_obj, *cursor_obj, *starts_obj, *ends_obj;
    Py_ssize_t begin, end;
    Py_buffer flat, cursor, starts, ends;
    if (!PyArg_ParseTuple(args, "OnnOOO", &flat_obj, &begin, &end, &cursor_obj, &starts_obj, &ends_obj)
        || get_buffer(flat_obj, &flat, 1, -1, 0, "flat") < 0)
        return NULL;
    if (get_buffer(cursor_obj, &cursor, 8, 256, 1, "cursor") < 0) {
        PyBuffer_Release(&flat);
        return NULL;
    }
    if (get_buffer(starts_obj, &starts, 8, -1, 1, "starts") < 0) {
        PyBuffer_Release(&flat);
        PyBuffer_Release(&cursor);
        return NULL;
    }
    if (get_buffer(ends_obj, &ends, 8, starts.len / 8, 1, "ends") < 0) {
        PyBuffer_Release(&flat);
        PyBuffer_Release(&cursor);
        PyBuffer_Release(&starts);
        return NULL;
    }
    const uint8_t *p = flat.buf;
    int64_t *cur = cursor.buf, *s = starts.buf, *e = ends.buf;
    int64_t size = starts.len / 8;
    int ok = check_range(p, flat.len, begin, end) == 0;
    int overflow = 0;
    if (ok && begin < end) {
        Py_BEGIN_ALLOW_THREADS
        int64_t run_start = begin;
        Py_ssize_t i = begin + 1;
        for (;;) {
            while (i + 8 <= end && load8(p + i) == load8(p + i - 1))
                i += 8;
            if (i >= end)
                break;
            if (p[i] != p[i - 1]) {
                int64_t k = cur[p[i - 1]]++;
                if (k < 0 || k >= size) {
                    overflow = 1;
                    break;
                }
                s[k] = run_start;
                e[k] = i;
                run_start = i;
            }
            i++;
        }
        if (!overflow) {
            int64_t k = cur[p[end - 1]]++;
            if (k < 0 || k >= size)
                overflow = 1;
            else {
                s[k] = run_start;
                e[k] = end;
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&flat);
    PyBuffer_Release(&cursor);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    if (!ok)
        return NULL;
    if (overflow) {
        PyErr_SetString(PyExc_ValueError, "a cursor left the run arrays: counts and cursors do not match the data");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- deflate tokens of one mask ----------------------------------------------------------------------- */

typedef struct {
    uint8_t *out;
    uint64_t acc; /* bits not yet stored, fewer than 32 between calls */
    int nacc;
} bit_writer;

static inline void store32(bit_writer *w)
{
    uint32_t v = (uint32_t)w->acc;
    w->out[0] = (uint8_t)v;
    w->out[1] = (uint8_t)(v >> 8);
    w->out[2] = (uint8_t)(v >> 16);
    w->out[3] = (uint8_t)(v >> 24);
    w->out += 4;
    w->acc >>= 32;
    w->nacc -= 32;
}

/* value has at most 32 bits and nbits <= 32 */
static inline void put_bits(bit_writer *w, uint64_t value, int64_t nbits)
{
    w->acc |= value << w->nacc;
    w->nacc += (int)nbits;
    if (w->nacc >= 32)
        store32(w);
}

static inline void put_zeros(bit_writer *w, int64_t nbits)
{
    while (nbits > 0) {
        int64_t step = nbits < 32 ? nbits : 32;
        w->nacc += (int)step;
        nbits -= step;
        if (w->nacc >= 32)
            store32(w);
    }
}

typedef struct {
    const uint64_t *head_val, *pair_val, *zero_val;
    const int64_t *head_bits, *pair_bits, *zero_bits;
    int64_t full_bits;
} token_tables;

/* Token 0 and the pairs of runs, as in writers._mask_tokens; returns 0, or -1 for runs out of order. */
static int pack_mask(bit_writer *w, const token_tables *t, const int64_t *s, const int64_t *e, int64_t k, int64_t n)
{
    int64_t lead = k ? s[0] : n;
    if (lead < 0 || lead > n) /* checked before any zero bits are written: the output's size depends on it */
        return -1;
    if (lead) {
        int64_t full = (lead - 1) / MAX_MATCH, rest = (lead - 1) % MAX_MATCH;
        put_bits(w, t->head_val[rest], t->head_bits[rest]);
        put_zeros(w, full * t->full_bits);
    }
    for (int64_t i = 0; i < k; i++) {
        int64_t ones = e[i] - s[i] - 1;
        int64_t next = i + 1 < k ? s[i + 1] : n;
        int64_t zeros = next - e[i] - 1;
        if (ones < 0 || e[i] > n || next > n || (zeros < 0 && (i + 1 < k || e[i] != n)))
            return -1;
        int64_t full1 = ones / MAX_MATCH, rest1 = ones % MAX_MATCH;
        int64_t full0 = 0, rest0 = MAX_MATCH; /* rest 258: the mask ends with ones */
        if (zeros >= 0) {
            full0 = zeros / MAX_MATCH;
            rest0 = zeros % MAX_MATCH;
        }
        if (!full1) {
            int64_t index = rest1 * PAIR_STRIDE + rest0;
            put_bits(w, t->pair_val[index], t->pair_bits[index]);
        } else {
            put_bits(w, t->head_val[MAX_MATCH + rest1], t->head_bits[MAX_MATCH + rest1]);
            put_zeros(w, full1 * t->full_bits);
            put_bits(w, t->zero_val[rest0], t->zero_bits[rest0]);
        }
        put_zeros(w, full0 * t->full_bits);
    }
    return 0;
}

static PyObject *encode_mask(PyObject *self, PyObject *args)
{
    PyObject *objs[8], *result = NULL;
    Py_buffer bufs[8];
    int taken = 0;
    long long n, carry_value, carry_bits, full_bits, end_value, end_bits;
    if (!PyArg_ParseTuple(args, "OOLLLOOOOOOLLL", &objs[0], &objs[1], &n, &carry_value, &carry_bits, &objs[2],
                          &objs[3], &objs[4], &objs[5], &objs[6], &objs[7], &full_bits, &end_value, &end_bits))
        return NULL;
    static const char *names[8] = {"starts", "ends", "head_val", "head_bits", "pair_val", "pair_bits",
                                   "zero_val", "zero_bits"};
    const Py_ssize_t counts[8] = {-1, -1, 2 * MAX_MATCH, 2 * MAX_MATCH, MAX_MATCH * PAIR_STRIDE,
                                  MAX_MATCH * PAIR_STRIDE, PAIR_STRIDE, PAIR_STRIDE};
    for (; taken < 8; taken++) {
        if (get_buffer(objs[taken], &bufs[taken], 8, counts[taken], 0, names[taken]) < 0)
            goto done;
    }
    int64_t k = bufs[0].len / 8;
    if (bufs[1].len != bufs[0].len || n < 0 || carry_bits < 0 || carry_bits >= 8 || end_bits < 0
        || end_bits > 32 || full_bits < 0 || full_bits > 32) {
        PyErr_SetString(PyExc_ValueError, "encode_mask: inconsistent arguments");
        goto done;
    }
    /* at most two tokens of 32 bits per run and the zero bits of the full matches (at most n / 258) */
    Py_ssize_t bound = 8 * (k + 2) + (Py_ssize_t)((full_bits * (n / MAX_MATCH + 2 * k + 2)) / 8) + 16;
    result = PyBytes_FromStringAndSize(NULL, bound);
    if (!result)
        goto done;
    token_tables t = {bufs[2].buf, bufs[4].buf, bufs[6].buf, bufs[3].buf, bufs[5].buf, bufs[7].buf, full_bits};
    bit_writer w = {(uint8_t *)PyBytes_AS_STRING(result), (uint64_t)carry_value, (int)carry_bits};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = pack_mask(&w, &t, bufs[0].buf, bufs[1].buf, k, n);
    if (status == 0) {
        put_bits(&w, (uint64_t)end_value, end_bits);
        while (w.nacc > 0) { /* the last byte, padded with zeros */
            *w.out++ = (uint8_t)w.acc;
            w.acc >>= 8;
            w.nacc -= 8;
        }
    }
    Py_END_ALLOW_THREADS
    if (status != 0) {
        PyErr_SetString(PyExc_ValueError, "encode_mask: runs must be ascending, non-empty, separated and within n");
        Py_CLEAR(result);
        goto done;
    }
    _PyBytes_Resize(&result, (Py_ssize_t)(w.out - (uint8_t *)PyBytes_AS_STRING(result)));
done:
    for (int i = 0; i < taken; i++)
        PyBuffer_Release(&bufs[i]);
    return result;
}

/* ---- CRC-32 of the runs --------------------------------------------------------------------------------- */

static inline uint64_t apply_op(const uint64_t *op, uint64_t v)
{
    uint64_t r = 0;
    for (int b = 0; v; b++, v >>= 1)
        if (v & 1)
            r ^= op[b];
    return r;
}

/* XOR of P(n - x[i]) over x (ascending, within [0, n]), as writers._RunsCrc._sum_p; -1 for bad input */
static int sum_p(const int64_t *x, int64_t count, int64_t n, const uint64_t *low, const uint64_t *ops,
                 const uint64_t *at_chunks, int64_t n_q, uint64_t *out)
{
    uint64_t result = 0, acc = 0;
    int parity = 0;
    int64_t current = -1;
    for (int64_t i = 0; i < count; i++) {
        int64_t d = n - x[i];
        if (d < 0 || d > n)
            return -1;
        int64_t q = d >> CRC_CHUNK_BITS;
        if (q != current) {
            if (current >= 0)
                result ^= apply_op(ops + 32 * current, acc) ^ (parity ? at_chunks[current] : 0);
            if (q >= n_q)
                return -1;
            current = q;
            acc = 0;
            parity = 0;
        }
        acc ^= low[d & ((1 << CRC_CHUNK_BITS) - 1)];
        parity ^= 1;
    }
    if (current >= 0)
        result ^= apply_op(ops + 32 * current, acc) ^ (parity ? at_chunks[current] : 0);
    *out = result;
    return 0;
}

static PyObject *runs_crc(PyObject *self, PyObject *args)
{
    PyObject *objs[5], *result = NULL;
    Py_buffer bufs[5];
    int taken = 0;
    long long n;
    if (!PyArg_ParseTuple(args, "OOLOOO", &objs[0], &objs[1], &n, &objs[2], &objs[3], &objs[4]))
        return NULL;
    static const char *names[5] = {"starts", "ends", "low", "ops", "at_chunks"};
    const Py_ssize_t counts[5] = {-1, -1, 1 << CRC_CHUNK_BITS, -1, -1};
    for (; taken < 5; taken++) {
        if (get_buffer(objs[taken], &bufs[taken], 8, counts[taken], 0, names[taken]) < 0)
            goto done;
    }
    int64_t n_q = bufs[4].len / 8;
    if (bufs[1].len != bufs[0].len || bufs[3].len != 32 * bufs[4].len || n < 0) {
        PyErr_SetString(PyExc_ValueError, "runs_crc: inconsistent arguments");
        goto done;
    }
    uint64_t a = 0, b = 0;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = sum_p(bufs[0].buf, bufs[0].len / 8, n, bufs[2].buf, bufs[3].buf, bufs[4].buf, n_q, &a);
    if (status == 0)
        status = sum_p(bufs[1].buf, bufs[1].len / 8, n, bufs[2].buf, bufs[3].buf, bufs[4].buf, n_q, &b);
    Py_END_ALLOW_THREADS
    if (status != 0)
        PyErr_SetString(PyExc_ValueError, "runs_crc: positions must lie within [0, n]");
    else
        result = PyLong_FromUnsignedLongLong((unsigned long long)(a ^ b));
done:
    for (int i = 0; i < taken; i++)
        PyBuffer_Release(&bufs[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"next_boundary", next_boundary, METH_VARARGS,
     "next_boundary(flat, i) -> the first run boundary j >= i of the bytes (0 for i <= 0, len(flat) if none)."},
    {"count_runs", count_runs, METH_VARARGS,
     "count_runs(flat, begin, end, counts): add the runs of each byte value in flat[begin:end] to counts "
     "(256 int64); begin and end must be run boundaries."},
    {"fill_runs", fill_runs, METH_VARARGS,
     "fill_runs(flat, begin, end, cursor, starts, ends): store each run [s, e) of flat[begin:end] at index "
     "cursor[value] of starts and ends (int64) and advance that cursor."},
    {"encode_mask", encode_mask, METH_VARARGS,
     "encode_mask(starts, ends, n, carry_value, carry_bits, head_val, head_bits, pair_val, pair_bits, zero_val, "
     "zero_bits, full_bits, end_value, end_bits) -> the deflate bytes of the mask's runs of ones after the "
     "carried bits, through the end-of-block code, padded to a byte."},
    {"runs_crc", runs_crc, METH_VARARGS,
     "runs_crc(starts, ends, n, low, ops, at_chunks) -> the CRC-32 register contribution of the runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_maskcodec", "C loops of the per-class mask writer.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__maskcodec(void)
{
    return PyModule_Create(&module);
}
