/*
 * loadgen - the evstream benchmark client (never run by make check).
 *
 * One epoll loop per thread (-t, default: one per online core), a bounded
 * duration, loopback TCP or Unix sockets only. Modes:
 *
 *   echo     C connections ping-pong S-byte messages: one message out, wait
 *            for all S bytes back, repeat. Reports req/s, MB/s (both
 *            directions counted once: S bytes per request) and latency
 *            p50/p99/p99.9 of the round trips completed in the window.
 *   connect  C concurrent slots, each: connect, one S-byte exchange, close,
 *            repeat. Reports connections/s and the latency of the whole cycle.
 *   idle     Open N connections (one S-byte exchange each so the server has
 *            accepted and set each one up), then hold them. With --pid, reads
 *            the server's VmRSS: after the first N/10 connections (warm-up:
 *            allocator arenas, first-time tables) and after all N, and
 *            reports (rss_all - rss_warm) / (N - N/10) bytes per connection.
 *   hs       TLS handshakes: like connect, over TLS. --resume reuses the
 *            session (ticket) from the previous connection of the same slot;
 *            the reported resumed_pct tells how many really resumed.
 *
 * --tls makes echo run over TLS too (bulk throughput with large -s).
 *
 * Output: one line of key=value pairs on stdout (bench/run parses it).
 *
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto -lpthread
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum mode { M_ECHO, M_CONNECT, M_IDLE, M_HS };

static struct {
    enum mode mode;
    int conns;
    size_t size;
    double duration;
    double warmup;
    int threads;
    bool tls;
    bool resume;
    int pid;
    int idle_n;
    double hold;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} opt = {.mode = M_ECHO, .conns = 50, .size = 64, .duration = 3, .warmup = 0.5,
         .threads = 0, .idle_n = 5000, .hold = 1.0};

static SSL_CTX *client_ctx;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- latency histogram: log-linear, 128 sub-buckets per power of two
 * (under 1% error), values in nanoseconds. ---- */
#define SUB_BITS 7
#define SUB (1 << SUB_BITS)
#define NBUCKETS (64 * SUB)

typedef struct {
    uint64_t *b;
    uint64_t count;
} hist;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB)
        return (unsigned)v;
    int e = 63 - __builtin_clzll(v) - (SUB_BITS - 1); /* >= 1 */
    return (unsigned)(e * (SUB / 2) + (v >> e));
}

static uint64_t value_of(unsigned b)
{
    if (b < SUB)
        return b;
    unsigned e = (b - SUB) / (SUB / 2) + 1;
    uint64_t m = (b - SUB) % (SUB / 2) + SUB / 2;
    return (m << e) + (1ull << (e - 1)); /* bucket middle */
}

static void hist_add(hist *h, uint64_t v)
{
    unsigned b = bucket_of(v);
    if (b >= NBUCKETS)
        b = NBUCKETS - 1;
    h->b[b]++;
    h->count++;
}

static double hist_pct(const hist *h, double p)
{
    if (!h->count)
        return 0;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        acc += h->b[i];
        if (acc >= want)
            return (double)value_of(i);
    }
    return 0;
}

/* ---- connections ---- */
enum cstate { C_CONNECTING, C_HANDSHAKE, C_WRITING, C_READING, C_IDLE };

typedef struct conn {
    int fd;
    SSL *ssl;
    SSL_SESSION *sess; /* last session of this slot (hs --resume) */
    enum cstate st;
    size_t wpos, rpos;
    uint64_t t0;      /* start of the current request (or cycle) */
    uint32_t events;  /* current epoll interest */
    struct worker *w;
} conn;

typedef struct worker {
    int ep;
    int nconns;
    conn *c;
    char *sendbuf, *recvbuf;
    hist h;
    uint64_t done, bytes, errors, resumed, opened;
    volatile bool measuring;
    pthread_t th;
} worker;

static atomic_bool stop_flag;
static atomic_bool measuring_flag;
static atomic_int idle_opened;

static void set_events(conn *c, uint32_t ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        die("epoll_ctl mod");
    c->events = ev;
}

static int conn_open(conn *c)
{
    int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    if (opt.addr.ss_family == AF_INET) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->wpos = c->rpos = 0;
    c->t0 = now_ns();
    int r = connect(fd, (struct sockaddr *)&opt.addr, opt.addrlen);
    if (r < 0 && errno != EINPROGRESS && errno != EAGAIN) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    c->st = C_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(c->w->ep, EPOLL_CTL_ADD, fd, &e) < 0)
        die("epoll_ctl add");
    c->w->opened++;
    return 0;
}

static void conn_close(conn *c)
{
    if (c->ssl) {
        /* close_notify: a session freed without it is marked not resumable */
        if (SSL_is_init_finished(c->ssl))
            SSL_shutdown(c->ssl);
        if (opt.mode == M_HS && opt.resume && SSL_is_init_finished(c->ssl)) {
            SSL_SESSION *s = SSL_get1_session(c->ssl);
            if (s) {
                if (c->sess)
                    SSL_SESSION_free(c->sess);
                c->sess = s;
            }
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

/* I/O wrappers: >0 bytes, 0 EOF, -1 would block (with *want set), -2 error */
static ssize_t io_write(conn *c, const void *p, size_t n, uint32_t *want)
{
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_write(c->ssl, p, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) { *want = EPOLLIN; return -1; }
        if (e == SSL_ERROR_WANT_WRITE) { *want = EPOLLOUT; return -1; }
        return -2;
    }
    ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
    if (r >= 0)
        return r;
    if (errno == EAGAIN) { *want = EPOLLOUT; return -1; }
    return -2;
}

static ssize_t io_read(conn *c, void *p, size_t n, uint32_t *want)
{
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) { *want = EPOLLIN; return -1; }
        if (e == SSL_ERROR_WANT_WRITE) { *want = EPOLLOUT; return -1; }
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        return -2;
    }
    ssize_t r = recv(c->fd, p, n, 0);
    if (r >= 0)
        return r;
    if (errno == EAGAIN) { *want = EPOLLIN; return -1; }
    return -2;
}

static bool cycle_mode(void) { return opt.mode == M_CONNECT || opt.mode == M_HS; }

static void restart(conn *c)
{
    conn_close(c);
    if (!atomic_load_explicit(&stop_flag, memory_order_relaxed))
        conn_open(c);
}

/* One exchange finished. */
static void completed(conn *c)
{
    worker *w = c->w;
    uint64_t t = now_ns();
    if (w->measuring) {
        hist_add(&w->h, t - c->t0);
        w->done++;
        w->bytes += opt.size;
        if (c->ssl && SSL_session_reused(c->ssl))
            w->resumed++;
    }
    if (opt.mode == M_IDLE) {
        c->st = C_IDLE;
        set_events(c, EPOLLIN); /* notice a server close */
        atomic_fetch_add(&idle_opened, 1);
        return;
    }
    if (cycle_mode()) {
        restart(c);
        return;
    }
    c->wpos = c->rpos = 0;
    c->t0 = t;
    c->st = C_WRITING;
}

static void drive(conn *c, uint32_t revents)
{
    worker *w = c->w;
    uint32_t want = 0;

    if (revents & (EPOLLERR | EPOLLHUP) && c->st == C_CONNECTING) {
        w->errors++;
        restart(c);
        return;
    }
    for (;;) {
        switch (c->st) {
        case C_CONNECTING: {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                w->errors++;
                restart(c);
                return;
            }
            if (opt.tls) {
                c->ssl = SSL_new(client_ctx);
                SSL_set_fd(c->ssl, c->fd);
                SSL_set_connect_state(c->ssl);
                if (c->sess)
                    SSL_set_session(c->ssl, c->sess);
                c->st = C_HANDSHAKE;
            } else {
                c->st = C_WRITING;
            }
            if (!cycle_mode())
                c->t0 = now_ns();
            continue;
        }
        case C_HANDSHAKE: {
            ERR_clear_error();
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                c->st = C_WRITING;
                if (!cycle_mode())
                    c->t0 = now_ns();
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) want = EPOLLIN;
            else if (e == SSL_ERROR_WANT_WRITE) want = EPOLLOUT;
            else { w->errors++; restart(c); return; }
            set_events(c, want);
            return;
        }
        case C_WRITING: {
            ssize_t n = io_write(c, w->sendbuf + c->wpos, opt.size - c->wpos, &want);
            if (n == -1) { set_events(c, want); return; }
            if (n < 0) { w->errors++; restart(c); return; }
            c->wpos += (size_t)n;
            if (c->wpos == opt.size)
                c->st = C_READING;
            continue;
        }
        case C_READING: {
            ssize_t n = io_read(c, w->recvbuf, opt.size - c->rpos, &want);
            if (n == -1) { set_events(c, want); return; }
            if (n <= 0) { w->errors++; restart(c); return; }
            c->rpos += (size_t)n;
            if (c->rpos == opt.size) {
                completed(c);
                if (c->fd < 0 || c->st == C_IDLE || c->st == C_CONNECTING)
                    return;
            }
            continue;
        }
        case C_IDLE: {
            char b[64];
            ssize_t n = io_read(c, b, sizeof b, &want);
            if (n == -1)
                return;
            w->errors++; /* the server closed an idle connection */
            conn_close(c);
            return;
        }
        }
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    struct epoll_event ev[256];

    w->ep = epoll_create1(EPOLL_CLOEXEC);
    if (w->ep < 0)
        die("epoll_create1");
    if (opt.mode != M_IDLE) {
        for (int i = 0; i < w->nconns; i++)
            conn_open(&w->c[i]);
    }
    int next_idle = 0;
    while (!atomic_load(&stop_flag)) {
        w->measuring = atomic_load_explicit(&measuring_flag, memory_order_relaxed);
        /* idle mode: keep at most 64 connections in flight while opening */
        if (opt.mode == M_IDLE) {
            int inflight = (int)w->opened - (int)atomic_load(&idle_opened);
            int target = __atomic_load_n(&w->nconns, __ATOMIC_ACQUIRE);
            while (next_idle < target && inflight < 64) {
                if (conn_open(&w->c[next_idle]) == 0)
                    inflight++;
                next_idle++;
            }
        }
        int n = epoll_wait(w->ep, ev, 256, 50);
        for (int i = 0; i < n; i++)
            drive(ev[i].data.ptr, ev[i].events);
    }
    for (int i = 0; i < w->nconns; i++)
        conn_close(&w->c[i]);
    return NULL;
}

static long read_rss(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

/* utime + stime of all the process's threads, in seconds */
static double read_cpu(int pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    char *p = strrchr(line, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int parse_addr(const char *s)
{
    memset(&opt.addr, 0, sizeof opt.addr);
    if (!strncmp(s, "unix:", 5)) {
        struct sockaddr_un *u = (struct sockaddr_un *)&opt.addr;
        u->sun_family = AF_UNIX;
        if (strlen(s + 5) >= sizeof u->sun_path)
            return -1;
        strcpy(u->sun_path, s + 5);
        opt.addrlen = sizeof *u;
        return 0;
    }
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    struct sockaddr_in *in = (struct sockaddr_in *)&opt.addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
        return -1;
    opt.addrlen = sizeof *in;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE -a ADDR [options]\n"
            "  MODE: echo | connect | idle | hs\n"
            "  -a ADDR      127.0.0.1:PORT or unix:/path\n"
            "  -c N         connections (echo) or concurrent slots (connect, hs); default 50\n"
            "  -s BYTES     message size; default 64\n"
            "  -d SECONDS   measured duration; default 3\n"
            "  -w SECONDS   warm-up before measuring; default 0.5\n"
            "  -t N         threads (one epoll loop each); default: online cores\n"
            "  --tls        TLS (echo, hs)\n"
            "  --resume     hs: resume sessions\n"
            "  -n N         idle: connections to hold; default 5000\n"
            "  --pid PID    the server process: idle reads its VmRSS, the others its CPU time\n"
            "  --hold S     idle: seconds to hold after opening; default 1\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *m = argv[1];
    if (!strcmp(m, "echo")) opt.mode = M_ECHO;
    else if (!strcmp(m, "connect")) opt.mode = M_CONNECT;
    else if (!strcmp(m, "idle")) opt.mode = M_IDLE;
    else if (!strcmp(m, "hs")) { opt.mode = M_HS; opt.tls = true; }
    else usage();
    argc--;
    argv++;

    static const struct option lo[] = {{"tls", no_argument, NULL, 'T'},
                                       {"resume", no_argument, NULL, 'R'},
                                       {"pid", required_argument, NULL, 'p'},
                                       {"hold", required_argument, NULL, 'H'},
                                       {NULL, 0, NULL, 0}};
    const char *addr = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "a:c:s:d:w:t:n:", lo, NULL)) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = (size_t)atol(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 't': opt.threads = atoi(optarg); break;
        case 'n': opt.idle_n = atoi(optarg); break;
        case 'T': opt.tls = true; break;
        case 'R': opt.resume = true; break;
        case 'p': opt.pid = atoi(optarg); break;
        case 'H': opt.hold = atof(optarg); break;
        default: usage();
        }
    }
    if (!addr || parse_addr(addr) < 0 || opt.size == 0 || opt.conns < 1)
        usage();
    if (opt.threads <= 0)
        opt.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (opt.mode == M_IDLE)
        opt.conns = opt.idle_n;
    if (opt.threads > opt.conns)
        opt.threads = opt.conns;
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    if (opt.tls) {
        client_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
        /* keep sessions in the slot ourselves, not in an internal cache */
        SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_CLIENT |
                                                       SSL_SESS_CACHE_NO_INTERNAL_STORE);
    }

    worker *ws = calloc((size_t)opt.threads, sizeof *ws);
    int per = opt.conns / opt.threads, extra = opt.conns % opt.threads;
    for (int i = 0; i < opt.threads; i++) {
        worker *w = &ws[i];
        w->nconns = per + (i < extra);
        w->c = calloc((size_t)w->nconns, sizeof *w->c);
        for (int j = 0; j < w->nconns; j++) {
            w->c[j].fd = -1;
            w->c[j].w = w;
        }
        w->sendbuf = malloc(opt.size);
        w->recvbuf = malloc(opt.size);
        for (size_t k = 0; k < opt.size; k++)
            w->sendbuf[k] = (char)('a' + k % 26);
        w->h.b = calloc(NBUCKETS, sizeof(uint64_t));
    }
    /* idle mode measures RSS itself; the others measure a window */
    long rss0 = -1, rss1 = -1;
    int warm_n = opt.idle_n / 10;
    if (opt.mode == M_IDLE) {
        /* open the warm-up share first, with the worker threads held back */
        for (int i = 0; i < opt.threads; i++)
            ws[i].nconns = 0;
        for (int i = 0; i < opt.threads; i++)
            ws[i].nconns = warm_n / opt.threads + (i < warm_n % opt.threads);
    }
    for (int i = 0; i < opt.threads; i++)
        if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]) != 0)
            die("pthread_create");

    double elapsed = opt.duration, server_cpu = -1, client_cpu = -1;
    if (opt.mode == M_IDLE) {
        uint64_t deadline = now_ns() + 60ull * 1000000000u;
        while (atomic_load(&idle_opened) < warm_n && now_ns() < deadline)
            sleep_s(0.01);
        sleep_s(0.3);
        if (opt.pid)
            rss0 = read_rss(opt.pid);
        for (int i = 0; i < opt.threads; i++) /* release the rest (racy-safe: only grows) */
            __atomic_store_n(&ws[i].nconns,
                             opt.idle_n / opt.threads + (i < opt.idle_n % opt.threads),
                             __ATOMIC_RELEASE);
        while (atomic_load(&idle_opened) < opt.idle_n && now_ns() < deadline)
            sleep_s(0.01);
        sleep_s(opt.hold);
        if (opt.pid)
            rss1 = read_rss(opt.pid);
    } else {
        sleep_s(opt.warmup);
        double scpu0 = opt.pid ? read_cpu(opt.pid) : -1, ccpu0 = self_cpu();
        atomic_store(&measuring_flag, true);
        uint64_t t0 = now_ns();
        sleep_s(opt.duration);
        atomic_store(&measuring_flag, false);
        elapsed = (double)(now_ns() - t0) / 1e9;
        double scpu1 = opt.pid ? read_cpu(opt.pid) : -1, ccpu1 = self_cpu();
        server_cpu = (scpu0 >= 0 && scpu1 >= 0) ? scpu1 - scpu0 : -1;
        client_cpu = ccpu1 - ccpu0;
    }
    atomic_store(&stop_flag, true);
    for (int i = 0; i < opt.threads; i++)
        pthread_join(ws[i].th, NULL);

    hist h = {.b = calloc(NBUCKETS, sizeof(uint64_t))};
    uint64_t done = 0, bytes = 0, errors = 0, resumed = 0;
    for (int i = 0; i < opt.threads; i++) {
        for (unsigned k = 0; k < NBUCKETS; k++)
            h.b[k] += ws[i].h.b[k];
        h.count += ws[i].h.count;
        done += ws[i].done;
        bytes += ws[i].bytes;
        errors += ws[i].errors;
        resumed += ws[i].resumed;
    }
    if (opt.mode == M_IDLE) {
        int opened = atomic_load(&idle_opened);
        double per_conn = (rss0 >= 0 && rss1 >= 0 && opened > warm_n)
                              ? (double)(rss1 - rss0) / (double)(opened - warm_n)
                              : -1;
        printf("mode=idle conns=%d opened=%d errors=%llu rss_warm=%ld rss_all=%ld "
               "bytes_per_conn=%.0f\n",
               opt.idle_n, opened, (unsigned long long)errors, rss0, rss1, per_conn);
        return opened == opt.idle_n ? 0 : 1;
    }
    double rps = (double)done / elapsed;
    printf("mode=%s conns=%d size=%zu tls=%d requests=%llu rps=%.0f mbps=%.2f p50_us=%.1f "
           "p99_us=%.1f p999_us=%.1f errors=%llu",
           m, opt.conns, opt.size, opt.tls, (unsigned long long)done, rps,
           (double)bytes / elapsed / 1e6,
           hist_pct(&h, 50) / 1e3, hist_pct(&h, 99) / 1e3, hist_pct(&h, 99.9) / 1e3,
           (unsigned long long)errors);
    /* per server-core-second: requests per CPU second the server burnt (all
     * its threads). /proc ticks are 10 ms: over 3 s that is within 1%. */
    printf(" server_cpu=%.3f client_cpu=%.3f rps_per_core=%.0f", server_cpu / elapsed,
           client_cpu / elapsed, server_cpu > 0 ? (double)done / server_cpu : -1.0);
    if (opt.mode == M_HS)
        printf(" resumed_pct=%.1f", done ? 100.0 * (double)resumed / (double)done : 0.0);
    printf("\n");
    return done > 0 ? 0 : 1;
}
