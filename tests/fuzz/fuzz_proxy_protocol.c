/*
 * fuzz_proxy_protocol.c - libFuzzer target for the PROXY protocol header
 * parser (src/lib/proxy_protocol.c): evs__proxy_parse and evs__proxy_tlv.
 *
 * The input is the bytes a client sends first. Beyond "no crash, no
 * out-of-bounds read" (ASan sees the exact-size buffer libFuzzer hands us),
 * it checks what the parser promises:
 *   - the result is > 0 (a header of that length), 0 (need more) or -EPROTO;
 *   - a header is never longer than the input nor EVS__PROXY_MAX_HEADER,
 *     v1 ends with CRLF within 107 bytes, v2 has exactly 16 + length bytes;
 *   - the header is self-delimiting: its bytes alone parse to the same
 *     length, and every strict prefix of it asks for more (0), never -EPROTO;
 *   - addresses are well-formed (family, length), the TLV block lies inside
 *     the header and evs__proxy_tlv only returns values inside it;
 *   - round trip: v1 TCP4 is re-formatted byte for byte from the parsed
 *     addresses; v1 TCP6 re-formatted parses to the same addresses; v2
 *     address blocks re-serialised equal the input bytes.
 */
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);      \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int parse_copy(const uint8_t *data, size_t len, evs__proxy_header *h)
{
    /* An exact-size heap copy: a read past @len is an ASan report. */
    uint8_t *copy = malloc(len ? len : 1);
    int n;

    CHECK(copy != NULL);
    memcpy(copy, data, len);
    n = evs__proxy_parse(copy, len, h);
    free(copy);
    return n;
}

static void check_addresses(const evs__proxy_header *h)
{
    if (h->local) {
        return;
    }
    CHECK(h->src.ss_family == h->dst.ss_family);
    switch (h->src.ss_family) {
    case AF_INET:
        CHECK(h->srclen == sizeof(struct sockaddr_in) && h->dstlen == h->srclen);
        break;
    case AF_INET6:
        CHECK(h->srclen == sizeof(struct sockaddr_in6) && h->dstlen == h->srclen);
        break;
    case AF_UNIX: {
        const struct sockaddr_un *s = (const struct sockaddr_un *)&h->src;
        const struct sockaddr_un *d = (const struct sockaddr_un *)&h->dst;
        CHECK(h->version == 2);
        CHECK(h->srclen == sizeof(struct sockaddr_un) && h->dstlen == h->srclen);
        CHECK(memchr(s->sun_path, '\0', sizeof s->sun_path) != NULL);
        CHECK(memchr(d->sun_path, '\0', sizeof d->sun_path) != NULL);
        break;
    }
    default:
        CHECK(!"unexpected address family");
    }
}

static void check_tlvs(const evs__proxy_header *h, const uint8_t *buf, int n)
{
    const uint8_t *end = buf + n;

    if (h->version == 1) {
        CHECK(h->tlv == NULL && h->tlvlen == 0);
    }
    if (!h->tlv) {
        CHECK(h->tlvlen == 0);
    } else {
        CHECK(h->tlv >= buf + 16 && h->tlv + h->tlvlen == end);
    }
    /* Every type: found values lie inside the block and start right after
     * a 3-byte TLV head naming that type and length. */
    for (int type = 0; type < 256; type++) {
        const uint8_t *v = NULL;
        int len = evs__proxy_tlv(h, (uint8_t)type, &v);
        if (len == -ENOENT) {
            continue;
        }
        CHECK(len >= 0);
        CHECK(h->tlv != NULL && v != NULL);
        CHECK(v >= h->tlv + 3 && v + len <= h->tlv + h->tlvlen);
        CHECK(v[-3] == type && ((size_t)v[-2] << 8 | v[-1]) == (size_t)len);
        CHECK(evs__proxy_tlv(h, (uint8_t)type, NULL) == len);
    }
}

static void check_v1(const evs__proxy_header *h, const uint8_t *buf, int n)
{
    char line[128];
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    int len;

    CHECK(n >= 8 && n <= 107);
    CHECK(memcmp(buf, "PROXY ", 6) == 0);
    CHECK(buf[n - 2] == '\r' && buf[n - 1] == '\n');
    CHECK(memchr(buf, '\r', (size_t)n - 2) == NULL && memchr(buf, '\n', (size_t)n - 1) == NULL);
    if (h->local) {
        CHECK(memcmp(buf + 6, "UNKNOWN", 7) == 0);
        return;
    }
    if (h->src.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&h->src;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&h->dst;
        CHECK(inet_ntop(AF_INET, &s->sin_addr, a, sizeof a) && inet_ntop(AF_INET, &d->sin_addr, b, sizeof b));
        len = snprintf(line, sizeof line, "PROXY TCP4 %s %s %u %u\r\n", a, b, ntohs(s->sin_port),
                       ntohs(d->sin_port));
        /* The strict grammar admits one spelling of an IPv4 line. */
        CHECK(len == n && memcmp(line, buf, (size_t)n) == 0);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&h->src;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&h->dst;
        evs__proxy_header again;
        CHECK(h->src.ss_family == AF_INET6);
        CHECK(inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof a) && inet_ntop(AF_INET6, &d->sin6_addr, b, sizeof b));
        len = snprintf(line, sizeof line, "PROXY TCP6 %s %s %u %u\r\n", a, b, ntohs(s->sin6_port),
                       ntohs(d->sin6_port));
        /* IPv6 has several spellings: the canonical one parses the same. */
        CHECK(parse_copy((const uint8_t *)line, (size_t)len, &again) == len);
        CHECK(again.srclen == h->srclen && memcmp(&again.src, &h->src, h->srclen) == 0);
        CHECK(again.dstlen == h->dstlen && memcmp(&again.dst, &h->dst, h->dstlen) == 0);
    }
}

static void check_v2(const evs__proxy_header *h, const uint8_t *buf, int n)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    uint8_t block[216];
    size_t blen = 0;

    CHECK(n >= 16 && memcmp(buf, sig, 12) == 0);
    CHECK((size_t)n == 16 + ((size_t)buf[14] << 8 | buf[15]));
    CHECK((buf[12] & 0xF0) == 0x20 && (buf[12] & 0x0F) <= 1);
    if (h->local) {
        CHECK((buf[12] & 0x0F) == 0 || buf[13] == 0x00);
        return;
    }
    /* Re-serialise the address block from what was parsed. */
    if (h->src.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&h->src;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&h->dst;
        CHECK(buf[13] == 0x11 || buf[13] == 0x12);
        memcpy(block, &s->sin_addr, 4);
        memcpy(block + 4, &d->sin_addr, 4);
        memcpy(block + 8, &s->sin_port, 2);
        memcpy(block + 10, &d->sin_port, 2);
        blen = 12;
    } else if (h->src.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&h->src;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&h->dst;
        CHECK(buf[13] == 0x21 || buf[13] == 0x22);
        memcpy(block, &s->sin6_addr, 16);
        memcpy(block + 16, &d->sin6_addr, 16);
        memcpy(block + 32, &s->sin6_port, 2);
        memcpy(block + 34, &d->sin6_port, 2);
        blen = 36;
    } else {
        const struct sockaddr_un *s = (const struct sockaddr_un *)&h->src;
        const struct sockaddr_un *d = (const struct sockaddr_un *)&h->dst;
        CHECK(buf[13] == 0x31 || buf[13] == 0x32);
        /* The last byte of each path is forced to NUL: compare the rest. */
        CHECK(memcmp(s->sun_path, buf + 16, 107) == 0);
        CHECK(memcmp(d->sun_path, buf + 124, 107) == 0);
        CHECK(h->tlv == buf + 16 + 216);
        return;
    }
    CHECK((size_t)n >= 16 + blen && memcmp(block, buf + 16, blen) == 0);
    CHECK(h->tlv == buf + 16 + blen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    evs__proxy_header h;
    uint8_t *buf;
    int n;

    if (size > 2 * EVS__PROXY_MAX_HEADER) {
        return -1; /* longer inputs add nothing: the parser stops at 4096 */
    }
    buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    n = evs__proxy_parse(buf, size, &h);
    CHECK(n == 0 || n == -EPROTO || n > 0);
    if (n > 0) {
        evs__proxy_header again;
        CHECK((size_t)n <= size && n <= EVS__PROXY_MAX_HEADER);
        CHECK(h.version == 1 || h.version == 2);
        check_addresses(&h);
        check_tlvs(&h, buf, n);
        if (h.version == 1) {
            check_v1(&h, buf, n);
        } else {
            check_v2(&h, buf, n);
        }
        /* Self-delimiting: the header alone gives the same length... */
        CHECK(parse_copy(buf, (size_t)n, &again) == n);
        CHECK(again.version == h.version && again.local == h.local);
        CHECK(again.srclen == h.srclen && memcmp(&again.src, &h.src, h.srclen) == 0);
        CHECK(again.dstlen == h.dstlen && memcmp(&again.dst, &h.dst, h.dstlen) == 0);
        CHECK(again.tlvlen == h.tlvlen);
        /* ... and a header cut short is "need more", never an error (the
         * server would drop a client whose header came in two segments).
         * Every prefix of a short header; a sample of a long one. */
        for (size_t k = 0; k < (size_t)n; k += (n <= 128 ? 1 : 1 + (size_t)n / 64)) {
            CHECK(parse_copy(buf, k, &again) == 0);
        }
        CHECK(parse_copy(buf, (size_t)n - 1, &again) == 0);
    } else if (n == 0) {
        CHECK(size < EVS__PROXY_MAX_HEADER + 16);
    }
    free(buf);
    return 0;
}
