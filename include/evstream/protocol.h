/**
 * @file evstream/protocol.h
 * Protocols: the callbacks a transport calls (asyncio's Protocol and
 * BufferedProtocol). The state machine is the seed's:
 *
 *     connection_made -> data_received* (or get_buffer/buffer_updated*)
 *                     -> eof_received? -> connection_lost
 *
 * connection_made and connection_lost are called exactly once each; nothing
 * is called after connection_lost. Every callback runs on the transport's
 * worker thread and may call any transport function, including close and
 * abort on its own transport.
 */
#ifndef EVSTREAM_PROTOCOL_H
#define EVSTREAM_PROTOCOL_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Protocol callbacks. Zero-initialise and fill what you need (designated
 * initialisers); a NULL callback means the default behaviour. @p ctx is the
 * context given with the protocol (see evs_transport_set_protocol()).
 */
typedef struct evs_protocol {
    /** The connection is up. A server's protocol receives the server's
     *  protocol_arg as ctx here and usually installs its per-connection
     *  state with evs_transport_set_protocol(t, same protocol, state). */
    void (*connection_made)(evs_transport *t, void *ctx);

    /** @p len > 0 bytes arrived. @p data is valid only during the call. */
    void (*data_received)(evs_transport *t, const void *data, size_t len, void *ctx);

    /** The peer will send no more. Return true to keep the (half-open)
     *  connection; false (or a NULL callback) closes the transport. Over TLS
     *  the transport closes either way (no half-close). Called at most once;
     *  no data callback follows it. */
    bool (*eof_received)(evs_transport *t, void *ctx);

    /** The connection is closed: @p err is 0 for a regular EOF, a close or an
     *  abort from this side, or a negative errno (-ECONNRESET, -ETIMEDOUT...).
     *  The transport is freed after this returns; do not keep it. */
    void (*connection_lost)(evs_transport *t, int err, void *ctx);

    /** The write buffer went strictly above the high watermark. */
    void (*pause_writing)(evs_transport *t, void *ctx);
    /** The write buffer drained to or below the low watermark. */
    void (*resume_writing)(evs_transport *t, void *ctx);

    /**
     * Buffered protocol: when set (together with buffer_updated), the
     * transport reads straight into the memory this returns instead of
     * calling data_received. @p sizehint is a recommended minimum. Store the
     * buffer's size in @p *len; returning NULL or *len == 0 is an error that
     * aborts the connection with -ENOBUFS.
     */
    void *(*get_buffer)(evs_transport *t, size_t sizehint, size_t *len, void *ctx);
    /** Buffered protocol: @p nbytes were written into the last buffer. */
    void (*buffer_updated)(evs_transport *t, size_t nbytes, void *ctx);
} evs_protocol;

#ifdef __cplusplus
}
#endif
#endif
