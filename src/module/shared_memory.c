/* cmp._core named shared memory: shm_open/unlink and the resource tracker. */
#include "module.h"
#include "pshm.h"

PyDoc_STRVAR(shm_open_doc,
"shm_open(name, create, size) -> (fd, size)\n\n"
"Open the block name (str, with its leading '/'), creating it exclusively\n"
"with size bytes when create is true; size is read back when attaching.");

static PyObject *
cmp_py_shm_open(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    int create;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "Upn:shm_open", &name, &create, &size))
        return NULL;
    const char *cname = PyUnicode_AsUTF8(name);
    if (cname == NULL)
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    size_t sz = (size_t)size;
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = cmp_pshm_open(cname, create, &sz);
    Py_END_ALLOW_THREADS
    if (fd < 0)
        return cmp_set_error_with_filename(fd, name);
    return Py_BuildValue("in", fd, (Py_ssize_t)sz);
}

static PyObject *
cmp_py_shm_unlink(PyObject *Py_UNUSED(module), PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "name must be str, not %.100s", Py_TYPE(name)->tp_name);
        return NULL;
    }
    const char *cname = PyUnicode_AsUTF8(name);
    if (cname == NULL)
        return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = cmp_pshm_unlink(cname);
    Py_END_ALLOW_THREADS
    if (st != CMP_OK)
        return cmp_set_error_with_filename(st, name);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(tracker_add_doc,
"tracker_add(name, fd) -> slot\n\n"
"Register the block name (open on fd) with this process's resource tracker,\n"
"starting the tracker on first use; it is unlinked, with a warning, if it\n"
"still exists when every process sharing the tracker has exited.");

static PyObject *
cmp_py_tracker_add(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    int fd;
    if (!PyArg_ParseTuple(args, "Ui:tracker_add", &name, &fd))
        return NULL;
    const char *cname = PyUnicode_AsUTF8(name);
    if (cname == NULL)
        return NULL;
    int slot = cmp_tracker_add(cname, fd);
    if (slot < 0)
        return cmp_set_error(slot);
    return PyLong_FromLong(slot);
}

static PyObject *
cmp_py_tracker_remove(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot >= 0 && slot <= INT_MAX)
        cmp_tracker_remove((int)slot);
    Py_RETURN_NONE;
}

static PyMethodDef pshm_methods[] = {
    {"shm_open", cmp_py_shm_open, METH_VARARGS, shm_open_doc},
    {"shm_unlink", cmp_py_shm_unlink, METH_O, "shm_unlink(name)"},
    {"tracker_add", cmp_py_tracker_add, METH_VARARGS, tracker_add_doc},
    {"tracker_remove", cmp_py_tracker_remove, METH_O, "tracker_remove(slot)"},
    {NULL, NULL, 0, NULL},
};

int
cmp_pshm_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, pshm_methods);
}
