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
/* An opaque pointer carried by the pair (servers keep their handler's). */
void evs__stream_set_tag(evs_writer *w, void *tag);
void *evs__stream_tag(const evs_writer *w);

#endif
