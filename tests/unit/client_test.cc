// Clients: open_connection (names, numeric addresses, each address in
// turn, timeouts, local address) and open_unix_connection.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "helpers.h"

using namespace evs_test;

namespace {

// A blocking listener on 127.0.0.1:0 (or a Unix path) answering one
// connection: it sends the peer's address as text and closes.
struct OneShotServer {
    int lfd = -1;
    uint16_t port = 0;
    std::thread th;
    std::string peer;

    explicit OneShotServer(const char *ip = "127.0.0.1") {
        lfd = socket(strchr(ip, ':') ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_storage ss{};
        socklen_t len;
        if (strchr(ip, ':')) {
            auto *s6 = (struct sockaddr_in6 *)&ss;
            s6->sin6_family = AF_INET6;
            inet_pton(AF_INET6, ip, &s6->sin6_addr);
            len = sizeof *s6;
        } else {
            auto *s4 = (struct sockaddr_in *)&ss;
            s4->sin_family = AF_INET;
            inet_pton(AF_INET, ip, &s4->sin_addr);
            len = sizeof *s4;
        }
        if (bind(lfd, (struct sockaddr *)&ss, len) < 0 || listen(lfd, 8) < 0) {
            close(lfd);
            lfd = -1;
            return;
        }
        len = sizeof ss;
        getsockname(lfd, (struct sockaddr *)&ss, &len);
        port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                             : ((struct sockaddr_in6 *)&ss)->sin6_port);
        th = std::thread([this] {
            struct sockaddr_storage p;
            socklen_t pl = sizeof p;
            int fd = accept(lfd, (struct sockaddr *)&p, &pl);
            if (fd < 0) return;
            char buf[128];
            evs_format_address((struct sockaddr *)&p, pl, buf, sizeof buf);
            peer = buf;
            std::string line = peer + "\n";
            write_all(fd, line.data(), line.size());
            close(fd);
        });
    }
    ~OneShotServer() {
        if (lfd >= 0) shutdown(lfd, SHUT_RDWR);
        if (th.joinable()) th.join();
        if (lfd >= 0) close(lfd);
    }
};

struct ConnectCase {
    const char *host;
    uint16_t port;
    const char *local;
    std::string line;
    int rc;
};

int connect_and_read_line(void *arg) {
    auto *c = (ConnectCase *)arg;
    evs_connect_options o{};
    o.local_host = c->local;
    evs_reader *r;
    evs_writer *w;
    c->rc = evs_open_connection(c->host, c->port, &o, &r, &w);
    if (c->rc != 0) return c->rc;
    const void *line;
    ssize_t n = evs_readline(r, &line);
    if (n > 0) c->line.assign((const char *)line, (size_t)n - 1);
    evs_writer_free(w);
    return n > 0 ? 0 : (int)n;
}

}  // namespace

TEST(Client, ConnectsToANumericAddress) {
    OneShotServer srv;
    ASSERT_GE(srv.lfd, 0);
    ConnectCase c{"127.0.0.1", srv.port, nullptr, "", -1};
    EXPECT_EQ(0, run_task(connect_and_read_line, &c));
    EXPECT_EQ(0, c.line.rfind("127.0.0.1:", 0));
}

TEST(Client, ResolvesLocalhost) {
    OneShotServer srv;
    ConnectCase c{"localhost", srv.port, nullptr, "", -1};
    EXPECT_EQ(0, run_task(connect_and_read_line, &c));
}

TEST(Client, ConnectsOverIPv6) {
    OneShotServer srv("::1");
    if (srv.lfd < 0) GTEST_SKIP() << "no ::1 on this machine";
    ConnectCase c{"::1", srv.port, nullptr, "", -1};
    EXPECT_EQ(0, run_task(connect_and_read_line, &c));
    EXPECT_EQ(0, c.line.rfind("[::1]:", 0));
}

TEST(Client, BindsTheLocalAddressFirst) {
    OneShotServer srv;
    ConnectCase c{"127.0.0.1", srv.port, "127.0.0.2", "", -1};
    EXPECT_EQ(0, run_task(connect_and_read_line, &c));
    EXPECT_EQ(0, c.line.rfind("127.0.0.2:", 0)) << c.line;
}

TEST(Client, RefusedPortReportsECONNREFUSED) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sin, sizeof sin));
    socklen_t len = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &len);
    ConnectCase c{"127.0.0.1", ntohs(sin.sin_port), nullptr, "", -1};
    EXPECT_EQ(-ECONNREFUSED, run_task(connect_and_read_line, &c));
    close(fd);
}

TEST(Client, TriesEachAddressInTurn) {
    // "localhost" may resolve to ::1 first; only 127.0.0.1 listens.
    OneShotServer srv("127.0.0.1");
    ConnectCase c{"localhost", srv.port, nullptr, "", -1};
    EXPECT_EQ(0, run_task(connect_and_read_line, &c));
    EXPECT_EQ(0, c.line.rfind("127.0.0.1:", 0));
}

TEST(Client, ConnectTimeoutGivesETIMEDOUT) {
    // A listener whose accept queue is full drops further SYNs, so the
    // connect neither succeeds nor fails until the timeout.
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(lfd, (struct sockaddr *)&sin, sizeof sin));
    ASSERT_EQ(0, listen(lfd, 0));
    socklen_t len = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    std::vector<int> fillers;
    for (int i = 0; i < 4; i++) {  // fill the queue (non-blocking connects)
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fd, (struct sockaddr *)&sin, sizeof sin);
        fillers.push_back(fd);
    }
    usleep(100 * 1000);
    static uint16_t port;
    port = ntohs(sin.sin_port);
    int rc = run_task(
        [](void *) -> int {
            evs_connect_options o{};
            o.timeout = 0.3;
            evs_reader *r;
            evs_writer *w;
            int err = evs_open_connection("127.0.0.1", port, &o, &r, &w);
            if (err == 0) evs_writer_free(w);
            return err;
        },
        nullptr);
    EXPECT_EQ(-ETIMEDOUT, rc);
    for (int fd : fillers) close(fd);
    close(lfd);
}

TEST(Client, OutsideATaskIsEINVAL) {
    evs_reader *r;
    evs_writer *w;
    EXPECT_EQ(-EINVAL, evs_open_connection("127.0.0.1", 1, nullptr, &r, &w));
    EXPECT_EQ(-EINVAL, evs_open_unix_connection("/nonexistent", nullptr, &r, &w));
}

TEST(Client, UnixConnectionToAPathAndAnAbstractName) {
    evs_runtime *rt;
    evs_runtime_options ro{};
    ro.workers = 1;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    std::string dir = make_temp_dir();
    static std::string paths[2];
    paths[0] = dir + "/sock";
    paths[1] = "@evs-test-" + std::to_string(getpid());
    for (auto &p : paths) {
        evs_server_options o{};
        o.client_connected = [](evs_reader *, evs_writer *w, void *) { evs_write(w, "hello\n", 6); };
        o.path = p.c_str();
        ASSERT_EQ(0, evs_start_unix_server(rt, &o, nullptr));
    }
    EXPECT_EQ(0, run_task(
                     [](void *) -> int {
                         for (auto &p : paths) {
                             evs_reader *r;
                             evs_writer *w;
                             int err = evs_open_unix_connection(p.c_str(), nullptr, &r, &w);
                             if (err) return err;
                             const void *line;
                             ssize_t n = evs_readline(r, &line);
                             evs_writer_free(w);
                             if (n != 6 || memcmp(line, "hello\n", 6) != 0) return 1;
                         }
                         return 0;
                     },
                     nullptr));
    EXPECT_EQ(0, evs_runtime_stop(rt, 5));
    remove_dir(dir);
}

TEST(Client, MissingUnixSocketIsENOENT) {
    EXPECT_EQ(-ENOENT, run_task(
                           [](void *) -> int {
                               evs_reader *r;
                               evs_writer *w;
                               return evs_open_unix_connection("/nonexistent/evs.sock", nullptr,
                                                               &r, &w);
                           },
                           nullptr));
}

TEST(Client, CancelDuringConnectReturnsECANCELED) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(lfd, (struct sockaddr *)&sin, sizeof sin));
    ASSERT_EQ(0, listen(lfd, 0));
    socklen_t len = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    std::vector<int> fillers;
    for (int i = 0; i < 4; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fd, (struct sockaddr *)&sin, sizeof sin);
        fillers.push_back(fd);
    }
    usleep(100 * 1000);
    static uint16_t port;
    port = ntohs(sin.sin_port);
    EXPECT_EQ(-ECANCELED, run_task(
                              [](void *) -> int {
                                  evs_task *t;
                                  evs_task_spawn(
                                      [](void *) -> int {
                                          evs_reader *r;
                                          evs_writer *w;
                                          return evs_open_connection("127.0.0.1", port, nullptr,
                                                                     &r, &w);
                                      },
                                      nullptr, &t);
                                  evs_sleep(0.05);
                                  evs_task_cancel(t);
                                  int result = 0;
                                  evs_task_join(t, &result);
                                  return result;
                              },
                              nullptr));
    for (int fd : fillers) close(fd);
    close(lfd);
}

// A Unix listener (backlog 0) in a temporary directory, its backlog filled
// by fill(): the next connect fails with EAGAIN. All of it goes with it.
struct FullUnixListener {
    std::string dir = make_temp_dir();
    std::string path = dir + "/full.sock";
    int lfd = -1;
    std::vector<int> fillers;

    void fill() {
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
        ASSERT_EQ(0, bind(lfd, (struct sockaddr *)&sun, sizeof sun));
        ASSERT_EQ(0, listen(lfd, 0));
        for (int i = 0; i < 16; i++) {
            int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0 && errno == EAGAIN) {
                close(fd);
                break;
            }
            fillers.push_back(fd);
        }
    }
    ~FullUnixListener() {
        for (int fd : fillers) close(fd);
        if (lfd >= 0) close(lfd);
        remove_dir(dir);
    }
};

// A non-blocking connect() to a Unix listener whose backlog is full fails
// with EAGAIN: no connection is in progress (unlike TCP's EINPROGRESS), and
// the unconnected socket is writable at once. evs_open_unix_connection must
// not return such a socket as a connection.
TEST(Client, UnixListenerWithAFullBacklogIsNotAConnection) {
    FullUnixListener full;
    ASSERT_NO_FATAL_FAILURE(full.fill());
    static std::string path;
    path = full.path;
    static int write_rc, peer_rc;
    int rc = run_task(
        [](void *) -> int {
            evs_reader *r;
            evs_writer *w;
            evs_connect_options o{};
            o.timeout = 0.3;
            int err = evs_open_unix_connection(path.c_str(), &o, &r, &w);
            if (err) return err;
            struct sockaddr_storage ss;
            socklen_t len;
            peer_rc = evs_transport_get_peername(evs_writer_transport(w), &ss, &len);
            write_rc = evs_write(w, "x", 1);
            evs_writer_free(w);
            return 0;
        },
        nullptr);
    EXPECT_EQ(-ETIMEDOUT, rc) << "returned a pair on a socket that is not connected: peername -> "
                     << peer_rc << ", write -> " << write_rc;
}

// The task's own timeout bounds the whole call, as it bounds every parked
// call: the retries on a full backlog napped 10 ms at a time, each nap
// under the task's bound, and ran to the connect timeout (60 s here).
TEST(Client, TheTasksTimeoutBoundsAConnectThatRetries) {
    FullUnixListener full;
    ASSERT_NO_FATAL_FAILURE(full.fill());
    static std::string path;
    path = full.path;
    static double took;
    int rc = run_task(
        [](void *) -> int {
            evs_reader *r;
            evs_writer *w;
            evs_connect_options o{};
            o.timeout = 60;
            evs_task_set_timeout(evs_task_current(), 0.2);
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            int err = evs_open_unix_connection(path.c_str(), &o, &r, &w);
            clock_gettime(CLOCK_MONOTONIC, &b);
            took = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
            if (err == 0) evs_writer_free(w);
            return err;
        },
        nullptr);
    EXPECT_EQ(-ETIMEDOUT, rc);
    EXPECT_LT(took, 30.0) << "the connect ran to its own 60 s timeout";
}
