/*
 * datagram.h - evstreamd's udp: and unixgram: listeners: a datagram
 * plugin's protocol on one endpoint per worker (udp: sockets share the port
 * with SO_REUSEPORT, so the kernel spreads datagrams across the workers) or
 * on worker 0 (unixgram:, which cannot share a path).
 */
#ifndef EVSD_DATAGRAM_H
#define EVSD_DATAGRAM_H

#include <stddef.h>

#include "config.h"

typedef struct evsd_datagram evsd_datagram;
struct addrinfo;

/* The addresses a udp: listener's host and port resolve to (getaddrinfo's
 * result or error); its sockets are bound at the first. */
int evsd_datagram_resolve(const evsd_listener_conf *c, struct addrinfo **out);

/* Bind @c's sockets on the main thread, then open an endpoint on each
 * worker with @proto and @ctx (and @c's write watermarks), not reading
 * until evsd_datagram_serve (the start drops privileges first). With
 * @inherited >= 0 (socket activation), nothing is bound: every worker
 * reads that socket, which the set then owns, and a unixgram: file is the
 * service manager's (never removed here). @address receives the bound
 * address ("udp:127.0.0.1:5353", "unixgram:/path"). @return the set or
 * NULL (logged). */
evsd_datagram *evsd_datagram_start(evs_runtime *rt, const evsd_listener_conf *c,
                                   const evs_datagram_protocol *proto, void *ctx, int inherited,
                                   char *address, size_t alen);
/* A reload's successor of @prev (same address): endpoints for @c with
 * @proto and @ctx on copies (dup) of @prev's sockets, so nothing is bound
 * again (a privileged port stays reachable after the switch to `user`, and
 * a failed reload leaves @prev's unixgram file alone). Where @prev's
 * endpoint was lost, a new socket is bound to the same address if it can
 * be (logged either way; a lost unixgram socket's stale file is replaced,
 * and is gone if the reload then fails). @return the set or NULL. Its
 * endpoints read from evsd_datagram_serve on. */
evsd_datagram *evsd_datagram_succeed(evs_runtime *rt, const evsd_datagram *prev,
                                     const evsd_listener_conf *c,
                                     const evs_datagram_protocol *proto, void *ctx);
/* Start reading: datagrams reach the plugin from now on. */
void evsd_datagram_serve(evs_runtime *rt, evsd_datagram *set);
/* The reload succeeded: @set now owns the socket file (removed when it
 * stops) and takes @c's mode and owner. */
void evsd_datagram_take_over(evsd_datagram *set, evsd_datagram *prev, const evsd_listener_conf *c);
/* Close every endpoint (on its worker, waiting) and free the set. */
void evsd_datagram_stop(evs_runtime *rt, evsd_datagram *set);

#endif
