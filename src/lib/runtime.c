/*
 * runtime.c - the runtime: start the workers and the acceptor, stop them.
 */
#include "server.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/thread.h>

#include "transport.h"

static pthread_once_t libevent_once = PTHREAD_ONCE_INIT;

static void libevent_init(void)
{
    /* Our bases are lock-free (one thread each), but bases users create
     * and evdns may be shared; threading support must exist before any
     * base does. */
    evthread_use_pthreads();
}

static void set_threads_state(evs_runtime *rt, int state)
{
    pthread_mutex_lock(&rt->start_lock);
    rt->threads_state = state;
    pthread_cond_broadcast(&rt->start_cond);
    pthread_mutex_unlock(&rt->start_lock);
}

/* Whether evs_runtime_new created every thread (it failed otherwise, and
 * stops the runtime: no hook runs then). */
static bool all_threads_created(evs_runtime *rt)
{
    bool ok;

    pthread_mutex_lock(&rt->start_lock);
    while (rt->threads_state == 0)
        pthread_cond_wait(&rt->start_cond, &rt->start_lock);
    ok = rt->threads_state > 0;
    pthread_mutex_unlock(&rt->start_lock);
    return ok;
}

static void *worker_main(void *arg)
{
    evs_worker *w = arg;

    evs_runtime *rt = w->rt;
    bool hooks = w != &rt->acceptor && (rt->opts.worker_started || rt->opts.worker_stopping) &&
                 all_threads_created(rt);

    evs__worker_set_current(w);
    evs__signals_blocked_here = true; /* start_thread blocked them all */
    if (evs__fiber_thread_init() < 0)
        evs__warn("worker %d: no alternate signal stack; stack overflows are not reported", w->id);
    if (hooks && rt->opts.worker_started)
        rt->opts.worker_started(w, rt->opts.hook_arg);
    evs__worker_loop(w);
    if (hooks && rt->opts.worker_stopping)
        rt->opts.worker_stopping(w, rt->opts.hook_arg);
    evs__fiber_thread_fini();
    evs__worker_set_current(NULL);
    return NULL;
}

/* Start a thread with every asynchronous signal blocked: signals belong to
 * the embedding program's threads (the daemon handles them on main). The
 * faults stay unblocked: one raised while blocked kills the process before
 * any handler runs, the report of a task stack overflow among them. */
static int start_thread(evs_worker *w)
{
    static const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS};
    sigset_t all, old;
    int err;

    sigfillset(&all);
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        return -err;
    w->thread_started = true;
    return 0;
}

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int evs_runtime_new(const evs_runtime_options *opts, evs_runtime **out)
{
    evs_runtime_options defaults;
    evs_runtime *rt;
    int err;

    memset(&defaults, 0, sizeof defaults);
    if (!opts)
        opts = &defaults;
    if (!out || opts->workers < 0 || opts->workers > 4096 ||
        (opts->dispatch != EVS_DISPATCH_LEAST_CONNECTIONS &&
         opts->dispatch != EVS_DISPATCH_ROUND_ROBIN))
        return -EINVAL;
    pthread_once(&libevent_once, libevent_init);

    rt = calloc(1, sizeof *rt);
    if (!rt)
        return -ENOMEM;
    rt->opts = *opts;
    rt->nworkers = opts->workers ? opts->workers : online_cpus();
    rt->dispatch = opts->dispatch;
    rt->max_connections = opts->max_connections;
    pthread_mutex_init(&rt->lock, NULL);
    pthread_mutex_init(&rt->start_lock, NULL);
    pthread_cond_init(&rt->start_cond, NULL);
    rt->workers = calloc((size_t)rt->nworkers, sizeof *rt->workers);
    if (!rt->workers) {
        err = -ENOMEM;
        goto fail_acceptor;
    }
    err = evs__worker_init(&rt->acceptor, rt, EVS__ACCEPTOR_ID, 16 * 1024);
    if (err)
        goto fail_acceptor;
    evs__acceptor_init(rt);
    for (int i = 0; i < rt->nworkers; i++) {
        err = evs__worker_init(&rt->workers[i], rt, i, opts->stack_size);
        if (err) {
            while (i-- > 0)
                evs__worker_fini(&rt->workers[i]);
            goto fail_workers;
        }
    }
    for (int i = 0; i < rt->nworkers; i++) {
        err = start_thread(&rt->workers[i]);
        if (err)
            goto fail_threads;
    }
    err = start_thread(&rt->acceptor);
    if (err)
        goto fail_threads;
    set_threads_state(rt, 1);
    *out = rt;
    return 0;

fail_threads:
    set_threads_state(rt, -1);
    evs_runtime_stop(rt, 0);
    return err;
fail_workers:
    evs__worker_fini(&rt->acceptor);
fail_acceptor:
    free(rt->workers);
    pthread_cond_destroy(&rt->start_cond);
    pthread_mutex_destroy(&rt->start_lock);
    pthread_mutex_destroy(&rt->lock);
    free(rt);
    return err;
}

uint64_t evs__runtime_write_budget(const evs_runtime *rt)
{
    return rt->opts.write_budget;
}

uint64_t evs__runtime_buffered(const evs_runtime *rt)
{
    uint64_t sum = 0;

    for (int i = 0; i < rt->nworkers; i++)
        sum += atomic_load_explicit(&rt->workers[i].buffered, memory_order_relaxed);
    return sum;
}

int evs_runtime_worker_count(const evs_runtime *rt)
{
    return rt->nworkers;
}

evs_worker *evs_runtime_worker(evs_runtime *rt, int i)
{
    if (i < 0 || i >= rt->nworkers)
        return NULL;
    return &rt->workers[i];
}

void evs_runtime_stats(evs_runtime *rt, evs_worker_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < rt->nworkers; i++) {
        evs_worker_stats s;
        evs_worker_stats_get(&rt->workers[i], &s);
        out->accepted += s.accepted;
        out->active += s.active;
        out->closed += s.closed;
        out->bytes_in += s.bytes_in;
        out->bytes_out += s.bytes_out;
        out->tasks += s.tasks;
        out->tls_handshakes += s.tls_handshakes;
        out->tls_failed += s.tls_failed;
        out->tls_resumed += s.tls_resumed;
        out->buffered += s.buffered;
        if (s.loop_lag_us > out->loop_lag_us)
            out->loop_lag_us = s.loop_lag_us; /* the worst worker */
    }
}

int evs_runtime_broadcast(evs_runtime *rt, evs_worker_fn fn, void *arg)
{
    evs__msg **msgs;
    int i, rc = 0;

    if (!rt || !fn)
        return -EINVAL;
    if (atomic_load(&rt->stopping))
        return -ESHUTDOWN;
    /* Every message made before any is sent: short of memory, no worker
     * runs fn, rather than some. */
    msgs = calloc((size_t)rt->nworkers, sizeof *msgs);
    for (i = 0; msgs && i < rt->nworkers; i++)
        if (!(msgs[i] = calloc(1, sizeof *msgs[i])))
            break;
    if (!msgs || i < rt->nworkers) {
        while (msgs && i-- > 0)
            free(msgs[i]);
        free(msgs);
        return -ENOMEM;
    }
    for (i = 0; i < rt->nworkers; i++) {
        msgs[i]->fn = fn;
        msgs[i]->arg = arg;
        msgs[i]->fd = -1;
        if (evs__worker_push(&rt->workers[i], msgs[i]) != 0) {
            free(msgs[i]); /* that worker is stopping */
            rc = -ESHUTDOWN;
        }
    }
    free(msgs);
    return rc;
}

/* --- stopping ---------------------------------------------------------- */

static void worker_abort(evs_worker *w, void *arg)
{
    EVS_UNUSED(arg);
    evs__worker_abort_all(w);
}

/* Last message a worker runs: abort what is left, then leave the loop once
 * every transport and task is gone. */
static void worker_finish(evs_worker *w, void *arg)
{
    EVS_UNUSED(arg);
    evs__worker_abort_all(w);
    w->exit_loop = true;
}

/* For a round trip: once it ran, so did what was posted before it. */
static void nothing(evs_worker *w, void *arg)
{
    EVS_UNUSED(w);
    EVS_UNUSED(arg);
}

static bool workers_idle(evs_runtime *rt)
{
    for (int i = 0; i < rt->nworkers; i++) {
        evs_worker *w = &rt->workers[i];
        if (atomic_load_explicit(&w->active, memory_order_relaxed) > 0 ||
            atomic_load_explicit(&w->ntasks, memory_order_relaxed) > 0)
            return false;
    }
    return true;
}

/* Wait up to @timeout seconds (< 0: forever) for the workers to go idle.
 * A short sleep between looks: this runs once, at shutdown. */
static bool wait_idle(evs_runtime *rt, double timeout)
{
    double deadline = evs__monotonic() + timeout;
    struct timespec nap = {0, 2 * 1000 * 1000};

    while (!workers_idle(rt)) {
        if (timeout >= 0 && evs__monotonic() >= deadline)
            return false;
        nanosleep(&nap, NULL);
    }
    return true;
}

int evs_runtime_stop(evs_runtime *rt, double timeout)
{
    int rc = 0;
    evs_server *s, *next;

    if (!rt)
        return -EINVAL;
    /* On one of its own threads it would join itself and free the loop it
     * runs on. */
    if (evs_worker_current() && evs_worker_current()->rt == rt)
        return -EDEADLK;
    if (isnan(timeout))
        timeout = 0; /* as elsewhere: a bound that is no number waits for nothing */
    atomic_store(&rt->stopping, true);

    /* 1. Stop accepting: close every listener, end the acceptor. Calls,
     * not posts: their messages need no memory, so they cannot fail. */
    if (rt->acceptor.thread_started) {
        /* A call refused means the acceptor's loop failed and closed its
         * inbox on the way out: its thread ends by itself, joined all the
         * same. */
        evs_worker_call(&rt->acceptor, evs__acceptor_stop, NULL);
        pthread_join(rt->acceptor.thread, NULL);
        rt->acceptor.thread_started = false;
    }
    evs__worker_close_inbox(&rt->acceptor);
    /* The acceptor posted the close of reuse_port sockets to the workers
     * that own them; until those ran, a worker could still accept. */
    for (int i = 0; i < rt->nworkers; i++)
        if (rt->workers[i].thread_started)
            evs_worker_call(&rt->workers[i], nothing, NULL);

    /* 2. Let handlers finish, then abort and cancel what is left. */
    if (!wait_idle(rt, timeout)) {
        rc = -ETIMEDOUT;
        /* With 0 nothing was waited for: the caller chose to abort at once
         * and says so itself (evstreamd waits and logs before it calls). */
        if (timeout > 0)
            evs__info("stopping: aborting connections still open after %.1fs", timeout);
        for (int i = 0; i < rt->nworkers; i++)
            if (rt->workers[i].thread_started)
                evs_worker_post(&rt->workers[i], worker_abort, NULL);
    }

    /* 3. End every worker loop and join. */
    for (int i = 0; i < rt->nworkers; i++) {
        evs_worker *w = &rt->workers[i];
        if (!w->thread_started)
            continue;
        evs_worker_call(w, worker_finish, NULL);
        evs__worker_close_inbox(w);
        pthread_join(w->thread, NULL);
    }
    for (int i = 0; i < rt->nworkers; i++)
        evs__worker_fini(&rt->workers[i]);
    evs__worker_fini(&rt->acceptor);

    for (s = rt->servers; s; s = next) {
        next = s->next;
        evs__server_free(s);
    }
    free(rt->workers);
    pthread_cond_destroy(&rt->start_cond);
    pthread_mutex_destroy(&rt->start_lock);
    pthread_mutex_destroy(&rt->lock);
    free(rt);
    return rc;
}
