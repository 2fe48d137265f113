/* cmp._core shared values and arrays: the memory and the hot paths behind
 * cmp.sharedctypes (Value, Array, RawValue, RawArray).
 *
 * SharedValue and SharedArray hold items of one simple ctypes type (type code
 * b B h H i I l L q Q f d ? c u) in a block of the shared-memory arena
 * (src/core/shm.c): `.value`, indexing and slicing convert straight between
 * the memory and Python objects, with ctypes' conversion rules and messages.
 * Both export the buffer protocol, and _as_ctypes() gives (once, cached) a
 * ctypes object over the same memory for code that wants one.
 *
 * Synchronized, SynchronizedArray and SynchronizedString wrap such an object
 * (or any ctypes object) with a lock, as the stdlib's classes do. When the
 * lock is a cmp lock, `with lock:` around each access is two C calls
 * (cmp_semlock_enter/exit); otherwise the lock's __enter__/__exit__ are
 * called. cmp.sharedctypes subclasses all five types. */
#include "module.h"
#include "shm.h"

#include <stdbool.h>
#include <string.h>
#include <structmember.h>
#include <unistd.h>
#include <wchar.h>

/* ======================================================================== */
/* Items: one simple ctypes type                                            */

/* Bytes per item of a type code; 0 for an unknown code. */
static Py_ssize_t
code_size(char code)
{
    switch (code) {
    case 'b':
    case 'B':
    case 'c':
    case '?': return 1;
    case 'h':
    case 'H': return sizeof(short);
    case 'i':
    case 'I': return sizeof(int);
    case 'l':
    case 'L': return sizeof(long);
    case 'q':
    case 'Q': return sizeof(long long);
    case 'f': return sizeof(float);
    case 'd': return sizeof(double);
    case 'u': return sizeof(wchar_t);
    default: return 0;
    }
}

/* The item at p as a Python object (what ctypes' getfunc returns). */
static inline PyObject *
item_get(char code, const char *p)
{
    switch (code) {
    case 'b': return PyLong_FromLong(*(const signed char *)p);
    case 'B': return PyLong_FromLong(*(const unsigned char *)p);
    case 'h': return PyLong_FromLong(*(const short *)p);
    case 'H': return PyLong_FromLong(*(const unsigned short *)p);
    case 'i': return PyLong_FromLong(*(const int *)p);
    case 'I': return PyLong_FromUnsignedLong(*(const unsigned int *)p);
    case 'l': return PyLong_FromLong(*(const long *)p);
    case 'L': return PyLong_FromUnsignedLong(*(const unsigned long *)p);
    case 'q': return PyLong_FromLongLong(*(const long long *)p);
    case 'Q': return PyLong_FromUnsignedLongLong(*(const unsigned long long *)p);
    case 'f': return PyFloat_FromDouble(*(const float *)p);
    case 'd': return PyFloat_FromDouble(*(const double *)p);
    case '?': return PyBool_FromLong(*(const unsigned char *)p != 0);
    case 'c': return PyBytes_FromStringAndSize(p, 1);
    case 'u': return PyUnicode_FromWideChar((const wchar_t *)p, 1);
    default: PyErr_SetString(PyExc_SystemError, "cmp: bad type code"); return NULL;
    }
}

/* Store v at p as ctypes' setfunc does: integers wrap (masked), floats and
 * ints for f/d, any object's truth for ?, a byte for c, a character for u.
 * 0, or -1 with ctypes' exception set. */
static inline int
item_set(char code, char *p, PyObject *v)
{
    switch (code) {
    case 'b':
    case 'B':
    case 'h':
    case 'H':
    case 'i':
    case 'I':
    case 'l':
    case 'L':
    case 'q':
    case 'Q': {
        unsigned long long x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        switch (code) {
        case 'b':
        case 'B': *(unsigned char *)p = (unsigned char)x; break;
        case 'h':
        case 'H': *(unsigned short *)p = (unsigned short)x; break;
        case 'i':
        case 'I': *(unsigned int *)p = (unsigned int)x; break;
        case 'l':
        case 'L': *(unsigned long *)p = (unsigned long)x; break;
        default: *(unsigned long long *)p = x; break;
        }
        return 0;
    }
    case 'f':
    case 'd': {
        double x = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyFloat_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred())
            return -1;
        if (code == 'f')
            *(float *)p = (float)x;
        else
            *(double *)p = x;
        return 0;
    }
    case '?': {
        int t = PyObject_IsTrue(v);
        if (t < 0)
            return -1;
        *(unsigned char *)p = (unsigned char)t;
        return 0;
    }
    case 'c':
        if (PyBytes_Check(v) && PyBytes_GET_SIZE(v) == 1) {
            *p = PyBytes_AS_STRING(v)[0];
            return 0;
        }
        if (PyByteArray_Check(v) && PyByteArray_GET_SIZE(v) == 1) {
            *p = PyByteArray_AS_STRING(v)[0];
            return 0;
        }
        if (PyLong_Check(v)) {
            int overflow;
            long x = PyLong_AsLongAndOverflow(v, &overflow);
            if (x == -1 && PyErr_Occurred())
                return -1;
            if (!overflow && x >= 0 && x < 256) {
                *p = (char)x;
                return 0;
            }
        }
        PyErr_SetString(PyExc_TypeError, "one character bytes, bytearray or integer expected");
        return -1;
    case 'u': {
        if (!PyUnicode_Check(v)) {
            PyErr_Format(PyExc_TypeError, "unicode string expected instead of %s instance",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
        wchar_t ch[2];
        Py_ssize_t n = PyUnicode_AsWideChar(v, ch, 2);
        if (n < 0)
            return -1;
        if (n != 1) {
            PyErr_SetString(PyExc_TypeError, "one character unicode string expected");
            return -1;
        }
        *(wchar_t *)p = ch[0];
        return 0;
    }
    default: PyErr_SetString(PyExc_SystemError, "cmp: bad type code"); return -1;
    }
}

/* ======================================================================== */
/* SharedValue / SharedArray                                                */

typedef struct {
    PyObject_HEAD
    char *data;        /* blk.addr */
    Py_ssize_t length; /* items (1 for a value) */
    Py_ssize_t itemsize;
    Py_ssize_t nbytes;
    char code;      /* type code, see code_size() */
    char format[3]; /* the buffer's format string */
    int is_array;
    PyObject *ctype; /* the ctypes item type (c_int, ...) */
    PyObject *ctobj; /* cached ctypes object over data, or NULL */
    cmp_shm_block blk;
} CmpShared;

/* The format a buffer of these items has; 'u' as ctypes spells it. */
static void
set_format(CmpShared *self)
{
    if (self->code == 'u') {
        strcpy(self->format, "<u");
    }
    else {
        self->format[0] = self->code;
        self->format[1] = '\0';
    }
}

/* A zeroed object in fresh arena memory, or (fd >= 0) over the block at
 * offset `off` of the segment open as fd, which it takes over (closing it if
 * the arguments are bad). */
static PyObject *
shared_create(PyTypeObject *type, PyObject *ctype, PyObject *code_obj, Py_ssize_t length,
              int is_array, int fd, Py_ssize_t off)
{
    char code = 0;
    if (PyUnicode_Check(code_obj) && PyUnicode_GET_LENGTH(code_obj) == 1
        && PyUnicode_READ_CHAR(code_obj, 0) < 128)
        code = (char)PyUnicode_READ_CHAR(code_obj, 0);
    Py_ssize_t itemsize = code_size(code);
    if (itemsize == 0) {
        PyErr_Format(PyExc_ValueError, "bad type code %R", code_obj);
        goto bad_args;
    }
    if (length < 0) {
        PyErr_Format(PyExc_ValueError, "Array length must be >= 0, not %zd", length);
        goto bad_args;
    }
    if (length > PY_SSIZE_T_MAX / itemsize) {
        PyErr_SetString(PyExc_OverflowError, "array too large");
        goto bad_args;
    }
    CmpShared *self = (CmpShared *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto bad_args;
    self->code = code;
    self->itemsize = itemsize;
    self->length = length;
    self->nbytes = length * itemsize;
    self->is_array = is_array;
    set_format(self);
    self->ctype = Py_NewRef(ctype);
    int st = fd >= 0 ? cmp_shm_attach(fd, (size_t)off, (size_t)self->nbytes, &self->blk)
                     : cmp_shm_alloc((size_t)self->nbytes, 16, &self->blk);
    if (st != CMP_OK) {
        Py_DECREF(self);
        return cmp_set_error(st);
    }
    self->data = self->blk.addr;
    return (PyObject *)self;

bad_args:
    if (fd >= 0)
        close(fd);
    return NULL;
}

static PyObject *
value_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctype", "code", NULL};
    PyObject *ctype, *code;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU:SharedValue", kwlist, &ctype, &code))
        return NULL;
    return shared_create(type, ctype, code, 1, 0, -1, 0);
}

static PyObject *
array_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctype", "code", "length", NULL};
    PyObject *ctype, *code;
    Py_ssize_t length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OUn:SharedArray", kwlist, &ctype, &code, &length))
        return NULL;
    return shared_create(type, ctype, code, length, 1, -1, 0);
}

static int
shared_traverse(CmpShared *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->ctype);
    Py_VISIT(self->ctobj);
    return 0;
}

/* The cached ctypes object refers back to this one (through the buffer it
 * exports): that is the cycle to break. The item type stays, so the object
 * keeps working if anything still reaches it. */
static int
shared_clear(CmpShared *self)
{
    Py_CLEAR(self->ctobj);
    return 0;
}

static void
shared_dealloc(CmpShared *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    shared_clear(self);
    Py_CLEAR(self->ctype);
    if (self->data != NULL)
        cmp_shm_free(&self->blk);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------------ */
/* .value                                                                   */

static PyObject *
value_get_value(CmpShared *self, void *Py_UNUSED(closure))
{
    return item_get(self->code, self->data);
}

static int
value_set_value(CmpShared *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "can't delete attribute");
        return -1;
    }
    return item_set(self->code, self->data, v);
}

/* AttributeError for an attribute only some arrays have, naming the array
 * as ctypes does ('c_int_Array_3'). Returns -1. */
static int
no_attribute(CmpShared *self, const char *attr)
{
    PyObject *name = PyObject_GetAttrString(self->ctype, "__name__");
    if (name == NULL)
        return -1;
    PyErr_Format(PyExc_AttributeError, "'%U_Array_%zd' object has no attribute '%s'", name,
                 self->length, attr);
    Py_DECREF(name);
    return -1;
}

/* A 'c' array's .value: the bytes before the first NUL; a 'u' array's: the
 * characters before the first NUL. Other arrays have no .value. */
static PyObject *
array_get_value(CmpShared *self, void *Py_UNUSED(closure))
{
    if (self->code == 'c')
        return PyBytes_FromStringAndSize(self->data,
                                         (Py_ssize_t)strnlen(self->data, (size_t)self->length));
    if (self->code == 'u') {
        const wchar_t *w = (const wchar_t *)self->data;
        return PyUnicode_FromWideChar(w, (Py_ssize_t)wcsnlen(w, (size_t)self->length));
    }
    no_attribute(self, "value");
    return NULL;
}

static int
array_set_value(CmpShared *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "can't delete attribute");
        return -1;
    }
    if (self->code == 'c') {
        if (!PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "bytes expected instead of %s instance",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(v);
        if (n > self->length) {
            PyErr_SetString(PyExc_ValueError, "byte string too long");
            return -1;
        }
        memcpy(self->data, PyBytes_AS_STRING(v), (size_t)n);
        if (n < self->length)
            self->data[n] = '\0';
        return 0;
    }
    if (self->code == 'u') {
        if (!PyUnicode_Check(v)) {
            PyErr_Format(PyExc_TypeError, "unicode string expected instead of %s instance",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
        Py_ssize_t n = PyUnicode_AsWideChar(v, NULL, 0); /* with the NUL */
        if (n < 0)
            return -1;
        if (n - 1 > self->length) {
            PyErr_SetString(PyExc_ValueError, "string too long");
            return -1;
        }
        if (PyUnicode_AsWideChar(v, (wchar_t *)self->data, n <= self->length ? n : self->length)
            < 0)
            return -1;
        return 0;
    }
    return no_attribute(self, "value");
}

/* A 'c' array's .raw: all its bytes; setting copies a bytes-like object in. */
static PyObject *
array_get_raw(CmpShared *self, void *Py_UNUSED(closure))
{
    if (self->code != 'c') {
        no_attribute(self, "raw");
        return NULL;
    }
    return PyBytes_FromStringAndSize(self->data, self->length);
}

static int
array_set_raw(CmpShared *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (self->code != 'c') {
        return no_attribute(self, "raw");
    }
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "can't delete attribute");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int rc = 0;
    if (view.len > self->length) {
        PyErr_SetString(PyExc_ValueError, "byte string too long");
        rc = -1;
    }
    else {
        memcpy(self->data, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Indexing and slicing, with ctypes' Array rules and messages              */

static PyObject *
array_item(CmpShared *self, Py_ssize_t i)
{
    if (i < 0 || i >= self->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return NULL;
    }
    return item_get(self->code, self->data + i * self->itemsize);
}

static Py_ssize_t
array_length(CmpShared *self)
{
    return self->length;
}

/* Items [start, start+step*n) as a list (bytes for 'c', str for 'u'). */
static PyObject *
array_slice(CmpShared *self, Py_ssize_t start, Py_ssize_t step, Py_ssize_t n)
{
    if (self->code == 'c') {
        if (step == 1)
            return PyBytes_FromStringAndSize(self->data + start, n);
        PyObject *b = PyBytes_FromStringAndSize(NULL, n);
        if (b == NULL)
            return NULL;
        char *out = PyBytes_AS_STRING(b);
        for (Py_ssize_t k = 0, i = start; k < n; k++, i += step)
            out[k] = self->data[i];
        return b;
    }
    if (self->code == 'u') {
        const wchar_t *w = (const wchar_t *)self->data;
        if (step == 1)
            return PyUnicode_FromWideChar(w + start, n);
        wchar_t *tmp = PyMem_New(wchar_t, n > 0 ? n : 1);
        if (tmp == NULL)
            return PyErr_NoMemory();
        for (Py_ssize_t k = 0, i = start; k < n; k++, i += step)
            tmp[k] = w[i];
        PyObject *s = PyUnicode_FromWideChar(tmp, n);
        PyMem_Free(tmp);
        return s;
    }
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    PyObject **items = ((PyListObject *)list)->ob_item;

    /* One loop per type, so the conversion inlines. */
#define CMP_SLICE_LOOP(ctype, make)                                \
    do {                                                           \
        const ctype *src = (const ctype *)self->data;              \
        for (Py_ssize_t k = 0, i = start; k < n; k++, i += step) { \
            PyObject *o = make(src[i]);                            \
            if (o == NULL)                                         \
                goto error;                                        \
            items[k] = o;                                          \
        }                                                          \
    } while (0)

    switch (self->code) {
    case 'b': CMP_SLICE_LOOP(signed char, PyLong_FromLong); break;
    case 'B': CMP_SLICE_LOOP(unsigned char, PyLong_FromLong); break;
    case 'h': CMP_SLICE_LOOP(short, PyLong_FromLong); break;
    case 'H': CMP_SLICE_LOOP(unsigned short, PyLong_FromLong); break;
    case 'i': CMP_SLICE_LOOP(int, PyLong_FromLong); break;
    case 'I': CMP_SLICE_LOOP(unsigned int, PyLong_FromUnsignedLong); break;
    case 'l': CMP_SLICE_LOOP(long, PyLong_FromLong); break;
    case 'L': CMP_SLICE_LOOP(unsigned long, PyLong_FromUnsignedLong); break;
    case 'q': CMP_SLICE_LOOP(long long, PyLong_FromLongLong); break;
    case 'Q': CMP_SLICE_LOOP(unsigned long long, PyLong_FromUnsignedLongLong); break;
    case 'f': CMP_SLICE_LOOP(float, PyFloat_FromDouble); break;
    case 'd': CMP_SLICE_LOOP(double, PyFloat_FromDouble); break;
    default:
        for (Py_ssize_t k = 0, i = start; k < n; k++, i += step) {
            PyObject *o = item_get(self->code, self->data + i * self->itemsize);
            if (o == NULL)
                goto error;
            items[k] = o;
        }
        break;
    }
#undef CMP_SLICE_LOOP
    return list;

error:
    Py_DECREF(list); /* unfilled slots are NULL */
    return NULL;
}

static PyObject *
array_subscript(CmpShared *self, PyObject *key)
{
    if (PyLong_CheckExact(key)) { /* the common case, without __index__ */
        Py_ssize_t i = PyLong_AsSsize_t(key);
        if (i == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            i = PyNumber_AsSsize_t(key, PyExc_IndexError);
            if (i == -1 && PyErr_Occurred())
                return NULL;
        }
        if (i < 0)
            i += self->length;
        return array_item(self, i);
    }
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += self->length;
        return array_item(self, i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return NULL;
        Py_ssize_t n = PySlice_AdjustIndices(self->length, &start, &stop, step);
        return array_slice(self, start, step, n);
    }
    PyErr_SetString(PyExc_TypeError, "indices must be integers");
    return NULL;
}

static int
array_ass_item(CmpShared *self, Py_ssize_t i, PyObject *v)
{
    if (i < 0 || i >= self->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return -1;
    }
    return item_set(self->code, self->data + i * self->itemsize, v);
}

static int
array_ass_slice(CmpShared *self, Py_ssize_t start, Py_ssize_t step, Py_ssize_t n, PyObject *v)
{
    Py_ssize_t vlen = PySequence_Size(v);
    if (vlen != n) {
        if (vlen < 0)
            PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "Can only assign sequence of same size");
        return -1;
    }
    if (self->code == 'c' && step == 1 && PyBytes_Check(v)) {
        memcpy(self->data + start, PyBytes_AS_STRING(v), (size_t)n);
        return 0;
    }
    /* Item by item, as ctypes: a bad item leaves the ones before it set. */
    char *p = self->data + start * self->itemsize;
    Py_ssize_t stride = step * self->itemsize;
    int is_list = PyList_CheckExact(v), is_tuple = PyTuple_CheckExact(v);
    for (Py_ssize_t k = 0; k < n; k++, p += stride) {
        PyObject *item;
        if (is_tuple)
            item = Py_NewRef(PyTuple_GET_ITEM(v, k));
        else if (is_list && k < PyList_GET_SIZE(v)) /* a conversion may shrink it */
            item = Py_NewRef(PyList_GET_ITEM(v, k));
        else
            item = PySequence_GetItem(v, k);
        if (item == NULL)
            return -1;
        int rc = item_set(self->code, p, item);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Item or slice assignment; deletion is a TypeError, as in ctypes. */
static int
array_ass_subscript(CmpShared *self, PyObject *key, PyObject *v)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "Array does not support item deletion");
        return -1;
    }
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (i < 0)
            i += self->length;
        return array_ass_item(self, i, v);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return -1;
        Py_ssize_t n = PySlice_AdjustIndices(self->length, &start, &stop, step);
        return array_ass_slice(self, start, step, n, v);
    }
    PyErr_SetString(PyExc_TypeError, "indices must be integer");
    return -1;
}

static int
array_sq_ass_item(CmpShared *self, Py_ssize_t i, PyObject *v)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "Array does not support item deletion");
        return -1;
    }
    return array_ass_item(self, i, v);
}

/* ------------------------------------------------------------------------ */
/* Buffer protocol, ctypes view, sharing                                    */

static int
shared_getbuffer(CmpShared *self, Py_buffer *view, int flags)
{
    view->buf = self->data;
    view->obj = Py_NewRef(self);
    view->len = self->nbytes;
    view->readonly = 0;
    view->itemsize = self->itemsize;
    view->format = (flags & PyBUF_FORMAT) ? self->format : NULL;
    view->ndim = self->is_array ? 1 : 0;
    view->shape = NULL;
    view->strides = NULL;
    if (self->is_array) {
        if (flags & PyBUF_ND)
            view->shape = &self->length;
        if ((flags & PyBUF_STRIDES) == PyBUF_STRIDES)
            view->strides = &self->itemsize;
    }
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

PyDoc_STRVAR(shared_as_ctypes_doc,
             "_as_ctypes($self, /)\n"
             "--\n"
             "\n"
             "The ctypes object (c_int, c_int_Array_N, ...) over the same memory,\n"
             "made once and then cached.");

static PyObject *
shared_as_ctypes(CmpShared *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ctobj != NULL)
        return Py_NewRef(self->ctobj);
    PyObject *obj = NULL;
    PyObject *type = self->is_array ? PyObject_CallMethod((PyObject *)self, "_ctypes_type", NULL)
                                    : Py_NewRef(self->ctype);
    if (type == NULL)
        goto done;
    obj = PyObject_CallMethod(type, "from_buffer", "O", (PyObject *)self);
    if (obj != NULL && self->ctobj == NULL)
        self->ctobj = Py_NewRef(obj);
done:
    Py_XDECREF(type);
    return obj;
}

static PyObject *
shared_ctypes_type(CmpShared *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->is_array)
        return Py_NewRef(self->ctype);
    PyObject *n = PyLong_FromSsize_t(self->length);
    if (n == NULL)
        return NULL;
    PyObject *type = PyNumber_Multiply(self->ctype, n);
    Py_DECREF(n);
    return type;
}

static PyObject *
shared_shm_handle(CmpShared *self, PyObject *Py_UNUSED(ignored))
{
    int fd = cmp_shm_share(&self->blk);
    return Py_BuildValue("(in)", fd, (Py_ssize_t)self->blk.off);
}

PyDoc_STRVAR(shared_rebuild_doc,
             "_rebuild($type, fd, offset, ctype, code, length, /)\n"
             "--\n"
             "\n"
             "The array (a value if length is -1) whose memory is at offset of the shared\n"
             "segment open as fd (which it takes over), as passed to a child started by\n"
             "spawn or forkserver.");

static PyObject *
shared_rebuild(PyTypeObject *type, PyObject *args)
{
    int fd;
    Py_ssize_t off, length;
    PyObject *ctype, *code;
    if (!PyArg_ParseTuple(args, "inOUn:_rebuild", &fd, &off, &ctype, &code, &length))
        return NULL;
    if (fd < 0 || off < 0) {
        PyErr_SetString(PyExc_ValueError, "bad descriptor or offset");
        return NULL;
    }
    int is_array = length >= 0;
    return shared_create(type, ctype, code, is_array ? length : 1, is_array, fd, off);
}

PyDoc_STRVAR(shared_copy_doc, "_copy($self, /)\n"
                              "--\n"
                              "\n"
                              "A new object (in new shared memory) with the same items.");

static PyObject *
shared_copy(CmpShared *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *code = PyUnicode_FromOrdinal((unsigned char)self->code);
    if (code == NULL)
        return NULL;
    CmpShared *copy = (CmpShared *)shared_create(Py_TYPE(self), self->ctype, code, self->length,
                                                 self->is_array, -1, 0);
    Py_DECREF(code);
    if (copy != NULL)
        memcpy(copy->data, self->data, (size_t)self->nbytes);
    return (PyObject *)copy;
}

static PyObject *
shared_code(CmpShared *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromOrdinal((unsigned char)self->code);
}

static PyMethodDef shared_methods[] = {
        {"_as_ctypes", (PyCFunction)shared_as_ctypes, METH_NOARGS, shared_as_ctypes_doc},
        {"_ctypes_type", (PyCFunction)shared_ctypes_type, METH_NOARGS,
         "_ctypes_type($self, /)\n"
         "--\n"
         "\n"
         "The ctypes type of _as_ctypes(): the item type, or an array type of it."},
        {"_shm_handle", (PyCFunction)shared_shm_handle, METH_NOARGS,
         "_shm_handle($self, /)\n"
         "--\n"
         "\n"
         "(fd, offset) of the memory, to pass to a child."},
        {"_rebuild", (PyCFunction)shared_rebuild, METH_VARARGS | METH_CLASS, shared_rebuild_doc},
        {"_copy", (PyCFunction)shared_copy, METH_NOARGS, shared_copy_doc},
        {NULL, NULL, 0, NULL},
};

static PyMemberDef shared_members[] = {
        {"_type_", T_OBJECT, offsetof(CmpShared, ctype), READONLY, "The ctypes item type."},
        {"_length_", T_PYSSIZET, offsetof(CmpShared, length), READONLY, "Items (1 for a value)."},
        {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef value_getset[] = {
        {"value", (getter)value_get_value, (setter)value_set_value, "The value.", NULL},
        {"_code", (getter)shared_code, NULL, "The type code.", NULL},
        {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef array_getset[] = {
        {"value", (getter)array_get_value, (setter)array_set_value,
         "'c' arrays: the bytes before the first NUL; 'u': the characters.", NULL},
        {"raw", (getter)array_get_raw, (setter)array_set_raw, "'c' arrays: all the bytes.", NULL},
        {"_code", (getter)shared_code, NULL, "The type code.", NULL},
        {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot value_slots[] = {
        {Py_tp_doc, "SharedValue(ctype, code): one zeroed item of a simple ctypes type in "
                    "shared memory."},
        {Py_tp_new, value_new},
        {Py_tp_dealloc, shared_dealloc},
        {Py_tp_traverse, shared_traverse},
        {Py_tp_clear, shared_clear},
        {Py_tp_methods, shared_methods},
        {Py_tp_members, shared_members},
        {Py_tp_getset, value_getset},
        {Py_bf_getbuffer, shared_getbuffer},
        {0, NULL},
};

static PyType_Spec value_spec = {
        .name = "cmp._core.SharedValue",
        .basicsize = sizeof(CmpShared),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = value_slots,
};

static PyType_Slot array_slots[] = {
        {Py_tp_doc, "SharedArray(ctype, code, length): zeroed items of a simple ctypes type "
                    "in shared memory."},
        {Py_tp_new, array_new},
        {Py_tp_dealloc, shared_dealloc},
        {Py_tp_traverse, shared_traverse},
        {Py_tp_clear, shared_clear},
        {Py_tp_methods, shared_methods},
        {Py_tp_members, shared_members},
        {Py_tp_getset, array_getset},
        {Py_bf_getbuffer, shared_getbuffer},
        {Py_sq_length, array_length},
        {Py_sq_item, array_item},
        {Py_sq_ass_item, array_sq_ass_item},
        {Py_mp_length, array_length},
        {Py_mp_subscript, array_subscript},
        {Py_mp_ass_subscript, array_ass_subscript},
        {0, NULL},
};

static PyType_Spec array_spec = {
        .name = "cmp._core.SharedArray",
        .basicsize = sizeof(CmpShared),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = array_slots,
};

/* Whether obj is a SharedValue or SharedArray (or a subclass of one). */
static CmpShared *
as_shared(PyObject *obj)
{
    for (PyTypeObject *t = Py_TYPE(obj); t != NULL; t = t->tp_base) {
        if (t->tp_dealloc == (destructor)shared_dealloc)
            return (CmpShared *)obj;
    }
    return NULL;
}

/* ======================================================================== */
/* Synchronized wrappers                                                    */

typedef struct {
    PyObject_HEAD
    PyObject *obj; /* the wrapped object */
    PyObject *lock;
    PyObject *acquire; /* lock.acquire and lock.release, as the stdlib */
    PyObject *release; /* keeps them on the wrapper */
    CmpShared *data;   /* obj, when it is one of ours: C accessors */
    int fast;          /* lock is a cmp lock: C enter/exit */
} CmpSync;

/* `with lock:` around every access, as the stdlib's `with self:`. */
static inline int
sync_enter(CmpSync *self)
{
    if (CMP_LIKELY(self->fast))
        return cmp_semlock_enter(self->lock);
    PyObject *r = PyObject_CallMethod(self->lock, "__enter__", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Leave the lock; an exception already set (the access failed) is kept. */
static inline int
sync_exit(CmpSync *self)
{
    if (CMP_LIKELY(self->fast && !PyErr_Occurred()))
        return cmp_semlock_exit(self->lock);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int rc;
    if (self->fast) {
        rc = cmp_semlock_exit(self->lock);
    }
    else {
        PyObject *r = PyObject_CallMethod(self->lock, "__exit__", "OOO", Py_None, Py_None, Py_None);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    if (type != NULL) {
        if (rc < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return rc;
}

static PyObject *
sync_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"obj", "lock", NULL};
    PyObject *obj, *lock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Synchronized", kwlist, &obj, &lock))
        return NULL;
    CmpSync *self = (CmpSync *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->obj = Py_NewRef(obj);
    self->lock = Py_NewRef(lock);
    self->data = as_shared(obj);
    self->acquire = PyObject_GetAttrString(lock, "acquire");
    if (self->acquire == NULL)
        goto error;
    self->release = PyObject_GetAttrString(lock, "release");
    if (self->release == NULL)
        goto error;
    self->fast = cmp_semlock_check(lock);
    if (self->fast < 0)
        goto error;
    return (PyObject *)self;

error:
    Py_DECREF(self);
    return NULL;
}

static int
sync_init(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    return 0; /* all done in __new__ */
}

static int
sync_traverse(CmpSync *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->obj);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    return 0;
}

static int
sync_clear(CmpSync *self)
{
    self->data = NULL;
    self->fast = 0;
    Py_CLEAR(self->obj);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    return 0;
}

static void
sync_dealloc(CmpSync *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    sync_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* A wrapper whose fields tp_clear emptied (in a reference cycle being
 * collected) must not be used. */
static inline int
sync_check(CmpSync *self)
{
    if (CMP_UNLIKELY(self->lock == NULL)) {
        PyErr_SetString(PyExc_ValueError, "synchronized wrapper is cleared");
        return -1;
    }
    return 0;
}

static PyObject *
sync_get_obj(CmpSync *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_check(self) < 0)
        return NULL;
    if (self->data != NULL)
        return shared_as_ctypes(self->data, NULL);
    return Py_NewRef(self->obj);
}

static PyObject *
sync_get_lock(CmpSync *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_check(self) < 0)
        return NULL;
    return Py_NewRef(self->lock);
}

static PyObject *
sync_enter_method(CmpSync *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_check(self) < 0)
        return NULL;
    if (self->fast) {
        if (cmp_semlock_enter(self->lock) < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    return PyObject_CallMethod(self->lock, "__enter__", NULL);
}

static PyObject *
sync_exit_method(CmpSync *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (sync_check(self) < 0)
        return NULL;
    if (self->fast) {
        if (cmp_semlock_exit(self->lock) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *meth = PyObject_GetAttrString(self->lock, "__exit__");
    if (meth == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(meth, args, (size_t)nargs, NULL);
    Py_DECREF(meth);
    return r;
}

static int
sync_getbuffer(CmpSync *self, Py_buffer *view, int flags)
{
    if (sync_check(self) < 0)
        return -1;
    return PyObject_GetBuffer(self->obj, view, flags);
}

static PyMethodDef sync_methods[] = {
        {"get_obj", (PyCFunction)sync_get_obj, METH_NOARGS,
         "get_obj($self, /)\n"
         "--\n"
         "\n"
         "The wrapped object (a ctypes object over the shared memory)."},
        {"get_lock", (PyCFunction)sync_get_lock, METH_NOARGS,
         "get_lock($self, /)\n"
         "--\n"
         "\n"
         "The lock."},
        {"__enter__", (PyCFunction)sync_enter_method, METH_NOARGS,
         "__enter__($self, /)\n"
         "--\n"
         "\n"
         "Acquire the lock."},
        {"__exit__", (PyCFunction)(void (*)(void))sync_exit_method, METH_FASTCALL,
         "__exit__($self, /, *args)\n"
         "--\n"
         "\n"
         "Release the lock."},
        {NULL, NULL, 0, NULL},
};

static PyMemberDef sync_members[] = {
        {"_obj", T_OBJECT, offsetof(CmpSync, obj), READONLY, "The wrapped object."},
        {"_lock", T_OBJECT, offsetof(CmpSync, lock), READONLY, "The lock."},
        {"acquire", T_OBJECT_EX, offsetof(CmpSync, acquire), 0, "The lock's acquire."},
        {"release", T_OBJECT_EX, offsetof(CmpSync, release), 0, "The lock's release."},
        {NULL, 0, 0, 0, NULL},
};

/* ------------------------------------------------------------------------ */
/* Synchronized: .value                                                     */

static PyObject *
sync_get_value(CmpSync *self, void *Py_UNUSED(closure))
{
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return NULL;
    CmpShared *d = self->data;
    PyObject *r;
    if (d != NULL)
        r = d->is_array ? array_get_value(d, NULL) : item_get(d->code, d->data);
    else
        r = PyObject_GetAttrString(self->obj, "value");
    if (sync_exit(self) < 0)
        Py_CLEAR(r);
    return r;
}

static int
sync_set_value(CmpSync *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "property 'value' of '%.100s' object has no deleter",
                     Py_TYPE(self)->tp_name);
        return -1;
    }
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return -1;
    CmpShared *d = self->data;
    int rc;
    if (d != NULL)
        rc = d->is_array ? array_set_value(d, v, NULL) : item_set(d->code, d->data, v);
    else
        rc = PyObject_SetAttrString(self->obj, "value", v);
    if (sync_exit(self) < 0)
        rc = -1;
    return rc;
}

static PyGetSetDef value_sync_getset[] = {
        {"value", (getter)sync_get_value, (setter)sync_set_value, "The value (under the lock).",
         NULL},
        {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot value_sync_slots[] = {
        {Py_tp_doc, "Synchronized(obj, lock): a value whose accesses take the lock."},
        {Py_tp_new, sync_new},
        {Py_tp_init, sync_init},
        {Py_tp_dealloc, sync_dealloc},
        {Py_tp_traverse, sync_traverse},
        {Py_tp_clear, sync_clear},
        {Py_tp_methods, sync_methods},
        {Py_tp_members, sync_members},
        {Py_tp_getset, value_sync_getset},
        {Py_bf_getbuffer, sync_getbuffer},
        {0, NULL},
};

static PyType_Spec value_sync_spec = {
        .name = "cmp._core.Synchronized",
        .basicsize = sizeof(CmpSync),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = value_sync_slots,
};

/* ------------------------------------------------------------------------ */
/* SynchronizedArray: len, indexing, slicing                                */

static inline CmpShared *
sync_array_data(CmpSync *self)
{
    CmpShared *d = self->data;
    return d != NULL && d->is_array ? d : NULL;
}

static Py_ssize_t
sync_array_length(CmpSync *self)
{
    if (sync_check(self) < 0)
        return -1;
    CmpShared *d = sync_array_data(self);
    return d != NULL ? d->length : PyObject_Length(self->obj);
}

static PyObject *
sync_array_subscript(CmpSync *self, PyObject *key)
{
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return NULL;
    CmpShared *d = sync_array_data(self);
    PyObject *r = d != NULL ? array_subscript(d, key) : PyObject_GetItem(self->obj, key);
    if (sync_exit(self) < 0)
        Py_CLEAR(r);
    return r;
}

static PyObject *
sync_array_item(CmpSync *self, Py_ssize_t i)
{
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return NULL;
    CmpShared *d = sync_array_data(self);
    PyObject *r = d != NULL ? array_item(d, i) : PySequence_GetItem(self->obj, i);
    if (sync_exit(self) < 0)
        Py_CLEAR(r);
    return r;
}

static int
sync_array_ass_subscript(CmpSync *self, PyObject *key, PyObject *v)
{
    if (v == NULL) { /* the stdlib's wrapper has no __delitem__ */
        PyErr_SetString(PyExc_AttributeError, "__delitem__");
        return -1;
    }
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return -1;
    CmpShared *d = sync_array_data(self);
    int rc = d != NULL ? array_ass_subscript(d, key, v) : PyObject_SetItem(self->obj, key, v);
    if (sync_exit(self) < 0)
        rc = -1;
    return rc;
}

static int
sync_array_ass_item(CmpSync *self, Py_ssize_t i, PyObject *v)
{
    PyObject *key = PyLong_FromSsize_t(i);
    if (key == NULL)
        return -1;
    int rc = sync_array_ass_subscript(self, key, v);
    Py_DECREF(key);
    return rc;
}

static PyType_Slot array_sync_slots[] = {
        {Py_tp_doc, "SynchronizedArray(obj, lock): an array whose accesses take the lock."},
        {Py_tp_new, sync_new},
        {Py_tp_init, sync_init},
        {Py_tp_dealloc, sync_dealloc},
        {Py_tp_traverse, sync_traverse},
        {Py_tp_clear, sync_clear},
        {Py_tp_methods, sync_methods},
        {Py_tp_members, sync_members},
        {Py_bf_getbuffer, sync_getbuffer},
        {Py_sq_length, sync_array_length},
        {Py_sq_item, sync_array_item},
        {Py_sq_ass_item, sync_array_ass_item},
        {Py_mp_length, sync_array_length},
        {Py_mp_subscript, sync_array_subscript},
        {Py_mp_ass_subscript, sync_array_ass_subscript},
        {0, NULL},
};

static PyType_Spec array_sync_spec = {
        .name = "cmp._core.SynchronizedArray",
        .basicsize = sizeof(CmpSync),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = array_sync_slots,
};

/* ------------------------------------------------------------------------ */
/* SynchronizedString: a 'c' array's .value and .raw                        */

static PyObject *
sync_get_raw(CmpSync *self, void *Py_UNUSED(closure))
{
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return NULL;
    CmpShared *d = sync_array_data(self);
    PyObject *r = d != NULL ? array_get_raw(d, NULL) : PyObject_GetAttrString(self->obj, "raw");
    if (sync_exit(self) < 0)
        Py_CLEAR(r);
    return r;
}

static int
sync_set_raw(CmpSync *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "property 'raw' of '%.100s' object has no deleter",
                     Py_TYPE(self)->tp_name);
        return -1;
    }
    if (sync_check(self) < 0 || sync_enter(self) < 0)
        return -1;
    CmpShared *d = sync_array_data(self);
    int rc = d != NULL ? array_set_raw(d, v, NULL) : PyObject_SetAttrString(self->obj, "raw", v);
    if (sync_exit(self) < 0)
        rc = -1;
    return rc;
}

static PyGetSetDef string_sync_getset[] = {
        {"value", (getter)sync_get_value, (setter)sync_set_value,
         "The bytes before the first NUL (under the lock).", NULL},
        {"raw", (getter)sync_get_raw, (setter)sync_set_raw, "All the bytes (under the lock).",
         NULL},
        {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot string_sync_slots[] = {
        {Py_tp_doc, "SynchronizedString(obj, lock): a 'c' array whose accesses take the lock."},
        {Py_tp_getset, string_sync_getset},
        {Py_tp_dealloc, sync_dealloc},
        {Py_tp_traverse, sync_traverse},
        {Py_tp_clear, sync_clear},
        {0, NULL},
};

static PyType_Spec string_sync_spec = {
        .name = "cmp._core.SynchronizedString",
        .basicsize = sizeof(CmpSync),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = string_sync_slots,
};

/* ======================================================================== */
/* Init                                                                     */

static int
add_type(PyObject *module, PyType_Spec *spec, PyObject *base, PyTypeObject **slot)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, base);
    if (tp == NULL)
        return -1;
    *slot = (PyTypeObject *)tp; /* owned by the module state */
    return PyModule_AddType(module, *slot);
}

int
cmp_sharedctypes_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    if (add_type(module, &value_spec, NULL, &st->shared_value_type) < 0
        || add_type(module, &array_spec, NULL, &st->shared_array_type) < 0
        || add_type(module, &value_sync_spec, NULL, &st->sync_value_type) < 0
        || add_type(module, &array_sync_spec, NULL, &st->sync_array_type) < 0
        || add_type(module, &string_sync_spec, (PyObject *)st->sync_array_type,
                    &st->sync_string_type)
                   < 0)
        return -1;
    return 0;
}
