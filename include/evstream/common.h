/**
 * @file evstream/common.h
 * Export macro, opaque types and error codes shared by every evstream header.
 *
 * Errors: functions return 0 or a count on success and a negative errno on
 * failure (-ECONNRESET, -ETIMEDOUT, -ECANCELED, -EPIPE, ...), or one of the
 * EVS_E* codes below for the conditions asyncio reports with its own
 * exceptions. evs_strerror() names every code.
 */
#ifndef EVSTREAM_COMMON_H
#define EVSTREAM_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EVS_BUILDING_LIBRARY)
#define EVS_EXTERN __attribute__((visibility("default")))
#else
#define EVS_EXTERN
#endif

/** IncompleteReadError: EOF came before the requested bytes or separator.
 *  The partial bytes stay readable through evs_reader_partial(). */
#define EVS_EINCOMPLETE (-20001)
/** LimitOverrunError: no separator within the limit; the data stays in the
 *  reader and can be read again. */
#define EVS_ELIMIT (-20002)

/** Worker threads plus an acceptor (runtime.h). */
typedef struct evs_runtime evs_runtime;
/** One worker thread and its event base (runtime.h). */
typedef struct evs_worker evs_worker;
/** A connection's transport (transport.h). */
typedef struct evs_transport evs_transport;
/** StreamReader (stream.h). */
typedef struct evs_reader evs_reader;
/** StreamWriter (stream.h). */
typedef struct evs_writer evs_writer;
/** A task: a coroutine on a worker (task.h). */
typedef struct evs_task evs_task;
/** A listening server (server.h). */
typedef struct evs_server evs_server;

/**
 * Describe an evstream return code.
 * @param err a negative errno or an EVS_E* code (a positive errno is accepted too).
 * @return a static string; never NULL. Any thread.
 */
EVS_EXTERN const char *evs_strerror(int err);

/** Library version as a string, e.g. "0.1.0". Any thread. */
EVS_EXTERN const char *evs_version(void);

#ifdef __cplusplus
}
#endif
#endif
