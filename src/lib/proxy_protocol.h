/*
 * proxy_protocol.h - the PROXY protocol header parser (v1 text and v2
 * binary, with TLVs). A pure function over bytes: no I/O, fuzzed on its
 * own. Internal.
 */
#ifndef EVS_PROXY_PROTOCOL_H
#define EVS_PROXY_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The largest header we accept: v1 is at most 107 bytes; v2 is 16 bytes
 * plus addresses and TLVs, which we bound to keep a connection's memory
 * small. */
#define EVS__PROXY_MAX_HEADER 4096

typedef struct evs__proxy_header {
    int version;  /* 1 or 2 */
    int local;    /* v2 LOCAL or v1 UNKNOWN: no addresses, use the socket's */
    struct sockaddr_storage src;
    socklen_t srclen;
    struct sockaddr_storage dst;
    socklen_t dstlen;
    const uint8_t *tlv; /* v2 TLVs, pointing into the parsed buffer */
    size_t tlvlen;
} evs__proxy_header;

/*
 * Parse a PROXY header at the start of @buf.
 * @return the header's length (> 0) when complete and valid, 0 when more
 *         bytes are needed, -EPROTO when the bytes cannot start a valid
 *         header (a strict parser: no lenience on spaces, numbers or sizes).
 */
int evs__proxy_parse(const uint8_t *buf, size_t len, evs__proxy_header *out);

/* Find TLV @type in a v2 header's TLVs. @return its length or -ENOENT. */
int evs__proxy_tlv(const evs__proxy_header *h, uint8_t type, const uint8_t **value);

#endif
