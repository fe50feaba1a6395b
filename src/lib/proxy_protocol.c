/*
 * proxy_protocol.c - a strict PROXY protocol parser (haproxy's
 * proxy-protocol.txt, versions 1 and 2).
 *
 * Strict because the header comes before authentication: a header that is
 * not exactly right is an error, never a guess. v1 allows only the spec's
 * grammar (single spaces, canonical addresses, ports without leading zeros,
 * CRLF within 107 bytes); v2 checks the signature, version, command,
 * family, that the address block fits the announced length and that TLVs
 * exactly fill what remains.
 */
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

static const uint8_t v2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* --- v1 ------------------------------------------------------------------- */

static int v1_port(const char *s, size_t n, uint16_t *out)
{
    unsigned v = 0;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int v1_address(int family, const char *s, size_t n, struct sockaddr_storage *ss,
                      socklen_t *len, uint16_t port)
{
    char text[INET6_ADDRSTRLEN + 1];

    /* inet_pton stops at a NUL: "1.2.3.4\0junk" must not pass as 1.2.3.4. */
    if (n == 0 || n >= sizeof text || memchr(s, '\0', n))
        return -1;
    memcpy(text, s, n);
    text[n] = '\0';
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, text, &in->sin_addr) != 1)
            return -1;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, text, &in6->sin6_addr) != 1)
            return -1;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof *in6;
    }
    return 0;
}

static int parse_v1(const uint8_t *buf, size_t len, evs__proxy_header *out)
{
    const char *s = (const char *)buf;
    const char *end, *field[5];
    size_t flen[5], n = 0;
    int family;
    uint16_t sport, dport;

    /* The whole line must arrive within 107 bytes, ended by CRLF: the CR
     * is at most the 106th byte. */
    end = memchr(s, '\r', len < 106 ? len : 106);
    if (memchr(s, '\n', end ? (size_t)(end - s) : (len < 106 ? len : 106)))
        return -EPROTO; /* a bare LF */
    if (!end)
        return len >= 106 ? -EPROTO : 0;
    if ((size_t)(end - s) + 1 >= len)
        return 0;
    if (end[1] != '\n')
        return -EPROTO;
    if (memcmp(s, "PROXY ", 6) != 0)
        return -EPROTO;
    out->version = 1;
    if ((size_t)(end - s) >= 13 && memcmp(s + 6, "UNKNOWN", 7) == 0) {
        /* Anything may follow UNKNOWN; the receiver uses the socket's addresses. */
        if (s + 13 != end && s[13] != ' ')
            return -EPROTO;
        out->local = 1;
        return (int)(end - s) + 2;
    }
    /* "PROXY U;\r\n" is shorter than "PROXY TCP4 ": compare within the line. */
    if ((size_t)(end - s) < 11)
        return -EPROTO;
    if (memcmp(s + 6, "TCP4 ", 5) == 0)
        family = AF_INET;
    else if (memcmp(s + 6, "TCP6 ", 5) == 0)
        family = AF_INET6;
    else
        return -EPROTO;
    /* Exactly four fields, each separated by one space. */
    for (const char *p = s + 11; n < 5;) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *fe = sp ? sp : end;
        field[n] = p;
        flen[n] = (size_t)(fe - p);
        n++;
        if (!sp)
            break;
        p = sp + 1;
    }
    if (n != 4)
        return -EPROTO;
    if (v1_port(field[2], flen[2], &sport) < 0 || v1_port(field[3], flen[3], &dport) < 0 ||
        v1_address(family, field[0], flen[0], &out->src, &out->srclen, sport) < 0 ||
        v1_address(family, field[1], flen[1], &out->dst, &out->dstlen, dport) < 0)
        return -EPROTO;
    return (int)(end - s) + 2;
}

/* --- v2 ------------------------------------------------------------------- */

static int parse_v2(const uint8_t *buf, size_t len, evs__proxy_header *out)
{
    size_t total, addrlen;
    uint8_t ver_cmd, fam;

    if (len < 16)
        return 0;
    ver_cmd = buf[12];
    fam = buf[13];
    total = 16 + ((size_t)buf[14] << 8 | buf[15]);
    if ((ver_cmd & 0xF0) != 0x20 || (ver_cmd & 0x0F) > 1)
        return -EPROTO;
    if (total > EVS__PROXY_MAX_HEADER)
        return -EPROTO;
    if (len < total)
        return 0;
    out->version = 2;
    if ((ver_cmd & 0x0F) == 0) {
        /* LOCAL (e.g. the proxy's health check): addresses are ignored. */
        out->local = 1;
        return (int)total;
    }
    switch (fam) {
    case 0x11: /* TCP over IPv4 */
    case 0x12: { /* UDP over IPv4: accepted as addresses */
        struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src;
        struct sockaddr_in *d4 = (struct sockaddr_in *)&out->dst;
        addrlen = 12;
        if (total - 16 < addrlen)
            return -EPROTO;
        memset(&out->src, 0, sizeof out->src);
        memset(&out->dst, 0, sizeof out->dst);
        s4->sin_family = d4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, buf + 16, 4);
        memcpy(&d4->sin_addr, buf + 20, 4);
        memcpy(&s4->sin_port, buf + 24, 2);
        memcpy(&d4->sin_port, buf + 26, 2);
        out->srclen = out->dstlen = sizeof(struct sockaddr_in);
        break;
    }
    case 0x21:
    case 0x22: {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src;
        struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&out->dst;
        addrlen = 36;
        if (total - 16 < addrlen)
            return -EPROTO;
        memset(&out->src, 0, sizeof out->src);
        memset(&out->dst, 0, sizeof out->dst);
        s6->sin6_family = d6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, buf + 16, 16);
        memcpy(&d6->sin6_addr, buf + 32, 16);
        memcpy(&s6->sin6_port, buf + 48, 2);
        memcpy(&d6->sin6_port, buf + 50, 2);
        out->srclen = out->dstlen = sizeof(struct sockaddr_in6);
        break;
    }
    case 0x31:
    case 0x32: {
        struct sockaddr_un *su = (struct sockaddr_un *)&out->src;
        struct sockaddr_un *du = (struct sockaddr_un *)&out->dst;
        addrlen = 216;
        if (total - 16 < addrlen)
            return -EPROTO;
        memset(&out->src, 0, sizeof out->src);
        memset(&out->dst, 0, sizeof out->dst);
        su->sun_family = du->sun_family = AF_UNIX;
        memcpy(su->sun_path, buf + 16, 108);
        memcpy(du->sun_path, buf + 124, 108);
        su->sun_path[107] = du->sun_path[107] = '\0';
        out->srclen = out->dstlen = sizeof(struct sockaddr_un);
        break;
    }
    case 0x00: /* UNSPEC: keep the socket's addresses */
        addrlen = 0;
        out->local = 1;
        break;
    default:
        return -EPROTO;
    }
    /* TLVs must fill the rest exactly. */
    out->tlv = buf + 16 + addrlen;
    out->tlvlen = total - 16 - addrlen;
    for (size_t off = 0; off < out->tlvlen;) {
        size_t vlen;
        if (out->tlvlen - off < 3)
            return -EPROTO;
        vlen = (size_t)out->tlv[off + 1] << 8 | out->tlv[off + 2];
        if (out->tlvlen - off - 3 < vlen)
            return -EPROTO;
        off += 3 + vlen;
    }
    return (int)total;
}

int evs__proxy_parse(const uint8_t *buf, size_t len, evs__proxy_header *out)
{
    size_t n = len < sizeof v2_signature ? len : sizeof v2_signature;

    memset(out, 0, sizeof *out);
    if (len == 0)
        return 0;
    if (memcmp(buf, v2_signature, n) == 0)
        return n < sizeof v2_signature ? 0 : parse_v2(buf, len, out);
    n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) == 0)
        return n < 6 ? 0 : parse_v1(buf, len, out);
    return -EPROTO;
}

int evs__proxy_tlv(const evs__proxy_header *h, uint8_t type, const uint8_t **value)
{
    for (size_t off = 0; h->tlv && off + 3 <= h->tlvlen;) {
        size_t vlen = (size_t)h->tlv[off + 1] << 8 | h->tlv[off + 2];
        if (h->tlv[off] == type) {
            if (value)
                *value = h->tlv + off + 3;
            return (int)vlen;
        }
        off += 3 + vlen;
    }
    return -ENOENT;
}
