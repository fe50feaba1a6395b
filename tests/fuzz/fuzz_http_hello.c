/*
 * fuzz_http_hello.c - libFuzzer target for the http_hello example plugin
 * (examples/http_hello/http_hello.c, compiled into this program): its
 * request parser is static, so the target drives the real plugin.
 *
 * Each run is one evs_run(): a socketpair, the plugin's client_connected
 * called directly with a reader/writer from evs_stream_open_fd on one end,
 * and a client task on the other end that sends the input as the request
 * bytes (in chunks, with loop passes between them), then EOF, and reads
 * every answer until the plugin closes.
 *
 * Input: byte 0 picks the settings (bit 0: max_header_size 256 instead of
 * the default 8k) and the chunk size (1 + (byte0 >> 1)); the rest is sent.
 *
 * Invariants: the handler returns (a hang is a libFuzzer timeout); the
 * output is a sequence of complete HTTP/1.1 answers, each with a known
 * status, its reason phrase, a Content-Length and then that body (or none
 * for HEAD); an error answer (status >= 400) says "Connection: close" and
 * is the last one; no more 200 answers than request heads sent; no leak,
 * no crash. EVS_FUZZ_DUMP=1 prints the answers (to replay an input by hand).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

/* The plugin's descriptor, from http_hello.c linked into this program. */
extern const evs_plugin evs_plugin_descriptor;

static void *state_default; /* max_header_size 8k */
static void *state_small;   /* max_header_size 256 */

static void *make_state(const char *text)
{
    config_t cfg;
    evs_settings *s;
    void *state = NULL;

    config_init(&cfg);
    CHECK(config_read_string(&cfg, text));
    s = evs_settings_from_libconfig(config_root_setting(&cfg));
    CHECK(s != NULL);
    CHECK(evs_plugin_descriptor.init(s, &state) == 0 && state != NULL);
    evs_settings_free(s);
    config_destroy(&cfg);
    return state;
}

static void fini_states(void)
{
    evs_plugin_descriptor.fini(state_default);
    evs_plugin_descriptor.fini(state_small);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    CHECK(evs_plugin_descriptor.mode == EVS_PLUGIN_STREAM);
    evs_log_set_level(EVS_LOG_ERROR);
    state_default = make_state("");
    state_small = make_state("max_header_size = 256;");
    atexit(fini_states);
    return 0;
}

typedef struct run {
    const uint8_t *req;
    size_t reqlen;
    size_t chunk;
    void *state;
    int server_fd, client_fd;
    char *out; /* everything the plugin answered */
    size_t outlen, outcap;
} run;

static int client_task(void *arg)
{
    run *rn = arg;
    evs_reader *r;
    evs_writer *w;

    CHECK(evs_stream_open_fd(rn->client_fd, 0, &r, &w) == 0);
    for (size_t off = 0; off < rn->reqlen; off += rn->chunk) {
        size_t n = rn->reqlen - off < rn->chunk ? rn->reqlen - off : rn->chunk;
        if (evs_write(w, rn->req + off, n) < 0) {
            break; /* the plugin closed early (an error answer) */
        }
        evs_yield();
    }
    evs_write_eof(w);
    for (;;) {
        if (rn->outcap - rn->outlen < 4096) {
            rn->outcap = rn->outcap * 2 + 4096;
            rn->out = realloc(rn->out, rn->outcap);
            CHECK(rn->out != NULL);
        }
        ssize_t n = evs_read(r, rn->out + rn->outlen, rn->outcap - rn->outlen);
        if (n == 0) {
            break;
        }
        CHECK(n > 0); /* the harness drains the plugin's side: no reset */
        rn->outlen += (size_t)n;
    }
    evs_writer_free(w);
    return 0;
}

static int server_task(void *arg)
{
    run *rn = arg;
    evs_reader *r;
    evs_writer *w;
    evs_task *client;
    char sink[4096];

    CHECK(evs_stream_open_fd(rn->server_fd, 0, &r, &w) == 0);
    CHECK(evs_task_spawn(client_task, rn, &client) == 0);
    evs_plugin_descriptor.client_connected(r, w, rn->state);
    /* As the server does when the handler returns: close after flushing.
     * Read the unread request bytes first, so that closing does not reset
     * the connection (a Unix socket closed with unread data does) and the
     * client sees every answer. */
    evs_write_eof(w);
    while (evs_read(r, sink, sizeof sink) > 0) {
    }
    evs_writer_free(w);
    CHECK(evs_task_join(client, NULL) == 0);
    return 0;
}

/* Count request heads: a head ends at the first "\n\n" or "\n\r\n" (which
 * "\r\n\r\n" ends with), as the plugin's separators say. */
static size_t count_heads(const uint8_t *p, size_t n)
{
    size_t count = 0;

    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n') {
            count++;
            i++;
        } else if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            count++;
            i += 2;
        }
    }
    return count;
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return NULL;
    }
}

static void check_answers(const run *rn)
{
    const char *p = rn->out, *end = rn->out + rn->outlen;
    size_t oks = 0;

    while (p < end) {
        const char *head_end = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        const char *cl;
        char reason[64], body[64];
        int status, consumed = 0;
        unsigned long len;
        bool closes;

        CHECK(head_end != NULL); /* a complete head */
        CHECK(sscanf(p, "HTTP/1.1 %3d %n", &status, &consumed) == 1 && consumed == 13);
        CHECK(reason_of(status) != NULL);
        snprintf(reason, sizeof reason, "HTTP/1.1 %d %s\r\n", status, reason_of(status));
        CHECK(strncmp(p, reason, strlen(reason)) == 0);
        cl = memmem(p, (size_t)(head_end + 2 - p), "\r\nContent-Length: ", 18);
        CHECK(cl != NULL);
        len = strtoul(cl + 18, NULL, 10);
        closes = memmem(p, (size_t)(head_end + 2 - p), "\r\nConnection: close\r\n", 21) != NULL;
        if (status == 200) {
            snprintf(body, sizeof body, "Hello, World!");
            oks++;
        } else {
            snprintf(body, sizeof body, "%s\n", reason_of(status));
            CHECK(closes); /* every error closes the connection */
        }
        CHECK(len == strlen(body));
        p = head_end + 4;
        /* The body, unless the request was a HEAD. */
        if ((size_t)(end - p) >= len && memcmp(p, body, len) == 0) {
            p += len;
        } else {
            CHECK(status == 200); /* only HEAD's 200 has no body */
        }
        if (closes) {
            CHECK(p == end); /* nothing after an answer that closes */
        }
    }
    CHECK(oks <= count_heads(rn->req, rn->reqlen));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run rn;
    int sv[2], result = -1;

    if (size < 1 || size > 4096) {
        return -1;
    }
    memset(&rn, 0, sizeof rn);
    rn.state = (data[0] & 1) ? state_small : state_default;
    rn.chunk = 1 + (size_t)(data[0] >> 1);
    rn.req = data + 1;
    rn.reqlen = size - 1;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    rn.server_fd = sv[0];
    rn.client_fd = sv[1];
    CHECK(evs_run(server_task, &rn, &result) == 0 && result == 0);
    if (getenv("EVS_FUZZ_DUMP")) {
        fwrite(rn.out, 1, rn.outlen, stderr);
    }
    check_answers(&rn);
    free(rn.out);
    return 0;
}
