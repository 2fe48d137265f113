/* cmp._core pool: the loops behind cmp.pool -- a worker's task loop and the
 * parent's result dispatch -- and the framed messages they exchange.
 *
 * Tasks and results travel through two cmp queues (src/core/ring.c) as
 * framed messages: a header of four native 64-bit words, then a pickle.
 *
 *   task    seq, job, idx, flen << 32 | flags << 8 | kind
 *           then func pickled (flen bytes), then (args, kwds) | chunk pickled
 *   result  seq, job, idx, slot << 32 | flags  the value, or the exception
 *
 * seq numbers tasks (never 0); job and idx are the stdlib's (the result
 * object's key in the pool's cache and the chunk's index).
 *
 * Functions. A plain function (or a module's builtin) pickles as a name, the
 * same bytes every time: the parent keeps those bytes per function, and
 * workers keep the function they unpickled per bytes (TASK_CACHED), which
 * saves a name lookup on both sides of every task. Anything else (a bound
 * method, a partial, a callable object) is pickled, and unpickled, with
 * each task, as in the stdlib.
 *
 * Slots. Each worker owns a slot of POOL_SLOT_WORDS words in a block of
 * shared memory. The ring's claim (ring.h) stores the task's seq, job and
 * idx there before the task leaves the task ring; the worker clears the seq
 * once the result is in the result queue. So when a worker dies, its slot
 * names the task it held, if any. The pool then posts a DEAD record for it;
 * as the dead worker's results all precede that record in the result queue,
 * the dispatcher knows the task was finished if that worker's last result
 * was that very task, and otherwise fails it. (A worker killed between the
 * claim and the removal of the task leaves the task in the ring as well:
 * it is failed, and the result of its other run is dropped.) */
#include "module.h"
#include "codec.h"
#include "ring.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define POOL_HEAD_WORDS 4
#define POOL_HEAD (POOL_HEAD_WORDS * sizeof(uint64_t))
#define POOL_SLOT_WORDS 4

_Static_assert(POOL_SLOT_WORDS >= CMP_RING_CLAIM_WORDS, "a slot holds a claim");

/* task kinds, and flags */
enum { TASK_APPLY = 0, TASK_MAP = 1, TASK_STARMAP = 2, TASK_STOP = 3 };
#define TASK_CACHED 1u     /* the function may be cached by its pickle */
#define FUNC_CACHE_MAX 256 /* entries in either side's function cache */

/* result flags */
#define RES_ERROR 1u /* the payload is the task's exception */
#define RES_DEAD 2u  /* posted by the pool: the slot's worker died holding seq */
#define RES_STOP 4u  /* the dispatcher returns */

#define DISPATCH_BATCH 256

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */

static PyObject *
head_bytes(uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3)
{
    uint64_t w[POOL_HEAD_WORDS] = {w0, w1, w2, w3};
    return PyBytes_FromStringAndSize((const char *)w, sizeof(w));
}

/* The pieces of a framed message: the header, then obj pickled. */
static PyObject *
frame(cmp_state *st, uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3, PyObject *obj)
{
    PyObject *pieces = cmp_codec_encode(st, obj);
    if (pieces == NULL)
        return NULL;
    PyObject *head = head_bytes(w0, w1, w2, w3);
    if (head == NULL || PyList_Insert(pieces, 0, head) < 0) {
        Py_XDECREF(head);
        Py_DECREF(pieces);
        return NULL;
    }
    Py_DECREF(head);
    return pieces;
}

/* Take 1..max messages into b (lens[]), waiting as long as it takes. The
 * number taken, or -1 with an exception. */
static Py_ssize_t
take(cmp_ring *ring, cmp_rxbuf *b, size_t *lens, size_t max, _Atomic uint64_t *claim)
{
    cmp_ring_rop op;
    int st;
    for (;;) {
        if (cmp_rxbuf_grow(b, CMP_RXBUF_MIN) < 0)
            return -1;
        cmp_ring_rop_init(&op, b->buf, b->cap, lens, max);
        op.claim = claim;
        st = cmp_codec_take(ring, &op, CMP_FOREVER);
        if (st != CMP_NEED)
            break;
        if (cmp_rxbuf_grow(b, op.need) < 0)
            return -1;
    }
    if (st != CMP_OK) {
        /* A signal's handler raised (in a worker: it is going away) */
        cmp_ring_take_abandon(ring, &op);
        if (st != CMP_PYERR)
            cmp_set_error(st);
        return -1;
    }
    return (Py_ssize_t)op.n;
}

static void
read_head(const unsigned char *p, uint64_t w[POOL_HEAD_WORDS])
{
    memcpy(w, p, POOL_HEAD);
}

/* ------------------------------------------------------------------------ */
/* The worker loop                                                          */

/* Run one task: a new reference, or NULL with an exception. */
static PyObject *
run_task(uint64_t kind, PyObject *func, PyObject *payload)
{
    if (kind == TASK_APPLY) {
        PyObject *args, *kwds;
        if (!PyTuple_Check(payload) || PyTuple_GET_SIZE(payload) != 2
            || !PyTuple_Check(args = PyTuple_GET_ITEM(payload, 0))
            || !PyDict_Check(kwds = PyTuple_GET_ITEM(payload, 1))) {
            PyErr_SetString(PyExc_TypeError, "malformed pool task");
            return NULL;
        }
        return PyObject_Call(func, args, PyDict_GET_SIZE(kwds) ? kwds : NULL);
    }
    if (kind != TASK_MAP && kind != TASK_STARMAP) {
        PyErr_SetString(PyExc_TypeError, "malformed pool task");
        return NULL;
    }
    /* A list or tuple is indexed; anything else (a range) iterated. */
    int seq = PyList_CheckExact(payload) || PyTuple_CheckExact(payload);
    PyObject *it = seq ? NULL : PyObject_GetIter(payload);
    if (!seq && it == NULL)
        return NULL;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL; i++) {
        PyObject *item, *r;
        if (seq) {
            if (i >= PySequence_Fast_GET_SIZE(payload))
                break;
            item = Py_NewRef(PySequence_Fast_GET_ITEM(payload, i));
        }
        else if ((item = PyIter_Next(it)) == NULL) {
            if (PyErr_Occurred())
                Py_CLEAR(out);
            break;
        }
        if (kind == TASK_MAP) {
            r = PyObject_CallOneArg(func, item);
        }
        else {
            PyObject *args = PySequence_Tuple(item);
            r = args ? PyObject_Call(func, args, NULL) : NULL;
            Py_XDECREF(args);
        }
        Py_DECREF(item);
        if (r == NULL || PyList_Append(out, r) < 0)
            Py_CLEAR(out);
        Py_XDECREF(r);
    }
    Py_XDECREF(it);
    return out;
}

/* The task's function: from the worker's cache when the parent allows it. */
static PyObject *
task_func(cmp_state *st, PyObject *cache, unsigned char *p, size_t flen, int cached)
{
    if (!cached)
        return cmp_codec_load(st, p, flen);
    PyObject *key = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)flen);
    if (key == NULL)
        return NULL;
    PyObject *func = PyDict_GetItemWithError(cache, key);
    if (func != NULL) {
        Py_INCREF(func);
    }
    else if (!PyErr_Occurred() && (func = cmp_codec_load(st, p, flen)) != NULL) {
        if (PyDict_GET_SIZE(cache) >= FUNC_CACHE_MAX)
            PyDict_Clear(cache);
        if (PyDict_SetItem(cache, key, func) < 0)
            Py_CLEAR(func);
    }
    Py_DECREF(key);
    return func;
}

/* After a task raised: an Exception becomes the task's failure (through
 * hook(exc)), anything else (SystemExit, KeyboardInterrupt) ends the
 * worker, as in the stdlib. A new reference, or NULL with the exception. */
static PyObject *
task_failure(PyObject *hook, PyObject *value)
{
    PyObject *exc = cmp_exc_fetch();
    if (!PyErr_GivenExceptionMatches(exc, PyExc_Exception)) {
        cmp_exc_restore(exc);
        return NULL;
    }
    PyObject *r = value ? PyObject_CallFunctionObjArgs(hook, exc, value, NULL)
                        : PyObject_CallOneArg(hook, exc);
    Py_DECREF(exc);
    return r;
}

PyDoc_STRVAR(pool_worker_doc,
             "_pool_worker($module, tasks, results, slots, slot, maxtasks, wrap_exception, "
             "encoding_error, /)\n"
             "--\n"
             "\n"
             "A pool worker's loop: take a task from the tasks queue, unpickle it, run it,\n"
             "pickle the result and put it in the results queue, until a stop task comes\n"
             "or maxtasks (if not None) tasks are done; returns the number done.\n"
             "wrap_exception(e) makes what a failed task sends; encoding_error(e, value)\n"
             "what is sent when the result cannot be pickled.");

static PyObject *
pool_worker(PyObject *module, PyObject *args)
{
    cmp_state *st = PyModule_GetState(module);
    PyObject *tasks, *results, *slots, *maxobj, *wrap, *encerr;
    Py_ssize_t slot;
    if (!PyArg_ParseTuple(args, "OOOnOOO:_pool_worker", &tasks, &results, &slots, &slot, &maxobj,
                          &wrap, &encerr))
        return NULL;
    Py_ssize_t maxtasks = 0;
    if (maxobj != Py_None && (maxtasks = PyLong_AsSsize_t(maxobj)) == -1 && PyErr_Occurred())
        return NULL;
    cmp_ring *ring = cmp_queue_ring(st, tasks);
    if (ring == NULL || cmp_queue_ring(st, results) == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(slots, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *ret = NULL, *fcache = PyDict_New();
    cmp_rxbuf b = {NULL, 0};
    Py_ssize_t done = 0;
    if (fcache == NULL)
        goto done;
    if (slot < 0 || (size_t)view.len < (size_t)(slot + 1) * POOL_SLOT_WORDS * sizeof(uint64_t)
        || ((uintptr_t)view.buf % sizeof(uint64_t)) != 0) {
        PyErr_SetString(PyExc_ValueError, "bad pool slot");
        goto done;
    }
    _Atomic uint64_t *claim = (_Atomic uint64_t *)view.buf + slot * POOL_SLOT_WORDS;

    while (maxtasks == 0 || done < maxtasks) {
        size_t len;
        if (take(ring, &b, &len, 1, claim) < 0)
            goto done;
        if (len < POOL_HEAD) {
            PyErr_SetString(PyExc_ValueError, "malformed pool task");
            goto done;
        }
        uint64_t h[POOL_HEAD_WORDS];
        read_head(b.buf, h);
        if ((h[3] & 0xff) == TASK_STOP) {
            atomic_store_explicit(&claim[0], 0, memory_order_release);
            break;
        }
        uint64_t flags = 0, kind = h[3] & 0xff, flen = h[3] >> 32;
        PyObject *value = NULL, *func = NULL, *payload = NULL;
        if (flen > len - POOL_HEAD) {
            PyErr_SetString(PyExc_ValueError, "malformed pool task");
        }
        else {
            func = task_func(st, fcache, b.buf + POOL_HEAD, flen, (h[3] >> 8) & TASK_CACHED);
            if (func != NULL)
                payload = cmp_codec_load(st, b.buf + POOL_HEAD + flen, len - POOL_HEAD - flen);
        }
        cmp_rxbuf_trim(&b);
        if (payload != NULL)
            value = run_task(kind, func, payload);
        Py_XDECREF(func);
        Py_XDECREF(payload);
        if (value == NULL) {
            if ((value = task_failure(wrap, NULL)) == NULL)
                goto done;
            flags = RES_ERROR;
        }
        PyObject *pieces = frame(st, h[0], h[1], h[2], ((uint64_t)slot << 32) | flags, value);
        if (pieces == NULL) {
            /* Unpicklable: send MaybeEncodingError(e, value) instead. */
            PyObject *err = task_failure(encerr, value);
            if (err != NULL)
                pieces = frame(st, h[0], h[1], h[2], ((uint64_t)slot << 32) | RES_ERROR, err);
            Py_XDECREF(err);
        }
        Py_DECREF(value);
        if (pieces == NULL)
            goto done;
        int rc = cmp_queue_put_pieces(st, results, &pieces, 1);
        Py_DECREF(pieces);
        if (rc < 0)
            goto done;
        atomic_store_explicit(&claim[0], 0, memory_order_release);
        done++;
    }
    ret = PyLong_FromSsize_t(done);
done:
    cmp_rxbuf_free(&b);
    Py_XDECREF(fcache);
    PyBuffer_Release(&view);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* The result dispatch                                                      */

/* Hand one result to its job: cache[job]._set(idx, (success, value)). */
static void
deliver(PyObject *cache, PyObject *set_name, uint64_t job, uint64_t idx, int success,
        PyObject *value)
{
    PyObject *key = PyLong_FromUnsignedLongLong(job), *target = NULL, *r = NULL;
    PyObject *pair = NULL, *pidx = NULL;
    if (key == NULL)
        goto error;
    target = PyDict_GetItemWithError(cache, key);
    if (target == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto done; /* gone: terminated, or a duplicate */
    }
    Py_INCREF(target);
    pair = PyTuple_Pack(2, success ? Py_True : Py_False, value);
    pidx = PyLong_FromUnsignedLongLong(idx);
    if (pair == NULL || pidx == NULL)
        goto error;
    r = PyObject_CallMethodObjArgs(target, set_name, pidx, pair, NULL);
    if (r == NULL)
        goto error;
    goto done;
error:
    PyErr_WriteUnraisable(target ? target : cache);
done:
    Py_XDECREF(r);
    Py_XDECREF(pidx);
    Py_XDECREF(pair);
    Py_XDECREF(target);
    Py_XDECREF(key);
}

PyDoc_STRVAR(pool_dispatch_doc,
             "_pool_dispatch($module, results, cache, nslots, /)\n"
             "--\n"
             "\n"
             "The pool's result loop: take results from the results queue and call\n"
             "cache[job]._set(idx, (success, value)) for each, until a stop record.\n"
             "A DEAD record fails the task a dead worker held, unless that worker's\n"
             "last result was for it.");

static PyObject *
pool_dispatch(PyObject *module, PyObject *args)
{
    cmp_state *st = PyModule_GetState(module);
    PyObject *results, *cache;
    Py_ssize_t nslots;
    if (!PyArg_ParseTuple(args, "OO!n:_pool_dispatch", &results, &PyDict_Type, &cache, &nslots))
        return NULL;
    if (nslots < 0) {
        PyErr_SetString(PyExc_ValueError, "nslots must be >= 0");
        return NULL;
    }
    cmp_ring *ring = cmp_queue_ring(st, results);
    if (ring == NULL)
        return NULL;
    PyObject *ret = NULL, *failed = NULL;
    PyObject *set_name = PyUnicode_InternFromString("_set");
    uint64_t *last = PyMem_Calloc((size_t)nslots + 1, sizeof(uint64_t));
    size_t lens[DISPATCH_BATCH];
    cmp_rxbuf b = {NULL, 0};
    int stop = 0;
    if (set_name == NULL || last == NULL) {
        if (last == NULL)
            PyErr_NoMemory();
        goto done;
    }
    while (!stop) {
        Py_ssize_t n = take(ring, &b, lens, DISPATCH_BATCH, NULL);
        if (n < 0)
            goto done;
        size_t off = 0;
        for (Py_ssize_t i = 0; i < n; off += lens[i], i++) {
            unsigned char *p = b.buf + off;
            if (lens[i] < POOL_HEAD)
                continue;
            uint64_t h[POOL_HEAD_WORDS];
            read_head(p, h);
            uint32_t flags = (uint32_t)h[3], slot = (uint32_t)(h[3] >> 32);
            if (flags & RES_STOP) {
                stop = 1;
                continue;
            }
            if (flags & RES_DEAD) {
                if (slot < (uint64_t)nslots && last[slot] == h[0])
                    continue; /* it finished that task before dying */
                if (failed == NULL && (failed = PySet_New(NULL)) == NULL)
                    goto done;
                PyObject *seq = PyLong_FromUnsignedLongLong(h[0]);
                if (seq == NULL || PySet_Add(failed, seq) < 0) {
                    Py_XDECREF(seq);
                    goto done;
                }
                Py_DECREF(seq);
            }
            else {
                if (failed != NULL && PySet_GET_SIZE(failed) > 0) {
                    PyObject *seq = PyLong_FromUnsignedLongLong(h[0]);
                    int was = seq ? PySet_Discard(failed, seq) : -1;
                    Py_XDECREF(seq);
                    if (was < 0)
                        goto done;
                    if (was)
                        continue; /* a second run of a task already failed */
                }
                if (slot < (uint64_t)nslots)
                    last[slot] = h[0];
            }
            int success = !(flags & (RES_ERROR | RES_DEAD));
            PyObject *value = cmp_codec_load(st, p + POOL_HEAD, lens[i] - POOL_HEAD);
            if (value == NULL) {
                /* An unpicklable result fails its task (the stdlib's result
                 * thread dies here). */
                value = cmp_exc_fetch();
                success = 0;
            }
            deliver(cache, set_name, h[1], h[2], success, value);
            Py_DECREF(value);
        }
        cmp_rxbuf_trim(&b);
    }
    ret = Py_NewRef(Py_None);
done:
    cmp_rxbuf_free(&b);
    PyMem_Free(last);
    Py_XDECREF(failed);
    Py_XDECREF(set_name);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Posting                                                                  */

/* One bytes object from a list of pieces (what cmp_codec_encode returns:
 * bytes, or C-contiguous buffers the sink kept, PickleBuffers without a
 * len()): a lone bytes piece as it is, else pinned once and copied. */
static PyObject *
join_pieces(PyObject *pieces)
{
    if (PyList_GET_SIZE(pieces) == 1 && PyBytes_CheckExact(PyList_GET_ITEM(pieces, 0)))
        return Py_NewRef(PyList_GET_ITEM(pieces, 0));
    cmp_pinned m;
    if (cmp_pin(&m, pieces) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)m.msg.len);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        for (int i = 0; i < m.msg.niov; i++) {
            memcpy(p, m.iov[i].iov_base, m.iov[i].iov_len);
            p += m.iov[i].iov_len;
        }
    }
    cmp_unpin(&m);
    return out;
}

/* Can func be cached by its pickle (it pickles as a name)? */
static int
func_cacheable(PyObject *func)
{
    if (PyFunction_Check(func))
        return 1;
    if (PyCFunction_Check(func)) {
        PyObject *self = PyCFunction_GET_SELF(func);
        return self == NULL || PyModule_Check(self);
    }
    return 0;
}

/* The pieces of a task message, or NULL with the pickling error. */
static PyObject *
task_pieces(cmp_state *st, PyObject *fcache, unsigned long long seq, unsigned long long job,
            unsigned long long idx, unsigned long long kind, PyObject *func, PyObject *payload)
{
    PyObject *fbytes = NULL, *pieces = NULL, *head = NULL;
    int cached = fcache != Py_None && func_cacheable(func);
    if (cached) {
        fbytes = PyDict_GetItemWithError(fcache, func);
        if (fbytes == NULL && PyErr_Occurred())
            return NULL;
        Py_XINCREF(fbytes);
    }
    if (fbytes == NULL) {
        PyObject *fp = cmp_codec_encode(st, func);
        if (fp == NULL)
            return NULL;
        fbytes = join_pieces(fp);
        Py_DECREF(fp);
        if (fbytes == NULL)
            return NULL;
        if (cached) {
            if (PyDict_GET_SIZE(fcache) >= FUNC_CACHE_MAX)
                PyDict_Clear(fcache);
            if (PyDict_SetItem(fcache, func, fbytes) < 0)
                goto done;
        }
    }
    uint64_t w3 = ((uint64_t)PyBytes_GET_SIZE(fbytes) << 32)
                  | ((uint64_t)(cached ? TASK_CACHED : 0) << 8) | (kind & 0xff);
    if ((pieces = cmp_codec_encode(st, payload)) == NULL
        || (head = head_bytes(seq, job, idx, w3)) == NULL || PyList_Insert(pieces, 0, fbytes) < 0
        || PyList_Insert(pieces, 0, head) < 0)
        Py_CLEAR(pieces);
done:
    Py_XDECREF(head);
    Py_DECREF(fbytes);
    return pieces;
}

PyDoc_STRVAR(pool_put_tasks_doc,
             "_pool_put_tasks($module, tasks, fcache, items, /)\n"
             "--\n"
             "\n"
             "Put tasks, each item (seq, job, idx, kind, func, payload), in order; items\n"
             "that cannot be pickled are skipped and returned as a list of (item,\n"
             "exception). fcache: a dict of function pickles (None: no caching).\n"
             "\n"
             "Returns failures.");

static PyObject *
pool_put_tasks(PyObject *module, PyObject *args)
{
    cmp_state *st = PyModule_GetState(module);
    PyObject *tasks, *fcache, *items, *failures = NULL, *all = NULL;
    if (!PyArg_ParseTuple(args, "OOO!:_pool_put_tasks", &tasks, &fcache, &PyList_Type, &items))
        return NULL;
    if (fcache != Py_None && !PyDict_CheckExact(fcache)) {
        PyErr_SetString(PyExc_TypeError, "fcache must be a dict or None");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items), k = 0;
    failures = PyList_New(0);
    all = PyList_New(n);
    if (failures == NULL || all == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *func, *payload;
        unsigned long long w[4];
        if (!PyArg_ParseTuple(item, "KKKKOO:_pool_put_tasks", &w[0], &w[1], &w[2], &w[3], &func,
                              &payload))
            goto error;
        PyObject *pieces = task_pieces(st, fcache, w[0], w[1], w[2], w[3], func, payload);
        if (pieces == NULL) {
            PyObject *exc = cmp_exc_fetch();
            if (!PyErr_GivenExceptionMatches(exc, PyExc_Exception)) {
                cmp_exc_restore(exc);
                goto error;
            }
            PyObject *pair = PyTuple_Pack(2, item, exc);
            Py_DECREF(exc);
            if (pair == NULL || PyList_Append(failures, pair) < 0) {
                Py_XDECREF(pair);
                goto error;
            }
            Py_DECREF(pair);
            continue;
        }
        PyList_SET_ITEM(all, k++, pieces);
    }
    if (cmp_queue_put_pieces(st, tasks, ((PyListObject *)all)->ob_item, (size_t)k) < 0)
        goto error;
    Py_DECREF(all);
    return failures;
error:
    Py_XDECREF(failures);
    Py_XDECREF(all); /* unset slots are NULL: fine for a list being freed */
    return NULL;
}

PyDoc_STRVAR(pool_put_task_doc,
             "_pool_put_task($module, tasks, fcache, seq, job, idx, kind, func, payload, /)\n"
             "--\n"
             "\n"
             "Put one task; raises what pickling it raised.");

static PyObject *
pool_put_task(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    cmp_state *st = PyModule_GetState(module);
    unsigned long long w[4];
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "_pool_put_task() takes 8 arguments");
        return NULL;
    }
    if (args[1] != Py_None && !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fcache must be a dict or None");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        w[i] = PyLong_AsUnsignedLongLong(args[2 + i]);
        if (w[i] == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *pieces = task_pieces(st, args[1], w[0], w[1], w[2], w[3], args[6], args[7]);
    if (pieces == NULL)
        return NULL;
    int rc = cmp_queue_put_pieces(st, args[0], &pieces, 1);
    Py_DECREF(pieces);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_post_doc, "_pool_post($module, queue, seq, job, idx, word3, obj, /)\n"
                            "--\n"
                            "\n"
                            "Put one framed message (header words, then obj pickled) in queue.");

static PyObject *
pool_post(PyObject *module, PyObject *args)
{
    cmp_state *st = PyModule_GetState(module);
    PyObject *queue, *obj;
    unsigned long long w[4];
    if (!PyArg_ParseTuple(args, "OKKKKO:_pool_post", &queue, &w[0], &w[1], &w[2], &w[3], &obj))
        return NULL;
    PyObject *pieces = frame(st, w[0], w[1], w[2], w[3], obj);
    if (pieces == NULL)
        return NULL;
    int rc = cmp_queue_put_pieces(st, queue, &pieces, 1);
    Py_DECREF(pieces);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_slot_doc, "_pool_slot($module, slots, slot, /)\n"
                            "--\n"
                            "\n"
                            "What a worker's slot says it holds (seq 0: nothing).\n"
                            "\n"
                            "Returns (seq, job, idx).");

static PyObject *
pool_slot(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *slots;
    Py_ssize_t slot;
    if (!PyArg_ParseTuple(args, "On:_pool_slot", &slots, &slot))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(slots, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (slot < 0 || (size_t)view.len < (size_t)(slot + 1) * POOL_SLOT_WORDS * sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "bad pool slot");
    }
    else {
        _Atomic uint64_t *w = (_Atomic uint64_t *)view.buf + slot * POOL_SLOT_WORDS;
        uint64_t seq = atomic_load_explicit(&w[0], memory_order_acquire);
        uint64_t job = atomic_load_explicit(&w[1], memory_order_relaxed);
        uint64_t idx = atomic_load_explicit(&w[2], memory_order_relaxed);
        ret = Py_BuildValue("KKK", (unsigned long long)seq, (unsigned long long)job,
                            (unsigned long long)idx);
    }
    PyBuffer_Release(&view);
    return ret;
}

static PyMethodDef pool_functions[] = {
        {"_pool_worker", pool_worker, METH_VARARGS, pool_worker_doc},
        {"_pool_dispatch", pool_dispatch, METH_VARARGS, pool_dispatch_doc},
        {"_pool_put_tasks", pool_put_tasks, METH_VARARGS, pool_put_tasks_doc},
        {"_pool_put_task", (PyCFunction)(void (*)(void))pool_put_task, METH_FASTCALL,
         pool_put_task_doc},
        {"_pool_post", pool_post, METH_VARARGS, pool_post_doc},
        {"_pool_slot", pool_slot, METH_VARARGS, pool_slot_doc},
        {NULL, NULL, 0, NULL},
};

int
cmp_pool_exec(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "POOL_SLOT_BYTES", POOL_SLOT_WORDS * sizeof(uint64_t)) < 0
        || PyModule_AddIntConstant(module, "POOL_TASK_APPLY", TASK_APPLY) < 0
        || PyModule_AddIntConstant(module, "POOL_TASK_MAP", TASK_MAP) < 0
        || PyModule_AddIntConstant(module, "POOL_TASK_STARMAP", TASK_STARMAP) < 0
        || PyModule_AddIntConstant(module, "POOL_TASK_STOP", TASK_STOP) < 0
        || PyModule_AddIntConstant(module, "POOL_RES_DEAD", RES_DEAD) < 0
        || PyModule_AddIntConstant(module, "POOL_RES_STOP", RES_STOP) < 0)
        return -1;
    return PyModule_AddFunctions(module, pool_functions);
}
