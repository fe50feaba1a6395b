/*
 * logging.c - evstreamd's log sink.
 *
 * One line per event: timestamp, level, thread ("w3", "main", "acceptor"),
 * message; written with a single write() so lines from workers never mix.
 */
#include "logging.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = 2;
static char *log_path;
static bool use_syslog;

static void sink(evs_log_level level, int worker, const char *msg, void *arg)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    char line[1400], when[32], who[16];
    struct timespec ts;
    struct tm tm;
    int n;
    ssize_t rc;

    (void)arg;
    if (worker >= 0)
        snprintf(who, sizeof who, "w%d", worker);
    else
        snprintf(who, sizeof who, "%s", worker == -2 ? "acceptor" : "main");
    if (use_syslog) {
        syslog(prio[level <= EVS_LOG_DEBUG ? level : EVS_LOG_DEBUG], "[%s] %s", who, msg);
        return;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line, sizeof line, "%s.%03ld %-5s [%s] %s\n", when, ts.tv_nsec / 1000000L,
                 evs_log_level_name(level), who, msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    pthread_mutex_lock(&lock);
    rc = write(log_fd, line, (size_t)n);
    pthread_mutex_unlock(&lock);
    (void)rc;
}

#define LOG_FILE_FLAGS (O_WRONLY | O_APPEND | O_CLOEXEC)
#define LOG_FILE_MODE 0640

int evsd_log_file_open(const char *path)
{
    int fd = open(path, LOG_FILE_FLAGS | O_CREAT, LOG_FILE_MODE);
    return fd < 0 ? -errno : fd;
}

int evsd_log_file_check(const char *path)
{
    /* The same open as evsd_log_file_open, so that the kernel decides as
     * it would then (permissions, a missing directory, a directory at the
     * path, a read-only file system); only the creation differs. An
     * existing file is opened for append and closed: unchanged. A missing
     * one is created only if nobody else did (O_EXCL), and removed again,
     * so a check leaves no empty file behind. */
    int fd = open(path, LOG_FILE_FLAGS);
    bool created = false;

    if (fd < 0 && errno == ENOENT) {
        fd = open(path, LOG_FILE_FLAGS | O_CREAT | O_EXCL, LOG_FILE_MODE);
        created = fd >= 0;
        if (fd < 0 && errno == EEXIST) /* created meanwhile by someone else */
            fd = open(path, LOG_FILE_FLAGS);
    }
    if (fd < 0)
        return -errno;
    if (created)
        unlink(path);
    close(fd);
    return 0;
}

int evsd_log_open(const char *target, evs_log_level level)
{
    int fd = 2;
    bool sys = false;

    if (strcmp(target, "syslog") == 0) {
        sys = true;
        openlog("evstreamd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    } else if (strcmp(target, "stderr") != 0) {
        fd = evsd_log_file_open(target);
        if (fd < 0)
            return fd;
    }
    pthread_mutex_lock(&lock);
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    free(log_path);
    log_path = fd > 2 ? strdup(target) : NULL;
    use_syslog = sys;
    pthread_mutex_unlock(&lock);
    evs_log_set_level(level);
    evs_log_set_handler(sink, NULL);
    return 0;
}

int evsd_log_check(const char *target)
{
    if (strcmp(target, "syslog") == 0 || strcmp(target, "stderr") == 0)
        return 0; /* nothing to open that could fail */
    return evsd_log_file_check(target);
}

int evsd_log_reopen(void)
{
    int fd;

    if (!log_path)
        return 0;
    fd = evsd_log_file_open(log_path);
    if (fd < 0)
        return fd;
    pthread_mutex_lock(&lock);
    close(log_fd);
    log_fd = fd;
    pthread_mutex_unlock(&lock);
    return 0;
}

void evsd_log_close(void)
{
    evs_log_set_handler(NULL, NULL);
    pthread_mutex_lock(&lock);
    if (log_fd > 2)
        close(log_fd);
    log_fd = 2;
    free(log_path);
    log_path = NULL;
    if (use_syslog)
        closelog();
    use_syslog = false;
    pthread_mutex_unlock(&lock);
}
