/*
  socketpair: the seed's "Register an open socket to wait for data using
  streams" (asyncio.open_connection(sock=rsock)) in C.

  A task running under evs_run() makes a connected socket pair, wraps one
  end in a (reader, writer) pair with evs_stream_open_fd(), and waits on the
  reader for data. A second task plays the network (the seed's
  loop.call_soon(wsock.send, ...)): it runs once the first task parks and
  sends "abc" from the other end with a plain send().

  Run:   ./socketpair
  Output:
      Received: abc
  The exit status is 0 on success, 1 on any failure.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <evstream.h>

/* Simulate the reception of data from the network. */
static int send_later(void *arg)
{
    int fd = *(int *)arg;

    if (send(fd, "abc", 3, MSG_NOSIGNAL) != 3) {
        fprintf(stderr, "send: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

static int wait_for_data(void *arg)
{
    evs_reader *r;
    evs_writer *w;
    evs_task *sender;
    char data[100];
    ssize_t n;
    int sv[2], err, sent = 1;

    (void)arg;
    /* Create a pair of connected sockets. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        fprintf(stderr, "socketpair: %s\n", strerror(errno));
        return 1;
    }
    /* Register the open socket to wait for data; the pair owns sv[0] now
     * (and closes it even when this fails). */
    if ((err = evs_stream_open_fd(sv[0], 0, &r, &w)) < 0) {
        fprintf(stderr, "evs_stream_open_fd: %s\n", evs_strerror(err));
        close(sv[1]);
        return 1;
    }
    /* The sender first runs when this task parks in evs_read() below. */
    if ((err = evs_task_spawn(send_later, &sv[1], &sender)) < 0) {
        fprintf(stderr, "evs_task_spawn: %s\n", evs_strerror(err));
        evs_writer_free(w);
        close(sv[1]);
        return 1;
    }

    /* Wait for data: parks until the sender's bytes arrive. */
    n = evs_read(r, data, sizeof data - 1);
    if (n > 0) {
        data[n] = '\0';
        printf("Received: %s\n", data);
    } else {
        fprintf(stderr, "read: %s\n", n == 0 ? "unexpected end of stream" : evs_strerror((int)n));
    }
    evs_task_join(sender, &sent);

    /* Got data, we are done: close the socket, then the second one. */
    evs_close(w);
    evs_wait_closed(w);
    evs_writer_free(w);
    close(sv[1]);
    return n > 0 && sent == 0 ? 0 : 1;
}

int main(void)
{
    int err, result = 1;

    if ((err = evs_run(wait_for_data, NULL, &result)) < 0) {
        fprintf(stderr, "evs_run: %s\n", evs_strerror(err));
        return 1;
    }
    return result;
}
