/*
 * stream.c - StreamReader and StreamWriter on a transport, the way asyncio
 * builds StreamReaderProtocol: the pair is the transport's protocol.
 *
 * The reader reads straight into its own buffer (the buffered-protocol
 * path: get_buffer hands out the room after the bytes), so bytes are
 * copied once, from the kernel. The buffer is one contiguous region, so
 * every view (readline, readuntil, read_view) is a pointer into it with no
 * gathering copy. Its memory is one of the worker's pooled blocks, taken
 * when bytes arrive and given back as soon as the reader is empty: an idle
 * connection holds none, and a request/response handler allocates nothing
 * per read. Only a message bigger than a large block moves the bytes to
 * heap memory, doubled as needed and freed when the reader empties.
 *
 * A view stays valid until the next call on the reader, which drops it
 * first. Bytes behind a view are never moved: if room is needed while a
 * view is out, the rest moves to new memory and the old one is kept until
 * the view is dropped.
 *
 * evs_read() parked on an empty reader lends the caller's buffer instead:
 * the next recv() lands there, with no second copy.
 */
#include "stream.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "transport.h"

/* Where a reader's memory comes from, so that it goes back there. */
enum reader_mem { MEM_SMALL, MEM_LARGE, MEM_HEAP };

struct evs_reader {
    evs_transport *t;
    char *mem;         /* the buffered bytes are mem[start, end); NULL when none */
    size_t cap;
    size_t start;
    size_t end;
    enum reader_mem kind;
    void *retired;     /* the memory the current view points into, after a move */
    enum reader_mem retired_kind;
    bool reads_fill;   /* a read filled its room: take large blocks from now on */
    size_t limit;
    bool eof;
    int err;
    evs__waitq waiter; /* at most one task */
    bool reading;      /* a task is inside a wait: parked, or woken and not yet run */
    size_t consume;    /* bytes of the current view, at the front, dropped by the next call */
    size_t partial;    /* after EVS_EINCOMPLETE */
    const void *partial_data;
    bool paused_transport;
    void *lent;        /* evs_read's buffer while it waits on an empty reader */
    size_t lent_len;
    size_t lent_got;   /* bytes the transport put there */
};

struct evs_writer {
    evs_reader *reader;
    bool closed;   /* close() called */
    bool lost;     /* connection_lost seen */
    bool paused;   /* the transport asked us to pause writing */
    int lost_err;  /* the error the connection was lost with; 0 for a close or an abort */
    evs__waitq drainers;
    evs__waitq closers;
};

/* Both halves in one allocation; freed when the owner released it and the
 * connection is gone. */
typedef struct evs_stream {
    evs_reader reader;
    evs_writer writer;
    bool released;
    bool doomed;                /* on the worker's list of pairs to free (free_soon()) */
    unsigned inside;            /* tasks inside a call on the pair (see enter()) */
    struct evs_stream *orphan_next; /* lost and not released, or doomed: a worker's list */
    struct evs_stream *orphan_prev;
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
    /* free(), not back to the worker's pool: the worker may have ended. */
    free(s->reader.mem);
    free(s->reader.retired);
    evs__transport_unref(s->reader.t);
    free(s);
}

/* A lost pair that nobody released yet: if its worker ends first, the
 * worker frees it (evs_run's function may return without evs_writer_free;
 * nothing can use the pair once its loop is gone). */
static void orphan_add(evs_stream *s)
{
    evs_worker *w = s->reader.t->worker;

    s->orphan_prev = NULL;
    s->orphan_next = w->orphan_streams;
    if (s->orphan_next)
        s->orphan_next->orphan_prev = s;
    w->orphan_streams = s;
}

static void orphan_remove(evs_stream *s)
{
    evs_worker *w = s->reader.t->worker;

    if (s->orphan_prev)
        s->orphan_prev->orphan_next = s->orphan_next;
    else if (w->orphan_streams == s)
        w->orphan_streams = s->orphan_next;
    if (s->orphan_next)
        s->orphan_next->orphan_prev = s->orphan_prev;
    s->orphan_next = s->orphan_prev = NULL;
}

/* The pairs free_soon() put off, now that their callers have waited. A
 * pair someone entered since (a call on a released pair) is left to the
 * leave() of that call. */
void evs__stream_free_doomed(evs_worker *w)
{
    while (w->doomed_streams) {
        evs_stream *s = w->doomed_streams;

        w->doomed_streams = s->orphan_next;
        s->doomed = false;
        if (s->inside == 0)
            stream_free(s);
    }
}

void evs__stream_free_orphans(evs_worker *w)
{
    while (w->orphan_streams) {
        evs_stream *s = w->orphan_streams;

        orphan_remove(s);
        stream_free(s);
    }
    evs__stream_free_doomed(w);
}

/* A pair to free whose reader has a view out: the line readline() just
 * returned, or the partial bytes of EVS_EINCOMPLETE, to a task woken by
 * another task's evs_writer_free(). The caller may read them until it next
 * waits, so the pair is freed when control is back in the loop. */
static void free_soon(evs_stream *s)
{
    evs_worker *w = s->reader.t->worker;

    if (s->doomed)
        return;
    s->doomed = true;
    s->orphan_next = w->doomed_streams;
    w->doomed_streams = s;
    event_active(&w->doomed_ev, EV_TIMEOUT, 0);
}

/* Free the pair once nothing can reach it: its connection is gone, its
 * owner released it (or, for a server pair whose handler never started,
 * there is no owner), and no task is inside a call on it. */
static void maybe_free(evs_stream *s)
{
    /* A doomed pair is on the worker's list: evs__stream_free_doomed frees it. */
    if (s->doomed || s->inside != 0 || !s->writer.lost ||
        !(s->released || (s->on_made && !s->made)))
        return;
    if (s->reader.consume > 0 || s->reader.partial > 0)
        free_soon(s);
    else
        stream_free(s);
}

/* Every call that may park brackets itself with enter() and leave(): a
 * task parked on the pair when another task releases it (evs_writer_free)
 * is woken by the loss and must still find the pair when it resumes. The
 * last call to leave frees it. */
static void enter(evs_stream *s)
{
    s->inside++;
}

static ssize_t leave(evs_stream *s, ssize_t rc)
{
    s->inside--;
    maybe_free(s);
    return rc;
}

/* --- the reader's buffer --------------------------------------------- */

static size_t buffered(const evs_reader *r)
{
    return r->end - r->start - r->consume;
}

/* Memory for at least @want bytes: a small or a large block from the
 * worker's pool when one is enough, else the heap. */
static char *mem_take(evs_reader *r, size_t want, enum reader_mem *kind, size_t *cap)
{
    if (want > EVS__BLOCK_LARGE) {
        *kind = MEM_HEAP;
        *cap = want;
        return malloc(want);
    }
    *kind = want > EVS__BLOCK_SMALL ? MEM_LARGE : MEM_SMALL;
    *cap = *kind == MEM_LARGE ? EVS__BLOCK_LARGE : EVS__BLOCK_SMALL;
    return evs__worker_block_get(r->t->worker, *kind == MEM_LARGE);
}

static void mem_give_back(evs_reader *r, void *mem, enum reader_mem kind)
{
    if (kind == MEM_HEAP)
        free(mem);
    else
        evs__worker_block_put(r->t->worker, mem, kind == MEM_LARGE);
}

/* An empty reader holds no memory. */
static void settle(evs_reader *r)
{
    if (r->mem && r->start == r->end) {
        mem_give_back(r, r->mem, r->kind);
        r->mem = NULL;
        r->cap = r->start = r->end = 0;
    }
}

/* Move @len buffered bytes to @dst (none is fine). No view is out. */
static void take(evs_reader *r, void *dst, size_t len)
{
    if (len > 0) {
        memcpy(dst, r->mem + r->start, len);
        r->start += len;
        settle(r);
    }
}

/* The bytes of the current view are gone: drop them and the memory kept
 * for the view. */
static void drop_view(evs_reader *r)
{
    r->start += r->consume;
    r->consume = 0;
    if (r->retired) {
        mem_give_back(r, r->retired, r->retired_kind);
        r->retired = NULL;
    }
    settle(r);
}

/* Hand the first @len buffered bytes out as a view. */
static const void *view(evs_reader *r, size_t len)
{
    r->consume = len;
    return r->mem + r->start;
}

/* Move the bytes not behind the view to new memory of at least @want
 * bytes. Memory a view points into is kept until the view is dropped. */
static bool move_bytes(evs_reader *r, size_t want)
{
    size_t from = r->start + r->consume, len = r->end - from;
    enum reader_mem kind;
    size_t cap;
    char *mem = mem_take(r, want, &kind, &cap);

    if (!mem)
        return false;
    memcpy(mem, r->mem + from, len);
    if (r->consume) {
        r->retired = r->mem;
        r->retired_kind = r->kind;
    } else {
        mem_give_back(r, r->mem, r->kind); /* nothing points into it */
    }
    r->consume = 0;
    r->mem = mem;
    r->kind = kind;
    r->cap = cap;
    r->start = 0;
    r->end = len;
    return true;
}

/* Room after the bytes for the next read. An empty reader takes a block;
 * a fuller one slides its bytes to the front when that is cheap, reads
 * into what room is left, and only when there is none moves the bytes it
 * still holds to memory twice their size. Sizing by those bytes, not by
 * the region, keeps the memory to what is buffered: a task that parks
 * with a view out while the peer keeps the reader busy would otherwise
 * double the region at every fill. */
static bool make_room(evs_reader *r)
{
    size_t room, len, keep;

    if (!r->mem) {
        r->start = r->end = 0;
        r->mem = mem_take(r, r->reads_fill ? EVS__BLOCK_LARGE : EVS__BLOCK_SMALL, &r->kind,
                          &r->cap);
        return r->mem != NULL;
    }
    room = r->cap - r->end;
    if (room >= r->cap / 4)
        return true;
    len = r->end - r->start;
    if (!r->consume && len <= r->cap / 2) {
        memmove(r->mem, r->mem + r->start, len);
        r->start = 0;
        r->end = len;
        return true;
    }
    if (room > 0)
        return true;
    keep = len - r->consume;
    if (keep > SIZE_MAX / 2)
        return false;
    return move_bytes(r, 2 * keep);
}

static void maybe_pause_transport(evs_reader *r)
{
    /* Stop reading from the socket above twice the limit unless a call is
     * waiting for more (readexactly(n > 2 * limit) must still work). */
    if (!r->paused_transport && !r->waiter.head &&
        buffered(r) / 2 > r->limit) {
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

/* --- the protocol under the pair ------------------------------------- */

/* The transport reads into evs_read's buffer, not the reader's own. */
static bool reading_lent(const evs_reader *r)
{
    return r->lent && !r->lent_got;
}

static void *sp_get_buffer(evs_transport *t, size_t sizehint, size_t *len, void *ctx)
{
    evs_reader *r = ctx;

    EVS_UNUSED(t);
    EVS_UNUSED(sizehint); /* what room there is: reads that fill it grow it */
    if (reading_lent(r)) {
        *len = r->lent_len;
        return r->lent;
    }
    if (!make_room(r))
        return NULL;
    *len = r->cap - r->end;
    return r->mem + r->end;
}

static void sp_buffer_updated(evs_transport *t, size_t nbytes, void *ctx)
{
    evs_reader *r = ctx;

    EVS_UNUSED(t);
    if (reading_lent(r)) {
        r->lent_got = nbytes;
    } else {
        if (nbytes == r->cap - r->end)
            r->reads_fill = true;
        r->end += nbytes;
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

/* What a call learns of a lost connection: the error it was lost with;
 * -EPIPE if it ended without one but dropped queued bytes (an abort);
 * else @otherwise (0 for a drain: every byte went out). */
static int loss_error(const evs_writer *w, int otherwise)
{
    if (w->lost_err)
        return w->lost_err;
    return w->reader->t->dropped ? -EPIPE : otherwise;
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
    w->lost_err = err;
    evs__task_wake_all(&s->made_waiters, 0);
    evs__task_wake_all(&s->tls_waiters, 0);
    evs__task_wake_all(&r->waiter, 0);
    evs__task_wake_all(&w->drainers, loss_error(w, 0));
    evs__task_wake_all(&w->closers, 0);
    /* A server's pair whose handler never started (a failed TLS handshake
     * or PROXY header) belongs to nobody else: maybe_free() frees it. */
    if (!s->released && !(s->on_made && !s->made))
        orphan_add(s);
    maybe_free(s);
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
    s->writer.reader = &s->reader;
    err = evs__transport_create(wk, fd, family, &stream_protocol, &s->reader, &t);
    if (err) {
        free(s);
        return err;
    }
    evs__transport_ref(t); /* the pair's reference */
    t->lost_unmade = true; /* a pair that never got made frees itself there */
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

int evs__stream_wait_made(evs_writer *w, double *began)
{
    evs_stream *s = stream_of_writer(w);

    while (!s->made && !w->lost) {
        int rc = evs__task_park_in_call(&s->made_waiters, began);
        if (rc < 0)
            return rc;
    }
    if (s->made)
        return 0;
    return loss_error(w, -ECONNRESET);
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

static int start_tls(evs_writer *w, evs_tls_context *ctx, bool server, const evs_tls_options *opts)
{
    evs_stream *s = stream_of_writer(w);
    evs_reader *r = w->reader;
    evs_transport *t = r->t;
    size_t len;
    int rc;
    double began = 0;

    if (!evs_task_current() || !ctx)
        return -EINVAL;
    if (r->reading)
        return -EBUSY;
    if (w->closed || w->lost)
        return -EPIPE;
    if (evs_transport_is_tls(t))
        return -EALREADY;
    /* Bytes already read are the start of the TLS stream (a ClientHello
     * behind a PROXY header, or plaintext injected after STARTTLS): they go
     * to TLS (which copies them), never to the caller. They leave the
     * reader only once the transport took them: a refused upgrade loses
     * nothing. */
    drop_view(r);
    len = buffered(r);
    s->tls_result = 1; /* in progress */
    t->tls_done = tls_done;
    t->tls_done_arg = s;
    rc = evs_transport_start_tls(t, ctx, server, opts, len ? r->mem + r->start : NULL, len);
    if (rc < 0) {
        t->tls_done = NULL;
        t->tls_done_arg = NULL;
        return rc;
    }
    r->start += len;
    settle(r);
    if (r->paused_transport) {
        r->paused_transport = false;
        evs_transport_resume_reading(t);
    }
    while (s->tls_result == 1 && !w->lost) {
        rc = evs__task_park_in_call(&s->tls_waiters, &began);
        if (rc < 0)
            return rc;
    }
    if (s->tls_result == 1)
        return loss_error(w, -ECONNRESET);
    return s->tls_result;
}

int evs_start_tls(evs_writer *w, evs_tls_context *ctx, bool server, const evs_tls_options *opts)
{
    evs_stream *s = stream_of_writer(w);

    enter(s);
    return (int)leave(s, start_tls(w, ctx, server, opts));
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
        orphan_remove(s);
    maybe_free(s);
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

/* Start of every read call: drop the last view, refuse a second reader.
 * A woken reader is off the wait list but still inside its call (its
 * buffer may be lent), so the flag, not the list, says the reader is busy. */
static int begin(evs_reader *r)
{
    if (r->reading)
        return -EBUSY;
    drop_view(r);
    r->partial = 0;
    r->partial_data = NULL;
    return 0;
}

/* Park until the buffer changes, EOF or an error. @began: the calling
 * read's start, so the task's timeout bounds the whole read. */
static int wait_data(evs_reader *r, double *began)
{
    int rc;

    if (!evs_task_current())
        return -EINVAL;
    if (r->paused_transport) {
        r->paused_transport = false;
        evs_transport_resume_reading(r->t);
    }
    r->reading = true;
    rc = evs__task_park_in_call(&r->waiter, began);
    r->reading = false;
    settle(r); /* a block taken for a read that found nothing */
    return rc;
}

static void consumed(evs_reader *r)
{
    maybe_resume_transport(r);
}

/* Park with @buf lent to the transport (see the top of the file).
 * @return bytes that landed in @buf, 0 if none, or a negative errno. */
static ssize_t wait_data_lent(evs_reader *r, void *buf, size_t n, double *began)
{
    int rc;
    size_t got;

    r->lent = buf;
    r->lent_len = n;
    r->lent_got = 0;
    rc = wait_data(r, began);
    got = r->lent_got;
    r->lent = NULL;
    r->lent_got = 0;
    /* Bytes that arrived are the caller's even if the wait was cut short. */
    if (got)
        return (ssize_t)got;
    return rc < 0 ? rc : 0;
}

static ssize_t read_some(evs_reader *r, void *buf, size_t n)
{
    int rc = begin(r);
    size_t len;
    double began = 0;

    if (rc)
        return rc;
    if (n == 0)
        return 0;
    while ((len = buffered(r)) == 0) {
        ssize_t got;

        if (r->eof) /* before the error: the read side ended cleanly first */
            return 0;
        if (r->err)
            return r->err;
        if ((got = wait_data_lent(r, buf, n, &began)) != 0)
            return got;
    }
    if (len > n)
        len = n;
    take(r, buf, len);
    consumed(r);
    return (ssize_t)len;
}

ssize_t evs_read(evs_reader *r, void *buf, size_t n)
{
    evs_stream *s = stream_of_reader(r);

    enter(s);
    return leave(s, read_some(r, buf, n));
}

static ssize_t read_to_eof(evs_reader *r, void *buf, size_t max)
{
    int rc = begin(r);
    size_t len;
    double began = 0;

    if (rc)
        return rc;
    while (!r->eof) {
        if (buffered(r) > max)
            return EVS_ELIMIT;
        if (r->err)
            return r->err;
        if ((rc = wait_data(r, &began)) < 0)
            return rc;
    }
    len = buffered(r);
    if (len > max)
        return EVS_ELIMIT;
    take(r, buf, len);
    consumed(r);
    return (ssize_t)len;
}

ssize_t evs_read_to_eof(evs_reader *r, void *buf, size_t max)
{
    evs_stream *s = stream_of_reader(r);

    enter(s);
    return leave(s, read_to_eof(r, buf, max));
}

static ssize_t read_exactly(evs_reader *r, void *buf, size_t n)
{
    int rc = begin(r);
    size_t len;
    double began = 0;

    if (rc)
        return rc;
    while ((len = buffered(r)) < n) {
        if (r->eof) {
            take(r, buf, len);
            r->partial = len;
            r->partial_data = buf;
            consumed(r);
            return EVS_EINCOMPLETE;
        }
        if (r->err)
            return r->err;
        if ((rc = wait_data(r, &began)) < 0)
            return rc;
    }
    take(r, buf, n);
    consumed(r);
    return (ssize_t)n;
}

ssize_t evs_readexactly(evs_reader *r, void *buf, size_t n)
{
    evs_stream *s = stream_of_reader(r);

    enter(s);
    return leave(s, read_exactly(r, buf, n));
}

/* First @sep in @p[0, len), or NULL. */
static const char *search(const char *p, size_t len, const evs_separator *sep)
{
    const char *first = sep->data;

    while (len >= sep->len) {
        const char *hit = memchr(p, first[0], len - sep->len + 1);

        if (!hit)
            return NULL;
        if (memcmp(hit, sep->data, sep->len) == 0)
            return hit;
        len -= (size_t)(hit - p) + 1;
        p = hit + 1;
    }
    return NULL;
}

/* The separator match at or after @from that ends first (asyncio's rule):
 * more bytes can never bring one that ends earlier, so the answer does not
 * depend on how the bytes arrived. Of matches ending together (the data is
 * the same) the longest, which starts first, is the one the limit sees.
 * @return its position or -1; *which receives its index. */
static ssize_t find_separator(const evs_reader *r, const evs_separator *seps, size_t nseps,
                              size_t from, size_t *which)
{
    size_t len = buffered(r), best_end = len;
    ssize_t best = -1;

    if (from >= len)
        return -1;
    const char *p = r->mem + r->start + r->consume;
    for (size_t i = 0; i < nseps; i++) {
        /* Once one is found, only a hit ending at or before it can win. */
        if (best_end <= from)
            break;
        const char *hit = search(p + from, best_end - from, &seps[i]);

        if (!hit)
            continue;
        ssize_t pos = hit - p;
        size_t end = (size_t)pos + seps[i].len;
        if (best < 0 || end < best_end || seps[i].len > seps[*which].len) {
            best = pos;
            best_end = end;
            *which = i;
        }
    }
    return best;
}

static ssize_t read_view(evs_reader *r, size_t n, const void **data)
{
    size_t len;
    int rc;
    double began = 0;

    if (!data)
        return -EINVAL; /* before begin(): a refused call drops no view */
    if ((rc = begin(r)) != 0)
        return rc;
    *data = NULL;
    if (n == 0)
        return 0;
    while ((len = buffered(r)) == 0) {
        if (r->eof) /* before the error: the read side ended cleanly first */
            return 0;
        if (r->err)
            return r->err;
        if ((rc = wait_data(r, &began)) < 0)
            return rc;
    }
    if (len > n)
        len = n;
    *data = view(r, len);
    consumed(r);
    return (ssize_t)len;
}

ssize_t evs_read_view(evs_reader *r, size_t n, const void **data)
{
    evs_stream *s = stream_of_reader(r);

    enter(s);
    return leave(s, read_view(r, n, data));
}

/* readuntil and readline share this. @at_eof_partial: readline's rule
 * (return the unterminated rest at EOF) instead of EVS_EINCOMPLETE. */
static ssize_t read_to_separator(evs_reader *r, const evs_separator *seps, size_t nseps,
                                 size_t limit, bool eof_returns_rest, const void **data)
{
    size_t maxsep = 0, from = 0, which = 0;
    int rc = begin(r);
    double began = 0;

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
        if ((rc = wait_data(r, &began)) < 0)
            return rc;
    }
}

static ssize_t read_until(evs_reader *r, const evs_separator *seps, size_t nseps, size_t limit,
                          bool eof_returns_rest, const void **data)
{
    evs_stream *s = stream_of_reader(r);

    enter(s);
    return leave(s, read_to_separator(r, seps, nseps, limit, eof_returns_rest, data));
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

/* Drop the first @n buffered bytes. No view is out (begin() dropped it). */
static void drop(evs_reader *r, size_t n)
{
    r->start += n;
    settle(r);
}

/* Unlike the reads, this drops bytes as it goes: what it has skipped stays
 * skipped when it fails, and it holds at most a separator's length minus
 * one byte however long the run it skips. */
static ssize_t skip_until(evs_reader *r, const evs_separator *sep)
{
    size_t skipped = 0, which = 0;
    int rc = begin(r);
    double began = 0;

    if (rc)
        return rc;
    if (!sep->data || sep->len == 0)
        return -EINVAL;
    for (;;) {
        size_t len = buffered(r), keep;
        ssize_t pos = find_separator(r, sep, 1, 0, &which);

        if (pos >= 0) {
            len = (size_t)pos + sep->len;
            drop(r, len);
            consumed(r);
            return (ssize_t)(skipped + len);
        }
        /* Keep what may be the start of a separator cut by the read. */
        keep = r->eof ? 0 : len < sep->len - 1 ? len : sep->len - 1;
        drop(r, len - keep);
        skipped += len - keep;
        consumed(r);
        if (r->eof)
            return EVS_EINCOMPLETE;
        if (r->err)
            return r->err;
        if ((rc = wait_data(r, &began)) < 0)
            return rc;
    }
}

ssize_t evs_skipuntil(evs_reader *r, const void *sep, size_t seplen)
{
    evs_stream *s = stream_of_reader(r);
    evs_separator one = {sep, seplen};

    enter(s);
    return leave(s, skip_until(r, &one));
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
        return loss_error(w, -EPIPE);
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

static int drain(evs_writer *w)
{
    const evs_transport *t = w->reader->t;
    int rc;
    double began = 0;

    if (w->lost)
        return loss_error(w, -EPIPE);
    /* A closing transport (a failed send, an abort, a close) delivers its
     * loss on a later loop turn and may never pause: without this a
     * write-then-drain loop would return 0 forever and spin the worker.
     * A failure is known now; otherwise yield once, as asyncio's drain
     * does (sleep(0)), so the loss can arrive. */
    if (t->closing && t->error)
        return t->error;
    if (t->closing && evs_task_current()) {
        if ((rc = evs_yield()) < 0)
            return rc;
        if (w->lost)
            return loss_error(w, -EPIPE);
    }
    while (w->paused) {
        if (!evs_task_current())
            return -EINVAL;
        rc = evs__task_park_in_call(&w->drainers, &began);
        if (rc < 0 || w->lost)
            return rc;
    }
    return 0;
}

int evs_drain(evs_writer *w)
{
    evs_stream *s = stream_of_writer(w);

    enter(s);
    return (int)leave(s, drain(w));
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

static int wait_closed(evs_writer *w)
{
    double began = 0;

    while (!w->lost) {
        int rc;

        if (!evs_task_current())
            return -EINVAL;
        rc = evs__task_park_in_call(&w->closers, &began);
        if (rc < 0)
            return rc;
    }
    /* As asyncio's wait_closed() raises what connection_lost() carried. */
    return w->lost_err;
}

int evs_wait_closed(evs_writer *w)
{
    evs_stream *s = stream_of_writer(w);

    enter(s);
    return (int)leave(s, wait_closed(w));
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
