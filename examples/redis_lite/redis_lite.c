/*
 * redis_lite - a subset of Redis (RESP2, string keys only) that redis-cli
 * and redis-benchmark talk to unmodified. It is the pattern for state that
 * is sharded across workers without a lock.
 *
 * Commands: PING, ECHO, SET key value [EX s | PX ms] [NX | XX] [KEEPTTL],
 * GET, DEL, EXISTS, INCR, DECR, INCRBY, DECRBY, MGET, MSET, EXPIRE, TTL,
 * PTTL, DBSIZE, FLUSHALL, QUIT, COMMAND [COUNT | INFO name... | DOCS] and
 * CONFIG GET (answers "save" and "appendonly", which redis-benchmark asks
 * for). Requests are RESP multibulk ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") or
 * inline ("GET k\r\n", with Redis's quoting rules); pipelined requests are
 * answered in order, and the answers to what was already buffered leave
 * together. Errors use Redis's wording ("-ERR wrong number of arguments
 * for 'get' command"); a protocol error is answered and closes the
 * connection, as Redis does.
 *
 * Sharding. Every worker owns one shard (a hash table only its thread ever
 * touches); a key belongs to the shard of worker hash(key) % workers. The
 * connection's task parses a command and splits it into parts, one per
 * shard involved (GET: one; MGET/DEL/EXISTS/MSET: one per owner of some
 * key; DBSIZE/FLUSHALL: every shard). A part for the task's own worker runs
 * at once; a part for another worker is sent there with evs_worker_post,
 * runs on that worker's thread against its shard, and is posted back to
 * the task's worker when done. Nothing is locked: a shard is reached only
 * through its worker's message queue, which also serialises the commands on
 * it. A connection runs one command at a time, so its own commands are seen
 * in order. Multi-key commands are atomic per shard, not across shards.
 *
 * Waking the task. The library has no "event" to wait on from a task and
 * set from a posted function, so this plugin builds one from tasks: the
 * waiting task spawns a sleeper task (evs_sleep for a very long time) and
 * joins it; the function that brings back the last part cancels the
 * sleeper, whose end completes the join. A cancelled connection task (the
 * daemon stopping) stops waiting; the parts still out keep the request
 * alive through a reference count and free it when they come back.
 *
 * Expiry is lazy: a key past its deadline is deleted when a command looks
 * at it, and each part that reaches a shard also sweeps one bucket of it,
 * so expired keys nobody asks for are reclaimed over time. As in Redis,
 * DBSIZE counts the expired keys not reclaimed yet.
 *
 * Settings (the listener's settings group):
 *   max_bulk    = "16M";   largest accepted argument (default 16M)
 *   max_request = "64M";   largest total of one command's arguments,
 *                          and largest GET or MGET answer (default the
 *                          larger of 64M and max_bulk; at least
 *                          max_bulk, at most 1G)
 *   max_memory  = "1G";    bound on the store (keys, values and their
 *                          overhead), split evenly over the shards;
 *                          at least 1M
 * A command is read whole before it runs, so without max_request one
 * unfinished command (up to 1M arguments of max_bulk each) could hold
 * gigabytes. An argument that would take the total past it is a protocol
 * error, answered (and the connection closed) before it is read. Redis
 * bounds a client's query buffer at 1 GB (client-query-buffer-limit);
 * 64M is four default max_bulk arguments, more than any command here
 * needs, and a sixteenth of Redis's bound. (Tiny arguments cost their
 * per-argument overhead, which the 1M cap on their count bounds.)
 * max_request bounds an answer too: a GET or MGET whose values (with
 * their framing) come to more is answered "-ERR reply too large" instead,
 * and the connection goes on. A small MGET naming one big key many times
 * would otherwise make the server build an answer of gigabytes (Redis
 * builds it: by default its output buffer limits spare normal clients).
 * max_memory is Redis's maxmemory with its noeviction policy: once a
 * shard holds more than its part, SET, INCR/DECR and MSET are refused
 * there with Redis's "-OOM command not allowed..." error, while reads,
 * DEL, EXPIRE and FLUSHALL go on. One command may take a shard past its
 * part (by what it stores there: at most max_request bytes of keys and
 * values, and their overhead), never further. Redis has no bound by
 * default; here clients could otherwise fill the daemon's memory.
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   redis-cli -p 6380 SET greeting hello
 *   redis-benchmark -p 6380 -t ping,set,get,incr,mset -n 100000 -q
 */
#include <ctype.h>
#include <endian.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <evstream.h>

#define MAX_WORKERS 4096          /* the runtime's own maximum */
#define MAX_MULTIBULK (1024 * 1024)

/* --- growable output buffer ------------------------------------------------ */

typedef struct buf {
    char *data;
    size_t len, cap;
    bool oom; /* an append failed; the buffer is unusable */
} buf;

static void buf_add(buf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *d;
        while (cap < b->len + n)
            cap *= 2;
        d = realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void buf_free(buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* RESP2 answers. They are written per request, so without printf (whose
 * parsing of the format cost more than the rest of a PING). */

/* "<type><v>\r\n": an integer, or the length of an array or a bulk string. */
static void add_number_line(buf *b, char type, long long v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;

    *--p = '\n';
    *--p = '\r';
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    *--p = type;
    buf_add(b, p, (size_t)(tmp + sizeof tmp - p));
}

static void add_simple(buf *b, const char *s)
{
    buf_add(b, "+", 1);
    buf_add(b, s, strlen(s));
    buf_add(b, "\r\n", 2);
}

static void add_int(buf *b, long long v) { add_number_line(b, ':', v); }
static void add_nil(buf *b) { buf_add(b, "$-1\r\n", 5); }
static void add_array(buf *b, long long n) { add_number_line(b, '*', n); }

static void add_bulk(buf *b, const void *p, size_t n)
{
    add_number_line(b, '$', (long long)n);
    buf_add(b, p, n);
    buf_add(b, "\r\n", 2);
}

static void add_cbulk(buf *b, const char *s) { add_bulk(b, s, strlen(s)); }

/* An error line; CR and LF in it would break the framing (Redis does the same). */
static void add_error(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_error(buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    for (char *p = tmp; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    buf_add(b, "-", 1);
    buf_add(b, tmp, strlen(tmp));
    buf_add(b, "\r\n", 2);
}

#define ERR_NOT_INT "ERR value is not an integer or out of range"
#define ERR_SYNTAX "ERR syntax error"
#define ERR_OOM "OOM command not allowed when used memory > 'maxmemory'."

/* --- numbers ------------------------------------------------------------- */

/* Redis's string2ll: an optional '-', digits, no leading zero, no spaces,
 * within int64. */
static bool parse_ll(const char *s, size_t n, long long *out)
{
    bool neg = false;
    unsigned long long v = 0;
    size_t i = 0;

    if (n == 0 || n > 20)
        return false;
    if (s[0] == '-') {
        neg = true;
        i = 1;
        if (n == 1)
            return false;
    }
    if (s[i] == '0' && n > i + 1)
        return false;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (v > (ULLONG_MAX - (unsigned long long)(s[i] - '0')) / 10)
            return false;
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return false;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return false;
        *out = (long long)v;
    }
    return true;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Keys are hashed with SipHash-1-3 (as redis does) under a key drawn at
 * start: with a fixed, public hash a client could choose keys that all
 * land in one bucket (or one worker) and make every lookup a list walk. */
static uint64_t sip_key[2];
static pthread_once_t sip_key_once = PTHREAD_ONCE_INIT;

static void sip_key_init(void)
{
    if (getrandom(sip_key, sizeof sip_key, GRND_NONBLOCK) != (ssize_t)sizeof sip_key) {
        /* No entropy yet (very early boot): a key that at least differs
         * between processes and runs, though it could be guessed. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sip_key[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
        sip_key[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
    }
}

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = ROTL64(v[1], 13) ^ v[0];
    v[0] = ROTL64(v[0], 32);
    v[2] += v[3];
    v[3] = ROTL64(v[3], 16) ^ v[2];
    v[0] += v[3];
    v[3] = ROTL64(v[3], 21) ^ v[0];
    v[2] += v[1];
    v[1] = ROTL64(v[1], 17) ^ v[2];
    v[2] = ROTL64(v[2], 32);
}

/* SipHash with @c compression and @d finalization rounds (the reference
 * defines 2-4; 1-3 is the faster variant hash tables use). */
static uint64_t siphash(const uint64_t key[2], int c, int d, const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t v[4] = {key[0] ^ 0x736f6d6570736575ULL, key[1] ^ 0x646f72616e646f6dULL,
                     key[0] ^ 0x6c7967656e657261ULL, key[1] ^ 0x7465646279746573ULL};
    uint64_t m, last = (uint64_t)n << 56;
    size_t i;

    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&m, p, 8);
        m = le64toh(m);
        v[3] ^= m;
        for (i = 0; i < (size_t)c; i++)
            sip_round(v);
        v[0] ^= m;
    }
    for (i = 0; i < n; i++)
        last |= (uint64_t)p[i] << (8 * i);
    v[3] ^= last;
    for (i = 0; i < (size_t)c; i++)
        sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for (i = 0; i < (size_t)d; i++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static uint64_t hash_key(const char *p, size_t n)
{
    return siphash(sip_key, 1, 3, p, n);
}

/* --- a shard: one worker's hash table ---------------------------------------- */

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expire; /* monotonic ms; 0 = none */
    char *val;
    size_t vlen, klen;
    char key[];
} entry;

typedef struct shard {
    entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t sweep;    /* next bucket the incremental sweep looks at */
    size_t used;     /* bytes held by the entries, as entry_bytes counts them */
    size_t limit;    /* this shard's part of max_memory */
} shard;

static shard *shard_new(size_t limit)
{
    shard *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nbuckets = 64;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (!s->buckets) {
        free(s);
        return NULL;
    }
    s->limit = limit;
    return s;
}

/* What an entry costs: its two blocks and malloc's header on each. The
 * bucket table is left out: it is a pointer per entry at most. */
static size_t entry_bytes(size_t klen, size_t vlen)
{
    return sizeof(entry) + klen + 1 + vlen + 1 + 2 * 16;
}

/* Free @e, which the caller has taken out of its bucket. */
static void entry_drop(shard *s, entry *e)
{
    s->used -= entry_bytes(e->klen, e->vlen);
    s->count--;
    free(e->val);
    free(e);
}

static void shard_clear(shard *s)
{
    for (size_t i = 0; i < s->nbuckets; i++) {
        entry *e = s->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            entry_drop(s, e);
        }
        s->buckets[i] = NULL;
    }
}

static void shard_free(shard *s)
{
    if (!s)
        return;
    shard_clear(s);
    free(s->buckets);
    free(s);
}

static size_t bucket_of(const shard *s, uint64_t h)
{
    /* The owner was picked with h % workers; use other bits here. */
    return (size_t)(h >> 20) & (s->nbuckets - 1);
}

static void shard_grow(shard *s)
{
    size_t n = s->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);

    if (!b)
        return; /* stay at this size: longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        entry *e = s->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            size_t j = (size_t)(e->hash >> 20) & (n - 1);
            e->next = b[j];
            b[j] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
    s->sweep = 0;
}

/* Drop the expired entries of one bucket. @return how many went. */
static size_t sweep_bucket(shard *s, size_t i, int64_t now)
{
    size_t n = 0;

    for (entry **pp = &s->buckets[i]; *pp;) {
        entry *e = *pp;
        if (e->expire && e->expire <= now) {
            *pp = e->next;
            entry_drop(s, e);
            n++;
        } else {
            pp = &e->next;
        }
    }
    return n;
}

/* The live entry for a key, deleting it first when it expired. */
static entry **find(shard *s, const char *k, size_t kn, uint64_t h, int64_t now)
{
    for (entry **pp = &s->buckets[bucket_of(s, h)]; *pp; pp = &(*pp)->next) {
        entry *e = *pp;
        if (e->hash == h && e->klen == kn && memcmp(e->key, k, kn) == 0) {
            if (e->expire && e->expire <= now) {
                *pp = e->next;
                entry_drop(s, e);
                return NULL;
            }
            return pp;
        }
    }
    return NULL;
}

static entry *lookup(shard *s, const char *k, size_t kn, uint64_t h, int64_t now)
{
    entry **pp = find(s, k, kn, h, now);
    return pp ? *pp : NULL;
}

static bool delete_key(shard *s, const char *k, size_t kn, uint64_t h, int64_t now)
{
    entry **pp = find(s, k, kn, h, now);
    entry *e;

    if (!pp)
        return false;
    e = *pp;
    *pp = e->next;
    entry_drop(s, e);
    return true;
}

/* Set a value (copied). @p keep_ttl keeps an existing deadline, else
 * @p expire (0 = none) replaces it. @return false when out of memory. */
static bool store(shard *s, const char *k, size_t kn, uint64_t h, const char *v, size_t vn,
                  int64_t expire, bool keep_ttl, int64_t now)
{
    entry *e = lookup(s, k, kn, h, now);
    char *copy = malloc(vn + 1);

    if (!copy)
        return false;
    memcpy(copy, v, vn);
    copy[vn] = '\0';
    if (e) {
        s->used = s->used - e->vlen + vn;
        free(e->val);
        e->val = copy;
        e->vlen = vn;
        if (!keep_ttl)
            e->expire = expire;
        return true;
    }
    e = malloc(sizeof *e + kn + 1);
    if (!e) {
        free(copy);
        return false;
    }
    e->hash = h;
    e->klen = kn;
    memcpy(e->key, k, kn);
    e->key[kn] = '\0';
    e->val = copy;
    e->vlen = vn;
    e->expire = expire;
    size_t b = bucket_of(s, h);
    e->next = s->buckets[b];
    s->buckets[b] = e;
    s->used += entry_bytes(kn, vn);
    if (++s->count > s->nbuckets)
        shard_grow(s);
    return true;
}

/* --- the instance and the commands --------------------------------------------- */

typedef struct redis_lite {
    size_t max_bulk;
    size_t max_request; /* the arguments of one command, in total */
    size_t max_memory;  /* the store, over all shards */
    atomic_int nworkers;
    /* shards[i] is created, used and freed on worker i only. */
    shard *shards[MAX_WORKERS];
} redis_lite;

typedef struct arg {
    char *p; /* NUL-terminated copy */
    size_t n;
} arg;

typedef enum cmd_id {
    C_PING, C_ECHO, C_QUIT, C_COMMAND, C_CONFIG,
    C_GET, C_SET, C_INCRBY, C_EXPIRE, C_TTL, C_PTTL,
    C_DEL, C_EXISTS, C_MGET, C_MSET, C_DBSIZE, C_FLUSHALL,
} cmd_id;

/* How a command's keys spread over the shards. */
typedef enum kind {
    K_LOCAL, /* no key: answered by the connection's task */
    K_ONE,   /* argv[1]: one part, whose output is the answer */
    K_KEYS,  /* argv[1..]: a part per owner, counts summed */
    K_MGET,  /* argv[1..]: a part per owner, answers put back in order */
    K_PAIRS, /* argv[1], argv[3]...: MSET */
    K_ALL,   /* every shard: counts summed */
} kind;

typedef struct command {
    const char *name;  /* lower case, as Redis reports it */
    int arity;         /* Redis's: exact, or -n for "at least n" */
    const char *flags; /* for COMMAND's answer, space separated */
    int first, last, step;
    cmd_id id;
    kind kind;
    long long delta;   /* INCR/DECR: the implied increment */
} command;

static const command commands[] = {
    {"ping", -1, "fast stale", 0, 0, 0, C_PING, K_LOCAL, 0},
    {"echo", 2, "fast", 0, 0, 0, C_ECHO, K_LOCAL, 0},
    {"quit", -1, "fast stale", 0, 0, 0, C_QUIT, K_LOCAL, 0},
    {"command", -1, "loading stale", 0, 0, 0, C_COMMAND, K_LOCAL, 0},
    {"config", -2, "admin loading stale", 0, 0, 0, C_CONFIG, K_LOCAL, 0},
    {"get", 2, "readonly fast", 1, 1, 1, C_GET, K_ONE, 0},
    {"set", -3, "write denyoom", 1, 1, 1, C_SET, K_ONE, 0},
    {"incr", 2, "write denyoom fast", 1, 1, 1, C_INCRBY, K_ONE, 1},
    {"decr", 2, "write denyoom fast", 1, 1, 1, C_INCRBY, K_ONE, -1},
    {"incrby", 3, "write denyoom fast", 1, 1, 1, C_INCRBY, K_ONE, 0},
    {"decrby", 3, "write denyoom fast", 1, 1, 1, C_INCRBY, K_ONE, 0},
    {"expire", 3, "write fast", 1, 1, 1, C_EXPIRE, K_ONE, 0},
    {"ttl", 2, "readonly fast", 1, 1, 1, C_TTL, K_ONE, 0},
    {"pttl", 2, "readonly fast", 1, 1, 1, C_PTTL, K_ONE, 0},
    {"del", -2, "write", 1, -1, 1, C_DEL, K_KEYS, 0},
    {"exists", -2, "readonly fast", 1, -1, 1, C_EXISTS, K_KEYS, 0},
    {"mget", -2, "readonly fast", 1, -1, 1, C_MGET, K_MGET, 0},
    {"mset", -3, "write denyoom", 1, -1, 2, C_MSET, K_PAIRS, 0},
    {"dbsize", 1, "readonly fast", 0, 0, 0, C_DBSIZE, K_ALL, 0},
    {"flushall", -1, "write", 0, 0, 0, C_FLUSHALL, K_ALL, 0},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const command *find_command(const arg *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strlen(commands[i].name) == name->n && strcasecmp(commands[i].name, name->p) == 0)
            return &commands[i];
    return NULL;
}

/* --- a request in flight: its parts and their trip between workers ------------- */

struct call;

typedef struct part {
    struct call *call;
    int worker;      /* the owner of the shard */
    int first, nkeys; /* its keys: call->keys[first .. first + nkeys) */
    buf out;         /* K_ONE / K_MGET answers */
    long long count; /* K_KEYS / K_ALL */
    size_t cursor;   /* K_MGET: next answer to take from out */
} part;

typedef struct call {
    atomic_int refs;          /* the task's, plus one per part out on another worker */
    redis_lite *rl;
    const command *cmd;
    evs_worker *origin;       /* the connection's worker */
    int argc;
    arg *argv;                /* read-only once parts are out */
    /* SET options, INCRBY's delta, EXPIRE's time: checked by the task. */
    long long delta, ttl_ms;
    bool nx, xx, keep_ttl;
    int nkeys;
    int *keys;                /* argv index of each key, grouped by part */
    int *part_of_key;         /* K_MGET: argv order -> part index */
    int nparts;
    part *parts;
    /* GET/MGET: bytes of answer the parts have claimed, together; past
     * max_request the answer is an error (see exec_part). */
    atomic_uint_least64_t answer;
    /* Only on the origin worker: */
    int pending;              /* parts not back yet */
    evs_task *sleeper;        /* what the task joins while parts are out */
} call;

static void free_args(int argc, arg *argv)
{
    for (int i = 0; i < argc; i++)
        free(argv[i].p);
    free(argv);
}

static void call_unref(call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (int i = 0; i < c->nparts; i++)
        buf_free(&c->parts[i].out);
    free(c->parts);
    free(c->keys);
    free(c->part_of_key);
    free_args(c->argc, c->argv);
    free(c);
}

/* now + ttl_ms without overflowing: SET k v PX 9223372036854775807 is
 * accepted, so the sum must saturate (far beyond any uptime). */
static int64_t deadline(int64_t now, long long ttl_ms)
{
    return ttl_ms > INT64_MAX / 2 - now ? INT64_MAX / 2 : now + ttl_ms;
}

/* The bytes add_bulk (or add_nil, when @p found is false) writes. */
static size_t bulk_size(bool found, size_t n)
{
    size_t digits = 1;

    if (!found)
        return 5;
    for (size_t v = n; v >= 10; v /= 10)
        digits++;
    return 1 + digits + 2 + n + 2;
}

/* Claim @n bytes of the answer of @c for a part. The parts of an MGET run
 * on several workers at once, so they share one count: what they hold
 * together, not each, stays within max_request. A failed claim leaves the
 * count past the bound, which fails every later claim too. */
static bool claim_answer(call *c, size_t n)
{
    uint_least64_t before = atomic_fetch_add(&c->answer, n);
    return before + n <= c->rl->max_request;
}

/* Redis's "denyoom" commands. */
static bool may_grow(const command *cmd)
{
    return cmd->id == C_SET || cmd->id == C_INCRBY || cmd->id == C_MSET;
}

/* Run one part against its shard, on the shard's worker. */
static void exec_part(shard *s, call *c, part *p)
{
    int64_t now = now_ms();
    const command *cmd = c->cmd;

    /* Reclaim expired keys nobody asks for, a bucket at a time. */
    sweep_bucket(s, s->sweep, now);
    s->sweep = (s->sweep + 1) & (s->nbuckets - 1);

    /* Redis's noeviction policy: past the limit, a command that could
     * grow the store is refused, and the rest (reads, DEL, FLUSHALL) run.
     * MSET's part then stores nothing, and its short count makes the task
     * answer the same error. */
    if (may_grow(cmd) && s->used > s->limit) {
        if (cmd->kind == K_ONE)
            add_error(&p->out, ERR_OOM);
        return;
    }

    for (int i = 0; i < p->nkeys || (cmd->kind == K_ALL && i == 0); i++) {
        const arg *k = cmd->kind == K_ALL ? NULL : &c->argv[c->keys[p->first + i]];
        uint64_t h = k ? hash_key(k->p, k->n) : 0;
        entry *e;

        switch (cmd->id) {
        case C_GET:
        case C_MGET:
            e = lookup(s, k->p, k->n, h, now);
            /* The same big key asked for 2000 times in one small MGET
             * would otherwise make an answer of gigabytes, built here,
             * then copied for the client and again by evs_write. */
            if (!claim_answer(c, bulk_size(e != NULL, e ? e->vlen : 0))) {
                buf_free(&p->out); /* the task answers an error instead */
                return;
            }
            if (e)
                add_bulk(&p->out, e->val, e->vlen);
            else
                add_nil(&p->out);
            break;
        case C_SET: {
            const arg *v = &c->argv[2];
            e = lookup(s, k->p, k->n, h, now);
            if ((c->nx && e) || (c->xx && !e)) {
                add_nil(&p->out);
                break;
            }
            if (!store(s, k->p, k->n, h, v->p, v->n, c->ttl_ms ? deadline(now, c->ttl_ms) : 0,
                       c->keep_ttl, now))
                add_error(&p->out, ERR_OOM);
            else
                add_simple(&p->out, "OK");
            break;
        }
        case C_MSET: {
            const arg *v = k + 1;
            if (store(s, k->p, k->n, h, v->p, v->n, 0, false, now))
                p->count++;
            break;
        }
        case C_INCRBY: {
            long long cur = 0;
            char num[32];
            e = lookup(s, k->p, k->n, h, now);
            if (e && !parse_ll(e->val, e->vlen, &cur)) {
                add_error(&p->out, ERR_NOT_INT);
                break;
            }
            if ((c->delta < 0 && cur < LLONG_MIN - c->delta) ||
                (c->delta > 0 && cur > LLONG_MAX - c->delta)) {
                add_error(&p->out, "ERR increment or decrement would overflow");
                break;
            }
            cur += c->delta;
            int n = snprintf(num, sizeof num, "%lld", cur);
            if (!store(s, k->p, k->n, h, num, (size_t)n, 0, true, now))
                add_error(&p->out, ERR_OOM);
            else
                add_int(&p->out, cur);
            break;
        }
        case C_EXPIRE:
            e = lookup(s, k->p, k->n, h, now);
            if (!e) {
                add_int(&p->out, 0);
            } else if (c->ttl_ms <= 0) {
                delete_key(s, k->p, k->n, h, now); /* Redis: a past deadline deletes */
                add_int(&p->out, 1);
            } else {
                e->expire = deadline(now, c->ttl_ms);
                add_int(&p->out, 1);
            }
            break;
        case C_TTL:
        case C_PTTL:
            e = lookup(s, k->p, k->n, h, now);
            if (!e)
                add_int(&p->out, -2);
            else if (!e->expire)
                add_int(&p->out, -1);
            else if (cmd->id == C_PTTL)
                add_int(&p->out, e->expire - now);
            else
                add_int(&p->out, (e->expire - now + 500) / 1000);
            break;
        case C_DEL:
            p->count += delete_key(s, k->p, k->n, h, now);
            break;
        case C_EXISTS:
            p->count += lookup(s, k->p, k->n, h, now) != NULL;
            break;
        case C_DBSIZE:
            /* As Redis's, it counts the expired keys not reclaimed yet:
             * sweeping the whole shard here would let a client make every
             * DBSIZE cost a walk over millions of keys. */
            p->count = (long long)s->count;
            break;
        case C_FLUSHALL:
            shard_clear(s);
            break;
        default:
            break;
        }
    }
}

/* On the origin worker: a part came back. */
static void part_done(evs_worker *w, void *msg)
{
    part *p = msg;
    call *c = p->call;

    (void)w;
    if (--c->pending == 0 && c->sleeper)
        evs_task_cancel(c->sleeper); /* wakes the task joining it */
    call_unref(c);
}

/* On the owner worker: run the part, send it back. */
static void run_part(evs_worker *w, void *msg)
{
    part *p = msg;
    call *c = p->call;
    shard *s = c->rl->shards[evs_worker_id(w)];

    if (s)
        exec_part(s, c, p);
    else
        add_error(&p->out, "ERR shard unavailable");
    /* The origin is stopping: the task gave up, drop our reference. */
    if (evs_worker_post(c->origin, part_done, p) < 0)
        call_unref(c);
}

/* The sleeper: parked until the last part cancels it. */
static int sleeper(void *unused)
{
    (void)unused;
    evs_sleep(1e9);
    return 0;
}

/* Park the task until every part is back. @return 0, or a negative errno
 * when the task was cancelled (the call then lives on until the parts
 * return). */
static int wait_parts(call *c)
{
    while (c->pending > 0) {
        evs_task *t;
        int rc = evs_task_spawn(sleeper, NULL, &t);

        if (rc < 0)
            return rc;
        c->sleeper = t;
        rc = evs_task_join(t, NULL);
        c->sleeper = NULL;
        if (rc < 0) {
            evs_task_cancel(t);
            evs_task_detach(t);
            return rc;
        }
        /* The sleeper also ends when the worker cancels every task. */
        if (c->pending > 0 && evs_task_cancelled(evs_task_current()))
            return -ECANCELED;
    }
    return 0;
}

/* Group the keys of @c by owner into parts. @return 0 or -ENOMEM. */
static int make_parts(call *c, int nworkers)
{
    const command *cmd = c->cmd;
    int *owner_part;

    if (cmd->kind == K_ALL) {
        c->parts = calloc((size_t)nworkers, sizeof *c->parts);
        if (!c->parts)
            return -ENOMEM;
        c->nparts = nworkers;
        for (int i = 0; i < nworkers; i++)
            c->parts[i].worker = i;
        return 0;
    }
    /* Keys: argv[1], [2]... or, for MSET, argv[1], [3]... */
    int step = cmd->kind == K_PAIRS ? 2 : 1;
    int nkeys = cmd->kind == K_ONE ? 1 : (c->argc - 1) / step;
    int *owner = malloc((size_t)nkeys * sizeof *owner);

    c->keys = malloc((size_t)nkeys * sizeof *c->keys);
    c->part_of_key = malloc((size_t)nkeys * sizeof *c->part_of_key);
    c->parts = calloc((size_t)(nkeys < nworkers ? nkeys : nworkers), sizeof *c->parts);
    owner_part = malloc((size_t)nworkers * sizeof *owner_part);
    if (!owner || !c->keys || !c->part_of_key || !c->parts || !owner_part) {
        free(owner);
        free(owner_part);
        return -ENOMEM;
    }
    c->nkeys = nkeys;
    for (int i = 0; i < nworkers; i++)
        owner_part[i] = -1;
    /* Count the keys of each part... */
    for (int i = 0; i < nkeys; i++) {
        const arg *k = &c->argv[1 + i * step];
        int wk = (int)(hash_key(k->p, k->n) % (uint64_t)nworkers);
        if (owner_part[wk] < 0) {
            owner_part[wk] = c->nparts;
            c->parts[c->nparts].worker = wk;
            c->nparts++;
        }
        owner[i] = owner_part[wk];
        c->part_of_key[i] = owner[i];
        c->parts[owner[i]].nkeys++;
    }
    /* ... then lay them out part after part, in argv order within each. */
    int at = 0;
    for (int j = 0; j < c->nparts; j++) {
        c->parts[j].first = at;
        at += c->parts[j].nkeys;
        c->parts[j].nkeys = 0;
    }
    for (int i = 0; i < nkeys; i++) {
        part *p = &c->parts[owner[i]];
        c->keys[p->first + p->nkeys++] = 1 + i * step;
    }
    free(owner);
    free(owner_part);
    return 0;
}

/* The next RESP value of a part's output (an MGET answer). */
static void take_bulk(part *p, buf *out)
{
    static const char no_answer[] = "-ERR no answer for this key\r\n";
    size_t left = p->out.len - p->cursor;
    const char *s = p->out.data + p->cursor;
    const char *nl = left ? memchr(s, '\n', left) : NULL;
    size_t len = nl ? (size_t)(nl - s) + 1 : 0;

    if (nl && s[0] == '$' && s[1] != '-')
        len += (size_t)strtoull(s + 1, NULL, 10) + 2;
    /* A part that failed (no shard, no memory) answered one error line for
     * all its keys, or less than a whole answer: its other keys get an
     * error of their own instead of a read past its output. */
    if (!nl || len > left) {
        buf_add(out, no_answer, sizeof no_answer - 1);
        p->cursor = p->out.len;
        return;
    }
    buf_add(out, s, len);
    p->cursor += len;
}

/* --- commands answered by the task itself ------------------------------------- */

static void add_command_info(buf *b, const command *cmd)
{
    char flags[64];
    int nflags = 0;

    add_array(b, 6);
    add_cbulk(b, cmd->name);
    add_int(b, cmd->arity);
    snprintf(flags, sizeof flags, "%s", cmd->flags);
    for (char *p = strtok(flags, " "); p; p = strtok(NULL, " "))
        nflags++;
    add_array(b, nflags);
    snprintf(flags, sizeof flags, "%s", cmd->flags);
    for (char *p = strtok(flags, " "); p; p = strtok(NULL, " "))
        buf_printf(b, "+%s\r\n", p);
    add_int(b, cmd->first);
    add_int(b, cmd->last);
    add_int(b, cmd->step);
}

static void cmd_command(buf *b, int argc, arg *argv)
{
    if (argc == 1) {
        add_array(b, (long long)NCOMMANDS);
        for (size_t i = 0; i < NCOMMANDS; i++)
            add_command_info(b, &commands[i]);
    } else if (strcasecmp(argv[1].p, "count") == 0 && argc == 2) {
        add_int(b, (long long)NCOMMANDS);
    } else if (strcasecmp(argv[1].p, "info") == 0) {
        add_array(b, argc - 2);
        for (int i = 2; i < argc; i++) {
            const command *cmd = find_command(&argv[i]);
            if (cmd)
                add_command_info(b, cmd);
            else
                add_nil(b);
        }
    } else if (strcasecmp(argv[1].p, "docs") == 0) {
        add_array(b, 0); /* no documentation: clients use their own help */
    } else {
        add_error(b, "ERR unknown subcommand '%.128s'. Try COMMAND HELP.", argv[1].p);
    }
}

/* CONFIG GET: the two parameters redis-benchmark reads; nothing is persisted. */
static void cmd_config(buf *b, int argc, arg *argv)
{
    static const char *const params[][2] = {{"save", ""}, {"appendonly", "no"}};
    int n = 0;

    if (strcasecmp(argv[1].p, "get") != 0) {
        add_error(b, "ERR unknown subcommand '%.128s'. Try CONFIG HELP.", argv[1].p);
        return;
    }
    for (size_t j = 0; j < 2; j++)
        for (int i = 2; i < argc; i++)
            if (strcasecmp(argv[i].p, params[j][0]) == 0 || strcmp(argv[i].p, "*") == 0) {
                n++;
                break;
            }
    add_array(b, n * 2);
    for (size_t j = 0; j < 2; j++)
        for (int i = 2; i < argc; i++)
            if (strcasecmp(argv[i].p, params[j][0]) == 0 || strcmp(argv[i].p, "*") == 0) {
                add_cbulk(b, params[j][0]);
                add_cbulk(b, params[j][1]);
                break;
            }
}

/* Check SET's options into @c. @return false (and an error queued) if bad. */
static bool parse_set_options(call *c, buf *out)
{
    bool ex = false, px = false;

    for (int i = 3; i < c->argc; i++) {
        const char *o = c->argv[i].p;
        bool has_next = i + 1 < c->argc;

        if (strcasecmp(o, "nx") == 0 && !c->xx) {
            c->nx = true;
        } else if (strcasecmp(o, "xx") == 0 && !c->nx) {
            c->xx = true;
        } else if (strcasecmp(o, "keepttl") == 0 && !ex && !px) {
            c->keep_ttl = true;
        } else if ((strcasecmp(o, "ex") == 0 || strcasecmp(o, "px") == 0) && has_next &&
                   !ex && !px && !c->keep_ttl) {
            long long v;
            bool secs = tolower((unsigned char)o[0]) == 'e';
            i++;
            if (!parse_ll(c->argv[i].p, c->argv[i].n, &v)) {
                add_error(out, ERR_NOT_INT);
                return false;
            }
            if (v <= 0 || (secs && v > LLONG_MAX / 1000)) {
                add_error(out, "ERR invalid expire time in 'set' command");
                return false;
            }
            c->ttl_ms = secs ? v * 1000 : v;
            ex = secs;
            px = !secs;
        } else {
            add_error(out, ERR_SYNTAX);
            return false;
        }
    }
    return true;
}

/* --- the connection ---------------------------------------------------------- */

typedef struct conn {
    redis_lite *rl;
    evs_reader *r;
    evs_writer *w;
    buf out;   /* answers not written yet */
    bool quit; /* close after writing what is queued */
} conn;

/* Run one command; its answer goes to c->out. @return 0, or a negative
 * errno when the task must stop (cancelled while parts were out). Takes
 * argv. */
static int execute(conn *cn, int argc, arg *argv)
{
    redis_lite *rl = cn->rl;
    const command *cmd = find_command(&argv[0]);
    buf *out = &cn->out;
    evs_worker *self = evs_worker_current();
    int nworkers = atomic_load(&rl->nworkers);
    call *c;
    int rc = 0;

    if (!cmd) {
        char args[160] = "";
        size_t used = 0;
        for (int i = 1; i < argc && used < 128; i++) {
            int n = snprintf(args + used, sizeof args - used, "'%.*s' ", (int)(128 - used),
                             argv[i].p);
            if (n < 0)
                break;
            used += (size_t)n < sizeof args - used ? (size_t)n : sizeof args - used - 1;
        }
        add_error(out, "ERR unknown command '%.128s', with args beginning with: %s", argv[0].p,
                  args);
        free_args(argc, argv);
        return 0;
    }
    if ((cmd->arity > 0 && argc != cmd->arity) || argc < -cmd->arity ||
        (cmd->kind == K_PAIRS && argc % 2 == 0)) {
        add_error(out, "ERR wrong number of arguments for '%s' command", cmd->name);
        free_args(argc, argv);
        return 0;
    }
    switch (cmd->id) {
    case C_PING:
        if (argc > 2)
            add_error(out, "ERR wrong number of arguments for 'ping' command");
        else if (argc == 2)
            add_bulk(out, argv[1].p, argv[1].n);
        else
            add_simple(out, "PONG");
        free_args(argc, argv);
        return 0;
    case C_ECHO:
        add_bulk(out, argv[1].p, argv[1].n);
        free_args(argc, argv);
        return 0;
    case C_QUIT:
        add_simple(out, "OK");
        cn->quit = true;
        free_args(argc, argv);
        return 0;
    case C_COMMAND:
        cmd_command(out, argc, argv);
        free_args(argc, argv);
        return 0;
    case C_CONFIG:
        cmd_config(out, argc, argv);
        free_args(argc, argv);
        return 0;
    default:
        break;
    }

    c = calloc(1, sizeof *c);
    if (!c) {
        free_args(argc, argv);
        add_error(out, ERR_OOM);
        return 0;
    }
    atomic_init(&c->refs, 1);
    atomic_init(&c->answer, 0);
    c->rl = rl;
    c->cmd = cmd;
    c->origin = self;
    c->argc = argc;
    c->argv = argv;
    c->delta = cmd->delta;

    /* Arguments are checked here, so that a shard never sees a bad one. */
    if (cmd->id == C_SET && !parse_set_options(c, out))
        goto done;
    if (cmd->id == C_INCRBY && cmd->delta == 0) {
        if (!parse_ll(argv[2].p, argv[2].n, &c->delta)) {
            add_error(out, ERR_NOT_INT);
            goto done;
        }
        if (cmd->name[0] == 'd') {
            if (c->delta == LLONG_MIN) {
                add_error(out, "ERR decrement would overflow");
                goto done;
            }
            c->delta = -c->delta;
        }
    }
    if (cmd->id == C_EXPIRE) {
        long long secs;
        if (!parse_ll(argv[2].p, argv[2].n, &secs)) {
            add_error(out, ERR_NOT_INT);
            goto done;
        }
        if (secs > LLONG_MAX / 1000 || secs < LLONG_MIN / 1000) {
            add_error(out, "ERR invalid expire time in 'expire' command");
            goto done;
        }
        c->ttl_ms = secs * 1000;
    }
    if (make_parts(c, nworkers) < 0) {
        add_error(out, ERR_OOM);
        goto done;
    }

    /* Send the other workers' parts first, so they run while ours does. */
    for (int i = 0; i < c->nparts; i++) {
        part *p = &c->parts[i];
        p->call = c;
        if (p->worker == evs_worker_id(self))
            continue;
        atomic_fetch_add(&c->refs, 1);
        c->pending++;
        rc = evs_worker_post(evs_runtime_worker(evs_worker_runtime(self), p->worker), run_part, p);
        if (rc < 0) {
            c->pending--;
            atomic_fetch_sub(&c->refs, 1);
            add_error(&p->out, "ERR server is shutting down");
        }
    }
    for (int i = 0; i < c->nparts; i++)
        if (c->parts[i].worker == evs_worker_id(self))
            exec_part(rl->shards[evs_worker_id(self)], c, &c->parts[i]);
    rc = wait_parts(c);
    if (rc < 0)
        goto done;
    if (atomic_load(&c->answer) > rl->max_request) {
        /* Not a protocol error: the request was fine, and the connection
         * goes on (as after Redis's other refusals). */
        add_error(out, "ERR reply too large (over max_request, %zu bytes)", rl->max_request);
        goto done;
    }

    switch (cmd->kind) {
    case K_ONE:
        buf_add(out, c->parts[0].out.data, c->parts[0].out.len);
        break;
    case K_KEYS:
    case K_ALL:
        if (cmd->id == C_FLUSHALL) {
            add_simple(out, "OK");
        } else {
            long long sum = 0;
            for (int i = 0; i < c->nparts; i++)
                sum += c->parts[i].count;
            add_int(out, sum);
        }
        break;
    case K_PAIRS: {
        long long stored = 0;
        for (int i = 0; i < c->nparts; i++)
            stored += c->parts[i].count;
        if (stored == c->nkeys)
            add_simple(out, "OK");
        else
            add_error(out, ERR_OOM);
        break;
    }
    case K_MGET:
        add_array(out, c->nkeys);
        for (int i = 0; i < c->nkeys; i++)
            take_bulk(&c->parts[c->part_of_key[i]], out);
        break;
    default:
        break;
    }

done:
    call_unref(c);
    return rc;
}

/* Parse a number line of the protocol ("*3", "$5") after its prefix. */
static bool parse_count(const char *line, size_t n, long long *out)
{
    /* The line ends with "\r\n" (or "\n"); Redis takes the text before '\r'. */
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    return parse_ll(line, n, out);
}

/* Split an inline request the way Redis's sdssplitargs does: words
 * separated by spaces, "double quoted" with \n \r \t \b \a \\ \" \xHH
 * escapes, 'single quoted' with \'. @return argc, or -1 for unbalanced
 * quotes or no memory. */
static int split_inline(const char *s, size_t n, arg **out)
{
    size_t i = 0;
    int argc = 0, cap = 0;
    arg *argv = NULL;

    for (;;) {
        buf word = {0};
        bool inq = false, insq = false, done = false;

        while (i < n && isspace((unsigned char)s[i]))
            i++;
        if (i >= n)
            break;
        while (!done) {
            char ch = i < n ? s[i] : '\0';
            if (inq) {
                if (i >= n)
                    goto unbalanced;
                if (ch == '\\' && i + 3 < n && s[i + 1] == 'x' && isxdigit((unsigned char)s[i + 2]) &&
                    isxdigit((unsigned char)s[i + 3])) {
                    char hex[3] = {s[i + 2], s[i + 3], 0};
                    char b = (char)strtol(hex, NULL, 16);
                    buf_add(&word, &b, 1);
                    i += 3;
                } else if (ch == '\\' && i + 1 < n) {
                    char e = s[++i];
                    char b = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' :
                             e == 'b' ? '\b' : e == 'a' ? '\a' : e;
                    buf_add(&word, &b, 1);
                } else if (ch == '"') {
                    /* The closing quote must be followed by a space or the end. */
                    if (i + 1 < n && !isspace((unsigned char)s[i + 1]))
                        goto unbalanced;
                    done = true;
                } else {
                    buf_add(&word, &ch, 1);
                }
            } else if (insq) {
                if (i >= n)
                    goto unbalanced;
                if (ch == '\\' && i + 1 < n && s[i + 1] == '\'') {
                    i++;
                    buf_add(&word, "'", 1);
                } else if (ch == '\'') {
                    if (i + 1 < n && !isspace((unsigned char)s[i + 1]))
                        goto unbalanced;
                    done = true;
                } else {
                    buf_add(&word, &ch, 1);
                }
            } else if (i >= n || isspace((unsigned char)ch)) {
                done = true;
                continue; /* do not step over the end */
            } else if (ch == '"') {
                inq = true;
            } else if (ch == '\'') {
                insq = true;
            } else {
                buf_add(&word, &ch, 1);
            }
            if (i < n)
                i++;
        }
        buf_add(&word, "", 1); /* NUL */
        if (word.oom)
            goto fail_word;
        if (argc == cap) {
            int ncap = cap ? cap * 2 : 8;
            arg *na = realloc(argv, (size_t)ncap * sizeof *na);
            if (!na)
                goto fail_word;
            argv = na;
            cap = ncap;
        }
        argv[argc].p = word.data;
        argv[argc].n = word.len - 1;
        argc++;
        continue;
    unbalanced:
    fail_word:
        buf_free(&word);
        free_args(argc, argv);
        return -1;
    }
    *out = argv;
    return argc;
}

/* Send a protocol error and tell the caller to close, as Redis does. */
static int protocol_error(conn *cn, const char *what)
{
    add_error(&cn->out, "ERR Protocol error: %s", what);
    return -1;
}

/* Read one request. @return its argc (> 0) with *argv set, 0 at EOF,
 * -1 to close the connection. */
static int read_request(conn *cn, arg **argv_out)
{
    evs_reader *r = cn->r;

    for (;;) {
        const void *view;
        const char *line;
        ssize_t n = evs_readline(r, &view);

        if (n == EVS_ELIMIT)
            return protocol_error(cn, "too big inline request");
        if (n <= 0)
            return n == 0 ? 0 : -1;
        line = view;
        if (line[0] != '*') {
            /* Inline: one line of words. An empty one is skipped. */
            size_t len = (size_t)n;
            arg *argv;
            int argc;
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                len--;
            argc = split_inline(line, len, &argv);
            if (argc < 0)
                return protocol_error(cn, "unbalanced quotes in request");
            if (argc == 0) {
                free(argv);
                continue;
            }
            *argv_out = argv;
            return argc;
        }

        long long count;
        if (!parse_count(line + 1, (size_t)n - 1, &count) || count > MAX_MULTIBULK)
            return protocol_error(cn, "invalid multibulk length");
        if (count <= 0)
            continue; /* "*0" or "*-1": nothing to do, no answer */
        arg *argv = calloc((size_t)count, sizeof *argv);
        size_t total = 0; /* argument bytes of this command so far */
        if (!argv)
            return -1;
        for (long long i = 0; i < count; i++) {
            long long len;
            n = evs_readline(r, &view);
            line = view;
            if (n <= 0 || n == EVS_ELIMIT) {
                free_args((int)i, argv);
                return n == EVS_ELIMIT ? protocol_error(cn, "invalid bulk length") : -1;
            }
            if (line[0] != '$') {
                char what[64];
                snprintf(what, sizeof what, "expected '$', got '%c'", line[0]);
                free_args((int)i, argv);
                return protocol_error(cn, what);
            }
            if (!parse_count(line + 1, (size_t)n - 1, &len) || len < 0 ||
                (unsigned long long)len > cn->rl->max_bulk) {
                free_args((int)i, argv);
                return protocol_error(cn, "invalid bulk length");
            }
            /* Refused on the declared length, before it is allocated. */
            if ((size_t)len > cn->rl->max_request - total) {
                free_args((int)i, argv);
                return protocol_error(cn, "too big request");
            }
            total += (size_t)len;
            argv[i].p = malloc((size_t)len + 2);
            if (!argv[i].p) {
                free_args((int)i, argv);
                return -1;
            }
            n = evs_readexactly(r, argv[i].p, (size_t)len + 2);
            if (n != len + 2) {
                free_args((int)i + 1, argv);
                return -1;
            }
            argv[i].p[len] = '\0'; /* over the CR: args are C strings too */
            argv[i].n = (size_t)len;
        }
        *argv_out = argv;
        return (int)count;
    }
}

/* Write the queued answers; drain only when no request is waiting in the
 * reader, so pipelined answers go out together. @return 0 or an error. */
static int flush(conn *cn, bool drain)
{
    if (cn->out.oom)
        return -ENOMEM;
    if (cn->out.len) {
        int rc = evs_write(cn->w, cn->out.data, cn->out.len);
        cn->out.len = 0;
        if (rc < 0)
            return rc;
    }
    if (cn->out.cap > 1024 * 1024) {
        buf_free(&cn->out); /* don't keep a huge MGET answer's buffer */
    }
    return drain ? evs_drain(cn->w) : 0;
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    conn cn = {.rl = state, .r = r, .w = w};

    for (;;) {
        arg *argv;
        int argc = read_request(&cn, &argv);

        if (argc <= 0)
            break;
        if (execute(&cn, argc, argv) < 0 || cn.quit)
            break;
        /* Answers wait while more requests are buffered (pipelining), up
         * to 64k; the drain bounds what a client that does not read can
         * make us hold. */
        if ((evs_reader_buffered(r) == 0 || cn.out.len >= 64 * 1024) && flush(&cn, true) < 0)
            break;
    }
    flush(&cn, false); /* the last answers (QUIT's OK, a protocol error) */
    buf_free(&cn.out);
}

/* --- life cycle ----------------------------------------------------------------- */

static int init(evs_settings *s, void **state)
{
    redis_lite *rl;
    uint64_t max_bulk = 16 * 1024 * 1024, max_request = 0, max_memory = 1024 * 1024 * 1024;
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "max_bulk") != 0 && strcmp(key, "max_request") != 0 &&
            strcmp(key, "max_memory") != 0)
            return evs_settings_fail(
                s, "unknown setting '%s' (expected max_bulk, max_request, max_memory)", key);
    }
    if ((rc = evs_settings_get_size(s, "max_bulk", &max_bulk)) < 0 && rc != -ENOENT)
        return rc;
    if (max_bulk < 1 || max_bulk > 512 * 1024 * 1024)
        return evs_settings_fail(s, "max_bulk must be between 1 and 512M");
    /* Not given, it follows a raised max_bulk rather than make that
     * setting alone an error. */
    rc = evs_settings_get_size(s, "max_request", &max_request);
    if (rc == -ENOENT)
        max_request = max_bulk > 64 * 1024 * 1024 ? max_bulk : 64 * 1024 * 1024;
    else if (rc < 0)
        return rc;
    /* Below max_bulk, the largest argument could never be sent. */
    if (max_request < max_bulk || max_request > 1024 * 1024 * 1024)
        return evs_settings_fail(s, "max_request must be between max_bulk and 1G");
    if ((rc = evs_settings_get_size(s, "max_memory", &max_memory)) < 0 && rc != -ENOENT)
        return rc;
    if (max_memory < 1024 * 1024 || max_memory > SIZE_MAX / 2)
        return evs_settings_fail(s, "max_memory must be at least 1M");
    pthread_once(&sip_key_once, sip_key_init);
    rl = calloc(1, sizeof *rl);
    if (!rl)
        return -ENOMEM;
    rl->max_bulk = (size_t)max_bulk;
    rl->max_request = (size_t)max_request;
    rl->max_memory = (size_t)max_memory;
    *state = rl;
    return 0;
}

static int worker_start(evs_worker *w, void *state)
{
    redis_lite *rl = state;
    int id = evs_worker_id(w);
    int nworkers = evs_runtime_worker_count(evs_worker_runtime(w));

    if (id < 0 || id >= MAX_WORKERS)
        return -EINVAL;
    atomic_store(&rl->nworkers, nworkers);
    /* Keys spread evenly over the shards (a secret hash), so each shard
     * gets an equal part of the bound and none has to ask the others. */
    rl->shards[id] = shard_new(rl->max_memory / (size_t)nworkers);
    return rl->shards[id] ? 0 : -ENOMEM;
}

static void worker_stop(evs_worker *w, void *state)
{
    redis_lite *rl = state;
    int id = evs_worker_id(w);

    shard_free(rl->shards[id]);
    rl->shards[id] = NULL;
}

static void fini(void *state)
{
    free(state);
}

EVS_PLUGIN_DEFINE(.name = "redis_lite", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini,
                  .worker_start = worker_start, .worker_stop = worker_stop);
