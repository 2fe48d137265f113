/* libFuzzer target: the frame parser of src/core/wire.c, fed the bytes a
 * broken or hostile peer could send.
 *
 * Input: one mode byte, then the stream. The stream is written into a pipe
 * or a Unix socketpair (mode bit 0) and the write end closed; frames are then
 * received with cmp_wire_recv_header (bit 1: after the spinning variant, as
 * Connection.recv does on sockets) and cmp_wire_recv_body, resuming on
 * CMP_EINTR, until end of file or a malformed header. Each result is checked
 * against a plain decoder of the stdlib's framing (4-byte big-endian signed
 * length; -1 then an 8-byte length), so a parser that is wrong without
 * crashing is caught too. The encoder is checked the same way. */
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A frame longer than this is not read: the binding would allocate it (or
 * raise MemoryError); the parser's part ends with the header. */
#define BODY_MAX (1u << 20)

#define CHECK(cond)                                                                             \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "fuzz_wire: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

static uint64_t
be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* The reference: the frame at data[*off..size). CMP_OK with *len, the
 * payload's offset in *body and *off past the frame's header; CMP_EEOF
 * (stream ends inside or before the header) or CMP_EBADMSG. */
static int
ref_header(const uint8_t *data, size_t size, size_t *off, uint64_t *len)
{
    if (size - *off < 4)
        return CMP_EEOF;
    int32_t v = (int32_t)(uint32_t)be(data + *off, 4);
    if (v == -1) {
        if (size - *off < 12)
            return CMP_EEOF;
        *len = be(data + *off + 4, 8);
        *off += 12;
        return CMP_OK;
    }
    if (v < 0)
        return CMP_EBADMSG;
    *len = (uint64_t)v;
    *off += 4;
    return CMP_OK;
}

static void
check_encoder(const uint8_t *data, size_t size)
{
    if (size < 8)
        return;
    uint64_t len = be(data, 8);
    unsigned char hdr[CMP_WIRE_HEADER_MAX];
    size_t n = cmp_wire_header(len, hdr);
    size_t off = 0;
    uint64_t back = 0;
    CHECK(n == (len < CMP_WIRE_SHORT_MAX ? 4u : 12u));
    CHECK(ref_header(hdr, n, &off, &back) == CMP_OK && off == n && back == len);
}

static int
recv_header(int fd, int is_socket, int spin, cmp_wire_rx *rx)
{
    int st = CMP_EEMPTY;
    if (spin) {
        cmp_spin_budget budget = 0;
        int64_t start;
        st = cmp_wire_recv_header_spin(fd, is_socket, rx, &budget, &start);
    }
    if (st == CMP_EEMPTY || st == CMP_EINTR)
        st = cmp_wire_recv_header(fd, is_socket, rx);
    while (st == CMP_EINTR)
        st = cmp_wire_recv_header(fd, is_socket, rx);
    return st;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    check_encoder(data + 1, size - 1);
    int is_socket = data[0] & 1, spin = (data[0] >> 1) & 1;
    const uint8_t *stream = data + 1;
    size_t n = size - 1;

    int fds[2];
    if (is_socket ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) : pipe2(fds, O_CLOEXEC))
        abort();
    /* libFuzzer's -max_len keeps inputs within a pipe's or socket's buffer. */
    for (size_t w = 0; w < n;) {
        ssize_t k = write(fds[1], stream + w, n - w);
        CHECK(k > 0);
        w += (size_t)k;
    }
    close(fds[1]);

    size_t off = 0;
    cmp_wire_rx rx;
    for (;;) {
        cmp_wire_rx_reset(&rx);
        uint64_t want_len = 0;
        size_t before = off;
        int want = ref_header(stream, n, &off, &want_len);
        int st = recv_header(fds[0], is_socket, spin, &rx);
        if (want == CMP_EEOF) {
            CHECK(st == CMP_EEOF);
            CHECK(cmp_wire_rx_started(&rx) == (before < n));
            break;
        }
        CHECK(st == want);
        if (st != CMP_OK)
            break;
        CHECK(rx.len == want_len && rx.nfds == 0);
        if (rx.len > BODY_MAX)
            break;
        char *body = malloc(rx.len ? rx.len : 1);
        CHECK(body != NULL);
        rx.body = body;
        do
            st = cmp_wire_recv_body(fds[0], &rx);
        while (st == CMP_EINTR);
        if (n - off < rx.len) {
            CHECK(st == CMP_EEOF);
            free(body);
            break;
        }
        CHECK(st == CMP_OK && memcmp(body, stream + off, rx.len) == 0);
        off += rx.len;
        free(body);
    }
    close(fds[0]);
    return 0;
}
