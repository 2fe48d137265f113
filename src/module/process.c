/* cmp._core process functions: fork, spawn, pidfds, waiting, reaping. */
#include "module.h"
#include "proc.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

/* Flush sys.stdout and sys.stderr so nothing buffered prints twice after a
 * fork; errors (a closed stream, no stream) are ignored, as the stdlib does. */
static void
flush_std_streams(void)
{
    static const char *const names[] = {"stdout", "stderr"};
    for (size_t i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]); /* borrowed */
        if (f == NULL || f == Py_None)
            continue;
        PyObject *r = PyObject_CallMethod(f, "flush", NULL);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
}

PyDoc_STRVAR(fork_doc,
             "fork($module, die_with_parent, parent_pidfd, /)\n"
             "--\n"
             "\n"
             "Returns pid.\n\n"
             "Flush stdout/stderr and fork, running the interpreter's fork hooks\n"
             "(os.register_at_fork). With die_with_parent the child is killed when this\n"
             "process dies, even by SIGKILL. parent_pidfd (a pidfd of this process, or -1)\n"
             "serves when the caller is not the main thread.");

static PyObject *
cmp_py_fork(PyObject *Py_UNUSED(module), PyObject *args)
{
    int die_with_parent, parent_pidfd;
    if (!PyArg_ParseTuple(args, "pi:fork", &die_with_parent, &parent_pidfd))
        return NULL;
    flush_std_streams();
    PyOS_BeforeFork();
    pid_t pid = cmp_fork(die_with_parent, parent_pidfd);
    int saved = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
    }
    else {
        PyOS_AfterFork_Parent();
        if (pid < 0) {
            errno = saved;
            return cmp_set_error(CMP_ERRNO);
        }
    }
    return PyLong_FromLong((long)pid);
}

static PyObject *
cmp_py_pidfd_open(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    int fd = cmp_pidfd_open((pid_t)pid);
    if (fd < 0)
        return cmp_set_error(CMP_ERRNO);
    return PyLong_FromLong(fd);
}

static PyObject *
cmp_py_pidfd_kill(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, sig;
    if (!PyArg_ParseTuple(args, "ii:pidfd_kill", &fd, &sig))
        return NULL;
    if (cmp_pidfd_kill(fd, sig) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    Py_RETURN_NONE;
}

struct wait_args {
    int fd;
    int64_t deadline;
};

static int
wait_readable_call(void *p)
{
    struct wait_args *a = p;
    return cmp_wait_readable(a->fd, a->deadline);
}

PyDoc_STRVAR(wait_readable_doc,
             "wait_readable($module, fd, timeout=None, /)\n"
             "--\n"
             "\n"
             "Returns bool.\n\n"
             "Block until fd is readable (True) or timeout seconds pass (False).\n"
             "Releases the GIL; signals interrupt it the PEP 475 way.");

static PyObject *
cmp_py_wait_readable(PyObject *Py_UNUSED(module), PyObject *args)
{
    struct wait_args a;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "i|O:wait_readable", &a.fd, &timeout))
        return NULL;
    if (cmp_deadline_from_timeout(timeout, &a.deadline) < 0)
        return NULL;
    int64_t now = cmp_monotonic_ns();
    int st = cmp_wait_readable(a.fd, now);       /* fast path, GIL held */
    if (st == CMP_ETIMEDOUT && a.deadline > now) /* (a zero timeout is done) */
        st = cmp_run_blocking(wait_readable_call, &a);
    if (st == CMP_OK)
        Py_RETURN_TRUE;
    if (st == CMP_ETIMEDOUT)
        Py_RETURN_FALSE;
    return cmp_set_error(st);
}

PyDoc_STRVAR(reap_doc, "reap($module, pid, /)\n"
                       "--\n"
                       "\n"
                       "Returns exitcode or None.\n\n"
                       "waitpid(pid, WNOHANG): the exit status, -signal if a signal killed it, or\n"
                       "None while it runs. Raises ChildProcessError if it was reaped elsewhere.");

static PyObject *
cmp_py_reap(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    int code;
    int st = cmp_reap((pid_t)pid, &code);
    if (st == CMP_OK)
        return PyLong_FromLong(code);
    if (st == CMP_EEMPTY)
        Py_RETURN_NONE;
    return cmp_set_error(st);
}

/* Convert a sequence of str/bytes into a NULL-terminated char* array whose
 * storage is kept alive by *keep (a list of bytes objects). */
static char **
to_cstring_array(PyObject *seq, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of strings");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    PyObject *list = PyList_New(0);
    if (out == NULL || list == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &b))
            goto fail;
        int r = PyList_Append(list, b);
        Py_DECREF(b);
        if (r < 0)
            goto fail;
        out[i] = PyBytes_AS_STRING(b);
    }
    Py_DECREF(fast);
    *keep = list;
    return out;
fail:
    if (out == NULL)
        PyErr_NoMemory();
    PyMem_Free(out);
    Py_XDECREF(list);
    Py_DECREF(fast);
    return NULL;
}

/* fds: a sequence of descriptors -> out[0..*n); 0, or -1 with an error set. */
static int
fd_array(PyObject *seq, int *out, int room, int *n)
{
    PyObject *fast = PySequence_Fast(seq, "fds must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len > room) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many fds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (fd == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (fd < 0 || fd > INT_MAX) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", fd);
            return -1;
        }
        out[i] = (int)fd;
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

PyDoc_STRVAR(spawn_doc,
             "spawn($module, path, argv, env, keep_fds, clean=False, /)\n"
             "--\n"
             "\n"
             "Returns pid.\n\n"
             "posix_spawn path with argv and env (sequences of str); the descriptors in\n"
             "keep_fds stay open in the child under the same numbers. With clean, the\n"
             "child has only 0, 1, 2 and keep_fds[i] as 3 + i.");

static PyObject *
cmp_py_spawn(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *path = NULL, *argv_o, *env_o, *fds_o, *result = NULL;
    PyObject *argv_keep = NULL, *env_keep = NULL;
    char **argv = NULL, **envp = NULL;
    int *keep = NULL, clean = 0, n;

    if (!PyArg_ParseTuple(args, "O&OOO|p:spawn", PyUnicode_FSConverter, &path, &argv_o, &env_o,
                          &fds_o, &clean))
        return NULL;
    if ((argv = to_cstring_array(argv_o, &argv_keep)) == NULL)
        goto done;
    if ((envp = to_cstring_array(env_o, &env_keep)) == NULL)
        goto done;
    Py_ssize_t room = PySequence_Size(fds_o);
    if (room < 0 || room > INT_MAX) {
        if (room >= 0)
            PyErr_SetString(PyExc_ValueError, "too many fds");
        goto done;
    }
    if ((keep = PyMem_Calloc((size_t)room + 1, sizeof(int))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (fd_array(fds_o, keep, (int)room, &n) < 0)
        goto done;
    pid_t pid = (clean ? cmp_spawn_clean : cmp_spawn)(PyBytes_AS_STRING(path), argv, envp, keep,
                                                      (size_t)n);
    if (pid < 0)
        cmp_set_error(CMP_ERRNO);
    else
        result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(keep);
    PyMem_Free(envp);
    PyMem_Free(argv);
    Py_XDECREF(env_keep);
    Py_XDECREF(argv_keep);
    Py_XDECREF(path);
    return result;
}

PyDoc_STRVAR(die_with_parent_doc,
             "die_with_parent($module, ppid, pidfd=-1, /)\n"
             "--\n"
             "\n"
             "Be killed when the parent process goes: with a watcher thread on pidfd when\n"
             "one is given (taking it over), else PR_SET_PDEATHSIG checked against ppid.");

static PyObject *
cmp_py_die_with_parent(PyObject *Py_UNUSED(module), PyObject *args)
{
    int ppid, pidfd = -1;
    if (!PyArg_ParseTuple(args, "i|i:die_with_parent", &ppid, &pidfd))
        return NULL;
    int st = pidfd >= 0 ? cmp_watch_parent(pidfd) : cmp_die_with_parent(ppid);
    if (st != CMP_OK)
        return cmp_set_error(st);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Fork server                                                              */

static int
key_arg(PyObject *obj, void *out)
{
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(obj, &buf, &len) < 0)
        return 0;
    if (len != CMP_FS_KEY_LEN) {
        PyErr_Format(PyExc_ValueError, "the key must be %d bytes", CMP_FS_KEY_LEN);
        return 0;
    }
    memcpy(out, buf, CMP_FS_KEY_LEN);
    return 1;
}

PyDoc_STRVAR(forkserver_request_doc,
             "forkserver_request($module, address, listener_pid, key, payload, fds, /)\n"
             "--\n"
             "\n"
             "Returns (sock, pid).\n\n"
             "Ask the fork server at address (bytes) for a child that gets fds and\n"
             "reads payload; returns the connection (a descriptor: the exit code\n"
             "arrives on it) and the child's pid. ConnectionResetError if the server\n"
             "closed the connection unanswered (it refused, or is gone).");

static PyObject *
cmp_py_forkserver_request(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *addr;
    Py_ssize_t addrlen;
    int listener_pid, nfds = 0, sock = -1, st;
    unsigned char key[CMP_FS_KEY_LEN];
    PyObject *fds_o;
    Py_buffer payload;
    int fds[CMP_WIRE_MAX_FDS];
    int64_t pid = 0;

    if (!PyArg_ParseTuple(args, "y#iO&y*O:forkserver_request", &addr, &addrlen, &listener_pid,
                          key_arg, key, &payload, &fds_o))
        return NULL;
    if (fd_array(fds_o, fds, CMP_WIRE_MAX_FDS, &nfds) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = cmp_fs_request(addr, (size_t)addrlen, (pid_t)listener_pid, key, payload.buf,
                        (size_t)payload.len, fds, nfds, &sock, &pid);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    if (st == CMP_EEOF) {
        /* The server went away without answering (it failed to start, or was
         * killed): what the stdlib's client reads from its socket then. */
        errno = ECONNRESET;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (st != CMP_OK)
        return cmp_set_error(st);
    return Py_BuildValue("iL", sock, (long long)pid);
}

/* In a child of the server: its payload, read from the connection, and its
 * descriptors (and the connection, left open, if keep_conn). */
static PyObject *
child_request(cmp_fs_req *req, int keep_conn)
{
    PyObject *fds = NULL, *payload = NULL;
    if (req->size > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        goto done;
    }
    payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)req->size);
    if (payload == NULL)
        goto done;
    int st = cmp_read_exact(req->conn, PyBytes_AS_STRING(payload), (size_t)req->size);
    if (st != CMP_OK) {
        Py_CLEAR(payload);
        if (st == CMP_EEOF)
            PyErr_SetString(PyExc_EOFError, "the requester went away");
        else
            cmp_set_error(st);
        goto done;
    }
    if ((fds = PyList_New(req->nfds)) == NULL)
        goto done;
    for (int i = 0; i < req->nfds; i++) {
        PyObject *fd = PyLong_FromLong(req->fds[i]);
        if (fd == NULL) {
            Py_CLEAR(fds);
            goto done;
        }
        PyList_SET_ITEM(fds, i, fd);
    }
done:
    if (fds == NULL || !keep_conn)
        close(req->conn);
    if (fds == NULL) {
        Py_XDECREF(payload);
        return NULL;
    }
    PyObject *r = keep_conn ? Py_BuildValue("(OOi)", payload, fds, req->conn)
                            : PyTuple_Pack(2, payload, fds);
    if (r == NULL && keep_conn)
        close(req->conn);
    Py_DECREF(payload);
    Py_DECREF(fds);
    return r;
}

PyDoc_STRVAR(send_request_doc,
             "send_request($module, sock, payload, fds, /)\n"
             "--\n"
             "\n"
             "Send payload with descriptors fds on a connected Unix socket, as a fork\n"
             "server request (for a spare interpreter). BrokenPipeError if the peer is gone.");

static PyObject *
cmp_py_send_request(PyObject *Py_UNUSED(module), PyObject *args)
{
    int sock, nfds = 0, st;
    PyObject *fds_o;
    Py_buffer payload;
    int fds[CMP_WIRE_MAX_FDS];
    static const unsigned char nokey[CMP_FS_KEY_LEN];

    if (!PyArg_ParseTuple(args, "iy*O:send_request", &sock, &payload, &fds_o))
        return NULL;
    if (fd_array(fds_o, fds, CMP_WIRE_MAX_FDS, &nfds) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = cmp_fs_send(sock, nokey, payload.buf, (size_t)payload.len, fds, nfds);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    if (st == CMP_EEOF) {
        errno = EPIPE;
        st = CMP_ERRNO;
    }
    if (st != CMP_OK)
        return cmp_set_error(st);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(recv_request_doc,
             "recv_request($module, sock, /)\n"
             "--\n"
             "\n"
             "Returns (payload, fds) or None.\n\n"
             "Wait for a request sent with send_request; None once the peer is gone.\n"
             "Closes sock.");

/* A request waited for on fd -- with cmp_fs_recv (its payload follows on
 * fd), or with cmp_fs_take when bell >= 0 (on the connection handed over:
 * then the connection is kept, a third item) -- read as a child of the
 * server reads it: (payload, fds[, conn]), or None once the peer is gone.
 * fd and bell are closed. */
static PyObject *
receive_request(int fd, int bell)
{
    cmp_fs_req req;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = bell < 0 ? cmp_fs_recv(fd, &req) : cmp_fs_take(fd, bell, &req);
    Py_END_ALLOW_THREADS
    if (bell >= 0)
        close(bell);
    if (st != CMP_OK || req.conn != fd)
        close(fd); /* else child_request closes it */
    if (st == CMP_EEOF)
        Py_RETURN_NONE;
    if (st != CMP_OK)
        return cmp_set_error(st);
    return child_request(&req, bell >= 0);
}

static PyObject *
cmp_py_recv_request(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    return receive_request(fd, -1);
}

PyDoc_STRVAR(place_fds_doc,
             "place_fds($module, fds, targets, /)\n"
             "--\n"
             "\n"
             "Make descriptor targets[i] (inheritable) refer to what fds[i] refers to,\n"
             "replacing whatever was there, and close fds.");

static PyObject *
cmp_py_place_fds(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *fds_o, *targets_o;
    int fds[CMP_WIRE_MAX_FDS], targets[CMP_WIRE_MAX_FDS], n, nt;
    if (!PyArg_ParseTuple(args, "OO:place_fds", &fds_o, &targets_o))
        return NULL;
    if (fd_array(fds_o, fds, CMP_WIRE_MAX_FDS, &n) < 0
        || fd_array(targets_o, targets, CMP_WIRE_MAX_FDS, &nt) < 0)
        return NULL;
    if (n != nt) {
        PyErr_SetString(PyExc_ValueError, "fds and targets differ in length");
        return NULL;
    }
    if (cmp_place_fds(fds, targets, n) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    Py_RETURN_NONE;
}

static PyObject *
cmp_py_proc_state(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg))
{
    unsigned char buf[CMP_PROC_STATE_MAX];
    int n = cmp_proc_state(buf);
    if (n < 0)
        return cmp_set_error(CMP_ERRNO);
    return PyBytes_FromStringAndSize((const char *)buf, n);
}

PyDoc_STRVAR(proc_state_doc,
             "proc_state($module, /)\n"
             "--\n"
             "\n"
             "Returns bytes.\n\n"
             "What a process spawned now would inherit besides environment and working\n"
             "directory (credentials, umask, rlimits, nice, affinity, signal mask and\n"
             "ignored signals, which of 0-2 are open and terminals), to compare.");

PyDoc_STRVAR(forkserver_serve_doc,
             "forkserver_serve($module, listener, alive, key, /)\n"
             "--\n"
             "\n"
             "Returns (payload, fds, conn), (end, bell, warm) or None.\n\n"
             "The fork server's loop: accept requests on listener, fork a child for\n"
             "each (or hand it to the spare forked ahead), report pids and exit codes.\n"
             "Returns in each child, with its payload, descriptors and connection; in a\n"
             "spare, with its end of the hand-off socket and its bell (for\n"
             "forkserver_take) and whether to warm up meanwhile (starts come apart);\n"
             "None in the server once alive reaches EOF.");

static PyObject *
cmp_py_forkserver_serve(PyObject *Py_UNUSED(module), PyObject *args)
{
    int listener, alive;
    unsigned char key[CMP_FS_KEY_LEN];
    cmp_fs_server s;
    cmp_fs_req req;

    if (!PyArg_ParseTuple(args, "iiO&:forkserver_serve", &listener, &alive, key_arg, key))
        return NULL;
    if (cmp_fs_server_init(&s, listener, alive, key) != CMP_OK)
        return cmp_set_error(CMP_ERRNO);
    for (;;) {
        int st;
        Py_BEGIN_ALLOW_THREADS
        st = cmp_fs_next(&s, &req);
        Py_END_ALLOW_THREADS
        if (st == CMP_EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        if (st == CMP_EEOF)
            Py_RETURN_NONE;
        if (st == CMP_FS_SPARE) {
            if (cmp_fs_spare_open(&s) != CMP_OK)
                continue; /* no spare this time: the next request is forked for */
            PyOS_BeforeFork();
            pid_t pid = fork();
            if (pid == 0) {
                PyOS_AfterFork_Child();
                int bell, warm;
                int end = cmp_fs_in_spare(&s, &bell, &warm);
                return Py_BuildValue("(iiO)", end, bell, warm ? Py_True : Py_False);
            }
            PyOS_AfterFork_Parent();
            cmp_fs_spare_forked(&s, pid);
            continue;
        }
        if (st != CMP_OK)
            return cmp_set_error(st);
        PyOS_BeforeFork();
        pid_t pid = fork();
        int saved = errno;
        if (pid == 0) {
            PyOS_AfterFork_Child();
            cmp_fs_in_child(&s);
            return child_request(&req, 1); /* (conn kept, as in a spare's child) */
        }
        PyOS_AfterFork_Parent();
        cmp_fs_forked(&s, &req, pid, saved);
    }
}

PyDoc_STRVAR(forkserver_take_doc,
             "forkserver_take($module, end, bell, /)\n"
             "--\n"
             "\n"
             "Returns (payload, fds, conn) or None.\n\n"
             "In a spare of the fork server: wait for the request the server hands over\n"
             "on end once it rings bell (what forkserver_serve returned), and read it as\n"
             "a forked child does, keeping its connection conn for forkserver_exit; None\n"
             "once the server is gone. Closes end and bell.");

static PyObject *
cmp_py_forkserver_take(PyObject *Py_UNUSED(module), PyObject *args)
{
    int end, bell;
    if (!PyArg_ParseTuple(args, "ii:forkserver_take", &end, &bell))
        return NULL;
    if (end < 0 || bell < 0) {
        PyErr_SetString(PyExc_ValueError, "negative file descriptor");
        return NULL;
    }
    return receive_request(end, bell);
}

PyDoc_STRVAR(forkserver_exit_doc,
             "forkserver_exit($module, conn, code, /)\n"
             "--\n"
             "\n"
             "In a child a spare of the fork server became, as its last act: close\n"
             "every descriptor but 0-2 and conn, tell the requester on conn that the\n"
             "process ends with exit status code, and end it. Never returns.");

static PyObject *
cmp_py_forkserver_exit(PyObject *Py_UNUSED(module), PyObject *args)
{
    int conn, code;
    if (!PyArg_ParseTuple(args, "ii:forkserver_exit", &conn, &code))
        return NULL;
    if (conn < 3) {
        PyErr_SetString(PyExc_ValueError, "conn must be a descriptor above 2");
        return NULL;
    }
    cmp_fs_child_exit(conn, code); /* the GIL held: no other thread runs
                                      Python (or prints) meanwhile */
}

static PyMethodDef proc_methods[] = {
        {"send_request", cmp_py_send_request, METH_VARARGS, send_request_doc},
        {"recv_request", cmp_py_recv_request, METH_O, recv_request_doc},
        {"place_fds", cmp_py_place_fds, METH_VARARGS, place_fds_doc},
        {"proc_state", cmp_py_proc_state, METH_NOARGS, proc_state_doc},
        {"forkserver_request", cmp_py_forkserver_request, METH_VARARGS, forkserver_request_doc},
        {"forkserver_serve", cmp_py_forkserver_serve, METH_VARARGS, forkserver_serve_doc},
        {"forkserver_take", cmp_py_forkserver_take, METH_VARARGS, forkserver_take_doc},
        {"forkserver_exit", cmp_py_forkserver_exit, METH_VARARGS, forkserver_exit_doc},
        {"fork", cmp_py_fork, METH_VARARGS, fork_doc},
        {"pidfd_open", cmp_py_pidfd_open, METH_O,
         "pidfd_open($module, pid, /)\n--\n\nA pidfd for process pid."},
        {"pidfd_kill", cmp_py_pidfd_kill, METH_VARARGS,
         "pidfd_kill($module, pidfd, sig, /)\n--\n\nSend signal sig to the process of pidfd."},
        {"wait_readable", cmp_py_wait_readable, METH_VARARGS, wait_readable_doc},
        {"reap", cmp_py_reap, METH_O, reap_doc},
        {"spawn", cmp_py_spawn, METH_VARARGS, spawn_doc},
        {"die_with_parent", cmp_py_die_with_parent, METH_VARARGS, die_with_parent_doc},
        {NULL, NULL, 0, NULL},
};

int
cmp_proc_exec(PyObject *module)
{
    PyObject *tag = PyLong_FromLongLong(CMP_FS_PID_TAG);
    int r = PyModule_AddObjectRef(module, "FORKSERVER_PID_TAG", tag);
    Py_XDECREF(tag);
    if (r < 0)
        return -1;
    return PyModule_AddFunctions(module, proc_methods);
}
