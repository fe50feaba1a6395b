/*
 * http_hello - a minimal HTTP/1.1 origin server that answers every GET or
 * HEAD with "Hello, World!". It is the pattern for a request/response
 * protocol in stream mode: one task per connection reads a request head
 * with evs_readuntil_any (zero copy, bounded by a limit), answers, and
 * loops for the next request on the same connection.
 *
 * What it implements of RFC 9112:
 *   - persistent connections: HTTP/1.1 keeps the connection open unless the
 *     request says "Connection: close"; HTTP/1.0 closes unless it says
 *     "Connection: keep-alive";
 *   - pipelining: requests already buffered are answered in order, each
 *     answer written on its own (evs_write sends at once unless bytes are
 *     still queued from earlier); drain is called once the reader has
 *     nothing more buffered, or once 64k of answers are queued, so a client
 *     that pipelines without reading is pushed back instead of growing our
 *     write buffer;
 *   - Content-Length on every answer, a request body (Content-Length) is
 *     read and thrown away; Transfer-Encoding gets 501 (not implemented);
 *   - errors, each followed by closing the connection: 400 for a malformed
 *     request line or header (or a missing Host in HTTP/1.1), 431 when the
 *     head exceeds max_header_size, 505 for a major HTTP version other
 *     than 1 (a later 1.x is served as 1.1); 405 (with Allow) for methods
 *     other than GET and HEAD.
 *
 * Settings (the listener's settings group):
 *   max_header_size = "8k";   the longest request head accepted (default 8k)
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   curl -v http://127.0.0.1:8891/ http://127.0.0.1:8891/again
 *   wrk -t2 -c50 -d5s http://127.0.0.1:8891/
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <evstream.h>

#define HELLO "Hello, World!"
/* Room for the longest answer (a 405 with its Allow header and body). */
#define ANSWER_MAX 512

typedef struct http_hello {
    size_t max_header; /* longest accepted head, separator included */
} http_hello;

static int init(evs_settings *s, void **state)
{
    http_hello *h;
    uint64_t max_header = 8 * 1024;
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "max_header_size") != 0)
            return evs_settings_fail(s, "unknown setting '%s' (expected max_header_size)", key);
    }
    if ((rc = evs_settings_get_size(s, "max_header_size", &max_header)) < 0 && rc != -ENOENT)
        return rc;
    if (max_header < 256 || max_header > 1024 * 1024)
        return evs_settings_fail(s, "max_header_size must be between 256 and 1M");
    h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->max_header = (size_t)max_header;
    *state = h;
    return 0;
}

static void fini(void *state)
{
    free(state);
}

/* --- parsing ------------------------------------------------------------- */

/* RFC 9110 tchar: the characters of a method or a header name. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

typedef struct request {
    bool head;           /* HEAD: no body in the answer */
    bool get_or_head;    /* otherwise 405 */
    int minor;           /* HTTP/1.minor */
    bool keep_alive;     /* after the defaults and the Connection header */
    bool close;          /* a Connection: close, which no keep-alive undoes */
    bool have_host;
    bool have_length;
    bool chunked;        /* any Transfer-Encoding */
    uint64_t length;     /* Content-Length of the request body */
} request;

/* Does the comma-separated list @v (length @n) contain @token (any case)? */
static bool has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;

    while (i < n) {
        size_t start, end;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        start = i;
        while (i < n && v[i] != ',')
            i++;
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(v + start, token, tl) == 0)
            return true;
    }
    return false;
}

/* Parse one header line (without its line ending). @return 0 or 400. */
static int parse_header(request *rq, const char *line, size_t n)
{
    size_t colon = 0;
    const char *v;
    size_t vn;

    if (n == 0 || line[0] == ' ' || line[0] == '\t')
        return 400; /* obsolete line folding is refused (RFC 9112 5.2) */
    while (colon < n && is_tchar((unsigned char)line[colon]))
        colon++;
    if (colon == 0 || colon == n || line[colon] != ':')
        return 400; /* no name, or whitespace before the colon */
    v = line + colon + 1;
    vn = n - colon - 1;
    while (vn > 0 && (*v == ' ' || *v == '\t'))
        v++, vn--;
    while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
        vn--;
    for (size_t i = 0; i < vn; i++)
        if ((unsigned char)v[i] < 0x20 && v[i] != '\t')
            return 400;

    if (colon == 4 && strncasecmp(line, "host", 4) == 0) {
        if (rq->have_host)
            return 400; /* more than one Host */
        rq->have_host = true;
    } else if (colon == 10 && strncasecmp(line, "connection", 10) == 0) {
        /* "close" anywhere wins, in any header line (RFC 9112 9.6). */
        if (has_token(v, vn, "close"))
            rq->close = true, rq->keep_alive = false;
        else if (has_token(v, vn, "keep-alive") && !rq->close)
            rq->keep_alive = true;
    } else if (colon == 14 && strncasecmp(line, "content-length", 14) == 0) {
        uint64_t len = 0;
        if (vn == 0 || vn > 15)
            return 400;
        for (size_t i = 0; i < vn; i++) {
            if (v[i] < '0' || v[i] > '9')
                return 400;
            len = len * 10 + (uint64_t)(v[i] - '0');
        }
        if (rq->have_length && rq->length != len)
            return 400; /* conflicting lengths: a smuggling attempt */
        rq->have_length = true;
        rq->length = len;
    } else if (colon == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
        rq->chunked = true;
    }
    return 0;
}

/* Parse the request line "METHOD SP target SP HTTP/x.y".
 * @return 0, 400 or 505. */
static int parse_request_line(request *rq, const char *line, size_t n)
{
    const char *sp1 = memchr(line, ' ', n);
    const char *sp2, *ver;
    size_t mlen, vlen;

    if (!sp1 || sp1 == line)
        return 400;
    mlen = (size_t)(sp1 - line);
    for (size_t i = 0; i < mlen; i++)
        if (!is_tchar((unsigned char)line[i]))
            return 400;
    sp2 = memchr(sp1 + 1, ' ', n - mlen - 1);
    if (!sp2 || sp2 == sp1 + 1)
        return 400; /* HTTP/0.9 ("GET /") or an empty target */
    for (const char *p = sp1 + 1; p < sp2; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            return 400;
    ver = sp2 + 1;
    vlen = (size_t)(line + n - ver);
    /* HTTP-version = "HTTP/" DIGIT "." DIGIT; anything else is malformed. */
    if (vlen != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[5] < '0' || ver[5] > '9' ||
        ver[6] != '.' || ver[7] < '0' || ver[7] > '9')
        return 400;
    if (ver[5] != '1')
        return 505;
    /* A later 1.x is answered as 1.1, the highest minor we know (RFC 9110 2.5). */
    rq->minor = ver[7] == '0' ? 0 : 1;
    rq->keep_alive = rq->minor == 1;
    rq->head = mlen == 4 && memcmp(line, "HEAD", 4) == 0;
    rq->get_or_head = rq->head || (mlen == 3 && memcmp(line, "GET", 3) == 0);
    return 0;
}

/* True when a "head" is nothing but line ends: empty lines before a
 * request line, which RFC 9112 2.2 asks a server to ignore. */
static bool only_line_ends(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != '\r' && p[i] != '\n')
            return false;
    return true;
}

/* Parse a whole head (request line, headers, and the empty line).
 * @return 0 or the status of the error answer. */
static int parse_head(request *rq, const char *head, size_t n)
{
    size_t pos = 0;
    bool first = true;

    memset(rq, 0, sizeof *rq);
    /* Tolerate empty lines before the request line (RFC 9112 2.2). */
    while (pos < n && (head[pos] == '\r' || head[pos] == '\n'))
        pos++;
    while (pos < n) {
        const char *nl = memchr(head + pos, '\n', n - pos);
        size_t len = (size_t)(nl - (head + pos));
        int rc;

        if (len > 0 && head[pos + len - 1] == '\r')
            len--;
        if (memchr(head + pos, '\r', len))
            return 400; /* a bare CR inside a line */
        if (len == 0)
            break; /* the empty line that ends the head */
        rc = first ? parse_request_line(rq, head + pos, len) : parse_header(rq, head + pos, len);
        if (rc)
            return rc;
        first = false;
        pos = (size_t)(nl - head) + 1;
    }
    if (first)
        return 400;
    if (rq->minor == 1 && !rq->have_host)
        return 400; /* RFC 9112 3.2: a 1.1 request without Host */
    if (rq->chunked)
        return rq->have_length ? 400 : 501;
    return 0;
}

/* --- answers ------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* The Date header, formatted once a second per worker thread: strftime
 * per request would cost more than the rest of the answer. */
static const char *http_date(void)
{
    static _Thread_local time_t last = -1;
    static _Thread_local char date[64];
    time_t now = time(NULL);

    if (now != last) {
        struct tm tm;

        gmtime_r(&now, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return date;
}

/* Format one answer into @buf (ANSWER_MAX bytes). The body is the reason
 * phrase for errors. @return its length. */
static size_t format_answer(char *buf, int status, bool head, bool close, bool keep_alive_10)
{
    const char *body = status == 200 ? HELLO : reason(status);
    size_t blen = strlen(body) + (status == 200 ? 0 : 1); /* errors end with \n */
    int n;

    n = snprintf(buf, ANSWER_MAX,
                 "HTTP/1.1 %d %s\r\n"
                 "Server: evstreamd-http_hello\r\n"
                 "Date: %s\r\n"
                 "Content-Type: text/plain\r\n"
                 "Content-Length: %zu\r\n"
                 "%s%s"
                 "\r\n"
                 "%s%s",
                 status, reason(status), http_date(), blen, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                 close ? "Connection: close\r\n" : keep_alive_10 ? "Connection: keep-alive\r\n" : "",
                 head ? "" : body, head || status == 200 ? "" : "\n");
    /* Never more than was written, should an answer outgrow the buffer. */
    return n < 0 ? 0 : (size_t)n < ANSWER_MAX ? (size_t)n : ANSWER_MAX - 1;
}

/* Queue one answer. */
static int answer(evs_writer *w, int status, bool head, bool close, bool keep_alive_10)
{
    char buf[ANSWER_MAX];

    return evs_write(w, buf, format_answer(buf, status, head, close, keep_alive_10));
}

/* Queue the answer nearly every request gets: 200 to an HTTP/1.1 GET that
 * keeps the connection. Its bytes change only with the Date, so each worker
 * thread formats it once a second (snprintf per request cost more than the
 * rest of the plugin's work put together). */
static int answer_ok(evs_writer *w)
{
    static _Thread_local time_t formatted = -1;
    static _Thread_local char buf[ANSWER_MAX];
    static _Thread_local size_t len;
    time_t now = time(NULL);

    if (now != formatted) {
        len = format_answer(buf, 200, false, false, false);
        formatted = now;
    }
    return evs_write(w, buf, len);
}

/* Read and drop @n body bytes. @return 0 or a negative error. */
static int skip_body(evs_reader *r, uint64_t n)
{
    char buf[16384];

    while (n > 0) {
        ssize_t got = evs_read(r, buf, n < sizeof buf ? (size_t)n : sizeof buf);
        if (got <= 0)
            return got == 0 ? -EPIPE : (int)got;
        n -= (uint64_t)got;
    }
    return 0;
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    http_hello *h = state;
    /* The empty line that ends a head, with CRLF or bare LF line ends
     * (RFC 9112 2.2): every such ending ends with "\n\n" ("\r\n\n" too)
     * or "\n\r\n" ("\r\n\r\n" too), and a separator that ends at the
     * same byte gives the same head. Two separators to look for, not four,
     * on every request. */
    static const evs_separator ends[] = {{"\n\n", 2}, {"\n\r\n", 3}};

    /* The reader's limit must let the largest head through. */
    if (evs_reader_limit(r) < h->max_header)
        evs_reader_set_limit(r, h->max_header);
    for (;;) {
        const void *head;
        request rq;
        ssize_t n = evs_readuntil_any(r, ends, sizeof ends / sizeof ends[0], h->max_header,
                                      &head);
        int status;

        if (n == EVS_ELIMIT) {
            answer(w, 431, false, true, false);
            break;
        }
        if (n < 0) {
            const void *partial;
            /* EOF in the middle of a head is malformed; at a request
             * boundary it is the client's normal close. */
            if (n == EVS_EINCOMPLETE && evs_reader_partial(r, &partial) > 0)
                answer(w, 400, false, true, false);
            break;
        }
        if (only_line_ends(head, (size_t)n))
            continue;
        status = parse_head(&rq, head, (size_t)n);
        if (status) {
            answer(w, status, false, true, false);
            break;
        }
        if (!rq.get_or_head) {
            /* Close rather than read a body we would throw away (the
             * client may be waiting for 100-continue). */
            answer(w, 405, rq.head, true, false);
            break;
        }
        if (rq.have_length && rq.length > 0 && skip_body(r, rq.length) < 0)
            break;
        if (rq.minor == 1 && rq.keep_alive && !rq.head ? answer_ok(w) < 0
                : answer(w, 200, rq.head, !rq.keep_alive, rq.keep_alive && rq.minor == 0) < 0)
            break;
        if (!rq.keep_alive)
            break;
        /* Pipelined requests already here are answered without a drain
         * between them (evs_write has sent each answer, or queued it if
         * the socket is full); but only until 64k of answers are queued: a
         * client that pipelines without end and never reads would always
         * have more buffered, and we would queue its answers without limit.
         * The drain stops us reading it until it reads. */
        if ((evs_reader_buffered(r) == 0 ||
             evs_transport_get_write_buffer_size(evs_writer_transport(w)) >= 64 * 1024) &&
            evs_drain(w) < 0)
            break;
    }
    /* Returning closes the connection after flushing the answers. */
}

EVS_PLUGIN_DEFINE(.name = "http_hello", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini);
