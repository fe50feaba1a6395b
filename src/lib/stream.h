/*
 * stream.h - the stream layer's internal entry points (for servers and
 * clients). Internal.
 */
#ifndef EVS_STREAM_INTERNAL_H
#define EVS_STREAM_INTERNAL_H

#include "internal.h"

#include "worker.h"

/* Wrap @fd (owned from now on, closed on failure) in a transport on @w with
 * a (reader, writer) pair on top. The pair is released with
 * evs_writer_free(). */
int evs__stream_open(evs_worker *w, int fd, size_t limit, evs_reader **r, evs_writer **wr,
                     evs_transport **t);
/* Like evs__stream_open without starting the transport (attach TLS or
 * hooks first, then evs__transport_start). */
int evs__stream_create(evs_worker *w, int fd, int family, size_t limit, evs_reader **r,
                       evs_writer **wr, evs_transport **t);
/* Called from connection_made: at start for plain transports, after the
 * handshake for TLS ones. */
typedef void (*evs__stream_made_fn)(evs_writer *w, void *arg);
void evs__stream_on_made(evs_writer *w, evs__stream_made_fn fn, void *arg);
/* Park until connection_made (0) or the connection is lost (its error). */
int evs__stream_wait_made(evs_writer *w, double *began);
/* Free the pairs whose connection is gone and that nobody released, and
 * those evs__stream_free_doomed would free: the worker is ending, so
 * nothing can release or read them any more. */
void evs__stream_free_orphans(evs_worker *w);
/* Free the released pairs whose last reader call handed out a view
 * (worker's doomed_ev, run once the task that got it has waited). */
void evs__stream_free_doomed(evs_worker *w);
/* An opaque pointer carried by the pair (servers keep their handler's). */
void evs__stream_set_tag(evs_writer *w, void *tag);
void *evs__stream_tag(const evs_writer *w);

#endif
