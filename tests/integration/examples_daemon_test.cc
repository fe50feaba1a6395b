// The example plugins (examples/http_hello, redis_lite, chat, proxy) in the
// real evstreamd, driven by the real, unmodified clients they are written
// for: curl and wrk, redis-cli and redis-benchmark, nc, plus raw sockets for
// what those clients cannot send (malformed requests, pipelined batches,
// half-closes, a reader that stops reading).
//
// Every daemon gets a generated config on 127.0.0.1 port 0 and two workers
// (round-robin dispatch, so consecutive connections land on different
// workers); every child process is ended by its pid after a bounded wait.
// A missing client program skips the tests that need it, with a message
// naming the Debian package.
//
// Paths: the daemon is $EVS_TEST_BUILDDIR/src/daemon/evstreamd and the
// plugins are in $EVS_TEST_BUILDDIR/plugins (make check sets the variable;
// without it the build dir is found from this program's own path).
#include <gtest/gtest.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>

#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "helpers.h"
#include "process.h"

using namespace evs_test;

namespace {

using Clock = std::chrono::steady_clock;

// --- small utilities --------------------------------------------------------

// The guest name in "* welcome guest7; ..." ("" if it is not that line).
std::string welcome_name(const std::string &line) {
    const std::string head = "* welcome ";
    size_t semi = line.find(';');
    if (line.compare(0, head.size() + 5, head + "guest") != 0 || semi == std::string::npos) return "";
    return line.substr(head.size(), semi - head.size());
}

// The number just before @marker in @text (-1 if none).
long long number_before(const std::string &text, const std::string &marker) {
    size_t at = text.find(marker);
    if (at == std::string::npos || at == 0) return -1;
    size_t start = at;
    while (start > 0 && isdigit((unsigned char)text[start - 1])) start--;
    return start == at ? -1 : std::stoll(text.substr(start, at - start));
}

// --- raw sockets --------------------------------------------------------------

// Read one '\n'-terminated line (without "\r\n"/"\n"); "<eof>"/"<error>" otherwise.
std::string read_line(int fd) {
    std::string line;
    for (;;) {
        char c;
        ssize_t n = recv(fd, &c, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return line + "<eof>";
        if (n < 0) return line + "<error: " + strerror(errno) + ">";
        if (c == '\n') {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            return line;
        }
        line += c;
        if (line.size() > 65536) return line + "<too long>";
    }
}

bool send_text(int fd, const std::string &text) { return write_all(fd, text.data(), text.size()); }

// Read lines until one equals @want (or starts with it when @prefix);
// false at EOF, error or timeout (the socket's 20 s).
bool read_until_line(int fd, const std::string &want, bool prefix = false,
                     std::vector<std::string> *seen = nullptr) {
    for (;;) {
        std::string line = read_line(fd);
        if (seen) seen->push_back(line);
        if (line == want || (prefix && line.compare(0, want.size(), want) == 0)) return true;
        if (contains(line, "<eof>") || contains(line, "<error")) return false;
    }
}

// Buffered line reader, for the long streams (read_line reads byte by byte).
struct LineReader {
    int fd;
    std::string buf;
    size_t at = 0;
    // The next line without its newline; "<eof>", "<timeout>" or "<error>".
    std::string next() {
        for (;;) {
            size_t nl = buf.find('\n', at);
            if (nl != std::string::npos) {
                std::string line = buf.substr(at, nl - at);
                at = nl + 1;
                if (at > (1u << 20)) {
                    buf.erase(0, at);
                    at = 0;
                }
                return line;
            }
            char chunk[65536];
            ssize_t n = recv(fd, chunk, sizeof chunk, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n == 0) return "<eof>";
            if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? "<timeout>" : "<error>";
            buf.append(chunk, (size_t)n);
        }
    }
};

// Read everything until EOF or an error, for at most @seconds (then "").
std::string read_all(int fd, int seconds = 10) {
    set_timeouts(fd, seconds);
    return read_to_eof(fd);
}

// Accept one connection on @lfd within @seconds; -1 otherwise.
int accept_within(int lfd, int seconds) {
    struct pollfd p = {lfd, POLLIN, 0};
    if (poll(&p, 1, seconds * 1000) != 1) return -1;
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) set_timeouts(fd);
    return fd;
}

// A listening socket on 127.0.0.1 port 0; its port goes to @port.
int listen_any(uint16_t *port, int rcvbuf = 0) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (fd < 0) return -1;
    // Set before listen: accepted sockets inherit it (and the window it gives).
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

// Send @unit over and over on @fd, reading nothing, until a send times
// out (the 2 s SO_SNDTIMEO: the server stopped reading), fails, or @cap
// bytes went. @return the bytes sent. A server that keeps answering a
// client that does not read must stop reading from it at some point;
// one that does not lets this reach @cap.
size_t send_without_reading(int fd, const std::string &unit, size_t cap = 128u << 20) {
    std::string chunk;
    while (chunk.size() < 256 * 1024) chunk += unit;
    set_timeouts(fd, 2);
    size_t sent = 0;
    while (sent < cap) {
        ssize_t n = send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // timed out (EAGAIN), or the server closed
        sent += (size_t)n;
        // A send cut short by the timeout ends the loop at the next call.
    }
    return sent;
}

// These tests need no more of a daemon than start, port and stop.
using Daemon = DaemonProcess;

class ExamplesTest : public ::testing::Test {
  protected:
    std::string dir;
    std::vector<std::unique_ptr<Daemon>> daemons;
    int serial = 0;

    void SetUp() override {
        signal(SIGPIPE, SIG_IGN);
        dir = make_temp_dir();
        ASSERT_FALSE(dir.empty());
        ASSERT_EQ(0, access(daemon_path().c_str(), X_OK))
            << daemon_path() << " is missing: build it first (or set EVS_TEST_BUILDDIR)";
        for (const char *p : {"http_hello", "redis_lite", "chat", "proxy", "line_upper", "udp_echo",
                              "starttls"})
            ASSERT_TRUE(file_exists(plugin_dir() + "/" + p + ".so"))
                << p << ".so is not in " << plugin_dir() << ": run make first";
    }

    void TearDown() override {
        for (auto &d : daemons) {
            if (d->running()) {
                int rc = d->stop();
                EXPECT_EQ(0, rc) << "evstreamd did not stop cleanly; its log:\n" << d->err();
            } else if (d->pid > 0) {
                ADD_FAILURE() << "evstreamd exited early (" << describe_status(d->raw_status)
                              << "); its log:\n"
                              << d->err();
            }
        }
        daemons.clear();
        if (HasFailure())
            fprintf(stderr, "[examples_daemon_test] files of the failed test kept in %s\n",
                    dir.c_str());
        else
            remove_dir(dir);
    }

    std::string path(const std::string &name) const { return dir + "/" + name; }

    // cert.pem and key.pem for localhost and 127.0.0.1. @return false
    // when the openssl command is missing.
    bool make_cert() {
        std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                          "-days 1 -subj /CN=localhost "
                          "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                          path("key.pem") + " -out " + path("cert.pem") + " >/dev/null 2>&1";
        return system(cmd.c_str()) == 0;
    }
    std::string next_name(const std::string &base) { return path(base + "." + std::to_string(serial++)); }

    // Write a config with @listeners (libconfig list entries); its path.
    std::string write_conf(const std::string &listeners, const std::string &top = "") {
        std::string conf = next_name("evstreamd.conf");
        // A short shutdown_timeout: a test that fails with connections
        // open must not wait the default 30 s at its end.
        write_file(conf, "workers = 2;\ndispatch = \"round-robin\";\n" +
                             std::string(geteuid() == 0 ? "allow_root = true;\n" : "") + top +
                             "limits = { shutdown_timeout = \"3s\"; };\n"
                             "log = { level = \"info\"; };\n"
                             "plugin_dir = \"" + plugin_dir() + "\";\n"
                             "plugins = (\n"
                             "  { name = \"http_hello\"; path = \"http_hello.so\"; },\n"
                             "  { name = \"redis_lite\"; path = \"redis_lite.so\"; },\n"
                             "  { name = \"chat\"; path = \"chat.so\"; },\n"
                             "  { name = \"proxy\"; path = \"proxy.so\"; },\n"
                             "  { name = \"line_upper\"; path = \"line_upper.so\"; },\n"
                             "  { name = \"udp_echo\"; path = \"udp_echo.so\"; },\n"
                             "  { name = \"starttls\"; path = \"starttls.so\"; }\n"
                             ");\n"
                             "listeners = (\n" + listeners + "\n);\n");
        return conf;
    }

    // Start evstreamd with @listeners and wait until it lists them in its
    // ports file.
    Daemon &start(const std::string &listeners, const std::string &top = "") {
        std::string conf = write_conf(listeners, top);
        auto d = std::make_unique<Daemon>();
        d->err_path = next_name("daemon.err");
        d->ports_path = next_name("ports");
        Daemon &ref = *d;
        daemons.push_back(std::move(d));
        ref.start(conf, next_name("daemon.out"));
        return ref;
    }

    // Run a client program to completion within @seconds, with @input on stdin.
    Result run(const std::vector<std::string> &args, const std::string &input = "",
               double seconds = 20) {
        std::string in;
        if (!input.empty()) {
            in = next_name("stdin");
            write_file(in, input);
        }
        std::string out = next_name("out"), err = next_name("err");
        return finish(spawn(args, in, out, err), args[0], seconds, out, err);
    }
};

// =============================================================================
// http_hello
// =============================================================================

class HttpHelloTest : public ExamplesTest {
  protected:
    uint16_t port = 0;
    std::string url;

    void SetUp() override {
        ExamplesTest::SetUp();
        if (HasFatalFailure()) return;
        Daemon &d = start("  { name = \"http\"; listen = \"127.0.0.1:0\"; plugin = \"http_hello\";\n"
                          "    settings = { max_header_size = \"4k\"; }; }");
        ASSERT_TRUE(d.running());
        port = d.port("http");
        ASSERT_NE(0, port);
        url = "http://127.0.0.1:" + std::to_string(port);
    }

    // Send @request on a new connection and read until the server closes.
    std::string exchange(const std::string &request) {
        int fd = connect_tcp(port);
        if (fd < 0) return "<connect failed>";
        send_text(fd, request);
        std::string answer = read_all(fd);
        close(fd);
        return answer;
    }
};

TEST_F(HttpHelloTest, CurlGetsHelloOverOneKeptAliveConnection) {
    REQUIRE_TOOL(curl, "curl", "curl");
    Result r = run({curl, "-sS", "-v", url + "/", url + "/again", url + "/third"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_EQ("Hello, World!Hello, World!Hello, World!", r.out);
    // One connection for the three requests, each answer framed by its length.
    EXPECT_EQ(1u, count_of(r.err, "Connected to")) << r.err;
    EXPECT_EQ(2u, count_of(r.err, "Re-using existing connection")) << r.err;
    EXPECT_EQ(3u, count_of(r.err, "< HTTP/1.1 200 OK")) << r.err;
    EXPECT_EQ(3u, count_of(r.err, "< Content-Length: 13")) << r.err;
    EXPECT_FALSE(contains(r.err, "< Connection: close")) << r.err;
}

TEST_F(HttpHelloTest, ConnectionCloseHeadAndHttp10) {
    REQUIRE_TOOL(curl, "curl", "curl");
    // The client asks to close: the answer says so and the server closes.
    Result r = run({curl, "-sS", "-v", "-H", "Connection: close", url + "/"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_EQ("Hello, World!", r.out);
    EXPECT_TRUE(contains(r.err, "< Connection: close")) << r.err;
    // HEAD: the same headers, no body.
    r = run({curl, "-sS", "-I", url + "/"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_TRUE(contains(r.out, "HTTP/1.1 200 OK\r\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "Content-Length: 13\r\n")) << r.out;
    EXPECT_FALSE(contains(r.out, "Hello")) << r.out;
    // HTTP/1.0 closes by default...
    r = run({curl, "-sS", "-i", "--http1.0", url + "/"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_TRUE(contains(r.out, "Connection: close\r\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "\r\n\r\nHello, World!")) << r.out;
    // ... and keeps the connection when asked to.
    r = run({curl, "-sS", "-v", "--http1.0", "-H", "Connection: keep-alive", url + "/a", url + "/b"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_EQ("Hello, World!Hello, World!", r.out);
    EXPECT_EQ(2u, count_of(r.err, "< Connection: keep-alive")) << r.err;
    EXPECT_EQ(1u, count_of(r.err, "Re-using existing connection")) << r.err;
}

TEST_F(HttpHelloTest, CurlSeesErrorStatuses) {
    REQUIRE_TOOL(curl, "curl", "curl");
    // 431: a head larger than max_header_size (4k).
    Result r = run({curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                    "X-Big: " + std::string(6000, 'a'), url + "/"});
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_EQ("431", r.out);
    // 400: whitespace between a header name and its colon.
    r = run({curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Bad Header: x", url + "/"});
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_EQ("400", r.out);
    // 405 for a POST, with Allow.
    r = run({curl, "-sS", "-i", "-d", "x=1", url + "/"});
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_TRUE(contains(r.out, "HTTP/1.1 405 Method Not Allowed\r\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "Allow: GET, HEAD\r\n")) << r.out;
    // The server is still fine.
    r = run({curl, "-sS", url + "/"});
    EXPECT_EQ("Hello, World!", r.out);
}

TEST_F(HttpHelloTest, MalformedRequestsGet400And505ThenClose) {
    struct Case {
        std::string request, status;
    } cases[] = {
        {"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"},
        {"GET /\r\n\r\n", "HTTP/1.1 400 Bad Request"},                      // HTTP/0.9 form
        {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"},            // no Host
        {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "HTTP/1.1 400 Bad Request"},
        {"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         "HTTP/1.1 400 Bad Request"},
        {"GET / HTTP/x.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400 Bad Request"},
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"},
        {"GET / HTTP/0.9\r\nHost: a\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"},
        {"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
         "HTTP/1.1 501 Not Implemented"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(5000, 'b') + "\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large"},
    };
    for (auto &c : cases) {
        std::string answer = exchange(c.request);
        // One answer, with Connection: close, then EOF (read_all returned).
        EXPECT_EQ(0u, answer.find(c.status + "\r\n")) << c.request << " -> " << answer;
        EXPECT_TRUE(contains(answer, "Connection: close\r\n")) << answer;
        EXPECT_EQ(1u, count_of(answer, "HTTP/1.1 ")) << answer;
    }
    // A later 1.x minor version is served as 1.1.
    std::string ok = exchange("GET / HTTP/1.7\r\nHost: a\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(0u, ok.find("HTTP/1.1 200 OK\r\n")) << ok;
    // "close" wins over a keep-alive in a later Connection line (RFC 9112
    // 9.6): the answer says close, and the server closes (read_all returns).
    std::string both = exchange(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n");
    EXPECT_EQ(0u, both.find("HTTP/1.1 200 OK\r\n")) << both;
    EXPECT_TRUE(contains(both, "Connection: close\r\n")) << both;
}

TEST_F(HttpHelloTest, PipelinedRequestsAreAnsweredInOrder) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    // Four requests in one write, a body on the second; the last one closes.
    std::string batch =
        "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        "HEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    ASSERT_TRUE(send_text(fd, batch));
    std::string all = read_all(fd);
    close(fd);
    EXPECT_EQ(4u, count_of(all, "HTTP/1.1 200 OK\r\n")) << all;
    EXPECT_EQ(3u, count_of(all, "Hello, World!")) << all;  // not for HEAD
    EXPECT_EQ(1u, count_of(all, "Connection: close\r\n")) << all;
    // The close is on the last answer, and the body ends the stream.
    EXPECT_GT(all.find("Connection: close"), all.rfind("HTTP/1.1 200 OK") - 1);
    EXPECT_EQ(all.size() - 13, all.rfind("Hello, World!"));
}

// A head whose header lines end in bare LF and whose empty line is CRLF
// ends there (RFC 9112 2.2 allows LF for any line end); it was never seen
// to end, and the request waited for the next one's blank line.
TEST_F(HttpHelloTest, HeadWithLfLinesAndACrlfEmptyLineIsAnswered) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 5);
    ASSERT_TRUE(send_text(fd, "GET / HTTP/1.1\nHost: a\n\r\n"));
    EXPECT_EQ("HTTP/1.1 200 OK", read_line(fd));
    // The connection is kept: the next request, with the same line ends, too.
    ASSERT_TRUE(send_text(fd, "GET /2 HTTP/1.1\nHost: a\nConnection: close\n\r\n"));
    std::string rest = read_all(fd);
    close(fd);
    EXPECT_EQ(2u, count_of(rest, "Hello, World!")) << rest;
    EXPECT_EQ(1u, count_of(rest, "HTTP/1.1 200 OK\r\n")) << rest;
    EXPECT_EQ(0u, count_of(rest, " 400 ")) << rest;
}

// Empty lines before a request line are ignored (RFC 9112 2.2), however
// many there are, CRLF or bare LF.
TEST_F(HttpHelloTest, EmptyLinesBeforeARequestAreIgnored) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_text(fd, "\r\n\r\n\r\nGET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                              "\n\n\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
    std::string all = read_all(fd);
    close(fd);
    EXPECT_EQ(2u, count_of(all, "HTTP/1.1 200 OK\r\n")) << all;
    EXPECT_EQ(0u, count_of(all, " 400 ")) << all;
}

// The usual answer is formatted once a second and reused: its Date must
// still follow the clock, and nothing else in it may change.
TEST_F(HttpHelloTest, KeptAliveAnswersFollowTheClock) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 10);
    auto ask = [&]() {
        std::string answer;
        char buf[512];
        if (!send_text(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")) return answer;
        while (answer.size() < 13 || answer.compare(answer.size() - 13, 13, "Hello, World!") != 0) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            answer.append(buf, (size_t)n);
        }
        return answer;
    };
    auto date_of = [](const std::string &answer) {
        size_t at = answer.find("\r\nDate: ");
        if (at == std::string::npos) return std::string();
        at += 8;
        return answer.substr(at, answer.find("\r\n", at) - at);
    };
    auto seconds_of = [](const std::string &date) {
        struct tm tm = {};
        const char *end = strptime(date.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        return end && *end == '\0' ? (long long)timegm(&tm) : -1;
    };

    std::string first = ask();
    ASSERT_EQ(0u, first.find("HTTP/1.1 200 OK\r\n")) << first;
    std::string d1 = date_of(first);
    long long t1 = seconds_of(d1);
    ASSERT_GE(t1, 0) << "not an IMF-fixdate: " << d1;
    EXPECT_LE(llabs(t1 - (long long)time(nullptr)), 5) << d1;
    // Ask on the same connection until the second turns (bounded).
    std::string later;
    ASSERT_TRUE(eventually(5.0, [&] {
        later = ask();
        return date_of(later) != d1;
    })) << later;
    std::string d2 = date_of(later);
    EXPECT_GT(seconds_of(d2), t1) << d1 << " then " << d2;
    // Apart from the Date the two answers are the same bytes.
    first.replace(first.find(d1), d1.size(), "<date>");
    later.replace(later.find(d2), d2.size(), "<date>");
    EXPECT_EQ(first, later);
    close(fd);
}

// A client that pipelines requests without end and never reads: the
// server must stop reading once its answers pile up (backpressure), not
// queue them without limit.
TEST_F(HttpHelloTest, PipeliningClientThatDoesNotReadIsPushedBack) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    size_t sent = send_without_reading(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_GT(sent, (size_t)0);
    EXPECT_LT(sent, (size_t)64 << 20) << "the server kept reading requests it could not answer";
    close(fd);
    // And it still serves others.
    std::string ok = exchange("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    EXPECT_TRUE(contains(ok, "\r\n\r\nHello, World!")) << ok;
}

TEST_F(HttpHelloTest, ShortWrkRunHasNoErrors) {
    REQUIRE_TOOL(wrk, "wrk", "wrk");
    Result r = run({wrk, "-t1", "-c8", "-d1s", url + "/"}, "", 30);
    ASSERT_EQ(0, r.status) << r.out << r.err;
    EXPECT_GT(number_before(r.out, " requests in"), 100) << r.out;
    EXPECT_FALSE(contains(r.out, "Socket errors")) << r.out;
    EXPECT_FALSE(contains(r.out, "Non-2xx")) << r.out;
    // And it still answers afterwards.
    std::string ok = exchange("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    EXPECT_TRUE(contains(ok, "\r\n\r\nHello, World!")) << ok;
}

// =============================================================================
// redis_lite
// =============================================================================

class RedisLiteTest : public ExamplesTest {
  protected:
    uint16_t port = 0;
    std::string cli;

    void SetUp() override {
        ExamplesTest::SetUp();
        if (HasFatalFailure()) return;
        cli = find_tool("redis-cli");
        Daemon &d = start("  { name = \"redis\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\"; }");
        ASSERT_TRUE(d.running());
        port = d.port("redis");
        ASSERT_NE(0, port);
    }

    // redis-cli -p PORT args... ; its stdout.
    std::string redis(const std::vector<std::string> &args) {
        std::vector<std::string> argv = {cli, "-p", std::to_string(port)};
        argv.insert(argv.end(), args.begin(), args.end());
        Result r = run(argv);
        EXPECT_EQ(0, r.status) << r.err;
        return r.out;
    }

    // Commands on redis-cli's stdin, one per line; its output lines.
    std::vector<std::string> script(const std::string &commands) {
        Result r = run({cli, "-p", std::to_string(port)}, commands);
        EXPECT_EQ(0, r.status) << r.err;
        return split_lines(r.out);
    }

    // A raw RESP exchange: send, then read exactly @lines answer lines.
    std::vector<std::string> raw(int fd, const std::string &data, size_t lines) {
        std::vector<std::string> out;
        if (!send_text(fd, data)) return out;
        for (size_t i = 0; i < lines; i++) out.push_back(read_line(fd));
        return out;
    }
};

TEST_F(RedisLiteTest, RedisCliCommandsAndRedisErrors) {
    if (cli.empty()) GTEST_SKIP() << "redis-cli is not installed (Debian package: redis-tools)";
    // Twenty keys spread over both workers' shards: MSET and MGET must put
    // every value back in argument order.
    std::string mset = "MSET", mget = "MGET", del = "DEL", exists = "EXISTS";
    for (int i = 0; i < 20; i++) {
        mset += " k" + std::to_string(i) + " v" + std::to_string(i);
        mget += " k" + std::to_string(i);
        if (i % 2 == 0) del += " k" + std::to_string(i);
        exists += " k" + std::to_string(i);
    }
    std::vector<std::string> out = script(
        "PING\n"
        "PING hi\n"
        "ECHO \"two words\"\n"
        "FLUSHALL\n" +
        mset + "\n" + mget + " missing\n" + del + " missing\n" + exists + " k1 k1\n" +
        "DBSIZE\n"
        "SET counter 10\n"
        "INCR counter\n"
        "INCRBY counter 100\n"
        "DECR counter\n"
        "DECRBY counter 20\n"
        "GET counter\n"
        "SET counter notanumber\n"
        "INCR counter\n"
        "INCRBY counter x\n"
        "SET big 9223372036854775807\n"
        "INCR big\n"
        "SET once a NX\n"
        "SET once b NX\n"
        "GET once\n"
        "SET nothere c XX\n"
        "SET once d XX\n"
        "GET once\n"
        "SET t v EX 100\n"
        "TTL t\n"
        "TTL once\n"
        "TTL nothere\n"
        "SET t v PX 100 NX\n"
        "SET t v EX 0\n"
        "SET t v EX 10 PX 10\n"
        "EXPIRE once 50\n"
        "TTL once\n"
        "EXPIRE nothere 50\n"
        "GET\n"
        "FOO bar baz\n"
        "MSET a\n"
        "DBSIZE\n");
    std::vector<std::string> want = {"PONG", "hi", "two words", "OK", "OK"};
    for (int i = 0; i < 20; i++) want.push_back("v" + std::to_string(i));
    want.push_back("");  // missing
    want.insert(want.end(), {
        "10",  // DEL: the 10 even keys
        "12",  // EXISTS: 10 odd keys of 20, + k1 twice
        "10",  // DBSIZE
        "OK", "11", "111", "110", "90", "90",
        "OK", "ERR value is not an integer or out of range",
        "ERR value is not an integer or out of range",
        "OK", "ERR increment or decrement would overflow",
        "OK", "", "a", "", "OK", "d",
        "OK", "100", "-1", "-2",
        "", "ERR invalid expire time in 'set' command", "ERR syntax error",
        "1", "50", "0",
        "ERR wrong number of arguments for 'get' command",
        "ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' ",
        "ERR wrong number of arguments for 'mset' command",
        "14",  // 10 k* + counter, big, once, t
    });
    // redis-cli (not on a terminal) prints an empty line after each error.
    for (size_t i = 0; i < want.size(); i++)
        if (want[i].compare(0, 4, "ERR ") == 0) want.insert(want.begin() + (long)++i, "");
    EXPECT_EQ(want.size(), out.size());
    for (size_t i = 0; i < want.size() && i < out.size(); i++) EXPECT_EQ(want[i], out[i]) << "line " << i;

    // Expiry: a key set with PX is gone once its time is up.
    EXPECT_EQ("OK\n", redis({"SET", "short", "lived", "PX", "150"}));
    EXPECT_EQ("lived\n", redis({"GET", "short"}));
    nap_ms(400);
    EXPECT_EQ("\n", redis({"GET", "short"}));
    EXPECT_EQ("-2\n", redis({"TTL", "short"}));
    EXPECT_EQ("14\n", redis({"DBSIZE"}));
    // QUIT answers OK.
    EXPECT_EQ("OK\n", redis({"QUIT"}));
}

TEST_F(RedisLiteTest, CommandReplyIsUnderstoodByRedisCli) {
    if (cli.empty()) GTEST_SKIP() << "redis-cli is not installed (Debian package: redis-tools)";
    // redis-cli parses COMMAND's nested arrays (its interactive help reads
    // them); the count agrees with COMMAND COUNT.
    std::string all = redis({"COMMAND"});
    std::string count = redis({"COMMAND", "COUNT"});
    int n = std::stoi(count);
    EXPECT_GE(n, 20);
    for (const char *name : {"get", "set", "mget", "mset", "incrby", "expire", "ttl", "dbsize",
                             "flushall", "quit", "command", "echo", "ping", "exists", "del"})
        EXPECT_TRUE(contains("\n" + all, std::string("\n") + name + "\n"))
            << name << " missing from COMMAND:\n" << all;
    std::vector<std::string> info = split_lines(redis({"COMMAND", "INFO", "get", "mset"}));
    // get: name, arity 2, flags..., first 1, last 1, step 1
    ASSERT_GE(info.size(), 6u);
    EXPECT_EQ("get", info[0]);
    EXPECT_EQ("2", info[1]);
    EXPECT_TRUE(contains(redis({"COMMAND", "INFO", "mset"}), "mset\n-3\n"));
    // The interactive mode (which reads COMMAND for its hints) works through a pipe too.
    Result r = run({cli, "-p", std::to_string(port)}, "SET hello world\nGET hello\n");
    EXPECT_EQ("OK\nworld\n", r.out) << r.err;
}

TEST_F(RedisLiteTest, InlineMultibulkPipeliningAndProtocolErrors) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    // Inline, with quoting; then multibulk; "*0" is ignored.
    EXPECT_EQ(std::vector<std::string>({"+PONG"}), raw(fd, "PING\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"+OK"}), raw(fd, "SET \"a key\" 'it\\'s'\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"$4", "it's"}), raw(fd, "GET \"a key\"\r\n", 2));
    EXPECT_EQ(std::vector<std::string>({"+OK"}), raw(fd, "SET q \"x\\x41y\"\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"$3", "xAy"}), raw(fd, "GET q\r\n", 2));
    EXPECT_EQ(std::vector<std::string>({"+PONG"}), raw(fd, "*0\r\n*1\r\n$4\r\nPING\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"$5", "a b c"}),
              raw(fd, "*2\r\n$4\r\nECHO\r\n$5\r\na b c\r\n", 2));
    // A binary-safe value with CR LF inside.
    EXPECT_EQ(std::vector<std::string>({"+OK"}),
              raw(fd, "*3\r\n$3\r\nSET\r\n$3\r\nbin\r\n$4\r\n\r\n\r\n\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"$4", "", "", ""}),
              raw(fd, "*2\r\n$3\r\nGET\r\n$3\r\nbin\r\n", 4));

    // 200 INCRs on keys of both shards in one write: 200 answers, in order.
    std::string batch;
    for (int i = 0; i < 200; i++)
        batch += "*2\r\n$4\r\nINCR\r\n$2\r\nc" + std::to_string(i % 2) + "\r\n";
    std::vector<std::string> answers = raw(fd, batch, 200);
    ASSERT_EQ(200u, answers.size());
    for (int i = 0; i < 200; i++) EXPECT_EQ(":" + std::to_string(i / 2 + 1), answers[i]) << i;
    EXPECT_EQ(std::vector<std::string>({"*2", "$3", "100", "$3", "100"}),
              raw(fd, "MGET c0 c1\r\n", 5));
    close(fd);

    // Protocol errors are answered in Redis's words, then the connection closes.
    struct Case {
        std::string data, error;
    } cases[] = {
        {"*1\r\n$x\r\n", "-ERR Protocol error: invalid bulk length"},
        {"*abc\r\n", "-ERR Protocol error: invalid multibulk length"},
        {"*1\r\n:4\r\n", "-ERR Protocol error: expected '$', got ':'"},
        {"SET \"open\r\n", "-ERR Protocol error: unbalanced quotes in request"},
        {std::string(70000, 'a') + "\r\n", "-ERR Protocol error: too big inline request"},
    };
    for (auto &c : cases) {
        fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
        send_text(fd, c.data);
        std::string all = read_all(fd);
        EXPECT_EQ(c.error + "\r\n", all) << c.data.substr(0, 40);
        close(fd);
    }
}

// A command is read whole before it runs: the total of its arguments is
// bounded (max_request, by default the larger of 64M and max_bulk), not
// only each argument. With the defaults, four 16M arguments are the most
// one command may carry; one byte more is a protocol error, answered
// before that byte is read.
TEST_F(RedisLiteTest, CommandOverTheDefaultMaxRequestIsAProtocolError) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    std::string bulk(16u << 20, 'v');
    ASSERT_TRUE(send_text(fd, "*100\r\n"));
    for (int i = 0; i < 4; i++)
        ASSERT_TRUE(send_text(fd, "$16777216\r\n" + bulk + "\r\n")) << i;
    ASSERT_TRUE(send_text(fd, "$1\r\n"));
    // Without the bound the server waits for the 96 arguments still to
    // come, holding 64M: the read times out.
    set_timeouts(fd, 5);
    EXPECT_EQ("-ERR Protocol error: too big request", read_line(fd));
    EXPECT_EQ("<eof>", read_line(fd));
    close(fd);
}

TEST_F(RedisLiteTest, MaxRequestSettingBoundsACommandsArguments) {
    Daemon &d = start("  { name = \"small\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\";"
                      " settings = { max_bulk = \"1k\"; max_request = \"4k\"; }; }");
    ASSERT_TRUE(d.running());
    // MSET a <1024> b <1024> c <1024> d <n>: 3080 + n argument bytes.
    auto mset = [](size_t last) {
        std::string v(1024, 'x');
        return "*9\r\n$4\r\nMSET\r\n$1\r\na\r\n$1024\r\n" + v + "\r\n$1\r\nb\r\n$1024\r\n" + v +
               "\r\n$1\r\nc\r\n$1024\r\n" + v + "\r\n$1\r\nd\r\n$" + std::to_string(last) +
               "\r\n" + std::string(last, 'y') + "\r\n";
    };
    int fd = connect_tcp(d.port("small"));
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 5);
    // Exactly 4k is accepted...
    EXPECT_EQ(std::vector<std::string>({"+OK"}), raw(fd, mset(1016), 1));
    // ... one byte more is not, and the connection closes.
    EXPECT_EQ(std::vector<std::string>({"-ERR Protocol error: too big request", "<eof>"}),
              raw(fd, mset(1017), 2));
    close(fd);
    // A max_request below max_bulk is a configuration error.
    std::string conf = write_conf("  { name = \"bad\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\";"
                                  " settings = { max_bulk = \"1k\"; max_request = 512; }; }");
    Result t = run({daemon_path(), "-t", "-c", conf});
    EXPECT_EQ(1, t.status) << t.out << t.err;
    EXPECT_TRUE(contains(t.err, "max_request must be between max_bulk and 1G")) << t.err;
}

// max_request bounds an answer too: a small MGET that names big values
// often enough gets an error instead of an answer of max_request or more
// (repeating one 1M key 2000 times made a 2G answer), and the connection
// goes on. The five keys spread over both workers' shards, whose parts
// count their answers together.
TEST_F(RedisLiteTest, MaxRequestSettingBoundsAnAnswer) {
    Daemon &d = start("  { name = \"small\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\";"
                      " settings = { max_bulk = \"1k\"; max_request = \"4k\"; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("small"));
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 5);
    std::string value(1000, 'v');
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(std::vector<std::string>({"+OK"}),
                  raw(fd, "*3\r\n$3\r\nSET\r\n$2\r\nk" + std::to_string(i) + "\r\n$1000\r\n" +
                              value + "\r\n", 1));
    // Four values make 4036 bytes: within the bound.
    EXPECT_EQ(std::vector<std::string>(
                  {"*4", "$1000", value, "$1000", value, "$1000", value, "$1000", value}),
              raw(fd, "MGET k0 k1 k2 k3\r\n", 9));
    const std::vector<std::string> too_large = {"-ERR reply too large (over max_request, 4096 bytes)"};
    EXPECT_EQ(too_large, raw(fd, "MGET k0 k1 k2 k3 k4\r\n", 1));
    std::string again = "MGET";
    for (int i = 0; i < 2000; i++) again += " k0";
    EXPECT_EQ(too_large, raw(fd, again + "\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"+PONG"}), raw(fd, "PING\r\n", 1));
    close(fd);
}

// max_memory is maxmemory with noeviction: past it, writes get Redis's OOM
// error, while reads and deletes go on, and a delete makes room again.
// Without it a client could SET until the daemon ran out of memory.
TEST_F(RedisLiteTest, MaxMemorySettingRefusesWritesUntilKeysAreDeleted) {
    Daemon &d = start("  { name = \"small\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\";"
                      " settings = { max_bulk = \"64k\"; max_memory = \"1M\"; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("small"));
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 5);
    const std::string oom = "-OOM command not allowed when used memory > 'maxmemory'.";
    std::string value(60000, 'v');
    auto set = [&](const std::string &key) {
        return raw(fd, "*3\r\n$3\r\nSET\r\n$" + std::to_string(key.size()) + "\r\n" + key +
                           "\r\n$60000\r\n" + value + "\r\n", 1);
    };
    // 1M holds 17 such values; each shard may pass its part by one command.
    int stored = 0;
    std::string refused;
    for (int i = 0; i < 60 && refused.empty(); i++) {
        std::string key = "k" + std::to_string(i);
        std::vector<std::string> r = set(key);
        ASSERT_EQ(1u, r.size());
        if (r[0] == oom)
            refused = key;
        else
            ASSERT_EQ("+OK", r[0]) << key;
        stored += r[0] == "+OK";
    }
    ASSERT_FALSE(refused.empty()) << stored << " values of 60000 bytes stored under 1M";
    EXPECT_GE(stored, 8);
    EXPECT_LE(stored, 17 + 4);
    // The shard stays full: the same key is refused again, and so are
    // INCR and an MSET that touches it; reads still work.
    EXPECT_EQ(std::vector<std::string>({oom}), set(refused));
    EXPECT_EQ(std::vector<std::string>({oom}), raw(fd, "INCR " + refused + "\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({oom}), raw(fd, "MSET " + refused + " 1\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"$60000", value}), raw(fd, "GET k0\r\n", 2));
    EXPECT_EQ(std::vector<std::string>({":" + std::to_string(stored)}), raw(fd, "DBSIZE\r\n", 1));
    // Deleting every key makes room.
    std::string del = "DEL";
    for (int i = 0; i < stored; i++) del += " k" + std::to_string(i);
    EXPECT_EQ(std::vector<std::string>({":" + std::to_string(stored)}), raw(fd, del + "\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({"+OK"}), set(refused));
    EXPECT_EQ(std::vector<std::string>({"+OK"}), raw(fd, "FLUSHALL\r\n", 1));
    EXPECT_EQ(std::vector<std::string>({":0"}), raw(fd, "DBSIZE\r\n", 1));
    close(fd);
    // A bound below 1M is a configuration error.
    std::string conf = write_conf("  { name = \"bad\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\";"
                                  " settings = { max_memory = \"512k\"; }; }");
    Result t = run({daemon_path(), "-t", "-c", conf});
    EXPECT_EQ(1, t.status) << t.out << t.err;
    EXPECT_TRUE(contains(t.err, "max_memory must be at least 1M")) << t.err;
}

TEST_F(RedisLiteTest, RedisBenchmarkResultsAreCorrect) {
    REQUIRE_TOOL(bench, "redis-benchmark", "redis-tools");
    if (cli.empty()) GTEST_SKIP() << "redis-cli is not installed (Debian package: redis-tools)";
    EXPECT_EQ("OK\n", redis({"FLUSHALL"}));
    // Ten clients, spread over both workers, all on the same keys.
    Result r = run({bench, "-p", std::to_string(port), "-n", "2000", "-c", "10", "-t",
                    "ping,set,get,incr,mset", "-q"},
                   "", 40);
    ASSERT_EQ(0, r.status) << r.out << r.err;
    std::string all = r.out + r.err;
    EXPECT_FALSE(contains(all, "ERR")) << all;
    EXPECT_FALSE(contains(all, "WARNING")) << all;
    EXPECT_FALSE(contains(all, "rror")) << all;
    // "-q" prints one "NAME: N requests per second" per test (after \r progress lines).
    std::set<std::string> seen;
    std::string text = r.out;
    std::replace(text.begin(), text.end(), '\r', '\n');
    for (std::string l : split_lines(text)) {
        l.erase(0, l.find_first_not_of(' '));
        size_t colon = l.find(": ");
        if (colon == std::string::npos || !contains(l, " requests per second")) continue;
        seen.insert(l.substr(0, colon));
        EXPECT_GT(std::stod(l.substr(colon + 2)), 0.0) << l;
    }
    EXPECT_EQ(std::set<std::string>({"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR",
                                     "MSET (10 keys)"}),
              seen)
        << r.out;
    // Without -r every request uses the same key: the 2000 INCRs from ten
    // connections on two workers must all count, and the values are what
    // SET and MSET wrote (3 random letters by default).
    EXPECT_EQ("2000\n", redis({"GET", "counter:__rand_int__"}));
    std::string value = redis({"GET", "key:__rand_int__"});
    EXPECT_TRUE(value.size() == 4 && isalpha((unsigned char)value[0]) &&
                isalpha((unsigned char)value[1]) && isalpha((unsigned char)value[2]) && value[3] == '\n')
        << value;
    EXPECT_EQ("2\n", redis({"DBSIZE"}));
}

TEST_F(RedisLiteTest, RedisCliPipeModeLoadsThousandsOfKeys) {
    if (cli.empty()) GTEST_SKIP() << "redis-cli is not installed (Debian package: redis-tools)";
    EXPECT_EQ("OK\n", redis({"FLUSHALL"}));
    // --pipe streams the commands without waiting and checks every answer
    // (it ends with an ECHO of a random marker).
    std::string cmds;
    for (int i = 0; i < 3000; i++) {
        std::string k = "key:" + std::to_string(i), v = "value:" + std::to_string(i * 7);
        cmds += "*3\r\n$3\r\nSET\r\n$" + std::to_string(k.size()) + "\r\n" + k + "\r\n$" +
                std::to_string(v.size()) + "\r\n" + v + "\r\n";
    }
    Result r = run({cli, "-p", std::to_string(port), "--pipe"}, cmds, 30);
    ASSERT_EQ(0, r.status) << r.out << r.err;
    EXPECT_TRUE(contains(r.out, "errors: 0, replies: 3000")) << r.out;
    EXPECT_EQ("3000\n", redis({"DBSIZE"}));
    std::vector<std::string> mget = {"MGET"};
    std::string want;
    for (int i = 0; i < 3000; i += 97) {
        mget.push_back("key:" + std::to_string(i));
        want += "value:" + std::to_string(i * 7) + "\n";
    }
    EXPECT_EQ(want, redis(mget));
    std::vector<std::string> del = {"DEL"};
    for (int i = 0; i < 1000; i++) del.push_back("key:" + std::to_string(i));
    EXPECT_EQ("1000\n", redis(del));
    EXPECT_EQ("2000\n", redis({"DBSIZE"}));
}

// =============================================================================
// chat
// =============================================================================

class ChatTest : public ExamplesTest {
  protected:
    uint16_t port = 0;

    void start_chat(const std::string &settings = "") {
        Daemon &d = start("  { name = \"chat\"; listen = \"127.0.0.1:0\"; plugin = \"chat\";" +
                          (settings.empty() ? std::string() : " settings = { " + settings + " };") +
                          " }");
        ASSERT_TRUE(d.running());
        port = d.port("chat");
        ASSERT_NE(0, port);
    }

    // Connect and read the welcome line; @name receives the guest name.
    int join(std::string *name) {
        int fd = connect_tcp(port);
        if (fd < 0) return -1;
        std::string welcome = read_line(fd);
        *name = welcome_name(welcome);
        if (name->empty()) {
            ADD_FAILURE() << "no welcome: " << welcome;
            close(fd);
            return -1;
        }
        return fd;
    }
};

TEST_F(ChatTest, LinesReachEveryOtherClientOnEveryWorker) {
    start_chat();
    // Four clients: round-robin puts them on alternate workers.
    const int n = 4;
    int fds[n];
    std::string names[n];
    // Everyone hears about those who joined after them. A join reaches the
    // other worker later than a client could connect there, so the next
    // client joins only once everyone heard the last one (an earlier join
    // may still arrive first: it is skipped).
    for (int j = 0; j < n; j++) {
        fds[j] = join(&names[j]);
        ASSERT_GE(fds[j], 0);
        for (int i = 0; i < j; i++)
            ASSERT_TRUE(read_until_line(fds[i], "* " + names[j] + " joined")) << i << " " << j;
    }
    for (int i = 0; i < n; i++)
        ASSERT_TRUE(send_text(fds[i], "hello from " + std::to_string(i) + "\r\n"));
    for (int i = 0; i < n; i++) {
        std::vector<std::string> got;
        for (int k = 0; k < n - 1; k++) got.push_back(read_line(fds[i]));
        std::sort(got.begin(), got.end());
        std::vector<std::string> want;
        for (int j = 0; j < n; j++)
            if (j != i) want.push_back(names[j] + ": hello from " + std::to_string(j));
        EXPECT_EQ(want, got) << "client " << i;
    }
    // Renaming and leaving are announced; the sender gets no copy of its line.
    ASSERT_TRUE(send_text(fds[0], "/nick alice\n"));
    EXPECT_EQ("* you are now alice", read_line(fds[0]));
    for (int i = 1; i < n; i++) EXPECT_EQ("* " + names[0] + " is now alice", read_line(fds[i]));
    ASSERT_TRUE(send_text(fds[0], "/nick bad name!\n"));
    EXPECT_EQ("* names are 1 to 20 letters, digits, _ or -", read_line(fds[0]));
    ASSERT_TRUE(send_text(fds[0], "/quit\n"));
    EXPECT_EQ("", read_all(fds[0]));
    for (int i = 1; i < n; i++) EXPECT_EQ("* alice left", read_line(fds[i]));
    // Control bytes inside a line cannot rewrite the sender's name on the
    // others' terminals: they arrive as '?'.
    ASSERT_TRUE(send_text(fds[1], "hi\ralice: trust me\x1b[2K\tok\n"));
    for (int i = 2; i < n; i++)
        EXPECT_EQ(names[1] + ": hi?alice: trust me?[2K\tok", read_line(fds[i]));
    // A line over max_line (1k) is refused, and the connection goes on.
    ASSERT_TRUE(send_text(fds[1], std::string(3000, 'z') + "\nshort\n"));
    EXPECT_EQ("* line too long", read_line(fds[1]));
    EXPECT_EQ(names[1] + ": short", read_line(fds[2]));
    for (int i = 0; i < n; i++) close(fds[i]);
}

// An overlong line arriving in pieces is skipped to its newline, and the
// lines after it (in the same write as the newline) still reach the room.
TEST_F(ChatTest, LongLineInPiecesIsSkippedToItsNewline) {
    start_chat("max_line = \"1k\";");
    std::string a, b;
    int fa = join(&a);
    ASSERT_GE(fa, 0);
    int fb = join(&b);
    ASSERT_GE(fb, 0);
    ASSERT_TRUE(read_until_line(fa, "* " + b + " joined"));
    set_timeouts(fb, 10);
    ASSERT_TRUE(send_text(fb, std::string(300000, 'z')));
    // (a's join may reach b's worker after b joined: skip what comes first)
    EXPECT_TRUE(read_until_line(fb, "* line too long"));
    nap_ms(50);
    ASSERT_TRUE(send_text(fb, std::string(5000, 'y')));
    nap_ms(50);
    ASSERT_TRUE(send_text(fb, std::string(700, 'x') + "\nafter\n"));
    EXPECT_TRUE(read_until_line(fa, b + ": after"));
    close(fa);
    close(fb);
}

// A name is one client's at a time, whatever its case, so one client cannot
// speak as another; the guest names the chat gives out cannot be taken
// either. A name is free again once its client renamed or left.
TEST_F(ChatTest, NickTakenByAnotherClientIsRefused) {
    start_chat();
    std::string a_name, b_name;
    int a = join(&a_name), b = join(&b_name);
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    ASSERT_TRUE(send_text(a, "/nick alice\n"));
    ASSERT_TRUE(read_until_line(a, "* you are now alice"));
    ASSERT_TRUE(read_until_line(b, "* " + a_name + " is now alice"));
    for (const char *taken : {"alice", "ALICE", "Alice"}) {
        ASSERT_TRUE(send_text(b, "/nick " + std::string(taken) + "\n"));
        EXPECT_EQ("* " + std::string(taken) + " is taken; pick another name", read_line(b));
    }
    ASSERT_TRUE(send_text(b, "/nick " + a_name + "\n"));  // a's old guest name
    EXPECT_EQ("* guest names are given by the chat; pick another name", read_line(b));
    ASSERT_TRUE(send_text(b, "/nick GUEST12345\n"));
    EXPECT_EQ("* guest names are given by the chat; pick another name", read_line(b));
    // b's lines still go out under its own name.
    ASSERT_TRUE(send_text(b, "hi\n"));
    EXPECT_TRUE(read_until_line(a, b_name + ": hi"));
    // The holder may change the case of its own name.
    ASSERT_TRUE(send_text(a, "/nick Alice\n"));
    EXPECT_EQ("* you are now Alice", read_line(a));
    ASSERT_TRUE(read_until_line(b, "* alice is now Alice"));
    ASSERT_TRUE(send_text(a, "/quit\n"));
    ASSERT_TRUE(read_until_line(b, "* Alice left"));
    ASSERT_TRUE(send_text(b, "/nick alice\n"));
    EXPECT_EQ("* you are now alice", read_line(b));
    close(a);
    close(b);
}

// Notices to the sender itself ("* names are ...") are bounded like
// messages: a client that sends bad /nick lines without end and never
// reads must stop being read, not grow the server.
TEST_F(ChatTest, ClientThatDoesNotReadItsNoticesIsPushedBack) {
    start_chat();
    std::string name;
    int fd = join(&name);
    ASSERT_GE(fd, 0);
    size_t sent = send_without_reading(fd, "/nick !\n");
    EXPECT_GT(sent, (size_t)0);
    EXPECT_LT(sent, (size_t)64 << 20) << "the server kept reading lines it could not answer";
    close(fd);
    // The chat goes on for others.
    std::string a_name, b_name;
    int a = join(&a_name), b = join(&b_name);
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    ASSERT_TRUE(read_until_line(a, "* " + b_name + " joined"));
    ASSERT_TRUE(send_text(a, "hi\n"));
    EXPECT_TRUE(read_until_line(b, a_name + ": hi"));
    close(a);
    close(b);
}

// max_line may be up to 1M: a line longer than any fixed buffer must reach
// the others whole, newline included, not cut off and glued to the next.
TEST_F(ChatTest, LongLinesUnderALargeMaxLineArriveWhole) {
    start_chat("max_line = \"8k\"; max_queue = \"64k\";");
    std::string a_name, b_name;
    int a = join(&a_name), b = join(&b_name);
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    ASSERT_TRUE(read_until_line(a, "* " + b_name + " joined"));
    const std::string long_line(5000, 'x');
    ASSERT_TRUE(send_text(a, long_line + "\nnext\n"));
    // A join notice posted from another worker may still come first.
    std::vector<std::string> said;
    while (said.size() < 2) {
        std::string line = read_line(b);
        if (line.compare(0, 2, "* ") == 0) continue;
        said.push_back(line);
        if (contains(line, "<eof>") || contains(line, "<error")) break;
    }
    ASSERT_EQ(2u, said.size()) << said.back();
    EXPECT_EQ(a_name + ": " + long_line, said[0]);
    EXPECT_EQ(a_name + ": next", said[1]);
    close(a);
    close(b);
}

TEST_F(ChatTest, NetcatClientsChat) {
    REQUIRE_TOOL(nc, "nc", "netcat-openbsd");
    start_chat();
    // A listening nc: its stdin is at EOF at once; without -q/-N it does not
    // pass that on and keeps reading until we end it.
    std::string listen_out = next_name("nc-listen.out");
    pid_t listener = spawn({nc, "127.0.0.1", std::to_string(port)}, "", listen_out,
                           next_name("nc-listen.err"));
    ASSERT_GT(listener, 0);
    bool joined = eventually(10, [&] { return contains(read_file(listen_out), "* welcome"); });
    EXPECT_TRUE(joined) << read_file(listen_out);
    // A talking nc: a nick and two lines, then it leaves (-q 1: a second after EOF).
    Result r = run({nc, "-q", "1", "127.0.0.1", std::to_string(port)},
                   "/nick carol\nhi there\nbye now\n/quit\n", 15);
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_TRUE(contains(r.out, "* you are now carol\n")) << r.out;
    bool heard = eventually(10, [&] { return contains(read_file(listen_out), "* carol left\n"); });
    int st;
    end_child(listener, &st);
    std::string heard_text = read_file(listen_out);
    EXPECT_TRUE(heard) << heard_text;
    size_t joined_at = heard_text.find(" joined\n");
    size_t star = heard_text.rfind("* guest", joined_at);
    ASSERT_TRUE(joined_at != std::string::npos && star != std::string::npos) << heard_text;
    std::string talker = heard_text.substr(star + 2, joined_at - star - 2);
    EXPECT_TRUE(contains(heard_text, "* " + talker +
                                         " is now carol\ncarol: hi there\ncarol: bye now\n"
                                         "* carol left\n"))
        << heard_text;
}

// A client that does not read: SO_RCVBUF small so the kernel holds little.
int join_slow(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    set_timeouts(fd);
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

// The sender sends @count numbered lines of ~1 KB, 32 at a time; after
// each batch the fast client reads it (so it is never behind by more than a
// batch, while the slow one reads nothing). @return true when the fast
// client got every line, in order (notices in between go to @notices).
bool flood(int sender, const std::string &sender_name, int fast, int count,
           std::vector<std::string> *notices = nullptr) {
    const int batch_lines = 32;
    for (int first = 0; first < count; first += batch_lines) {
        int last = std::min(count, first + batch_lines);
        std::string batch;
        for (int i = first; i < last; i++) batch += std::to_string(i) + " " + std::string(900, 'm') + "\n";
        if (!send_text(sender, batch)) {
            ADD_FAILURE() << "sender: " << strerror(errno);
            return false;
        }
        for (int i = first; i < last; i++) {
            std::string line = read_line(fast);
            while (line.compare(0, 2, "* ") == 0) {  // a notice (someone left)
                if (notices) notices->push_back(line);
                line = read_line(fast);
            }
            if (line != sender_name + ": " + std::to_string(i) + " " + std::string(900, 'm')) {
                ADD_FAILURE() << "fast client, line " << i << ": " << line.substr(0, 80);
                return false;
            }
        }
    }
    return true;
}

TEST_F(ChatTest, SlowClientMissesMessagesNotOthers) {
    start_chat("max_queue = \"256k\"; slow_client = \"drop\";");
    std::string slow_name, sender_name, fast_name;
    int slow = join_slow(port);
    ASSERT_GE(slow, 0);
    ASSERT_TRUE(contains(read_line(slow), "* welcome guest"));
    int sender = join(&sender_name);
    int fast = join(&fast_name);
    ASSERT_GE(sender, 0);
    ASSERT_GE(fast, 0);
    ASSERT_TRUE(read_until_line(sender, "* " + fast_name + " joined"));
    // 6000 lines (~5.5 MB: more than the kernel buffers on loopback hold)
    // while one client reads nothing: the other still gets every line, in
    // order, at once.
    const int count = 6000;
    ASSERT_TRUE(flood(sender, sender_name, fast, count));
    // Now the slow one reads what was queued for it (until nothing more
    // comes for a second): an ordered subset of the lines.
    LineReader slow_in{slow};
    set_timeouts(slow, 1);
    std::vector<std::string> lines;
    for (;;) {
        std::string l = slow_in.next();
        if (l == "<timeout>") break;
        ASSERT_NE("<eof>", l);
        ASSERT_NE("<error>", l);
        lines.push_back(l);
    }
    // With the next message it learns how many it missed.
    set_timeouts(slow, 10);
    ASSERT_TRUE(send_text(sender, "final\n"));
    ASSERT_EQ(sender_name + ": final", read_line(fast));
    for (;;) {
        std::string l = slow_in.next();
        ASSERT_EQ(std::string::npos, l.find('<')) << l;
        lines.push_back(l);
        if (l == sender_name + ": final") break;
    }
    int received = 0, last = -1;
    long long dropped = -1;
    std::string prefix = sender_name + ": ", tail = " " + std::string(900, 'm');
    for (size_t k = 0; k < lines.size(); k++) {
        const std::string &l = lines[k];
        bool numbered = l.compare(0, prefix.size(), prefix) == 0 && l.size() > prefix.size() + tail.size() &&
                        l.compare(l.size() - tail.size(), tail.size(), tail) == 0;
        if (numbered) {
            int i = std::stoi(l.substr(prefix.size()));
            EXPECT_GT(i, last) << "out of order";
            last = i;
            received++;
        } else if (l.compare(0, 2, "* ") == 0 && number_before(l, " messages dropped") >= 0) {
            EXPECT_EQ(-1, dropped) << "one note expected";
            EXPECT_EQ(lines.size() - 2, k) << "the note comes just before the next message";
            dropped = number_before(l, " messages dropped");
        } else if (l.compare(0, 2, "* ") == 0 && l.size() > 7 &&
                   l.compare(l.size() - 7, 7, " joined") == 0) {
            // the others joining, before the flood
        } else {
            EXPECT_EQ(lines.size() - 1, k) << l.substr(0, 80);
        }
    }
    EXPECT_GT(dropped, 0) << "the slow client should have missed messages";
    EXPECT_GT(received, 0);
    EXPECT_EQ(count, received + dropped);
    close(slow);
    close(sender);
    close(fast);
}

TEST_F(ChatTest, SlowClientIsDisconnectedUnderThatPolicy) {
    start_chat("max_queue = \"256k\"; slow_client = \"disconnect\";");
    std::string sender_name, fast_name;
    int slow = join_slow(port);
    ASSERT_GE(slow, 0);
    std::string welcome = read_line(slow);
    std::string slow_name = welcome_name(welcome);
    ASSERT_FALSE(slow_name.empty()) << welcome;
    int sender = join(&sender_name);
    int fast = join(&fast_name);
    ASSERT_GE(sender, 0);
    ASSERT_GE(fast, 0);
    ASSERT_TRUE(read_until_line(sender, "* " + fast_name + " joined"));
    const int count = 6000;
    std::vector<std::string> notices;
    ASSERT_TRUE(flood(sender, sender_name, fast, count, &notices));
    // Everyone is told it left, and the slow client finds the end of its
    // stream (EOF or reset) after part of the messages. Join notices posted
    // from another worker may arrive late: they are not the point here.
    notices.erase(std::remove_if(notices.begin(), notices.end(),
                                 [](const std::string &n) { return contains(n, " joined"); }),
                  notices.end());
    EXPECT_EQ(std::vector<std::string>({"* " + slow_name + " left"}), notices);
    set_timeouts(slow, 10);
    std::string got = read_to_eof(slow);
    size_t lines = count_of(got, sender_name + ": ");
    EXPECT_GT(lines, 0u);
    EXPECT_LT(lines, (size_t)count);
    ASSERT_TRUE(send_text(sender, "still here\n"));
    EXPECT_TRUE(read_until_line(fast, sender_name + ": still here"));
    close(slow);
    close(sender);
    close(fast);
}

// =============================================================================
// proxy
// =============================================================================

class ProxyTest : public ExamplesTest {
  protected:
    // A proxy listener named "proxy" forwarding to 127.0.0.1:@upstream.
    uint16_t start_proxy(uint16_t upstream, const std::string &limits = "") {
        Daemon &d = start("  { name = \"proxy\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";" +
                          limits + " settings = { upstream = \"127.0.0.1:" +
                          std::to_string(upstream) + "\"; connect_timeout = \"5s\"; }; }");
        EXPECT_TRUE(d.running());
        return d.port("proxy");
    }
};

// A bad upstream is refused at the config check, by what is wrong with it.
TEST_F(ProxyTest, ABadUpstreamFailsTheConfigCheck) {
    const std::pair<std::string, std::string> cases[] = {
        {"localhost", "is not host:port"},
        {"localhost:http", "has no valid port"},
        {"localhost:70000", "has no valid port"},
        {"[]:80", "has no valid host"},
        {"[::1:80", "has no valid host"},
    };
    for (const auto &c : cases) {
        std::string conf = write_conf("  { name = \"p\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
                                      " settings = { upstream = \"" + c.first + "\"; }; }");
        Result t = run({daemon_path(), "-t", "-c", conf});
        EXPECT_EQ(1, t.status) << c.first << ": " << t.err;
        EXPECT_TRUE(contains(t.err, "upstream '" + c.first + "' " + c.second)) << t.err;
    }
}

TEST_F(ProxyTest, CurlAndRedisCliThroughTheProxy) {
    REQUIRE_TOOL(curl, "curl", "curl");
    // The upstreams: http_hello and redis_lite in their own daemon.
    Daemon &up = start(
        "  { name = \"http\"; listen = \"127.0.0.1:0\"; plugin = \"http_hello\"; },\n"
        "  { name = \"redis\"; listen = \"127.0.0.1:0\"; plugin = \"redis_lite\"; }");
    ASSERT_TRUE(up.running());
    uint16_t http_port = up.port("http"), redis_port = up.port("redis");
    Daemon &px = start(
        "  { name = \"http\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
        " settings = { upstream = \"127.0.0.1:" + std::to_string(http_port) + "\"; }; },\n"
        "  { name = \"redis\"; listen = \"localhost:0\"; plugin = \"proxy\";"
        " settings = { upstream = \"localhost:" + std::to_string(redis_port) + "\"; }; }");
    ASSERT_TRUE(px.running());
    std::string url = "http://127.0.0.1:" + std::to_string(px.port("http"));
    Result r = run({curl, "-sS", "-v", url + "/", url + "/2"});
    ASSERT_EQ(0, r.status) << r.err;
    EXPECT_EQ("Hello, World!Hello, World!", r.out);
    EXPECT_EQ(1u, count_of(r.err, "Re-using existing connection")) << r.err;

    std::string cli = find_tool("redis-cli");
    if (cli.empty()) GTEST_SKIP() << "redis-cli is not installed (Debian package: redis-tools)";
    std::string p = std::to_string(px.port("redis"));
    r = run({cli, "-p", p}, "SET via proxy\nGET via\nDBSIZE\n");
    EXPECT_EQ("OK\nproxy\n1\n", r.out) << r.err;
    // And the value is really in the upstream.
    r = run({cli, "-p", std::to_string(redis_port), "GET", "via"});
    EXPECT_EQ("proxy\n", r.out);
    std::string bench = find_tool("redis-benchmark");
    if (!bench.empty()) {
        r = run({bench, "-p", p, "-n", "1000", "-c", "4", "-t", "incr", "-q"}, "", 30);
        EXPECT_EQ(0, r.status) << r.out << r.err;
        r = run({cli, "-p", p, "GET", "counter:__rand_int__"});
        EXPECT_EQ("1000\n", r.out);
    }
}

TEST_F(ProxyTest, HalfCloseIsPassedThroughBothWays) {
    uint16_t up_port;
    int lfd = listen_any(&up_port);
    ASSERT_GE(lfd, 0);
    uint16_t port = start_proxy(up_port);
    ASSERT_NE(0, port);

    int c = connect_tcp(port);
    ASSERT_GE(c, 0);
    int u = accept_within(lfd, 10);
    ASSERT_GE(u, 0);
    // Upstream speaks first and closes its write side: the client gets the
    // banner, then EOF, and can still talk.
    ASSERT_TRUE(send_text(u, "banner\n"));
    ASSERT_EQ(0, shutdown(u, SHUT_WR));
    EXPECT_EQ("banner", read_line(c));
    EXPECT_EQ("<eof>", read_line(c));
    ASSERT_TRUE(send_text(c, "request after your EOF\n"));
    EXPECT_EQ("request after your EOF", read_line(u));
    // Then the client closes its side: upstream sees EOF, and the proxy
    // closes both connections.
    ASSERT_EQ(0, shutdown(c, SHUT_WR));
    EXPECT_EQ("<eof>", read_line(u));
    close(u);
    EXPECT_EQ("", read_all(c));
    close(c);

    // The other order: the client half-closes first, the upstream answers
    // after seeing EOF.
    c = connect_tcp(port);
    ASSERT_GE(c, 0);
    u = accept_within(lfd, 10);
    ASSERT_GE(u, 0);
    ASSERT_TRUE(send_text(c, "question\n"));
    ASSERT_EQ(0, shutdown(c, SHUT_WR));
    EXPECT_EQ("question", read_line(u));
    EXPECT_EQ("<eof>", read_line(u));
    ASSERT_TRUE(send_text(u, "answer\n"));
    close(u);
    EXPECT_EQ("answer\n", read_all(c));
    close(c);
    close(lfd);
}

TEST_F(ProxyTest, SlowUpstreamPushesBackOnTheClient) {
    uint16_t up_port;
    int lfd = listen_any(&up_port, 16 * 1024);
    ASSERT_GE(lfd, 0);
    uint16_t port = start_proxy(up_port);
    ASSERT_NE(0, port);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 64 * 1024;
    setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, connect(c, (struct sockaddr *)&sin, sizeof sin));
    int u = accept_within(lfd, 10);
    ASSERT_GE(u, 0);

    // The upstream reads nothing. Write (non-blocking) until the writes
    // stall for half a second: with backpressure that happens after the
    // socket buffers and a few watermarks, far below what we offer.
    const size_t offer = 256u << 20;
    std::string data = pattern(1 << 20, 3);
    fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
    size_t sent = 0;
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (sent < offer && Clock::now() < deadline) {
        ssize_t n = send(c, data.data() + sent % data.size(), data.size() - sent % data.size(),
                         MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) << strerror(errno);
        struct pollfd p = {c, POLLOUT, 0};
        if (poll(&p, 1, 500) == 0) break;  // stalled
    }
    EXPECT_LT(sent, (size_t)64 << 20) << "the proxy kept reading from the client";
    EXPECT_GT(sent, (size_t)0);

    // Now the upstream reads: every byte arrives, in order, and the
    // client's EOF follows them.
    fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
    ASSERT_EQ(0, shutdown(c, SHUT_WR));
    std::string got = read_all(u, 20);
    ASSERT_EQ(sent, got.size());
    for (size_t off = 0; off < got.size(); off += data.size()) {
        size_t n = std::min(data.size(), got.size() - off);
        ASSERT_EQ(0, memcmp(got.data() + off, data.data(), n)) << "at " << off;
    }
    close(u);
    close(c);
    close(lfd);
}

TEST_F(ProxyTest, UnreachableUpstreamClosesTheClient) {
    uint16_t dead_port;
    int lfd = listen_any(&dead_port);
    ASSERT_GE(lfd, 0);
    close(lfd);  // nobody listens there now
    uint16_t port = start_proxy(dead_port);
    ASSERT_NE(0, port);
    int c = connect_tcp(port);
    ASSERT_GE(c, 0);
    EXPECT_EQ("", read_all(c));
    close(c);
    Daemon &d = *daemons.back();
    EXPECT_TRUE(eventually(5, [&] { return contains(d.err(), "cannot reach upstream 127.0.0.1:"); }))
        << d.err();
}

}  // namespace

TEST_F(ProxyTest, TlsTerminationAndTlsToTheUpstream) {
    REQUIRE_TOOL(curl, "curl", "curl");
    std::string cert = path("cert.pem");
    if (!make_cert()) GTEST_SKIP() << "the openssl command is not installed";
    // The upstream speaks HTTPS only.
    Daemon &up = start("  { name = \"https\"; listen = \"127.0.0.1:0\"; plugin = \"http_hello\";"
                       " tls = { certificate = \"cert.pem\"; key = \"key.pem\"; }; }");
    ASSERT_TRUE(up.running());
    std::string upstream = "127.0.0.1:" + std::to_string(up.port("https"));
    // The proxy terminates TLS from clients and opens verified TLS upstream.
    Daemon &px = start(
        "  { name = \"good\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
        "    tls = { certificate = \"cert.pem\"; key = \"key.pem\"; };"
        "    settings = { upstream = \"" + upstream + "\"; upstream_tls = true;"
        "                 ca_file = \"" + cert + "\"; server_name = \"localhost\"; }; },\n"
        "  { name = \"wrong-name\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
        "    settings = { upstream = \"" + upstream + "\"; upstream_tls = true;"
        "                 ca_file = \"" + cert + "\"; server_name = \"other.example\"; }; }");
    ASSERT_TRUE(px.running());
    Result r = run({curl, "-sS", "--cacert", cert,
                    "https://127.0.0.1:" + std::to_string(px.port("good")) + "/"});
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_EQ("Hello, World!", r.out);
    // An upstream certificate that does not name server_name is refused.
    r = run({curl, "-sS", "http://127.0.0.1:" + std::to_string(px.port("wrong-name")) + "/"});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(eventually(10, [&] { return contains(px.err(), "hostname mismatch"); })) << px.err();
}

// A client that half-closes after its request still gets the answer of a
// TLS upstream, which cannot be half-closed: the proxy closed it, and the
// answer was lost.
TEST_F(ProxyTest, AClientHalfCloseLeavesATlsUpstreamAnswering) {
    std::string cert = path("cert.pem");
    if (!make_cert()) GTEST_SKIP() << "the openssl command is not installed";
    Daemon &up = start("  { name = \"https\"; listen = \"127.0.0.1:0\"; plugin = \"http_hello\";"
                       " tls = { certificate = \"cert.pem\"; key = \"key.pem\"; }; }");
    ASSERT_TRUE(up.running());
    Daemon &px = start("  { name = \"proxy\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
                       "    settings = { upstream = \"127.0.0.1:" + std::to_string(up.port("https")) +
                       "\"; upstream_tls = true; ca_file = \"" + cert +
                       "\"; server_name = \"localhost\"; }; }");
    ASSERT_TRUE(px.running());
    int c = connect_tcp(px.port("proxy"));
    ASSERT_GE(c, 0);
    set_timeouts(c, 20);
    ASSERT_TRUE(send_text(c, "GET / HTTP/1.0\r\n\r\n"));
    ASSERT_EQ(0, shutdown(c, SHUT_WR));
    std::string answer = read_all(c);
    EXPECT_EQ(0u, answer.rfind("HTTP/1.1 200", 0)) << answer;
    EXPECT_TRUE(contains(answer, "Hello, World!")) << answer;
    close(c);
}

// A TLS connection has no half-close (can_write_eof is false), so the
// upstream's EOF closes the TLS client after the bytes before it. The EOF
// went nowhere, and the client waited for it until the idle timeout.
TEST_F(ProxyTest, UpstreamEofClosesATlsClient) {
    REQUIRE_TOOL(openssl, "openssl", "openssl");
    if (!make_cert()) GTEST_SKIP() << "the openssl command is not installed";
    uint16_t up_port;
    int lfd = listen_any(&up_port);
    ASSERT_GE(lfd, 0);
    Daemon &px = start("  { name = \"proxy\"; listen = \"127.0.0.1:0\"; plugin = \"proxy\";"
                       "    tls = { certificate = \"cert.pem\"; key = \"key.pem\"; };"
                       "    settings = { upstream = \"127.0.0.1:" + std::to_string(up_port) +
                       "\"; }; }");
    ASSERT_TRUE(px.running());
    pid_t pid = spawn({openssl, "s_client", "-quiet", "-ign_eof", "-connect",
                       "127.0.0.1:" + std::to_string(px.port("proxy"))},
                      "", path("s_client.out"), path("s_client.err"));
    ASSERT_GT(pid, 0);
    int u = accept_within(lfd, 10);
    ASSERT_GE(u, 0);
    ASSERT_TRUE(send_text(u, "banner\n"));
    ASSERT_EQ(0, shutdown(u, SHUT_WR));
    Result r = finish(pid, "s_client", 20, path("s_client.out"), path("s_client.err"));
    EXPECT_EQ(0, r.status) << r.err;
    EXPECT_EQ("banner\n", r.out);
    // The client's side ended too, so the upstream sees EOF.
    EXPECT_EQ("", read_all(u));
    close(u);
    close(lfd);
}

// =============================================================================
// starttls
// =============================================================================

// One line through @ssl, without its "\r\n"; "<eof>" when the TLS
// connection ends first.
std::string ssl_read_line(SSL *ssl) {
    std::string line;
    char c;
    while (SSL_read(ssl, &c, 1) == 1) {
        if (c == '\n') {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            return line;
        }
        line += c;
    }
    return line + "<eof>";
}

// The session: commands in plaintext (a longer word is no command), then
// STARTTLS, a real handshake on the same socket, and commands in TLS.
TEST_F(ExamplesTest, StarttlsUpgradesTheConnectionItIsAskedOn) {
    if (!make_cert()) GTEST_SKIP() << "the openssl command is not installed";
    Daemon &d = start("  { name = \"st\"; listen = \"127.0.0.1:0\"; plugin = \"starttls\";"
                      " settings = { certificate = \"" + path("cert.pem") + "\"; key = \"" +
                      path("key.pem") + "\"; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("st"));
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 10);
    EXPECT_EQ("220 evstream starttls example", read_line(fd));
    ASSERT_TRUE(send_text(fd, "ECHO hello there\r\nECHO\r\nTLS?\r\nSTARTTLSX\r\nQUITTER\r\n"));
    EXPECT_EQ("250 hello there", read_line(fd));
    EXPECT_EQ("250 ", read_line(fd));
    EXPECT_EQ("250 plaintext -", read_line(fd));
    EXPECT_EQ("500 unknown command", read_line(fd));
    EXPECT_EQ("500 unknown command", read_line(fd));
    ASSERT_TRUE(send_text(fd, "starttls\r\n"));
    ASSERT_EQ("220 go ahead", read_line(fd));

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    ASSERT_NE(nullptr, ctx);
    ASSERT_EQ(1, SSL_CTX_load_verify_locations(ctx, path("cert.pem").c_str(), nullptr));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    EXPECT_EQ(1, SSL_connect(ssl)) << "the handshake after STARTTLS failed";
    std::string cmds = "TLS?\r\nSTARTTLS\r\nECHO secret\r\nQUIT\r\n";
    EXPECT_EQ((int)cmds.size(), SSL_write(ssl, cmds.data(), (int)cmds.size()));
    EXPECT_EQ(0u, ssl_read_line(ssl).rfind("250 TLSv1.3 TLS_", 0));
    EXPECT_EQ("503 already in TLS", ssl_read_line(ssl));
    EXPECT_EQ("250 secret", ssl_read_line(ssl));
    EXPECT_EQ("221 bye", ssl_read_line(ssl));
    EXPECT_EQ("<eof>", ssl_read_line(ssl));
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
}

// A misspelt setting is an error at the start, not a default in silence.
TEST_F(ExamplesTest, StarttlsRefusesAnUnknownSetting) {
    std::string conf = write_conf("  { name = \"st\"; listen = \"127.0.0.1:0\"; plugin = \"starttls\";"
                                  " settings = { certificate = \"c.pem\"; key = \"k.pem\";"
                                  " pasword_file = \"p\"; }; }");
    Result t = run({daemon_path(), "-t", "-c", conf});
    EXPECT_EQ(1, t.status) << t.out << t.err;
    EXPECT_TRUE(contains(t.err, "unknown setting 'pasword_file'")) << t.err;
}

// =============================================================================
// line_upper
// =============================================================================

// "ERR line too long" is an answer like any other: a client that sends
// overlong lines without end and never reads must stop being read, not
// make the server queue an error line per max_line bytes it sends.
TEST_F(ExamplesTest, LineUpperClientSendingLongLinesWithoutReadingIsPushedBack) {
    Daemon &d = start("  { name = \"upper\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";"
                      " settings = { max_line = \"16\"; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("upper"));
    ASSERT_GE(fd, 0);
    size_t sent = send_without_reading(fd, std::string(17, 'a') + "\n");
    EXPECT_GT(sent, (size_t)0);
    EXPECT_LT(sent, (size_t)64 << 20) << "the server kept reading lines it could not answer";
    close(fd);
    // It still serves, and still skips a long line and goes on.
    int c = connect_tcp(d.port("upper"));
    ASSERT_GE(c, 0);
    ASSERT_TRUE(send_text(c, std::string(40, 'b') + "\nhi\n"));
    EXPECT_EQ("ERR line too long", read_line(c));
    EXPECT_EQ("HI", read_line(c));
    close(c);
}

// An overlong line is skipped to its newline whatever way it arrives:
// in pieces (the skip waits for more without losing its place), with the
// newline and the next lines in one write (nothing after the newline is
// skipped), and an overlong line cut by EOF ends the connection.
TEST_F(ExamplesTest, LineUpperSkipsLongLinesArrivingInPieces) {
    Daemon &d = start("  { name = \"upper\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";"
                      " settings = { max_line = \"1k\"; prefix = \"> \"; }; }");
    ASSERT_TRUE(d.running());
    int c = connect_tcp(d.port("upper"));
    ASSERT_GE(c, 0);
    set_timeouts(c, 10);
    ASSERT_TRUE(send_text(c, std::string(300000, 'a')));
    EXPECT_EQ("ERR line too long", read_line(c));
    nap_ms(50);
    ASSERT_TRUE(send_text(c, std::string(5000, 'b')));
    nap_ms(50);
    ASSERT_TRUE(send_text(c, std::string(700, 'c') + "\none\n" + std::string(2000, 'd') + "\ntwo\n"));
    EXPECT_EQ("> ONE", read_line(c));
    EXPECT_EQ("ERR line too long", read_line(c));
    EXPECT_EQ("> TWO", read_line(c));
    ASSERT_TRUE(send_text(c, std::string(4000, 'e')));
    shutdown(c, SHUT_WR);
    EXPECT_EQ("ERR line too long", read_line(c));
    EXPECT_EQ("<eof>", read_line(c));
    close(c);
}

// =============================================================================
// udp_echo
// =============================================================================

namespace {

// Send @marker from 127.0.0.1:@sport to 127.0.0.1:@dport through a raw
// socket (a forged source), then count for half a second the datagrams
// carrying it between any two ports (the raw socket sees every UDP
// datagram on the loopback): 1 is the forged one alone, more is a loop.
int forged_trips(int raw, uint16_t sport, uint16_t dport, const std::string &marker) {
    struct sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string packet(sizeof(struct udphdr), '\0');
    struct udphdr uh{};
    uh.uh_sport = htons(sport);
    uh.uh_dport = htons(dport);
    uh.uh_ulen = htons((uint16_t)(sizeof uh + marker.size()));
    uh.uh_sum = 0;  // none: allowed over IPv4
    memcpy(&packet[0], &uh, sizeof uh);
    packet += marker;
    if (sendto(raw, packet.data(), packet.size(), 0, (struct sockaddr *)&to, sizeof to) !=
        (ssize_t)packet.size())
        return -1;
    int trips = 0;
    auto until = Clock::now() + std::chrono::milliseconds(500);
    for (;;) {
        int left = (int)std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
        struct pollfd p = {raw, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) != 1) break;
        char buf[2048];
        ssize_t n = recv(raw, buf, sizeof buf, 0);
        if (n < (ssize_t)sizeof(struct ip)) continue;
        size_t ihl = (size_t)(((const struct ip *)buf)->ip_hl) * 4;
        if ((size_t)n < ihl + sizeof uh) continue;
        if (std::string(buf + ihl + sizeof uh, (size_t)n - ihl - sizeof uh) == marker) trips++;
    }
    return trips;
}

// A raw UDP socket bound to 127.0.0.1, or -1 (and errno) without CAP_NET_RAW.
int raw_udp_socket() {
    int raw = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_UDP);
    struct sockaddr_in from{};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (raw >= 0 && bind(raw, (struct sockaddr *)&from, sizeof from) != 0) {
        close(raw);
        return -1;
    }
    return raw;
}

}  // namespace

// A datagram whose source is the listener's own address and port (forged
// here through a raw socket) is dropped: its echo would reach one of the
// workers' sockets as a new datagram from that address, and so on for
// ever.
TEST_F(ExamplesTest, UdpEchoDropsDatagramsFromItsOwnAddress) {
    int raw = raw_udp_socket();
    if (raw < 0) GTEST_SKIP() << "a raw socket needs CAP_NET_RAW: " << strerror(errno);
    Daemon &d = start("  { name = \"udp\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; }");
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("udp");
    ASSERT_NE(0, port);
    EXPECT_EQ(1, forged_trips(raw, port, port, "echo loop?"))
        << "the forged datagram was echoed back to the listener";
    close(raw);

    // Other peers are still answered.
    struct sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 5);
    to.sin_port = htons(port);
    ASSERT_EQ(5, sendto(fd, "hello", 5, 0, (struct sockaddr *)&to, sizeof to));
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    EXPECT_EQ("hello", std::string(buf, n > 0 ? (size_t)n : 0));
    close(fd);
}

// Two udp_echo listeners: one datagram forged to come from one of them to
// the other would have them answer each other for ever (a core busy at
// 80,000 datagrams a second). A datagram from any port udp_echo serves is
// dropped.
TEST_F(ExamplesTest, UdpEchoListenersDoNotAnswerEachOther) {
    int raw = raw_udp_socket();
    if (raw < 0) GTEST_SKIP() << "a raw socket needs CAP_NET_RAW: " << strerror(errno);
    Daemon &d = start("  { name = \"a\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; },\n"
                      "  { name = \"b\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; }");
    ASSERT_TRUE(d.running());
    uint16_t a = d.port("a"), b = d.port("b");
    ASSERT_NE(0, a);
    ASSERT_NE(0, b);
    EXPECT_EQ(1, forged_trips(raw, b, a, "ping-pong?")) << "the two listeners answered each other";
    close(raw);
}

// A datagram from a well-known port (below 1024) is dropped: it is most
// likely another service's answer, or forged to start a loop with one
// (echo, chargen and their kind answer anything). Binding such a port
// takes root.
TEST_F(ExamplesTest, UdpEchoDropsDatagramsFromWellKnownPorts) {
    Daemon &d = start("  { name = \"udp\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; }");
    ASSERT_TRUE(d.running());
    struct sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(d.port("udp"));
    ASSERT_NE(0, to.sin_port);

    int service = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(service, 0);
    struct sockaddr_in from = to;
    bool bound = false;
    for (uint16_t port = 1023; port >= 900 && !bound; port--) {
        from.sin_port = htons(port);
        bound = bind(service, (struct sockaddr *)&from, sizeof from) == 0;
        if (!bound && errno == EACCES) {
            close(service);
            GTEST_SKIP() << "binding a port below 1024 takes root";
        }
    }
    ASSERT_TRUE(bound) << "no free port between 900 and 1023";
    ASSERT_EQ(7, sendto(service, "chargen", 7, 0, (struct sockaddr *)&to, sizeof to));

    // An ephemeral port is answered...
    int client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(client, 0);
    set_timeouts(client, 5);
    ASSERT_EQ(5, sendto(client, "hello", 5, 0, (struct sockaddr *)&to, sizeof to));
    char buf[64];
    ssize_t n = recv(client, buf, sizeof buf, 0);
    EXPECT_EQ("hello", std::string(buf, n > 0 ? (size_t)n : 0));
    close(client);
    // ... and the service's port was not, even a while after.
    struct pollfd p = {service, POLLIN, 0};
    EXPECT_EQ(0, poll(&p, 1, 300)) << "a datagram from a well-known port was answered";
    close(service);
}
