/* cmp._core named shared memory: create/attach/unlink, the mapping type that
 * SharedMemory.buf views, and the resource tracker. */
#include "module.h"
#include "pshm.h"

#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* CmpMapping: a shared mapping exporting the buffer protocol. Like mmap's,
 * close() refuses while views are exported; unlike mmap.mmap it keeps no
 * descriptor (the block's fd is closed once mapped). */

typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t size;
    Py_ssize_t exports;
} CmpMapping;

static int
mapping_getbuffer(CmpMapping *self, Py_buffer *view, int flags)
{
    if (self->addr == NULL) {
        PyErr_SetString(PyExc_ValueError, "mmap closed or invalid");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
mapping_releasebuffer(CmpMapping *self, Py_buffer *Py_UNUSED(view))
{
    self->exports--;
}

static void
mapping_unmap(CmpMapping *self)
{
    if (self->addr != NULL) {
        cmp_pshm_unmap(self->addr, (size_t)self->size);
        self->addr = NULL;
    }
}

static PyObject *
mapping_close(CmpMapping *self, PyObject *Py_UNUSED(ignored))
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "cannot close exported pointers exist");
        return NULL;
    }
    mapping_unmap(self);
    Py_RETURN_NONE;
}

static Py_ssize_t
mapping_len(CmpMapping *self)
{
    return self->addr == NULL ? 0 : self->size;
}

static void
mapping_dealloc(CmpMapping *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    mapping_unmap(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef mapping_methods[] = {
        {"close", (PyCFunction)mapping_close, METH_NOARGS,
         "close($self, /)\n"
         "--\n"
         "\n"
         "Unmap (BufferError while views are exported)."},
        {NULL, NULL, 0, NULL},
};

static PyType_Slot mapping_slots[] = {
        {Py_tp_doc, "A shared memory mapping (the memory behind SharedMemory.buf)."},
        {Py_tp_dealloc, mapping_dealloc},
        {Py_tp_methods, mapping_methods},
        {Py_bf_getbuffer, mapping_getbuffer},
        {Py_bf_releasebuffer, mapping_releasebuffer},
        {Py_sq_length, mapping_len},
        {0, NULL},
};

static PyType_Spec mapping_spec = {
        .name = "cmp._core.Mapping",
        .basicsize = sizeof(CmpMapping),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = mapping_slots,
};

/* Map fd's [0, size) and close fd; a new CmpMapping or NULL. */
static PyObject *
map_and_close(PyObject *module, int fd, size_t size)
{
    cmp_state *st = PyModule_GetState(module);
    CmpMapping *m = NULL;
    if (size == 0) {
        PyErr_SetString(PyExc_ValueError, "cannot mmap an empty file");
        close(fd);
        return NULL;
    }
    m = PyObject_New(CmpMapping, st->mapping_type);
    if (m == NULL) {
        close(fd);
        return NULL;
    }
    m->exports = 0;
    m->size = (Py_ssize_t)size;
    m->addr = cmp_pshm_map_and_close(fd, size);
    if (m->addr == NULL) {
        Py_CLEAR(m);
        cmp_set_error(CMP_ERRNO);
    }
    return (PyObject *)m;
}

/* ------------------------------------------------------------------------ */
/* Functions                                                                */

/* A block's name as the C string the core takes: a str without NUL, as
 * 3.13+'s _posixshmem says. */
static const char *
shm_name(PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be str");
        return NULL;
    }
    Py_ssize_t n;
    const char *c = PyUnicode_AsUTF8AndSize(name, &n);
    if (c != NULL && strlen(c) != (size_t)n) {
        /* Cut at the NUL, it would name another block (3.11's stdlib does so). */
        PyErr_SetString(PyExc_ValueError, "embedded null character");
        return NULL;
    }
    return c;
}

PyDoc_STRVAR(shm_create_doc,
             "shm_create($module, name, size, track, /)\n"
             "--\n"
             "\n"
             "Create a block of size bytes named name (str with its leading '/'), or\n"
             "under a fresh stdlib-style random name when name is None, and map it.\n"
             "With track, register it with the resource tracker; slot is then its\n"
             "slot in the tracker's table (tracker_forget drops it by name), else None.\n"
             "\n"
             "Returns (name, mapping, slot).");

static PyObject *
cmp_py_shm_create(PyObject *module, PyObject *args)
{
    PyObject *name, *mapping = NULL, *result = NULL, *slot_o = NULL;
    Py_ssize_t size;
    int track, fd, slot = -1;
    char random_name[CMP_PSHM_RANDOM_NAME_LEN + 1];
    const char *cname;

    if (!PyArg_ParseTuple(args, "Onp:shm_create", &name, &size, &track))
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "size must be positive");
        return NULL;
    }
    if (name == Py_None) {
        Py_BEGIN_ALLOW_THREADS
        fd = cmp_pshm_create_random((size_t)size, random_name);
        Py_END_ALLOW_THREADS
        if (fd < 0)
            return cmp_set_error(fd);
        cname = random_name;
        name = PyUnicode_FromString(random_name);
        if (name == NULL) {
            cmp_pshm_unlink(random_name);
            close(fd);
            return NULL;
        }
    }
    else {
        if ((cname = shm_name(name)) == NULL)
            return NULL;
        size_t sz = (size_t)size;
        Py_BEGIN_ALLOW_THREADS
        fd = cmp_pshm_open(cname, 1, &sz);
        Py_END_ALLOW_THREADS
        if (fd < 0)
            return cmp_set_error_with_filename(fd, name);
        Py_INCREF(name);
    }
    if (track) {
        slot = cmp_tracker_add(cname, fd, CMP_TRACK_SHM);
        if (slot < 0) {
            cmp_set_error(slot);
            close(fd);
            goto fail;
        }
    }
    if ((mapping = map_and_close(module, fd, (size_t)size)) == NULL)
        goto fail;
    if (slot >= 0) {
        if ((slot_o = PyLong_FromLong(slot)) == NULL)
            goto fail;
    }
    else {
        slot_o = Py_NewRef(Py_None);
    }
    result = PyTuple_Pack(3, name, mapping, slot_o);
    if (result == NULL)
        goto fail;
    goto done;
fail:
    /* Nothing half-made survives: no block, no registration. */
    if (slot >= 0)
        cmp_tracker_remove(slot);
    cmp_pshm_unlink(cname);
done:
    Py_XDECREF(slot_o);
    Py_XDECREF(mapping);
    Py_DECREF(name);
    return result;
}

PyDoc_STRVAR(shm_attach_doc, "shm_attach($module, name, /)\n"
                             "--\n"
                             "\n"
                             "Map the existing block name (str with its leading '/').\n"
                             "\n"
                             "Returns (mapping, size).");

static PyObject *
cmp_py_shm_attach(PyObject *module, PyObject *name)
{
    const char *cname = shm_name(name);
    if (cname == NULL)
        return NULL;
    size_t size = 0;
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = cmp_pshm_open(cname, 0, &size);
    Py_END_ALLOW_THREADS
    if (fd < 0)
        return cmp_set_error_with_filename(fd, name);
    PyObject *mapping = map_and_close(module, fd, size);
    if (mapping == NULL)
        return NULL;
    PyObject *result = Py_BuildValue("(Nn)", mapping, (Py_ssize_t)size);
    return result;
}

static PyObject *
cmp_py_shm_unlink(PyObject *Py_UNUSED(module), PyObject *name)
{
    const char *cname = shm_name(name);
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
             "tracker_add($module, name, fd, kind, /)\n"
             "--\n"
             "\n"
             "Register the resource open on fd, whose file is /dev/shm/NAME (name with\n"
             "its leading '/'), with the tracker, as kind 0 (shared_memory) or 1\n"
             "(semaphore); starts the tracker.");

static PyObject *
cmp_py_tracker_add(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    int fd, kind;
    if (!PyArg_ParseTuple(args, "Oii:tracker_add", &name, &fd, &kind))
        return NULL;
    const char *cname = shm_name(name);
    if (cname == NULL)
        return NULL;
    if (kind < 0 || kind >= CMP_TRACK_KINDS) {
        PyErr_SetString(PyExc_ValueError, "unknown tracker kind");
        return NULL;
    }
    int slot = cmp_tracker_add(cname, fd, kind);
    if (slot < 0)
        return cmp_set_error(slot);
    return PyLong_FromLong(slot);
}

static PyObject *
cmp_py_tracker_forget(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    int kind;
    if (!PyArg_ParseTuple(args, "Oi:tracker_forget", &name, &kind))
        return NULL;
    const char *cname = shm_name(name);
    if (cname == NULL)
        return NULL;
    return PyLong_FromLong(cmp_tracker_forget(cname, kind));
}

static PyObject *
cmp_py_tracker_fd(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg))
{
    int st = cmp_tracker_revive();
    if (st < 0)
        return cmp_set_error(st);
    int pid;
    int fd = cmp_tracker_fd(&pid);
    return Py_BuildValue("(iiO)", fd, pid, st == 1 ? Py_True : Py_False);
}

static PyObject *
cmp_py_tracker_table_fd(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg))
{
    return PyLong_FromLong(cmp_tracker_table_fd());
}

PyDoc_STRVAR(tracker_attach_doc,
             "tracker_attach($module, table_fd, pipe_fd, pid, /)\n"
             "--\n"
             "\n"
             "Use the tracker of another process (this process's parent): its table\n"
             "(tracker_table_fd() there), its pipe (tracker_fd()) and its pid. Both\n"
             "descriptors are taken over (closed if it fails). A process that started\n"
             "its own tracker, or uses this one, keeps it; an inherited one is replaced.");

static PyObject *
cmp_py_tracker_attach(PyObject *Py_UNUSED(module), PyObject *args)
{
    int table_fd, pipe_fd, pid;
    if (!PyArg_ParseTuple(args, "iii:tracker_attach", &table_fd, &pipe_fd, &pid))
        return NULL;
    int st = cmp_tracker_attach(table_fd, pipe_fd, pid);
    if (st != CMP_OK)
        return cmp_set_error(st);
    Py_RETURN_NONE;
}

static PyMethodDef pshm_methods[] = {
        {"shm_create", cmp_py_shm_create, METH_VARARGS, shm_create_doc},
        {"shm_attach", cmp_py_shm_attach, METH_O, shm_attach_doc},
        {"shm_unlink", cmp_py_shm_unlink, METH_O,
         "shm_unlink($module, name, /)\n"
         "--\n"
         "\n"
         "Unlink the block name (str with its leading '/')."},
        {"tracker_add", cmp_py_tracker_add, METH_VARARGS, tracker_add_doc},
        {"tracker_forget", cmp_py_tracker_forget, METH_VARARGS,
         "tracker_forget($module, name, kind, /)\n"
         "--\n"
         "\n"
         "Forget every registration of name as kind; how many there were."},
        {"tracker_fd", cmp_py_tracker_fd, METH_NOARGS,
         "tracker_fd($module, /)\n"
         "--\n"
         "\n"
         "Start the tracker, or a new one if it died: (its pipe, its pid, relaunched)."},
        {"tracker_table_fd", cmp_py_tracker_table_fd, METH_NOARGS,
         "tracker_table_fd($module, /)\n"
         "--\n"
         "\n"
         "The descriptor of the tracker's table (-1 if it is not running)."},
        {"tracker_attach", cmp_py_tracker_attach, METH_VARARGS, tracker_attach_doc},
        {NULL, NULL, 0, NULL},
};

int
cmp_pshm_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    st->mapping_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &mapping_spec, NULL);
    if (st->mapping_type == NULL)
        return -1;
    if (PyModule_AddType(module, st->mapping_type) < 0)
        return -1;
    return PyModule_AddFunctions(module, pshm_methods);
}
