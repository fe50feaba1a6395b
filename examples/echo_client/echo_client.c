/*
  echo_client: a TCP echo client on evstream's streams, the C version of the
  seed's "TCP echo client using streams" (asyncio.open_connection).

  evs_run() plays asyncio.run(): it runs client() as a task on a private
  event loop in this thread. The task connects, sends the message, reads the
  echo back (exactly as many bytes as it sent, however TCP splits them),
  prints it and closes the connection.

  Run:   ./echo_client [MESSAGE [HOST [PORT]]]   (default "Hello World!" 127.0.0.1 8888)
  with an echo server running, e.g. ./echo_server or ./echo_protocol_server.

  Output:
      Send: 'Hello World!'
      Received: 'Hello World!'
      Close the connection
  The exit status is 0 when the echo matched what was sent, 1 otherwise.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

struct job {
    const char *message;
    const char *host;
    uint16_t port;
};

static int client(void *arg)
{
    const struct job *job = arg;
    size_t len = strlen(job->message);
    evs_connect_options copts = {.timeout = 10};
    evs_reader *r;
    evs_writer *w;
    char *echo;
    ssize_t n;
    int err;

    /* Bound every later parked call, so a server that never answers
     * cannot keep us waiting forever. */
    evs_task_set_timeout(evs_task_current(), 30);

    if ((err = evs_open_connection(job->host, job->port, &copts, &r, &w)) < 0) {
        fprintf(stderr, "cannot connect to %s port %u: %s\n", job->host, (unsigned)job->port,
                evs_strerror(err));
        return 1;
    }

    printf("Send: '%s'\n", job->message);
    if ((err = evs_write(w, job->message, len)) < 0 || (err = evs_drain(w)) < 0) {
        fprintf(stderr, "send: %s\n", evs_strerror(err));
        evs_writer_free(w);
        return 1;
    }

    if (!(echo = malloc(len + 1))) {
        fprintf(stderr, "out of memory\n");
        evs_writer_free(w);
        return 1;
    }
    n = evs_readexactly(r, echo, len);
    if (n == EVS_EINCOMPLETE) {
        /* The server closed early; evs_readexactly() still copied the
         * partial bytes into echo. */
        const void *partial;
        n = (ssize_t)evs_reader_partial(r, &partial);
        fprintf(stderr, "the server closed the connection after %zd of %zu bytes\n", n, len);
    } else if (n < 0) {
        fprintf(stderr, "receive: %s\n", evs_strerror((int)n));
    }
    if (n >= 0) {
        echo[n] = '\0';
        printf("Received: '%s'\n", echo);
    }

    printf("Close the connection\n");
    evs_close(w);
    evs_wait_closed(w); /* evs_run() aborts what is left once we return */
    evs_writer_free(w);
    err = (n == (ssize_t)len && memcmp(echo, job->message, len) == 0) ? 0 : 1;
    free(echo);
    return err;
}

int main(int argc, char **argv)
{
    struct job job = {
        .message = argc > 1 ? argv[1] : "Hello World!",
        .host = argc > 2 ? argv[2] : "127.0.0.1",
        .port = 8888,
    };
    int err, result = 1;

    if (argc > 3) {
        char *end;
        long v;

        errno = 0;
        v = strtol(argv[3], &end, 10);
        if (errno || end == argv[3] || *end || v <= 0 || v > 65535) {
            fprintf(stderr, "bad port: %s\n", argv[3]);
            return 2;
        }
        job.port = (uint16_t)v;
    }
    if (argc > 4 || job.message[0] == '\0') {
        fprintf(stderr, "usage: %s [MESSAGE [HOST [PORT]]]  (MESSAGE not empty)\n", argv[0]);
        return 2;
    }

    if ((err = evs_run(client, &job, &result)) < 0) {
        fprintf(stderr, "evs_run: %s\n", evs_strerror(err));
        return 1;
    }
    return result;
}
