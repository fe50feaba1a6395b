/*
 * logging.c - evstreamd's log sink.
 *
 * One line per event: timestamp, level, thread ("w3", "main", "acceptor"),
 * message; written with a single write() so lines from workers never mix.
 */
#include "logging.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = 2;
static char *log_path;
/* The configured log file when it could not be opened (the log went on
 * where it was): SIGUSR1 tries it again. */
static char *log_wanted;
/* Read by every thread's log call, changed by a reload: atomic. */
static atomic_bool use_syslog;

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

/* O_NOFOLLOW: evstreamd starts as root, and a link planted in a log
 * directory its `user` may write to would point root's writes anywhere. */
#define LOG_FILE_FLAGS (O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
#define LOG_FILE_MODE 0640

int evsd_log_file_open(const char *path)
{
    /* O_NONBLOCK for the open only: a FIFO without a reader fails it
     * (ENXIO) instead of holding the main thread, with the signals that
     * would stop or reload the daemon blocked, until a reader comes. */
    int fd = open(path, LOG_FILE_FLAGS | O_CREAT | O_NONBLOCK, LOG_FILE_MODE);
    int flags;

    if (fd < 0)
        return -errno;
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* Whether @dir takes a new file. An unnamed one (O_TMPFILE) asks the
 * kernel without a name ever appearing; where the file system has no
 * O_TMPFILE, the access rules stand in for it. */
static int dir_takes_files(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, LOG_FILE_MODE);

    if (fd >= 0) {
        close(fd);
        return 0;
    }
    if (errno != EOPNOTSUPP && errno != EISDIR)
        return -errno;
    return faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) == 0 ? 0 : -errno;
}

int evsd_log_file_check(const char *path)
{
    /* An existing file: the open evsd_log_file_open makes, without
     * O_CREAT, so that the kernel decides as it would then (permissions, a
     * directory at the path, a read-only file system), and the file stays
     * as it was. O_NONBLOCK: a FIFO without a reader (ENXIO) must not hang
     * the check. A missing file is never created, not even for a moment: a
     * running evstreamd reopening its logs could take it for its own. */
    int fd = open(path, LOG_FILE_FLAGS | O_NONBLOCK);
    char *copy;
    int rc;

    if (fd >= 0) {
        close(fd);
        return 0;
    }
    if (errno == ENXIO)
        return 0;
    if (errno != ENOENT)
        return -errno;
    copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    rc = dir_takes_files(dirname(copy));
    free(copy);
    return rc;
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
        if (fd < 0) {
            /* The sink stays as it was; the level applies all the same. */
            pthread_mutex_lock(&lock);
            free(log_wanted);
            log_wanted = strdup(target);
            pthread_mutex_unlock(&lock);
            evs_log_set_level(level);
            evs_log_set_handler(sink, NULL);
            return fd;
        }
    }
    pthread_mutex_lock(&lock);
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    free(log_path);
    log_path = fd > 2 ? strdup(target) : NULL;
    free(log_wanted);
    log_wanted = NULL;
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

/* Only the main thread changes log_path and log_wanted: it reads them
 * here without the lock. */
int evsd_log_reopen(void)
{
    const char *path = log_wanted ? log_wanted : log_path;
    int fd;

    if (!path)
        return 0;
    fd = evsd_log_file_open(path);
    if (fd < 0) {
        bool to_file;
        evs_log(EVS_LOG_ERROR, "cannot %s the log %s: %s (%s)", log_wanted ? "open" : "reopen",
                path, evs_strerror(fd),
                log_wanted ? "logging where it logged before" : "writing on to the old file");
        pthread_mutex_lock(&lock);
        to_file = log_fd > 2 && !use_syslog;
        pthread_mutex_unlock(&lock);
        /* The old file may be one nobody can see any more (rotated away,
         * its directory removed): say it on stderr too (the journal under
         * systemd). */
        if (to_file)
            fprintf(stderr, "evstreamd: cannot %s the log %s: %s\n",
                    log_wanted ? "open" : "reopen", path, evs_strerror(fd));
        return fd;
    }
    pthread_mutex_lock(&lock);
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    if (log_wanted) { /* the configured file, at last */
        free(log_path);
        log_path = log_wanted;
        log_wanted = NULL;
        use_syslog = false;
    }
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
    free(log_wanted);
    log_wanted = NULL;
    if (use_syslog)
        closelog();
    use_syslog = false;
    pthread_mutex_unlock(&lock);
}
