/*
 * privileges.c - process set-up around binding.
 *
 * Listening on low ports needs root; serving does not. So evstreamd binds
 * as root, then becomes the configured user (setgid and initgroups before
 * setuid, and a check that root cannot be regained). Without a user it
 * refuses to run as root unless the configuration says allow_root.
 */
#include "privileges.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Descriptors besides connections: listeners, logs, eventfds and slack. */
#define FD_OVERHEAD 256

static bool any_stream_listener(const evsd_config *cfg)
{
    /* Plugins decide the mode; a stream plugin needs a task stack per
     * connection. We cannot know before loading them, so assume the worst
     * when any listener exists. */
    return cfg->nlisteners > 0;
}

/* Root serves only when the config says so: without a user to switch to,
 * or with a user whose uid is 0 ("root", or another name for it). */
static int check_root(const evsd_config *cfg, char *err, size_t errlen)
{
    struct passwd *pw;

    if (geteuid() != 0 || cfg->allow_root)
        return 0;
    if (!cfg->user) {
        snprintf(err, errlen,
                 "%s: refusing to run as root: set user = \"...\" (evstreamd binds as root, "
                 "then switches) or allow_root = true",
                 cfg->path);
        return -1;
    }
    if ((pw = getpwnam(cfg->user)) && pw->pw_uid == 0) {
        snprintf(err, errlen,
                 "%s: user = \"%s\" is root (uid 0): refusing to run as root: name an "
                 "unprivileged user or set allow_root = true",
                 cfg->path, cfg->user);
        return -1;
    }
    return 0;
}

/* Raise RLIMIT_NOFILE to what max_connections needs. @return 0 (*@raised:
 * the new limit, or 0 when it was high enough), or -1 with why in @err. */
static int raise_nofile(const evsd_config *cfg, rlim_t *raised, char *err, size_t errlen)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)cfg->limits.max_connections + FD_OVERHEAD, hard;

    *raised = 0;
    if (cfg->limits.max_connections == 0 || getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur >= need)
        return 0;
    hard = rl.rlim_max;
    if (rl.rlim_max < need && geteuid() == 0)
        rl.rlim_max = need; /* root may raise the hard limit too */
    if (rl.rlim_max < need) {
        snprintf(err, errlen,
                 "%s: max_connections = %llu needs %llu file descriptors, but the hard limit "
                 "is %llu: raise it (LimitNOFILE= in the unit, or ulimit -Hn) or lower "
                 "max_connections",
                 cfg->path, (unsigned long long)cfg->limits.max_connections,
                 (unsigned long long)need, (unsigned long long)rl.rlim_max);
        return -1;
    }
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        /* Root without CAP_SYS_RESOURCE (a container) cannot pass the hard limit. */
        snprintf(err, errlen,
                 "%s: max_connections = %llu: cannot raise RLIMIT_NOFILE to %llu: %s (the "
                 "hard limit was %llu: raise it, with LimitNOFILE= in the unit or ulimit -Hn, "
                 "or lower max_connections)",
                 cfg->path, (unsigned long long)cfg->limits.max_connections,
                 (unsigned long long)need, strerror(errno), (unsigned long long)hard);
        return -1;
    }
    *raised = need;
    return 0;
}

/* Every task stack is a mapping plus its guard: two map entries. */
static void check_map_count(const evsd_config *cfg)
{
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    unsigned long long have = 0, need;

    if (!f)
        return;
    if (fscanf(f, "%llu", &have) != 1)
        have = 0;
    fclose(f);
    need = 2 * (unsigned long long)cfg->limits.max_connections + 4096;
    if (have && any_stream_listener(cfg) && cfg->limits.max_connections && have < need)
        evs_log(EVS_LOG_WARN,
                "vm.max_map_count is %llu: stream-mode plugins need two memory maps per "
                "connection, so max_connections = %llu may fail to create tasks; run "
                "'sysctl -w vm.max_map_count=%llu' (and set it in /etc/sysctl.d/)",
                have, (unsigned long long)cfg->limits.max_connections, need);
}

int evsd_check_process(const evsd_config *cfg, FILE *errors)
{
    char err[512];
    rlim_t raised;
    int failures = 0;

    if (check_root(cfg, err, sizeof err) < 0) {
        fprintf(errors, "%s\n", err);
        failures++;
    }
    /* The kernel alone knows whether the limit can be raised (root's
     * ceiling is fs.nr_open): ask it by raising this process's own limit,
     * which ends with `-t` a moment later. */
    if (raise_nofile(cfg, &raised, err, sizeof err) < 0) {
        fprintf(errors, "%s\n", err);
        failures++;
    }
    return failures ? -1 : 0;
}

void evsd_apply_umask(const evsd_config *cfg)
{
    if (cfg->has_umask)
        umask((mode_t)cfg->umask_value);
}

int evsd_prepare_process(const evsd_config *cfg)
{
    char err[512];
    rlim_t raised;

    if (check_root(cfg, err, sizeof err) < 0) {
        evs_log(EVS_LOG_ERROR, "%s", err);
        return -1;
    }
    if (raise_nofile(cfg, &raised, err, sizeof err) < 0) {
        evs_log(EVS_LOG_ERROR, "%s", err);
        return -1;
    }
    if (raised)
        evs_log(EVS_LOG_INFO, "raised the open file limit to %llu", (unsigned long long)raised);
    check_map_count(cfg);
    return 0;
}

/* A log file root made (or found) before the switch is reopened by `user`
 * at a reload or a SIGUSR1 (rotation): it becomes that user's, group
 * kept, as nginx does. Only a regular file with one name, reached without
 * a symbolic link at the end (the directory may be the user's, who could
 * otherwise point the name at a file of root's and be given it); a device
 * (/dev/null) is left alone. */
static void hand_over_file(const char *path, uid_t uid)
{
    struct stat st;
    int fd;

    if (!path || strcmp(path, "stderr") == 0 || strcmp(path, "syslog") == 0)
        return;
    /* O_PATH: nothing is opened for reading (a FIFO or a device could
     * block or react); fstat and fchownat work on the descriptor, which
     * is the link itself if the name is one. */
    fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fstat(fd, &st) == 0 && st.st_uid != uid) {
        if (S_ISLNK(st.st_mode) || (S_ISREG(st.st_mode) && st.st_nlink != 1))
            evs_log(EVS_LOG_WARN,
                    "%s is a symbolic link or has several names: not given to the user "
                    "(reopening it will fail)", path);
        else if (S_ISREG(st.st_mode) && fchownat(fd, "", uid, (gid_t)-1, AT_EMPTY_PATH) < 0)
            evs_log(EVS_LOG_WARN, "cannot give %s to the user: %s (reopening it will fail)",
                    path, strerror(errno));
    }
    close(fd);
}

static void hand_over_logs(const evsd_config *cfg, uid_t uid)
{
    hand_over_file(cfg->log_file, uid);
    for (size_t i = 0; i < cfg->nlisteners; i++)
        hand_over_file(cfg->listeners[i].access_log, uid);
}

uid_t evsd_switch_uid(const evsd_config *cfg)
{
    struct passwd *pw;

    if (!cfg->user || geteuid() != 0 || !(pw = getpwnam(cfg->user)))
        return (uid_t)-1;
    return pw->pw_uid;
}

int evsd_drop_privileges(const evsd_config *cfg)
{
    struct passwd *pw;
    struct group *gr = NULL;
    gid_t gid;

    if (!cfg->user)
        return 0;
    pw = getpwnam(cfg->user);
    if (!pw) {
        evs_log(EVS_LOG_ERROR, "user '%s' does not exist", cfg->user);
        return -1;
    }
    if (cfg->group && !(gr = getgrnam(cfg->group))) {
        evs_log(EVS_LOG_ERROR, "group '%s' does not exist", cfg->group);
        return -1;
    }
    gid = gr ? gr->gr_gid : pw->pw_gid;
    if (geteuid() != 0) {
        /* As nginx does: only root can switch; anyone else runs as itself. */
        if (geteuid() != pw->pw_uid)
            evs_log(EVS_LOG_WARN, "user = \"%s\" is ignored: evstreamd was not started as root",
                    cfg->user);
        return 0;
    }
    hand_over_logs(cfg, pw->pw_uid);
    if (setgroups(0, NULL) < 0 || initgroups(pw->pw_name, gid) < 0 || setgid(gid) < 0 ||
        setuid(pw->pw_uid) < 0) {
        evs_log(EVS_LOG_ERROR, "cannot switch to user %s: %s", cfg->user, strerror(errno));
        return -1;
    }
    if (pw->pw_uid != 0 && setuid(0) == 0) {
        evs_log(EVS_LOG_ERROR, "could switch back to root after dropping privileges: stopping");
        return -1;
    }
    evs_log(EVS_LOG_INFO, "running as user %s, group %u", cfg->user, (unsigned)gid);
    return 0;
}
