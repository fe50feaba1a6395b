// Servers: start_server / start_unix_server options, both handler modes,
// many concurrent connections through a runtime, and stopping.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <netinet/in.h>

#include <atomic>
#include <cmath>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"
#include "iplimit_probe.h"

using namespace evs_test;

namespace {

void echo_handler(evs_reader *r, evs_writer *w, void *) {
    char buf[16384];
    ssize_t n;
    while ((n = evs_read(r, buf, sizeof buf)) > 0) {
        if (evs_write(w, buf, (size_t)n) < 0) break;
        if (evs_drain(w) < 0) break;
    }
}

void proto_made(evs_transport *, void *) {}
void proto_data(evs_transport *t, const void *d, size_t n, void *) { evs_transport_write(t, d, n); }
const evs_protocol echo_protocol = {
    .connection_made = proto_made,
    .data_received = proto_data,
};

struct Runtime {
    evs_runtime *rt = nullptr;
    explicit Runtime(int workers = 2, size_t max_conn = 0) {
        evs_runtime_options o{};
        o.workers = workers;
        o.max_connections = max_conn;
        EXPECT_EQ(0, evs_runtime_new(&o, &rt));
    }
    ~Runtime() {
        if (rt) evs_runtime_stop(rt, 5);
    }
};

void expect_echo(int fd, size_t n) {
    ASSERT_GE(fd, 0);
    std::string data = pattern(n, (uint32_t)n);
    std::thread writer([&] { EXPECT_TRUE(write_all(fd, data.data(), data.size())); });
    std::string back(n, '\0');
    EXPECT_TRUE(read_exact(fd, &back[0], n));
    writer.join();
    EXPECT_TRUE(back == data);
}

}  // namespace

// With one worker the worker accepts on the sockets itself; with more, the
// acceptor thread hands connections over: every test here runs both ways.
class ServerWorkers : public ::testing::TestWithParam<int> {};

INSTANTIATE_TEST_SUITE_P(Accept, ServerWorkers, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int> &i) {
                             return i.param == 1 ? std::string("OnTheOnlyWorker")
                                                 : std::string("ByTheAcceptor");
                         });

TEST_P(ServerWorkers, StreamModeTcpEcho) {
    Runtime r(GetParam());
    evs_server_options o{};
    o.client_connected = echo_handler;
    o.host = "127.0.0.1";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    ASSERT_NE(0, evs_server_port(s));
    int fd = connect_tcp(evs_server_port(s));
    expect_echo(fd, 1 << 20);
    close(fd);
}

TEST_P(ServerWorkers, ProtocolModeTcpEcho) {
    Runtime r(GetParam());
    evs_server_options o{};
    o.protocol = &echo_protocol;
    o.host = "127.0.0.1";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fd = connect_tcp(evs_server_port(s));
    expect_echo(fd, 1 << 20);
    close(fd);
}

TEST_P(ServerWorkers, UnixEchoBothModes) {
    Runtime r(GetParam());
    std::string dir = make_temp_dir();
    for (int mode = 0; mode < 2; mode++) {
        std::string path = dir + "/s" + std::to_string(mode);
        evs_server_options o{};
        if (mode) o.protocol = &echo_protocol; else o.client_connected = echo_handler;
        o.path = path.c_str();
        o.mode = 0600;
        evs_server *s;
        ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, &s));
        struct stat st;
        ASSERT_EQ(0, stat(path.c_str(), &st));
        EXPECT_EQ(0600u, st.st_mode & 0777);
        int fd = connect_unix(path);
        expect_echo(fd, 256 * 1024);
        close(fd);
    }
    remove_dir(dir);
}

namespace {

void greeter(evs_reader *r, evs_writer *w, void *) {
    char line[64];
    int n = snprintf(line, sizeof line, "limit=%zu high=%zu\n", evs_reader_limit(r), [&] {
        size_t high = 0;
        evs_transport_get_write_buffer_limits(evs_writer_transport(w), nullptr, &high);
        return high;
    }());
    evs_write(w, line, (size_t)n);
    char c;
    evs_read(r, &c, 1);  // until the client goes away
}

// Options of a greeter server on 127.0.0.1, the rest at their defaults.
evs_server_options greeter_options() {
    evs_server_options o{};
    o.client_connected = greeter;
    o.host = "127.0.0.1";
    return o;
}

// A greeter server on 127.0.0.1 with default options, or nullptr.
evs_server *start_greeter(evs_runtime *rt) {
    evs_server_options o = greeter_options();
    evs_server *s = nullptr;
    EXPECT_EQ(0, evs_start_server(rt, &o, &s));
    return s;
}

std::string read_line(int fd) {
    std::string s;
    char c;
    while (recv(fd, &c, 1, 0) == 1 && c != '\n') s += c;
    return s;
}

bool gets_no_byte_within(int fd, int ms) {
    struct timeval tv = {0, ms * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    bool none = recv(fd, &c, 1, 0) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    set_timeouts(fd);
    return none;
}

}  // namespace

TEST(Server, NeedsExactlyOneHandler) {
    Runtime r;
    evs_server_options o{};
    o.host = "127.0.0.1";
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));
    o.client_connected = echo_handler;
    o.protocol = &echo_protocol;
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));
}

// A NULL list, or a NULL in one, is bad input, not a crash.
TEST(Server, NullHostsAndTrustedNetworksAreRejected) {
    Runtime r;
    evs_server_options o{};
    o.client_connected = echo_handler;
    o.nhosts = 2;  // and no hosts
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));
    const char *hosts[] = {"127.0.0.1", nullptr};
    o.hosts = hosts;
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));
    o.hosts = nullptr;
    o.nhosts = 0;
    o.host = "127.0.0.1";
    const char *trusted[] = {"127.0.0.0/8", nullptr};
    o.proxy_protocol = true;
    o.proxy_trusted = trusted;
    o.nproxy_trusted = 2;
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));
    o.nproxy_trusted = 1;
    evs_server *s = nullptr;
    EXPECT_EQ(0, evs_start_server(r.rt, &o, &s));
}

TEST(Server, LimitAndWatermarkOptionsReachTheConnection) {
    Runtime r;
    evs_server_options o = greeter_options();
    o.limit = 1000;
    o.write_high_water = 4096;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fd = connect_tcp(evs_server_port(s));
    EXPECT_EQ("limit=1000 high=4096", read_line(fd));
    close(fd);
}

TEST(Server, SeveralHostsEachGetAListener) {
    Runtime r;
    const char *hosts[] = {"127.0.0.1", "127.0.0.2"};
    evs_server_options o{};
    o.client_connected = greeter;
    o.hosts = hosts;
    o.nhosts = 2;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fds[4];
    ASSERT_EQ(2u, evs_server_sockets(s, fds, 4));
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in sin;
        socklen_t len = sizeof sin;
        ASSERT_EQ(0, getsockname(fds[i], (struct sockaddr *)&sin, &len));
        int c = socket(AF_INET, SOCK_STREAM, 0);
        set_timeouts(c);
        ASSERT_EQ(0, connect(c, (struct sockaddr *)&sin, len));
        EXPECT_EQ(0u, read_line(c).rfind("limit=", 0));
        close(c);
    }
}

TEST(Server, AddressInUseUnlessReusePort) {
    Runtime r;
    evs_server_options o = greeter_options();
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    o.port = evs_server_port(s);
    EXPECT_EQ(-EADDRINUSE, evs_start_server(r.rt, &o, nullptr));

    evs_server_options p{};
    p.client_connected = greeter;
    p.host = "127.0.0.1";
    p.reuse_port = true;
    evs_server *a, *b;
    ASSERT_EQ(0, evs_start_server(r.rt, &p, &a));
    p.port = evs_server_port(a);
    EXPECT_EQ(0, evs_start_server(r.rt, &p, &b));
    EXPECT_EQ(evs_server_port(a), evs_server_port(b));
}

TEST(Server, UnknownHostIsAnError) {
    Runtime r;
    evs_server_options o{};
    o.client_connected = greeter;
    o.host = "256.256.256.256";
    EXPECT_LT(evs_start_server(r.rt, &o, nullptr), 0);
}

TEST_P(ServerWorkers, DeferServingAcceptsOnlyAfterStartServing) {
    Runtime r(GetParam());
    evs_server_options o = greeter_options();
    o.defer_serving = true;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    EXPECT_FALSE(evs_server_is_serving(s));
    int fd = connect_tcp(evs_server_port(s));  // completes in the backlog
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(gets_no_byte_within(fd, 200));
    EXPECT_EQ(0, evs_server_start_serving(s));
    EXPECT_EQ(0, evs_server_start_serving(s));  // idempotent
    EXPECT_EQ(0u, read_line(fd).rfind("limit=", 0));
    EXPECT_TRUE(evs_server_is_serving(s));
    close(fd);
}

// A one-shot server: its connection_made closes it. With one worker, the
// worker owns the socket and runs connection_made inside its accept loop,
// which went on to accept (and serve) the connections already queued.
std::atomic<int> one_shot_made{0};
evs_server *one_shot = nullptr;

void close_server_on_made(evs_transport *t, void *) {
    one_shot_made++;
    evs_server_close(one_shot);
    evs_transport_close(t);
}

TEST(Server, ClosingInConnectionMadeAcceptsNoneOfTheRestOfTheQueue) {
    Runtime r(1);
    static const evs_protocol proto = {.connection_made = close_server_on_made};
    evs_server_options o{};
    o.protocol = &proto;
    o.host = "127.0.0.1";
    o.defer_serving = true;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &one_shot));
    int fds[5];
    for (int &fd : fds) {
        fd = connect_tcp(evs_server_port(one_shot));  // each completes in the backlog
        ASSERT_GE(fd, 0);
    }
    ASSERT_EQ(0, evs_server_start_serving(one_shot));
    // Each ends: the first served and closed, the rest reset with the socket.
    for (int fd : fds) {
        EXPECT_EQ("", read_to_eof(fd));
        close(fd);
    }
    EXPECT_EQ(1, one_shot_made.load());
}

TEST(Server, AdoptsAnExistingListeningSocket) {
    Runtime r;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(lfd, (struct sockaddr *)&sin, sizeof sin));
    evs_server_options o{};
    o.client_connected = greeter;
    o.fds = &lfd;
    o.nfds = 1;
    EXPECT_EQ(-EINVAL, evs_start_server(r.rt, &o, nullptr));  // not listening yet
    ASSERT_EQ(0, listen(lfd, 16));
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fds[1];
    ASSERT_EQ(1u, evs_server_sockets(s, fds, 1));
    EXPECT_EQ(lfd, fds[0]);
    int fd = connect_tcp(evs_server_port(s));
    EXPECT_EQ(0u, read_line(fd).rfind("limit=", 0));
    close(fd);
}

TEST_P(ServerWorkers, CloseStopsListeningAndWaitClosedWaitsForConnections) {
    Runtime r(GetParam());
    evs_server *s = start_greeter(r.rt);
    ASSERT_NE(nullptr, s);
    uint16_t port = evs_server_port(s);
    int fd = connect_tcp(port);
    ASSERT_EQ(0u, read_line(fd).rfind("limit=", 0));
    evs_server_close(s);
    evs_server_close(s);  // idempotent
    EXPECT_FALSE(evs_server_is_serving(s));
    EXPECT_EQ(1u, evs_server_connections(s));
    int refused;
    for (int i = 0; i < 500 && (refused = connect_tcp(port)) >= 0; i++) {  // close is async
        close(refused);
        usleep(2000);
    }
    EXPECT_LT(refused, 0);
    std::thread closer([fd] {
        usleep(50 * 1000);
        close(fd);
    });
    EXPECT_EQ(0, evs_server_wait_closed(s));
    EXPECT_EQ(0u, evs_server_connections(s));
    closer.join();
}

// As with asyncio, the port is free once wait_closed returns: no retry.
// On a worker outside a task it would wait for its own loop: refused.
TEST(Server, WaitClosedLeavesThePortFreeAndRefusesToBlockAWorker) {
    for (int workers : {1, 2}) {
        SCOPED_TRACE(workers);
        Runtime r(workers);
        evs_server *s = start_greeter(r.rt);
        ASSERT_NE(nullptr, s);
        uint16_t port = evs_server_port(s);
        evs_server_close(s);
        int on_worker = 1;
        struct Arg {
            evs_server *s;
            int *rc;
        } arg{s, &on_worker};
        ASSERT_EQ(0, evs_worker_call(
                         evs_runtime_worker(r.rt, 0),
                         [](evs_worker *, void *a) {
                             Arg *x = static_cast<Arg *>(a);
                             *x->rc = evs_server_wait_closed(x->s);
                         },
                         &arg));
        EXPECT_EQ(-EDEADLK, on_worker);
        EXPECT_EQ(0, evs_server_wait_closed(s));
        int fd = connect_tcp(port);
        EXPECT_LT(fd, 0);
        if (fd >= 0) close(fd);
    }
}

// In a task, the task's timeout bounds the whole wait: it polls in short
// naps, and each nap ending was taken for "look again" for ever.
TEST(Server, WaitClosedInATaskEndsAtTheTasksTimeout) {
    Runtime r(1);
    evs_server *s = start_greeter(r.rt);
    ASSERT_NE(nullptr, s);
    int fd = connect_tcp(evs_server_port(s));
    ASSERT_EQ(0u, read_line(fd).rfind("limit=", 0));  // a live connection
    evs_server_close(s);
    struct Arg {
        evs_server *s;
        std::atomic<int> rc{1};
    } arg{s};
    ASSERT_EQ(0, evs_worker_call(
                     evs_runtime_worker(r.rt, 0),
                     [](evs_worker *, void *a) {
                         evs_task_spawn(
                             [](void *a2) {
                                 Arg *x = static_cast<Arg *>(a2);
                                 evs_task_set_timeout(evs_task_current(), 0.1);
                                 x->rc = evs_server_wait_closed(x->s);
                                 return 0;
                             },
                             a, nullptr);
                     },
                     &arg));
    for (int i = 0; i < 5000 && arg.rc == 1; i++) usleep(2000);  // watchdog: 10 s
    EXPECT_EQ(-ETIMEDOUT, arg.rc);
    close(fd);
    EXPECT_EQ(0, evs_server_wait_closed(s));
    for (int i = 0; i < 5000 && arg.rc == 1; i++) usleep(2000);  // the task is done with arg
}

// A timeout that is no number waits for nothing, as everywhere else in the
// API: it waited for ever, the comparison with 0 being false.
TEST(Server, RuntimeStopWithANaNTimeoutAbortsAtOnce) {
    Runtime r(1);
    evs_server *s = start_greeter(r.rt);
    ASSERT_NE(nullptr, s);
    int fd = connect_tcp(evs_server_port(s));
    ASSERT_EQ(0u, read_line(fd).rfind("limit=", 0));  // a handler that waits for the client
    evs_runtime *rt = r.rt;
    r.rt = nullptr;
    auto stop = std::async(std::launch::async, [rt] { return evs_runtime_stop(rt, NAN); });
    bool ended = stop.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    EXPECT_TRUE(ended) << "evs_runtime_stop(NAN) waited for the handler";
    close(fd);  // ends the handler either way
    EXPECT_EQ(-ETIMEDOUT, stop.get());
}

TEST(Server, UnixSocketFileIsRemovedOnClose) {
    Runtime r;
    std::string dir = make_temp_dir();
    std::string path = dir + "/s";
    evs_server_options o{};
    o.client_connected = greeter;
    o.path = path.c_str();
    evs_server *s;
    ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, &s));
    evs_server_close(s);
    EXPECT_EQ(0, evs_server_wait_closed(s));
    struct stat st;
    for (int i = 0; i < 500 && stat(path.c_str(), &st) == 0; i++) usleep(2000);
    EXPECT_NE(0, stat(path.c_str(), &st));
    remove_dir(dir);
}

TEST(Server, StaleUnixSocketIsReplacedLiveOneAndNonSocketRefused) {
    Runtime r;
    std::string dir = make_temp_dir();
    // A stale socket: bound, then its owner went away without unlinking.
    std::string stale = dir + "/stale";
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", stale.c_str());
    ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sun, sizeof sun));
    close(fd);
    evs_server_options o{};
    o.client_connected = greeter;
    o.path = stale.c_str();
    ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, nullptr));
    int c = connect_unix(stale);
    EXPECT_EQ(0u, read_line(c).rfind("limit=", 0));
    close(c);
    // Now it is live: a second server on the same path is refused.
    EXPECT_EQ(-EADDRINUSE, evs_start_unix_server(r.rt, &o, nullptr));
    // A regular file is never removed.
    std::string file = dir + "/file";
    FILE *f = fopen(file.c_str(), "w");
    fputs("keep me", f);
    fclose(f);
    o.path = file.c_str();
    EXPECT_EQ(-EEXIST, evs_start_unix_server(r.rt, &o, nullptr));
    struct stat st;
    EXPECT_EQ(0, stat(file.c_str(), &st));
    EXPECT_TRUE(S_ISREG(st.st_mode));
    remove_dir(dir);
}

TEST_P(ServerWorkers, AbstractUnixSocket) {
    Runtime r(GetParam());
    std::string name = "@evs-server-test-" + std::to_string(getpid());
    evs_server_options o{};
    o.client_connected = echo_handler;
    o.path = name.c_str();
    ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, nullptr));
    int fd = connect_unix(name);
    expect_echo(fd, 4096);
    close(fd);
}

TEST(Server, HandlerReturningClosesTheConnectionAfterFlushing) {
    Runtime r;
    evs_server_options o{};
    o.client_connected = [](evs_reader *, evs_writer *w, void *) {
        std::string big = pattern(4 << 20, 9);
        evs_write(w, big.data(), big.size());  // returns without draining
    };
    o.host = "127.0.0.1";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fd = connect_tcp(evs_server_port(s));
    std::string got = read_to_eof(fd);
    EXPECT_TRUE(got == pattern(4 << 20, 9));
    close(fd);
}

TEST(Server, IdleTimeoutClosesSilentConnectionsAndParkedReadsGetETIMEDOUT) {
    Runtime r;
    static std::atomic<int> read_rc;
    read_rc = 1;  // not set yet
    evs_server_options o{};
    o.client_connected = [](evs_reader *rd, evs_writer *w, void *) {
        char buf[64];
        ssize_t n;
        while ((n = evs_read(rd, buf, sizeof buf)) > 0) evs_write(w, buf, (size_t)n);
        read_rc = (int)n;
    };
    o.host = "127.0.0.1";
    o.idle_timeout = 0.2;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fd = connect_tcp(evs_server_port(s));
    // Traffic keeps it alive past several timeouts ...
    for (int i = 0; i < 8; i++) {
        char c = 'x';
        ASSERT_TRUE(write_all(fd, &c, 1));
        ASSERT_TRUE(read_exact(fd, &c, 1));
        usleep(60 * 1000);
    }
    // ... silence ends it.
    EXPECT_EQ("", read_to_eof(fd));
    close(fd);
    ASSERT_EQ(0, evs_server_wait_closed([&] { evs_server_close(s); return s; }()));
    // The handler runs after the connection is gone: give it a moment.
    for (int i = 0; i < 5000 && read_rc.load() == 1; i++) usleep(1000);
    EXPECT_EQ(-ETIMEDOUT, read_rc.load());
}

TEST_P(ServerWorkers, OwnMaxConnectionsPausesOnlyThatServer) {
    Runtime r(GetParam());
    evs_server_options o = greeter_options();
    o.max_connections = 1;
    evs_server *limited, *other;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &limited));
    o.max_connections = 0;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &other));
    int a = connect_tcp(evs_server_port(limited));
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));
    int b = connect_tcp(evs_server_port(limited));
    EXPECT_TRUE(gets_no_byte_within(b, 200));  // queued, not accepted
    int c = connect_tcp(evs_server_port(other));
    EXPECT_EQ(0u, read_line(c).rfind("limit=", 0));  // the other server goes on
    close(a);
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));  // accepted once a closed
    close(b);
    close(c);
}

// A server with no_runtime_limit takes no slot of the runtime's limit and
// goes on accepting while the other servers are paused at it.
TEST_P(ServerWorkers, NoRuntimeLimitServerIsOutsideTheRuntimeLimit) {
    Runtime r(GetParam(), 1);
    evs_server_options o = greeter_options();
    evs_server *counted, *outside;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &counted));
    o.no_runtime_limit = true;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &outside));
    int c1 = connect_tcp(evs_server_port(outside));
    EXPECT_EQ(0u, read_line(c1).rfind("limit=", 0));
    int a = connect_tcp(evs_server_port(counted));
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));  // c1 did not take the one slot
    int b = connect_tcp(evs_server_port(counted));
    EXPECT_TRUE(gets_no_byte_within(b, 200));  // the runtime is at its limit
    int c2 = connect_tcp(evs_server_port(outside));
    EXPECT_EQ(0u, read_line(c2).rfind("limit=", 0));  // ... and this server goes on
    close(c1);
    close(c2);
    EXPECT_TRUE(gets_no_byte_within(b, 200));  // their closes freed no slot
    close(a);
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));  // accepted once a closed
    close(b);
}

TEST_P(ServerWorkers, TakeSocketsHandsQueuedConnectionsToASuccessor) {
    Runtime r(GetParam());
    std::string dir = make_temp_dir();
    std::string path = dir + "/s";
    evs_server_options o{};
    o.client_connected = [](evs_reader *, evs_writer *w, void *) { evs_write(w, "old\n", 4); };
    o.host = "127.0.0.1";
    evs_server *old_tcp;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &old_tcp));
    o.host = nullptr;
    o.path = path.c_str();
    evs_server *old_unix;
    ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, &old_unix));
    uint16_t port = evs_server_port(old_tcp);

    int fds[4];
    ASSERT_EQ(1u, evs_server_take_sockets(old_tcp, fds, 4));
    int ufds[4];
    ASSERT_EQ(1u, evs_server_take_sockets(old_unix, ufds, 4));
    EXPECT_FALSE(evs_server_is_serving(old_tcp));
    // Connections made now wait in the kernel's queue of the same socket.
    int queued = connect_tcp(port);
    int queued_unix = connect_unix(path);
    ASSERT_GE(queued, 0);
    ASSERT_GE(queued_unix, 0);

    evs_server_options n{};
    n.client_connected = [](evs_reader *, evs_writer *w, void *) { evs_write(w, "new\n", 4); };
    n.fds = fds;
    n.nfds = 1;
    ASSERT_EQ(0, evs_start_server(r.rt, &n, nullptr));
    n.fds = ufds;
    n.path = path.c_str();
    evs_server *new_unix;
    ASSERT_EQ(0, evs_start_unix_server(r.rt, &n, &new_unix));
    EXPECT_EQ("new", read_line(queued));
    EXPECT_EQ("new", read_line(queued_unix));
    close(queued);
    close(queued_unix);
    struct stat st;
    EXPECT_EQ(0, stat(path.c_str(), &st));  // the old server left the file
    evs_server_close(new_unix);
    evs_server_wait_closed(new_unix);
    for (int i = 0; i < 500 && stat(path.c_str(), &st) == 0; i++) usleep(2000);
    EXPECT_NE(0, stat(path.c_str(), &st));  // the successor removes it
    remove_dir(dir);
}

TEST(Server, StatsAndConnectionClosedCallbackReportEachConnection) {
    Runtime r(1);
    struct Log {
        std::mutex m;
        std::vector<evs_connection_info> infos;
        std::vector<std::string> peers;
    };
    static Log log;
    log.infos.clear();
    log.peers.clear();
    evs_server_options o{};
    o.client_connected = echo_handler;
    o.host = "127.0.0.1";
    o.connection_closed = [](const evs_connection_info *info, void *) {
        char peer[128];
        std::lock_guard<std::mutex> g(log.m);
        log.infos.push_back(*info);
        log.peers.push_back(info->peer ? evs_format_address(info->peer, info->peerlen, peer, sizeof peer)
                                       : "");
    };
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    for (int i = 0; i < 3; i++) {
        int fd = connect_tcp(evs_server_port(s));
        expect_echo(fd, 1000 * (i + 1));
        close(fd);
    }
    evs_server_stats st;
    for (int i = 0; i < 2000; i++) {
        evs_server_stats_get(s, &st);
        if (st.closed == 3) break;
        usleep(1000);
    }
    EXPECT_EQ(3u, st.accepted);
    EXPECT_EQ(3u, st.closed);
    EXPECT_EQ(0u, st.active);
    EXPECT_EQ(6000u, st.bytes_in);
    EXPECT_EQ(6000u, st.bytes_out);
    EXPECT_EQ(0u, st.tls_handshakes);
    std::lock_guard<std::mutex> g(log.m);
    ASSERT_EQ(3u, log.infos.size());
    uint64_t total = 0;
    for (size_t i = 0; i < 3; i++) {
        total += log.infos[i].bytes_in;
        EXPECT_EQ(log.infos[i].bytes_in, log.infos[i].bytes_out);
        EXPECT_EQ(0, log.infos[i].error);
        EXPECT_EQ(nullptr, log.infos[i].tls_version);
        EXPECT_GE(log.infos[i].duration, 0.0);
        EXPECT_EQ(0u, log.peers[i].rfind("127.0.0.1:", 0));
        EXPECT_EQ(0, log.infos[i].worker);
    }
    EXPECT_EQ(6000u, total);
}

namespace {
int connect_from(const char *local_ip, uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    set_timeouts(fd);
    struct sockaddr_in l{};
    l.sin_family = AF_INET;
    inet_pton(AF_INET, local_ip, &l.sin_addr);
    bind(fd, (struct sockaddr *)&l, sizeof l);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}
}  // namespace

// Turn @o into the options of @old's successor, as a reload does: @old's
// one socket (taken into @fd) and @old as the predecessor.
static void become_successor(evs_server_options *o, evs_server *old, int *fd) {
    ASSERT_EQ(1u, evs_server_take_sockets(old, fd, 1));
    o->host = nullptr;
    o->fds = fd;
    o->nfds = 1;
    o->predecessor = old;
}

// A reload's successor (opts.predecessor) counts the connections still open
// on the server it replaces: its max_connections waits for one of those to
// close, and its per-address limit sees their addresses.
TEST_P(ServerWorkers, ASuccessorCountsItsPredecessorsConnections) {
    Runtime r(GetParam());
    evs_server_options o = greeter_options();
    o.max_connections = 2;
    o.max_connections_per_ip = 1;
    o.reject_message = "busy\n";
    evs_server *old_server;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &old_server));
    uint16_t port = evs_server_port(old_server);
    int a = connect_from("127.0.0.1", port), b = connect_from("127.0.0.2", port);
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));

    int fd;
    ASSERT_NO_FATAL_FAILURE(become_successor(&o, old_server, &fd));
    ASSERT_EQ(0, evs_start_server(r.rt, &o, nullptr));
    evs_server_close(old_server);

    int c = connect_from("127.0.0.3", port);
    EXPECT_TRUE(gets_no_byte_within(c, 200));  // a and b fill the successor's two places
    close(b);  // a close on the old server wakes the new one
    EXPECT_EQ(0u, read_line(c).rfind("limit=", 0));
    close(c);
    int d = connect_from("127.0.0.1", port);
    EXPECT_EQ("busy\n", read_to_eof(d));  // a, still open on the old server, is 127.0.0.1's one
    close(d);
    close(a);
}

// The rate of the newest generation fills the buckets the generations
// share: a close on the old server, which had no rate, does not forget a
// bucket the new rate has emptied.
TEST(Server, AnOldGenerationsCloseDoesNotRefillTheNewRatesBucket) {
    Runtime r(1);
    evs_server_options o = greeter_options();
    o.max_connections_per_ip = 5;  // the old server counts addresses, with no rate
    o.reject_message = "slow down\n";
    evs_server *old_server;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &old_server));
    uint16_t port = evs_server_port(old_server);
    int a = connect_from("127.0.0.1", port);
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));

    int fd;
    ASSERT_NO_FATAL_FAILURE(become_successor(&o, old_server, &fd));
    o.connection_rate_per_ip = 0.001;  // one token, and no new one within the test
    o.connection_burst_per_ip = 1;
    evs_server *successor;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &successor));
    int b = connect_from("127.0.0.1", port);
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));  // the one token
    close(b);
    close(a);  // 127.0.0.1's last connection ends on the old server
    auto live = [&] { return evs_server_connections(old_server) + evs_server_connections(successor); };
    for (int i = 0; i < 2500 && live() > 0; i++) usleep(2000);
    ASSERT_EQ(0u, live());
    int c = connect_from("127.0.0.1", port);
    EXPECT_EQ("slow down\n", read_to_eof(c));  // the bucket is still empty
    close(c);
}

// A pause at the predecessor's limit does not hold back a successor with
// room: a reload may raise max_connections.
TEST_P(ServerWorkers, ASuccessorWithMoreRoomServesWhatItsPredecessorPausedOn) {
    Runtime r(GetParam());
    evs_server_options o = greeter_options();
    o.max_connections = 1;
    evs_server *old_server;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &old_server));
    uint16_t port = evs_server_port(old_server);
    int a = connect_tcp(port);
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));
    int b = connect_tcp(port);
    EXPECT_TRUE(gets_no_byte_within(b, 200));  // the old server paused at its one

    int fd;
    ASSERT_NO_FATAL_FAILURE(become_successor(&o, old_server, &fd));
    o.max_connections = 2;
    o.defer_serving = GetParam() == 1;  // both ways of starting to serve
    evs_server *successor;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &successor));
    if (o.defer_serving) {
        ASSERT_EQ(0, evs_server_start_serving(successor));
    }
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));  // a holds one of two places
    close(a);
    close(b);
}

// A predecessor of another runtime is refused: the counts would be
// woken on the wrong acceptor.
TEST(Server, APredecessorMustBeOfTheSameRuntime) {
    Runtime r1(1), r2(1);
    evs_server *other = start_greeter(r2.rt);
    ASSERT_NE(nullptr, other);
    evs_server_options o = greeter_options();
    o.predecessor = other;
    evs_server *s = nullptr;
    EXPECT_EQ(-EINVAL, evs_start_server(r1.rt, &o, &s));
    EXPECT_EQ(nullptr, s);
}

TEST_P(ServerWorkers, MaxConnectionsPerAddressRefusesTheExtraOnesWithTheMessage) {
    Runtime r(GetParam());
    evs_server_options o = greeter_options();
    o.max_connections_per_ip = 2;
    o.reject_message = "busy\n";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    uint16_t port = evs_server_port(s);
    int a = connect_from("127.0.0.1", port), b = connect_from("127.0.0.1", port);
    EXPECT_EQ(0u, read_line(a).rfind("limit=", 0));
    EXPECT_EQ(0u, read_line(b).rfind("limit=", 0));
    int c = connect_from("127.0.0.1", port);
    EXPECT_EQ("busy\n", read_to_eof(c));  // refused at once, with the line
    close(c);
    int d = connect_from("127.0.0.2", port);  // another address is fine
    EXPECT_EQ(0u, read_line(d).rfind("limit=", 0));
    close(a);  // a slot frees up
    int e = -1;
    std::string line;
    for (int i = 0; i < 200; i++) {
        e = connect_from("127.0.0.1", port);
        line = read_line(e);
        if (line.rfind("limit=", 0) == 0) break;
        close(e);
        e = -1;
        usleep(5000);
    }
    EXPECT_GE(e, 0) << "the freed slot was never given out";
    evs_server_stats st;
    evs_server_stats_get(s, &st);
    EXPECT_GE(st.rejected_per_ip, 1u);
    EXPECT_EQ(0u, st.rejected_rate);
    close(b);
    close(d);
    if (e >= 0) close(e);
}

TEST(Server, ConnectionRatePerAddressIsATokenBucket) {
    Runtime r;
    evs_server_options o = greeter_options();
    o.connection_rate_per_ip = 0.01;  // one every 100 seconds ...
    o.connection_burst_per_ip = 3;   // ... after a burst of three
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    uint16_t port = evs_server_port(s);
    for (int i = 0; i < 3; i++) {
        int fd = connect_from("127.0.0.3", port);
        EXPECT_EQ(0u, read_line(fd).rfind("limit=", 0)) << i;
        close(fd);
    }
    int over = connect_from("127.0.0.3", port);
    EXPECT_EQ("", read_to_eof(over));  // the bucket is empty: closed at once
    close(over);
    int other = connect_from("127.0.0.4", port);  // each address has its own bucket
    EXPECT_EQ(0u, read_line(other).rfind("limit=", 0));
    close(other);
    evs_server_stats st;
    evs_server_stats_get(s, &st);
    EXPECT_EQ(1u, st.rejected_rate);
}

// --- reuse_port: every worker accepts on its own socket ----------------------

namespace {

// Says which worker runs it, then echoes.
void worker_teller(evs_reader *r, evs_writer *w, void *) {
    char line[32];
    int n = snprintf(line, sizeof line, "worker=%d\n", evs_worker_id(evs_worker_current()));
    evs_write(w, line, (size_t)n);
    echo_handler(r, w, nullptr);
}

}  // namespace

TEST(ServerReusePort, EachWorkerAcceptsOnItsOwnSocket) {
    Runtime r(2);
    evs_server_options o{};
    o.client_connected = worker_teller;
    o.host = "127.0.0.1";
    o.reuse_port = true;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fds[4];
    EXPECT_EQ(2u, evs_server_sockets(s, fds, 4));  // one per worker, one port
    std::set<std::string> seen;
    std::vector<int> conns;
    for (int i = 0; i < 64; i++) {
        int fd = connect_tcp(evs_server_port(s));
        ASSERT_GE(fd, 0);
        seen.insert(read_line(fd));
        conns.push_back(fd);
    }
    // The kernel spreads by address hash: 64 connections on one worker
    // would have a chance of 2^-63.
    EXPECT_EQ((std::set<std::string>{"worker=0", "worker=1"}), seen);
    for (int fd : conns) expect_echo(fd, 1000);
    for (int fd : conns) close(fd);
    evs_server_stats st;
    evs_server_stats_get(s, &st);
    EXPECT_EQ(64u, st.accepted);
}

TEST(ServerReusePort, MaxConnectionsPausesEveryWorkersSocket) {
    Runtime r(2, 1);
    evs_server_options o{};
    o.client_connected = worker_teller;
    o.host = "127.0.0.1";
    o.reuse_port = true;
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int a = connect_tcp(evs_server_port(s));
    EXPECT_EQ(0u, read_line(a).rfind("worker=", 0));
    // Whichever socket the kernel picks, nobody accepts while at the limit.
    std::vector<int> waiting;
    for (int i = 0; i < 8; i++) {
        int fd = connect_tcp(evs_server_port(s));
        ASSERT_GE(fd, 0);
        waiting.push_back(fd);
    }
    for (int fd : waiting) EXPECT_TRUE(gets_no_byte_within(fd, 50));
    close(a);
    // One at a time, each once the one before has gone; in no set order,
    // as each socket has its own queue.
    while (!waiting.empty()) {
        std::vector<pollfd> pfds;
        for (int fd : waiting) pfds.push_back({fd, POLLIN, 0});
        ASSERT_GT(poll(pfds.data(), pfds.size(), 10000), 0) << waiting.size() << " never served";
        int ready = 0;
        for (size_t i = 0; i < pfds.size(); i++) {
            if (!(pfds[i].revents & POLLIN)) continue;
            ready++;
            EXPECT_EQ(0u, read_line(pfds[i].fd).rfind("worker=", 0));
            close(pfds[i].fd);
            waiting.erase(waiting.begin() + (long)i);
            break;
        }
        ASSERT_EQ(1, ready);
    }
}

TEST(ServerReusePort, TakeSocketsHandsEveryWorkersSocketToASuccessor) {
    Runtime r(2);
    evs_server_options o{};
    o.client_connected = [](evs_reader *, evs_writer *w, void *) { evs_write(w, "old\n", 4); };
    o.host = "127.0.0.1";
    o.reuse_port = true;
    evs_server *old_server;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &old_server));
    uint16_t port = evs_server_port(old_server);
    int fds[4];
    ASSERT_EQ(2u, evs_server_take_sockets(old_server, fds, 4));
    std::vector<int> queued;
    for (int i = 0; i < 16; i++) queued.push_back(connect_tcp(port));

    evs_server_options n{};
    n.client_connected = worker_teller;
    n.fds = fds;
    n.nfds = 2;
    n.reuse_port = true;
    evs_server *new_server;
    ASSERT_EQ(0, evs_start_server(r.rt, &n, &new_server));
    for (int fd : queued) {
        ASSERT_GE(fd, 0);
        EXPECT_EQ(0u, read_line(fd).rfind("worker=", 0));  // the successor's handler
        close(fd);
    }
    evs_server_close(new_server);
    EXPECT_EQ(0, evs_server_wait_closed(new_server));
    // Closed: the port is free again.
    int fd = connect_tcp(port);
    EXPECT_LT(fd, 0);
}

// Every address leaves an entry while it has connections or an unfilled
// bucket; once neither holds, the sweep (a bucket of the table at each
// admit and release) drops it, also for addresses that were only refused.
TEST(ServerIpLimit, ForgottenAddressesAreSweptAway) {
    // 1000 a second, bucket of 1: an address used once refills in 1 ms.
    evs_server *s = probe_iplimit_server(1000, 1, 0);
    ASSERT_NE(nullptr, s);
    const uint64_t one = 0xFFFFFFFF00000000ULL;
    for (uint64_t a = 1; a <= 200; a++) {
        ASSERT_EQ(0, probe_iplimit_admit(s, one | a));
        // Usually refused (the bucket of 1 is empty), unless 1 ms passed.
        if (probe_iplimit_admit(s, one | a) == 0) probe_iplimit_release(s, one | a);
        probe_iplimit_release(s, one | a);
    }
    EXPECT_GE(probe_iplimit_entries(s), 1u);
    usleep(20 * 1000);  // at least 1 ms: every bucket has refilled by then
    // One address coming and going sweeps the whole table (4096 buckets)
    // at one bucket per admit and per release; it refills between its own
    // connections, or is refused, which sweeps as well.
    const uint64_t busy = one | 0xABCDEF;
    for (int i = 0; i < 4096; i++) {
        if (probe_iplimit_admit(s, busy) == 0) probe_iplimit_release(s, busy);
    }
    EXPECT_LE(probe_iplimit_entries(s), 1u) << "only the busy address may be left";
    probe_iplimit_server_free(s);
}

namespace {

std::atomic<int> g_live{0}, g_max{0}; // handlers running at once, and the most seen

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

// max_connections = 1 with reuse_port and 2 workers: each worker accepts
// on its own socket at the same time, so the limit check and the count
// must be one step (a reservation), or both pass a limit with room for one.
TEST(ServerReusePort, MaxConnectionsIsNeverExceeded) {
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
    for (int round = 0; round < 20 && g_max.load() <= 1 && max_conns <= 1; round++) {
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
    }
    EXPECT_EQ(1, g_max.load()) << "handlers running at once with max_connections=1 (0: none served)";
    EXPECT_LE(max_conns, 1u) << "server connections with max_connections=1";
    evs_runtime_stop(rt, 5);
}

namespace {
sockaddr_storage peer_of(int family, const char *text) {
    sockaddr_storage ss{};
    ss.ss_family = (sa_family_t)family;
    void *where = family == AF_INET ? (void *)&((sockaddr_in *)&ss)->sin_addr
                                    : (void *)&((sockaddr_in6 *)&ss)->sin6_addr;
    EXPECT_EQ(1, inet_pton(family, text, where)) << text;
    return ss;
}
uint64_t key_of(int family, const char *text) {
    sockaddr_storage ss = peer_of(family, text);
    uint64_t key = 0;
    EXPECT_EQ(0, probe_ip_key(&ss, &key)) << text;
    return key;
}
}  // namespace

// Per-address limits count an IPv4 address, or an IPv6 /64, as one peer:
// an IPv4-mapped address is its IPv4 address, and no IPv6 prefix shares a
// key with an IPv4 address (whatever the bytes of the prefix).
TEST(ServerIpLimit, KeysKeepIPv4AndIPv6Apart) {
    EXPECT_EQ(key_of(AF_INET, "1.2.3.4"), key_of(AF_INET6, "::ffff:1.2.3.4"));
    EXPECT_NE(key_of(AF_INET, "1.2.3.4"), key_of(AF_INET, "1.2.3.5"));
    EXPECT_EQ(key_of(AF_INET6, "2001:db8:1:2::1"), key_of(AF_INET6, "2001:db8:1:2:ffff::9"));
    EXPECT_NE(key_of(AF_INET6, "2001:db8:1:2::1"), key_of(AF_INET6, "2001:db8:1:3::1"));
    // Every IPv6 /64 whose bytes 0-3 or 4-7 are all ones, against the IPv4
    // address that the other half spells.
    const char *v6[] = {"ffff:ffff:102:304::1", "102:304:ffff:ffff::1", "2001:db8:ffff:ffff::1"};
    const char *v4[] = {"1.2.3.4", "32.1.13.184", "255.255.255.255"};
    for (const char *a : v6)
        for (const char *b : v4)
            EXPECT_NE(key_of(AF_INET6, a), key_of(AF_INET, b)) << a << " vs " << b;
    sockaddr_storage un{};
    un.ss_family = AF_UNIX;
    uint64_t key;
    EXPECT_EQ(-1, probe_ip_key(&un, &key));
}
