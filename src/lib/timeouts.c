/*
 * timeouts.c - a connection's timeouts (idle, first byte, read, write,
 * lifetime) on one timer, armed for the nearest deadline.
 *
 * Reads and writes only note the monotonic time (read from the vDSO: no
 * system call, no timer operation); the timer, when it fires, looks at
 * what happened since and either ends the connection with -ETIMEDOUT or
 * re-arms for the next deadline. A connection without timeouts has no
 * timer state at all.
 */
#include "transport.h"

#include <stdlib.h>
#include <string.h>

static double since(const struct timeval *now, const struct timeval *then)
{
    struct timeval d;

    timersub(now, then, &d);
    return (double)d.tv_sec + (double)d.tv_usec / 1e6;
}

void evs__timeouts_read(evs_transport *t)
{
    evs__monotonic_tv(&t->timers->last_read);
}

void evs__timeouts_write(evs_transport *t)
{
    evs__monotonic_tv(&t->timers->last_write);
}

void evs__timeouts_resumed(evs_transport *t)
{
    evs__monotonic_tv(&t->timers->reading_since);
}

/* Seconds left before the earliest timeout, or < 0 with *which set when one
 * has passed. A huge value when none applies now. */
static double remaining(evs_transport *t, const struct timeval *now, const char **which)
{
    const evs__timers *tm = t->timers;
    const evs_timeouts *to = &tm->to;
    double left = 1e18;
    struct timeval last_io, read_from;

#define CHECK(cond, limit, elapsed, name)                                                          \
    do {                                                                                           \
        if ((cond) && (limit) > 0) {                                                               \
            double l = (limit) - (elapsed);                                                        \
            if (l <= 0.0005) {                                                                     \
                *which = (name);                                                                   \
                return -1;                                                                         \
            }                                                                                      \
            if (l < left)                                                                          \
                left = l;                                                                          \
        }                                                                                          \
    } while (0)

    last_io = timercmp(&tm->last_read, &tm->last_write, >) ? tm->last_read : tm->last_write;
    read_from = timercmp(&tm->last_read, &tm->reading_since, >) ? tm->last_read : tm->reading_since;
    CHECK(true, to->lifetime, since(now, &t->started), "lifetime");
    CHECK(true, to->idle, since(now, &last_io), "idle");
    CHECK(t->bytes_in == 0, to->first_byte, since(now, &t->started), "first byte");
    CHECK(t->bytes_in > 0 && evs_transport_is_reading(t) && !t->eof_received, to->read,
          since(now, &read_from), "read");
    CHECK(evs_transport_get_write_buffer_size(t) > 0, to->write, since(now, &tm->last_write),
          "write");
#undef CHECK
    return left;
}

static void arm(evs_transport *t, double seconds)
{
    struct timeval tv = evs__tv(seconds);

    evtimer_add(&t->timers->ev, &tv);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;
    struct timeval now;
    const char *which = NULL;
    double left;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    if (t->lost_scheduled)
        return;
    evs__monotonic_tv(&now);
    left = remaining(t, &now, &which);
    if (left < 0) {
        evs__debug("connection closed: %s timeout", which);
        evs__transport_ref(t);
        evs__transport_fatal(t, -ETIMEDOUT);
        evs__transport_unref(t);
        return;
    }
    /* Nothing pending needs a timer (e.g. only a write timeout and nothing
     * queued): look again at the shortest configured interval. */
    if (left > 1e17) {
        const evs_timeouts *to = &t->timers->to;
        double vals[] = {to->idle, to->first_byte, to->read, to->write, to->lifetime};
        left = 0;
        for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
            if (vals[i] > 0 && (left == 0 || vals[i] < left))
                left = vals[i];
    }
    arm(t, left);
}

int evs_transport_set_timeouts(evs_transport *t, const evs_timeouts *to)
{
    struct timeval now;
    evs__timers *tm = t->timers;
    bool on;

    /* Written !(x >= 0), so that NaN is refused too. */
    if (!to || !(to->idle >= 0) || !(to->first_byte >= 0) || !(to->read >= 0) ||
        !(to->write >= 0) || !(to->lifetime >= 0))
        return -EINVAL;
    if (t->lost_scheduled)
        return -EPIPE;
    on = to->idle > 0 || to->first_byte > 0 || to->read > 0 || to->write > 0 || to->lifetime > 0;
    if (!on) {
        if (tm) {
            event_del(&tm->ev);
            free(tm);
            t->timers = NULL;
        }
        return 0;
    }
    if (!tm) {
        if (!(tm = calloc(1, sizeof *tm)))
            return -ENOMEM;
        evtimer_assign(&tm->ev, t->worker->base, timeout_cb, t);
        t->timers = tm;
    }
    tm->to = *to;
    event_del(&tm->ev);
    /* Count from now for what has no history yet. */
    evs__monotonic_tv(&now);
    if (!timerisset(&tm->last_read))
        tm->last_read = now;
    if (!timerisset(&tm->last_write) || evs_transport_get_write_buffer_size(t) == 0)
        tm->last_write = now;
    timeout_cb(-1, 0, t);
    return 0;
}

void evs_transport_get_timeouts(const evs_transport *t, evs_timeouts *out)
{
    if (t->timers)
        *out = t->timers->to;
    else
        memset(out, 0, sizeof *out);
}

int evs_transport_set_idle_timeout(evs_transport *t, double seconds)
{
    evs_timeouts to;

    evs_transport_get_timeouts(t, &to);
    to.idle = seconds;
    return evs_transport_set_timeouts(t, &to);
}

double evs_transport_get_idle_timeout(const evs_transport *t)
{
    return t->timers ? t->timers->to.idle : 0;
}
