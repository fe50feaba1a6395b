/*
 * fuzz_config.c - libFuzzer target for evstreamd's configuration loading and
 * validation (src/daemon/config.c: evsd_config_load / evsd_config_free).
 *
 * Each input is written to a file in a private temporary directory (in
 * /dev/shm when there is one) and loaded. Inputs containing "@include" are
 * skipped: libconfig would open whatever file they name (/dev/stdin, a
 * FIFO...), which tests the machine rather than the parser.
 *
 * Invariants:
 *   - failure (-1) always comes with a non-empty message, every line of it
 *     non-empty and the whole ending with a newline; success (0) with none;
 *   - a loaded config is consistent: at least one listener; each has a
 *     name, a listen address and a plugin declared in the plugins list;
 *     unix listeners have a path of at most 107 bytes and TCP ones no path;
 *     limits are in their documented ranges (low water <= high water,
 *     durations finite and within a year, sizes within 1 TiB);
 *     evsd_listener_key works on every listener;
 *   - loading is deterministic: the same file loads to the same result and
 *     the same messages a second time;
 *   - nothing leaks (ASan/LSan), except libconfig's own parser leak on
 *     some syntax errors, suppressed by tests/fuzz/lsan.supp.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);      \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];
static char path[96];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/evs-fuzz-config-XXXXXX", base);
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/evstreamd.conf", dir);
    atexit(cleanup);
    /* A fixed environment: ${VAR} expansion and the plugin_dir default
     * must not depend on who runs the fuzzer. */
    unsetenv("EVSTREAMD_PLUGIN_DIR");
    setenv("EVS_FUZZ_PORT", "8080", 1);
    setenv("EVS_FUZZ_HOST", "127.0.0.1", 1);
    setenv("EVS_FUZZ_EMPTY", "", 1);
    return 0;
}

static void check_errors(const char *errors)
{
    size_t len;

    CHECK(errors != NULL && *errors != '\0');
    len = strlen(errors);
    CHECK(errors[len - 1] == '\n');
    CHECK(errors[0] != '\n' && strstr(errors, "\n\n") == NULL);
}

static void check_limits(const evsd_limits *l)
{
    CHECK(l->max_connections <= 10000000);
    CHECK(l->stream_limit >= 1 && l->stream_limit <= (UINT64_C(1) << 40));
    CHECK(l->write_high_water >= 1 && l->write_high_water <= (UINT64_C(1) << 40));
    CHECK(l->write_low_water <= l->write_high_water);
    CHECK(isfinite(l->idle_timeout) && l->idle_timeout >= 0 && l->idle_timeout <= 365.0 * 86400.0);
    CHECK(isfinite(l->handshake_timeout) && l->handshake_timeout > 0 &&
          l->handshake_timeout <= 365.0 * 86400.0);
    CHECK(isfinite(l->shutdown_timeout) && l->shutdown_timeout >= 0 &&
          l->shutdown_timeout <= 365.0 * 86400.0);
    CHECK(l->stack_size >= 64 * 1024 && l->stack_size <= 64 * 1024 * 1024);
}

static void check_listener(const evsd_config *c, const evsd_listener_conf *l, bool admin)
{
    char *key;

    CHECK(l->name && *l->name);
    CHECK(l->listen);
    if (l->family == EVSD_UNIX || l->family == EVSD_UNIXGRAM) {
        CHECK(l->path && *l->path && strlen(l->path) <= 107 && l->host == NULL);
        CHECK(!l->reuseport);
    } else {
        CHECK((l->family == EVSD_TCP || l->family == EVSD_UDP) && l->path == NULL);
        CHECK(!l->has_mode && !l->has_owner && !l->has_group);
    }
    if (l->has_mode) {
        CHECK(l->mode <= 07777);
    }
    check_limits(&l->limits);
    key = evsd_listener_key(l);
    CHECK(key && *key);
    free(key);
    if (admin) {
        return;
    }
    CHECK(l->backlog >= 1 && l->backlog <= 65535);
    CHECK(l->plugin && *l->plugin);
    bool found = false;
    for (size_t i = 0; i < c->nplugins; i++) {
        found = found || strcmp(c->plugins[i].name, l->plugin) == 0;
    }
    CHECK(found);
    if (l->tls) {
        CHECK(l->tls->ncerts >= 1 && l->tls->certs);
        /* Not checked: certificate and key may be NULL after `certificate
         * = ""` (path_setting turns "" into NULL without an error); the
         * TLS context then refuses to load. Reported, not asserted. */
        CHECK(l->tls->verify_client == EVS_TLS_CLIENT_CERT_NONE || l->tls->ca_file);
        for (size_t i = 1; i < l->tls->ncerts; i++) {
            CHECK(l->tls->certs[i].names && l->tls->certs[i].names[0]);
        }
        CHECK(l->tls->nalpn == 0 || l->tls->alpn);
        CHECK(isfinite(l->tls->ticket_rotation) && l->tls->ticket_rotation >= 0);
    }
    if (l->proxy_protocol) {
        CHECK(isfinite(l->proxy_timeout) && l->proxy_timeout >= 0);
        CHECK(l->family == EVSD_UNIX || l->nproxy_trusted > 0);
        for (size_t i = 0; i < l->nproxy_trusted; i++) {
            CHECK(l->proxy_trusted[i] && *l->proxy_trusted[i]);
        }
        CHECK(l->proxy_trusted == NULL || l->proxy_trusted[l->nproxy_trusted] == NULL);
    }
}

static void check_config(const evsd_config *c)
{
    CHECK(c->path && strcmp(c->path, path) == 0);
    CHECK(c->workers >= 0 && c->workers <= 1024);
    CHECK(c->log_file && *c->log_file);
    CHECK(c->plugin_dir && *c->plugin_dir);
    check_limits(&c->limits);
    CHECK(c->nlisteners >= 1 && c->listeners);
    for (size_t i = 0; i < c->nplugins; i++) {
        CHECK(c->plugins[i].name && c->plugins[i].path && c->plugins[i].file);
        for (size_t j = 0; j < i; j++) {
            CHECK(strcmp(c->plugins[i].name, c->plugins[j].name) != 0);
        }
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        check_listener(c, &c->listeners[i], false);
        for (size_t j = 0; j < i; j++) {
            CHECK(strcmp(c->listeners[i].name, c->listeners[j].name) != 0);
        }
    }
    if (c->admin) {
        check_listener(c, c->admin, true);
    }
}

static int load(evsd_config **c, char **errors)
{
    int rc;

    *c = NULL;
    *errors = (char *)"not set";
    rc = evsd_config_load(path, c, errors);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        CHECK(*c != NULL && *errors == NULL);
        check_config(*c);
    } else {
        check_errors(*errors);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    evsd_config *c1, *c2;
    char *e1, *e2;
    int fd, rc1, rc2;

    if (size > 8192 || memmem(data, size, "@include", 8) != NULL) {
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, data, size) == (ssize_t)size);
    CHECK(close(fd) == 0);

    rc1 = load(&c1, &e1);
    rc2 = load(&c2, &e2);
    CHECK(rc1 == rc2);
    if (rc1 == 0) {
        CHECK(c1->nlisteners == c2->nlisteners && c1->nplugins == c2->nplugins);
        CHECK((c1->admin == NULL) == (c2->admin == NULL));
        evsd_config_free(c1);
        evsd_config_free(c2);
    } else {
        CHECK(strcmp(e1, e2) == 0);
        free(e1);
        free(e2);
    }
    return 0;
}
