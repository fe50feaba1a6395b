// Tasks: spawn, join, detach, cancel, sleep, yield, per-task timeouts and
// evs_run's clean-up of what the main task leaves behind.
#include <gtest/gtest.h>
#include <math.h>

#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "helpers.h"

using namespace evs_test;

namespace {

double now() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int return_arg(void *arg) { return (int)(intptr_t)arg; }

}  // namespace

TEST(Task, RunReturnsTheMainTaskResult) {
    EXPECT_EQ(42, run_task(return_arg, (void *)42));
}

TEST(Task, NestedRunIsRefused) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         int r;
                         return evs_run(return_arg, nullptr, &r) == -EBUSY ? 0 : 1;
                     },
                     nullptr));
}

TEST(Task, CurrentIsSetOnlyInsideTasks) {
    EXPECT_EQ(nullptr, evs_task_current());
    EXPECT_EQ(nullptr, evs_worker_current());
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         if (!evs_task_current() || !evs_worker_current()) return 1;
                         return evs_worker_id(evs_worker_current()) == -1 ? 0 : 2;
                     },
                     nullptr));
    EXPECT_EQ(-EINVAL, evs_sleep(0.01));
    EXPECT_EQ(-EINVAL, evs_yield());
}

TEST(Task, SpawnedTaskRunsAfterTheSpawnerYieldsAndJoinGivesItsResult) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static int ran;
                         ran = 0;
                         evs_task *t;
                         if (evs_task_spawn([](void *) -> int { ran = 1; return 7; }, nullptr,
                                            &t) != 0)
                             return 1;
                         if (ran != 0) return 2;  // not run inside spawn
                         int result = 0;
                         if (evs_task_join(t, &result) != 0) return 3;
                         return ran == 1 && result == 7 ? 0 : 4;
                     },
                     nullptr));
}

TEST(Task, JoinSelfIsADeadlock) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         return evs_task_join(evs_task_current(), nullptr) == -EDEADLK ? 0 : 1;
                     },
                     nullptr));
}

TEST(Task, YieldInterleavesTasksInOrder) {
    static std::string trace;
    trace.clear();
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         auto body = [](void *arg) -> int {
                             for (int i = 0; i < 3; i++) {
                                 trace += *(const char *)arg;
                                 if (evs_yield() != 0) return 1;
                             }
                             return 0;
                         };
                         evs_task *a, *b;
                         evs_task_spawn(body, (void *)"a", &a);
                         evs_task_spawn(body, (void *)"b", &b);
                         int ra = -1, rb = -1;
                         evs_task_join(a, &ra);
                         evs_task_join(b, &rb);
                         return ra == 0 && rb == 0 ? 0 : 1;
                     },
                     nullptr));
    EXPECT_EQ("ababab", trace);
}

// asyncio's sleep(0) lets the loop poll once: a task that keeps yielding
// must not keep the worker from reading. Without that, the loop below
// would yield all 100,000 times before the reader saw its byte.
TEST(Task, YieldLetsTheLoopPollForIo) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static bool got;
                         got = false;
                         int fds[2];
                         if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 1;
                         evs_reader *r;
                         evs_writer *w;
                         if (evs_stream_open_fd(fds[0], 0, &r, &w) != 0) return 2;
                         if (write(fds[1], "x", 1) != 1) return 3;
                         evs_task *t;
                         evs_task_spawn(
                             [](void *arg) -> int {
                                 char c;
                                 got = evs_read((evs_reader *)arg, &c, 1) == 1 && c == 'x';
                                 return 0;
                             },
                             r, &t);
                         int yields = 0;
                         while (!got && yields < 100000 && evs_yield() == 0)
                             yields++;
                         if (!got) evs_task_cancel(t);  // the reader would wait for good
                         evs_task_join(t, nullptr);
                         evs_writer_free(w);
                         close(fds[1]);
                         return got && yields < 100 ? 0 : 10;
                     },
                     nullptr));
}

// A cancel that comes while a yielding task waits on the ready list
// wakes nothing (the task is not parked), so evs_yield reports it itself.
TEST(Task, YieldReportsACancelThatCameWhileItWaited) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static evs_task *yielder;
                         evs_task *canceller;
                         evs_task_spawn([](void *) -> int { return evs_yield(); }, nullptr,
                                        &yielder);
                         // Runs in the same pass, after the yielder yielded.
                         evs_task_spawn(
                             [](void *) -> int {
                                 evs_task_cancel(yielder);
                                 return 0;
                             },
                             nullptr, &canceller);
                         int result = 0;
                         if (evs_task_join(yielder, &result) != 0) return 1;
                         evs_task_join(canceller, nullptr);
                         return result == -ECANCELED ? 0 : 2;
                     },
                     nullptr));
}

TEST(Task, SleepParksForAtLeastTheDelay) {
    // libevent keeps time with CLOCK_MONOTONIC_COARSE: a timer may fire up
    // to that clock's resolution (one kernel tick) before a precise clock
    // reaches the delay (a TSan run once measured 49.68 ms).
    struct timespec res;
    ASSERT_EQ(0, clock_getres(CLOCK_MONOTONIC_COARSE, &res));
    double tick = (double)res.tv_sec + (double)res.tv_nsec / 1e9;
    double t0 = now();
    EXPECT_EQ(0, run_task([](void *) -> int { return evs_sleep(0.05); }, nullptr));
    EXPECT_GE(now() - t0, 0.05 - tick);
}

TEST(Task, CancelWakesAParkedCallWithECANCELEDAndIsSticky) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static int first, second;
                         evs_task *t;
                         evs_task_spawn(
                             [](void *) -> int {
                                 first = evs_sleep(1000);
                                 second = evs_sleep(1000);
                                 return 5;
                             },
                             nullptr, &t);
                         evs_yield();  // let it park
                         evs_task_cancel(t);
                         evs_task_cancel(t);  // idempotent
                         if (!evs_task_cancelled(t)) return 1;
                         int result = 0;
                         if (evs_task_join(t, &result) != 0) return 2;
                         return first == -ECANCELED && second == -ECANCELED && result == 5 ? 0 : 3;
                     },
                     nullptr));
}

TEST(Task, CancelledJoinerGetsECANCELEDAndKeepsTheHandle) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static evs_task *sleeper;
                         static int join_rc;
                         evs_task_spawn([](void *) -> int { return evs_sleep(1000); }, nullptr,
                                        &sleeper);
                         evs_task *joiner;
                         evs_task_spawn(
                             [](void *) -> int {
                                 join_rc = evs_task_join(sleeper, nullptr);
                                 return 0;
                             },
                             nullptr, &joiner);
                         evs_yield();
                         evs_task_cancel(joiner);
                         evs_task_join(joiner, nullptr);
                         if (join_rc != -ECANCELED) return 1;
                         evs_task_cancel(sleeper);  // the handle is still valid
                         int r = 0;
                         evs_task_join(sleeper, &r);
                         return r == -ECANCELED ? 0 : 2;
                     },
                     nullptr));
}

TEST(Task, TimeoutBoundsEveryParkedCall) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         evs_task_set_timeout(evs_task_current(), 0.02);
                         if (evs_sleep(1000) != -ETIMEDOUT) return 1;
                         if (evs_sleep(1000) != -ETIMEDOUT) return 2;  // again
                         if (evs_sleep(0.001) != 0) return 3;          // shorter than the bound
                         evs_task_set_timeout(evs_task_current(), 0);
                         return evs_sleep(0.03) == 0 ? 0 : 4;
                     },
                     nullptr));
}

TEST(Task, HugeOrInfiniteBoundsMeanNoBound) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         // A bound too large to convert once fired at once.
                         evs_task_set_timeout(evs_task_current(), 1e300);
                         if (evs_sleep(0.02) != 0) return 1;
                         evs_task_set_timeout(evs_task_current(), INFINITY);
                         if (evs_sleep(0.02) != 0) return 2;
                         evs_task_set_timeout(evs_task_current(), NAN);  // no bound
                         if (evs_sleep(0.02) != 0) return 3;
                         // Sleeps that long end only by cancel (here: the timeout).
                         evs_task_set_timeout(evs_task_current(), 0.05);
                         if (evs_sleep(1e13) != -ETIMEDOUT) return 4;
                         if (evs_sleep(INFINITY) != -ETIMEDOUT) return 5;
                         evs_task_set_timeout(evs_task_current(), 0);
                         return evs_sleep(NAN) == 0 ? 0 : 6;  // NaN is no delay
                     },
                     nullptr));
}

TEST(Task, ASecondJoinerIsRefused) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static evs_task *target;
                         static int second_rc;
                         evs_task_spawn([](void *) -> int { return evs_sleep(0.05) == 0 ? 7 : 1; },
                                        nullptr, &target);
                         evs_task *joiner;
                         evs_task_spawn(
                             [](void *) -> int {
                                 second_rc = evs_task_join(target, nullptr);
                                 return 0;
                             },
                             nullptr, &joiner);
                         int r = 0;
                         evs_yield();  // the joiner parks in its join
                         if (evs_task_join(target, &r) != -EBUSY) return 1;
                         evs_task_join(joiner, nullptr);
                         if (second_rc != 0) return 2;  // the first joiner got it
                         return 0;
                     },
                     nullptr));
}

// The first joiner, woken by the end of the task but not yet run again,
// still owns the handle: a join made in that gap is refused too (it freed
// the handle under the first joiner).
TEST(Task, AJoinerWokenButNotYetRunStillOwnsTheHandle) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         static evs_task *target;
                         static int first_rc = -1, first_result = -1;
                         evs_task_spawn(
                             [](void *) -> int {
                                 evs_yield();
                                 return 7;
                             },
                             nullptr, &target);
                         evs_task *joiner;
                         evs_task_spawn(
                             [](void *) -> int {
                                 first_rc = evs_task_join(target, &first_result);
                                 return 0;
                             },
                             nullptr, &joiner);
                         // Two passes: the target ends in the second and
                         // wakes the joiner, which runs in the third.
                         evs_yield();
                         evs_yield();
                         int r = 0;
                         if (evs_task_join(target, &r) != -EBUSY) return 1;
                         evs_task_join(joiner, nullptr);
                         return first_rc == 0 && first_result == 7 ? 0 : 2;
                     },
                     nullptr));
}

TEST(Task, DetachedTaskRunsToCompletion) {
    static int done;
    done = 0;
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         evs_task_spawn(
                             [](void *) -> int {
                                 evs_sleep(0.01);
                                 done = 1;
                                 return 0;
                             },
                             nullptr, nullptr);
                         return evs_sleep(0.1);
                     },
                     nullptr));
    EXPECT_EQ(1, done);
}

TEST(Task, RunCancelsTasksTheMainTaskLeftBehind) {
    static int leftover_rc;
    leftover_rc = 1;
    double t0 = now();
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         evs_task_spawn(
                             [](void *) -> int {
                                 leftover_rc = evs_sleep(1000);
                                 return 0;
                             },
                             nullptr, nullptr);
                         return evs_yield();
                     },
                     nullptr));
    EXPECT_EQ(-ECANCELED, leftover_rc);
    EXPECT_LT(now() - t0, 100.0);  // returned, did not wait for the sleep
}

TEST(Task, ManyTasksReuseStacks) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         for (int round = 0; round < 6; round++) {
                             std::vector<evs_task *> tasks(500);
                             for (auto &t : tasks)
                                 if (evs_task_spawn(
                                         [](void *) -> int { return evs_yield(); }, nullptr,
                                         &t) != 0)
                                     return 1;
                             for (auto *t : tasks) {
                                 int r = -1;
                                 if (evs_task_join(t, &r) != 0 || r != 0) return 2;
                             }
                         }
                         return 0;
                     },
                     nullptr));
}

TEST(Task, DeepRecursionFitsTheDefaultStack) {
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         struct R {
                             static int depth(int n) {
                                 volatile char pad[256];
                                 pad[0] = (char)n;
                                 return n == 0 ? pad[0] : depth(n - 1) + (pad[0] != 0 ? 0 : 0);
                             }
                         };
                         return R::depth(400);  // ~100 KiB of frames
                     },
                     nullptr));
}
