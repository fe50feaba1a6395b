/*
 * fuzz_stream_reader.c - libFuzzer target for the StreamReader framing
 * (src/lib/stream.c): evs_readline, evs_readuntil, evs_readuntil_any,
 * evs_readexactly, evs_read, evs_read_to_eof and the reader limit, over
 * arbitrary chunkings of the incoming bytes.
 *
 * Each run is one evs_run() with a socketpair: a writer task sends the
 * chunks the input describes through its own stream pair (yielding to the
 * loop between chunks so the reader sees them arrive separately), then
 * write_eof; the main task applies the read operations the input
 * describes to the other end, then reads what is left to EOF.
 *
 * Input: [limit][nops] [op arg]*nops [chunk]*, where a chunk is a byte h
 * (length 1 + (h & 63), then h >> 6 loop passes) and that many data bytes.
 *
 * Invariants:
 *   - everything the reader returns (lines, views, exact reads, the partial
 *     bytes of EVS_EINCOMPLETE, evs_read data) concatenated is exactly the
 *     bytes sent: every piece is checked against the next unread bytes, and
 *     at EOF all of them were returned, nothing lost, nothing twice;
 *   - a separator read ends with a separator, and every separator wholly
 *     in what it returns ends there too (none ends earlier: the first to
 *     end wins); the earliest of them starts within the limit;
 *     readline returns a line ending with '\n', or the unterminated rest at
 *     EOF;
 *   - EVS_ELIMIT consumes nothing (the data stays readable) and is right:
 *     no separator starts within the limit in the bytes still unread;
 *   - EVS_EINCOMPLETE only at EOF, with every remaining byte as partial
 *     (and, for readuntil, no separator among them); evs_reader_partial
 *     reports them, and 0 after any other call;
 *   - no other error on a healthy socketpair; no leak, no crash.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <evstream.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);      \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct chunk {
    const uint8_t *p;
    size_t len;
    int passes;
} chunk;

typedef struct run {
    const uint8_t *ops;
    size_t nops;
    chunk *chunks;
    size_t nchunks;
    uint8_t *sent; /* the concatenation of the chunks */
    size_t total;
    size_t pos;    /* bytes returned by the reader so far */
    size_t limit;
    int writer_fd;
    int reader_fd;
} run;

static const evs_separator table[] = {
    {"\n", 1}, {"\r\n", 2}, {"\r\n\r\n", 4}, {"\n\n", 2}, {"--", 2},
    {"a", 1},  {"ab", 2},   {"abc", 3},      {"b", 1},    {"\0", 1},
};
#define NTABLE (sizeof table / sizeof table[0])

/* The next @n bytes returned by the reader must be the next unread ones. */
static void took(run *rn, const void *p, size_t n)
{
    CHECK(rn->pos + n <= rn->total);
    CHECK(n == 0 || memcmp(p, rn->sent + rn->pos, n) == 0);
    rn->pos += n;
}

/* Earliest separator fully inside [p, p+n), a tie to the shortest.
 * @return its start or -1; *len receives its length. */
static long earliest(const uint8_t *p, size_t n, const evs_separator *seps, size_t nseps,
                     size_t *len)
{
    long best = -1;

    for (size_t i = 0; i < nseps; i++) {
        const uint8_t *m = memmem(p, n, seps[i].data, seps[i].len);
        long at = m ? (long)(m - p) : -1;
        if (at >= 0 && (best < 0 || at < best || (at == best && seps[i].len < *len))) {
            best = at;
            *len = seps[i].len;
        }
    }
    return best;
}

/* After a separator read returned @n bytes at @view. */
static void check_until(run *rn, evs_reader *r, ssize_t n, const void *view,
                        const evs_separator *seps, size_t nseps, size_t limit, bool readline)
{
    const uint8_t *rest = rn->sent + rn->pos;
    size_t left = rn->total - rn->pos, seplen = 0;
    const void *pd = NULL;

    if (n == EVS_ELIMIT) {
        /* Nothing consumed, and no separator starts within the limit...
         * unless it was not all there yet while one starting past the
         * limit already was (seps "abc" and "b" on "ab" + "c"): such an
         * occurrence must end after the first one past the limit. */
        size_t end_past = (size_t)-1;
        for (size_t i = 0; limit + 1 < left && i < nseps; i++) {
            const uint8_t *m = memmem(rest + limit + 1, left - limit - 1, seps[i].data, seps[i].len);
            if (m && (size_t)(m - rest) + seps[i].len < end_past) {
                end_past = (size_t)(m - rest) + seps[i].len;
            }
        }
        for (size_t i = 0; i < nseps; i++) {
            const uint8_t *m = memmem(rest, left, seps[i].data, seps[i].len);
            if (m && (size_t)(m - rest) <= limit) {
                CHECK(nseps > 1 && (size_t)(m - rest) + seps[i].len > end_past &&
                      end_past != (size_t)-1);
            }
        }
        CHECK(left > limit);
        CHECK(evs_reader_partial(r, &pd) == 0);
        return;
    }
    if (n == EVS_EINCOMPLETE) {
        size_t np = evs_reader_partial(r, &pd);
        CHECK(!readline);
        CHECK(np == left); /* only at EOF: everything left */
        CHECK(earliest(rest, left, seps, nseps, &seplen) < 0);
        took(rn, pd, np);
        CHECK(evs_at_eof(r));
        return;
    }
    CHECK(n >= 0);
    CHECK(evs_reader_partial(r, &pd) == 0);
    if (n == 0) {
        CHECK(readline && left == 0 && evs_at_eof(r));
        return;
    }
    CHECK(view != NULL);
    took(rn, view, (size_t)n);
    long at = earliest(view, (size_t)n, seps, nseps, &seplen);
    if (at < 0) {
        /* readline's unterminated rest at EOF */
        CHECK(readline && rn->pos == rn->total && (size_t)n <= limit);
    } else {
        CHECK((size_t)at + seplen == (size_t)n);
        CHECK((size_t)at <= limit);
    }
}

static int writer_task(void *arg)
{
    run *rn = arg;
    evs_reader *r;
    evs_writer *w;

    CHECK(evs_stream_open_fd(rn->writer_fd, 0, &r, &w) == 0);
    for (size_t i = 0; i < rn->nchunks; i++) {
        CHECK(evs_write(w, rn->chunks[i].p, rn->chunks[i].len) == 0);
        for (int k = 0; k < rn->chunks[i].passes; k++) {
            if (evs_yield() < 0) {
                break;
            }
        }
    }
    CHECK(evs_write_eof(w) == 0);
    /* Stay until the reader saw EOF, so nothing is cut short. */
    char b;
    evs_read(r, &b, 1);
    evs_writer_free(w);
    return 0;
}

static int reader_task(void *arg)
{
    run *rn = arg;
    evs_reader *r;
    evs_writer *w;
    evs_task *writer;
    uint8_t *buf = malloc(4096);

    CHECK(buf != NULL);
    CHECK(evs_stream_open_fd(rn->reader_fd, rn->limit, &r, &w) == 0);
    CHECK(evs_reader_limit(r) == rn->limit);
    CHECK(evs_task_spawn(writer_task, rn, &writer) == 0);

    for (size_t i = 0; i < rn->nops; i++) {
        uint8_t op = rn->ops[2 * i], a = rn->ops[2 * i + 1];
        size_t limit = evs_reader_limit(r);
        size_t before = evs_reader_buffered(r);
        const void *view = NULL, *pd = NULL;
        ssize_t n;

        switch (op & 7) {
        case 0: { /* readline */
            evs_separator nl = {"\n", 1};
            n = evs_readline(r, &view);
            check_until(rn, r, n, view, &nl, 1, limit, true);
            break;
        }
        case 1: { /* readuntil_any, 1 to 4 separators, own limit or the reader's */
            size_t first = (size_t)(a >> 2) % NTABLE, nseps = 1 + (a & 3);
            evs_separator seps[4];
            size_t own = (op & 8) ? 1 + (size_t)(op >> 4) : 0;
            for (size_t k = 0; k < nseps; k++) {
                seps[k] = table[(first + k) % NTABLE];
            }
            n = evs_readuntil_any(r, seps, nseps, own, &view);
            check_until(rn, r, n, view, seps, nseps, own ? own : limit, false);
            break;
        }
        case 2: /* readexactly */
            n = evs_readexactly(r, buf, a);
            if (n == EVS_EINCOMPLETE) {
                size_t np = evs_reader_partial(r, &pd);
                CHECK(np < a && np == rn->total - rn->pos);
                CHECK(np == 0 || pd == buf);
                took(rn, buf, np);
            } else {
                CHECK(n == a);
                took(rn, buf, a);
            }
            break;
        case 3: /* read */
            n = evs_read(r, buf, a);
            CHECK(n >= 0 && (size_t)n <= a);
            if (n == 0 && a > 0) {
                CHECK(rn->pos == rn->total && evs_at_eof(r));
            }
            took(rn, buf, (size_t)n);
            break;
        case 4: /* read to EOF, at most a * 16 bytes */
            n = evs_read_to_eof(r, buf, (size_t)a * 16);
            if (n == EVS_ELIMIT) {
                CHECK(rn->total - rn->pos > (size_t)a * 16);
                CHECK(evs_reader_buffered(r) >= before);
            } else {
                CHECK(n >= 0 && (size_t)n == rn->total - rn->pos);
                took(rn, buf, (size_t)n);
                CHECK(evs_at_eof(r));
            }
            break;
        case 5: /* change the limit */
            CHECK(evs_reader_set_limit(r, 0) == -EINVAL);
            CHECK(evs_reader_set_limit(r, 1 + (size_t)a) == 0);
            CHECK(evs_reader_limit(r) == 1 + (size_t)a);
            break;
        case 6: { /* readuntil, one separator */
            const evs_separator *s = &table[a % NTABLE];
            n = evs_readuntil(r, s->data, s->len, &view);
            check_until(rn, r, n, view, s, 1, limit, false);
            break;
        }
        default: /* look without reading */
            CHECK(evs_reader_buffered(r) == before);
            CHECK(!evs_at_eof(r) || rn->pos == rn->total);
            CHECK(evs_readuntil_any(r, NULL, 0, 0, &view) == -EINVAL);
            break;
        }
        /* Whatever happened, the unread bytes are all still to come. */
        CHECK(rn->pos + evs_reader_buffered(r) <= rn->total);
    }
    /* The rest, to EOF. */
    for (;;) {
        ssize_t n = evs_read(r, buf, 4096);
        CHECK(n >= 0);
        if (n == 0) {
            break;
        }
        took(rn, buf, (size_t)n);
    }
    CHECK(rn->pos == rn->total);
    CHECK(evs_at_eof(r) && evs_reader_buffered(r) == 0);
    evs_writer_free(w); /* the writer's evs_read sees EOF and it ends */
    CHECK(evs_task_join(writer, NULL) == 0);
    free(buf);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run rn;
    int sv[2], result = -1;
    size_t i;

    if (size < 2 || size > 4096) {
        return -1;
    }
    memset(&rn, 0, sizeof rn);
    rn.limit = (data[0] & 0x80) ? 64 + (size_t)(data[0] & 0x7f) * 32 : 1 + (size_t)(data[0] & 63);
    rn.nops = data[1] % 48;
    if (2 + 2 * rn.nops > size) {
        rn.nops = (size - 2) / 2;
    }
    rn.ops = data + 2;
    rn.chunks = calloc(size, sizeof *rn.chunks);
    rn.sent = malloc(size);
    CHECK(rn.chunks && rn.sent);
    for (i = 2 + 2 * rn.nops; i < size;) {
        uint8_t h = data[i++];
        size_t len = 1 + (size_t)(h & 63);
        if (len > size - i) {
            len = size - i;
        }
        if (len == 0) {
            break;
        }
        rn.chunks[rn.nchunks].p = data + i;
        rn.chunks[rn.nchunks].len = len;
        rn.chunks[rn.nchunks].passes = h >> 6;
        rn.nchunks++;
        memcpy(rn.sent + rn.total, data + i, len);
        rn.total += len;
        i += len;
    }
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    rn.reader_fd = sv[0];
    rn.writer_fd = sv[1];
    CHECK(evs_run(reader_task, &rn, &result) == 0);
    CHECK(result == 0);
    free(rn.chunks);
    free(rn.sent);
    return 0;
}
