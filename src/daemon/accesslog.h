/*
 * accesslog.h - per-listener access logs: one line per connection at
 * close, in a configurable format; reopened on SIGUSR1.
 */
#ifndef EVSD_ACCESSLOG_H
#define EVSD_ACCESSLOG_H

#include <evstream.h>

typedef struct evsd_access_log evsd_access_log;

/* The default line format. */
#define EVSD_ACCESS_LOG_FORMAT \
    "$time $peer $listener $duration $bytes_in $bytes_out $tls_version $tls_cipher $reason"

/* Open (append) @path for @listener's lines; @format NULL = the default.
 * @return the log or NULL with errno set. Main thread. */
evsd_access_log *evsd_access_log_open(const char *path, const char *listener, const char *format);
/* Reopen every open access log (log rotation); each that fails is logged,
 * by name, and goes on writing to its old file. Main thread. @return 0 or
 * the last -errno. */
int evsd_access_log_reopen_all(void);
void evsd_access_log_close(evsd_access_log *log);
/* The evs_server_options.connection_closed callback (arg: the log).
 * Any worker thread: one write() per line. */
void evsd_access_log_write(const evs_connection_info *info, void *arg);

#endif
