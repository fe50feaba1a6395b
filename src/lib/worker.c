/*
 * worker.c - a worker: one event base on one thread, its inbox, and the
 * tasks and connections it owns.
 *
 * The inbox is a mutex-protected singly linked list plus an eventfd. A
 * sender writes the eventfd only when it makes the list non-empty, and the
 * worker takes the whole list at once, so a burst of messages costs one
 * wakeup (memcached's dispatch, with batching).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/dns.h>

#include "stream.h"
#include "tls.h"
#include "transport.h"
#include "worker.h"

static EVS__SWITCH_TLS evs_worker *current_worker;

evs_worker *evs_worker_current(void)
{
    return current_worker;
}

void evs__worker_set_current(evs_worker *w)
{
    current_worker = w;
}

int evs_worker_id(const evs_worker *worker)
{
    return worker->id;
}

evs_runtime *evs_worker_runtime(const evs_worker *worker)
{
    return worker->rt;
}

struct event_base *evs_worker_base(evs_worker *worker)
{
    return worker->base;
}

void evs_worker_stats_get(const evs_worker *w, evs_worker_stats *out)
{
    out->accepted = atomic_load_explicit(&w->accepted, memory_order_relaxed);
    out->active = atomic_load_explicit(&w->active, memory_order_relaxed);
    out->closed = atomic_load_explicit(&w->closed, memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&w->bytes_in, memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&w->bytes_out, memory_order_relaxed);
    out->tasks = atomic_load_explicit(&w->ntasks, memory_order_relaxed);
    out->tls_handshakes = atomic_load_explicit(&w->tls_handshakes, memory_order_relaxed);
    out->tls_failed = atomic_load_explicit(&w->tls_failed, memory_order_relaxed);
    out->tls_resumed = atomic_load_explicit(&w->tls_resumed, memory_order_relaxed);
    out->loop_lag_us = atomic_load_explicit(&w->loop_lag_us, memory_order_relaxed);
    out->buffered = atomic_load_explicit(&w->buffered, memory_order_relaxed);
}

char *evs__worker_tls_stage(evs_worker *w)
{
    if (!w->tls_stage)
        w->tls_stage = malloc(16384);
    return w->tls_stage;
}

/* Kept even by an idle worker: the views out at once on a quiet one. */
#define BLOCKS_KEPT 32

void *evs__worker_block_get(evs_worker *w, bool large)
{
    void *b = w->blocks[large];

    if (!b)
        return malloc(large ? EVS__BLOCK_LARGE : EVS__BLOCK_SMALL);
    memcpy(&w->blocks[large], b, sizeof b);
    if (--w->nblocks[large] < w->blocks_low[large])
        w->blocks_low[large] = w->nblocks[large];
    return b;
}

void evs__worker_want_tick(evs_worker *w)
{
    struct timeval second = {1, 0};

    if (w->tick_armed) /* block_put asks often: a flag is cheaper than libevent */
        return;
    for (int large = 0; large < 2; large++)
        w->blocks_low[large] = w->nblocks[large];
    w->tick_armed = evtimer_add(&w->tick_ev, &second) == 0;
}

void evs__worker_block_put(evs_worker *w, void *block, bool large)
{
    memcpy(block, &w->blocks[large], sizeof block);
    w->blocks[large] = block;
    w->nblocks[large]++;
    if (w->nblocks[large] > BLOCKS_KEPT)
        evs__worker_want_tick(w);
}

/* Blocks that stayed in the pool since the last tick were not needed by
 * the busiest moment of that second: free them, down to BLOCKS_KEPT.
 * @return whether the pool still holds more than that. */
static bool trim_blocks(evs_worker *w)
{
    bool more = false;

    for (int large = 0; large < 2; large++) {
        int surplus = w->blocks_low[large];

        if (surplus > w->nblocks[large] - BLOCKS_KEPT)
            surplus = w->nblocks[large] - BLOCKS_KEPT;
        for (; surplus > 0; surplus--) {
            void *b = w->blocks[large];

            memcpy(&w->blocks[large], b, sizeof b);
            w->nblocks[large]--;
            free(b);
        }
        more |= w->nblocks[large] > BLOCKS_KEPT;
    }
    return more;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_worker *w = arg;
    bool again;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    w->tick_armed = false;
    again = trim_blocks(w);
    if (evs__tls_sweep(w))
        again = true;
    if (again)
        evs__worker_want_tick(w);
}

static void run_message(evs_worker *w, evs__msg *m)
{
    if (m->fn) {
        /* A caller's message may be gone once its function returned. */
        bool owned = m->caller_owned;

        m->fn(w, m->arg);
        if (!owned)
            free(m);
    } else {
        evs__server_accept_on_worker(w, m); /* takes m */
    }
}

static void run_inbox(evs_worker *w)
{
    evs__msg *m, *next;

    pthread_mutex_lock(&w->inbox_lock);
    m = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    pthread_mutex_unlock(&w->inbox_lock);
    for (; m; m = next) {
        next = m->next;
        run_message(w, m);
    }
}

static void inbox_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_worker *w = arg;
    uint64_t n;

    EVS_UNUSED(what);
    if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        evs__warn("worker %d: inbox read: %s", w->id, strerror(errno));
    run_inbox(w);
}

#define LAG_PROBE_US 100000

static void arm_lag_probe(evs_worker *w)
{
    struct timeval tv = {0, LAG_PROBE_US};

    clock_gettime(CLOCK_MONOTONIC, &w->lag_due);
    w->lag_due.tv_nsec += LAG_PROBE_US * 1000L;
    if (w->lag_due.tv_nsec >= 1000000000L) {
        w->lag_due.tv_sec++;
        w->lag_due.tv_nsec -= 1000000000L;
    }
    evtimer_add(&w->lag_ev, &tv);
}

/* How late a timer fires is how long the loop was busy elsewhere. */
static void lag_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_worker *w = arg;
    struct timespec now;
    int64_t late;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    clock_gettime(CLOCK_MONOTONIC, &now);
    late = (int64_t)(now.tv_sec - w->lag_due.tv_sec) * 1000000 +
           (now.tv_nsec - w->lag_due.tv_nsec) / 1000;
    atomic_store_explicit(&w->loop_lag_us, late > 0 ? (uint64_t)late : 0, memory_order_relaxed);
    arm_lag_probe(w);
}

static void run_cb(evutil_socket_t fd, short what, void *arg)
{
    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    evs__task_run_ready(arg);
}

static void doomed_cb(evutil_socket_t fd, short what, void *arg)
{
    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    evs__stream_free_doomed(arg);
}

int evs__worker_init(evs_worker *w, evs_runtime *rt, int id, size_t stack_size)
{
    struct event_config *cfg;
    int err;

    memset(w, 0, sizeof *w);
    w->id = id;
    w->rt = rt;
    w->wake_fd = -1;
    pthread_mutex_init(&w->inbox_lock, NULL);

    /* Only this worker's thread touches its base: no locks needed. */
    cfg = event_config_new();
    if (!cfg)
        return -ENOMEM;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!w->base) {
        err = -ENOMEM;
        goto fail;
    }
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd < 0) {
        err = -errno;
        goto fail;
    }
    event_assign(&w->wake_ev, w->base, w->wake_fd, EV_READ | EV_PERSIST, inbox_cb, w);
    event_add(&w->wake_ev, NULL);
    event_assign(&w->run_ev, w->base, -1, 0, run_cb, w);
    event_assign(&w->doomed_ev, w->base, -1, 0, doomed_cb, w);
    evtimer_assign(&w->tick_ev, w->base, tick_cb, w);
    evs__transport_list_init(w);
    if (rt) {
        evtimer_assign(&w->lag_ev, w->base, lag_cb, w);
        arm_lag_probe(w);
    }

    w->stacks = evs__stack_pool_new(stack_size, 64);
    if (!w->stacks) {
        err = -errno;
        goto fail;
    }
    w->rbuf_size = 64 * 1024;
    w->rbuf = malloc(w->rbuf_size);
    if (!w->rbuf) {
        err = -ENOMEM;
        goto fail;
    }
    return 0;

fail:
    evs__worker_fini(w);
    return err;
}

void evs__worker_fini(evs_worker *w)
{
    evs__msg *m, *next;

    /* Messages nobody ran: close the connections, drop the calls. */
    for (m = w->inbox_head; m; m = next) {
        next = m->next;
        if (!m->fn && m->fd >= 0)
            close(m->fd);
        if (!m->caller_owned)
            free(m);
    }
    w->inbox_head = w->inbox_tail = NULL;
    if (w->dns) {
        evdns_base_free(w->dns, 1); /* pending lookups get EAI_CANCEL and free themselves */
        w->dns = NULL;
    }
    evs__stream_free_orphans(w);
    if (w->base) {
        if (w->wake_fd >= 0)
            event_del(&w->wake_ev);
        event_del(&w->run_ev);
        event_del(&w->doomed_ev);
        if (event_initialized(&w->tick_ev))
            event_del(&w->tick_ev);
        evs__transport_list_fini(w);
        if (event_initialized(&w->lag_ev))
            event_del(&w->lag_ev);
        event_base_free(w->base);
        w->base = NULL;
    }
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    w->wake_fd = -1;
    if (w->stacks)
        evs__stack_pool_free(w->stacks);
    w->stacks = NULL;
    free(w->rbuf);
    w->rbuf = NULL;
    free(w->tls_stage);
    w->tls_stage = NULL;
    for (int large = 0; large < 2; large++)
        while (w->blocks[large])
            free(evs__worker_block_get(w, large));
    pthread_mutex_destroy(&w->inbox_lock);
}

int evs__worker_push(evs_worker *w, evs__msg *m)
{
    bool was_empty;
    uint64_t one = 1;

    m->next = NULL;
    pthread_mutex_lock(&w->inbox_lock);
    if (w->inbox_closed) {
        pthread_mutex_unlock(&w->inbox_lock);
        return -ESHUTDOWN;
    }
    was_empty = w->inbox_head == NULL;
    if (w->inbox_tail)
        w->inbox_tail->next = m;
    else
        w->inbox_head = m;
    w->inbox_tail = m;
    /* The wake-up is written under the lock: once it is released, the
     * worker may run the message, finish, and close wake_fd. */
    if (was_empty) {
        while (write(w->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&w->inbox_lock);
    return 0;
}

void evs__worker_close_inbox(evs_worker *w)
{
    pthread_mutex_lock(&w->inbox_lock);
    w->inbox_closed = true;
    pthread_mutex_unlock(&w->inbox_lock);
}

int evs_worker_post(evs_worker *worker, evs_worker_fn fn, void *arg)
{
    evs__msg *m;
    int err;

    if (!worker || !fn)
        return -EINVAL;
    m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->fn = fn;
    m->arg = arg;
    m->fd = -1;
    err = evs__worker_push(worker, m);
    if (err)
        free(m);
    return err;
}

/* A caller of evs_worker_call, waiting on its own stack, message and all:
 * a call cannot fail for want of memory. */
typedef struct worker_call {
    evs__msg msg;
    evs_worker_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} worker_call;

static void run_call(evs_worker *w, void *arg)
{
    worker_call *c = arg;

    c->fn(w, c->arg);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

int evs_worker_call(evs_worker *worker, evs_worker_fn fn, void *arg)
{
    worker_call c = {.fn = fn, .arg = arg};
    int err;

    if (!worker || !fn)
        return -EINVAL;
    if (worker == current_worker)
        return -EDEADLK;
    c.msg.fn = run_call;
    c.msg.arg = &c;
    c.msg.fd = -1;
    c.msg.caller_owned = true;
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    err = evs__worker_push(worker, &c.msg);
    if (err == 0) {
        pthread_mutex_lock(&c.lock);
        while (!c.done)
            pthread_cond_wait(&c.cond, &c.lock);
        pthread_mutex_unlock(&c.lock);
    }
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
    return err;
}

/* Whether the loop may end: exit was asked, the aborted transports have
 * delivered connection_lost, the cancelled tasks have returned, and
 * every message accepted into the inbox has run (a posted function owns
 * its argument, and a caller of evs_worker_call waits for it). True
 * closes the inbox: from then on a post fails instead of waiting in an
 * inbox that no one reads. */
static bool loop_done(evs_worker *w)
{
    bool done;

    if (!w->exit_loop || w->transports.head || w->closables || w->tasks)
        return false;
    pthread_mutex_lock(&w->inbox_lock);
    done = w->inbox_head == NULL;
    if (done)
        w->inbox_closed = true;
    pthread_mutex_unlock(&w->inbox_lock);
    return done;
}

void evs__worker_loop(evs_worker *w)
{
    while (!loop_done(w)) {
        if (event_base_loop(w->base, EVLOOP_ONCE) < 0) {
            evs__error("worker %d: event loop failed", w->id);
            /* Still run what was posted: its senders may be waiting. */
            evs__worker_close_inbox(w);
            run_inbox(w);
            break;
        }
    }
}

void evs__worker_exit(evs_worker *w)
{
    w->exit_loop = true;
    event_base_loopbreak(w->base);
}

void evs__worker_track(evs_worker *w, evs__closable *c)
{
    c->prev = NULL;
    c->next = w->closables;
    if (c->next)
        c->next->prev = c;
    w->closables = c;
}

void evs__worker_untrack(evs_worker *w, evs__closable *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (w->closables == c)
        w->closables = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

void evs__worker_abort_all(evs_worker *w)
{
    evs_task *t;

    w->stopping = true;
    evs__transport_abort_all(w);
    for (evs__closable *c = w->closables, *next; c; c = next) {
        next = c->next;
        c->abort(c); /* untracks itself later, when it is gone */
    }
    for (t = w->tasks; t; t = t->all_next)
        evs_task_cancel(t);
}

struct evdns_base *evs__worker_dns(evs_worker *w)
{
    if (!w->dns) {
        w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        /* Without a resolv.conf (containers) keep a resolver that still
         * reads /etc/hosts and numeric addresses. */
        if (!w->dns) {
            w->dns = evdns_base_new(w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
            if (w->dns)
                evdns_base_load_hosts(w->dns, NULL);
        }
    }
    return w->dns;
}
