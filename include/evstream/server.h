/**
 * @file evstream/server.h
 * Servers (the seed's start_server / start_unix_server): listening sockets
 * on the runtime's acceptor thread whose connections go to the workers,
 * served either in stream mode (a task runs client_connected(reader,
 * writer)) or in protocol mode (an evs_protocol per connection).
 */
#ifndef EVSTREAM_SERVER_H
#define EVSTREAM_SERVER_H

#include <sys/socket.h>

#include <evstream/common.h>
#include <evstream/tls.h>
#include <evstream/transport.h>
#include <evstream/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Stream-mode handler, run as a task on the connection's worker. When it
 * returns, the writer is closed (buffered bytes are still flushed) and the
 * pair is released: do not keep @p r or @p w.
 */
typedef void (*evs_client_connected_cb)(evs_reader *r, evs_writer *w, void *arg);

/** A finished connection, for access logs (see connection_closed). Valid
 *  during the callback only. */
typedef struct evs_connection_info {
    const struct sockaddr *peer; /**< the client's address (may be NULL if unknown) */
    socklen_t peerlen;
    double duration;             /**< seconds from accept to close */
    uint64_t bytes_in;           /**< bytes read from the socket (ciphertext under TLS) */
    uint64_t bytes_out;          /**< bytes written to the socket */
    int error;                   /**< what connection_lost reports: 0 or a negative errno */
    const char *tls_version;     /**< NULL: plaintext, or no completed handshake */
    const char *tls_cipher;
    const char *tls_error;       /**< why a handshake failed, or NULL */
    int worker;                  /**< the worker's id */
} evs_connection_info;

/** Server options. Zero-initialise, then set the handler and the address. */
typedef struct evs_server_options {
    /* Handler: exactly one of client_connected and protocol. */
    evs_client_connected_cb client_connected; /**< stream mode */
    const evs_protocol *protocol;             /**< protocol mode */
    void *arg; /**< passed to client_connected, or as ctx to connection_made */

    /* Address (TCP). */
    const char *host;         /**< one host or address; NULL or "" = all interfaces */
    const char *const *hosts; /**< or several (nhosts of them) */
    size_t nhosts;
    uint16_t port; /**< 0 = any free port (read it back with evs_server_port()) */

    /* Address (Unix, for evs_start_unix_server). */
    const char *path; /**< a filesystem path, or "@name" for Linux's abstract namespace */
    unsigned mode;    /**< file mode of the socket (e.g. 0660); 0 = leave as created */

    /** Already listening sockets instead of an address (nfds of them),
     *  taken over by the server (e.g. from evs_server_take_sockets() or
     *  systemd). For evs_start_unix_server, @p path may name the socket file
     *  so that closing the server removes it. */
    const int *fds;
    size_t nfds;

    int backlog;        /**< listen() backlog; 0 = 100 (asyncio's default) */
    bool no_reuse_address; /**< do not set SO_REUSEADDR (set by default, as asyncio does) */
    bool reuse_port;    /**< SO_REUSEPORT, and one socket per worker on the same port,
                             each accepted from by its worker (no hand-off from the
                             acceptor thread; the kernel spreads connections by hash) */
    bool defer_serving; /**< the seed's start_serving=False: listen but do not
                             accept until evs_server_start_serving() */
    size_t limit;       /**< reader limit; 0 = 64 KiB */
    /** Write watermarks with evs_transport_set_write_buffer_limits()'s rules:
     *  both 0 = 64 KiB / 16 KiB; only high = low is high / 4; only low =
     *  high is 4 x low. */
    size_t write_high_water;
    size_t write_low_water; /**< see write_high_water */
    size_t max_connections;  /**< this server's live connections; 0 = no limit of its own.
                                  At the limit it stops accepting until one closes. */
    /** Keep this server out of the runtime's max_connections: its
     *  connections are not counted there, and it goes on accepting when the
     *  runtime is at that limit (e.g. an admin or health-check listener,
     *  which must answer exactly when the others are full). Its own
     *  max_connections still applies; set one to bound it. */
    bool no_runtime_limit;
    double idle_timeout;     /**< abort a connection with no progress either way for this
                                  many seconds (connection_lost(-ETIMEDOUT)); 0 = never */
    /** Every connection's timeouts (see evs_timeouts; idle_timeout above
     *  is used when timeouts.idle is 0). A plugin may change a connection's
     *  own with evs_transport_set_timeouts(). */
    evs_timeouts timeouts;
    /** Cap on a connection's queued bytes (-ENOBUFS and abort past it); 0 = none. */
    size_t max_write_buffer;
    /** Live connections per client address (an IPv4 address or an IPv6
     *  /64); 0 = no limit. Over it, a connection is closed at once. */
    size_t max_connections_per_ip;
    /** New connections per second per client address (token bucket);
     *  0 = no limit. */
    double connection_rate_per_ip;
    double connection_burst_per_ip; /**< bucket size; 0 = max(1, rate) */
    /** Sent (best effort) to a connection refused by a per-address limit
     *  before it is closed, e.g. "-ERR too many connections\r\n"; NULL = nothing. */
    const char *reject_message;
    /** TLS: a server context (evs_tls_server_context_new); the server takes a
     *  reference. The handler runs (connection_made is called) once the
     *  handshake is done; failed handshakes are counted, not handed over. */
    evs_tls_context *tls;
    double tls_handshake_timeout; /**< 0 = 60 s */
    double tls_shutdown_timeout;  /**< 0 = 30 s */
    /** PROXY protocol (v1 and v2): every connection must start with a
     *  PROXY header, accepted only from a peer in proxy_trusted (CIDRs such
     *  as "127.0.0.1/32", "10.0.0.0/8", "::1/128"; required for TCP; on Unix
     *  sockets every peer is trusted). Untrusted peers, malformed headers and
     *  headers not complete within proxy_timeout are closed. Then
     *  evs_transport_get_peername() gives the real client and
     *  evs_transport_get_proxy_peername() the proxy. */
    bool proxy_protocol;
    const char *const *proxy_trusted;
    size_t nproxy_trusted; /**< entries in proxy_trusted */
    double proxy_timeout;  /**< seconds for the header; 0 = 5 */
    /** Called on the worker when a connection of this server ends (for
     *  access logs); may be NULL. */
    void (*connection_closed)(const evs_connection_info *info, void *arg);
    void *connection_closed_arg;
    /** The server this one replaces on a reload (it took over its sockets
     *  with fds): its max_connections and per-address limits count the
     *  connections still open there too (those the predecessor counted:
     *  with no per-address limit there, none per address), and a close
     *  there lets this one accept again. Once this one serves, its
     *  connection rate fills the shared per-address buckets. Close the
     *  predecessor or take its sockets first: while both serve, one at
     *  its max_connections pauses both. Same runtime, not freed yet;
     *  NULL = a fresh count. */
    evs_server *predecessor;
} evs_server_options;

/** A server's counters (a snapshot). Bytes are counted when a connection
 *  ends. */
typedef struct evs_server_stats {
    uint64_t accepted;
    uint64_t active;
    uint64_t closed;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t tls_handshakes; /**< completed */
    uint64_t tls_failed;     /**< failed or timed out */
    uint64_t tls_resumed;
    uint64_t proxy_rejected; /**< untrusted peer, bad or late PROXY header */
    uint64_t rejected_per_ip; /**< over max_connections_per_ip */
    uint64_t rejected_rate;   /**< over connection_rate_per_ip */
} evs_server_stats;

/**
 * Bind and listen on TCP addresses (every address @p host resolves to) and
 * serve connections on @p rt's workers.
 * @param out receives the server, owned by the runtime (freed by
 *        evs_runtime_stop()); may be NULL.
 * @return 0; -EINVAL (bad options); -EADDRINUSE, -EACCES, ... from bind;
 *         -ENOENT / -EAI_* mapped to -EHOSTUNREACH for unknown hosts.
 * Thread: any thread but a worker of @p rt (name resolution blocks).
 */
EVS_EXTERN int evs_start_server(evs_runtime *rt, const evs_server_options *opts,
                                evs_server **out);

/**
 * Like evs_start_server() on a Unix stream socket at opts->path. A stale
 * socket file (nobody listening) is replaced; a socket somebody listens on
 * is refused with -EADDRINUSE, and a path that is not a socket (a file, a
 * directory, a symbolic link) with -EEXIST, and left alone.
 */
EVS_EXTERN int evs_start_unix_server(evs_runtime *rt, const evs_server_options *opts,
                                     evs_server **out);

/** Start accepting (after defer_serving). Idempotent. Any thread.
 *  @return 0, or -EBADF once the server is closed. */
EVS_EXTERN int evs_server_start_serving(evs_server *s);
/** True while accepting. Any thread. */
EVS_EXTERN bool evs_server_is_serving(const evs_server *s);

/**
 * Stop listening and close the listening sockets (a Unix socket file is
 * removed). Live connections go on. Idempotent. Any thread.
 */
EVS_EXTERN void evs_server_close(evs_server *s);

/**
 * Wait until the server is closed (its listening sockets too, unless
 * evs_server_take_sockets handed them over) and all its connections have
 * ended. In a task it parks; elsewhere it blocks the thread.
 * @return 0, -ECANCELED / -ETIMEDOUT in a task, or -EDEADLK on a worker
 *         outside a task (its loop could not close what it waits for).
 */
EVS_EXTERN int evs_server_wait_closed(evs_server *s);

/**
 * Stop serving and hand the listening sockets to the caller, for a reload:
 * a new server adopts them with opts.fds, so connections waiting in the
 * kernel's queue are not lost. The Unix socket file stays. Live
 * connections go on. Called outside the workers, it returns once no
 * thread watches the sockets any more, so the caller may close them; on a
 * worker, the workers owning reuse_port sockets let go of them when they
 * next run their loops. @return how many fds there are (at most @p n
 * stored; the caller owns the stored ones). Thread: any but the acceptor.
 */
EVS_EXTERN size_t evs_server_take_sockets(evs_server *s, int *fds, size_t n);

/**
 * Free a server once it is closed and done with: its last connection has
 * ended and its last stream handler has returned. Closes it first if it
 * is not. A program that starts and closes servers for a long time (a
 * reload) calls it to give their memory back; evs_runtime_stop() frees
 * the others. It waits for the acceptor and every worker to run what was
 * posted to them before, so call it from a thread that is none of them,
 * and not while evs_runtime_stop() runs.
 * @return 0 (@p s is gone), -EBUSY (connections or handlers remain:
 * call again later), -EDEADLK (called on a worker or the acceptor) or
 * -ESHUTDOWN (the runtime is stopping; it frees @p s).
 */
EVS_EXTERN int evs_server_free(evs_server *s);

/** The listening fds (the seed's Server.sockets). @return how many there
 *  are (at most @p n are stored). Any thread. */
EVS_EXTERN size_t evs_server_sockets(const evs_server *s, int *fds, size_t n);
/** The bound TCP port of the first socket (0 for Unix). Any thread. */
EVS_EXTERN uint16_t evs_server_port(const evs_server *s);
/** The server's counters. Any thread. */
EVS_EXTERN void evs_server_stats_get(const evs_server *s, evs_server_stats *out);

/** Live connections of this server. Any thread. */
EVS_EXTERN size_t evs_server_connections(const evs_server *s);

#ifdef __cplusplus
}
#endif
#endif
