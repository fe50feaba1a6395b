/*
 * udp_echo - a datagram plugin: every datagram is sent back to where it
 * came from. With a udp: listener each worker has its own socket on the
 * same port (SO_REUSEPORT), so the kernel spreads the datagrams across the
 * workers; a unixgram: listener has one socket, on the first worker.
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   echo hello | nc -u -w1 127.0.0.1 8895
 */
#include <evstream.h>

static void datagram_received(evs_datagram *d, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen, void *ctx)
{
    (void)ctx;
    /* An unnamed Unix peer (addrlen 0) cannot be answered. */
    if (addrlen > 0)
        evs_datagram_sendto(d, data, len, addr, addrlen);
}

static void error_received(evs_datagram *d, int err, void *ctx)
{
    (void)d;
    (void)ctx;
    /* ICMP errors about earlier answers: nothing to do but note them. */
    evs_log(EVS_LOG_DEBUG, "udp_echo: %s", evs_strerror(err));
}

static const evs_datagram_protocol udp_echo = {
    .datagram_received = datagram_received,
    .error_received = error_received,
};

EVS_PLUGIN_DEFINE(.name = "udp_echo", .mode = EVS_PLUGIN_DATAGRAM, .datagram = &udp_echo);
