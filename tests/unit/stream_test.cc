// Streams: the seed's StreamReader and StreamWriter (evs_read*, evs_write*,
// drain, write_eof, close) over real sockets: socketpairs, TCP on
// 127.0.0.1 and Unix sockets in a temp dir. Each test runs as the main task
// of evs_run(); one end is wrapped with evs_stream_open_fd() and the raw
// peer end is driven with small blocking sends (they fit the socket buffer),
// non-blocking receives between evs_sleep()s, or a std::thread when the
// amount is large. The main task has a 10 s per-task timeout so a parked
// call that should have returned fails the test instead of hanging it.
#include <gtest/gtest.h>

#include <malloc.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"
#include "worker_probe.h"

using namespace evs_test;

namespace {

enum class Kind { Pair, Tcp, Unix };

const double kMainTimeout = 10.0;

// Run f() as evs_run()'s main task, bounded by the per-task timeout.
template <typename F>
void run(F f) {
    EXPECT_EQ(0, run_in_task(f, kMainTimeout));
}

// Spawn f() (returning int) as a task on the current loop; f must outlive it.
template <typename F>
evs_task *spawn(F &f) {
    evs_task *t = nullptr;
    EXPECT_EQ(0, evs_task_spawn([](void *p) -> int { return (*static_cast<F *>(p))(); }, &f, &t));
    return t;
}

int join(evs_task *t) {
    int result = -12345;
    EXPECT_EQ(0, evs_task_join(t, &result));
    return result;
}

// Park in short sleeps until cond() holds; false after @p secs.

int listen_on(const struct sockaddr *sa, socklen_t len, int family) {
    int l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) return -1;
    if (bind(l, sa, len) < 0 || listen(l, 4) < 0) {
        close(l);
        return -1;
    }
    return l;
}

// A connected stream socket pair of the given kind: sv[0] is the end the
// stream wraps, sv[1] the raw peer (blocking, with 10 s timeouts).
void make_fds(Kind k, int sv[2], std::string *dir) {
    sv[0] = sv[1] = -1;
    if (k == Kind::Pair) {
        socket_pair(sv);
    } else if (k == Kind::Tcp) {
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int l = listen_on((struct sockaddr *)&sin, sizeof sin, AF_INET);
        ASSERT_GE(l, 0);
        socklen_t sl = sizeof sin;
        ASSERT_EQ(0, getsockname(l, (struct sockaddr *)&sin, &sl));
        sv[1] = connect_tcp(ntohs(sin.sin_port));
        sv[0] = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        close(l);
    } else {
        *dir = make_temp_dir();
        ASSERT_FALSE(dir->empty());
        std::string path = *dir + "/s";
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
        int l = listen_on((struct sockaddr *)&sun, sizeof sun, AF_UNIX);
        ASSERT_GE(l, 0);
        sv[1] = connect_unix(path);
        sv[0] = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        close(l);
    }
    if (sv[1] >= 0) set_timeouts(sv[1], 10);
}

// A (reader, writer) pair on one end and the raw peer on the other.
struct Conn {
    evs_reader *r = nullptr;
    evs_writer *w = nullptr;
    int peer = -1;
    std::string dir;

    explicit Conn(Kind k = Kind::Pair, size_t limit = 0) {
        int sv[2];
        make_fds(k, sv, &dir);
        if (sv[0] < 0 || sv[1] < 0) {
            if (sv[0] >= 0) close(sv[0]);
            if (sv[1] >= 0) close(sv[1]);
            return;
        }
        peer = sv[1];
        EXPECT_EQ(0, evs_stream_open_fd(sv[0], limit, &r, &w));
    }
    ~Conn() {
        if (w) evs_writer_free(w);
        if (peer >= 0) close(peer);
        if (!dir.empty()) remove_dir(dir);
    }
    bool ok() const { return r && w && peer >= 0; }
    evs_transport *t() const { return evs_writer_transport(w); }

    // Small amounts only: a blocking send inside the task stalls the loop.
    void send(const std::string &s) const { EXPECT_TRUE(write_all(peer, s.data(), s.size())); }
    void eof() const { EXPECT_EQ(0, shutdown(peer, SHUT_WR)); }
    // Receive exactly @p n bytes without blocking the loop.
    std::string recv_n(size_t n, double secs = 8.0) const {
        std::string out;
        std::vector<char> buf(65536);
        auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
        while (out.size() < n && std::chrono::steady_clock::now() < end) {
            ssize_t k = ::recv(peer, buf.data(), std::min(buf.size(), n - out.size()), MSG_DONTWAIT);
            if (k > 0) {
                out.append(buf.data(), (size_t)k);
                continue;
            }
            if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
            if (evs_sleep(0.001) < 0) break;
        }
        return out;
    }
    // True once the peer reads EOF (after any bytes, which are discarded).
    bool recv_eof(double secs = 8.0) const {
        char buf[4096];
        auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
        while (std::chrono::steady_clock::now() < end) {
            ssize_t k = ::recv(peer, buf, sizeof buf, MSG_DONTWAIT);
            if (k == 0) return true;
            if (k > 0) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
            if (evs_sleep(0.001) < 0) return false;
        }
        return false;
    }
    // Reset the connection from the peer's side (RST on TCP).
    void reset() {
        struct linger lg = {1, 0};
        EXPECT_EQ(0, setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
        close(peer);
        peer = -1;
    }
};

// A task that sends segments from the peer with a pause between them, so
// the reader sees them as separate arrivals; optionally EOF at the end.
struct Feeder {
    int fd;
    std::vector<std::string> segs;
    bool eof;
    double gap;
    int operator()() {
        for (const std::string &s : segs) {
            if (evs_sleep(gap) < 0) return -1;
            if (!write_all(fd, s.data(), s.size())) return -2;
        }
        if (eof && shutdown(fd, SHUT_WR) < 0) return -3;
        return 0;
    }
};

std::string view_str(const void *p, ssize_t n) {
    return n > 0 ? std::string(static_cast<const char *>(p), (size_t)n) : std::string();
}

std::string readline_str(evs_reader *r, ssize_t *rc = nullptr) {
    const void *line = nullptr;
    ssize_t n = evs_readline(r, &line);
    if (rc) *rc = n;
    return view_str(line, n);
}

// Fill the writer's buffer above its high watermark while the peer does
// not read. @return bytes written (the peer must read them all later).
size_t fill_above_high(Conn &c, size_t high) {
    std::string chunk = pattern(65536, 3);
    size_t total = 0;
    for (int i = 0; i < 512 && evs_transport_get_write_buffer_size(c.t()) <= high; i++) {
        EXPECT_EQ(0, evs_write(c.w, chunk.data(), chunk.size()));
        total += chunk.size();
    }
    EXPECT_GT(evs_transport_get_write_buffer_size(c.t()), high);
    return total;
}

// Watermarks of 16 KiB / 4 KiB, and the queue filled above the high one
// (the peer does not read). @return the bytes written.
size_t queue_above_high(Conn &c) {
    EXPECT_EQ(0, evs_transport_set_write_buffer_limits(c.t(), 16384, 4096));
    return fill_above_high(c, 16384);
}

// A peer thread that reads to EOF; joined (after a shutdown when the test
// bailed out early) before the socket goes away.
struct PeerReader {
    std::thread th;
    int fd;
    std::string data;
    bool eof = false;
    bool joined = false;
    explicit PeerReader(int f, std::function<void(PeerReader &)> after = nullptr) : fd(f) {
        th = std::thread([this, after] {
            std::vector<char> buf(65536);
            for (;;) {
                ssize_t k = ::recv(fd, buf.data(), buf.size(), 0);
                if (k < 0 && errno == EINTR) continue;
                if (k <= 0) {
                    eof = k == 0;
                    break;
                }
                data.append(buf.data(), (size_t)k);
            }
            if (after) after(*this);
        });
    }
    void join() {
        joined = true;
        th.join();
    }
    ~PeerReader() {
        if (!joined) {
            shutdown(fd, SHUT_RDWR);
            th.join();
        }
    }
};

}  // namespace

/* --- read(n) ---------------------------------------------------------- */

TEST(StreamRead, ReturnsAsSoonAsOneByteIsBuffered) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc");
        char buf[100];
        ASSERT_EQ(3, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("abc", std::string(buf, 3));
    });
}

TEST(StreamRead, ParkedReadWakesOnFirstBytes) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"xy"}, false, 0.01};
        evs_task *ft = spawn(f);
        char buf[100];
        ssize_t n = evs_read(c.r, buf, sizeof buf);
        ASSERT_EQ(2, n);
        EXPECT_EQ("xy", std::string(buf, 2));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamRead, ReadCopiesAtMostNAndKeepsTheRest) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abcdef");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 6; }));
        char buf[4];
        ASSERT_EQ(4, evs_read(c.r, buf, 4));
        EXPECT_EQ("abcd", std::string(buf, 4));
        EXPECT_EQ(2u, evs_reader_buffered(c.r));
        ASSERT_EQ(2, evs_read(c.r, buf, 4));
        EXPECT_EQ("ef", std::string(buf, 2));
    });
}

// A parked read lends its buffer to the socket: what does not fit there
// must stay buffered, in order, for the next calls.
TEST(StreamRead, ParkedSmallReadKeepsTheOverflowInOrder) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string big = pattern(200000, 7);
        Feeder f{c.peer, {big}, false, 0.01};
        evs_task *ft = spawn(f);
        char small[5];
        ASSERT_EQ(5, evs_read(c.r, small, sizeof small));
        std::string got(small, 5);
        std::vector<char> buf(70000);
        while (got.size() < big.size()) {
            ssize_t n = evs_read(c.r, buf.data(), buf.size());
            ASSERT_GT(n, 0);
            got.append(buf.data(), (size_t)n);
        }
        EXPECT_EQ(big, got);
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamRead, ZeroBytesReturnsZeroAtOnce) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        char buf[8];
        // Nothing buffered and no EOF: a parked call would end in -ETIMEDOUT.
        evs_task_set_timeout(evs_task_current(), 0.5);
        EXPECT_EQ(0, evs_read(c.r, buf, 0));
        c.send("zz");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 2; }));
        EXPECT_EQ(0, evs_read(c.r, buf, 0));
        EXPECT_EQ(2u, evs_reader_buffered(c.r));
        EXPECT_FALSE(evs_at_eof(c.r));
    });
}

// A read side that ended cleanly (EOF) stays at EOF when the write side
// fails afterwards: readexactly reports the short read, read returns 0,
// as at_eof says. They returned the write's -EPIPE, while readuntil (which
// looked at EOF first) reported EOF.
TEST(StreamRead, EofSeenBeforeAWriteErrorStaysEof) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        close(c.peer);
        c.peer = -1;
        ASSERT_TRUE(wait_until([&] { return evs_at_eof(c.r); }));
        EXPECT_EQ(-EPIPE, evs_write(c.w, "x", 1));
        ASSERT_TRUE(wait_until([&] { return evs_transport_get_fd(evs_writer_transport(c.w)) < 0; }));
        char buf[8];
        const void *data;
        EXPECT_EQ(EVS_EINCOMPLETE, evs_readexactly(c.r, buf, sizeof buf));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(0, evs_read_view(c.r, sizeof buf, &data));
        EXPECT_EQ(EVS_EINCOMPLETE, evs_readuntil(c.r, "\n", 1, &data));
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(-EPIPE, evs_drain(c.w));
    });
}

TEST(StreamRead, AtEofReturnsZero) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("hi");
        c.eof();
        char buf[16];
        ASSERT_EQ(2, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

/* --- read(n) as a view ------------------------------------------------ */

TEST(StreamReadView, ParkedViewWakesOnFirstBytes) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"xy"}, false, 0.01};
        evs_task *ft = spawn(f);
        const void *v = nullptr;
        ssize_t n = evs_read_view(c.r, 100, &v);
        ASSERT_EQ(2, n);
        EXPECT_EQ("xy", view_str(v, n));
        EXPECT_EQ(0u, evs_reader_buffered(c.r));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamReadView, AtMostNAndTheRestStaysInOrder) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abcdef");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 6; }));
        const void *v = nullptr;
        ssize_t n = evs_read_view(c.r, 4, &v);
        ASSERT_EQ(4, n);
        EXPECT_EQ("abcd", view_str(v, n));
        EXPECT_EQ(2u, evs_reader_buffered(c.r));
        // The next call of any kind drops the view first.
        char buf[8];
        ASSERT_EQ(2, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("ef", std::string(buf, 2));
    });
}

TEST(StreamReadView, ALongStreamComesThroughWhole) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string big = pattern(300000, 11);
        Feeder f{c.peer, {big.substr(0, 100000), big.substr(100000)}, true, 0.005};
        evs_task *ft = spawn(f);
        std::string got;
        const void *v;
        ssize_t n;
        while ((n = evs_read_view(c.r, SIZE_MAX, &v)) > 0) got.append(view_str(v, n));
        EXPECT_EQ(0, n);
        EXPECT_EQ(big, got);
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0, join(ft));
    });
}

// A view parked on an empty reader gets a worker block of its own when the
// bytes come: views of two connections stay intact side by side, and a
// block goes back (and is reused) at the next call on its reader.
TEST(StreamReadView, ViewsOfTwoConnectionsStayIntact) {
    run([] {
        Conn a, b;
        ASSERT_TRUE(a.ok() && b.ok());
        Feeder fa{a.peer, {"AAAA"}, false, 0.01};
        evs_task *ta = spawn(fa);
        const void *va = nullptr, *vb = nullptr;
        ASSERT_EQ(4, evs_read_view(a.r, 100, &va));
        Feeder fb{b.peer, {"BBBBB"}, false, 0.01};
        evs_task *tb = spawn(fb);
        ASSERT_EQ(5, evs_read_view(b.r, 100, &vb));
        EXPECT_NE(va, vb);
        EXPECT_EQ("AAAA", view_str(va, 4));
        EXPECT_EQ("BBBBB", view_str(vb, 5));
        Feeder fa2{a.peer, {"CC"}, false, 0.01};
        evs_task *ta2 = spawn(fa2);
        ASSERT_EQ(2, evs_read_view(a.r, 100, &va));
        EXPECT_EQ("CC", view_str(va, 2));
        EXPECT_EQ("BBBBB", view_str(vb, 5));
        EXPECT_EQ(0, join(ta));
        EXPECT_EQ(0, join(tb));
        EXPECT_EQ(0, join(ta2));
    });
}

TEST(StreamReadView, EofWhileParkedReturnsZero) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {""}, true, 0.01};  // EOF after we park
        evs_task *ft = spawn(f);
        const void *v = &v;
        EXPECT_EQ(0, evs_read_view(c.r, 10, &v));
        EXPECT_EQ(nullptr, v);
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamReadView, ZeroNullAndEof) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        const void *v = &v;
        EXPECT_EQ(-EINVAL, evs_read_view(c.r, 10, nullptr));
        EXPECT_EQ(0, evs_read_view(c.r, 0, &v));
        EXPECT_EQ(nullptr, v);
        c.send("z");
        c.eof();
        ASSERT_EQ(1, evs_read_view(c.r, 10, &v));
        EXPECT_EQ("z", view_str(v, 1));
        EXPECT_EQ(0, evs_read_view(c.r, 10, &v));
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

TEST(StreamReadView, TimeoutLosesNothing) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        const void *v;
        evs_task_set_timeout(evs_task_current(), 0.05);
        EXPECT_EQ(-ETIMEDOUT, evs_read_view(c.r, 10, &v));
        evs_task_set_timeout(evs_task_current(), kMainTimeout);
        c.send("late");
        ASSERT_EQ(4, evs_read_view(c.r, 10, &v));
        EXPECT_EQ("late", view_str(v, 4));
    });
}

/* --- read(-1): read_to_eof ------------------------------------------- */

TEST(StreamReadToEof, ExactMaxGetsEverything) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string data = pattern(3000, 11);
        Feeder f{c.peer, {data.substr(0, 1000), data.substr(1000, 1000), data.substr(2000)}, true,
                 0.002};
        evs_task *ft = spawn(f);
        std::vector<char> buf(3000);
        ASSERT_EQ(3000, evs_read_to_eof(c.r, buf.data(), buf.size()));
        EXPECT_EQ(data, std::string(buf.data(), buf.size()));
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamReadToEof, OverMaxAtEofIsLimitAndDataStays) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string data = pattern(100, 12);
        c.send(data);
        c.eof();
        std::vector<char> buf(100);
        EXPECT_EQ(EVS_ELIMIT, evs_read_to_eof(c.r, buf.data(), 50));
        EXPECT_EQ(100u, evs_reader_buffered(c.r));
        EXPECT_FALSE(evs_at_eof(c.r));
        ASSERT_EQ(100, evs_read_to_eof(c.r, buf.data(), 100));
        EXPECT_EQ(data, std::string(buf.data(), 100));
    });
}

TEST(StreamReadToEof, OverMaxBeforeEofIsLimitWithoutWaitingForEof) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string data = pattern(100, 13);
        c.send(data);
        std::vector<char> buf(100);
        // No EOF is ever sent: waiting for it would end in -ETIMEDOUT.
        EXPECT_EQ(EVS_ELIMIT, evs_read_to_eof(c.r, buf.data(), 50));
        EXPECT_GE(evs_reader_buffered(c.r), 51u);
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 100; }));
        ASSERT_EQ(100, evs_read(c.r, buf.data(), 100));
        EXPECT_EQ(data, std::string(buf.data(), 100));
    });
}

/* --- readline --------------------------------------------------------- */

TEST(StreamReadline, FullLine) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("hello\n");
        ssize_t rc;
        EXPECT_EQ("hello\n", readline_str(c.r, &rc));
        EXPECT_EQ(6, rc);
    });
}

TEST(StreamReadline, SeveralLinesInOneSegment) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("a\nbb\n\nccc\n");
        EXPECT_EQ("a\n", readline_str(c.r));
        EXPECT_EQ("bb\n", readline_str(c.r));
        EXPECT_EQ("\n", readline_str(c.r));
        EXPECT_EQ("ccc\n", readline_str(c.r));
        EXPECT_EQ(0u, evs_reader_buffered(c.r));
    });
}

TEST(StreamReadline, LineSplitOverManyTinySegments) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string line = "a line that arrives one byte at a time\n";
        Feeder f{c.peer, {}, false, 0.001};
        for (char ch : line) f.segs.push_back(std::string(1, ch));
        f.segs.push_back("next\n");
        evs_task *ft = spawn(f);
        EXPECT_EQ(line, readline_str(c.r));
        EXPECT_EQ("next\n", readline_str(c.r));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamReadline, PartialLastLineAtEof) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc\nxyz");
        c.eof();
        EXPECT_EQ("abc\n", readline_str(c.r));
        ssize_t rc;
        EXPECT_EQ("xyz", readline_str(c.r, &rc));
        EXPECT_EQ(3, rc);
        EXPECT_EQ("", readline_str(c.r, &rc));
        EXPECT_EQ(0, rc);
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

TEST(StreamReadline, EmptyAtEofReturnsZero) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.eof();
        const void *line = &line;
        EXPECT_EQ(0, evs_readline(c.r, &line));
        EXPECT_EQ(0, evs_readline(c.r, &line));
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

TEST(StreamReadline, OverTheLimitIsLimitAndDataIsNotDiscarded) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        std::string data = std::string(40, 'x') + "\nrest\n";
        c.send(data);
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == data.size(); }));
        const void *line;
        EXPECT_EQ(EVS_ELIMIT, evs_readline(c.r, &line));
        EXPECT_EQ(data.size(), evs_reader_buffered(c.r));
        // Still there, and still over the limit on a second try.
        EXPECT_EQ(EVS_ELIMIT, evs_readline(c.r, &line));
        std::vector<char> buf(41);
        ASSERT_EQ(41, evs_readexactly(c.r, buf.data(), 41));
        EXPECT_EQ(data.substr(0, 41), std::string(buf.data(), 41));
        EXPECT_EQ("rest\n", readline_str(c.r));
    });
}

TEST(StreamReadline, OverTheLimitIsDetectedBeforeTheNewlineArrives) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        c.send(std::string(40, 'y'));
        // No newline ever comes: ELIMIT must not wait for one (-ETIMEDOUT).
        const void *line;
        EXPECT_EQ(EVS_ELIMIT, evs_readline(c.r, &line));
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 40; }));
        char buf[64];
        ASSERT_EQ(40, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(std::string(40, 'y'), std::string(buf, 40));
    });
}

TEST(StreamReadline, LimitBoundary) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        // 16 bytes before the newline is allowed (asyncio: isep > limit fails).
        std::string ok_line = std::string(16, 'a') + "\n";
        std::string long_line = std::string(17, 'b') + "\n";
        c.send(ok_line + long_line);
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 35; }));
        EXPECT_EQ(ok_line, readline_str(c.r));
        const void *line;
        EXPECT_EQ(EVS_ELIMIT, evs_readline(c.r, &line));
        EXPECT_EQ(long_line.size(), evs_reader_buffered(c.r));
        ASSERT_EQ(0, evs_reader_set_limit(c.r, 17));
        EXPECT_EQ(long_line, readline_str(c.r));
    });
}

TEST(StreamReadline, PartialLineOverTheLimitAtEofIsLimitAndDataStays) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        std::string data = pattern(20, 14);
        std::replace(data.begin(), data.end(), '\n', '.');
        c.send(data);
        c.eof();
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 20; }));
        EXPECT_EQ(0, evs_sleep(0.02));  // let EOF arrive too
        const void *line;
        EXPECT_EQ(EVS_ELIMIT, evs_readline(c.r, &line));
        EXPECT_EQ(20u, evs_reader_buffered(c.r));
        char buf[64];
        ASSERT_EQ(20, evs_read_to_eof(c.r, buf, sizeof buf));
        EXPECT_EQ(data, std::string(buf, 20));
        EXPECT_EQ(0, evs_readline(c.r, &line));
    });
}

TEST(StreamReadline, PartialLineAtTheLimitAtEofIsReturned) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        c.send(std::string(16, 'q'));
        c.eof();
        EXPECT_EQ(std::string(16, 'q'), readline_str(c.r));
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

/* --- readexactly ------------------------------------------------------ */

TEST(StreamReadexactly, Success) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"012", "3456", "789", "tail"}, false, 0.002};
        evs_task *ft = spawn(f);
        char buf[10];
        ASSERT_EQ(10, evs_readexactly(c.r, buf, 10));
        EXPECT_EQ("0123456789", std::string(buf, 10));
        EXPECT_EQ(0, join(ft));
        ASSERT_EQ(4, evs_readexactly(c.r, buf, 4));
        EXPECT_EQ("tail", std::string(buf, 4));
        EXPECT_EQ(0, evs_readexactly(c.r, buf, 0));
    });
}

TEST(StreamReadexactly, IncompleteAtEofExposesThePartialBytes) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("12345");
        c.eof();
        char buf[10];
        EXPECT_EQ(EVS_EINCOMPLETE, evs_readexactly(c.r, buf, 10));
        const void *partial = nullptr;
        ASSERT_EQ(5u, evs_reader_partial(c.r, &partial));
        EXPECT_EQ("12345", view_str(partial, 5));
        EXPECT_EQ("12345", std::string(buf, 5));
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        // partial is only for the call that failed with EVS_EINCOMPLETE.
        EXPECT_EQ(0u, evs_reader_partial(c.r, &partial));
    });
}

TEST(StreamReadexactly, MoreThanTwiceTheLimitWorks) {
    run([] {
        Conn c(Kind::Pair, 1024);
        ASSERT_TRUE(c.ok());
        std::string data = pattern(10000, 15);
        c.send(data.substr(0, 3000));
        // Above 2 x limit with nobody waiting: the reader stops reading.
        ASSERT_TRUE(wait_until([&] {
            return evs_reader_buffered(c.r) == 3000 && !evs_transport_is_reading(c.t());
        }));
        c.send(data.substr(3000));
        EXPECT_EQ(0, evs_sleep(0.02));
        EXPECT_EQ(3000u, evs_reader_buffered(c.r));
        // A waiting call needs more: reading resumes for it.
        std::vector<char> buf(10000);
        ASSERT_EQ(10000, evs_readexactly(c.r, buf.data(), buf.size()));
        EXPECT_TRUE(data == std::string(buf.data(), buf.size()));
        EXPECT_TRUE(evs_transport_is_reading(c.t()));
    });
}

TEST(StreamReadexactly, ManyTimesTheLimitFromAStreamingPeer) {
    run([] {
        Conn c(Kind::Tcp, 1024);
        ASSERT_TRUE(c.ok());
        std::string data = pattern(512 * 1024, 16);
        int fd = c.peer;
        std::thread sender([&] { EXPECT_TRUE(write_all(fd, data.data(), data.size())); });
        std::vector<char> buf(data.size());
        ssize_t n = evs_readexactly(c.r, buf.data(), buf.size());
        sender.join();
        ASSERT_EQ((ssize_t)data.size(), n);
        EXPECT_TRUE(data == std::string(buf.data(), buf.size()));
    });
}

/* --- readuntil / readuntil_any --------------------------------------- */

TEST(StreamReaduntil, MultiByteSeparatorSplitAcrossSegments) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"abc<", "E", "N", "D", ">rest"}, false, 0.002};
        evs_task *ft = spawn(f);
        const void *data;
        ssize_t n = evs_readuntil(c.r, "<END>", 5, &data);
        EXPECT_EQ("abc<END>", view_str(data, n));
        EXPECT_EQ(0, join(ft));
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 4; }));
        char buf[8];
        ASSERT_EQ(4, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("rest", std::string(buf, 4));
    });
}

TEST(StreamReaduntil, NotFoundWithinTheLimitIsLimitAndDataStays) {
    run([] {
        Conn c(Kind::Pair, 8);
        ASSERT_TRUE(c.ok());
        c.send("0123456789abcdef");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 16; }));
        const void *data;
        EXPECT_EQ(EVS_ELIMIT, evs_readuntil(c.r, "\r\n", 2, &data));
        EXPECT_EQ(16u, evs_reader_buffered(c.r));
        EXPECT_EQ(EVS_ELIMIT, evs_readuntil(c.r, "\r\n", 2, &data));
        char buf[32];
        ASSERT_EQ(16, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("0123456789abcdef", std::string(buf, 16));
    });
}

TEST(StreamReaduntil, FoundBeyondTheLimitIsLimitAndDataStays) {
    run([] {
        Conn c(Kind::Pair, 8);
        ASSERT_TRUE(c.ok());
        c.send("0123456789;");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 11; }));
        const void *data;
        EXPECT_EQ(EVS_ELIMIT, evs_readuntil(c.r, ";", 1, &data));
        EXPECT_EQ(11u, evs_reader_buffered(c.r));
        ASSERT_EQ(0, evs_reader_set_limit(c.r, 10));
        ssize_t n = evs_readuntil(c.r, ";", 1, &data);
        EXPECT_EQ("0123456789;", view_str(data, n));
    });
}

TEST(StreamReaduntil, IncompleteAtEofGivesThePartialBytes) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc\r");
        c.eof();
        const void *data;
        EXPECT_EQ(EVS_EINCOMPLETE, evs_readuntil(c.r, "\r\n", 2, &data));
        const void *partial = nullptr;
        size_t np = evs_reader_partial(c.r, &partial);
        // The partial bytes may hold part of the separator.
        EXPECT_EQ("abc\r", view_str(partial, (ssize_t)np));
        // The buffer was handed over: nothing left, at EOF.
        EXPECT_TRUE(evs_at_eof(c.r));
        char buf[8];
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(0u, evs_reader_partial(c.r, &partial));
        EXPECT_EQ(EVS_EINCOMPLETE, evs_readuntil(c.r, "\r\n", 2, &data));
        EXPECT_EQ(0u, evs_reader_partial(c.r, &partial));
    });
}

TEST(StreamReaduntil, ZeroLengthSeparatorIsInvalid) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        const void *data;
        EXPECT_EQ(-EINVAL, evs_readuntil(c.r, "", 0, &data));
    });
}

TEST(StreamReaduntilAny, EarliestMatchWins) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("one\r\ntwo\nthreeEND|");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 18; }));
        evs_separator seps[] = {{"END", 3}, {"\n", 1}, {"\r\n", 2}};
        const void *data;
        ssize_t n = evs_readuntil_any(c.r, seps, 3, 0, &data);
        EXPECT_EQ("one\r\n", view_str(data, n));
        n = evs_readuntil_any(c.r, seps, 3, 0, &data);
        EXPECT_EQ("two\n", view_str(data, n));
        n = evs_readuntil_any(c.r, seps, 3, 0, &data);
        EXPECT_EQ("threeEND", view_str(data, n));
        EXPECT_EQ(1u, evs_reader_buffered(c.r));
    });
}

TEST(StreamReaduntilAny, TheMatchThatEndsFirstWins) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("xxabcdef\nyy");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 11; }));
        evs_separator seps[] = {{"\n", 1}, {"abcdef", 6}};
        const void *data;
        ssize_t n = evs_readuntil_any(c.r, seps, 2, 0, &data);
        EXPECT_EQ("xxabcdef", view_str(data, n));
        n = evs_readuntil_any(c.r, seps, 2, 0, &data);
        EXPECT_EQ("\n", view_str(data, n));
    });
}

// A longer separator that starts earlier but ends later loses, whether the
// bytes come at once or split: the earliest start won when "abcd" came in
// one piece ("abcd") and the earliest end when it came as "abc" + "d"
// ("abc"), so one stream gave two answers.
TEST(StreamReaduntilAny, TheAnswerDoesNotDependOnHowTheBytesArrive) {
    for (bool split : {false, true}) {
        SCOPED_TRACE(split ? "abc + d" : "abcd");
        run([split] {
            Conn c;
            ASSERT_TRUE(c.ok());
            c.send(split ? "abc" : "abcd");
            ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == (split ? 3u : 4u); }));
            evs_separator seps[] = {{"abcd", 4}, {"bc", 2}};
            const void *data;
            ssize_t n = evs_readuntil_any(c.r, seps, 2, 0, &data);
            EXPECT_EQ("abc", view_str(data, n));
        });
    }
}

// Separators that end at one place give the same data; the one starting
// first ("abc" at 1, within the limit of 1) decides the limit, not the
// shorter one inside it ("bc" at 2).
TEST(StreamReaduntilAny, SeparatorsEndingTogetherAreJudgedByTheFirstStart) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("xabc");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 4; }));
        evs_separator seps[] = {{"bc", 2}, {"abc", 3}};
        const void *data;
        ssize_t n = evs_readuntil_any(c.r, seps, 2, 1, &data);
        EXPECT_EQ("xabc", view_str(data, n));
    });
}

TEST(StreamReaduntilAny, AtOneStartTheShortestSeparatorEndsFirst) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("hdr\r\n\r\nbody\r\n\r\n");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 15; }));
        evs_separator long_first[] = {{"\r\n\r\n", 4}, {"\r\n", 2}};
        evs_separator short_first[] = {{"\r\n", 2}, {"\r\n\r\n", 4}};
        const void *data;
        ssize_t n = evs_readuntil_any(c.r, long_first, 2, 0, &data);
        EXPECT_EQ("hdr\r\n", view_str(data, n));
        n = evs_readuntil_any(c.r, short_first, 2, 0, &data);
        EXPECT_EQ("\r\n", view_str(data, n));
        n = evs_readuntil_any(c.r, long_first, 2, 0, &data);
        EXPECT_EQ("body\r\n", view_str(data, n));
    });
}

TEST(StreamReaduntilAny, MatchAcrossSegmentsWithSeveralSeparators) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"xx--", "-", "-yy"}, false, 0.002};
        evs_task *ft = spawn(f);
        evs_separator seps[] = {{"----", 4}, {"!", 1}};
        const void *data;
        ssize_t n = evs_readuntil_any(c.r, seps, 2, 0, &data);
        EXPECT_EQ("xx----", view_str(data, n));
        EXPECT_EQ(0, join(ft));
    });
}

TEST(StreamReaduntilAny, PerCallLimit) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("0123456789\n");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 11; }));
        evs_separator nl[] = {{"\n", 1}};
        const void *data;
        EXPECT_EQ(EVS_ELIMIT, evs_readuntil_any(c.r, nl, 1, 4, &data));
        EXPECT_EQ(11u, evs_reader_buffered(c.r));
        EXPECT_EQ(EVS_ELIMIT, evs_readuntil_any(c.r, nl, 1, 9, &data));
        ssize_t n = evs_readuntil_any(c.r, nl, 1, 10, &data);
        EXPECT_EQ("0123456789\n", view_str(data, n));
        // 0 means the reader's limit (64 KiB here).
        c.send("abcdefghij\n");
        n = evs_readuntil_any(c.r, nl, 1, 0, &data);
        EXPECT_EQ("abcdefghij\n", view_str(data, n));
    });
}

TEST(StreamReaduntilAny, InvalidSeparators) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        const void *data;
        evs_separator empty[] = {{"\n", 1}, {"", 0}};
        EXPECT_EQ(-EINVAL, evs_readuntil_any(c.r, empty, 2, 0, &data));
        EXPECT_EQ(-EINVAL, evs_readuntil_any(c.r, empty, 0, 0, &data));
        EXPECT_EQ(-EINVAL, evs_readuntil_any(c.r, nullptr, 1, 0, &data));
    });
}

/* --- skipuntil -------------------------------------------------------- */

TEST(StreamSkipuntil, SkipsTheRestOfAnOverLongLine) {
    run([] {
        Conn c(Kind::Pair, 16);
        ASSERT_TRUE(c.ok());
        c.send(std::string(100, 'x') + "\nnext\n");
        ssize_t rc;
        readline_str(c.r, &rc);
        EXPECT_EQ(EVS_ELIMIT, rc);
        EXPECT_EQ(101, evs_skipuntil(c.r, "\n", 1));
        EXPECT_EQ("next\n", readline_str(c.r));
    });
}

TEST(StreamSkipuntil, FindsASeparatorSplitAcrossArrivals) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"aa-", "-", "-b-", "-c"}, true, 0.002};
        evs_task *ft = spawn(f);
        EXPECT_EQ(5, evs_skipuntil(c.r, "---", 3));
        char buf[8];
        EXPECT_EQ(4, evs_read_to_eof(c.r, buf, sizeof buf));
        EXPECT_EQ("b--c", std::string(buf, 4));
        EXPECT_EQ(0, join(ft));
    });
}

// Megabytes without the separator pass through a reader whose limit is
// 1 KiB: the skip drops bytes as they come instead of buffering them (a
// second task watches the reader while the skip waits).
TEST(StreamSkipuntil, ARunFarLongerThanTheLimitPassesThrough) {
    run([] {
        int sv[2];
        socket_pair(sv);
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 1024, &r, &w));
        const size_t kRun = 8u << 20;
        std::thread client([&] {
            std::string chunk(65536, 'x');
            for (size_t sent = 0; sent < kRun; sent += chunk.size())
                if (!write_all(sv[1], chunk.data(), chunk.size())) return;
            write_all(sv[1], "\r\nend\n", 6);
        });
        bool done = false;
        size_t peak = 0, samples = 0;
        auto watch = [&]() -> int {
            while (!done) {
                peak = std::max(peak, evs_reader_buffered(r));
                samples++;
                if (evs_sleep(0.0002) < 0) return -1;
            }
            return 0;
        };
        evs_task *watcher = spawn(watch);
        EXPECT_EQ((ssize_t)kRun + 2, evs_skipuntil(r, "\r\n", 2));
        done = true;
        EXPECT_EQ(0, join(watcher));
        EXPECT_GT(samples, 0u);
        EXPECT_LT(peak, (size_t)1 << 20);  // a few reads' worth, never the run
        EXPECT_LE(evs_reader_buffered(r), 4u);
        EXPECT_EQ("end\n", readline_str(r));
        evs_writer_free(w);  // first: a client still sending then fails
        client.join();
        close(sv[1]);
    });
}

TEST(StreamSkipuntil, AtEofWithoutTheSeparatorEverythingIsGone) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc\r");
        c.eof();
        EXPECT_EQ(EVS_EINCOMPLETE, evs_skipuntil(c.r, "\r\n", 2));
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0u, evs_reader_partial(c.r, nullptr));
    });
}

TEST(StreamSkipuntil, AnEmptySeparatorIsInvalidAndSkipsNothing) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("ab\n");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 3; }));
        EXPECT_EQ(-EINVAL, evs_skipuntil(c.r, "", 0));
        EXPECT_EQ(-EINVAL, evs_skipuntil(c.r, nullptr, 1));
        EXPECT_EQ("ab\n", readline_str(c.r));
    });
}

/* --- views, limits, at_eof ------------------------------------------ */

// A view from readline must survive the task parking while the loop reads
// more into the reader. Both lines are queued before the stream exists, so
// they land in one buffer and the second view sits near its end: the next
// reads must not move it (slide it to the front, or move it to bigger
// memory and free the old).
void check_view_survives_parking(size_t second_len, size_t more_len) {
    run([&] {
        int sv[2];
        socket_pair(sv);
        std::string first = std::string(99999, 'a') + "\n";
        std::string second = std::string(second_len - 1, 'b') + "\n";
        std::string both = first + second;
        ASSERT_TRUE(write_all(sv[1], both.data(), both.size()));
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 1 << 20, &r, &w));
        const void *line;
        ASSERT_EQ((ssize_t)first.size(), evs_readline(r, &line));
        ASSERT_EQ((ssize_t)second.size(), evs_readline(r, &line));
        EXPECT_EQ(second, view_str(line, (ssize_t)second.size()));
        std::string more = pattern(more_len, 17);
        std::thread sender([&] { EXPECT_TRUE(write_all(sv[1], more.data(), more.size())); });
        bool all = wait_until([&] { return evs_reader_buffered(r) == more.size(); });
        sender.join();
        ASSERT_TRUE(all);
        EXPECT_EQ(second, view_str(line, (ssize_t)second.size()));
        std::vector<char> buf(more.size());
        ASSERT_EQ((ssize_t)more.size(), evs_readexactly(r, buf.data(), buf.size()));
        EXPECT_TRUE(more == std::string(buf.data(), buf.size()));
        evs_writer_free(w);
        close(sv[1]);
    });
}

TEST(StreamReader, ViewStaysValidWhileTheTaskParks_ChunkWouldBeRealigned) {
    // A short view and little room left: sliding the bytes to the front
    // would let the new data overwrite the view.
    check_view_survives_parking(12, 110000);
}

TEST(StreamReader, ViewStaysValidWhileTheTaskParks_ChunkWouldBeReallocated) {
    // A view of a few KiB: the bytes move to bigger memory, and the old
    // memory must outlive the view.
    check_view_survives_parking(3000, 70000);
}

TEST(StreamReader, ViewsSurviveParkingDuringALongStreamOfLines) {
    // Lines of many lengths; after each readline the task parks (the loop
    // reads more into the buffer) and only then checks the view.
    std::string all;
    std::vector<std::string> lines;
    std::string noise = pattern(8192, 31);
    std::replace(noise.begin(), noise.end(), '\n', '.');
    for (size_t i = 0, len = 1; all.size() < (4u << 20); i++, len = (len * 7919 + 13) % 6000) {
        lines.push_back(noise.substr(i % 1000, len) + "\n");
        all += lines.back();
    }
    run([&] {
        Conn c(Kind::Pair);
        ASSERT_TRUE(c.ok());
        int fd = c.peer;
        std::thread sender([&] { EXPECT_TRUE(write_all(fd, all.data(), all.size())); });
        size_t bad = 0, n = 0;
        for (const std::string &expect : lines) {
            const void *line;
            ssize_t len = evs_readline(c.r, &line);
            if (len != (ssize_t)expect.size()) break;
            if (evs_yield() < 0) break;
            if (memcmp(line, expect.data(), expect.size()) != 0) bad++;
            n++;
        }
        sender.join();
        EXPECT_EQ(lines.size(), n);
        EXPECT_EQ(0u, bad);
    });
}

// A task that parks with a view out while the peer keeps the reader busy:
// the loop reads behind the view, and when the memory fills, only what is
// still buffered moves. Memory follows what is buffered (at most about
// twice the limit here), not the 4.8 MB that went through; sizing the
// new memory by the old one grew it past 6 MB.
TEST(StreamReader, MemoryStaysBoundedWhileTheTaskParksWithAView) {
    run([] {
        int sv[2];
        socket_pair(sv);
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 0, &r, &w));
        const size_t kLine = 16000, kLines = 300;
        std::string line = std::string(kLine - 1, 'x') + "\n";
        std::thread client([&] {
            for (size_t i = 0; i < kLines; i++)
                if (!write_all(sv[1], line.data(), line.size())) break;
        });
        auto heap = [] {
            struct mallinfo2 m = mallinfo2();
            return m.uordblks + m.hblkhd;
        };
        size_t base = heap(), peak = base;
        size_t lines = 0;
        for (; lines < kLines; lines++) {
            const void *v;
            if (evs_readline(r, &v) != (ssize_t)kLine) break;
            EXPECT_EQ(0, evs_sleep(0.0001));  // parks with the view out
            EXPECT_EQ('x', static_cast<const char *>(v)[0]);
            EXPECT_EQ('\n', static_cast<const char *>(v)[kLine - 1]);
            peak = std::max(peak, heap());
        }
        client.join();
        EXPECT_EQ(kLines, lines);
        EXPECT_LT(peak - base, (size_t)1 << 20);
        evs_writer_free(w);
        close(sv[1]);
    });
}

TEST(StreamReader, LimitDefaultsTo64KiBAndCanBeChanged) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        EXPECT_EQ((size_t)EVS_STREAM_LIMIT_DEFAULT, evs_reader_limit(c.r));
        EXPECT_EQ(65536u, evs_reader_limit(c.r));
        EXPECT_EQ(-EINVAL, evs_reader_set_limit(c.r, 0));
        EXPECT_EQ(0, evs_reader_set_limit(c.r, 100));
        EXPECT_EQ(100u, evs_reader_limit(c.r));
        Conn d(Kind::Pair, 4096);
        ASSERT_TRUE(d.ok());
        EXPECT_EQ(4096u, evs_reader_limit(d.r));
    });
}

// The reader's memory is a worker block taken when bytes arrive and given
// back when the reader is empty: a request/response exchange reuses one
// pooled block (no allocation per read) and a parked, empty reader holds
// none.
TEST(StreamReader, AnEmptyReaderGivesItsBlockBackToTheWorker) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        evs_worker *wk = evs_worker_current();
        ASSERT_NE(nullptr, wk);
        for (int large = 0; large < 2; large++)  // one of each size in the pool
            probe_block_put(wk, probe_block_get(wk, large), large);
        auto pooled = [&] { return probe_blocks_kept(wk, 0) + probe_blocks_kept(wk, 1); };
        const int before = pooled();
        for (int i = 0; i < 50; i++) {
            std::string line = "request " + std::to_string(i) + "\n";
            c.send(line);
            const void *view;
            ASSERT_EQ((ssize_t)line.size(), evs_readline(c.r, &view));
            EXPECT_EQ(line, view_str(view, (ssize_t)line.size()));
            EXPECT_EQ(before - 1, pooled()) << "the view's block comes from the pool";
        }
        evs_task_set_timeout(evs_task_current(), 0.05);
        const void *view;
        EXPECT_EQ(-ETIMEDOUT, evs_readline(c.r, &view));
        evs_task_set_timeout(evs_task_current(), kMainTimeout);
        EXPECT_EQ(before, pooled()) << "a parked, empty reader holds no block";
    });
}

TEST(StreamReader, AtEofOnlyAfterEofWithAnEmptyBuffer) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        EXPECT_FALSE(evs_at_eof(c.r));
        c.send("ab");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 2; }));
        EXPECT_FALSE(evs_at_eof(c.r));
        c.eof();
        EXPECT_EQ(0, evs_sleep(0.05));
        EXPECT_FALSE(evs_at_eof(c.r));  // EOF received, but data is buffered
        char buf[4];
        ASSERT_EQ(1, evs_read(c.r, buf, 1));
        EXPECT_FALSE(evs_at_eof(c.r));
        ASSERT_EQ(1, evs_read(c.r, buf, 1));
        // No parking since the check above: EOF was already known then.
        EXPECT_TRUE(evs_at_eof(c.r));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_TRUE(evs_at_eof(c.r));
    });
}

/* --- errors, concurrency, cancel, timeout ---------------------------- */

TEST(StreamReader, ResetDeliversBufferedBytesThenTheError) {
    run([] {
        Conn c(Kind::Tcp);
        ASSERT_TRUE(c.ok());
        c.send("hello\nwor");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 9; }));
        c.reset();
        ASSERT_TRUE(wait_until([&] { return evs_transport_get_fd(evs_writer_transport(c.w)) < 0; }));
        EXPECT_FALSE(evs_at_eof(c.r));
        // read_to_eof fails on the error and leaves the bytes in the reader.
        char buf[32];
        EXPECT_EQ(-ECONNRESET, evs_read_to_eof(c.r, buf, sizeof buf));
        EXPECT_EQ(9u, evs_reader_buffered(c.r));
        EXPECT_EQ("hello\n", readline_str(c.r));
        // A partial readexactly fails with the error and loses nothing.
        EXPECT_EQ(-ECONNRESET, evs_readexactly(c.r, buf, 10));
        EXPECT_EQ(3u, evs_reader_buffered(c.r));
        ASSERT_EQ(3, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("wor", std::string(buf, 3));
        EXPECT_EQ(-ECONNRESET, evs_read(c.r, buf, sizeof buf));
        const void *line;
        EXPECT_EQ(-ECONNRESET, evs_readline(c.r, &line));
        EXPECT_EQ(-ECONNRESET, evs_readuntil(c.r, "x", 1, &line));
        EXPECT_FALSE(evs_at_eof(c.r));  // a reset is not EOF
        EXPECT_LT(evs_write(c.w, "x", 1), 0);
        EXPECT_TRUE(evs_is_closing(c.w));
        EXPECT_EQ(-ECONNRESET, evs_wait_closed(c.w));
    });
}

TEST(StreamReader, PeerCloseWithUnreadDataOnASocketpairIsAnErrorNotEof) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        // The peer leaves our bytes unread and closes: AF_UNIX reports
        // ECONNRESET to us.
        ASSERT_EQ(0, evs_write(c.w, "unread", 6));
        c.send("abc");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 3; }));
        close(c.peer);
        c.peer = -1;
        char buf[8];
        ASSERT_EQ(3, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("abc", std::string(buf, 3));
        ssize_t rc = evs_read(c.r, buf, sizeof buf);
        EXPECT_EQ(-ECONNRESET, rc);
        EXPECT_FALSE(evs_at_eof(c.r));
    });
}

TEST(StreamReader, SecondReaderWhileOneIsParkedGetsEbusy) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string got;
        auto first = [&]() -> int {
            char b[16];
            ssize_t n = evs_read(c.r, b, sizeof b);
            if (n > 0) got.assign(b, (size_t)n);
            return (int)n;
        };
        evs_task *a = spawn(first);
        EXPECT_EQ(0, evs_sleep(0.01));  // a is parked in evs_read now
        char buf[16];
        const void *v;
        EXPECT_EQ(-EBUSY, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ(-EBUSY, evs_readexactly(c.r, buf, 4));
        EXPECT_EQ(-EBUSY, evs_readline(c.r, &v));
        EXPECT_EQ(-EBUSY, evs_readuntil(c.r, "!", 1, &v));
        EXPECT_EQ(-EBUSY, evs_read_to_eof(c.r, buf, sizeof buf));
        c.send("data");
        EXPECT_EQ(4, join(a));
        EXPECT_EQ("data", got);
        // Once nobody is parked, reading works again.
        c.send("more");
        ASSERT_EQ(4, evs_read(c.r, buf, sizeof buf));
        EXPECT_EQ("more", std::string(buf, 4));
    });
}

TEST(StreamReader, CancelWhileParkedLeavesLaterDataReadable) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 3; }));
        auto reader = [&]() -> int {
            char b[6];
            return (int)evs_readexactly(c.r, b, 6);
        };
        evs_task *a = spawn(reader);
        EXPECT_EQ(0, evs_sleep(0.01));
        evs_task_cancel(a);
        EXPECT_EQ(-ECANCELED, join(a));
        EXPECT_EQ(3u, evs_reader_buffered(c.r));
        c.send("def");
        char buf[6];
        ASSERT_EQ(6, evs_readexactly(c.r, buf, 6));
        EXPECT_EQ("abcdef", std::string(buf, 6));
    });
}

// A reader that was woken (here by a cancel) is off the wait list but still
// inside its call, its buffer lent: a second reader must be refused until
// it has run, and no byte may be lost or land in the wrong buffer.
TEST(StreamReader, WokenReaderStillOwnsTheReaderUntilItRuns) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        char abuf[16];
        memset(abuf, '?', sizeof abuf);
        auto first = [&]() -> int { return (int)evs_read(c.r, abuf, sizeof abuf); };
        evs_task *a = spawn(first);
        EXPECT_EQ(0, evs_sleep(0.01));  // a is parked in evs_read, abuf lent
        c.send("hello");
        evs_task_cancel(a);
        char buf[16];
        EXPECT_EQ(-EBUSY, evs_read(c.r, buf, sizeof buf));
        int ra = join(a);
        std::string got;
        if (ra == 5) {
            got.assign(abuf, 5);  // the bytes reached a before it ran
        } else {
            EXPECT_EQ(-ECANCELED, ra);
            ssize_t n = evs_read(c.r, buf, sizeof buf);
            ASSERT_EQ(5, n);
            got.assign(buf, 5);
        }
        EXPECT_EQ("hello", got);
    });
}

// An upgrade the transport refuses (here: after write_eof) leaves the bytes
// the reader had buffered where they were.
TEST(StreamReader, RefusedStartTlsKeepsTheBufferedBytes) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        evs_tls_client_options o{};
        o.no_verify = true;
        evs_tls_context *ctx = nullptr;
        char err[256];
        ASSERT_EQ(0, evs_tls_client_context_new(&o, &ctx, err, sizeof err)) << err;
        c.send("abc\n");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 4; }));
        ASSERT_EQ(0, evs_write_eof(c.w));
        EXPECT_EQ(-EPIPE, evs_start_tls(c.w, ctx, false, nullptr));
        EXPECT_EQ(4u, evs_reader_buffered(c.r));
        const void *line;
        ASSERT_EQ(4, evs_readline(c.r, &line));
        EXPECT_EQ("abc\n", std::string(static_cast<const char *>(line), 4));
        evs_tls_context_unref(ctx);
    });
}

TEST(StreamReader, CancelledReadThenDataArrivesLater) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        auto reader = [&]() -> int {
            char b[8];
            return (int)evs_read(c.r, b, sizeof b);
        };
        evs_task *a = spawn(reader);
        EXPECT_EQ(0, evs_sleep(0.01));
        evs_task_cancel(a);
        EXPECT_EQ(-ECANCELED, join(a));
        c.send("late\n");
        EXPECT_EQ("late\n", readline_str(c.r));
    });
}

TEST(StreamReader, TaskTimeoutReturnsEtimedoutAndLosesNothing) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        c.send("abc");
        ASSERT_TRUE(wait_until([&] { return evs_reader_buffered(c.r) == 3; }));
        evs_task_set_timeout(evs_task_current(), 0.05);
        char buf[8];
        const void *v;
        EXPECT_EQ(-ETIMEDOUT, evs_readexactly(c.r, buf, 6));
        EXPECT_EQ(-ETIMEDOUT, evs_readline(c.r, &v));
        EXPECT_EQ(-ETIMEDOUT, evs_readuntil(c.r, "\r\n", 2, &v));
        EXPECT_EQ(-ETIMEDOUT, evs_read_to_eof(c.r, buf, sizeof buf));
        EXPECT_EQ(3u, evs_reader_buffered(c.r));
        evs_task_set_timeout(evs_task_current(), kMainTimeout);
        c.send("def\n");
        ASSERT_EQ(6, evs_readexactly(c.r, buf, 6));
        EXPECT_EQ("abcdef", std::string(buf, 6));
        EXPECT_EQ("\n", readline_str(c.r));
        // An empty reader times out in evs_read too, and reads afterwards.
        evs_task_set_timeout(evs_task_current(), 0.05);
        EXPECT_EQ(-ETIMEDOUT, evs_read(c.r, buf, sizeof buf));
        evs_task_set_timeout(evs_task_current(), kMainTimeout);
        c.send("z");
        EXPECT_EQ(1, evs_read(c.r, buf, sizeof buf));
    });
}

/* --- StreamWriter ----------------------------------------------------- */

TEST(StreamWriter, WriteAndDrain) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        ASSERT_EQ(0, evs_write(c.w, "hello", 5));
        EXPECT_EQ(0, evs_drain(c.w));
        EXPECT_EQ("hello", c.recv_n(5));
        // Nothing to wait for: drain returns 0 at once.
        EXPECT_EQ(0, evs_drain(c.w));
        EXPECT_EQ(0, evs_write(c.w, "", 0));
    });
}

TEST(StreamWriter, WritelinesKeepsOrder) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string big = pattern(1 << 20, 21);
        struct iovec iov[] = {
            {(void *)"one ", 4}, {(void *)big.data(), big.size()}, {(void *)" two", 4}};
        PeerReader pr(c.peer);
        ASSERT_EQ(0, evs_writelines(c.w, iov, 3));
        struct iovec iov2[] = {{(void *)"|three", 6}, {(void *)"|four", 5}};
        ASSERT_EQ(0, evs_writelines(c.w, iov2, 2));
        EXPECT_EQ(0, evs_writelines(c.w, iov2, 0));
        EXPECT_EQ(0, evs_drain(c.w));
        evs_close(c.w);
        EXPECT_EQ(0, evs_wait_closed(c.w));
        pr.join();
        EXPECT_TRUE(pr.eof);
        EXPECT_TRUE(pr.data == "one " + big + " two|three|four");
    });
}

TEST(StreamWriter, DrainParksAboveTheHighWatermarkUntilDrained) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        const size_t high = 16384, low = 4096;
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(c.t(), high, low));
        size_t total = fill_above_high(c, high);
        bool done = false;
        size_t size_at_wake = 0;
        auto drainer = [&]() -> int {
            int rc = evs_drain(c.w);
            size_at_wake = evs_transport_get_write_buffer_size(c.t());
            done = true;
            return rc;
        };
        evs_task *d = spawn(drainer);
        EXPECT_EQ(0, evs_sleep(0.05));
        EXPECT_FALSE(done);  // the peer reads nothing: still parked
        EXPECT_GT(evs_transport_get_write_buffer_size(c.t()), high);
        std::string got = c.recv_n(total);
        EXPECT_EQ(total, got.size());
        EXPECT_EQ(0, join(d));
        EXPECT_TRUE(done);
        EXPECT_LE(size_at_wake, low);
        EXPECT_EQ(0, evs_drain(c.w));
    });
}

TEST(StreamWriter, SeveralTasksDrainingOneWriterAllWake) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        size_t total = queue_above_high(c);
        int woke = 0;
        auto drainer = [&]() -> int {
            int rc = evs_drain(c.w);
            woke++;
            return rc;
        };
        evs_task *d[3] = {spawn(drainer), spawn(drainer), spawn(drainer)};
        EXPECT_EQ(0, evs_sleep(0.05));
        EXPECT_EQ(0, woke);
        EXPECT_EQ(total, c.recv_n(total).size());
        for (evs_task *t : d) EXPECT_EQ(0, join(t));
        EXPECT_EQ(3, woke);
    });
}

TEST(StreamWriter, DrainAfterThePeerResetsReturnsAnError) {
    run([] {
        Conn c(Kind::Tcp);
        ASSERT_TRUE(c.ok());
        queue_above_high(c);
        int rc_parked = 1;
        auto drainer = [&]() -> int { return rc_parked = evs_drain(c.w); };
        evs_task *d = spawn(drainer);
        EXPECT_EQ(0, evs_sleep(0.02));
        EXPECT_EQ(1, rc_parked);
        c.reset();
        // The parked drain wakes with the error (the main task's timeout
        // would end a hang).
        int rc = join(d);
        EXPECT_LT(rc, 0);
        EXPECT_TRUE(rc == -ECONNRESET || rc == -EPIPE) << evs_strerror(rc);
        // Later calls fail at once, with the same error.
        EXPECT_EQ(rc, evs_drain(c.w));
        EXPECT_LT(evs_write(c.w, "x", 1), 0);
        EXPECT_EQ(-EPIPE, evs_write_eof(c.w));
        EXPECT_TRUE(wait_until([&] { return evs_transport_get_fd(evs_writer_transport(c.w)) < 0; }));
        // wait_closed reports the loss, as asyncio's raises it.
        EXPECT_EQ(rc, evs_wait_closed(c.w));
    });
}

TEST(StreamWriter, AnAbortDropsTheQueueAndWaitClosedReturnsZero) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        queue_above_high(c);
        evs_transport_abort(c.t());
        // The queued bytes are dropped: drain says so; the abort itself is
        // no error, so wait_closed returns 0 (asyncio: connection_lost(None)).
        EXPECT_EQ(-EPIPE, evs_drain(c.w));
        EXPECT_EQ(0, evs_wait_closed(c.w));
        EXPECT_TRUE(evs_is_closing(c.w));
    });
}

TEST(StreamWriter, DrainAfterAResetWithNothingQueuedReturnsAnError) {
    run([] {
        Conn c(Kind::Tcp);
        ASSERT_TRUE(c.ok());
        c.reset();
        ASSERT_TRUE(wait_until([&] { return evs_transport_get_fd(evs_writer_transport(c.w)) < 0; }));
        int rc = evs_drain(c.w);
        EXPECT_TRUE(rc == -ECONNRESET || rc == -EPIPE) << evs_strerror(rc);
        EXPECT_LT(evs_write(c.w, "x", 1), 0);
    });
}

TEST(StreamWriter, DrainWhenThePeerClosesASocketpairReturnsAnError) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        queue_above_high(c);
        auto drainer = [&]() -> int { return evs_drain(c.w); };
        evs_task *d = spawn(drainer);
        EXPECT_EQ(0, evs_sleep(0.01));
        close(c.peer);
        c.peer = -1;
        EXPECT_LT(join(d), 0);
        EXPECT_LT(evs_drain(c.w), 0);
    });
}

// A loop that writes and drains, checking only drain (asyncio's idiom),
// ends once the connection fails or closes. drain returned 0 forever: the
// loss comes on a later loop turn and the queue never paused again, so
// the loop never let the worker run (it spun until the watchdog).
TEST(StreamWriter, AWriteThenDrainLoopEndsWhenTheConnectionGoes) {
    enum { Failed, ClosedHere, Aborted };
    for (int how : {Failed, ClosedHere, Aborted}) {
        SCOPED_TRACE(how);
        run([how] {
            Conn c;
            ASSERT_TRUE(c.ok());
            if (how == Failed) {
                close(c.peer);
                c.peer = -1;
            }
            int rc = 0, turns = 0;
            for (; turns < 100000 && rc == 0; turns++) {
                evs_write(c.w, "hello", 5);
                if (turns == 3 && how == ClosedHere) evs_close(c.w);
                if (turns == 3 && how == Aborted) evs_transport_abort(c.t());
                rc = evs_drain(c.w);
            }
            EXPECT_LT(turns, 100000) << "drain never failed";
            EXPECT_EQ(-EPIPE, rc) << evs_strerror(rc);
        });
    }
}

TEST(StreamWriter, WriteAfterCloseIsEpipe) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        ASSERT_EQ(0, evs_write(c.w, "before", 6));
        evs_close(c.w);
        EXPECT_EQ(-EPIPE, evs_write(c.w, "after", 5));
        struct iovec iov = {(void *)"after", 5};
        EXPECT_EQ(-EPIPE, evs_writelines(c.w, &iov, 1));
        EXPECT_EQ(-EPIPE, evs_write_eof(c.w));
        EXPECT_EQ(0, evs_wait_closed(c.w));
        EXPECT_EQ(-EPIPE, evs_write(c.w, "after", 5));
        // Only what was written before the close arrives, then EOF.
        EXPECT_EQ("before", c.recv_n(6));
        EXPECT_TRUE(c.recv_eof());
    });
}

TEST(StreamWriter, WriteAfterWriteEofIsEpipeAndThePeerSeesEofAfterAllData) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string big = pattern(1 << 20, 22);
        // The peer reads to EOF, then answers: reading goes on after write_eof.
        PeerReader pr(c.peer, [](PeerReader &p) {
            if (p.eof) write_all(p.fd, "back", 4);
        });
        ASSERT_EQ(0, evs_write(c.w, big.data(), big.size()));
        EXPECT_EQ(0, evs_write_eof(c.w));
        EXPECT_EQ(-EPIPE, evs_write(c.w, "late", 4));
        struct iovec iov = {(void *)"late", 4};
        EXPECT_EQ(-EPIPE, evs_writelines(c.w, &iov, 1));
        EXPECT_FALSE(evs_is_closing(c.w));
        char buf[8];
        ASSERT_EQ(4, evs_readexactly(c.r, buf, 4));
        EXPECT_EQ("back", std::string(buf, 4));
        pr.join();
        EXPECT_TRUE(pr.eof);
        EXPECT_TRUE(pr.data == big);
    });
}

TEST(StreamWriter, CanWriteEof) {
    run([] {
        for (Kind k : {Kind::Pair, Kind::Tcp, Kind::Unix}) {
            Conn c(k);
            ASSERT_TRUE(c.ok());
            EXPECT_TRUE(evs_can_write_eof(c.w));
        }
    });
}

TEST(StreamWriter, CloseFlushesAndWaitClosedReturns) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        std::string big = pattern(1 << 20, 23);
        PeerReader pr(c.peer);
        ASSERT_EQ(0, evs_write(c.w, big.data(), big.size()));
        evs_close(c.w);
        EXPECT_TRUE(evs_is_closing(c.w));
        evs_close(c.w);  // idempotent
        EXPECT_EQ(0, evs_wait_closed(c.w));
        EXPECT_EQ(-1, evs_transport_get_fd(evs_writer_transport(c.w)));
        EXPECT_EQ(0, evs_wait_closed(c.w));
        pr.join();
        EXPECT_TRUE(pr.eof);
        EXPECT_TRUE(pr.data == big);
    });
}

TEST(StreamWriter, IsClosing) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        EXPECT_FALSE(evs_is_closing(c.w));
        // A half-closed connection (the peer's EOF) is not closing.
        c.eof();
        char buf[4];
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_FALSE(evs_is_closing(c.w));
        EXPECT_EQ(0, evs_write_eof(c.w));
        EXPECT_FALSE(evs_is_closing(c.w));
        evs_close(c.w);
        EXPECT_TRUE(evs_is_closing(c.w));
        EXPECT_EQ(0, evs_wait_closed(c.w));
        EXPECT_TRUE(evs_is_closing(c.w));
    });
}

TEST(StreamWriter, TransportIsAvailableWhileOpen) {
    run([] {
        Conn c(Kind::Tcp);
        ASSERT_TRUE(c.ok());
        evs_transport *t = evs_writer_transport(c.w);
        ASSERT_NE(nullptr, t);
        EXPECT_GE(evs_transport_get_fd(t), 0);
        struct sockaddr_storage ss;
        socklen_t sl;
        EXPECT_EQ(0, evs_transport_get_peername(t, &ss, &sl));
        EXPECT_EQ(AF_INET, ss.ss_family);
        EXPECT_EQ(c.r, evs_writer_reader(c.w));
        size_t low = 0, high = 0;
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ((size_t)EVS_WRITE_HIGH_WATER_DEFAULT, high);
        EXPECT_EQ((size_t)EVS_WRITE_LOW_WATER_DEFAULT, low);
        evs_close(c.w);
        EXPECT_EQ(0, evs_wait_closed(c.w));
        // Still there for its extra info, but gone as a connection.
        EXPECT_EQ(t, evs_writer_transport(c.w));
        EXPECT_EQ(-1, evs_transport_get_fd(t));
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "x", 1));
    });
}

TEST(StreamWriter, SixtyFourMiBToASlowReaderKeepsMemoryBounded) {
    const size_t kChunk = 64 * 1024, kTotal = 64u << 20;
    const size_t kPeriod = 65521;  // prime: chunks never repeat the same bytes
    std::string base = pattern(kPeriod, 24);
    const std::string pp = base + base;
    run([&] {
        Conn c(Kind::Tcp);
        ASSERT_TRUE(c.ok());
        std::atomic<bool> same{true};
        std::atomic<size_t> got{0};
        std::atomic<bool> eof{false};
        int fd = c.peer;
        std::thread slow([&] {
            std::vector<char> buf(8192);
            size_t pos = 0;
            for (int n = 1;; n++) {
                ssize_t k = ::recv(fd, buf.data(), buf.size(), 0);
                if (k < 0 && errno == EINTR) continue;
                if (k <= 0) {
                    eof = k == 0;
                    break;
                }
                if (memcmp(buf.data(), &pp[pos % kPeriod], (size_t)k) != 0) same = false;
                pos += (size_t)k;
                if (n % 8 == 0) usleep(200);
            }
            got = pos;
        });
        size_t high = 0;
        evs_transport_get_write_buffer_limits(c.t(), nullptr, &high);
        size_t max_after_write = 0, max_after_drain = 0, parked = 0;
        bool failed = false;
        for (size_t off = 0; off < kTotal && !failed; off += kChunk) {
            int rc = evs_write(c.w, &pp[off % kPeriod], kChunk);
            size_t queued = evs_transport_get_write_buffer_size(c.t());
            max_after_write = std::max(max_after_write, queued);
            if (queued > high) parked++;
            int rd = evs_drain(c.w);
            max_after_drain = std::max(max_after_drain, evs_transport_get_write_buffer_size(c.t()));
            if (rc != 0 || rd != 0) {
                ADD_FAILURE() << "write " << rc << " drain " << rd << " at " << off;
                failed = true;
            }
        }
        evs_close(c.w);
        EXPECT_EQ(0, evs_wait_closed(c.w));
        if (failed) shutdown(fd, SHUT_RDWR);
        slow.join();
        EXPECT_EQ(kTotal, got.load());
        EXPECT_TRUE(eof.load());
        EXPECT_TRUE(same.load());
        EXPECT_LE(max_after_drain, high);
        EXPECT_LE(max_after_write, high + kChunk);
        // The reader was slow enough for drain to park (flow control ran).
        EXPECT_GT(parked, 0u);
    });
}

/* --- the same basics over every kind of socket ----------------------- */

class StreamKinds : public ::testing::TestWithParam<Kind> {};

TEST_P(StreamKinds, LineProtocolRoundTripAndOrderlyClose) {
    Kind k = GetParam();
    run([k] {
        Conn c(k);
        ASSERT_TRUE(c.ok());
        c.send("ping\nsecond line\n");
        EXPECT_EQ("ping\n", readline_str(c.r));
        EXPECT_EQ("second line\n", readline_str(c.r));
        ASSERT_EQ(0, evs_write(c.w, "pong\n", 5));
        ASSERT_EQ(0, evs_drain(c.w));
        EXPECT_EQ("pong\n", c.recv_n(5));
        c.send("tail");
        c.eof();
        char buf[16];
        EXPECT_EQ(4, evs_readexactly(c.r, buf, 4));
        EXPECT_EQ(0, evs_read(c.r, buf, sizeof buf));
        EXPECT_TRUE(evs_at_eof(c.r));
        // Half-open: we can still write after the peer's EOF.
        ASSERT_EQ(0, evs_write(c.w, "bye", 3));
        evs_close(c.w);
        EXPECT_EQ(0, evs_wait_closed(c.w));
        EXPECT_EQ("bye", c.recv_n(3));
        EXPECT_TRUE(c.recv_eof());
    });
}

INSTANTIATE_TEST_CASE_P(AllSockets, StreamKinds,
                        ::testing::Values(Kind::Pair, Kind::Tcp, Kind::Unix),
                        [](const ::testing::TestParamInfo<Kind> &i) -> std::string {
                            return i.param == Kind::Pair  ? "Socketpair"
                                   : i.param == Kind::Tcp ? "Tcp"
                                                          : "Unix";
                        });

// A read the buffer can satisfy returns without parking: another ready task
// does not get to run in between.
TEST(StreamReaderFastPath, BufferedReadsDoNotSwitchTasks) {
    static int other_ran;
    other_ran = 0;
    int rc = run_task(
        [](void *) -> int {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return 1;
            evs_reader *r;
            evs_writer *w;
            if (evs_stream_open_fd(sv[0], 0, &r, &w) != 0) return 2;
            const char msg[] = "one\ntwo\nthree-four";
            if (send(sv[1], msg, sizeof msg - 1, 0) != (ssize_t)sizeof msg - 1) return 3;
            char c;
            if (evs_read(r, &c, 1) != 1) return 4;  // parks once: the bytes arrive
            evs_task_spawn([](void *) -> int { other_ran = 1; return 0; }, nullptr, nullptr);
            const void *line;
            char buf[8];
            bool ok = evs_readline(r, &line) == 3 &&             // "ne\n"
                      evs_readuntil(r, "\n", 1, &line) == 4 &&    // "two\n"
                      evs_readexactly(r, buf, 5) == 5 &&          // "three"
                      evs_read(r, buf, sizeof buf) == 5 &&        // "-four"
                      other_ran == 0;                             // nobody else ran
            evs_yield();
            ok = ok && other_ran == 1;
            close(sv[1]);
            evs_writer_free(w);
            return ok ? 0 : 5;
        },
        nullptr);
    EXPECT_EQ(0, rc);
}

// The per-task timeout bounds a call, not each of its waits: a
// readexactly() that keeps getting one byte at a time, each within the
// bound, still returns -ETIMEDOUT once the call has taken the bound.
TEST(StreamReader, TaskTimeoutBoundsTheWholeReadexactly) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        Feeder f{c.peer, {"a", "b", "c", "d", "e", "f", "g", "h"}, false, 0.1};
        evs_task *ft = spawn(f);
        evs_task_set_timeout(evs_task_current(), 0.25);
        char buf[16];
        ssize_t n = evs_readexactly(c.r, buf, 8);
        evs_task_set_timeout(evs_task_current(), kMainTimeout);
        EXPECT_EQ(-ETIMEDOUT, n);
        // The bytes that came stay buffered for the next read.
        ASSERT_EQ(8, evs_readexactly(c.r, buf, 8));
        EXPECT_EQ("abcdefgh", std::string(buf, 8));
        join(ft);
    });
}

// --- releasing a pair that tasks still wait on ------------------------------

// evs_writer_free() from one task while others are parked in calls on the
// pair: the loss wakes them, and they return from their calls (the reader
// at EOF, drain and wait_closed done) on a pair that is freed only after
// the last of them left. It was freed under them (ASan: use after free).
TEST(StreamWriter, FreeingThePairWakesTheTasksParkedOnIt) {
    run([] {
        Conn c;
        ASSERT_TRUE(c.ok());
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(c.t(), 4096, 0));
        std::string big(1 << 20, 'x');
        ASSERT_EQ(0, evs_write(c.w, big.data(), big.size()));  // the peer reads later
        char buf[8];
        auto reader = [&] { return (int)evs_read(c.r, buf, sizeof buf); };
        auto drainer = [&] { return evs_drain(c.w); };
        auto closer = [&] { return evs_wait_closed(c.w); };
        evs_task *rt = spawn(reader), *dt = spawn(drainer), *ct = spawn(closer);
        EXPECT_EQ(0, evs_sleep(0.05));  // all three parked
        evs_writer_free(c.w);
        c.w = nullptr;
        // The close flushes what is queued: let the peer take it all.
        std::thread sink([&] {
            char b[65536];
            while (::recv(c.peer, b, sizeof b, 0) > 0) {
            }
        });
        EXPECT_EQ(0, join(rt));  // EOF: our own close
        EXPECT_EQ(0, join(dt));  // every byte went out
        EXPECT_EQ(0, join(ct));
        shutdown(c.peer, SHUT_RDWR);
        sink.join();
    });
}

// A task parked in readline or readuntil with an unterminated line buffered
// is woken at EOF when another task frees the pair: it gets the line (or,
// from readuntil, the partial bytes), readable until it next waits, and a
// call it makes before it waits finds EOF. The pair and its buffer were
// freed before the call returned (ASan: a read of freed memory).
TEST(StreamWriter, FreeingThePairLeavesAWokenReadersBytesReadable) {
    run([] {
        for (bool readline : {true, false}) {
            Conn c;
            ASSERT_TRUE(c.ok());
            std::string got;
            auto reader = [&] {
                const void *p = nullptr;
                ssize_t n = readline ? evs_readline(c.r, &p) : evs_readuntil(c.r, "\r\n", 2, &p);
                if (n == EVS_EINCOMPLETE) n = (ssize_t)evs_reader_partial(c.r, &p);
                if (n > 0) got.assign((const char *)p, (size_t)n);
                // A reader loop asks once more before it learns of the end:
                // EOF, and the pair is freed once, after the task waits.
                if (readline) {
                    EXPECT_EQ(0, evs_readline(c.r, &p));
                }
                return (int)n;
            };
            evs_task *rt = spawn(reader);
            c.send("no end");
            while (evs_reader_buffered(c.r) < 6) EXPECT_EQ(0, evs_sleep(0.001));
            evs_writer_free(c.w);
            c.w = nullptr;
            EXPECT_EQ(6, join(rt)) << (readline ? "readline" : "readuntil");
            EXPECT_EQ("no end", got) << (readline ? "readline" : "readuntil");
        }
    });
}

// Pairs left open when evs_run()'s function returns (some already lost,
// some aborted by evs_run) are freed with the loop: nothing could free them
// once the loop is gone. They leaked, with their transports.
TEST(StreamWriter, PairsLeftOpenAreFreedWithTheLoop) {
    auto leave_pairs_open = [] {
        for (int i = 0; i < 200; i++) {
            int sv[2];
            evs_reader *r;
            evs_writer *w;
            socket_pair(sv);
            ASSERT_EQ(0, evs_stream_open_fd(sv[0], 0, &r, &w));
            close(sv[1]);  // half of them are lost before the loop ends
            if (i % 2) {
                char c;
                EXPECT_EQ(0, evs_read(r, &c, 1));
            }
        }
    };
    auto heap = [] {
        struct mallinfo2 m = mallinfo2();
        return m.uordblks + m.hblkhd;
    };
    run(leave_pairs_open);  // warms up what stays allocated (thread caches)
    size_t base = heap();
    for (int i = 0; i < 3; i++) run(leave_pairs_open);
    // 600 pairs with their transports are over 400 KB.
    EXPECT_LT(heap() - base, (size_t)64 << 10);
}
