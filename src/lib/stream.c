/*
 * stream.c - StreamReader and StreamWriter on a transport, the way asyncio
 * builds StreamReaderProtocol: the pair is the transport's protocol.
 *
 * The reader reads straight into its evbuffer (the buffered-protocol path:
 * get_buffer reserves space in it), so bytes are copied once, from the
 * kernel. Views returned to the caller stay in the evbuffer until the next
 * call on the reader, which drains them first.
 *
 * evs_read() parked on an empty buffer lends its own buffer instead: the
 * next recv() lands there, with no evbuffer chain and no second copy. That
 * is the steady state of a request/response handler. evs_read_view() parked
 * on an empty buffer does the same with one of the worker's read blocks,
 * taken when the bytes arrive (an idle connection holds none) and given
 * back at the next call on the reader: no allocation per read either.
 */
#include "stream.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "transport.h"

struct evs_reader {
    evs_transport *t;
    struct evbuffer *buf; /* made when bytes first need buffering */
    size_t limit;
    bool eof;
    int err;
    evs__waitq waiter; /* at most one task */
    size_t consume;    /* bytes of the last view, drained by the next call */
    size_t partial;    /* after EVS_EINCOMPLETE */
    const void *partial_data;
    bool paused_transport;
    struct evbuffer_iovec reserved;
    size_t chunk;      /* how much get_buffer reserves; grows while filled */
    void *lent;        /* evs_read's buffer while it waits on an empty one */
    size_t lent_len;
    size_t lent_got;   /* bytes the transport put there */
    bool reading_lent; /* the last get_buffer returned lent */
    size_t view_want;  /* evs_read_view waits on an empty buffer for this */
    void *block;       /* the worker block the last view points into */
    bool block_large;  /* its size: large once reads have filled a small one */
};

/* The first reservation is small: a reply-sized read should not make (and
 * then free) a 64 KiB chain. Reads that fill it double it, up to the cap. */
#define READ_CHUNK_MIN 4096u
#define READ_CHUNK_MAX 65536u

struct evs_writer {
    evs_reader *reader;
    bool closed;   /* close() called */
    bool lost;     /* connection_lost seen */
    int lost_err;  /* what drain() reports after the loss */
    bool paused;   /* the transport asked us to pause writing */
    evs__waitq drainers;
    evs__waitq closers;
};

/* Both halves in one allocation; freed when the owner released it and the
 * connection is gone. */
typedef struct evs_stream {
    evs_reader reader;
    evs_writer writer;
    bool released;
    void *tag;
    bool made;                  /* connection_made (after the TLS handshake) */
    evs__stream_made_fn on_made;
    void *made_arg;
    evs__waitq made_waiters;    /* open_connection waiting for the handshake */
    evs__waitq tls_waiters;     /* start_tls waiting for its handshake */
    int tls_result;
} evs_stream;

static evs_stream *stream_of_reader(evs_reader *r)
{
    return EVS_CONTAINER_OF(r, evs_stream, reader);
}

static evs_stream *stream_of_writer(evs_writer *w)
{
    return EVS_CONTAINER_OF(w, evs_stream, writer);
}

static void stream_free(evs_stream *s)
{
    if (s->reader.buf)
        evbuffer_free(s->reader.buf);
    free(s->reader.block); /* not to the worker: it may have ended */
    evs__transport_unref(s->reader.t);
    free(s);
}

/* --- the protocol under the pair ------------------------------------- */

static size_t buffered(const evs_reader *r)
{
    return r->buf ? evbuffer_get_length(r->buf) - r->consume : 0;
}

/* Move @len buffered bytes to @dst (nothing to do for none). */
static void take(evs_reader *r, void *dst, size_t len)
{
    if (len > 0)
        evbuffer_remove(r->buf, dst, len);
}

/* The bytes of the last view are gone: drain them, or give the block back. */
static void drop_view(evs_reader *r)
{
    if (r->consume) {
        evbuffer_drain(r->buf, r->consume);
        r->consume = 0;
    }
    if (r->block) {
        evs__worker_block_put(r->t->worker, r->block, r->block_large);
        r->block = NULL;
    }
}

static void maybe_pause_transport(evs_reader *r)
{
    /* Stop reading from the socket above twice the limit unless a call is
     * waiting for more (readexactly(n > 2 * limit) must still work). */
    if (!r->paused_transport && !r->waiter.head &&
        buffered(r) > 2 * r->limit) {
        r->paused_transport = true;
        evs_transport_pause_reading(r->t);
    }
}

static void maybe_resume_transport(evs_reader *r)
{
    if (r->paused_transport &&
        (r->waiter.head || buffered(r) <= r->limit)) {
        r->paused_transport = false;
        evs_transport_resume_reading(r->t);
    }
}

static void *sp_get_buffer(evs_transport *t, size_t sizehint, size_t *len, void *ctx)
{
    evs_reader *r = ctx;
    struct evbuffer_iovec vec[2];

    r->reading_lent = (r->lent || r->view_want) && !r->lent_got;
    if (r->reading_lent && !r->lent) {
        /* The reservation size says how much reads bring: small until a
         * read fills what it is given. */
        r->block_large = r->chunk > READ_CHUNK_MIN;
        r->block = evs__worker_block_get(t->worker, r->block_large);
        r->lent = r->block;
        r->lent_len = r->block_large ? EVS__BLOCK_LARGE : EVS__BLOCK_SMALL;
        if (r->lent_len > r->view_want)
            r->lent_len = r->view_want;
        r->reading_lent = r->lent != NULL; /* out of memory: the evbuffer */
    }
    if (r->reading_lent) {
        *len = r->lent_len;
        return r->lent;
    }
    if (sizehint > r->chunk)
        sizehint = r->chunk;
    if (!r->buf && !(r->buf = evbuffer_new()))
        return NULL;
    /* While a view is out, reserve two extents: libevent then only adds
     * chains, whereas a one-extent reservation may realign or reallocate
     * the last chain and move the bytes the view points to. We read into
     * the first extent only. */
    if (evbuffer_reserve_space(r->buf, (ev_ssize_t)sizehint, vec, r->consume ? 2 : 1) < 1)
        return NULL;
    r->reserved = vec[0];
    *len = r->reserved.iov_len;
    return r->reserved.iov_base;
}

static void sp_buffer_updated(evs_transport *t, size_t nbytes, void *ctx)
{
    evs_reader *r = ctx;

    EVS_UNUSED(t);
    if (r->reading_lent) {
        r->reading_lent = false;
        r->lent_got = nbytes;
        if (r->block && nbytes == r->lent_len && r->chunk < READ_CHUNK_MAX)
            r->chunk *= 2; /* a full block: the next one large */
    } else {
        if (nbytes == r->reserved.iov_len && r->chunk < READ_CHUNK_MAX)
            r->chunk *= 2;
        r->reserved.iov_len = nbytes;
        evbuffer_commit_space(r->buf, &r->reserved, 1);
    }
    if (nbytes == 0)
        return;
    /* Before the wake: a waiting task means "keep reading". */
    maybe_pause_transport(r);
    evs__task_wake_all(&r->waiter, 0);
}

static bool sp_eof_received(evs_transport *t, void *ctx)
{
    evs_reader *r = ctx;

    EVS_UNUSED(t);
    r->eof = true;
    evs__task_wake_all(&r->waiter, 0);
    /* Keep the half-open connection: the handler may still write. */
    return true;
}

static void sp_connection_lost(evs_transport *t, int err, void *ctx)
{
    evs_reader *r = ctx;
    evs_stream *s = stream_of_reader(r);
    evs_writer *w = &s->writer;

    if (err)
        r->err = err;
    else
        r->eof = true;
    w->lost = true;
    /* Waiters whose bytes all went out get 0; if bytes were dropped they
     * get the error (or -EPIPE for an abort). */
    w->lost_err = err ? err : (t->dropped ? -EPIPE : 0);
    evs__task_wake_all(&s->made_waiters, 0);
    evs__task_wake_all(&s->tls_waiters, 0);
    evs__task_wake_all(&r->waiter, 0);
    evs__task_wake_all(&w->drainers, w->lost_err);
    evs__task_wake_all(&w->closers, 0);
    /* A server's pair whose handler never started (a failed TLS handshake
     * or PROXY header) belongs to nobody else: free it here. */
    if (s->released || (s->on_made && !s->made))
        stream_free(s);
}

static void sp_pause_writing(evs_transport *t, void *ctx)
{
    evs_reader *r = ctx;

    EVS_UNUSED(t);
    stream_of_reader(r)->writer.paused = true;
}

static void sp_resume_writing(evs_transport *t, void *ctx)
{
    evs_reader *r = ctx;
    evs_writer *w = &stream_of_reader(r)->writer;

    EVS_UNUSED(t);
    w->paused = false;
    evs__task_wake_all(&w->drainers, 0);
}

static void sp_connection_made(evs_transport *t, void *ctx)
{
    evs_stream *s = stream_of_reader(ctx);

    EVS_UNUSED(t);
    s->made = true;
    evs__task_wake_all(&s->made_waiters, 0);
    if (s->on_made)
        s->on_made(&s->writer, s->made_arg);
}

static const evs_protocol stream_protocol = {
    .connection_made = sp_connection_made,
    .get_buffer = sp_get_buffer,
    .buffer_updated = sp_buffer_updated,
    .eof_received = sp_eof_received,
    .connection_lost = sp_connection_lost,
    .pause_writing = sp_pause_writing,
    .resume_writing = sp_resume_writing,
};

int evs__stream_create(evs_worker *wk, int fd, int family, size_t limit, evs_reader **r,
                       evs_writer **wr, evs_transport **tp)
{
    evs_stream *s = calloc(1, sizeof *s);
    evs_transport *t;
    int err;

    if (!s) {
        close(fd);
        return -ENOMEM;
    }
    s->reader.limit = limit ? limit : EVS_STREAM_LIMIT_DEFAULT;
    s->reader.chunk = READ_CHUNK_MIN;
    s->writer.reader = &s->reader;
    err = evs__transport_create(wk, fd, family, &stream_protocol, &s->reader, &t);
    if (err) {
        free(s);
        return err;
    }
    evs__transport_ref(t); /* the pair's reference */
    s->reader.t = t;
    *r = &s->reader;
    *wr = &s->writer;
    if (tp)
        *tp = t;
    return 0;
}

void evs__stream_on_made(evs_writer *w, evs__stream_made_fn fn, void *arg)
{
    evs_stream *s = stream_of_writer(w);

    s->on_made = fn;
    s->made_arg = arg;
}

int evs__stream_wait_made(evs_writer *w)
{
    evs_stream *s = stream_of_writer(w);

    while (!s->made && !w->lost) {
        int rc = evs__task_park(&s->made_waiters);
        if (rc < 0)
            return rc;
    }
    if (s->made)
        return 0;
    return w->lost_err ? w->lost_err : -ECONNRESET;
}

int evs__stream_open(evs_worker *wk, int fd, size_t limit, evs_reader **r, evs_writer **wr,
                     evs_transport **tp)
{
    evs_transport *t;
    int err = evs__stream_create(wk, fd, EVS__FD_PROBE, limit, r, wr, &t);

    if (err)
        return err;
    evs__transport_start(t);
    if (tp)
        *tp = t;
    return 0;
}

/* --- start_tls ------------------------------------------------------------ */

static void tls_done(evs_transport *t, int err, void *arg)
{
    evs_stream *s = arg;

    EVS_UNUSED(t);
    s->tls_result = err;
    evs__task_wake_all(&s->tls_waiters, 0);
}

int evs_start_tls(evs_writer *w, evs_tls_context *ctx, bool server, const evs_tls_options *opts)
{
    evs_stream *s = stream_of_writer(w);
    evs_reader *r = w->reader;
    evs_transport *t = r->t;
    size_t len;
    void *prefix = NULL;
    int rc;

    if (!evs_task_current() || !ctx)
        return -EINVAL;
    if (r->waiter.head)
        return -EBUSY;
    if (w->closed || w->lost)
        return -EPIPE;
    if (evs_transport_is_tls(t))
        return -EALREADY;
    /* Bytes already read are the start of the TLS stream (a ClientHello
     * behind a PROXY header, or plaintext injected after STARTTLS): they go
     * to TLS, never to the caller. */
    drop_view(r);
    len = buffered(r);
    if (len > 0) {
        prefix = malloc(len);
        if (!prefix)
            return -ENOMEM;
        take(r, prefix, len);
    }
    s->tls_result = 1; /* in progress */
    t->tls_done = tls_done;
    t->tls_done_arg = s;
    rc = evs_transport_start_tls(t, ctx, server, opts, prefix, len);
    free(prefix);
    if (rc < 0)
        return rc;
    if (r->paused_transport) {
        r->paused_transport = false;
        evs_transport_resume_reading(t);
    }
    while (s->tls_result == 1 && !w->lost) {
        rc = evs__task_park(&s->tls_waiters);
        if (rc < 0)
            return rc;
    }
    if (s->tls_result == 1)
        return w->lost_err ? w->lost_err : -ECONNRESET;
    return s->tls_result;
}

int evs_stream_open_fd(int fd, size_t limit, evs_reader **r, evs_writer **w)
{
    evs_worker *wk = evs_worker_current();

    if (!wk || !r || !w) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    return evs__stream_open(wk, fd, limit, r, w, NULL);
}

void evs_writer_free(evs_writer *w)
{
    evs_stream *s;

    if (!w)
        return;
    s = stream_of_writer(w);
    evs_close(w);
    s->released = true;
    if (w->lost)
        stream_free(s);
}

void evs__stream_set_tag(evs_writer *w, void *tag)
{
    stream_of_writer(w)->tag = tag;
}

void *evs__stream_tag(const evs_writer *w)
{
    return EVS_CONTAINER_OF(w, evs_stream, writer)->tag;
}

/* --- StreamReader ------------------------------------------------------ */

/* Start of every read call: drop the last view, refuse a second reader. */
static int begin(evs_reader *r)
{
    if (r->waiter.head)
        return -EBUSY;
    drop_view(r);
    r->partial = 0;
    r->partial_data = NULL;
    return 0;
}

/* Park until the buffer changes, EOF or an error. */
static int wait_data(evs_reader *r)
{
    int rc;

    if (!evs_task_current())
        return -EINVAL;
    if (r->paused_transport) {
        r->paused_transport = false;
        evs_transport_resume_reading(r->t);
    }
    rc = evs__task_park(&r->waiter);
    return rc;
}

static void consumed(evs_reader *r)
{
    maybe_resume_transport(r);
}

/* Park with @buf lent to the transport, or with @buf NULL a worker block
 * taken when the bytes arrive (see the top of the file).
 * @return bytes that landed (in @buf, or in r->block), 0 if none, or a
 * negative errno. */
static ssize_t wait_data_lent(evs_reader *r, void *buf, size_t n)
{
    int rc;
    size_t got;

    r->lent = buf;
    r->lent_len = n;
    r->view_want = buf ? 0 : n;
    r->lent_got = 0;
    r->reading_lent = false;
    rc = wait_data(r);
    got = r->lent_got;
    r->lent = NULL;
    r->view_want = 0;
    r->lent_got = 0;
    r->reading_lent = false;
    if (!got && r->block) { /* taken, then EOF or a timeout: nothing landed */
        evs__worker_block_put(r->t->worker, r->block, r->block_large);
        r->block = NULL;
    }
    /* Bytes that arrived are the caller's even if the wait was cut short. */
    if (got)
        return (ssize_t)got;
    return rc < 0 ? rc : 0;
}

ssize_t evs_read(evs_reader *r, void *buf, size_t n)
{
    int rc = begin(r);
    size_t len;

    if (rc)
        return rc;
    if (n == 0)
        return 0;
    while ((len = buffered(r)) == 0) {
        ssize_t got;

        if (r->err)
            return r->err;
        if (r->eof)
            return 0;
        if ((got = wait_data_lent(r, buf, n)) != 0)
            return got;
    }
    if (len > n)
        len = n;
    take(r, buf, len);
    consumed(r);
    return (ssize_t)len;
}

ssize_t evs_read_to_eof(evs_reader *r, void *buf, size_t max)
{
    int rc = begin(r);
    size_t len;

    if (rc)
        return rc;
    while (!r->eof) {
        if (buffered(r) > max)
            return EVS_ELIMIT;
        if (r->err)
            return r->err;
        if ((rc = wait_data(r)) < 0)
            return rc;
    }
    len = buffered(r);
    if (len > max)
        return EVS_ELIMIT;
    take(r, buf, len);
    consumed(r);
    return (ssize_t)len;
}

ssize_t evs_readexactly(evs_reader *r, void *buf, size_t n)
{
    int rc = begin(r);
    size_t len;

    if (rc)
        return rc;
    while ((len = buffered(r)) < n) {
        if (r->err)
            return r->err;
        if (r->eof) {
            take(r, buf, len);
            r->partial = len;
            r->partial_data = buf;
            consumed(r);
            return EVS_EINCOMPLETE;
        }
        if ((rc = wait_data(r)) < 0)
            return rc;
    }
    take(r, buf, n);
    consumed(r);
    return (ssize_t)n;
}

/* Earliest separator at or after @from; a tie goes to the shortest.
 * @return its position or -1; *which receives its index. */
static ssize_t find_separator(evs_reader *r, const evs_separator *seps, size_t nseps, size_t from,
                              size_t *which)
{
    ssize_t best = -1;
    struct evbuffer_ptr start;

    if (!r->buf)
        return -1;
    for (size_t i = 0; i < nseps; i++) {
        struct evbuffer_ptr p;

        if (evbuffer_ptr_set(r->buf, &start, (size_t)(r->consume + from), EVBUFFER_PTR_SET) < 0)
            return -1;
        p = evbuffer_search(r->buf, seps[i].data, seps[i].len, &start);
        if (p.pos < 0)
            continue;
        ssize_t pos = (ssize_t)(p.pos - (ev_ssize_t)r->consume);
        if (best < 0 || pos < best || (pos == best && seps[i].len < seps[*which].len)) {
            best = pos;
            *which = i;
        }
    }
    return best;
}

/* Hand the first @len buffered bytes out as a view. */
static const void *view(evs_reader *r, size_t len)
{
    const unsigned char *p = evbuffer_pullup(r->buf, (ev_ssize_t)(r->consume + len));

    p += r->consume;
    r->consume += len;
    return p;
}

ssize_t evs_read_view(evs_reader *r, size_t n, const void **data)
{
    struct evbuffer_iovec front;
    size_t len;
    int rc;

    if (!data)
        return -EINVAL; /* before begin(): a refused call drops no view */
    if ((rc = begin(r)) != 0)
        return rc;
    *data = NULL;
    if (n == 0)
        return 0;
    while ((len = buffered(r)) == 0) {
        ssize_t got;

        if (r->err)
            return r->err;
        if (r->eof)
            return 0;
        if ((got = wait_data_lent(r, NULL, n)) != 0) {
            *data = got > 0 ? r->block : NULL;
            return got;
        }
    }
    if (len > n)
        len = n;
    /* What the first chain holds: a view across chains would need a copy. */
    if (evbuffer_peek(r->buf, -1, NULL, &front, 1) > 0 && front.iov_len > 0 &&
        front.iov_len < len)
        len = front.iov_len;
    *data = view(r, len);
    consumed(r);
    return (ssize_t)len;
}

/* readuntil and readline share this. @at_eof_partial: readline's rule
 * (return the unterminated rest at EOF) instead of EVS_EINCOMPLETE. */
static ssize_t read_until(evs_reader *r, const evs_separator *seps, size_t nseps, size_t limit,
                          bool eof_returns_rest, const void **data)
{
    size_t maxsep = 0, from = 0, which = 0;
    int rc = begin(r);

    if (rc)
        return rc;
    if (!seps || nseps == 0 || !data)
        return -EINVAL;
    for (size_t i = 0; i < nseps; i++) {
        if (!seps[i].data || seps[i].len == 0)
            return -EINVAL;
        if (seps[i].len > maxsep)
            maxsep = seps[i].len;
    }
    if (limit == 0)
        limit = r->limit;
    for (;;) {
        size_t len = buffered(r);
        ssize_t pos = find_separator(r, seps, nseps, from, &which);

        if (pos >= 0) {
            if ((size_t)pos > limit)
                return EVS_ELIMIT; /* the data stays */
            len = (size_t)pos + seps[which].len;
            *data = view(r, len);
            consumed(r);
            return (ssize_t)len;
        }
        /* A separator may straddle what we have and what comes next. */
        from = len + 1 > maxsep ? len + 1 - maxsep : 0;
        if (from > limit)
            return EVS_ELIMIT;
        if (r->eof) {
            if (eof_returns_rest) {
                if (len > limit)
                    return EVS_ELIMIT;
                *data = len ? view(r, len) : NULL;
                consumed(r);
                return (ssize_t)len;
            }
            r->partial = len;
            r->partial_data = len ? view(r, len) : NULL;
            consumed(r);
            return EVS_EINCOMPLETE;
        }
        if (r->err)
            return r->err;
        if ((rc = wait_data(r)) < 0)
            return rc;
    }
}

ssize_t evs_readline(evs_reader *r, const void **line)
{
    evs_separator nl = {"\n", 1};

    return read_until(r, &nl, 1, 0, true, line);
}

ssize_t evs_readuntil(evs_reader *r, const void *sep, size_t seplen, const void **data)
{
    evs_separator s = {sep, seplen};

    return read_until(r, &s, 1, 0, false, data);
}

ssize_t evs_readuntil_any(evs_reader *r, const evs_separator *seps, size_t nseps, size_t limit,
                          const void **data)
{
    return read_until(r, seps, nseps, limit, false, data);
}

size_t evs_reader_partial(evs_reader *r, const void **data)
{
    if (data)
        *data = r->partial_data;
    return r->partial;
}

bool evs_at_eof(const evs_reader *r)
{
    return r->eof && buffered(r) == 0;
}

size_t evs_reader_buffered(const evs_reader *r)
{
    return buffered(r);
}

size_t evs_reader_limit(const evs_reader *r)
{
    return r->limit;
}

int evs_reader_set_limit(evs_reader *r, size_t limit)
{
    if (limit == 0)
        return -EINVAL;
    r->limit = limit;
    maybe_resume_transport(r);
    return 0;
}

/* --- StreamWriter ------------------------------------------------------ */

static int writable(const evs_writer *w)
{
    if (w->closed)
        return -EPIPE;
    if (w->lost)
        return w->lost_err ? w->lost_err : -EPIPE;
    return 0;
}

int evs_write(evs_writer *w, const void *data, size_t len)
{
    int err = writable(w);

    if (err)
        return err;
    return evs_transport_write(w->reader->t, data, len);
}

int evs_writelines(evs_writer *w, const struct iovec *iov, int iovcnt)
{
    int err = writable(w);

    if (err)
        return err;
    return evs_transport_writelines(w->reader->t, iov, iovcnt);
}

int evs_drain(evs_writer *w)
{
    int rc;

    if (w->lost)
        return w->lost_err ? w->lost_err : -EPIPE;
    while (w->paused) {
        if (!evs_task_current())
            return -EINVAL;
        rc = evs__task_park(&w->drainers);
        if (rc < 0 || w->lost)
            return rc;
    }
    return 0;
}

int evs_write_eof(evs_writer *w)
{
    if (w->closed || w->lost)
        return -EPIPE;
    return evs_transport_write_eof(w->reader->t);
}

bool evs_can_write_eof(const evs_writer *w)
{
    return evs_transport_can_write_eof(w->reader->t);
}

void evs_close(evs_writer *w)
{
    if (w->closed)
        return;
    w->closed = true;
    if (!w->lost)
        evs_transport_close(w->reader->t);
}

int evs_wait_closed(evs_writer *w)
{
    while (!w->lost) {
        int rc;

        if (!evs_task_current())
            return -EINVAL;
        rc = evs__task_park(&w->closers);
        if (rc < 0)
            return rc;
    }
    return 0;
}

bool evs_is_closing(const evs_writer *w)
{
    return w->closed || w->lost || evs_transport_is_closing(w->reader->t);
}

evs_transport *evs_writer_transport(const evs_writer *w)
{
    return w->reader->t;
}

evs_reader *evs_writer_reader(const evs_writer *w)
{
    return w->reader;
}
