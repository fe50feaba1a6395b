/*
 * starttls - a small line protocol that upgrades to TLS on request, the
 * way SMTP, IMAP and XMPP do. It shows evs_start_tls on a live stream.
 *
 *   S: 220 evstream starttls example
 *   C: ECHO hello          S: 250 hello
 *   C: STARTTLS            S: 220 go ahead      (then the TLS handshake)
 *   C: TLS?                S: 250 TLSv1.3 TLS_AES_256_GCM_SHA384
 *   C: QUIT                S: 221 bye
 *
 * Bytes the client sent after "STARTTLS" and before its ClientHello are fed
 * to the TLS engine, never read as commands: a client (or an attacker on
 * the path) that injects plaintext there makes the handshake fail
 * (CVE-2011-0411-style injection is impossible).
 *
 * Settings: certificate = "server.pem"; key = "server.key";
 *           password_file = "..." (optional, for an encrypted key);
 *           any other name is an error.
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   openssl s_client -connect 127.0.0.1:8587 -starttls smtp   (any STARTTLS
 *   client works once it has seen the "220" line and sent "STARTTLS")
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

static int init(evs_settings *s, void **state)
{
    evs_tls_certificate cert = {0};
    evs_tls_server_options o = {.certificates = &cert, .ncertificates = 1};
    evs_tls_context *ctx;
    char why[512];
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "certificate") != 0 && strcmp(key, "key") != 0 &&
            strcmp(key, "password_file") != 0)
            return evs_settings_fail(
                s, "unknown setting '%s' (expected certificate, key, password_file)", key);
    }
    if ((rc = evs_settings_get_string(s, "certificate", &cert.certificate)) < 0 ||
        (rc = evs_settings_get_string(s, "key", &cert.key)) < 0)
        return rc == -ENOENT ? evs_settings_fail(s, "certificate and key are required") : rc;
    if ((rc = evs_settings_get_string(s, "password_file", &cert.password_file)) < 0 &&
        rc != -ENOENT)
        return rc;
    if (evs_tls_server_context_new(&o, &ctx, why, sizeof why) < 0)
        return evs_settings_fail(s, "%s", why);
    *state = ctx;
    return 0;
}

static void fini(void *state)
{
    evs_tls_context_unref(state);
}

/* Whether @line is the command @cmd: the word alone or followed by a
 * space ("STARTTLSX" is no STARTTLS). */
static bool is(const char *line, size_t n, const char *cmd)
{
    size_t len = strlen(cmd);
    return n >= len && strncasecmp(line, cmd, len) == 0 && (n == len || line[len] == ' ');
}

static void reply(evs_writer *w, const char *text)
{
    evs_write(w, text, strlen(text));
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    evs_tls_context *ctx = state;

    reply(w, "220 evstream starttls example\r\n");
    for (;;) {
        const void *view;
        ssize_t n = evs_readline(r, &view);
        const char *line = view;
        char out[600];

        if (n == EVS_ELIMIT) {
            reply(w, "500 line too long\r\n");
            break;
        }
        if (n <= 0)
            break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (is(line, (size_t)n, "ECHO")) {
            ssize_t len = n > 5 ? n - 5 : 0; /* the text after "ECHO " */
            snprintf(out, sizeof out, "250 %.*s\r\n", (int)(len > 512 ? 512 : len), line + 5);
            reply(w, out);
        } else if (is(line, (size_t)n, "STARTTLS")) {
            /* Every answer reaches the drain below: a client that sends
             * without reading must stop being read, not grow the buffer. */
            if (evs_transport_is_tls(evs_writer_transport(w))) {
                reply(w, "503 already in TLS\r\n");
            } else {
                reply(w, "220 go ahead\r\n");
                if (evs_start_tls(w, ctx, true, NULL) < 0)
                    break; /* the reason is in evs_transport_tls_error() */
            }
        } else if (is(line, (size_t)n, "TLS?")) {
            const char *version = NULL;
            const char *cipher = evs_transport_tls_cipher(evs_writer_transport(w), &version, NULL);
            snprintf(out, sizeof out, "250 %s %s\r\n", version ? version : "plaintext",
                     cipher ? cipher : "-");
            reply(w, out);
        } else if (is(line, (size_t)n, "QUIT")) {
            reply(w, "221 bye\r\n");
            break;
        } else {
            reply(w, "500 unknown command\r\n");
        }
        if (evs_drain(w) < 0)
            break;
    }
}

EVS_PLUGIN_DEFINE(.name = "starttls", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini);
