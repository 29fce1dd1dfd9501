/* scipy's order-1 zoom (mode "nearest") of a 3-D array, in C, bit for bit (preprocessing/resampling.py).
 *
 * Each output voxel is the sum, starting from 0.0, of its eight corners' terms ((value * w0) * w1) * w2 in
 * float64, corners in scipy's order (axis 0 slowest), weights and neighbour indices per axis computed in Python
 * (resampling._linear_taps) and passed in; where the sum is already NaN it stays that NaN, as numpy's and scipy's
 * sums keep the first operand's NaN on x86 (the compiler may swap the operands of a C "+"). The loops run in the order of the input's strides, over a range of
 * the outermost one, with the GIL released, so that several threads can share one zoom. Build with
 * -ffp-contract=off: a fused multiply-add would round differently from scipy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const char *data;
    Py_ssize_t strides[3];
    const int64_t *index[3]; /* per axis: n_out low indices, then n_out high ones */
    const double *weight[3]; /* per axis: n_out first weights, then n_out second ones */
    Py_ssize_t n_out[3];
} zoom_input;

#define DEFINE_ZOOM(NAME, IN_T, OUT_T)                                                                        \
    static void NAME(const zoom_input *in, char *out, const Py_ssize_t *out_strides, const int *order,       \
                     Py_ssize_t begin, Py_ssize_t end)                                                       \
    {                                                                                                        \
        int a0 = order[0], a1 = order[1], a2 = order[2];                                                     \
        Py_ssize_t idx[3];                                                                                   \
        Py_ssize_t offset[3][2];                                                                             \
        double w[3][2];                                                                                      \
        for (idx[a0] = begin; idx[a0] < end; idx[a0]++) {                                                    \
            for (idx[a1] = 0; idx[a1] < in->n_out[a1]; idx[a1]++) {                                          \
                for (int t = 0; t < 2; t++) {                                                                \
                    for (int s = 0; s < 2; s++) {                                                            \
                        int axis = s ? a1 : a0;                                                              \
                        offset[axis][t] = in->index[axis][t * in->n_out[axis] + idx[axis]] * in->strides[axis]; \
                        w[axis][t] = in->weight[axis][t * in->n_out[axis] + idx[axis]];                      \
                    }                                                                                        \
                }                                                                                            \
                char *row = out + idx[a0] * out_strides[a0] + idx[a1] * out_strides[a1];                     \
                for (idx[a2] = 0; idx[a2] < in->n_out[a2]; idx[a2]++) {                                      \
                    Py_ssize_t k = idx[a2];                                                                  \
                    for (int t = 0; t < 2; t++) {                                                            \
                        offset[a2][t] = in->index[a2][t * in->n_out[a2] + k] * in->strides[a2];              \
                        w[a2][t] = in->weight[a2][t * in->n_out[a2] + k];                                    \
                    }                                                                                        \
                    double total = 0.0;                                                                      \
                    for (int i = 0; i < 2; i++)                                                              \
                        for (int j = 0; j < 2; j++)                                                          \
                            for (int m = 0; m < 2; m++) {                                                    \
                                IN_T v;                                                                      \
                                memcpy(&v, in->data + offset[0][i] + offset[1][j] + offset[2][m], sizeof(v)); \
                                double term = (double)v * w[0][i];                                           \
                                term *= w[1][j];                                                             \
                                term *= w[2][m];                                                             \
                                /* x86 keeps the first operand's NaN: a NaN sum stays as it is */            \
                                total = total != total ? total : total + term;                               \
                            }                                                                                \
                    OUT_T result = (OUT_T)total;                                                             \
                    memcpy(row + k * out_strides[a2], &result, sizeof(result));                              \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

#define DEFINE_FOR_INPUT(SUFFIX, IN_T)                                                                        \
    DEFINE_ZOOM(zoom_##SUFFIX##_f, IN_T, float)                                                              \
    DEFINE_ZOOM(zoom_##SUFFIX##_d, IN_T, double)

DEFINE_FOR_INPUT(i8, int8_t)
DEFINE_FOR_INPUT(u8, uint8_t)
DEFINE_FOR_INPUT(i16, int16_t)
DEFINE_FOR_INPUT(u16, uint16_t)
DEFINE_FOR_INPUT(i32, int32_t)
DEFINE_FOR_INPUT(u32, uint32_t)
DEFINE_FOR_INPUT(i64, int64_t)
DEFINE_FOR_INPUT(u64, uint64_t)
DEFINE_FOR_INPUT(f32, float)
DEFINE_FOR_INPUT(f64, double)

typedef void (*zoom_fn)(const zoom_input *, char *, const Py_ssize_t *, const int *, Py_ssize_t, Py_ssize_t);

/* The kernel for a buffer format of a native integer or float type (None: not supported). */
static zoom_fn pick(const char *in_format, Py_ssize_t in_size, const char *out_format)
{
    if (!in_format || !out_format)
        return NULL;
    const uint16_t probe = 1;
    const char native = *(const uint8_t *)&probe ? '<' : '>'; /* the byte order prefix that means native */
    if (*in_format == '=' || *in_format == '@' || *in_format == native)
        in_format++;
    if (*out_format == '=' || *out_format == '@' || *out_format == native)
        out_format++;
    if (strlen(in_format) != 1 || strlen(out_format) != 1 || (*out_format != 'f' && *out_format != 'd'))
        return NULL;
    int wide = *out_format == 'd';
    char c = *in_format;
    int is_signed = c == 'b' || c == 'h' || c == 'i' || c == 'l' || c == 'q';
    int is_unsigned = c == 'B' || c == 'H' || c == 'I' || c == 'L' || c == 'Q';
    if (c == 'f' && in_size == 4)
        return wide ? zoom_f32_d : zoom_f32_f;
    if (c == 'd' && in_size == 8)
        return wide ? zoom_f64_d : zoom_f64_f;
    if (!is_signed && !is_unsigned)
        return NULL;
    switch (in_size) {
    case 1:
        return is_signed ? (wide ? zoom_i8_d : zoom_i8_f) : (wide ? zoom_u8_d : zoom_u8_f);
    case 2:
        return is_signed ? (wide ? zoom_i16_d : zoom_i16_f) : (wide ? zoom_u16_d : zoom_u16_f);
    case 4:
        return is_signed ? (wide ? zoom_i32_d : zoom_i32_f) : (wide ? zoom_u32_d : zoom_u32_f);
    case 8:
        return is_signed ? (wide ? zoom_i64_d : zoom_i64_f) : (wide ? zoom_u64_d : zoom_u64_f);
    }
    return NULL;
}

static PyObject *supports(PyObject *self, PyObject *args)
{
    PyObject *data_obj, *out_obj;
    Py_buffer data, out;
    if (!PyArg_ParseTuple(args, "OO", &data_obj, &out_obj))
        return NULL;
    if (PyObject_GetBuffer(data_obj, &data, PyBUF_RECORDS_RO) < 0)
        return NULL;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_RECORDS) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    int ok = data.ndim == 3 && out.ndim == 3 && pick(data.format, data.itemsize, out.format) != NULL;
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

static PyObject *zoom_range(PyObject *self, PyObject *args)
{
    PyObject *data_obj, *out_obj, *index_obj[3], *weight_obj[3];
    int order[3];
    Py_ssize_t begin, end;
    if (!PyArg_ParseTuple(args, "OO(OOO)(OOO)(iii)nn", &data_obj, &out_obj, &index_obj[0], &index_obj[1],
                          &index_obj[2], &weight_obj[0], &weight_obj[1], &weight_obj[2], &order[0], &order[1],
                          &order[2], &begin, &end))
        return NULL;
    Py_buffer data, out, index[3], weight[3];
    int n_index = 0, n_weight = 0, have_data = 0, have_out = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(data_obj, &data, PyBUF_RECORDS_RO) < 0)
        goto done;
    have_data = 1;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_RECORDS) < 0)
        goto done;
    have_out = 1;
    for (; n_index < 3; n_index++)
        if (PyObject_GetBuffer(index_obj[n_index], &index[n_index], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
    for (; n_weight < 3; n_weight++)
        if (PyObject_GetBuffer(weight_obj[n_weight], &weight[n_weight], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
    zoom_fn fn = data.ndim == 3 && out.ndim == 3 ? pick(data.format, data.itemsize, out.format) : NULL;
    if (!fn) {
        PyErr_SetString(PyExc_TypeError, "zoom_range: 3-D native integer or float input, float32/64 output");
        goto done;
    }
    int seen = 0;
    for (int a = 0; a < 3; a++) {
        if (order[a] < 0 || order[a] > 2 || (seen >> order[a]) & 1) {
            PyErr_SetString(PyExc_ValueError, "zoom_range: the loop order must be a permutation of 0, 1, 2");
            goto done;
        }
        seen |= 1 << order[a];
    }
    zoom_input in = {.data = data.buf};
    for (int a = 0; a < 3; a++) {
        Py_ssize_t n = out.shape[a];
        if (index[a].len != 2 * n * 8 || weight[a].len != 2 * n * 8 || index[a].itemsize != 8
            || weight[a].itemsize != 8 || data.shape[a] < 1) {
            PyErr_SetString(PyExc_ValueError, "zoom_range: per axis 2 x n_out int64 indices and float64 weights");
            goto done;
        }
        const int64_t *ix = index[a].buf;
        for (Py_ssize_t i = 0; i < 2 * n; i++) {
            if (ix[i] < 0 || ix[i] >= data.shape[a]) {
                PyErr_SetString(PyExc_ValueError, "zoom_range: a neighbour index lies outside the input");
                goto done;
            }
        }
        in.strides[a] = data.strides[a];
        in.index[a] = ix;
        in.weight[a] = weight[a].buf;
        in.n_out[a] = n;
    }
    if (begin < 0 || end > out.shape[order[0]] || begin > end) {
        PyErr_SetString(PyExc_ValueError, "zoom_range: the range lies outside the outermost axis");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fn(&in, out.buf, out.strides, order, begin, end);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < n_index; i++)
        PyBuffer_Release(&index[i]);
    for (int i = 0; i < n_weight; i++)
        PyBuffer_Release(&weight[i]);
    if (have_out)
        PyBuffer_Release(&out);
    if (have_data)
        PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"supports", supports, METH_VARARGS,
     "supports(data, out) -> whether zoom_range handles these arrays' types and dimensions."},
    {"zoom_range", zoom_range, METH_VARARGS,
     "zoom_range(data, out, (index0, index1, index2), (weight0, weight1, weight2), (outer, row, inner), begin, "
     "end): the order-1 zoom of data into out for outer-axis positions begin..end-1 (index_a: 2 x n_out int64 "
     "neighbours, weight_a: 2 x n_out float64 weights of axis a)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_linear_zoom", "scipy's order-1 zoom in C, bit for bit.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__linear_zoom(void)
{
    return PyModule_Create(&module);
}
