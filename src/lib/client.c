/*
 * client.c - open_connection / open_unix_connection from a task, and
 * evs_run(), the seed's asyncio.run.
 */
#include "internal.h"

#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/util.h>

#include "fiber.h"
#include "server.h"
#include "stream.h"
#include "tls.h"
#include "transport.h"

#define DEFAULT_CONNECT_TIMEOUT 60.0

/* A name lookup in flight. Heap-allocated: if the task gives up
 * (cancel, timeout), the callback still arrives and frees it. */
typedef struct lookup {
    evs_task *task;
    bool done;
    bool orphaned;
    int result;
    struct evutil_addrinfo *res;
} lookup;

static void lookup_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    lookup *l = arg;

    if (l->orphaned) {
        if (res)
            evutil_freeaddrinfo(res);
        free(l);
        return;
    }
    l->done = true;
    l->result = result;
    l->res = res;
    if (l->task)
        evs__task_wake(l->task, 0);
}

static int resolve(evs_worker *w, const char *host, uint16_t port, struct evutil_addrinfo **out,
                   double *began)
{
    struct evutil_addrinfo hints;
    struct evdns_base *dns = evs__worker_dns(w);
    struct evdns_getaddrinfo_request *req;
    char service[8];
    lookup *l;
    int rc = 0;

    if (!dns)
        return -ENOMEM;
    l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(service, sizeof service, "%u", (unsigned)port);
    /* Numeric hosts and /etc/hosts entries answer at once, inside this call. */
    req = evdns_getaddrinfo(dns, host, service, &hints, lookup_cb, l);
    if (!l->done) {
        l->task = evs_task_current();
        rc = evs__task_park_in_call(NULL, began);
        if (!l->done) {
            l->orphaned = true;
            if (req)
                evdns_getaddrinfo_cancel(req);
            return rc < 0 ? rc : -EINTR;
        }
    }
    if (l->result != 0) {
        evs__debug("cannot resolve '%s': %s", host, evutil_gai_strerror(l->result));
        rc = l->result == EVUTIL_EAI_CANCEL ? -ECANCELED : -EHOSTUNREACH;
        free(l);
        return rc;
    }
    *out = l->res;
    free(l);
    return 0;
}

static void writable_cb(evutil_socket_t fd, short what, void *arg)
{
    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    evs__task_wake(arg, 0);
}

static int bind_local(int fd, int family, const evs_connect_options *o)
{
    struct addrinfo hints, *res;
    char port[8];
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
    snprintf(port, sizeof port, "%u", (unsigned)o->local_port);
    if (getaddrinfo(o->local_host, port, &hints, &res) != 0)
        return -EADDRNOTAVAIL;
    rc = bind(fd, res->ai_addr, res->ai_addrlen) < 0 ? -errno : 0;
    freeaddrinfo(res);
    return rc;
}

/* Connect a non-blocking socket, parking until it is writable.
 * @return the connected fd or a negative errno. */
static int connect_one(evs_worker *w, int family, const struct sockaddr *addr, socklen_t len,
                       const evs_connect_options *o, double timeout, double *began)
{
    double left;
    struct event ev;
    int fd, rc, soerr = 0;
    socklen_t sl = sizeof soerr;

    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (o && o->local_host && family != AF_UNIX && (rc = bind_local(fd, family, o)) < 0)
        goto fail;
    if (connect(fd, addr, len) == 0)
        return fd;
    /* EAGAIN: a Unix listener's backlog is full. Nothing is in progress
     * (the unconnected socket is writable at once, with no SO_ERROR), so
     * waiting for writability would hand out a socket that is not
     * connected: try again until the timeout, as a blocking connect waits. */
    for (double deadline = evs__monotonic() + timeout; errno == EAGAIN;) {
        if (evs__monotonic() >= deadline) {
            rc = -ETIMEDOUT;
            goto fail;
        }
        if ((rc = evs__task_nap_in_call(0.01, began)) < 0)
            goto fail;
        if (connect(fd, addr, len) == 0)
            return fd;
    }
    if (errno != EINPROGRESS) {
        rc = -errno;
        goto fail;
    }
    /* The task's timeout bounds the whole call: what the lookup and the
     * addresses tried before took is spent. */
    if ((left = evs__task_call_left(began)) == 0) {
        rc = -ETIMEDOUT;
        goto fail;
    }
    event_assign(&ev, w->base, fd, EV_WRITE, writable_cb, evs_task_current());
    event_add(&ev, NULL);
    rc = evs__task_park_for(NULL, left > 0 && left < timeout ? left : timeout, -ETIMEDOUT);
    event_del(&ev);
    if (rc < 0)
        goto fail;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr) {
        rc = -soerr;
        goto fail;
    }
    return fd;

fail:
    close(fd);
    return rc;
}

static double timeout_of(const evs_connect_options *o)
{
    return o && o->timeout > 0 ? o->timeout : DEFAULT_CONNECT_TIMEOUT;
}

/* Wrap the connected socket in a pair; with TLS, return after the
 * handshake (or its failure, with the reason). The pair reaches the
 * caller only on success: a failure frees it. */
static int finish_connection(evs_worker *wk, int fd, const char *host,
                             const evs_connect_options *o, double *began, evs_reader **r,
                             evs_writer **w)
{
    evs_transport *t;
    evs_tls_options to;
    evs_reader *rd;
    evs_writer *wr;
    int rc = evs__stream_create(wk, fd, EVS__FD_PROBE, o ? o->limit : 0, &rd, &wr, &t);

    if (rc < 0)
        return rc;
    if (o && o->tls) {
        memset(&to, 0, sizeof to);
        to.server_hostname = o->server_hostname ? o->server_hostname : host;
        to.handshake_timeout = o->tls_handshake_timeout;
        rc = evs__tls_attach(t, o->tls, false, &to, false, NULL, 0);
        if (rc < 0) {
            if (o->tls_error && o->tls_error_len)
                snprintf(o->tls_error, o->tls_error_len, "%s",
                         rc == -EINVAL && !to.server_hostname
                             ? "a verified server needs server_hostname (the name its "
                               "certificate must carry)"
                             : evs_strerror(rc));
            evs_transport_abort(t);
            evs_writer_free(wr);
            return rc;
        }
    }
    evs__transport_start(t);
    if (o && o->tls) {
        rc = evs__stream_wait_made(wr, began);
        if (rc < 0) {
            const char *why = evs_transport_tls_error(t);
            if (o->tls_error && o->tls_error_len)
                snprintf(o->tls_error, o->tls_error_len, "%s", why ? why : evs_strerror(rc));
            evs_transport_abort(t);
            evs_writer_free(wr);
            return rc;
        }
    }
    *r = rd;
    *w = wr;
    return 0;
}

int evs_open_connection(const char *host, uint16_t port, const evs_connect_options *opts,
                        evs_reader **r, evs_writer **w)
{
    evs_worker *wk = evs_worker_current();
    struct evutil_addrinfo *res = NULL, *ai;
    int fd = -EHOSTUNREACH, rc;
    double began = 0; /* the task's timeout bounds the call as a whole */

    if (!r || !w)
        return -EINVAL;
    *r = NULL;
    *w = NULL;
    if (!wk || !evs_task_current() || !host)
        return -EINVAL;
    rc = resolve(wk, host, port, &res, &began);
    if (rc < 0)
        return rc;
    /* Each address in turn; the last error is the one reported. */
    for (ai = res; ai; ai = ai->ai_next) {
        fd = connect_one(wk, ai->ai_family, ai->ai_addr, (socklen_t)ai->ai_addrlen, opts,
                         timeout_of(opts), &began);
        if (fd >= 0 || fd == -ECANCELED || evs__task_call_left(&began) == 0)
            break;
    }
    evutil_freeaddrinfo(res);
    if (fd < 0)
        return fd;
    return finish_connection(wk, fd, host, opts, &began, r, w);
}

int evs_open_unix_connection(const char *path, const evs_connect_options *opts, evs_reader **r,
                             evs_writer **w)
{
    evs_worker *wk = evs_worker_current();
    struct sockaddr_un sun;
    socklen_t len;
    int fd;
    double began = 0;

    if (!r || !w)
        return -EINVAL;
    *r = NULL;
    *w = NULL;
    if (!wk || !evs_task_current())
        return -EINVAL;
    if ((fd = evs__unix_address(path, &sun, &len)) < 0)
        return fd;
    fd = connect_one(wk, AF_UNIX, (struct sockaddr *)&sun, len, opts, timeout_of(opts), &began);
    if (fd < 0)
        return fd;
    return finish_connection(wk, fd, NULL, opts, &began, r, w);
}

/* --- evs_run ----------------------------------------------------------- */

int evs_run(evs_task_fn fn, void *arg, int *result)
{
    evs_worker *w;
    evs_task *main_task;
    int err;

    if (!fn)
        return -EINVAL;
    if (evs_worker_current())
        return -EBUSY; /* no nested loops */
    w = malloc(sizeof *w);
    if (!w)
        return -ENOMEM;
    err = evs__worker_init(w, NULL, -1, 0);
    if (err) {
        free(w);
        return err;
    }
    evs__worker_set_current(w);
    evs__fiber_thread_init();
    err = evs__task_spawn_on(w, fn, arg, &main_task);
    if (err == 0) {
        while (!evs_task_done(main_task))
            if (event_base_loop(w->base, EVLOOP_ONCE) < 0)
                break;
        /* Like asyncio.run: cancel what the main task left behind. */
        evs__worker_abort_all(w);
        w->exit_loop = true;
        evs__worker_loop(w);
        evs_task_join(main_task, result);
    }
    evs__fiber_thread_fini();
    evs__worker_set_current(NULL);
    evs__worker_fini(w);
    free(w);
    return err;
}
