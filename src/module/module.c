/* cmp._core: the module definition (multi-phase init): its state and the
 * areas' initialisation, in order. */
#include "module.h"
#include "codec.h"

/* ------------------------------------------------------------------------ */
/* Module                                                                   */

static int (*const cmp_area_execs[])(PyObject *) = {
        cmp_codec_exec,        cmp_proc_exec,  cmp_pshm_exec, cmp_sync_exec,
        cmp_sharedctypes_exec, cmp_queue_exec, cmp_pool_exec, cmp_conn_exec,
};

static int
cmp_exec(PyObject *module)
{
    for (size_t i = 0; i < sizeof(cmp_area_execs) / sizeof(cmp_area_execs[0]); i++) {
        if (cmp_area_execs[i](module) < 0)
            return -1;
    }
    return 0;
}

static int
cmp_traverse(PyObject *module, visitproc visit, void *arg)
{
    cmp_state *st = PyModule_GetState(module);
    Py_VISIT(st->mapping_type);
    Py_VISIT(st->conn_type);
    Py_VISIT(st->semlock_type);
    Py_VISIT(st->condvar_type);
    Py_VISIT(st->event_type);
    Py_VISIT(st->block_type);
    Py_VISIT(st->shared_value_type);
    Py_VISIT(st->shared_array_type);
    Py_VISIT(st->sync_value_type);
    Py_VISIT(st->sync_array_type);
    Py_VISIT(st->sync_string_type);
    int rc = cmp_codec_traverse(st, visit, arg);
    return rc != 0 ? rc : cmp_queue_traverse(st, visit, arg);
}

static int
cmp_clear(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    Py_CLEAR(st->mapping_type);
    Py_CLEAR(st->semlock_type);
    Py_CLEAR(st->condvar_type);
    Py_CLEAR(st->event_type);
    Py_CLEAR(st->block_type);
    Py_CLEAR(st->shared_value_type);
    Py_CLEAR(st->shared_array_type);
    Py_CLEAR(st->sync_value_type);
    Py_CLEAR(st->sync_array_type);
    Py_CLEAR(st->sync_string_type);
    cmp_queue_clear(st);
    cmp_codec_clear(st);
    Py_CLEAR(st->conn_type);
    return 0;
}

static void
cmp_free(void *module)
{
    cmp_clear((PyObject *)module);
}

static PyModuleDef_Slot cmp_slots[] = {
        {Py_mod_exec, cmp_exec},
        {0, NULL},
};

static struct PyModuleDef cmp_module = {
        PyModuleDef_HEAD_INIT,
        .m_name = "cmp._core",
        .m_doc = "The C core of cmp: processes, pipes, locks, queues, shared memory.",
        .m_size = sizeof(cmp_state),
        .m_slots = cmp_slots,
        .m_traverse = cmp_traverse,
        .m_clear = cmp_clear,
        .m_free = cmp_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&cmp_module);
}
