/* Framed messages over file descriptors (pipe, socketpair, socket).
 *
 * The frame is the stdlib's (multiprocessing.connection on POSIX), so a cmp
 * end and a stdlib end of one descriptor talk:
 *
 *   length < 2**31 - 1 :  4-byte big-endian signed length, then the payload
 *   otherwise          :  the marker -1 (4 bytes), an 8-byte big-endian
 *                         length, then the payload
 *
 * Sending is one writev()/sendmsg() per frame (header and payload pieces
 * together, so a small frame on a pipe is one atomic write). Receiving reads
 * exactly one frame and never past it: several processes may share one end
 * behind a lock, and bytes read ahead would be stolen from the others.
 *
 * Both directions keep their progress in a small struct, so a call that a
 * signal interrupts (CMP_EINTR) resumes where it stopped: no half-read or
 * half-written frame is lost. A short read or write also returns CMP_EINTR
 * ("progress made, call again"): a signal that arrives once some bytes have
 * moved does not make the system call fail, and the caller must get the
 * chance to run its handlers before blocking again. On Unix sockets, descriptors travel with a frame
 * (SCM_RIGHTS on its first byte).
 */
#ifndef CMP_WIRE_H
#define CMP_WIRE_H

#include "cmp_core.h"
#include "spin.h"

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Frames up to this length use the short (4-byte) header. */
#define CMP_WIRE_SHORT_MAX 0x7fffffffULL
#define CMP_WIRE_HEADER_MAX 12
/* Descriptors one frame may carry (the kernel's SCM_MAX_FD). */
#define CMP_WIRE_MAX_FDS 253

/* Encode the header for a payload of `len` bytes into out; returns its size
 * (4 or 12). */
size_t cmp_wire_header(uint64_t len, unsigned char out[CMP_WIRE_HEADER_MAX]);

/* What kind of descriptor fd is: CMP_WIRE_PIPE (anything not a socket),
 * CMP_WIRE_SOCKET, or CMP_WIRE_UNIX (a Unix socket: descriptors can travel). */
enum { CMP_WIRE_PIPE = 0, CMP_WIRE_SOCKET = 1, CMP_WIRE_UNIX = 2 };
int cmp_wire_fd_kind(int fd);

/* A close-on-exec duplicate of fd, or -1 with errno. */
int cmp_wire_dup(int fd);

/* close() that treats EINTR as done (Linux always releases the descriptor):
 * CMP_OK or CMP_ERRNO. */
int cmp_wire_close(int fd);

/* ---- sending ------------------------------------------------------------ */

typedef struct {
    struct iovec *iov; /* pieces still to write; advanced as they go out */
    int iovcnt;
    const int *fds; /* descriptors to pass with the first byte, or NULL */
    int nfds;
    int is_socket; /* sendmsg(MSG_NOSIGNAL) instead of writev() */
    uint64_t sent; /* bytes written so far */
} cmp_wire_tx;

/* Write everything in tx->iov. CMP_OK; CMP_EINTR (progress kept in tx: call
 * again to go on); CMP_ERRNO (EPIPE: the reader is gone). Descriptors are
 * passed with the first write and cleared from tx once sent. */
int cmp_wire_send(int fd, cmp_wire_tx *tx);

/* ---- descriptors (SCM_RIGHTS), also for chan.c ------------------------- */

/* Room for the largest SCM_RIGHTS message, aligned for struct cmsghdr. */
typedef union {
    char buf[CMSG_SPACE(sizeof(int) * CMP_WIRE_MAX_FDS)];
    struct cmsghdr align;
} cmp_cmsg_space;

/* Attach fds[0..nfds) (1..CMP_WIRE_MAX_FDS) to m, in space. */
void cmp_wire_put_fds(struct msghdr *m, cmp_cmsg_space *space, const int *fds, int nfds);

/* Append the descriptors m carries to fds[*nfds..room); close any beyond. */
void cmp_wire_take_fds(struct msghdr *m, int *fds, int *nfds, int room);

/* ---- receiving ---------------------------------------------------------- */

typedef struct {
    unsigned char hdr[CMP_WIRE_HEADER_MAX];
    uint32_t hdr_have; /* header bytes read */
    uint32_t hdr_need; /* 4, or 12 after the -1 marker */
    int header_done;
    uint64_t len;              /* payload length, once header_done */
    char *body;                /* where the payload goes (the caller's buffer) */
    uint64_t body_have;        /* payload bytes read */
    int fds[CMP_WIRE_MAX_FDS]; /* descriptors that came with the frame */
    int nfds;
} cmp_wire_rx;

/* Forget any progress (received descriptors are not closed). */
void cmp_wire_rx_reset(cmp_wire_rx *rx);

/* True once some byte of the current frame has been read. */
int cmp_wire_rx_started(const cmp_wire_rx *rx);

/* After CMP_EEOF: whether the end of file came inside one of the stdlib's
 * reads of a frame (the length, the long length after the -1 marker, the
 * payload) -- "got end of file during message" there -- rather than before
 * one of them (EOFError). */
int cmp_wire_rx_eof_inside(const cmp_wire_rx *rx);

/* Read the rest of the header. CMP_OK with rx->len set; CMP_EEOF (end of
 * file: before the first byte if !cmp_wire_rx_started(rx), else inside the
 * header); CMP_EBADMSG (a negative length other than the marker); CMP_EINTR;
 * CMP_ERRNO. On a socket (is_socket) descriptors passed with the frame are
 * collected into rx->fds (close-on-exec). */
int cmp_wire_recv_header(int fd, int is_socket, cmp_wire_rx *rx);

/* Before blocking for a frame that has not begun, busy-wait for it: a peer
 * about to answer (a round trip) is caught without putting this process to
 * sleep and waking it, which costs more than the system calls do. On a
 * socket, first try a non-blocking read of the header (data already there
 * costs nothing extra), then poll with a zero timeout, within *budget
 * (spin.h; up to CMP_WIRE_SPIN_MAX_NS). *start is for cmp_wire_spin_settle(),
 * which the caller calls once the header has come after all.
 * Returns what cmp_wire_recv_header() would, or CMP_EEMPTY when the caller
 * should go on with a blocking cmp_wire_recv_header(). Pipes do not spin. */
#define CMP_WIRE_SPIN_MAX_NS 50000
#define CMP_WIRE_SPIN_MIN_NS 2000
int cmp_wire_recv_header_spin(int fd, int is_socket, cmp_wire_rx *rx, cmp_spin_budget *budget,
                              int64_t *start);
void cmp_wire_spin_settle(cmp_spin_budget *budget, int64_t start);

/* Read the rest of the payload into rx->body. CMP_OK, CMP_EEOF (the peer
 * closed inside the frame), CMP_EINTR, CMP_ERRNO. */
int cmp_wire_recv_body(int fd, cmp_wire_rx *rx);

/* ---- waiting ------------------------------------------------------------ */

/* poll() the set until one is ready or `deadline` passes: the number ready
 * (> 0), CMP_ETIMEDOUT, CMP_EINTR, CMP_ERRNO. Events are set by the caller. */
int cmp_wire_poll(struct pollfd *fds, size_t nfds, int64_t deadline);

#endif /* CMP_WIRE_H */
