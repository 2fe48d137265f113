/* cmp._core.Connection: framed send/recv over a descriptor, wait(), and the
 * descriptor hand-off used to send a Connection through another one.
 *
 * The hot paths (send, recv, send_bytes, recv_bytes, recv_bytes_into, poll)
 * are here; cmp/connection.py subclasses the type for the Python-level parts
 * (repr, pickling, context manager).
 *
 * Receiving: a frame's header is read first, then its payload straight into
 * the bytes object that recv_bytes() returns (or into the caller's buffer for
 * recv_bytes_into() when it fits). The progress of a frame lives on the C
 * stack; if a signal handler raises part-way (Ctrl-C), the partial frame is
 * parked on the Connection and the next receive resumes it, so no byte of the
 * stream is lost. Concurrent receives on one Connection from several threads
 * interleave their reads exactly like the stdlib's (unsupported, but never
 * unsafe: each call owns its buffer).
 *
 * Sending: send() pickles with one cached reduction.ForkingPickler whose
 * file's write is a list's append, so the pickle's pieces (and any large
 * bytes payload, which _pickle hands over without copying) go out in one
 * writev() behind the header. A send interrupted part-way through a frame
 * keeps the unsent rest and writes it before the next frame.
 *
 * Pipe() ends (self->chan set) carry their messages in a channel's rings
 * instead (src/core/chan.h): a message is one ring record, written whole
 * or not at all; the descriptor only wakes receivers, reports the other
 * end's close, and carries passed descriptors in records of their own.
 *
 * Descriptors: while send() pickles on a Unix socket, reduction.DupFd()
 * outside of spawning calls _pass_fd(): the descriptor is dup'ed into this
 * thread's batch and travels with the frame as SCM_RIGHTS. The receiving
 * recv() exposes the frame's descriptors to _take_fd() while it unpickles and
 * closes those nobody took.
 */
#include "module.h"
#include "codec.h"
#include "chan.h"
#include "wire.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bytes objects cannot be larger than this (header and slack excluded). */
#define CONN_MAX_FRAME ((uint64_t)PY_SSIZE_T_MAX - 4096)

/* A frame interrupted part-way, waiting for the next receive. */
typedef struct {
    cmp_wire_rx rx;
    PyObject *buf; /* the bytes object rx.body points into */
} conn_parked;

/* A streamed message whose receive a signal handler interrupted. */
typedef struct {
    cmp_ring_rop op;
    size_t lens[1];
    PyObject *buf; /* the bytes object op.buf points into */
} conn_rparked;

/* How often a producer on a channel asks the kernel whether its reader is
 * still there (besides after any explicit close of an end), and how long a
 * producer waits for room between two such checks. */
#define CONN_PEER_CHECK_NS (1000 * 1000LL)
#define CONN_PEER_PROBE_NS (50 * 1000 * 1000LL)
/* Receives first try a buffer this large, with the GIL held: less than half
 * a ring, so a message that must stream through it never starts there. */
#define CONN_RX_FIRST 8192

typedef struct {
    PyObject_HEAD
    int fd; /* -1 once closed */
    char readable;
    char writable;
    char is_socket;          /* sendmsg/recvmsg, MSG_NOSIGNAL */
    char is_unix;            /* a Unix socket: descriptors can travel */
    conn_parked *parked;     /* an interrupted incoming frame, or NULL */
    PyObject *tx_rest;       /* the unsent rest of an interrupted frame, or NULL */
    cmp_spin_budget spin_ns; /* busy-wait before blocking in recv (spin.h) */
    /* A Pipe() end: messages travel through the channel, not the descriptor */
    cmp_chan_seg *chan;
    int end;    /* 0 or 1: it receives from ring `end` */
    char exact; /* fileno() was asked: keep its readiness exact */
    uint32_t closes_seen;
    int64_t peer_checked;
    conn_rparked *rparked;
} CmpConnection;

static inline int
chan_rx(const CmpConnection *self)
{
    return self->end;
}

static inline int
chan_tx(const CmpConnection *self)
{
    return self->chan->c.nrings == 2 ? 1 - self->end : 0;
}

/* A call that releases the GIL holds its own reference to the channel
 * (cmp_chan_hold): another thread may close the Connection meanwhile. */

/* Descriptors handed out while this thread pickles (send) or unpickles
 * (recv) a frame; NULL outside of those. */
typedef struct {
    int fds[CMP_WIRE_MAX_FDS];
    int nfds;
} conn_fd_batch;

static _Thread_local conn_fd_batch *conn_tx_batch;
static _Thread_local conn_fd_batch *conn_rx_batch;

static void
close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0)
            cmp_wire_close(fds[i]);
        fds[i] = -1;
    }
}

/* ------------------------------------------------------------------------ */
/* State checks (the stdlib's messages)                                     */

static int
check_open(CmpConnection *self)
{
    if (self->fd >= 0)
        return 0;
    PyErr_SetString(PyExc_OSError, "handle is closed");
    return -1;
}

static int
check_readable(CmpConnection *self)
{
    if (check_open(self) < 0)
        return -1;
    if (!self->readable) {
        PyErr_SetString(PyExc_OSError, "connection is write-only");
        return -1;
    }
    return 0;
}

static int
check_writable(CmpConnection *self)
{
    if (check_open(self) < 0)
        return -1;
    if (!self->writable) {
        PyErr_SetString(PyExc_OSError, "connection is read-only");
        return -1;
    }
    return 0;
}

static void
drop_parked(CmpConnection *self)
{
    conn_parked *p = self->parked;
    if (p == NULL)
        return;
    self->parked = NULL;
    close_fds(p->rx.fds, p->rx.nfds);
    Py_XDECREF(p->buf);
    PyMem_Free(p);
}

static void
drop_chan(CmpConnection *self)
{
    cmp_chan_seg *ch = self->chan;
    if (ch == NULL)
        return;
    self->chan = NULL;
    conn_rparked *rp = self->rparked;
    if (rp != NULL) {
        self->rparked = NULL;
        cmp_ring_take_abandon(ch->c.ring[chan_rx(self)], &rp->op);
        Py_XDECREF(rp->buf);
        PyMem_Free(rp);
    }
    cmp_chan_note_close(&ch->c);
    cmp_chan_release(ch);
}

/* Let go of the descriptor (returned, -1 if closed already) and of all that
 * goes with it: the channel, and partly received or sent frames. */
static int
release_fd(CmpConnection *self)
{
    int fd = self->fd;
    drop_chan(self);
    self->fd = -1;
    drop_parked(self);
    Py_CLEAR(self->tx_rest);
    return fd;
}

static int
conn_close_fd(CmpConnection *self)
{
    int fd = release_fd(self);
    if (fd < 0)
        return 0;
    if (cmp_wire_close(fd) != CMP_OK) {
        cmp_set_error(CMP_ERRNO);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Type basics                                                              */

static int
conn_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    CmpConnection *self = (CmpConnection *)op;
    static char *kwlist[] = {"handle", "readable", "writable", NULL};
    PyObject *handle, *index = NULL;
    int readable = 1, writable = 1, ret = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:Connection", kwlist, &handle, &readable,
                                     &writable))
        return -1;
    if (PyIndex_Check(handle))
        index = PyNumber_Index(handle);
    else
        index = PyObject_CallMethod(handle, "__index__", NULL); /* the stdlib's error */
    if (index == NULL)
        goto done;
    int overflow;
    long fd = PyLong_AsLongAndOverflow(index, &overflow);
    if (fd == -1 && PyErr_Occurred())
        goto done;
    if (overflow < 0 || fd < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        goto done;
    }
    if (overflow > 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "handle is too large");
        goto done;
    }
    if (!readable && !writable) {
        PyErr_SetString(PyExc_ValueError, "at least one of `readable` and `writable` must be True");
        goto done;
    }
    if (self->fd >= 0 && conn_close_fd(self) < 0)
        goto done;
    self->fd = (int)fd;
    self->readable = (char)readable;
    self->writable = (char)writable;
    int kind = cmp_wire_fd_kind(self->fd);
    self->is_socket = kind != CMP_WIRE_PIPE;
    self->is_unix = kind == CMP_WIRE_UNIX;
    ret = 0;
done:
    Py_XDECREF(index);
    return ret;
}

static PyObject *
conn_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    CmpConnection *self = (CmpConnection *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    return (PyObject *)self;
}

static void
conn_dealloc(PyObject *op)
{
    CmpConnection *self = (CmpConnection *)op;
    PyTypeObject *tp = Py_TYPE(op);
    int fd = release_fd(self);
    if (fd >= 0)
        cmp_wire_close(fd);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
conn_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((CmpConnection *)op)->fd < 0);
}

static PyObject *
conn_get_readable(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((CmpConnection *)op)->readable);
}

static PyObject *
conn_get_writable(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((CmpConnection *)op)->writable);
}

static PyObject *
conn_get_handle(PyObject *op, void *Py_UNUSED(closure))
{
    CmpConnection *self = (CmpConnection *)op;
    if (self->fd < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->fd);
}

static PyObject *
conn_fileno(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CmpConnection *self = (CmpConnection *)op;
    if (check_open(self) < 0)
        return NULL;
    if (self->chan != NULL && !self->exact) {
        /* Someone may select() on it from now on: make its readiness exact. */
        self->exact = 1;
        if (self->readable)
            cmp_chan_quiesce(&self->chan->c, chan_rx(self), self->fd, self->is_socket);
    }
    return PyLong_FromLong(self->fd);
}

static PyObject *
conn_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (conn_close_fd((CmpConnection *)op) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
conn_detach(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CmpConnection *self = (CmpConnection *)op;
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(release_fd(self));
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                  */

struct tx_call {
    int fd;
    cmp_wire_tx tx;
};

static int
tx_call_fn(void *p)
{
    struct tx_call *a = p;
    return cmp_wire_send(a->fd, &a->tx);
}

/* Write iov (a whole frame) on self; if a signal handler raises after part
 * of it went out, keep the rest for the next send. */
static int
conn_write_frame(CmpConnection *self, struct iovec *iov, int iovcnt, const int *fds, int nfds)
{
    struct tx_call a = {.fd = self->fd,
                        .tx = {.iov = iov,
                               .iovcnt = iovcnt,
                               .fds = fds,
                               .nfds = nfds,
                               .is_socket = self->is_socket}};
    int st = cmp_run_blocking(tx_call_fn, &a);
    if (st == CMP_PYERR && a.tx.sent > 0 && a.tx.iovcnt > 0) {
        size_t rest = 0;
        for (int i = 0; i < a.tx.iovcnt; i++)
            rest += a.tx.iov[i].iov_len;
        PyObject *saved = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rest);
        if (saved == NULL) {
            /* The stream is broken either way; the signal's exception wins. */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_Clear();
            PyErr_Restore(et, ev, tb);
            return st;
        }
        char *dst = PyBytes_AS_STRING(saved);
        for (int i = 0; i < a.tx.iovcnt; i++) {
            memcpy(dst, a.tx.iov[i].iov_base, a.tx.iov[i].iov_len);
            dst += a.tx.iov[i].iov_len;
        }
        Py_XSETREF(self->tx_rest, saved);
    }
    return st;
}

/* Finish a frame an earlier send left half-written. */
static int
conn_flush_rest(CmpConnection *self)
{
    if (self->tx_rest == NULL)
        return CMP_OK;
    PyObject *rest = self->tx_rest;
    self->tx_rest = NULL;
    struct iovec iov = {PyBytes_AS_STRING(rest), (size_t)PyBytes_GET_SIZE(rest)};
    int st = conn_write_frame(self, &iov, 1, NULL, 0);
    if (st == CMP_PYERR && self->tx_rest == NULL) {
        /* Interrupted before any of it went out: keep all of it. */
        self->tx_rest = rest;
        return st;
    }
    Py_DECREF(rest);
    return st;
}

/* Sending on a channel */

struct ring_tx {
    cmp_chan_seg *ch;
    int fd;
    int is_socket;
    cmp_ring *ring;
    cmp_ring_wop op;
    int k;
    const int *fds;
    int nfds;
    int bell_errno;
};

static int
ring_tx_on_lock(void *p)
{
    struct ring_tx *a = p;
    return cmp_chan_send_fds(a->fd, a->fds, a->nfds);
}

static void
ring_tx_on_publish(void *p)
{
    struct ring_tx *a = p;
    if (cmp_chan_notify(&a->ch->c, a->k, a->fd, a->is_socket) != CMP_OK)
        a->bell_errno = errno;
}

/* Wait for room in slices, asking the kernel between them whether the
 * reader is still there. */
static int
ring_tx_fn(void *p)
{
    struct ring_tx *a = p;
    for (;;) {
        a->op.deadline = cmp_monotonic_ns() + CONN_PEER_PROBE_NS;
        int st = cmp_ring_write(a->ring, &a->op);
        if (st != CMP_ETIMEDOUT)
            return st;
        if (cmp_chan_peer_gone(a->fd)) {
            errno = EPIPE;
            return CMP_ERRNO;
        }
    }
}

/* Whether to ask the kernel about the reader before this send: after any
 * explicit close of an end of this channel, and at most every
 * CONN_PEER_CHECK_NS otherwise. */
static int
peer_check_due(CmpConnection *self)
{
    uint32_t closes = cmp_chan_closes(&self->chan->c);
    int64_t now = cmp_monotonic_ns();
    if (closes == self->closes_seen && now - self->peer_checked < CONN_PEER_CHECK_NS)
        return 0;
    self->closes_seen = closes;
    self->peer_checked = now;
    return 1;
}

/* Put one message (its pieces, no header) in the channel; a message that
 * cannot be written whole is not written at all. */
static int
conn_ring_send(CmpConnection *self, const struct iovec *iov, int niov, size_t total, const int *fds,
               int nfds)
{
    if (peer_check_due(self) && cmp_chan_peer_gone(self->fd)) {
        errno = EPIPE;
        return CMP_ERRNO;
    }
    cmp_ring_msg msg = {iov, niov, total};
    struct ring_tx a = {.ch = cmp_chan_hold(self->chan),
                        .fd = self->fd,
                        .is_socket = self->is_socket,
                        .k = chan_tx(self),
                        .fds = fds,
                        .nfds = nfds};
    a.ring = a.ch->c.ring[a.k];
    cmp_ring_wop_init(&a.op, &msg, 0);
    a.op.mark = nfds > 0;
    a.op.on_lock = nfds > 0 ? ring_tx_on_lock : NULL;
    a.op.on_publish = ring_tx_on_publish;
    a.op.arg = &a;
    a.op.deadline = 0; /* first without waiting, with the GIL */
    int st = cmp_ring_write(a.ring, &a.op);
    if (st == CMP_ETIMEDOUT)
        st = cmp_run_blocking(ring_tx_fn, &a);
    if (st != CMP_OK)
        cmp_ring_write_abandon(a.ring, &a.op);
    else if (a.bell_errno != 0) {
        errno = a.bell_errno;
        st = CMP_ERRNO;
    }
    cmp_chan_release(a.ch);
    return st;
}

static PyObject *
conn_send_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset", "size"};
    CmpConnection *self = (CmpConnection *)op;
    PyObject *argv[3] = {NULL, NULL, NULL};
    Py_buffer view = {0};
    PyObject *ret = NULL;
    if (cmp_parse_args("send_bytes", args, nargs, kwnames, names, 3, 1, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (check_writable(self) < 0)
        return NULL;
    if (!PyObject_CheckBuffer(argv[0])) {
        PyErr_Format(PyExc_TypeError, "memoryview: a bytes-like object is required, not '%.200s'",
                     Py_TYPE(argv[0])->tp_name);
        return NULL;
    }
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = view.len, offset = 0, size;
    if (argv[1] != NULL) {
        offset = PyNumber_AsSsize_t(argv[1], PyExc_OverflowError);
        if (offset == -1 && PyErr_Occurred())
            goto done;
    }
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset is negative");
        goto done;
    }
    if (n < offset) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset");
        goto done;
    }
    if (argv[2] == NULL || argv[2] == Py_None) {
        size = n - offset;
    }
    else {
        size = PyNumber_AsSsize_t(argv[2], PyExc_OverflowError);
        if (size == -1 && PyErr_Occurred())
            goto done;
        if (size < 0) {
            PyErr_SetString(PyExc_ValueError, "size is negative");
            goto done;
        }
        if (size > n - offset) {
            PyErr_SetString(PyExc_ValueError, "buffer length < offset + size");
            goto done;
        }
    }
    int st;
    if (self->chan != NULL) {
        struct iovec iov = {(char *)view.buf + offset, (size_t)size};
        st = conn_ring_send(self, &iov, 1, (size_t)size, NULL, 0);
    }
    else if ((st = conn_flush_rest(self)) == CMP_OK) {
        unsigned char hdr[CMP_WIRE_HEADER_MAX];
        struct iovec iov[2] = {
                {hdr, cmp_wire_header((uint64_t)size, hdr)},
                {(char *)view.buf + offset, (size_t)size},
        };
        st = conn_write_frame(self, iov, 2, NULL, 0);
    }
    if (st != CMP_OK) {
        cmp_set_error(st);
        goto done;
    }
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&view);
    return ret;
}

#define CONN_STACK_CHUNKS 8

static PyObject *
conn_send(PyObject *op, PyTypeObject *defining_class, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    static const char *const names[] = {"obj"};
    CmpConnection *self = (CmpConnection *)op;
    cmp_state *state = PyType_GetModuleState(defining_class);
    PyObject *argv[1] = {NULL};
    PyObject *ret = NULL;
    PyObject *chunks = NULL;
    conn_fd_batch batch, *outer_batch = conn_tx_batch;
    Py_buffer stack_views[CONN_STACK_CHUNKS], *views = stack_views;
    struct iovec stack_iov[CONN_STACK_CHUNKS + 1], *iov = stack_iov;
    Py_ssize_t nviews = 0;
    batch.nfds = 0;

    if (state == NULL)
        return NULL;
    if (cmp_parse_args("send", args, nargs, kwnames, names, 1, 1, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (check_writable(self) < 0)
        return NULL;

    /* Pickle (with the interpreter's cached pickler: codec.c). */
    conn_tx_batch = self->is_unix ? &batch : NULL;
    chunks = cmp_codec_dump(state, argv[0]);
    conn_tx_batch = outer_batch;
    if (chunks == NULL)
        goto done;

    /* Pin every piece. */
    Py_ssize_t n = PyList_GET_SIZE(chunks);
    if (n > CONN_STACK_CHUNKS) {
        views = PyMem_New(Py_buffer, (size_t)n);
        iov = PyMem_New(struct iovec, (size_t)n + 1);
        if (views == NULL || iov == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(chunks, i), &views[i], PyBUF_SIMPLE) < 0)
            goto done;
        nviews++;
        iov[i + 1].iov_base = views[i].buf;
        iov[i + 1].iov_len = (size_t)views[i].len;
        total += (uint64_t)views[i].len;
    }

    int st;
    if (self->chan != NULL) {
        st = conn_ring_send(self, iov + 1, (int)n, (size_t)total, batch.fds, batch.nfds);
    }
    else if ((st = conn_flush_rest(self)) == CMP_OK) {
        unsigned char hdr[CMP_WIRE_HEADER_MAX];
        iov[0].iov_base = hdr;
        iov[0].iov_len = cmp_wire_header(total, hdr);
        st = conn_write_frame(self, iov, (int)n + 1, batch.fds, batch.nfds);
    }
    if (st != CMP_OK) {
        cmp_set_error(st);
        goto done;
    }
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    for (Py_ssize_t i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    if (views != stack_views)
        PyMem_Free(views);
    if (iov != stack_iov)
        PyMem_Free(iov);
    Py_XDECREF(chunks);
    close_fds(batch.fds, batch.nfds); /* our dups: the kernel holds its own */
    return ret;
}

PyDoc_STRVAR(pass_fd_doc,
             "_pass_fd($module, fd, /)\n"
             "--\n"
             "\n"
             "While send() pickles on a Unix socket: dup fd into the frame's descriptors\n"
             "and return its index there. Otherwise RuntimeError.\n"
             "\n"
             "Returns index.");

static PyObject *
cmp_py_pass_fd(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    conn_fd_batch *b = conn_tx_batch;
    if (b == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a file descriptor can only be passed to a running process by "
                        "Connection.send() on a Unix socket (a duplex Pipe() or an AF_UNIX "
                        "Listener/Client), or to a child while it is being spawned");
        return NULL;
    }
    if (b->nfds >= CMP_WIRE_MAX_FDS) {
        PyErr_Format(PyExc_ValueError, "a message can pass at most %d file descriptors",
                     CMP_WIRE_MAX_FDS);
        return NULL;
    }
    int dup = cmp_wire_dup(fd);
    if (dup < 0)
        return cmp_set_error(CMP_ERRNO);
    b->fds[b->nfds] = dup;
    return PyLong_FromLong(b->nfds++);
}

/* ------------------------------------------------------------------------ */
/* Receiving                                                                */

struct rx_call {
    int fd;
    int is_socket;
    cmp_wire_rx *rx;
    cmp_spin_budget *spin_ns; /* NULL once spun: a retry after a signal blocks */
};

static int
rx_header_fn(void *p)
{
    struct rx_call *a = p;
    int64_t start = 0;
    cmp_spin_budget *budget = a->spin_ns;
    if (budget != NULL) {
        a->spin_ns = NULL;
        int st = cmp_wire_recv_header_spin(a->fd, a->is_socket, a->rx, budget, &start);
        if (st != CMP_EEMPTY)
            return st;
    }
    int st = cmp_wire_recv_header(a->fd, a->is_socket, a->rx);
    if (st == CMP_OK && budget != NULL)
        cmp_wire_spin_settle(budget, start);
    return st;
}

static int
rx_body_fn(void *p)
{
    struct rx_call *a = p;
    return cmp_wire_recv_body(a->fd, a->rx);
}

/* A bad length: like the stdlib, a duplex end stops reading (the rest of the
 * frame is still in the stream), a read-only end is closed. */
static void
bad_message_length(CmpConnection *self)
{
    if (self->writable) {
        self->readable = 0;
        drop_parked(self);
    }
    else {
        conn_close_fd(self);
        PyErr_Clear();
    }
    cmp_set_error(CMP_EBADMSG);
}

/* Park an interrupted frame on self; its payload so far moves into a bytes
 * object if it was going into the caller's buffer. */
static void
park(CmpConnection *self, cmp_wire_rx *rx, PyObject *buf)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    conn_parked *p = PyMem_Malloc(sizeof(*p));
    if (p == NULL)
        goto lost;
    if (rx->header_done && buf == NULL && rx->body != NULL) {
        buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rx->len);
        if (buf == NULL) {
            PyMem_Free(p);
            goto lost;
        }
        memcpy(PyBytes_AS_STRING(buf), rx->body, (size_t)rx->body_have);
        rx->body = PyBytes_AS_STRING(buf);
    }
    else {
        Py_XINCREF(buf);
    }
    p->rx = *rx;
    p->buf = buf;
    drop_parked(self);
    self->parked = p;
    PyErr_Restore(et, ev, tb);
    return;
lost:
    /* Out of memory as well: the frame is lost, the signal's error wins. */
    PyErr_Clear();
    close_fds(rx->fds, rx->nfds);
    PyErr_Restore(et, ev, tb);
}

/* Receiving from a channel */

struct ring_rx {
    cmp_ring *ring;
    cmp_ring_rop op;
    size_t lens[1];
};

static int
ring_rx_fn(void *p)
{
    struct ring_rx *a = p;
    /* Never waits for a message (cmp_chan_wait does, watching the peer);
     * waits for the rest of one as op->stream_deadline says. */
    return cmp_ring_take(a->ring, &a->op, CMP_RING_NOW);
}

struct chan_wait_call {
    cmp_chan_seg *ch;
    int k, fd, is_socket;
    int64_t deadline;
    cmp_spin_budget *spin_ns;
};

static void
chan_wait_init(struct chan_wait_call *w, CmpConnection *self, cmp_chan_seg *ch, int64_t deadline)
{
    *w = (struct chan_wait_call){ch,       chan_rx(self), self->fd, self->is_socket,
                                 deadline, &self->spin_ns};
}

static int
chan_wait_fn(void *p)
{
    struct chan_wait_call *w = p;
    return cmp_chan_wait(&w->ch->c, w->k, w->fd, w->is_socket, w->deadline, w->spin_ns);
}

/* Keep a streamed receive that a signal handler interrupted for the next
 * receive (the ring's get lock stays ours); what went into the caller's
 * buffer moves into a bytes object. */
static void
ring_park(CmpConnection *self, struct ring_rx *a, PyObject *buf)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    conn_rparked *p = PyMem_Malloc(sizeof(*p));
    if (p != NULL && buf == NULL) {
        buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)a->op.cap);
        if (buf != NULL)
            memcpy(PyBytes_AS_STRING(buf), a->op.buf, a->op.cap);
    }
    else {
        Py_XINCREF(buf);
    }
    if (p == NULL || buf == NULL) {
        /* Out of memory as well: the message is lost. */
        PyErr_Clear();
        cmp_ring_take_abandon(a->ring, &a->op);
        PyMem_Free(p);
        Py_XDECREF(buf);
        PyErr_Restore(et, ev, tb);
        return;
    }
    p->op = a->op;
    p->op.buf = (unsigned char *)PyBytes_AS_STRING(buf);
    p->op.lens = p->lens;
    p->buf = buf;
    self->rparked = p;
    PyErr_Restore(et, ev, tb);
}

/* conn_recv_frame() for a Pipe() end. A message whose length is refused
 * (maxlength) stays in the ring. */
static int
conn_ring_recv_frame(CmpConnection *self, cmp_wire_rx *rx, Py_ssize_t maxlength, char *into,
                     Py_ssize_t room, PyObject **bufp)
{
    struct ring_rx a;
    cmp_chan_seg *ch = cmp_chan_hold(self->chan);
    int fd = self->fd, is_socket = self->is_socket;
    a.ring = ch->c.ring[chan_rx(self)];
    PyObject *buf = NULL;
    unsigned char first[CONN_RX_FIRST];
    int st;
    rx->nfds = 0;
    rx->len = 0;
    if (self->rparked != NULL) {
        conn_rparked *p = self->rparked;
        self->rparked = NULL;
        a.op = p->op;
        a.op.lens = a.lens;
        buf = p->buf;
        PyMem_Free(p);
        st = cmp_run_blocking(ring_rx_fn, &a);
        if (st != CMP_OK)
            goto fail;
        goto taken;
    }
    for (;;) {
        /* Small messages: with the GIL, into a buffer on the stack (or the
         * caller's), never waiting. */
        unsigned char *dst = into != NULL ? (unsigned char *)into : first;
        size_t cap = into != NULL ? (size_t)room : sizeof(first);
        if (cap > sizeof(first))
            cap = sizeof(first);
        cmp_ring_rop_init(&a.op, dst, cap, a.lens, 1);
        st = cmp_ring_take(a.ring, &a.op, CMP_RING_NOW);
        if (st == CMP_OK) {
            if (dst == first) {
                if (maxlength >= 0 && a.lens[0] > (size_t)maxlength) {
                    st = CMP_EBADMSG;
                    goto fail;
                }
                buf = PyBytes_FromStringAndSize((char *)first, (Py_ssize_t)a.lens[0]);
                if (buf == NULL) {
                    st = CMP_PYERR;
                    goto fail;
                }
            }
            goto taken;
        }
        if (st == CMP_NEED) {
            size_t need = a.op.need;
            if ((maxlength >= 0 && need > (size_t)maxlength) || need > CONN_MAX_FRAME) {
                st = CMP_EBADMSG;
                goto fail;
            }
            if (into != NULL && need <= (size_t)room) {
                dst = (unsigned char *)into;
            }
            else {
                buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
                if (buf == NULL) {
                    st = CMP_PYERR;
                    goto fail;
                }
                dst = (unsigned char *)PyBytes_AS_STRING(buf);
            }
            cmp_ring_rop_init(&a.op, dst, need, a.lens, 1);
            a.op.stream_deadline = CMP_FOREVER; /* recv() has no timeout */
            st = cmp_run_blocking(ring_rx_fn, &a);
            if (st == CMP_OK) {
                if (buf != NULL && a.lens[0] < need
                    && _PyBytes_Resize(&buf, (Py_ssize_t)a.lens[0]) < 0) {
                    st = CMP_PYERR; /* (buf is NULL now) */
                    goto fail;
                }
                goto taken;
            }
            if (st != CMP_EEMPTY && st != CMP_NEED)
                goto fail; /* (a partly received message is in buf) */
            Py_CLEAR(buf); /* another process took it first */
            continue;
        }
        if (st != CMP_EEMPTY)
            goto fail;
        struct chan_wait_call w;
        chan_wait_init(&w, self, ch, CMP_FOREVER);
        st = cmp_run_blocking(chan_wait_fn, &w);
        if (st != CMP_OK)
            goto fail;
    }

taken:
    rx->len = a.lens[0];
    if (a.op.mark) {
        rx->nfds = CMP_WIRE_MAX_FDS;
        st = cmp_chan_recv_fds(fd, rx->fds, &rx->nfds);
        if (st != CMP_OK) {
            rx->nfds = 0;
            goto fail;
        }
    }
    if (self->exact && cmp_ring_empty(a.ring))
        cmp_chan_quiesce(&ch->c, chan_rx(self), fd, is_socket);
    cmp_chan_release(ch);
    *bufp = buf;
    return CMP_OK;

fail:
    if (st == CMP_PYERR && a.op.locked) {
        if (self->chan == ch)
            ring_park(self, &a, buf);
        else /* closed by another thread meanwhile */
            cmp_ring_take_abandon(a.ring, &a.op);
        Py_XDECREF(buf);
        cmp_chan_release(ch);
        return st;
    }
    cmp_chan_release(ch);
    Py_XDECREF(buf);
    if (st == CMP_EBADMSG)
        bad_message_length(self);
    else if (st != CMP_PYERR)
        cmp_set_error(st);
    return st;
}

/* Receive one whole frame. into/room: where the payload goes if it fits
 * (recv_bytes_into), else NULL. On CMP_OK *bufp is the new bytes object, or
 * NULL if the payload went into `into`; rx holds the length and descriptors
 * (the caller closes them). Otherwise an exception is set. */
static int
conn_recv_frame(CmpConnection *self, cmp_wire_rx *rx, Py_ssize_t maxlength, char *into,
                Py_ssize_t room, PyObject **bufp)
{
    PyObject *buf = NULL;
    int st;
    if (self->chan != NULL)
        return conn_ring_recv_frame(self, rx, maxlength, into, room, bufp);
    if (self->parked != NULL) {
        conn_parked *p = self->parked;
        self->parked = NULL;
        *rx = p->rx;
        buf = p->buf;
        PyMem_Free(p);
    }
    else {
        cmp_wire_rx_reset(rx);
    }
    struct rx_call a = {self->fd, self->is_socket, rx, &self->spin_ns};
    if (!rx->header_done) {
        st = cmp_run_blocking(rx_header_fn, &a);
        if (st != CMP_OK)
            goto fail;
    }
    if ((maxlength >= 0 && rx->len > (uint64_t)maxlength) || rx->len > CONN_MAX_FRAME) {
        st = CMP_EBADMSG;
        goto fail;
    }
    if (rx->body == NULL) {
        if (into != NULL && rx->len <= (uint64_t)room) {
            rx->body = into;
        }
        else {
            buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rx->len);
            if (buf == NULL) {
                st = CMP_PYERR;
                goto fail;
            }
            rx->body = PyBytes_AS_STRING(buf);
        }
    }
    if (rx->body_have < rx->len) {
        st = cmp_run_blocking(rx_body_fn, &a);
        if (st != CMP_OK)
            goto fail;
    }
    *bufp = buf;
    return CMP_OK;

fail:
    if (st == CMP_PYERR && cmp_wire_rx_started(rx) && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        park(self, rx, buf);
        Py_XDECREF(buf);
        return st;
    }
    int started = cmp_wire_rx_started(rx);
    close_fds(rx->fds, rx->nfds);
    rx->nfds = 0;
    Py_XDECREF(buf);
    if (st == CMP_EEOF && started)
        PyErr_SetString(PyExc_OSError, "got end of file during message");
    else if (st == CMP_EBADMSG)
        bad_message_length(self);
    else
        cmp_set_error(st);
    return st;
}

static Py_ssize_t
maxlength_arg(PyObject *arg)
{
    if (arg == NULL || arg == Py_None)
        return -1;
    Py_ssize_t m = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (m == -1 && PyErr_Occurred())
        return -2;
    if (m < 0) {
        PyErr_SetString(PyExc_ValueError, "negative maxlength");
        return -2;
    }
    return m;
}

static PyObject *
conn_recv_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"maxlength"};
    CmpConnection *self = (CmpConnection *)op;
    PyObject *argv[1] = {NULL}, *buf = NULL;
    cmp_wire_rx rx;
    if (cmp_parse_args("recv_bytes", args, nargs, kwnames, names, 1, 0, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (check_readable(self) < 0)
        return NULL;
    Py_ssize_t maxlength = maxlength_arg(argv[0]);
    if (maxlength == -2)
        return NULL;
    if (conn_recv_frame(self, &rx, maxlength, NULL, 0, &buf) != CMP_OK)
        return NULL;
    close_fds(rx.fds, rx.nfds);
    return buf;
}

static PyObject *
buffer_too_short(cmp_state *state, PyObject *msg)
{
    PyErr_SetObject(state->buffer_too_short, msg);
    return NULL;
}

static PyObject *
conn_recv_bytes_into(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames)
{
    cmp_state *state = PyType_GetModuleState(defining_class);
    if (state == NULL)
        return NULL;
    static const char *const names[] = {"buf", "offset"};
    CmpConnection *self = (CmpConnection *)op;
    PyObject *argv[2] = {NULL, NULL}, *buf = NULL, *ret = NULL;
    Py_buffer view = {0};
    cmp_wire_rx rx;
    if (cmp_parse_args("recv_bytes_into", args, nargs, kwnames, names, 2, 1, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (check_readable(self) < 0)
        return NULL;
    if (!PyObject_CheckBuffer(argv[0])) {
        PyErr_Format(PyExc_TypeError, "memoryview: a bytes-like object is required, not '%.200s'",
                     Py_TYPE(argv[0])->tp_name);
        return NULL;
    }
    /* A read-only buffer fails here, before a message is consumed (the
     * stdlib reads the message, then fails to copy it). */
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_WRITABLE | PyBUF_ND | PyBUF_FORMAT) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError,
                            "readinto() argument must be read-write bytes-like object");
        }
        return NULL;
    }
    if (view.ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "0-dim memory has no length");
        goto done;
    }
    Py_ssize_t itemsize = view.itemsize, offset = 0;
    Py_ssize_t bytesize = itemsize * view.shape[0];
    if (argv[1] != NULL) {
        offset = PyNumber_AsSsize_t(argv[1], PyExc_OverflowError);
        if (offset == -1 && PyErr_Occurred())
            goto done;
    }
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        goto done;
    }
    if (offset > bytesize) {
        PyErr_SetString(PyExc_ValueError, "offset too large");
        goto done;
    }
    if (conn_recv_frame(self, &rx, -1, (char *)view.buf + offset, bytesize - offset, &buf)
        != CMP_OK)
        goto done;
    close_fds(rx.fds, rx.nfds);
    if (buf != NULL) {
        if (rx.len > (uint64_t)(bytesize - offset)) {
            buffer_too_short(state, buf);
            goto done;
        }
        memcpy((char *)view.buf + offset, PyBytes_AS_STRING(buf), (size_t)rx.len);
    }
    ret = PyLong_FromUnsignedLongLong(rx.len);
done:
    Py_XDECREF(buf);
    PyBuffer_Release(&view);
    return ret;
}

static PyObject *
conn_recv(PyObject *op, PyTypeObject *defining_class, PyObject *const *Py_UNUSED(args),
          Py_ssize_t nargs, PyObject *kwnames)
{
    CmpConnection *self = (CmpConnection *)op;
    cmp_state *state = PyType_GetModuleState(defining_class);
    PyObject *buf = NULL, *obj;
    cmp_wire_rx rx;
    if (state == NULL)
        return NULL;
    if (nargs != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "recv() takes no arguments");
        return NULL;
    }
    if (check_readable(self) < 0)
        return NULL;
    if (conn_recv_frame(self, &rx, -1, NULL, 0, &buf) != CMP_OK)
        return NULL;
    if (rx.nfds == 0) {
        obj = cmp_codec_loads(state, buf);
    }
    else {
        conn_fd_batch batch, *outer = conn_rx_batch;
        memcpy(batch.fds, rx.fds, sizeof(int) * (size_t)rx.nfds);
        batch.nfds = rx.nfds;
        conn_rx_batch = &batch;
        obj = cmp_codec_loads(state, buf);
        conn_rx_batch = outer;
        close_fds(batch.fds, batch.nfds); /* the ones nobody took */
    }
    Py_DECREF(buf);
    return obj;
}

PyDoc_STRVAR(take_fd_doc,
             "_take_fd($module, index, /)\n"
             "--\n"
             "\n"
             "While recv() unpickles a frame that carried descriptors: the descriptor at\n"
             "index, now owned by the caller. Otherwise RuntimeError.\n"
             "\n"
             "Returns fd.");

static PyObject *
cmp_py_take_fd(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    conn_fd_batch *b = conn_rx_batch;
    if (b == NULL || i < 0 || i >= b->nfds || b->fds[i] < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "no passed file descriptor to take: a pickle holding one "
                        "can only be loaded by the Connection.recv() it came to");
        return NULL;
    }
    int fd = b->fds[i];
    b->fds[i] = -1;
    return PyLong_FromLong(fd);
}

/* ------------------------------------------------------------------------ */
/* Polling and wait()                                                       */

struct poll_call {
    struct pollfd *fds;
    size_t nfds;
    int64_t deadline;
};

static int
poll_fn(void *p)
{
    struct poll_call *a = p;
    return cmp_wire_poll(a->fds, a->nfds, a->deadline);
}

/* poll() the set: the fast path with the GIL held, then a blocking wait.
 * > 0 ready, 0 timed out, -1 with an exception. */
static int
poll_set(struct pollfd *fds, size_t nfds, int64_t deadline)
{
    struct poll_call a = {fds, nfds, cmp_monotonic_ns()};
    int st = cmp_wire_poll(fds, nfds, a.deadline);
    if (st == CMP_ETIMEDOUT && deadline > a.deadline) {
        a.deadline = deadline;
        st = cmp_run_blocking(poll_fn, &a);
    }
    if (st > 0)
        return st;
    if (st == CMP_ETIMEDOUT)
        return 0;
    cmp_set_error(st);
    return -1;
}

static PyObject *
conn_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    CmpConnection *self = (CmpConnection *)op;
    PyObject *argv[1] = {NULL};
    int64_t deadline;
    if (cmp_parse_args("poll", args, nargs, kwnames, names, 1, 0, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (check_readable(self) < 0)
        return NULL;
    if (argv[0] == NULL)
        deadline = cmp_monotonic_ns();
    else if (cmp_deadline_from_timeout(argv[0], &deadline) < 0)
        return NULL;
    if (self->chan != NULL) {
        if (!cmp_ring_empty(self->chan->c.ring[chan_rx(self)]))
            Py_RETURN_TRUE;
        struct chan_wait_call w;
        chan_wait_init(&w, self, cmp_chan_hold(self->chan), deadline);
        int st = deadline <= cmp_monotonic_ns() ? chan_wait_fn(&w)
                                                : cmp_run_blocking(chan_wait_fn, &w);
        cmp_chan_release(w.ch);
        if (st == CMP_ETIMEDOUT)
            Py_RETURN_FALSE;
        if (st == CMP_OK || st == CMP_EEOF || (st == CMP_ERRNO && errno == EPROTO))
            Py_RETURN_TRUE; /* recv() says what it is */
        if (st != CMP_PYERR)
            cmp_set_error(st);
        return NULL;
    }
    struct pollfd p = {.fd = self->fd, .events = POLLIN};
    int r = poll_set(&p, 1, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r > 0);
}

PyDoc_STRVAR(wait_doc,
             "wait($module, /, object_list, timeout=None)\n"
             "--\n"
             "\n"
             "The objects of object_list (Connections, sockets, sentinels, objects with\n"
             "fileno(), raw descriptors) that are ready to read, in their order; [] when\n"
             "timeout seconds pass first. Releases the GIL; interrupted the PEP 475 way.\n"
             "\n"
             "Returns list.");

static PyObject *
cmp_py_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"object_list", "timeout"};
    cmp_state *state = PyModule_GetState(module);
    PyObject *argv[2] = {NULL, NULL}, *seq = NULL, *ret = NULL;
    struct pollfd stack_fds[16], *fds = stack_fds;
    CmpConnection *stack_chans[16], **chans = stack_chans;
    int64_t deadline;
    if (cmp_parse_args("wait", args, nargs, kwnames, names, 2, 1, CMP_ARGS_PY, argv) < 0)
        return NULL;
    seq = PySequence_Fast(argv[0], "object_list must be iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > (Py_ssize_t)(sizeof(stack_fds) / sizeof(stack_fds[0]))) {
        fds = PyMem_New(struct pollfd, (size_t)n);
        chans = PyMem_New(CmpConnection *, (size_t)n);
        if (fds == NULL || chans == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PySequence_Fast_GET_ITEM(seq, i);
        int fd;
        chans[i] = NULL;
        if (PyObject_TypeCheck(obj, (PyTypeObject *)state->conn_type)) {
            CmpConnection *c = (CmpConnection *)obj;
            if (check_open(c) < 0)
                goto done;
            fd = c->fd;
            if (c->chan != NULL && c->readable)
                chans[i] = c;
        }
        else if ((fd = PyObject_AsFileDescriptor(obj)) < 0) {
            goto done;
        }
        for (Py_ssize_t j = 0; j < i; j++) {
            if (fds[j].fd == fd) { /* as the stdlib's selector says it */
                PyObject *msg = PyUnicode_FromFormat("%R (FD %d) is already registered", obj, fd);
                if (msg != NULL) {
                    PyErr_SetObject(PyExc_KeyError, msg);
                    Py_DECREF(msg);
                }
                goto done;
            }
        }
        fds[i].fd = fd;
        fds[i].events = POLLIN;
        fds[i].revents = 0;
    }
    if (cmp_deadline_from_timeout(argv[1], &deadline) < 0)
        goto done;
    for (;;) {
        /* A Pipe() end is ready when its ring holds a message (or its peer
         * is gone); its descriptor only wakes us. Checking it also arms its
         * bell, so the poll below sees the next message. */
        int any = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            fds[i].revents = 0;
            if (chans[i] != NULL) {
                CmpConnection *c = chans[i];
                int rd = c->chan == NULL
                                 ? 1 /* closed meanwhile: let recv() say so */
                                 : cmp_chan_ready(&c->chan->c, chan_rx(c), c->fd, c->is_socket);
                fds[i].events = (rd == 1 || rd >= 3) ? 0 : POLLIN;
                any |= fds[i].events == 0;
            }
        }
        int r = poll_set(fds, (size_t)n, any ? cmp_monotonic_ns() : deadline);
        if (r < 0)
            goto done;
        int count = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (chans[i] != NULL) {
                if (fds[i].events == 0) {
                    fds[i].revents = POLLIN;
                }
                else if (fds[i].revents != 0) {
                    CmpConnection *c = chans[i];
                    int rd = c->chan == NULL
                                     ? 1
                                     : cmp_chan_ready(&c->chan->c, chan_rx(c), c->fd, c->is_socket);
                    fds[i].revents = (rd == 1 || rd >= 3) ? POLLIN : 0;
                }
                fds[i].events = POLLIN;
            }
            count += fds[i].revents != 0;
        }
        if (count > 0 || deadline <= cmp_monotonic_ns())
            break;
    }
    ret = PyList_New(0);
    if (ret == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (fds[i].revents == 0)
            continue;
        if (PyList_Append(ret, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            Py_CLEAR(ret);
            goto done;
        }
    }
done:
    if (fds != stack_fds)
        PyMem_Free(fds);
    if (chans != stack_chans)
        PyMem_Free(chans);
    Py_XDECREF(seq);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Pipe() channels                                                          */

static void
chan_attach(CmpConnection *self, cmp_chan_seg *ch, int end)
{
    ch->refs++;
    self->chan = ch;
    self->end = end;
    self->exact = 0;
    self->closes_seen = cmp_chan_closes(&ch->c);
    self->peer_checked = cmp_monotonic_ns();
}

PyDoc_STRVAR(pipe_doc,
             "_pipe($module, cls, duplex, /)\n"
             "--\n"
             "\n"
             "Pipe() on a channel: two cls(handle, readable, writable) whose messages go\n"
             "through rings in shared memory (see src/core/chan.h); None when no channel\n"
             "is to be had (then Pipe() makes a plain pipe).\n"
             "\n"
             "Returns (conn1, conn2) or None.");

static PyObject *
cmp_py_pipe(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    cmp_state *state = PyModule_GetState(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_pipe(cls, duplex)");
        return NULL;
    }
    int duplex = PyObject_IsTrue(args[1]);
    if (duplex < 0)
        return NULL;
    int fds[2] = {-1, -1};
    PyObject *c1 = NULL, *c2 = NULL, *ret = NULL;
    cmp_chan_seg *ch;
    if (cmp_chan_create(duplex ? 2 : 1, &ch) != CMP_OK)
        Py_RETURN_NONE; /* no shared memory to be had: a plain pipe */
    if (cmp_chan_pair(duplex, fds) != CMP_OK) {
        cmp_set_error(CMP_ERRNO);
        goto done;
    }
    c1 = PyObject_CallFunction(args[0], "iii", fds[0], 1, duplex);
    if (c1 == NULL)
        goto done;
    fds[0] = -1;
    c2 = PyObject_CallFunction(args[0], "iii", fds[1], duplex, 1);
    if (c2 == NULL)
        goto done;
    fds[1] = -1;
    PyTypeObject *tp = (PyTypeObject *)state->conn_type;
    if (!PyObject_TypeCheck(c1, tp) || !PyObject_TypeCheck(c2, tp) || ((CmpConnection *)c1)->fd < 0
        || ((CmpConnection *)c2)->fd < 0) {
        PyErr_SetString(PyExc_TypeError, "_pipe: cls must make Connections");
        goto done;
    }
    chan_attach((CmpConnection *)c1, ch, 0);
    chan_attach((CmpConnection *)c2, ch, 1);
    ret = PyTuple_Pack(2, c1, c2);
done:
    cmp_chan_release(ch);
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    Py_XDECREF(c1);
    Py_XDECREF(c2);
    return ret;
}

static PyObject *
conn_ring_share(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CmpConnection *self = (CmpConnection *)op;
    if (self->chan == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("inni", self->chan->memfd, (Py_ssize_t)self->chan->size,
                         (Py_ssize_t)self->end, (int)self->exact);
}

static PyObject *
conn_ring_attach(PyObject *op, PyObject *args)
{
    CmpConnection *self = (CmpConnection *)op;
    int memfd, end, exact;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "inii:_ring_attach", &memfd, &size, &end, &exact))
        return NULL;
    if (self->fd < 0 || self->chan != NULL || size <= 0 || end < 0 || end > 1) {
        PyErr_SetString(PyExc_ValueError, "_ring_attach: bad arguments");
        return NULL;
    }
    cmp_chan_seg *ch;
    if (cmp_chan_attach(memfd, (size_t)size, end, self->readable, &ch) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    chan_attach(self, ch, end);
    ch->refs--; /* the Connection holds the only reference */
    self->exact = (char)(exact != 0);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Type and module glue                                                     */

PyDoc_STRVAR(send_doc, "send($self, /, obj)\n"
                       "--\n"
                       "\n"
                       "Send a picklable object.");
PyDoc_STRVAR(recv_doc, "recv($self, /)\n"
                       "--\n"
                       "\n"
                       "Receive a picklable object.");
PyDoc_STRVAR(send_bytes_doc, "send_bytes($self, /, buf, offset=0, size=None)\n"
                             "--\n"
                             "\n"
                             "Send the bytes of a bytes-like object.");
PyDoc_STRVAR(recv_bytes_doc, "recv_bytes($self, /, maxlength=None)\n"
                             "--\n"
                             "\n"
                             "Receive one message as a bytes object.");
PyDoc_STRVAR(recv_bytes_into_doc,
             "recv_bytes_into($self, /, buf, offset=0)\n"
             "--\n"
             "\n"
             "Receive one message into a writable bytes-like object; return its size.");
PyDoc_STRVAR(poll_doc, "poll($self, /, timeout=0.0)\n"
                       "--\n"
                       "\n"
                       "Whether there is any input available to be read.");

static PyMethodDef conn_methods[] = {
        {"send", (PyCFunction)(void (*)(void))conn_send,
         METH_METHOD | METH_FASTCALL | METH_KEYWORDS, send_doc},
        {"recv", (PyCFunction)(void (*)(void))conn_recv,
         METH_METHOD | METH_FASTCALL | METH_KEYWORDS, recv_doc},
        {"send_bytes", (PyCFunction)(void (*)(void))conn_send_bytes, METH_FASTCALL | METH_KEYWORDS,
         send_bytes_doc},
        {"recv_bytes", (PyCFunction)(void (*)(void))conn_recv_bytes, METH_FASTCALL | METH_KEYWORDS,
         recv_bytes_doc},
        {"recv_bytes_into", (PyCFunction)(void (*)(void))conn_recv_bytes_into,
         METH_METHOD | METH_FASTCALL | METH_KEYWORDS, recv_bytes_into_doc},
        {"poll", (PyCFunction)(void (*)(void))conn_poll, METH_FASTCALL | METH_KEYWORDS, poll_doc},
        {"fileno", conn_fileno, METH_NOARGS,
         "fileno($self, /)\n"
         "--\n"
         "\n"
         "File descriptor of the connection."},
        {"close", conn_close, METH_NOARGS,
         "close($self, /)\n"
         "--\n"
         "\n"
         "Close the connection."},
        {"_detach", conn_detach, METH_NOARGS,
         "_detach($self, /)\n"
         "--\n"
         "\n"
         "Give up the descriptor (returned) without closing it."},
        {"_ring_share", conn_ring_share, METH_NOARGS,
         "_ring_share($self, /)\n"
         "--\n"
         "\n"
         "A Pipe() end's channel: (memfd, size, end, exact), or None."},
        {"_ring_attach", conn_ring_attach, METH_VARARGS,
         "_ring_attach($self, memfd, size, end, exact, /)\n"
         "--\n"
         "\n"
         "Take over memfd (on success) as this Connection's channel."},
        {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
        {"closed", conn_get_closed, NULL, "True if the connection is closed", NULL},
        {"readable", conn_get_readable, NULL, "True if the connection is readable", NULL},
        {"writable", conn_get_writable, NULL, "True if the connection is writable", NULL},
        {"_handle", conn_get_handle, NULL, "The descriptor, or None once closed", NULL},
        {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot conn_slots[] = {
        {Py_tp_new, conn_new},
        {Py_tp_init, conn_init},
        {Py_tp_dealloc, conn_dealloc},
        {Py_tp_methods, conn_methods},
        {Py_tp_getset, conn_getset},
        {Py_tp_doc, "Connection(handle, readable=True, writable=True): the C core of "
                    "cmp.connection.Connection."},
        {0, NULL},
};

static PyType_Spec conn_spec = {
        .name = "cmp._core.Connection",
        .basicsize = sizeof(CmpConnection),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
        .slots = conn_slots,
};

static PyMethodDef conn_module_methods[] = {
        {"wait", (PyCFunction)(void (*)(void))cmp_py_wait, METH_FASTCALL | METH_KEYWORDS, wait_doc},
        {"_pass_fd", cmp_py_pass_fd, METH_O, pass_fd_doc},
        {"_pipe", (PyCFunction)(void (*)(void))cmp_py_pipe, METH_FASTCALL, pipe_doc},
        {"_take_fd", cmp_py_take_fd, METH_O, take_fd_doc},
        {NULL, NULL, 0, NULL},
};

int
cmp_conn_exec(PyObject *module)
{
    cmp_state *state = PyModule_GetState(module);
    state->conn_type = PyType_FromModuleAndSpec(module, &conn_spec, NULL);
    if (state->conn_type == NULL)
        return -1;
    if (PyModule_AddType(module, (PyTypeObject *)state->conn_type) < 0)
        return -1;
    return PyModule_AddFunctions(module, conn_module_methods);
}
