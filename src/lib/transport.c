/*
 * transport.c - the stream socket transport (TCP, Unix, socketpair) on raw
 * libevent events and an evbuffer.
 *
 * write() tries the socket at once and queues only what the kernel did not
 * take; only then is a write event armed, until the queue drains. A plain
 * bufferevent measured 0.65x of a minimal epoll server because it goes
 * through the loop for every write (see docs/architecture.md).
 *
 * connection_lost always runs from the worker's lost event, never inside
 * the call that caused it, so a protocol may close or abort its transport
 * from any callback. A reference is held around every protocol callback.
 *
 * An idle connection holds the struct and its read event only: the write
 * queue and its event come with the first short write, the timers with the
 * first timeout (see docs/architecture.md, "Memory per connection").
 */
#include "transport.h"
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Reads per readiness event: enough to empty a busy socket without starving
 * the other connections of the worker. */
#define READS_PER_EVENT 4

static void read_cb(evutil_socket_t fd, short what, void *arg);

/* Bytes moved: the timeouts measure from here. The monotonic clock costs
 * no system call (vDSO), and nothing is done without timeouts. */
static inline void mark_read(evs_transport *t)
{
    if (t->timers)
        evs__timeouts_read(t);
}

static inline void mark_write(evs_transport *t)
{
    if (t->timers)
        evs__timeouts_write(t);
}
static void write_cb(evutil_socket_t fd, short what, void *arg);
static void account(evs_transport *t, size_t before, size_t after);
static void lost_cb(evutil_socket_t fd, short what, void *arg);

void evs__transport_list_init(evs_worker *w)
{
    w->transports.lost_head = NULL;
    w->transports.lost_tail = &w->transports.lost_head;
    event_assign(&w->transports.lost_ev, w->base, -1, 0, lost_cb, w);
}

void evs__transport_list_fini(evs_worker *w)
{
    if (event_initialized(&w->transports.lost_ev))
        event_del(&w->transports.lost_ev);
}

void evs__transport_count_in(evs_transport *t, size_t n)
{
    evs__counter_add(&t->worker->bytes_in, (uint64_t)n);
    t->bytes_in += n;
    mark_read(t);
}

void evs__transport_ref(evs_transport *t)
{
    t->refs++;
}

void evs__transport_unref(evs_transport *t)
{
    if (--t->refs > 0)
        return;
    event_del(&t->rd_ev);
    if (t->wr_ev)
        event_free(t->wr_ev);
    if (t->timers) {
        event_del(&t->timers->ev);
        free(t->timers);
    }
    /* TLS details stay readable until the last reference (after a failed
     * handshake the caller wants to know why). */
    evs__tls_free(t);
    free(t->peer);
    free(t->proxied);
    if (t->fd >= 0)
        close(t->fd);
    if (t->wfd >= 0 && t->wfd != t->fd)
        close(t->wfd);
    if (t->out)
        evbuffer_free(t->out);
    free(t);
}

/* Make @fd non-blocking and tell what it is: an address family, or
 * AF_UNSPEC for what is no socket (a pipe, a FIFO, a tty).
 * @return the family or a negative errno. */
static int probe_fd(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0))
        return -errno;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        return ss.ss_family;
    return errno == ENOTSOCK ? AF_UNSPEC : AF_UNIX; /* a socket all the same */
}

int evs__transport_create(evs_worker *w, int fd, int family, const evs_protocol *proto, void *ctx,
                          evs_transport **out)
{
    evs_transport *t;

    if (!w || !proto || fd < 0) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    /* After the stop's abort_all nothing would close it, and the worker's
     * loop would wait for it forever. */
    if (w->stopping) {
        close(fd);
        return -ESHUTDOWN;
    }
    if (family == EVS__FD_PROBE && (family = probe_fd(fd)) < 0) {
        close(fd);
        return family;
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        close(fd);
        return -ENOMEM;
    }
    t->worker = w;
    t->fd = fd;
    t->wfd = fd;
    t->proto = proto;
    t->ctx = ctx;
    t->refs = 1; /* dropped after connection_lost */
    t->high = EVS_WRITE_HIGH_WATER_DEFAULT;
    t->low = EVS_WRITE_LOW_WATER_DEFAULT;
    evs__monotonic_tv(&t->started);
    t->is_pipe = family == AF_UNSPEC;
    if (family == AF_INET || family == AF_INET6) {
        int one = 1;
        /* asyncio sets TCP_NODELAY too: writes are already coalesced by
         * the write queue, Nagle would only add latency. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        t->is_tcp = true;
    }
    event_assign(&t->rd_ev, w->base, fd, EV_READ | EV_PERSIST, read_cb, t);
    t->next = w->transports.head;
    if (t->next)
        t->next->prev = t;
    w->transports.head = t;
    *out = t;
    return 0;
}

void evs__transport_made(evs_transport *t)
{
    evs__transport_ref(t);
    t->made = true;
    if (t->proto->connection_made)
        t->proto->connection_made(t, t->ctx);
    evs__transport_unref(t);
}

void evs__transport_start(evs_transport *t)
{
    evs__transport_ref(t);
    /* Over TLS, connection_made waits for the handshake (as in asyncio). */
    if (t->tls)
        evs__tls_start(t);
    else
        evs__transport_made(t);
    if (!t->closing && !t->paused)
        event_add(&t->rd_ev, NULL);
    evs__transport_unref(t);
}

int evs_transport_new(int fd, const evs_protocol *proto, void *ctx, evs_transport **out)
{
    evs_transport *t;
    int err = evs__transport_create(evs_worker_current(), fd, EVS__FD_PROBE, proto, ctx, &t);

    if (err)
        return err;
    if (out)
        *out = t;
    evs__transport_start(t);
    return 0;
}

/* --- ending ------------------------------------------------------------ */

static void schedule_lost(evs_transport *t)
{
    evs__tlist *l = &t->worker->transports;

    if (t->lost_scheduled)
        return;
    t->lost_scheduled = true;
    event_del(&t->rd_ev);
    if (t->wr_ev)
        event_del(t->wr_ev);
    if (t->timers)
        event_del(&t->timers->ev);
    if (!l->lost_head)
        event_active(&l->lost_ev, EV_TIMEOUT, 0);
    *l->lost_tail = t;
    l->lost_tail = &t->lost_next;
}

static void run_lost(evs_transport *t)
{
    evs_worker *w = t->worker;

    if (t->prev)
        t->prev->next = t->next;
    else
        w->transports.head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
    if (t->closed_hook)
        t->closed_hook(t, t->closed_hook_arg);
    t->lost = true;
    /* As asyncio's SSL transport: a protocol that never got connection_made
     * (a failed or timed-out handshake) hears nothing of the end either;
     * its ctx may still be the server's argument, not a connection's state. */
    if (t->proto->connection_lost && (t->made || t->lost_unmade))
        t->proto->connection_lost(t, t->error, t->ctx);
    /* asyncio closes the socket after connection_lost, so peername and
     * friends still work inside it. */
    close(t->fd);
    if (t->wfd >= 0 && t->wfd != t->fd)
        close(t->wfd);
    t->fd = t->wfd = -1;
    evs__transport_unref(t);
}

/* Run the connection_lost calls due, in the order they were scheduled;
 * those scheduled meanwhile run on the next loop turn. */
static void lost_cb(evutil_socket_t fd, short what, void *arg)
{
    evs__tlist *l = &((evs_worker *)arg)->transports;
    evs_transport *t = l->lost_head;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    l->lost_head = NULL;
    l->lost_tail = &l->lost_head;
    while (t) {
        evs_transport *next = t->lost_next;

        t->lost_next = NULL;
        run_lost(t);
        t = next;
    }
}

/* Throw away what was not sent: the queue, and plaintext a TLS handshake
 * holds. A drain waiting for it learns it was dropped. */
static void drop_unsent(evs_transport *t)
{
    size_t queued = evs__transport_queued(t);

    if (queued > 0) {
        t->dropped = true;
        account(t, queued, 0);
        evbuffer_drain(t->out, queued);
    }
    if (t->tls && evs__tls_pending(t) > 0) {
        t->dropped = true;
        evs__tls_drop_pending(t);
    }
}

/* A fatal error: drop the buffer and report @err in connection_lost. */
void evs__transport_fatal(evs_transport *t, int err)
{
    if (t->lost_scheduled)
        return;
    evs__debug("connection error: %s", evs_strerror(err));
    t->closing = true;
    t->error = err;
    drop_unsent(t);
    schedule_lost(t);
}

void evs_transport_close(evs_transport *t)
{
    if (t->closing)
        return;
    t->closing = true;
    if (t->tls && evs__tls_close_after_handshake(t))
        return; /* evs__transport_finish_close once it is done */
    evs__transport_finish_close(t);
}

void evs__transport_finish_close(evs_transport *t)
{
    event_del(&t->rd_ev);
    if (t->tls) {
        /* Plaintext held for a TLS 1.2 server's renegotiation cannot go
         * out once we stop reading: say it was dropped (a parked drain
         * and connection_lost get -EPIPE), do not pretend. */
        if (evs__tls_pending(t) > 0) {
            t->dropped = true;
            if (t->error == 0)
                t->error = -EPIPE;
        }
        evs__tls_close(t); /* queues close_notify, bounds the flush */
    }
    if (evs__transport_queued(t) == 0)
        schedule_lost(t);
    /* else write_cb finishes the close once the buffer is flushed */
}

void evs_transport_abort(evs_transport *t)
{
    if (t->lost_scheduled)
        return;
    t->closing = true;
    drop_unsent(t);
    schedule_lost(t);
}

bool evs_transport_is_closing(const evs_transport *t)
{
    return t->closing;
}

void evs__transport_abort_all(evs_worker *w)
{
    evs_transport *t;

    for (t = w->transports.head; t; t = t->next)
        evs_transport_abort(t);
}

/* --- flow control ------------------------------------------------------ */

void evs__transport_maybe_pause(evs_transport *t)
{
    if (t->protocol_paused || evs_transport_get_write_buffer_size(t) <= t->high)
        return;
    t->protocol_paused = true;
    if (t->proto->pause_writing) {
        evs__transport_ref(t);
        t->proto->pause_writing(t, t->ctx);
        evs__transport_unref(t);
    }
}

void evs__transport_maybe_resume(evs_transport *t)
{
    if (!t->protocol_paused || evs_transport_get_write_buffer_size(t) > t->low)
        return;
    t->protocol_paused = false;
    if (t->proto->resume_writing) {
        evs__transport_ref(t);
        t->proto->resume_writing(t, t->ctx);
        evs__transport_unref(t);
    }
}

size_t evs_transport_get_write_buffer_size(const evs_transport *t)
{
    return evs__transport_queued(t) + (t->tls ? evs__tls_pending(t) : 0);
}

void evs_transport_get_write_buffer_limits(const evs_transport *t, size_t *low, size_t *high)
{
    if (low)
        *low = t->low;
    if (high)
        *high = t->high;
}

int evs_transport_set_write_buffer_limits(evs_transport *t, ssize_t high, ssize_t low)
{
    int rc = evs__watermarks(high, low, &t->high, &t->low);

    if (rc == 0)
        evs__transport_maybe_pause(t);
    return rc;
}

/* --- reading ----------------------------------------------------------- */

void evs__transport_eof(evs_transport *t)
{
    bool keep_open = false;

    t->eof_received = true;
    event_del(&t->rd_ev);
    if (t->proto->eof_received)
        keep_open = t->proto->eof_received(t, t->ctx);
    if (!keep_open)
        evs_transport_close(t);
}

/* One recv() into the protocol's buffer or the worker's scratch buffer.
 * @return bytes read, 0 at EOF, -EAGAIN, or another negative errno. */
static ssize_t read_once(evs_transport *t, size_t *capacity)
{
    const evs_protocol *p = t->proto;
    void *buf;
    size_t len;
    ssize_t n;

    if (p->get_buffer && p->buffer_updated) {
        len = 0;
        buf = p->get_buffer(t, 65536, &len, t->ctx);
        if (!buf || len == 0)
            return -ENOBUFS;
    } else {
        buf = t->worker->rbuf;
        len = t->worker->rbuf_size;
    }
    *capacity = len;
    do
        n = t->is_pipe ? read(t->fd, buf, len) : recv(t->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (n > 0) {
        evs__transport_count_in(t, (size_t)n);
        if (p->get_buffer && p->buffer_updated)
            p->buffer_updated(t, (size_t)n, t->ctx);
        else if (p->data_received)
            p->data_received(t, buf, (size_t)n, t->ctx);
    }
    /* At EOF the buffer from get_buffer is simply not used: like asyncio,
     * buffer_updated only ever reports bytes that were written (n > 0). */
    return n;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    if (t->tls) {
        evs__tls_readable(t);
        return;
    }
    evs__transport_ref(t);
    for (int i = 0; i < READS_PER_EVENT; i++) {
        size_t capacity = 0;
        ssize_t n = read_once(t, &capacity);

        if (n == -EAGAIN)
            break;
        if (n < 0) {
            evs__transport_fatal(t, (int)n);
            break;
        }
        if (n == 0) {
            if (!t->closing)
                evs__transport_eof(t);
            break;
        }
        /* A short read means the socket is empty for now; a TLS layer set
         * up by the last callback (PROXY header, then TLS) reads from now. */
        if ((size_t)n < capacity || t->closing || t->paused || t->tls)
            break;
    }
    evs__transport_unref(t);
}

void evs_transport_pause_reading(evs_transport *t)
{
    if (t->closing || t->paused)
        return;
    t->paused = true;
    /* After EOF nothing is read: rd_ev is gone, or is a write-only pipe's
     * watch for its reader leaving, which must stay (resume would not
     * bring it back). */
    if (!evs__tls_handshaking(t) && !t->eof_received)
        event_del(&t->rd_ev);
}

void evs_transport_resume_reading(evs_transport *t)
{
    if (t->closing || !t->paused)
        return;
    t->paused = false;
    if (t->timers)
        evs__timeouts_resumed(t);
    if (!t->eof_received) {
        event_add(&t->rd_ev, NULL);
        /* Plaintext may wait inside OpenSSL with nothing left on the
         * socket to wake us: look at once. */
        if (t->tls)
            event_active(&t->rd_ev, EV_READ, 0);
    }
}

bool evs_transport_is_reading(const evs_transport *t)
{
    return !t->paused && !t->closing;
}

/* --- writing ----------------------------------------------------------- */

static void flushed(evs_transport *t)
{
    if (t->wr_ev)
        event_del(t->wr_ev);
    if (t->eof_pending && !t->eof_sent) {
        t->eof_sent = true;
        if (t->is_pipe) {
            /* A pipe's write end is closed; a write-only pipe is then done. */
            if (t->wfd != t->fd) {
                close(t->wfd);
                t->wfd = -1;
            } else {
                t->closing = true;
            }
        } else if (shutdown(t->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
            evs__transport_fatal(t, -errno);
        }
    }
    /* A close that waits for the first handshake ends after it
     * (evs__transport_finish_close), not when its flight is out. */
    if (t->closing && !(t->tls && evs__tls_close_waits(t)))
        schedule_lost(t);
}

/* One write of @iov to the socket (or pipe), retried on EINTR. With
 * MSG_NOSIGNAL rather than writev(), which would raise SIGPIPE in an
 * embedding program that has not ignored it. One buffer, the usual case
 * (an echo, a TLS record), goes through send(): the kernel takes it
 * without sendmsg()'s copies of a message header and an iovec array. */
static ssize_t send_iov(evs_transport *t, const struct iovec *iov, int iovcnt)
{
    ssize_t n;

    if (iovcnt > IOV_MAX)
        iovcnt = IOV_MAX;
    do {
        if (t->is_pipe) {
            n = evs__pipe_writev(t->wfd, iov, iovcnt);
        } else if (iovcnt == 1) {
            n = send(t->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
            n = sendmsg(t->fd, &msg, MSG_NOSIGNAL);
        }
    } while (n < 0 && errno == EINTR);
    return n;
}

/* Send as much of the queue as the socket takes. */
static ssize_t flush_queue(evs_transport *t)
{
    struct iovec iov[64];
    int n = evbuffer_peek(t->out, -1, NULL, (struct evbuffer_iovec *)iov, 64);
    ssize_t sent = send_iov(t, iov, n > 64 ? 64 : n);

    if (sent > 0) {
        evbuffer_drain(t->out, (size_t)sent);
        account(t, (size_t)sent, 0);
    }
    return sent;
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;
    ssize_t n;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    n = flush_queue(t);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        evs__transport_fatal(t, -errno);
        return;
    }
    evs__counter_add(&t->worker->bytes_out, (uint64_t)n);
    t->bytes_out += (uint64_t)n;
    mark_write(t);
    evs__transport_ref(t);
    if (evs__transport_queued(t) == 0)
        flushed(t);
    evs__transport_maybe_resume(t);
    evs__transport_unref(t);
}

static int write_check(const evs_transport *t)
{
    if (t->lost_scheduled && t->error)
        return t->error;
    if (t->closing || t->eof_pending)
        return -EPIPE;
    return 0;
}

/* Bytes queued on this worker, for the runtime's write budget. */
static void account(evs_transport *t, size_t before, size_t after)
{
    _Atomic uint64_t *b = &t->worker->buffered;
    uint64_t v = atomic_load_explicit(b, memory_order_relaxed);

    v = after >= before ? v + (after - before) : v - (before - after);
    atomic_store_explicit(b, v, memory_order_relaxed);
}

/* The write queue and its event, made on first need and kept. */
static int make_queue(evs_transport *t)
{
    if (!t->out && !(t->out = evbuffer_new()))
        return -ENOMEM;
    if (!t->wr_ev &&
        !(t->wr_ev = event_new(t->worker->base, t->wfd, EV_WRITE | EV_PERSIST, write_cb, t)))
        return -ENOMEM;
    return 0;
}

/* The socket took @n of @total bytes directly; queue what is left. */
static int queue_rest(evs_transport *t, const struct iovec *iov, int iovcnt, size_t skip)
{
    size_t before = evs__transport_queued(t);

    if (make_queue(t) < 0)
        return -ENOMEM;
    /* The write timeout measures from when bytes start waiting. */
    if (before == 0)
        mark_write(t);
    for (int i = 0; i < iovcnt; i++) {
        size_t len = iov[i].iov_len;

        if (skip >= len) {
            skip -= len;
            continue;
        }
        if (evbuffer_add(t->out, (const char *)iov[i].iov_base + skip, len - skip) < 0)
            return -ENOMEM;
        skip = 0;
    }
    account(t, before, evs__transport_queued(t));
    event_add(t->wr_ev, NULL);
    return 0;
}

/* Refuse to buffer past the connection's cap or the runtime's budget. */
static int check_memory(evs_transport *t)
{
    size_t size = evs_transport_get_write_buffer_size(t);
    uint64_t budget = t->worker->rt ? evs__runtime_write_budget(t->worker->rt) : 0;

    if (t->max_write_buffer && size > t->max_write_buffer) {
        evs__warn("connection aborted: %zu bytes queued, over its cap of %zu (the handler "
                  "writes without draining)", size, t->max_write_buffer);
        evs__transport_fatal(t, -ENOBUFS);
        return -ENOBUFS;
    }
    if (budget && size > 0 && evs__runtime_buffered(t->worker->rt) > budget) {
        evs__warn("connection aborted: the process-wide write budget (%llu bytes) is used up",
                  (unsigned long long)budget);
        evs__transport_fatal(t, -ENOBUFS);
        return -ENOBUFS;
    }
    return 0;
}

void evs_transport_set_max_write_buffer(evs_transport *t, size_t bytes)
{
    t->max_write_buffer = bytes;
}

int evs__transport_send(evs_transport *t, const struct iovec *iov, int iovcnt, size_t total)
{
    ssize_t n = 0;
    int err;

    if (total == 0)
        return 0;
    if (evs__transport_queued(t) == 0) {
        /* Nothing queued: try the socket first. */
        n = send_iov(t, iov, iovcnt);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                err = -errno;
                evs__transport_fatal(t, err);
                return err;
            }
            n = 0;
        }
        evs__counter_add(&t->worker->bytes_out, (uint64_t)n);
        t->bytes_out += (uint64_t)n;
        if (n > 0)
            mark_write(t);
        if ((size_t)n == total)
            return 0;
    }
    return queue_rest(t, iov, iovcnt, (size_t)n);
}

int evs_transport_writelines(evs_transport *t, const struct iovec *iov, int iovcnt)
{
    size_t total = 0;
    int err = write_check(t);

    if (err)
        return err;
    if (iovcnt < 0 || (iovcnt > 0 && !iov))
        return -EINVAL;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return 0;
    err = t->tls ? evs__tls_write(t, iov, iovcnt) : evs__transport_send(t, iov, iovcnt, total);
    if (err)
        return err;
    /* Mostly the socket took it all: nothing to cap, nothing to pause. */
    if (evs_transport_get_write_buffer_size(t) == 0)
        return 0;
    if ((err = check_memory(t)) < 0)
        return err;
    evs__transport_maybe_pause(t);
    return 0;
}

int evs_transport_write(evs_transport *t, const void *data, size_t len)
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};

    return evs_transport_writelines(t, &iov, 1);
}

int evs_transport_write_eof(evs_transport *t)
{
    if (t->closing)
        return -EPIPE;
    if (!evs_transport_can_write_eof(t))
        return -ENOTSUP; /* TLS has no half-close here (asyncio's neither);
                          * nor has one fd used both ways that is no socket */
    if (t->eof_pending)
        return 0;
    t->eof_pending = true;
    if (evs__transport_queued(t) == 0)
        flushed(t);
    return 0;
}

bool evs_transport_can_write_eof(const evs_transport *t)
{
    /* A pipe can end its writing by closing its write end (or, write-only,
     * the whole transport); a tty read and written through one fd cannot. */
    if (t->is_pipe)
        return t->wfd != t->fd || t->eof_received;
    return t->tls == NULL;
}

/* --- the rest ---------------------------------------------------------- */

void evs_transport_set_protocol(evs_transport *t, const evs_protocol *proto, void *ctx)
{
    if (!proto)
        return;
    t->proto = proto;
    t->ctx = ctx;
}

const evs_protocol *evs_transport_get_protocol(const evs_transport *t, void **ctx)
{
    if (ctx)
        *ctx = t->ctx;
    return t->proto;
}

int evs_transport_get_fd(const evs_transport *t)
{
    return t->fd;
}

evs_worker *evs_transport_worker(const evs_transport *t)
{
    return t->worker;
}

void evs__transport_deliver(evs_transport *t, const void *data, size_t len)
{
    const evs_protocol *p = t->proto;
    const char *in = data;

    while (len > 0 && !t->closing) {
        if (p->get_buffer && p->buffer_updated) {
            size_t room = 0;
            void *buf = p->get_buffer(t, len, &room, t->ctx);
            if (!buf || room == 0) {
                evs__transport_fatal(t, -ENOBUFS);
                return;
            }
            if (room > len)
                room = len;
            memcpy(buf, in, room);
            p->buffer_updated(t, room, t->ctx);
            in += room;
            len -= room;
        } else {
            if (p->data_received)
                p->data_received(t, in, len, t->ctx);
            return;
        }
    }
}

int evs_transport_get_proxy_peername(const evs_transport *t, struct sockaddr_storage *addr,
                                     socklen_t *len)
{
    *len = sizeof *addr;
    if (!t->proxied)
        return -ENOENT;
    if (t->fd < 0)
        return -ENOTCONN;
    return getpeername(t->fd, (struct sockaddr *)addr, len) < 0 ? -errno : 0;
}

int evs_transport_get_proxy_tlv(const evs_transport *t, uint8_t type, const void **value)
{
    const uint8_t *p = t->proxied ? t->proxied->tlv : NULL;
    size_t n = t->proxied ? t->proxied->tlvlen : 0;

    for (size_t off = 0; p && off + 3 <= n;) {
        size_t vlen = (size_t)p[off + 1] << 8 | p[off + 2];
        if (p[off] == type) {
            if (value)
                *value = p + off + 3;
            return (int)vlen;
        }
        off += 3 + vlen;
    }
    return -ENOENT;
}

int evs_transport_get_peername(const evs_transport *t, struct sockaddr_storage *addr,
                               socklen_t *len)
{
    if (t->proxied) {
        /* The real client, as the proxy said. */
        memcpy(addr, &t->proxied->src, t->proxied->srclen);
        *len = t->proxied->srclen;
        return 0;
    }
    *len = sizeof *addr;
    if (t->fd < 0)
        return -ENOTCONN;
    if (getpeername(t->fd, (struct sockaddr *)addr, len) < 0)
        return -errno;
    return 0;
}

int evs_transport_get_sockname(const evs_transport *t, struct sockaddr_storage *addr,
                               socklen_t *len)
{
    *len = sizeof *addr;
    if (t->fd < 0)
        return -ENOTCONN;
    if (getsockname(t->fd, (struct sockaddr *)addr, len) < 0)
        return -errno;
    return 0;
}
