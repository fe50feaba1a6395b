/*
 * internal.h - definitions shared by the library's files (never installed).
 */
#ifndef EVS_INTERNAL_H
#define EVS_INTERNAL_H

#include "build-config.h"

#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/time.h>
#include <time.h>

#include <evstream.h>

#define EVS_UNUSED(x) ((void)(x))

/* The acceptor thread's worker id in log lines (workers are 0..N-1, the
 * private loop of evs_run() is -1). */
#define EVS__ACCEPTOR_ID (-2)
#define EVS_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Log macros check the level before any argument is evaluated or formatted. */
extern _Atomic int evs__log_level;
#define evs__log_enabled(level) ((int)(level) <= atomic_load_explicit(&evs__log_level, memory_order_relaxed))
#define evs__log(level, ...)                                                                  \
    do {                                                                                      \
        if (evs__log_enabled(level))                                                          \
            evs_log((level), __VA_ARGS__);                                                    \
    } while (0)
#define evs__error(...) evs__log(EVS_LOG_ERROR, __VA_ARGS__)
#define evs__warn(...) evs__log(EVS_LOG_WARN, __VA_ARGS__)
#define evs__info(...) evs__log(EVS_LOG_INFO, __VA_ARGS__)
#define evs__debug(...) evs__log(EVS_LOG_DEBUG, __VA_ARGS__)

/* The longest timer: about 31 years, far beyond any uptime. Longer ones
 * (1e300, INFINITY: "no bound") would overflow the conversion below and
 * fire at once. */
#define EVS__TV_MAX_SECONDS 1e9

/* Monotonic seconds, for deadlines and rates that wall-clock steps must
 * not move. */
static inline double evs__monotonic(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The monotonic clock as a timeval: a connection's timestamps (its start,
 * its last read and write), which a step of the wall clock must not move
 * (a step back would switch every timeout off for its size). */
static inline void evs__monotonic_tv(struct timeval *tv)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = (suseconds_t)(ts.tv_nsec / 1000);
}

/* Seconds (double, as in the public API) to a timeval, rounded up to the
 * microsecond: a sleep of 0.05 s must never wake at 49.999 ms. Negative
 * and NaN mean now. */
static inline struct timeval evs__tv(double seconds)
{
    struct timeval tv;
    long long us;

    if (!(seconds > 0))
        seconds = 0;
    if (seconds > EVS__TV_MAX_SECONDS)
        seconds = EVS__TV_MAX_SECONDS;
    us = (long long)(seconds * 1e6);
    if ((double)us < seconds * 1e6)
        us++;
    tv.tv_sec = (time_t)(us / 1000000);
    tv.tv_usec = (suseconds_t)(us % 1000000);
    return tv;
}

/* asyncio's set_write_buffer_limits rules (a negative value = not given):
 * neither -> 64 KiB / 16 KiB; only high -> low = high / 4; only low ->
 * high = 4 * low (saturating). @return 0, or -EINVAL when low > high. */
static inline int evs__watermarks(ssize_t high, ssize_t low, size_t *out_high, size_t *out_low)
{
    if (high < 0)
        high = low < 0               ? (ssize_t)EVS_WRITE_HIGH_WATER_DEFAULT
               : low > SSIZE_MAX / 4 ? SSIZE_MAX
                                     : 4 * low;
    if (low < 0)
        low = high / 4;
    if (low > high)
        return -EINVAL;
    *out_high = (size_t)high;
    *out_low = (size_t)low;
    return 0;
}

/* True on the threads the runtime starts, which block every signal for
 * their whole life (runtime.c): there SIGPIPE can neither kill the
 * process nor reach another thread, so writes need not guard against it. */
extern _Thread_local bool evs__signals_blocked_here;

/* Counters written by one thread and read by others: a relaxed load and
 * store, which on the common architectures is a plain move (no lock). */
static inline void evs__counter_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

#endif
