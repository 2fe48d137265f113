/* The private header of cmp._core.Connection, shared by its three files:
 * connection.c (the type: state checks, framing on the descriptor, the
 * send/recv methods, type and module glue), conn_chan.c (Pipe() ends whose
 * messages go through a channel's rings) and conn_wait.c (poll() and wait()).
 */
#ifndef CMP_CONNECTION_H
#define CMP_CONNECTION_H

#include "module.h"
#include "chan.h"
#include "wire.h"

/* Bytes objects cannot be larger than this (header and slack excluded). */
#define CONN_MAX_FRAME ((uint64_t)PY_SSIZE_T_MAX - 4096)

/* A frame interrupted part-way, waiting for the next receive (connection.c). */
typedef struct conn_parked conn_parked;
/* A streamed message whose receive a signal handler interrupted (conn_chan.c). */
typedef struct conn_rparked conn_rparked;

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

/* Waiting, without the GIL, for a message on a Pipe() end (or its peer's
 * close): recv() in conn_chan.c, poll() in conn_wait.c. */
struct chan_wait_call {
    cmp_chan_seg *ch;
    int k, fd, is_socket;
    int64_t deadline;
    cmp_spin_budget *spin_ns;
};

static inline void
chan_wait_init(struct chan_wait_call *w, CmpConnection *self, cmp_chan_seg *ch, int64_t deadline)
{
    *w = (struct chan_wait_call){ch,       chan_rx(self), self->fd, self->is_socket,
                                 deadline, &self->spin_ns};
}

static inline int
chan_wait_fn(void *p)
{
    struct chan_wait_call *w = p;
    return cmp_chan_wait(&w->ch->c, w->k, w->fd, w->is_socket, w->deadline, w->spin_ns);
}

/* connection.c */
int cmp_conn_check_open(CmpConnection *self);
int cmp_conn_check_readable(CmpConnection *self);
void cmp_conn_bad_message_length(CmpConnection *self);

/* conn_chan.c: a Pipe() end (self->chan set) */
void cmp_conn_drop_chan(CmpConnection *self);
int cmp_conn_ring_send(CmpConnection *self, const struct iovec *iov, int niov, size_t total,
                       const int *fds, int nfds);
int cmp_conn_ring_recv_frame(CmpConnection *self, cmp_wire_rx *rx, Py_ssize_t maxlength, char *into,
                             Py_ssize_t room, PyObject **bufp);
PyObject *cmp_conn_ring_share(PyObject *op, PyObject *ignored);
PyObject *cmp_conn_ring_attach(PyObject *op, PyObject *args);
extern PyMethodDef cmp_conn_chan_methods[]; /* _pipe() */

/* conn_wait.c */
PyObject *cmp_conn_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
extern PyMethodDef cmp_conn_wait_methods[]; /* wait() */

#endif
