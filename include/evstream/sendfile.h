/**
 * @file evstream/sendfile.h
 * sendfile: send part of a file over a transport or a stream writer (the
 * seed's loop.sendfile / StreamWriter-level equivalent), with sendfile(2)
 * where the transport allows it and read()+write() otherwise (TLS without
 * kernel TLS, pipes). Bytes go out after anything already queued, in order.
 *
 * Thread: the transport's worker.
 */
#ifndef EVSTREAM_SENDFILE_H
#define EVSTREAM_SENDFILE_H

#include <sys/types.h>

#include <evstream/common.h>
#include <evstream/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Send @p count bytes of @p file_fd from @p offset (count 0: up to the end
 * of the file) over @p t. The file's own offset is not used or changed.
 * When nothing is queued on a plain socket transport, the kernel copies
 * the bytes with sendfile(2) until the socket is full; the rest is read
 * from the file and queued like write() data: it counts in the write
 * buffer size, so pause_writing is called when it goes above the high
 * watermark, and the connection's write cap applies. To send a large file
 * with bounded memory, send it in slices from resume_writing (or use
 * evs_sendfile() from a task, which does that).
 * @return the bytes sent or queued (less than asked only at the end of the
 *         file); -EPIPE after close or write_eof; -EINVAL for a bad
 *         offset; a read error of the file (-EIO, -EBADF for a file not
 *         open for reading): the connection lives on when no byte had
 *         gone, and is aborted with that error when some had (the peer
 *         would hold a cut file on a connection that looks healthy); the
 *         connection's error.
 */
EVS_EXTERN ssize_t evs_transport_sendfile(evs_transport *t, int file_fd, off_t offset,
                                          size_t count);

/**
 * Stream mode: send the file range over @p w and drain as it goes, so at
 * most about one slice (256 KiB) plus the high watermark is ever queued.
 * Parks.
 * @return the bytes sent (less than asked only at the end of the file), or
 *         a negative error (the stream's, the file's, -ECANCELED,
 *         -ETIMEDOUT). A file that fails after some of it was sent aborts
 *         the connection, as above.
 */
EVS_EXTERN ssize_t evs_sendfile(evs_writer *w, int file_fd, off_t offset, size_t count);

#ifdef __cplusplus
}
#endif
#endif
