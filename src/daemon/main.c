/*
 * main.c - evstreamd: command line, daemonizing, pidfile, signals.
 *
 * Signals are blocked in every thread and taken synchronously here with
 * sigtimedwait(): SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 reopens the
 * log files. The one-second timeout finishes plugin instances retired by a
 * reload once their last connection has ended.
 */
#include "accesslog.h"
#include "admin.h"
#include "config.h"
#include "logging.h"
#include "privileges.h"
#include "service.h"
#include "systemd.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef EVSD_SYSCONF_FILE
#define EVSD_SYSCONF_FILE "/usr/local/etc/evstreamd.conf"
#endif

typedef struct options {
    const char *config;
    const char *pidfile;
    const char *ports_file;
    bool test;
    bool daemonize;
    int workers;
    bool has_level;
    evs_log_level level;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: evstreamd [options]\n"
            "  -c, --config FILE      configuration file (default %s)\n"
            "  -t, --test             check what a start checks before binding, bind nothing\n"
            "  -d, --daemon           run in the background\n"
            "  -p, --pidfile FILE     write the process id to FILE (locked while running)\n"
            "  -w, --workers N        worker threads (overrides the config)\n"
            "  -l, --log-level LEVEL  error, warn, info or debug (overrides the config)\n"
            "      --ports-file FILE  write \"listener address\" lines once listening\n"
            "  -V, --version          print the version\n"
            "  -h, --help             this help\n"
            "signals: TERM/INT stop gracefully, HUP reloads, USR1 reopens the log files\n",
            EVSD_SYSCONF_FILE);
}

static int parse_args(int argc, char **argv, options *o)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},  {"test", no_argument, NULL, 't'},
        {"daemon", no_argument, NULL, 'd'},        {"pidfile", required_argument, NULL, 'p'},
        {"workers", required_argument, NULL, 'w'}, {"log-level", required_argument, NULL, 'l'},
        {"ports-file", required_argument, NULL, 'P'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int c;
    char *end;

    o->config = EVSD_SYSCONF_FILE;
    while ((c = getopt_long(argc, argv, "c:tdp:w:l:Vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o->config = optarg;
            break;
        case 't':
            o->test = true;
            break;
        case 'd':
            o->daemonize = true;
            break;
        case 'p':
            o->pidfile = optarg;
            break;
        case 'P':
            o->ports_file = optarg;
            break;
        case 'w': {
            long n = strtol(optarg, &end, 10);
            /* Checked as a long: a cast first would take 2^32 + 1 for 1. */
            if (end == optarg || *end || n < 1 || n > 1024) {
                fprintf(stderr, "evstreamd: -w expects a number from 1 to 1024\n");
                return 2;
            }
            o->workers = (int)n;
            break;
        }
        case 'l':
            if (evs_log_level_parse(optarg, &o->level) < 0) {
                fprintf(stderr, "evstreamd: -l expects error, warn, info or debug\n");
                return 2;
            }
            o->has_level = true;
            break;
        case 'V':
            printf("evstreamd %s\n", evs_version());
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evstreamd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return 0;
}

static evsd_config *load_config(const char *path, bool to_log)
{
    evsd_config *cfg = NULL;
    char *errors = NULL;
    /* Resolved at each load, so a reload after a symlink was switched to
     * a new version reads that version (relative paths in it stay
     * relative to the real file's directory). */
    char *real = realpath(path, NULL);
    int rc = evsd_config_load(real ? real : path, &cfg, &errors);

    free(real);
    if (rc == 0)
        return cfg;
    if (to_log) {
        char *save, *line = strtok_r(errors, "\n", &save);
        for (; line; line = strtok_r(NULL, "\n", &save))
            evs_log(EVS_LOG_ERROR, "%s", line);
    } else {
        fputs(errors, stderr);
    }
    free(errors);
    return NULL;
}

/* --- pidfile and ports file -------------------------------------------- */

static int pidfile_fd = -1;

static int pidfile_write(const char *path)
{
    char buf[32];
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644); /* as root: see logging.c */
    int n;

    if (fd < 0) {
        evs_log(EVS_LOG_ERROR, "pidfile %s: %s", path, strerror(errno));
        return -1;
    }
    /* The lock says "running": a stale file from a crash is simply reused. */
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        n = (int)read(fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        evs_log(EVS_LOG_ERROR, "pidfile %s: another evstreamd is running (pid %s)", path, buf);
        close(fd);
        return -1;
    }
    n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        evs_log(EVS_LOG_ERROR, "pidfile %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    pidfile_fd = fd;
    return 0;
}

static void pidfile_remove(const char *path)
{
    if (pidfile_fd < 0)
        return;
    /* After the switch to `user`, only a directory that user may write to
     * lets it go: say so, a stale pidfile misleads whoever reads it. */
    if (unlink(path) < 0 && errno != ENOENT) {
        /* Emptied at least, through the descriptor opened as root: the
         * pid in it would soon be somebody else's, and a logrotate
         * postrotate would signal that process. */
        int err = errno;
        bool emptied = ftruncate(pidfile_fd, 0) == 0;
        evs_log(EVS_LOG_WARN, "cannot remove the pidfile %s: %s%s", path, strerror(err),
                emptied ? " (emptied it)" : "");
    }
    close(pidfile_fd);
    pidfile_fd = -1;
}

/* Write @len bytes of @text to @fd at offset 0 and cut the file there
 * (written first, then cut: a reader never sees it empty). */
static int write_at_start(int fd, const char *text, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(fd, text + done, len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return ftruncate(fd, (off_t)len);
}

/* The listeners' addresses, one "name address" line each, into @path by
 * way of a new file renamed over it, given to @owner first unless it is
 * (uid_t)-1 (the `user` a root start switches to, who rewrites it at
 * reloads). Neither file is opened through a symbolic link: the directory
 * may be the user's, and this runs as root at the start. @return 0, or -1
 * (logged). */
static int write_ports(evsd_service *svc, const char *path, uid_t owner)
{
    char tmp[PATH_MAX], *text = NULL;
    size_t len = 0;
    FILE *mem;
    int fd, rc;

    if (!path)
        return 0;
    if (!(mem = open_memstream(&text, &len))) {
        evs_log(EVS_LOG_ERROR, "ports file %s: %s", path, strerror(errno));
        return -1;
    }
    evsd_service_print_addresses(svc, mem, false);
    if (fclose(mem) != 0) {
        evs_log(EVS_LOG_ERROR, "ports file %s: %s", path, strerror(errno));
        free(text);
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp); /* whatever was left there, a link included */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
        rc = write_at_start(fd, text, len);
        if (rc == 0 && owner != (uid_t)-1)
            rc = fchown(fd, owner, (gid_t)-1);
        if (close(fd) < 0 || rc < 0 || rename(tmp, path) < 0) {
            rc = -1;
            evs_log(EVS_LOG_ERROR, "ports file %s: %s", path, strerror(errno));
            unlink(tmp);
        }
    } else if (errno == EACCES || errno == EPERM || errno == EEXIST) {
        /* A reload as `user` in a directory only root may write to (or
         * with a leftover temporary file it cannot remove): the file itself
         * became the user's at the start, so it is rewritten in place.
         * O_NONBLOCK: a FIFO there fails ("No such device or address", or
         * pwrite's "Illegal seek") instead of waiting for a reader. */
        fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        rc = fd >= 0 ? write_at_start(fd, text, len) : -1;
        if (rc < 0)
            evs_log(EVS_LOG_ERROR, "ports file %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    } else {
        rc = -1;
        evs_log(EVS_LOG_ERROR, "ports file %s: %s", tmp, strerror(errno));
    }
    free(text);
    return rc;
}

/* Remove the ports file at a stop or a failed start: left behind, it would
 * tell whatever waits for it that a dead daemon listens. After the switch
 * to `user`, in a directory only root may write to, the file (the user's
 * since the start) is emptied instead, which such readers take for "not
 * listening" too. */
static void ports_remove(const char *path)
{
    int fd, err;

    if (!path || unlink(path) == 0 || errno == ENOENT)
        return;
    err = errno;
    fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0 && ftruncate(fd, 0) == 0)
        evs_log(EVS_LOG_WARN, "cannot remove the ports file %s: %s (emptied it)", path,
                strerror(err));
    else
        evs_log(EVS_LOG_WARN, "cannot remove the ports file %s: %s", path, strerror(err));
    if (fd >= 0)
        close(fd);
}

/* --- daemonizing ------------------------------------------------------- */

/* Fork into the background. The parent waits on a pipe until the child
 * says it is serving (exit 0) or failed (exit 1), so a supervisor sees the
 * real outcome. @return the write end of the pipe in the child. */
static int daemonize(void)
{
    int p[2];
    pid_t pid;
    char status = 1;

    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("evstreamd: pipe");
        exit(1);
    }
    pid = fork();
    if (pid < 0) {
        perror("evstreamd: fork");
        exit(1);
    }
    if (pid > 0) {
        close(p[1]);
        if (read(p[0], &status, 1) != 1)
            status = 1;
        _exit(status);
    }
    close(p[0]);
    setsid();
    pid = fork(); /* never reacquire a terminal */
    if (pid < 0)
        _exit(1);
    if (pid > 0)
        _exit(0);
    if (chdir("/") < 0)
        _exit(1);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    return p[1];
}

static void report_ready(int *fd, char status)
{
    if (*fd < 0)
        return;
    if (write(*fd, &status, 1) != 1)
        evs_log(EVS_LOG_WARN, "cannot report readiness to the parent process");
    close(*fd);
    *fd = -1;
    if (status == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 2); /* errors before this point reached the terminal */
            close(null);
        }
    }
}

/* --- main -------------------------------------------------------------- */

static char *pidfile_path, *ports_path; /* -p and --ports-file, absolute */

static void free_paths(void)
{
    free(pidfile_path);
    free(ports_path);
}

/* @path made absolute against the starting directory (-d changes to "/"),
 * symlinks kept. */
static char *joined_to_cwd(const char *path)
{
    char cwd[PATH_MAX];
    char *out;

    if (path[0] == '/' || !getcwd(cwd, sizeof cwd))
        return strdup(path);
    out = malloc(strlen(cwd) + strlen(path) + 2);
    if (out)
        sprintf(out, "%s/%s", cwd, path);
    return out;
}

/* The real path of @path when it exists, else joined_to_cwd (a pidfile
 * not written yet). */
static char *absolute(const char *path)
{
    char *out = realpath(path, NULL);

    return out ? out : joined_to_cwd(path);
}

static void apply_log(const evsd_config *cfg, const options *o, const char *instead)
{
    int rc = evsd_log_open(cfg->log_file, o->has_level ? o->level : cfg->log_level);
    if (rc < 0)
        evs_log(EVS_LOG_ERROR, "log file %s: %s; %s", cfg->log_file, evs_strerror(rc), instead);
}

/* -t: what a start does before it binds, with the same functions and
 * without their effects; every problem is printed, one per line. Binding,
 * the pidfile, worker_start and the switch to `user` are left out (see
 * docs/config.md). @return 0 or -1. */
static int test_config(const evsd_config *cfg, const char *config_path)
{
    int failures = 0, rc;

    if (evsd_check_process(cfg, stderr) < 0)
        failures++;
    if (evsd_service_check(cfg, stderr) < 0)
        failures++;
    /* A start does not fail on its log file (apply_log logs to stderr
     * instead), so -t does not either; it warns. */
    rc = evsd_log_check(cfg->log_file);
    if (rc < 0)
        fprintf(stderr, "%s: warning: log file %s: %s; evstreamd would log to stderr\n",
                config_path, cfg->log_file, evs_strerror(rc));
    return failures ? -1 : 0;
}

static void reload(evsd_service *svc, const char *path, const options *o)
{
    evsd_config *cfg;

    evs_log(EVS_LOG_INFO, "SIGHUP: reloading %s", path);
    evsd_notify_reloading();
    cfg = load_config(path, true);
    if (!cfg) {
        evs_log(EVS_LOG_ERROR, "reload failed: keeping the running configuration");
        evsd_notify("READY=1\nSTATUS=reload failed: running the previous configuration");
        return;
    }
    char *log_file = strdup(cfg->log_file);
    evs_log_level level = cfg->log_level;
    char ignored[512];
    evsd_config_restart_only_changes(evsd_service_boot_config(svc), cfg, ignored, sizeof ignored);
    if (evsd_service_reload(svc, cfg) < 0) {
        evs_log(EVS_LOG_ERROR, "reload failed: keeping the running configuration");
        evsd_notify("READY=1\nSTATUS=reload failed: running the previous configuration");
    } else {
        evsd_notify("READY=1\nSTATUS=serving (reloaded)");
        evsd_config tmp;
        memset(&tmp, 0, sizeof tmp);
        tmp.log_file = log_file;
        tmp.log_level = level;
        apply_log(&tmp, o, "logging where it logged before");
        evs_log(EVS_LOG_INFO, "reloaded %s", path);
        if (ignored[0])
            evs_log(EVS_LOG_WARN, "reload: changed %s: applied at the next restart", ignored);
        write_ports(svc, o->ports_file, (uid_t)-1);
    }
    free(log_file);
}

static int serve(evsd_service *svc, const char *config_path, const options *o)
{
    sigset_t set;
    struct timespec tick = {1, 0};

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    for (;;) {
        int sig = sigtimedwait(&set, NULL, &tick);

        if (sig == SIGTERM || sig == SIGINT) {
            evs_log(EVS_LOG_INFO, "%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            evsd_notify("STOPPING=1\nSTATUS=stopping");
            return evsd_service_stop(svc);
        }
        if (sig == SIGHUP)
            reload(svc, config_path, o);
        else if (sig == SIGUSR1) {
            /* Each failure is logged with its file's name. */
            int rc = evsd_log_reopen();
            int arc = evsd_access_log_reopen_all();
            if (rc == 0 && arc == 0)
                evs_log(EVS_LOG_INFO, "SIGUSR1: log files reopened");
        }
        evsd_service_reap(svc);
    }
}

/* glibc gives freed memory back to the kernel as soon as 128 KiB lie free
 * at the top of a heap. A server's read buffers come and go with every
 * message, so each worker's heap shrank and grew again all the time
 * (madvise, then page faults): 20% of a TLS stream-mode echo's CPU
 * (bench/RESULTS.md). Keeping up to 8 MiB per heap stops that churn. */
static void tune_malloc(void)
{
#ifdef M_TRIM_THRESHOLD
    mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
#endif
}

int main(int argc, char **argv)
{
    options o;
    evsd_config *cfg;
    evsd_service *svc;
    char *config_path;
    sigset_t set;
    int ready_fd = -1, rc;

    memset(&o, 0, sizeof o);
    tune_malloc();
    /* First thing: every thread inherits this mask, and a SIGHUP during
     * start-up must wait for serve() instead of killing the process. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if ((rc = parse_args(argc, argv, &o)) != 0)
        return rc;
    /* Before anything opens a file (the configuration loads plugins): the
     * passed sockets are fds 3 and up. */
    evsd_activation_take();
    config_path = joined_to_cwd(o.config);
    /* -d changes to "/": name the pidfile and ports file from here. */
    if (o.pidfile)
        o.pidfile = pidfile_path = absolute(o.pidfile);
    if (o.ports_file)
        o.ports_file = ports_path = absolute(o.ports_file);
    atexit(free_paths); /* every return below */
    if (!config_path || (o.pidfile && !pidfile_path) || (o.ports_file && !ports_path)) {
        fprintf(stderr, "evstreamd: out of memory\n");
        return 1;
    }
    cfg = load_config(config_path, false);
    if (!cfg) {
        fprintf(stderr, "evstreamd: configuration %s has errors\n", config_path);
        free(config_path);
        return 1;
    }
    if (o.test) {
        rc = test_config(cfg, config_path);
        if (rc == 0)
            printf("evstreamd: configuration %s OK\n", config_path);
        else
            fprintf(stderr, "evstreamd: configuration %s has errors\n", config_path);
        evsd_config_free(cfg);
        free(config_path);
        return rc == 0 ? 0 : 1;
    }

    if (o.daemonize)
        ready_fd = daemonize();
    evsd_apply_umask(cfg); /* first: the log file, pidfile and sockets take it */
    apply_log(cfg, &o, "logging to stderr");
    if (evsd_prepare_process(cfg) < 0) {
        report_ready(&ready_fd, 1);
        evsd_config_free(cfg);
        free(config_path);
        return 1;
    }
    if (o.pidfile && pidfile_write(o.pidfile) < 0) {
        report_ready(&ready_fd, 1);
        evsd_config_free(cfg);
        free(config_path);
        return 1;
    }
    /* One from an earlier run (killed, so never removed) would be read as
     * this start's while it binds, and for good if the start fails. Only
     * under the pidfile's lock: without it, the file may be a running
     * instance's, which a mistaken second start must leave alone. */
    if (o.pidfile)
        ports_remove(o.ports_file);
    svc = evsd_service_start(cfg, o.workers);
    if (!svc) {
        evs_log(EVS_LOG_ERROR, "not started");
        if (o.pidfile)
            pidfile_remove(o.pidfile);
        report_ready(&ready_fd, 1);
        free(config_path);
        return 1;
    }
    if (evsd_service_config(svc)->admin &&
        evsd_admin_start(svc, evsd_service_config(svc)->admin) < 0) {
        evsd_service_stop(svc);
        if (o.pidfile)
            pidfile_remove(o.pidfile);
        report_ready(&ready_fd, 1);
        free(config_path);
        return 1;
    }
    /* Last: everything that needs the starting user's rights is done (the
     * listeners accept nothing before the switch to `user`). A
     * ports file that cannot be written fails the start as a pidfile does:
     * whatever reads it would wait for it forever. */
    if (write_ports(svc, o.ports_file, evsd_switch_uid(evsd_service_config(svc))) < 0 ||
        evsd_drop_privileges(evsd_service_config(svc)) < 0) {
        evsd_service_stop(svc);
        ports_remove(o.ports_file);
        if (o.pidfile)
            pidfile_remove(o.pidfile);
        report_ready(&ready_fd, 1);
        free(config_path);
        return 1;
    }
    /* Only now: a start that fails above has listened on nothing. */
    evsd_service_print_addresses(svc, stdout, true);
    fflush(stdout);
    evsd_service_serve(svc);
    report_ready(&ready_fd, 0);
    evsd_notify("READY=1\nSTATUS=serving");

    rc = serve(svc, config_path, &o);
    ports_remove(o.ports_file);
    if (o.pidfile)
        pidfile_remove(o.pidfile);
    evs_log(EVS_LOG_INFO, "stopped");
    evsd_log_close();
    free(config_path);
    return rc == 0 ? 0 : 1;
}
