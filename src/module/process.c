/* cmp._core process functions: fork, spawn, pidfds, waiting, reaping. */
#include "module.h"
#include "proc.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>

/* Flush sys.stdout and sys.stderr so nothing buffered prints twice after a
 * fork; errors (a closed stream, no stream) are ignored, as the stdlib does. */
static void
flush_std_streams(void)
{
    static const char *const names[] = {"stdout", "stderr"};
    for (size_t i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]);    /* borrowed */
        if (f == NULL || f == Py_None)
            continue;
        PyObject *r = PyObject_CallMethod(f, "flush", NULL);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
}

PyDoc_STRVAR(fork_doc,
"fork(die_with_parent, parent_pidfd) -> pid\n\n"
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
"wait_readable(fd, timeout=None) -> bool\n\n"
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
    int st = cmp_wait_readable(a.fd, cmp_monotonic_ns());   /* fast path, GIL held */
    if (st == CMP_ETIMEDOUT && a.deadline != cmp_monotonic_ns())
        st = cmp_run_blocking(wait_readable_call, &a);
    if (st == CMP_OK)
        Py_RETURN_TRUE;
    if (st == CMP_ETIMEDOUT)
        Py_RETURN_FALSE;
    return cmp_set_error(st);
}

PyDoc_STRVAR(reap_doc,
"reap(pid) -> exitcode or None\n\n"
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

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, env, keep_fds) -> pid\n\n"
"posix_spawn path with argv and env (sequences of str); the descriptors in\n"
"keep_fds stay open in the child under the same numbers.");

static PyObject *
cmp_py_spawn(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *path = NULL, *argv_o, *env_o, *fds_o, *result = NULL;
    PyObject *argv_keep = NULL, *env_keep = NULL, *fds = NULL;
    char **argv = NULL, **envp = NULL;
    int *keep = NULL;

    if (!PyArg_ParseTuple(args, "O&OOO:spawn", PyUnicode_FSConverter, &path,
                          &argv_o, &env_o, &fds_o))
        return NULL;
    if ((argv = to_cstring_array(argv_o, &argv_keep)) == NULL)
        goto done;
    if ((envp = to_cstring_array(env_o, &env_keep)) == NULL)
        goto done;
    if ((fds = PySequence_Fast(fds_o, "keep_fds must be a sequence")) == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fds);
    if ((keep = PyMem_Calloc((size_t)n + 1, sizeof(int))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, i));
        if (fd == -1 && PyErr_Occurred())
            goto done;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "bad file descriptor %ld", fd);
            goto done;
        }
        keep[i] = (int)fd;
    }
    pid_t pid = cmp_spawn(PyBytes_AS_STRING(path), argv, envp, keep, (size_t)n);
    if (pid < 0)
        cmp_set_error(CMP_ERRNO);
    else
        result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(keep);
    PyMem_Free(envp);
    PyMem_Free(argv);
    Py_XDECREF(fds);
    Py_XDECREF(env_keep);
    Py_XDECREF(argv_keep);
    Py_XDECREF(path);
    return result;
}

PyDoc_STRVAR(die_with_parent_doc,
"die_with_parent(ppid, pidfd=-1)\n\n"
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

static PyMethodDef proc_methods[] = {
    {"fork", cmp_py_fork, METH_VARARGS, fork_doc},
    {"pidfd_open", cmp_py_pidfd_open, METH_O, "pidfd_open(pid) -> fd"},
    {"pidfd_kill", cmp_py_pidfd_kill, METH_VARARGS, "pidfd_kill(pidfd, sig)"},
    {"wait_readable", cmp_py_wait_readable, METH_VARARGS, wait_readable_doc},
    {"reap", cmp_py_reap, METH_O, reap_doc},
    {"spawn", cmp_py_spawn, METH_VARARGS, spawn_doc},
    {"die_with_parent", cmp_py_die_with_parent, METH_VARARGS, die_with_parent_doc},
    {NULL, NULL, 0, NULL},
};

int
cmp_proc_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, proc_methods);
}
