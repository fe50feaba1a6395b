// Review reproductions: runtime / acceptor / subprocess.
#include <gtest/gtest.h>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <evstream/subprocess.h>

#include "helpers.h"

using namespace evs_test;

namespace {

std::atomic<int> g_live{0}, g_max{0};

void holding_handler(evs_reader *r, evs_writer *, void *) {
    int now = ++g_live;
    int m = g_max.load();
    while (now > m && !g_max.compare_exchange_weak(m, now)) {
    }
    char buf[64];
    while (evs_read(r, buf, sizeof buf) > 0) {
    }
    --g_live;
}

}  // namespace

// max_connections = 1 with reuse_port and 2 workers: each worker checks
// at_limit() and then accepts on its own socket; nothing makes the check
// and the count one step, so two workers can both pass it.
TEST(Review, ReusePortMaxConnectionsIsNeverExceeded) {
    evs_runtime_options ro{};
    ro.workers = 2;
    ro.max_connections = 1;
    evs_runtime *rt;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    evs_server_options o{};
    o.client_connected = holding_handler;
    o.host = "127.0.0.1";
    o.reuse_port = true;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(rt, &o, &s));
    size_t max_conns = 0;
    for (int round = 0; round < 60 && g_max.load() <= 1 && max_conns <= 1; round++) {
        // Hold both workers, queue connections on both sockets, let go.
        static std::atomic<bool> go;
        static std::atomic<int> parked;
        go = false;
        parked = 0;
        for (int w = 0; w < 2; w++)
            evs_worker_post(evs_runtime_worker(rt, w), [](evs_worker *, void *) {
                ++parked;
                while (!go.load()) sched_yield();
            }, nullptr);
        while (parked.load() < 2) usleep(100);
        std::vector<int> fds;
        for (int i = 0; i < 16; i++) fds.push_back(connect_tcp(evs_server_port(s)));
        go = true;
        for (int k = 0; k < 50; k++) {
            size_t c = evs_server_connections(s);
            if (c > max_conns) max_conns = c;
            usleep(1000);
        }
        for (int fd : fds) close(fd);
        // let everything drain
        for (int k = 0; k < 2000 && (evs_server_connections(s) > 0 || g_live.load() > 0); k++)
            usleep(1000);
        if (getenv("REVIEW_VERBOSE"))
            fprintf(stderr, "round %d conns %zu live %d max %d\n", round, evs_server_connections(s),
                    g_live.load(), g_max.load());
    }
    EXPECT_LE(g_max.load(), 1) << "handlers running at once with max_connections=1";
    EXPECT_LE(max_conns, 1u) << "server connections with max_connections=1";
    evs_runtime_stop(rt, 5);
}

namespace {
struct SpRec {
    int exited = 0, lost = 0;
    bool in_kill = false;
    int lost_inside_kill = 0;
};
void sp_exited(evs_subprocess *, void *ctx) { static_cast<SpRec *>(ctx)->exited++; }
void sp_lost(evs_subprocess *, int, void *ctx) {
    auto *r = static_cast<SpRec *>(ctx);
    r->lost++;
    if (r->in_kill) r->lost_inside_kill++;
}
const evs_subprocess_protocol kSp = {
    .connection_made = nullptr,
    .pipe_data_received = nullptr,
    .pipe_connection_lost = nullptr,
    .process_exited = sp_exited,
    .connection_lost = sp_lost,
    .pause_writing = nullptr,
    .resume_writing = nullptr,
};
}  // namespace

// The child has exited but the loop has not seen it yet: kill() reaps it
// and runs process_exited and connection_lost inside the call, which then
// frees the transport: the caller's next use of it is a use after free.
TEST(Review, SubprocessKillDoesNotRunConnectionLostInsideTheCall) {
    SpRec r;
    auto f = [&] {
        const char *argv[] = {"/bin/true", nullptr};
        evs_process_options o{};
        o.argv = argv;
        o.stdin_mode = o.stdout_mode = o.stderr_mode = EVS_STDIO_DEVNULL;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kSp, &r, &p));
        usleep(300 * 1000);  // the child exits; the loop does not run
        r.in_kill = true;
        int rc = evs_subprocess_kill(p);
        r.in_kill = false;
        EXPECT_EQ(0, r.lost_inside_kill) << "connection_lost ran inside evs_subprocess_kill (rc "
                                        << rc << "); p is freed now";
        if (r.lost == 0) {
            evs_subprocess_close(p);  // the seed's kill-then-close
            wait_until([&] { return r.lost == 1; });
        }
    };
    EXPECT_EQ(0, run_in_task(f));
    EXPECT_EQ(1, r.lost);
}

// evs_runtime_stop from one of the runtime's own workers (a handler that
// decides to shut down): it joins its own thread and frees the base it is
// running on. It should refuse with -EDEADLK, as evs_server_free does.
TEST(Review, RuntimeStopOnAWorkerRefusesInsteadOfFreeingItsOwnLoop) {
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
