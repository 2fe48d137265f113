/* cmp._core: private header shared by the binding's files.
 * This directory is the only C that includes Python.h. */
#ifndef CMP_MODULE_H
#define CMP_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cmp_core.h"

/* The core's CMP_EREPORTED, as the binding reads it: a Python exception
 * is already set. */
#define CMP_PYERR CMP_EREPORTED

/* Module state; every type and exception lives here (see module.c). */
typedef struct {
    PyTypeObject *mapping_type;      /* shared_memory.c: CmpMapping */
    PyTypeObject *semlock_type;      /* synchronize.c: CmpSemLock */
    PyTypeObject *condvar_type;      /* synchronize.c: CmpCondVar */
    PyTypeObject *event_type;        /* synchronize.c: CmpEvent */
    PyTypeObject *block_type;        /* synchronize.c: CmpSharedBlock */
    PyTypeObject *shared_value_type; /* sharedctypes.c: CmpShared */
    PyTypeObject *shared_array_type; /* sharedctypes.c: CmpShared */
    PyTypeObject *sync_value_type;   /* sharedctypes.c: CmpSync */
    PyTypeObject *sync_array_type;   /* sharedctypes.c: CmpSync */
    PyTypeObject *sync_string_type;  /* sharedctypes.c: CmpSync */
    /* codec.c: the message layer's collaborators and its cached pickler */
    PyTypeObject *sink_type; /* what the cached pickler writes to */
    PyObject *pickler_type, *dispatch_table, *loads;
    int protocol;
    PyObject *empty, *full;     /* queue.Empty, queue.Full */
    PyObject *buffer_too_short; /* cmp.context.BufferTooShort */
    int pickler_busy;           /* the cached pickler is in use */
    PyObject *pickler_sink, *pickler_dump, *pickler_clear_memo;
    /* queue.c */
    PyTypeObject *q_ring_type;   /* Ring: the base of Queue */
    PyTypeObject *q_simple_type; /* SimpleRing: the base of the Pool's result queue */
    /* connection.c */
    PyObject *conn_type; /* cmp._core.Connection */
} cmp_state;

/* Turn a core status into an exception (errno read for CMP_ERRNO).
 * Always returns NULL so callers can `return cmp_set_error(st);`. */
PyObject *cmp_set_error(int status);

/* The same, naming `filename` in the OSError (as open() does). */
PyObject *cmp_set_error_with_filename(int status, PyObject *filename);

/* The exception being raised, taken as one object with its traceback
 * (NULL if none); and raising it again, the reference stolen. What
 * PyErr_GetRaisedException / PyErr_SetRaisedException do from 3.12 on. */
PyObject *cmp_exc_fetch(void);
void cmp_exc_restore(PyObject *exc);

/* timeout (None or a number of seconds) -> absolute deadline.
 * Returns 0, or -1 with an exception set. */
int cmp_deadline_from_timeout(PyObject *timeout, int64_t *deadline);

/* Arguments of METH_FASTCALL | METH_KEYWORDS functions, parsed without
 * CPython's private API: out[0..n) from the positional arguments, then the
 * keywords by names[]; arguments not given keep the value the caller preset
 * (NULL for "not given"), and the first `required` must be given. The
 * TypeError wording is that of the stdlib function being mirrored: one
 * written in Python (Connection.send_bytes, Queue.put) or in C with
 * Argument Clinic (SemLock.acquire). 0, or -1 with TypeError set. */
typedef enum { CMP_ARGS_PY, CMP_ARGS_CLINIC } cmp_args_style;
int cmp_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   const char *const *names, Py_ssize_t n, Py_ssize_t required,
                   cmp_args_style style, PyObject **out);

/* Run fn(arg) with the GIL released, the PEP 475 way: on CMP_EINTR run the
 * signal handlers and retry (deadlines are absolute, so retries never stretch
 * a timeout); if a handler raised, return CMP_PYERR. */
typedef int (*cmp_blocking_fn)(void *arg);
int cmp_run_blocking(cmp_blocking_fn fn, void *arg);

/* synchronize.c, for other types that take a cmp lock from C.
 * cmp_semlock_check: 1 if obj is a cmp SemLock whose __enter__/__exit__ are
 * the C ones (then the two below may be called on it), 0 if not, -1 error.
 * cmp_semlock_enter/exit: what `with lock:` does; 0, or -1 with an exception. */
int cmp_semlock_check(PyObject *obj);
int cmp_semlock_enter(PyObject *lock);
int cmp_semlock_exit(PyObject *lock);

/* Per-area initialisation, called in order from the module's exec slot.
 * Each adds its functions and types to the module; 0 or -1 with an exception. */
int cmp_codec_exec(PyObject *module);
int cmp_proc_exec(PyObject *module);
int cmp_pshm_exec(PyObject *module);
int cmp_sync_exec(PyObject *module);
int cmp_sharedctypes_exec(PyObject *module);
int cmp_queue_exec(PyObject *module);
int cmp_queue_traverse(cmp_state *st, visitproc visit, void *arg);
void cmp_queue_clear(cmp_state *st);
int cmp_conn_exec(PyObject *module);
int cmp_pool_exec(PyObject *module);

/* queue.c, for pool.c: framed messages (lists of bytes-like pieces: a raw
 * header, then what cmp_codec_encode returned) on a Queue or SimpleRing. */
struct cmp_ring;
struct cmp_ring *cmp_queue_ring(cmp_state *st, PyObject *queue); /* NULL: TypeError */
/* put() the messages in order: a Queue never blocks (its overflow takes what
 * does not fit), a SimpleRing waits for room. 0 or -1. */
int cmp_queue_put_pieces(cmp_state *st, PyObject *queue, PyObject *const *pieces, size_t n);

#endif /* CMP_MODULE_H */
