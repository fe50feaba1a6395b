// sendfile: evs_transport_sendfile (protocol mode) and evs_sendfile
// (stream mode) over real sockets, a pipe transport and TLS: exact bytes
// for offset/count ranges, count 0 (to the end), ranges past the end, the
// file offset left alone, ordering after queued data, flow control
// (pause_writing above high; the stream call keeps the queue bounded),
// the read+write fallback (TLS, pipes) and errors.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include <evstream/pipe.h>
#include <evstream/sendfile.h>

#include "helpers.h"
#include "tls_certs.h"

using namespace evs_test;

namespace {

template <typename F>
void run(F f) {
    EXPECT_EQ(0, run_in_task(f));
}


// A temp file holding @content; removed with its dir by the destructor.
struct TempFile {
    std::string dir, path;
    int fd = -1;
    explicit TempFile(const std::string &content) {
        dir = make_temp_dir();
        path = dir + "/data";
        int w = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        EXPECT_TRUE(w >= 0 && write(w, content.data(), content.size()) == (ssize_t)content.size());
        close(w);
        fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    }
    ~TempFile() {
        close(fd);
        remove_dir(dir);
    }
};

// A socket pair with small buffers whose peer end starts reading (to EOF)
// only once told to, so that the sender fills the queue and parks first.
struct LatePeer {
    int sv[2];
    std::atomic<bool> go{false};
    std::string got;
    std::thread th;
    LatePeer() {
        socket_pair(sv);
        int small = 16384;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        th = std::thread([this] {
            while (!go) usleep(1000);
            got = read_to_eof(sv[1]);
            close(sv[1]);
        });
    }
    // Let it read (if not yet), wait for EOF, and return what it read.
    std::string join() {
        go = true;
        if (th.joinable()) th.join();
        return got;
    }
    ~LatePeer() { join(); }
};

struct Rec {
    int pause = 0, resume = 0, lost = 0;
    int lost_err = INT_MIN;
    size_t max_size = 0;
};

Rec *R(void *c) { return static_cast<Rec *>(c); }

const evs_protocol kProto = {
    .connection_made = nullptr,
    .data_received = nullptr,
    .eof_received = nullptr,
    .connection_lost =
        [](evs_transport *, int err, void *c) {
            R(c)->lost++;
            R(c)->lost_err = err;
        },
    .pause_writing = [](evs_transport *, void *c) { R(c)->pause++; },
    .resume_writing = [](evs_transport *, void *c) { R(c)->resume++; },
    .get_buffer = nullptr,
    .buffer_updated = nullptr,
};

// Read from a non-blocking fd whatever is there.
size_t slurp(int fd, std::string &out) {
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        out.append(buf, (size_t)n);
        total += (size_t)n;
    }
    return total;
}

}  // namespace

TEST(SendfileTest, RangesOverASocketAreExactAndTheFileOffsetIsUntouched) {
    std::string content = pattern(1024 * 1024, 3);
    TempFile f(content);
    struct Range {
        off_t off;
        size_t count;
        size_t expect;
    } ranges[] = {
        {0, 100, 100},
        {1000, 500000, 500000},
        {1000000, 0, content.size() - 1000000},          // 0: to the end
        {(off_t)content.size() - 10, 1000, 10},          // clamped at the end
        {(off_t)content.size() + 5, 10, 0},              // past the end
    };
    for (const Range &rg : ranges) {
        int sv[2];
        socket_pair(sv);
        std::string got;
        std::thread peer([&] {
            got = read_to_eof(sv[1]);
            close(sv[1]);
        });
        Rec r;
        ssize_t sent = -1;
        run([&] {
            evs_transport *t = nullptr;
            ASSERT_EQ(0, evs_transport_new(sv[0], &kProto, &r, &t));
            sent = evs_transport_sendfile(t, f.fd, rg.off, rg.count);
            evs_transport_close(t);
            EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        });
        peer.join();
        EXPECT_EQ((ssize_t)rg.expect, sent);
        EXPECT_EQ(rg.expect, got.size());
        if (rg.expect) {
            EXPECT_TRUE(got == content.substr((size_t)rg.off, rg.expect));
        }
        EXPECT_EQ(0, r.lost_err);
        EXPECT_EQ(0, lseek(f.fd, 0, SEEK_CUR));
    }
}

TEST(SendfileTest, GoesAfterQueuedBytesAndPausesAboveHigh) {
    std::string content = pattern(2 * 1024 * 1024, 5);
    TempFile f(content);
    int sv[2];
    socket_pair(sv);
    Rec r;
    std::string got;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(sv[0], &kProto, &r, &t));
        // Fill the socket so that the header stays queued.
        std::string filler(1024 * 1024, 'F');
        ASSERT_EQ(0, evs_transport_write(t, filler.data(), filler.size()));
        ASSERT_GT(evs_transport_get_write_buffer_size(t), 0u);
        ASSERT_EQ(0, evs_transport_write(t, "HEADER", 6));
        ssize_t n = evs_transport_sendfile(t, f.fd, 0, 0);
        EXPECT_EQ((ssize_t)content.size(), n);
        EXPECT_GT(evs_transport_get_write_buffer_size(t), EVS_WRITE_HIGH_WATER_DEFAULT);
        EXPECT_EQ(1, r.pause);
        ASSERT_EQ(0, evs_transport_write(t, "TRAILER", 7));
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] {
            slurp(sv[1], got);
            return r.lost == 1;
        }));
        slurp(sv[1], got);
    });
    close(sv[1]);
    ASSERT_EQ(1024u * 1024u + 6 + content.size() + 7, got.size());
    EXPECT_EQ("HEADER", got.substr(1024 * 1024, 6));
    EXPECT_TRUE(got.substr(1024 * 1024 + 6, content.size()) == content);
    EXPECT_EQ("TRAILER", got.substr(got.size() - 7));
    EXPECT_EQ(1, r.resume);
}

TEST(SendfileTest, ErrorsAfterCloseAndForBadArguments) {
    TempFile f("some bytes");
    int sv[2];
    socket_pair(sv);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(sv[0], &kProto, &r, &t));
        EXPECT_EQ(-EINVAL, evs_transport_sendfile(t, f.fd, -1, 10));
        EXPECT_EQ(-EBADF, evs_transport_sendfile(t, -1, 0, 10));
        // A pipe has no size: count 0 cannot mean "to the end".
        int p[2];
        ASSERT_EQ(0, pipe(p));
        EXPECT_EQ(-EINVAL, evs_transport_sendfile(t, p[0], 0, 0));
        close(p[0]);
        close(p[1]);
        ASSERT_EQ(0, evs_transport_write_eof(t));
        EXPECT_EQ(-EPIPE, evs_transport_sendfile(t, f.fd, 0, 4));
        evs_transport_close(t);
        EXPECT_EQ(-EPIPE, evs_transport_sendfile(t, f.fd, 0, 4));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    EXPECT_EQ("", read_to_eof(sv[1]));
    close(sv[1]);
}

// An error that is the file's (opened write-only: EBADF) is returned, and
// the connection lives on, as on TLS or a pipe; zero-copy sendfile() ended
// the connection with it.
TEST(SendfileTest, AFileErrorIsReturnedAndTheConnectionLivesOn) {
    TempFile f("some bytes");
    int wo = open(f.path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(wo, 0);
    int sv[2];
    socket_pair(sv);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(sv[0], &kProto, &r, &t));
        EXPECT_EQ(-EBADF, evs_transport_sendfile(t, wo, 0, 4));
        EXPECT_EQ(0, evs_transport_write(t, "still", 5));
        EXPECT_EQ(4, evs_transport_sendfile(t, f.fd, 0, 4));
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(0, r.lost_err);
    });
    EXPECT_EQ("stillsome", read_to_eof(sv[1]));
    close(sv[1]);
    close(wo);
}

// A file that fails after part of it was sent leaves the peer a cut file:
// the connection is aborted with the file's error. It stayed open, and a
// handler that went on writing gave the peer a stream with a hole in it.
TEST(SendfileTest, AFileThatFailsHalfWayAbortsTheConnection) {
    std::string content = pattern(4 * 1024 * 1024, 23);
    TempFile f(content);
    LatePeer lp;
    int *sv = lp.sv;
    std::atomic<bool> &go = lp.go;
    run([&] {
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 0, &r, &w));
        struct Breaker {
            evs_writer *w;
            int file_fd;
            std::string dir;
            std::atomic<bool> *go;
        } b{w, f.fd, f.dir, &go};
        evs_task *breaker = nullptr;
        // Once the first slice waits in the queue, the file's fd becomes a
        // directory: the next slice's read fails with EISDIR.
        ASSERT_EQ(0, evs_task_spawn(
                         [](void *a) -> int {
                             Breaker *b = static_cast<Breaker *>(a);
                             evs_transport *t = evs_writer_transport(b->w);
                             while (evs_transport_get_write_buffer_size(t) == 0)
                                 if (evs_sleep(0.001) < 0) return -1;
                             int d = open(b->dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                             int rc = d >= 0 && dup2(d, b->file_fd) >= 0 ? 0 : -2;
                             if (d >= 0) close(d);
                             *b->go = true;
                             return rc;
                         },
                         &b, &breaker));
        EXPECT_EQ(-EISDIR, evs_sendfile(w, f.fd, 0, 0));
        EXPECT_EQ(0, evs_task_join(breaker, nullptr));
        EXPECT_TRUE(evs_is_closing(w));
        EXPECT_EQ(-EISDIR, evs_write(w, "x", 1));
        evs_writer_free(w);
    });
    std::string got = lp.join();
    EXPECT_LT(got.size(), content.size());
    EXPECT_TRUE(got == content.substr(0, got.size()));
}

// evs_sendfile's slices fit the connection's cap (max_write_buffer) on top
// of what is queued: a 256 KiB slice to a peer not reading yet went past a
// 128 KiB cap, and the connection was aborted (-ENOBUFS).
TEST(SendfileTest, StreamSendfileStaysWithinTheConnectionsCap) {
    std::string content = pattern(4 * 1024 * 1024, 17);
    TempFile f(content);
    LatePeer lp;
    int *sv = lp.sv;
    std::atomic<bool> &go = lp.go;
    ssize_t sent = -1;
    run([&] {
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 0, &r, &w));
        evs_transport *t = evs_writer_transport(w);
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 64 * 1024, 16 * 1024));
        evs_transport_set_max_write_buffer(t, 128 * 1024);
        evs_task *starter = nullptr;
        ASSERT_EQ(0, evs_task_spawn(
                         [](void *a) -> int {
                             evs_sleep(0.1);
                             *static_cast<std::atomic<bool> *>(a) = true;
                             return 0;
                         },
                         &go, &starter));
        sent = evs_sendfile(w, f.fd, 0, 0);
        evs_close(w);
        EXPECT_EQ(0, evs_wait_closed(w));
        EXPECT_EQ(0, evs_task_join(starter, nullptr));
        evs_writer_free(w);
    });
    std::string got = lp.join();
    EXPECT_EQ((ssize_t)content.size(), sent);
    EXPECT_TRUE(got == content);
}

// sendfile() takes no MSG_NOSIGNAL: to a peer that has gone it raised
// SIGPIPE, which at its default killed a program running evs_run on a
// thread that had not blocked it. It now fails with -EPIPE like a write.
TEST(SendfileTest, APeerThatHasGoneIsEpipeNotSigpipe) {
    struct sigaction old, dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, &old);
    TempFile f("bytes nobody reads");
    int sv[2];
    socket_pair(sv);
    close(sv[1]);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(sv[0], &kProto, &r, &t));
        EXPECT_EQ(-EPIPE, evs_transport_sendfile(t, f.fd, 0, 0));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(-EPIPE, r.lost_err);
    });
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    EXPECT_FALSE(sigismember(&pending, SIGPIPE));
    sigaction(SIGPIPE, &old, nullptr);
}

TEST(SendfileTest, PipeTransportFallsBackToReadAndWrite) {
    std::string content = pattern(300000, 9);
    TempFile f(content);
    int p[2];
    ASSERT_EQ(0, pipe2(p, O_CLOEXEC));
    std::string got;
    std::thread peer([&] {
        char buf[65536];
        ssize_t n;
        struct pollfd pf = {p[0], POLLIN, 0};
        while (poll(&pf, 1, 10000) == 1 && (n = read(p[0], buf, sizeof buf)) > 0)
            got.append(buf, (size_t)n);
        close(p[0]);
    });
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        EXPECT_EQ((ssize_t)(content.size() - 7), evs_transport_sendfile(t, f.fd, 7, 0));
        ASSERT_EQ(0, evs_transport_write_eof(t));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    peer.join();
    EXPECT_TRUE(got == content.substr(7));
}

TEST(SendfileTest, StreamSendfileOverTcpKeepsTheQueueBounded) {
    std::string content = pattern(8 * 1024 * 1024, 13);
    TempFile f(content);
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    ASSERT_GE(lfd, 0);
    int cfd = connect_tcp(port);
    ASSERT_GE(cfd, 0);
    int sfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(sfd, 0);
    close(lfd);
    std::string got;
    std::thread peer([&] {
        // A slow-ish reader: small reads.
        char buf[16384];
        ssize_t n;
        while ((n = recv(cfd, buf, sizeof buf, 0)) > 0) got.append(buf, (size_t)n);
        close(cfd);
    });
    ssize_t sent = -1;
    size_t max_queued = 0;
    run([&] {
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sfd, 0, &r, &w));
        // Split in a few calls to look at the queue in between.
        sent = 0;
        for (int i = 0; i < 4; i++) {
            ssize_t n = evs_sendfile(w, f.fd, (off_t)(i * 2 * 1024 * 1024), 2 * 1024 * 1024);
            ASSERT_EQ(2 * 1024 * 1024, n);
            sent += n;
            max_queued = std::max(max_queued,
                                  evs_transport_get_write_buffer_size(evs_writer_transport(w)));
        }
        EXPECT_EQ(0, evs_sendfile(w, f.fd, (off_t)content.size(), 0));  // nothing left
        evs_close(w);
        EXPECT_EQ(0, evs_wait_closed(w));
        EXPECT_EQ(-EPIPE, evs_sendfile(w, f.fd, 0, 10));
        evs_writer_free(w);
    });
    peer.join();
    EXPECT_EQ((ssize_t)content.size(), sent);
    EXPECT_LE(max_queued, (size_t)EVS_WRITE_HIGH_WATER_DEFAULT);
    ASSERT_EQ(content.size(), got.size());
    EXPECT_TRUE(got == content);
}

TEST(SendfileTest, TlsFallsBackToReadAndWrite) {
    TlsCerts certs;
    ASSERT_TRUE(make_tls_certs(&certs));
    std::string content = pattern(1024 * 1024 + 123, 21);
    TempFile f(content);
    evs_tls_certificate cert = {certs.server.c_str(), certs.server_key.c_str(), nullptr, nullptr};
    evs_tls_server_options so = {};
    so.certificates = &cert;
    so.ncertificates = 1;
    evs_tls_context *sctx = nullptr, *cctx = nullptr;
    char err[256];
    ASSERT_EQ(0, evs_tls_server_context_new(&so, &sctx, err, sizeof err)) << err;
    evs_tls_client_options co = {};
    co.ca_file = certs.ca.c_str();
    ASSERT_EQ(0, evs_tls_client_context_new(&co, &cctx, err, sizeof err)) << err;
    int sv[2];
    socket_pair(sv);
    std::string got;
    ssize_t sent = -1;
    struct Ctx {
        int fd;
        evs_tls_context *ctx;
        std::string *got;
    } cc = {sv[1], cctx, &got};
    run([&] {
        evs_task *client = nullptr;
        ASSERT_EQ(0, evs_task_spawn(
                         [](void *p) -> int {
                             Ctx *c = static_cast<Ctx *>(p);
                             evs_reader *r;
                             evs_writer *w;
                             if (evs_stream_open_fd(c->fd, 0, &r, &w) < 0) return -1;
                             evs_tls_options o = {};
                             o.server_hostname = "localhost";
                             int rc = evs_start_tls(w, c->ctx, false, &o);
                             char buf[65536];
                             ssize_t n;
                             while (rc == 0 && (n = evs_read(r, buf, sizeof buf)) > 0)
                                 c->got->append(buf, (size_t)n);
                             evs_writer_free(w);
                             return rc;
                         },
                         &cc, &client));
        evs_reader *r;
        evs_writer *w;
        ASSERT_EQ(0, evs_stream_open_fd(sv[0], 0, &r, &w));
        ASSERT_EQ(0, evs_start_tls(w, sctx, true, nullptr));
        sent = evs_sendfile(w, f.fd, 0, 0);
        evs_close(w);
        EXPECT_EQ(0, evs_wait_closed(w));
        evs_writer_free(w);
        int result = -1;
        EXPECT_EQ(0, evs_task_join(client, &result));
        EXPECT_EQ(0, result);
    });
    evs_tls_context_unref(sctx);
    evs_tls_context_unref(cctx);
    remove_tls_certs(&certs);
    EXPECT_EQ((ssize_t)content.size(), sent);
    ASSERT_EQ(content.size(), got.size());
    EXPECT_TRUE(got == content);
}
