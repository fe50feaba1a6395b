/**
 * @file evstream/stream.h
 * Streams: asyncio's StreamReader and StreamWriter in C, for code running in
 * a task. A (reader, writer) pair sits on a transport, the way asyncio builds
 * StreamReaderProtocol.
 *
 * Reading: calls that the buffer can satisfy return at once, without a
 * context switch; otherwise the task parks until data, EOF or an error.
 * Bytes already buffered are delivered before a connection error; the error
 * is returned once the buffer cannot satisfy the call. A reset is not EOF.
 * Nothing read is ever lost: a call that fails with EVS_ELIMIT, a timeout,
 * a cancel or an error leaves the bytes in the reader.
 *
 * Views: evs_readline() and evs_readuntil*() return a pointer into the
 * reader's buffer (zero copy), valid until the next call on that reader;
 * evs_read() and evs_readexactly() copy into the caller's memory.
 *
 * One reader at a time: a second task that reads while another is parked
 * on the same reader (or woken and not yet run again) gets -EBUSY.
 *
 * Thread: every function runs on the stream's worker; calls that may park
 * (marked "parks") must be made from a task.
 */
#ifndef EVSTREAM_STREAM_H
#define EVSTREAM_STREAM_H

#include <sys/uio.h>

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default reader limit (asyncio's 64 KiB). */
#define EVS_STREAM_LIMIT_DEFAULT (64u * 1024u)

/** One separator for evs_readuntil_any(). */
typedef struct evs_separator {
    const void *data;
    size_t len; /**< > 0 */
} evs_separator;

/* --- StreamReader ------------------------------------------------------ */

/**
 * read(n): wait until at least one byte is buffered (or EOF), then copy up
 * to @p n bytes. Parks.
 * @return the count (> 0); 0 at EOF with an empty buffer, or at once when
 *         @p n is 0; a negative error (-ECONNRESET, -ECANCELED, -ETIMEDOUT,
 *         -EBUSY).
 */
EVS_EXTERN ssize_t evs_read(evs_reader *r, void *buf, size_t n);

/**
 * read(n) without the copy: wait until at least one byte is buffered (or
 * EOF), then return a view of up to @p n bytes from the front of the
 * reader's buffer (it is contiguous: every buffered byte up to @p n). Parks. Nothing of the caller's sits
 * on the task's stack while it waits, which keeps an idle connection's
 * stack to a page.
 * @param data receives the view (valid until the next call on @p r).
 * @return the count (> 0); 0 at EOF with an empty buffer, or at once when
 *         @p n is 0; a negative error (as evs_read()).
 */
EVS_EXTERN ssize_t evs_read_view(evs_reader *r, size_t n, const void **data);

/**
 * read(-1): read until EOF into @p buf, at most @p max bytes. Parks.
 * @return the count at EOF; EVS_ELIMIT when more than @p max bytes arrive
 *         before EOF (all of them stay in the reader); a negative error
 *         (the bytes stay in the reader).
 */
EVS_EXTERN ssize_t evs_read_to_eof(evs_reader *r, void *buf, size_t max);

/**
 * readexactly(n): copy exactly @p n bytes into @p buf. Parks.
 * @return @p n; EVS_EINCOMPLETE at EOF, with the partial bytes copied into
 *         @p buf and counted by evs_reader_partial(); a negative error (the
 *         bytes stay in the reader).
 */
EVS_EXTERN ssize_t evs_readexactly(evs_reader *r, void *buf, size_t n);

/**
 * readline(): a line ending with "\n" (included), as a view. At EOF the
 * last unterminated bytes are returned. Parks.
 * @param line receives the view (valid until the next call on @p r).
 * @return the length; 0 at EOF with an empty buffer; EVS_ELIMIT when the
 *         line (or the last partial line at EOF) is longer than the reader's
 *         limit, the data staying readable; a negative error.
 */
EVS_EXTERN ssize_t evs_readline(evs_reader *r, const void **line);

/**
 * readuntil(separator): bytes up to and including @p sep, as a view. Parks.
 * @return the length; EVS_ELIMIT when the separator is not found within
 *         the limit (the data stays); EVS_EINCOMPLETE at EOF (the partial
 *         bytes through evs_reader_partial()); a negative error.
 */
EVS_EXTERN ssize_t evs_readuntil(evs_reader *r, const void *sep, size_t seplen,
                                 const void **data);

/**
 * readuntil((sep1, sep2, ...)): like evs_readuntil() with several
 * separators: the data up to the first place a separator ends (more bytes
 * cannot change it, as in asyncio); EVS_ELIMIT when every separator
 * ending there starts past the limit.
 * @param limit the most bytes allowed before the separator; 0 = the
 *        reader's limit.
 * @return as evs_readuntil(); -EINVAL for no separator or an empty one.
 */
EVS_EXTERN ssize_t evs_readuntil_any(evs_reader *r, const evs_separator *seps, size_t nseps,
                                     size_t limit, const void **data);

/**
 * Skip past the next @p sep, however far away: the way on after
 * EVS_ELIMIT (evs_skipuntil(r, "\n", 1) drops the rest of an over-long
 * line). Parks. The skipped bytes are dropped as they arrive, so the reader
 * holds next to nothing meanwhile; unlike the reads, bytes skipped before a
 * timeout, cancel or error stay skipped.
 * @return the bytes skipped, @p sep included; EVS_EINCOMPLETE at EOF
 *         without @p sep (all was skipped); -EINVAL for an empty @p sep;
 *         a negative error.
 */
EVS_EXTERN ssize_t evs_skipuntil(evs_reader *r, const void *sep, size_t seplen);

/**
 * After EVS_EINCOMPLETE: the partial bytes (the seed's
 * IncompleteReadError.partial) as a view valid until the next call on @p r.
 * @return their count (0 after any other result).
 */
EVS_EXTERN size_t evs_reader_partial(evs_reader *r, const void **data);

/** True when the buffer is empty and EOF was received. */
EVS_EXTERN bool evs_at_eof(const evs_reader *r);
/** Bytes buffered now (not counting a pending view). */
EVS_EXTERN size_t evs_reader_buffered(const evs_reader *r);
/** The reader's limit (default 64 KiB). */
EVS_EXTERN size_t evs_reader_limit(const evs_reader *r);
/** Set the limit (> 0). @return 0 or -EINVAL. */
EVS_EXTERN int evs_reader_set_limit(evs_reader *r, size_t limit);

/* --- StreamWriter ------------------------------------------------------ */

/** Queue bytes (copied); tries the socket at once. Never parks.
 *  @return 0; -EPIPE after close or write_eof (nothing queued); the
 *  connection's error once it is lost. */
EVS_EXTERN int evs_write(evs_writer *w, const void *data, size_t len);
/** write() of several buffers in order. */
EVS_EXTERN int evs_writelines(evs_writer *w, const struct iovec *iov, int iovcnt);

/**
 * drain(): wait while the write buffer is above the high watermark, until
 * it is at or below the low one. Several tasks may wait; all wake together.
 * Parks.
 * @return 0; for tasks waiting when the connection goes: 0 if all their
 *         data was flushed before a close, else the error (-EPIPE for an
 *         abort); called on a connection already lost: its error, or -EPIPE;
 *         -ECANCELED / -ETIMEDOUT.
 */
EVS_EXTERN int evs_drain(evs_writer *w);

/**
 * Close the write side after flushing; reading goes on.
 * @return 0; -EPIPE when the writer is closed or its connection lost;
 *         -ENOTSUP where evs_can_write_eof() is false (TLS, as in asyncio,
 *         and a pipe that reads and writes through one fd).
 */
EVS_EXTERN int evs_write_eof(evs_writer *w);
/** True when write_eof is supported. */
EVS_EXTERN bool evs_can_write_eof(const evs_writer *w);
/** Close the stream: flush what is buffered, then close. Idempotent. */
EVS_EXTERN void evs_close(evs_writer *w);
/** Wait until the connection is closed. Parks.
 *  @return 0 once it is closed (evs_close, an abort); the error it was lost
 *          with (e.g. -ECONNRESET); -ECANCELED/-ETIMEDOUT. The peer's EOF
 *          alone does not close it: as in asyncio, a plain connection stays
 *          half-open for writing, so call evs_close() after reading EOF. */
EVS_EXTERN int evs_wait_closed(evs_writer *w);
/** True when the stream is closed or closing. */
EVS_EXTERN bool evs_is_closing(const evs_writer *w);
/** The underlying transport (for its extra info and watermarks). It lives
 *  as long as the pair; once the connection is lost its calls fail or do
 *  nothing, and its TLS details (e.g. why a handshake failed) remain. */
EVS_EXTERN evs_transport *evs_writer_transport(const evs_writer *w);
/** The reader of the same connection. */
EVS_EXTERN evs_reader *evs_writer_reader(const evs_writer *w);

/* --- Creating and freeing pairs --------------------------------------- */

/**
 * Wrap a connected stream socket in a (reader, writer) pair on the calling
 * worker (the seed's open_connection(sock=...)). The pair owns the fd.
 * @param limit reader limit; 0 = 64 KiB.
 * @return 0 or a negative errno (the fd is closed on failure).
 * Thread: a worker or evs_run()'s loop.
 */
EVS_EXTERN int evs_stream_open_fd(int fd, size_t limit, evs_reader **r, evs_writer **w);

/**
 * Release a pair you own (from evs_open_connection() or
 * evs_stream_open_fd()): closes the writer if open, then frees reader and
 * writer; the transport finishes flushing in the background. Pairs handed
 * to a server's client_connected are released by the server when the
 * handler returns; do not free those. Tasks parked in a call on the pair
 * at that moment return from it (the reader at EOF, drain and wait_closed
 * done, or the connection's error); no task may start a call on it after.
 * A line or partial bytes such a call returns (readline at EOF, readuntil's
 * EVS_EINCOMPLETE and evs_reader_partial()) stay readable until that task
 * next waits. A pair still open when its loop ends (evs_run's function returned, or
 * the runtime stopped) is freed with the loop.
 */
EVS_EXTERN void evs_writer_free(evs_writer *w);

#ifdef __cplusplus
}
#endif
#endif
