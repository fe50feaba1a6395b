/*
 * udp_echo - a datagram plugin: every datagram is sent back to where it
 * came from. With a udp: listener each worker has its own socket on the
 * same port (SO_REUSEPORT), so the kernel spreads the datagrams across the
 * workers; a unixgram: listener has one socket, on the first worker.
 *
 * Flow control: an answer the socket has no room for is queued by the
 * endpoint. Past the high watermark pause_writing stops reading until the
 * queue drains (resume_writing), as examples/echo_protocol does for a
 * stream: the kernel then drops what the socket cannot hold, which is
 * what UDP promises, instead of this process queueing an answer per
 * datagram without bound.
 *
 * Loops: a datagram from a port this process serves udp_echo on (any
 * listener's, from any address) is dropped. Forged to come from the
 * endpoint's own address, its answer would come back to one of the
 * workers' sockets as a new datagram from that address, and so on
 * forever; from another udp_echo listener, here or on another host on the
 * same port, the two would answer each other forever (one forged datagram
 * kept a core busy). A peer that sends from an echo port is most likely
 * another echo service, the other half of the classic echo loop. For the
 * same reason a datagram from a port below 1024 is dropped: clients send
 * from ephemeral ports, while the well-known ports belong to services
 * (echo, chargen, daytime, DNS...) that answer what they are sent. A datagram forged to come from one of
 * them would make this server and that one answer each other for ever.
 * (Source port 0 cannot be answered at all.) What no rule here can tell
 * from a client is another echo service on an unrelated high port: UDP
 * echo answers forged sources by design, so serve it to trusted networks.
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   echo hello | nc -u -w1 127.0.0.1 8895
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

#define MAX_WORKERS 4096 /* the runtime's own maximum */

typedef struct own_address {
    struct sockaddr_storage addr;
    socklen_t len; /* 0: unknown, nothing is dropped */
} own_address;

typedef struct udp_echo {
    /* own[i] belongs to worker i: made, written and freed on its thread. */
    own_address *own[MAX_WORKERS];
} udp_echo;

/* The ports udp_echo listens on in this process, every listener's,
 * written once by each endpoint's worker and read by all: atomics. Never
 * emptied: a port a reload let go of stays suspect, which costs nothing. */
#define MAX_ECHO_PORTS 64
static _Atomic uint16_t echo_ports[MAX_ECHO_PORTS];

static void note_echo_port(uint16_t port)
{
    for (int i = 0; i < MAX_ECHO_PORTS && port != 0; i++) {
        uint16_t seen = 0;
        if (atomic_compare_exchange_strong(&echo_ports[i], &seen, port) || seen == port)
            return;
    }
    /* Full: the endpoint's own port is still checked (from_self). */
}

static uint16_t port_of(const struct sockaddr *a)
{
    switch (a->sa_family) {
    case AF_INET:
        return ntohs(((const struct sockaddr_in *)(const void *)a)->sin_port);
    case AF_INET6:
        return ntohs(((const struct sockaddr_in6 *)(const void *)a)->sin6_port);
    default:
        return 0;
    }
}

/* Whether @a is an IP address on a port udp_echo serves here. */
static bool from_echo_port(const struct sockaddr *a)
{
    uint16_t port = port_of(a);

    for (int i = 0; i < MAX_ECHO_PORTS && port != 0; i++) {
        uint16_t p = atomic_load(&echo_ports[i]);
        if (p == 0)
            return false;
        if (p == port)
            return true;
    }
    return false;
}

/* Whether @a is an IP address on a well-known port (or port 0). */
static bool from_service_port(const struct sockaddr *a)
{
    return (a->sa_family == AF_INET || a->sa_family == AF_INET6) && port_of(a) < 1024;
}

/* Whether a datagram from @a came from the endpoint @own: its port (from
 * any address), or its path. */
static bool from_self(const own_address *own, const struct sockaddr *a, socklen_t alen)
{
    const struct sockaddr *o;

    if (!own || own->len == 0 || a->sa_family != own->addr.ss_family)
        return false;
    o = (const struct sockaddr *)&own->addr;
    switch (o->sa_family) {
    case AF_INET:
    case AF_INET6:
        return port_of(a) == port_of(o); /* any address: see the top */
    case AF_UNIX:
        /* Only our socket can send from its own path. */
        return alen == own->len && memcmp(a, o, alen) == 0;
    default:
        return false;
    }
}

static void connection_made(evs_datagram *d, void *ctx)
{
    udp_echo *ue = ctx;
    own_address *own = ue->own[evs_worker_id(evs_datagram_worker(d))];

    /* Once per endpoint, not a getsockname() per datagram. */
    if (own && evs_datagram_get_sockname(d, &own->addr, &own->len) < 0)
        own->len = 0;
    if (own && own->len > 0)
        note_echo_port(port_of((const struct sockaddr *)&own->addr));
}

static void datagram_received(evs_datagram *d, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen, void *ctx)
{
    udp_echo *ue = ctx;

    /* An unnamed Unix peer (addrlen 0) cannot be answered. */
    if (addrlen == 0)
        return;
    if (from_self(ue->own[evs_worker_id(evs_datagram_worker(d))], addr, addrlen) ||
        from_echo_port(addr)) {
        evs_log(EVS_LOG_DEBUG, "udp_echo: dropped a datagram from an echo port");
        return;
    }
    if (from_service_port(addr)) {
        evs_log(EVS_LOG_DEBUG, "udp_echo: dropped a datagram from a well-known port");
        return;
    }
    evs_datagram_sendto(d, data, len, addr, addrlen);
}

static void error_received(evs_datagram *d, int err, void *ctx)
{
    (void)d;
    (void)ctx;
    /* ICMP errors about earlier answers: nothing to do but note them. */
    evs_log(EVS_LOG_DEBUG, "udp_echo: %s", evs_strerror(err));
}

static void pause_writing(evs_datagram *d, void *ctx)
{
    (void)ctx;
    evs_datagram_pause_reading(d);
}

static void resume_writing(evs_datagram *d, void *ctx)
{
    (void)ctx;
    evs_datagram_resume_reading(d);
}

static int init(evs_settings *s, void **state)
{
    if (evs_settings_count(s) > 0)
        return evs_settings_fail(s, "unknown setting '%s' (udp_echo takes none)",
                                 evs_settings_key(s, 0));
    *state = calloc(1, sizeof(udp_echo));
    return *state ? 0 : -ENOMEM;
}

/* Before the worker's endpoint exists (evstreamd starts the workers of an
 * instance before its listener). */
static int worker_start(evs_worker *w, void *state)
{
    udp_echo *ue = state;
    int id = evs_worker_id(w);

    if (id < 0 || id >= MAX_WORKERS)
        return -EINVAL;
    ue->own[id] = calloc(1, sizeof *ue->own[id]);
    return ue->own[id] ? 0 : -ENOMEM;
}

static void worker_stop(evs_worker *w, void *state)
{
    udp_echo *ue = state;
    int id = evs_worker_id(w);

    if (id < 0 || id >= MAX_WORKERS)
        return; /* worker_start refused it */
    free(ue->own[id]);
    ue->own[id] = NULL;
}

static void fini(void *state)
{
    free(state);
}

static const evs_datagram_protocol udp_echo_protocol = {
    .connection_made = connection_made,
    .datagram_received = datagram_received,
    .error_received = error_received,
    .pause_writing = pause_writing,
    .resume_writing = resume_writing,
};

EVS_PLUGIN_DEFINE(.name = "udp_echo", .mode = EVS_PLUGIN_DATAGRAM,
                  .datagram = &udp_echo_protocol, .init = init, .fini = fini,
                  .worker_start = worker_start, .worker_stop = worker_stop);
