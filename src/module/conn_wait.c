/* cmp._core.wait() and Connection.poll(): poll() over descriptors, where a
 * Pipe() end is ready when its ring holds a message (its descriptor only
 * wakes the waiter). The Connection type itself is connection.c. */
#include "connection.h"

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

PyObject *
cmp_conn_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    CmpConnection *self = (CmpConnection *)op;
    PyObject *argv[1] = {NULL};
    int64_t deadline;
    if (cmp_parse_args("poll", args, nargs, kwnames, names, 1, 0, CMP_ARGS_PY, argv) < 0)
        return NULL;
    if (cmp_conn_check_readable(self) < 0)
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

/* Whether recv() on a Pipe() end in wait()'s list answers at once: with a
 * message, or with the error of a gone peer, a stray byte or a close. */
static int
chan_answers(CmpConnection *c)
{
    if (c->chan == NULL)
        return 1; /* closed meanwhile: let recv() say so */
    int rd = cmp_chan_ready(&c->chan->c, chan_rx(c), c->fd, c->is_socket);
    return rd == CMP_CHAN_MESSAGE || rd == CMP_CHAN_GONE || rd == CMP_CHAN_STRAY_BYTE;
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
            if (cmp_conn_check_open(c) < 0)
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
                fds[i].events = chan_answers(chans[i]) ? 0 : POLLIN;
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
                    fds[i].revents = chan_answers(chans[i]) ? POLLIN : 0;
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

PyMethodDef cmp_conn_wait_methods[] = {
        {"wait", (PyCFunction)(void (*)(void))cmp_py_wait, METH_FASTCALL | METH_KEYWORDS, wait_doc},
        {NULL, NULL, 0, NULL},
};
