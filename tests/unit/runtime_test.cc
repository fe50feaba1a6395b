// The runtime: workers, posting across threads, dispatch policies, the
// global connection limit, fd exhaustion, counters and stopping.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <pthread.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"

using namespace evs_test;

namespace {

evs_runtime *start_runtime(int workers, evs_dispatch d = EVS_DISPATCH_LEAST_CONNECTIONS,
                           size_t max_conn = 0) {
    evs_runtime_options o{};
    o.workers = workers;
    o.dispatch = d;
    o.max_connections = max_conn;
    evs_runtime *rt = nullptr;
    EXPECT_EQ(0, evs_runtime_new(&o, &rt));
    return rt;
}

// Greets with the worker id ("w<id>\n"), then echoes until EOF.
void greet_echo(evs_reader *r, evs_writer *w, void *) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "w%d\n", evs_worker_id(evs_worker_current()));
    evs_write(w, buf, (size_t)n);
    ssize_t got;
    while ((got = evs_read(r, buf, sizeof buf)) > 0) {
        evs_write(w, buf, (size_t)got);
        if (evs_drain(w) < 0) break;
    }
}

uint16_t serve(evs_runtime *rt, evs_client_connected_cb cb, void *arg = nullptr) {
    evs_server_options o{};
    o.client_connected = cb;
    o.arg = arg;
    o.host = "127.0.0.1";
    o.backlog = 1024;
    evs_server *s = nullptr;
    EXPECT_EQ(0, evs_start_server(rt, &o, &s));
    return s ? evs_server_port(s) : 0;
}

int read_worker_id(int fd) {
    char line[16] = {0};
    for (size_t i = 0; i < sizeof line - 1; i++) {
        if (recv(fd, &line[i], 1, 0) != 1) return -1;
        if (line[i] == '\n') break;
    }
    return line[0] == 'w' ? atoi(line + 1) : -1;
}

void raise_fd_limit() {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

}  // namespace

TEST(Runtime, RejectsBadOptions) {
    evs_runtime_options o{};
    evs_runtime *rt;
    o.workers = -1;
    EXPECT_EQ(-EINVAL, evs_runtime_new(&o, &rt));
    o.workers = 1;
    o.dispatch = (evs_dispatch)7;
    EXPECT_EQ(-EINVAL, evs_runtime_new(&o, &rt));
}

TEST(Runtime, DefaultsToOneWorkerPerOnlineCpu) {
    evs_runtime *rt = nullptr;
    ASSERT_EQ(0, evs_runtime_new(nullptr, &rt));
    EXPECT_EQ((int)sysconf(_SC_NPROCESSORS_ONLN), evs_runtime_worker_count(rt));
    EXPECT_EQ(nullptr, evs_runtime_worker(rt, evs_runtime_worker_count(rt)));
    EXPECT_EQ(0, evs_runtime_stop(rt, 1));
}

struct PostLog {
    std::atomic<int> count{0};
    std::vector<int> seen;  // written only on worker 0
    std::atomic<bool> right_thread{true};
    evs_worker *target = nullptr;
};

TEST(Runtime, PostRunsOnTheWorkerThreadInOrder) {
    evs_runtime *rt = start_runtime(2);
    PostLog log;
    log.target = evs_runtime_worker(rt, 1);
    struct Item {
        PostLog *log;
        int i;
    };
    std::vector<Item> items(1000);
    for (int i = 0; i < 1000; i++) {
        items[i] = {&log, i};
        ASSERT_EQ(0, evs_worker_post(
                         log.target,
                         [](evs_worker *w, void *arg) {
                             Item *it = (Item *)arg;
                             if (evs_worker_current() != w || w != it->log->target ||
                                 evs_worker_id(w) != 1 || evs_worker_runtime(w) == nullptr)
                                 it->log->right_thread = false;
                             it->log->seen.push_back(it->i);
                             it->log->count++;
                         },
                         &items[i]));
    }
    while (log.count.load() < 1000) usleep(1000);
    EXPECT_TRUE(log.right_thread.load());
    for (int i = 0; i < 1000; i++) EXPECT_EQ(i, log.seen[i]);
    EXPECT_EQ(0, evs_runtime_stop(rt, 1));
}

struct CallLog {
    evs_worker *ran_on = nullptr;
    int self_call = 0;
    int cross_call = 1;
    evs_worker *cross_ran_on = nullptr;
    std::vector<int> posted;  // written on worker 1 only
};

TEST(Runtime, CallReturnsOnceItRanAfterWhatWasPostedBefore) {
    evs_runtime *rt = start_runtime(2);
    evs_worker *w0 = evs_runtime_worker(rt, 0), *w1 = evs_runtime_worker(rt, 1);
    CallLog log;
    for (int i = 0; i < 100; i++)
        ASSERT_EQ(0, evs_worker_post(
                         w1, [](evs_worker *, void *arg) { ((CallLog *)arg)->posted.push_back(1); },
                         &log));
    // No waiting loop: the call itself is the wait. Plain fields: TSan
    // checks that the call orders them.
    ASSERT_EQ(0, evs_worker_call(
                     w1,
                     [](evs_worker *w, void *arg) {
                         CallLog *l = (CallLog *)arg;
                         l->ran_on = evs_worker_current();
                         l->self_call = evs_worker_call(w, [](evs_worker *, void *) {}, nullptr);
                         // A worker may call another (that is not calling it).
                         l->cross_call = evs_worker_call(
                             evs_runtime_worker(evs_worker_runtime(w), 0),
                             [](evs_worker *, void *a) {
                                 ((CallLog *)a)->cross_ran_on = evs_worker_current();
                             },
                             l);
                     },
                     &log));
    EXPECT_EQ(w1, log.ran_on);
    EXPECT_EQ(100u, log.posted.size());
    EXPECT_EQ(-EDEADLK, log.self_call);
    EXPECT_EQ(0, log.cross_call);
    EXPECT_EQ(w0, log.cross_ran_on);
    EXPECT_EQ(-EINVAL, evs_worker_call(nullptr, [](evs_worker *, void *) {}, nullptr));
    EXPECT_EQ(-EINVAL, evs_worker_call(w0, nullptr, nullptr));
    EXPECT_EQ(0, evs_runtime_stop(rt, 1));
}

TEST(Runtime, BroadcastRunsOnceOnEveryWorker) {
    evs_runtime *rt = start_runtime(3);
    static std::atomic<int> mask;
    mask = 0;
    ASSERT_EQ(0, evs_runtime_broadcast(
                     rt, [](evs_worker *w, void *) { mask |= 1 << evs_worker_id(w); }, nullptr));
    while (mask.load() != 7) usleep(1000);
    EXPECT_EQ(-EINVAL, evs_runtime_broadcast(rt, nullptr, nullptr));
    EXPECT_EQ(-EINVAL, evs_runtime_broadcast(nullptr, [](evs_worker *, void *) {}, nullptr));
    EXPECT_EQ(0, evs_runtime_stop(rt, 1));
    EXPECT_EQ(7, mask.load());
}

TEST(Runtime, LeastConnectionsSpreadsAndRefillsTheEmptierWorker) {
    evs_runtime *rt = start_runtime(2);
    uint16_t port = serve(rt, greet_echo);
    std::vector<int> fds;
    std::map<int, std::vector<int>> by_worker;
    for (int i = 0; i < 10; i++) {
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
        int id = read_worker_id(fd);
        ASSERT_GE(id, 0);
        by_worker[id].push_back(fd);
    }
    EXPECT_EQ(5u, by_worker[0].size());
    EXPECT_EQ(5u, by_worker[1].size());
    // Close 4 connections of worker 0: the next 4 must all go there.
    for (int i = 0; i < 4; i++) {
        close(by_worker[0].back());
        by_worker[0].pop_back();
    }
    evs_worker_stats st;
    do {
        usleep(1000);
        evs_worker_stats_get(evs_runtime_worker(rt, 0), &st);
    } while (st.active != 1);
    for (int i = 0; i < 4; i++) {
        int fd = connect_tcp(port);
        EXPECT_EQ(0, read_worker_id(fd));
        by_worker[0].push_back(fd);
    }
    for (auto &kv : by_worker) {
        for (int fd : kv.second) close(fd);
    }
    evs_runtime_stop(rt, 5);
}

TEST(Runtime, RoundRobinAlternates) {
    evs_runtime *rt = start_runtime(2, EVS_DISPATCH_ROUND_ROBIN);
    uint16_t port = serve(rt, greet_echo);
    int prev = -1;
    std::vector<int> fds;
    for (int i = 0; i < 6; i++) {
        int fd = connect_tcp(port);
        int id = read_worker_id(fd);
        ASSERT_GE(id, 0);
        if (prev >= 0) {
            EXPECT_NE(prev, id);
        }
        prev = id;
        fds.push_back(fd);
    }
    for (int fd : fds) close(fd);
    evs_runtime_stop(rt, 5);
}

TEST(Runtime, MaxConnectionsPausesAcceptingUntilACloseAndCounts) {
    evs_runtime *rt = start_runtime(2, EVS_DISPATCH_LEAST_CONNECTIONS, 2);
    uint16_t port = serve(rt, greet_echo);
    int a = connect_tcp(port), b = connect_tcp(port);
    ASSERT_GE(read_worker_id(a), 0);
    ASSERT_GE(read_worker_id(b), 0);
    // The third connection completes in the kernel's backlog but is not
    // accepted: no greeting while the other two live.
    int c = connect_tcp(port);
    ASSERT_GE(c, 0);
    set_timeouts(c, 0);
    struct timeval tv = {0, 300 * 1000};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char ch;
    EXPECT_EQ(-1, recv(c, &ch, 1, 0));
    evs_worker_stats st;
    evs_runtime_stats(rt, &st);
    EXPECT_EQ(2u, st.active);
    EXPECT_EQ(2u, st.accepted);
    close(a);
    set_timeouts(c, 20);
    EXPECT_GE(read_worker_id(c), 0);  // accepted once a closed
    evs_runtime_stats(rt, &st);
    EXPECT_EQ(3u, st.accepted);
    close(b);
    close(c);
    evs_runtime_stop(rt, 5);
}

TEST(Runtime, FdExhaustionPausesAcceptingAndRecovers) {
    evs_runtime *rt = start_runtime(1);
    uint16_t port = serve(rt, greet_echo);
    struct rlimit saved;
    getrlimit(RLIMIT_NOFILE, &saved);
    // Leave room for the client sockets below but not for the server's side.
    int client = connect_tcp(port);
    ASSERT_GE(read_worker_id(client), 0);
    int open_now = count_open_fds();
    int c2 = socket(AF_INET, SOCK_STREAM, 0);  // reserve the client fd first
    struct rlimit low = saved;
    low.rlim_cur = (rlim_t)open_now + 1;
    ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &low));
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    set_timeouts(c2);
    ASSERT_EQ(0, connect(c2, (struct sockaddr *)&sin, sizeof sin));
    usleep(300 * 1000);  // the acceptor meets EMFILE and backs off
    ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &saved));
    EXPECT_GE(read_worker_id(c2), 0);  // served after the retry timer
    close(client);
    close(c2);
    evs_runtime_stop(rt, 5);
}

namespace {

// The delays of the "not accepting for Xs" warnings, in order, while it
// is in scope.
struct BackOffLog {
    BackOffLog() { evs_log_set_handler(capture, this); }
    ~BackOffLog() { evs_log_set_handler(nullptr, nullptr); }

    std::mutex mu;
    std::vector<std::string> delays;

    size_t size() {
        std::lock_guard<std::mutex> g(mu);
        return delays.size();
    }
    std::string at(size_t i) {
        std::lock_guard<std::mutex> g(mu);
        return i < delays.size() ? delays[i] : "";
    }
    // Polls (no task here to park) for at most 10 s.
    bool wait_for(size_t n) {
        for (int i = 0; i < 10000 && size() < n; i++) usleep(1000);
        return size() >= n;
    }

    static void capture(evs_log_level, int, const char *msg, void *arg) {
        static const char key[] = "not accepting for ";
        const char *p = strstr(msg, key);
        if (!p) return;
        auto *log = (BackOffLog *)arg;
        std::lock_guard<std::mutex> g(log->mu);
        log->delays.push_back(p + sizeof key - 1);
    }
};

// Leaves no fd number free for the server's side of the next connection:
// a lower limit, and its free numbers (holes below it) taken; undone by
// the destructor.
struct FdsExhausted {
    struct rlimit saved;
    std::vector<int> fillers;

    FdsExhausted() {
        getrlimit(RLIMIT_NOFILE, &saved);
        struct rlimit low = saved;
        low.rlim_cur = (rlim_t)count_open_fds();
        EXPECT_EQ(0, setrlimit(RLIMIT_NOFILE, &low));
        for (int fd; (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;)
            fillers.push_back(fd);
    }
    ~FdsExhausted() {
        for (int fd : fillers) close(fd);
        EXPECT_EQ(0, setrlimit(RLIMIT_NOFILE, &saved));
    }
};

}  // namespace

// One accept that works ends an episode: the next EMFILE pauses for the
// first step again, whether the acceptor (two workers) or the worker
// owning the listener (one worker) made that accept.
TEST(Runtime, FdBackOffGrowsThenStartsOverAfterAnAccept) {
    for (int workers : {1, 2}) {
        SCOPED_TRACE(workers);
        BackOffLog log;
        evs_runtime *rt = start_runtime(workers);
        uint16_t port = serve(rt, greet_echo);
        struct sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int c1 = socket(AF_INET, SOCK_STREAM, 0);
        int c2 = socket(AF_INET, SOCK_STREAM, 0);
        set_timeouts(c1);
        set_timeouts(c2);
        bool two_steps;
        {
            FdsExhausted no_fds;
            ASSERT_EQ(0, connect(c1, (struct sockaddr *)&sin, sizeof sin));
            two_steps = log.wait_for(2);  // 0.1 s, then a retry that fails
        }
        ASSERT_TRUE(two_steps) << log.size() << " pauses logged";
        EXPECT_EQ("0.1s", log.at(0));
        EXPECT_EQ("0.2s", log.at(1));
        EXPECT_GE(read_worker_id(c1), 0);  // accepted once fds are back

        size_t before = log.size();
        bool paused_again;
        {
            FdsExhausted no_fds;
            ASSERT_EQ(0, connect(c2, (struct sockaddr *)&sin, sizeof sin));
            paused_again = log.wait_for(before + 1);
        }
        ASSERT_TRUE(paused_again);
        EXPECT_EQ("0.1s", log.at(before));  // not 0.4 s: the back-off started over
        EXPECT_GE(read_worker_id(c2), 0);

        close(c1);
        close(c2);
        evs_runtime_stop(rt, 5);
    }
}

TEST(Runtime, ThousandConcurrentEchoConnectionsThroughTwoWorkers) {
    raise_fd_limit();
    evs_runtime *rt = start_runtime(2);
    static uint16_t port;
    port = serve(rt, greet_echo);
    static std::atomic<int> ok;
    ok = 0;
    int rc = run_task(
        [](void *) -> int {
            std::vector<evs_task *> tasks(1000);
            for (size_t i = 0; i < tasks.size(); i++) {
                int err = evs_task_spawn(
                    [](void *arg) -> int {
                        evs_reader *r;
                        evs_writer *w;
                        if (evs_open_connection("127.0.0.1", port, nullptr, &r, &w) != 0)
                            return 1;
                        const void *line;
                        std::string data = pattern(4096, (uint32_t)(uintptr_t)arg);
                        int result = 2;
                        if (evs_readline(r, &line) > 0 &&
                            evs_write(w, data.data(), data.size()) == 0) {
                            std::string back(data.size(), '\0');
                            if (evs_readexactly(r, &back[0], back.size()) ==
                                    (ssize_t)back.size() &&
                                back == data)
                                result = 0;
                        }
                        evs_writer_free(w);
                        if (result == 0) ok++;
                        return result;
                    },
                    (void *)(uintptr_t)(i + 1), &tasks[i]);
                if (err) return 10;
            }
            int failures = 0;
            for (auto *t : tasks) {
                int r = -1;
                evs_task_join(t, &r);
                failures += r != 0;
            }
            return failures;
        },
        nullptr);
    EXPECT_EQ(0, rc);
    EXPECT_EQ(1000, ok.load());
    evs_worker_stats st;
    evs_runtime_stats(rt, &st);
    EXPECT_EQ(1000u, st.accepted);
    EXPECT_GE(st.bytes_in, 1000u * 4096u);
    EXPECT_GE(st.bytes_out, 1000u * 4096u);
    for (int i = 0; i < 2; i++) {  // both workers took a share
        evs_worker_stats ws;
        evs_worker_stats_get(evs_runtime_worker(rt, i), &ws);
        EXPECT_GT(ws.accepted, 100u);
    }
    EXPECT_EQ(0, evs_runtime_stop(rt, 5));
}

struct StopLog {
    std::atomic<int> cancelled{0};
    std::atomic<int> started{0};
};

TEST(Runtime, StopWithLiveConnectionsCancelsHandlersAndClosesSockets) {
    evs_runtime *rt = start_runtime(2);
    static StopLog log;
    log.cancelled = 0;
    log.started = 0;
    uint16_t port = serve(rt, [](evs_reader *r, evs_writer *w, void *) {
        char c;
        log.started++;
        evs_write(w, "hi\n", 3);
        if (evs_read(r, &c, 1) == -ECANCELED) log.cancelled++;
    });
    std::vector<int> fds;
    for (int i = 0; i < 20; i++) {
        int fd = connect_tcp(port);
        char buf[3];
        ASSERT_TRUE(read_exact(fd, buf, 3));
        fds.push_back(fd);
    }
    EXPECT_EQ(-ETIMEDOUT, evs_runtime_stop(rt, 0.1));
    EXPECT_EQ(20, log.cancelled.load());
    for (int fd : fds) {
        char c;
        EXPECT_LE(recv(fd, &c, 1, 0), 0);  // EOF or reset, never a hang
        close(fd);
    }
}

// A handler cancelled by the stop that then opens a datagram endpoint or
// a transport (a lazily opened logger, say) is refused: nothing would
// close them after the stop's abort, and the worker's loop waited for them
// forever (evs_runtime_stop never returned).
TEST(Runtime, NothingOpensOnAWorkerThatIsStopping) {
    evs_runtime *rt = start_runtime(1);
    static std::atomic<int> dgram_rc, transport_rc;
    dgram_rc = transport_rc = 1;
    uint16_t port = serve(rt, [](evs_reader *r, evs_writer *w, void *) {
        char c;
        evs_write(w, "hi\n", 3);
        if (evs_read(r, &c, 1) != -ECANCELED) return;
        struct sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        to.sin_port = htons(9);
        evs_datagram_options o{};
        o.remote_addr = (struct sockaddr *)&to;
        o.remote_addrlen = sizeof to;
        static const evs_datagram_protocol dp{};
        evs_datagram *d = nullptr;
        dgram_rc = evs_datagram_open(&o, &dp, nullptr, &d);
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
        static const evs_protocol tp{};
        evs_transport *t = nullptr;
        transport_rc = evs_transport_new(sv[0], &tp, nullptr, &t);
        close(sv[1]);
    });
    int fd = connect_tcp(port);
    char buf[3];
    ASSERT_TRUE(read_exact(fd, buf, 3));
    std::atomic<bool> stopped{false};
    std::thread watchdog([&] {
        for (int i = 0; i < 300 && !stopped; i++) usleep(100 * 1000);
        if (!stopped) {
            fprintf(stderr, "evs_runtime_stop hung\n");
            _exit(1);
        }
    });
    evs_runtime_stop(rt, 0.1);
    stopped = true;
    watchdog.join();
    EXPECT_EQ(-ESHUTDOWN, dgram_rc.load());
    EXPECT_EQ(-ESHUTDOWN, transport_rc.load());
    close(fd);
}

TEST(Runtime, StopWaitsForHandlersThatFinishInTime) {
    evs_runtime *rt = start_runtime(1);
    static std::atomic<int> finished;
    finished = 0;
    uint16_t port = serve(rt, [](evs_reader *r, evs_writer *w, void *) {
        evs_write(w, "x", 1);
        if (evs_sleep(0.2) == 0) {
            evs_write(w, "done", 4);
            finished++;
        }
    });
    int fd = connect_tcp(port);
    char c;
    ASSERT_EQ(1, recv(fd, &c, 1, 0));
    EXPECT_EQ(0, evs_runtime_stop(rt, 30));
    EXPECT_EQ(1, finished.load());
    EXPECT_EQ("done", read_to_eof(fd));
    close(fd);
}

TEST(Runtime, StoppingAnIdleRuntimeLeavesNoFdBehind) {
    int before = count_open_fds();
    for (int i = 0; i < 3; i++) {
        evs_runtime *rt = start_runtime(2);
        serve(rt, greet_echo);
        EXPECT_EQ(0, evs_runtime_stop(rt, 1));
    }
    EXPECT_EQ(before, count_open_fds());
}

// evs_runtime_stop from one of the runtime's own workers (a handler that
// decides to shut down) would join its own thread and free the base it runs
// on: it refuses with -EDEADLK, as evs_server_free does.
TEST(Runtime, StopOnItsOwnWorkerRefusesInsteadOfFreeingItsLoop) {
    evs_runtime_options ro{};
    ro.workers = 2;
    evs_runtime *rt;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    static std::atomic<int> rc{1};
    static std::atomic<bool> done{false};
    rc = 1;
    done = false;
    ASSERT_EQ(0, evs_worker_post(evs_runtime_worker(rt, 0), [](evs_worker *w, void *) {
        rc = evs_runtime_stop(evs_worker_runtime(w), 0);
        done = true;
    }, nullptr));
    for (int i = 0; i < 5000 && !done.load(); i++) usleep(1000);
    ASSERT_TRUE(done.load()) << "evs_runtime_stop on a worker never returned";
    EXPECT_EQ(-EDEADLK, rc.load());
    if (rc.load() == -EDEADLK) {
        EXPECT_EQ(0, evs_runtime_stop(rt, 5));
    }
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
namespace {

volatile bool g_stop_deepening = false;

int deepen(int n) {
    volatile char buf[256];
    buf[0] = (char)n;
    if (g_stop_deepening) return buf[0];
    return deepen(n + 1) + buf[0];
}

int overflowing_task(void *) { return deepen(0); }

void spawn_overflowing_task(evs_worker *, void *) {
    evs_task_spawn(overflowing_task, nullptr, nullptr);
}

// A task on a runtime worker that overflows its stack. Returns (and so
// fails the death test) only if the process survived it.
void overflow_on_a_worker() {
    evs_runtime_options o{};
    o.workers = 1;
    o.stack_size = 64 * 1024;
    evs_runtime *rt = nullptr;
    if (evs_runtime_new(&o, &rt) != 0) return;
    evs_worker_call(evs_runtime_worker(rt, 0), spawn_overflowing_task, nullptr);
    sleep(20);
}

}  // namespace

// Workers block the asynchronous signals, and had blocked the faults too: a
// SIGSEGV raised while blocked kills the process before any handler runs,
// so an overflow on a worker died silently instead of being reported.
TEST(RuntimeDeathTest, AStackOverflowOnAWorkerIsReported) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(overflow_on_a_worker(), "a task overflowed its stack");
}

namespace {

std::atomic<int> hooks_run{0};

void nothing_on(evs_worker *, void *) {}

void call_the_last_worker(evs_worker *w, void *) {
    hooks_run++;
    evs_runtime *rt = evs_worker_runtime(w);
    evs_worker_call(evs_runtime_worker(rt, evs_runtime_worker_count(rt) - 1), nothing_on, nullptr);
}

// Threads of 256 MiB stacks, under an address-space limit with room for
// two more: creating the third fails. (Not under the sanitizers, whose
// own mappings the limit would refuse.)
void start_eight_workers_in_too_little_address_space() {
    alarm(20);  // a hang ends in SIGALRM, which fails the test
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 256u << 20);
    pthread_setattr_default_np(&a);
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%lu", &pages) != 1) _exit(2);
    fclose(f);
    rlim_t vm = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
    struct rlimit rl = {vm + (600u << 20), vm + (600u << 20)};
    if (setrlimit(RLIMIT_AS, &rl) < 0) _exit(3);
    evs_runtime_options o{};
    o.workers = 8;
    o.worker_started = call_the_last_worker;
    evs_runtime *rt = nullptr;
    int rc = evs_runtime_new(&o, &rt);
    _exit(rc < 0 && rt == nullptr && hooks_run == 0 ? 0 : 4);
}

}  // namespace

// A worker_started hook that called a worker whose thread could not be
// created waited for ever, and so did evs_runtime_new, stopping the
// workers it had started. The hooks now run only once every thread exists.
TEST(RuntimeDeathTest, NoHookRunsWhenAWorkerThreadCannotBeCreated) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(start_eight_workers_in_too_little_address_space(), ::testing::ExitedWithCode(0), "");
}
#endif
