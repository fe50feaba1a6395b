// Unit tests for src/lib/fiber.{h,c} and the assembly context switch.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <thread>
#include <vector>

extern "C" {
#include "fiber.h"
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FIBER_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FIBER_TEST_SANITIZED 1
#endif
#endif

namespace {

struct PoolGuard {
    explicit PoolGuard(size_t size = 0, size_t cached = 8)
        : pool(evs__stack_pool_new(size, cached)) {}
    ~PoolGuard() { evs__stack_pool_free(pool); }
    evs__stack_pool *pool;
};

// ---------------------------------------------------------------------------
// Ping-pong: values go both ways through shared variables.

struct PingPong {
    int in = 0;
    int out = 0;
    int rounds = 0;
    evs__fiber *self = nullptr;
    bool saw_self = true;
};

void ping_pong_fn(void *arg) {
    auto *pp = static_cast<PingPong *>(arg);
    for (int i = 0; i < pp->rounds; i++) {
        if (evs__fiber_current() != pp->self) pp->saw_self = false;
        pp->out = pp->in * 2 + 1;
        evs__fiber_yield();
    }
}

TEST(Fiber, ResumeYieldPingPong) {
    PoolGuard pg;
    ASSERT_NE(pg.pool, nullptr);
    PingPong pp;
    pp.rounds = 100;
    evs__fiber *f = evs__fiber_new(pg.pool, ping_pong_fn, &pp);
    ASSERT_NE(f, nullptr);
    pp.self = f;
    EXPECT_EQ(evs__fiber_current(), nullptr);
    for (int i = 0; i < pp.rounds; i++) {
        pp.in = i;
        evs__fiber_resume(f);
        EXPECT_EQ(evs__fiber_current(), nullptr);
        EXPECT_EQ(pp.out, i * 2 + 1);
        EXPECT_FALSE(evs__fiber_done(f));
    }
    evs__fiber_resume(f);  // leaves the loop and returns
    EXPECT_TRUE(evs__fiber_done(f));
    EXPECT_TRUE(pp.saw_self);
    evs__fiber_free(f);
}

// ---------------------------------------------------------------------------
// call_on_loop: the function runs on the loop's stack, as loop code, and the
// fiber goes on where it was; from the loop it is a plain call.

struct OnLoop {
    uintptr_t fiber_local = 0;   // a frame on the fiber's stack
    uintptr_t called_local = 0;  // fn's frame
    evs__fiber *current_in_call = reinterpret_cast<evs__fiber *>(1);
    int calls = 0;
    int after = 0;
};

// Frame addresses, not addresses of locals: ASan may put locals on a fake
// stack in the heap (detect_stack_use_after_return).
void on_loop_call(void *arg) {
    auto *o = static_cast<OnLoop *>(arg);
    o->called_local = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    o->current_in_call = evs__fiber_current();
    o->calls++;
}

void on_loop_fiber(void *arg) {
    auto *o = static_cast<OnLoop *>(arg);
    o->fiber_local = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    evs__fiber_call_on_loop(on_loop_call, o);
    evs__fiber_call_on_loop(on_loop_call, o);  // twice in one resume
    o->after = 1;
    evs__fiber_yield();
    o->after = 2;
}

TEST(Fiber, CallOnLoopRunsOnTheLoopStackAndComesBack) {
    PoolGuard pg;
    ASSERT_NE(pg.pool, nullptr);
    OnLoop o;
    evs__fiber *f = evs__fiber_new(pg.pool, on_loop_fiber, &o);
    ASSERT_NE(f, nullptr);
    uintptr_t loop_addr = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    evs__fiber_resume(f);  // returns at the fiber's own yield, not the calls
    EXPECT_EQ(2, o.calls);
    EXPECT_EQ(1, o.after);
    EXPECT_EQ(nullptr, o.current_in_call);
    // fn's frame is near the loop's, far from the fiber's stack.
    auto dist = [](uintptr_t a, uintptr_t b) { return a > b ? a - b : b - a; };
    EXPECT_LT(dist(o.called_local, loop_addr), dist(o.called_local, o.fiber_local));
    EXPECT_LT(dist(o.called_local, loop_addr), (uintptr_t)(64 * 1024));
    evs__fiber_resume(f);
    EXPECT_EQ(2, o.after);
    EXPECT_TRUE(evs__fiber_done(f));
    evs__fiber_free(f);

    OnLoop plain;  // from the loop context: a plain call
    evs__fiber_call_on_loop(on_loop_call, &plain);
    EXPECT_EQ(1, plain.calls);
    EXPECT_EQ(nullptr, plain.current_in_call);
}

// ---------------------------------------------------------------------------
// Many fibers interleaved round-robin.

struct Interleave {
    int id;
    int steps;
    std::vector<int> *log;
};

void interleave_fn(void *arg) {
    auto *it = static_cast<Interleave *>(arg);
    for (int s = 0; s < it->steps; s++) {
        it->log->push_back(it->id * 1000 + s);
        evs__fiber_yield();
    }
}

TEST(Fiber, ManyInterleaved) {
    constexpr int kFibers = 64, kSteps = 10;
    PoolGuard pg(64 * 1024, 16);
    std::vector<int> log;
    std::vector<Interleave> args(kFibers);
    std::vector<evs__fiber *> fibers(kFibers);
    for (int i = 0; i < kFibers; i++) {
        args[i] = Interleave{i, kSteps, &log};
        fibers[i] = evs__fiber_new(pg.pool, interleave_fn, &args[i]);
        ASSERT_NE(fibers[i], nullptr);
    }
    for (int s = 0; s <= kSteps; s++)
        for (int i = 0; i < kFibers; i++) evs__fiber_resume(fibers[i]);
    ASSERT_EQ(log.size(), size_t(kFibers * kSteps));
    size_t k = 0;
    for (int s = 0; s < kSteps; s++)
        for (int i = 0; i < kFibers; i++) EXPECT_EQ(log[k++], i * 1000 + s);
    for (auto *f : fibers) {
        EXPECT_TRUE(evs__fiber_done(f));
        evs__fiber_free(f);
    }
}

// ---------------------------------------------------------------------------
// Done detection, never-started fibers.

void yield_n_fn(void *arg) {
    int n = *static_cast<int *>(arg);
    for (int i = 0; i < n; i++) evs__fiber_yield();
}

TEST(Fiber, DoneDetection) {
    PoolGuard pg;
    int n = 3;
    evs__fiber *f = evs__fiber_new(pg.pool, yield_n_fn, &n);
    ASSERT_NE(f, nullptr);
    EXPECT_FALSE(evs__fiber_done(f));
    int resumes = 0;
    while (!evs__fiber_done(f)) {
        evs__fiber_resume(f);
        resumes++;
        ASSERT_LE(resumes, 10);
    }
    EXPECT_EQ(resumes, n + 1);
    evs__fiber_free(f);

    int zero = 0;
    f = evs__fiber_new(pg.pool, yield_n_fn, &zero);
    ASSERT_NE(f, nullptr);
    evs__fiber_resume(f);
    EXPECT_TRUE(evs__fiber_done(f));
    evs__fiber_free(f);
}

void must_not_run_fn(void *arg) { *static_cast<bool *>(arg) = true; }

TEST(Fiber, FreeNeverStarted) {
    PoolGuard pg(0, 2);
    bool ran = false;
    for (int i = 0; i < 10; i++) {
        evs__fiber *f = evs__fiber_new(pg.pool, must_not_run_fn, &ran);
        ASSERT_NE(f, nullptr);
        EXPECT_FALSE(evs__fiber_done(f));
        evs__fiber_free(f);
    }
    EXPECT_FALSE(ran);
    // A reused never-started fiber still runs properly.
    evs__fiber *f = evs__fiber_new(pg.pool, must_not_run_fn, &ran);
    evs__fiber_resume(f);
    EXPECT_TRUE(ran);
    EXPECT_TRUE(evs__fiber_done(f));
    evs__fiber_free(f);
}

// ---------------------------------------------------------------------------
// Pool reuse.

void touch_fn(void *arg) {
    volatile char buf[2048];
    for (size_t i = 0; i < sizeof buf; i += 64) buf[i] = (char)i;
    *static_cast<uintptr_t *>(arg) = (uintptr_t)__builtin_frame_address(0);
    evs__fiber_yield();
    for (size_t i = 0; i < sizeof buf; i += 64) EXPECT_EQ(buf[i], (char)i);
}

TEST(Fiber, PoolReuse) {
    PoolGuard pg(32 * 1024, 4);
    EXPECT_EQ(evs__stack_pool_stack_size(pg.pool), 32u * 1024u);

    // Sequential: the cached fiber (and its stack) comes back every time.
    evs__fiber *first = nullptr;
    uintptr_t first_frame = 0;
    for (int i = 0; i < 1000; i++) {
        uintptr_t frame = 0;
        evs__fiber *f = evs__fiber_new(pg.pool, touch_fn, &frame);
        ASSERT_NE(f, nullptr);
        evs__fiber_resume(f);
        evs__fiber_resume(f);
        ASSERT_TRUE(evs__fiber_done(f));
        if (i == 0) {
            first = f;
            first_frame = frame;
        } else {
            EXPECT_EQ(f, first);
            EXPECT_EQ(frame, first_frame);
        }
        evs__fiber_free(f);
    }

    // Many live at once: more than max_cached, some freed into the cache,
    // the rest unmapped; repeat to exercise both paths.
    for (int round = 0; round < 20; round++) {
        std::vector<evs__fiber *> fs;
        std::vector<uintptr_t> frames(50);
        for (int i = 0; i < 50; i++) {
            fs.push_back(evs__fiber_new(pg.pool, touch_fn, &frames[i]));
            ASSERT_NE(fs.back(), nullptr);
            evs__fiber_resume(fs.back());
        }
        for (auto *f : fs) {
            evs__fiber_resume(f);
            ASSERT_TRUE(evs__fiber_done(f));
            evs__fiber_free(f);
        }
    }
}

// ---------------------------------------------------------------------------
// Deep recursion using most of the stack.

struct Deep {
    uintptr_t top;
    size_t target;
    size_t max_used;
    int depth;
};

volatile int g_sink;

int deep_rec(Deep *d, int n) {
    volatile char buf[512];
    buf[0] = (char)n;
    buf[511] = (char)n;
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    size_t used = d->top - here;
    if (used > d->max_used) d->max_used = used;
    int r = 0;
    if (used < d->target && n < 1000000) r = deep_rec(d, n + 1);
    else d->depth = n;
    return r + buf[0] + buf[511];  // not a tail call
}

void deep_fn(void *arg) {
    auto *d = static_cast<Deep *>(arg);
    d->top = (uintptr_t)__builtin_frame_address(0);
    evs__fiber_yield();
    g_sink = deep_rec(d, 0);
    evs__fiber_yield();
    g_sink = deep_rec(d, 0);  // again after a switch
}

TEST(Fiber, DeepRecursion) {
    PoolGuard pg(256 * 1024, 1);
    size_t size = evs__stack_pool_stack_size(pg.pool);
    Deep d{};
    evs__fiber *f = evs__fiber_new(pg.pool, deep_fn, &d);
    ASSERT_NE(f, nullptr);
    evs__fiber_resume(f);
    d.target = size * 3 / 4;
    evs__fiber_resume(f);
    EXPECT_GE(d.max_used, size * 3 / 4);
    EXPECT_GT(d.depth, 10);
    evs__fiber_resume(f);
    EXPECT_TRUE(evs__fiber_done(f));
    evs__fiber_free(f);
}

// ---------------------------------------------------------------------------
// Callee-saved integer and FP state across switches.

struct FpState {
    double seed;
    double result;
    long iresult;
};

__attribute__((noinline)) double fp_work(double x) { return x * 1.000001 + 0.5; }

void fp_fn(void *arg) {
    auto *st = static_cast<FpState *>(arg);
    // Many live values across yields: forces callee-saved registers and
    // spills of both integer and FP kinds.
    double a = st->seed, b = st->seed * 2, c = st->seed * 3, d = st->seed * 4;
    double e = st->seed * 5, g = st->seed * 6, h = st->seed * 7, k = st->seed * 8;
    long i1 = (long)st->seed, i2 = i1 * 3, i3 = i1 * 5, i4 = i1 * 7, i5 = i1 * 11;
    for (int i = 0; i < 50; i++) {
        a = fp_work(a); b = fp_work(b); c = fp_work(c); d = fp_work(d);
        e = fp_work(e); g = fp_work(g); h = fp_work(h); k = fp_work(k);
        i1 += 1; i2 += 2; i3 += 3; i4 += 4; i5 += 5;
        evs__fiber_yield();
    }
    st->result = a + b + c + d + e + g + h + k;
    st->iresult = i1 + i2 + i3 + i4 + i5;
}

double fp_expected(double seed) {
    double s = 0;
    for (int m = 1; m <= 8; m++) {
        double v = seed * m;
        for (int i = 0; i < 50; i++) v = fp_work(v);
        s += v;
    }
    return s;
}

TEST(Fiber, RegistersPreservedAcrossSwitches) {
    PoolGuard pg;
    FpState s1{1.25, 0, 0}, s2{-3.5, 0, 0};
    evs__fiber *f1 = evs__fiber_new(pg.pool, fp_fn, &s1);
    evs__fiber *f2 = evs__fiber_new(pg.pool, fp_fn, &s2);
    ASSERT_NE(f1, nullptr);
    ASSERT_NE(f2, nullptr);
    // The loop context keeps its own live doubles across resumes.
    double la = 10.0, lb = 20.0;
    long li = 7;
    while (!evs__fiber_done(f1) || !evs__fiber_done(f2)) {
        if (!evs__fiber_done(f1)) evs__fiber_resume(f1);
        la = fp_work(la);
        if (!evs__fiber_done(f2)) evs__fiber_resume(f2);
        lb = fp_work(lb);
        li += 3;
    }
    EXPECT_DOUBLE_EQ(s1.result, fp_expected(1.25));
    EXPECT_DOUBLE_EQ(s2.result, fp_expected(-3.5));
    EXPECT_EQ(s1.iresult, 1 + 3 + 5 + 7 + 11 + 50 * 15);
    EXPECT_EQ(s2.iresult, -3 - 9 - 15 - 21 - 33 + 50 * 15);
    double ea = 10.0, eb = 20.0;
    for (int i = 0; i < 51; i++) { ea = fp_work(ea); eb = fp_work(eb); }
    EXPECT_DOUBLE_EQ(la, ea);
    EXPECT_DOUBLE_EQ(lb, eb);
    EXPECT_EQ(li, 7 + 51 * 3);
    evs__fiber_free(f1);
    evs__fiber_free(f2);
}

// ---------------------------------------------------------------------------
// A million switches.

void spin_fn(void *arg) {
    long n = *static_cast<long *>(arg);
    for (long i = 0; i < n; i++) evs__fiber_yield();
}

TEST(Fiber, MillionSwitches) {
    PoolGuard pg;
    long n = 500000;  // resume + yield = 2 switches each
    evs__fiber *f = evs__fiber_new(pg.pool, spin_fn, &n);
    ASSERT_NE(f, nullptr);
    long resumes = 0;
    while (!evs__fiber_done(f)) {
        evs__fiber_resume(f);
        resumes++;
    }
    EXPECT_EQ(resumes, n + 1);
    evs__fiber_free(f);
}

// ---------------------------------------------------------------------------
// Thread init/fini and stack overflow reporting.

TEST(Fiber, ThreadInitFini) {
    EXPECT_EQ(evs__fiber_thread_init(), 0);
    EXPECT_EQ(evs__fiber_thread_init(), 0);  // nested
    evs__fiber_thread_fini();
    evs__fiber_thread_fini();
    EXPECT_EQ(evs__fiber_thread_init(), 0);
    evs__fiber_thread_fini();
}

// A thread's own alternate signal stack, too small for the library, is
// given back at fini (it was left disabled).
TEST(Fiber, ThreadFiniRestoresTheThreadsOwnAltstack) {
    stack_t mine, cur, before;
    ASSERT_EQ(0, sigaltstack(nullptr, &before));
    struct Restore {  // even when an assertion ends the test early
        stack_t ss;
        ~Restore() { sigaltstack(&ss, nullptr); }
    } restore{before};
    std::vector<char> mem(16 * 1024);
    mine.ss_sp = mem.data();
    mine.ss_size = mem.size();
    mine.ss_flags = 0;
    ASSERT_EQ(0, sigaltstack(&mine, nullptr));
    ASSERT_EQ(0, evs__fiber_thread_init());
    ASSERT_EQ(0, sigaltstack(nullptr, &cur));
    EXPECT_NE(mine.ss_sp, cur.ss_sp);  // replaced while in use
    evs__fiber_thread_fini();
    ASSERT_EQ(0, sigaltstack(nullptr, &cur));
    EXPECT_EQ(mine.ss_sp, cur.ss_sp);
    EXPECT_EQ(mine.ss_size, cur.ss_size);
    EXPECT_FALSE(cur.ss_flags & SS_DISABLE);
}

#ifndef FIBER_TEST_SANITIZED
volatile bool g_stop_recursion = false;

int overflow_rec(int n) {
    volatile char buf[256];
    buf[0] = (char)n;
    if (g_stop_recursion) return buf[0];
    return overflow_rec(n + 1) + buf[0];
}

void overflow_fn(void *) { g_sink = overflow_rec(0); }

void run_overflow() {
    if (evs__fiber_thread_init() != 0) return;
    evs__stack_pool *pool = evs__stack_pool_new(64 * 1024, 1);
    evs__fiber *f = evs__fiber_new(pool, overflow_fn, nullptr);
    evs__fiber_resume(f);
}

TEST(FiberDeathTest, StackOverflowReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(run_overflow(), "a task overflowed its stack");
}

// A frame larger than a one-page guard lands below it: a 64 KiB guard
// catches the write 8 KiB below the stack. With one page it went
// unreported into what lay there: mappings are made top-down, so that is
// the stack and record of the fiber mapped next.
void jump_fn(void *) {
    volatile char here = 0;
    auto below = reinterpret_cast<volatile char *>(reinterpret_cast<uintptr_t>(&here) -
                                                   (64 + 8) * 1024);
    *below = 1;
}

void run_jump() {
    if (evs__fiber_thread_init() != 0) return;
    evs__stack_pool *pool = evs__stack_pool_new(64 * 1024, 1);
    evs__fiber *f = evs__fiber_new(pool, jump_fn, nullptr);
    evs__fiber *next = evs__fiber_new(pool, jump_fn, nullptr);  // mapped below f
    (void)next;
    evs__fiber_resume(f);
}

TEST(FiberDeathTest, AFrameThatJumpsAPageIsStillReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(run_jump(), "a task overflowed its stack");
}

// A SIGSEGV sent by kill() or raise() kills as it would without the
// handler (it was swallowed once: nothing re-executes).
TEST(FiberDeathTest, ASentSigsegvStillKills) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            evs__fiber_thread_init();
            raise(SIGSEGV);
            _exit(0);
        },
        ::testing::KilledBySignal(SIGSEGV), "");
}

// ... and one the program ignored before evstream came stays ignored.
TEST(FiberDeathTest, ASentSigsegvTheProgramIgnoresStaysIgnored) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            signal(SIGSEGV, SIG_IGN);
            evs__fiber_thread_init();
            raise(SIGSEGV);
            raise(SIGSEGV);
            _exit(3);
        },
        ::testing::ExitedWithCode(3), "");
}

// A fault that is not a fiber overflow still kills the process the usual way.
TEST(FiberDeathTest, OtherFaultsPassedOn) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            evs__fiber_thread_init();
            *static_cast<volatile int *>(nullptr) = 1;
        },
        ::testing::KilledBySignal(SIGSEGV), "");
}
#endif

// ---------------------------------------------------------------------------
// Fibers on two threads at once, each with its own pool.

struct Counter {
    long value = 0;
    int steps = 0;
};

void count_fn(void *arg) {
    auto *c = static_cast<Counter *>(arg);
    for (int i = 0; i < c->steps; i++) {
        c->value += i;  // written in the fiber, read by the loop
        evs__fiber_yield();
    }
}

void thread_body(long *out, bool *ok) {
    *ok = false;
    if (evs__fiber_thread_init() != 0) return;
    evs__stack_pool *pool = evs__stack_pool_new(64 * 1024, 4);
    if (!pool) return;
    constexpr int kFibers = 16, kSteps = 2000;
    std::vector<Counter> cs(kFibers);
    std::vector<evs__fiber *> fs(kFibers);
    for (int i = 0; i < kFibers; i++) {
        cs[i].steps = kSteps;
        fs[i] = evs__fiber_new(pool, count_fn, &cs[i]);
        if (!fs[i]) return;
    }
    bool running = true;
    long seen = 0;
    while (running) {
        running = false;
        for (int i = 0; i < kFibers; i++) {
            if (evs__fiber_done(fs[i])) continue;
            evs__fiber_resume(fs[i]);
            seen += cs[i].value & 1;
            running = true;
        }
    }
    long total = 0;
    for (int i = 0; i < kFibers; i++) {
        total += cs[i].value;
        evs__fiber_free(fs[i]);
    }
    (void)seen;
    evs__stack_pool_free(pool);
    evs__fiber_thread_fini();
    *out = total;
    *ok = true;
}

TEST(Fiber, TwoThreads) {
    long r1 = 0, r2 = 0;
    bool ok1 = false, ok2 = false;
    std::thread t1(thread_body, &r1, &ok1);
    std::thread t2(thread_body, &r2, &ok2);
    t1.join();
    t2.join();
    EXPECT_TRUE(ok1);
    EXPECT_TRUE(ok2);
    long expect = 16L * (2000L * 1999L / 2);
    EXPECT_EQ(r1, expect);
    EXPECT_EQ(r2, expect);
}

}  // namespace
