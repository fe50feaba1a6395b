// Soak: the real evstreamd (plugins echo and echo_protocol, a TLS listener
// with a certificate made at run time, the admin listener) under churning
// load from this process: an epoll client per thread opens and closes
// thousands of connections on four listeners (echo over TCP, over a Unix
// socket, echo_protocol over TCP, echo over TLS) and mixes
//   - exchanges of random-sized messages, verified byte for byte,
//   - half-closes (shutdown(SHUT_WR): the echo, then EOF),
//   - induced failures: close or RST (SO_LINGER 0) in the middle of a
//     message or of its echo, TLS handshakes abandoned part way,
//   - slow readers that stop reading for a while, so the daemon's write
//     buffer passes the (small) high watermark and its drain parks.
// Then it checks that the daemon's open fds return to the baseline, its RSS
// stays within a bound between 1/4 and the end of the load, no exchange that
// was not deliberately broken went wrong, the log has no ERROR line, the
// /status counters agree with what the clients did, and SIGTERM ends the
// daemon with status 0 (under ASan that includes LeakSanitizer at exit).
//
// Loopback only. Bounded: a connection with no progress for a while is an
// error, the drain has a deadline, the daemon is killed by its PID.
//
// Defaults (CI): --duration 40 --connections 2000 --total 10000, scaled
// down automatically in a sanitizer build (ASan 0.4, TSan 0.2; EVS_SOAK_SCALE
// overrides). Long:
//   tests/soak/soak_test --duration 600 --connections 10000
// Every option also comes from the environment: EVS_SOAK_DURATION,
// EVS_SOAK_CONNECTIONS, EVS_SOAK_TOTAL, EVS_SOAK_THREADS, EVS_SOAK_WORKERS,
// EVS_SOAK_SEED, EVS_SOAK_SCALE, EVS_SOAK_RSS_BOUND.
#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"
#include "tls_certs.h"

using namespace evs_test;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SOAK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SOAK_SANITIZED 1
#endif
#endif
#ifndef SOAK_SANITIZED
#define SOAK_SANITIZED 0
#endif
#if defined(__SANITIZE_THREAD__)
#define SOAK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SOAK_TSAN 1
#endif
#endif
#ifndef SOAK_TSAN
#define SOAK_TSAN 0
#endif

// --- options -----------------------------------------------------------------

struct Options {
    double duration = 40;    // seconds, the whole run
    long connections = 2000; // concurrent connections (target)
    long total = 0;          // connections over the run (0: 5 x connections x duration/40)
    int threads = 0;         // client threads (0: from the CPU count)
    int workers = 2;         // daemon workers
    uint64_t seed = 0;       // 0: from the clock
    double scale = -1;       // multiplies connections and total (-1: 1, or less when sanitized)
    double rss_bound = -1;   // allowed RSS growth between 1/4 and the end of the load (-1: auto)
    int fd_slack = 4;        // allowed difference of the daemon's fds from the baseline
    bool verbose = false;
};
Options g_opt;

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// --- the byte pattern ------------------------------------------------------------
// Byte i of a connection's stream is a function of (seed, i), so nothing sent
// needs to be kept to verify the echo, and a lost, duplicated or reordered
// block shows up.

inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void fill_pattern(uint64_t seed, uint64_t off, unsigned char *buf, size_t len) {
    size_t i = 0;
    // Whole aligned words at once (little-endian: byte k of the word is
    // bits 8k..8k+7, as below).
    while (i < len && ((off + i) & 7)) {
        uint64_t o = off + i;
        buf[i++] = (unsigned char)(mix64(seed ^ (o >> 3) * 0x100000001b3ULL) >> ((o & 7) * 8));
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; i + 8 <= len; i += 8) {
        uint64_t v = mix64(seed ^ ((off + i) >> 3) * 0x100000001b3ULL);
        memcpy(buf + i, &v, 8);
    }
#endif
    while (i < len) {
        uint64_t o = off + i;
        uint64_t v = mix64(seed ^ (o >> 3) * 0x100000001b3ULL);
        unsigned sh = (unsigned)(o & 7);
        for (; sh < 8 && i < len; sh++, i++) buf[i] = (unsigned char)(v >> (sh * 8));
    }
}

// --- statistics ------------------------------------------------------------------

enum Kind { K_TCP, K_UNIX, K_PROTO, K_TLS, K_COUNT };
const char *const kind_names[K_COUNT] = {"tcp", "unix", "proto", "tls"};

enum Plan { P_NORMAL, P_HALFCLOSE, P_ABORT_CLOSE, P_ABORT_RST, P_SLOW, P_HS_ABORT };
const char *const plan_names[] = {"normal", "halfclose", "abort-close", "abort-rst", "slow",
                                  "hs-abort"};

enum ErrKind {
    E_CONNECT,       // connect() failed
    E_TLS_HANDSHAKE, // a handshake we did not break failed
    E_MISMATCH,      // echoed bytes differ from the bytes sent
    E_EXCESS,        // more bytes than were sent, or data where EOF was due
    E_EOF,           // EOF before the echo was complete
    E_RESET,         // reset or error on a connection we did not break
    E_TLS_IO,        // other TLS error after the handshake
    E_NO_CLOSE_NOTIFY, // the daemon closed TLS without close_notify
    E_STALL,         // no progress for too long
    E_DRAIN,         // still open when the drain deadline passed
    E_CLIENT,        // the client itself (socket, epoll)
    E_COUNT
};
const char *const err_names[E_COUNT] = {"connect",  "tls-handshake", "mismatch", "excess",
                                        "eof",      "reset",         "tls-io",   "no-close-notify",
                                        "stall",    "drain-timeout", "client"};

struct KindStats {
    uint64_t attempts = 0, connected = 0, connect_retries = 0, completed = 0;
    uint64_t tls_ok = 0, tls_resumed = 0, tls_graceful = 0;
    uint64_t exchanges = 0, bytes_sent = 0, bytes_verified = 0;
    uint64_t half_closes = 0, slow_done = 0, slow_blocked = 0;
    uint64_t aborts_close = 0, aborts_rst = 0, hs_aborts = 0;

    void add(const KindStats &o) {
        attempts += o.attempts, connected += o.connected, connect_retries += o.connect_retries;
        completed += o.completed, tls_ok += o.tls_ok, tls_resumed += o.tls_resumed;
        tls_graceful += o.tls_graceful, exchanges += o.exchanges, bytes_sent += o.bytes_sent;
        bytes_verified += o.bytes_verified, half_closes += o.half_closes;
        slow_done += o.slow_done, slow_blocked += o.slow_blocked;
        aborts_close += o.aborts_close, aborts_rst += o.aborts_rst, hs_aborts += o.hs_aborts;
    }
    uint64_t induced() const { return aborts_close + aborts_rst + hs_aborts; }
};

struct Stats {
    KindStats k[K_COUNT];
    uint64_t err[E_COUNT] = {};
    uint64_t max_slow_backlog = 0; // most bytes in flight when a slow reader resumed
    uint64_t peak_open = 0;

    void add(const Stats &o) {
        for (int i = 0; i < K_COUNT; i++) k[i].add(o.k[i]);
        for (int i = 0; i < E_COUNT; i++) err[i] += o.err[i];
        max_slow_backlog = std::max(max_slow_backlog, o.max_slow_backlog);
        peak_open += o.peak_open;
    }
    uint64_t errors() const {
        uint64_t n = 0;
        for (uint64_t e : err) n += e;
        return n;
    }
};

std::mutex g_err_lock;
std::vector<std::string> g_err_samples;

void note_error(const std::string &what) {
    std::lock_guard<std::mutex> g(g_err_lock);
    if (g_err_samples.size() < 25) g_err_samples.push_back(what);
}

// --- what the clients connect to --------------------------------------------------

struct Targets {
    uint16_t tcp_port = 0, proto_port = 0, tls_port = 0;
    std::string unix_path;
    SSL_CTX *ctx[2] = {nullptr, nullptr}; // [0]: TLS 1.2-1.3, [1]: TLS 1.2 only
};

// Load phases, shared by every client thread.
enum { PH_LOAD, PH_DRAIN, PH_STOP };
std::atomic<int> g_phase{PH_LOAD};

struct Loader;
thread_local Loader *tl_loader = nullptr;

// --- one client thread -------------------------------------------------------------

enum State {
    S_FREE,
    S_CONNECTING,     // TCP connect in progress
    S_CONNECT_RETRY,  // Unix backlog full: retry on the timer
    S_HANDSHAKE,      // TLS handshake
    S_HS_ABORT_WAIT,  // handshake deliberately abandoned: waiting for the daemon's answer
    S_EXCHANGE,       // sending a message and reading its echo
    S_THINK,          // between exchanges
    S_FINISHING,      // write side closed (shutdown or close_notify): the rest, then EOF
};
const char *const state_names[] = {"free",     "connecting", "retry", "handshake", "hs-abort-wait",
                                   "exchange", "think",      "finishing"};

enum TimerKind { T_NONE, T_THINK, T_PAUSE, T_RETRY, T_HS_ABORT };

struct Conn {
    int fd = -1;
    SSL *ssl = nullptr;
    Kind kind = K_TCP;
    Plan plan = P_NORMAL;
    State st = S_FREE;
    uint32_t gen = 0;
    uint64_t seed = 0, sent = 0, recvd = 0, target = 0;
    uint64_t abort_send_at = UINT64_MAX, abort_recv_at = UINT64_MAX;
    int exchanges_left = 0;
    bool last = false;          // the current exchange is the final one
    bool paused = false;        // slow reader: not reading
    bool blocked_paused = false; // a write would block while paused
    bool wr_shut = false;       // our write side is closed
    bool graceful = false;      // TLS: close with close_notify and wait for the daemon's
    int hs_variant = 0;
    int ssl_retry_len = 0;      // SSL_write must be retried with the same length
    uint32_t interest = 0;
    bool registered = false;  // in the epoll set
    TimerKind timer = T_NONE;
    double timer_due = 0;
    double last_progress = 0;
    bool tls12 = false;
    int last_ssl_err = 0;      // diagnostics for a stall
    uint64_t idle_events = 0;  // events since the last progress
};

struct Loader {
    int id;
    const Targets &tg;
    long conc;                  // this thread's share of the concurrent connections
    long total;                 // ... and of the connections over the load phase
    double load_secs, t0, mean_life;
    double stall_limit;
    std::mt19937_64 rng;
    int ep = -1;
    std::vector<Conn> conns;
    std::vector<int> free_slots;
    long open = 0, started = 0;
    Stats st;
    std::vector<unsigned char> wbuf, rbuf, vbuf;
    SSL_SESSION *saved[2] = {nullptr, nullptr};
    typedef std::pair<double, uint64_t> TimerEntry;
    std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<TimerEntry>> timers;

    Loader(int id_, const Targets &tg_, long conc_, long total_, double load_secs_, double t0_,
           uint64_t seed)
        : id(id_), tg(tg_), conc(conc_), total(total_), load_secs(load_secs_), t0(t0_),
          rng(seed), wbuf(65536), rbuf(65536), vbuf(65536) {
        // Mean lifetime that keeps about `conc` connections open while
        // `total - conc` more are started evenly over the load phase.
        mean_life = (double)conc * load_secs / (double)std::max(1L, total - conc);
        stall_limit = SOAK_SANITIZED ? 45 : 20;
        conns.resize((size_t)conc);
        for (long i = conc - 1; i >= 0; i--) free_slots.push_back((int)i);
    }
    ~Loader() {
        for (auto *s : saved)
            if (s) SSL_SESSION_free(s);
        if (ep >= 0) close(ep);
    }

    double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }
    uint64_t range(uint64_t a, uint64_t b) { // [a, b]
        return std::uniform_int_distribution<uint64_t>(a, b)(rng);
    }
    bool chance(double p) { return uniform(0, 1) < p; }

    uint64_t key(const Conn &c) const { return ((uint64_t)c.gen << 32) | (uint64_t)(&c - &conns[0]); }

    // The connection, and its socket queues: bytes not yet read by us
    // (inq) and not yet taken by the daemon (outq, TCP only) tell which
    // side stopped.
    std::string describe(const Conn &c) const {
        char b[320];
        int inq = -1, outq = -1;
        if (c.fd >= 0) {
            ioctl(c.fd, FIONREAD, &inq);
            if (c.kind != K_UNIX) ioctl(c.fd, TIOCOUTQ, &outq);
        }
        snprintf(b, sizeof b,
                 "[%s %s%s state=%s sent=%" PRIu64 " recvd=%" PRIu64 " target=%" PRIu64
                 " left=%d paused=%d interest=%#x timer=%d inq=%d outq=%d sslerr=%d idle_events=%" PRIu64 " pending=%d]",
                 kind_names[c.kind], plan_names[c.plan], c.tls12 ? " tls1.2" : "",
                 state_names[c.st], c.sent, c.recvd, c.target, c.exchanges_left, c.paused,
                 c.interest, (int)c.timer, inq, outq, c.last_ssl_err, c.idle_events,
                 c.ssl ? SSL_has_pending(c.ssl) : -1);
        return b;
    }

    void error(Conn &c, ErrKind e, const std::string &why) {
        st.err[e]++;
        note_error(std::string(err_names[e]) + ": " + why + " " + describe(c));
        finish(c, true);
    }

    void arm(Conn &c, TimerKind k, double due) {
        c.timer = k;
        c.timer_due = due;
        c.last_progress = std::max(c.last_progress, due);
        timers.push(TimerEntry(due, key(c)));
    }

    void set_interest(Conn &c, uint32_t want) {
        if (c.fd < 0 || want == c.interest) return;
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = want;
        ev.data.u64 = key(c);
        // An fd with no events is still registered: MOD, not ADD, then.
        if (epoll_ctl(ep, c.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev) < 0) {
            error(c, E_CLIENT, std::string("epoll_ctl: ") + strerror(errno));
            return;
        }
        c.registered = true;
        c.interest = want;
    }

    // Close and free the slot. @rst: SO_LINGER 0 (an RST instead of a FIN).
    void finish(Conn &c, bool rst) {
        if (c.st == S_FREE) return;
        if (c.ssl) {
            SSL_free(c.ssl);
            c.ssl = nullptr;
        }
        if (c.fd >= 0) {
            if (rst) {
                struct linger l = {1, 0};
                setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
            }
            close(c.fd);
        }
        c.fd = -1;
        c.st = S_FREE;
        c.timer = T_NONE;
        c.gen++;
        free_slots.push_back((int)(&c - &conns[0]));
        open--;
    }

    void complete(Conn &c) {
        st.k[c.kind].completed++;
        finish(c, false);
    }

    // --- starting a connection --------------------------------------------------

    Kind pick_kind() {
        double r = uniform(0, 1);
        return r < 0.30 ? K_TCP : r < 0.50 ? K_UNIX : r < 0.75 ? K_PROTO : K_TLS;
    }

    Plan pick_plan(Kind k) {
        double r = uniform(0, 1);
        if (k == K_TLS) {
            return r < 0.45 ? P_NORMAL : r < 0.55 ? P_HALFCLOSE : r < 0.63 ? P_ABORT_CLOSE
                 : r < 0.71 ? P_ABORT_RST : r < 0.80 ? P_SLOW : P_HS_ABORT;
        }
        return r < 0.50 ? P_NORMAL : r < 0.65 ? P_HALFCLOSE : r < 0.75 ? P_ABORT_CLOSE
             : r < 0.85 ? P_ABORT_RST : P_SLOW;
    }

    void start_conn(double now) {
        int slot = free_slots.back();
        free_slots.pop_back();
        Conn &c = conns[(size_t)slot];
        uint32_t gen = c.gen;
        c = Conn();
        c.gen = gen;
        c.kind = pick_kind();
        c.plan = pick_plan(c.kind);
        c.seed = rng();
        c.exchanges_left = (int)range(1, 7);
        c.hs_variant = (int)range(0, 3);
        c.graceful = c.kind == K_TLS && (c.plan == P_HALFCLOSE || chance(0.5));
        c.tls12 = c.kind == K_TLS && chance(0.3);
        c.last_progress = now;
        c.st = S_CONNECTING;
        open++;
        started++;
        st.peak_open = std::max(st.peak_open, (uint64_t)open);
        st.k[c.kind].attempts++;
        try_connect(c, now);
    }

    void try_connect(Conn &c, double now) {
        int fam = c.kind == K_UNIX ? AF_UNIX : AF_INET;
        c.fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) {
            error(c, E_CLIENT, std::string("socket: ") + strerror(errno));
            return;
        }
        c.interest = 0;
        c.registered = false;
        if (c.plan == P_SLOW) {
            // Fixed client buffers (no autotuning), so the daemon's writes
            // block within the message. Not smaller than the loopback MSS
            // (64 KiB): a window below it makes TCP crawl.
            int sz = 65536;
            setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
            setsockopt(c.fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        }
        int rc;
        if (fam == AF_UNIX) {
            struct sockaddr_un sun;
            memset(&sun, 0, sizeof sun);
            sun.sun_family = AF_UNIX;
            snprintf(sun.sun_path, sizeof sun.sun_path, "%s", tg.unix_path.c_str());
            rc = connect(c.fd, (struct sockaddr *)&sun, sizeof sun);
        } else {
            struct sockaddr_in sin;
            memset(&sin, 0, sizeof sin);
            sin.sin_family = AF_INET;
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sin.sin_port = htons(c.kind == K_TCP ? tg.tcp_port
                                 : c.kind == K_PROTO ? tg.proto_port : tg.tls_port);
            rc = connect(c.fd, (struct sockaddr *)&sin, sizeof sin);
        }
        if (rc == 0) {
            connected(c, now);
        } else if (errno == EINPROGRESS) {
            set_interest(c, EPOLLOUT);
        } else if (errno == EAGAIN && fam == AF_UNIX) {
            // The Unix listen queue is full: not an error, try again shortly.
            close(c.fd);
            c.fd = -1;
            st.k[c.kind].connect_retries++;
            c.st = S_CONNECT_RETRY;
            arm(c, T_RETRY, now + 0.005 + uniform(0, 0.02));
        } else {
            error(c, E_CONNECT, std::string("connect: ") + strerror(errno));
        }
    }

    void connected(Conn &c, double now) {
        st.k[c.kind].connected++;
        c.last_progress = now;
        if (c.kind != K_TLS) {
            start_exchange(c, now);
            pump(c, now);
            return;
        }
        if (c.plan == P_HS_ABORT) {
            abandon_handshake(c);
            return;
        }
        c.ssl = SSL_new(tg.ctx[c.tls12 ? 1 : 0]);
        SSL_set_fd(c.ssl, c.fd);
        SSL_set_connect_state(c.ssl);
        SSL_set_tlsext_host_name(c.ssl, "localhost");
        SSL_set1_host(c.ssl, "localhost");
        SSL_SESSION *s = saved[c.tls12 ? 1 : 0];
        if (s && chance(0.4)) SSL_set_session(c.ssl, s);
        c.st = S_HANDSHAKE;
        handshake(c, now);
    }

    // The induced handshake failures. The ClientHello is made with memory
    // BIOs, so the client can never complete the handshake by accident (on
    // the socket, a fast daemon's answer can arrive within the first
    // SSL_do_handshake call, which then sends the client's Finished).
    //   0: connect and close without a ClientHello
    //   1: send the ClientHello, or part of it, and close at once
    //   2: send the ClientHello, close once the daemon has answered
    //   3: send something that is not TLS, close once the daemon has answered
    void abandon_handshake(Conn &c) {
        KindStats &k = st.k[c.kind];
        if (c.hs_variant == 0) {
            k.hs_aborts++;
            finish(c, chance(0.5));
            return;
        }
        std::string out;
        if (c.hs_variant == 3) {
            out = "GET / HTTP/1.0\r\n\r\n";
        } else {
            SSL *ssl = SSL_new(tg.ctx[c.tls12 ? 1 : 0]);
            BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
            SSL_set_bio(ssl, rb, wb);
            SSL_set_connect_state(ssl);
            SSL_set_tlsext_host_name(ssl, "localhost");
            SSL_SESSION *s = saved[c.tls12 ? 1 : 0];
            if (s && chance(0.4)) SSL_set_session(ssl, s);
            SSL_do_handshake(ssl); // WANT_READ: the ClientHello is in wb
            char *p = nullptr;
            long n = BIO_get_mem_data(wb, &p);
            out.assign(p ? p : "", n > 0 ? (size_t)n : 0);
            SSL_free(ssl);
            if (c.hs_variant == 1 && out.size() > 1 && chance(0.5))
                out.resize((size_t)range(1, out.size() - 1)); // a truncated hello
        }
        if (send(c.fd, out.data(), out.size(), MSG_NOSIGNAL) != (ssize_t)out.size()) {
            error(c, E_RESET, std::string("send: ") + strerror(errno));
            return;
        }
        k.hs_aborts++;
        if (c.hs_variant == 1) {
            finish(c, chance(0.5));
            return;
        }
        c.st = S_HS_ABORT_WAIT;
        set_interest(c, EPOLLIN | EPOLLRDHUP);
    }

    void handshake(Conn &c, double now) {
        ERR_clear_error();
        int r = SSL_do_handshake(c.ssl);
        if (r == 1) {
            st.k[c.kind].tls_ok++;
            if (SSL_session_reused(c.ssl)) st.k[c.kind].tls_resumed++;
            c.last_progress = now;
            start_exchange(c, now);
            pump(c, now);
            return;
        }
        int e = SSL_get_error(c.ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            set_interest(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
            return;
        }
        char buf[256];
        ERR_error_string_n(ERR_peek_error(), buf, sizeof buf);
        error(c, E_TLS_HANDSHAKE, std::string("handshake: ") + buf + " errno " + strerror(errno));
    }

    // --- exchanges -------------------------------------------------------------

    uint64_t message_size() {
        double r = uniform(0, 1);
        if (r < 0.6) return range(1, 2048);
        if (r < 0.9) return range(2049, 32768);
        return range(32769, 131072);
    }

    void start_exchange(Conn &c, double now) {
        c.timer = T_NONE; // a pending think timer is void now
        c.exchanges_left--;
        c.last = c.exchanges_left <= 0;
        uint64_t size = c.last && c.plan == P_SLOW ? range(256 * 1024, 1024 * 1024) : message_size();
        c.target = c.sent + size;
        c.st = S_EXCHANGE;
        c.last_progress = now;
        if (c.last && (c.plan == P_ABORT_CLOSE || c.plan == P_ABORT_RST)) {
            if (size < 2 || chance(0.5))
                c.abort_send_at = c.sent + range(0, size - 1); // mid-message
            else
                c.abort_recv_at = c.recvd + range(1, size - 1); // mid-echo
        }
        if (c.last && c.plan == P_SLOW) {
            c.paused = true;
            c.blocked_paused = false;
            arm(c, T_PAUSE, now + uniform(0.2, 2.0));
        }
    }

    // After an exchange: think, or the final step of the plan.
    void exchange_done(Conn &c, double now) {
        st.k[c.kind].exchanges++;
        if (!c.last) {
            if (g_phase.load(std::memory_order_relaxed) != PH_LOAD) {
                c.exchanges_left = 1; // draining: straight to the last exchange
                start_exchange(c, now);
                return;
            }
            c.st = S_THINK;
            double think = mean_life / 3.0; // 4 exchanges (3 pauses) on average
            arm(c, T_THINK, now + uniform(0, 2 * think));
            return;
        }
        if (c.plan == P_SLOW) st.k[c.kind].slow_done++;
        if (c.kind == K_TLS) {
            if (c.graceful) {
                ERR_clear_error();
                SSL_shutdown(c.ssl); // our close_notify; wait for the daemon's
                c.wr_shut = true;
                c.st = S_FINISHING;
                return;
            }
            ERR_clear_error();
            SSL_shutdown(c.ssl);
            complete(c);
            return;
        }
        if (c.plan == P_HALFCLOSE) {
            // shutdown(SHUT_WR) went out after the last byte; now the EOF.
            c.st = S_FINISHING;
            return;
        }
        complete(c);
    }

    // Bytes to send now, bounded by the message and an induced abort point.
    uint64_t send_limit(const Conn &c) const { return std::min(c.target, c.abort_send_at); }

    // Returns -1 when the connection is gone.
    int do_write(Conn &c, double now, bool *progress, bool *blocked) {
        while (c.sent < send_limit(c)) {
            size_t n = (size_t)std::min<uint64_t>(send_limit(c) - c.sent, wbuf.size());
            if (c.ssl && c.ssl_retry_len) n = (size_t)c.ssl_retry_len;
            fill_pattern(c.seed, c.sent, wbuf.data(), n);
            ssize_t w;
            if (c.ssl) {
                ERR_clear_error();
                int r = SSL_write(c.ssl, wbuf.data(), (int)n);
                if (r <= 0) {
                    int e = SSL_get_error(c.ssl, r);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                        c.ssl_retry_len = (int)n;
                        *blocked = e == SSL_ERROR_WANT_WRITE;
                        return 0;
                    }
                    io_failed(c, "SSL_write", e);
                    return -1;
                }
                c.ssl_retry_len = 0;
                w = r;
            } else {
                w = send(c.fd, wbuf.data(), n, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        *blocked = true;
                        return 0;
                    }
                    error(c, E_RESET, std::string("send: ") + strerror(errno));
                    return -1;
                }
            }
            c.sent += (uint64_t)w;
            st.k[c.kind].bytes_sent += (uint64_t)w;
            c.last_progress = now;
            *progress = true;
        }
        if (c.sent == c.abort_send_at) {
            induced_abort(c);
            return -1;
        }
        if (c.sent == c.target && c.last && c.plan == P_HALFCLOSE && c.kind != K_TLS && !c.wr_shut) {
            shutdown(c.fd, SHUT_WR);
            c.wr_shut = true;
        }
        return 0;
    }

    void induced_abort(Conn &c) {
        if (c.plan == P_ABORT_RST)
            st.k[c.kind].aborts_rst++;
        else
            st.k[c.kind].aborts_close++;
        finish(c, c.plan == P_ABORT_RST);
    }

    void io_failed(Conn &c, const char *what, int ssl_err) {
        char buf[256] = "";
        unsigned long e = ERR_peek_error();
        if (e) ERR_error_string_n(e, buf, sizeof buf);
        if (ssl_err == SSL_ERROR_SYSCALL && (errno == ECONNRESET || errno == EPIPE))
            error(c, E_RESET, std::string(what) + ": " + strerror(errno));
        else
            error(c, E_TLS_IO, std::string(what) + ": ssl error " + std::to_string(ssl_err) + " " +
                                   buf + " errno " + strerror(errno));
    }

    // EOF from the daemon. @clean: with close_notify (TLS).
    void on_eof(Conn &c, bool clean) {
        if (c.st == S_FINISHING && c.recvd == c.target) {
            if (c.kind == K_TLS) {
                if (!clean) {
                    error(c, E_NO_CLOSE_NOTIFY, "EOF without close_notify after ours");
                    return;
                }
                st.k[c.kind].tls_graceful++;
            } else {
                st.k[c.kind].half_closes++;
            }
            complete(c);
            return;
        }
        error(c, E_EOF, clean ? "unexpected close_notify" : "unexpected EOF");
    }

    int do_read(Conn &c, double now, bool *progress) {
        for (int i = 0; i < 4; i++) {
            ssize_t n;
            if (c.ssl) {
                ERR_clear_error();
                int r = SSL_read(c.ssl, rbuf.data(), (int)rbuf.size());
                if (r <= 0) {
                    int e = SSL_get_error(c.ssl, r);
                    c.last_ssl_err = e;
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
                    if (e == SSL_ERROR_ZERO_RETURN) {
                        on_eof(c, true);
                        return -1;
                    }
                    if (e == SSL_ERROR_SSL &&
                        ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                        on_eof(c, false);
                        return -1;
                    }
                    io_failed(c, "SSL_read", e);
                    return -1;
                }
                n = r;
            } else {
                n = recv(c.fd, rbuf.data(), rbuf.size(), 0);
                if (n == 0) {
                    on_eof(c, false);
                    return -1;
                }
                if (n < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
                    error(c, E_RESET, std::string("recv: ") + strerror(errno));
                    return -1;
                }
            }
            // An SSL_write that said WANT_WRITE has committed a record that
            // may still reach the daemon: those bytes are in flight too.
            uint64_t in_flight = c.sent + (c.ssl ? (uint64_t)c.ssl_retry_len : 0);
            if (c.recvd + (uint64_t)n > in_flight || (c.st != S_EXCHANGE && c.st != S_FINISHING)) {
                error(c, E_EXCESS, "received " + std::to_string(n) + " bytes nobody sent");
                return -1;
            }
            fill_pattern(c.seed, c.recvd, vbuf.data(), (size_t)n);
            if (memcmp(vbuf.data(), rbuf.data(), (size_t)n) != 0) {
                size_t at = 0;
                while (vbuf[at] == rbuf[at]) at++;
                error(c, E_MISMATCH, "at stream offset " + std::to_string(c.recvd + at));
                return -1;
            }
            c.recvd += (uint64_t)n;
            st.k[c.kind].bytes_verified += (uint64_t)n;
            c.last_progress = now;
            c.idle_events = 0;
            *progress = true;
            if (c.recvd >= c.abort_recv_at) {
                induced_abort(c);
                return -1;
            }
            if (c.st == S_EXCHANGE && c.recvd == c.target) {
                exchange_done(c, now);
                if (c.st == S_FREE) return -1;
                if (c.st == S_THINK) return 0;
            }
        }
        return 0;
    }

    // Move bytes both ways as far as the sockets allow, then set the interest.
    void pump(Conn &c, double now) {
        for (int round = 0; round < 8; round++) {
            bool progress = false, blocked = false;
            if (c.st == S_EXCHANGE && c.sent < send_limit(c)) {
                if (do_write(c, now, &progress, &blocked) < 0) return;
                if (c.paused && blocked) c.blocked_paused = true;
            } else if (c.st == S_EXCHANGE && c.sent == c.abort_send_at) {
                induced_abort(c);
                return;
            }
            if ((c.st == S_EXCHANGE || c.st == S_FINISHING || c.st == S_THINK) && !c.paused) {
                if (do_read(c, now, &progress) < 0) return;
            }
            if (!progress) break;
        }
        if (c.st == S_FREE) return;
        uint32_t want = 0;
        if (!c.paused) want |= EPOLLIN;
        if (c.st == S_EXCHANGE && c.sent < send_limit(c)) want |= EPOLLOUT;
        if (c.ssl && c.ssl_retry_len) want |= EPOLLOUT;
        set_interest(c, want);
    }

    void on_event(Conn &c, uint32_t ev, double now) {
        c.idle_events++;
        switch (c.st) {
        case S_CONNECTING: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                error(c, E_CONNECT, std::string("connect: ") + strerror(err));
                return;
            }
            connected(c, now);
            return;
        }
        case S_HANDSHAKE:
            handshake(c, now);
            return;
        case S_HS_ABORT_WAIT:
            // The daemon answered (or closed): go away, with an RST half the time.
            finish(c, chance(0.5));
            return;
        default:
            pump(c, now);
        }
    }

    void on_timer(Conn &c, TimerKind k, double now) {
        c.timer = T_NONE;
        switch (k) {
        case T_THINK:
            if (c.st != S_THINK) break;
            start_exchange(c, now);
            pump(c, now);
            break;
        case T_PAUSE: {
            c.paused = false;
            if (c.blocked_paused) st.k[c.kind].slow_blocked++;
            st.max_slow_backlog = std::max(st.max_slow_backlog, c.sent - c.recvd);
            c.last_progress = now;
            pump(c, now);
            break;
        }
        case T_RETRY:
            c.st = S_CONNECTING;
            try_connect(c, now);
            break;
        default:
            break;
        }
    }

    // Connections that may have been started by @t (seconds into the load):
    // a ramp to `conc` in the first two seconds, then `total - conc` more
    // spread evenly over the load phase.
    long allowed(double t) const {
        double ramp = std::min(1.0, t / 2.0) * (double)conc;
        double steady = (double)(total - conc) * std::min(1.0, t / load_secs);
        return std::min(total, (long)(ramp + steady));
    }

    void run(double drain_deadline_secs) {
        tl_loader = this;
        ep = epoll_create1(EPOLL_CLOEXEC);
        std::vector<struct epoll_event> evs(512);
        double last_sweep = now_s();
        double drain_since = 0;
        for (;;) {
            double now = now_s();
            int phase = g_phase.load();
            if (phase == PH_LOAD) {
                long may = allowed(now - t0);
                while (open < conc && started < may) start_conn(now);
            } else if (phase == PH_DRAIN) {
                if (drain_since == 0) {
                    drain_since = now;
                    // Thinking connections go straight to their last exchange.
                    for (auto &c : conns)
                        if (c.st == S_THINK) {
                            c.exchanges_left = 1;
                            start_exchange(c, now);
                            pump(c, now);
                        }
                }
                if (open == 0) break;
                if (now - drain_since > drain_deadline_secs) {
                    for (auto &c : conns)
                        if (c.st != S_FREE) {
                            st.err[E_DRAIN]++;
                            note_error(std::string(err_names[E_DRAIN]) + ": " + describe(c));
                            finish(c, true);
                        }
                    break;
                }
            } else {
                break;
            }
            // Timers due.
            while (!timers.empty() && timers.top().first <= now) {
                uint64_t k = timers.top().second;
                double due = timers.top().first;
                timers.pop();
                Conn &c = conns[(size_t)(k & 0xffffffffu)];
                if (c.gen != (uint32_t)(k >> 32) || c.st == S_FREE || c.timer == T_NONE ||
                    c.timer_due != due)
                    continue;
                on_timer(c, c.timer, now);
            }
            int wait_ms = 50;
            if (!timers.empty())
                wait_ms = std::max(0, std::min(wait_ms, (int)((timers.top().first - now) * 1000) + 1));
            int n = epoll_wait(ep, evs.data(), (int)evs.size(), wait_ms);
            now = now_s();
            for (int i = 0; i < n; i++) {
                uint64_t k = evs[(size_t)i].data.u64;
                Conn &c = conns[(size_t)(k & 0xffffffffu)];
                if (c.gen != (uint32_t)(k >> 32) || c.st == S_FREE) continue;
                on_event(c, evs[(size_t)i].events, now);
            }
            if (now - last_sweep >= 1.0) {
                last_sweep = now;
                for (auto &c : conns)
                    if (c.st != S_FREE && now - c.last_progress > stall_limit)
                        error(c, E_STALL, "no progress for " + std::to_string((int)(now - c.last_progress)) + " s");
            }
        }
        tl_loader = nullptr;
    }
};

// A new TLS session from the daemon (a ticket): keep the newest per context.
int on_new_session(SSL *ssl, SSL_SESSION *sess) {
    Loader *l = tl_loader;
    if (!l) return 0;
    int i = SSL_get_SSL_CTX(ssl) == l->tg.ctx[1];
    if (l->saved[i]) SSL_SESSION_free(l->saved[i]);
    l->saved[i] = sess;
    return 1; // we hold the reference
}

// --- the daemon --------------------------------------------------------------------

std::string builddir() {
    const char *d = getenv("EVS_TEST_BUILDDIR");
    return d ? d : ".";
}

std::string read_file(const std::string &path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

int count_fds(pid_t pid) {
    std::string p = "/proc/" + std::to_string(pid) + "/fd";
    DIR *d = opendir(p.c_str());
    if (!d) return -1;
    int n = 0;
    while (struct dirent *e = readdir(d))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

long proc_status_kb(pid_t pid, const char *field) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    size_t fl = strlen(field);
    while (std::getline(f, line))
        if (line.compare(0, fl, field) == 0 && line.size() > fl && line[fl] == ':')
            return atol(line.c_str() + fl + 1);
    return -1;
}

struct Daemon {
    pid_t pid = -1;
    std::string dir, conf, ports, log;
    std::map<std::string, std::string> addresses;

    Daemon(const std::string &dir_, const std::string &text, rlim_t nofile)
        : dir(dir_), conf(dir_ + "/evstreamd.conf"), ports(dir_ + "/ports"), log(dir_ + "/daemon.log") {
        std::ofstream(conf) << text;
        std::string bin = builddir() + "/src/daemon/evstreamd";
        pid = fork();
        if (pid == 0) {
            int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            dup2(out, 1);
            dup2(out, 2);
            // ASan's quarantine (256 MB by default) fills during the run and
            // would look like growth; a smaller one still catches the
            // use-after-free of a recent allocation.
            const char *asan = getenv("ASAN_OPTIONS");
            if (SOAK_SANITIZED && !SOAK_TSAN && (!asan || !strstr(asan, "quarantine_size_mb"))) {
                std::string v = asan && *asan ? std::string(asan) + ":" : std::string();
                setenv("ASAN_OPTIONS", (v + "quarantine_size_mb=16").c_str(), 1);
            }
            struct rlimit rl;
            getrlimit(RLIMIT_NOFILE, &rl);
            rl.rlim_cur = std::min(rl.rlim_max, std::max(rl.rlim_cur, nofile));
            setrlimit(RLIMIT_NOFILE, &rl);
            execl(bin.c_str(), bin.c_str(), "-c", conf.c_str(), "--ports-file", ports.c_str(), "-l",
                  "warn", (char *)nullptr);
            _exit(127);
        }
    }
    bool ready(double seconds) {
        double end = now_s() + seconds;
        while (access(ports.c_str(), R_OK) != 0) {
            int st;
            if (now_s() > end || waitpid(pid, &st, WNOHANG) == pid) return false;
            usleep(20 * 1000);
        }
        std::istringstream in(read_file(ports));
        std::string name, addr;
        while (in >> name >> addr) addresses[name] = addr;
        return true;
    }
    uint16_t port(const std::string &name) {
        auto a = addresses[name];
        return (uint16_t)atoi(a.substr(a.rfind(':') + 1).c_str());
    }
    // SIGTERM, then wait; the exit status, or -1 after a SIGKILL.
    int stop(double seconds) {
        int st = -1;
        if (pid <= 0) return st;
        kill(pid, SIGTERM);
        double end = now_s() + seconds;
        while (now_s() < end) {
            if (waitpid(pid, &st, WNOHANG) == pid) {
                pid = -1;
                return st;
            }
            usleep(10 * 1000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        pid = -1;
        return -1;
    }
    ~Daemon() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
};

// GET @path from the admin listener at "127.0.0.1:PORT"; the body, or "".
std::string http_get(uint16_t port, const std::string &path) {
    int fd = connect_tcp(port);
    if (fd < 0) return "";
    set_timeouts(fd, 10);
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    std::string resp;
    if (write_all(fd, req.data(), req.size())) resp = read_to_eof(fd, 1 << 22);
    close(fd);
    size_t at = resp.find("\r\n\r\n");
    if (resp.compare(0, 12, "HTTP/1.1 200") != 0 || at == std::string::npos) return "";
    return resp.substr(at + 4);
}

typedef std::map<std::string, std::map<std::string, uint64_t>> StatusMap;

// The listeners' counters from /status: name -> field -> value. (The
// listener objects are flat; no std::regex: GCC 12 warns inside it at -O1.)
StatusMap parse_status(const std::string &json) {
    StatusMap m;
    static const std::string open = "{\"name\":\"";
    for (size_t at = json.find(open); at != std::string::npos; at = json.find(open, at + 1)) {
        size_t name_end = json.find('"', at + open.size());
        size_t end = json.find('}', at);
        if (name_end == std::string::npos || end == std::string::npos) break;
        auto &f = m[json.substr(at + open.size(), name_end - at - open.size())];
        for (size_t k = json.find('"', name_end + 1); k != std::string::npos && k < end;
             k = json.find('"', k + 1)) {
            size_t kend = json.find('"', k + 1);
            if (kend == std::string::npos || kend >= end) break;
            std::string key = json.substr(k + 1, kend - k - 1);
            if (json.compare(kend + 1, 1, ":") == 0 && isdigit((unsigned char)json[kend + 2]))
                f[key] = strtoull(json.c_str() + kend + 2, nullptr, 10);
            k = kend;
        }
    }
    return m;
}

// An ERROR line of the daemon's log ("TIMESTAMP LEVEL [THREAD] MESSAGE"), or
// a sanitizer report.
bool is_error_line(const std::string &line) {
    size_t sp = line.find(' ');
    if (sp != std::string::npos && line.compare(sp + 1, 6, "ERROR ") == 0) return true;
    return line.find("ERROR: AddressSanitizer") != std::string::npos ||
           line.find("ERROR: LeakSanitizer") != std::string::npos ||
           line.find("WARNING: ThreadSanitizer") != std::string::npos ||
           line.find("runtime error:") != std::string::npos;
}

// One metric sample from /metrics, e.g. name{listener="tcp"}; -1 if missing.
double metric(const std::string &text, const std::string &sample) {
    size_t at = text.find("\n" + sample + " ");
    if (at == std::string::npos) return -1;
    return atof(text.c_str() + at + 1 + sample.size() + 1);
}

// Lines of an access log, by content ("closed TLSv1.3", "reset -", ...).
std::map<std::string, uint64_t> tally(const std::string &path, uint64_t *lines) {
    std::map<std::string, uint64_t> m;
    std::istringstream in(read_file(path));
    std::string line;
    *lines = 0;
    while (std::getline(in, line)) {
        m[line]++;
        ++*lines;
    }
    return m;
}

std::string human_bytes(double b) {
    char s[32];
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) b /= 1024, i++;
    snprintf(s, sizeof s, "%.1f %s", b, u[i]);
    return s;
}

// A blocking echo round trip on a plain socket (the final liveness probe).
bool probe_plain(int fd) {
    if (fd < 0) return false;
    std::string msg = pattern(1000, 7), back(msg.size(), '\0');
    bool ok = write_all(fd, msg.data(), msg.size()) && read_exact(fd, &back[0], back.size()) && back == msg;
    close(fd);
    return ok;
}

bool probe_tls(uint16_t port, SSL_CTX *ctx) {
    int fd = connect_tcp(port);
    if (fd < 0) return false;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    std::string msg = pattern(1000, 8), back(msg.size(), '\0');
    bool ok = SSL_connect(ssl) == 1 && SSL_write(ssl, msg.data(), (int)msg.size()) == (int)msg.size();
    size_t got = 0;
    while (ok && got < back.size()) {
        int r = SSL_read(ssl, &back[got], (int)(back.size() - got));
        if (r <= 0) ok = false;
        else got += (size_t)r;
    }
    ok = ok && back == msg;
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    return ok;
}

std::string config_text(const std::string &dir, const TlsCerts &certs, long max_conn, int workers) {
    std::ostringstream c;
    c << "workers = " << workers << ";\n"
      << (geteuid() == 0 ? "allow_root = true;\n" : "")
      << "log = { level = \"warn\"; };\n"
      // A small high watermark: slow readers make the echo's drain park.
      << "limits = { max_connections = " << max_conn << "; write_high_water = \"16k\";"
      << " write_low_water = \"4k\"; idle_timeout = \"120s\"; handshake_timeout = \"20s\";"
      << " shutdown_timeout = \"5s\"; };\n"
      << "plugin_dir = \"" << builddir() << "/plugins\";\n"
      << "admin = { listen = \"127.0.0.1:0\"; };\n"
      << "plugins = ( { name = \"echo\"; path = \"echo.so\"; },\n"
      << "            { name = \"echo_protocol\"; path = \"echo_protocol.so\"; } );\n"
      << "listeners = (\n"
      << "  { name = \"tcp\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; backlog = 4096;\n"
      << "    access_log = { file = \"" << dir << "/tcp-access.log\"; format = \"$reason\"; }; },\n"
      << "  { name = \"unix\"; listen = \"unix:" << dir << "/echo.sock\"; plugin = \"echo\"; backlog = 4096; },\n"
      << "  { name = \"proto\"; listen = \"127.0.0.1:0\"; plugin = \"echo_protocol\"; backlog = 4096; },\n"
      << "  { name = \"tls\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; backlog = 4096;\n"
      << "    access_log = { file = \"" << dir << "/tls-access.log\"; format = \"$reason $tls_version\"; };\n"
      << "    tls = { certificate = \"" << certs.server << "\"; key = \"" << certs.server_key << "\"; }; }\n"
      << ");\n";
    return c.str();
}

SSL_CTX *client_ctx(const TlsCerts &certs, bool tls12_only) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (tls12_only) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_load_verify_locations(ctx, certs.ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    return ctx;
}

// --- the test ----------------------------------------------------------------------

TEST(Soak, ChurnPlainUnixProtocolTls) {
    Options o = g_opt;
    double scale = o.scale;
    const char *scale_why = "EVS_SOAK_SCALE / --scale";
    if (scale < 0) {
        scale = SOAK_TSAN ? 0.2 : SOAK_SANITIZED ? 0.4 : 1.0;
        scale_why = SOAK_SANITIZED ? "sanitizer build" : "default";
    }
    long conns = std::max(8L, (long)llround((double)o.connections * scale));
    long total = o.total > 0 ? o.total : (long)llround(5.0 * (double)o.connections * std::max(1.0, o.duration / 40));
    total = std::max(2 * conns, (long)llround((double)total * scale));
    int threads = o.threads > 0 ? o.threads
                                : (int)std::min(4L, std::max(2L, sysconf(_SC_NPROCESSORS_ONLN) / 2));
    threads = (int)std::min<long>(threads, conns);
    uint64_t seed = o.seed ? o.seed : (uint64_t)time(nullptr);

    // The whole run must fit in the duration: startup and the checks take
    // a few seconds, the drain up to drain_deadline.
    double drain_deadline = SOAK_SANITIZED ? 12 : 8;
    double load_secs = std::max(5.0, o.duration - drain_deadline - (SOAK_SANITIZED ? 6 : 4));
    // RSS: malloc arenas and task stacks keep their high-water mark, which
    // still rises for a while after the ramp (measured with the defaults:
    // +15-18% from 1/4 to the end of a 28 s load, +3% over 140 s, flat
    // after about 30 s), and a loaded CI machine adds noise. Short runs get 40%, runs of two minutes and more
    // 10%. Unreachable leaks are LeakSanitizer's job (the ASan build).
    if (o.rss_bound < 0) o.rss_bound = load_secs < 120 ? 0.40 : 0.10;
    // The watchdog's per-test alarm is 120 s; a long run needs more.
    alarm((unsigned)(o.duration + 180));

    // fds: ours (a socket per connection) and the daemon's (the same again).
    rlim_t need = (rlim_t)conns + 256;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {
        rl.rlim_cur = std::min(rl.rlim_max, need);
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        long fit = (long)rl.rlim_cur - 256;
        printf("soak: RLIMIT_NOFILE is %lu: %ld connections instead of %ld\n", (unsigned long)rl.rlim_cur,
               fit, conns);
        conns = std::max(8L, fit);
    }

    printf("soak: seed %" PRIu64 ", duration %.0f s (load %.0f s), %ld concurrent, %ld total, %d client "
           "threads, %d daemon workers, scale %.2f (%s)\n",
           seed, o.duration, load_secs, conns, total, threads, o.workers, scale, scale_why);
    fflush(stdout);
    double t_begin = now_s();

    TlsCerts certs;
    ASSERT_TRUE(make_tls_certs(&certs));
    std::string dir = make_temp_dir();
    ASSERT_FALSE(dir.empty());
    Daemon d(dir, config_text(dir, certs, conns * 2 + 64, o.workers), need + 64);
    ASSERT_TRUE(d.ready(SOAK_SANITIZED ? 60 : 30)) << read_file(d.log);

    Targets tg;
    tg.tcp_port = d.port("tcp");
    tg.proto_port = d.port("proto");
    tg.tls_port = d.port("tls");
    tg.unix_path = dir + "/echo.sock";
    uint16_t admin = d.port("admin");
    ASSERT_NE(0, tg.tcp_port);
    ASSERT_NE(0, admin);
    tg.ctx[0] = client_ctx(certs, false);
    tg.ctx[1] = client_ctx(certs, true);

    // Baseline, with one round trip on every listener behind it (the lazy
    // allocations of a first connection are not a leak).
    ASSERT_TRUE(probe_plain(connect_tcp(tg.tcp_port)));
    ASSERT_TRUE(probe_plain(connect_unix(tg.unix_path)));
    ASSERT_TRUE(probe_plain(connect_tcp(tg.proto_port)));
    ASSERT_TRUE(probe_tls(tg.tls_port, tg.ctx[0]));
    ASSERT_TRUE(probe_tls(tg.tls_port, tg.ctx[1]));
    auto all_idle = [&](StatusMap *out) {
        StatusMap s = parse_status(http_get(admin, "/status"));
        if (out) *out = s;
        if (s.size() != 4) return false;
        for (auto &l : s)
            if (l.second["active"] != 0) return false;
        return true;
    };
    StatusMap before;
    for (int i = 0; i < 200 && !all_idle(&before); i++) usleep(20 * 1000);
    usleep(100 * 1000);
    uint64_t tcp_log_before = 0, tls_log_before = 0;
    tally(dir + "/tcp-access.log", &tcp_log_before);
    tally(dir + "/tls-access.log", &tls_log_before);
    int fds_before = count_fds(d.pid);
    long rss_before = proc_status_kb(d.pid, "VmRSS");
    ASSERT_GT(fds_before, 0);

    // The load.
    g_phase = PH_LOAD;
    double t0 = now_s();
    std::vector<std::unique_ptr<Loader>> loaders;
    std::vector<std::thread> ths;
    for (int i = 0; i < threads; i++) {
        long c = conns / threads + (i < conns % threads ? 1 : 0);
        long t = total / threads + (i < total % threads ? 1 : 0);
        loaders.emplace_back(new Loader(i, tg, c, t, load_secs, t0, seed * 1000003ULL + (uint64_t)i));
    }
    for (auto &l : loaders) {
        Loader *lp = l.get();
        ths.emplace_back([lp, drain_deadline] { lp->run(drain_deadline); });
    }

    // Watch the daemon: RSS at 1/4 and at the end of the load phase (the
    // same steady churn), fds and /status along the way.
    std::vector<std::pair<double, long>> rss_samples;
    long rss_quarter = -1, rss_end = -1, rss_peak = 0;
    int fds_peak = 0, status_polls = 0, status_fail = 0;
    double next_sample = t0 + 1, next_status = t0 + 3;
    while (now_s() - t0 < load_secs) {
        double now = now_s();
        if (now >= next_sample) {
            long r = proc_status_kb(d.pid, "VmRSS");
            rss_samples.emplace_back(now - t0, r);
            rss_peak = std::max(rss_peak, r);
            fds_peak = std::max(fds_peak, count_fds(d.pid));
            if (rss_quarter < 0 && now - t0 >= load_secs / 4) rss_quarter = r;
            next_sample += 1;
        }
        if (now >= next_status) {
            status_polls++;
            if (parse_status(http_get(admin, "/status")).size() != 4) status_fail++;
            next_status += 5;
        }
        usleep(50 * 1000);
    }
    rss_end = proc_status_kb(d.pid, "VmRSS");
    rss_peak = std::max(rss_peak, rss_end);
    int fds_load_end = count_fds(d.pid);
    fds_peak = std::max(fds_peak, fds_load_end);
    if (rss_quarter < 0) rss_quarter = rss_samples.empty() ? rss_end : rss_samples.front().second;

    g_phase = PH_DRAIN;
    double t_drain = now_s();
    for (auto &t : ths) t.join();
    double drain_secs = now_s() - t_drain;
    g_phase = PH_STOP;
    double load_total_secs = now_s() - t0;

    Stats s;
    for (auto &l : loaders) s.add(l->st);
    loaders.clear();

    // The daemon sees every connection end, then its fds are back.
    StatusMap after;
    bool idle = false;
    for (int i = 0; i < 500 && !(idle = all_idle(&after)); i++) usleep(20 * 1000);
    int fds_after = count_fds(d.pid);
    for (int i = 0; i < 100 && std::abs(fds_after - fds_before) > o.fd_slack; i++) {
        usleep(50 * 1000);
        fds_after = count_fds(d.pid);
    }
    // One access log line per connection, written as it closes.
    uint64_t tcp_acc = after["tcp"]["accepted"] - before["tcp"]["accepted"];
    uint64_t tls_acc = after["tls"]["accepted"] - before["tls"]["accepted"];
    uint64_t tcp_log = 0, tls_log = 0;
    std::map<std::string, uint64_t> tcp_reasons, tls_reasons;
    for (int i = 0; i < 100; i++) {
        tcp_reasons = tally(dir + "/tcp-access.log", &tcp_log);
        tls_reasons = tally(dir + "/tls-access.log", &tls_log);
        if (tcp_log - tcp_log_before >= tcp_acc && tls_log - tls_log_before >= tls_acc) break;
        usleep(20 * 1000);
    }
    long rss_after = proc_status_kb(d.pid, "VmRSS");
    long threads_after = proc_status_kb(d.pid, "Threads");

    // Still serving everything.
    bool alive = probe_plain(connect_tcp(tg.tcp_port)) && probe_plain(connect_unix(tg.unix_path)) &&
                 probe_plain(connect_tcp(tg.proto_port)) && probe_tls(tg.tls_port, tg.ctx[0]);
    std::string metrics = http_get(admin, "/metrics");

    int status = d.stop(SOAK_SANITIZED ? 60 : 30);
    std::string log = read_file(d.log);
    std::vector<std::string> error_lines;
    int warn_lines = 0;
    {
        std::istringstream in(log);
        std::string line;
        while (std::getline(in, line)) {
            if (is_error_line(line)) error_lines.push_back(line);
            else if (line.find(" WARN ") != std::string::npos) warn_lines++;
        }
    }
    double run_secs = now_s() - t_begin;

    // --- summary ---
    KindStats all;
    for (auto &k : s.k) all.add(k);
    const char *names[K_COUNT] = {"tcp", "unix", "proto", "tls"};
    printf("\n=== soak summary (seed %" PRIu64 ") ===\n", seed);
    printf("%-8s %8s %8s %8s %9s %11s %11s %6s %6s %6s %6s %6s %7s\n", "listener", "conns", "srv-acc",
           "done", "exchanges", "sent", "verified", "half", "slow", "close", "rst", "hs-ab", "retries");
    for (int i = 0; i <= K_COUNT; i++) {
        const KindStats &k = i < K_COUNT ? s.k[i] : all;
        uint64_t acc = 0;
        if (i < K_COUNT) acc = after[names[i]]["accepted"] - before[names[i]]["accepted"];
        else
            for (auto *n : names) acc += after[n]["accepted"] - before[n]["accepted"];
        printf("%-8s %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %9" PRIu64 " %11s %11s %6" PRIu64 " %6" PRIu64
               " %6" PRIu64 " %6" PRIu64 " %6" PRIu64 " %7" PRIu64 "\n",
               i < K_COUNT ? names[i] : "all", k.connected, acc, k.completed, k.exchanges,
               human_bytes((double)k.bytes_sent).c_str(), human_bytes((double)k.bytes_verified).c_str(),
               k.half_closes + k.tls_graceful, k.slow_done, k.aborts_close, k.aborts_rst, k.hs_aborts,
               k.connect_retries);
    }
    printf("tls: %" PRIu64 " handshakes (%" PRIu64 " resumed), daemon: %" PRIu64 " ok, %" PRIu64
           " failed, %" PRIu64 " resumed\n",
           s.k[K_TLS].tls_ok, s.k[K_TLS].tls_resumed, after["tls"]["tls_handshakes"] - before["tls"]["tls_handshakes"],
           after["tls"]["tls_failed"] - before["tls"]["tls_failed"],
           after["tls"]["tls_resumed"] - before["tls"]["tls_resumed"]);
    printf("access log lines: tcp %" PRIu64 ", tls %" PRIu64 " (whole run, probes included)\n  tcp:", tcp_log,
           tls_log);
    for (auto &r : tcp_reasons) printf(" %s=%" PRIu64, r.first.c_str(), r.second);
    printf("\n  tls:");
    for (auto &r : tls_reasons) printf(" %s=%" PRIu64, r.first.c_str(), r.second);
    printf("\n");
    printf("slow readers: %" PRIu64 " done, %" PRIu64 " blocked while not reading, largest backlog %s\n",
           all.slow_done, all.slow_blocked, human_bytes((double)s.max_slow_backlog).c_str());
    printf("induced failures: %" PRIu64 " (close %" PRIu64 ", rst %" PRIu64 ", abandoned handshakes %" PRIu64
           "); errors: %" PRIu64 "\n",
           all.induced(), all.aborts_close, all.aborts_rst, all.hs_aborts, s.errors());
    for (int i = 0; i < E_COUNT; i++)
        if (s.err[i]) printf("  error %-16s %" PRIu64 "\n", err_names[i], s.err[i]);
    for (auto &e : g_err_samples) printf("  sample: %s\n", e.c_str());
    printf("client peak open connections: %" PRIu64 "\n", s.peak_open);
    printf("daemon fds: before %d, peak %d, at load end %d, after %d (slack %d)\n", fds_before, fds_peak,
           fds_load_end, fds_after, o.fd_slack);
    printf("daemon RSS: before %ld KiB, at 1/4 %ld KiB, at end %ld KiB (%+.1f%%, bound %.0f%%), peak %ld KiB, "
           "after drain %ld KiB; threads %ld\n",
           rss_before, rss_quarter, rss_end, 100.0 * (double)(rss_end - rss_quarter) / (double)rss_quarter,
           100 * o.rss_bound, rss_peak, rss_after, threads_after);
    if (o.verbose) {
        printf("RSS samples (s, KiB):");
        for (auto &r : rss_samples) printf(" %.0f:%ld", r.first, r.second);
        printf("\n");
    }
    printf("admin /status polls under load: %d (%d failed); log: %zu ERROR lines, %d WARN lines\n",
           status_polls, status_fail, error_lines.size(), warn_lines);
    printf("time: load %.1f s (drain %.1f s), whole run %.1f s; daemon exit status %s\n", load_total_secs,
           drain_secs, run_secs,
           status < 0 ? "killed" : WIFEXITED(status) ? std::to_string(WEXITSTATUS(status)).c_str()
                                                     : ("signal " + std::to_string(WTERMSIG(status))).c_str());
    fflush(stdout);

    // --- checks ---
    EXPECT_EQ(0u, s.errors()) << "exchanges that were not broken on purpose went wrong";
    EXPECT_GT(all.exchanges, 0u);
    EXPECT_GT(all.induced(), 0u);
    EXPECT_GT(all.half_closes, 0u);
    EXPECT_GT(s.k[K_TLS].tls_graceful, 0u);
    EXPECT_GT(all.slow_done, 0u);
    EXPECT_TRUE(idle) << "connections still active in the daemon after the drain";
    EXPECT_LE(std::abs(fds_after - fds_before), o.fd_slack) << "the daemon's fds did not return to the baseline";
    EXPECT_LE((double)rss_end, (double)rss_quarter * (1 + o.rss_bound)) << "RSS grew under a steady load";
    EXPECT_TRUE(alive) << "the daemon no longer echoes after the soak";
    EXPECT_EQ(0, status_fail) << "/status failed under load";
    EXPECT_TRUE(error_lines.empty()) << "daemon log ERROR lines, first: " << error_lines.front();
    ASSERT_NE(-1, status) << "the daemon did not exit on SIGTERM";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "daemon exit status " << status;
    for (int i = 0; i < K_COUNT; i++) {
        auto &b = before[names[i]];
        auto &a = after[names[i]];
        uint64_t acc = a["accepted"] - b["accepted"];
        const KindStats &k = s.k[i];
        // Every connection the clients made was accepted (RSTs included:
        // Linux still hands them to accept()), and nothing else came in.
        EXPECT_GE(acc, k.connected) << names[i];
        EXPECT_LE(acc, k.attempts) << names[i];
        EXPECT_EQ(a["accepted"] - a["closed"], a["active"]) << names[i];
        EXPECT_LE(k.bytes_verified, a["bytes_out"] - b["bytes_out"]) << names[i];
        if (i != K_TLS) {
            // Socket bytes: the daemon cannot have read more than was sent.
            EXPECT_LE(a["bytes_in"] - b["bytes_in"], k.bytes_sent) << names[i];
            EXPECT_LE(a["bytes_out"] - b["bytes_out"], a["bytes_in"] - b["bytes_in"]) << names[i];
            EXPECT_GE(a["bytes_in"] - b["bytes_in"], k.bytes_verified) << names[i];
        } else {
            uint64_t hs = a["tls_handshakes"] - b["tls_handshakes"];
            uint64_t failed = a["tls_failed"] - b["tls_failed"];
            // Every TLS connection ends as a completed or a failed handshake.
            EXPECT_EQ(acc, hs + failed) << "TLS connections without a handshake outcome";
            EXPECT_GE(failed, k.hs_aborts) << "abandoned handshakes the daemon did not count";
            EXPECT_LE(hs, k.tls_ok) << "handshakes the daemon completed and the clients did not";
            // A client that completed and then reset at once may not let
            // the daemon read its Finished; every other one exchanged data.
            EXPECT_GE(hs, k.tls_ok - k.aborts_close - k.aborts_rst) << "completed handshakes";
        }
    }
    EXPECT_EQ(tcp_acc, tcp_log - tcp_log_before) << "tcp access log lines";
    EXPECT_EQ(tls_acc, tls_log - tls_log_before) << "tls access log lines";
    if (metrics.empty()) {
        ADD_FAILURE() << "no /metrics";
    } else {
        EXPECT_EQ((double)after["tcp"]["accepted"] + 1,
                  metric(metrics, "evstream_listener_connections_accepted_total{listener=\"tcp\"}"))
            << "/metrics and /status disagree (one probe connection in between)";
    }

    SSL_CTX_free(tg.ctx[0]);
    SSL_CTX_free(tg.ctx[1]);
    remove_tls_certs(&certs);
    remove_dir(dir);
}

// --- main ----------------------------------------------------------------------------

void usage(FILE *f) {
    fprintf(f,
            "usage: soak_test [gtest options] [--duration S] [--connections N] [--total N]\n"
            "                 [--threads N] [--workers N] [--seed N] [--scale F] [--rss-bound F]\n"
            "                 [--fd-slack N] [--verbose]\n"
            "  CI default: --duration 40 --connections 2000 (total 5 x connections x duration/40);\n"
            "  long mode:  --duration 600 --connections 10000\n"
            "  environment: EVS_SOAK_DURATION, EVS_SOAK_CONNECTIONS, EVS_SOAK_TOTAL, EVS_SOAK_THREADS,\n"
            "  EVS_SOAK_WORKERS, EVS_SOAK_SEED, EVS_SOAK_SCALE (ASan builds default to 0.4, TSan 0.2),\n"
            "  EVS_SOAK_RSS_BOUND; EVS_TEST_BUILDDIR names the build tree (the daemon and plugins/).\n");
}

bool set_option(const std::string &name, const char *v) {
    char *end = nullptr;
    if (!v || !*v) return false;
    double x = strtod(v, &end);
    if (*end || x < 0) return false;
    if (name == "duration") g_opt.duration = std::max(10.0, x);
    else if (name == "connections") g_opt.connections = (long)x;
    else if (name == "total") g_opt.total = (long)x;
    else if (name == "threads") g_opt.threads = (int)x;
    else if (name == "workers") g_opt.workers = std::max(1, (int)x);
    else if (name == "seed") g_opt.seed = strtoull(v, nullptr, 10);
    else if (name == "scale") g_opt.scale = x;
    else if (name == "rss-bound") g_opt.rss_bound = x;
    else if (name == "fd-slack") g_opt.fd_slack = (int)x;
    else return false;
    return true;
}

} // namespace

int main(int argc, char **argv) {
    testing::InitGoogleTest(&argc, argv);
    signal(SIGPIPE, SIG_IGN);
    static const char *const env_names[][2] = {
        {"EVS_SOAK_DURATION", "duration"}, {"EVS_SOAK_CONNECTIONS", "connections"},
        {"EVS_SOAK_TOTAL", "total"},       {"EVS_SOAK_THREADS", "threads"},
        {"EVS_SOAK_WORKERS", "workers"},   {"EVS_SOAK_SEED", "seed"},
        {"EVS_SOAK_SCALE", "scale"},       {"EVS_SOAK_RSS_BOUND", "rss-bound"}};
    for (auto &e : env_names) {
        const char *v = getenv(e[0]);
        if (v && *v && !set_option(e[1], v)) {
            fprintf(stderr, "soak_test: bad %s=%s\n", e[0], v);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            usage(stdout);
            return 0;
        }
        if (a == "--verbose") {
            g_opt.verbose = true;
            continue;
        }
        std::string val;
        const char *v = nullptr;
        if (a.compare(0, 2, "--") == 0 && a.find('=') != std::string::npos) {
            val = a.substr(a.find('=') + 1);
            a = a.substr(0, a.find('='));
            v = val.c_str();
        } else if (i + 1 < argc) {
            v = argv[++i];
        }
        if (a.compare(0, 2, "--") != 0 || !set_option(a.substr(2), v)) {
            fprintf(stderr, "soak_test: bad option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    return RUN_ALL_TESTS();
}
