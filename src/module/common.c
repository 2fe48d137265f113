/* cmp._core: what every type file shares -- status to exception (the one
 * place), arguments, deadlines, and blocking calls without the GIL. */
#include "module.h"

#include <errno.h>
#include <math.h>

/* ------------------------------------------------------------------------ */
/* Errors: the one place a core status becomes an exception                 */

PyObject *
cmp_set_error(int status)
{
    switch ((cmp_status)status) {
    case CMP_EREPORTED: assert(PyErr_Occurred()); break;
    case CMP_ERRNO: PyErr_SetFromErrno(PyExc_OSError); break;
    case CMP_EINTR:
        /* Only when a caller did not retry (PEP 475 retries elsewhere). */
        errno = EINTR;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    case CMP_ETIMEDOUT: PyErr_SetString(PyExc_TimeoutError, "timed out"); break;
    case CMP_EEOF: PyErr_SetNone(PyExc_EOFError); break;
    case CMP_ECLOSED: PyErr_SetString(PyExc_OSError, "handle is closed"); break;
    case CMP_EBADMSG: PyErr_SetString(PyExc_OSError, "bad message length"); break;
    case CMP_EFULL: PyErr_SetString(PyExc_OSError, "table full"); break;
    case CMP_EEMPTY:
        errno = EAGAIN;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    case CMP_EOVERFLOW: PyErr_SetString(PyExc_OverflowError, "counter overflow"); break;
    case CMP_ENOTOWNER:
        PyErr_SetString(PyExc_AssertionError, "attempt to release a lock not owned by the caller");
        break;
    case CMP_EBROKEN:
        /* threading.BrokenBarrierError is a RuntimeError */
        PyErr_SetString(PyExc_RuntimeError, "the barrier is broken");
        break;
    case CMP_OK:
    case CMP_NEED: PyErr_Format(PyExc_SystemError, "cmp: status %d is not an error", status); break;
    default: PyErr_Format(PyExc_SystemError, "cmp: unknown status %d", status); break;
    }
    return NULL;
}

/* The exception being raised as one object, its traceback attached
 * (PyErr_GetRaisedException is 3.12+); NULL if none. */
PyObject *
cmp_exc_fetch(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* Raise exc again (stolen). */
void
cmp_exc_restore(PyObject *exc)
{
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
}

PyObject *
cmp_set_error_with_filename(int status, PyObject *filename)
{
    if (status == CMP_ERRNO && filename != NULL)
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename);
    return cmp_set_error(status);
}

int
cmp_deadline_from_timeout(PyObject *timeout, int64_t *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = CMP_FOREVER;
        return 0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    *deadline = isnan(t) ? cmp_monotonic_ns() : cmp_deadline_after(t);
    return 0;
}

int
cmp_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *const *names, Py_ssize_t n, Py_ssize_t required, cmp_args_style style,
               PyObject **out)
{
    int py = style == CMP_ARGS_PY;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd argument%s (%zd given)", fname, n,
                     (n == 1 && !py) ? "" : "s", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                break;
        }
        if (i == n) {
            /* CPython's own argument parser words it like Python from 3.13 on. */
            if (py || PY_VERSION_HEX >= 0x030D0000)
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                             key);
            else
                PyErr_Format(PyExc_TypeError, "'%U' is an invalid keyword argument for %s()", key,
                             fname);
            return -1;
        }
        if (i < nargs) {
            if (py)
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                             names[i]);
            else
                PyErr_Format(PyExc_TypeError,
                             "argument for %s() given by name ('%s') and position (%zd)", fname,
                             names[i], i + 1);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

int
cmp_run_blocking(cmp_blocking_fn fn, void *arg)
{
    for (;;) {
        int st;
        Py_BEGIN_ALLOW_THREADS
        st = fn(arg);
        Py_END_ALLOW_THREADS
        if (st != CMP_EINTR)
            return st;
        if (PyErr_CheckSignals() < 0)
            return CMP_PYERR;
    }
}
