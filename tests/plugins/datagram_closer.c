/*
 * datagram_closer - a datagram test plugin: echoes every datagram, except
 * "close", which closes the endpoint that received it (as a plugin may,
 * and as a fatal socket error does).
 */
#include <string.h>

#include <evstream.h>

static void datagram_received(evs_datagram *d, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen, void *ctx)
{
    (void)ctx;
    if (len == 5 && memcmp(data, "close", 5) == 0)
        evs_datagram_close(d);
    else if (addrlen > 0)
        evs_datagram_sendto(d, data, len, addr, addrlen);
}

static const evs_datagram_protocol protocol = {
    .datagram_received = datagram_received,
};

EVS_PLUGIN_DEFINE(.name = "datagram_closer", .mode = EVS_PLUGIN_DATAGRAM, .datagram = &protocol);
