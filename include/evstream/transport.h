/**
 * @file evstream/transport.h
 * Transports: asyncio's Transport for stream sockets (TCP, Unix, socketpair).
 *
 * write() tries the socket at once and queues only what the kernel did not
 * take; a write event drains the queue. Flow control follows the seed: the
 * protocol's pause_writing is called when the buffer goes strictly above the
 * high watermark, resume_writing when it drains to or below the low one.
 *
 * Thread: every function must be called on the transport's worker thread.
 * A transport is valid from connection_made until connection_lost returns.
 */
#ifndef EVSTREAM_TRANSPORT_H
#define EVSTREAM_TRANSPORT_H

#include <sys/socket.h>
#include <sys/uio.h>

#include <evstream/common.h>
#include <evstream/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default high write watermark (asyncio's). */
#define EVS_WRITE_HIGH_WATER_DEFAULT (64u * 1024u)
/** Default low write watermark (asyncio's). */
#define EVS_WRITE_LOW_WATER_DEFAULT (16u * 1024u)

/**
 * Wrap a connected stream socket in a transport on the calling worker and
 * call @p proto's connection_made (the seed's connect_accepted_socket).
 * The fd is made non-blocking; the transport owns it from now on, even on
 * failure (it is closed then).
 * @param out receives the transport (may be NULL). The transport belongs to
 *        the worker and is freed after connection_lost.
 * @return 0, -EINVAL (no protocol, not on a worker), -ESHUTDOWN (the
 *         worker is stopping: @p fd is closed), or a negative errno.
 * Thread: a worker (or evs_run()'s loop).
 */
EVS_EXTERN int evs_transport_new(int fd, const evs_protocol *proto, void *ctx,
                                 evs_transport **out);

/**
 * Queue @p len bytes; never blocks. Bytes are copied.
 * @return 0; -EPIPE after close() or write_eof() (nothing is queued);
 *         the connection's error once it is lost.
 */
EVS_EXTERN int evs_transport_write(evs_transport *t, const void *data, size_t len);
/** write() of several buffers in order, with one writev() when possible. */
EVS_EXTERN int evs_transport_writelines(evs_transport *t, const struct iovec *iov, int iovcnt);
/** Close the write side after the buffered bytes are flushed. Reading goes on.
 *  @return 0 (idempotent), -EPIPE after close(), -ENOTSUP on TLS (no
 *  half-close over TLS, as in asyncio). */
EVS_EXTERN int evs_transport_write_eof(evs_transport *t);
/** True for plain socket transports; false once TLS is on. */
EVS_EXTERN bool evs_transport_can_write_eof(const evs_transport *t);
/** Stop reading, flush the buffered bytes, then call connection_lost(0)
 *  (never from inside this call). Idempotent. */
EVS_EXTERN void evs_transport_close(evs_transport *t);
/** Close at once, dropping buffered bytes; connection_lost(0) follows
 *  (never from inside this call). Idempotent. */
EVS_EXTERN void evs_transport_abort(evs_transport *t);
/** True once close() or abort() was called or the connection was lost. */
EVS_EXTERN bool evs_transport_is_closing(const evs_transport *t);

/** Stop delivering data (idempotent; a no-op once closing). */
EVS_EXTERN void evs_transport_pause_reading(evs_transport *t);
/** Deliver data again (idempotent). */
EVS_EXTERN void evs_transport_resume_reading(evs_transport *t);
/** True while the transport receives data: not paused, not closing. */
EVS_EXTERN bool evs_transport_is_reading(const evs_transport *t);

/** Bytes queued and not yet accepted by the kernel. */
EVS_EXTERN size_t evs_transport_get_write_buffer_size(const evs_transport *t);
/** Current watermarks; either pointer may be NULL. */
EVS_EXTERN void evs_transport_get_write_buffer_limits(const evs_transport *t, size_t *low,
                                                      size_t *high);
/**
 * Set the watermarks with the seed's rules: a negative value means "not
 * given". Neither given: 64 KiB / 16 KiB. Only high given: low = high / 4.
 * Only low given: high = 4 * low. high == 0 forces low to 0 and pauses
 * whenever the buffer is non-empty; low == 0 resumes only once it is empty.
 * The protocol is paused at once if the buffer is already above high.
 * @return 0, or -EINVAL when low > high (nothing changes).
 */
EVS_EXTERN int evs_transport_set_write_buffer_limits(evs_transport *t, ssize_t high,
                                                     ssize_t low);

/**
 * Timeouts of a connection, in seconds; 0 = none. A connection that runs
 * into one is aborted with connection_lost(-ETIMEDOUT) (parked stream calls
 * return -ETIMEDOUT).
 */
typedef struct evs_timeouts {
    double idle;       /**< no byte moved in either direction */
    double first_byte; /**< no byte received since the connection started */
    double read;       /**< no byte received while reading (from the last byte or
                            the last resume_reading: time paused does not count);
                            counts from the first byte on: before it,
                            first_byte applies */
    double write;      /**< bytes queued but none taken by the peer (it stopped reading) */
    double lifetime;   /**< total time since the connection started */
} evs_timeouts;

/** Set every timeout at once (a plugin may override its listener's per
 *  connection). @return 0, -EINVAL for a negative value, -EPIPE once gone. */
EVS_EXTERN int evs_transport_set_timeouts(evs_transport *t, const evs_timeouts *to);
/** The connection's timeouts. */
EVS_EXTERN void evs_transport_get_timeouts(const evs_transport *t, evs_timeouts *out);
/** Shorthand: change only the idle timeout. */
EVS_EXTERN int evs_transport_set_idle_timeout(evs_transport *t, double seconds);
/** The idle timeout in seconds (0: none). */
EVS_EXTERN double evs_transport_get_idle_timeout(const evs_transport *t);

/**
 * Cap the bytes this connection may have queued (0: no cap). A write that
 * would go past it returns -ENOBUFS and aborts the connection: a handler
 * that writes without draining cannot exhaust memory.
 */
EVS_EXTERN void evs_transport_set_max_write_buffer(evs_transport *t, size_t bytes);

/** Switch to another protocol (and context) from now on. */
EVS_EXTERN void evs_transport_set_protocol(evs_transport *t, const evs_protocol *proto,
                                           void *ctx);
/** The current protocol and (if @p ctx is not NULL) its context. */
EVS_EXTERN const evs_protocol *evs_transport_get_protocol(const evs_transport *t, void **ctx);

/** Extra info "socket": the fd (owned by the transport), or -1 once closed. */
EVS_EXTERN int evs_transport_get_fd(const evs_transport *t);
/** Extra info "peername": copies the remote address.
 *  @return 0, or a negative errno (-ENOTCONN when unknown). */
EVS_EXTERN int evs_transport_get_peername(const evs_transport *t, struct sockaddr_storage *addr,
                                          socklen_t *len);
/** Extra info "sockname": copies the local address. @return 0 or a negative errno. */
EVS_EXTERN int evs_transport_get_sockname(const evs_transport *t, struct sockaddr_storage *addr,
                                          socklen_t *len);
/** With the PROXY protocol: the proxy's own address (the socket's peer).
 *  @return 0, or -ENOENT when the connection did not come through a proxy. */
EVS_EXTERN int evs_transport_get_proxy_peername(const evs_transport *t,
                                                struct sockaddr_storage *addr, socklen_t *len);
/** With PROXY protocol v2: the value of TLV @p type (e.g. 0x01 ALPN, 0x02
 *  authority, 0x05 unique id) as a pointer valid for the transport's life.
 *  @return its length, or -ENOENT. */
EVS_EXTERN int evs_transport_get_proxy_tlv(const evs_transport *t, uint8_t type,
                                           const void **value);

/** The worker that owns the transport. */
EVS_EXTERN evs_worker *evs_transport_worker(const evs_transport *t);

/**
 * Format an address as "1.2.3.4:80", "[::1]:80", "unix:/path", "unix:@name"
 * or "unix:" (unnamed) into @p buf. @return @p buf. Any thread.
 */
EVS_EXTERN const char *evs_format_address(const struct sockaddr *addr, socklen_t len, char *buf,
                                          size_t size);

#ifdef __cplusplus
}
#endif
#endif
