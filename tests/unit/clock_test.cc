// Connection timeouts against a step of the wall clock (an NTP step at
// boot, `date -s`): they count on the monotonic clock, so a step back
// does not switch them off. (A step forward never showed: the timer
// itself always ran on the monotonic clock.)
// gettimeofday is this program's own (wall_clock.c), libevent's included.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "wall_clock.h"

namespace {

double monotonic() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct StepRun {
    long step;       // seconds the wall clock moves, 0.5 s in
    double idle;     // the connection's idle timeout
    ssize_t got = 0; // what the read returned
    double waited = 0;
};

// Read from a silent peer under an idle timeout while the clock steps; a
// guard task ends the read with a byte if the timeout never fires.
int read_through_a_step(void *arg) {
    StepRun *run = static_cast<StepRun *>(arg);
    int sv[2];
    evs_reader *r;
    evs_writer *w;
    evs_task *stepper, *guard;
    char byte;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
    if (evs_stream_open_fd(sv[0], 0, &r, &w) != 0) return 1;
    evs_timeouts to = {};
    to.idle = run->idle;
    if (evs_transport_set_timeouts(evs_writer_transport(w), &to) != 0) return 1;
    static long step;
    step = run->step;
    evs_task_spawn(
        [](void *) -> int {
            evs_sleep(0.5);
            wall_clock_step(step);
            return 0;
        },
        nullptr, &stepper);
    evs_task_spawn(
        [](void *fd) -> int {
            evs_sleep(20);
            return (int)send(*(int *)fd, "x", 1, MSG_NOSIGNAL);
        },
        &sv[1], &guard);
    double began = monotonic();
    run->got = evs_read(r, &byte, 1);
    run->waited = monotonic() - began;
    evs_task_cancel(guard);
    evs_task_join(stepper, nullptr);
    evs_task_join(guard, nullptr);
    evs_writer_free(w);
    close(sv[1]);
    wall_clock_step(-step);
    return 0;
}

}  // namespace

// libevent notices a step within 5 s (it resynchronises its wall-clock
// cache that often): the timeout, 6 s, comes after it did.
TEST(Clock, AStepBackDoesNotSwitchTheIdleTimeoutOff) {
    StepRun run;
    run.step = -3600;
    run.idle = 6;
    int rc = -1;
    ASSERT_EQ(0, evs_run(read_through_a_step, &run, &rc));
    ASSERT_EQ(0, rc);
    EXPECT_EQ(-ETIMEDOUT, run.got) << "the read ended after " << run.waited << " s";
    EXPECT_LT(run.waited, 15.0);
}
