/*
 * proxy_stage.c - the PROXY protocol on a server's connections: a first
 * protocol on the transport that reads and checks the header, records what
 * it says, then hands the connection to the server's real protocol (or its
 * TLS layer) with the bytes that followed the header.
 *
 * Only peers in the server's trusted networks may send a header (anyone
 * else could claim any address), and the header must arrive within
 * proxy_timeout. Every failure closes the connection and is counted.
 */
#include "server.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_protocol.h"
#include "tls.h"
#include "transport.h"

#define DEFAULT_PROXY_TIMEOUT 5.0

typedef struct proxy_stage {
    evs_server *server;
    const evs_protocol *next;
    void *next_ctx;
    struct event timer;
    size_t len;
    uint8_t buf[EVS__PROXY_MAX_HEADER];
} proxy_stage;

/* --- trusted networks ------------------------------------------------------ */

int evs__cidr_parse(const char *text, evs__cidr *out)
{
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);
    int max;
    char *end;
    long bits;

    if (n == 0 || n >= sizeof addr)
        return -EINVAL;
    memcpy(addr, text, n);
    addr[n] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -EINVAL;
    }
    bits = max;
    if (slash) {
        /* Digits only: strtol would take "/ 8" and "/+08" too. */
        if (slash[1] < '0' || slash[1] > '9')
            return -EINVAL;
        bits = strtol(slash + 1, &end, 10);
        if (*end || bits < 0 || bits > max)
            return -EINVAL;
    }
    out->bits = (int)bits;
    /* A peer at ::ffff:a.b.c.d is matched as the IPv4 address it is (see
     * evs__proxy_trusted): a network written that way must be too, or it
     * would be accepted and never match. */
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (out->family == AF_INET6 && out->bits >= 96 && memcmp(out->addr, v4mapped, 12) == 0) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, sizeof out->addr - 4);
        out->family = AF_INET;
        out->bits -= 96;
    }
    return 0;
}

static bool in_cidr(const evs__cidr *c, const uint8_t *addr, int family)
{
    int full = c->bits / 8, rest = c->bits % 8;

    if (c->family != family)
        return false;
    if (memcmp(c->addr, addr, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xFF << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

bool evs__proxy_trusted(const evs_server *s, const struct sockaddr_storage *peer)
{
    const uint8_t *addr;
    int family = peer->ss_family;

    if (family == AF_UNIX)
        return true; /* the socket file's permissions decide who connects */
    if (family == AF_INET) {
        addr = (const uint8_t *)&((const struct sockaddr_in *)peer)->sin_addr;
    } else if (family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)peer)->sin6_addr;
        addr = a6->s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            addr += 12;
            family = AF_INET;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < s->ntrusted; i++)
        if (in_cidr(&s->trusted[i], addr, family))
            return true;
    return false;
}

/* --- the stage ------------------------------------------------------------- */

static void stage_free(proxy_stage *st)
{
    event_del(&st->timer);
    free(st);
}

static void reject(evs_transport *t, proxy_stage *st, const char *why)
{
    atomic_fetch_add_explicit(&st->server->proxy_rejected, 1, memory_order_relaxed);
    evs__debug("PROXY protocol: %s; closing", why);
    evs_transport_abort(t);
}

/* Per-address limits count the client the header names (the acceptor
 * left them to us: it saw the proxy). @return false when it was refused. */
static bool admit_client(evs_transport *t, evs_server *s, const evs__proxy_header *h)
{
    uint64_t key;
    int rc;

    if (!evs__iplimit_enabled(s) || !evs__ip_key(&h->src, &key))
        return true;
    if ((rc = evs__iplimit_admit(s, key)) < 0) {
        evs__iplimit_reject_transport(s, t, rc, &h->src, h->srclen);
        return false;
    }
    t->ip_key = key;
    t->ip_counted = true;
    return true;
}

/* The header is in: record it and start the real protocol with @rest. */
static void proceed(evs_transport *t, proxy_stage *st, const evs__proxy_header *h,
                    const uint8_t *rest, size_t restlen)
{
    evs_server *s = st->server;

    if (!h->local) {
        struct evs__proxied *p = malloc(sizeof *p + h->tlvlen);
        if (!p) {
            evs_transport_abort(t);
            return;
        }
        memcpy(&p->src, &h->src, h->srclen);
        p->srclen = h->srclen;
        p->tlvlen = h->tlvlen;
        if (h->tlvlen)
            memcpy(p->tlv, h->tlv, h->tlvlen);
        t->proxied = p;
        if (t->peer) { /* the access log shows the real client */
            memcpy(t->peer, &h->src, h->srclen);
            t->peerlen = h->srclen;
        }
        if (!admit_client(t, s, h))
            return;
    }
    evs_transport_set_protocol(t, st->next, st->next_ctx);
    stage_free(st);
    if (s->opts.tls) {
        evs_tls_options to;
        memset(&to, 0, sizeof to);
        to.handshake_timeout = s->opts.tls_handshake_timeout;
        to.shutdown_timeout = s->opts.tls_shutdown_timeout;
        if (evs__tls_attach(t, s->opts.tls, true, &to, false, rest, restlen) < 0) {
            evs_transport_abort(t);
            return;
        }
        evs__tls_start(t);
    } else {
        evs__transport_made(t);
        if (restlen)
            evs__transport_deliver(t, rest, restlen);
    }
}

static void stage_data(evs_transport *t, const void *data, size_t len, void *ctx)
{
    proxy_stage *st = ctx;
    size_t take = sizeof st->buf - st->len < len ? sizeof st->buf - st->len : len;
    evs__proxy_header h;
    int n;

    memcpy(st->buf + st->len, data, take);
    st->len += take;
    n = evs__proxy_parse(st->buf, st->len, &h);
    if (n < 0) {
        reject(t, st, "malformed header");
        return;
    }
    if (n == 0) {
        if (st->len == sizeof st->buf)
            reject(t, st, "header too long");
        return;
    }
    /* What followed the header: the rest of our buffer, then whatever of
     * @data did not fit in it. */
    size_t restlen = st->len - (size_t)n + (len - take);
    uint8_t *rest = restlen ? malloc(restlen) : NULL;
    if (restlen && !rest) {
        evs_transport_abort(t);
        return;
    }
    if (restlen) {
        memcpy(rest, st->buf + n, st->len - (size_t)n);
        memcpy(rest + (st->len - (size_t)n), (const uint8_t *)data + take, len - take);
    }
    proceed(t, st, &h, rest, restlen);
    free(rest);
}

static bool stage_eof(evs_transport *t, void *ctx)
{
    reject(t, ctx, "the peer closed before a complete header");
    return false;
}

static void stage_lost(evs_transport *t, int err, void *ctx)
{
    proxy_stage *st = ctx;
    const evs_protocol *next = st->next;
    void *next_ctx = st->next_ctx;
    bool stream_mode = st->server->opts.protocol == NULL;

    stage_free(st);
    /* A stream pair waiting behind us must learn that it is over; a user
     * protocol never saw connection_made, so it hears nothing. */
    if (stream_mode && next->connection_lost)
        next->connection_lost(t, err, next_ctx);
}

static void stage_timeout(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;
    void *ctx;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    if (t->closing) { /* refused by a per-address limit, and still flushing */
        evs_transport_abort(t);
        return;
    }
    evs_transport_get_protocol(t, &ctx);
    reject(t, ctx, "no complete header in time");
}

static const evs_protocol proxy_protocol = {
    .data_received = stage_data,
    .eof_received = stage_eof,
    .connection_lost = stage_lost,
};

int evs__proxy_stage_install(evs_server *s, evs_transport *t)
{
    proxy_stage *st = calloc(1, sizeof *st);
    struct timeval tv;

    if (!st)
        return -ENOMEM;
    st->server = s;
    st->next = evs_transport_get_protocol(t, &st->next_ctx);
    evtimer_assign(&st->timer, t->worker->base, stage_timeout, t);
    tv = evs__tv(s->opts.proxy_timeout > 0 ? s->opts.proxy_timeout : DEFAULT_PROXY_TIMEOUT);
    evtimer_add(&st->timer, &tv);
    evs_transport_set_protocol(t, &proxy_protocol, st);
    return 0;
}
