/**
 * @file evstream/task.h
 * Tasks: stackful coroutines on a worker. A call that would block (read,
 * drain, sleep, join, connect...) parks the task and returns to the event
 * loop; the task resumes on the same worker when the call can complete.
 *
 * Cancellation is sticky: after evs_task_cancel() the parked call and every
 * later parking call of that task return -ECANCELED at once, so a handler
 * unwinds quickly. A per-task timeout bounds each parked call (-ETIMEDOUT).
 *
 * Thread: every function runs on the worker that owns the task.
 */
#ifndef EVSTREAM_TASK_H
#define EVSTREAM_TASK_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A task's body; its return value is what evs_task_join() reports. */
typedef int (*evs_task_fn)(void *arg);

/**
 * Start fn(arg) as a task on the calling worker; it first runs after the
 * current callback or task yields.
 * @param out receives a handle the caller owns and must give back with
 *        evs_task_join() or evs_task_detach(); pass NULL to detach at once.
 * @return 0, -ENOMEM (no stack: see vm.max_map_count), -EINVAL (not on a
 *         worker), -ESHUTDOWN (the worker is stopping).
 */
EVS_EXTERN int evs_task_spawn(evs_task_fn fn, void *arg, evs_task **out);

/**
 * Wait for @p task to end and release the handle.
 * @param result receives fn's return value (may be NULL).
 * @return 0; -ECANCELED or -ETIMEDOUT when the waiting task itself was
 *         cancelled or timed out (the handle is then still owned);
 *         -EDEADLK when a task joins itself; -EBUSY when another task is
 *         already joining it (a handle has one owner). From outside a task
 *         (in a loop callback) only a finished task can be joined, else
 *         -EAGAIN.
 */
EVS_EXTERN int evs_task_join(evs_task *task, int *result);

/** Release the handle without waiting; the task runs on. */
EVS_EXTERN void evs_task_detach(evs_task *task);

/** Cancel @p task (idempotent): its parked call returns -ECANCELED, and so
 *  does every later parking call. A finished task is not affected. A task
 *  cancelled before it first ran still runs: asyncio would drop a coroutine
 *  that never started, but in C its function is what releases @p arg, so it
 *  starts with evs_task_cancelled() true and its first parking call returns
 *  -ECANCELED. */
EVS_EXTERN void evs_task_cancel(evs_task *task);

/** True once the task's function returned. */
EVS_EXTERN bool evs_task_done(const evs_task *task);
/** True once evs_task_cancel() was called on it. */
EVS_EXTERN bool evs_task_cancelled(const evs_task *task);

/**
 * Bound every parked call of @p task to @p seconds (0 removes the bound):
 * a call still parked then returns -ETIMEDOUT. The bound is for the call as
 * a whole: evs_readexactly that gets its bytes in several pieces times out
 * @p seconds after it began to wait, whatever came in between (what came
 * stays buffered). The task goes on running and may park again. Timers are
 * capped at 1e9 s (about 31 years), so INFINITY or any huge bound means
 * none; NaN is 0. The bound applies from the task's next park: a wait
 * already parked keeps the bound it parked with (a call that parks several
 * times, like evs_readexactly, takes the new one at its next wait). To end
 * a wait now, use evs_task_cancel.
 */
EVS_EXTERN void evs_task_set_timeout(evs_task *task, double seconds);

/** The running task, or NULL outside tasks. */
EVS_EXTERN evs_task *evs_task_current(void);

/** Park for @p seconds (a negative or NaN delay is 0; INFINITY parks until
 *  cancelled, as the 1e9 s cap is beyond any uptime).
 *  @return 0, -ECANCELED or -ETIMEDOUT. Only in a task.
 *  The delay is measured on the loop's clock, libevent's coarse monotonic
 *  clock: the task may wake up to one kernel tick (1-4 ms) before a precise
 *  clock reaches the delay, as asyncio's sleep may end within its clock's
 *  resolution. */
EVS_EXTERN int evs_sleep(double seconds);

/** Let the other ready tasks and callbacks run, then continue: the loop
 *  polls for I/O once before the task runs again (asyncio.sleep(0)), so a
 *  task that yields in a loop does not starve its worker's connections.
 *  @return 0 or -ECANCELED. Only in a task. */
EVS_EXTERN int evs_yield(void);

/**
 * Run fn(arg) as a task on a private event loop in the calling thread until
 * it returns (asyncio.run), then cancel the tasks it left, wait for them and
 * free the loop. For client programs and tests.
 * @param result receives fn's return value (may be NULL).
 * @return 0, -EBUSY when called from a worker or another evs_run() loop,
 *         or a negative errno when the loop could not be set up.
 * Thread: any thread that is not running a loop of evstream already.
 */
EVS_EXTERN int evs_run(evs_task_fn fn, void *arg, int *result);

#ifdef __cplusplus
}
#endif
#endif
