// Pipe transports: evs_pipe_open (protocol mode) and evs_stream_open_pipe
// (stream mode) on real pipes, a FIFO and a pseudo-terminal: data both
// ways, EOF, write_eof closing the write end, flow control, a reader that
// goes away (-EPIPE, and the process survives SIGPIPE at SIG_DFL), and
// plain evs_transport_new() on a non-socket fd.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <functional>
#include <string>
#include <thread>

#include <evstream/pipe.h>

#include "helpers.h"

using namespace evs_test;

namespace {

template <typename F>
void run(F f) {
    EXPECT_EQ(0, run_in_task(f));
}


struct Rec {
    int made = 0, eof = 0, lost = 0, pause = 0, resume = 0, after_lost = 0;
    int lost_err = INT_MIN;
    bool keep_open = false;
    std::string data;
    evs_transport *t = nullptr;
};

Rec *R(void *c) { return static_cast<Rec *>(c); }

const evs_protocol kProto = {
    .connection_made = [](evs_transport *t, void *c) { R(c)->made++; R(c)->t = t; },
    .data_received =
        [](evs_transport *, const void *d, size_t n, void *c) {
            if (R(c)->lost) R(c)->after_lost++;
            R(c)->data.append(static_cast<const char *>(d), n);
        },
    .eof_received =
        [](evs_transport *, void *c) {
            R(c)->eof++;
            return R(c)->keep_open;
        },
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

void make_pipe(int p[2]) { ASSERT_EQ(0, pipe2(p, O_CLOEXEC)); }

// The helpers' socket I/O (send/recv) does not work on pipes: plain
// blocking read()/write() with poll() bounds instead.
bool fd_write_all(int fd, const void *buf, size_t n) {
    const char *p = static_cast<const char *>(buf);
    while (n > 0) {
        struct pollfd pf = {fd, POLLOUT, 0};
        if (poll(&pf, 1, 10000) != 1) return false;
        ssize_t w = write(fd, p, n);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

bool fd_read_exact(int fd, void *buf, size_t n) {
    char *p = static_cast<char *>(buf);
    while (n > 0) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) != 1) return false;
        ssize_t r = read(fd, p, n);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

std::string fd_read_to_eof(int fd) {
    std::string out;
    char buf[65536];
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) != 1) break;
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) break;
        out.append(buf, (size_t)r);
    }
    return out;
}

// Non-blocking read of whatever is there (peer side of a test pipe).
std::string drain_fd(int fd) {
    std::string out;
    char buf[65536];
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        out.append(buf, (size_t)n);
    }
    fcntl(fd, F_SETFL, fl);
    return out;
}

bool sigpipe_pending() {
    sigset_t s;
    sigemptyset(&s);
    sigpending(&s);
    return sigismember(&s, SIGPIPE);
}

}  // namespace

TEST(PipeTest, ReadAndWritePipesCarryDataBothWaysThenEofAndLost) {
    int in[2], out[2];  // we read in[0] and write out[1]
    make_pipe(in);
    make_pipe(out);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(in[0], out[1], &kProto, &r, &t));
        EXPECT_EQ(1, r.made);
        EXPECT_EQ(t, r.t);
        EXPECT_EQ(in[0], evs_transport_get_fd(t));
        EXPECT_TRUE(evs_transport_can_write_eof(t));
        struct sockaddr_storage ss;
        socklen_t sl;
        EXPECT_LT(evs_transport_get_peername(t, &ss, &sl), 0);
        ASSERT_TRUE(fd_write_all(in[1], "hello pipe", 10));
        EXPECT_TRUE(wait_until([&] { return r.data.size() == 10; }));
        EXPECT_EQ("hello pipe", r.data);
        EXPECT_EQ(0, evs_transport_write(t, "back", 4));
        EXPECT_TRUE(wait_until([&] { return true; }));
        char buf[8] = {};
        ASSERT_TRUE(fd_read_exact(out[0], buf, 4));
        EXPECT_EQ("back", std::string(buf, 4));
        close(in[1]);  // EOF on the read end
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(1, r.eof);
        EXPECT_EQ(0, r.lost_err);
    });
    // The transport closed its ends: the write end is gone, so EOF here.
    EXPECT_EQ("", fd_read_to_eof(out[0]));
    close(out[0]);
    EXPECT_EQ(0, r.after_lost);
}

TEST(PipeTest, EofKeptOpenStillWritesThenWriteEofClosesWriteEnd) {
    int in[2], out[2];
    make_pipe(in);
    make_pipe(out);
    Rec r;
    r.keep_open = true;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(in[0], out[1], &kProto, &r, &t));
        close(in[1]);
        EXPECT_TRUE(wait_until([&] { return r.eof == 1; }));
        EXPECT_EQ(0, r.lost);
        EXPECT_EQ(0, evs_transport_write(t, "after eof", 9));
        EXPECT_EQ(0, evs_transport_write_eof(t));
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "x", 1));
        // The reader of the write pipe sees the bytes, then EOF.
        std::string got;
        EXPECT_TRUE(wait_until([&] {
            got += drain_fd(out[0]);
            struct pollfd p = {out[0], POLLIN, 0};
            return got.size() == 9 && poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
        }));
        EXPECT_EQ("after eof", got);
        EXPECT_EQ(0, r.lost);  // reading side kept open by eof_received
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(0, r.lost_err);
    });
    close(out[0]);
}

TEST(PipeTest, WriteOnlyPipeWriteEofFlushesAndEndsTheTransport) {
    int p[2];
    make_pipe(p);
    Rec r;
    std::string payload = pattern(300000);
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        EXPECT_EQ(p[1], evs_transport_get_fd(t));
        EXPECT_EQ(0, evs_transport_write(t, payload.data(), payload.size()));
        EXPECT_GT(evs_transport_get_write_buffer_size(t), 0u);  // a pipe holds 64 KiB
        EXPECT_EQ(1, r.pause);
        EXPECT_EQ(0, evs_transport_write_eof(t));
        EXPECT_EQ(0, r.lost);  // still flushing
        std::string got;
        EXPECT_TRUE(wait_until([&] {
            got += drain_fd(p[0]);
            return r.lost == 1;
        }));
        got += drain_fd(p[0]);
        EXPECT_EQ(payload.size(), got.size());
        EXPECT_TRUE(got == payload);
        EXPECT_EQ(0, r.lost_err);
        EXPECT_EQ(1, r.resume);
    });
    EXPECT_EQ("", fd_read_to_eof(p[0]));  // write end closed by the transport
    close(p[0]);
}

TEST(PipeTest, FlowControlPausesAboveHighAndResumesAtLow) {
    int p[2];
    make_pipe(p);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        ASSERT_EQ(0, evs_transport_set_write_buffer_limits(t, 1000, 100));
        std::string chunk(4096, 'a');
        // Fill the pipe (64 KiB) and then the queue past high.
        while (evs_transport_get_write_buffer_size(t) <= 1000)
            ASSERT_EQ(0, evs_transport_write(t, chunk.data(), chunk.size()));
        EXPECT_EQ(1, r.pause);
        EXPECT_EQ(0, r.resume);
        size_t queued = evs_transport_get_write_buffer_size(t);
        EXPECT_GT(queued, 1000u);
        size_t total = 0;
        EXPECT_TRUE(wait_until([&] {
            total += drain_fd(p[0]).size();
            return r.resume == 1;
        }));
        EXPECT_LE(evs_transport_get_write_buffer_size(t), 100u);
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] {
            total += drain_fd(p[0]).size();
            return r.lost == 1;
        }));
        total += drain_fd(p[0]).size();
        EXPECT_EQ(0u, total % 4096);
        EXPECT_GE(total, 64u * 1024u);
    });
    close(p[0]);
}

TEST(PipeTest, ReaderGoneLosesWithEpipeAndSigpipeDoesNotKill) {
    // SIGPIPE at its default would kill the test if the library let it through.
    struct sigaction old, dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, &old);
    int p[2];
    make_pipe(p);
    close(p[0]);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        int rc = evs_transport_write(t, "doomed", 6);
        EXPECT_EQ(-EPIPE, rc);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(-EPIPE, r.lost_err);
    });
    EXPECT_FALSE(sigpipe_pending());
    sigaction(SIGPIPE, &old, nullptr);
}

TEST(PipeTest, WriteOnlyPipeLearnsItsReaderLeftWithoutWriting) {
    int p[2];
    make_pipe(p);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        ASSERT_EQ(0, evs_transport_write(t, "read", 4));
        EXPECT_TRUE(wait_until([&] { return drain_fd(p[0]) == "read"; }));
        EXPECT_EQ(0, r.lost);
        // Pausing reading (a stream-mode reader over its limit, say) must
        // not stop the watch: it was dropped and never came back.
        evs_transport_pause_reading(t);
        evs_transport_resume_reading(t);
        close(p[0]);  // nothing queued: a clean end, as in asyncio
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(0, r.lost_err);
    });
}

TEST(PipeTest, WriteOnlyStreamWriterLearnsItsReaderLeft) {
    int p[2];
    make_pipe(p);
    run([&] {
        evs_reader *rd = nullptr;
        evs_writer *w = nullptr;
        ASSERT_EQ(0, evs_stream_open_pipe(-1, p[1], 0, &rd, &w));
        close(p[0]);
        // wait_closed parks until connection_lost, with no write to notice it.
        EXPECT_EQ(0, evs_wait_closed(w));
        EXPECT_TRUE(evs_is_closing(w));
        evs_writer_free(w);
    });
}

TEST(PipeTest, QueuedBytesAndReaderGoneWhileFlushing) {
    struct sigaction old, dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, &old);
    int p[2];
    make_pipe(p);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, p[1], &kProto, &r, &t));
        std::string big(200000, 'z');
        ASSERT_EQ(0, evs_transport_write(t, big.data(), big.size()));
        EXPECT_GT(evs_transport_get_write_buffer_size(t), 0u);
        close(p[0]);  // the reader goes away with bytes still queued
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(-EPIPE, r.lost_err);
    });
    EXPECT_FALSE(sigpipe_pending());
    sigaction(SIGPIPE, &old, nullptr);
}

TEST(PipeTest, ReadOnlyPipeRefusesWrites) {
    int p[2];
    make_pipe(p);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(p[0], -1, &kProto, &r, &t));
        EXPECT_EQ(-EPIPE, evs_transport_write(t, "x", 1));
        EXPECT_EQ(0u, evs_transport_get_write_buffer_size(t));
        ASSERT_TRUE(fd_write_all(p[1], "data", 4));
        EXPECT_TRUE(wait_until([&] { return r.data == "data"; }));
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    close(p[1]);
}

// A file descriptor epoll cannot watch (/dev/null, a regular file) is
// refused: the transport waited forever for data or EOF that never came.
TEST(PipeTest, AnFdThatCannotBePolledIsRefused) {
    std::string dir = make_temp_dir();
    std::string file = dir + "/regular";
    Rec r;
    run([&] {
        int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        ASSERT_GE(null_fd, 0);
        EXPECT_EQ(-EPERM, evs_pipe_open(null_fd, -1, &kProto, &r, nullptr));
        EXPECT_EQ(-1, fcntl(null_fd, F_GETFD));  // closed: owned even on failure
        int reg = open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ASSERT_GE(reg, 0);
        evs_reader *rd;
        evs_writer *wr;
        EXPECT_EQ(-EPERM, evs_stream_open_pipe(-1, reg, 0, &rd, &wr));
        EXPECT_EQ(-1, fcntl(reg, F_GETFD));
    });
    EXPECT_EQ(0, r.made);
    remove_dir(dir);
}

TEST(PipeTest, InvalidArguments) {
    Rec r;
    run([&] {
        EXPECT_EQ(-EINVAL, evs_pipe_open(-1, -1, &kProto, &r, nullptr));
        int p[2];
        make_pipe(p);
        EXPECT_EQ(-EINVAL, evs_pipe_open(p[0], p[1], nullptr, &r, nullptr));
        // Both were closed (owned even on failure).
        EXPECT_EQ(-1, fcntl(p[0], F_GETFD));
        EXPECT_EQ(-1, fcntl(p[1], F_GETFD));
        evs_reader *rd;
        evs_writer *wr;
        EXPECT_EQ(-EINVAL, evs_stream_open_pipe(-1, -1, 0, &rd, &wr));
    });
    EXPECT_EQ(0, r.made);
    // Not on a worker: refused and the fds are closed.
    int p[2];
    make_pipe(p);
    EXPECT_EQ(-EINVAL, evs_pipe_open(p[0], p[1], &kProto, &r, nullptr));
    EXPECT_EQ(-1, fcntl(p[0], F_GETFD));
}

TEST(PipeTest, StreamModeOverPipes) {
    int in[2], out[2];
    make_pipe(in);
    make_pipe(out);
    std::thread peer([&] {
        // Echo every line upper-cased until EOF, then close.
        std::string buf;
        char c;
        while (read(out[0], &c, 1) == 1) {
            buf += c;
            if (c == '\n') {
                for (auto &ch : buf) ch = (char)toupper((unsigned char)ch);
                fd_write_all(in[1], buf.data(), buf.size());
                buf.clear();
            }
        }
        close(in[1]);
        close(out[0]);
    });
    run([&] {
        evs_reader *r = nullptr;
        evs_writer *w = nullptr;
        ASSERT_EQ(0, evs_stream_open_pipe(in[0], out[1], 0, &r, &w));
        EXPECT_TRUE(evs_can_write_eof(w));
        for (int i = 0; i < 50; i++) {
            std::string line = "line " + std::to_string(i) + "\n";
            ASSERT_EQ(0, evs_write(w, line.data(), line.size()));
            ASSERT_EQ(0, evs_drain(w));
            const void *v;
            ssize_t n = evs_readline(r, &v);
            ASSERT_EQ((ssize_t)line.size(), n);
            EXPECT_EQ("LINE " + std::to_string(i) + "\n",
                      std::string(static_cast<const char *>(v), (size_t)n));
        }
        ASSERT_EQ(0, evs_write_eof(w));
        char buf[16];
        EXPECT_EQ(0, evs_read(r, buf, sizeof buf));  // the peer closed after our EOF
        EXPECT_TRUE(evs_at_eof(r));
        evs_writer_free(w);
    });
    peer.join();
}

TEST(PipeTest, StreamModeLargeTransferWithDrain) {
    int p[2];
    make_pipe(p);
    std::string payload = pattern(2 * 1024 * 1024, 7);
    std::string got;
    std::thread peer([&] {
        got = fd_read_to_eof(p[0]);
        close(p[0]);
    });
    run([&] {
        evs_reader *r = nullptr;
        evs_writer *w = nullptr;
        ASSERT_EQ(0, evs_stream_open_pipe(-1, p[1], 0, &r, &w));
        for (size_t off = 0; off < payload.size(); off += 100000) {
            size_t n = std::min<size_t>(100000, payload.size() - off);
            ASSERT_EQ(0, evs_write(w, payload.data() + off, n));
            ASSERT_EQ(0, evs_drain(w));
            // drain() leaves at most the high watermark queued.
            EXPECT_LE(evs_transport_get_write_buffer_size(evs_writer_transport(w)),
                      EVS_WRITE_HIGH_WATER_DEFAULT);
        }
        evs_close(w);
        EXPECT_EQ(0, evs_wait_closed(w));
        evs_writer_free(w);
    });
    peer.join();
    EXPECT_EQ(payload.size(), got.size());
    EXPECT_TRUE(got == payload);
}

// A FIFO opened O_RDWR for writing (so that the open neither blocks nor
// fails for want of a reader) became "readable" with its own bytes, and
// the transport took that for its reader leaving after the first write.
TEST(PipeTest, AFifoOpenedReadWriteKeepsWriting) {
    std::string path = make_temp_dir() + "/fifo";
    ASSERT_EQ(0, mkfifo(path.c_str(), 0600));
    int rd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(rd, 0);
    int wr = open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(wr, 0);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_pipe_open(-1, wr, &kProto, &r, &t));
        ASSERT_EQ(0, evs_transport_write(t, "one ", 4));
        // Give the loop turns in which the bytes sit unread in the FIFO.
        for (int i = 0; i < 20; i++) evs_sleep(0.005);
        EXPECT_EQ(0, r.lost);
        ASSERT_EQ(0, evs_transport_write(t, "two", 3));
        std::string got;
        EXPECT_TRUE(wait_until([&] {
            got += drain_fd(rd);
            return got == "one two";
        })) << got;
        evs_transport_close(t);
    });
    close(rd);
    unlink(path.c_str());
    rmdir(path.substr(0, path.rfind('/')).c_str());
}

TEST(PipeTest, FifoReadEnd) {
    std::string dir = make_temp_dir();
    std::string path = dir + "/fifo";
    ASSERT_EQ(0, mkfifo(path.c_str(), 0600));
    int rfd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(rfd, 0);
    int wfd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(wfd, 0);
    run([&] {
        evs_reader *r = nullptr;
        evs_writer *w = nullptr;
        ASSERT_EQ(0, evs_stream_open_pipe(rfd, -1, 0, &r, &w));
        EXPECT_EQ(-EPIPE, evs_write(w, "x", 1));
        ASSERT_TRUE(fd_write_all(wfd, "through the fifo\n", 17));
        close(wfd);
        char buf[64];
        ssize_t n = evs_read_to_eof(r, buf, sizeof buf);
        ASSERT_EQ(17, n);
        EXPECT_EQ("through the fifo\n", std::string(buf, 17));
        evs_writer_free(w);
    });
    remove_dir(dir);
}

TEST(PipeTest, TtyOneFdBothWaysCannotHalfClose) {
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    ASSERT_GE(m, 0);
    ASSERT_EQ(0, grantpt(m));
    ASSERT_EQ(0, unlockpt(m));
    int s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
    ASSERT_GE(s, 0);
    // Raw mode on the terminal side, so bytes pass as they are.
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        // The master, read and written through one fd.
        ASSERT_EQ(0, evs_pipe_open(m, m, &kProto, &r, &t));
        EXPECT_FALSE(evs_transport_can_write_eof(t));
        EXPECT_EQ(-ENOTSUP, evs_transport_write_eof(t));
        ASSERT_EQ(0, evs_transport_write(t, "to tty\n", 7));
        char buf[64];
        std::string got;
        EXPECT_TRUE(wait_until([&] {
            got += drain_fd(s);
            return got.find("to tty") != std::string::npos;
        }));
        ASSERT_TRUE(fd_write_all(s, "from tty\n", 9));
        EXPECT_TRUE(wait_until([&] { return r.data.find("from tty") != std::string::npos; }));
        (void)buf;
        evs_transport_close(t);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    close(s);
}

TEST(PipeTest, TransportNewOnANonSocketFdUsesReadAndWrite) {
    int p[2];
    make_pipe(p);
    Rec r;
    run([&] {
        evs_transport *t = nullptr;
        ASSERT_EQ(0, evs_transport_new(p[0], &kProto, &r, &t));
        ASSERT_TRUE(fd_write_all(p[1], "plain", 5));
        EXPECT_TRUE(wait_until([&] { return r.data == "plain"; }));
        close(p[1]);
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        EXPECT_EQ(1, r.eof);
        EXPECT_EQ(0, r.lost_err);
    });
}
