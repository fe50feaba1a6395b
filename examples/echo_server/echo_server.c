/*
  echo_server: a TCP echo server on evstream's streams, the C version of the
  seed's "TCP echo server using streams" (asyncio.start_server).

  Every connection runs echo() as a task on one of the runtime's workers: it
  reads what the client sends and writes it back until the client closes its
  side, just like the asyncio handler with its awaits. The main thread only
  waits for SIGINT or SIGTERM, then stops the runtime, giving live
  connections up to 5 seconds to finish.

  Run:   ./echo_server [HOST [PORT]]      (default 127.0.0.1 8888; port 0 = any)
  Try:   ./echo_client "Hello World!"     or   nc 127.0.0.1 8888
  Stop:  Ctrl-C or kill -TERM; the exit status is 0.

  It prints "listening on ADDRESS:PORT" on stdout for every listening socket
  (with the real port when you asked for 0), and one line per connection on
  stderr.
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

static void peer_name(evs_writer *w, char *buf, size_t size)
{
    evs_transport *t = evs_writer_transport(w);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (t && evs_transport_get_peername(t, &ss, &len) == 0)
        evs_format_address((struct sockaddr *)&ss, len, buf, size);
    else
        snprintf(buf, size, "?");
}

/* The handler, run as a task: every call that would block parks the task
 * and lets the worker serve other connections meanwhile. */
static void echo(evs_reader *r, evs_writer *w, void *arg)
{
    char peer[128], buf[16384];
    size_t total = 0;
    ssize_t n;
    int err = 0;

    (void)arg;
    peer_name(w, peer, sizeof peer);
    fprintf(stderr, "%s: connected\n", peer);
    while ((n = evs_read(r, buf, sizeof buf)) > 0) {
        total += (size_t)n;
        /* drain() after each write keeps the write buffer bounded when the
         * client sends faster than it reads. */
        if ((err = evs_write(w, buf, (size_t)n)) < 0 || (err = evs_drain(w)) < 0)
            break;
    }
    if (n < 0)
        err = (int)n;
    if (err < 0)
        fprintf(stderr, "%s: %s after %zu bytes\n", peer, evs_strerror(err), total);
    else
        fprintf(stderr, "%s: closed after echoing %zu bytes\n", peer, total);
    /* Returning closes the writer (buffered bytes are still flushed). */
}

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
    opts.client_connected = echo;
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
    /* Closes the server, lets handlers finish, aborts what is left. Having
     * to abort idle clients is a normal way to stop, not a failure. */
    if (evs_runtime_stop(rt, 5) == -ETIMEDOUT)
        fprintf(stderr, "some connections did not finish in time and were aborted\n");
    return 0;
}
