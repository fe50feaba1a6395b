/*
 * transport.h - the socket transport's internals (shared with the stream
 * layer and the server). Internal.
 */
#ifndef EVS_TRANSPORT_INTERNAL_H
#define EVS_TRANSPORT_INTERNAL_H

#include "internal.h"

#include <signal.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "worker.h"

typedef void (*evs__transport_hook)(evs_transport *t, void *arg);

/* A connection's timeouts (timeouts.c), allocated only when it has one. */
typedef struct evs__timers {
    struct event ev; /* one timer for the nearest deadline */
    evs_timeouts to;
    struct timeval last_read;
    struct timeval last_write;
    struct timeval reading_since; /* the last resume_reading: the read timeout counts from here */
} evs__timers;

/* Kept small: an idle connection costs this struct and little else. What
 * only some connections need (a write queue, timeouts, the peer address)
 * hangs off pointers that stay NULL otherwise. */
struct evs_transport {
    evs_worker *worker;
    int fd;
    int wfd; /* where writes go: fd for sockets; a pipe's write end or -1 */
    const evs_protocol *proto;
    void *ctx;

    struct event rd_ev;
    /* The write queue and its event, made by the first write the socket
     * does not take whole. */
    struct evbuffer *out;
    struct event *wr_ev;
    evs__timers *timers;
    size_t max_write_buffer; /* 0: no cap */
    size_t high;
    size_t low;

    int refs;
    int error;           /* the error connection_lost reports */
    bool paused;         /* pause_reading() */
    bool closing;        /* close(), abort() or a fatal error */
    bool eof_pending;    /* write_eof() waits for the buffer to drain */
    bool eof_sent;
    bool eof_received;
    bool protocol_paused;
    bool lost_scheduled;
    bool lost;           /* connection_lost has been called */
    bool made;           /* the protocol got connection_made (TLS: after the handshake) */
    bool lost_unmade;    /* call connection_lost even without connection_made (stream pairs) */
    bool dropped;        /* buffered bytes were thrown away (abort, error) */
    bool is_tcp;
    /* Not a socket (pipe, FIFO, tty): read()/writev() instead of
     * recv()/sendmsg(), and write_eof closes wfd (pipe.c). */
    bool is_pipe;
    bool ip_counted;

    uint64_t bytes_in;   /* socket bytes (ciphertext under TLS) */
    uint64_t bytes_out;
    struct timeval started;
    struct sockaddr_storage *peer; /* kept from accept for access logs, or NULL */
    socklen_t peerlen;
    struct evs__proxied *proxied;   /* what a PROXY header said, or NULL */
    uint64_t ip_key;                /* its server's per-address count, if ip_counted */

    /* Called once when the connection ends, before connection_lost. */
    evs__transport_hook closed_hook;
    void *closed_hook_arg;

    /* TLS layer (tls_transport.c), NULL for plaintext. */
    struct evs__tls *tls;
    /* Called when a handshake started by start_tls ends (err 0 or < 0). */
    void (*tls_done)(evs_transport *t, int err, void *arg);
    void *tls_done_arg;

    evs_transport *next; /* the worker's list of live transports */
    evs_transport *prev;
    evs_transport *lost_next; /* the worker's connection_lost queue */
};

/* Bytes in the write queue (not counting TLS's own). */
static inline size_t evs__transport_queued(const evs_transport *t)
{
    return t->out ? evbuffer_get_length(t->out) : 0;
}

/* Set up and tear down a worker's transport lists (worker.c). */
void evs__transport_list_init(evs_worker *w);
void evs__transport_list_fini(evs_worker *w);

/* What is known of an fd before its transport is made: EVS__FD_PROBE asks
 * the kernel what it is and makes it non-blocking; an accepted socket
 * passes its address family instead (accept4 made it non-blocking), which
 * saves three system calls per connection. */
#define EVS__FD_PROBE (-1)

/* Create a transport on worker @w without calling connection_made yet. */
int evs__transport_create(evs_worker *w, int fd, int family, const evs_protocol *proto, void *ctx,
                          evs_transport **out);
/* Call connection_made and start reading. */
void evs__transport_start(evs_transport *t);
void evs__transport_ref(evs_transport *t);
void evs__transport_unref(evs_transport *t);
/* Call connection_made (plain: at start; TLS: after the handshake). */
void evs__transport_made(evs_transport *t);
/* End the connection with @err: drop the buffer, connection_lost(err). */
void evs__transport_fatal(evs_transport *t, int err);
/* The rest of a close() (closing is set): stop reading, close TLS, and
 * connection_lost once the buffer is flushed. */
void evs__transport_finish_close(evs_transport *t);
/* The peer will send no more: eof_received, then close unless kept. */
void evs__transport_eof(evs_transport *t);
/* Send bytes as they are (after TLS): try the socket, queue the rest. */
int evs__transport_send(evs_transport *t, const struct iovec *iov, int iovcnt, size_t total);
/* What a PROXY header told about a connection. */
struct evs__proxied {
    struct sockaddr_storage src;
    socklen_t srclen;
    size_t tlvlen;
    uint8_t tlv[]; /* v2 TLVs */
};

/* Hand @len bytes to the protocol as if just read (get_buffer or
 * data_received). */
void evs__transport_deliver(evs_transport *t, const void *data, size_t len);
/* Timeouts (timeouts.c): bytes were read / written or the write queue
 * went from empty to non-empty. */
void evs__timeouts_read(evs_transport *t);
void evs__timeouts_write(evs_transport *t);
/* Reading resumed: time spent paused does not count for the read timeout. */
void evs__timeouts_resumed(evs_transport *t);

/* SIGPIPE blocked in this thread around a write that cannot take
 * MSG_NOSIGNAL, and consumed if the write raised it (pipe.c). */
typedef struct {
    sigset_t old;
    bool was_pending;
    bool skipped; /* evs__signals_blocked_here: nothing was changed */
} evs__sigpipe_held;
void evs__sigpipe_hold(evs__sigpipe_held *h);
/* @got_epipe: the write failed with EPIPE. Keeps errno. */
void evs__sigpipe_release(const evs__sigpipe_held *h, bool got_epipe);
/* writev() on a pipe without dying of SIGPIPE (pipe.c). */
ssize_t evs__pipe_writev(int fd, const struct iovec *iov, int iovcnt);

/* Count bytes read from the socket (worker and connection counters). */
void evs__transport_count_in(evs_transport *t, size_t n);
/* Call pause_writing if the buffer went above the high watermark. */
void evs__transport_maybe_pause(evs_transport *t);
/* Call resume_writing if the protocol is paused and the buffer is at or
 * under the low-water mark. */
void evs__transport_maybe_resume(evs_transport *t);
/* Abort every transport of @w (shutdown). */
void evs__transport_abort_all(evs_worker *w);

#endif
