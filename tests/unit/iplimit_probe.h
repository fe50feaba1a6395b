/* iplimit_probe.h - C calls into a server's per-address table for server_test.cc. */
#ifndef EVS_TEST_IPLIMIT_PROBE_H
#define EVS_TEST_IPLIMIT_PROBE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evs_server evs_server;

/* A bare server (no runtime, no socket) with only the per-address limits. */
evs_server *probe_iplimit_server(double rate, double burst, unsigned max_per_ip);
void probe_iplimit_server_free(evs_server *s);
int probe_iplimit_admit(evs_server *s, uint64_t key);
void probe_iplimit_release(evs_server *s, uint64_t key);
/* How many addresses the table remembers. */
unsigned probe_iplimit_entries(evs_server *s);
/* The table's key for a peer address (a struct sockaddr_storage): 0, or
 * -1 when the address has none (a Unix peer). */
int probe_ip_key(const void *peer, uint64_t *key);

#ifdef __cplusplus
}
#endif

#endif
