/*
 * iplimit.c - a server's limits: the counts its max_connections and
 * per-client-address limits are checked against, and those per-address
 * limits: live connections per address (an IPv4 address, or an IPv6 /64,
 * which one host usually owns) and a token bucket for the rate of new
 * connections.
 *
 * The counts live apart from the server so that a reload successor can
 * share them (opts.predecessor): a connection still open on the old
 * generation holds its place in the new one's limits.
 *
 * The acceptor admits under the limits' lock; the worker that closes the
 * connection releases under it. That is one lock per connection, never per
 * read or write, and only on servers that set a per-address limit.
 */
#include "server.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct ip_entry {
    uint64_t key;
    uint32_t count;
    double tokens;
    double last; /* when tokens were last refilled */
    struct ip_entry *next;
} ip_entry;

#define BUCKET_BITS 12
#define BUCKETS (1u << BUCKET_BITS)

bool evs__iplimit_enabled(const evs_server *s)
{
    return s->opts.max_connections_per_ip > 0 || s->opts.connection_rate_per_ip > 0;
}

bool evs__ip_key(const struct sockaddr_storage *peer, uint64_t *key)
{
    if (peer->ss_family == AF_INET) {
        uint32_t a;
        memcpy(&a, &((const struct sockaddr_in *)peer)->sin_addr, 4);
        *key = 0xFFFFFFFF00000000ULL | a;
        return true;
    }
    if (peer->ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)peer)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            uint32_t a;
            memcpy(&a, a6->s6_addr + 12, 4);
            *key = 0xFFFFFFFF00000000ULL | a;
        } else {
            memcpy(key, a6->s6_addr, 8); /* the /64 */
            /* A prefix whose high half reads as IPv4's mark would share an
             * IPv4 address's key: it shares its neighbour /64's instead. */
            if ((*key >> 32) == 0xFFFFFFFFu)
                *key ^= UINT64_C(1) << 32;
        }
        return true;
    }
    return false; /* Unix peers have no address to limit */
}

/* The rate and bucket size are the newest generation's: the buckets are
 * shared, and an older generation's closes must not refill them at its
 * old rate (or forget a bucket a new rate is still emptying). */
void evs__limits_set_rate(evs__limits *lim, double rate, double burst)
{
    pthread_mutex_lock(&lim->lock);
    lim->rate = rate;
    lim->burst = burst >= 1 ? burst : (rate > 1 ? rate : 1);
    pthread_mutex_unlock(&lim->lock);
}

static void refill(const evs__limits *lim, ip_entry *e, double now)
{
    if (lim->rate <= 0)
        return;
    e->tokens += (now - e->last) * lim->rate;
    if (e->tokens > lim->burst)
        e->tokens = lim->burst;
    e->last = now;
}

/* Multiply-shift under a multiplier drawn when the table is made: with a
 * fixed hash, clients choosing their addresses (an IPv6 /48 holds 65,536
 * /64s) could pile them into a few buckets and make every accept walk a
 * long chain under the server's lock. */
static uint64_t random_odd(void)
{
    uint64_t r;

    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        /* No entropy yet (early boot): a multiplier that at least differs
         * between processes and runs, though it could be guessed. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 16);
        r *= 0x9e3779b97f4a7c15ULL;
    }
    return r | 1;
}

static ip_entry **slot(evs__limits *lim, uint64_t key)
{
    ip_entry **pp = &lim->table[(key * lim->mult) >> (64 - BUCKET_BITS)];

    while (*pp && (*pp)->key != key)
        pp = &(*pp)->next;
    return pp;
}

/* An entry with no connection and a full bucket says nothing: drop it. */
static void maybe_forget(const evs__limits *lim, ip_entry **pp)
{
    ip_entry *e = *pp;

    if (e->count == 0 && (lim->rate <= 0 || e->tokens >= lim->burst)) {
        *pp = e->next;
        free(e);
    }
}

/* Entries are dropped at release only if their bucket is full by then, and
 * a refused address never releases: without a sweep every address ever
 * seen would stay. So each admit and release also looks at one bucket of
 * the table, in turn, and drops what says nothing any more. */
static void sweep_one_bucket(evs__limits *lim, double now)
{
    ip_entry **pp = &lim->table[lim->sweep];

    lim->sweep = (lim->sweep + 1) % BUCKETS;
    while (*pp) {
        ip_entry *e = *pp;

        refill(lim, e, now);
        maybe_forget(lim, pp);
        if (*pp == e)
            pp = &e->next;
    }
}

int evs__iplimit_admit(evs_server *s, uint64_t key)
{
    evs__limits *lim = s->limits;
    double now = evs__monotonic();
    ip_entry **pp, *e;
    int rc = 0;

    pthread_mutex_lock(&lim->lock);
    if (!lim->table) {
        if (!(lim->table = calloc(BUCKETS, sizeof *lim->table))) {
            pthread_mutex_unlock(&lim->lock);
            return 0; /* no memory for bookkeeping: do not refuse clients for it */
        }
        lim->mult = random_odd();
    }
    pp = slot(lim, key);
    if (!*pp) {
        e = calloc(1, sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&lim->lock);
            return 0;
        }
        e->key = key;
        e->tokens = lim->burst;
        e->last = now;
        *pp = e;
    }
    e = *pp;
    refill(lim, e, now);
    if (s->opts.max_connections_per_ip && e->count >= s->opts.max_connections_per_ip)
        rc = -EMFILE;
    else if (lim->rate > 0 && e->tokens < 1)
        rc = -EAGAIN;
    else {
        e->count++;
        if (lim->rate > 0)
            e->tokens -= 1;
    }
    sweep_one_bucket(lim, now);
    pthread_mutex_unlock(&lim->lock);
    return rc;
}

void evs__iplimit_release(evs_server *s, uint64_t key)
{
    evs__limits *lim = s->limits;
    double now = evs__monotonic();
    ip_entry **pp;

    pthread_mutex_lock(&lim->lock);
    if (lim->table && *(pp = slot(lim, key))) {
        if ((*pp)->count > 0)
            (*pp)->count--;
        refill(lim, *pp, now);
        maybe_forget(lim, pp);
    }
    if (lim->table)
        sweep_one_bucket(lim, now);
    pthread_mutex_unlock(&lim->lock);
}

size_t evs__iplimit_entries(evs_server *s)
{
    evs__limits *lim = s->limits;
    size_t n = 0;

    pthread_mutex_lock(&lim->lock);
    for (size_t i = 0; lim->table && i < BUCKETS; i++)
        for (ip_entry *e = lim->table[i]; e; e = e->next)
            n++;
    pthread_mutex_unlock(&lim->lock);
    return n;
}

evs__limits *evs__limits_new(void)
{
    evs__limits *lim = calloc(1, sizeof *lim);

    if (!lim)
        return NULL;
    atomic_init(&lim->refs, 1);
    pthread_mutex_init(&lim->lock, NULL);
    return lim;
}

evs__limits *evs__limits_ref(evs__limits *lim)
{
    atomic_fetch_add_explicit(&lim->refs, 1, memory_order_relaxed);
    return lim;
}

void evs__limits_unref(evs__limits *lim)
{
    if (!lim || atomic_fetch_sub_explicit(&lim->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; lim->table && i < BUCKETS; i++) {
        ip_entry *e = lim->table[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(lim->table);
    pthread_mutex_destroy(&lim->lock);
    free(lim);
}

/* A refusal counted, and logged at most once a second per server, with
 * the count since the last line. */
static void count_refusal(evs_server *s, int why, const struct sockaddr_storage *peer,
                          socklen_t plen)
{
    evs__limits *lim = s->limits;
    double now = evs__monotonic(), span = 0;
    unsigned long refused = 0;
    char who[128];

    if (why == -EMFILE)
        atomic_fetch_add_explicit(&s->rejected_per_ip, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&s->rejected_rate, 1, memory_order_relaxed);
    /* Workers accepting on their own sockets (reuse_port) share the log,
     * and so do the generations of a reloaded listener; the line is
     * written after the lock, which accepts and closes take. */
    pthread_mutex_lock(&lim->lock);
    lim->rejects_unlogged++;
    if (now - lim->last_reject_log >= 1.0) {
        refused = lim->rejects_unlogged;
        span = lim->last_reject_log > 0 ? now - lim->last_reject_log : 1.0;
        lim->rejects_unlogged = 0;
        lim->last_reject_log = now;
    }
    pthread_mutex_unlock(&lim->lock);
    if (refused)
        evs__info("refused %lu connection(s) in the last %.0fs, the latest from %s: %s", refused,
                  span, evs_format_address((const struct sockaddr *)peer, plen, who, sizeof who),
                  why == -EMFILE ? "too many connections from this address"
                                 : "connection rate per address exceeded");
}

/* Refused at the door: the optional one-line message, then close. */
void evs__iplimit_reject(evs_server *s, int fd, int why, const struct sockaddr_storage *peer,
                         socklen_t plen)
{
    if (s->opts.reject_message && *s->opts.reject_message) {
        ssize_t rc = send(fd, s->opts.reject_message, strlen(s->opts.reject_message),
                          MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)rc; /* best effort: the client may be gone already */
    }
    close(fd);
    count_refusal(s, why, peer, plen);
}

/* The same for a client named by a PROXY header, whose connection is a
 * transport already. */
void evs__iplimit_reject_transport(evs_server *s, evs_transport *t, int why,
                                   const struct sockaddr_storage *peer, socklen_t plen)
{
    if (s->opts.reject_message && *s->opts.reject_message)
        evs_transport_write(t, s->opts.reject_message, strlen(s->opts.reject_message));
    evs_transport_close(t);
    count_refusal(s, why, peer, plen);
}
