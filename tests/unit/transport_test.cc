// Transports and protocols (protocol mode): the seed's state machine,
// write/writelines/write_eof/close/abort, reading control, write flow
// control and its watermarks, extra info, protocol switching, the buffered
// protocol, callbacks that close their own transport, peer resets and
// evs_format_address. Everything runs over real sockets (socketpair, TCP on
// 127.0.0.1, Unix sockets in a temp dir) inside evs_run().
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <climits>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"

using namespace evs_test;

namespace {

// ---------------------------------------------------------------------------
// Recording protocol

struct Rec {
    std::vector<std::string> order;  // "made", "data", "eof", "lost", "gb", "bu"
    int made = 0, data_calls = 0, eof = 0, lost = 0, pause = 0, resume = 0;
    int gb = 0, bu = 0, bu_zero = 0;
    int after_lost = 0;   // callbacks seen after connection_lost
    int after_eof = 0;    // data callbacks seen after eof_received
    int lost_err = INT_MIN;
    bool closing_in_lost = false;
    int write_in_lost = INT_MIN;
    std::string data;
    evs_transport *t = nullptr;
    evs_transport *t_in_made = nullptr;
    bool keep_open = false;
    size_t sizehint = 0;
    std::vector<char> buf = std::vector<char>(1000);
    bool gb_null = false, gb_zero = false;
    size_t size_at_pause = SIZE_MAX, size_at_resume = SIZE_MAX;
    std::function<void(Rec &)> on_made, on_eof, on_pause, on_resume, on_lost;
    std::function<void(Rec &, const void *, size_t)> on_data;

    void seen(const char *what) {
        if (lost) after_lost++;
        order.push_back(what);
    }
};

Rec *R(void *ctx) { return static_cast<Rec *>(ctx); }

void cb_made(evs_transport *t, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("made");
    r.made++;
    r.t_in_made = t;
    r.t = t;
    if (r.on_made) r.on_made(r);
}

void cb_data(evs_transport *, const void *d, size_t n, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("data");
    if (r.eof) r.after_eof++;
    r.data_calls++;
    EXPECT_GT(n, 0u);
    r.data.append(static_cast<const char *>(d), n);
    if (r.on_data) r.on_data(r, d, n);
}

bool cb_eof(evs_transport *, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("eof");
    r.eof++;
    if (r.on_eof) r.on_eof(r);
    return r.keep_open;
}

void cb_lost(evs_transport *t, int err, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("lost");
    r.lost++;
    r.lost_err = err;
    r.closing_in_lost = evs_transport_is_closing(t);
    r.write_in_lost = evs_transport_write(t, "x", 1);
    if (r.on_lost) r.on_lost(r);
}

void cb_pause(evs_transport *t, void *ctx) {
    Rec &r = *R(ctx);
    if (r.lost) r.after_lost++;
    r.pause++;
    r.size_at_pause = evs_transport_get_write_buffer_size(t);
    if (r.on_pause) r.on_pause(r);
}

void cb_resume(evs_transport *t, void *ctx) {
    Rec &r = *R(ctx);
    if (r.lost) r.after_lost++;
    r.resume++;
    r.size_at_resume = evs_transport_get_write_buffer_size(t);
    if (r.on_resume) r.on_resume(r);
}

void *cb_get_buffer(evs_transport *, size_t hint, size_t *len, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("gb");
    if (r.eof) r.after_eof++;
    r.gb++;
    r.sizehint = hint;
    if (r.gb_null) return nullptr;
    *len = r.gb_zero ? 0 : r.buf.size();
    return r.buf.data();
}

void cb_buffer_updated(evs_transport *, size_t n, void *ctx) {
    Rec &r = *R(ctx);
    r.seen("bu");
    if (r.eof) r.after_eof++;
    r.bu++;
    if (n == 0) r.bu_zero++;
    EXPECT_LE(n, r.buf.size());
    r.data.append(r.buf.data(), n);
}

evs_protocol make_proto(bool with_eof = true) {
    evs_protocol p;
    memset(&p, 0, sizeof p);
    p.connection_made = cb_made;
    p.data_received = cb_data;
    p.eof_received = with_eof ? cb_eof : nullptr;
    p.connection_lost = cb_lost;
    p.pause_writing = cb_pause;
    p.resume_writing = cb_resume;
    return p;
}

const evs_protocol kProto = make_proto();
const evs_protocol kProtoNoEof = make_proto(false);

evs_protocol make_buffered() {
    evs_protocol p = make_proto();
    p.get_buffer = cb_get_buffer;
    p.buffer_updated = cb_buffer_updated;
    return p;
}
const evs_protocol kBuffered = make_buffered();

// ---------------------------------------------------------------------------
// Running code inside evs_run and driving the peer

int trampoline(void *arg) {
    (*static_cast<std::function<void()> *>(arg))();
    return 0;
}

// Runs f as evs_run's main task.
void in_loop(std::function<void()> f) {
    int rc = -1;
    ASSERT_EQ(0, evs_run(trampoline, &f, &rc));
    EXPECT_EQ(0, rc);
}

using Clock = std::chrono::steady_clock;

// Poll pred, letting the loop run between polls; bounded (never hangs).
bool wait_for(const std::function<bool()> &pred, double seconds = 10) {
    auto end = Clock::now() + std::chrono::milliseconds((long)(seconds * 1000));
    while (!pred()) {
        if (Clock::now() > end) return false;
        evs_sleep(0.002);
    }
    return true;
}

// Let the loop turn a few times (lets deferred callbacks run).
void settle(int turns = 5) {
    for (int i = 0; i < turns; i++) evs_sleep(0.002);
}

// Non-blocking read of whatever the peer has now. Returns false on EOF/error.
bool peer_read_avail(int fd, std::string &out) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            out.append(buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

// Read until EOF (or error), keeping the loop running; bounded.
// Returns true when a clean EOF was seen.
bool peer_read_to_eof(int fd, std::string &out, double seconds = 10) {
    bool eof = false;
    wait_for(
        [&] {
            if (!peer_read_avail(fd, out)) {
                eof = true;
                return true;
            }
            return false;
        },
        seconds);
    return eof;
}

// Read at least n bytes, keeping the loop running; bounded.
bool peer_read_n(int fd, std::string &out, size_t n, double seconds = 10) {
    return wait_for(
        [&] {
            peer_read_avail(fd, out);
            return out.size() >= n;
        },
        seconds);
}

bool peer_send(int fd, const std::string &s) {
    return send(fd, s.data(), s.size(), MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)s.size();
}

// Nothing readable right now (and not EOF)?
bool peer_nothing(int fd) {
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

// Small kernel buffers so a modest write fills the socket.
void small_bufs(int fd) {
    int sz = 16 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
}

bool fd_is_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

// Connected TCP pair on 127.0.0.1: *server is the accepted end.
void tcp_pair(int *server, int *client) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(l, 0);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(l, (struct sockaddr *)&sin, sizeof sin));
    ASSERT_EQ(0, listen(l, 4));
    socklen_t sl = sizeof sin;
    ASSERT_EQ(0, getsockname(l, (struct sockaddr *)&sin, &sl));
    *client = connect_tcp(ntohs(sin.sin_port));
    ASSERT_GE(*client, 0);
    *server = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(*server, 0);
    close(l);
}

struct Pair {
    int sv[2] = {-1, -1};
    Pair() { socket_pair(sv); }
    ~Pair() {
        if (sv[1] >= 0) close(sv[1]);
    }
    int mine() { int fd = sv[0]; sv[0] = -1; return fd; }  // handed to the transport
    int peer() const { return sv[1]; }
};

// Wrap @p fd and return the transport (asserting success).
evs_transport *wrap(int fd, Rec &r, const evs_protocol *p = &kProto) {
    evs_transport *t = nullptr;
    EXPECT_EQ(0, evs_transport_new(fd, p, &r, &t));
    EXPECT_NE(nullptr, t);
    return t;
}

bool lost_once(Rec &r) { return wait_for([&] { return r.lost > 0; }); }

// Fill the transport until the kernel refuses and something is queued.
size_t fill_until_queued(evs_transport *t, size_t chunk = 256 * 1024) {
    std::string s = pattern(chunk, 7);
    for (int i = 0; i < 64 && evs_transport_get_write_buffer_size(t) == 0; i++)
        EXPECT_EQ(0, evs_transport_write(t, s.data(), s.size()));
    return evs_transport_get_write_buffer_size(t);
}

}  // namespace

// ===========================================================================
// Creation and the state machine

TEST(Transport, NewRejectsNullProtocolAndClosesFd) {
    in_loop([] {
        int sv[2];
        socket_pair(sv);
        evs_transport *t = nullptr;
        EXPECT_EQ(-EINVAL, evs_transport_new(sv[0], nullptr, nullptr, &t));
        // The transport owns the fd even on failure.
        EXPECT_FALSE(fd_is_open(sv[0]));
        close(sv[1]);
    });
}

TEST(Transport, NewOutsideALoopIsEinvalAndClosesFd) {
    int sv[2];
    socket_pair(sv);
    Rec r;
    evs_transport *t = nullptr;
    EXPECT_EQ(-EINVAL, evs_transport_new(sv[0], &kProto, &r, &t));
    EXPECT_FALSE(fd_is_open(sv[0]));
    EXPECT_EQ(0, r.made);
    close(sv[1]);
}

TEST(Transport, ConnectionMadeCalledInsideNewWithTheTransport) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(p.mine(), &kProto, &r, &t));
        EXPECT_EQ(1, r.made);
        EXPECT_EQ(t, r.t_in_made);
        EXPECT_FALSE(evs_transport_is_closing(t));
        EXPECT_TRUE(evs_transport_is_reading(t));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.lost);
}

TEST(Transport, StateMachineOrderExactlyOnceEach) {
    Rec r;
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        ASSERT_TRUE(peer_send(p.peer(), "hello"));
        ASSERT_TRUE(wait_for([&] { return r.data.size() >= 5; }));
        ASSERT_TRUE(peer_send(p.peer(), " world"));
        ASSERT_TRUE(wait_for([&] { return r.data.size() >= 11; }));
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        settle();
        // eof_received returned false: the transport closed, the peer sees EOF.
        std::string rest;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), rest));
        EXPECT_EQ("", rest);
    });
    ASSERT_GE(r.order.size(), 4u);
    EXPECT_EQ("made", r.order.front());
    EXPECT_EQ("eof", r.order[r.order.size() - 2]);
    EXPECT_EQ("lost", r.order.back());
    for (size_t i = 1; i + 2 < r.order.size(); i++) EXPECT_EQ("data", r.order[i]);
    EXPECT_EQ(1, r.made);
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);  // regular EOF
    EXPECT_EQ(0, r.after_lost);
    EXPECT_EQ("hello world", r.data);
    EXPECT_TRUE(r.closing_in_lost);
}

TEST(Transport, DataReceivedGetsAllBytesInOrder) {
    Rec r;
    const std::string data = pattern(4 << 20, 11);
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        std::atomic<bool> done{false};
        int peer = p.peer();
        std::thread writer([&] {
            EXPECT_TRUE(write_all(peer, data.data(), data.size()));
            shutdown(peer, SHUT_WR);
            done = true;
        });
        bool ok = wait_for([&] { return done.load() && r.lost > 0; }, 20);
        // Make sure the writer finished before joining (join would block the loop).
        wait_for([&] { return done.load(); }, 20);
        writer.join();
        EXPECT_TRUE(ok);
    });
    EXPECT_GT(r.data_calls, 1);
    EXPECT_TRUE(r.data == data);
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_eof);
}

TEST(Transport, EofReceivedFalseClosesTransport) {
    Rec r;
    r.keep_open = false;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        bool closing_in_eof = false;
        r.on_eof = [&](Rec &) { closing_in_eof = evs_transport_is_closing(t); };
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        EXPECT_FALSE(closing_in_eof);  // closed after eof_received returned
        std::string rest;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), rest));
    });
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, EofReceivedNullCallbackClosesTransport) {
    Rec r;
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r, &kProtoNoEof);
        ASSERT_TRUE(peer_send(p.peer(), "x"));
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        std::string rest;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), rest));
    });
    EXPECT_EQ("x", r.data);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, EofReceivedTrueKeepsHalfOpen) {
    Rec r;
    r.keep_open = true;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_TRUE(peer_send(p.peer(), "req"));
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(wait_for([&] { return r.eof == 1; }));
        settle(10);
        EXPECT_EQ(0, r.lost);
        EXPECT_FALSE(evs_transport_is_closing(t));
        // We can still write and the peer receives it.
        EXPECT_EQ(0, evs_transport_write(t, "reply", 5));
        std::string got;
        EXPECT_TRUE(peer_read_n(p.peer(), got, 5));
        EXPECT_EQ("reply", got);
        evs_transport_close(t);
        EXPECT_EQ(0, r.lost);
        ASSERT_TRUE(lost_once(r));
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("reply", got);
    });
    EXPECT_EQ("req", r.data);
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_eof);
}

TEST(Transport, ResumeReadingAfterKeptEofDeliversNothingMore) {
    Rec r;
    r.keep_open = true;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(wait_for([&] { return r.eof == 1; }));
        evs_transport_pause_reading(t);
        evs_transport_resume_reading(t);
        settle(10);
        EXPECT_EQ(1, r.eof);  // at most once
        EXPECT_EQ(0, r.data_calls);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(0, r.after_eof);
}

// ===========================================================================
// Writing

TEST(Transport, WriteTriesTheSocketAtOnce) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_EQ(0, evs_transport_write(t, "ping", 4));
        // Nothing queued, and the bytes are already in the peer's socket
        // without the loop having run.
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        std::string got;
        peer_read_avail(p.peer(), got);
        EXPECT_EQ("ping", got);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, WriteZeroBytesIsANoop) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_EQ(0, evs_transport_write(t, "", 0));
        EXPECT_EQ(0, evs_transport_writelines(t, nullptr, 0));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        settle();
        EXPECT_TRUE(peer_nothing(p.peer()));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, WriteQueuesOnlyTheRemainderAndDrains) {
    Rec r;
    const std::string big = pattern(2 << 20, 3);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        size_t queued = evs_transport_get_write_buffer_size(t);
        // The kernel took a part at once, the rest is queued.
        EXPECT_GT(queued, 0u);
        EXPECT_LT(queued, big.size());
        // Peer does not read: the queue stays.
        settle();
        EXPECT_GT(evs_transport_get_write_buffer_size(t), 0u);
        std::string got;
        ASSERT_TRUE(peer_read_n(p.peer(), got, big.size()));
        EXPECT_TRUE(got == big);
        EXPECT_TRUE(wait_for([&] { return evs_transport_get_write_buffer_size(t) == 0; }));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, WritesKeepTheirOrderBehindAQueue) {
    Rec r;
    const std::string big = pattern(1 << 20, 5);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        ASSERT_GT(evs_transport_get_write_buffer_size(t), 0u);
        ASSERT_EQ(0, evs_transport_write(t, "tail", 4));
        std::string got;
        ASSERT_TRUE(peer_read_n(p.peer(), got, big.size() + 4));
        EXPECT_TRUE(got == big + "tail");
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, WritelinesSendsBuffersInOrder) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        struct iovec iov[4] = {{(void *)"one ", 4}, {(void *)"", 0}, {(void *)"two ", 4},
                               {(void *)"three", 5}};
        ASSERT_EQ(0, evs_transport_writelines(t, iov, 4));
        std::string got;
        ASSERT_TRUE(peer_read_n(p.peer(), got, 13));
        EXPECT_EQ("one two three", got);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, WritelinesManyBuffersPartlyQueuedInOrder) {
    Rec r;
    // More iovecs than IOV_MAX and more bytes than the socket takes at once.
    const int n = 3000;
    std::vector<std::string> parts;
    std::string all;
    for (int i = 0; i < n; i++) {
        parts.push_back(pattern(1000 + (size_t)(i % 7), (uint32_t)i));
        all += parts.back();
    }
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        std::vector<struct iovec> iov(n);
        for (int i = 0; i < n; i++) iov[i] = {(void *)parts[i].data(), parts[i].size()};
        ASSERT_EQ(0, evs_transport_writelines(t, iov.data(), n));
        EXPECT_GT(evs_transport_get_write_buffer_size(t), 0u);
        std::string got;
        ASSERT_TRUE(peer_read_n(p.peer(), got, all.size()));
        EXPECT_TRUE(got == all);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, WritelinesRejectsBadArguments) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_EQ(-EINVAL, evs_transport_writelines(t, nullptr, 2));
        EXPECT_EQ(-EINVAL, evs_transport_writelines(t, nullptr, -1));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, CanWriteEof) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_TRUE(evs_transport_can_write_eof(t));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, WriteEofAfterBufferedDataAndReadingGoesOn) {
    Rec r;
    const std::string big = pattern(1 << 20, 9);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        ASSERT_GT(evs_transport_get_write_buffer_size(t), 0u);
        EXPECT_EQ(0, evs_transport_write_eof(t));
        EXPECT_EQ(0, evs_transport_write_eof(t));  // idempotent
        EXPECT_FALSE(evs_transport_is_closing(t));
        // The peer gets every buffered byte, then EOF.
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_TRUE(got == big);
        // Reading still works.
        ASSERT_TRUE(peer_send(p.peer(), "still here"));
        ASSERT_TRUE(wait_for([&] { return r.data == "still here"; }));
        EXPECT_EQ(0, r.lost);
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, WriteAfterWriteEofIsEpipeAndNotSent) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_EQ(0, evs_transport_write(t, "a", 1));
        ASSERT_EQ(0, evs_transport_write_eof(t));
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "b", 1));
        struct iovec iov = {(void *)"c", 1};
        EXPECT_EQ(-EPIPE, evs_transport_writelines(t, &iov, 1));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("a", got);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

// ===========================================================================
// close / abort

TEST(Transport, CloseWithEmptyBufferLosesConnectionLaterWithZero) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_FALSE(evs_transport_is_closing(t));
        evs_transport_close(t);
        EXPECT_EQ(0, r.lost);  // never from inside close()
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(lost_once(r));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("", got);
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, CloseFlushesBufferedDataThenConnectionLost) {
    Rec r;
    const std::string big = pattern(2 << 20, 13);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        ASSERT_GT(evs_transport_get_write_buffer_size(t), 0u);
        evs_transport_close(t);
        EXPECT_EQ(0, r.lost);
        EXPECT_TRUE(evs_transport_is_closing(t));
        settle();
        EXPECT_EQ(0, r.lost);  // the peer has not read: still flushing
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_TRUE(got == big);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, CloseStopsReading) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        std::string big = pattern(1 << 20, 2);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        evs_transport_close(t);
        // Data sent to a closing transport is not delivered.
        ASSERT_TRUE(peer_send(p.peer(), "ignored"));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.data_calls);
}

TEST(Transport, CloseIsIdempotent) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_close(t);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
        settle();
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, CloseThenAbortConnectionLostOnce) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_GT(fill_until_queued(t), 0u);
        evs_transport_close(t);   // waits for the flush...
        evs_transport_abort(t);   // ...which abort cuts short
        evs_transport_abort(t);
        evs_transport_close(t);
        EXPECT_EQ(0, r.lost);
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        ASSERT_TRUE(lost_once(r));
        settle(10);
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_lost);
}

TEST(Transport, AbortThenCloseConnectionLostOnce) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_abort(t);
        evs_transport_close(t);
        EXPECT_EQ(0, r.lost);
        ASSERT_TRUE(lost_once(r));
        settle(10);
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, AbortDropsBufferedData) {
    Rec r;
    const std::string big = pattern(2 << 20, 17);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        size_t queued = evs_transport_get_write_buffer_size(t);
        ASSERT_GT(queued, 0u);
        evs_transport_abort(t);
        EXPECT_EQ(0, r.lost);  // never from inside abort()
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        ASSERT_TRUE(lost_once(r));
        // The peer only gets what the kernel had already taken.
        std::string got;
        peer_read_to_eof(p.peer(), got);
        EXPECT_EQ(big.size() - queued, got.size());
        EXPECT_TRUE(got == big.substr(0, got.size()));
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, IsClosingAfterAbort) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_FALSE(evs_transport_is_closing(t));
        evs_transport_abort(t);
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_TRUE(r.closing_in_lost);
}

TEST(Transport, WriteAfterCloseIsEpipeAndNothingSent) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_close(t);
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "late", 4));
        struct iovec iov = {(void *)"late", 4};
        EXPECT_EQ(-EPIPE, evs_transport_writelines(t, &iov, 1));
        EXPECT_EQ(-EPIPE, evs_transport_write_eof(t));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        ASSERT_TRUE(lost_once(r));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("", got);
    });
    // And from inside connection_lost too.
    EXPECT_EQ(-EPIPE, r.write_in_lost);
}

TEST(Transport, WriteAfterAbortIsEpipeAndNothingSent) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_abort(t);
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "late", 4));
        ASSERT_TRUE(lost_once(r));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("", got);
    });
    EXPECT_EQ(-EPIPE, r.write_in_lost);
}

TEST(Transport, FdIsClosedAfterConnectionLost) {
    Rec r;
    int fd_in_lost = -2;
    bool open_in_lost = false;
    int fd = -1;
    r.on_lost = [&](Rec &rr) {
        fd_in_lost = evs_transport_get_fd(rr.t);
        open_in_lost = fd_is_open(fd_in_lost);
    };
    in_loop([&] {
        Pair p;
        fd = p.mine();
        evs_transport *t = wrap(fd, r);
        EXPECT_EQ(fd, evs_transport_get_fd(t));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
        settle();
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
    });
    // Still usable inside connection_lost, closed afterwards.
    EXPECT_EQ(fd, fd_in_lost);
    EXPECT_TRUE(open_in_lost);
}

// ===========================================================================
// Reading control

TEST(Transport, PauseResumeReadingIdempotentAndHoldsData) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_TRUE(evs_transport_is_reading(t));
        evs_transport_pause_reading(t);
        evs_transport_pause_reading(t);
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(peer_send(p.peer(), "held"));
        settle(20);
        EXPECT_EQ(0, r.data_calls);
        evs_transport_resume_reading(t);
        evs_transport_resume_reading(t);
        EXPECT_TRUE(evs_transport_is_reading(t));
        ASSERT_TRUE(wait_for([&] { return r.data == "held"; }));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ("held", r.data);
}

TEST(Transport, PauseReadingInsideDataReceivedStopsDelivery) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        r.on_data = [&](Rec &, const void *, size_t) { evs_transport_pause_reading(t); };
        ASSERT_TRUE(peer_send(p.peer(), "first"));
        ASSERT_TRUE(wait_for([&] { return r.data_calls == 1; }));
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(peer_send(p.peer(), "second"));
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        settle(20);
        EXPECT_EQ(1, r.data_calls);
        EXPECT_EQ(0, r.eof);  // not even EOF while paused
        r.on_data = nullptr;
        evs_transport_resume_reading(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ("firstsecond", r.data);
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, PauseReadingInConnectionMade) {
    Rec r;
    r.on_made = [](Rec &rr) { evs_transport_pause_reading(rr.t); };
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(peer_send(p.peer(), "x"));
        settle(20);
        EXPECT_EQ(0, r.data_calls);
        evs_transport_resume_reading(t);
        ASSERT_TRUE(wait_for([&] { return r.data == "x"; }));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, PauseResumeReadingAreNoopsOnceClosing) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_close(t);
        evs_transport_pause_reading(t);
        evs_transport_resume_reading(t);
        EXPECT_FALSE(evs_transport_is_reading(t));
        ASSERT_TRUE(peer_send(p.peer(), "x"));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.data_calls);
    EXPECT_EQ(1, r.lost);
}

// ===========================================================================
// Write flow control

TEST(Transport, WriteBufferLimitDefaults) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        size_t low = 0, high = 0;
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(16u * 1024u, low);
        EXPECT_EQ(64u * 1024u, high);
        evs_transport_get_write_buffer_limits(t, nullptr, nullptr);  // either may be NULL
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, SetWriteBufferLimitsRules) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        size_t low, high;
        // Only high: low = high / 4.
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, 1000, -1));
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(1000u, high);
        EXPECT_EQ(250u, low);
        // Only low: high = 4 * low.
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, -1, 100));
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(400u, high);
        EXPECT_EQ(100u, low);
        // Both.
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, 500, 500));
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(500u, high);
        EXPECT_EQ(500u, low);
        // Neither: the defaults.
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, -1, -1));
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(64u * 1024u, high);
        EXPECT_EQ(16u * 1024u, low);
        // high = 0 forces low = 0.
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, 0, -1));
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(0u, high);
        EXPECT_EQ(0u, low);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.pause);  // nothing was buffered
}

TEST(Transport, SetWriteBufferLimitsLowAboveHighIsEinvalAndChangesNothing) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 800, 200));
        EXPECT_EQ(-EINVAL, evs_transport_set_write_buffer_limits(t, 10, 20));
        EXPECT_EQ(-EINVAL, evs_transport_set_write_buffer_limits(t, 0, 1));
        // Nothing changed.
        size_t low, high;
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ(800u, high);
        EXPECT_EQ(200u, low);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, HighZeroPausesWheneverBufferIsNonEmpty) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 0, -1));
        // A small write to an idle socket leaves the buffer empty: no pause.
        ASSERT_EQ(0, evs_transport_write(t, "a", 1));
        EXPECT_EQ(0, r.pause);
        std::string got;
        ASSERT_TRUE(peer_read_n(p.peer(), got, 1));
        ASSERT_GT(fill_until_queued(t), 0u);
        EXPECT_EQ(1, r.pause);
        EXPECT_GT(r.size_at_pause, 0u);
        // low == 0: resume only once empty.
        ASSERT_TRUE(peer_read_n(p.peer(), got, 1 + 256 * 1024));
        ASSERT_TRUE(wait_for([&] { return r.resume == 1; }));
        EXPECT_EQ(0u, r.size_at_resume);
        EXPECT_EQ(1, r.pause);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, PauseWritingOnlyStrictlyAboveHigh) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 1 << 30, -1));
        size_t b = fill_until_queued(t);
        ASSERT_GT(b, 0u);
        // With a non-empty queue, writes only append: sizes are exact.
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, (ssize_t)(b + 100), 0));
        EXPECT_EQ(0, r.pause);
        std::string hundred(100, 'h');
        ASSERT_EQ(0, evs_transport_write(t, hundred.data(), hundred.size()));
        EXPECT_EQ(b + 100, evs_transport_get_write_buffer_size(t));
        EXPECT_EQ(0, r.pause);  // buffer == high: not paused
        ASSERT_EQ(0, evs_transport_write(t, "!", 1));
        EXPECT_EQ(1, r.pause);  // strictly above
        EXPECT_EQ(b + 101, r.size_at_pause);
        ASSERT_EQ(0, evs_transport_write(t, "!", 1));
        EXPECT_EQ(1, r.pause);  // once until resumed
        std::string got;
        ASSERT_TRUE(wait_for([&] {
            peer_read_avail(p.peer(), got);
            return r.resume == 1 && evs_transport_get_write_buffer_size(t) == 0;
        }));
        EXPECT_EQ(0u, r.size_at_resume);  // low == 0: only once empty
        EXPECT_EQ(1, r.pause);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, ResumeWritingAtOrBelowLow) {
    Rec r;
    size_t low_mark = 0;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 1 << 30, -1));
        ASSERT_GT(fill_until_queued(t, 1 << 20), 0u);
        size_t b = evs_transport_get_write_buffer_size(t);
        low_mark = b / 4;
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, (ssize_t)(b / 2),
                                                           (ssize_t)low_mark));
        EXPECT_EQ(1, r.pause);  // already above the new high: paused at once
        // The peer reads in small pieces so the queue shrinks gradually.
        std::string got;
        char buf[4096];
        ASSERT_TRUE(wait_for([&] {
            ssize_t n = recv(p.peer(), buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) got.append(buf, (size_t)n);
            return r.resume == 1;
        }));
        EXPECT_LE(r.size_at_resume, low_mark);
        EXPECT_EQ(1, r.pause);
        evs_transport_close(t);
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));  // close flushes the rest
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, SetWriteBufferLimitsPausesAtOnceWhenAboveHigh) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 1 << 30, -1));
        size_t b = fill_until_queued(t);
        ASSERT_GT(b, 0u);
        EXPECT_EQ(0, r.pause);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, (ssize_t)b, -1));
        EXPECT_EQ(0, r.pause);  // equal is not above
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, (ssize_t)b - 1, -1));
        EXPECT_EQ(1, r.pause);
        EXPECT_EQ(b, r.size_at_pause);
        evs_transport_abort(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, FlowControl64MiBToSlowReader) {
    const uint64_t total = 64ull << 20;
    const size_t chunk_size = 64 * 1024;
    auto gen = [](uint64_t i) { return (char)((i * 131u) ^ (i >> 11) ^ (i >> 23)); };

    struct Producer {
        evs_transport *t = nullptr;
        uint64_t off = 0;
        bool paused = false, closed = false;
        size_t max_buf = 0;
        int write_err = 0;
        std::vector<char> chunk;
    } pr;
    pr.chunk.resize(chunk_size);
    Rec r;
    std::function<void()> produce = [&] {
        while (!pr.paused && pr.off < total && !pr.write_err) {
            size_t n = (size_t)std::min<uint64_t>(chunk_size, total - pr.off);
            for (size_t i = 0; i < n; i++) pr.chunk[i] = gen(pr.off + i);
            int rc = evs_transport_write(pr.t, pr.chunk.data(), n);
            if (rc) pr.write_err = rc;
            pr.off += n;
            pr.max_buf = std::max(pr.max_buf, evs_transport_get_write_buffer_size(pr.t));
        }
        if (pr.off == total && !pr.closed) {
            pr.closed = true;
            evs_transport_close(pr.t);  // flushes the rest, then connection_lost
        }
    };
    r.on_pause = [&](Rec &) { pr.paused = true; };
    r.on_resume = [&](Rec &) {
        pr.paused = false;
        produce();
    };

    std::atomic<bool> reader_done{false};
    std::atomic<uint64_t> received{0};
    std::atomic<bool> mismatch{false};
    std::atomic<bool> clean_eof{false};
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        int peer = p.peer();
        std::thread reader([&] {
            std::vector<char> buf(16 * 1024);
            uint64_t pos = 0;
            int reads = 0;
            for (;;) {
                ssize_t n = recv(peer, buf.data(), buf.size(), 0);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) {
                    clean_eof = n == 0;
                    break;
                }
                for (ssize_t i = 0; i < n && !mismatch; i++)
                    if (buf[(size_t)i] != gen(pos + (uint64_t)i)) mismatch = true;
                pos += (uint64_t)n;
                received = pos;
                if (++reads % 8 == 0) usleep(100);  // a slow reader
            }
            reader_done = true;
        });
        pr.t = wrap(fd, r);
        produce();
        bool ok = wait_for([&] { return r.lost > 0 && reader_done.load(); }, 60);
        // Never join a thread that could still be running: it would block the loop.
        if (!reader_done) shutdown(peer, SHUT_RDWR);
        wait_for([&] { return reader_done.load(); }, 20);
        reader.join();
        EXPECT_TRUE(ok);
    });
    EXPECT_EQ(0, pr.write_err);
    EXPECT_EQ(total, pr.off);
    EXPECT_EQ(total, received.load());
    EXPECT_FALSE(mismatch.load());
    EXPECT_TRUE(clean_eof.load());
    EXPECT_GT(r.pause, 0);
    EXPECT_GE(r.resume, r.pause - 1);
    EXPECT_LE(r.resume, r.pause);
    EXPECT_LE(pr.max_buf, (size_t)EVS_WRITE_HIGH_WATER_DEFAULT + chunk_size);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

// ===========================================================================
// Extra info

TEST(Transport, ExtraInfoTcpPeernameSocknameFd) {
    Rec r;
    std::string peer_in_lost;
    r.on_lost = [&](Rec &rr) {
        struct sockaddr_storage ss;
        socklen_t sl;
        char buf[128];
        if (evs_transport_get_peername(rr.t, &ss, &sl) == 0)
            peer_in_lost = evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf);
    };
    std::string expect_peer;
    in_loop([&] {
        int server, client;
        tcp_pair(&server, &client);
        struct sockaddr_in cl, sv;
        socklen_t l1 = sizeof cl, l2 = sizeof sv;
        ASSERT_EQ(0, getsockname(client, (struct sockaddr *)&cl, &l1));
        ASSERT_EQ(0, getpeername(client, (struct sockaddr *)&sv, &l2));
        evs_transport *t = wrap(server, r);
        EXPECT_EQ(server, evs_transport_get_fd(t));
        EXPECT_EQ(evs_worker_current(), evs_transport_worker(t));

        struct sockaddr_storage ss;
        socklen_t sl = 0;
        ASSERT_EQ(0, evs_transport_get_peername(t, &ss, &sl));
        ASSERT_EQ(AF_INET, ss.ss_family);
        ASSERT_EQ(sizeof(struct sockaddr_in), (size_t)sl);
        const struct sockaddr_in *pin = (const struct sockaddr_in *)&ss;
        EXPECT_EQ(htonl(INADDR_LOOPBACK), pin->sin_addr.s_addr);
        EXPECT_EQ(cl.sin_port, pin->sin_port);
        char buf[128];
        expect_peer = "127.0.0.1:" + std::to_string(ntohs(cl.sin_port));
        EXPECT_EQ(expect_peer, evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));

        ASSERT_EQ(0, evs_transport_get_sockname(t, &ss, &sl));
        ASSERT_EQ(AF_INET, ss.ss_family);
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        EXPECT_EQ(htonl(INADDR_LOOPBACK), sin->sin_addr.s_addr);
        EXPECT_EQ(sv.sin_port, sin->sin_port);
        EXPECT_NE(0, sin->sin_port);

        // And the connection works both ways over TCP.
        ASSERT_TRUE(peer_send(client, "tcp"));
        ASSERT_TRUE(wait_for([&] { return r.data == "tcp"; }));
        ASSERT_EQ(0, evs_transport_write(t, "back", 4));
        std::string got;
        EXPECT_TRUE(peer_read_n(client, got, 4));
        EXPECT_EQ("back", got);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
        EXPECT_TRUE(peer_read_to_eof(client, got));
        close(client);
    });
    // asyncio closes the socket after connection_lost: peername still works in it.
    EXPECT_EQ(expect_peer, peer_in_lost);
}

TEST(Transport, ExtraInfoUnixSocketInTempDir) {
    Rec r;
    std::string dir = make_temp_dir();
    ASSERT_FALSE(dir.empty());
    std::string path = dir + "/t.sock";
    in_loop([&] {
        int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_GE(l, 0);
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
        ASSERT_EQ(0, bind(l, (struct sockaddr *)&sun, sizeof sun));
        ASSERT_EQ(0, listen(l, 4));
        int client = connect_unix(path);
        ASSERT_GE(client, 0);
        int server = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        ASSERT_GE(server, 0);
        close(l);
        evs_transport *t = wrap(server, r);
        struct sockaddr_storage ss;
        socklen_t sl;
        char buf[256];
        ASSERT_EQ(0, evs_transport_get_sockname(t, &ss, &sl));
        EXPECT_EQ(AF_UNIX, ss.ss_family);
        EXPECT_EQ("unix:" + path, evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));
        ASSERT_EQ(0, evs_transport_get_peername(t, &ss, &sl));
        EXPECT_EQ(AF_UNIX, ss.ss_family);
        EXPECT_STREQ("unix:", evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));

        ASSERT_TRUE(peer_send(client, "unix"));
        ASSERT_TRUE(wait_for([&] { return r.data == "unix"; }));
        ASSERT_EQ(0, evs_transport_write(t, "ok", 2));
        ASSERT_EQ(0, shutdown(client, SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(client, got));
        EXPECT_EQ("ok", got);
        close(client);
    });
    remove_dir(dir);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, ExtraInfoSocketpair) {
    Rec r;
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        evs_transport *t = wrap(fd, r);
        EXPECT_EQ(fd, evs_transport_get_fd(t));
        struct sockaddr_storage ss;
        socklen_t sl;
        ASSERT_EQ(0, evs_transport_get_peername(t, &ss, &sl));
        EXPECT_EQ(AF_UNIX, ss.ss_family);
        char buf[64];
        EXPECT_STREQ("unix:", evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

// ===========================================================================
// Protocol switching

TEST(Transport, GetProtocolReturnsTheCurrentOne) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        void *ctx = nullptr;
        EXPECT_EQ(&kProto, evs_transport_get_protocol(t, &ctx));
        EXPECT_EQ(&r, ctx);
        EXPECT_EQ(&kProto, evs_transport_get_protocol(t, nullptr));
        evs_transport_set_protocol(t, nullptr, nullptr);  // ignored
        EXPECT_EQ(&kProto, evs_transport_get_protocol(t, &ctx));
        EXPECT_EQ(&r, ctx);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, SetProtocolMidConnectionRedirectsLaterCallbacks) {
    Rec a, b;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), a);
        a.on_data = [&](Rec &, const void *, size_t) {
            // Switch from inside a callback, with another context.
            evs_transport_set_protocol(t, &kProtoNoEof, &b);
        };
        ASSERT_TRUE(peer_send(p.peer(), "one"));
        ASSERT_TRUE(wait_for([&] { return a.data == "one"; }));
        void *ctx = nullptr;
        EXPECT_EQ(&kProtoNoEof, evs_transport_get_protocol(t, &ctx));
        EXPECT_EQ(&b, ctx);
        ASSERT_TRUE(peer_send(p.peer(), "two"));
        ASSERT_TRUE(wait_for([&] { return b.data == "two"; }));
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        // kProtoNoEof has no eof_received: the transport closes.
        ASSERT_TRUE(wait_for([&] { return b.lost > 0; }));
    });
    EXPECT_EQ("one", a.data);
    EXPECT_EQ(1, a.data_calls);
    EXPECT_EQ(0, a.eof);
    EXPECT_EQ(0, a.lost);
    EXPECT_EQ("two", b.data);
    EXPECT_EQ(0, b.made);
    EXPECT_EQ(1, b.lost);
    EXPECT_EQ(0, b.lost_err);
}

TEST(Transport, SetProtocolFromTaskSwitchesToBufferedProtocol) {
    Rec a, b;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), a);
        ASSERT_TRUE(peer_send(p.peer(), "plain"));
        ASSERT_TRUE(wait_for([&] { return a.data == "plain"; }));
        evs_transport_set_protocol(t, &kBuffered, &b);
        ASSERT_TRUE(peer_send(p.peer(), "buffered"));
        ASSERT_TRUE(wait_for([&] { return b.data == "buffered"; }));
        evs_transport_close(t);
        ASSERT_TRUE(wait_for([&] { return b.lost > 0; }));
    });
    EXPECT_EQ(0, a.lost);
    EXPECT_GT(b.bu, 0);
    EXPECT_EQ(0, b.data_calls);
    EXPECT_EQ(1, b.lost);
}

// ===========================================================================
// BufferedProtocol

TEST(Transport, BufferedProtocolReceivesAllBytes) {
    Rec r;
    const std::string data = pattern(1 << 20, 21);
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r, &kBuffered);
        std::atomic<bool> done{false};
        int peer = p.peer();
        std::thread writer([&] {
            EXPECT_TRUE(write_all(peer, data.data(), data.size()));
            shutdown(peer, SHUT_WR);
            done = true;
        });
        bool ok = wait_for([&] { return done.load() && r.lost > 0; }, 20);
        wait_for([&] { return done.load(); }, 20);
        writer.join();
        EXPECT_TRUE(ok);
    });
    EXPECT_TRUE(r.data == data);
    EXPECT_EQ(0, r.data_calls);  // data_received is not used
    EXPECT_GT(r.bu, 1);
    EXPECT_GE(r.gb, r.bu);
    EXPECT_GT(r.sizehint, 0u);
    EXPECT_EQ(0, r.bu_zero);  // nbytes is what was written: never 0
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(0, r.after_eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    // Every buffer_updated follows a get_buffer.
    for (size_t i = 0; i < r.order.size(); i++) {
        if (r.order[i] == "bu") {
            EXPECT_EQ("gb", r.order[i - 1]);
        }
    }
}

TEST(Transport, BufferedProtocolGetBufferNullAbortsWithEnobufs) {
    Rec r;
    r.gb_null = true;
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r, &kBuffered);
        ASSERT_TRUE(peer_send(p.peer(), "data"));
        ASSERT_TRUE(lost_once(r));
        std::string got;
        peer_read_to_eof(p.peer(), got);
        EXPECT_EQ("", got);
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(-ENOBUFS, r.lost_err);
    EXPECT_EQ(0, r.bu);
    EXPECT_EQ(-ENOBUFS, r.write_in_lost);  // writes report the connection's error
}

TEST(Transport, BufferedProtocolZeroLengthBufferAbortsWithEnobufs) {
    Rec r;
    r.gb_zero = true;
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r, &kBuffered);
        ASSERT_TRUE(peer_send(p.peer(), "data"));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(-ENOBUFS, r.lost_err);
    EXPECT_EQ(0, r.bu);
}

// ===========================================================================
// Handlers closing their own transport

TEST(Transport, CloseFromConnectionMade) {
    Rec r;
    r.on_made = [](Rec &rr) { evs_transport_close(rr.t); };
    in_loop([&] {
        Pair p;
        ASSERT_TRUE(peer_send(p.peer(), "early"));
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_EQ(0, r.lost);
        EXPECT_TRUE(evs_transport_is_closing(t));
        ASSERT_TRUE(lost_once(r));
        settle();
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
    });
    EXPECT_EQ(1, r.made);
    EXPECT_EQ(0, r.data_calls);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, AbortFromConnectionMade) {
    Rec r;
    r.on_made = [](Rec &rr) { evs_transport_abort(rr.t); };
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        EXPECT_EQ(0, r.lost);
        ASSERT_TRUE(lost_once(r));
        settle();
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, CloseFromDataReceived) {
    Rec r;
    r.on_data = [](Rec &rr, const void *, size_t) {
        evs_transport_write(rr.t, "bye", 3);
        evs_transport_close(rr.t);
        EXPECT_EQ(0, rr.lost);
    };
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        ASSERT_TRUE(peer_send(p.peer(), "hi"));
        ASSERT_TRUE(lost_once(r));
        settle();
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_EQ("bye", got);
    });
    EXPECT_EQ(1, r.data_calls);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_lost);
}

TEST(Transport, CloseAndAbortFromDataReceived) {
    Rec r;
    r.on_data = [](Rec &rr, const void *, size_t) {
        evs_transport_close(rr.t);
        evs_transport_abort(rr.t);
        evs_transport_close(rr.t);
    };
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        ASSERT_TRUE(peer_send(p.peer(), "hi"));
        ASSERT_TRUE(lost_once(r));
        settle(10);
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, AbortFromDataReceived) {
    Rec r;
    r.on_data = [](Rec &rr, const void *, size_t) { evs_transport_abort(rr.t); };
    const std::string data = pattern(256 * 1024, 4);
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        std::atomic<bool> done{false};
        int peer = p.peer();
        // More than one read's worth: the transport must stop after abort.
        std::thread writer([&] {
            write_all(peer, data.data(), data.size());  // may fail once aborted
            done = true;
        });
        ASSERT_TRUE(lost_once(r));
        settle(10);
        wait_for([&] { return done.load(); }, 20);
        writer.join();
    });
    EXPECT_EQ(1, r.data_calls);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_lost);
}

TEST(Transport, CloseFromEofReceivedKeepingOpen) {
    Rec r;
    r.keep_open = true;  // asks to stay open, but closes itself
    r.on_eof = [](Rec &rr) { evs_transport_close(rr.t); };
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        settle(10);
    });
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, CloseFromEofReceivedReturningFalse) {
    Rec r;
    r.keep_open = false;  // the transport closes too: still one connection_lost
    r.on_eof = [](Rec &rr) { evs_transport_close(rr.t); };
    in_loop([&] {
        Pair p;
        wrap(p.mine(), r);
        ASSERT_EQ(0, shutdown(p.peer(), SHUT_WR));
        ASSERT_TRUE(lost_once(r));
        settle(10);
    });
    EXPECT_EQ(1, r.eof);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, AbortFromPauseWriting) {
    Rec r;
    r.on_pause = [](Rec &rr) { evs_transport_abort(rr.t); };
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        std::string big = pattern(1 << 20, 6);
        evs_transport_write(t, big.data(), big.size());  // pauses, which aborts
        EXPECT_EQ(1, r.pause);
        EXPECT_EQ(0, r.lost);
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "x", 1));
        ASSERT_TRUE(lost_once(r));
        settle(10);
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.resume);
}

TEST(Transport, CloseFromResumeWritingFlushesRest) {
    Rec r;
    r.on_resume = [](Rec &rr) {
        evs_transport_write(rr.t, "end", 3);
        evs_transport_close(rr.t);
    };
    const std::string big = pattern(1 << 20, 8);
    in_loop([&] {
        Pair p;
        int fd = p.mine();
        small_bufs(fd);
        evs_transport *t = wrap(fd, r);
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        ASSERT_EQ(1, r.pause);
        std::string got;
        EXPECT_TRUE(peer_read_to_eof(p.peer(), got));
        EXPECT_TRUE(got == big + "end");
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.resume);
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
}

TEST(Transport, SetWriteBufferLimitsHugeLowDoesNotOverflow) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        // high = 4 * low would overflow: it saturates instead (UBSan checks).
        EXPECT_EQ(0, evs_transport_set_write_buffer_limits(t, -1, SSIZE_MAX / 2));
        size_t low, high;
        evs_transport_get_write_buffer_limits(t, &low, &high);
        EXPECT_EQ((size_t)SSIZE_MAX / 2, low);
        EXPECT_GE(high, low);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
}

TEST(Transport, TransportLeftOpenIsAbortedWhenEvsRunEnds) {
    Rec r;
    int peer = -1;
    in_loop([&] {
        int sv[2];
        socket_pair(sv);
        peer = sv[1];
        evs_transport *t = wrap(sv[0], r);
        ASSERT_EQ(0, evs_transport_write(t, "left", 4));
        // Return without closing: evs_run cancels what the task left behind.
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.lost_err);
    std::string got = read_to_eof(peer);
    EXPECT_EQ("left", got);
    close(peer);
}

// ===========================================================================
// Errors from the peer

TEST(Transport, PeerResetIsANegativeError) {
    Rec r;
    in_loop([&] {
        int server, client;
        tcp_pair(&server, &client);
        wrap(server, r);
        struct linger lg = {1, 0};
        ASSERT_EQ(0, setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
        close(client);  // RST
        ASSERT_TRUE(lost_once(r));
        settle();
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(0, r.eof);  // a reset is not EOF
    EXPECT_LT(r.lost_err, 0);
    EXPECT_EQ(-ECONNRESET, r.lost_err) << evs_strerror(r.lost_err);
    // Once lost, writes report the connection's error.
    EXPECT_EQ(r.lost_err, r.write_in_lost);
}

TEST(Transport, PeerResetWhileWritingIsANegativeError) {
    Rec r;
    in_loop([&] {
        int server, client;
        tcp_pair(&server, &client);
        small_bufs(server);
        small_bufs(client);
        evs_transport *t = wrap(server, r);
        ASSERT_GT(fill_until_queued(t), 0u);
        struct linger lg = {1, 0};
        ASSERT_EQ(0, setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
        close(client);
        ASSERT_TRUE(lost_once(r));
        settle();
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_LT(r.lost_err, 0);
    EXPECT_TRUE(r.lost_err == -ECONNRESET || r.lost_err == -EPIPE) << evs_strerror(r.lost_err);
    EXPECT_EQ(r.lost_err, r.write_in_lost);
}

TEST(Transport, WriteToClosedPeerIsANegativeError) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_pause_reading(t);  // only the write can notice
        close(p.sv[1]);
        p.sv[1] = -1;
        int rc = evs_transport_write(t, "x", 1);
        EXPECT_EQ(-EPIPE, rc);
        EXPECT_TRUE(evs_transport_is_closing(t));
        EXPECT_EQ(0, r.lost);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(1, r.lost);
    EXPECT_EQ(-EPIPE, r.lost_err);
}

// ===========================================================================
// evs_format_address

TEST(FormatAddress, Ipv4) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(8080);
    ASSERT_EQ(1, inet_pton(AF_INET, "192.168.1.20", &sin.sin_addr));
    char buf[64];
    EXPECT_STREQ("192.168.1.20:8080",
                 evs_format_address((struct sockaddr *)&sin, sizeof sin, buf, sizeof buf));
}

TEST(FormatAddress, Ipv6) {
    struct sockaddr_in6 s6;
    memset(&s6, 0, sizeof s6);
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(443);
    ASSERT_EQ(1, inet_pton(AF_INET6, "::1", &s6.sin6_addr));
    char buf[80];
    EXPECT_STREQ("[::1]:443", evs_format_address((struct sockaddr *)&s6, sizeof s6, buf, sizeof buf));
    ASSERT_EQ(1, inet_pton(AF_INET6, "2001:db8::42", &s6.sin6_addr));
    s6.sin6_port = htons(1);
    EXPECT_STREQ("[2001:db8::42]:1",
                 evs_format_address((struct sockaddr *)&s6, sizeof s6, buf, sizeof buf));
}

TEST(FormatAddress, UnixPath) {
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, "/tmp/evs.sock");
    char buf[160];
    socklen_t exact = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sun.sun_path) + 1);
    EXPECT_STREQ("unix:/tmp/evs.sock",
                 evs_format_address((struct sockaddr *)&sun, exact, buf, sizeof buf));
    EXPECT_STREQ("unix:/tmp/evs.sock",
                 evs_format_address((struct sockaddr *)&sun, sizeof sun, buf, sizeof buf));
    // Without the terminating NUL (allowed by the kernel).
    EXPECT_STREQ("unix:/tmp/evs.sock",
                 evs_format_address((struct sockaddr *)&sun, exact - 1, buf, sizeof buf));
}

TEST(FormatAddress, UnixAbstract) {
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path + 1, "evs-name", 8);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + 8);
    char buf[160];
    EXPECT_STREQ("unix:@evs-name", evs_format_address((struct sockaddr *)&sun, len, buf, sizeof buf));

    // A real abstract socket's own address, from the kernel.
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    std::string name = "evs-test-" + std::to_string(getpid());
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path + 1, name.data(), name.size());
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + name.size());
    ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sun, len));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&ss, &sl));
    EXPECT_EQ("unix:@" + name, evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));
    close(fd);
}

TEST(FormatAddress, UnixUnnamed) {
    int sv[2];
    ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ASSERT_EQ(0, getsockname(sv[0], (struct sockaddr *)&ss, &sl));
    char buf[64];
    EXPECT_STREQ("unix:", evs_format_address((struct sockaddr *)&ss, sl, buf, sizeof buf));
    close(sv[0]);
    close(sv[1]);
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    EXPECT_STREQ("unix:", evs_format_address((struct sockaddr *)&sun, sizeof(sa_family_t), buf,
                                             sizeof buf));
}

TEST(FormatAddress, TruncatesToTheBufferAndReturnsIt) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(8080);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char buf[8];
    memset(buf, 'Z', sizeof buf);
    const char *s = evs_format_address((struct sockaddr *)&sin, sizeof sin, buf, 6);
    EXPECT_EQ(buf, s);
    EXPECT_STREQ("127.0", s);  // NUL-terminated within size
    EXPECT_EQ('Z', buf[6]);
    char one = 'Z';
    EXPECT_EQ(&one, evs_format_address((struct sockaddr *)&sin, sizeof sin, &one, 0));
    EXPECT_EQ('Z', one);  // size 0: untouched
    // A length too short for the family is not read past.
    char small[64];
    EXPECT_STREQ("?", evs_format_address((struct sockaddr *)&sin, 2, small, sizeof small));
    struct sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    EXPECT_STREQ("?", evs_format_address((struct sockaddr *)&sin6, sizeof sin, small, sizeof small));
}

// ===========================================================================
// Idle timeout

TEST(Transport, IdleTimeoutAbortsWithETIMEDOUT) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        EXPECT_EQ(0.0, evs_transport_get_idle_timeout(t));
        EXPECT_EQ(-EINVAL, evs_transport_set_idle_timeout(t, -1));
        EXPECT_EQ(-EINVAL, evs_transport_set_idle_timeout(t, NAN));  // no bound, not none
        ASSERT_EQ(0, evs_transport_set_idle_timeout(t, 0.05));
        EXPECT_EQ(0.05, evs_transport_get_idle_timeout(t));
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(-ETIMEDOUT, r.lost_err);
    EXPECT_EQ(1, r.lost);
}

TEST(Transport, IdleTimeoutCountsProgressEitherWay) {
    Rec r;
    int reads_seen = 0;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        // Incoming bytes, then outgoing ones, each 20 times more often than
        // the timeout (a margin for a loaded sanitizer build): the
        // connection stays up well past it.
        ASSERT_EQ(0, evs_transport_set_idle_timeout(t, 1.0));
        for (int i = 0; i < 6; i++) {
            ASSERT_TRUE(peer_send(p.peer(), "x"));
            evs_sleep(0.05);
        }
        for (int i = 0; i < 6; i++) {
            ASSERT_EQ(0, evs_transport_write(t, "y", 1));
            evs_sleep(0.05);
        }
        EXPECT_EQ(0, r.lost);
        reads_seen = (int)r.data.size();
        ASSERT_TRUE(lost_once(r));  // silence ends it
    });
    EXPECT_EQ(6, reads_seen);
    EXPECT_EQ(-ETIMEDOUT, r.lost_err);
}

TEST(Transport, IdleTimeoutZeroRemovesIt) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_EQ(0, evs_transport_set_idle_timeout(t, 0.05));
        ASSERT_EQ(0, evs_transport_set_idle_timeout(t, 0));
        evs_sleep(0.15);
        EXPECT_EQ(0, r.lost);
        evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(0, r.lost_err);
}

// ===========================================================================
// More timeouts, write caps

TEST(Transport, FirstByteTimeoutOnlyUntilTheFirstByte) {
    Rec silent, talker;
    in_loop([&] {
        Pair a, b;
        evs_transport *ta = wrap(a.mine(), silent);
        evs_transport *tb = wrap(b.mine(), talker);
        evs_timeouts to{};
        to.first_byte = 0.5;  // a margin for a loaded sanitizer build
        ASSERT_EQ(0, evs_transport_set_timeouts(ta, &to));
        ASSERT_EQ(0, evs_transport_set_timeouts(tb, &to));
        ASSERT_TRUE(peer_send(b.peer(), "hi"));
        ASSERT_TRUE(lost_once(silent));
        evs_sleep(0.2);  // past the first-byte bound
        EXPECT_EQ(0, talker.lost);
        evs_transport_close(tb);
        ASSERT_TRUE(lost_once(talker));
    });
    EXPECT_EQ(-ETIMEDOUT, silent.lost_err);
    EXPECT_EQ(0, talker.lost_err);
}

TEST(Transport, ReadTimeoutWhileReadingButNotWhilePaused) {
    Rec paused, reading;
    in_loop([&] {
        Pair a, b;
        evs_transport *ta = wrap(a.mine(), paused);
        evs_transport *tb = wrap(b.mine(), reading);
        evs_timeouts to{};
        to.read = 0.1;
        ASSERT_TRUE(peer_send(a.peer(), "x"));
        ASSERT_TRUE(peer_send(b.peer(), "x"));
        ASSERT_TRUE(wait_for([&] { return paused.data.size() == 1 && reading.data.size() == 1; }));
        ASSERT_EQ(0, evs_transport_set_timeouts(ta, &to));
        ASSERT_EQ(0, evs_transport_set_timeouts(tb, &to));
        evs_transport_pause_reading(ta);  // not waiting for data: no read timeout
        ASSERT_TRUE(lost_once(reading));
        EXPECT_EQ(0, paused.lost);
        evs_transport_close(ta);
        ASSERT_TRUE(lost_once(paused));
    });
    EXPECT_EQ(-ETIMEDOUT, reading.lost_err);
    EXPECT_EQ(0, paused.lost_err);
}

TEST(Transport, WriteTimeoutWhenThePeerStopsReading) {
    Rec r;
    in_loop([&] {
        Pair p;
        small_bufs(p.peer());
        evs_transport *t = wrap(p.mine(), r);
        evs_timeouts to{};
        to.write = 0.15;
        ASSERT_EQ(0, evs_transport_set_timeouts(t, &to));
        evs_sleep(0.3);  // nothing queued: no write timeout
        EXPECT_EQ(0, r.lost);
        ASSERT_GT(fill_until_queued(t), 0u);  // the peer never reads
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(-ETIMEDOUT, r.lost_err);
}

TEST(Transport, LifetimeBoundsEvenABusyConnection) {
    Rec r;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        evs_timeouts to{};
        to.lifetime = 0.2;
        to.idle = 10;
        ASSERT_EQ(0, evs_transport_set_timeouts(t, &to));
        evs_timeouts back;
        evs_transport_get_timeouts(t, &back);
        EXPECT_EQ(0.2, back.lifetime);
        evs_timeouts bad{};
        bad.read = -1;
        EXPECT_EQ(-EINVAL, evs_transport_set_timeouts(t, &bad));
        for (int i = 0; i < 100 && !r.lost; i++) {
            peer_send(p.peer(), "x");
            evs_sleep(0.01);
        }
        ASSERT_TRUE(lost_once(r));  // the transport is gone after this
    });
    EXPECT_EQ(-ETIMEDOUT, r.lost_err);
}

TEST(Transport, WriteBufferCapFailsWithENOBUFSAndAborts) {
    Rec r;
    int rc = 0;
    in_loop([&] {
        Pair p;
        small_bufs(p.peer());
        evs_transport *t = wrap(p.mine(), r);
        evs_transport_set_max_write_buffer(t, 256 * 1024);
        std::string chunk = pattern(64 * 1024, 3);
        for (int i = 0; i < 100 && rc == 0; i++) rc = evs_transport_write(t, chunk.data(), chunk.size());
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_EQ(-ENOBUFS, rc);
    EXPECT_EQ(-ENOBUFS, r.lost_err);
}

// The read timeout counts "no byte received while reading (not paused)":
// time spent paused must not count once reading resumes.
TEST(Transport, ReadTimeoutDoesNotCountTimeSpentPaused) {
    Rec r;
    bool lost_soon_after_resume = true;
    in_loop([&] {
        Pair p;
        evs_transport *t = wrap(p.mine(), r);
        ASSERT_TRUE(peer_send(p.peer(), "x"));
        ASSERT_TRUE(wait_for([&] { return r.data.size() == 1; }));
        evs_timeouts to{};
        to.read = 1.0;
        ASSERT_EQ(0, evs_transport_set_timeouts(t, &to));
        evs_transport_pause_reading(t);
        evs_sleep(1.5);             // paused: no read timeout
        ASSERT_EQ(0, r.lost);
        evs_transport_resume_reading(t);
        evs_sleep(0.3);             // well within the read timeout since reading resumed
        lost_soon_after_resume = r.lost > 0;
        if (!r.lost) evs_transport_close(t);
        ASSERT_TRUE(lost_once(r));
    });
    EXPECT_FALSE(lost_soon_after_resume) << "lost_err=" << r.lost_err;
}
