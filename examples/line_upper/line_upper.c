/*
 * line_upper - reads lines with evs_readline and answers each one in upper
 * case, with a prefix taken from the listener's settings. It shows
 * per-listener settings and what to do when a line exceeds the limit.
 *
 * Settings (the listener's settings group):
 *   prefix   = "> ";     string put before every answer (default "")
 *   max_line = "1k";     longest accepted line; the stream limit is set to
 *                        it (default: the listener's stream_limit)
 *
 * A line longer than max_line gets "ERR line too long\n" and is skipped
 * (read and thrown away up to its newline), and the connection goes on:
 * evs_readline fails with EVS_ELIMIT and leaves the bytes readable, so the
 * handler decides what to do with them.
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   printf 'hello\nworld\n' | nc -q1 127.0.0.1 8890
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

typedef struct line_upper {
    char *prefix;
    size_t max_line; /* 0: keep the listener's limit */
} line_upper;

static int init(evs_settings *s, void **state)
{
    line_upper *lu = calloc(1, sizeof *lu);
    const char *prefix = "";
    uint64_t max_line = 0;
    int rc;

    if (!lu)
        return -ENOMEM;
    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "prefix") != 0 && strcmp(key, "max_line") != 0) {
            free(lu);
            return evs_settings_fail(s, "unknown setting '%s' (expected prefix, max_line)", key);
        }
    }
    if ((rc = evs_settings_get_string(s, "prefix", &prefix)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc = evs_settings_get_size(s, "max_line", &max_line)) < 0 && rc != -ENOENT)
        goto fail;
    if (max_line > 16 * 1024 * 1024) {
        free(lu);
        return evs_settings_fail(s, "max_line must be at most 16M");
    }
    /* A copy: the settings' strings live only as long as init. Failing
     * here, evstreamd names the listener and the error (out of memory). */
    lu->prefix = strdup(prefix);
    if (!lu->prefix) {
        rc = -ENOMEM;
        goto fail;
    }
    lu->max_line = (size_t)max_line;
    *state = lu;
    return 0;

fail:
    free(lu);
    return rc;
}

static void fini(void *state)
{
    line_upper *lu = state;

    free(lu->prefix);
    free(lu);
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    line_upper *lu = state;
    size_t plen = strlen(lu->prefix);

    if (lu->max_line)
        evs_reader_set_limit(r, lu->max_line);
    for (;;) {
        const void *line;
        ssize_t n = evs_readline(r, &line);
        char out[4096];

        if (n == EVS_ELIMIT) {
            /* Drain like any answer: a client that sends overlong lines
             * without reading must stop being read, not grow our buffer. */
            if (evs_write(w, "ERR line too long\n", 18) < 0 || evs_drain(w) < 0 ||
                evs_skipuntil(r, "\n", 1) < 0)
                break;
            continue;
        }
        if (n <= 0)
            break;
        evs_write(w, lu->prefix, plen);
        for (size_t off = 0; off < (size_t)n; off += sizeof out) {
            size_t chunk = (size_t)n - off < sizeof out ? (size_t)n - off : sizeof out;
            for (size_t i = 0; i < chunk; i++)
                out[i] = (char)toupper(((const unsigned char *)line)[off + i]);
            evs_write(w, out, chunk);
        }
        if (evs_drain(w) < 0)
            break;
    }
}

EVS_PLUGIN_DEFINE(.name = "line_upper", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini);
