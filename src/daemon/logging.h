/*
 * logging.h - evstreamd's log sink: stderr, a file (reopened on SIGUSR1)
 * or syslog.
 */
#ifndef EVSD_LOGGING_H
#define EVSD_LOGGING_H

#include <evstream.h>

/* Send the library's log to @target ("stderr", "syslog" or a path).
 * @return 0 or a negative errno (the previous sink stays). */
int evsd_log_open(const char *target, evs_log_level level);
/* Whether evsd_log_open(@target) could open it, without opening it for
 * good (`evstreamd -t`). @return 0 or a negative errno. */
int evsd_log_check(const char *target);
/* Open @path as every log file (the log, access logs) is opened: appended
 * to, created 0640 when missing, never truncated. @return the descriptor
 * or a negative errno. */
int evsd_log_file_open(const char *path);
/* Whether evsd_log_file_open(@path) would succeed, leaving nothing behind.
 * @return 0 or a negative errno. */
int evsd_log_file_check(const char *path);
/* Reopen the file (log rotation); a failure is logged, by name, and the
 * old file stays. @return 0 or a negative errno. */
int evsd_log_reopen(void);
void evsd_log_close(void);

#endif
