/* cmp._core queues: Ring (the base of Queue and JoinableQueue) and
 * SimpleRing (the base of SimpleQueue), over src/core/ring.c.
 *
 * put() pickles with one cached pickler (honouring the reduction registry)
 * whose file is a sink that keeps the pieces the pickler writes, so large
 * bytes are copied once, straight into the ring. get() copies messages into a
 * per-queue buffer and unpickles them from there, outside the ring's lock.
 * The non-blocking attempt runs with the GIL held; only a wait releases it. */
#include "module.h"
#include "ring.h"
#include "shm.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <unistd.h>

#define SCRATCH_MIN (64 * 1024)
#define SCRATCH_KEEP (4 * 1024 * 1024)    /* larger buffers are freed after use */
#define MANY_MAX 65536                      /* get_many: messages per lock hold */

typedef struct {
    PyObject_HEAD
    cmp_ring *ring;
    cmp_shm_block block;
    PyObject *module;           /* keeps cmp_state alive */
    cmp_state *st;
    unsigned char *scratch;
    size_t scratch_cap;
    char scratch_busy;
    char closed;                /* _closed */
    char pending;               /* _pending: this process has an overflow */
    char simple;                /* SimpleQueue: put blocks, no overflow */
    /* see "get" below */
    cmp_ring_rop part;          /* a streamed message partly received */
    unsigned char *part_buf;    /* its buffer (malloc'd); NULL: none */
    size_t part_len;
    pid_t part_pid;             /* the process that holds the get lock */
    PyObject *backlog;          /* list: raw messages and exceptions, or NULL */
} CmpRingObject;

/* ------------------------------------------------------------------------ */
/* Pickling: a sink that keeps what the pickler writes                       */

typedef struct {
    PyObject_HEAD
    PyObject *pieces;           /* list */
} CmpSinkObject;

static PyObject *
sink_write(CmpSinkObject *self, PyObject *data)
{
    if (PyList_Append(self->pieces, data) < 0)
        return NULL;
    return PyLong_FromSsize_t(PyObject_Length(data));
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
    {"write", (PyCFunction)sink_write, METH_O, NULL},
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
    if (st->q_pickler_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cmp.queues is not initialized");
        return -1;
    }
    CmpSinkObject *s = PyObject_GC_New(CmpSinkObject, st->q_sink_type);
    if (s == NULL)
        return -1;
    s->pieces = PyList_New(0);
    PyObject_GC_Track(s);
    *sink = (PyObject *)s;
    if (s->pieces == NULL)
        goto error;
    pickler = PyObject_CallFunction(st->q_pickler_type, "Oi", *sink, st->q_protocol);
    if (pickler == NULL)
        goto error;
    if (PyObject_SetAttrString(pickler, "dispatch_table", st->q_dispatch_table) < 0)
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
static PyObject *
pickle_pieces(cmp_state *st, PyObject *obj)
{
    PyObject *sink, *dump, *clear, *res = NULL, *pieces = NULL;
    int cached = !st->q_pickler_busy && st->q_dump != NULL;
    if (cached) {
        sink = Py_NewRef(st->q_sink);
        dump = Py_NewRef(st->q_dump);
        clear = Py_NewRef(st->q_clear_memo);
    }
    else if (pickler_new(st, &sink, &dump, &clear) < 0) {
        return NULL;
    }
    st->q_pickler_busy += cached;
    res = PyObject_CallOneArg(dump, obj);
    st->q_pickler_busy -= cached;
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
        Py_CLEAR(st->q_sink);
        Py_CLEAR(st->q_dump);
        Py_CLEAR(st->q_clear_memo);
    }
    Py_XDECREF(res);
    if (!cached && st->q_dump == NULL && pieces != NULL && !st->q_pickler_busy) {
        st->q_sink = Py_NewRef(sink);
        st->q_dump = Py_NewRef(dump);
        st->q_clear_memo = Py_NewRef(clear);
    }
    Py_DECREF(sink);
    Py_DECREF(dump);
    Py_DECREF(clear);
    return pieces;
}

/* Buffers over a list of pieces, as one message. */
typedef struct {
    Py_buffer *views;
    struct iovec *iov;
    Py_ssize_t n;
    cmp_ring_msg msg;
    Py_buffer view1;
    struct iovec iov1;
} msg_view;

static void
msg_release(msg_view *m)
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

static int
msg_open(msg_view *m, PyObject *pieces)
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
            msg_release(m);
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

typedef struct {
    unsigned char head[16];
    struct iovec iov[3];
    cmp_ring_msg msg;
} fast_msg;

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
fast_sized(unsigned char *h, unsigned char op1, unsigned char op4, unsigned char op8,
           size_t len)
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
static int
fast_encode(PyObject *obj, fast_msg *m)
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
            h[2] = 0x8a;    /* LONG1: n bytes, little-endian two's complement */
            h[3] = 8;
            put_le(h + 4, (uint64_t)v, 8);
            hlen = 12;
        }
    }
    else if (PyFloat_CheckExact(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        uint64_t bits;
        memcpy(&bits, &d, sizeof(bits));
        h[2] = 'G';         /* big-endian */
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
        if (data == NULL) {         /* lone surrogates: the pickler copes */
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
    case 'N':
        return n == 0 ? Py_NewRef(Py_None) : NULL;
    case 0x88:
        return n == 0 ? Py_NewRef(Py_True) : NULL;
    case 0x89:
        return n == 0 ? Py_NewRef(Py_False) : NULL;
    case 'K':
        return n == 1 ? PyLong_FromLong(b[0]) : NULL;
    case 'M':
        return n == 2 ? PyLong_FromLong((long)get_le(b, 2)) : NULL;
    case 'J':
        return n == 4 ? PyLong_FromLong((long)(int32_t)(uint32_t)get_le(b, 4)) : NULL;
    case 0x8a:
        return n == 9 && b[0] == 8 ? PyLong_FromLongLong((long long)get_le(b + 1, 8)) : NULL;
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
    case 'C': case 0x8c: hl = 1; break;
    case 'B': case 'X': hl = 4; break;
    case 0x8e: case 0x8d: hl = 8; break;
    default:
        return NULL;
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
static PyObject *
load_msg(cmp_state *st, unsigned char *buf, size_t len)
{
    PyObject *obj = fast_decode(buf, len);
    if (obj != NULL || PyErr_Occurred())
        return obj;
    PyObject *mv = PyMemoryView_FromMemory((char *)buf, (Py_ssize_t)len, PyBUF_READ);
    if (mv == NULL)
        return NULL;
    obj = PyObject_CallOneArg(st->q_loads, mv);
    /* Nothing may keep a view of the buffer we reuse. */
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
static PyObject *
msg_to_pieces(const cmp_ring_msg *m, PyObject *obj)
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

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */

/* block (default True) and timeout (default None) -> deadline; 0 = now. */
static int
block_deadline(PyObject *block, PyObject *timeout, int *blocking, int64_t *deadline)
{
    int b = 1;
    if (block != NULL) {
        b = PyObject_IsTrue(block);
        if (b < 0)
            return -1;
    }
    *blocking = b;
    if (!b) {
        *deadline = 0;
        return 0;
    }
    return cmp_deadline_from_timeout(timeout, deadline);
}

/* ------------------------------------------------------------------------ */
/* Ring objects                                                             */

static int
ring_ready(CmpRingObject *self)
{
    if (self->ring != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "queue is not initialized");
    return -1;
}

static int
check_open(CmpRingObject *self)
{
    if (ring_ready(self) < 0)
        return -1;
    if (!self->closed)
        return 0;
    if (self->simple)
        PyErr_SetString(PyExc_OSError, "handle is closed");
    else
        PyErr_Format(PyExc_ValueError, "Queue %R is closed", self);
    return -1;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    PyTypeObject *t = type;
    while (t != NULL && !(PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE)
                          && ((PyHeapTypeObject *)t)->ht_module != NULL))
        t = t->tp_base;
    if (t == NULL) {
        PyErr_SetString(PyExc_TypeError, "not a cmp queue type");
        return NULL;
    }
    CmpRingObject *self = (CmpRingObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->module = Py_NewRef(((PyHeapTypeObject *)t)->ht_module);
    self->st = PyModule_GetState(self->module);
    self->simple = (t == self->st->q_simple_type);
    return (PyObject *)self;
}

static int
ring_traverse(CmpRingObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->module);
    Py_VISIT(self->backlog);
    return 0;
}

static void part_drop(CmpRingObject *self);

static void
ring_release(CmpRingObject *self)
{
    part_drop(self);
    Py_CLEAR(self->backlog);
    if (self->ring != NULL) {
        cmp_shm_free(&self->block);
        self->ring = NULL;
    }
    free(self->scratch);
    self->scratch = NULL;
    self->scratch_cap = 0;
}

static void
ring_dealloc(CmpRingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (tp->tp_weaklistoffset)
        PyObject_ClearWeakRefs((PyObject *)self);
    ring_release(self);
    Py_CLEAR(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(ring_create_doc,
"_create(capacity, maxsize, joinable)\n\n"
"Make a new ring of capacity bytes (a power of two) in shared memory;\n"
"maxsize 0 means unbounded.");

static PyObject *
ring_create(CmpRingObject *self, PyObject *args)
{
    Py_ssize_t capacity;
    unsigned int maxsize;
    int joinable;
    if (!PyArg_ParseTuple(args, "nIp:_create", &capacity, &maxsize, &joinable))
        return NULL;
    if (self->ring != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "queue already initialized");
        return NULL;
    }
    if (capacity < (Py_ssize_t)CMP_RING_MIN_CAPACITY || (size_t)capacity > CMP_RING_MAX_CAPACITY
            || (capacity & (capacity - 1)) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "ring size must be a power of two between %zu and %zu, not %zd",
                     CMP_RING_MIN_CAPACITY, CMP_RING_MAX_CAPACITY, capacity);
        return NULL;
    }
    size_t size = cmp_ring_segment_size((size_t)capacity);
    if (cmp_shm_alloc(size, CMP_SHM_OWN_SEGMENT, &self->block) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    if (cmp_ring_init(self->block.addr, (size_t)capacity, maxsize,
                      joinable ? CMP_RING_JOINABLE : 0) != CMP_OK) {
        cmp_shm_free(&self->block);
        return cmp_set_error(CMP_ERRNO);
    }
    self->ring = self->block.addr;
    Py_RETURN_NONE;
}

static PyObject *
ring_attach(CmpRingObject *self, PyObject *args)
{
    int fd;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "in:_attach", &fd, &size))
        return NULL;
    if (self->ring != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "queue already initialized");
        return NULL;
    }
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad size");
        return NULL;
    }
    if (cmp_shm_attach(fd, 0, (size_t)size, &self->block) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    if (cmp_ring_check(self->block.addr, (size_t)size) != CMP_OK) {
        cmp_shm_free(&self->block);
        return cmp_set_error(CMP_ERRNO);
    }
    self->ring = self->block.addr;
    Py_RETURN_NONE;
}

static PyObject *
ring_share(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self) < 0)
        return NULL;
    int fd = cmp_shm_share(&self->block);
    return Py_BuildValue("in", fd, (Py_ssize_t)cmp_ring_segment_size(
                                       cmp_ring_capacity(self->ring)));
}

/* ------------------------------------------------------------------------ */
/* put                                                                      */

struct offer_call {
    cmp_ring *ring;
    const cmp_ring_msg *msgs;
    size_t count, accepted, written;
    int defer_all;
    int64_t deadline;
};

static int
offer_blocking(void *arg)
{
    struct offer_call *c = arg;
    size_t accepted, written;
    int st = cmp_ring_offer(c->ring, c->msgs + c->accepted, c->count - c->accepted,
                            c->defer_all, c->deadline, CMP_RING_WAIT_LOCK, &accepted, &written);
    /* Written ones are a prefix of the accepted: once one was deferred, all
     * later ones are. */
    if (c->written == c->accepted)
        c->written += written;
    if (accepted > written)
        c->defer_all = 1;
    c->accepted += accepted;
    return st;
}

/* Accept count messages; hand those not written to self._defer(pieces).
 * 0, or -1 with an exception (Full for no slot). */
static int
offer_msgs(CmpRingObject *self, const cmp_ring_msg *msgs, PyObject *const *pieces,
           PyObject *const *objs, size_t count, int blocking, int64_t deadline)
{
    struct offer_call c = {self->ring, msgs, count, 0, 0, self->pending, deadline};
    size_t accepted, written;
    int st = cmp_ring_offer(self->ring, msgs, count, c.defer_all, 0, CMP_RING_TRY, &accepted,
                            &written);
    c.accepted = accepted;
    c.written = written;
    if (accepted > written)
        c.defer_all = 1;
    if (st == CMP_EFULL && (blocking || cmp_ring_maxsize(self->ring) == 0))
        st = cmp_run_blocking(offer_blocking, &c);
    if (c.accepted > c.written) {
        PyObject *list = PyList_New((Py_ssize_t)(c.accepted - c.written)), *r = NULL;
        for (size_t i = c.written; list != NULL && i < c.accepted; i++) {
            PyObject *p = pieces[i] ? Py_NewRef(pieces[i]) : msg_to_pieces(&msgs[i], objs[i]);
            if (p == NULL)
                Py_CLEAR(list);
            else
                PyList_SET_ITEM(list, (Py_ssize_t)(i - c.written), p);
        }
        if (list != NULL)
            r = PyObject_CallMethod((PyObject *)self, "_defer", "O", list);
        Py_XDECREF(list);
        if (r == NULL) {
            cmp_ring_unreserve(self->ring, c.accepted - c.written);
            return -1;
        }
        Py_DECREF(r);
    }
    if (st == CMP_OK)
        return 0;
    if (st == CMP_EFULL) {
        PyErr_SetNone(self->st->q_full);
        return -1;
    }
    cmp_set_error(st);
    return -1;
}

struct write_call {
    cmp_ring *ring;
    cmp_ring_wop op;
};

static int
write_blocking(void *arg)
{
    struct write_call *c = arg;
    return cmp_ring_write(c->ring, &c->op);
}

static int
write_pieces(CmpRingObject *self, PyObject *pieces, int reserved)
{
    msg_view m;
    if (msg_open(&m, pieces) < 0)
        return -1;
    struct write_call c = {self->ring};
    cmp_ring_wop_init(&c.op, &m.msg, reserved);
    int st = cmp_run_blocking(write_blocking, &c);
    if (st != CMP_OK)
        cmp_ring_write_abandon(self->ring, &c.op);
    msg_release(&m);
    if (st != CMP_OK) {
        cmp_set_error(st);
        return -1;
    }
    return 0;
}

static const char *const put_names[] = {"obj", "block", "timeout"};

static PyObject *
ring_put(CmpRingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    int blocking;
    int64_t deadline;
    if (cmp_parse_args("put", args, nargs, kwnames, put_names, 3, 1, CMP_ARGS_PY, a) < 0)
        return NULL;
    if (check_open(self) < 0 || block_deadline(a[1], a[2], &blocking, &deadline) < 0)
        return NULL;
    fast_msg fm;
    int rc = fast_encode(a[0], &fm);
    if (rc < 0)
        return NULL;
    if (rc == 1 && !self->simple) {
        PyObject *none = NULL;
        rc = offer_msgs(self, &fm.msg, &none, &a[0], 1, blocking, deadline);
    }
    else {
        PyObject *pieces = rc == 1 ? msg_to_pieces(&fm.msg, a[0]) : pickle_pieces(self->st, a[0]);
        if (pieces == NULL)
            return NULL;
        if (self->simple) {
            rc = write_pieces(self, pieces, 0);
        }
        else {
            msg_view m;
            rc = msg_open(&m, pieces);
            if (rc == 0) {
                rc = offer_msgs(self, &m.msg, &pieces, &a[0], 1, blocking, deadline);
                msg_release(&m);
            }
        }
        Py_DECREF(pieces);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ring_put_nowait(CmpRingObject *self, PyObject *obj)
{
    PyObject *args[2] = {obj, Py_False};
    return ring_put(self, args, 2, NULL);
}

static const char *const put_many_names[] = {"items", "block", "timeout"};

static PyObject *
ring_put_many(CmpRingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL}, *seq = NULL, *all = NULL, *ret = NULL;
    msg_view *views = NULL;
    fast_msg *fast = NULL;
    cmp_ring_msg *msgs = NULL;
    Py_ssize_t n = 0, opened = 0;
    int blocking;
    int64_t deadline;
    if (cmp_parse_args("put_many", args, nargs, kwnames, put_many_names, 3, 1, CMP_ARGS_PY, a) < 0)
        return NULL;
    if (check_open(self) < 0 || block_deadline(a[1], a[2], &blocking, &deadline) < 0)
        return NULL;
    seq = PySequence_Fast(a[0], "put_many() needs an iterable of items");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    all = PyList_New(n);    /* pickler output, or None for a scalar */
    views = PyMem_New(msg_view, n ? n : 1);
    fast = PyMem_New(fast_msg, n ? n : 1);
    msgs = PyMem_New(cmp_ring_msg, n ? n : 1);
    if (all == NULL || views == NULL || msgs == NULL || fast == NULL) {
        if (all != NULL)
            PyErr_NoMemory();
        goto done;
    }
    /* Pickle them all first: an unpicklable item puts none of them. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int rc = self->simple ? 0 : fast_encode(item, &fast[i]);
        if (rc < 0)
            goto done;
        PyObject *p = rc ? NULL : pickle_pieces(self->st, item);
        if (rc == 0 && p == NULL)
            goto done;
        PyList_SET_ITEM(all, i, p);
        if (rc)
            msgs[i] = fast[i].msg;
    }
    for (; opened < n; opened++) {
        PyObject *p = PyList_GET_ITEM(all, opened);
        if (p == NULL) {
            views[opened].n = 0;
            views[opened].views = NULL;
            continue;
        }
        if (msg_open(&views[opened], p) < 0)
            goto done;
        msgs[opened] = views[opened].msg;
    }
    if (self->simple) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (write_pieces(self, PyList_GET_ITEM(all, i), 0) < 0)
                goto done;
        }
    }
    else if (n > 0 && offer_msgs(self, msgs, ((PyListObject *)all)->ob_item,
                                 PySequence_Fast_ITEMS(seq), (size_t)n, blocking, deadline) < 0) {
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < opened; i++) {
        if (views[i].views != NULL)
            msg_release(&views[i]);
    }
    PyMem_Free(views);
    PyMem_Free(fast);
    PyMem_Free(msgs);
    if (all != NULL) {
        /* NULL slots (scalars) are fine for a list being destroyed */
        Py_DECREF(all);
    }
    Py_XDECREF(seq);
    return ret;
}

struct write_many_call {
    cmp_ring *ring;
    msg_view *views;
    size_t n, done;
    int reserved;
    cmp_ring_wop op;
};

static int
write_many_blocking(void *arg)
{
    struct write_many_call *c = arg;
    while (c->done < c->n) {
        int st = cmp_ring_write(c->ring, &c->op);
        if (st != CMP_OK)
            return st;
        if (++c->done < c->n)
            cmp_ring_wop_init(&c->op, &c->views[c->done].msg, c->reserved);
    }
    return CMP_OK;
}

PyDoc_STRVAR(ring_write_doc,
"_write(messages, reserved)\n\n"
"Write pickled messages (a list of lists of bytes-like pieces) in order,\n"
"waiting as long as it takes; reserved: they hold slots taken by put().");

static PyObject *
ring_write(CmpRingObject *self, PyObject *args)
{
    PyObject *list, *ret = NULL;
    int reserved;
    if (!PyArg_ParseTuple(args, "O!p:_write", &PyList_Type, &list, &reserved))
        return NULL;
    if (ring_ready(self) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list), opened = 0;
    struct write_many_call c = {self->ring, PyMem_New(msg_view, n ? n : 1), (size_t)n, 0,
                                reserved};
    if (c.views == NULL)
        return PyErr_NoMemory();
    for (; opened < n; opened++) {
        PyObject *pieces = PyList_GET_ITEM(list, opened);
        if (!PyList_Check(pieces)) {
            PyErr_SetString(PyExc_TypeError, "_write() needs lists of pieces");
            goto done;
        }
        if (msg_open(&c.views[opened], pieces) < 0)
            goto done;
    }
    if (n > 0) {
        cmp_ring_wop_init(&c.op, &c.views[0].msg, reserved);
        int st = cmp_run_blocking(write_many_blocking, &c);
        if (st != CMP_OK) {
            cmp_ring_write_abandon(self->ring, &c.op);
            if (reserved && c.done + 1 < c.n)
                cmp_ring_unreserve(self->ring, c.n - c.done - 1);
            cmp_set_error(st);
            goto done;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < opened; i++)
        msg_release(&c.views[i]);
    PyMem_Free(c.views);
    return ret;
}

static PyObject *
ring_unreserve(CmpRingObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (ring_ready(self) < 0)
        return NULL;
    if (n > 0)
        cmp_ring_unreserve(self->ring, (size_t)n);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* get                                                                      *
 *
 * Nothing is lost on an error that belongs to one item:
 *  - a streamed message whose next chunk does not come by the deadline, or
 *    whose receive a signal handler interrupts, stays with this object
 *    (`part`), still holding the ring's get lock: the next get() resumes it;
 *  - when an item of a batch cannot be unpickled, the items before it are
 *    returned, and its error and the items after it wait in `backlog`,
 *    served (in order) before the ring by the next get()s. */

struct take_call {
    cmp_ring *ring;
    cmp_ring_rop op;
    int64_t deadline;
};

static int
take_blocking(void *arg)
{
    struct take_call *c = arg;
    return cmp_ring_take(c->ring, &c->op, c->deadline);
}

/* Let go of a partly received message: this process's, the ring's get lock
 * is released (the message is lost); a parent's (forked), left alone. */
static void
part_drop(CmpRingObject *self)
{
    if (self->part_buf == NULL)
        return;
    if (self->part_pid == getpid() && self->ring != NULL)
        cmp_ring_take_abandon(self->ring, &self->part);
    free(self->part_buf);
    self->part_buf = NULL;
}

/* Keep c's partly received message (in buf, malloc'd, ours now). */
static void
part_keep(CmpRingObject *self, struct take_call *c, unsigned char *buf)
{
    self->part = c->op;
    self->part.buf = buf;
    self->part.lens = &self->part_len;
    self->part_buf = buf;
    self->part_pid = getpid();
}

/* The partly received message to resume, if there is one this process may
 * resume: moved into c (and its buffer returned), so one thread resumes it. */
static unsigned char *
part_take(CmpRingObject *self, struct take_call *c, size_t *lens)
{
    if (self->part_buf == NULL)
        return NULL;
    if (self->part_pid != getpid()) {
        part_drop(self);
        return NULL;
    }
    unsigned char *buf = self->part_buf;
    c->op = self->part;
    c->op.lens = lens;
    self->part_buf = NULL;
    return buf;
}

/* The exception being raised as one object (PyErr_GetRaisedException is
 * 3.12+); NULL if none. */
static PyObject *
fetch_exception(void)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (et == NULL)
        return NULL;
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL && ev != NULL)
        PyException_SetTraceback(ev, tb);
    Py_XDECREF(et);
    Py_XDECREF(tb);
    return ev;
}

static void
raise_exception(PyObject *exc)
{
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, tb);
}

/* Put the exception being raised, or messages, at the front of the
 * backlog. 0, or -1 (out of memory: they are lost, a MemoryError set). */
static int
backlog_push(CmpRingObject *self, PyObject *entries)
{
    if (self->backlog == NULL && (self->backlog = PyList_New(0)) == NULL)
        return -1;
    return PyList_SetSlice(self->backlog, 0, 0, entries);
}

static int
backlog_push_error(CmpRingObject *self)
{
    PyObject *exc = fetch_exception();
    if (exc == NULL)
        return 0;
    PyObject *one = PyList_New(1);
    if (one == NULL) {
        Py_DECREF(exc);
        return -1;
    }
    PyList_SET_ITEM(one, 0, exc);
    int rc = backlog_push(self, one);
    Py_DECREF(one);
    return rc;
}

static Py_ssize_t
backlog_len(CmpRingObject *self)
{
    return self->backlog == NULL ? 0 : PyList_GET_SIZE(self->backlog);
}

/* Up to max items from the backlog: a new list (not empty), or NULL with
 * the error of the first entry. */
static PyObject *
backlog_serve(CmpRingObject *self, size_t max)
{
    PyObject *list = PyList_New(0);
    while (list != NULL && (size_t)PyList_GET_SIZE(list) < max && backlog_len(self) > 0) {
        PyObject *e = Py_NewRef(PyList_GET_ITEM(self->backlog, 0));
        if (PySequence_DelItem(self->backlog, 0) < 0) {
            Py_DECREF(e);
            Py_CLEAR(list);
            break;
        }
        PyObject *obj = NULL;
        if (PyExceptionInstance_Check(e))
            raise_exception(e);     /* steals e */
        else {
            obj = load_msg(self->st, (unsigned char *)PyBytes_AS_STRING(e),
                           (size_t)PyBytes_GET_SIZE(e));
            Py_DECREF(e);
        }
        if (obj == NULL) {
            if (PyList_GET_SIZE(list) > 0 && backlog_push_error(self) == 0)
                break;          /* for the next get() */
            Py_CLEAR(list);
            break;
        }
        int rc = PyList_Append(list, obj);
        Py_DECREF(obj);
        if (rc < 0)
            Py_CLEAR(list);
    }
    return list;
}

/* Unpickle the n messages in buf: a new list. When one fails, the list of
 * those before it, the error and the messages after it going to the
 * backlog; if it is the first, NULL with its error. */
static PyObject *
load_batch(CmpRingObject *self, unsigned char *buf, const size_t *lens, size_t n)
{
    PyObject *list = PyList_New(0);
    size_t off = 0, i;
    for (i = 0; list != NULL && i < n; off += lens[i++]) {
        PyObject *obj = load_msg(self->st, buf + off, lens[i]);
        if (obj == NULL)
            break;
        int rc = PyList_Append(list, obj);
        Py_DECREF(obj);
        if (rc < 0)
            Py_CLEAR(list);
    }
    if (list == NULL || i == n)
        return list;
    /* Item i failed: keep the rest, raw, then the error in front. */
    PyObject *exc = fetch_exception();
    PyObject *rest = PyList_New(0);
    off += lens[i];
    for (size_t j = i + 1; rest != NULL && j < n; off += lens[j++]) {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)buf + off, (Py_ssize_t)lens[j]);
        if (raw == NULL || PyList_Append(rest, raw) < 0)
            Py_CLEAR(rest);
        Py_XDECREF(raw);
    }
    if (rest == NULL || backlog_push(self, rest) < 0) {
        /* Out of memory as well: the rest is lost with the item. */
        Py_XDECREF(rest);
        Py_DECREF(list);
        Py_XDECREF(exc);
        return NULL;
    }
    Py_DECREF(rest);
    if (PyList_GET_SIZE(list) == 0) {
        Py_DECREF(list);
        if (exc != NULL)
            raise_exception(exc);
        return NULL;
    }
    if (exc != NULL) {
        raise_exception(exc);
        if (backlog_push_error(self) < 0)
            Py_CLEAR(list);
    }
    return list;
}

/* Take up to max messages and unpickle them: a new list (see load_batch).
 * Empty (or an empty list when !raise_empty). */
static PyObject *
take_and_load(CmpRingObject *self, size_t max, int blocking, int64_t deadline, int raise_empty)
{
    if (backlog_len(self) > 0)
        return backlog_serve(self, max);
    size_t lens1[1];
    size_t *lens = lens1;
    unsigned char *buf;
    size_t cap;
    PyObject *list = NULL;
    struct take_call c = {self->ring};
    if (max > 1) {
        lens = PyMem_New(size_t, max);
        if (lens == NULL)
            return PyErr_NoMemory();
    }
    /* A buffer of our own when resuming, or re-entered (from an unpickler). */
    unsigned char *part = part_take(self, &c, lens);
    int own = part != NULL || self->scratch_busy;
    if (part != NULL) {
        buf = part;
        cap = c.op.cap;
    }
    else if (own) {
        cap = SCRATCH_MIN;
        buf = malloc(cap);
    }
    else {
        if (self->scratch == NULL) {
            self->scratch = malloc(SCRATCH_MIN);
            self->scratch_cap = self->scratch ? SCRATCH_MIN : 0;
        }
        buf = self->scratch;
        cap = self->scratch_cap;
        self->scratch_busy = 1;
    }
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (part == NULL)
        cmp_ring_rop_init(&c.op, buf, cap, lens, max);
    int st;
    for (;;) {
        /* Try with the GIL, never sleeping; then wait without it. */
        st = cmp_ring_take(self->ring, &c.op, CMP_RING_NOW);
        if ((st == CMP_EEMPTY || st == CMP_ETIMEDOUT) && blocking && deadline != 0) {
            c.deadline = deadline;
            st = cmp_run_blocking(take_blocking, &c);
        }
        if (st != CMP_NEED)
            break;
        size_t want = c.op.need > cap * 2 ? c.op.need : cap * 2;
        unsigned char *nb = realloc(buf, want);
        if (nb == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        buf = nb;
        cap = want;
        if (!own) {
            self->scratch = buf;
            self->scratch_cap = cap;
        }
        cmp_ring_rop_init(&c.op, buf, cap, lens, max);
    }
    if (st != CMP_OK && c.op.locked) {
        /* Partly received: keep it for the next get(), in a buffer of its own. */
        if (!own) {
            self->scratch = NULL;
            self->scratch_cap = 0;
            own = 1;
        }
        part_keep(self, &c, buf);
        buf = NULL;
    }
    if (st == CMP_EEMPTY || st == CMP_ETIMEDOUT) {
        if (raise_empty)
            PyErr_SetNone(self->st->q_empty);
        else
            list = PyList_New(0);
    }
    else if (st != CMP_OK)
        cmp_set_error(st);
    else
        list = load_batch(self, buf, lens, c.op.n);
done:
    if (lens != lens1)
        PyMem_Free(lens);
    if (own) {
        free(buf);
    }
    else {
        self->scratch_busy = 0;
        if (self->scratch_cap > SCRATCH_KEEP) {
            free(self->scratch);
            self->scratch = NULL;
            self->scratch_cap = 0;
        }
    }
    return list;
}

static const char *const get_names[] = {"block", "timeout"};

static PyObject *
ring_get(CmpRingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[2] = {NULL, NULL};
    int blocking;
    int64_t deadline;
    if (cmp_parse_args("get", args, nargs, kwnames, get_names, 2, 0, CMP_ARGS_PY, a) < 0)
        return NULL;
    if (check_open(self) < 0 || block_deadline(a[0], a[1], &blocking, &deadline) < 0)
        return NULL;
    PyObject *list = take_and_load(self, 1, blocking, deadline, 1);
    if (list == NULL)
        return NULL;
    PyObject *obj = Py_NewRef(PyList_GET_ITEM(list, 0));
    Py_DECREF(list);
    return obj;
}

static PyObject *
ring_get_nowait(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *args[1] = {Py_False};
    return ring_get(self, args, 1, NULL);
}

static const char *const get_many_names[] = {"max_items", "block", "timeout"};

static PyObject *
ring_get_many(CmpRingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    int blocking;
    int64_t deadline;
    if (cmp_parse_args("get_many", args, nargs, kwnames, get_many_names, 3, 1, CMP_ARGS_PY, a) < 0)
        return NULL;
    Py_ssize_t max = PyNumber_AsSsize_t(a[0], PyExc_OverflowError);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max_items must be at least 1");
        return NULL;
    }
    if (check_open(self) < 0 || block_deadline(a[1], a[2], &blocking, &deadline) < 0)
        return NULL;
    /* The first batch may wait; more are taken while there are more. */
    PyObject *list = take_and_load(self, max > MANY_MAX ? MANY_MAX : (size_t)max, blocking,
                                   deadline, 1);
    while (list != NULL && PyList_GET_SIZE(list) < max && backlog_len(self) == 0
           && cmp_ring_qsize(self->ring) != 0) {
        Py_ssize_t left = max - PyList_GET_SIZE(list);
        PyObject *more = take_and_load(self, left > MANY_MAX ? MANY_MAX : (size_t)left, 0, 0, 0);
        if (more == NULL) {
            /* That error is for the next get(); these items are returned. */
            if (backlog_push_error(self) < 0)
                Py_CLEAR(list);
            break;
        }
        Py_ssize_t len = PyList_GET_SIZE(list);
        int rc = PyList_GET_SIZE(more) == 0 ? 1 : PyList_SetSlice(list, len, len, more);
        Py_DECREF(more);
        if (rc < 0)
            Py_CLEAR(list);
        if (rc != 0)
            break;
    }
    return list;
}

/* ------------------------------------------------------------------------ */
/* State                                                                    */

static PyObject *
ring_qsize(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(cmp_ring_qsize(self->ring) + (uint64_t)backlog_len(self));
}

static PyObject *
ring_empty(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self) < 0)
        return NULL;
    if (self->closed) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return PyBool_FromLong(cmp_ring_qsize(self->ring) == 0 && backlog_len(self) == 0);
}

static PyObject *
ring_full(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self) < 0)
        return NULL;
    return PyBool_FromLong(cmp_ring_full(self->ring));
}

static PyObject *
ring_task_done(CmpRingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self) < 0)
        return NULL;
    if (cmp_ring_task_done(self->ring) != CMP_OK) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

struct join_call {
    cmp_ring *ring;
    int64_t deadline;
};

static int
join_blocking(void *arg)
{
    struct join_call *c = arg;
    return cmp_ring_join(c->ring, c->deadline);
}

static PyObject *
ring_join(CmpRingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct join_call c = {self->ring, CMP_FOREVER};
    if (ring_ready(self) < 0)
        return NULL;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_join() takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1 && cmp_deadline_from_timeout(args[0], &c.deadline) < 0)
        return NULL;
    if (cmp_ring_unfinished(self->ring) == 0)
        Py_RETURN_TRUE;
    int st = cmp_run_blocking(join_blocking, &c);
    if (st == CMP_ETIMEDOUT)
        Py_RETURN_FALSE;
    if (st != CMP_OK)
        return cmp_set_error(st);
    Py_RETURN_TRUE;
}

static PyObject *
ring_get_info(CmpRingObject *self, void *which)
{
    if (ring_ready(self) < 0)
        return NULL;
    switch ((int)(intptr_t)which) {
    case 0:
        return PyLong_FromSize_t(cmp_ring_capacity(self->ring));
    case 1:
        return PyLong_FromUnsignedLong(cmp_ring_maxsize(self->ring));
    case 2:
        return PyBool_FromLong(cmp_ring_flags(self->ring) & CMP_RING_JOINABLE);
    default:
        return PyLong_FromUnsignedLong(cmp_ring_unfinished(self->ring));
    }
}

static PyGetSetDef ring_getset[] = {
    {"_capacity", (getter)ring_get_info, NULL, "ring size in bytes", (void *)0},
    {"_ring_maxsize", (getter)ring_get_info, NULL, "maxsize (0: unbounded)", (void *)1},
    {"_joinable", (getter)ring_get_info, NULL, NULL, (void *)2},
    {"_unfinished", (getter)ring_get_info, NULL, "unfinished tasks", (void *)3},
    {NULL},
};

static PyMemberDef ring_members[] = {
    {"_closed", T_BOOL, offsetof(CmpRingObject, closed), 0, NULL},
    {"_pending", T_BOOL, offsetof(CmpRingObject, pending), 0, NULL},
    {NULL},
};

#define RING_COMMON_METHODS                                                              \
    {"_create", (PyCFunction)ring_create, METH_VARARGS, ring_create_doc},                \
    {"_attach", (PyCFunction)ring_attach, METH_VARARGS, "_attach(fd, size)"},            \
    {"_share", (PyCFunction)ring_share, METH_NOARGS, "_share() -> (fd, size)"},          \
    {"put", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL | METH_KEYWORDS, NULL}, \
    {"get", (PyCFunction)(void (*)(void))ring_get, METH_FASTCALL | METH_KEYWORDS, NULL}, \
    {"put_many", (PyCFunction)(void (*)(void))ring_put_many, METH_FASTCALL | METH_KEYWORDS, \
     "put_many(items, block=True, timeout=None)"},                                      \
    {"get_many", (PyCFunction)(void (*)(void))ring_get_many, METH_FASTCALL | METH_KEYWORDS, \
     "get_many(max_items, block=True, timeout=None) -> list"},                          \
    {"empty", (PyCFunction)ring_empty, METH_NOARGS, NULL}

static PyMethodDef ring_methods[] = {
    RING_COMMON_METHODS,
    {"put_nowait", (PyCFunction)ring_put_nowait, METH_O, NULL},
    {"get_nowait", (PyCFunction)ring_get_nowait, METH_NOARGS, NULL},
    {"qsize", (PyCFunction)ring_qsize, METH_NOARGS, NULL},
    {"full", (PyCFunction)ring_full, METH_NOARGS, NULL},
    {"_write", (PyCFunction)ring_write, METH_VARARGS, ring_write_doc},
    {"_unreserve", (PyCFunction)ring_unreserve, METH_O, "_unreserve(n)"},
    {"_task_done", (PyCFunction)ring_task_done, METH_NOARGS, NULL},
    {"_join", (PyCFunction)(void (*)(void))ring_join, METH_FASTCALL,
     "_join(timeout=None) -> bool"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef simple_methods[] = {
    RING_COMMON_METHODS,
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ring_slots[] = {
    {Py_tp_new, ring_new},
    {Py_tp_methods, ring_methods},
    {Py_tp_members, ring_members},
    {Py_tp_getset, ring_getset},
    {Py_tp_traverse, ring_traverse},
    {Py_tp_dealloc, ring_dealloc},
    {Py_tp_doc, "A message queue in shared memory (the base of cmp.queues.Queue)."},
    {0, NULL},
};

static PyType_Slot simple_slots[] = {
    {Py_tp_new, ring_new},
    {Py_tp_methods, simple_methods},
    {Py_tp_members, ring_members},
    {Py_tp_getset, ring_getset},
    {Py_tp_traverse, ring_traverse},
    {Py_tp_dealloc, ring_dealloc},
    {Py_tp_doc, "A message queue in shared memory (the base of cmp.queues.SimpleQueue)."},
    {0, NULL},
};

static PyType_Spec ring_spec = {
    .name = "cmp._core.Ring",
    .basicsize = sizeof(CmpRingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = ring_slots,
};

static PyType_Spec simple_spec = {
    .name = "cmp._core.SimpleRing",
    .basicsize = sizeof(CmpRingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = simple_slots,
};

/* ------------------------------------------------------------------------ */
/* Module                                                                   */

/* ------------------------------------------------------------------------ */
/* For cmp.pool (pool.c): messages built from raw pieces                    */

static CmpRingObject *
as_ring(cmp_state *st, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, st->q_ring_type) && !PyObject_TypeCheck(obj, st->q_simple_type)) {
        PyErr_Format(PyExc_TypeError, "expected a cmp queue, not %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    CmpRingObject *self = (CmpRingObject *)obj;
    return ring_ready(self) < 0 ? NULL : self;
}

cmp_ring *
cmp_queue_ring(cmp_state *st, PyObject *queue)
{
    CmpRingObject *self = as_ring(st, queue);
    return self ? self->ring : NULL;
}

PyObject *
cmp_queue_encode(cmp_state *st, PyObject *obj)
{
    fast_msg fm;
    int rc = fast_encode(obj, &fm);
    if (rc < 0)
        return NULL;
    return rc ? msg_to_pieces(&fm.msg, obj) : pickle_pieces(st, obj);
}

PyObject *
cmp_queue_decode(cmp_state *st, unsigned char *buf, size_t len)
{
    return load_msg(st, buf, len);
}

int
cmp_queue_put_pieces(cmp_state *st, PyObject *queue, PyObject *const *pieces, size_t n)
{
    CmpRingObject *self = as_ring(st, queue);
    if (self == NULL || check_open(self) < 0)
        return -1;
    if (self->simple) {
        for (size_t i = 0; i < n; i++) {
            if (write_pieces(self, pieces[i], 0) < 0)
                return -1;
        }
        return 0;
    }
    msg_view *views = PyMem_New(msg_view, n ? n : 1);
    cmp_ring_msg *msgs = PyMem_New(cmp_ring_msg, n ? n : 1);
    size_t opened = 0;
    int rc = -1;
    if (views == NULL || msgs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; opened < n; opened++) {
        if (msg_open(&views[opened], pieces[opened]) < 0)
            goto done;
        msgs[opened] = views[opened].msg;
    }
    rc = n == 0 ? 0 : offer_msgs(self, msgs, pieces, pieces, n, 1, CMP_FOREVER);
done:
    for (size_t i = 0; i < opened; i++)
        msg_release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(msgs);
    return rc;
}

PyDoc_STRVAR(queue_setup_doc,
"_queue_setup(Pickler, dispatch_table, protocol, loads, Empty, Full)\n\n"
"What put() and get() pickle with and raise; called by cmp.queues.");

static PyObject *
cmp_py_queue_setup(PyObject *module, PyObject *args)
{
    cmp_state *st = PyModule_GetState(module);
    PyObject *pickler, *table, *loads, *empty, *full;
    int protocol;
    if (!PyArg_ParseTuple(args, "OOiOOO:_queue_setup", &pickler, &table, &protocol, &loads,
                          &empty, &full))
        return NULL;
    Py_XSETREF(st->q_pickler_type, Py_NewRef(pickler));
    Py_XSETREF(st->q_dispatch_table, Py_NewRef(table));
    Py_XSETREF(st->q_loads, Py_NewRef(loads));
    Py_XSETREF(st->q_empty, Py_NewRef(empty));
    Py_XSETREF(st->q_full, Py_NewRef(full));
    st->q_protocol = protocol;
    Py_CLEAR(st->q_sink);
    Py_CLEAR(st->q_dump);
    Py_CLEAR(st->q_clear_memo);
    Py_RETURN_NONE;
}

static PyMethodDef queue_functions[] = {
    {"_queue_setup", cmp_py_queue_setup, METH_VARARGS, queue_setup_doc},
    {NULL, NULL, 0, NULL},
};

int
cmp_queue_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    st->q_sink_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sink_spec, NULL);
    if (st->q_sink_type == NULL)
        return -1;
    st->q_ring_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ring_spec, NULL);
    if (st->q_ring_type == NULL || PyModule_AddType(module, st->q_ring_type) < 0)
        return -1;
    st->q_simple_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &simple_spec, NULL);
    if (st->q_simple_type == NULL || PyModule_AddType(module, st->q_simple_type) < 0)
        return -1;
    return PyModule_AddFunctions(module, queue_functions);
}

int
cmp_queue_traverse(cmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->q_sink_type);
    Py_VISIT(st->q_ring_type);
    Py_VISIT(st->q_simple_type);
    Py_VISIT(st->q_pickler_type);
    Py_VISIT(st->q_dispatch_table);
    Py_VISIT(st->q_loads);
    Py_VISIT(st->q_empty);
    Py_VISIT(st->q_full);
    Py_VISIT(st->q_sink);
    Py_VISIT(st->q_dump);
    Py_VISIT(st->q_clear_memo);
    return 0;
}

void
cmp_queue_clear(cmp_state *st)
{
    Py_CLEAR(st->q_sink_type);
    Py_CLEAR(st->q_ring_type);
    Py_CLEAR(st->q_simple_type);
    Py_CLEAR(st->q_pickler_type);
    Py_CLEAR(st->q_dispatch_table);
    Py_CLEAR(st->q_loads);
    Py_CLEAR(st->q_empty);
    Py_CLEAR(st->q_full);
    Py_CLEAR(st->q_sink);
    Py_CLEAR(st->q_dump);
    Py_CLEAR(st->q_clear_memo);
}
