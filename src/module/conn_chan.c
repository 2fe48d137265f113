/* A Pipe() end's channel glue: Connection messages through a channel's
 * rings (src/core/chan.h) instead of the descriptor, which only wakes
 * receivers, reports the other end's close, and carries passed descriptors
 * in records of their own; and _pipe(), which makes such a pair. The
 * Connection type itself is connection.c. */
#include "connection.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* A streamed message whose receive a signal handler interrupted. */
struct conn_rparked {
    cmp_ring_rop op;
    size_t lens[1];
    PyObject *buf; /* the bytes object op.buf points into */
};

/* How often a producer on a channel asks the kernel whether its reader is
 * still there (besides after any explicit close of an end), and how long a
 * producer waits for room between two such checks. */
#define CONN_PEER_CHECK_NS (1000 * 1000LL)
#define CONN_PEER_PROBE_NS (50 * 1000 * 1000LL)
/* Receives first try a buffer this large, with the GIL held: less than half
 * a ring, so a message that must stream through it never starts there. */
#define CONN_RX_FIRST 8192

/* A call that releases the GIL holds its own reference to the channel
 * (cmp_chan_hold): another thread may close the Connection meanwhile. */

void
cmp_conn_drop_chan(CmpConnection *self)
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
int
cmp_conn_ring_send(CmpConnection *self, const struct iovec *iov, int niov, size_t total,
                   const int *fds, int nfds)
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
int
cmp_conn_ring_recv_frame(CmpConnection *self, cmp_wire_rx *rx, Py_ssize_t maxlength, char *into,
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
        cmp_conn_bad_message_length(self);
    else if (st != CMP_PYERR)
        cmp_set_error(st);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Pipe() channels                                                          */

/* Make self an end of ch, taking over a reference to it. */
static void
chan_attach(CmpConnection *self, cmp_chan_seg *ch, int end)
{
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
    chan_attach((CmpConnection *)c1, cmp_chan_hold(ch), 0);
    chan_attach((CmpConnection *)c2, cmp_chan_hold(ch), 1);
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

PyObject *
cmp_conn_ring_share(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CmpConnection *self = (CmpConnection *)op;
    if (self->chan == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("inni", self->chan->memfd, (Py_ssize_t)self->chan->size,
                         (Py_ssize_t)self->end, (int)self->exact);
}

PyObject *
cmp_conn_ring_attach(PyObject *op, PyObject *args)
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
    self->exact = (char)(exact != 0);
    Py_RETURN_NONE;
}

PyMethodDef cmp_conn_chan_methods[] = {
        {"_pipe", (PyCFunction)(void (*)(void))cmp_py_pipe, METH_FASTCALL, pipe_doc},
        {NULL, NULL, 0, NULL},
};
