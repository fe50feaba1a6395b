/**
 * @file evstream/pipe.h
 * Pipe transports: the seed's read and write pipe transports
 * (connect_read_pipe / connect_write_pipe) for any file descriptor that is
 * not a socket: pipes, FIFOs, ttys, character devices that epoll can watch
 * (one it refuses, such as /dev/null or a regular file, fails with -EPERM).
 *
 * A pipe transport is an ordinary evs_transport (transport.h): the same
 * protocol callbacks, write queue, watermarks and pause_writing /
 * resume_writing, close, abort and timeouts. The differences:
 *   - reading uses read() and writing writev() (sockets use recv/sendmsg);
 *   - write_eof() closes the write end (once the queue is flushed); on a
 *     write-only transport it then closes the transport; one fd read and
 *     written both ways (a tty) cannot half-close (-ENOTSUP);
 *   - peername/sockname fail (-ENOTSOCK); evs_transport_get_fd() returns
 *     the read end (or the write end of a write-only transport).
 *
 * SIGPIPE: writing to a pipe whose reader is gone raises SIGPIPE, which
 * would kill a program that has not ignored it. evstream never changes the
 * process's dispositions: around each writev() on a pipe it blocks SIGPIPE
 * in the calling thread, and if the write failed with EPIPE it consumes the
 * SIGPIPE that write raised (unless one was already pending), then restores
 * the mask. The write reports -EPIPE and the connection is lost with
 * -EPIPE, as for a socket.
 *
 * An fd given to evs_transport_new() that is not a socket is handled the
 * same way (one fd both ways).
 *
 * Thread: a worker or evs_run()'s loop; the transport belongs to it.
 */
#ifndef EVSTREAM_PIPE_H
#define EVSTREAM_PIPE_H

#include <evstream/common.h>
#include <evstream/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Connect a read pipe and/or a write pipe to @p proto: one transport that
 * reads @p read_fd and writes @p write_fd. Either may be -1 (a read-only
 * transport refuses writes with -EPIPE; a write-only one never calls
 * data_received), not both; they may be the same fd (a tty). The fds are
 * made non-blocking and owned by the transport from now on, even on
 * failure. connection_made is called before this returns.
 * At EOF on the read end eof_received is called (return true to keep
 * writing). A write end whose reader went away loses the connection: on a
 * write-only transport over a pipe or FIFO as soon as the reader closes
 * (connection_lost gets 0 if nothing was queued, else -EPIPE and the
 * queued bytes are dropped), as asyncio's write pipe transport does;
 * otherwise with -EPIPE at the next write. A FIFO opened O_RDWR is its own
 * reader: it is never left without one.
 * @return 0, -EINVAL (no fd, no protocol, not on a worker), -ESHUTDOWN
 *         (the worker is stopping), or a negative errno.
 */
EVS_EXTERN int evs_pipe_open(int read_fd, int write_fd, const evs_protocol *proto, void *ctx,
                             evs_transport **out);

/**
 * The stream-mode equivalent: a (reader, writer) pair on a read pipe and a
 * write pipe (either may be -1). A pair without a write end fails writes
 * with -EPIPE; without a read end its reader never sees data. evs_close()
 * / evs_write_eof() close the write end after flushing. Release with
 * evs_writer_free().
 * @param limit reader limit; 0 = 64 KiB.
 */
EVS_EXTERN int evs_stream_open_pipe(int read_fd, int write_fd, size_t limit, evs_reader **r,
                                    evs_writer **w);

#ifdef __cplusplus
}
#endif
#endif
