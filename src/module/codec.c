/* cmp._core's message layer (see codec.h). */
#include "codec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Pickling: a sink that keeps what the pickler writes                       */

typedef struct {
    PyObject_HEAD
    PyObject *pieces; /* list */
} CmpSinkObject;

/* The pickler writes bytes and, with protocol 5, a PickleBuffer for a large
 * contiguous buffer (numpy arrays), which has no len(). A C-contiguous one is
 * kept as it is (the message takes its memory without a copy); another (a
 * Fortran-ordered array) is copied, in its memory order, as pickle would. */
static PyObject *
sink_write(CmpSinkObject *self, PyObject *data)
{
    Py_buffer view;
    Py_ssize_t len;
    PyObject *piece;
    if (PyBytes_CheckExact(data)) { /* nearly every write: no buffer to ask for */
        len = PyBytes_GET_SIZE(data);
        piece = Py_NewRef(data);
    }
    else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) == 0) {
        len = view.len;
        PyBuffer_Release(&view);
        piece = Py_NewRef(data);
    }
    else {
        PyErr_Clear();
        if (PyObject_GetBuffer(data, &view, PyBUF_FULL_RO) < 0)
            return NULL;
        len = view.len;
        piece = PyBytes_FromStringAndSize(NULL, len);
        if (piece != NULL && PyBuffer_ToContiguous(PyBytes_AS_STRING(piece), &view, len, 'A') < 0)
            Py_CLEAR(piece);
        PyBuffer_Release(&view);
        if (piece == NULL)
            return NULL;
    }
    int rc = PyList_Append(self->pieces, piece);
    Py_DECREF(piece);
    return rc < 0 ? NULL : PyLong_FromSsize_t(len);
}

static int
sink_traverse(CmpSinkObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->pieces);
    return 0;
}

static int
sink_clear(CmpSinkObject *self)
{
    Py_CLEAR(self->pieces);
    return 0;
}

static void
sink_dealloc(CmpSinkObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    sink_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef sink_methods[] = {
        {"write", (PyCFunction)sink_write, METH_O,
         "write($self, data, /)\n"
         "--\n"
         "\n"
         "Keep a piece the pickler wrote; its length."},
        {NULL, NULL, 0, NULL},
};

static PyType_Slot sink_slots[] = {
        {Py_tp_methods, sink_methods},
        {Py_tp_traverse, sink_traverse},
        {Py_tp_clear, sink_clear},
        {Py_tp_dealloc, sink_dealloc},
        {0, NULL},
};

static PyType_Spec sink_spec = {
        .name = "cmp._core._PickleSink",
        .basicsize = sizeof(CmpSinkObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = sink_slots,
};

/* A pickler writing into a new sink; its bound dump and clear_memo. */
static int
pickler_new(cmp_state *st, PyObject **sink, PyObject **dump, PyObject **clear)
{
    PyObject *pickler = NULL;
    *sink = *dump = *clear = NULL;
    CmpSinkObject *s = PyObject_GC_New(CmpSinkObject, st->sink_type);
    if (s == NULL)
        return -1;
    s->pieces = PyList_New(0);
    PyObject_GC_Track(s);
    *sink = (PyObject *)s;
    if (s->pieces == NULL)
        goto error;
    pickler = PyObject_CallFunction(st->pickler_type, "Oi", *sink, st->protocol);
    if (pickler == NULL)
        goto error;
    if (PyObject_SetAttrString(pickler, "dispatch_table", st->dispatch_table) < 0)
        goto error;
    *dump = PyObject_GetAttrString(pickler, "dump");
    *clear = PyObject_GetAttrString(pickler, "clear_memo");
    if (*dump == NULL || *clear == NULL)
        goto error;
    Py_DECREF(pickler);
    return 0;
error:
    Py_XDECREF(pickler);
    Py_CLEAR(*sink);
    Py_CLEAR(*dump);
    Py_CLEAR(*clear);
    return -1;
}

/* Pickle obj: a new list of the pieces written (bytes-like objects). */
PyObject *
cmp_codec_dump(cmp_state *st, PyObject *obj)
{
    PyObject *sink, *dump, *clear, *res = NULL, *pieces = NULL;
    int cached = !st->pickler_busy && st->pickler_dump != NULL;
    if (cached) {
        sink = Py_NewRef(st->pickler_sink);
        dump = Py_NewRef(st->pickler_dump);
        clear = Py_NewRef(st->pickler_clear_memo);
    }
    else if (pickler_new(st, &sink, &dump, &clear) < 0) {
        return NULL;
    }
    st->pickler_busy += cached;
    res = PyObject_CallOneArg(dump, obj);
    st->pickler_busy -= cached;
    CmpSinkObject *s = (CmpSinkObject *)sink;
    if (res != NULL) {
        Py_DECREF(res);
        res = PyObject_CallNoArgs(clear);
    }
    if (res != NULL) {
        pieces = s->pieces;
        s->pieces = PyList_New(0);
        if (s->pieces == NULL)
            Py_CLEAR(pieces);
    }
    else if (cached) {
        /* After an error the pickler may hold a partial frame: start over. */
        Py_CLEAR(st->pickler_sink);
        Py_CLEAR(st->pickler_dump);
        Py_CLEAR(st->pickler_clear_memo);
    }
    Py_XDECREF(res);
    if (!cached && st->pickler_dump == NULL && pieces != NULL && !st->pickler_busy) {
        st->pickler_sink = Py_NewRef(sink);
        st->pickler_dump = Py_NewRef(dump);
        st->pickler_clear_memo = Py_NewRef(clear);
    }
    Py_DECREF(sink);
    Py_DECREF(dump);
    Py_DECREF(clear);
    return pieces;
}

void
cmp_unpin(cmp_pinned *m)
{
    for (Py_ssize_t i = 0; i < m->n; i++)
        PyBuffer_Release(&m->views[i]);
    if (m->views != &m->view1) {
        PyMem_Free(m->views);
        PyMem_Free(m->iov);
    }
    m->n = 0;
    m->views = NULL;
}

int
cmp_pin(cmp_pinned *m, PyObject *pieces)
{
    Py_ssize_t n = PyList_GET_SIZE(pieces);
    m->n = 0;
    if (n <= 1) {
        m->views = &m->view1;
        m->iov = &m->iov1;
    }
    else {
        m->views = PyMem_New(Py_buffer, n);
        m->iov = PyMem_New(struct iovec, n);
        if (m->views == NULL || m->iov == NULL) {
            PyMem_Free(m->views);
            PyMem_Free(m->iov);
            m->views = NULL;
            PyErr_NoMemory();
            return -1;
        }
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(pieces, i), &m->views[i], PyBUF_SIMPLE) < 0) {
            cmp_unpin(m);
            return -1;
        }
        m->n = i + 1;
        m->iov[i].iov_base = m->views[i].buf;
        m->iov[i].iov_len = (size_t)m->views[i].len;
        total += (size_t)m->views[i].len;
    }
    m->msg = (cmp_ring_msg){m->iov, (int)n, total};
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Scalars: None, bool, int, float, bytes, str (exact types) are pickled and
 * unpickled here directly -- the same opcodes the pickler uses, without its
 * frame and memo -- 5 to 10 times faster than a pickler round trip.        */

static const unsigned char fast_stop = '.';

static void
put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t
get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Length-prefixed payload opcodes: short (1-byte length), 4-byte, 8-byte. */
static size_t
fast_sized(unsigned char *h, unsigned char op1, unsigned char op4, unsigned char op8, size_t len)
{
    if (len < 256) {
        h[2] = op1;
        h[3] = (unsigned char)len;
        return 4;
    }
    if (len <= UINT32_MAX) {
        h[2] = op4;
        put_le(h + 3, len, 4);
        return 7;
    }
    h[2] = op8;
    put_le(h + 3, len, 8);
    return 11;
}

/* 1: encoded into m; 0: not a fast type (no exception set); -1: error. */
int
cmp_fast_encode(PyObject *obj, cmp_fast_msg *m)
{
    unsigned char *h = m->head;
    const void *data = NULL;
    size_t hlen = 3, dlen = 0;
    h[0] = 0x80;
    h[1] = 5;
    if (obj == Py_None) {
        h[2] = 'N';
    }
    else if (obj == Py_True || obj == Py_False) {
        h[2] = obj == Py_True ? 0x88 : 0x89;
    }
    else if (PyLong_CheckExact(obj)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow)
            return 0;
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v >= 0 && v < 256) {
            h[2] = 'K';
            h[3] = (unsigned char)v;
            hlen = 4;
        }
        else if (v >= 0 && v < 65536) {
            h[2] = 'M';
            put_le(h + 3, (uint64_t)v, 2);
            hlen = 5;
        }
        else if (v >= INT32_MIN && v <= INT32_MAX) {
            h[2] = 'J';
            put_le(h + 3, (uint64_t)v, 4);
            hlen = 7;
        }
        else {
            h[2] = 0x8a; /* LONG1: n bytes, little-endian two's complement */
            h[3] = 8;
            put_le(h + 4, (uint64_t)v, 8);
            hlen = 12;
        }
    }
    else if (PyFloat_CheckExact(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        uint64_t bits;
        memcpy(&bits, &d, sizeof(bits));
        h[2] = 'G'; /* big-endian */
        for (int i = 0; i < 8; i++)
            h[3 + i] = (unsigned char)(bits >> (56 - 8 * i));
        hlen = 11;
    }
    else if (PyBytes_CheckExact(obj)) {
        dlen = (size_t)PyBytes_GET_SIZE(obj);
        data = PyBytes_AS_STRING(obj);
        hlen = fast_sized(h, 'C', 'B', 0x8e, dlen);
    }
    else if (PyUnicode_CheckExact(obj)) {
        Py_ssize_t n;
        data = PyUnicode_AsUTF8AndSize(obj, &n);
        if (data == NULL) { /* lone surrogates: the pickler copes */
            PyErr_Clear();
            return 0;
        }
        dlen = (size_t)n;
        hlen = fast_sized(h, 0x8c, 'X', 0x8d, dlen);
    }
    else {
        return 0;
    }
    int k = 0;
    m->iov[k++] = (struct iovec){h, hlen};
    if (dlen > 0)
        m->iov[k++] = (struct iovec){(void *)data, dlen};
    m->iov[k++] = (struct iovec){(void *)&fast_stop, 1};
    m->msg = (cmp_ring_msg){m->iov, k, hlen + dlen + 1};
    return 1;
}

/* A message encoded by fast_encode (or the pickler's identical form): the
 * object, or NULL without an exception when it is something else. */
static PyObject *
fast_decode(const unsigned char *p, size_t len)
{
    if (len < 4 || p[0] != 0x80 || p[1] != 5 || p[len - 1] != '.')
        return NULL;
    const unsigned char *b = p + 3;
    size_t n = len - 4, hl, dl;
    unsigned char op = p[2];
    switch (op) {
    case 'N': return n == 0 ? Py_NewRef(Py_None) : NULL;
    case 0x88: return n == 0 ? Py_NewRef(Py_True) : NULL;
    case 0x89: return n == 0 ? Py_NewRef(Py_False) : NULL;
    case 'K': return n == 1 ? PyLong_FromLong(b[0]) : NULL;
    case 'M': return n == 2 ? PyLong_FromLong((long)get_le(b, 2)) : NULL;
    case 'J': return n == 4 ? PyLong_FromLong((long)(int32_t)(uint32_t)get_le(b, 4)) : NULL;
    case 0x8a: return n == 9 && b[0] == 8 ? PyLong_FromLongLong((long long)get_le(b + 1, 8)) : NULL;
    case 'G': {
        if (n != 8)
            return NULL;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = (bits << 8) | b[i];
        double d;
        memcpy(&d, &bits, sizeof(d));
        return PyFloat_FromDouble(d);
    }
    case 'C':
    case 0x8c: hl = 1; break;
    case 'B':
    case 'X': hl = 4; break;
    case 0x8e:
    case 0x8d: hl = 8; break;
    default: return NULL;
    }
    if (n < hl)
        return NULL;
    dl = (size_t)get_le(b, (int)hl);
    if (dl != n - hl || dl > PY_SSIZE_T_MAX)
        return NULL;
    if (op == 'C' || op == 'B' || op == 0x8e)
        return PyBytes_FromStringAndSize((const char *)b + hl, (Py_ssize_t)dl);
    return PyUnicode_DecodeUTF8((const char *)b + hl, (Py_ssize_t)dl, "surrogatepass");
}

/* Unpickle one message. */
PyObject *
cmp_codec_load(cmp_state *st, unsigned char *buf, size_t len)
{
    PyObject *obj = fast_decode(buf, len);
    if (obj != NULL || PyErr_Occurred())
        return obj;
    PyObject *mv = PyMemoryView_FromMemory((char *)buf, (Py_ssize_t)len, PyBUF_READ);
    if (mv == NULL)
        return NULL;
    obj = PyObject_CallOneArg(st->loads, mv);
    /* Nothing may keep a view of the buffer we reuse. Held only here (the
     * usual case), dropping it releases it: no release() call to look up. */
    if (Py_REFCNT(mv) == 1) {
        Py_DECREF(mv);
        return obj;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethod(mv, "release", NULL);
    Py_DECREF(mv);
    if (r == NULL) {
        Py_CLEAR(obj);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(r);
    PyErr_Restore(et, ev, tb);
    return obj;
}

/* Pieces (a list of bytes-like objects) holding the message m, for the
 * overflow. `obj`: the object m was encoded from; an exact bytes object is
 * referenced, not copied. */
PyObject *
cmp_msg_to_pieces(const cmp_ring_msg *m, PyObject *obj)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < m->niov; i++) {
        PyObject *piece;
        if (obj != NULL && PyBytes_CheckExact(obj) && m->iov[i].iov_base == PyBytes_AS_STRING(obj))
            piece = Py_NewRef(obj);
        else
            piece = PyBytes_FromStringAndSize(m->iov[i].iov_base, (Py_ssize_t)m->iov[i].iov_len);
        if (piece == NULL || PyList_Append(list, piece) < 0) {
            Py_XDECREF(piece);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(piece);
    }
    return list;
}

PyObject *
cmp_codec_encode(cmp_state *st, PyObject *obj)
{
    cmp_fast_msg fm;
    int rc = cmp_fast_encode(obj, &fm);
    if (rc < 0)
        return NULL;
    return rc ? cmp_msg_to_pieces(&fm.msg, obj) : cmp_codec_dump(st, obj);
}

PyObject *
cmp_codec_loads(cmp_state *st, PyObject *data)
{
    return PyObject_CallOneArg(st->loads, data);
}

/* ------------------------------------------------------------------------ */
/* Receive buffers and the take loop                                        */

int
cmp_rxbuf_grow(cmp_rxbuf *b, size_t need)
{
    if (b->buf != NULL && b->cap >= need)
        return 0;
    size_t want = need < CMP_RXBUF_MIN ? CMP_RXBUF_MIN : need;
    if (want < b->cap * 2)
        want = b->cap * 2;
    unsigned char *nb = realloc(b->buf, want);
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->buf = nb;
    b->cap = want;
    return 0;
}

void
cmp_rxbuf_trim(cmp_rxbuf *b)
{
    if (b->cap > CMP_RXBUF_KEEP)
        cmp_rxbuf_free(b);
}

void
cmp_rxbuf_free(cmp_rxbuf *b)
{
    free(b->buf);
    b->buf = NULL;
    b->cap = 0;
}

struct take_call {
    cmp_ring *ring;
    cmp_ring_rop *op;
    int64_t deadline;
};

static int
take_blocking(void *arg)
{
    struct take_call *c = arg;
    return cmp_ring_take(c->ring, c->op, c->deadline);
}

int
cmp_codec_take(cmp_ring *r, cmp_ring_rop *op, int64_t deadline)
{
    int st = cmp_ring_take(r, op, CMP_RING_NOW);
    if ((st == CMP_EEMPTY || st == CMP_ETIMEDOUT) && deadline != CMP_RING_NOW) {
        struct take_call c = {r, op, deadline};
        st = cmp_run_blocking(take_blocking, &c);
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Collaborators                                                            */

/* module.attr, a new reference */
static PyObject *
import_attr(const char *module, const char *attr)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *a = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return a;
}

int
cmp_codec_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    st->sink_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sink_spec, NULL);
    if (st->sink_type == NULL)
        return -1;
    /* cmp._core is imported after the cmp package: these are complete. */
    PyObject *forking = import_attr("cmp.reduction", "ForkingPickler");
    PyObject *protocol = import_attr("cmp.reduction", "DEFAULT_PROTOCOL");
    if (forking == NULL || protocol == NULL)
        goto error;
    st->pickler_type = import_attr("pickle", "Pickler");
    st->loads = import_attr("pickle", "loads");
    st->dispatch_table = PyObject_GetAttrString(forking, "_dispatch");
    st->protocol = PyLong_AsLong(protocol);
    st->empty = import_attr("queue", "Empty");
    st->full = import_attr("queue", "Full");
    st->buffer_too_short = import_attr("cmp.context", "BufferTooShort");
    Py_DECREF(forking);
    Py_DECREF(protocol);
    if (st->pickler_type == NULL || st->loads == NULL || st->dispatch_table == NULL
        || PyErr_Occurred() || st->empty == NULL || st->full == NULL
        || st->buffer_too_short == NULL)
        return -1;
    return 0;
error:
    Py_XDECREF(forking);
    Py_XDECREF(protocol);
    return -1;
}

int
cmp_codec_traverse(cmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->sink_type);
    Py_VISIT(st->pickler_type);
    Py_VISIT(st->dispatch_table);
    Py_VISIT(st->loads);
    Py_VISIT(st->empty);
    Py_VISIT(st->full);
    Py_VISIT(st->buffer_too_short);
    Py_VISIT(st->pickler_sink);
    Py_VISIT(st->pickler_dump);
    Py_VISIT(st->pickler_clear_memo);
    return 0;
}

void
cmp_codec_clear(cmp_state *st)
{
    Py_CLEAR(st->sink_type);
    Py_CLEAR(st->pickler_type);
    Py_CLEAR(st->dispatch_table);
    Py_CLEAR(st->loads);
    Py_CLEAR(st->empty);
    Py_CLEAR(st->full);
    Py_CLEAR(st->buffer_too_short);
    Py_CLEAR(st->pickler_sink);
    Py_CLEAR(st->pickler_dump);
    Py_CLEAR(st->pickler_clear_memo);
}
