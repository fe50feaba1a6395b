/**
 * @file evstream/datagram.h
 * Datagram endpoints: asyncio's DatagramTransport and DatagramProtocol
 * (create_datagram_endpoint) for UDP over IPv4 and IPv6 and for Unix
 * datagram sockets, bound (server side), connected to a remote address
 * (client side), or both.
 *
 * State machine: connection_made -> (datagram_received | error_received)*
 * -> connection_lost, connection_made and connection_lost exactly once;
 * nothing is called after connection_lost, which never runs inside the
 * call that caused it.
 *
 * Sending: evs_datagram_sendto() tries the socket at once and queues the
 * datagram (with its address) only when the socket has no room (EAGAIN);
 * a write event sends the queue in order. A datagram the interface's queue
 * drops (ENOBUFS) is reported to error_received, as asyncio does: the
 * socket stays writable, so waiting could not help. The write buffer size
 * is the bytes of the queued datagrams; pause_writing is called when it
 * goes strictly above the high watermark, resume_writing when it drains to
 * or below the low one (the stream transport's rules and defaults). An
 * unconnected Unix datagram socket is the exception: there EAGAIN means
 * that the receiver's queue is full (it does not read), which waiting on
 * our socket cannot tell, so that datagram is dropped and reported to
 * error_received(-EAGAIN) instead of holding up every other receiver's.
 *
 * Errors (the seed's rules): a failed send or receive for one datagram is
 * reported to error_received and the endpoint goes on; it is not lost.
 * ICMP errors are reported where Linux reports them: the socket is set up
 * with IP_RECVERR / IPV6_RECVERR, so "port unreachable" and friends reach
 * error_received (e.g. -ECONNREFUSED) once each, for connected and
 * unconnected UDP sockets alike (IPv4 peers of an IPv6 socket too). Such
 * an error never costs a datagram to another peer: Linux also leaves it
 * pending on the socket, where it would fail the next sendto() whatever
 * its address, so a send that fails with it is tried again. A datagram larger than the send limit gives
 * error_received(-EMSGSIZE).
 *
 * Received datagrams larger than the receive buffer (max_datagram, 64 KiB
 * by default, enough for any UDP datagram; Unix datagrams may be bigger)
 * are not delivered truncated: they are dropped and error_received(
 * -EMSGSIZE) is called, so a protocol never parses a cut datagram as if it
 * were whole.
 *
 * Thread: every function runs on the endpoint's worker.
 */
#ifndef EVSTREAM_DATAGRAM_H
#define EVSTREAM_DATAGRAM_H

#include <sys/socket.h>

#include <evstream/common.h>
#include <evstream/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A datagram endpoint (DatagramTransport). */
typedef struct evs_datagram evs_datagram;

/** DatagramProtocol. Zero-initialise and fill what you need. */
typedef struct evs_datagram_protocol {
    /** The endpoint is ready. */
    void (*connection_made)(evs_datagram *d, void *ctx);
    /** One datagram (possibly empty) from @p addr (@p addrlen bytes; 0 for
     *  an unnamed Unix peer). Both are valid only during the call. */
    void (*datagram_received)(evs_datagram *d, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen, void *ctx);
    /** A send or receive failed (negative errno: -ECONNREFUSED for an ICMP
     *  port unreachable, -EMSGSIZE, -EHOSTUNREACH...). The endpoint lives on. */
    void (*error_received)(evs_datagram *d, int err, void *ctx);
    /** The endpoint is closed: 0 after close/abort, or a fatal error. The
     *  endpoint is freed after this returns. */
    void (*connection_lost)(evs_datagram *d, int err, void *ctx);
    /** The queued bytes went strictly above the high watermark. */
    void (*pause_writing)(evs_datagram *d, void *ctx);
    /** The queued bytes drained to or below the low watermark. */
    void (*resume_writing)(evs_datagram *d, void *ctx);
} evs_datagram_protocol;

/** Where an endpoint lives (create_datagram_endpoint's arguments). */
typedef struct evs_datagram_options {
    /** Bind here (server side), or NULL: an IP socket then gets an
     *  ephemeral port on send; a Unix one stays unnamed (cannot receive
     *  replies). A Unix path that exists as a socket is replaced. */
    const struct sockaddr *local_addr;
    socklen_t local_addrlen;
    /** Connect here (client side), or NULL. A connected endpoint only
     *  receives from this address, and sendto() to another one fails. */
    const struct sockaddr *remote_addr;
    socklen_t remote_addrlen;
    bool reuse_port;      /**< SO_REUSEPORT (one port served by several workers) */
    bool allow_broadcast; /**< SO_BROADCAST */
    /** The largest datagram received whole; 0 = 65536, at most 16 MiB
     *  (-EINVAL above: the receive buffer is this size). */
    size_t max_datagram;
} evs_datagram_options;

/**
 * Create an endpoint on the calling worker: a socket of the family of
 * local_addr (or remote_addr), bound and/or connected, then call
 * connection_made before returning.
 * @return 0, -EINVAL (no address, mismatched families, not on a worker),
 *         -ESHUTDOWN (the worker is stopping), or the socket/bind/connect
 *         error.
 */
EVS_EXTERN int evs_datagram_open(const evs_datagram_options *opts,
                                 const evs_datagram_protocol *proto, void *ctx,
                                 evs_datagram **out);

/**
 * Wrap an existing datagram socket (the seed's sock=...): bound and/or
 * connected already. Owned from now on, closed on failure (-ESHUTDOWN
 * too: the worker is stopping).
 * @param max_datagram 0 = 65536.
 */
EVS_EXTERN int evs_datagram_new(int fd, size_t max_datagram, const evs_datagram_protocol *proto,
                                void *ctx, evs_datagram **out);

/**
 * sendto(data, addr): send one datagram to @p addr, or (addr NULL) to the
 * connected remote address. Never blocks; the bytes are copied when queued.
 * @return 0 (the datagram was sent or queued; a per-datagram failure such
 *         as -EMSGSIZE or -ECONNREFUSED goes to error_received, as in the
 *         seed); -EPIPE after close(); -EDESTADDRREQ without an address on
 *         an unconnected endpoint; -EISCONN for an address other than the
 *         remote one on a connected endpoint; -EINVAL for a bad address;
 *         the endpoint's fatal error once it is lost.
 */
EVS_EXTERN int evs_datagram_sendto(evs_datagram *d, const void *data, size_t len,
                                   const struct sockaddr *addr, socklen_t addrlen);

/** Send the queued datagrams, then call connection_lost(0) (never from
 *  inside this call). Receiving stops at once. Idempotent. */
EVS_EXTERN void evs_datagram_close(evs_datagram *d);
/** Close at once, dropping queued datagrams; connection_lost(0) follows. */
EVS_EXTERN void evs_datagram_abort(evs_datagram *d);
/** True once close() or abort() was called or the endpoint was lost. */
EVS_EXTERN bool evs_datagram_is_closing(const evs_datagram *d);

/** Stop / resume delivering datagrams (idempotent). */
EVS_EXTERN void evs_datagram_pause_reading(evs_datagram *d);
EVS_EXTERN void evs_datagram_resume_reading(evs_datagram *d);
EVS_EXTERN bool evs_datagram_is_reading(const evs_datagram *d);

/** Bytes of the datagrams queued and not yet sent. */
EVS_EXTERN size_t evs_datagram_get_write_buffer_size(const evs_datagram *d);
/** Watermarks, with evs_transport_set_write_buffer_limits()'s rules. */
EVS_EXTERN int evs_datagram_set_write_buffer_limits(evs_datagram *d, ssize_t high, ssize_t low);
EVS_EXTERN void evs_datagram_get_write_buffer_limits(const evs_datagram *d, size_t *low,
                                                     size_t *high);

/** Switch to another protocol (and context) from now on. */
EVS_EXTERN void evs_datagram_set_protocol(evs_datagram *d, const evs_datagram_protocol *proto,
                                          void *ctx);
EVS_EXTERN const evs_datagram_protocol *evs_datagram_get_protocol(const evs_datagram *d,
                                                                  void **ctx);

/** Extra info "socket": the fd, or -1 once closed. */
EVS_EXTERN int evs_datagram_get_fd(const evs_datagram *d);
/** Extra info "sockname". @return 0 or a negative errno. */
EVS_EXTERN int evs_datagram_get_sockname(const evs_datagram *d, struct sockaddr_storage *addr,
                                         socklen_t *len);
/** Extra info "peername": the remote address. @return 0, or -ENOTCONN on
 *  an unconnected endpoint. */
EVS_EXTERN int evs_datagram_get_peername(const evs_datagram *d, struct sockaddr_storage *addr,
                                         socklen_t *len);
/** The worker that owns the endpoint. */
EVS_EXTERN evs_worker *evs_datagram_worker(const evs_datagram *d);

#ifdef __cplusplus
}
#endif
#endif
