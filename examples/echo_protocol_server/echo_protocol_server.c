/*
  echo_protocol_server: a TCP echo server on evstream's transports and
  protocols, the C version of the seed's "TCP Echo Server"
  (loop.create_server with an asyncio.Protocol).

  No tasks here: the transport calls the protocol's callbacks on a worker.
  connection_made gives each connection its own state, data_received writes
  the bytes straight back, eof_received lets the transport close once the
  echo is flushed, and connection_lost frees the state. Where the seed closes
  after the first chunk, this one echoes until the client closes its side.
  pause_writing/resume_writing pause reading while the client does not read
  its echo, so the write buffer stays bounded.

  Run:   ./echo_protocol_server [HOST [PORT]]   (default 127.0.0.1 8888; port 0 = any)
  Try:   ./echo_client "Hello World!"           or   nc 127.0.0.1 8888
  Stop:  Ctrl-C or kill -TERM; the exit status is 0.

  It prints "listening on ADDRESS:PORT" on stdout for every listening socket
  (with the real port when you asked for 0), and one line per connection
  event on stderr.
*/
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <evstream.h>

/* Per-connection state: the seed's Protocol instance attributes. */
struct conn {
    char peer[128];
    size_t bytes;
};

static const evs_protocol echo_protocol;

static void connection_made(evs_transport *t, void *server_arg)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    struct conn *c = calloc(1, sizeof *c);

    (void)server_arg;
    if (!c) {
        fprintf(stderr, "out of memory, dropping a connection\n");
        evs_transport_abort(t); /* connection_lost(ctx = server_arg) follows */
        return;
    }
    if (evs_transport_get_peername(t, &ss, &len) == 0)
        evs_format_address((struct sockaddr *)&ss, len, c->peer, sizeof c->peer);
    else
        snprintf(c->peer, sizeof c->peer, "?");
    fprintf(stderr, "%s: connected\n", c->peer);
    /* From now on every callback of this connection gets c as ctx. */
    evs_transport_set_protocol(t, &echo_protocol, c);
}

static void data_received(evs_transport *t, const void *data, size_t len, void *ctx)
{
    struct conn *c = ctx;
    int err;

    c->bytes += len;
    /* write() never blocks: what the socket does not take is queued. */
    if ((err = evs_transport_write(t, data, len)) < 0) {
        fprintf(stderr, "%s: write: %s\n", c->peer, evs_strerror(err));
        evs_transport_abort(t);
    }
}

static bool eof_received(evs_transport *t, void *ctx)
{
    struct conn *c = ctx;

    fprintf(stderr, "%s: end of input\n", c->peer);
    return false; /* close: the transport flushes the echo first */
}

static void connection_lost(evs_transport *t, int err, void *ctx)
{
    struct conn *c = ctx;

    if (!c)
        return; /* connection_made could not allocate: ctx is the server's NULL arg */
    if (err < 0)
        fprintf(stderr, "%s: lost: %s after %zu bytes\n", c->peer, evs_strerror(err), c->bytes);
    else
        fprintf(stderr, "%s: closed after echoing %zu bytes\n", c->peer, c->bytes);
    free(c);
}

/* Flow control: stop reading while the client is not reading its echo. */
static void pause_writing(evs_transport *t, void *ctx)
{
    evs_transport_pause_reading(t);
}

static void resume_writing(evs_transport *t, void *ctx)
{
    evs_transport_resume_reading(t);
}

static const evs_protocol echo_protocol = {
    .connection_made = connection_made,
    .data_received = data_received,
    .eof_received = eof_received,
    .connection_lost = connection_lost,
    .pause_writing = pause_writing,
    .resume_writing = resume_writing,
};

static int parse_port(const char *s, uint16_t *port)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static void print_listening(evs_server *srv)
{
    int fds[16];
    size_t n = evs_server_sockets(srv, fds, 16);

    for (size_t i = 0; i < n && i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char addr[128];

        if (getsockname(fds[i], (struct sockaddr *)&ss, &len) == 0)
            printf("listening on %s\n",
                   evs_format_address((struct sockaddr *)&ss, len, addr, sizeof addr));
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    uint16_t port = 8888;
    evs_server_options opts = {0};
    evs_runtime *rt;
    evs_server *srv;
    sigset_t stop_signals;
    int err, sig;

    if (argc > 3 || (argc > 2 && parse_port(argv[2], &port) < 0)) {
        fprintf(stderr, "usage: %s [HOST [PORT]]\n", argv[0]);
        return 2;
    }

    /* Block the stop signals before any thread exists: the workers inherit
     * the mask, so the signals stay pending until sigwait() takes them here
     * in main, where calling evs_runtime_stop() is allowed. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if ((err = pthread_sigmask(SIG_BLOCK, &stop_signals, NULL)) != 0) {
        fprintf(stderr, "pthread_sigmask: %s\n", strerror(err));
        return 1;
    }

    if ((err = evs_runtime_new(NULL, &rt)) < 0) {
        fprintf(stderr, "cannot start the runtime: %s\n", evs_strerror(err));
        return 1;
    }
    opts.protocol = &echo_protocol;
    opts.host = host;
    opts.port = port;
    if ((err = evs_start_server(rt, &opts, &srv)) < 0) {
        fprintf(stderr, "cannot listen on %s port %u: %s\n", host, (unsigned)port,
                evs_strerror(err));
        evs_runtime_stop(rt, 0);
        return 1;
    }
    print_listening(srv);

    if ((err = sigwait(&stop_signals, &sig)) != 0) {
        fprintf(stderr, "sigwait: %s\n", strerror(err));
        evs_runtime_stop(rt, 0);
        return 1;
    }
    fprintf(stderr, "%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* Closes the server, lets connections finish, aborts what is left
     * (their connection_lost still runs and frees the state). */
    if (evs_runtime_stop(rt, 5) == -ETIMEDOUT)
        fprintf(stderr, "some connections did not finish in time and were aborted\n");
    return 0;
}
