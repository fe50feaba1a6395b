/**
 * @file evstream/log.h
 * Logging: the library never prints on its own except through this sink.
 * The default sink writes warnings and errors to stderr; replace it to route
 * messages elsewhere.
 */
#ifndef EVSTREAM_LOG_H
#define EVSTREAM_LOG_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Severity, most severe first. */
typedef enum evs_log_level {
    EVS_LOG_ERROR = 0,
    EVS_LOG_WARN = 1,
    EVS_LOG_INFO = 2,
    EVS_LOG_DEBUG = 3,
} evs_log_level;

/**
 * A log sink. @p msg is one formatted line without a newline; @p worker is
 * the id of the worker thread that logged it, or -1 for other threads.
 */
typedef void (*evs_log_fn)(evs_log_level level, int worker, const char *msg, void *arg);

/** Messages less severe than @p level are dropped before formatting. Any thread. */
EVS_EXTERN void evs_log_set_level(evs_log_level level);
/** The current level. Any thread. */
EVS_EXTERN evs_log_level evs_log_get_level(void);
/** Replace the sink (NULL restores the stderr sink). Any thread but the
 *  sink itself: it returns once no line is being written to the old sink,
 *  so the old @p arg may then be freed. */
EVS_EXTERN void evs_log_set_handler(evs_log_fn fn, void *arg);
/** Parse "error", "warn", "info" or "debug". @return 0 or -EINVAL. */
EVS_EXTERN int evs_log_level_parse(const char *name, evs_log_level *out);
/** Name of a level ("error", ...). */
EVS_EXTERN const char *evs_log_level_name(evs_log_level level);
/** Log through the sink (printf format). Cheap when @p level is filtered. Any thread.
 *  The message reaches the sink as one line: control bytes in it (a newline
 *  in a peer's name, say) are written as \xNN, and it is cut at 1,023 bytes. */
EVS_EXTERN void evs_log(evs_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
