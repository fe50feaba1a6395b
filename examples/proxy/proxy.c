/*
 * proxy - a TCP proxy: every client connection is joined to a new
 * connection to the upstream named in the listener's settings. It is the
 * pattern for a handler that is also a client (evs_open_connection, with TLS
 * when upstream_tls is set), and
 * for moving bytes between two connections with backpressure.
 *
 * Two tasks pump the two directions: the handler's own task copies client
 * -> upstream, and a task it spawns copies upstream -> client. Each pump
 * reads a chunk, writes it and calls evs_drain, which parks while the
 * other side's write buffer is above its high watermark: the pump then
 * stops reading, its reader fills up and pauses its transport, and the
 * kernel's window tells the sender to slow down. So a fast sender and a
 * slow receiver hold at most a few watermarks of memory here.
 *
 * Half-close passes through: EOF from one side becomes evs_write_eof on
 * the other, and the opposite direction goes on until it ends too; the
 * connections close when both directions are done. A TLS side cannot be
 * half-closed: the upstream's EOF closes a TLS client, while the client's
 * EOF leaves a TLS upstream open to send its answer, until it closes (or
 * the idle timeout). An error on either side (a reset, a failed write)
 * aborts both connections.
 *
 * The upstream connection gets the client connection's write watermarks
 * and idle timeout (the listener's limits), so one set of limits governs
 * both. If the upstream cannot be reached the client connection is closed
 * (and a warning logged).
 *
 * Settings (the listener's settings group):
 *   upstream        = "host:port";  required; a name, an IPv4 address or
 *                                   "[IPv6]:port"
 *   connect_timeout = "10s";        per address tried (default 10s)
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented; it forwards
 * to the echo listener):
 *   printf 'through the proxy\n' | nc -q1 127.0.0.1 8894
 */
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

typedef struct proxy {
    char *host;
    uint16_t port;
    double connect_timeout;
    evs_tls_context *tls; /* TLS to the upstream, or NULL */
    char *server_name;    /* what the upstream's certificate must name */
} proxy;

/* One proxied connection; shared by the handler and the spawned pump
 * (both on the same worker, so no atomics). */
typedef struct session {
    int refs;
    bool over; /* the handler is leaving: the streams must not be touched */
    evs_writer *cw, *uw; /* client, upstream */
    evs_reader *cr, *ur;
} session;

static void session_unref(session *s)
{
    if (--s->refs == 0)
        free(s);
}

static void abort_writer(evs_writer *w)
{
    evs_transport *t = evs_writer_transport(w);
    if (t)
        evs_transport_abort(t);
}

/* Copy @from to @to until EOF, passed on as write_eof. On an error both
 * connections are aborted, which also ends the other pump's parked call.
 * @return 0 at EOF, else a negative errno. */
static int pump(session *s, evs_reader *from, evs_writer *to)
{
    char buf[16 * 1024];

    for (;;) {
        ssize_t n = evs_read(from, buf, sizeof buf);
        int rc;

        if (s->over)
            return -ECANCELED;
        if (n == 0) {
            /* A TLS connection has no half-close (can_write_eof is false,
             * as in asyncio). A TLS client is closed after what it
             * buffered once the upstream is done: otherwise the EOF went
             * nowhere and the client waited for it until the idle
             * timeout. A TLS upstream is left open when the client is
             * done sending: closing it would stop the reading of its
             * answer (a client that half-closes after its request, as
             * `nc -N` does, got nothing back). The upstream's own close,
             * or the idle timeout, ends the session. */
            if (evs_can_write_eof(to))
                evs_write_eof(to); /* -EPIPE if that side is gone already: fine */
            else if (to == s->cw)
                evs_close(to);
            return 0;
        }
        if (n < 0 || evs_write(to, buf, (size_t)n) < 0) {
            abort_writer(s->cw);
            abort_writer(s->uw);
            return n < 0 ? (int)n : -EPIPE;
        }
        /* Backpressure: no more reading while @to is above its high mark. */
        rc = evs_drain(to);
        if (s->over)
            return -ECANCELED;
        if (rc < 0) {
            abort_writer(s->cw);
            abort_writer(s->uw);
            return rc;
        }
    }
}

static int downstream(void *arg)
{
    session *s = arg;
    int rc = pump(s, s->ur, s->cw);

    session_unref(s);
    return rc;
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    proxy *px = state;
    char tls_error[256] = "";
    evs_connect_options opts = {.timeout = px->connect_timeout,
                                .tls = px->tls,
                                .server_hostname = px->server_name,
                                .tls_error = tls_error,
                                .tls_error_len = sizeof tls_error};
    evs_transport *ct = evs_writer_transport(w);
    evs_reader *ur;
    evs_writer *uw;
    evs_task *task;
    session *s;
    int rc;

    if (!ct)
        return;
    opts.limit = evs_reader_limit(r);
    rc = evs_open_connection(px->host, px->port, &opts, &ur, &uw);
    if (rc < 0) {
        if (rc != -ECANCELED)
            evs_log(EVS_LOG_WARN, "proxy: cannot reach upstream %s:%u: %s%s%s", px->host,
                    (unsigned)px->port, evs_strerror(rc), *tls_error ? ": " : "", tls_error);
        return;
    }
    /* The listener's limits govern the upstream side too. */
    evs_transport *ut = evs_writer_transport(uw);
    if (ut) {
        size_t low, high;
        evs_transport_get_write_buffer_limits(ct, &low, &high);
        evs_transport_set_write_buffer_limits(ut, (ssize_t)high, (ssize_t)low);
        evs_transport_set_idle_timeout(ut, evs_transport_get_idle_timeout(ct));
    }

    s = calloc(1, sizeof *s);
    if (!s) {
        evs_writer_free(uw);
        return;
    }
    *s = (session){.refs = 2, .cr = r, .cw = w, .ur = ur, .uw = uw};
    if (evs_task_spawn(downstream, s, &task) < 0) {
        free(s);
        evs_writer_free(uw);
        return;
    }

    pump(s, r, uw);
    if (evs_task_join(task, NULL) < 0) {
        /* This task was cancelled (the daemon is stopping) and can no
         * longer wait: stop the other pump before the streams go away.
         * Cancelling takes it off the stream it is parked on at once, and
         * s->over keeps it from touching the streams when it resumes. */
        s->over = true;
        evs_task_cancel(task);
        evs_task_detach(task);
    }
    s->over = true;
    evs_writer_free(uw);
    session_unref(s);
    /* Returning closes the client connection. */
}

/* --- life cycle ----------------------------------------------------------------- */

static int init(evs_settings *s, void **state)
{
    const char *upstream = NULL, *colon;
    double timeout = 10;
    char *end;
    proxy *px;
    long port;
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "upstream") != 0 && strcmp(key, "connect_timeout") != 0 &&
            strcmp(key, "upstream_tls") != 0 && strcmp(key, "ca_file") != 0 &&
            strcmp(key, "server_name") != 0)
            return evs_settings_fail(s, "unknown setting '%s' (expected upstream, "
                                        "connect_timeout, upstream_tls, ca_file, server_name)",
                                     key);
    }
    rc = evs_settings_get_string(s, "upstream", &upstream);
    if (rc == -ENOENT)
        return evs_settings_fail(s, "upstream = \"host:port\" is required");
    if (rc < 0)
        return rc;
    if ((rc = evs_settings_get_duration(s, "connect_timeout", &timeout)) < 0 && rc != -ENOENT)
        return rc;
    if (timeout <= 0)
        return evs_settings_fail(s, "connect_timeout must be positive");
    colon = strrchr(upstream, ':');
    if (!colon || colon == upstream)
        return evs_settings_fail(s, "upstream '%s' is not host:port", upstream);
    port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 1 || port > 65535)
        return evs_settings_fail(s, "upstream '%s' has no valid port", upstream);

    px = calloc(1, sizeof *px);
    if (!px)
        return -ENOMEM;
    /* "[::1]:80" -> "::1" */
    if (upstream[0] == '[' && colon[-1] == ']')
        px->host = strndup(upstream + 1, (size_t)(colon - upstream) - 2);
    else
        px->host = strndup(upstream, (size_t)(colon - upstream));
    if (!px->host) {
        free(px);
        return -ENOMEM;
    }
    /* Brackets left after the strip: "[::1:80", "[]:80". */
    if (!*px->host || strpbrk(px->host, "[]")) {
        free(px->host);
        free(px);
        return evs_settings_fail(s, "upstream '%s' has no valid host", upstream);
    }
    px->port = (uint16_t)port;
    px->connect_timeout = timeout;

    /* TLS to the upstream: verified against ca_file (or the system's CAs)
     * and server_name (or the upstream's host). */
    bool upstream_tls = false;
    const char *ca_file = NULL, *server_name = NULL;
    if ((rc = evs_settings_get_bool(s, "upstream_tls", &upstream_tls)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc = evs_settings_get_string(s, "ca_file", &ca_file)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc = evs_settings_get_string(s, "server_name", &server_name)) < 0 && rc != -ENOENT)
        goto fail;
    if (upstream_tls) {
        evs_tls_client_options to = {.ca_file = ca_file};
        char why[256];
        if (evs_tls_client_context_new(&to, &px->tls, why, sizeof why) < 0) {
            rc = evs_settings_fail(s, "upstream TLS: %s", why);
            goto fail;
        }
        px->server_name = strdup(server_name ? server_name : px->host);
        if (!px->server_name) {
            rc = -ENOMEM;
            goto fail;
        }
    } else if (ca_file || server_name) {
        rc = evs_settings_fail(s, "ca_file and server_name need upstream_tls = true");
        goto fail;
    }
    *state = px;
    return 0;

fail:
    if (px->tls)
        evs_tls_context_unref(px->tls);
    free(px->host);
    free(px);
    return rc;
}

static void fini(void *state)
{
    proxy *px = state;

    evs_tls_context_unref(px->tls);
    free(px->server_name);
    free(px->host);
    free(px);
}

EVS_PLUGIN_DEFINE(.name = "proxy", .mode = EVS_PLUGIN_STREAM, .client_connected = client_connected,
                  .init = init, .fini = fini);
