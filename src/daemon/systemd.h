/*
 * systemd.h - service notifications (sd_notify) and socket activation.
 */
#ifndef EVSD_SYSTEMD_H
#define EVSD_SYSTEMD_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Tell the service manager (READY=1, RELOADING=1, STOPPING=1, STATUS=...).
 * A no-op without NOTIFY_SOCKET or without libsystemd at build time. */
void evsd_notify(const char *state);
/* RELOADING=1 with the MONOTONIC_USEC systemd wants since v253. */
void evsd_notify_reloading(void);

/* Take the sockets systemd passed (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES)
 * and clear those variables. Called before the daemon opens any file, so
 * that fds 3 and up are still the passed ones; a number that is not an
 * open socket is ignored with a warning. @return how many were counted. */
size_t evsd_activation_take(void);
/* How many taken sockets are not claimed yet. */
size_t evsd_activation_count(void);
/* The inherited socket for @l: the one named like the listener
 * (FileDescriptorName=) or bound to its address, of the kind @l serves (a
 * listening stream socket, or a datagram socket). Each socket is given out
 * once. @return it, -ENOENT when there is none, or -EPROTOTYPE (logged)
 * when the socket named like @l is of the wrong kind. */
int evsd_activation_claim(const evsd_listener_conf *l);
/* Close the inherited sockets no listener claimed (with a warning). */
void evsd_activation_close_unclaimed(void);

#endif
