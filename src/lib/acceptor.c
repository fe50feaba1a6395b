/*
 * acceptor.c - accepting: the acceptor thread accepts on every listening
 * socket and hands each connection to a worker; a reuse_port server's
 * sockets are each accepted from by one worker instead, which takes the
 * connection itself (no hand-off: see docs/architecture.md).
 *
 * A listener's event is touched only by the thread that owns it; other
 * threads reach it through that thread's inbox (evs_worker_post), and
 * sync_listener() makes the event match the state (serving, closed,
 * paused) whoever changed it.
 *
 * Two conditions stop accepting instead of accepting and dropping:
 * max_connections (resumed by the worker that closes a connection) and fd
 * exhaustion, EMFILE/ENFILE (retried from a timer with back-off; libevent's
 * own listener would spin on a readable socket it cannot accept from).
 * A server with no_runtime_limit is neither counted in nor stopped by the
 * runtime's max_connections, only by its own and by fd exhaustion.
 */
#include "server.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections accepted per readiness event before looking at the others. */
#define ACCEPTS_PER_EVENT 64

/* Whether the runtime's max_connections counts and stops @s: not for a
 * server that opted out (an admin listener must answer exactly when the
 * others are full). */
static bool counts_in_runtime(const evs_server *s)
{
    return !s->opts.no_runtime_limit;
}

/* Whether the runtime's state stops @s accepting: fd exhaustion stops
 * every server, the runtime's limit only those that count in it. */
static bool runtime_paused(const evs_server *s)
{
    return atomic_load(&s->rt->fd_paused) ||
           (counts_in_runtime(s) && atomic_load(&s->rt->limit_paused));
}

static evs_worker *owner_of(evs__listener *l)
{
    return l->owner ? l->owner : &l->server->rt->acceptor;
}

/* On the owner: watch the socket or not, as the state now says. */
static void sync_listener(evs__listener *l)
{
    evs_server *s = l->server;
    bool want = l->ev_assigned && l->fd >= 0 && atomic_load(&s->serving) &&
                !atomic_load(&s->closed) && !atomic_load(&s->limits->paused) && !runtime_paused(s);

    if (want && !l->ev_added) {
        event_add(&l->ev, NULL);
        l->ev_added = true;
    } else if (!want && l->ev_added) {
        event_del(&l->ev);
        l->ev_added = false;
    }
}

static void sync_msg(evs_worker *w, void *arg)
{
    EVS_UNUSED(w);
    sync_listener(arg);
}

/* Bring every listener in line with the state, each on its owner. */
static void set_listening(evs_runtime *rt)
{
    evs_worker *here = evs_worker_current();
    evs_server *s;

    pthread_mutex_lock(&rt->lock);
    for (s = rt->servers; s; s = s->next) {
        if (atomic_load(&s->closed))
            continue;
        for (size_t i = 0; i < s->nlisteners; i++) {
            evs__listener *l = &s->listeners[i];
            if (owner_of(l) == here)
                sync_listener(l);
            else
                evs_worker_post(owner_of(l), sync_msg, l); /* fails only when stopping */
        }
    }
    pthread_mutex_unlock(&rt->lock);
}

static evs_worker *pick_worker(evs_runtime *rt)
{
    evs_worker *best;
    uint64_t best_active;
    int n = rt->nworkers;
    int start = (int)(rt->rr++ % (unsigned)n);

    if (rt->dispatch == EVS_DISPATCH_ROUND_ROBIN)
        return &rt->workers[start];
    /* Least connections; scanning from a rotating start makes ties go
     * round-robin. */
    best = &rt->workers[start];
    best_active = atomic_load_explicit(&best->active, memory_order_relaxed);
    for (int i = 1; i < n && best_active > 0; i++) {
        evs_worker *w = &rt->workers[(start + i) % n];
        uint64_t a = atomic_load_explicit(&w->active, memory_order_relaxed);
        if (a < best_active) {
            best = w;
            best_active = a;
        }
    }
    return best;
}

/* Count a connection as @w's before it gets there, so the limits and
 * least-connections see connections still in flight to a worker. */
static void count_accepted(evs_server *s, evs_worker *w)
{
    /* The limits counted the connection before the accept (take_slot). */
    atomic_fetch_add_explicit(&s->accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->active, 1, memory_order_relaxed);
    /* Not evs__counter_add: the acceptor and the worker itself (its own
     * reuse_port socket) both count here. */
    atomic_fetch_add_explicit(&w->accepted, 1, memory_order_relaxed);
}

/* Wake the acceptor if it paused at the runtime's limit (@runtime: a slot
 * of it was given back) or at @s's (NULL: none of a server; @s may be a
 * closed generation whose successor paused on the limits they share). */
static void resume_after_release(evs_runtime *rt, bool runtime, evs_server *s)
{
    bool resume = runtime && atomic_load(&rt->limit_paused) &&
                  atomic_exchange(&rt->limit_paused, false);

    if (s && atomic_load(&s->limits->paused) && atomic_exchange(&s->limits->paused, false))
        resume = true;
    if (resume)
        evs_worker_post(&rt->acceptor, evs__acceptor_resume, NULL);
}

/* Count a connection against @max before accepting it: the check and the
 * count are one step, so workers accepting on their own sockets at once
 * cannot all pass a limit that has room for one. 0: no limit. */
static bool reserve(_Atomic size_t *count, size_t max)
{
    size_t v = atomic_load(count);

    do {
        if (max > 0 && v >= max)
            return false;
    } while (!atomic_compare_exchange_weak(count, &v, v + 1));
    return true;
}

/* @return 0 (counted), 1 (at the runtime's limit) or 2 (at the server's). */
static int take_slot(evs_server *s)
{
    evs_runtime *rt = s->rt;
    bool global = counts_in_runtime(s);

    if (global && !reserve(&rt->conns, rt->max_connections))
        return 1;
    if (!reserve(&s->limits->conns, s->opts.max_connections)) {
        if (global) {
            atomic_fetch_sub(&rt->conns, 1);
            resume_after_release(rt, true, NULL); /* another thread may have paused on it */
        }
        return 2;
    }
    atomic_fetch_add(&s->conns, 1);
    return 0;
}

/* Give back take_slot()'s slot: the connection closed, or was never made. */
static void release_slot(evs_server *s)
{
    bool global = counts_in_runtime(s);

    atomic_fetch_sub(&s->conns, 1);
    atomic_fetch_sub(&s->limits->conns, 1);
    if (global)
        atomic_fetch_sub(&s->rt->conns, 1);
    resume_after_release(s->rt, global, s);
}

/* The message that takes an accepted connection to its worker. */
static void fill_msg(evs__msg *m, evs_server *s, int fd, const struct sockaddr_storage *peer,
                     socklen_t plen, uint64_t key, bool counted)
{
    memset(m, 0, offsetof(evs__msg, peer));
    m->fd = fd;
    m->server = s;
    m->ip_key = key;
    m->ip_counted = counted;
    m->peerlen = plen;
    memcpy(&m->peer, peer, plen);
}

/* @here: the worker whose own socket accepted @fd, which takes it over on
 * the spot, or NULL (the acceptor, which hands it to a worker). */
static void dispatch(evs_server *s, evs_worker *here, int fd, const struct sockaddr_storage *peer,
                     socklen_t plen)
{
    evs_runtime *rt = s->rt;
    evs_worker *w;
    evs__msg *m;
    uint64_t key = 0;
    bool counted = false;

    /* Behind the PROXY protocol the peer is the proxy: the client's
     * address comes with the header, and proxy_stage.c admits it then. */
    if (evs__iplimit_enabled(s) && !s->opts.proxy_protocol && evs__ip_key(peer, &key)) {
        int rc = evs__iplimit_admit(s, key);
        if (rc < 0) {
            evs__iplimit_reject(s, fd, rc, peer, plen);
            release_slot(s);
            return;
        }
        counted = true;
    }
    if (here) {
        evs__msg local;

        fill_msg(&local, s, fd, peer, plen, key, counted);
        count_accepted(s, here);
        evs__server_take(here, &local);
        return;
    }
    w = pick_worker(rt);
    m = malloc(sizeof *m);
    if (!m) {
        evs__warn("out of memory: dropping a new connection");
        if (counted)
            evs__iplimit_release(s, key);
        close(fd);
        release_slot(s);
        return;
    }
    fill_msg(m, s, fd, peer, plen, key, counted);
    count_accepted(s, w);
    if (evs__worker_push(w, m) < 0) {
        close(fd);
        free(m);
        if (counted)
            evs__iplimit_release(s, key);
        evs__connection_closed(s, w);
    }
}

/* On the acceptor: re-enable accepting after a growing delay. */
static void arm_retry(evs_worker *acceptor, void *arg)
{
    evs_runtime *rt = acceptor->rt;
    struct timeval tv;

    if (evtimer_pending(&rt->retry_ev, NULL))
        return; /* another thread's EMFILE, same pause */
    /* An accept that worked since the last step ended that episode. */
    if (atomic_exchange(&rt->worker_accepted, false))
        rt->retry_delay = 0;
    if (rt->retry_delay <= 0)
        rt->retry_delay = 0.1;
    /* Logged once per back-off step, not per failed accept. */
    evs__warn("accept: %s; not accepting for %.1fs", strerror((int)(intptr_t)arg),
              rt->retry_delay);
    tv = evs__tv(rt->retry_delay);
    evtimer_add(&rt->retry_ev, &tv);
    if (rt->retry_delay < 2.0)
        rt->retry_delay *= 2;
}

static void pause_for_fds(evs_runtime *rt, int err)
{
    atomic_store(&rt->fd_paused, true);
    set_listening(rt);
    if (evs_worker_current() == &rt->acceptor)
        arm_retry(&rt->acceptor, (void *)(intptr_t)err);
    else
        evs_worker_post(&rt->acceptor, arm_retry, (void *)(intptr_t)err);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_runtime *rt = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    atomic_store(&rt->fd_paused, false);
    set_listening(rt); /* each listener as its server's state says */
}

/* Count a pause in @log. @return whether to log it, with *@pauses (this one
 * included) and *@secs, the time they cover (0 for the first line). One
 * thread wins the compare-and-swap and logs; the others only count. */
static bool pause_log_due(evs__pause_log *log, unsigned long *pauses, double *secs)
{
    uint64_t now = (uint64_t)(evs__monotonic() * 1000);
    uint64_t last = atomic_load(&log->last_ms);

    atomic_fetch_add(&log->pauses, 1);
    if (last != 0 && now - last < 1000)
        return false;
    if (!atomic_compare_exchange_strong(&log->last_ms, &last, now))
        return false;
    *pauses = atomic_exchange(&log->pauses, 0);
    *secs = last ? (double)(now - last) / 1000 : 0;
    return true;
}

/* "@what (@max) reached; not accepting until @until", at most once a second
 * with the count of pauses the line stands for. */
static void log_pause(evs__pause_log *log, const char *what, size_t max, const char *until)
{
    unsigned long pauses;
    double secs;

    if (!pause_log_due(log, &pauses, &secs))
        return;
    if (secs == 0)
        evs__info("%s (%zu) reached; not accepting until %s", what, max, until);
    else
        evs__info("%s (%zu) reached %lu time(s) in the last %.0fs; not accepting until %s", what,
                  max, pauses, secs, until);
}

static bool at_limit(evs_runtime *rt)
{
    return rt->max_connections > 0 && atomic_load(&rt->conns) >= rt->max_connections;
}

static void pause_for_limit(evs_runtime *rt)
{
    if (!atomic_exchange(&rt->limit_paused, true))
        log_pause(&rt->limit_log, "max_connections", rt->max_connections,
                  "connections close");
    set_listening(rt);
    /* A close may have happened between the check and the flag: look again. */
    if (!at_limit(rt) && atomic_exchange(&rt->limit_paused, false))
        set_listening(rt);
}

static bool server_at_limit(evs_server *s)
{
    return s->opts.max_connections > 0 &&
           atomic_load(&s->limits->conns) >= s->opts.max_connections;
}

/* One server at its own max_connections: only its sockets stop (and those
 * of an older generation sharing its limits, if that still serves). */
static void pause_server(evs_server *s)
{
    if (!atomic_exchange(&s->limits->paused, true))
        log_pause(&s->limit_log, "listener max_connections", s->opts.max_connections,
                  "one of its connections closes");
    set_listening(s->rt); /* drops this server's sockets only */
    if (!server_at_limit(s) && atomic_exchange(&s->limits->paused, false))
        set_listening(s->rt);
}

/* A server starting to serve takes charge of the limits it may share
 * with a predecessor: its rate now fills the shared buckets, and a pause
 * the predecessor left holds it back only if it is at its own limit too
 * (a reload may have raised it). Not at start: a reload that fails
 * discards a successor that never served. @return whether a pause went. */
static bool take_charge_of_limits(evs_server *s)
{
    evs__limits_set_rate(s->limits, s->opts.connection_rate_per_ip,
                         s->opts.connection_burst_per_ip);
    return !server_at_limit(s) && atomic_load(&s->limits->paused) &&
           atomic_exchange(&s->limits->paused, false);
}

/* A worker may not touch the acceptor's back-off state: it leaves a flag
 * that the acceptor reads at the next step. Stored only when not set yet,
 * so accepting keeps the flag's cache line shared, not bouncing. */
static void note_worker_accept(evs_runtime *rt)
{
    if (!atomic_load_explicit(&rt->worker_accepted, memory_order_relaxed))
        atomic_store_explicit(&rt->worker_accepted, true, memory_order_relaxed);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    evs__listener *l = arg;
    evs_server *s = l->server;
    evs_runtime *rt = s->rt;

    EVS_UNUSED(what);
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd;

        /* Each time round: on a worker that owns the socket, the last
         * connection_made ran inline and may have closed the server. */
        if (atomic_load(&s->closed)) {
            sync_listener(l); /* its sockets went to a new server, or close */
            return;
        }
        int full = take_slot(s);
        if (full) {
            if (full == 1)
                pause_for_limit(rt);
            else
                pause_server(s);
            return;
        }
        fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            release_slot(s);
            errno = err;
            switch (errno) {
            case EAGAIN:
#if EAGAIN != EWOULDBLOCK
            case EWOULDBLOCK:
#endif
                return;
            case EINTR:
            case ECONNABORTED:
            case EPROTO:
            case EPERM:
                continue;
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                pause_for_fds(rt, errno);
                return;
            default:
                evs__warn("accept: %s", strerror(errno));
                return;
            }
        }
        if (!l->owner)
            rt->retry_delay = 0; /* the acceptor's back-off state */
        else
            note_worker_accept(rt);
        dispatch(s, l->owner, fd, &peer, plen);
    }
}

/* On the owner: start watching @l (as the state allows). */
static void attach_listener(evs_worker *owner, void *arg)
{
    evs__listener *l = arg;

    event_assign(&l->ev, owner->base, l->fd, EV_READ | EV_PERSIST, accept_cb, l);
    l->ev_assigned = true;
    sync_listener(l);
}

void evs__acceptor_add(evs_worker *acceptor, void *arg)
{
    evs_server *s = arg;
    bool unpaused = atomic_load(&s->serving) && take_charge_of_limits(s);

    for (size_t i = 0; i < s->nlisteners; i++) {
        evs__listener *l = &s->listeners[i];
        if (!l->owner)
            attach_listener(acceptor, l);
        else
            evs_worker_post(l->owner, attach_listener, l);
    }
    if (unpaused)
        set_listening(acceptor->rt); /* a predecessor still serving may accept again */
}

void evs__acceptor_serve(evs_worker *acceptor, void *arg)
{
    evs_server *s = arg;

    EVS_UNUSED(acceptor);
    take_charge_of_limits(s);
    atomic_store(&s->serving, true);
    set_listening(s->rt);
}

/* On the owner: stop watching @l, then close its socket. The event goes
 * first: libevent must not watch an fd number that may be reused. */
void evs__listener_close(evs_worker *owner, void *arg)
{
    evs__listener *l = arg;
    evs_runtime *rt = l->server->rt;
    int fd;

    EVS_UNUSED(owner);
    if (l->ev_added)
        event_del(&l->ev);
    l->ev_added = false;
    /* Closed under the lock: once a thread sees -1 (evs_server_wait_closed),
     * the port is free. */
    pthread_mutex_lock(&rt->lock);
    fd = l->fd;
    l->fd = -1;
    if (fd >= 0)
        close(fd);
    pthread_mutex_unlock(&rt->lock);
}

void evs__acceptor_remove(evs_worker *acceptor, void *arg)
{
    evs_server *s = arg;
    struct stat st;

    for (size_t i = 0; i < s->nlisteners; i++) {
        evs__listener *l = &s->listeners[i];
        /* A worker that is gone leaves it to us (its loop no longer runs). */
        if (!l->owner || evs_worker_post(l->owner, evs__listener_close, l) < 0)
            evs__listener_close(acceptor, l);
    }
    /* Remove our socket file, but not one that replaced it since. */
    if (s->path && !s->keep_path && s->path[0] != '@' && stat(s->path, &st) == 0 &&
        st.st_dev == s->path_dev && st.st_ino == s->path_ino && unlink(s->path) < 0)
        evs__warn("cannot remove the socket file %s: %s", s->path, strerror(errno));
}

/* Every listener, not only when the runtime is under its limit: a server
 * outside that limit resumes at its own while the others stay paused. */
void evs__acceptor_resume(evs_worker *acceptor, void *unused)
{
    EVS_UNUSED(unused);
    set_listening(acceptor->rt);
}

void evs__acceptor_stop(evs_worker *acceptor, void *unused)
{
    evs_runtime *rt = acceptor->rt;
    evs_server *s;

    EVS_UNUSED(unused);
    evtimer_del(&rt->retry_ev);
    pthread_mutex_lock(&rt->lock);
    s = rt->servers;
    pthread_mutex_unlock(&rt->lock);
    /* Servers are only ever added at the head, and removed only on this
     * thread (evs_server_free), so this walk is safe. */
    for (; s; s = s->next) {
        if (!atomic_exchange(&s->closed, true))
            evs__acceptor_remove(acceptor, s);
    }
    evs__worker_exit(acceptor);
}

void evs__connection_closed(evs_server *s, evs_worker *w)
{
    atomic_fetch_add_explicit(&s->closed_count, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->active, 1, memory_order_relaxed);
    /* The acceptor counts here too, on a failed hand-off. */
    atomic_fetch_add_explicit(&w->closed, 1, memory_order_relaxed);
    release_slot(s); /* the first close after a pause at a limit wakes the acceptor */
}

void evs__acceptor_init(evs_runtime *rt)
{
    evtimer_assign(&rt->retry_ev, rt->acceptor.base, retry_cb, rt);
}
