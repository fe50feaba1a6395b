// Examples: run the real example programs (examples/*) as child processes
// and check what they do from the outside: the echo servers echo (for
// echo_client and for a plain socket) and exit 0 on SIGTERM/SIGINT, the
// socketpair example prints what it received, and http_head prints the
// header lines of a tiny in-test HTTP server.
//
// The binaries are found under $EVS_TEST_BUILDDIR (default "."), which
// `make check` sets. Children are ended by PID only, with bounded waits.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"

using namespace evs_test;

namespace {

std::string program(const std::string &name) {
    const char *dir = getenv("EVS_TEST_BUILDDIR");
    return std::string(dir && *dir ? dir : ".") + "/examples/" + name + "/" + name;
}

double now() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Wait for pid for up to `seconds`; on timeout SIGKILL it and reap it.
// Returns the wait status, or -1 when it had to be killed.
int wait_bounded(pid_t pid, double seconds) {
    double deadline = now() + seconds;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return -1;
        if (now() >= deadline) break;
        usleep(10 * 1000);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return -1;
}

bool exited_with(int status, int code) {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
}

std::string describe(int status) {
    if (status == -1) return "killed after a timeout";
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
    return "status " + std::to_string(status);
}

// A child with stdout and stderr on pipes. The destructor kills and reaps
// it if the test did not end it (e.g. after a failed ASSERT).
struct Child {
    pid_t pid = -1;
    int out = -1, err = -1;
    std::string out_buf, err_buf;

    Child() = default;
    Child(const Child &) = delete;
    Child &operator=(const Child &) = delete;

    bool start(const std::vector<std::string> &args) {
        std::vector<char *> argv;
        for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
        argv.push_back(nullptr);
        int po[2], pe[2];
        if (pipe2(po, O_CLOEXEC) < 0) return false;
        if (pipe2(pe, O_CLOEXEC) < 0) {
            close(po[0]);
            close(po[1]);
            return false;
        }
        pid = fork();
        if (pid == 0) {
            // Only async-signal-safe calls between fork and exec. Undo what
            // the test process set up: the examples must work from a clean
            // state (default SIGPIPE, nothing blocked).
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, nullptr);
            signal(SIGPIPE, SIG_DFL);
            dup2(po[1], 1);
            dup2(pe[1], 2);
            execv(argv[0], argv.data());
            _exit(127);
        }
        close(po[1]);
        close(pe[1]);
        out = po[0];
        err = pe[0];
        if (pid < 0) {
            close_pipes();
            return false;
        }
        return true;
    }

    // Read whatever the pipes hold within `timeout` seconds; stops early
    // when `until` (if not null) returns true or both pipes are at EOF.
    template <class F>
    void pump(double timeout, F until) {
        double deadline = now() + timeout;
        while ((out >= 0 || err >= 0) && !until()) {
            double left = deadline - now();
            if (left <= 0) return;
            struct pollfd p[2] = {{out, POLLIN, 0}, {err, POLLIN, 0}};
            int n = poll(p, 2, (int)(left * 1000) + 1);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return;
            for (int i = 0; i < 2; i++) {
                if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                char buf[4096];
                ssize_t r = read(p[i].fd, buf, sizeof buf);
                if (r > 0) {
                    (i == 0 ? out_buf : err_buf).append(buf, (size_t)r);
                } else if (r == 0 || errno != EINTR) {
                    close(p[i].fd);
                    (i == 0 ? out : err) = -1;
                }
            }
        }
    }

    // The first line of stdout, waiting up to `timeout` seconds.
    std::string first_line(double timeout) {
        pump(timeout, [this] { return out_buf.find('\n') != std::string::npos; });
        size_t nl = out_buf.find('\n');
        return nl == std::string::npos ? std::string() : out_buf.substr(0, nl);
    }

    // Read both pipes to EOF (bounded), then reap. Returns the wait status.
    int finish(double timeout = 20) {
        pump(timeout, [] { return false; });
        int status = wait_bounded(pid, 5);
        pid = -1;
        close_pipes();
        return status;
    }

    // Send sig, then collect the output and the exit status (bounded).
    int stop(int sig = SIGTERM) {
        kill(pid, sig);
        return finish(15);
    }

    void close_pipes() {
        if (out >= 0) close(out);
        if (err >= 0) close(err);
        out = err = -1;
    }

    ~Child() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            wait_bounded(pid, 5);
        }
        close_pipes();
    }
};

// Run a program to completion; returns its wait status.
int run(const std::vector<std::string> &args, std::string *out, std::string *err = nullptr) {
    Child c;
    if (!c.start(args)) return -1;
    int status = c.finish(30);
    if (out) *out = c.out_buf;
    if (err) *err = c.err_buf;
    return status;
}

// Start an echo server example on 127.0.0.1 port 0 and return its port.
uint16_t start_server(Child &c, const std::string &name) {
    std::string path = program(name);
    if (access(path.c_str(), X_OK) != 0) {
        ADD_FAILURE() << path << " is missing: build the examples (make) or set EVS_TEST_BUILDDIR";
        return 0;
    }
    if (!c.start({path, "127.0.0.1", "0"})) {
        ADD_FAILURE() << "cannot start " << path;
        return 0;
    }
    std::string line = c.first_line(20);
    const std::string prefix = "listening on 127.0.0.1:";
    if (line.compare(0, prefix.size(), prefix) != 0) {
        ADD_FAILURE() << name << " printed '" << line << "', stderr: " << c.err_buf;
        return 0;
    }
    long port = strtol(line.c_str() + prefix.size(), nullptr, 10);
    EXPECT_GT(port, 0);
    EXPECT_LT(port, 65536);
    return (uint16_t)port;
}

// Echo `n` bytes through an open connection with a writer thread, so a
// large payload cannot deadlock on full socket buffers.
void expect_echo(int fd, size_t n, uint32_t seed) {
    std::string data = pattern(n, seed);
    std::thread writer([&] { EXPECT_TRUE(write_all(fd, data.data(), data.size())); });
    std::string back(n, '\0');
    EXPECT_TRUE(read_exact(fd, &back[0], n));
    writer.join();
    EXPECT_TRUE(back == data) << "echo differs from what was sent";
}

void check_echo_server(const std::string &name) {
    Child server;
    uint16_t port = start_server(server, name);
    ASSERT_NE(0, port);
    std::string sport = std::to_string(port);

    // The client example against the server example.
    std::string out, err;
    int status = run({program("echo_client"), "Hello World!", "127.0.0.1", sport}, &out, &err);
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
    EXPECT_EQ("Send: 'Hello World!'\nReceived: 'Hello World!'\nClose the connection\n", out);

    // A plain socket: several connections at once, large payloads, then a
    // half-close must make the server finish and close its side.
    int fds[3];
    for (int &fd : fds) {
        fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
    }
    for (int i = 0; i < 3; i++) expect_echo(fds[i], (size_t)(256 * 1024 * (i + 1)), (uint32_t)i + 7);
    expect_echo(fds[0], 1, 99); // a connection goes on after a big echo
    for (int fd : fds) {
        ASSERT_EQ(0, shutdown(fd, SHUT_WR));
        EXPECT_EQ("", read_to_eof(fd)) << "the server must close after the client's EOF";
        close(fd);
    }

    status = server.stop(SIGTERM);
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << server.err_buf;
    EXPECT_NE(std::string::npos, server.err_buf.find("SIGTERM: stopping")) << server.err_buf;
    // One connection from echo_client plus three from this test, each logged.
    size_t closed = 0;
    for (size_t p = 0; (p = server.err_buf.find("closed after echoing", p)) != std::string::npos; p++)
        closed++;
    EXPECT_EQ(4u, closed) << server.err_buf;
    EXPECT_EQ("", server.out_buf.substr(server.out_buf.find('\n') + 1))
        << "only the listening line goes to stdout";
}

}  // namespace

TEST(Examples, EchoServerOnStreams) { check_echo_server("echo_server"); }

TEST(Examples, EchoServerOnProtocols) { check_echo_server("echo_protocol_server"); }

TEST(Examples, EchoServersStopOnSigint) {
    for (const char *name : {"echo_server", "echo_protocol_server"}) {
        Child server;
        uint16_t port = start_server(server, name);
        ASSERT_NE(0, port);
        int fd = connect_tcp(port);
        expect_echo(fd, 10, 3);
        close(fd);
        int status = server.stop(SIGINT);
        EXPECT_TRUE(exited_with(status, 0)) << name << ": " << describe(status) << "; "
                                            << server.err_buf;
        EXPECT_NE(std::string::npos, server.err_buf.find("SIGINT: stopping")) << server.err_buf;
    }
}

TEST(Examples, EchoServersAbortIdleClientsOnStopAndExitZero) {
    // A client that stays connected: the stop waits up to the examples'
    // 5 s for handlers, then aborts the connection, and that is still a
    // clean exit. Both servers stop at once so the test waits only once.
    Child servers[2];
    int fds[2];
    const char *names[2] = {"echo_server", "echo_protocol_server"};
    for (int i = 0; i < 2; i++) {
        uint16_t port = start_server(servers[i], names[i]);
        ASSERT_NE(0, port);
        fds[i] = connect_tcp(port);
        expect_echo(fds[i], 100, 5);
    }
    for (Child &s : servers) kill(s.pid, SIGTERM);
    for (int i = 0; i < 2; i++) {
        int status = servers[i].finish(15);
        EXPECT_TRUE(exited_with(status, 0)) << names[i] << ": " << describe(status) << "; "
                                            << servers[i].err_buf;
        EXPECT_NE(std::string::npos, servers[i].err_buf.find("were aborted")) << servers[i].err_buf;
        EXPECT_EQ("", read_to_eof(fds[i])) << "the aborted connection is closed";
        close(fds[i]);
    }
}

TEST(Examples, EchoServerReportsBusyPortAndBadArguments) {
    // A port somebody listens on cannot be bound again, even with SO_REUSEADDR.
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(l, 0);
    struct sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(l, (struct sockaddr *)&a, sizeof a));
    ASSERT_EQ(0, listen(l, 1));
    socklen_t len = sizeof a;
    ASSERT_EQ(0, getsockname(l, (struct sockaddr *)&a, &len));
    std::string busy = std::to_string(ntohs(a.sin_port));

    for (const char *name : {"echo_server", "echo_protocol_server"}) {
        std::string out, err;
        int status = run({program(name), "127.0.0.1", busy}, &out, &err);
        EXPECT_TRUE(exited_with(status, 1)) << name << ": " << describe(status);
        EXPECT_NE(std::string::npos, err.find("cannot listen on 127.0.0.1 port " + busy)) << err;
        EXPECT_NE(std::string::npos, err.find(evs_strerror(-EADDRINUSE))) << err;
        EXPECT_EQ("", out);

        status = run({program(name), "127.0.0.1", "notaport"}, &out, &err);
        EXPECT_TRUE(exited_with(status, 2)) << name << ": " << describe(status);
        EXPECT_NE(std::string::npos, err.find("usage:")) << err;
    }
    close(l);
}

TEST(Examples, EchoClientFailsWithoutServer) {
    // A port that was just free: nobody listens there.
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(s, 0);
    struct sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(s, (struct sockaddr *)&a, sizeof a));
    socklen_t len = sizeof a;
    ASSERT_EQ(0, getsockname(s, (struct sockaddr *)&a, &len));
    std::string port = std::to_string(ntohs(a.sin_port));
    close(s);

    std::string out, err;
    int status = run({program("echo_client"), "hi", "127.0.0.1", port}, &out, &err);
    EXPECT_TRUE(exited_with(status, 1)) << describe(status);
    EXPECT_NE(std::string::npos, err.find(evs_strerror(-ECONNREFUSED))) << err;
    EXPECT_EQ("", out);
}

TEST(Examples, EchoClientDetectsShortEcho) {
    // A server that echoes only part of the message and closes: the client
    // must say so and fail, showing what did arrive.
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(l, 0);
    struct sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(l, (struct sockaddr *)&a, sizeof a));
    ASSERT_EQ(0, listen(l, 1));
    socklen_t len = sizeof a;
    ASSERT_EQ(0, getsockname(l, (struct sockaddr *)&a, &len));
    set_timeouts(l); // accept() honours SO_RCVTIMEO: the thread cannot hang
    std::thread server([l] {
        int c = accept(l, nullptr, nullptr);
        if (c < 0) return;
        set_timeouts(c);
        // Read all 11 bytes first: closing with unread data would send a
        // reset instead of the EOF this test is about.
        char buf[11];
        if (read_exact(c, buf, sizeof buf)) write_all(c, "hello", 5);
        close(c);
    });
    std::string out, err;
    int status = run({program("echo_client"), "hello world", "127.0.0.1",
                      std::to_string(ntohs(a.sin_port))},
                     &out, &err);
    server.join();
    close(l);
    EXPECT_TRUE(exited_with(status, 1)) << describe(status);
    EXPECT_NE(std::string::npos, out.find("Received: 'hello'")) << out;
    EXPECT_NE(std::string::npos, err.find("after 5 of 11 bytes")) << err;
}

TEST(Examples, Socketpair) {
    std::string out, err;
    int status = run({program("socketpair")}, &out, &err);
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
    EXPECT_EQ("Received: abc\n", out);
}

namespace {

// A one-shot HTTP server on 127.0.0.1, or on [::1] when `v6`: accepts one
// connection, reads the request head, answers `reply` and closes. Blocking,
// with timeouts. `fixed_port` 0 takes any free port; port stays 0 when the
// address cannot be bound (no IPv6 here, or the port is taken).
struct TinyHttpServer {
    int listener = -1;
    uint16_t port = 0;
    std::string bind_error;
    std::string request;
    std::thread thread;

    explicit TinyHttpServer(std::string reply, bool v6 = false, uint16_t fixed_port = 0) {
        struct sockaddr_storage ss{};
        socklen_t len;
        if (v6) {
            auto *a = (struct sockaddr_in6 *)&ss;
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_loopback;
            a->sin6_port = htons(fixed_port);
            len = sizeof *a;
        } else {
            auto *a = (struct sockaddr_in *)&ss;
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a->sin_port = htons(fixed_port);
            len = sizeof *a;
        }
        int one = 1;
        listener = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listener < 0 ||
            setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(listener, (struct sockaddr *)&ss, len) < 0 || listen(listener, 4) < 0 ||
            getsockname(listener, (struct sockaddr *)&ss, &len) < 0) {
            bind_error = strerror(errno);
            return;
        }
        port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                        : ((struct sockaddr_in *)&ss)->sin_port);
        set_timeouts(listener); // a bounded accept()
        thread = std::thread([this, reply] {
            int c = accept(listener, nullptr, nullptr);
            if (c < 0) return;
            set_timeouts(c);
            char ch;
            while (request.size() < 8192 && request.find("\r\n\r\n") == std::string::npos &&
                   read(c, &ch, 1) == 1)
                request += ch;
            write_all(c, reply.data(), reply.size());
            close(c);
        });
    }
    ~TinyHttpServer() {
        if (thread.joinable()) thread.join();
        if (listener >= 0) close(listener);
    }
    void join() {
        if (thread.joinable()) thread.join();
    }
};

}  // namespace

TEST(Examples, HttpHeadPrintsHeaders) {
    // The body after the empty line must not be printed as headers.
    TinyHttpServer http(
        "HTTP/1.0 200 OK\r\n"
        "Server: evs-test\r\n"
        "Content-Type: text/plain\r\n"
        "Content-Length: 14\r\n"
        "\r\n"
        "Not-A-Header: body\n");
    ASSERT_NE(0, http.port) << "cannot set up the HTTP server: " << http.bind_error;
    std::string port = std::to_string(http.port);
    std::string out, err;
    int status =
        run({program("http_head"), "http://127.0.0.1:" + port + "/some/page.html"}, &out, &err);
    http.join();
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
    EXPECT_EQ(
        "HTTP header> HTTP/1.0 200 OK\n"
        "HTTP header> Server: evs-test\n"
        "HTTP header> Content-Type: text/plain\n"
        "HTTP header> Content-Length: 14\n",
        out);
    EXPECT_EQ("HEAD /some/page.html HTTP/1.0\r\nHost: 127.0.0.1:" + port + "\r\n\r\n", http.request);
}

TEST(Examples, HttpHeadDefaultPathAndTruncatedHeaders) {
    // No path in the URL means "/"; a server closing before the empty line
    // gets its lines printed and a non-zero exit.
    TinyHttpServer http("HTTP/1.0 500 Oops\r\nX-Cut: he");
    ASSERT_NE(0, http.port) << "cannot set up the HTTP server: " << http.bind_error;
    std::string port = std::to_string(http.port);
    std::string out, err;
    int status = run({program("http_head"), "http://127.0.0.1:" + port}, &out, &err);
    http.join();
    EXPECT_TRUE(exited_with(status, 1)) << describe(status);
    EXPECT_EQ("HTTP header> HTTP/1.0 500 Oops\nHTTP header> X-Cut: he\n", out);
    EXPECT_NE(std::string::npos, err.find("before the end of the headers")) << err;
    EXPECT_EQ(0u, http.request.find("HEAD / HTTP/1.0\r\n")) << http.request;
}

// An IPv6 literal keeps its brackets in Host, with a port and without one
// (the default port), or its colons would read as a port.
TEST(Examples, HttpHeadSendsAnIpv6HostInBrackets) {
    const std::string reply = "HTTP/1.0 204 No Content\r\n\r\n";
    {
        TinyHttpServer http(reply, true);
        if (http.port == 0) GTEST_SKIP() << "no IPv6 loopback here: " << http.bind_error;
        std::string port = std::to_string(http.port);
        std::string out, err;
        int status = run({program("http_head"), "http://[::1]:" + port + "/v6"}, &out, &err);
        http.join();
        EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
        EXPECT_EQ("HEAD /v6 HTTP/1.0\r\nHost: [::1]:" + port + "\r\n\r\n", http.request);
    }
    TinyHttpServer http(reply, true, 80);
    if (http.port == 0) GTEST_SKIP() << "cannot listen on [::1]:80 here: " << http.bind_error;
    std::string out, err;
    int status = run({program("http_head"), "http://[::1]/"}, &out, &err);
    http.join();
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
    EXPECT_EQ("HEAD / HTTP/1.0\r\nHost: [::1]\r\n\r\n", http.request);
}

TEST(Examples, HttpHeadRejectsBadUrls) {
    std::string out, err;
    for (const char *url : {"ftp://example.com/", "http://", "http://host:99999/", "http://[::1/"}) {
        int status = run({program("http_head"), url}, &out, &err);
        EXPECT_TRUE(exited_with(status, 1)) << url << ": " << describe(status);
        EXPECT_FALSE(err.empty()) << url;
        EXPECT_EQ("", out) << url;
    }
}

namespace {

// Answers a HEAD request with fixed headers, over TLS.
void https_handler(evs_reader *r, evs_writer *w, void *) {
    const void *line;
    ssize_t n;
    while ((n = evs_readline(r, &line)) > 2) {
    }
    const char reply[] = "HTTP/1.0 204 No Content\r\nServer: evs-tls\r\n\r\n";
    evs_write(w, reply, sizeof reply - 1);
}

}  // namespace

TEST(Examples, HttpHeadOverHttpsVerifiesTheServer) {
    std::string dir = make_temp_dir();
    std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
    std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                      "-days 1 -subj /CN=localhost -addext "
                      "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                      key + " -out " + cert + " >/dev/null 2>&1";
    if (system(cmd.c_str()) != 0) GTEST_SKIP() << "the openssl command is not available";
    evs_tls_certificate c{};
    c.certificate = cert.c_str();
    c.key = key.c_str();
    evs_tls_server_options to{};
    to.certificates = &c;
    to.ncertificates = 1;
    evs_tls_context *ctx = nullptr;
    char why[256];
    ASSERT_EQ(0, evs_tls_server_context_new(&to, &ctx, why, sizeof why)) << why;
    evs_runtime_options ro{};
    ro.workers = 1;
    evs_runtime *rt = nullptr;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    evs_server_options so{};
    so.client_connected = https_handler;
    so.host = "127.0.0.1";
    so.tls = ctx;
    evs_server *srv = nullptr;
    ASSERT_EQ(0, evs_start_server(rt, &so, &srv));
    std::string url = "https://127.0.0.1:" + std::to_string(evs_server_port(srv)) + "/";

    std::string out, err;
    int status = run({program("http_head"), url, cert}, &out, &err);
    EXPECT_TRUE(exited_with(status, 0)) << describe(status) << "; stderr: " << err;
    EXPECT_EQ("HTTP header> HTTP/1.0 204 No Content\nHTTP header> Server: evs-tls\n", out);

    // With the system's CAs the self-signed certificate is refused, and the
    // message says which check failed.
    status = run({program("http_head"), url}, &out, &err);
    EXPECT_TRUE(exited_with(status, 1)) << describe(status);
    EXPECT_EQ("", out);
    EXPECT_NE(std::string::npos, err.find("certificate verify failed")) << err;

    evs_runtime_stop(rt, 5);
    evs_tls_context_unref(ctx);
    remove_dir(dir);
}
