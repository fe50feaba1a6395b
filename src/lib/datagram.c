/*
 * datagram.c - datagram endpoints (UDP over IPv4/IPv6, Unix datagram
 * sockets): asyncio's DatagramTransport on raw libevent events.
 *
 * Like the stream transport, sendto() tries the socket at once and queues
 * only what the kernel refused for lack of room; the queue keeps each
 * datagram with its address and is flushed in order by a write event.
 * connection_lost runs from its own event (lost_ev), never inside the call
 * that caused it, and a reference is held around every protocol callback.
 */
#include "internal.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include <evstream/datagram.h>

#include "worker.h"

/* Datagrams read per readiness event, so one busy endpoint cannot starve
 * the worker's other connections. */
#define DGRAMS_PER_EVENT 32
#define MAX_DATAGRAM_DEFAULT 65536u
/* Above any datagram a socket takes, and the receive buffer is this big. */
#define MAX_DATAGRAM_LIMIT (16u << 20)

typedef struct pending {
    struct pending *next;
    size_t len;
    socklen_t addrlen; /* 0: the connected address */
    struct sockaddr_storage addr;
    char data[];
} pending;

struct evs_datagram {
    evs__closable closable; /* the worker aborts it when it stops */
    evs_worker *worker;
    int fd;
    const evs_datagram_protocol *proto;
    void *ctx;

    struct event rd_ev;
    struct event wr_ev;
    struct event lost_ev;

    pending *head;
    pending *tail;
    size_t queued; /* bytes of the queued datagrams */
    size_t high;
    size_t low;

    char *rbuf;
    size_t rbuf_size; /* max_datagram + 1, to see truncation */

    bool connected;
    bool full_is_per_peer; /* unconnected Unix: EAGAIN means the receiver's queue */
    bool errqueue; /* IP_RECVERR/IPV6_RECVERR is on (IP sockets only) */
    struct sockaddr_storage peer;
    socklen_t peerlen;

    int refs;
    int error;
    bool paused;
    bool closing;
    bool protocol_paused;
    bool lost_scheduled;
    bool lost;
};

static void read_cb(evutil_socket_t fd, short what, void *arg);
static void write_cb(evutil_socket_t fd, short what, void *arg);
static void lost_cb(evutil_socket_t fd, short what, void *arg);

static void ref(evs_datagram *d)
{
    d->refs++;
}

static void drop_queue(evs_datagram *d)
{
    while (d->head) {
        pending *p = d->head;
        d->head = p->next;
        free(p);
    }
    d->tail = NULL;
    d->queued = 0;
}

static void unref(evs_datagram *d)
{
    if (--d->refs > 0)
        return;
    event_del(&d->rd_ev);
    event_del(&d->wr_ev);
    event_del(&d->lost_ev);
    drop_queue(d);
    if (d->fd >= 0)
        close(d->fd);
    free(d->rbuf);
    free(d);
}

/* --- callbacks into the protocol ---------------------------------------- */

static void report_error(evs_datagram *d, int err)
{
    if (d->lost)
        return;
    evs__debug("datagram endpoint: %s", evs_strerror(err));
    if (d->proto->error_received) {
        ref(d);
        d->proto->error_received(d, err, d->ctx);
        unref(d);
    }
}

static void schedule_lost(evs_datagram *d);

static void abort_closable(evs__closable *c)
{
    evs_datagram_abort(EVS_CONTAINER_OF(c, evs_datagram, closable));
}

static void schedule_lost(evs_datagram *d)
{
    if (d->lost_scheduled)
        return;
    d->lost_scheduled = true;
    d->closing = true;
    event_del(&d->rd_ev);
    event_del(&d->wr_ev);
    event_active(&d->lost_ev, EV_TIMEOUT, 0);
}

static void lost_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_datagram *d = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    d->lost = true;
    evs__worker_untrack(d->worker, &d->closable);
    if (d->proto->connection_lost)
        d->proto->connection_lost(d, d->error, d->ctx);
    close(d->fd);
    d->fd = -1;
    unref(d);
}

static void fatal(evs_datagram *d, int err)
{
    if (d->lost_scheduled)
        return;
    d->error = err;
    drop_queue(d);
    schedule_lost(d);
}

static void maybe_pause(evs_datagram *d)
{
    if (d->protocol_paused || d->queued <= d->high)
        return;
    d->protocol_paused = true;
    if (d->proto->pause_writing) {
        ref(d);
        d->proto->pause_writing(d, d->ctx);
        unref(d);
    }
}

static void maybe_resume(evs_datagram *d)
{
    if (!d->protocol_paused || d->queued > d->low)
        return;
    d->protocol_paused = false;
    if (d->proto->resume_writing) {
        ref(d);
        d->proto->resume_writing(d, d->ctx);
        unref(d);
    }
}

/* --- creating ------------------------------------------------------------- */

/* Ask Linux to report ICMP errors (port/host unreachable...) through the
 * error queue, for unconnected sockets too. An IPv6 socket that is not
 * v6-only also serves IPv4 peers, whose ICMPv4 errors need IP_RECVERR. */
static bool enable_recverr(int fd, int family)
{
    int one = 1;

    if (family == AF_INET)
        return setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one) == 0;
    if (family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof one) < 0)
            return false;
        setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one); /* v6-only: not needed */
        return true;
    }
    return false;
}

int evs_datagram_new(int fd, size_t max_datagram, const evs_datagram_protocol *proto, void *ctx,
                     evs_datagram **out)
{
    evs_worker *w = evs_worker_current();
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    evs_datagram *d;
    int flags, type = 0;
    socklen_t tl = sizeof type;

    if (!w || !proto || fd < 0 || max_datagram > MAX_DATAGRAM_LIMIT) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    if (w->stopping) { /* see evs__transport_create */
        close(fd);
        return -ESHUTDOWN;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        int err = errno == ENOTSOCK || type != SOCK_DGRAM ? -EINVAL : -errno;
        close(fd);
        return err;
    }
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (max_datagram == 0)
        max_datagram = MAX_DATAGRAM_DEFAULT;
    d = calloc(1, sizeof *d);
    if (!d || !(d->rbuf = malloc(max_datagram + 1))) {
        free(d);
        close(fd);
        return -ENOMEM;
    }
    d->rbuf_size = max_datagram + 1;
    d->worker = w;
    d->closable.abort = abort_closable;
    evs__worker_track(w, &d->closable);
    d->fd = fd;
    d->proto = proto;
    d->ctx = ctx;
    d->refs = 1; /* dropped after connection_lost */
    d->high = EVS_WRITE_HIGH_WATER_DEFAULT;
    d->low = EVS_WRITE_LOW_WATER_DEFAULT;
    d->peerlen = sizeof d->peer;
    if (getpeername(fd, (struct sockaddr *)&d->peer, &d->peerlen) == 0)
        d->connected = true;
    else
        d->peerlen = 0;
    d->full_is_per_peer = ss.ss_family == AF_UNIX && !d->connected;
    d->errqueue = enable_recverr(fd, ss.ss_family);
    event_assign(&d->rd_ev, w->base, fd, EV_READ | EV_PERSIST, read_cb, d);
    event_assign(&d->wr_ev, w->base, fd, EV_WRITE | EV_PERSIST, write_cb, d);
    event_assign(&d->lost_ev, w->base, -1, 0, lost_cb, d);
    if (out)
        *out = d;
    ref(d);
    if (proto->connection_made)
        proto->connection_made(d, ctx);
    if (!d->closing && !d->paused)
        event_add(&d->rd_ev, NULL);
    unref(d);
    return 0;
}

int evs_datagram_open(const evs_datagram_options *o, const evs_datagram_protocol *proto,
                      void *ctx, evs_datagram **out)
{
    const struct sockaddr *any;
    int fd, one = 1, family, rc;
    char path[sizeof ((struct sockaddr_un *)0)->sun_path + 1] = "";
    const char *made = NULL; /* the socket file bind made */

    if (!o || !proto || !evs_worker_current() || o->max_datagram > MAX_DATAGRAM_LIMIT)
        return -EINVAL; /* before a bind makes a socket file */
    any = o->local_addr ? o->local_addr : o->remote_addr;
    if (!any)
        return -EINVAL;
    family = any->sa_family;
    if (o->local_addr && o->remote_addr && o->remote_addr->sa_family != family)
        return -EINVAL;
    if (family != AF_INET && family != AF_INET6 && family != AF_UNIX)
        return -EAFNOSUPPORT;
    fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (o->reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (o->allow_broadcast && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0)
        goto fail;
    if (o->local_addr) {
        if (family == AF_UNIX) {
            /* A stale socket file from an earlier run would make bind fail;
             * anything else that is not a socket is left alone. */
            const struct sockaddr_un *un = (const struct sockaddr_un *)o->local_addr;
            size_t off = offsetof(struct sockaddr_un, sun_path), n;
            struct stat st;
            /* The kernel takes a sun_path that fills the field with no NUL:
             * copy it out, bounded by the address length, before stat. */
            n = o->local_addrlen > off ? (size_t)o->local_addrlen - off : 0;
            if (n > sizeof un->sun_path)
                n = sizeof un->sun_path;
            memcpy(path, un->sun_path, n);
            path[n] = '\0';
            if (path[0] && stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
                unlink(path);
        }
        if (bind(fd, o->local_addr, o->local_addrlen) < 0)
            goto fail;
        if (family == AF_UNIX && path[0])
            made = path; /* ours until the endpoint exists */
    }
    if (o->remote_addr) {
        do
            rc = connect(fd, o->remote_addr, o->remote_addrlen);
        while (rc < 0 && errno == EINTR);
        if (rc < 0)
            goto fail;
    }
    rc = evs_datagram_new(fd, o->max_datagram, proto, ctx, out);
    if (rc < 0 && made)
        unlink(made); /* a failed open leaves no socket file behind */
    return rc;
fail:
    rc = -errno;
    close(fd);
    if (made)
        unlink(made);
    return rc;
}

/* --- ending ---------------------------------------------------------------- */

void evs_datagram_close(evs_datagram *d)
{
    if (d->closing)
        return;
    d->closing = true;
    event_del(&d->rd_ev);
    if (!d->head)
        schedule_lost(d);
    /* else write_cb finishes the close once the queue is sent */
}

void evs_datagram_abort(evs_datagram *d)
{
    if (d->lost_scheduled)
        return;
    drop_queue(d);
    schedule_lost(d);
}

bool evs_datagram_is_closing(const evs_datagram *d)
{
    return d->closing;
}

/* --- reading --------------------------------------------------------------- */

/* Drain the error queue: one error_received per ICMP error. Reading it
 * also clears the socket's pending error, so the same error does not come
 * back from the next recvmsg() or sendto(). Only on IP sockets: a Unix
 * socket ignores MSG_ERRQUEUE and would hand over (and lose) a real
 * datagram. @return how many errors it reported. */
static int read_errors(evs_datagram *d)
{
    int reported = 0;

    if (!d->errqueue)
        return 0;
    for (int i = 0; i < DGRAMS_PER_EVENT && !d->lost_scheduled; i++) {
        char cbuf[512];
        char dummy[1];
        struct iovec iov = {dummy, sizeof dummy};
        struct msghdr msg;
        struct cmsghdr *c;
        int err = 0;

        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        if (recvmsg(d->fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            break; /* EAGAIN: the queue is empty (or not supported) */
        for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
                (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
                struct sock_extended_err ee;
                memcpy(&ee, CMSG_DATA(c), sizeof ee);
                err = (int)ee.ee_errno;
            }
        }
        if (err) {
            report_error(d, -err);
            reported++;
        }
    }
    return reported;
}

/* With the error queue on, Linux also leaves each ICMP error pending on
 * the socket, and the next sendto() or recvmsg() fails with it whatever
 * its own peer: one peer's "port unreachable" would cost a reply to
 * another. So a failed call first drains the queue; when that reported
 * something, the failure was (most likely) that pending error and the
 * call is worth one more try. */
static bool failure_was_pending_icmp(evs_datagram *d, int err)
{
    return err != EAGAIN && err != EWOULDBLOCK && err != EINTR && read_errors(d) > 0;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_datagram *d = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    ref(d);
    if (!d->closing)
        read_errors(d);
    for (int i = 0; i < DGRAMS_PER_EVENT && !d->closing && !d->paused; i++) {
        struct sockaddr_storage from;
        struct iovec iov = {d->rbuf, d->rbuf_size};
        struct msghdr msg;
        ssize_t n;

        memset(&msg, 0, sizeof msg);
        msg.msg_name = &from;
        msg.msg_namelen = sizeof from;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        do
            n = recvmsg(d->fd, &msg, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK)
                break;
            if (err == ENOMEM || err == ENOBUFS || err == EBADF || err == EFAULT ||
                err == ENOTSOCK || err == EINVAL) {
                fatal(d, -err);
                break;
            }
            /* A pending socket error (ECONNREFUSED...): reported once, from
             * the error queue when there is one, and we go on. */
            if (!failure_was_pending_icmp(d, err))
                report_error(d, -err);
            continue;
        }
        if ((msg.msg_flags & MSG_TRUNC) || (size_t)n >= d->rbuf_size) {
            /* Bigger than max_datagram: dropped rather than delivered cut. */
            report_error(d, -EMSGSIZE);
            continue;
        }
        evs__counter_add(&d->worker->bytes_in, (uint64_t)n);
        if (d->proto->datagram_received)
            d->proto->datagram_received(d, d->rbuf, (size_t)n,
                                        msg.msg_namelen ? (struct sockaddr *)&from : NULL,
                                        msg.msg_namelen, d->ctx);
    }
    unref(d);
}

void evs_datagram_pause_reading(evs_datagram *d)
{
    if (d->closing || d->paused)
        return;
    d->paused = true;
    event_del(&d->rd_ev);
}

void evs_datagram_resume_reading(evs_datagram *d)
{
    if (d->closing || !d->paused)
        return;
    d->paused = false;
    event_add(&d->rd_ev, NULL);
}

bool evs_datagram_is_reading(const evs_datagram *d)
{
    return !d->paused && !d->closing;
}

/* --- writing --------------------------------------------------------------- */

/* Errors that concern one datagram (or a transient state): reported to
 * error_received while the endpoint lives on, as in the seed. */
static bool per_datagram_error(int err)
{
    switch (err) {
    case EMSGSIZE:
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case EACCES:
    case EPERM:
    case EADDRNOTAVAIL:
    case EAFNOSUPPORT:
    case EINVAL:
    case ENOENT:       /* a Unix path that does not exist */
    case ECONNRESET:
    case EPROTO:
    case ENOTCONN:
    case EDESTADDRREQ:
    case EPIPE:        /* a Unix receiver that shut down its reading side */
    case EPROTOTYPE:   /* a Unix path that is a stream socket */
    case ENOTDIR:      /* a Unix path through a file */
    case ELOOP:
    case ENAMETOOLONG:
    case ENOBUFS:      /* the interface's queue dropped it, as a network would */
        return true;
    default:
        return false;
    }
}

/* One sendto(), tried again after another peer's pending ICMP error.
 * @return 0 sent, -EAGAIN no room, or a negative errno. ENOBUFS (a full
 * interface queue) is not "no room": the socket stays writable, so a
 * queued datagram would be retried in a busy loop; it is reported and
 * dropped, as asyncio does. */
static int send_one(evs_datagram *d, const void *data, size_t len, const struct sockaddr *addr,
                    socklen_t addrlen)
{
    ssize_t n;
    int err = 0;

    for (int tries = 0;; tries++) {
        do
            n = sendto(d->fd, data, len, MSG_NOSIGNAL, addrlen ? addr : NULL, addrlen);
        while (n < 0 && errno == EINTR);
        err = n < 0 ? errno : 0;
        if (n >= 0 || tries > 0 || d->lost_scheduled || !failure_was_pending_icmp(d, err))
            break;
    }
    if (n < 0)
        return err == EWOULDBLOCK ? -EAGAIN : -err;
    evs__counter_add(&d->worker->bytes_out, (uint64_t)n);
    return 0;
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_datagram *d = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    ref(d);
    while (d->head && !d->lost_scheduled) {
        pending *p = d->head;
        int rc = send_one(d, p->data, p->len, (struct sockaddr *)&p->addr, p->addrlen);

        if (rc == -EAGAIN)
            break;
        d->head = p->next;
        if (!d->head)
            d->tail = NULL;
        d->queued -= p->len;
        free(p);
        if (rc < 0) {
            if (!per_datagram_error(-rc)) {
                fatal(d, rc);
                break;
            }
            report_error(d, rc);
        }
    }
    if (!d->head && !d->lost_scheduled) {
        event_del(&d->wr_ev);
        if (d->closing)
            schedule_lost(d);
    }
    if (!d->lost_scheduled)
        maybe_resume(d);
    unref(d);
}

static bool same_address(const struct sockaddr *a, socklen_t alen, const struct sockaddr_storage *b,
                         socklen_t blen)
{
    if (a->sa_family != b->ss_family)
        return false;
    switch (a->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return alen >= sizeof *x && x->sin_port == y->sin_port &&
               x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return alen >= sizeof *x && x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    default: {
        /* Unix: compare the path bytes (trailing NULs aside). */
        size_t off = offsetof(struct sockaddr_un, sun_path);
        const char *x = ((const struct sockaddr_un *)a)->sun_path;
        const char *y = ((const struct sockaddr_un *)b)->sun_path;
        size_t xl = alen > off ? alen - off : 0, yl = blen > off ? blen - off : 0;
        while (xl && x[0] && !x[xl - 1])
            xl--;
        while (yl && y[0] && !y[yl - 1])
            yl--;
        return xl == yl && memcmp(x, y, xl) == 0;
    }
    }
}

int evs_datagram_sendto(evs_datagram *d, const void *data, size_t len,
                        const struct sockaddr *addr, socklen_t addrlen)
{
    pending *p;
    int rc;

    if (d->lost_scheduled && d->error)
        return d->error;
    if (d->closing)
        return -EPIPE;
    if (len > 0 && !data)
        return -EINVAL;
    if (addr) {
        if (addrlen < sizeof(sa_family_t) || addrlen > sizeof(struct sockaddr_storage))
            return -EINVAL;
        /* The seed: on a connected endpoint the address must be None or
         * the remote address. */
        if (d->connected) {
            if (!same_address(addr, addrlen, &d->peer, d->peerlen))
                return -EISCONN;
            addr = NULL;
            addrlen = 0;
        }
    } else {
        addrlen = 0;
        if (!d->connected)
            return -EDESTADDRREQ;
    }
    if (!d->head) {
        rc = send_one(d, data, len, addr, addrlen);
        if (rc == 0)
            return 0;
        if (d->lost_scheduled) /* aborted by an error_received it reported */
            return d->error ? d->error : -EPIPE;
        /* A Unix receiver that does not read fills its own queue, not ours:
         * the socket stays writable, so a queued datagram would be retried
         * in a busy loop and hold up every other peer's. It is dropped. */
        if (rc == -EAGAIN && d->full_is_per_peer) {
            report_error(d, rc);
            return 0;
        }
        if (rc != -EAGAIN) {
            if (!per_datagram_error(-rc)) {
                fatal(d, rc);
                return rc;
            }
            report_error(d, rc);
            return 0;
        }
    }
    p = malloc(sizeof *p + len);
    if (!p)
        return -ENOMEM;
    p->next = NULL;
    p->len = len;
    p->addrlen = addrlen;
    if (addrlen)
        memcpy(&p->addr, addr, addrlen);
    if (len)
        memcpy(p->data, data, len);
    if (d->tail)
        d->tail->next = p;
    else
        d->head = p;
    d->tail = p;
    d->queued += len;
    event_add(&d->wr_ev, NULL);
    maybe_pause(d);
    return 0;
}

/* --- flow control and the rest --------------------------------------------- */

size_t evs_datagram_get_write_buffer_size(const evs_datagram *d)
{
    return d->queued;
}

void evs_datagram_get_write_buffer_limits(const evs_datagram *d, size_t *low, size_t *high)
{
    if (low)
        *low = d->low;
    if (high)
        *high = d->high;
}

int evs_datagram_set_write_buffer_limits(evs_datagram *d, ssize_t high, ssize_t low)
{
    int rc = evs__watermarks(high, low, &d->high, &d->low);

    if (rc == 0)
        maybe_pause(d);
    return rc;
}

void evs_datagram_set_protocol(evs_datagram *d, const evs_datagram_protocol *proto, void *ctx)
{
    if (!proto)
        return;
    d->proto = proto;
    d->ctx = ctx;
}

const evs_datagram_protocol *evs_datagram_get_protocol(const evs_datagram *d, void **ctx)
{
    if (ctx)
        *ctx = d->ctx;
    return d->proto;
}

int evs_datagram_get_fd(const evs_datagram *d)
{
    return d->fd;
}

int evs_datagram_get_sockname(const evs_datagram *d, struct sockaddr_storage *addr,
                              socklen_t *len)
{
    *len = sizeof *addr;
    if (d->fd < 0)
        return -ENOTCONN;
    return getsockname(d->fd, (struct sockaddr *)addr, len) < 0 ? -errno : 0;
}

int evs_datagram_get_peername(const evs_datagram *d, struct sockaddr_storage *addr,
                              socklen_t *len)
{
    if (!d->connected) {
        *len = 0;
        return -ENOTCONN;
    }
    memcpy(addr, &d->peer, d->peerlen);
    *len = d->peerlen;
    return 0;
}

evs_worker *evs_datagram_worker(const evs_datagram *d)
{
    return d->worker;
}
