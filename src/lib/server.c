/*
 * server.c - start_server / start_unix_server: bind and listen on the
 * calling thread (so errors come back at once), then give the sockets to
 * the acceptor; take accepted connections over on the workers.
 */
#include "server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "stream.h"
#include "tls.h"
#include "transport.h"

#define DEFAULT_BACKLOG 100

static int add_listener(evs_server *s, int fd)
{
    evs__listener *l = realloc(s->listeners, (s->nlisteners + 1) * sizeof *l);

    if (!l)
        return -ENOMEM;
    s->listeners = l;
    memset(&l[s->nlisteners], 0, sizeof *l);
    l[s->nlisteners].server = s;
    l[s->nlisteners].fd = fd;
    s->nlisteners++;
    return 0;
}

static void close_listeners(evs_server *s)
{
    for (size_t i = 0; i < s->nlisteners; i++)
        if (s->listeners[i].fd >= 0)
            close(s->listeners[i].fd);
    s->nlisteners = 0;
}

void evs__server_free(evs_server *s)
{
    free(s->reject_message);
    free(s->trusted);
    evs__limits_unref(s->limits);
    if (s->opts.tls)
        evs_tls_context_unref(s->opts.tls);
    close_listeners(s);
    free(s->listeners);
    free(s->path);
    free(s);
}

static int listen_fd(int fd, const evs_server_options *o)
{
    if (listen(fd, o->backlog > 0 ? o->backlog : DEFAULT_BACKLOG) < 0)
        return -errno;
    return 0;
}

static int bind_tcp_socket(evs_server *s, const struct addrinfo *ai, const struct sockaddr *addr)
{
    const evs_server_options *o = &s->opts;
    int one = 1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int err;

    if (fd < 0)
        return -errno;
    if (!o->no_reuse_address)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (o->reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail_errno;
    /* As asyncio does: an IPv6 socket takes only IPv6, so binding both
     * families of "localhost" or of all interfaces does not collide. */
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, addr, ai->ai_addrlen) < 0)
        goto fail_errno;
    if ((err = listen_fd(fd, o)) < 0)
        goto fail;
    if ((err = add_listener(s, fd)) < 0)
        goto fail;
    return 0;

fail_errno:
    err = -errno;
fail:
    close(fd);
    return err;
}

/* One socket, or with reuse_port one per worker, all on the same port
 * (the first one's, when the port is 0). */
static int bind_tcp_address(evs_server *s, const struct addrinfo *ai)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int n = s->opts.reuse_port ? s->rt->nworkers : 1;
    int err = bind_tcp_socket(s, ai, ai->ai_addr);

    if (err || n == 1)
        return err;
    if (getsockname(s->listeners[s->nlisteners - 1].fd, (struct sockaddr *)&addr, &len) < 0)
        return -errno;
    for (int i = 1; i < n && !err; i++)
        err = bind_tcp_socket(s, ai, (struct sockaddr *)&addr);
    return err;
}

/* reuse_port: each worker accepts on its own sockets (the kernel spreads
 * connections over them), in turn: sockets come in groups of one per
 * worker. Fewer sockets than that (one handed over by systemd) stay with
 * the acceptor, which spreads their connections itself, as do Unix
 * sockets (no SO_REUSEPORT for them). With one worker
 * there is nothing to spread: it accepts on every socket itself, since the
 * acceptor's hop would cost a thread wake-up per connection and buy
 * nothing. */
static void give_sockets_to_workers(evs_server *s, bool unix_socket)
{
    int n = s->rt->nworkers;
    bool spread = s->opts.reuse_port && !unix_socket && n > 0 && s->nlisteners % (size_t)n == 0;

    if (n != 1 && !spread)
        return;
    for (size_t i = 0; i < s->nlisteners; i++)
        s->listeners[i].owner = &s->rt->workers[i % (size_t)n];
}

static int bind_tcp_host(evs_server *s, const char *host)
{
    struct addrinfo hints, *res, *ai;
    char port[8];
    int rc, err = 0;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG;
    snprintf(port, sizeof port, "%u", (unsigned)s->opts.port);
    if (host && !*host)
        host = NULL;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
        /* AI_ADDRCONFIG hides ::1 on hosts with only loopback IPv6. */
        hints.ai_flags &= ~AI_ADDRCONFIG;
        rc = getaddrinfo(host, port, &hints, &res);
    }
    if (rc != 0) {
        evs__debug("cannot resolve '%s': %s", host ? host : "*", gai_strerror(rc));
        return rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        err = bind_tcp_address(s, ai);
        if (err)
            break;
    }
    freeaddrinfo(res);
    return err;
}

/* An existing socket file: replace it if nobody listens on it, refuse
 * anything else. */
static int clear_stale_socket(const char *path)
{
    struct stat st;
    struct sockaddr_un sun;
    socklen_t len;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        evs__debug("%s exists and is not a socket; not replacing it", path);
        return -EEXIST;
    }
    if ((rc = evs__unix_address(path, &sun, &len)) < 0)
        return rc;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    rc = connect(fd, (struct sockaddr *)&sun, len);
    close(fd);
    if (rc == 0) {
        evs__debug("%s is in use by a running server", path);
        return -EADDRINUSE;
    }
    if (errno != ECONNREFUSED)
        return -EADDRINUSE;
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static int bind_unix(evs_server *s)
{
    const evs_server_options *o = &s->opts;
    struct sockaddr_un sun;
    struct stat st;
    socklen_t len;
    int fd, err;
    bool abstract = s->path[0] == '@';

    if ((err = evs__unix_address(s->path, &sun, &len)) < 0)
        return err;
    if (!abstract && (err = clear_stale_socket(s->path)) < 0)
        return err;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sun, len) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    if (!abstract) {
        /* Set the mode before listen(): nobody can connect in between. */
        if (o->mode && chmod(s->path, o->mode) < 0) {
            err = -errno;
            goto fail_unlink;
        }
        if (stat(s->path, &st) == 0) {
            s->path_dev = st.st_dev;
            s->path_ino = st.st_ino;
        }
    }
    if ((err = listen_fd(fd, o)) < 0 || (err = add_listener(s, fd)) < 0)
        goto fail_unlink;
    return 0;

fail_unlink:
    close(fd);
    if (!abstract)
        unlink(s->path);
    return err;
}

static int adopt_fd(evs_server *s, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int listening = 0;
    socklen_t len = sizeof listening;
    int flags = fcntl(fd, F_GETFL);

    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        return -errno;
    if (!listening)
        return -EINVAL;
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    /* A Unix socket named by path: remember its file to remove at close. */
    if (s->path && s->path[0] != '@' && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        ss.ss_family == AF_UNIX) {
        struct stat st;
        if (stat(s->path, &st) == 0) {
            s->path_dev = st.st_dev;
            s->path_ino = st.st_ino;
        }
    }
    return add_listener(s, fd);
}

static void read_port(evs_server *s)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (s->nlisteners == 0 ||
        getsockname(s->listeners[0].fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET)
        s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
        s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int check_options(const evs_server_options *o)
{
    if (!o)
        return -EINVAL;
    if ((o->client_connected == NULL) == (o->protocol == NULL))
        return -EINVAL; /* exactly one handler */
    if (o->tls && !o->tls->server)
        return -EINVAL; /* a client context cannot serve */
    if ((o->nproxy_trusted > 0 && !o->proxy_trusted) || (o->nhosts > 0 && !o->hosts))
        return -EINVAL;
    for (size_t i = 0; i < o->nproxy_trusted; i++)
        if (!o->proxy_trusted[i])
            return -EINVAL;
    for (size_t i = 0; i < o->nhosts; i++)
        if (!o->hosts[i])
            return -EINVAL;
    if (o->backlog < 0 || (o->write_low_water && o->write_low_water > o->write_high_water &&
                           o->write_high_water))
        return -EINVAL;
    return 0;
}

static int start(evs_runtime *rt, const evs_server_options *o, bool unix_socket, evs_server **out)
{
    evs_server *s;
    int err = check_options(o);

    if (err)
        return err;
    if (!rt || atomic_load(&rt->stopping))
        return -ESHUTDOWN;
    if (unix_socket && o->nfds == 0 && (!o->path || !*o->path))
        return -EINVAL;
    if (o->nfds > 0 && !o->fds)
        return -EINVAL;
    if (o->predecessor && o->predecessor->rt != rt)
        return -EINVAL; /* another runtime's counts and wake-ups */
    s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->rt = rt;
    s->opts = *o;
    s->opts.predecessor = NULL; /* not kept: it may be freed before this server */
    s->limits = o->predecessor ? evs__limits_ref(o->predecessor->limits) : evs__limits_new();
    if (!s->limits) {
        free(s);
        return -ENOMEM;
    }
    s->opts.host = NULL;
    s->opts.hosts = NULL;
    s->opts.path = NULL;
    s->opts.fds = NULL;
    s->opts.nfds = 0;
    s->opts.tls = NULL; /* set with its reference once nothing can fail */
    if (unix_socket && o->path && !(s->path = strdup(o->path))) {
        evs__server_free(s);
        return -ENOMEM;
    }
    if (o->proxy_protocol) {
        s->trusted = calloc(o->nproxy_trusted + 1, sizeof *s->trusted);
        if (!s->trusted) {
            evs__server_free(s);
            return -ENOMEM;
        }
        for (size_t i = 0; i < o->nproxy_trusted; i++) {
            if (evs__cidr_parse(o->proxy_trusted[i], &s->trusted[i]) < 0) {
                evs__debug("proxy_trusted: '%s' is not an address or CIDR", o->proxy_trusted[i]);
                evs__server_free(s);
                return -EINVAL;
            }
        }
        s->ntrusted = o->nproxy_trusted;
        if (s->ntrusted == 0 && !unix_socket) {
            evs__debug("proxy_protocol needs proxy_trusted networks");
            evs__server_free(s);
            return -EINVAL;
        }
    }
    s->opts.proxy_trusted = NULL;
    s->opts.nproxy_trusted = 0;
    s->opts.reject_message = NULL;
    if (o->reject_message && !(s->reject_message = strdup(o->reject_message))) {
        evs__server_free(s);
        return -ENOMEM;
    }
    s->opts.reject_message = s->reject_message;

    if (o->nfds > 0) {
        for (size_t i = 0; i < o->nfds && !err; i++)
            err = adopt_fd(s, o->fds[i]);
    } else if (unix_socket)
        err = bind_unix(s);
    else if (o->nhosts > 0) {
        for (size_t i = 0; i < o->nhosts && !err; i++)
            err = bind_tcp_host(s, o->hosts[i]);
    } else
        err = bind_tcp_host(s, o->host);
    if (err) {
        if (o->nfds > 0)
            s->nlisteners = 0; /* the caller keeps its fds on failure */
        evs__server_free(s);
        return err;
    }
    if (o->tls)
        s->opts.tls = evs_tls_context_ref(o->tls);
    read_port(s);
    give_sockets_to_workers(s, unix_socket);
    atomic_store(&s->serving, !o->defer_serving);

    pthread_mutex_lock(&rt->lock);
    s->next = rt->servers;
    rt->servers = s;
    pthread_mutex_unlock(&rt->lock);
    err = evs_worker_post(&rt->acceptor, evs__acceptor_add, s);
    if (err) {
        atomic_store(&s->closed, true);
        if (o->nfds > 0)
            s->nlisteners = 0; /* the caller keeps its fds on failure */
        close_listeners(s); /* freed with the runtime */
        return err;
    }
    if (out)
        *out = s;
    return 0;
}

int evs_start_server(evs_runtime *rt, const evs_server_options *opts, evs_server **out)
{
    return start(rt, opts, false, out);
}

int evs_start_unix_server(evs_runtime *rt, const evs_server_options *opts, evs_server **out)
{
    return start(rt, opts, true, out);
}

int evs_server_start_serving(evs_server *s)
{
    if (atomic_load(&s->closed))
        return -EBADF;
    if (atomic_load(&s->serving))
        return 0;
    return evs_worker_post(&s->rt->acceptor, evs__acceptor_serve, s);
}

bool evs_server_is_serving(const evs_server *s)
{
    return atomic_load(&s->serving) && !atomic_load(&s->closed);
}

static void acceptor_close(evs_worker *acceptor, void *arg)
{
    evs__acceptor_remove(acceptor, arg);
}

void evs_server_close(evs_server *s)
{
    if (!s || atomic_exchange(&s->closed, true))
        return;
    if (evs_worker_post(&s->rt->acceptor, acceptor_close, s) < 0)
        evs__acceptor_remove(&s->rt->acceptor, s); /* acceptor already gone */
}

/* A listening socket is still open: the close posted to the acceptor
 * (or to the worker that owns the socket) has not run yet. */
static bool listening(evs_server *s)
{
    bool open = false;

    pthread_mutex_lock(&s->rt->lock);
    for (size_t i = 0; i < s->nlisteners && !open; i++)
        open = s->listeners[i].fd >= 0;
    pthread_mutex_unlock(&s->rt->lock);
    return open;
}

int evs_server_wait_closed(evs_server *s)
{
    struct timespec nap = {0, 2 * 1000 * 1000};
    double began = 0; /* in a task: when its timeout started to count */

    /* A worker's loop closes its sockets and connections: blocked, it
     * would wait for itself. */
    if (evs_worker_current() && !evs_task_current())
        return -EDEADLK;
    /* Servers span workers, so there is no one queue to park on: look
     * every few milliseconds (this is a shutdown path, not a hot one).
     * As with asyncio, the listening sockets are closed once this
     * returns (or handed over, by evs_server_take_sockets). */
    while (!atomic_load(&s->closed) || atomic_load(&s->conns) > 0 || listening(s)) {
        if (evs_task_current()) {
            int rc = evs__task_nap_in_call(0.005, &began);
            if (rc < 0)
                return rc;
        } else {
            nanosleep(&nap, NULL);
        }
    }
    return 0;
}

/* For evs_worker_call: a round trip, to wait for what was posted before. */
static void nothing(evs_worker *w, void *arg)
{
    EVS_UNUSED(w);
    EVS_UNUSED(arg);
}

/* On the acceptor: stop watching the sockets and give them away. */
typedef struct take_request {
    evs_server *server;
    int *fds;
    size_t n;
    size_t count;
    bool posted; /* a worker owning a socket lets go of it by a post */
} take_request;

/* On a worker that accepted from @l: forget the socket, now another
 * server's (the server is closed, so the event fires no more accepts). */
static void release_listener(evs_worker *owner, void *arg)
{
    evs__listener *l = arg;

    EVS_UNUSED(owner);
    if (l->ev_added)
        event_del(&l->ev);
    l->ev_added = false;
    pthread_mutex_lock(&l->server->rt->lock);
    l->fd = -1;
    pthread_mutex_unlock(&l->server->rt->lock);
}

static void acceptor_take(evs_worker *acceptor, void *arg)
{
    take_request *rq = arg;
    evs_server *s = rq->server;

    EVS_UNUSED(acceptor);
    pthread_mutex_lock(&s->rt->lock);
    for (size_t i = 0; i < s->nlisteners; i++) {
        evs__listener *l = &s->listeners[i];
        bool keep = rq->count < rq->n;

        if (l->fd < 0)
            continue;
        if (keep)
            rq->fds[rq->count] = l->fd;
        rq->count++;
        /* A worker's socket: the worker lets go of it (or closes it). */
        if (l->owner &&
            evs_worker_post(l->owner, keep ? release_listener : evs__listener_close, l) == 0) {
            rq->posted = true;
            continue;
        }
        if (l->ev_added)
            event_del(&l->ev);
        l->ev_added = false;
        if (!keep)
            close(l->fd);
        l->fd = -1;
    }
    s->keep_path = true;
    pthread_mutex_unlock(&s->rt->lock);
}

size_t evs_server_take_sockets(evs_server *s, int *fds, size_t n)
{
    take_request rq = {.server = s, .fds = fds, .n = n};

    if (atomic_exchange(&s->closed, true))
        return 0;
    /* Refused when the acceptor is gone, or when this is the acceptor:
     * either way no one else touches its events now. */
    if (evs_worker_call(&s->rt->acceptor, acceptor_take, &rq) < 0)
        acceptor_take(&s->rt->acceptor, &rq);
    /* Until the owners ran their posts, their events still watch the fds:
     * a caller closing one could have its number reused under a live
     * event. A call runs after what was posted before it. Not on a worker:
     * two workers waiting for each other would wait for good. */
    if (rq.posted && !evs_worker_current())
        for (int i = 0; i < s->rt->nworkers; i++)
            evs_worker_call(&s->rt->workers[i], nothing, NULL);
    return rq.count;
}

size_t evs_server_sockets(const evs_server *s, int *fds, size_t n)
{
    size_t count = 0;

    /* The acceptor and the owning workers close sockets under the lock. */
    pthread_mutex_lock(&s->rt->lock);
    for (size_t i = 0; i < s->nlisteners; i++) {
        if (s->listeners[i].fd < 0)
            continue;
        if (count < n)
            fds[count] = s->listeners[i].fd;
        count++;
    }
    pthread_mutex_unlock(&s->rt->lock);
    return count;
}

/* On the acceptor, the only thread that removes servers from the list:
 * its stop walks the list without the lock. */
static void acceptor_forget(evs_worker *acceptor, void *arg)
{
    evs_server *s = arg;
    evs_runtime *rt = acceptor->rt;

    pthread_mutex_lock(&rt->lock);
    for (evs_server **pp = &rt->servers; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&rt->lock);
}

/* Before the free, every thread must be done with @s: the acceptor has
 * run what was posted for it (adding, closing, taking its sockets, and
 * the posts those made to workers), and with @forget dropped it from the
 * list, so no one posts for it again; then each worker has run those
 * posts and left any callback still holding @s (the close that counted
 * its last connection). A call runs after everything posted before it.
 * @return false when a thread cannot be reached (the runtime stops). */
static bool quiesce_server(evs_server *s, bool forget)
{
    evs_runtime *rt = s->rt;

    if (evs_worker_call(&rt->acceptor, forget ? acceptor_forget : nothing, s) < 0)
        return false;
    /* A worker refuses a call only once its loop has ended (the runtime
     * is stopping): it runs nothing of @s any more, so it is passed too.
     * Once the acceptor has unlisted @s, evs_runtime_stop will not free
     * it, so it must not be left half-way (that was a leak); before, the
     * refusal tells the caller to leave @s to evs_runtime_stop. */
    for (int i = 0; i < rt->nworkers; i++)
        if (evs_worker_call(&rt->workers[i], nothing, NULL) < 0 && !forget)
            return false;
    return true;
}

static bool server_busy(evs_server *s)
{
    return atomic_load(&s->conns) > 0 || atomic_load(&s->handlers) > 0;
}

int evs_server_free(evs_server *s)
{
    if (!s)
        return -EINVAL;
    /* The round trips below wait for the acceptor and every worker. */
    if (evs_worker_current())
        return -EDEADLK;
    evs_server_close(s);
    if (server_busy(s))
        return -EBUSY;
    if (atomic_load(&s->rt->stopping) || !quiesce_server(s, false))
        return -ESHUTDOWN;
    /* Until they ran the close, the acceptor and the workers that own
     * their sockets (one worker, reuseport) could still accept: look again
     * now that none can. Then the acceptor unlists the server (it stays
     * listed until now, so that a refusal leaves it to evs_runtime_stop)
     * and the workers are passed once more, so the end of such a
     * connection has left its callback before the free. */
    if (server_busy(s))
        return -EBUSY;
    if (!quiesce_server(s, true))
        return -ESHUTDOWN; /* the acceptor had stopped: still listed */
    evs__server_free(s);
    return 0;
}

uint16_t evs_server_port(const evs_server *s)
{
    return s->port;
}

size_t evs_server_connections(const evs_server *s)
{
    return atomic_load(&s->conns);
}

/* --- on the worker ----------------------------------------------------- */

/* A connection of @s ended: its counters, the access-log callback. */
static void connection_closed(evs_transport *t, void *arg)
{
    evs_server *s = arg;
    const char *version = NULL;
    const char *cipher = evs_transport_tls_cipher(t, &version, NULL);

    if (t->ip_counted)
        evs__iplimit_release(s, t->ip_key);
    atomic_fetch_add_explicit(&s->bytes_in, t->bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_out, t->bytes_out, memory_order_relaxed);
    if (evs_transport_is_tls(t)) {
        if (cipher)
            atomic_fetch_add_explicit(&s->tls_handshakes, 1, memory_order_relaxed);
        else
            atomic_fetch_add_explicit(&s->tls_failed, 1, memory_order_relaxed);
        /* OpenSSL marks a session reused as soon as it accepts the offer:
         * only a completed handshake counts. */
        if (cipher && evs_transport_tls_resumed(t))
            atomic_fetch_add_explicit(&s->tls_resumed, 1, memory_order_relaxed);
    }
    if (s->opts.connection_closed) {
        evs_connection_info info;
        struct sockaddr_storage peer;
        socklen_t plen;
        struct timeval now, d;

        memset(&info, 0, sizeof info);
        if (t->peer) {
            info.peer = (struct sockaddr *)t->peer;
            info.peerlen = t->peerlen;
        } else if (evs_transport_get_peername(t, &peer, &plen) == 0) {
            info.peer = (struct sockaddr *)&peer;
            info.peerlen = plen;
        }
        evs__monotonic_tv(&now);
        timersub(&now, &t->started, &d);
        info.duration = (double)d.tv_sec + (double)d.tv_usec / 1e6;
        info.bytes_in = t->bytes_in;
        info.bytes_out = t->bytes_out;
        info.error = t->error;
        info.tls_version = version;
        info.tls_cipher = cipher;
        info.tls_error = evs_transport_tls_error(t);
        info.worker = evs_worker_id(t->worker);
        s->opts.connection_closed(&info, s->opts.connection_closed_arg);
    }
    evs__connection_closed(s, t->worker);
}

void evs_server_stats_get(const evs_server *s, evs_server_stats *out)
{
    out->accepted = atomic_load_explicit(&s->accepted, memory_order_relaxed);
    out->active = atomic_load(&s->conns);
    out->closed = atomic_load_explicit(&s->closed_count, memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&s->bytes_in, memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
    out->tls_handshakes = atomic_load_explicit(&s->tls_handshakes, memory_order_relaxed);
    out->tls_failed = atomic_load_explicit(&s->tls_failed, memory_order_relaxed);
    out->tls_resumed = atomic_load_explicit(&s->tls_resumed, memory_order_relaxed);
    out->proxy_rejected = atomic_load_explicit(&s->proxy_rejected, memory_order_relaxed);
    out->rejected_per_ip = atomic_load_explicit(&s->rejected_per_ip, memory_order_relaxed);
    out->rejected_rate = atomic_load_explicit(&s->rejected_rate, memory_order_relaxed);
}

static int run_handler(void *arg)
{
    evs_writer *w = arg;
    evs_server *s = evs__stream_tag(w);

    s->opts.client_connected(evs_writer_reader(w), w, s->opts.arg);
    evs_writer_free(w);
    atomic_fetch_sub(&s->handlers, 1);
    return 0;
}

/* TLS comes now, or after the PROXY header (which is plaintext). */
static int attach_tls(evs_server *s, evs_transport *t)
{
    evs_tls_options to;

    if (s->opts.proxy_protocol)
        return evs__proxy_stage_install(s, t);
    if (!s->opts.tls)
        return 0;
    memset(&to, 0, sizeof to);
    to.handshake_timeout = s->opts.tls_handshake_timeout;
    to.shutdown_timeout = s->opts.tls_shutdown_timeout;
    return evs__tls_attach(t, s->opts.tls, true, &to, false, NULL, 0);
}

/* Stream mode: the handler starts once the connection is made (after the
 * TLS handshake), so failed handshakes never cost a task. */
static void start_handler(evs_writer *wr, void *arg)
{
    evs_server *s = arg;

    /* Counted until it returns: the connection may end first, and the
     * server must outlive the handler (evs_server_free). */
    atomic_fetch_add(&s->handlers, 1);
    if (evs__task_spawn_on(evs_transport_worker(evs_writer_transport(wr)), run_handler, wr,
                           NULL) < 0) {
        atomic_fetch_sub(&s->handlers, 1);
        evs__warn("cannot start a handler task: out of memory or stack space");
        evs_transport_abort(evs_writer_transport(wr));
        evs_writer_free(wr);
    }
}

static void set_limits(evs_server *s, evs_transport *t)
{
    evs_timeouts to = s->opts.timeouts;

    if (to.idle == 0)
        to.idle = s->opts.idle_timeout;
    if (to.idle > 0 || to.first_byte > 0 || to.read > 0 || to.write > 0 || to.lifetime > 0)
        evs_transport_set_timeouts(t, &to);
    if (s->opts.max_write_buffer)
        evs_transport_set_max_write_buffer(t, s->opts.max_write_buffer);
    if (s->opts.write_high_water || s->opts.write_low_water)
        evs_transport_set_write_buffer_limits(
            t, s->opts.write_high_water ? (ssize_t)s->opts.write_high_water : -1,
            s->opts.write_low_water ? (ssize_t)s->opts.write_low_water : -1);
}

/* A connection that will not be served: close it and undo its counts. */
static void refuse(evs_server *s, evs_worker *w, int fd, const evs__msg *m)
{
    close(fd);
    if (m->ip_counted)
        evs__iplimit_release(s, m->ip_key);
    evs__connection_closed(s, w);
}

/* Hand an accepted socket to a transport, or a stream pair whose handler
 * starts once the connection is made. */
static int make_transport(evs_server *s, evs_worker *w, int fd, int family, evs_transport **t)
{
    evs_reader *r;
    evs_writer *wr;
    int err;

    if (s->opts.protocol)
        return evs__transport_create(w, fd, family, s->opts.protocol, s->opts.arg, t);
    err = evs__stream_create(w, fd, family, s->opts.limit, &r, &wr, t);
    if (err == 0) {
        evs__stream_set_tag(wr, s);
        evs__stream_on_made(wr, start_handler, s);
    }
    return err;
}

void evs__server_take(evs_worker *w, const evs__msg *m)
{
    evs_server *s = m->server;
    evs_transport *t;
    int fd = m->fd, family, err;

    if (w->stopping) {
        refuse(s, w, fd, m);
        return;
    }
    if (s->opts.proxy_protocol && !evs__proxy_trusted(s, &m->peer)) {
        char who[128];
        atomic_fetch_add_explicit(&s->proxy_rejected, 1, memory_order_relaxed);
        evs__debug("PROXY protocol from an untrusted peer %s; closing",
                   evs_format_address((struct sockaddr *)&m->peer, m->peerlen, who, sizeof who));
        refuse(s, w, fd, m);
        return;
    }
    /* The accepted address tells the family (probe if accept gave none). */
    family = m->peerlen >= sizeof(sa_family_t) ? m->peer.ss_family : EVS__FD_PROBE;
    err = make_transport(s, w, fd, family, &t); /* closes fd on failure */
    if (err) {
        evs__warn("cannot take a connection: %s", evs_strerror(err));
        if (m->ip_counted)
            evs__iplimit_release(s, m->ip_key);
        evs__connection_closed(s, w);
        return;
    }
    /* From here the transport's closed hook undoes the counts. */
    t->closed_hook = connection_closed;
    t->closed_hook_arg = s;
    t->ip_key = m->ip_key;
    t->ip_counted = m->ip_counted;
    /* The accepted address outlives a reset only if we keep it. */
    if (s->opts.connection_closed && (t->peer = malloc(sizeof *t->peer))) {
        memcpy(t->peer, &m->peer, m->peerlen);
        t->peerlen = m->peerlen;
    }
    set_limits(s, t);
    if (attach_tls(s, t) < 0)
        evs_transport_abort(t); /* a stream pair is freed with it, unstarted */
    else
        evs__transport_start(t);
}

void evs__server_accept_on_worker(evs_worker *w, evs__msg *m)
{
    evs__server_take(w, m);
    free(m);
}
