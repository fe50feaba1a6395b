/*
  http_head: print the HTTP headers of a URL, the C version of the seed's
  "Get HTTP headers" streams example.

  A task running under evs_run() connects with evs_open_connection()
  (the host name is resolved without blocking the loop), sends
  "HEAD <path> HTTP/1.0" and prints each header line, read with
  evs_readline(), until the empty line that ends the headers.

  For https:// URLs the connection is TLS: the server's certificate is
  verified against the system's CAs (or CAFILE) and the host name, and the
  handshake is done before evs_open_connection() returns.

  Run:   ./http_head http://example.com/path/page.html
         ./http_head https://127.0.0.1:8443/ ca.pem

  Output: one "HTTP header> ..." line per header line, status line first.
  The exit status is 0 when a complete header block was read, 1 otherwise.
*/
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

struct url {
    char host[256];
    uint16_t port;
    const char *path;
    bool https;
    const char *cafile; /* NULL: the system store */
};

/* Split "http://host[:port][/path]" (host may be an [IPv6] literal). */
static int parse_url(const char *s, struct url *u)
{
    const char *host, *end, *colon;
    size_t hlen;

    u->https = strncmp(s, "https://", 8) == 0;
    if (!u->https && strncmp(s, "http://", 7) != 0) {
        fprintf(stderr, "not an http:// or https:// URL: %s\n", s);
        return -1;
    }
    host = s + (u->https ? 8 : 7);
    u->path = strchr(host, '/');
    end = u->path ? u->path : host + strlen(host);
    if (!u->path)
        u->path = "/";
    if (*host == '[') { /* [::1]:8080 */
        const char *rb = memchr(host, ']', (size_t)(end - host));
        if (!rb)
            goto bad;
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
        if (rb + 1 != end && !colon)
            goto bad;
        host++;
        hlen = (size_t)(rb - host);
    } else {
        colon = memchr(host, ':', (size_t)(end - host));
        hlen = (size_t)((colon ? colon : end) - host);
    }
    if (hlen == 0 || hlen >= sizeof u->host)
        goto bad;
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    u->port = u->https ? 443 : 80;
    if (colon) {
        char *pend;
        long v;

        errno = 0;
        v = strtol(colon + 1, &pend, 10);
        if (errno || pend != end || v <= 0 || v > 65535)
            goto bad;
        u->port = (uint16_t)v;
    }
    return 0;
bad:
    fprintf(stderr, "bad URL: %s\n", s);
    return -1;
}

static int print_http_headers(void *arg)
{
    const struct url *u = arg;
    char tls_error[256] = "";
    evs_connect_options copts = {.timeout = 10, .tls_error = tls_error,
                                 .tls_error_len = sizeof tls_error};
    evs_tls_client_options topts = {.ca_file = u->cafile};
    evs_reader *r;
    evs_writer *w;
    char query[1024];
    int err, qlen, ok = 0;
    bool v6 = strchr(u->host, ':') != NULL; /* an IPv6 literal */

    /* Bound every parked call: a server that stops answering fails the
     * run instead of hanging it. */
    evs_task_set_timeout(evs_task_current(), 30);

    if (u->https &&
        (err = evs_tls_client_context_new(&topts, &copts.tls, tls_error, sizeof tls_error)) < 0) {
        fprintf(stderr, "TLS set-up: %s\n", tls_error);
        return 1;
    }
    err = evs_open_connection(u->host, u->port, &copts, &r, &w);
    if (copts.tls)
        evs_tls_context_unref(copts.tls); /* the connection keeps its own reference */
    if (err < 0) {
        fprintf(stderr, "cannot connect to %s port %u: %s%s%s\n", u->host, (unsigned)u->port,
                evs_strerror(err), *tls_error ? ": " : "", tls_error);
        return 1;
    }

    /* Host carries the port when it is not the default (RFC 7230 5.4); an
     * IPv6 literal keeps its brackets either way, or its colons would read
     * as a port. */
    if (u->port == (u->https ? 443 : 80))
        qlen = snprintf(query, sizeof query, "HEAD %s HTTP/1.0\r\nHost: %s%s%s\r\n\r\n",
                        u->path, v6 ? "[" : "", u->host, v6 ? "]" : "");
    else
        qlen = snprintf(query, sizeof query, "HEAD %s HTTP/1.0\r\nHost: %s%s%s:%u\r\n\r\n",
                        u->path, v6 ? "[" : "", u->host, v6 ? "]" : "", (unsigned)u->port);
    if (qlen < 0 || (size_t)qlen >= sizeof query) {
        fprintf(stderr, "URL too long\n");
        evs_writer_free(w);
        return 1;
    }
    if ((err = evs_write(w, query, (size_t)qlen)) < 0) {
        fprintf(stderr, "send: %s\n", evs_strerror(err));
        evs_writer_free(w);
        return 1;
    }

    for (;;) {
        const void *view;
        const char *line;
        ssize_t n = evs_readline(r, &view);

        if (n == 0) {
            fprintf(stderr, "the server closed the connection before the end of the headers\n");
            break;
        }
        if (n < 0) {
            fprintf(stderr, "receive: %s\n", evs_strerror((int)n));
            break;
        }
        /* The view lives in the reader's buffer until the next call on r:
         * print it, do not keep it. It is not NUL-terminated. */
        line = view;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0) { /* the empty line: end of the headers */
            ok = 1;
            break;
        }
        printf("HTTP header> %.*s\n", (int)n, line);
    }

    /* Ignore the body, close the socket. */
    evs_close(w);
    evs_wait_closed(w);
    evs_writer_free(w);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct url u;
    int err, result = 1;

    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s http[s]://HOST[:PORT][/PATH] [CAFILE]\n", argv[0]);
        return 2;
    }
    if (parse_url(argv[1], &u) < 0)
        return 1;
    u.cafile = argc == 3 ? argv[2] : NULL;
    if ((err = evs_run(print_http_headers, &u, &result)) < 0) {
        fprintf(stderr, "evs_run: %s\n", evs_strerror(err));
        return 1;
    }
    return result;
}
