/*
 * pipe.c - pipe transports: the stream transport (transport.c) on fds that
 * are not sockets. transport.c picks read()/writev() for them; here we set
 * up a separate write end or a missing side, and write without SIGPIPE.
 */
#include "transport.h"
#include "stream.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <evstream/pipe.h>

/*
 * writev() on a pipe and sendfile() on a socket (neither takes
 * MSG_NOSIGNAL) raise SIGPIPE when the reader is gone. The library must
 * not change the process's signal dispositions (the embedding program owns
 * them), so the signal is blocked in this thread for the call and, when
 * the write failed with EPIPE, the SIGPIPE it left pending is consumed
 * with sigtimedwait(). SIGPIPE from a write is sent to the writing thread,
 * so no other thread can see it. If one was already pending before (raised
 * elsewhere and blocked), it is left alone: standard signals do not queue,
 * so ours merged into it. Runtime threads block every signal for their
 * whole life: there the write goes unguarded (no three system calls per
 * write), and the one SIGPIPE it may leave pending harms nothing.
 */
_Thread_local bool evs__signals_blocked_here;

void evs__sigpipe_hold(evs__sigpipe_held *h)
{
    sigset_t pipe_set, pending;

    h->skipped = evs__signals_blocked_here;
    if (h->skipped)
        return;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &h->old);
    sigemptyset(&pending);
    sigpending(&pending);
    h->was_pending = sigismember(&pending, SIGPIPE);
}

void evs__sigpipe_release(const evs__sigpipe_held *h, bool got_epipe)
{
    int saved = errno;

    if (h->skipped)
        return;
    if (got_epipe && !h->was_pending) {
        static const struct timespec zero = {0, 0};
        sigset_t pipe_set;

        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &h->old, NULL);
    errno = saved;
}

ssize_t evs__pipe_writev(int fd, const struct iovec *iov, int iovcnt)
{
    evs__sigpipe_held h;
    ssize_t n;

    evs__sigpipe_hold(&h);
    n = writev(fd, iov, iovcnt);
    evs__sigpipe_release(&h, n < 0 && errno == EPIPE);
    return n;
}

static int set_nonblock(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

static void close_both(int rfd, int wfd)
{
    if (rfd >= 0)
        close(rfd);
    if (wfd >= 0 && wfd != rfd)
        close(wfd);
}

/* A no-op callback for the side a transport does not have: its event has
 * no fd and no condition, so it never fires. */
static void never_cb(evutil_socket_t fd, short what, void *arg)
{
    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    EVS_UNUSED(arg);
}

/*
 * The write end of a pipe shows an error condition once the read end is
 * closed, to any watcher, whatever it waits for. asyncio's write pipe
 * transport watches for it with a reader; ours with the read event a
 * write-only transport has no other use for. So the protocol learns at once
 * that the reader is gone, not at its next write: connection_lost(-EPIPE)
 * if bytes were still queued (they are lost), connection_lost(0) if not.
 */
static void reader_gone_cb(evutil_socket_t fd, short what, void *arg)
{
    evs_transport *t = arg;

    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    if (evs__transport_queued(t) > 0)
        evs__transport_fatal(t, -EPIPE);
    else
        evs_transport_close(t);
}

static bool is_fifo(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* Opened O_WRONLY. A FIFO opened O_RDWR (the usual way to open one for
 * writing without blocking) is its own reader: its "readable" means our own
 * bytes, not the other reader's end, and it can never be left without one. */
static bool write_only(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    return fl >= 0 && (fl & O_ACCMODE) == O_WRONLY;
}

/* Adjust a transport created on the primary fd for (rfd, wfd). */
static void setup(evs_transport *t, int rfd, int wfd)
{
    struct event_base *base = t->worker->base;

    t->is_pipe = true; /* even for a socket handed in as a "pipe" */
    if (rfd < 0) {
        /* Write-only: t->fd is the write end; nothing is ever read, but a
         * pipe's read end going away is watched for. A socket's read
         * event would fire on data or EOF, which mean no such thing. */
        if (is_fifo(wfd) && write_only(wfd))
            event_assign(&t->rd_ev, base, wfd, EV_READ | EV_PERSIST, reader_gone_cb, t);
        else
            event_assign(&t->rd_ev, base, -1, 0, never_cb, t);
        t->eof_received = true;
        t->wfd = wfd;
    } else if (wfd < 0) {
        /* Read-only: writes get -EPIPE as after write_eof. */
        t->wfd = -1;
        t->eof_pending = true;
        t->eof_sent = true;
    } else {
        t->wfd = wfd; /* the write event, made on first need, watches it */
    }
}

/* epoll refuses regular files and some character devices (/dev/null,
 * /dev/zero: EPERM). Unchecked, a transport on one waited forever, no data
 * and no EOF; asyncio refuses them too. @return 0 or a negative errno. */
static int check_pollable(int fd)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int ep, err = 0;

    if (fd < 0)
        return 0;
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        return -errno;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        err = -errno;
    close(ep);
    return err;
}

/* Check the pair and make a separate write end non-blocking (the primary
 * fd is made so by the transport). Closes both on failure. */
static int prepare(int rfd, int wfd, bool ok)
{
    int err = 0;

    if ((rfd < 0 && wfd < 0) || !ok)
        err = -EINVAL;
    else if ((err = check_pollable(rfd)) == 0 && wfd != rfd)
        err = check_pollable(wfd);
    if (err == 0 && rfd >= 0 && wfd >= 0 && wfd != rfd)
        err = set_nonblock(wfd);
    if (err)
        close_both(rfd, wfd);
    return err;
}

int evs_pipe_open(int read_fd, int write_fd, const evs_protocol *proto, void *ctx,
                  evs_transport **out)
{
    evs_worker *w = evs_worker_current();
    int primary = read_fd >= 0 ? read_fd : write_fd;
    evs_transport *t;
    int err = prepare(read_fd, write_fd, w && proto);

    if (err)
        return err;
    err = evs__transport_create(w, primary, EVS__FD_PROBE, proto, ctx, &t);
    if (err) {
        if (write_fd >= 0 && write_fd != primary)
            close(write_fd);
        return err;
    }
    setup(t, read_fd, write_fd);
    if (out)
        *out = t;
    evs__transport_start(t);
    return 0;
}

int evs_stream_open_pipe(int read_fd, int write_fd, size_t limit, evs_reader **r, evs_writer **w)
{
    evs_worker *wk = evs_worker_current();
    int primary = read_fd >= 0 ? read_fd : write_fd;
    evs_transport *t;
    int err = prepare(read_fd, write_fd, wk && r && w);

    if (err)
        return err;
    err = evs__stream_create(wk, primary, EVS__FD_PROBE, limit, r, w, &t);
    if (err) {
        if (write_fd >= 0 && write_fd != primary)
            close(write_fd);
        return err;
    }
    setup(t, read_fd, write_fd);
    evs__transport_start(t);
    return 0;
}
