/* A wall clock the test can step: this gettimeofday takes the place of
 * libc's for the whole test program, libevent's calls included. */
#include "wall_clock.h"

#include <stdatomic.h>
#include <sys/time.h>
#include <time.h>

static _Atomic long offset;

void wall_clock_step(long seconds)
{
    atomic_fetch_add(&offset, seconds);
}

/* Default visibility (the project builds hidden) and -rdynamic: exported,
 * so that libevent's calls reach it. */
__attribute__((visibility("default"))) int gettimeofday(struct timeval *restrict tv,
                                                        void *restrict tz)
{
    struct timespec ts;

    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec + atomic_load(&offset);
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}
