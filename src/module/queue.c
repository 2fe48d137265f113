/* cmp._core queues: Ring (the base of Queue and JoinableQueue) and
 * SimpleRing (the Pool's result queue: put waits for room, no overflow),
 * over src/core/ring.c, with the message layer of codec.c.
 *
 * put() pickles with one cached pickler (honouring the reduction registry)
 * whose file is a sink that keeps the pieces the pickler writes, so large
 * bytes are copied once, straight into the ring. get() copies messages into a
 * per-queue buffer and unpickles them from there, outside the ring's lock.
 * get() tries with the GIL held and waits without it (cmp_codec_take). */
#include "module.h"
#include "codec.h"
#include "ring.h"
#include "shm.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <unistd.h>

#define MANY_MAX 65536 /* get_many: messages per lock hold */

typedef struct {
    PyObject_HEAD
    cmp_ring *ring;
    cmp_shm_block block;
    PyObject *module; /* keeps cmp_state alive */
    cmp_state *st;
    cmp_rxbuf scratch; /* get()'s buffer; lent out (empty here) while in use */
    char closed;       /* _closed */
    char pending;      /* _pending: this process has an overflow */
    char simple;       /* SimpleRing: put blocks, no overflow */
    /* see "get" below */
    cmp_ring_rop part;       /* a streamed message partly received */
    unsigned char *part_buf; /* its buffer (malloc'd); NULL: none */
    size_t part_len;
    pid_t part_pid;    /* the process that holds the get lock */
    pid_t put_pid;     /* the last process to put: the stdlib's close() closes
                        * the pipe only in a process whose put() started its feeder */
    PyObject *backlog; /* list: raw messages and exceptions, or NULL */
} CmpQueueObject;

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
queue_ready(CmpQueueObject *self)
{
    if (self->ring != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "queue is not initialized");
    return -1;
}

static int
check_open(CmpQueueObject *self)
{
    if (queue_ready(self) < 0)
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
queue_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    PyTypeObject *t = type;
    while (t != NULL
           && !(PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE)
                && ((PyHeapTypeObject *)t)->ht_module != NULL))
        t = t->tp_base;
    if (t == NULL) {
        PyErr_SetString(PyExc_TypeError, "not a cmp queue type");
        return NULL;
    }
    CmpQueueObject *self = (CmpQueueObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->module = Py_NewRef(((PyHeapTypeObject *)t)->ht_module);
    self->st = PyModule_GetState(self->module);
    self->simple = (t == self->st->q_simple_type);
    return (PyObject *)self;
}

static int
queue_traverse(CmpQueueObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->module);
    Py_VISIT(self->backlog);
    return 0;
}

static void part_drop(CmpQueueObject *self);

static void
queue_release(CmpQueueObject *self)
{
    part_drop(self);
    Py_CLEAR(self->backlog);
    if (self->ring != NULL) {
        cmp_shm_free(&self->block);
        self->ring = NULL;
    }
    cmp_rxbuf_free(&self->scratch);
}

static void
queue_dealloc(CmpQueueObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (tp->tp_weaklistoffset)
        PyObject_ClearWeakRefs((PyObject *)self);
    queue_release(self);
    Py_CLEAR(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(queue_create_doc,
             "_create($self, capacity, maxsize, joinable, /)\n"
             "--\n"
             "\n"
             "Make a new ring of capacity bytes (a power of two) in shared memory;\n"
             "maxsize 0 means unbounded.");

static PyObject *
queue_create(CmpQueueObject *self, PyObject *args)
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
    if (cmp_ring_init(self->block.addr, (size_t)capacity, maxsize, joinable ? CMP_RING_JOINABLE : 0)
        != CMP_OK) {
        cmp_shm_free(&self->block);
        return cmp_set_error(CMP_ERRNO);
    }
    self->ring = self->block.addr;
    Py_RETURN_NONE;
}

static PyObject *
queue_attach(CmpQueueObject *self, PyObject *args)
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
queue_share(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (queue_ready(self) < 0)
        return NULL;
    int fd = cmp_shm_share(&self->block);
    return Py_BuildValue("in", fd,
                         (Py_ssize_t)cmp_ring_segment_size(cmp_ring_capacity(self->ring)));
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
    int st = cmp_ring_offer(c->ring, c->msgs + c->accepted, c->count - c->accepted, c->defer_all,
                            c->deadline, CMP_RING_WAIT_LOCK, &accepted, &written);
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
offer_msgs(CmpQueueObject *self, const cmp_ring_msg *msgs, PyObject *const *pieces,
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
    if (c.accepted > 0)
        self->put_pid = cmp_self_pid();
    if (c.accepted > c.written) {
        PyObject *list = PyList_New((Py_ssize_t)(c.accepted - c.written)), *r = NULL;
        for (size_t i = c.written; list != NULL && i < c.accepted; i++) {
            PyObject *p = pieces[i] ? Py_NewRef(pieces[i]) : cmp_msg_to_pieces(&msgs[i], objs[i]);
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
        PyErr_SetNone(self->st->full);
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
write_pieces(CmpQueueObject *self, PyObject *pieces, int reserved)
{
    cmp_pinned m;
    if (cmp_pin(&m, pieces) < 0)
        return -1;
    struct write_call c = {self->ring};
    cmp_ring_wop_init(&c.op, &m.msg, reserved);
    int st = cmp_run_blocking(write_blocking, &c);
    if (st != CMP_OK)
        cmp_ring_write_abandon(self->ring, &c.op);
    cmp_unpin(&m);
    if (st != CMP_OK) {
        cmp_set_error(st);
        return -1;
    }
    return 0;
}

static const char *const put_names[] = {"obj", "block", "timeout"};

static PyObject *
queue_put(CmpQueueObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    int blocking;
    int64_t deadline;
    if (cmp_parse_args("put", args, nargs, kwnames, put_names, 3, 1, CMP_ARGS_PY, a) < 0)
        return NULL;
    if (check_open(self) < 0 || block_deadline(a[1], a[2], &blocking, &deadline) < 0)
        return NULL;
    cmp_fast_msg fm;
    int rc = cmp_fast_encode(a[0], &fm);
    if (rc < 0)
        return NULL;
    if (rc == 1 && !self->simple) {
        PyObject *none = NULL;
        rc = offer_msgs(self, &fm.msg, &none, &a[0], 1, blocking, deadline);
    }
    else {
        PyObject *pieces =
                rc == 1 ? cmp_msg_to_pieces(&fm.msg, a[0]) : cmp_codec_dump(self->st, a[0]);
        if (pieces == NULL)
            return NULL;
        if (self->simple) {
            rc = write_pieces(self, pieces, 0);
        }
        else {
            cmp_pinned m;
            rc = cmp_pin(&m, pieces);
            if (rc == 0) {
                rc = offer_msgs(self, &m.msg, &pieces, &a[0], 1, blocking, deadline);
                cmp_unpin(&m);
            }
        }
        Py_DECREF(pieces);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
queue_put_nowait(CmpQueueObject *self, PyObject *obj)
{
    PyObject *args[2] = {obj, Py_False};
    return queue_put(self, args, 2, NULL);
}

static const char *const put_many_names[] = {"items", "block", "timeout"};

static PyObject *
queue_put_many(CmpQueueObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL}, *seq = NULL, *all = NULL, *ret = NULL;
    cmp_pinned *views = NULL;
    cmp_fast_msg *fast = NULL;
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
    all = PyList_New(n); /* pickler output, or None for a scalar */
    views = PyMem_New(cmp_pinned, n ? n : 1);
    fast = PyMem_New(cmp_fast_msg, n ? n : 1);
    msgs = PyMem_New(cmp_ring_msg, n ? n : 1);
    if (all == NULL || views == NULL || msgs == NULL || fast == NULL) {
        if (all != NULL)
            PyErr_NoMemory();
        goto done;
    }
    /* Pickle them all first: an unpicklable item puts none of them. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int rc = self->simple ? 0 : cmp_fast_encode(item, &fast[i]);
        if (rc < 0)
            goto done;
        PyObject *p = rc ? NULL : cmp_codec_dump(self->st, item);
        if (rc == 0 && p == NULL)
            goto done;
        PyList_SET_ITEM(all, i, p);
        if (rc)
            msgs[i] = fast[i].msg;
    }
    /* A SimpleRing's write_pieces pins each message itself. */
    for (; !self->simple && opened < n; opened++) {
        PyObject *p = PyList_GET_ITEM(all, opened);
        if (p == NULL) {
            views[opened].n = 0;
            views[opened].views = NULL;
            continue;
        }
        if (cmp_pin(&views[opened], p) < 0)
            goto done;
        msgs[opened] = views[opened].msg;
    }
    if (self->simple) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (write_pieces(self, PyList_GET_ITEM(all, i), 0) < 0)
                goto done;
        }
    }
    else if (n > 0
             && offer_msgs(self, msgs, ((PyListObject *)all)->ob_item, PySequence_Fast_ITEMS(seq),
                           (size_t)n, blocking, deadline)
                        < 0) {
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < opened; i++) {
        if (views[i].views != NULL)
            cmp_unpin(&views[i]);
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
    cmp_pinned *views;
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

PyDoc_STRVAR(queue_write_doc,
             "_write($self, messages, reserved, /)\n"
             "--\n"
             "\n"
             "Write pickled messages (a list of lists of bytes-like pieces) in order,\n"
             "waiting as long as it takes; reserved: they hold slots taken by put().");

static PyObject *
queue_write(CmpQueueObject *self, PyObject *args)
{
    PyObject *list, *ret = NULL;
    int reserved;
    if (!PyArg_ParseTuple(args, "O!p:_write", &PyList_Type, &list, &reserved))
        return NULL;
    if (queue_ready(self) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list), opened = 0;
    struct write_many_call c = {self->ring, PyMem_New(cmp_pinned, n ? n : 1), (size_t)n, 0,
                                reserved};
    if (c.views == NULL)
        return PyErr_NoMemory();
    for (; opened < n; opened++) {
        PyObject *pieces = PyList_GET_ITEM(list, opened);
        if (!PyList_Check(pieces)) {
            PyErr_SetString(PyExc_TypeError, "_write() needs lists of pieces");
            goto done;
        }
        if (cmp_pin(&c.views[opened], pieces) < 0)
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
        cmp_unpin(&c.views[i]);
    PyMem_Free(c.views);
    return ret;
}

static PyObject *
queue_unreserve(CmpQueueObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (queue_ready(self) < 0)
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

/* Let go of a partly received message: this process's, the ring's get lock
 * is released (the message is lost); a parent's (forked), left alone. */
static void
part_drop(CmpQueueObject *self)
{
    if (self->part_buf == NULL)
        return;
    if (self->part_pid == getpid() && self->ring != NULL)
        cmp_ring_take_abandon(self->ring, &self->part);
    free(self->part_buf);
    self->part_buf = NULL;
}

/* Keep op's partly received message (in buf, malloc'd, ours now). */
static void
part_keep(CmpQueueObject *self, cmp_ring_rop *op, unsigned char *buf)
{
    self->part = *op;
    self->part.buf = buf;
    self->part.lens = &self->part_len;
    self->part_buf = buf;
    self->part_pid = getpid();
}

/* The partly received message to resume, if there is one this process may
 * resume: moved into op (and its buffer returned), so one thread resumes it. */
static unsigned char *
part_take(CmpQueueObject *self, cmp_ring_rop *op, size_t *lens)
{
    if (self->part_buf == NULL)
        return NULL;
    if (self->part_pid != getpid()) {
        part_drop(self);
        return NULL;
    }
    unsigned char *buf = self->part_buf;
    *op = self->part;
    op->lens = lens;
    self->part_buf = NULL;
    return buf;
}

/* Put the exception being raised, or messages, at the front of the
 * backlog. 0, or -1 (out of memory: they are lost, a MemoryError set). */
static int
backlog_push(CmpQueueObject *self, PyObject *entries)
{
    if (self->backlog == NULL && (self->backlog = PyList_New(0)) == NULL)
        return -1;
    return PyList_SetSlice(self->backlog, 0, 0, entries);
}

static int
backlog_push_error(CmpQueueObject *self)
{
    PyObject *exc = cmp_exc_fetch();
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
backlog_len(CmpQueueObject *self)
{
    return self->backlog == NULL ? 0 : PyList_GET_SIZE(self->backlog);
}

/* Up to max items from the backlog: a new list (not empty), or NULL with
 * the error of the first entry. */
static PyObject *
backlog_serve(CmpQueueObject *self, size_t max)
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
            cmp_exc_restore(e); /* steals e */
        else {
            obj = cmp_codec_load(self->st, (unsigned char *)PyBytes_AS_STRING(e),
                                 (size_t)PyBytes_GET_SIZE(e));
            Py_DECREF(e);
        }
        if (obj == NULL) {
            if (PyList_GET_SIZE(list) > 0 && backlog_push_error(self) == 0)
                break; /* for the next get() */
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
load_batch(CmpQueueObject *self, unsigned char *buf, const size_t *lens, size_t n)
{
    PyObject *list = PyList_New(0);
    size_t off = 0, i;
    for (i = 0; list != NULL && i < n; off += lens[i++]) {
        PyObject *obj = cmp_codec_load(self->st, buf + off, lens[i]);
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
    PyObject *exc = cmp_exc_fetch();
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
            cmp_exc_restore(exc);
        return NULL;
    }
    if (exc != NULL) {
        cmp_exc_restore(exc);
        if (backlog_push_error(self) < 0)
            Py_CLEAR(list);
    }
    return list;
}

/* Take up to max messages and unpickle them: a new list (see load_batch).
 * Empty (or an empty list when !raise_empty). */
static PyObject *
take_and_load(CmpQueueObject *self, size_t max, int blocking, int64_t deadline, int raise_empty)
{
    if (backlog_len(self) > 0)
        return backlog_serve(self, max);
    size_t lens1[1];
    size_t *lens = lens1;
    cmp_rxbuf b = {NULL, 0};
    PyObject *list = NULL;
    cmp_ring_rop op;
    if (max > 1) {
        lens = PyMem_New(size_t, max);
        if (lens == NULL)
            return PyErr_NoMemory();
    }
    /* The partly received message's buffer when resuming; else the scratch
     * buffer, borrowed (a get() re-entered from an unpickler makes its own). */
    b.buf = part_take(self, &op, lens);
    if (b.buf != NULL) {
        b.cap = op.cap;
    }
    else {
        b = self->scratch;
        self->scratch = (cmp_rxbuf){NULL, 0};
        if (cmp_rxbuf_grow(&b, CMP_RXBUF_MIN) < 0)
            goto done;
        cmp_ring_rop_init(&op, b.buf, b.cap, lens, max);
    }
    int st;
    for (;;) {
        st = cmp_codec_take(self->ring, &op, blocking ? deadline : CMP_RING_NOW);
        if (st != CMP_NEED)
            break;
        if (cmp_rxbuf_grow(&b, op.need) < 0)
            goto done;
        cmp_ring_rop_init(&op, b.buf, b.cap, lens, max);
    }
    if (st != CMP_OK && op.locked) {
        /* Partly received: keep it, in this buffer, for the next get(). */
        part_keep(self, &op, b.buf);
        b = (cmp_rxbuf){NULL, 0};
    }
    if (st == CMP_EEMPTY || st == CMP_ETIMEDOUT) {
        if (raise_empty)
            PyErr_SetNone(self->st->empty);
        else
            list = PyList_New(0);
    }
    else if (st != CMP_OK)
        cmp_set_error(st);
    else
        list = load_batch(self, b.buf, lens, op.n);
done:
    if (lens != lens1)
        PyMem_Free(lens);
    /* Give the buffer back, unless a re-entered get() already did its own. */
    cmp_rxbuf_trim(&b);
    if (self->scratch.buf == NULL)
        self->scratch = b;
    else
        cmp_rxbuf_free(&b);
    return list;
}

static const char *const get_names[] = {"block", "timeout"};

static PyObject *
queue_get(CmpQueueObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
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
queue_get_nowait(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *args[1] = {Py_False};
    return queue_get(self, args, 1, NULL);
}

static const char *const get_many_names[] = {"max_items", "block", "timeout"};

static PyObject *
queue_get_many(CmpQueueObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
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
    PyObject *list =
            take_and_load(self, max > MANY_MAX ? MANY_MAX : (size_t)max, blocking, deadline, 1);
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
queue_qsize(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (queue_ready(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(cmp_ring_qsize(self->ring) + (uint64_t)backlog_len(self));
}

static PyObject *
queue_empty(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (queue_ready(self) < 0)
        return NULL;
    if (self->closed && (self->simple || self->put_pid == cmp_self_pid())) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return PyBool_FromLong(cmp_ring_qsize(self->ring) == 0 && backlog_len(self) == 0);
}

static PyObject *
queue_full(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (queue_ready(self) < 0)
        return NULL;
    return PyBool_FromLong(cmp_ring_full(self->ring));
}

static PyObject *
queue_task_done(CmpQueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (queue_ready(self) < 0)
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
queue_join(CmpQueueObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct join_call c = {self->ring, CMP_FOREVER};
    if (queue_ready(self) < 0)
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
queue_get_info(CmpQueueObject *self, void *which)
{
    if (queue_ready(self) < 0)
        return NULL;
    switch ((int)(intptr_t)which) {
    case 0: return PyLong_FromSize_t(cmp_ring_capacity(self->ring));
    case 1: return PyLong_FromUnsignedLong(cmp_ring_maxsize(self->ring));
    case 2: return PyBool_FromLong(cmp_ring_flags(self->ring) & CMP_RING_JOINABLE);
    default: return PyLong_FromUnsignedLong(cmp_ring_unfinished(self->ring));
    }
}

static PyGetSetDef queue_getset[] = {
        {"_capacity", (getter)queue_get_info, NULL, "ring size in bytes", (void *)0},
        {"_ring_maxsize", (getter)queue_get_info, NULL, "maxsize (0: unbounded)", (void *)1},
        {"_joinable", (getter)queue_get_info, NULL, NULL, (void *)2},
        {"_unfinished", (getter)queue_get_info, NULL, "unfinished tasks", (void *)3},
        {NULL},
};

static PyMemberDef queue_members[] = {
        {"_closed", T_BOOL, offsetof(CmpQueueObject, closed), 0, NULL},
        {"_pending", T_BOOL, offsetof(CmpQueueObject, pending), 0, NULL},
        {NULL},
};

#define RING_COMMON_METHODS                                                                \
    {"_create", (PyCFunction)queue_create, METH_VARARGS, queue_create_doc},                \
            {"_attach", (PyCFunction)queue_attach, METH_VARARGS,                           \
             "_attach($self, fd, size, /)\n"                                               \
             "--\n"                                                                        \
             "\n"                                                                          \
             "Map the ring shared as fd (size bytes)."},                                   \
            {"_share", (PyCFunction)queue_share, METH_NOARGS,                              \
             "_share($self, /)\n"                                                          \
             "--\n"                                                                        \
             "\n"                                                                          \
             "The ring as (fd, size), to pass to another process.\n"                       \
             "\n"                                                                          \
             "Returns (fd, size)."},                                                       \
            {"put", (PyCFunction)(void (*)(void))queue_put, METH_FASTCALL | METH_KEYWORDS, \
             "put($self, /, obj, block=True, timeout=None)\n"                              \
             "--\n"                                                                        \
             "\n"                                                                          \
             "Put obj into the queue."},                                                   \
            {"get", (PyCFunction)(void (*)(void))queue_get, METH_FASTCALL | METH_KEYWORDS, \
             "get($self, /, block=True, timeout=None)\n"                                   \
             "--\n"                                                                        \
             "\n"                                                                          \
             "Remove and return an item from the queue."},                                 \
            {"put_many", (PyCFunction)(void (*)(void))queue_put_many,                      \
             METH_FASTCALL | METH_KEYWORDS,                                                \
             "put_many($self, /, items, block=True, timeout=None)\n"                       \
             "--\n"                                                                        \
             "\n"                                                                          \
             "Put the items, in order."},                                                  \
            {"get_many", (PyCFunction)(void (*)(void))queue_get_many,                      \
             METH_FASTCALL | METH_KEYWORDS,                                                \
             "get_many($self, /, max_items, block=True, timeout=None)\n"                   \
             "--\n"                                                                        \
             "\n"                                                                          \
             "Remove and return a list of 1 to max_items items (see the README).\n"        \
             "\n"                                                                          \
             "Returns list."},                                                             \
    {                                                                                      \
        "empty", (PyCFunction)queue_empty, METH_NOARGS,                                    \
                "empty($self, /)\n"                                                        \
                "--\n"                                                                     \
                "\n"                                                                       \
                "Whether the queue is empty (a snapshot)."                                 \
    }

static PyMethodDef queue_methods[] = {
        RING_COMMON_METHODS,
        {"put_nowait", (PyCFunction)queue_put_nowait, METH_O,
         "put_nowait($self, obj, /)\n"
         "--\n"
         "\n"
         "put(obj, False)"},
        {"get_nowait", (PyCFunction)queue_get_nowait, METH_NOARGS,
         "get_nowait($self, /)\n"
         "--\n"
         "\n"
         "get(False)"},
        {"qsize", (PyCFunction)queue_qsize, METH_NOARGS,
         "qsize($self, /)\n"
         "--\n"
         "\n"
         "The approximate size of the queue."},
        {"full", (PyCFunction)queue_full, METH_NOARGS,
         "full($self, /)\n"
         "--\n"
         "\n"
         "Whether the queue is full (a snapshot)."},
        {"_write", (PyCFunction)queue_write, METH_VARARGS, queue_write_doc},
        {"_unreserve", (PyCFunction)queue_unreserve, METH_O,
         "_unreserve($self, n, /)\n"
         "--\n"
         "\n"
         "Give back n slots whose messages will never be written."},
        {"_task_done", (PyCFunction)queue_task_done, METH_NOARGS,
         "_task_done($self, /)\n"
         "--\n"
         "\n"
         "One task done (ValueError when none is unfinished)."},
        {"_join", (PyCFunction)(void (*)(void))queue_join, METH_FASTCALL,
         "_join($self, timeout=None, /)\n"
         "--\n"
         "\n"
         "Wait until every task is done; False on timeout.\n"
         "\n"
         "Returns bool."},
        {NULL, NULL, 0, NULL},
};

static PyMethodDef simple_methods[] = {
        RING_COMMON_METHODS,
        {NULL, NULL, 0, NULL},
};

static PyType_Slot queue_slots[] = {
        {Py_tp_new, queue_new},
        {Py_tp_methods, queue_methods},
        {Py_tp_members, queue_members},
        {Py_tp_getset, queue_getset},
        {Py_tp_traverse, queue_traverse},
        {Py_tp_dealloc, queue_dealloc},
        {Py_tp_doc, "A message queue in shared memory (the base of cmp.queues.Queue)."},
        {0, NULL},
};

static PyType_Slot simple_slots[] = {
        {Py_tp_new, queue_new},
        {Py_tp_methods, simple_methods},
        {Py_tp_members, queue_members},
        {Py_tp_getset, queue_getset},
        {Py_tp_traverse, queue_traverse},
        {Py_tp_dealloc, queue_dealloc},
        {Py_tp_doc, "A message queue in shared memory whose put() waits for room (the Pool's "
                    "result queue, cmp.queues._SimpleRing)."},
        {0, NULL},
};

static PyType_Spec queue_spec = {
        .name = "cmp._core.Ring",
        .basicsize = sizeof(CmpQueueObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = queue_slots,
};

static PyType_Spec simple_spec = {
        .name = "cmp._core.SimpleRing",
        .basicsize = sizeof(CmpQueueObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = simple_slots,
};

/* ------------------------------------------------------------------------ */
/* Module                                                                   */

/* ------------------------------------------------------------------------ */
/* For cmp.pool (pool.c): messages built from raw pieces                    */

static CmpQueueObject *
as_ring(cmp_state *st, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, st->q_ring_type) && !PyObject_TypeCheck(obj, st->q_simple_type)) {
        PyErr_Format(PyExc_TypeError, "expected a cmp queue, not %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    CmpQueueObject *self = (CmpQueueObject *)obj;
    return queue_ready(self) < 0 ? NULL : self;
}

cmp_ring *
cmp_queue_ring(cmp_state *st, PyObject *queue)
{
    CmpQueueObject *self = as_ring(st, queue);
    return self ? self->ring : NULL;
}

int
cmp_queue_put_pieces(cmp_state *st, PyObject *queue, PyObject *const *pieces, size_t n)
{
    CmpQueueObject *self = as_ring(st, queue);
    if (self == NULL || check_open(self) < 0)
        return -1;
    if (self->simple) {
        for (size_t i = 0; i < n; i++) {
            if (write_pieces(self, pieces[i], 0) < 0)
                return -1;
        }
        return 0;
    }
    cmp_pinned *views = PyMem_New(cmp_pinned, n ? n : 1);
    cmp_ring_msg *msgs = PyMem_New(cmp_ring_msg, n ? n : 1);
    size_t opened = 0;
    int rc = -1;
    if (views == NULL || msgs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; opened < n; opened++) {
        if (cmp_pin(&views[opened], pieces[opened]) < 0)
            goto done;
        msgs[opened] = views[opened].msg;
    }
    rc = n == 0 ? 0 : offer_msgs(self, msgs, pieces, pieces, n, 1, CMP_FOREVER);
done:
    for (size_t i = 0; i < opened; i++)
        cmp_unpin(&views[i]);
    PyMem_Free(views);
    PyMem_Free(msgs);
    return rc;
}

int
cmp_queue_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    st->q_ring_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &queue_spec, NULL);
    if (st->q_ring_type == NULL || PyModule_AddType(module, st->q_ring_type) < 0)
        return -1;
    st->q_simple_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &simple_spec, NULL);
    if (st->q_simple_type == NULL || PyModule_AddType(module, st->q_simple_type) < 0)
        return -1;
    return 0;
}

int
cmp_queue_traverse(cmp_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->q_ring_type);
    Py_VISIT(st->q_simple_type);
    return 0;
}

void
cmp_queue_clear(cmp_state *st)
{
    Py_CLEAR(st->q_ring_type);
    Py_CLEAR(st->q_simple_type);
}
