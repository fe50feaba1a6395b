/*
 * datagram.c - datagram listeners of evstreamd. Sockets are bound on the
 * main thread, so errors come back at once and a port 0 is the same for
 * every worker; each worker then wraps its socket in an endpoint, because
 * an endpoint belongs to the worker that runs its callbacks.
 */
#include "datagram.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct evsd_datagram {
    int n;               /* endpoints (workers that got a socket) */
    int *fds;            /* not yet handed to a worker: -1 once taken */
    evs_datagram **eps;  /* per worker, NULL where none */
    const evs_datagram_protocol *proto;
    void *ctx;
    char *unlink_path;   /* our unixgram socket file ... */
    dev_t path_dev;      /* ... as long as it is still ours */
    ino_t path_ino;
    size_t high, low;    /* write watermarks of the endpoints */
    struct sockaddr_storage addr; /* udp: the bound address, for rebind_lost */
    socklen_t addrlen;
    int failures;        /* of the last on_workers */
    const struct evsd_datagram *prev; /* evsd_datagram_succeed: the set to copy */
};

/* Run @fn on the first set->n workers, one after the other.
 * @return how many failed or could not be reached. */
static int on_workers(evs_runtime *rt, evsd_datagram *set, evs_worker_fn fn)
{
    set->failures = 0;
    for (int i = 0; i < set->n; i++)
        if (evs_worker_call(evs_runtime_worker(rt, i), fn, set) < 0)
            set->failures++;
    return set->failures;
}

/* Endpoints run the plugin's callbacks through these, which hand on the
 * plugin's own context, so that one lost on its own (a fatal socket error)
 * leaves the set: the set would otherwise keep a pointer to a freed
 * endpoint and close it again at the next reload or stop. */
static void relay_made(evs_datagram *d, void *arg)
{
    const evsd_datagram *set = arg;

    if (set->proto->connection_made)
        set->proto->connection_made(d, set->ctx);
}

static void relay_received(evs_datagram *d, const void *data, size_t len,
                           const struct sockaddr *addr, socklen_t addrlen, void *arg)
{
    const evsd_datagram *set = arg;

    if (set->proto->datagram_received)
        set->proto->datagram_received(d, data, len, addr, addrlen, set->ctx);
}

static void relay_error(evs_datagram *d, int err, void *arg)
{
    const evsd_datagram *set = arg;

    if (set->proto->error_received)
        set->proto->error_received(d, err, set->ctx);
}

static void relay_lost(evs_datagram *d, int err, void *arg)
{
    evsd_datagram *set = arg;
    int i = evs_worker_id(evs_datagram_worker(d));

    if (set->eps[i] == d)
        set->eps[i] = NULL;
    if (err)
        evs_log(EVS_LOG_ERROR, "worker %d: datagram listener lost its socket: %s", i,
                evs_strerror(err));
    if (set->proto->connection_lost)
        set->proto->connection_lost(d, err, set->ctx);
}

static void relay_pause(evs_datagram *d, void *arg)
{
    const evsd_datagram *set = arg;

    if (set->proto->pause_writing)
        set->proto->pause_writing(d, set->ctx);
}

static void relay_resume(evs_datagram *d, void *arg)
{
    const evsd_datagram *set = arg;

    if (set->proto->resume_writing)
        set->proto->resume_writing(d, set->ctx);
}

static const evs_datagram_protocol relay = {
    .connection_made = relay_made,
    .datagram_received = relay_received,
    .error_received = relay_error,
    .connection_lost = relay_lost,
    .pause_writing = relay_pause,
    .resume_writing = relay_resume,
};

static void open_here(evs_worker *w, void *arg)
{
    evsd_datagram *set = arg;
    int i = evs_worker_id(w);
    int rc;

    if (set->fds[i] < 0)
        return; /* lost, and no new one could be bound (rebind_lost) */
    rc = evs_datagram_new(set->fds[i], 0, &relay, set, &set->eps[i]);
    set->fds[i] = -1; /* taken (closed on failure) */
    if (rc == 0) {
        evs_datagram_pause_reading(set->eps[i]); /* until evsd_datagram_serve */
        rc = evs_datagram_set_write_buffer_limits(set->eps[i], (ssize_t)set->high,
                                                  (ssize_t)set->low);
    }
    if (rc < 0) {
        evs_log(EVS_LOG_ERROR, "worker %d: datagram endpoint: %s", i, evs_strerror(rc));
        set->failures++;
    }
}

static void serve_here(evs_worker *w, void *arg)
{
    evsd_datagram *set = arg;
    evs_datagram *d = set->eps[evs_worker_id(w)];

    if (d)
        evs_datagram_resume_reading(d);
}

void evsd_datagram_serve(evs_runtime *rt, evsd_datagram *set)
{
    on_workers(rt, set, serve_here);
}

static void close_here(evs_worker *w, void *arg)
{
    evsd_datagram *set = arg;
    int i = evs_worker_id(w);
    evs_datagram *d = set->eps[i];

    if (!d)
        return;
    set->eps[i] = NULL;
    /* The plugin's callbacks directly from here on: the set is freed next.
     * Queued replies are dropped, so connection_lost comes in this loop
     * pass, before the instance's worker_stop (and its fini) can. */
    evs_datagram_set_protocol(d, set->proto, set->ctx);
    evs_datagram_abort(d);
}

static void free_set(evsd_datagram *set)
{
    for (int i = 0; i < set->n; i++)
        if (set->fds[i] >= 0)
            close(set->fds[i]);
    if (set->unlink_path) {
        struct stat st;
        /* A reload may have bound a new socket at the same path. */
        if (stat(set->unlink_path, &st) == 0 && st.st_dev == set->path_dev &&
            st.st_ino == set->path_ino)
            unlink(set->unlink_path);
        free(set->unlink_path);
    }
    free(set->fds);
    free(set->eps);
    free(set);
}

/* Whether a socket is already bound to @sa. The workers' sockets set
 * SO_REUSEPORT, so their binds would succeed beside another listener or
 * daemon on the port (or on 0.0.0.0 beside 127.0.0.1) and the kernel
 * would split the datagrams between them; a bind without it fails
 * instead. */
static bool port_taken(const struct sockaddr_storage *sa, socklen_t len)
{
    int one = 1, fd = socket(sa->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bool taken;

    if (fd < 0)
        return false; /* the real bind reports it */
    if (sa->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    taken = bind(fd, (const struct sockaddr *)sa, len) < 0 && errno == EADDRINUSE;
    close(fd);
    return taken;
}

/* One worker's socket on @sa, sharing the port. @return it or -errno. */
static int udp_socket(const struct sockaddr_storage *sa, socklen_t len)
{
    int one = 1, fd = socket(sa->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        (sa->ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        bind(fd, (const struct sockaddr *)sa, len) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        return -err;
    }
    return fd;
}

int evsd_datagram_resolve(const evsd_listener_conf *c, struct addrinfo **out)
{
    struct addrinfo hints;
    char port[8];

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%u", c->port);
    return getaddrinfo(c->host, port, &hints, out);
}

static int bind_udp(const evsd_listener_conf *c, evsd_datagram *set, char *address, size_t alen)
{
    struct addrinfo *res;
    struct sockaddr_storage ss;
    socklen_t sl;
    int rc;

    if ((rc = evsd_datagram_resolve(c, &res)) != 0) {
        evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot resolve %s: %s", c->file, c->line,
                c->name, c->listen, gai_strerror(rc));
        return -1;
    }
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    sl = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    if (c->port != 0 && port_taken(&ss, sl)) {
        evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot listen on %s: %s", c->file, c->line,
                c->name, c->listen, strerror(EADDRINUSE));
        return -1;
    }
    for (int i = 0; i < set->n; i++) {
        int fd = udp_socket(&ss, sl);
        if (fd < 0) {
            evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot listen on %s: %s", c->file,
                    c->line, c->name, c->listen, strerror(-fd));
            return -1;
        }
        set->fds[i] = fd;
        if (i == 0) { /* port 0: every worker binds the port the first got */
            sl = sizeof ss;
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            char a[128];
            evs_format_address((struct sockaddr *)&ss, sl, a, sizeof a);
            snprintf(address, alen, "udp:%s", a);
        }
    }
    set->addr = ss;
    set->addrlen = sl;
    return 0;
}

/* The socket file's mode and owner, when the listener sets them. */
static void apply_file_settings(const evsd_listener_conf *c)
{
    if ((c->has_mode && chmod(c->path, c->mode) < 0) ||
        ((c->has_owner || c->has_group) &&
         chown(c->path, c->has_owner ? c->owner : (uid_t)-1, c->has_group ? c->group : (gid_t)-1) <
             0))
        evs_log(EVS_LOG_WARN, "listener '%s': mode or owner of %s: %s", c->name, c->path,
                strerror(errno));
}

static int bind_unixgram(const evsd_listener_conf *c, evsd_datagram *set, char *address,
                         size_t alen)
{
    struct sockaddr_un sun;
    struct stat st;
    socklen_t len;
    bool abstract = c->path[0] == '@';
    int fd;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (abstract) {
        memcpy(sun.sun_path + 1, c->path + 1, strlen(c->path) - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(c->path));
    } else {
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", c->path);
        len = sizeof sun;
        /* A stale socket file is replaced; anything else is refused. */
        if (lstat(c->path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': %s exists and is not a socket",
                        c->file, c->line, c->name, c->path);
                return -1;
            }
            /* Only a socket nobody is bound to refuses a connect(): anything
             * else (it answers, is a stream socket, is not ours to write
             * to) may be somebody's live socket, so its file stays. */
            int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            bool live = probe < 0 || connect(probe, (struct sockaddr *)&sun, len) == 0 ||
                        errno != ECONNREFUSED;
            if (probe >= 0)
                close(probe);
            if (live) {
                evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot bind %s: %s", c->file,
                        c->line, c->name, c->path, strerror(EADDRINUSE));
                return -1;
            }
            unlink(c->path);
        }
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, len) < 0) {
        evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot bind %s: %s", c->file, c->line,
                c->name, c->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!abstract) {
        set->unlink_path = strdup(c->path);
        if (stat(c->path, &st) == 0) {
            set->path_dev = st.st_dev;
            set->path_ino = st.st_ino;
        }
        apply_file_settings(c);
    }
    set->fds[0] = fd;
    snprintf(address, alen, "unixgram:%s", c->path);
    return 0;
}

/* The socket the service manager bound for @c (socket activation): it
 * comes blocking, and one socket serves every udp: worker (systemd gives
 * one per address; the kernel hands each datagram to one reader). */
static int adopt(const evsd_listener_conf *c, evsd_datagram *set, int fd, char *address,
                 size_t alen)
{
    int flags = fcntl(fd, F_GETFL);
    char a[128];

    set->addrlen = sizeof set->addr;
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ||
        getsockname(fd, (struct sockaddr *)&set->addr, &set->addrlen) < 0) {
        evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': the socket from the service manager: %s",
                c->file, c->line, c->name, strerror(errno));
        close(fd);
        return -1;
    }
    set->fds[0] = fd;
    for (int i = 1; i < set->n; i++) {
        if ((set->fds[i] = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
            evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot share its socket: %s", c->file,
                    c->line, c->name, strerror(errno));
            return -1;
        }
    }
    evs_format_address((struct sockaddr *)&set->addr, set->addrlen, a, sizeof a);
    if (c->family == EVSD_UDP)
        snprintf(address, alen, "udp:%s", a);
    else /* "unix:PATH" */
        snprintf(address, alen, "unixgram:%s", a + strlen("unix:"));
    return 0;
}

evsd_datagram *evsd_datagram_start(evs_runtime *rt, const evsd_listener_conf *c,
                                   const evs_datagram_protocol *proto, void *ctx, int inherited,
                                   char *address, size_t alen)
{
    int workers = evs_runtime_worker_count(rt);
    evsd_datagram *set = calloc(1, sizeof *set);

    if (!set) {
        if (inherited >= 0)
            close(inherited);
        return NULL;
    }
    set->n = c->family == EVSD_UDP ? workers : 1;
    set->fds = malloc((size_t)set->n * sizeof *set->fds);
    set->eps = calloc((size_t)workers, sizeof *set->eps);
    set->proto = proto;
    set->ctx = ctx;
    set->high = (size_t)c->limits.write_high_water;
    set->low = (size_t)c->limits.write_low_water;
    if (!set->fds || !set->eps) {
        if (inherited >= 0)
            close(inherited);
        free(set->fds);
        free(set->eps);
        free(set);
        return NULL;
    }
    for (int i = 0; i < set->n; i++)
        set->fds[i] = -1;
    if ((inherited >= 0                ? adopt(c, set, inherited, address, alen)
         : c->family == EVSD_UDP ? bind_udp(c, set, address, alen)
                                 : bind_unixgram(c, set, address, alen)) < 0 ||
        on_workers(rt, set, open_here) > 0) {
        evsd_datagram_stop(rt, set);
        return NULL;
    }
    return set;
}

/* On worker i: a copy of the predecessor's socket there, if it still has
 * one (rebind_lost makes the others). */
static void dup_here(evs_worker *w, void *arg)
{
    evsd_datagram *set = arg;
    int i = evs_worker_id(w);
    evs_datagram *d = set->prev->eps[i];

    if (!d)
        return;
    set->fds[i] = fcntl(evs_datagram_get_fd(d), F_DUPFD_CLOEXEC, 0);
    if (set->fds[i] < 0)
        set->failures++;
}

/* A copy of another worker's socket of @set, or -1 if none has one. */
static int dup_sibling(const evsd_datagram *set)
{
    for (int j = 0; j < set->n; j++)
        if (set->fds[j] >= 0)
            return fcntl(set->fds[j], F_DUPFD_CLOEXEC, 0);
    return -1;
}

/* A socket for worker @i, whose endpoint was lost: a new one bound to the
 * address or, for udp: where that fails, a copy of another worker's
 * (after the switch to `user` no new socket can join the SO_REUSEPORT
 * group root's sockets form, nor bind a privileged port). @return what it
 * got, for the log, or NULL. */
static const char *replace_lost(evsd_datagram *set, const evsd_listener_conf *c, int i)
{
    char scratch[128];

    if (c->family == EVSD_UNIXGRAM)
        return bind_unixgram(c, set, scratch, sizeof scratch) == 0 ? "a new one" : NULL;
    if ((set->fds[i] = udp_socket(&set->addr, set->addrlen)) >= 0)
        return "a new one";
    if ((set->fds[i] = dup_sibling(set)) >= 0)
        return "a copy of another worker's";
    set->fds[i] = -1;
    return NULL;
}

/* New sockets where the predecessor's endpoint was lost (its plugin closed
 * it, or a fatal socket error): without them the worker (or, for
 * unixgram:, the listener) would stay deaf until a restart. Where none
 * can be had (a unixgram: file in a directory only root may write to,
 * every udp: endpoint lost) it is a warning, not a failed reload: the
 * listener stays as it was, and the next reload tries again. */
static void rebind_lost(evsd_datagram *set, const evsd_listener_conf *c)
{
    for (int i = 0; i < set->n; i++) {
        const char *got;

        if (set->fds[i] >= 0)
            continue;
        if ((got = replace_lost(set, c, i)))
            evs_log(EVS_LOG_WARN, "listener '%s': worker %d had lost its socket; it has %s",
                    c->name, i, got);
        else
            evs_log(EVS_LOG_WARN, "listener '%s': worker %d lost its socket and cannot get a new one",
                    c->name, i);
    }
}

evsd_datagram *evsd_datagram_succeed(evs_runtime *rt, const evsd_datagram *prev,
                                     const evsd_listener_conf *c,
                                     const evs_datagram_protocol *proto, void *ctx)
{
    int workers = evs_runtime_worker_count(rt);
    evsd_datagram *set = calloc(1, sizeof *set);

    if (!set)
        return NULL;
    set->n = prev->n;
    set->fds = malloc((size_t)set->n * sizeof *set->fds);
    set->eps = calloc((size_t)workers, sizeof *set->eps);
    set->proto = proto;
    set->ctx = ctx;
    set->prev = prev;
    set->addr = prev->addr;
    set->addrlen = prev->addrlen;
    set->high = (size_t)c->limits.write_high_water;
    set->low = (size_t)c->limits.write_low_water;
    if (!set->fds || !set->eps) {
        free(set->fds);
        free(set->eps);
        free(set);
        return NULL;
    }
    for (int i = 0; i < set->n; i++)
        set->fds[i] = -1;
    /* No unlink_path yet (unless rebind_lost made a new file): until
     * evsd_datagram_take_over, the file is prev's. */
    if (on_workers(rt, set, dup_here) == 0)
        rebind_lost(set, c);
    if (set->failures > 0 || on_workers(rt, set, open_here) > 0) {
        evs_log(EVS_LOG_ERROR, "datagram listener: cannot keep its socket");
        evsd_datagram_stop(rt, set);
        return NULL;
    }
    set->prev = NULL;
    return set;
}

void evsd_datagram_take_over(evsd_datagram *set, evsd_datagram *prev, const evsd_listener_conf *c)
{
    if (set->unlink_path) {
        /* rebind_lost replaced prev's file. The new one may have the old
         * inode number, so prev must not remove "its" file at its stop. */
        free(prev->unlink_path);
        prev->unlink_path = NULL;
        return;
    }
    set->unlink_path = prev->unlink_path;
    set->path_dev = prev->path_dev;
    set->path_ino = prev->path_ino;
    prev->unlink_path = NULL;
    if (set->unlink_path)
        apply_file_settings(c);
}

void evsd_datagram_stop(evs_runtime *rt, evsd_datagram *set)
{
    if (!set)
        return;
    on_workers(rt, set, close_here);
    free_set(set);
}
