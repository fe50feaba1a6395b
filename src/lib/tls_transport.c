/*
 * tls_transport.c - the TLS layer of the socket transport: OpenSSL driven
 * by the transport's own events (as asyncio's sslproto does), through a BIO
 * of our own that is the transport itself.
 *
 * Incoming: SSL_read runs until OpenSSL has nothing more, so several records
 * are delivered per wakeup and no plaintext is ever left inside OpenSSL
 * without a way to get it out (a paused transport re-activates its read
 * event on resume). OpenSSL reads ahead straight from the socket into its
 * own buffer: one recv for many records, and no copy through a memory BIO.
 * Outgoing: plaintext goes through SSL_write (writelines coalesced into full
 * records first) and the BIO hands each record to the plain transport's
 * path: the socket at once, the queue for the rest. The BIO never refuses a
 * write, so OpenSSL never sees WANT_WRITE. Plaintext written while a
 * handshake runs (the first, or a TLS 1.2 server's renegotiation) waits
 * for its end, when SSL_write no longer needs the peer; the handshake reads
 * on while the protocol has paused reading (SSL_peek, for a renegotiation),
 * so that end comes without the protocol reading.
 *
 * A missing close_notify is an EOF that evs_transport_tls_peer_closed_cleanly
 * tells apart, logged at debug, never an error storm. Failed handshakes are
 * counted and logged at debug.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "fiber.h"
#include "transport.h"

#define DEFAULT_HANDSHAKE_TIMEOUT 60.0
#define DEFAULT_SHUTDOWN_TIMEOUT 30.0
#define RECORD 16384

struct evs__tls {
    evs_tls_context *ctx;
    SSL *ssl;
    bool server;
    bool upgrade;       /* start_tls: connection_made already happened */
    bool handshake_done;
    bool failed;
    bool close_when_done; /* close() came during the first handshake */
    bool close_notify;  /* the peer sent close_notify */
    bool tcp_eof;
    bool drained;       /* a short recv this wakeup: the socket is empty */
    int reads;          /* recv calls this wakeup, bounded for fairness */
    int io_error;       /* -errno of the socket call that failed */
    unsigned char *prefix; /* bytes read before TLS began (start_tls) */
    size_t prefix_len, prefix_off;
    struct evbuffer *flight;  /* handshake records, sent a flight at a time */
    struct evbuffer *pending; /* plaintext written before the handshake ended
                               * (made for the first such write) */
    struct event timer;       /* handshake, then shutdown timeout */
    double shutdown_timeout;
    char *sni;
    char *error; /* made only when there is one: most connections never fail */
    /* On the worker's tls_busy list while OpenSSL may hold record buffers. */
    struct evs__tls *busy_next;
    struct evs__tls **busy_prev;
    time_t io_sec;   /* the second of the last I/O */
    unsigned ios;    /* I/O calls in that second */
};

/* --- the BIO: OpenSSL's view of the transport ------------------------------ */

#define READS_PER_WAKEUP 16 /* of OpenSSL's read buffer, about 16 KiB */

static int bio_read(BIO *b, char *buf, int len)
{
    evs_transport *t = BIO_get_data(b);
    evs__tls *s = t->tls;
    ssize_t n;

    BIO_clear_retry_flags(b);
    if (s->prefix) {
        size_t left = s->prefix_len - s->prefix_off;

        n = left < (size_t)len ? (ssize_t)left : len;
        memcpy(buf, s->prefix + s->prefix_off, (size_t)n);
        s->prefix_off += (size_t)n;
        if (s->prefix_off == s->prefix_len) {
            free(s->prefix);
            s->prefix = NULL;
        }
        return (int)n;
    }
    if (s->tcp_eof)
        return 0;
    /* Level-triggered events call again for what is left: a short read
     * means empty for now, and a busy peer does not hold the worker. */
    if (s->drained || s->reads >= READS_PER_WAKEUP) {
        BIO_set_retry_read(b);
        return -1;
    }
    s->reads++;
    do
        n = t->is_pipe ? read(t->fd, buf, (size_t)len) : recv(t->fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            s->drained = true;
            BIO_set_retry_read(b);
        } else {
            s->io_error = -errno;
        }
        return -1;
    }
    if (n == 0) {
        s->tcp_eof = true;
        event_del(&t->rd_ev);
        return 0;
    }
    if (n < len)
        s->drained = true;
    evs__transport_count_in(t, (size_t)n);
    return (int)n;
}

/* Send the handshake records gathered so far in one go. */
static int flush_flight(evs_transport *t)
{
    evs__tls *s = t->tls;
    struct iovec iov;
    int rc;

    if (!s->flight || evbuffer_get_length(s->flight) == 0)
        return 0;
    iov.iov_len = evbuffer_get_length(s->flight);
    iov.iov_base = evbuffer_pullup(s->flight, -1);
    rc = evs__transport_send(t, &iov, 1, iov.iov_len);
    evbuffer_drain(s->flight, iov.iov_len);
    if (rc < 0)
        s->io_error = rc;
    return rc;
}

static int bio_write(BIO *b, const char *data, int len)
{
    evs_transport *t = BIO_get_data(b);
    evs__tls *s = t->tls;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = (size_t)len};
    int rc;

    BIO_clear_retry_flags(b);
    /* OpenSSL writes each handshake message as its own record: gathered
     * until SSL_do_handshake returns, a flight costs one send, not six. */
    if (!s->handshake_done) {
        if (!s->flight && !(s->flight = evbuffer_new()))
            return -1;
        return evbuffer_add(s->flight, data, (size_t)len) == 0 ? len : -1;
    }
    rc = evs__transport_send(t, &iov, 1, (size_t)len);
    if (rc < 0) {
        s->io_error = rc;
        return -1;
    }
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    evs_transport *t = BIO_get_data(b);

    EVS_UNUSED(num);
    EVS_UNUSED(ptr);
    /* BIO_CTRL_EOF stays 0: told of the peer's EOF, OpenSSL would answer
     * with a decode_error alert to a socket that may be gone. tcp_eof tells
     * an EOF from an error here instead. A flush waits for the end of the
     * SSL_do_handshake call, so that all it wrote goes in one send. */
    switch (cmd) {
    case BIO_CTRL_FLUSH:
    case BIO_CTRL_DUP:
        return 1;
    case BIO_CTRL_PENDING:
        return t && t->tls && t->tls->prefix
                   ? (long)(t->tls->prefix_len - t->tls->prefix_off)
                   : 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *transport_bio_method;

static void make_bio_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "evs transport");

    if (m && BIO_meth_set_read(m, bio_read) && BIO_meth_set_write(m, bio_write) &&
        BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create)) {
        transport_bio_method = m;
        return;
    }
    BIO_meth_free(m);
}

static BIO *transport_bio(evs_transport *t)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    BIO *b;

    pthread_once(&once, make_bio_method);
    if (!transport_bio_method || !(b = BIO_new(transport_bio_method)))
        return NULL;
    BIO_set_data(b, t);
    return b;
}

/* A wakeup may recv again, and only as often as READS_PER_WAKEUP allows. */
static void new_wakeup(evs__tls *s)
{
    s->drained = false;
    s->reads = 0;
}

/* --- record buffers ------------------------------------------------------ */

/* OpenSSL's record buffers are about 17 KiB each way. SSL_MODE_RELEASE_BUFFERS
 * (set on every context) frees them after each call, so an idle connection
 * holds none, at the price of a malloc and free of both around every read
 * and write. A connection that makes KEEP_AFTER reads and writes within one
 * second is busy: it keeps its buffers (no allocation per call) until it
 * has been quiet for a whole second, which the worker's tick checks. */
#define KEEP_AFTER 32

static void busy_remove(evs__tls *s)
{
    if (!s->busy_prev)
        return;
    *s->busy_prev = s->busy_next;
    if (s->busy_next)
        s->busy_next->busy_prev = s->busy_prev;
    s->busy_next = NULL;
    s->busy_prev = NULL;
}

static time_t now_sec(evs_worker *w)
{
    struct timeval tv;

    event_base_gettimeofday_cached(w->base, &tv);
    return tv.tv_sec;
}

bool evs__tls_sweep(evs_worker *w)
{
    time_t now = now_sec(w);
    evs__tls *s, *next;

    for (s = w->tls_busy; s; s = next) {
        next = s->busy_next;
        /* A record decrypted but not all read (a reader that paused in
         * it) keeps its buffer: OpenSSL before 3.0.14 freed it anyway and
         * read freed memory next (CVE-2024-4741). */
        if (now - s->io_sec >= 2 && !SSL_has_pending(s->ssl)) { /* no I/O for a second */
            SSL_set_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
            SSL_free_buffers(s->ssl); /* or after the next call, if they hold data */
            busy_remove(s);
        }
    }
    return w->tls_busy != NULL;
}

/* Every read wakeup and write counts; the KEEP_AFTER-th in a second makes
 * the connection busy. */
static void note_io(evs_transport *t)
{
    evs__tls *s = t->tls;
    evs_worker *w = t->worker;
    time_t now = now_sec(w);

    if (s->io_sec != now) {
        s->io_sec = now;
        s->ios = 0;
    }
    if (s->busy_prev || ++s->ios < KEEP_AFTER)
        return;
    SSL_clear_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
    s->busy_next = w->tls_busy;
    if (s->busy_next)
        s->busy_next->busy_prev = &s->busy_next;
    s->busy_prev = &w->tls_busy;
    w->tls_busy = s;
    evs__worker_want_tick(w);
}

/* --- helpers ----------------------------------------------------------- */

/* SSL_get_error needs the thread's error queue empty before each call.
 * ERR_clear_error wipes all 16 slots even when there is nothing to clear,
 * which was 3% of the samples in TLS echo: look first. */
static void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

static void set_error(evs__tls *s, const char *text)
{
    char *copy = strdup(text);

    if (!copy)
        return; /* out of memory: the code still tells what happened */
    free(s->error);
    s->error = copy;
}

static void record_error(evs__tls *s, const char *fallback)
{
    long vr = SSL_get_verify_result(s->ssl);
    char buf[256];

    /* Say which check failed ("hostname mismatch", "unable to get local
     * issuer certificate", ...), not just "certificate verify failed".
     * Without verification the result is still set, and says nothing of
     * why the connection failed. */
    if (vr != X509_V_OK && (SSL_get_verify_mode(s->ssl) & SSL_VERIFY_PEER)) {
        snprintf(buf, sizeof buf, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
        ERR_clear_error();
    } else {
        evs__tls_error_string(buf, sizeof buf, fallback);
    }
    set_error(s, buf);
}

static void handshake_failed(evs_transport *t, int err, const char *why)
{
    evs__tls *s = t->tls;

    if (s->failed || t->lost_scheduled)
        return;
    s->failed = true;
    if (why)
        set_error(s, why);
    evs__counter_add(&t->worker->tls_failed, 1);
    evs__debug("TLS handshake failed: %s", s->error ? s->error : evs_strerror(err));
    if (t->tls_done)
        t->tls_done(t, err, t->tls_done_arg);
    evs__transport_fatal(t, err);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    if (t->lost_scheduled)
        return;
    evs__transport_ref(t);
    if (!t->tls->handshake_done)
        handshake_failed(t, -ETIMEDOUT, "handshake timed out");
    else /* what close() was flushing (and close_notify) did not go in time */
        evs__transport_fatal(t, -ETIMEDOUT);
    evs__transport_unref(t);
}

/* --- attaching ---------------------------------------------------------- */

static bool is_ip_literal(const char *name)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

/* The name a client sends as SNI and checks the server's certificate
 * against. @return 0; -EINVAL for no name while the server is verified
 * (only the chain would be checked, and any certificate a trusted CA
 * signed would pass: asyncio refuses this too) or a name OpenSSL refuses
 * (an SNI name over 255 bytes); -ENOMEM. */
static int set_peer_name(evs__tls *s, const char *name)
{
    if (!name || !*name)
        return SSL_get_verify_mode(s->ssl) & SSL_VERIFY_PEER ? -EINVAL : 0;
    if (!(s->sni = strdup(name)))
        return -ENOMEM;
    /* IP literals are checked as IP SANs and never sent as SNI. */
    if (is_ip_literal(name))
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), name) == 1 ? 0 : -EINVAL;
    return SSL_set_tlsext_host_name(s->ssl, name) == 1 && SSL_set1_host(s->ssl, name) == 1
               ? 0
               : -EINVAL;
}

int evs__tls_attach(evs_transport *t, evs_tls_context *ctx, bool server,
                    const evs_tls_options *opts, bool upgrade, const void *prefix, size_t len)
{
    evs__tls *s;
    BIO *bio;
    double hs;
    int rc;

    /* connection_made comes after the handshake; a failure here (after
     * a PROXY stage that was "made") must not end in connection_lost. */
    if (!upgrade)
        t->made = false;
    if (!ctx || ctx->server != server)
        return -EINVAL;
    s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    ERR_clear_error();
    s->ssl = SSL_new(ctx->ctx);
    bio = transport_bio(t);
    if (prefix && len > 0 && (s->prefix = malloc(len)))
        memcpy(s->prefix, prefix, len);
    rc = !s->ssl || !bio || (prefix && len > 0 && !s->prefix) ? -ENOMEM
         : server ? 0
                  : set_peer_name(s, opts ? opts->server_hostname : NULL);
    if (rc < 0) {
        SSL_free(s->ssl);
        BIO_free(bio);
        free(s->prefix);
        free(s->sni);
        free(s);
        ERR_clear_error();
        return rc;
    }
    s->prefix_len = prefix ? len : 0;
    SSL_set_bio(s->ssl, bio, bio); /* one BIO both ways: one reference */
    SSL_set_read_ahead(s->ssl, 1);
    s->ctx = evs_tls_context_ref(ctx);
    s->server = server;
    s->upgrade = upgrade;
    s->shutdown_timeout =
        opts && opts->shutdown_timeout > 0 ? opts->shutdown_timeout : DEFAULT_SHUTDOWN_TIMEOUT;
    if (server)
        SSL_set_accept_state(s->ssl);
    else
        SSL_set_connect_state(s->ssl);
    t->tls = s;
    evtimer_assign(&s->timer, t->worker->base, timer_cb, t);
    hs = opts && opts->handshake_timeout > 0 ? opts->handshake_timeout : DEFAULT_HANDSHAKE_TIMEOUT;
    struct timeval tv = evs__tv(hs);
    evtimer_add(&s->timer, &tv);
    return 0;
}

void evs__tls_free(evs_transport *t)
{
    evs__tls *s = t->tls;

    if (!s)
        return;
    event_del(&s->timer);
    busy_remove(s);
    SSL_free(s->ssl); /* frees the BIO */
    if (s->flight)
        evbuffer_free(s->flight);
    if (s->pending)
        evbuffer_free(s->pending);
    free(s->prefix);
    free(s->error);
    evs_tls_context_unref(s->ctx);
    free(s->sni);
    free(s);
    t->tls = NULL;
    ERR_clear_error();
}

size_t evs__tls_pending(const evs_transport *t)
{
    return t->tls->pending ? evbuffer_get_length(t->tls->pending) : 0;
}

void evs__tls_drop_pending(evs_transport *t)
{
    if (t->tls->pending)
        evbuffer_drain(t->tls->pending, evbuffer_get_length(t->tls->pending));
}

/* A TLS 1.2 server asked for a new handshake (its HelloRequest sets
 * OpenSSL's renegotiate flag until that handshake ends), or a handshake
 * message is still coming in. */
static bool renegotiating(const evs__tls *s)
{
    return SSL_renegotiate_pending(s->ssl) || SSL_in_init(s->ssl);
}

/* Reading goes on through a handshake, the first or a renegotiation, even
 * while the protocol has paused it. */
bool evs__tls_handshaking(const evs_transport *t)
{
    const evs__tls *s = t->tls;

    return s && !s->failed && (!s->handshake_done || renegotiating(s));
}

/* --- the handshake and reading -------------------------------------------- */

static int write_plain(evs_transport *t, const void *data, size_t len);

/* What was written while a handshake ran goes out now, in order.
 * @return 0, or the error that failed the transport. */
static int flush_pending(evs_transport *t)
{
    evs__tls *s = t->tls;

    while (s->pending && evbuffer_get_length(s->pending) > 0 && !t->lost_scheduled) {
        size_t n = evbuffer_get_length(s->pending);
        const void *p;
        int rc;

        if (n > RECORD)
            n = RECORD;
        p = evbuffer_pullup(s->pending, (ev_ssize_t)n);
        if ((rc = write_plain(t, p, n)) < 0)
            return rc;
        evbuffer_drain(s->pending, n);
    }
    if (s->pending && !t->lost_scheduled) {
        evbuffer_free(s->pending);
        s->pending = NULL;
    }
    /* The buffer may have shrunk under the low-water mark without a
     * write event to say so. */
    evs__transport_maybe_resume(t);
    return 0;
}

static void handshake_finished(evs_transport *t)
{
    evs__tls *s = t->tls;
    const unsigned char *alpn;
    unsigned alpn_len = 0;

    s->handshake_done = true;
    event_del(&s->timer);
    if (t->paused)
        event_del(&t->rd_ev); /* read on through the handshake only */
    if (s->flight) {
        evbuffer_free(s->flight);
        s->flight = NULL;
    }
    SSL_get0_alpn_selected(s->ssl, &alpn, &alpn_len);
    if (s->server && s->ctx->alpn_required && alpn_len == 0) {
        handshake_failed(t, -EPROTO, "no ALPN protocol in common with the client");
        return;
    }
    evs__counter_add(&t->worker->tls_handshakes, 1);
    if (SSL_session_reused(s->ssl))
        evs__counter_add(&t->worker->tls_resumed, 1);
    if (flush_pending(t) < 0)
        return;
    if (s->upgrade) {
        if (t->tls_done)
            t->tls_done(t, 0, t->tls_done_arg);
    } else {
        evs__transport_made(t);
    }
    if (s->close_when_done && !t->lost_scheduled)
        evs__transport_finish_close(t);
}

/* Drive the handshake. @return true when it is done. */
static bool do_handshake(evs_transport *t)
{
    evs__tls *s = t->tls;
    int rc, err;

    ERR_clear_error();
    rc = SSL_do_handshake(s->ssl);
    /* Our flight (or an alert) goes out either way. */
    if (flush_flight(t) < 0 || t->lost_scheduled)
        return false;
    if (rc == 1) {
        handshake_finished(t);
        return !t->lost_scheduled;
    }
    err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return false;
    if (s->tcp_eof) {
        ERR_clear_error();
        handshake_failed(t, -ECONNRESET, "the peer closed during the handshake");
        return false;
    }
    if (s->io_error) {
        ERR_clear_error();
        handshake_failed(t, s->io_error, evs_strerror(s->io_error));
        return false;
    }
    record_error(s, "handshake failed");
    handshake_failed(t, -EPROTO, NULL);
    return false;
}

static void peer_eof(evs_transport *t)
{
    if (t->closing)
        return;
    if (!t->tls->close_notify)
        evs__debug("TLS peer closed without close_notify");
    evs__transport_eof(t);
    /* TLS has no half-close here: close whatever eof_received said. */
    if (!t->closing)
        evs_transport_close(t);
}

/* After an SSL_read or SSL_peek that returned @n <= 0: nothing to do for
 * now (WANT_READ), or the end of the connection. */
static void read_ended(evs_transport *t, int n)
{
    evs__tls *s = t->tls;
    int err = SSL_get_error(s->ssl, n);

    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    if (err == SSL_ERROR_ZERO_RETURN) {
        s->close_notify = true;
        peer_eof(t);
        return;
    }
    if (s->tcp_eof) { /* the socket ended without close_notify */
        ERR_clear_error();
        peer_eof(t);
        return;
    }
    if (s->io_error) {
        ERR_clear_error();
        evs__transport_fatal(t, s->io_error);
        return;
    }
    record_error(s, "TLS error");
    evs__debug("TLS connection error: %s", s->error ? s->error : "unknown");
    evs__transport_fatal(t, -EPROTO);
}

/* Decrypt and deliver until OpenSSL has nothing more or reading pauses. */
static void read_plaintext(evs_transport *t)
{
    evs__tls *s = t->tls;
    const evs_protocol *p;

    while (!t->closing && !t->paused) {
        void *buf;
        size_t len;
        int n;

        /* Nothing inside OpenSSL and the socket empty: SSL_read could only
         * say WANT_READ, and get_buffer would reserve memory (a stream
         * reader's chunk, kept by every idle connection) for nothing. */
        if (s->drained && !SSL_has_pending(s->ssl))
            return;

        p = t->proto;
        if (p->get_buffer && p->buffer_updated) {
            len = 0;
            buf = p->get_buffer(t, RECORD, &len, t->ctx);
            if (!buf || len == 0) {
                evs__transport_fatal(t, -ENOBUFS);
                return;
            }
        } else {
            buf = t->worker->rbuf;
            len = t->worker->rbuf_size;
        }
        clear_errors();
        n = SSL_read(s->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n > 0) {
            if (p->get_buffer && p->buffer_updated)
                p->buffer_updated(t, (size_t)n, t->ctx);
            else if (p->data_received)
                p->data_received(t, buf, (size_t)n, t->ctx);
            continue;
        }
        read_ended(t, n);
        return;
    }
}

/* Drive a renegotiation where SSL_read does not. Writes made during it are
 * held until it ends (write_records), so it must go on while the protocol
 * has paused reading: pausing holds back plaintext, not TLS, and a task
 * that drains before it reads would otherwise wait for good. And after a
 * wakeup's last SSL_read: OpenSSL begins the new handshake only in a call
 * that finds no record behind the HelloRequest, and if SSL_write began it,
 * it would need the server's answer and fail. SSL_peek drives the
 * handshake as SSL_read does but takes no plaintext; plaintext that comes
 * before the handshake's end holds it back until the protocol reads again,
 * as it would hold back any paused transport. An EOF or an error met on the
 * way is reported at once: held writes could never go out.
 * @return true when plaintext waits for a protocol that reads. */
static bool drive_renegotiation(evs_transport *t)
{
    evs__tls *s = t->tls;
    char c;
    int n;

    clear_errors();
    n = SSL_peek(s->ssl, &c, 1);
    if (n > 0 && !t->paused)
        return true;
    if (n <= 0)
        read_ended(t, n);
    if (t->paused && !t->closing && (n > 0 || !renegotiating(s)))
        event_del(&t->rd_ev); /* reading resumes with the protocol */
    return false;
}

static void deliver(evs_transport *t)
{
    note_io(t);
    for (;;) {
        read_plaintext(t);
        if (t->closing || !renegotiating(t->tls))
            return;
        if (!drive_renegotiation(t))
            return;
        /* Plaintext came first, and the protocol reads: deliver it. */
    }
}

void evs__tls_readable(evs_transport *t)
{
    evs__tls *s = t->tls;

    evs__transport_ref(t);
    new_wakeup(s);
    if (s->handshake_done || do_handshake(t))
        deliver(t);
    /* A TLS 1.2 server's renegotiation ended in this read: what was
     * written meanwhile goes out, unless a close came first (its
     * close_notify is sent: the close reported those bytes dropped). */
    if (s->pending && s->handshake_done && !SSL_in_init(s->ssl) && !t->lost_scheduled &&
        !t->closing)
        flush_pending(t);
    evs__transport_unref(t);
}

void evs__tls_start(evs_transport *t)
{
    evs__tls *s = t->tls;

    /* A client speaks first; a server with a prefix may already have a
     * ClientHello. Either way, run the handshake as far as it goes. */
    evs__transport_ref(t);
    new_wakeup(s);
    if (!s->server || s->prefix) {
        if (do_handshake(t))
            deliver(t);
    }
    evs__transport_unref(t);
}

/* --- writing and closing ------------------------------------------------ */

static int write_plain(evs_transport *t, const void *data, size_t len)
{
    evs__tls *s = t->tls;
    int n;

    note_io(t);
    clear_errors();
    n = SSL_write(s->ssl, data, (int)len);
    if (n <= 0) {
        if (s->io_error) /* the transport has failed with it already */
            return s->io_error;
        record_error(s, "TLS write failed");
        evs__transport_fatal(t, -EPROTO);
        return -EPROTO;
    }
    return 0;
}

static int write_records(evs_transport *t, const struct iovec *iov, int iovcnt);

struct write_call {
    evs_transport *t;
    const struct iovec *iov;
    int iovcnt;
    int rc;
};

static void write_call_run(void *arg)
{
    struct write_call *c = arg;

    c->rc = write_records(c->t, c->iov, c->iovcnt);
}

int evs__tls_write(evs_transport *t, const struct iovec *iov, int iovcnt)
{
    struct write_call c = {t, iov, iovcnt, 0};

    /* SSL_write goes deep: on a task's stack it would keep a second page
     * resident in every idle stream-mode connection. */
    evs__fiber_call_on_loop(write_call_run, &c);
    return c.rc;
}

/* Encrypt and send (or queue), or hold until the handshake is over. */
static int write_records(evs_transport *t, const struct iovec *iov, int iovcnt)
{
    evs__tls *s = t->tls;
    char *stage = NULL;
    size_t staged = 0;
    int rc = 0;

    /* A HelloRequest read with a record behind it leaves the new handshake
     * for later, and a write from data_received comes before the read that
     * would begin it: SSL_write would begin it, need the server's answer
     * and fail. Begin it here, where WANT_READ is no failure (OpenSSL
     * begins only once no record waits), and hold the plaintext below. */
    if (s->handshake_done && SSL_renegotiate_pending(s->ssl) && !SSL_in_init(s->ssl)) {
        clear_errors();
        SSL_do_handshake(s->ssl);
    }
    /* During a handshake SSL_write would need the peer's answer (a TLS 1.2
     * server may renegotiate: SSL_read then starts a new handshake), so
     * plaintext waits, and what comes after it waits behind it. */
    if (!s->handshake_done || SSL_in_init(s->ssl) || evs__tls_pending(t) > 0) {
        if (!s->pending && !(s->pending = evbuffer_new()))
            return -ENOMEM;
        /* The write timeout measures from when bytes start waiting. */
        if (t->timers && evs_transport_get_write_buffer_size(t) == 0)
            evs__timeouts_write(t);
        for (int i = 0; i < iovcnt; i++)
            if (evbuffer_add(s->pending, iov[i].iov_base, iov[i].iov_len) < 0)
                return -ENOMEM;
        return 0;
    }
    /* Coalesce small pieces into full records: fewer records, fewer bytes. */
    for (int i = 0; i < iovcnt && rc == 0; i++) {
        const char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;

        while (len > 0 && rc == 0) {
            if (staged == 0 && len >= RECORD) {
                rc = write_plain(t, p, RECORD);
                p += RECORD;
                len -= RECORD;
                continue;
            }
            if (!stage && !(stage = evs__worker_tls_stage(t->worker)))
                return -ENOMEM;
            size_t take = RECORD - staged < len ? RECORD - staged : len;
            memcpy(stage + staged, p, take);
            staged += take;
            p += take;
            len -= take;
            if (staged == RECORD) {
                rc = write_plain(t, stage, staged);
                staged = 0;
            }
        }
    }
    if (rc == 0 && staged > 0)
        rc = write_plain(t, stage, staged);
    return rc;
}

bool evs__tls_close_after_handshake(evs_transport *t)
{
    evs__tls *s = t->tls;

    if (s->handshake_done || s->failed || evs__tls_pending(t) == 0)
        return false;
    s->close_when_done = true;
    return true;
}

bool evs__tls_close_waits(const evs_transport *t)
{
    return t->tls->close_when_done && !t->tls->handshake_done;
}

void evs__tls_close(evs_transport *t)
{
    evs__tls *s = t->tls;
    struct timeval tv;

    if (!s->handshake_done || s->failed)
        return;
    ERR_clear_error();
    SSL_shutdown(s->ssl); /* sends our close_notify; we do not wait for theirs */
    ERR_clear_error();
    /* The peer had ended (its close_notify or EOF) and its socket is gone
     * too: our close_notify had nowhere to go, and nothing else was lost,
     * so the close is still a clean one, as it would be without TLS. */
    if ((s->close_notify || s->tcp_eof) && t->lost_scheduled && !t->dropped &&
        (t->error == -EPIPE || t->error == -ECONNRESET))
        t->error = 0;
    tv = evs__tv(s->shutdown_timeout);
    evtimer_add(&s->timer, &tv);
}

/* --- start_tls --------------------------------------------------------- */

int evs_transport_start_tls(evs_transport *t, evs_tls_context *ctx, bool server,
                            const evs_tls_options *opts, const void *prefix, size_t prefix_len)
{
    int rc;

    if (!t || !ctx)
        return -EINVAL;
    if (t->tls)
        return -EALREADY;
    if (t->closing || t->eof_pending)
        return -EPIPE;
    rc = evs__tls_attach(t, ctx, server, opts, true, prefix, prefix_len);
    if (rc < 0)
        return rc;
    /* A protocol that paused reading (say, while it parsed STARTTLS) holds
     * back plaintext, not the handshake. */
    if (t->paused && !t->eof_received)
        event_add(&t->rd_ev, NULL);
    evs__tls_start(t);
    if (t->eof_received) {
        /* Nothing more will come: a handshake needing more bytes fails. */
        t->tls->tcp_eof = true;
        if (!t->tls->handshake_done && !t->lost_scheduled)
            do_handshake(t);
    }
    return 0;
}

/* --- extra info -------------------------------------------------------- */

bool evs_transport_is_tls(const evs_transport *t)
{
    return t->tls != NULL;
}

void *evs_transport_tls_ssl(const evs_transport *t)
{
    return t->tls ? t->tls->ssl : NULL;
}

void *evs_transport_tls_peer_certificate(const evs_transport *t)
{
    return t->tls ? SSL_get0_peer_certificate(t->tls->ssl) : NULL;
}

static int name_of(X509_NAME *name, char *buf, size_t len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;

    if (!b)
        return -ENOMEM;
    X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
    n = BIO_get_mem_data(b, &data);
    snprintf(buf, len, "%.*s", (int)n, data);
    BIO_free(b);
    return 0;
}

int evs_transport_tls_peer_subject(const evs_transport *t, char *buf, size_t len)
{
    X509 *x = evs_transport_tls_peer_certificate(t);

    if (!buf || len == 0)
        return -EINVAL;
    return x ? name_of(X509_get_subject_name(x), buf, len) : -ENOENT;
}

int evs_transport_tls_peer_issuer(const evs_transport *t, char *buf, size_t len)
{
    X509 *x = evs_transport_tls_peer_certificate(t);

    if (!buf || len == 0)
        return -EINVAL;
    return x ? name_of(X509_get_issuer_name(x), buf, len) : -ENOENT;
}

int evs_transport_tls_peer_san(const evs_transport *t, char *buf, size_t len)
{
    X509 *x = evs_transport_tls_peer_certificate(t);
    GENERAL_NAMES *names;
    size_t off = 0;

    if (!buf || len == 0)
        return -EINVAL;
    if (!x)
        return -ENOENT;
    buf[0] = '\0';
    names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        char item[300] = "";

        if (g->type == GEN_DNS) {
            snprintf(item, sizeof item, "DNS:%.*s", ASN1_STRING_length(g->d.dNSName),
                     (const char *)ASN1_STRING_get0_data(g->d.dNSName));
        } else if (g->type == GEN_IPADD) {
            char ip[INET6_ADDRSTRLEN] = "?";
            int l = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
            if (l == 4 || l == 16)
                inet_ntop(l == 4 ? AF_INET : AF_INET6, d, ip, sizeof ip);
            snprintf(item, sizeof item, "IP:%s", ip);
        } else if (g->type == GEN_EMAIL) {
            snprintf(item, sizeof item, "email:%.*s", ASN1_STRING_length(g->d.rfc822Name),
                     (const char *)ASN1_STRING_get0_data(g->d.rfc822Name));
        }
        if (*item && off < len)
            off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? ", " : "", item);
    }
    GENERAL_NAMES_free(names);
    return 0;
}

const char *evs_transport_tls_cipher(const evs_transport *t, const char **version, int *bits)
{
    const SSL_CIPHER *c = t->tls && t->tls->handshake_done ? SSL_get_current_cipher(t->tls->ssl)
                                                           : NULL;

    if (version)
        *version = c ? SSL_get_version(t->tls->ssl) : NULL;
    if (bits)
        *bits = c ? SSL_CIPHER_get_bits(c, NULL) : 0;
    return c ? SSL_CIPHER_get_name(c) : NULL;
}

const char *evs_transport_tls_alpn(const evs_transport *t)
{
    static _Thread_local char proto[256];
    const unsigned char *p;
    unsigned len = 0;

    if (!t->tls)
        return NULL;
    SSL_get0_alpn_selected(t->tls->ssl, &p, &len);
    if (len == 0)
        return NULL;
    memcpy(proto, p, len);
    proto[len] = '\0';
    return proto;
}

const char *evs_transport_tls_sni(const evs_transport *t)
{
    if (!t->tls)
        return NULL;
    if (t->tls->server)
        return SSL_get_servername(t->tls->ssl, TLSEXT_NAMETYPE_host_name);
    return t->tls->sni;
}

bool evs_transport_tls_resumed(const evs_transport *t)
{
    return t->tls && SSL_session_reused(t->tls->ssl);
}

bool evs_transport_tls_peer_closed_cleanly(const evs_transport *t)
{
    return t->tls && t->tls->close_notify;
}

const char *evs_transport_tls_error(const evs_transport *t)
{
    return t->tls ? t->tls->error : NULL;
}
