/*
 * exec - an inetd / tcpserver-style plugin: every connection runs the
 * configured command, with the connection wired to the child's stdin and
 * stdout. It shows the stream-mode process API (evs_process_spawn) and how
 * to tie a child's life to a connection without leaving a zombie.
 *
 * The command is run as it is (posix_spawn, never through a shell). Its
 * environment gets tcpserver's variables: PROTO=TCP, TCPREMOTEIP,
 * TCPREMOTEPORT, TCPLOCALIP, TCPLOCALPORT (with the PROXY protocol, the
 * remote ones are the real client's); on a Unix listener PROTO=UNIX,
 * UNIXLOCALPATH and, from SO_PEERCRED, UNIXREMOTEPID, UNIXREMOTEUID,
 * UNIXREMOTEGID (like ucspi-unix).
 *
 * Two tasks move the bytes: a spawned one copies connection -> child's
 * stdin (EOF from the client closes the child's stdin; if the child stops
 * reading, the client's bytes are read and dropped; after the client's EOF
 * it waits for the connection to end), and the handler copies
 * child's stdout -> connection. When the child has closed its stdout and
 * exited, the connection is closed after flushing. When the client goes
 * away (a reset, a failed write, the listener's idle timeout) the child gets
 * SIGTERM, then SIGKILL after a short grace, and is reaped. Its exit status
 * is logged at debug level.
 *
 * Settings (the listener's settings group):
 *   argv   = ["/bin/cat", "-u"];  required: the program and its arguments
 *                                 (a program without '/' is searched in PATH)
 *   env    = ["NAME=value", ...]; the child's environment instead of the
 *                                 daemon's (the variables above are added)
 *   cwd    = "/some/dir";         working directory (default: the daemon's)
 *   stderr = "inherit";           the child's stderr: "inherit" (the daemon's
 *                                 stderr), "null", or "connection" (merged
 *                                 into stdout, sent to the client)
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   printf 'hello\n' | nc -q1 127.0.0.1 8898
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* struct ucred */
#endif
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <evstream.h>

extern char **environ;

/* How long a child has between SIGTERM and SIGKILL, and how long we wait
 * for it to die after SIGKILL (it cannot refuse; this only bounds a child
 * stuck in the kernel). */
#define TERM_GRACE 1.0
#define KILL_WAIT 5.0
#define POLL_STEP 0.02
#define CLIENT_CHECK 1.0 /* seconds between looks at the client while the child's stdin is full */

typedef struct exec_cfg {
    char **argv; /* NULL-terminated */
    char **env;  /* NULL-terminated, or NULL: the daemon's environment */
    char *cwd;
    evs_stdio stderr_mode;
} exec_cfg;

/* One connection and its child; shared by the handler and the input pump
 * (both on the same worker, so plain fields suffice). */
typedef struct session {
    int refs;
    bool over;           /* the handler is leaving: touch nothing any more */
    bool reading_stdout; /* the handler is parked on the child's stdout */
    bool client_gone;
    evs_reader *r;
    evs_writer *w;
    evs_process *proc;
    evs_task *handler;
} session;

static void session_unref(session *s)
{
    if (--s->refs == 0)
        free(s);
}

/* --- settings --------------------------------------------------------------- */

static void free_strv(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static void cfg_free(exec_cfg *c)
{
    free_strv(c->argv);
    free_strv(c->env);
    free(c->cwd);
    free(c);
}

/* Copy the list of strings @key into a NULL-terminated array. */
static int get_strv(evs_settings *s, const char *key, char ***out, size_t *count)
{
    size_t n;
    char **v;
    int rc;

    if ((rc = evs_settings_get_list_size(s, key, &n)) < 0)
        return rc;
    if (!(v = calloc(n + 1, sizeof *v)))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *item;
        if ((rc = evs_settings_get_list_string(s, key, i, &item)) < 0) {
            free_strv(v);
            return rc;
        }
        if (!(v[i] = strdup(item))) {
            free_strv(v);
            return -ENOMEM;
        }
    }
    *out = v;
    *count = n;
    return 0;
}

static int init(evs_settings *s, void **state)
{
    static const char *const known[] = {"argv", "env", "cwd", "stderr"};
    const char *cwd = NULL, *err = "inherit";
    exec_cfg *c;
    size_t n;
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok = ok || strcmp(key, known[k]) == 0;
        if (!ok)
            return evs_settings_fail(s, "unknown setting '%s' (expected argv, env, cwd, stderr)",
                                     key);
    }
    if (!(c = calloc(1, sizeof *c)))
        return -ENOMEM;
    rc = get_strv(s, "argv", &c->argv, &n);
    if (rc == -ENOENT) {
        rc = evs_settings_fail(s, "argv = [\"/path/to/program\", ...] is required");
        goto fail;
    }
    if (rc < 0)
        goto fail;
    if (n == 0 || !c->argv[0][0]) {
        rc = evs_settings_fail(s, "argv must name a program");
        goto fail;
    }
    rc = get_strv(s, "env", &c->env, &n);
    if (rc < 0 && rc != -ENOENT)
        goto fail;
    for (size_t i = 0; c->env && i < n; i++) {
        if (!strchr(c->env[i], '=') || c->env[i][0] == '=') {
            rc = evs_settings_fail(s, "env entry '%s' is not NAME=value", c->env[i]);
            goto fail;
        }
    }
    if ((rc = evs_settings_get_string(s, "cwd", &cwd)) < 0 && rc != -ENOENT)
        goto fail;
    if (cwd && !(c->cwd = strdup(cwd))) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = evs_settings_get_string(s, "stderr", &err)) < 0 && rc != -ENOENT)
        goto fail;
    if (strcmp(err, "inherit") == 0) {
        c->stderr_mode = EVS_STDIO_INHERIT;
    } else if (strcmp(err, "null") == 0) {
        c->stderr_mode = EVS_STDIO_DEVNULL;
    } else if (strcmp(err, "connection") == 0) {
        c->stderr_mode = EVS_STDIO_STDOUT;
    } else {
        rc = evs_settings_fail(
            s, "stderr must be \"inherit\", \"null\" or \"connection\", not '%s'", err);
        goto fail;
    }
    *state = c;
    return 0;

fail:
    cfg_free(c);
    return rc;
}

static void fini(void *state)
{
    cfg_free(state);
}

/* --- the child's environment ------------------------------------------------- */

/* The names we set ourselves: entries of the base environment with these
 * names are dropped so the child sees ours only. */
static const char *const own_vars[] = {
    "PROTO",         "TCPREMOTEIP",   "TCPREMOTEPORT", "TCPLOCALIP",    "TCPLOCALPORT",
    "UNIXLOCALPATH", "UNIXREMOTEPID", "UNIXREMOTEUID", "UNIXREMOTEGID",
};
#define OWN_VARS (sizeof own_vars / sizeof own_vars[0])

static bool is_own_var(const char *entry)
{
    for (size_t i = 0; i < OWN_VARS; i++) {
        size_t len = strlen(own_vars[i]);
        if (strncmp(entry, own_vars[i], len) == 0 && entry[len] == '=')
            return true;
    }
    return false;
}

/* IP and port of an inet address; false for other families. */
static bool ip_port(const struct sockaddr_storage *ss, char *ip, size_t iplen, unsigned *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        *port = ntohs(sin->sin_port);
        return inet_ntop(AF_INET, &sin->sin_addr, ip, (socklen_t)iplen) != NULL;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        *port = ntohs(sin6->sin6_port);
        return inet_ntop(AF_INET6, &sin6->sin6_addr, ip, (socklen_t)iplen) != NULL;
    }
    return false;
}

static int add_var(char **vars, size_t *n, const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 2;
    char *v = malloc(len);

    if (!v)
        return -ENOMEM;
    snprintf(v, len, "%s=%s", name, value);
    vars[(*n)++] = v;
    return 0;
}

/* Our variables for connection @t, into @vars (room for OWN_VARS). */
static int connection_vars(evs_transport *t, char **vars, size_t *n)
{
    struct sockaddr_storage peer, local;
    socklen_t plen = sizeof peer, llen = sizeof local;
    char ip[INET6_ADDRSTRLEN], num[32];
    unsigned port;
    int rc = 0;

    *n = 0;
    if (!t || evs_transport_get_sockname(t, &local, &llen) < 0)
        return 0; /* the connection is gone already; the child sees no address */
    if (local.ss_family == AF_UNIX) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&local;
        rc = add_var(vars, n, "PROTO", "UNIX");
        if (!rc && llen > offsetof(struct sockaddr_un, sun_path) && sun->sun_path[0]) {
            /* A path of sun_path's whole length has no NUL in it. */
            size_t room = llen - offsetof(struct sockaddr_un, sun_path);
            size_t len = strnlen(sun->sun_path, room < sizeof sun->sun_path ? room
                                                                             : sizeof sun->sun_path);
            char path[sizeof sun->sun_path + 1];
            memcpy(path, sun->sun_path, len);
            path[len] = '\0';
            rc = add_var(vars, n, "UNIXLOCALPATH", path);
        }
#ifdef SO_PEERCRED
        struct ucred cred;
        socklen_t clen = sizeof cred;
        int fd = evs_transport_get_fd(t);
        if (!rc && fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
            snprintf(num, sizeof num, "%ld", (long)cred.pid);
            rc = add_var(vars, n, "UNIXREMOTEPID", num);
            snprintf(num, sizeof num, "%lu", (unsigned long)cred.uid);
            if (!rc)
                rc = add_var(vars, n, "UNIXREMOTEUID", num);
            snprintf(num, sizeof num, "%lu", (unsigned long)cred.gid);
            if (!rc)
                rc = add_var(vars, n, "UNIXREMOTEGID", num);
        }
#endif
        return rc;
    }
    rc = add_var(vars, n, "PROTO", "TCP");
    if (!rc && ip_port(&local, ip, sizeof ip, &port)) {
        snprintf(num, sizeof num, "%u", port);
        rc = add_var(vars, n, "TCPLOCALIP", ip);
        if (!rc)
            rc = add_var(vars, n, "TCPLOCALPORT", num);
    }
    if (!rc && evs_transport_get_peername(t, &peer, &plen) == 0 &&
        ip_port(&peer, ip, sizeof ip, &port)) {
        snprintf(num, sizeof num, "%u", port);
        rc = add_var(vars, n, "TCPREMOTEIP", ip);
        if (!rc)
            rc = add_var(vars, n, "TCPREMOTEPORT", num);
    }
    return rc;
}

/* The child's environment: the configured one (or the daemon's) without our
 * names, then our variables. Only the strings we made are ours to free:
 * they are the last @*owned entries. */
static char **child_env(const exec_cfg *c, evs_transport *t, size_t *owned)
{
    char **base = c->env ? c->env : environ;
    char *vars[OWN_VARS];
    size_t nbase = 0, nvars = 0, k = 0;
    char **env;

    if (connection_vars(t, vars, &nvars) < 0)
        goto fail;
    for (char **p = base; p && *p; p++)
        nbase++;
    if (!(env = calloc(nbase + nvars + 1, sizeof *env)))
        goto fail;
    for (size_t i = 0; i < nbase; i++)
        if (!is_own_var(base[i]))
            env[k++] = base[i];
    for (size_t i = 0; i < nvars; i++)
        env[k++] = vars[i];
    *owned = nvars;
    return env;

fail:
    for (size_t i = 0; i < nvars; i++)
        free(vars[i]);
    return NULL;
}

static void free_env(char **env, size_t owned)
{
    size_t n = 0;

    while (env[n])
        n++;
    for (size_t i = n - owned; i < n; i++)
        free(env[i]);
    free(env);
}

/* --- the child's life ---------------------------------------------------------- */

/* Poll for the child's exit for at most @seconds. Polling (rather than
 * evs_process_wait with a task timeout) leaves the task's own timeout
 * alone. @return true once it exited; false on timeout or cancellation. */
static bool wait_exit_for(session *s, double seconds)
{
    for (double waited = 0; waited < seconds; waited += POLL_STEP) {
        if (evs_process_returncode(s->proc, NULL))
            return true;
        /* Once s->over is set the handler may have freed the process. */
        if (evs_sleep(POLL_STEP) < 0 || s->over)
            return !s->over && evs_process_returncode(s->proc, NULL);
    }
    return evs_process_returncode(s->proc, NULL);
}

/* SIGTERM, a grace, SIGKILL. A cancelled task cannot sleep: the child then
 * gets SIGKILL at once and is reaped in the background. */
static void stop_child(session *s)
{
    if (evs_process_returncode(s->proc, NULL))
        return;
    evs_process_terminate(s->proc);
    if (wait_exit_for(s, TERM_GRACE) || s->over)
        return;
    evs_process_kill(s->proc);
    wait_exit_for(s, KILL_WAIT);
}

/* --- connection -> child's stdin ----------------------------------------------- */

/* Write @n bytes to the child's stdin and wait until it has room again. A
 * child that stops reading without closing its stdin would park a plain
 * evs_drain for good, and no one would be watching the connection (this
 * task reads it; the handler reads the child): look at the client every
 * CLIENT_CHECK seconds while waiting. @return 0, -1 when the child no
 * longer reads, or 1 when the client is gone. */
static int feed_child(session *s, evs_writer *in, const char *buf, size_t n)
{
    evs_task *self = evs_task_current();
    int rc;

    if (evs_write(in, buf, n) < 0)
        return -1;
    evs_task_set_timeout(self, CLIENT_CHECK); /* this task's own: nothing else sets it */
    /* s->over first: once it is set the handler may have freed s->w. */
    while ((rc = evs_drain(in)) == -ETIMEDOUT && !s->over && !evs_is_closing(s->w))
        ;
    evs_task_set_timeout(self, 0);
    if (rc == -ETIMEDOUT)
        return 1;
    return rc < 0 ? -1 : 0;
}

static int input_pump(void *arg)
{
    session *s = arg;
    evs_writer *in = evs_process_stdin(s->proc);
    bool child_reads = in != NULL;
    char buf[16 * 1024];
    ssize_t n;
    int rc;

    while ((n = evs_read(s->r, buf, sizeof buf)) > 0 && !s->over) {
        /* A child that stopped reading (EPIPE) may still be writing: keep
         * reading the client, to see it leave, and drop its bytes. */
        if (child_reads && (rc = feed_child(s, in, buf, (size_t)n)) != 0) {
            child_reads = false;
            if (rc > 0) {
                n = -1; /* the client is gone: stop the child below */
                break;
            }
        }
        if (s->over)
            break;
    }
    if (s->over) {
        session_unref(s);
        return 0;
    }
    /* The client's EOF (or half-close) is the child's EOF. */
    if (in)
        evs_close(in);
    /* After a half-close the child may go on (and write its answer), but
     * the connection can still end without us reading anything more: a
     * reset, a failed write, the idle timeout. Wait for that, or else a
     * child that neither reads nor writes would outlive its client. */
    if (n == 0) {
        (void)evs_wait_closed(s->w); /* how it ended does not matter */
        if (s->over) {
            session_unref(s);
            return 0;
        }
    }
    /* A reset, the idle timeout, the daemon stopping: the client is gone. */
    s->client_gone = true;
    stop_child(s);
    /* The child is gone, but a grandchild may still hold its stdout
     * open: if the handler is still parked there after a moment,
     * cancel it so that the connection ends. */
    for (int i = 0; i < 50 && !s->over && s->reading_stdout; i++)
        if (evs_sleep(POLL_STEP) < 0)
            break;
    if (!s->over && s->reading_stdout)
        evs_task_cancel(s->handler);
    session_unref(s);
    return 0;
}

/* --- child's stdout -> connection ---------------------------------------------- */

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    const exec_cfg *c = state;
    evs_process_options opts = {0};
    evs_reader *out;
    evs_task *pump = NULL;
    char buf[16 * 1024];
    size_t owned = 0;
    char **env;
    session *s;
    ssize_t n;
    int rc, code;

    if (!(s = calloc(1, sizeof *s)))
        return;
    if (!(env = child_env(c, evs_writer_transport(w), &owned))) {
        free(s);
        return;
    }
    opts.argv = (const char *const *)c->argv;
    opts.envp = (const char *const *)env;
    opts.cwd = c->cwd;
    opts.stdin_mode = EVS_STDIO_PIPE;
    opts.stdout_mode = EVS_STDIO_PIPE;
    opts.stderr_mode = c->stderr_mode;
    opts.limit = evs_reader_limit(r);
    rc = evs_process_spawn(&opts, &s->proc);
    free_env(env, owned); /* posix_spawn copied it */
    if (rc < 0) {
        evs_log(EVS_LOG_WARN, "exec: cannot run %s: %s", c->argv[0], evs_strerror(rc));
        free(s);
        return;
    }
    evs_log(EVS_LOG_DEBUG, "exec: started %s, pid %ld", c->argv[0], (long)evs_process_pid(s->proc));
    s->refs = 2;
    s->r = r;
    s->w = w;
    s->handler = evs_task_current();
    if (evs_task_spawn(input_pump, s, &pump) < 0) {
        s->refs = 1;
        evs_close(evs_process_stdin(s->proc)); /* no input: the child sees EOF */
    }

    out = evs_process_stdout(s->proc);
    s->reading_stdout = true;
    while ((n = evs_read(out, buf, sizeof buf)) > 0) {
        s->reading_stdout = false;
        if (evs_write(w, buf, (size_t)n) < 0 || evs_drain(w) < 0) {
            s->client_gone = true;
            break;
        }
        s->reading_stdout = true;
    }
    s->reading_stdout = false;

    /* The child closed its stdout (it is exiting, normally), or the client
     * or the daemon went away. */
    if (s->client_gone || n < 0)
        stop_child(s);
    else if (evs_process_wait(s->proc, &code) < 0) /* cancelled: the daemon stops */
        stop_child(s);

    /* Stop the input pump before the streams and the process go away. */
    s->over = true;
    if (pump) {
        evs_task_cancel(pump);
        if (evs_task_join(pump, NULL) < 0)
            evs_task_detach(pump); /* s->over keeps it off the streams */
    }
    if (evs_process_returncode(s->proc, &code)) {
        evs_log(EVS_LOG_DEBUG, "exec: %s (pid %ld) %s %d", c->argv[0],
                (long)evs_process_pid(s->proc), code >= 0 ? "exited with" : "killed by signal",
                code >= 0 ? code : -code);
    } else {
        /* Only when this task was cancelled: a last SIGKILL, and the
         * process is reaped in the background once it dies. */
        evs_process_kill(s->proc);
        evs_log(EVS_LOG_DEBUG, "exec: %s (pid %ld) killed", c->argv[0],
                (long)evs_process_pid(s->proc));
    }
    evs_process_free(s->proc);
    session_unref(s);
    /* Returning closes the connection after flushing. */
}

EVS_PLUGIN_DEFINE(.name = "exec", .mode = EVS_PLUGIN_STREAM, .client_connected = client_connected,
                  .init = init, .fini = fini);
