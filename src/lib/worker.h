/*
 * worker.h - workers (one event base, one thread, its tasks and
 * connections) and the task scheduler that runs on them. Internal.
 */
#ifndef EVS_WORKER_H
#define EVS_WORKER_H

#include "internal.h"

#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "fiber.h"

struct evs_server;
struct evdns_base;

/* A message in a worker's inbox: a function to run, or an accepted
 * connection to take over. */
typedef struct evs__msg {
    struct evs__msg *next;
    evs_worker_fn fn; /* NULL for a connection */
    void *arg;
    int fd;
    struct evs_server *server;
    uint64_t ip_key; /* per-address accounting, when ip_counted */
    bool ip_counted;
    bool caller_owned; /* on the stack of an evs_worker_call: never freed here */
    socklen_t peerlen;
    struct sockaddr_storage peer;
} evs__msg;

/* Tasks parked on one condition, woken in order. */
typedef struct evs__waitq {
    evs_task *head;
    evs_task *tail;
} evs__waitq;

/* Something else a worker owns and must end before it stops (a datagram
 * endpoint): abort() ends it, and it untracks itself when gone. */
typedef struct evs__closable {
    struct evs__closable *next;
    struct evs__closable *prev;
    void (*abort)(struct evs__closable *c);
} evs__closable;

/* Live transports of a worker, for aborting them at shutdown, and those
 * whose connection_lost is due: one event runs them all, outside the call
 * that ended them, so a transport needs no event of its own for it. */
typedef struct evs__tlist {
    evs_transport *head;
    evs_transport *lost_head;
    evs_transport **lost_tail;
    struct event lost_ev;
} evs__tlist;

struct evs_worker {
    int id;
    evs_runtime *rt;
    struct event_base *base;
    pthread_t thread;
    bool thread_started;

    /* Inbox: any thread pushes under the lock; the worker drains it all.
     * The eventfd is written only on the empty -> non-empty transition. */
    pthread_mutex_t inbox_lock;
    evs__msg *inbox_head;
    evs__msg *inbox_tail;
    bool inbox_closed;
    int wake_fd;
    struct event wake_ev;

    /* Tasks. */
    evs__stack_pool *stacks;
    evs_task *ready_head;
    evs_task *ready_tail;
    /* Active, or due at once, whenever the ready list is not empty, except
     * inside evs__task_run_ready, which arms it at its end. */
    struct event run_ev;
    bool running_ready;   /* inside evs__task_run_ready */
    struct event lag_ev;     /* a periodic probe of the loop's latency */
    struct timespec lag_due;
    evs_task *tasks; /* every live task, for cancelling at shutdown */

    /* Connections. */
    evs__tlist transports;
    struct evs_stream *orphan_streams; /* lost pairs nobody released (stream.c) */
    struct evs_stream *doomed_streams; /* released pairs to free in the next pass */
    struct event doomed_ev;            /* active while doomed_streams is not empty */
    evs__closable *closables;
    bool stopping; /* no new tasks or connections */
    bool exit_loop;

    /* Scratch buffer for data_received (read straight from the socket). */
    char *rbuf;
    size_t rbuf_size;

    struct evdns_base *dns;
    char *tls_stage; /* coalesces small TLS writes into full records */
    void *blocks[2]; /* free read blocks (small, large), linked through
                      * their first word */
    int nblocks[2];
    int blocks_low[2];         /* fewest free since the last tick */
    struct evs__tls *tls_busy; /* TLS connections keeping record buffers */
    struct event tick_ev;      /* once a second while either needs trimming */
    bool tick_armed;           /* tick_ev is pending */

    /* Counters: written by this worker, read by anyone. */
    _Atomic uint64_t accepted;
    _Atomic uint64_t active;
    _Atomic uint64_t closed;
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t ntasks;
    _Atomic uint64_t tls_handshakes;
    _Atomic uint64_t tls_failed;
    _Atomic uint64_t tls_resumed;
    _Atomic uint64_t loop_lag_us;
    _Atomic uint64_t buffered; /* bytes queued in this worker's transports */
};

/* The runtime's process-wide write budget (0: none) and the bytes queued
 * now across its workers (runtime.c). */
uint64_t evs__runtime_write_budget(const evs_runtime *rt);
uint64_t evs__runtime_buffered(const evs_runtime *rt);

/* The worker's 16 KiB TLS staging buffer, made on first use. */
char *evs__worker_tls_stage(evs_worker *w);

/* Read blocks, reused so that a connection holds one only while it has
 * data in it (a view out), without a malloc per read. The pool grows to
 * what the busiest loop turn needs and gives back, once a second, the
 * blocks that stayed unused all that second. Small ones by default: a
 * thousand connections each with a large block out would hold 16 MiB.
 * get returns NULL when out of memory. */
#define EVS__BLOCK_SMALL 4096u
#define EVS__BLOCK_LARGE 16384u
void *evs__worker_block_get(evs_worker *w, bool large);
void evs__worker_block_put(evs_worker *w, void *block, bool large);

/* Ask for the worker's once-a-second tick, which trims the read-block pool
 * and the busy TLS connections' record buffers (evs__tls_sweep) and goes on
 * while either has something left to trim. */
void evs__worker_want_tick(evs_worker *w);

/* Set up a worker (base, inbox, stacks); @rt may be NULL (evs_run). */
int evs__worker_init(evs_worker *w, evs_runtime *rt, int id, size_t stack_size);
/* Free what evs__worker_init made. Tasks and transports must be gone. */
void evs__worker_fini(evs_worker *w);
/* Make @w the calling thread's worker (NULL to leave). */
void evs__worker_set_current(evs_worker *w);
/* Push a message; wakes the worker on the empty -> non-empty transition.
 * Takes ownership of @m on success. Any thread. */
int evs__worker_push(evs_worker *w, evs__msg *m);
/* Refuse new messages from now on (the pending ones still run). */
void evs__worker_close_inbox(evs_worker *w);
/* Run the worker's loop until evs__worker_exit() is called on it. */
void evs__worker_loop(evs_worker *w);
/* Ask the loop to return after the current callbacks (worker thread). */
void evs__worker_exit(evs_worker *w);
/* Track/untrack an evs__closable of the calling worker. */
void evs__worker_track(evs_worker *w, evs__closable *c);
void evs__worker_untrack(evs_worker *w, evs__closable *c);
/* Cancel every task and abort every transport; used at shutdown. */
void evs__worker_abort_all(evs_worker *w);
/* The worker's resolver, created on first use. */
struct evdns_base *evs__worker_dns(evs_worker *w);
/* Take over an accepted connection (server.c). */
void evs__server_accept_on_worker(evs_worker *w, evs__msg *m);

/* --- tasks (task.c) --- */

struct evs_task {
    evs_worker *worker;
    evs__fiber *fiber;
    evs_task_fn fn;
    void *arg;
    int result;

    bool started;
    bool done;
    bool cancelled;
    bool has_handle; /* a handle is out (not joined or detached yet) */
    bool parked;
    bool ready;
    int wake_result;

    double timeout; /* per parked call; 0 = none */
    struct event *timer_ev; /* made by the first park with a bound */
    int timer_result;

    evs_task *ready_next;
    evs__waitq *waitq;
    evs_task *wait_next;
    evs_task *wait_prev;
    evs__waitq joiners;
    bool joining;          /* a join is under way (parked, or woken and not yet run) */

    evs_task *all_next;
    evs_task *all_prev;
};

/* Park the running task on @q (NULL: only a timer, cancel or a direct
 * evs__task_wake ends it). @return the wake result, -ECANCELED or
 * -ETIMEDOUT. Must run in a task. */
int evs__task_park(evs__waitq *q);
/* Park for at most @seconds (< 0: no extra bound beyond the task's timeout). */
int evs__task_park_for(evs__waitq *q, double seconds, int result_on_expiry);
/* evs__task_park for one of the waits of a call that may park several
 * times (readexactly until its bytes are in): the task's timeout bounds the
 * call as a whole. @began starts at 0 in the call and is kept by the
 * first wait. */
int evs__task_park_in_call(evs__waitq *q, double *began);
/* The same for a call that polls instead of parking on a queue: a nap of
 * at most @nap seconds. @return 0 (look again), -ETIMEDOUT once the
 * task's timeout is spent since @began, or -ECANCELED. */
int evs__task_nap_in_call(double nap, double *began);
/* Seconds left of the running task's timeout for a call begun at @began
 * (0 in the call, set here at the first look): -1 when the task has no
 * timeout, 0 once it is spent. */
double evs__task_call_left(double *began);
/* Make a parked task ready with @result. No-op when it is not parked. */
void evs__task_wake(evs_task *t, int result);
/* Wake every task parked on @q with @result. */
void evs__task_wake_all(evs__waitq *q, int result);
/* Run the ready tasks (the run event's callback). */
void evs__task_run_ready(evs_worker *w);
/* Spawn on a given worker (which must be the calling thread's). */
int evs__task_spawn_on(evs_worker *w, evs_task_fn fn, void *arg, evs_task **out);
/* Tasks alive on @w. */
static inline bool evs__worker_has_tasks(const evs_worker *w)
{
    return w->tasks != NULL;
}

#endif
