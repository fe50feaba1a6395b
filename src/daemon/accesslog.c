/*
 * accesslog.c - access logs. A line is formatted on the worker that closes
 * the connection and written with one write() on an O_APPEND file, so lines
 * from workers never mix. The file is reopened under a read-write lock:
 * writers hold it shared, SIGUSR1's reopen holds it exclusively.
 */
#include "accesslog.h"

#include "logging.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct evsd_access_log {
    char *path;
    char *listener;
    char *format;
    int fd;
    atomic_bool failing; /* the last write failed (warned once per episode) */
    atomic_bool cut;     /* a short write left a line without its newline */
    pthread_rwlock_t lock;
    evsd_access_log *next; /* every open log, for the reopen */
};

static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static evsd_access_log *all;

evsd_access_log *evsd_access_log_open(const char *path, const char *listener, const char *format)
{
    evsd_access_log *log = calloc(1, sizeof *log);

    if (!log)
        return NULL;
    log->fd = evsd_log_file_open(path);
    if (log->fd < 0) {
        int e = -log->fd;
        free(log);
        errno = e;
        return NULL;
    }
    log->path = strdup(path);
    log->listener = strdup(listener);
    log->format = strdup(format ? format : EVSD_ACCESS_LOG_FORMAT);
    pthread_rwlock_init(&log->lock, NULL);
    pthread_mutex_lock(&all_lock);
    log->next = all;
    all = log;
    pthread_mutex_unlock(&all_lock);
    return log;
}

int evsd_access_log_reopen_all(void)
{
    int rc = 0;

    pthread_mutex_lock(&all_lock);
    for (evsd_access_log *log = all; log; log = log->next) {
        int fd = evsd_log_file_open(log->path);
        if (fd < 0) {
            evs_log(EVS_LOG_ERROR, "cannot reopen the access log %s: %s (writing on to the old file)",
                    log->path, evs_strerror(fd));
            rc = fd;
            continue;
        }
        pthread_rwlock_wrlock(&log->lock);
        close(log->fd);
        log->fd = fd;
        atomic_store(&log->cut, false); /* the cut line stays in the old file */
        pthread_rwlock_unlock(&log->lock);
    }
    pthread_mutex_unlock(&all_lock);
    return rc;
}

void evsd_access_log_close(evsd_access_log *log)
{
    if (!log)
        return;
    pthread_mutex_lock(&all_lock);
    for (evsd_access_log **pp = &all; *pp; pp = &(*pp)->next) {
        if (*pp == log) {
            *pp = log->next;
            break;
        }
    }
    pthread_mutex_unlock(&all_lock);
    close(log->fd);
    pthread_rwlock_destroy(&log->lock);
    free(log->path);
    free(log->listener);
    free(log->format);
    free(log);
}

/* Why the connection ended, in one word or two. */
static const char *reason(const evs_connection_info *info, char *buf, size_t len)
{
    if (info->tls_error) {
        snprintf(buf, len, "tls:%s", info->tls_error);
        for (char *p = buf; *p; p++)
            if (*p == ' ')
                *p = '_';
        return buf;
    }
    switch (info->error) {
    case 0:
        return "closed";
    case -ETIMEDOUT:
        return "timeout";
    case -ECONNRESET:
        return "reset";
    case -EPIPE:
        return "broken_pipe";
    default:
        snprintf(buf, len, "error:%d", -info->error);
        return buf;
    }
}

/* A value, with what could break the line or its fields (control bytes,
 * spaces, DEL, backslash) as \xHH: a Unix client names its own address,
 * so "$peer" may hold a newline and forge a line. */
static size_t append(char *line, size_t off, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool escape = c <= ' ' || c == 0x7f || c == '\\';
        if (off + (escape ? 4 : 1) >= cap)
            break;
        if (escape) {
            line[off++] = '\\';
            line[off++] = 'x';
            line[off++] = hex[c >> 4];
            line[off++] = hex[c & 15];
        } else {
            line[off++] = (char)c;
        }
    }
    return off;
}

void evsd_access_log_write(const evs_connection_info *info, void *arg)
{
    evsd_access_log *log = arg;
    char line[1024], value[256], peer[128];
    size_t off = 0, cap = sizeof line - 1;

    for (const char *p = log->format; *p && off < cap - 1;) {
        const char *v = NULL;
        size_t n;

        if (*p != '$') {
            line[off++] = *p++;
            continue;
        }
        p++;
        n = strspn(p, "abcdefghijklmnopqrstuvwxyz_");
        if (n == 4 && !strncmp(p, "time", n)) {
            struct timespec ts;
            struct tm tm;
            clock_gettime(CLOCK_REALTIME, &ts);
            localtime_r(&ts.tv_sec, &tm);
            strftime(value, sizeof value, "%Y-%m-%dT%H:%M:%S%z", &tm);
            v = value;
        } else if (n == 4 && !strncmp(p, "peer", n)) {
            v = info->peer ? evs_format_address(info->peer, info->peerlen, peer, sizeof peer) : "-";
        } else if (n == 8 && !strncmp(p, "listener", n)) {
            v = log->listener;
        } else if (n == 8 && !strncmp(p, "duration", n)) {
            snprintf(value, sizeof value, "%.3f", info->duration);
            v = value;
        } else if (n == 8 && !strncmp(p, "bytes_in", n)) {
            snprintf(value, sizeof value, "%llu", (unsigned long long)info->bytes_in);
            v = value;
        } else if (n == 9 && !strncmp(p, "bytes_out", n)) {
            snprintf(value, sizeof value, "%llu", (unsigned long long)info->bytes_out);
            v = value;
        } else if (n == 11 && !strncmp(p, "tls_version", n)) {
            v = info->tls_version ? info->tls_version : "-";
        } else if (n == 10 && !strncmp(p, "tls_cipher", n)) {
            v = info->tls_cipher ? info->tls_cipher : "-";
        } else if (n == 6 && !strncmp(p, "reason", n)) {
            v = reason(info, value, sizeof value);
        } else if (n == 6 && !strncmp(p, "worker", n)) {
            snprintf(value, sizeof value, "%d", info->worker);
            v = value;
        }
        off = append(line, off, cap, v ? v : "$");
        p += v ? n : 0;
    }
    line[off++] = '\n';
    /* After a cut line, a newline first: the next line must not be glued
     * to what is left of it. */
    bool after_cut = atomic_load_explicit(&log->cut, memory_order_relaxed);
    struct iovec iov[2] = {{(void *)"\n", 1}, {line, off}};
    if (after_cut) {
        /* Alone: no other worker's line may land between the cut line and
         * our newline, and a reopen cannot come between the flag and it. */
        pthread_rwlock_wrlock(&log->lock);
        after_cut = atomic_exchange(&log->cut, false);
    } else {
        pthread_rwlock_rdlock(&log->lock);
    }
    ssize_t w = writev(log->fd, after_cut ? iov : iov + 1, after_cut ? 2 : 1);
    if (after_cut && w < 1)
        atomic_store(&log->cut, true); /* the newline did not go either */
    else if (after_cut)
        w--;
    if (w > 0 && w < (ssize_t)off)
        atomic_store(&log->cut, true);
    if (w != (ssize_t)off) {
        /* A full disk loses lines: say so (once, not once a line). */
        if (!atomic_exchange(&log->failing, true))
            evs_log(EVS_LOG_WARN, "access log %s: %s: lines are lost", log->path,
                    w < 0 ? strerror(errno) : "short write");
    } else if (atomic_load_explicit(&log->failing, memory_order_relaxed) &&
               atomic_exchange(&log->failing, false)) {
        evs_log(EVS_LOG_WARN, "access log %s: writing again", log->path);
    }
    pthread_rwlock_unlock(&log->lock);
}
