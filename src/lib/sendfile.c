/*
 * sendfile.c - sending file ranges over a transport: sendfile(2) straight
 * to the socket while nothing is queued, read()+write() for the rest and
 * for transports the kernel cannot feed (TLS, pipes).
 *
 * Bytes the socket does not take at once are copied into the write queue
 * like write() data, so ordering, flow control, the write cap and the
 * runtime's budget all apply unchanged. (A lazily read file segment in the
 * queue would need its own path through the transport's flush; mmap'ing
 * the file would make a truncated file kill the process with SIGBUS.) The
 * stream-mode evs_sendfile() bounds memory by sending in slices and
 * draining between them.
 */
#include "transport.h"

#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <evstream/sendfile.h>

#define COPY_CHUNK (64u * 1024u)
#define STREAM_SLICE (256u * 1024u)

/* @count 0: up to the end of the file. Clamp to the file's end for
 * regular files. @return 0 or -EINVAL. */
static int resolve_count(int file_fd, off_t offset, size_t *count)
{
    struct stat st;

    if (offset < 0)
        return -EINVAL;
    if (fstat(file_fd, &st) < 0)
        return -errno; /* -EBADF, as the header says */
    if (!S_ISREG(st.st_mode))
        return *count ? 0 : -EINVAL;
    if (offset >= st.st_size) {
        *count = 0;
        return 0;
    }
    if (*count == 0 || *count > (size_t)(st.st_size - offset))
        *count = (size_t)(st.st_size - offset);
    return 0;
}

/* An error of sendfile() that is the connection's, not the file's. */
static bool socket_error(int err)
{
    switch (err) {
    case EPIPE:
    case ECONNRESET:
    case ENOTCONN:
    case ETIMEDOUT:
    case ECONNABORTED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
        return true;
    default:
        return false;
    }
}

/* The file failed after part of it went out: the peer holds a cut file
 * on a connection that looks healthy, so end the connection, with the
 * file's error. (Before any byte went, the caller may still answer.) */
static int cut_short(evs_transport *t, int err)
{
    evs__transport_fatal(t, err);
    return err;
}

ssize_t evs_transport_sendfile(evs_transport *t, int file_fd, off_t offset, size_t count)
{
    size_t total = 0;
    char *buf;
    int err;

    if (t->lost_scheduled && t->error)
        return t->error;
    if (t->closing || t->eof_pending)
        return -EPIPE;
    if ((err = resolve_count(file_fd, offset, &count)) < 0)
        return err;
    /* Zero copy only while the queue is empty: the file's bytes must go
     * after what is already queued. */
    if (!t->tls && !t->is_pipe && evs__transport_queued(t) == 0) {
        while (total < count) {
            off_t off = offset + (off_t)total;
            size_t want = count - total;
            evs__sigpipe_held held;
            ssize_t n;

            evs__sigpipe_hold(&held);
            n = sendfile(t->fd, file_fd, &off, want > (1u << 30) ? (1u << 30) : want);
            evs__sigpipe_release(&held, n < 0 && errno == EPIPE);

            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINVAL ||
                    errno == ENOSYS || errno == EOVERFLOW)
                    break; /* full, or this file cannot be sent so: copy */
                err = -errno;
                if (socket_error(-err) || total > 0)
                    return cut_short(t, err);
                return err; /* the file's (EIO, EBADF): the connection lives on */
            }
            if (n == 0)
                break; /* the file is shorter than it was */
            evs__counter_add(&t->worker->bytes_out, (uint64_t)n);
            t->bytes_out += (uint64_t)n;
            if (t->timers)
                evs__timeouts_write(t);
            total += (size_t)n;
        }
    }
    if (total == count)
        return (ssize_t)total;
    buf = malloc(COPY_CHUNK);
    if (!buf)
        return -ENOMEM;
    while (total < count) {
        size_t want = count - total;
        ssize_t n = pread(file_fd, buf, want > COPY_CHUNK ? COPY_CHUNK : want,
                          offset + (off_t)total);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = -errno;
            free(buf);
            return total > 0 ? cut_short(t, err) : err;
        }
        if (n == 0)
            break;
        if ((err = evs_transport_write(t, buf, (size_t)n)) < 0) {
            free(buf);
            return err;
        }
        total += (size_t)n;
    }
    free(buf);
    return (ssize_t)total;
}

/* What one slice may queue: at most STREAM_SLICE, and within the
 * connection's cap (max_write_buffer) on top of what is queued, which a
 * slice past it would have aborted. Half the room: TLS adds a little to
 * every record. */
static size_t slice_for(const evs_transport *t, size_t left)
{
    size_t slice = left > STREAM_SLICE ? STREAM_SLICE : left;
    size_t queued = evs_transport_get_write_buffer_size(t);

    if (t->max_write_buffer) {
        size_t room = t->max_write_buffer > queued ? (t->max_write_buffer - queued) / 2 : 0;
        if (slice > room)
            slice = room > 0 ? room : 1;
    }
    return slice;
}

ssize_t evs_sendfile(evs_writer *w, int file_fd, off_t offset, size_t count)
{
    evs_transport *t = evs_writer_transport(w);
    size_t sent = 0;
    int err;

    if ((err = evs_write(w, "", 0)) < 0) /* closed, lost */
        return err;
    if ((err = resolve_count(file_fd, offset, &count)) < 0)
        return err;
    while (sent < count) {
        size_t slice = slice_for(t, count - sent);
        ssize_t n = evs_transport_sendfile(t, file_fd, offset + (off_t)sent, slice);

        if (n < 0)
            return sent > 0 && !t->closing ? cut_short(t, (int)n) : n;
        sent += (size_t)n;
        if ((size_t)n < slice)
            break; /* end of file */
        if ((err = evs_drain(w)) < 0)
            return err;
    }
    return (ssize_t)sent;
}
