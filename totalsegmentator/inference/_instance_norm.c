/* The fused forward's instance norm and leaky ReLU in two passes over memory (inference/fused_unet.py).
 *
 * One sample's activations are a flat float32 buffer of voxels x channels, either channels-last (a voxel's
 * channels side by side) or channels-first (a channel's voxels in one row). `moments` sums, per channel, the
 * differences to a pilot value near the channel's mean and their squares over a range of voxels (float32 partial
 * sums, float64 totals); Python adds the ranges of its threads and derives the mean and the scale. `transform` then applies, in place,
 * ((value - mean) * scale + shift), in float32 as torch's sub_ and addcmul do, and the activation. Both release
 * the GIL, so threads can share one norm. Build with -ffp-contract=off: a fused multiply-add would round
 * differently from the torch fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict /* C11's keyword only with /std:c11 */
#endif

/* The loops run over "tiles": channels-last, a whole number of voxels' channels (TILE_VALUES or more values);
 * channel-first, TILE_VALUES voxels of one channel's row. Each loop is a plain one over a tile's values with
 * per-value parameters (the pilot, mean, scale and shift repeated to the tile's length), which compilers
 * vectorise whatever the number of channels. */
#define TILE_VALUES 512
/* tiles summed in float32 before their sums are added to the float64 totals: 128 terms per partial sum, each a
 * difference to a pilot near the mean, so that the float32 rounding stays at the level of torch's statistics */
#define FLUSH 128

/* The loops compiled for AVX-512 and AVX2 as well, chosen at load time (GCC's and clang's function
 * multi-versioning, which needs glibc's ifunc, on x86-64): the baseline's SSE2 holds four floats per register.
 * No sum is reordered between the versions, so all of them give the same results. */
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__))
#define VERSIONED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VERSIONED
#endif

static int is_format(const Py_buffer *view, char code)
{
    const char *f = view->format;
    if (f == NULL)
        return code == 'B';
    if (f[0] == '<' || f[0] == '=' || f[0] == '@')
        f++;
    return f[0] == code && f[1] == '\0';
}

static int get_array(PyObject *obj, Py_buffer *view, int writable, char code, Py_ssize_t itemsize,
                     const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || !is_format(view, code)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous array of %s", name,
                     code == 'f' ? "float32" : "float64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* voxels, and the range [first, last) checked against them */
static int check_layout(const Py_buffer *values, Py_ssize_t channels, Py_ssize_t first, Py_ssize_t last,
                        Py_ssize_t *voxels)
{
    Py_ssize_t count = values->len / (Py_ssize_t)sizeof(float);
    if (channels < 1 || count % channels != 0) {
        PyErr_SetString(PyExc_ValueError, "the values must hold a whole number of voxels of channels >= 1");
        return -1;
    }
    *voxels = count / channels;
    if (first < 0 || first > last || last > *voxels) {
        PyErr_SetString(PyExc_ValueError, "the voxel range lies outside the values");
        return -1;
    }
    return 0;
}

/* channels-last: the fewest whole voxels of at least TILE_VALUES values; channels-first: up to TILE_VALUES of
 * the range's voxels (short rows of the deep stages need no longer tiles) */
static Py_ssize_t tile_length(Py_ssize_t channels, int last_layout, Py_ssize_t range)
{
    if (last_layout)
        return channels * ((TILE_VALUES + channels - 1) / channels);
    return range < 1 ? 1 : (range < TILE_VALUES ? range : TILE_VALUES);
}

/* A voxel range as stretches of memory: channels-last one stretch whose values cycle through all channels
 * (period = channels); channels-first one stretch per channel (period 1). Stretch g starts at start + g * stride,
 * holds count values, and its parameters begin at channel g (always 0 channels-last, where groups is 1). */
typedef struct {
    Py_ssize_t groups, period, count, start, stride;
} stretches;

static stretches stretches_of(Py_ssize_t channels, Py_ssize_t voxels, int last_layout, Py_ssize_t first,
                              Py_ssize_t last)
{
    if (last_layout)
        return (stretches){1, channels, (last - first) * channels, first * channels, 0};
    return (stretches){channels, 1, last - first, first, voxels};
}

/* tile[i] = per_channel[i % period]: the parameters repeated to a tile's length */
static void repeat_to_tile(float *tile, Py_ssize_t length, const float *per_channel, Py_ssize_t period)
{
    for (Py_ssize_t i = 0; i < length; i++)
        tile[i] = per_channel[i % period];
}

/* Adds the differences of x[0..count) to the pilot tile, and their squares, to tile_sums and tile_squares
 * (per position in the tile); count is a whole number of channels when channels-last. */
VERSIONED static void accumulate(const float *restrict x, Py_ssize_t count, const float *restrict pilot,
                                 Py_ssize_t tile, float *restrict part_sums, float *restrict part_squares,
                                 double *restrict tile_sums, double *restrict tile_squares)
{
    Py_ssize_t done = 0;
    while (done < count) {
        for (Py_ssize_t i = 0; i < tile; i++)
            part_sums[i] = part_squares[i] = 0.0f;
        for (int t = 0; t < FLUSH && done < count; t++) {
            const float *restrict values = x + done;
            Py_ssize_t n = count - done < tile ? count - done : tile;
            for (Py_ssize_t i = 0; i < n; i++) {
                float d = values[i] - pilot[i];
                part_sums[i] += d;
                part_squares[i] += d * d;
            }
            done += n;
        }
        for (Py_ssize_t i = 0; i < tile; i++) {
            tile_sums[i] += part_sums[i];
            tile_squares[i] += part_squares[i];
        }
    }
}

static PyObject *moments(PyObject *self, PyObject *args)
{
    PyObject *values_obj, *pilot_obj, *out_obj;
    Py_ssize_t channels, first, last, voxels;
    int last_layout;
    if (!PyArg_ParseTuple(args, "OnpnnOO:moments", &values_obj, &channels, &last_layout, &first, &last,
                          &pilot_obj, &out_obj))
        return NULL;
    Py_buffer values, pilot, out;
    if (get_array(values_obj, &values, 0, 'f', sizeof(float), "values") < 0)
        return NULL;
    if (get_array(pilot_obj, &pilot, 0, 'f', sizeof(float), "pilot") < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (get_array(out_obj, &out, 1, 'd', sizeof(double), "out") < 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&pilot);
        return NULL;
    }
    PyObject *result = NULL;
    if (check_layout(&values, channels, first, last, &voxels) < 0)
        goto done;
    if (pilot.len != channels * (Py_ssize_t)sizeof(float) || out.len != 2 * channels * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "pilot needs one float32 per channel and out two float64");
        goto done;
    }
    double *sums = (double *)out.buf, *squares = sums + channels;
    Py_ssize_t tile = tile_length(channels, last_layout, last - first);
    float *buffer = PyMem_Malloc(3 * tile * sizeof(float));
    double *totals = PyMem_Malloc(2 * tile * sizeof(double));
    if (buffer == NULL || totals == NULL) {
        PyMem_Free(buffer);
        PyMem_Free(totals);
        PyErr_NoMemory();
        goto done;
    }
    const float *x = (const float *)values.buf, *p = (const float *)pilot.buf;
    float *pilot_tile = buffer, *part_sums = buffer + tile, *part_squares = buffer + 2 * tile;
    double *tile_sums = totals, *tile_squares = totals + tile;
    stretches w = stretches_of(channels, voxels, last_layout, first, last);
    Py_BEGIN_ALLOW_THREADS
    memset(sums, 0, 2 * channels * sizeof(double));
    for (Py_ssize_t g = 0; g < w.groups; g++) {
        repeat_to_tile(pilot_tile, tile, p + g, w.period);
        memset(totals, 0, 2 * tile * sizeof(double));
        accumulate(x + w.start + g * w.stride, w.count, pilot_tile, tile, part_sums, part_squares, tile_sums,
                   tile_squares);
        for (Py_ssize_t i = 0; i < tile; i++) {
            sums[g + i % w.period] += tile_sums[i];
            squares[g + i % w.period] += tile_squares[i];
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(buffer);
    PyMem_Free(totals);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&pilot);
    PyBuffer_Release(&out);
    return result;
}

/* x[0..count) = act((x - mean) * scale + shift) with per-position parameter tiles (count a whole number of
 * channels when channels-last); act is torch's: none (mode 0), relu (1: negative values to 0, NaN kept) or
 * leaky_relu (2: x > 0 ? x : x * slope, which the form below equals for -0 and NaN too). One loop per mode, so
 * that each vectorises. */
#define APPLY_LOOP(ACTIVATE)                                                                                  \
    for (Py_ssize_t done = 0; done < count; done += tile) {                                                  \
        float *restrict values = x + done;                                                                   \
        Py_ssize_t n = count - done < tile ? count - done : tile;                                            \
        for (Py_ssize_t i = 0; i < n; i++) {                                                                 \
            float y = shift[i] + (values[i] - mean[i]) * scale[i];                                           \
            values[i] = ACTIVATE;                                                                            \
        }                                                                                                    \
    }

VERSIONED static void apply(float *restrict x, Py_ssize_t count, const float *restrict mean,
                            const float *restrict scale, const float *restrict shift, Py_ssize_t tile, int mode,
                            float slope)
{
    if (mode == 0) {
        APPLY_LOOP(y)
    } else if (mode == 1) {
        APPLY_LOOP(y < 0.0f ? 0.0f : y)
    } else {
        APPLY_LOOP(y < 0.0f ? y * slope : y)
    }
}

static PyObject *transform(PyObject *self, PyObject *args)
{
    PyObject *values_obj, *mean_obj, *scale_obj, *shift_obj, *slope_obj;
    Py_ssize_t channels, first, last, voxels;
    int last_layout;
    if (!PyArg_ParseTuple(args, "OnpnnOOOO:transform", &values_obj, &channels, &last_layout, &first, &last,
                          &mean_obj, &scale_obj, &shift_obj, &slope_obj))
        return NULL;
    int mode = 0; /* 0: no activation, 1: ReLU, 2: leaky ReLU */
    float slope = 0.0f;
    if (slope_obj != Py_None) {
        double s = PyFloat_AsDouble(slope_obj);
        if (s == -1.0 && PyErr_Occurred())
            return NULL;
        slope = (float)s;
        mode = s == 0.0 ? 1 : 2;
    }
    Py_buffer values, params[3];
    PyObject *param_objs[3] = {mean_obj, scale_obj, shift_obj};
    const char *names[3] = {"mean", "scale", "shift"};
    if (get_array(values_obj, &values, 1, 'f', sizeof(float), "values") < 0)
        return NULL;
    int got = 0;
    PyObject *result = NULL;
    for (; got < 3; got++)
        if (get_array(param_objs[got], &params[got], 0, 'f', sizeof(float), names[got]) < 0)
            goto done;
    if (check_layout(&values, channels, first, last, &voxels) < 0)
        goto done;
    for (int i = 0; i < 3; i++)
        if (params[i].len != channels * (Py_ssize_t)sizeof(float)) {
            PyErr_Format(PyExc_ValueError, "%s needs one float32 per channel", names[i]);
            goto done;
        }
    const float *m = (const float *)params[0].buf, *a = (const float *)params[1].buf,
                *b = (const float *)params[2].buf;
    Py_ssize_t tile = tile_length(channels, last_layout, last - first);
    float *tiles = PyMem_Malloc(3 * tile * sizeof(float));
    if (tiles == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    float *x = (float *)values.buf, *mean_tile = tiles, *scale_tile = tiles + tile, *shift_tile = tiles + 2 * tile;
    stretches w = stretches_of(channels, voxels, last_layout, first, last);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < w.groups; g++) {
        repeat_to_tile(mean_tile, tile, m + g, w.period);
        repeat_to_tile(scale_tile, tile, a + g, w.period);
        repeat_to_tile(shift_tile, tile, b + g, w.period);
        apply(x + w.start + g * w.stride, w.count, mean_tile, scale_tile, shift_tile, tile, mode, slope);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(tiles);
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&params[i]);
    PyBuffer_Release(&values);
    return result;
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS,
     "moments(values, channels, channels_last, first, last, pilot, out): per channel, the sums of (value - "
     "pilot) and of its square over voxels [first, last), float64 totals into out (sums, then squares)."},
    {"transform", transform, METH_VARARGS,
     "transform(values, channels, channels_last, first, last, mean, scale, shift, slope): in place over voxels "
     "[first, last), value = act((value - mean) * scale + shift), float32; slope None: no activation, 0: ReLU, "
     "else leaky ReLU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_instance_norm", NULL, -1, methods};

PyMODINIT_FUNC PyInit__instance_norm(void) { return PyModule_Create(&module); }
