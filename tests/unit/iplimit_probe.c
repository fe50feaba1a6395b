/* iplimit_probe.c - see iplimit_probe.h. */
#include "iplimit_probe.h"

#include <stdlib.h>

#include "server.h"

evs_server *probe_iplimit_server(double rate, double burst, unsigned max_per_ip)
{
    evs_server *s = calloc(1, sizeof *s);

    if (!s)
        return NULL;
    s->opts.connection_rate_per_ip = rate;
    s->opts.connection_burst_per_ip = burst;
    s->opts.max_connections_per_ip = max_per_ip;
    if (!(s->limits = evs__limits_new())) {
        free(s);
        return NULL;
    }
    evs__limits_set_rate(s->limits, rate, burst);
    return s;
}

void probe_iplimit_server_free(evs_server *s)
{
    evs__limits_unref(s->limits);
    free(s);
}

int probe_iplimit_admit(evs_server *s, uint64_t key)
{
    return evs__iplimit_admit(s, key);
}

void probe_iplimit_release(evs_server *s, uint64_t key)
{
    evs__iplimit_release(s, key);
}

unsigned probe_iplimit_entries(evs_server *s)
{
    return (unsigned)evs__iplimit_entries(s);
}

int probe_ip_key(const void *peer, uint64_t *key)
{
    return evs__ip_key(peer, key) ? 0 : -1;
}
