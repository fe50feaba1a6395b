/**
 * @file evstream/runtime.h
 * The runtime: N worker threads, each with its own libevent event base, plus
 * one acceptor thread that accepts connections and hands each one to a
 * worker. A connection, its transport, its task and its streams never leave
 * the worker that received it; cross-worker work goes through
 * evs_worker_post().
 */
#ifndef EVSTREAM_RUNTIME_H
#define EVSTREAM_RUNTIME_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/** How the acceptor picks a worker for a new connection. */
typedef enum evs_dispatch {
    /** The worker with the fewest live connections; ties go round-robin. */
    EVS_DISPATCH_LEAST_CONNECTIONS = 0,
    /** Strict round-robin. */
    EVS_DISPATCH_ROUND_ROBIN = 1,
} evs_dispatch;

/** Runtime options. Zero-initialise, then set what you need. */
typedef struct evs_runtime_options {
    /** Worker threads; 0 = the number of online CPUs; at most 4096. */
    int workers;
    /** Dispatch policy (default least-connections). */
    evs_dispatch dispatch;
    /** Global limit on live connections; 0 = unlimited. At the limit the
     *  acceptor stops accepting and resumes when connections close. Servers
     *  started with no_runtime_limit are neither counted nor stopped. */
    size_t max_connections;
    /** Usable stack size of each task in bytes; 0 = 256 KiB. */
    size_t stack_size;
    /** Called on each worker thread before it serves anything (may be NULL),
     *  once every worker thread exists (so it may evs_worker_call another
     *  worker). If a thread cannot be created, evs_runtime_new fails and
     *  neither hook runs. */
    void (*worker_started)(evs_worker *worker, void *arg);
    /** Called on each worker thread after its last connection and task are
     *  gone, just before the thread ends (may be NULL). */
    void (*worker_stopping)(evs_worker *worker, void *arg);
    /** Argument of the two hooks. */
    void *hook_arg;
    /** Process-wide budget for bytes queued in write buffers, all
     *  connections together; 0 = none. A write that would go past it fails
     *  with -ENOBUFS and aborts that connection. */
    size_t write_budget;
} evs_runtime_options;

/** Per-worker counters (a snapshot; each field is read atomically). */
typedef struct evs_worker_stats {
    uint64_t accepted;  /**< connections handed to this worker */
    uint64_t active;    /**< connections open now */
    uint64_t closed;    /**< connections closed */
    uint64_t bytes_in;  /**< bytes read from sockets */
    uint64_t bytes_out; /**< bytes written to sockets */
    uint64_t tasks;     /**< tasks alive now */
    uint64_t tls_handshakes; /**< TLS handshakes completed */
    uint64_t tls_failed;     /**< TLS handshakes that failed or timed out */
    uint64_t tls_resumed;    /**< completed handshakes that resumed a session */
    uint64_t loop_lag_us;    /**< how late the worker's last 100 ms probe timer fired
                                  (microseconds): a busy or blocked loop shows here */
    uint64_t buffered;       /**< bytes queued in write buffers now */
} evs_worker_stats;

/** A function run on a worker thread by evs_worker_post(). */
typedef void (*evs_worker_fn)(evs_worker *worker, void *arg);

/**
 * Create a runtime and start its threads.
 * @param opts options, or NULL for the defaults.
 * @param out receives the runtime; owned by the caller, ended by evs_runtime_stop().
 * @return 0, -EINVAL for bad options, or a negative errno.
 * Thread: any thread that is not a worker of another runtime.
 */
EVS_EXTERN int evs_runtime_new(const evs_runtime_options *opts, evs_runtime **out);

/**
 * Stop a runtime and free it: close every server (stop accepting), let
 * handlers finish for up to @p timeout seconds, then abort the connections
 * and cancel the tasks that remain, join every thread and free everything,
 * including the servers. @p rt is invalid afterwards. A negative @p timeout
 * waits for the handlers as long as they take; NaN waits for nothing, as
 * 0. Aborting after a wait is logged (info); with @p timeout 0 it aborts
 * without a line, the caller having asked for it.
 * @return 0, -ETIMEDOUT when connections had to be aborted, or -EDEADLK
 * (nothing done) when called on one of @p rt's own threads.
 * Thread: the thread that created the runtime (never a worker).
 */
EVS_EXTERN int evs_runtime_stop(evs_runtime *rt, double timeout);

/** Number of workers. Any thread. */
EVS_EXTERN int evs_runtime_worker_count(const evs_runtime *rt);
/** Worker @p i (0-based), or NULL when out of range. Any thread. */
EVS_EXTERN evs_worker *evs_runtime_worker(evs_runtime *rt, int i);
/** Sum of every worker's counters. Any thread. */
EVS_EXTERN void evs_runtime_stats(evs_runtime *rt, evs_worker_stats *out);

/**
 * Run fn(worker, arg) on every worker thread, once each.
 * @return 0; -ENOMEM (no worker runs fn); -ESHUTDOWN when the runtime is
 * stopping (none runs it; or, when the stop began during the call, the
 * workers already stopping do not); -EINVAL for a NULL @p rt or @p fn.
 * Thread: any.
 */
EVS_EXTERN int evs_runtime_broadcast(evs_runtime *rt, evs_worker_fn fn, void *arg);

/**
 * Run fn(worker, arg) on @p worker's thread, after the callbacks it is
 * running now. Messages from one thread arrive in order.
 * @return 0, -ENOMEM, or -ESHUTDOWN when the worker is stopping (fn is not run).
 * Thread: any, including @p worker itself.
 */
EVS_EXTERN int evs_worker_post(evs_worker *worker, evs_worker_fn fn, void *arg);

/**
 * Run fn(worker, arg) on @p worker's thread, as evs_worker_post() does,
 * and wait until it has returned: for work that must happen on the
 * worker before the caller goes on (to read or change what the worker
 * owns). Two workers calling each other at once would wait for good.
 * The message waits on the caller's stack: no allocation, no -ENOMEM.
 * @return 0, -EINVAL (no worker or fn), -ESHUTDOWN when the worker is
 * stopping (fn is not run), or -EDEADLK when called on @p worker's own
 * thread.
 * Thread: any but @p worker's.
 */
EVS_EXTERN int evs_worker_call(evs_worker *worker, evs_worker_fn fn, void *arg);

/** The worker running the calling thread, or NULL outside workers. */
EVS_EXTERN evs_worker *evs_worker_current(void);
/** The worker's id: 0..N-1 (-1 for the private loop of evs_run()). Any thread. */
EVS_EXTERN int evs_worker_id(const evs_worker *worker);
/** The runtime a worker belongs to (NULL for evs_run()'s loop). Any thread. */
EVS_EXTERN evs_runtime *evs_worker_runtime(const evs_worker *worker);
/** The worker's event base, for adding your own events. Thread: the worker. */
EVS_EXTERN struct event_base *evs_worker_base(evs_worker *worker);
/** A snapshot of the worker's counters. Any thread. */
EVS_EXTERN void evs_worker_stats_get(const evs_worker *worker, evs_worker_stats *out);

#ifdef __cplusplus
}
#endif
#endif
