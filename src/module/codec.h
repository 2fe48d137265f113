/* The message layer under Queue, Connection and Pool: how an object becomes
 * the bytes of a message and back, and how a receive waits.
 *
 *  - One pickler per interpreter, cached and reused for every message (the
 *    stdlib builds one per message): a ForkingPickler honouring
 *    reduction.register, writing into a sink that keeps the pieces, so a
 *    large bytes object is copied once, straight into the ring or socket.
 *  - Scalars (None, bool, int, float, bytes, str of exact types) take a fast
 *    path with the pickler's own opcodes, 5 to 10 times faster.
 *  - Pieces are pinned (buffer protocol) while the core copies them.
 *  - A ring take tries with the GIL, never sleeping, then waits without it.
 *
 * Its Python collaborators (pickle.Pickler and loads, the reducer registry,
 * queue.Empty/Full, BufferTooShort) are resolved once, at module init. */
#ifndef CMP_CODEC_H
#define CMP_CODEC_H

#include "module.h"
#include "ring.h"

#include <sys/uio.h>

int cmp_codec_exec(PyObject *module);
int cmp_codec_traverse(cmp_state *st, visitproc visit, void *arg);
void cmp_codec_clear(cmp_state *st);

/* Pickle obj: a new list of the pieces written (bytes-like objects). */
PyObject *cmp_codec_dump(cmp_state *st, PyObject *obj);

/* The fast path or the pickler: a new list of pieces. */
PyObject *cmp_codec_encode(cmp_state *st, PyObject *obj);

/* Unpickle one message from memory that will be reused: nothing keeps a
 * view of it. A new reference, or NULL with an exception. */
PyObject *cmp_codec_load(cmp_state *st, unsigned char *buf, size_t len);

/* Unpickle a bytes-like object (kept as it is). */
PyObject *cmp_codec_loads(cmp_state *st, PyObject *data);

/* A scalar encoded without the pickler. */
typedef struct {
    unsigned char head[16];
    struct iovec iov[3];
    cmp_ring_msg msg;
} cmp_fast_msg;

/* 1: encoded into m (its pieces may point into obj); 0: not a fast type
 * (no exception set); -1: error. */
int cmp_fast_encode(PyObject *obj, cmp_fast_msg *m);

/* Pieces (a new list of bytes-like objects) holding the message m, for
 * keeping it. `obj`: the object m was encoded from; an exact bytes object is
 * referenced, not copied. */
PyObject *cmp_msg_to_pieces(const cmp_ring_msg *m, PyObject *obj);

/* A list of pieces pinned as one message (msg) while the core copies it. */
typedef struct {
    Py_buffer *views;
    struct iovec *iov;
    Py_ssize_t n;
    cmp_ring_msg msg;
    Py_buffer view1;
    struct iovec iov1;
} cmp_pinned;

int cmp_pin(cmp_pinned *m, PyObject *pieces); /* 0, or -1 with an exception */
void cmp_unpin(cmp_pinned *m);

/* A receive buffer that grows on demand and shrinks after a large message. */
typedef struct {
    unsigned char *buf;
    size_t cap;
} cmp_rxbuf;

#define CMP_RXBUF_MIN (64 * 1024)
#define CMP_RXBUF_KEEP (4 * 1024 * 1024) /* larger buffers are freed after use */

int cmp_rxbuf_grow(cmp_rxbuf *b, size_t need); /* 0, or -1 (MemoryError) */
void cmp_rxbuf_trim(cmp_rxbuf *b);
void cmp_rxbuf_free(cmp_rxbuf *b);

/* The one "try with the GIL, then wait without it" loop of a ring take:
 * cmp_ring_take(CMP_RING_NOW) with the GIL; on CMP_EEMPTY, or a streamed
 * message whose next chunk is not there yet (CMP_ETIMEDOUT), the same take
 * again without the GIL until `deadline` (PEP 475: handlers run, then it
 * resumes; CMP_PYERR if one raised). When it returns anything but CMP_OK or
 * CMP_NEED with op->locked, a message is partly received in op: resume it
 * with the same op, or cmp_ring_take_abandon. */
int cmp_codec_take(cmp_ring *r, cmp_ring_rop *op, int64_t deadline);

#endif /* CMP_CODEC_H */
