/* cmp._core synchronization types: SemLock (Lock, RLock, Semaphore,
 * BoundedSemaphore), CondVar, Event, and SharedBlock (raw shared bytes, for
 * Barrier's state), all in the shared-memory arena of src/core/shm.c.
 *
 * SemLock and Event are subclassed by cmp.synchronize, so `lock.acquire()`
 * calls straight into C. Uncontended paths are one atomic operation with the
 * GIL held; only a wait that has to sleep releases the GIL (PEP 475 loop). */
#include "module.h"
#include "shm.h"
#include "sync.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <structmember.h>

/* timeout (None or seconds) -> deadline; *nonblocking set when it is <= 0. */
static int
parse_timeout(PyObject *timeout, int64_t *deadline, int *nonblocking)
{
    *nonblocking = 0;
    *deadline = CMP_FOREVER;
    if (timeout == Py_None)
        return 0;
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!(t > 0.0))
        *nonblocking = 1;
    *deadline = cmp_deadline_after(t);
    return 0;
}

/* Every type here is a block of the shared-memory arena: the block comes
 * first, and the core object is at blk.addr (see SEM, COND, EVENT). */
typedef struct {
    PyObject_HEAD
    cmp_shm_block blk;
} CmpShmObject;

#define SEM(o) ((cmp_sem *)(o)->blk.addr)
#define COND(o) ((cmp_cond *)(o)->blk.addr)
#define EVENT(o) ((cmp_event *)(o)->blk.addr)

/* _shm_handle() -> (fd, offset): the object's block, marked as shared with
 * a child. */
static PyObject *
shm_handle(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    cmp_shm_block *blk = &((CmpShmObject *)self)->blk;
    int fd = cmp_shm_share(blk);
    return Py_BuildValue("(in)", fd, (Py_ssize_t)blk->off);
}

static int
attach_args(PyObject *fd_obj, PyObject *off_obj, size_t size, cmp_shm_block *blk)
{
    long fd = PyLong_AsLong(fd_obj);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad file descriptor");
        return -1;
    }
    Py_ssize_t off = PyLong_AsSsize_t(off_obj);
    if (off == -1 && PyErr_Occurred())
        return -1;
    if (off < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        return -1;
    }
    int st = cmp_shm_attach((int)fd, (size_t)off, size, blk);
    if (st != CMP_OK) {
        cmp_set_error(st);
        return -1;
    }
    return 0;
}

/* A new `type` object (tp_alloc) whose block maps the `size` bytes at the
 * (fd, offset) given in args: the _rebuild of an object that has nothing
 * else to restore. */
static PyObject *
rebuild_attached(PyTypeObject *type, PyObject *args, size_t size)
{
    PyObject *fd, *off;
    if (!PyArg_ParseTuple(args, "OO:_rebuild", &fd, &off))
        return NULL;
    PyObject *self = type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (attach_args(fd, off, size, &((CmpShmObject *)self)->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return self;
}

/* ======================================================================== */
/* SemLock                                                                  */

enum { CMP_KIND_RLOCK = 0, CMP_KIND_SEMAPHORE = 1 }; /* the stdlib's values */

typedef struct {
    PyObject_HEAD
    cmp_shm_block blk; /* first, as in CmpShmObject */
    int kind;
    uint32_t maxvalue;
    /* This process's view, as the stdlib's SemLock keeps it: acquisitions by
     * thread last_tid of process pid (another pid means zero). */
    long count;
    unsigned long last_tid;
    pid_t pid;
} CmpSemLock;

_Static_assert(offsetof(CmpSemLock, blk) == offsetof(CmpShmObject, blk), "blk first");

static inline long
semlock_count(CmpSemLock *self)
{
    return self->pid == cmp_self_pid() ? self->count : 0;
}

static inline int
semlock_ismine(CmpSemLock *self)
{
    return semlock_count(self) > 0 && self->last_tid == PyThread_get_thread_ident();
}

static CmpSemLock *
semlock_alloc(PyTypeObject *type, int kind, uint32_t maxvalue)
{
    CmpSemLock *self = (CmpSemLock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->kind = kind;
    self->maxvalue = maxvalue;
    self->pid = cmp_self_pid();
    return self;
}

/* A C int, with the stdlib's messages ("Python int too large to convert to
 * C int"). 0, or -1 with an exception set. */
static int
as_int(PyObject *obj, int *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v > INT_MAX || v < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *
semlock_new(PyTypeObject *type, PyObject *args, PyObject *Py_UNUSED(kwds))
{
    PyObject *kind_obj, *value_obj, *maxvalue_obj;
    int kind, value, maxvalue;
    if (!PyArg_ParseTuple(args, "OOO:SemLock", &kind_obj, &value_obj, &maxvalue_obj)
        || as_int(kind_obj, &kind) < 0 || as_int(value_obj, &value) < 0
        || as_int(maxvalue_obj, &maxvalue) < 0)
        return NULL;
    if (kind != CMP_KIND_RLOCK && kind != CMP_KIND_SEMAPHORE) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return NULL;
    }
    if (value < 0 || maxvalue < 0) {
        /* The stdlib passes this to sem_open and reports its EINVAL as
         * OSError; cmp says what is wrong, as threading.Semaphore does. */
        PyErr_SetString(PyExc_ValueError, "semaphore initial value must be >= 0");
        return NULL;
    }
    CmpSemLock *self = semlock_alloc(type, kind, (uint32_t)maxvalue);
    if (self == NULL)
        return NULL;
    int st = cmp_shm_alloc(sizeof(cmp_sem), _Alignof(cmp_sem), &self->blk);
    if (st != CMP_OK) {
        Py_DECREF(self);
        return cmp_set_error(st);
    }
    cmp_sem_init(SEM(self), (uint32_t)value);
    return (PyObject *)self;
}

static void
semlock_dealloc(CmpSemLock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cmp_shm_free(&self->blk);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

struct sem_wait_args {
    cmp_sem *sem;
    int64_t deadline;
};

static int
sem_wait_fn(void *p)
{
    struct sem_wait_args *a = p;
    return cmp_sem_wait(a->sem, a->deadline);
}

/* 1 acquired, 0 not (timeout / non-blocking), -1 exception. */
static int
semlock_do_acquire(CmpSemLock *self, int blocking, PyObject *timeout)
{
    if (self->kind == CMP_KIND_RLOCK && semlock_ismine(self)) {
        ++self->count;
        return 1;
    }
    int64_t deadline = CMP_FOREVER;
    int nonblocking = 0;
    if (timeout != Py_None && parse_timeout(timeout, &deadline, &nonblocking) < 0)
        return -1;
    if (cmp_sem_trywait(SEM(self)) != CMP_OK) {
        if (!blocking || nonblocking)
            return 0;
        struct sem_wait_args a = {SEM(self), deadline};
        int st = cmp_run_blocking(sem_wait_fn, &a);
        if (st == CMP_ETIMEDOUT)
            return 0;
        if (st != CMP_OK) {
            cmp_set_error(st);
            return -1;
        }
    }
    pid_t me = cmp_self_pid();
    if (self->pid != me) {
        self->pid = me;
        self->count = 0;
    }
    ++self->count;
    self->last_tid = PyThread_get_thread_ident();
    return 1;
}

PyDoc_STRVAR(semlock_acquire_doc, "acquire($self, /, block=True, timeout=None)\n"
                                  "--\n"
                                  "\n"
                                  "Acquire the semaphore/lock.\n"
                                  "\n"
                                  "Returns bool.");

static PyObject *
semlock_acquire(CmpSemLock *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"block", "timeout"};
    PyObject *argv[2] = {Py_True, Py_None};
    if ((nargs > 0 || kwnames != NULL)
        && cmp_parse_args("acquire", args, nargs, kwnames, names, 2, 0, CMP_ARGS_CLINIC, argv) < 0)
        return NULL;
    int blocking = argv[0] == Py_True ? 1 : PyObject_IsTrue(argv[0]);
    if (blocking < 0)
        return NULL;
    int r = semlock_do_acquire(self, blocking, argv[1]);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* Give one unit back, as release() does after its ownership checks. */
static int
semlock_post(CmpSemLock *self)
{
    int st = cmp_sem_post(SEM(self), self->maxvalue);
    if (st == CMP_OK)
        return 0;
    if (st == CMP_EOVERFLOW) /* the stdlib's message, not an overflow */
        PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
    else
        cmp_set_error(st);
    return -1;
}

PyDoc_STRVAR(semlock_release_doc, "release($self, /)\n"
                                  "--\n"
                                  "\n"
                                  "Release the semaphore/lock.");

static PyObject *
semlock_release(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    pid_t me = cmp_self_pid();
    if (self->pid != me) {
        self->pid = me;
        self->count = 0;
    }
    if (self->kind == CMP_KIND_RLOCK) {
        if (!semlock_ismine(self)) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
            return NULL;
        }
        if (self->count > 1) {
            --self->count;
            Py_RETURN_NONE;
        }
    }
    if (semlock_post(self) < 0)
        return NULL;
    --self->count;
    Py_RETURN_NONE;
}

static PyObject *
semlock_enter(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    int r = semlock_do_acquire(self, 1, Py_None);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
semlock_exit(CmpSemLock *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return semlock_release(self, NULL);
}

static PyObject *
semlock_is_mine(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(semlock_ismine(self));
}

static PyObject *
semlock_get_count(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(semlock_count(self));
}

static PyObject *
semlock_get_value(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(cmp_sem_value(SEM(self)));
}

static PyObject *
semlock_is_zero(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(cmp_sem_value(SEM(self)) == 0);
}

static PyObject *
semlock_after_fork(CmpSemLock *self, PyObject *Py_UNUSED(ignored))
{
    self->count = 0;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(semlock_rebuild_doc,
             "_rebuild($type, fd, offset, kind, maxvalue, /)\n"
             "--\n"
             "\n"
             "The lock at offset of the shared segment open as fd (which it takes over),\n"
             "as passed to a child started by spawn or forkserver.");

static PyObject *
semlock_rebuild(PyTypeObject *type, PyObject *args)
{
    PyObject *fd, *off;
    int kind, maxvalue;
    if (!PyArg_ParseTuple(args, "OOii:_rebuild", &fd, &off, &kind, &maxvalue))
        return NULL;
    CmpSemLock *self = semlock_alloc(type, kind, (uint32_t)maxvalue);
    if (self == NULL)
        return NULL;
    if (attach_args(fd, off, sizeof(cmp_sem), &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* Keyword arguments where there are none: TypeError. */
static int
no_keywords(const char *name, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", name);
        return -1;
    }
    return 0;
}

static PyObject *
no_pickle(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyErr_Format(PyExc_TypeError, "cannot pickle '%s' object", Py_TYPE(self)->tp_name);
    return NULL;
}

static PyMethodDef semlock_methods[] = {
        {"acquire", (PyCFunction)(void (*)(void))semlock_acquire, METH_FASTCALL | METH_KEYWORDS,
         semlock_acquire_doc},
        {"release", (PyCFunction)semlock_release, METH_NOARGS, semlock_release_doc},
        {"__enter__", (PyCFunction)semlock_enter, METH_NOARGS,
         "__enter__($self, /)\n"
         "--\n"
         "\n"
         "Enter the semaphore/lock."},
        {"__exit__", (PyCFunction)(void (*)(void))semlock_exit, METH_FASTCALL,
         "__exit__($self, /, *args)\n"
         "--\n"
         "\n"
         "Exit the semaphore/lock."},
        {"_is_mine", (PyCFunction)semlock_is_mine, METH_NOARGS,
         "_is_mine($self, /)\n"
         "--\n"
         "\n"
         "Whether the lock is owned by this thread."},
        {"_count", (PyCFunction)semlock_get_count, METH_NOARGS,
         "_count($self, /)\n"
         "--\n"
         "\n"
         "Times this thread has acquired it (in this process)."},
        {"_get_value", (PyCFunction)semlock_get_value, METH_NOARGS,
         "_get_value($self, /)\n"
         "--\n"
         "\n"
         "The semaphore's value."},
        {"_is_zero", (PyCFunction)semlock_is_zero, METH_NOARGS,
         "_is_zero($self, /)\n"
         "--\n"
         "\n"
         "Whether the value is zero."},
        {"_after_fork", (PyCFunction)semlock_after_fork, METH_NOARGS,
         "_after_fork($self, /)\n"
         "--\n"
         "\n"
         "Rezero the count."},
        {"_shm_handle", shm_handle, METH_NOARGS,
         "_shm_handle($self, /)\n"
         "--\n"
         "\n"
         "(fd, offset) of the shared word, to pass to a child."},
        {"_rebuild", (PyCFunction)semlock_rebuild, METH_VARARGS | METH_CLASS, semlock_rebuild_doc},
        {"__reduce__", (PyCFunction)no_pickle, METH_NOARGS,
         "__reduce__($self, /)\n"
         "--\n"
         "\n"
         "Refuses: a lock is passed to a child only as it starts."},
        {NULL, NULL, 0, NULL},
};

static PyMemberDef semlock_members[] = {
        {"kind", T_INT, offsetof(CmpSemLock, kind), READONLY, "0: recursive, 1: semaphore"},
        {"maxvalue", T_UINT, offsetof(CmpSemLock, maxvalue), READONLY, "The largest value."},
        {NULL, 0, 0, 0, NULL},
};

static PyType_Slot semlock_slots[] = {
        {Py_tp_doc, "A semaphore or (recursive) lock in shared memory."},
        {Py_tp_new, semlock_new},
        {Py_tp_dealloc, semlock_dealloc},
        {Py_tp_methods, semlock_methods},
        {Py_tp_members, semlock_members},
        {0, NULL},
};

static PyType_Spec semlock_spec = {
        .name = "cmp._core.SemLock",
        .basicsize = sizeof(CmpSemLock),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
        .slots = semlock_slots,
};

/* For the binding's other types (sharedctypes.c): `with lock:` from C, so a
 * synchronized Value takes its lock without a Python-level call. */

int
cmp_semlock_check(PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj), *base = tp;
    while (base != NULL && base->tp_dealloc != (destructor)semlock_dealloc)
        base = base->tp_base;
    if (base == NULL)
        return 0;
    if (base == tp)
        return 1;
    /* A subclass: only if it keeps SemLock's own __enter__ and __exit__. */
    static const char *const names[] = {"__enter__", "__exit__"};
    for (int i = 0; i < 2; i++) {
        PyObject *mine = PyObject_GetAttrString((PyObject *)tp, names[i]);
        PyObject *orig = PyObject_GetAttrString((PyObject *)base, names[i]);
        int same = mine != NULL && mine == orig;
        Py_XDECREF(mine);
        Py_XDECREF(orig);
        if (PyErr_Occurred())
            return -1;
        if (!same)
            return 0;
    }
    return 1;
}

int
cmp_semlock_enter(PyObject *lock)
{
    return semlock_do_acquire((CmpSemLock *)lock, 1, Py_None) < 0 ? -1 : 0;
}

int
cmp_semlock_exit(PyObject *lock)
{
    PyObject *r = semlock_release((CmpSemLock *)lock, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Blocking reacquire after a condition wait, not interruptible (as
 * threading.Condition's): an exception from the wait may already be set. */
static void
semlock_reacquire(CmpSemLock *lk, long times)
{
    for (long i = 0; i < times; i++) {
        if (cmp_sem_trywait(SEM(lk)) == CMP_OK)
            continue;
        Py_BEGIN_ALLOW_THREADS
        /* until CMP_OK (CMP_ERRNO would be EFAULT: a bug) */
        while (cmp_sem_wait(SEM(lk), CMP_FOREVER) == CMP_EINTR)
            ;
        Py_END_ALLOW_THREADS
    }
}

/* ======================================================================== */
/* CondVar                                                                  */

typedef CmpShmObject CmpCondVar;

static PyObject *
condvar_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (no_keywords("CondVar", kwds) < 0 || !PyArg_ParseTuple(args, ":CondVar"))
        return NULL;
    CmpCondVar *self = (CmpCondVar *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int st = cmp_shm_alloc(sizeof(cmp_cond), _Alignof(cmp_cond), &self->blk);
    if (st != CMP_OK) {
        Py_DECREF(self);
        return cmp_set_error(st);
    }
    return (PyObject *)self; /* zeroed: a valid empty condition */
}

static void
condvar_dealloc(CmpCondVar *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cmp_shm_free(&self->blk);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The lock argument, checked to be a SemLock. */
static CmpSemLock *
condvar_lock_arg(CmpCondVar *self, PyObject *lock)
{
    cmp_state *st = PyType_GetModuleState(Py_TYPE(self)); /* not subclassable */
    if (st == NULL || !PyObject_TypeCheck(lock, st->semlock_type)) {
        PyErr_Format(PyExc_TypeError, "a cmp lock is required, not '%.200s'",
                     Py_TYPE(lock)->tp_name);
        return NULL;
    }
    return (CmpSemLock *)lock;
}

struct cond_sleep_args {
    cmp_cond *cv;
    cmp_cond_ticket ticket;
    int64_t deadline;
};

static int
cond_sleep_fn(void *p)
{
    struct cond_sleep_args *a = p;
    return cmp_cond_sleep(a->cv, a->ticket, a->deadline);
}

PyDoc_STRVAR(condvar_wait_doc,
             "wait($self, lock, timeout=None, /)\n"
             "--\n"
             "\n"
             "Release lock (which this thread holds, however deeply), wait to be notified\n"
             "or for the timeout, and reacquire it. False on timeout.\n"
             "\n"
             "Returns bool.");

static PyObject *
condvar_wait(CmpCondVar *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "wait(lock, timeout=None)");
        return NULL;
    }
    CmpSemLock *lk = condvar_lock_arg(self, args[0]);
    if (lk == NULL)
        return NULL;
    if (!semlock_ismine(lk)) {
        PyErr_SetString(PyExc_AssertionError, "must acquire() condition before using wait()");
        return NULL;
    }
    int64_t deadline;
    if (cmp_deadline_from_timeout(nargs > 1 ? args[1] : Py_None, &deadline) < 0)
        return NULL;

    struct cond_sleep_args a = {COND(self), cmp_cond_enter(COND(self)), deadline};
    /* Release the lock completely; a non-recursive one may be held more than
     * once by this thread (a Semaphore), as the stdlib allows. */
    long saved = lk->count;
    long times = lk->kind == CMP_KIND_RLOCK ? 1 : saved;
    lk->count = 0;
    for (long i = 0; i < times; i++)
        (void)cmp_sem_post(SEM(lk), lk->maxvalue); /* held: cannot overflow */

    int st = cmp_run_blocking(cond_sleep_fn, &a);

    semlock_reacquire(lk, times);
    lk->count = saved;
    lk->last_tid = PyThread_get_thread_ident();
    if (st == CMP_OK)
        Py_RETURN_TRUE;
    int was_notified = cmp_cond_leave(COND(self), a.ticket);
    if (st == CMP_ETIMEDOUT)
        return PyBool_FromLong(was_notified);
    return cmp_set_error(st);
}

PyDoc_STRVAR(condvar_notify_doc, "notify($self, lock, n, /)\n"
                                 "--\n"
                                 "\n"
                                 "Wake up to n waiters; this thread must hold lock.");

static PyObject *
condvar_notify(CmpCondVar *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "notify(lock, n)");
        return NULL;
    }
    CmpSemLock *lk = condvar_lock_arg(self, args[0]);
    if (lk == NULL)
        return NULL;
    Py_ssize_t n = PyNumber_AsSsize_t(args[1], NULL); /* clamps big ints */
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (!semlock_ismine(lk)) {
        PyErr_SetString(PyExc_AssertionError, "lock is not owned");
        return NULL;
    }
    if (n > 0) {
        int st = cmp_cond_notify(COND(self), n > (Py_ssize_t)UINT32_MAX ? UINT32_MAX : (uint32_t)n);
        if (st < 0)
            return cmp_set_error(st);
    }
    Py_RETURN_NONE;
}

static PyObject *
condvar_waiting(CmpCondVar *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(cmp_cond_waiting(COND(self)));
}

static PyObject *
condvar_rebuild(PyTypeObject *type, PyObject *args)
{
    return rebuild_attached(type, args, sizeof(cmp_cond));
}

static PyMethodDef condvar_methods[] = {
        {"wait", (PyCFunction)(void (*)(void))condvar_wait, METH_FASTCALL, condvar_wait_doc},
        {"notify", (PyCFunction)(void (*)(void))condvar_notify, METH_FASTCALL, condvar_notify_doc},
        {"_waiting", (PyCFunction)condvar_waiting, METH_NOARGS,
         "_waiting($self, /)\n"
         "--\n"
         "\n"
         "Waiters (approximate)."},
        {"_shm_handle", shm_handle, METH_NOARGS,
         "_shm_handle($self, /)\n"
         "--\n"
         "\n"
         "(fd, offset)"},
        {"_rebuild", (PyCFunction)condvar_rebuild, METH_VARARGS | METH_CLASS,
         "_rebuild($type, fd, offset, /)\n"
         "--\n"
         "\n"
         "The condition passed to a spawned child."},
        {"__reduce__", (PyCFunction)no_pickle, METH_NOARGS,
         "__reduce__($self, /)\n"
         "--\n"
         "\n"
         "Refuses: a condition is passed to a child only as it starts."},
        {NULL, NULL, 0, NULL},
};

static PyType_Slot condvar_slots[] = {
        {Py_tp_doc, "The shared part of a Condition: waiter tickets on a futex word."},
        {Py_tp_new, condvar_new},
        {Py_tp_dealloc, condvar_dealloc},
        {Py_tp_methods, condvar_methods},
        {0, NULL},
};

static PyType_Spec condvar_spec = {
        .name = "cmp._core.CondVar",
        .basicsize = sizeof(CmpCondVar),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = condvar_slots,
};

/* ======================================================================== */
/* Event                                                                    */

typedef CmpShmObject CmpEvent;

static PyObject *
event_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    CmpEvent *self = (CmpEvent *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int st = cmp_shm_alloc(sizeof(cmp_event), _Alignof(cmp_event), &self->blk);
    if (st != CMP_OK) {
        Py_DECREF(self);
        return cmp_set_error(st);
    }
    return (PyObject *)self; /* zeroed: unset */
}

static void
event_dealloc(CmpEvent *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cmp_shm_free(&self->blk);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
event_is_set(CmpEvent *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(cmp_event_is_set(EVENT(self)));
}

static PyObject *
event_set(CmpEvent *self, PyObject *Py_UNUSED(ignored))
{
    int st = cmp_event_set(EVENT(self));
    if (st != CMP_OK)
        return cmp_set_error(st);
    Py_RETURN_NONE;
}

static PyObject *
event_clear(CmpEvent *self, PyObject *Py_UNUSED(ignored))
{
    cmp_event_clear(EVENT(self));
    Py_RETURN_NONE;
}

struct event_wait_args {
    cmp_event *ev;
    uint32_t seen;
    int64_t deadline;
};

static int
event_wait_fn(void *p)
{
    struct event_wait_args *a = p;
    return cmp_event_wait(a->ev, a->seen, a->deadline);
}

static PyObject *
event_wait(CmpEvent *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout = Py_None;
    if ((nargs > 0 || kwnames != NULL)
        && cmp_parse_args("wait", args, nargs, kwnames, names, 1, 0, CMP_ARGS_CLINIC, &timeout) < 0)
        return NULL;
    uint32_t seen = cmp_event_snapshot(EVENT(self));
    if (seen & 1)
        Py_RETURN_TRUE;
    int nonblocking;
    struct event_wait_args a = {EVENT(self), seen, CMP_FOREVER};
    if (parse_timeout(timeout, &a.deadline, &nonblocking) < 0)
        return NULL;
    if (nonblocking)
        Py_RETURN_FALSE;
    int st = cmp_run_blocking(event_wait_fn, &a);
    if (st != CMP_OK && st != CMP_ETIMEDOUT)
        return cmp_set_error(st);
    return PyBool_FromLong(cmp_event_is_set(EVENT(self)));
}

static PyObject *
event_rebuild(PyTypeObject *type, PyObject *args)
{
    return rebuild_attached(type, args, sizeof(cmp_event));
}

static PyMethodDef event_methods[] = {
        {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
         "is_set($self, /)\n"
         "--\n"
         "\n"
         "Whether the flag is set."},
        {"set", (PyCFunction)event_set, METH_NOARGS,
         "set($self, /)\n"
         "--\n"
         "\n"
         "Set the flag and wake every waiter."},
        {"clear", (PyCFunction)event_clear, METH_NOARGS,
         "clear($self, /)\n"
         "--\n"
         "\n"
         "Reset the flag."},
        {"wait", (PyCFunction)(void (*)(void))event_wait, METH_FASTCALL | METH_KEYWORDS,
         "wait($self, /, timeout=None)\n"
         "--\n"
         "\n"
         "Block until the flag is set or the timeout passes;\n"
         "returns the flag.\n"
         "\n"
         "Returns bool."},
        {"_shm_handle", shm_handle, METH_NOARGS,
         "_shm_handle($self, /)\n"
         "--\n"
         "\n"
         "(fd, offset)"},
        {"_rebuild", (PyCFunction)event_rebuild, METH_VARARGS | METH_CLASS,
         "_rebuild($type, fd, offset, /)\n"
         "--\n"
         "\n"
         "The event passed to a spawned child."},
        {"__reduce__", (PyCFunction)no_pickle, METH_NOARGS,
         "__reduce__($self, /)\n"
         "--\n"
         "\n"
         "Refuses: an event is passed to a child only as it starts."},
        {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
        {Py_tp_doc, "An event flag in shared memory."},
        {Py_tp_new, event_new},
        {Py_tp_dealloc, event_dealloc},
        {Py_tp_methods, event_methods},
        {0, NULL},
};

static PyType_Spec event_spec = {
        .name = "cmp._core.Event",
        .basicsize = sizeof(CmpEvent),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
        .slots = event_slots,
};

/* ======================================================================== */
/* SharedBlock: raw bytes in the arena, with the buffer protocol            */

typedef struct {
    PyObject_HEAD
    cmp_shm_block blk; /* first, as in CmpShmObject */
    Py_ssize_t size;
} CmpSharedBlock;

_Static_assert(offsetof(CmpSharedBlock, blk) == offsetof(CmpShmObject, blk), "blk first");

static PyObject *
block_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    if (no_keywords("SharedBlock", kwds) < 0 || !PyArg_ParseTuple(args, "n:SharedBlock", &size))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    CmpSharedBlock *self = (CmpSharedBlock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int st = cmp_shm_alloc((size_t)size, CMP_SHM_BLOCK, &self->blk);
    if (st != CMP_OK) {
        Py_DECREF(self);
        return cmp_set_error(st);
    }
    self->size = size;
    return (PyObject *)self;
}

static void
block_dealloc(CmpSharedBlock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cmp_shm_free(&self->blk);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
block_getbuffer(CmpSharedBlock *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->blk.addr, self->size, 0, flags);
}

static PyObject *
block_shm_handle(CmpSharedBlock *self, PyObject *Py_UNUSED(ignored))
{
    int fd = cmp_shm_share(&self->blk);
    return Py_BuildValue("(inn)", fd, (Py_ssize_t)self->blk.off, self->size);
}

static PyObject *
block_rebuild(PyTypeObject *type, PyObject *args)
{
    PyObject *fd, *off;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "OOn:_rebuild", &fd, &off, &size))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    CmpSharedBlock *self = (CmpSharedBlock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (attach_args(fd, off, (size_t)size, &self->blk) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->size = size;
    return (PyObject *)self;
}

static PyMethodDef block_methods[] = {
        {"_shm_handle", (PyCFunction)block_shm_handle, METH_NOARGS,
         "_shm_handle($self, /)\n"
         "--\n"
         "\n"
         "(fd, offset, size)"},
        {"_rebuild", (PyCFunction)block_rebuild, METH_VARARGS | METH_CLASS,
         "_rebuild($type, fd, offset, size, /)\n"
         "--\n"
         "\n"
         "The block passed to a spawned child."},
        {"__reduce__", (PyCFunction)no_pickle, METH_NOARGS,
         "__reduce__($self, /)\n"
         "--\n"
         "\n"
         "Refuses: a block is passed to a child only as it starts."},
        {NULL, NULL, 0, NULL},
};

static PyType_Slot block_slots[] = {
        {Py_tp_doc, "SharedBlock(size): zeroed bytes in shared memory (a writable buffer)."},
        {Py_tp_new, block_new},
        {Py_tp_dealloc, block_dealloc},
        {Py_tp_methods, block_methods},
        {Py_bf_getbuffer, block_getbuffer},
        {0, NULL},
};

static PyType_Spec block_spec = {
        .name = "cmp._core.SharedBlock",
        .basicsize = sizeof(CmpSharedBlock),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = block_slots,
};

/* ======================================================================== */
/* Module functions and init                                                */

static PyObject *
cmp_py_shm_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    cmp_shm_stats s;
    cmp_shm_get_stats(&s);
    return Py_BuildValue("(nnn)", (Py_ssize_t)s.segments, (Py_ssize_t)s.bytes,
                         (Py_ssize_t)s.blocks_used);
}

static PyMethodDef sync_functions[] = {
        {"shm_stats", cmp_py_shm_stats, METH_NOARGS,
         "shm_stats($module, /)\n"
         "--\n"
         "\n"
         "Returns (segments, bytes mapped, arena blocks in use)."},
        {NULL, NULL, 0, NULL},
};

static int
add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, NULL);
    if (tp == NULL)
        return -1;
    *slot = (PyTypeObject *)tp; /* owned by the module state */
    return PyModule_AddType(module, *slot);
}

int
cmp_sync_exec(PyObject *module)
{
    cmp_state *st = PyModule_GetState(module);
    if (add_type(module, &semlock_spec, &st->semlock_type) < 0
        || add_type(module, &condvar_spec, &st->condvar_type) < 0
        || add_type(module, &event_spec, &st->event_type) < 0
        || add_type(module, &block_spec, &st->block_type) < 0)
        return -1;
    if (PyModule_AddFunctions(module, sync_functions) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "RECURSIVE_MUTEX", CMP_KIND_RLOCK) < 0
        || PyModule_AddIntConstant(module, "SEMAPHORE", CMP_KIND_SEMAPHORE) < 0
        || PyModule_AddIntConstant(module, "SEM_VALUE_MAX", CMP_SEM_VALUE_MAX) < 0)
        return -1;
    return 0;
}
