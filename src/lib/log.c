/*
 * log.c - the library's one log sink.
 */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "worker.h"

_Atomic int evs__log_level = EVS_LOG_WARN;

/* The longest message, with its NUL; longer ones are cut. */
#define MSG_MAX 1024

/* The sink may be replaced while threads log (evstreamd does at a
 * reload): the pair is read and used under the read side, so a caller of
 * evs_log_set_handler knows the old one is done with once it returns.
 * Taken only for lines that pass the level. */
static pthread_rwlock_t sink_lock = PTHREAD_RWLOCK_INITIALIZER;
static evs_log_fn log_fn;
static void *log_arg;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void evs_log_set_level(evs_log_level level)
{
    atomic_store(&evs__log_level, (int)level);
}

evs_log_level evs_log_get_level(void)
{
    return (evs_log_level)atomic_load(&evs__log_level);
}

void evs_log_set_handler(evs_log_fn fn, void *arg)
{
    pthread_rwlock_wrlock(&sink_lock);
    log_fn = fn;
    log_arg = arg;
    pthread_rwlock_unlock(&sink_lock);
}

const char *evs_log_level_name(evs_log_level level)
{
    if ((unsigned)level < sizeof level_names / sizeof level_names[0])
        return level_names[level];
    return "?";
}

int evs_log_level_parse(const char *name, evs_log_level *out)
{
    for (unsigned i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (name && strcasecmp(name, level_names[i]) == 0) {
            *out = (evs_log_level)i;
            return 0;
        }
    }
    if (name && strcasecmp(name, "warning") == 0) {
        *out = EVS_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

/* The default sink: one line on stderr with a timestamp, the level and the
 * worker, written with a single fputs so lines from threads do not mix. */
static void stderr_sink(evs_log_level level, int worker, const char *msg)
{
    char line[1200];
    char when[32];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    if (worker >= 0)
        snprintf(line, sizeof line, "%s.%03ld %s [w%d] %s\n", when, ts.tv_nsec / 1000000L,
                 evs_log_level_name(level), worker, msg);
    else
        snprintf(line, sizeof line, "%s.%03ld %s [%s] %s\n", when, ts.tv_nsec / 1000000L,
                 evs_log_level_name(level), worker == EVS__ACCEPTOR_ID ? "acceptor" : "main", msg);
    fputs(line, stderr);
}

/* Messages quote what peers sent (an abstract socket's name, a PROXY
 * header, a plugin's view of a request): a newline in one would start a
 * forged line in a log file. Control bytes become \xNN, in place; what no
 * longer fits in @p cap is cut. */
static void escape_controls(char *msg, size_t cap)
{
    char tmp[MSG_MAX];
    size_t in = 0, out = 0, len = strlen(msg);

    while (in < len && (unsigned char)msg[in] >= 0x20 && msg[in] != 0x7f)
        in++;
    if (in == len)
        return; /* the usual case: nothing to do */
    memcpy(tmp, msg, len + 1);
    out = in;
    for (; in < len; in++) {
        unsigned char c = (unsigned char)tmp[in];
        if (c >= 0x20 && c != 0x7f) {
            if (out + 1 >= cap)
                break;
            msg[out++] = (char)c;
        } else {
            if (out + 4 >= cap)
                break;
            snprintf(msg + out, 5, "\\x%02x", c);
            out += 4;
        }
    }
    msg[out] = '\0';
}

void evs_log(evs_log_level level, const char *fmt, ...)
{
    char msg[MSG_MAX];
    va_list ap;
    evs_worker *w;
    int worker;

    if (!evs__log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    escape_controls(msg, sizeof msg);
    w = evs_worker_current();
    worker = w ? evs_worker_id(w) : -1;
    pthread_rwlock_rdlock(&sink_lock);
    if (log_fn)
        log_fn(level, worker, msg, log_arg);
    else
        stderr_sink(level, worker, msg);
    pthread_rwlock_unlock(&sink_lock);
}
