/*
 * tls.h - TLS contexts and the TLS layer of the transport (internal).
 */
#ifndef EVS_TLS_INTERNAL_H
#define EVS_TLS_INTERNAL_H

#include "internal.h"

#include <openssl/ssl.h>

struct evs_tls_context {
    SSL_CTX *ctx;
    _Atomic int refs;
    bool server;
    bool alpn_required;
};

/* Per-connection TLS state of a transport (tls_transport.c). */
typedef struct evs__tls evs__tls;

/* Attach TLS to a transport that is not started or already open. */
int evs__tls_attach(evs_transport *t, evs_tls_context *ctx, bool server,
                    const evs_tls_options *opts, bool upgrade, const void *prefix, size_t len);
void evs__tls_free(evs_transport *t);
/* The read event fired (or buffered plaintext must be delivered). */
void evs__tls_readable(evs_transport *t);
/* Encrypt and queue (or hold until the handshake is done). */
int evs__tls_write(evs_transport *t, const struct iovec *iov, int iovcnt);
/* Send close_notify before the transport closes. */
void evs__tls_close(evs_transport *t);
/* close() during the first handshake with writes held for it: true when
 * the handshake goes on (reading, within its timeout) and the close
 * follows it (evs__transport_finish_close), so those writes go out. */
bool evs__tls_close_after_handshake(evs_transport *t);
/* True while such a close waits for the handshake. */
bool evs__tls_close_waits(const evs_transport *t);
/* Plaintext held until the handshake (or a renegotiation) is done. */
size_t evs__tls_pending(const evs_transport *t);
/* Throw that plaintext away (an abort, a fatal error). */
void evs__tls_drop_pending(evs_transport *t);
/* True while a TLS handshake runs (the first, or a TLS 1.2 server's
 * renegotiation): the transport reads even when the protocol paused reading
 * (pausing holds back plaintext, not TLS). */
bool evs__tls_handshaking(const evs_transport *t);
/* Begin the handshake (a client sends its hello). */
void evs__tls_start(evs_transport *t);
/* The worker's tick: busy connections quiet for a whole second give their
 * record buffers back. @return whether any connection is still busy. */
bool evs__tls_sweep(evs_worker *w);

/* Append OpenSSL's error queue (or @fallback) to @buf and clear it. */
void evs__tls_error_string(char *buf, size_t len, const char *fallback);

#endif
