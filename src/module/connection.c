/* cmp._core.Connection: framed send/recv over a descriptor, and the
 * descriptor hand-off used to send a Connection through another one.
 * Pipe() ends' channel glue is conn_chan.c, poll() and wait() conn_wait.c;
 * connection.h declares what the three share.
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
 * instead (src/core/chan.h, conn_chan.c): a message is one ring record, written whole
 * or not at all; the descriptor only wakes receivers, reports the other
 * end's close, and carries passed descriptors in records of their own.
 *
 * Descriptors: while send() pickles on a Unix socket, reduction.DupFd()
 * outside of spawning calls _pass_fd(): the descriptor is dup'ed into this
 * thread's batch and travels with the frame as SCM_RIGHTS. The receiving
 * recv() exposes the frame's descriptors to _take_fd() while it unpickles and
 * closes those nobody took.
 */
#include "connection.h"
#include "codec.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A frame interrupted part-way, waiting for the next receive. */
struct conn_parked {
    cmp_wire_rx rx;
    PyObject *buf; /* the bytes object rx.body points into */
};

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

int
cmp_conn_check_open(CmpConnection *self)
{
    if (self->fd >= 0)
        return 0;
    PyErr_SetString(PyExc_OSError, "handle is closed");
    return -1;
}

int
cmp_conn_check_readable(CmpConnection *self)
{
    if (cmp_conn_check_open(self) < 0)
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
    if (cmp_conn_check_open(self) < 0)
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

/* Let go of the descriptor (returned, -1 if closed already) and of all that
 * goes with it: the channel, and partly received or sent frames. */
static int
release_fd(CmpConnection *self)
{
    int fd = self->fd;
    cmp_conn_drop_chan(self);
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
    if (cmp_conn_check_open(self) < 0)
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
    if (cmp_conn_check_open(self) < 0)
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
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *saved = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rest);
        if (saved == NULL)
            PyErr_Clear(); /* the stream is broken either way; the signal's exception wins */
        PyErr_Restore(et, ev, tb);
        if (saved == NULL)
            return st;
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
        st = cmp_conn_ring_send(self, &iov, 1, (size_t)size, NULL, 0);
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
        st = cmp_conn_ring_send(self, iov + 1, (int)n, (size_t)total, batch.fds, batch.nfds);
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
void
cmp_conn_bad_message_length(CmpConnection *self)
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
        return cmp_conn_ring_recv_frame(self, rx, maxlength, into, room, bufp);
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
    int inside = cmp_wire_rx_eof_inside(rx);
    close_fds(rx->fds, rx->nfds);
    rx->nfds = 0;
    Py_XDECREF(buf);
    if (st == CMP_EEOF && inside)
        PyErr_SetString(PyExc_OSError, "got end of file during message");
    else if (st == CMP_EBADMSG)
        cmp_conn_bad_message_length(self);
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
    if (cmp_conn_check_readable(self) < 0)
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
    if (cmp_conn_check_readable(self) < 0)
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
    if (cmp_conn_check_readable(self) < 0)
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
        {"poll", (PyCFunction)(void (*)(void))cmp_conn_poll, METH_FASTCALL | METH_KEYWORDS,
         poll_doc},
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
        {"_ring_share", cmp_conn_ring_share, METH_NOARGS,
         "_ring_share($self, /)\n"
         "--\n"
         "\n"
         "A Pipe() end's channel: (memfd, size, end, exact), or None."},
        {"_ring_attach", cmp_conn_ring_attach, METH_VARARGS,
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
        {"_pass_fd", cmp_py_pass_fd, METH_O, pass_fd_doc},
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
    if (PyModule_AddFunctions(module, cmp_conn_wait_methods) < 0
        || PyModule_AddFunctions(module, cmp_conn_chan_methods) < 0)
        return -1;
    return PyModule_AddFunctions(module, conn_module_methods);
}