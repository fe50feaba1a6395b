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
/* Reopen the file (log rotation). @return 0 or a negative errno. */
int evsd_log_reopen(void);
void evsd_log_close(void);

#endif
