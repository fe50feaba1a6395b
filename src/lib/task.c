/*
 * task.c - tasks: fibers scheduled on their worker's event loop.
 *
 * A task runs until it parks (evs__task_park) and then the loop goes on.
 * Waking a task never runs it on the spot: it joins the worker's ready
 * queue, and the run event resumes it from the top of the loop. So a fiber
 * is never resumed from inside another fiber or from deep inside a
 * transport callback.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#include "worker.h"

static EVS__SWITCH_TLS evs_task *running_task;

static void task_free(evs_task *t);

evs_task *evs_task_current(void)
{
    return running_task;
}

bool evs_task_done(const evs_task *task)
{
    return task->done;
}

bool evs_task_cancelled(const evs_task *task)
{
    return task->cancelled;
}

void evs_task_set_timeout(evs_task *task, double seconds)
{
    task->timeout = seconds > 0 ? seconds : 0;
}

/* --- wait queues ------------------------------------------------------- */

static void waitq_push(evs__waitq *q, evs_task *t)
{
    t->waitq = q;
    t->wait_next = NULL;
    t->wait_prev = q->tail;
    if (q->tail)
        q->tail->wait_next = t;
    else
        q->head = t;
    q->tail = t;
}

static void waitq_remove(evs_task *t)
{
    evs__waitq *q = t->waitq;

    if (!q)
        return;
    if (t->wait_prev)
        t->wait_prev->wait_next = t->wait_next;
    else
        q->head = t->wait_next;
    if (t->wait_next)
        t->wait_next->wait_prev = t->wait_prev;
    else
        q->tail = t->wait_prev;
    t->waitq = NULL;
    t->wait_next = t->wait_prev = NULL;
}

/* --- scheduling -------------------------------------------------------- */

static void make_ready(evs_task *t)
{
    evs_worker *w = t->worker;

    if (t->ready)
        return;
    t->ready = true;
    t->ready_next = NULL;
    if (w->ready_tail) {
        /* The run event is active or due already (see worker.h). */
        w->ready_tail->ready_next = t;
    } else {
        w->ready_head = t;
        if (!w->running_ready) /* else evs__task_run_ready arms it at its end */
            event_active(&w->run_ev, EV_TIMEOUT, 0);
    }
    w->ready_tail = t;
}

void evs__task_wake(evs_task *t, int result)
{
    if (!t->parked)
        return;
    t->parked = false;
    t->wake_result = result;
    waitq_remove(t);
    if (t->timer_ev)
        evtimer_del(t->timer_ev);
    make_ready(t);
}

void evs__task_wake_all(evs__waitq *q, int result)
{
    while (q->head)
        evs__task_wake(q->head, result);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_task *t = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    evs__task_wake(t, t->timer_result);
}

int evs__task_park_for(evs__waitq *q, double seconds, int result_on_expiry)
{
    evs_task *t = running_task;
    double bound = seconds;
    int result = result_on_expiry;

    if (!t)
        return -EINVAL;
    if (t->cancelled)
        return -ECANCELED;
    /* The task's own timeout bounds every parked call. */
    if (t->timeout > 0 && (bound < 0 || t->timeout < bound)) {
        bound = t->timeout;
        result = -ETIMEDOUT;
    }
    /* Most tasks never park with a bound: their timer is made on first
     * need (and kept), which saves an event per connection handler. */
    if (bound >= 0 && !t->timer_ev && !(t->timer_ev = evtimer_new(t->worker->base, timer_cb, t)))
        return -ENOMEM;
    if (bound >= 0) {
        struct timeval tv = evs__tv(bound);
        t->timer_result = result;
        /* The loop's cached time is from before this task ran: refresh it,
         * or the timer would count from the past and fire early. Armed
         * before the task is listed anywhere: a timer that cannot be added
         * (no memory for libevent's heap) fails the call, not the bound. */
        event_base_update_cache_time(t->worker->base);
        if (evtimer_add(t->timer_ev, &tv) != 0)
            return -ENOMEM;
    }
    t->parked = true;
    if (q)
        waitq_push(q, t);
    evs__fiber_yield();
    return t->wake_result;
}

int evs__task_park(evs__waitq *q)
{
    return evs__task_park_for(q, -1, 0);
}

double evs__task_call_left(double *began)
{
    evs_task *t = running_task;
    double now, left;

    /* Only a bounded task pays for the clock. */
    if (!t || t->timeout <= 0)
        return -1;
    now = evs__monotonic();
    if (*began == 0)
        *began = now;
    left = t->timeout - (now - *began);
    return left > 0 ? left : 0;
}

int evs__task_park_in_call(evs__waitq *q, double *began)
{
    evs_task *t = running_task;
    double left = t && !t->cancelled ? evs__task_call_left(began) : -1;

    if (left < 0)
        return evs__task_park(q);
    if (left == 0)
        return -ETIMEDOUT;
    return evs__task_park_for(q, left, -ETIMEDOUT);
}

int evs__task_nap_in_call(double nap, double *began)
{
    evs_task *t = running_task;
    double left = t && !t->cancelled ? evs__task_call_left(began) : -1;

    if (left < 0)
        return evs__task_park_for(NULL, nap, 0);
    if (left == 0)
        return -ETIMEDOUT;
    return evs__task_park_for(NULL, left < nap ? left : nap, 0);
}

int evs_sleep(double seconds)
{
    if (!running_task)
        return -EINVAL;
    /* NaN sleeps as 0 does: a bound that is no number must not park forever. */
    return evs__task_park_for(NULL, seconds > 0 ? seconds : 0, 0);
}

int evs_yield(void)
{
    evs_task *t = running_task;

    if (!t)
        return -EINVAL;
    if (t->cancelled)
        return -ECANCELED;
    t->parked = true;
    evs__task_wake(t, 0);
    evs__fiber_yield();
    /* A cancel while the task waited on the ready list wakes nothing. */
    return t->cancelled ? -ECANCELED : t->wake_result;
}

/* --- life cycle -------------------------------------------------------- */

static void task_entry(void *arg)
{
    evs_task *t = arg;

    t->result = t->fn(t->arg);
}

static void task_finished(evs_task *t)
{
    evs_worker *w = t->worker;

    t->done = true;
    evs__fiber_free(t->fiber);
    t->fiber = NULL;
    evs__task_wake_all(&t->joiners, 0);
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        w->tasks = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    t->all_next = t->all_prev = NULL;
    atomic_store_explicit(&w->ntasks, atomic_load_explicit(&w->ntasks, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    if (!t->has_handle)
        task_free(t);
}

void evs__task_run_ready(evs_worker *w)
{
    /* Run the tasks that are ready now. Tasks they make ready run in the
     * next pass, after the loop has polled I/O again, as asyncio runs the
     * callbacks that callbacks schedule: activating the run event from in
     * here would run them in this pass, and a task looping on evs_yield
     * would keep the worker from ever polling. A zero timeout instead
     * makes the next poll return at once and runs after it. */
    static const struct timeval at_once = {0, 0};
    evs_task *t = w->ready_head;

    w->ready_head = w->ready_tail = NULL;
    w->running_ready = true;
    while (t) {
        evs_task *next = t->ready_next;

        /* With many connections the next task's record and frames are
         * cold: start loading them while this one runs. */
        if (next)
            evs__fiber_prefetch(next->fiber);
        t->ready = false;
        t->started = true;
        running_task = t;
        evs__fiber_resume(t->fiber);
        running_task = NULL;
        if (evs__fiber_done(t->fiber))
            task_finished(t);
        t = next;
    }
    w->running_ready = false;
    /* Should the timer heap have no room, run them in this pass. */
    if (w->ready_head && event_add(&w->run_ev, &at_once) != 0)
        event_active(&w->run_ev, EV_TIMEOUT, 0);
}

static void task_free(evs_task *t)
{
    if (t->timer_ev)
        event_free(t->timer_ev);
    free(t);
}

int evs__task_spawn_on(evs_worker *w, evs_task_fn fn, void *arg, evs_task **out)
{
    evs_task *t;

    if (!w || !fn)
        return -EINVAL;
    if (w->stopping)
        return -ESHUTDOWN;
    t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->worker = w;
    t->fn = fn;
    t->arg = arg;
    t->fiber = evs__fiber_new(w->stacks, task_entry, t);
    if (!t->fiber) {
        int err = errno ? -errno : -ENOMEM;
        evs__warn("cannot create a task stack: %s (raise vm.max_map_count for many tasks)",
                  strerror(-err));
        free(t);
        return err;
    }
    t->all_next = w->tasks;
    if (w->tasks)
        w->tasks->all_prev = t;
    w->tasks = t;
    atomic_store_explicit(&w->ntasks, atomic_load_explicit(&w->ntasks, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    t->has_handle = out != NULL;
    if (out)
        *out = t;
    make_ready(t);
    return 0;
}

int evs_task_spawn(evs_task_fn fn, void *arg, evs_task **out)
{
    evs_worker *w = evs_worker_current();

    if (!w)
        return -EINVAL;
    return evs__task_spawn_on(w, fn, arg, out);
}

int evs_task_join(evs_task *task, int *result)
{
    evs_task *self = running_task;

    if (!task)
        return -EINVAL;
    if (task == self)
        return -EDEADLK;
    /* The handle has one owner: a second joiner would find it freed. The
     * flag, not the wait list, says a join is under way: a woken joiner
     * is off the list until it runs. */
    if (task->joining)
        return -EBUSY;
    task->joining = true;
    while (!task->done) {
        int err = self ? evs__task_park(&task->joiners) : -EAGAIN;

        if (err < 0) {
            task->joining = false;
            return err;
        }
    }
    if (result)
        *result = task->result;
    task_free(task);
    return 0;
}

void evs_task_detach(evs_task *task)
{
    if (!task)
        return;
    if (task->done)
        task_free(task);
    else
        task->has_handle = false;
}

void evs_task_cancel(evs_task *task)
{
    if (!task || task->done || task->cancelled)
        return;
    task->cancelled = true;
    evs__task_wake(task, -ECANCELED);
}
