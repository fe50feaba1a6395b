/**
 * @file evstream/tls.h
 * TLS: contexts for servers and clients, and the TLS details of a
 * transport. TLS is a layer of the transport (OpenSSL with memory BIOs):
 * a protocol sees plaintext, and connection_made comes after the
 * handshake.
 *
 * A context is immutable once made and shared by every worker; it is
 * reference counted, so a connection keeps the context it started with
 * (a reload swaps contexts for new connections only).
 */
#ifndef EVSTREAM_TLS_H
#define EVSTREAM_TLS_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A TLS configuration (an SSL_CTX and its settings). */
typedef struct evs_tls_context evs_tls_context;

/** Client-certificate policy of a server. */
typedef enum evs_tls_verify_client {
    EVS_TLS_CLIENT_CERT_NONE = 0,     /**< do not ask */
    EVS_TLS_CLIENT_CERT_OPTIONAL = 1, /**< ask; verify one if sent */
    EVS_TLS_CLIENT_CERT_REQUIRE = 2,  /**< a verified certificate is required */
} evs_tls_verify_client;

/** One certificate (chain) and key, chosen by SNI name. */
typedef struct evs_tls_certificate {
    const char *certificate;   /**< PEM file: the certificate, then its chain */
    const char *key;           /**< PEM file: the private key */
    const char *password_file; /**< first line is the key's password (may be NULL) */
    /** SNI names served by this certificate: exact ("example.com") or one
     *  leading wildcard label ("*.example.com"). NULL-terminated; may be NULL
     *  for the default certificate. */
    const char *const *names;
} evs_tls_certificate;

/** Server context options. Zero-initialise; set at least one certificate. */
typedef struct evs_tls_server_options {
    /** Certificates; the first is the default (served when no name matches
     *  or the client sends no SNI). */
    const evs_tls_certificate *certificates;
    size_t ncertificates;
    const char *min_protocol; /**< "TLSv1.2" (default) or "TLSv1.3" */
    const char *max_protocol; /**< NULL: the highest OpenSSL supports */
    const char *ciphers;      /**< TLS 1.2 cipher list (OpenSSL syntax) */
    const char *ciphersuites; /**< TLS 1.3 ciphersuites; "" = no TLS 1.3 */
    const char *groups;       /**< key-exchange groups, e.g. "X25519:P-256" */
    /** ALPN protocols in server preference order, e.g. {"h2", "http/1.1"}. */
    const char *const *alpn;
    size_t nalpn;
    bool alpn_required; /**< no overlap (or no ALPN from the client) fails the handshake;
                             needs nalpn > 0 */
    evs_tls_verify_client verify_client;
    const char *ca_file; /**< CAs that sign client certificates; needs verify_client */
    int verify_depth;    /**< 0 = OpenSSL's default; other values need verify_client */
    bool no_tickets;     /**< disable session tickets (resumption by id remains) */
    double ticket_rotation; /**< seconds between ticket key rotations; 0 = 12 h; must be 0
                                 with no_tickets */
} evs_tls_server_options;

/** Client context options. Zero-initialise: verification is on. */
typedef struct evs_tls_client_options {
    bool no_verify;           /**< do not verify the server (tests only!) */
    const char *ca_file;      /**< trusted CAs; NULL = the system store */
    const char *certificate;  /**< client certificate chain (PEM), optional */
    const char *key;          /**< its key */
    const char *password_file;
    const char *min_protocol; /**< default "TLSv1.2" */
    const char *max_protocol;
    const char *const *alpn;  /**< protocols to offer */
    size_t nalpn;
} evs_tls_client_options;

/**
 * Make a server context. Every file is read now.
 * @param err receives a message naming the file and the problem.
 * @return 0, or a negative errno (-EINVAL for bad options or files).
 * Thread: any.
 */
EVS_EXTERN int evs_tls_server_context_new(const evs_tls_server_options *opts,
                                          evs_tls_context **out, char *err, size_t errlen);
/** Make a client context (see evs_tls_server_context_new). */
EVS_EXTERN int evs_tls_client_context_new(const evs_tls_client_options *opts,
                                          evs_tls_context **out, char *err, size_t errlen);
/** Take a reference. Any thread. */
EVS_EXTERN evs_tls_context *evs_tls_context_ref(evs_tls_context *ctx);
/** Drop a reference; the context is freed with the last one. Any thread. */
EVS_EXTERN void evs_tls_context_unref(evs_tls_context *ctx);
/** The OpenSSL SSL_CTX (for settings evstream has no option for; change it
 *  only before the context is first used). */
EVS_EXTERN void *evs_tls_context_ssl_ctx(evs_tls_context *ctx);

/** Per-connection TLS parameters. Zero-initialise. */
typedef struct evs_tls_options {
    /** Client side: the name to send as SNI and to verify the certificate
     *  against; an IP literal is verified as an IP address (and not sent as
     *  SNI). Required (-EINVAL without it) when the context verifies the
     *  server, as asyncio requires it: a chain check alone accepts any
     *  certificate a trusted CA signed. NULL with a no_verify context: no
     *  SNI and no checks. */
    const char *server_hostname;
    double handshake_timeout; /**< seconds; 0 = 60 */
    double shutdown_timeout;  /**< seconds to flush close_notify; 0 = 30 */
} evs_tls_options;

/**
 * Upgrade a transport to TLS in place (the seed's loop.start_tls):
 * what was written before is sent first, in plaintext; @p prefix (bytes
 * already read from the socket, e.g. what a reader had buffered) is fed to
 * TLS before anything else the socket delivers, never to the protocol.
 * The protocol's connection_made is NOT called again; data_received
 * delivers plaintext once the handshake is done. The handshake reads even
 * if the protocol paused reading; plaintext waits for resume_reading. A failed or timed-out
 * handshake ends in connection_lost(-EPROTO or -ETIMEDOUT).
 * @param server true for the server side.
 * @return 0, -EINVAL, -EALREADY (already TLS), -EPIPE (closing).
 * Thread: the transport's worker.
 */
EVS_EXTERN int evs_transport_start_tls(evs_transport *t, evs_tls_context *ctx, bool server,
                                       const evs_tls_options *opts, const void *prefix,
                                       size_t prefix_len);

/**
 * StreamWriter.start_tls: upgrade the (reader, writer) pair and park until
 * the handshake is done. Bytes the reader had buffered go to TLS, never to
 * the caller. @return 0, or -EPROTO (handshake failed: see
 * evs_transport_tls_error), -ETIMEDOUT, -ECANCELED, -EALREADY, -EPIPE,
 * -EBUSY (a read is parked on the reader), -EINVAL (not in a task).
 */
EVS_EXTERN int evs_start_tls(evs_writer *w, evs_tls_context *ctx, bool server,
                             const evs_tls_options *opts);

/* --- extra info ------------------------------------------------------- */

/** True once the transport speaks TLS (also during the handshake). */
EVS_EXTERN bool evs_transport_is_tls(const evs_transport *t);
/** The OpenSSL SSL object (the seed's "ssl_object"), or NULL. It is for
 *  inspection (certificates, session, ALPN, keying material): the transport
 *  drives every read, write and handshake on it, so calls that change its
 *  state (SSL_renegotiate, SSL_key_update, SSL_shutdown, SSL_set_bio) are
 *  not supported. */
EVS_EXTERN void *evs_transport_tls_ssl(const evs_transport *t);
/** The peer's certificate as an X509 * (not a new reference), or NULL. */
EVS_EXTERN void *evs_transport_tls_peer_certificate(const evs_transport *t);
/** Subject, issuer (one-line RFC 2253 form) and subjectAltName entries
 *  ("DNS:a, IP:1.2.3.4") of the peer certificate into @p buf, cut to fit.
 *  @return 0, -ENOENT when there is no peer certificate, or -EINVAL when
 *  @p buf is NULL or @p len is 0. */
EVS_EXTERN int evs_transport_tls_peer_subject(const evs_transport *t, char *buf, size_t len);
EVS_EXTERN int evs_transport_tls_peer_issuer(const evs_transport *t, char *buf, size_t len);
EVS_EXTERN int evs_transport_tls_peer_san(const evs_transport *t, char *buf, size_t len);
/** The seed's "cipher": name, protocol version and secret bits; NULLs when
 *  no handshake was completed. Either output may be NULL. */
EVS_EXTERN const char *evs_transport_tls_cipher(const evs_transport *t, const char **version,
                                                int *bits);
/** The ALPN protocol agreed on, or NULL. */
EVS_EXTERN const char *evs_transport_tls_alpn(const evs_transport *t);
/** The SNI name the client sent (server side) or asked for, or NULL. */
EVS_EXTERN const char *evs_transport_tls_sni(const evs_transport *t);
/** True when the session was resumed. */
EVS_EXTERN bool evs_transport_tls_resumed(const evs_transport *t);
/** True when the peer ended with close_notify; false after an EOF without
 *  it (a possible truncation that the handler may want to tell apart). */
EVS_EXTERN bool evs_transport_tls_peer_closed_cleanly(const evs_transport *t);
/** Why the handshake or the connection failed (OpenSSL's reason, or e.g.
 *  "certificate verify failed: hostname mismatch"), or NULL. */
EVS_EXTERN const char *evs_transport_tls_error(const evs_transport *t);

#ifdef __cplusplus
}
#endif
#endif
