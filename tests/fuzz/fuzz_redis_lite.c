/*
 * fuzz_redis_lite.c - libFuzzer target for the redis_lite example plugin
 * (examples/redis_lite/redis_lite.c, compiled into this program): its
 * RESP and inline parsers and its commands are static, so the target
 * drives the real plugin.
 *
 * redis_lite needs a real runtime (its shards live on the workers and
 * multi-key commands travel between them with evs_worker_post; under
 * evs_run()'s private loop it has no workers), so the target starts one
 * runtime with two workers once, with the plugin's worker_start and
 * worker_stop as the runtime's hooks, and serves the plugin on an
 * abstract Unix socket exactly as evstreamd does. Each run connects, sends
 * the input as the request bytes, then EOF, and reads every answer until
 * the plugin closes; then a second connection sends FLUSHALL, so no state
 * carries over to the next run (and the server is shown to be alive).
 *
 * Input: byte 0 picks max_bulk (bit 0: 16 bytes instead of 16M); the rest
 * is sent.
 *
 * Invariants: the connection always ends (a hang is a libFuzzer timeout);
 * the output is a sequence of complete RESP2 values; a protocol error is
 * the last value; FLUSHALL afterwards answers exactly "+OK"; no
 * leak, no crash, no undefined behaviour (in the connection's task or on
 * the workers).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <libconfig.h>

#include <evstream.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);      \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

extern const evs_plugin evs_plugin_descriptor;

typedef struct instance {
    void *state;
    evs_runtime *rt;
    char name[64]; /* "@..." abstract socket */
} instance;

static instance big;   /* max_bulk default (16M) */
static instance small; /* max_bulk 16 */

static void worker_started(evs_worker *w, void *arg)
{
    instance *in = arg;
    CHECK(evs_plugin_descriptor.worker_start(w, in->state) == 0);
}

static void worker_stopping(evs_worker *w, void *arg)
{
    instance *in = arg;
    evs_plugin_descriptor.worker_stop(w, in->state);
}

static void start(instance *in, const char *settings, const char *tag)
{
    config_t cfg;
    evs_settings *s;
    evs_runtime_options ro;
    evs_server_options so;

    config_init(&cfg);
    CHECK(config_read_string(&cfg, settings));
    s = evs_settings_from_libconfig(config_root_setting(&cfg));
    CHECK(s && evs_plugin_descriptor.init(s, &in->state) == 0);
    evs_settings_free(s);
    config_destroy(&cfg);

    memset(&ro, 0, sizeof ro);
    ro.workers = 2;
    ro.worker_started = worker_started;
    ro.worker_stopping = worker_stopping;
    ro.hook_arg = in;
    CHECK(evs_runtime_new(&ro, &in->rt) == 0);
    snprintf(in->name, sizeof in->name, "@evs-fuzz-redis-%d-%s", (int)getpid(), tag);
    memset(&so, 0, sizeof so);
    so.client_connected = evs_plugin_descriptor.client_connected;
    so.arg = in->state;
    so.path = in->name;
    CHECK(evs_start_unix_server(in->rt, &so, NULL) == 0);
}

static void stop_all(void)
{
    instance *all[] = {&big, &small};
    for (int i = 0; i < 2; i++) {
        evs_runtime_stop(all[i]->rt, 5);
        evs_plugin_descriptor.fini(all[i]->state);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    CHECK(evs_plugin_descriptor.mode == EVS_PLUGIN_STREAM);
    evs_log_set_level(EVS_LOG_ERROR);
    start(&big, "", "big");
    start(&small, "max_bulk = 16;", "small");
    atexit(stop_all);
    return 0;
}

static int connect_to(const instance *in)
{
    struct sockaddr_un sa;
    socklen_t len;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    CHECK(fd >= 0);
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    len = (socklen_t)strlen(in->name);
    memcpy(sa.sun_path, in->name, len);
    sa.sun_path[0] = '\0'; /* abstract */
    CHECK(connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) == 0);
    return fd;
}

/* Send @req then EOF while reading the answers, until the server closes.
 * Both at once: a client that does not read would stall the server. */
static char *exchange(const instance *in, const uint8_t *req, size_t reqlen, size_t *outlen)
{
    int fd = connect_to(in);
    size_t sent = 0, len = 0, cap = 4096;
    char *out = malloc(cap);
    bool wr_open = true;

    CHECK(out != NULL);
    if (reqlen == 0) {
        shutdown(fd, SHUT_WR);
        wr_open = false;
    }
    for (;;) {
        struct pollfd p = {fd, POLLIN | (wr_open ? POLLOUT : 0), 0};
        int rc = poll(&p, 1, 20000);
        if (rc < 0 && errno == EINTR) {
            continue; /* libFuzzer's -timeout alarm */
        }
        if (rc == 0) {
            /* 20 s without progress: the plugin (or the runtime) hangs.
             * Say where things stand before failing. */
            for (int i = 0; i < evs_runtime_worker_count(in->rt); i++) {
                evs_worker_stats st;
                evs_worker_stats_get(evs_runtime_worker(in->rt, i), &st);
                fprintf(stderr,
                        "hang: worker %d: accepted %llu active %llu closed %llu tasks %llu "
                        "in %llu out %llu; request %zu/%zu sent, %zu answered\n",
                        i, (unsigned long long)st.accepted, (unsigned long long)st.active,
                        (unsigned long long)st.closed, (unsigned long long)st.tasks,
                        (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out, sent,
                        reqlen, len);
            }
        }
        CHECK(rc == 1);
        if (wr_open && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
            }
            if (n < 0 && errno != EAGAIN) {
                wr_open = false; /* the server closed first (EPIPE) */
            } else if (sent == reqlen) {
                shutdown(fd, SHUT_WR);
                wr_open = false;
            }
        }
        if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
            if (cap - len < 4096) {
                cap *= 2;
                out = realloc(out, cap);
                CHECK(out != NULL);
            }
            ssize_t n = recv(fd, out + len, cap - len, 0);
            if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                break; /* closed; a reset only means it left request bytes unread */
            }
            if (n < 0) {
                CHECK(errno == EAGAIN);
            } else {
                len += (size_t)n;
            }
        }
    }
    close(fd);
    *outlen = len;
    return out;
}

/* One RESP2 value at *p. @return false when it is malformed or cut. */
static bool value(const char **p, const char *end, int depth, char *type)
{
    const char *s = *p, *nl;
    long long n;
    char *e;

    if (s >= end || depth > 8) {
        return false;
    }
    nl = memmem(s, (size_t)(end - s), "\r\n", 2);
    if (!nl) {
        return false;
    }
    *type = s[0];
    switch (s[0]) {
    case '+':
    case '-':
        if (memchr(s, '\r', (size_t)(nl - s)) || memchr(s, '\n', (size_t)(nl - s))) {
            return false;
        }
        *p = nl + 2;
        return true;
    case ':':
        n = strtoll(s + 1, &e, 10);
        if (e != nl || nl == s + 1) {
            return false;
        }
        *p = nl + 2;
        return true;
    case '$':
        n = strtoll(s + 1, &e, 10);
        if (e != nl || n < -1) {
            return false;
        }
        *p = nl + 2;
        if (n == -1) {
            return true;
        }
        if (end - *p < n + 2 || memcmp(*p + n, "\r\n", 2) != 0) {
            return false;
        }
        *p += n + 2;
        return true;
    case '*':
        n = strtoll(s + 1, &e, 10);
        if (e != nl || n < -1) {
            return false;
        }
        *p = nl + 2;
        for (long long i = 0; i < n; i++) {
            char t;
            if (!value(p, end, depth + 1, &t)) {
                return false;
            }
        }
        return true;
    default:
        return false;
    }
}

static void check_answers(const char *out, size_t len)
{
    const char *p = out, *end = out + len;

    while (p < end) {
        const char *start = p;
        char type;
        CHECK(value(&p, end, 0, &type));
        if (type == '-' && (size_t)(p - start) > 20 && memcmp(start, "-ERR Protocol error", 19) == 0) {
            CHECK(p == end); /* a protocol error closes the connection */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const instance *in;
    size_t len;
    char *out;

    if (size < 1 || size > 4096) {
        return -1;
    }
    in = (data[0] & 1) ? &small : &big;
    out = exchange(in, data + 1, size - 1, &len);
    check_answers(out, len);
    free(out);
    /* Forget every key, and see the server still answers. */
    out = exchange(in, (const uint8_t *)"FLUSHALL\r\n", 10, &len);
    CHECK(len == 5 && memcmp(out, "+OK\r\n", 5) == 0);
    free(out);
    return 0;
}
