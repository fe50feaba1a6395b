/**
 * @file evstream/client.h
 * Clients (the seed's open_connection / open_unix_connection), from a task.
 */
#ifndef EVSTREAM_CLIENT_H
#define EVSTREAM_CLIENT_H

#include <sys/socket.h>

#include <evstream/common.h>
#include <evstream/tls.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Connection options. Zero-initialise (or pass NULL for the defaults). */
typedef struct evs_connect_options {
    double timeout;           /**< seconds for each address tried; 0 = 60 */
    size_t limit;             /**< reader limit; 0 = 64 KiB */
    const char *local_host;   /**< bind to this numeric local address first (TCP);
                                   a name gives -EADDRNOTAVAIL */
    uint16_t local_port;      /**< with local_host; 0 = any */
    /** TLS: a client context (evs_tls_client_context_new). The call returns
     *  once the handshake is done; a failed verification returns -EPROTO
     *  and says which check failed in *tls_error. */
    evs_tls_context *tls;
    /** Name for SNI and certificate verification; NULL = the host given to
     *  evs_open_connection (an IP literal is verified as an IP address).
     *  evs_open_unix_connection has no host: a context that verifies the
     *  server needs this name, or the call fails with -EINVAL. */
    const char *server_hostname;
    double tls_handshake_timeout; /**< 0 = 60 s */
    /** On TLS failure, receives the reason (may be NULL). */
    char *tls_error;
    size_t tls_error_len;
} evs_connect_options;

/**
 * Resolve @p host asynchronously (names and numeric addresses), try each
 * address in turn and return a (reader, writer) pair for the first that
 * connects. Parks. The task's timeout (evs_task_set_timeout) bounds the
 * call as a whole: lookup, every address tried and the TLS handshake.
 * @param r,w receive the pair, release it with evs_writer_free(); both
 *        are NULL after a failure.
 * @return 0; the last address's error (-ECONNREFUSED, -ETIMEDOUT...);
 *         -EHOSTUNREACH when the name does not resolve; -ECANCELED.
 */
EVS_EXTERN int evs_open_connection(const char *host, uint16_t port,
                                   const evs_connect_options *opts, evs_reader **r,
                                   evs_writer **w);

/** Connect to a Unix stream socket (a path, or "@name" for an abstract one).
 *  Parks; the task's timeout bounds the call as a whole, as in
 *  evs_open_connection(). @return as evs_open_connection(). */
EVS_EXTERN int evs_open_unix_connection(const char *path, const evs_connect_options *opts,
                                        evs_reader **r, evs_writer **w);

#ifdef __cplusplus
}
#endif
#endif
