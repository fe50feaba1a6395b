/*
 * subprocess.c - child processes: posix_spawn() with pipes, a pidfd (or a
 * polling timer) on the worker's loop to see the exit, and two front ends:
 * the seed's SubprocessTransport (pipes as pipe transports) and the
 * stream-mode Process (pipes as reader/writer pairs).
 *
 * Only waitpid(pid) on our own children, never waitpid(-1) nor a SIGCHLD
 * handler: an embedding program's other children are none of our business.
 */
#include "transport.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <evstream/pipe.h>
#include <evstream/subprocess.h>

extern char **environ;

/* Without pidfd: how often to poll waitpid(pid, WNOHANG). */
#define POLL_INTERVAL 0.02

/* --- the child and its watcher ---------------------------------------------- */

typedef struct child {
    /* Tracked by the worker while watched: if the worker stops first, it
     * kills the child, and its loop runs until the child is reaped, so
     * neither a zombie nor the owner's record (a released Process, a
     * subprocess transport awaiting connection_lost) outlives it. */
    evs__closable closable;
    evs_worker *worker;
    pid_t pid;
    int pidfd;
    struct event ev;
    bool watching;
    bool exited;
    int returncode;
    void (*on_exit)(struct child *c, void *arg);
    void *arg;
} child;

static void child_stop_watching(child *c)
{
    if (c->watching) {
        event_del(&c->ev);
        evs__worker_untrack(c->worker, &c->closable);
        c->watching = false;
    }
    if (c->pidfd >= 0) {
        close(c->pidfd);
        c->pidfd = -1;
    }
}

static void child_reaped(child *c, int status)
{
    c->exited = true;
    c->returncode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
    child_stop_watching(c);
    if (c->on_exit)
        c->on_exit(c, c->arg);
}

/* @return true once the child is reaped. */
static bool child_poll(child *c)
{
    int status;
    pid_t r;

    if (c->exited)
        return true;
    do
        r = waitpid(c->pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == c->pid) {
        child_reaped(c, status);
        return true;
    }
    if (r < 0 && errno == ECHILD) {
        /* Someone else reaped it (an embedding program's waitpid(-1) or
         * SIGCHLD set to SIG_IGN): the status is lost; report exit 255. */
        child_reaped(c, 255 << 8);
        return true;
    }
    return false;
}

/* Through the pidfd where there is one: it names this child even if an
 * embedding program's waitpid(-1) reaped it and the pid was given again. */
static int send_signal(const child *c, int sig)
{
#ifdef SYS_pidfd_send_signal
    /* A filter (seccomp) may refuse the call: fall back to kill(). */
    if (c->pidfd >= 0 && syscall(SYS_pidfd_send_signal, c->pidfd, sig, NULL, 0) == 0)
        return 0;
    if (c->pidfd >= 0 && errno != ENOSYS && errno != EPERM)
        return -errno;
#endif
    return kill(c->pid, sig) < 0 ? -errno : 0;
}

/* Look without reaping (WNOWAIT): reaping here would run the owner's
 * callbacks (process_exited, connection_lost, which frees a subprocess
 * transport) inside the caller's call. The watch reports the exit from
 * the loop. A child not reaped yet keeps its pid, so the kill is safe. */
static int child_signal(child *c, int sig)
{
    siginfo_t info;

    if (c->exited)
        return -ESRCH;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid != 0)
        return -ESRCH; /* exited (reported from the loop), or reaped by someone else */
    return send_signal(c, sig);
}

/* The worker stops (an abort): end the child, as closing its transport
 * would; the watch reaps it in the loop. Not child_signal(): its poll
 * could reap here and run the owner's callbacks (process_exited,
 * connection_lost) inside the worker's abort. waitid(WNOWAIT) only looks:
 * still running, so the pid is still ours to signal. */
static void child_abort(evs__closable *cl)
{
    child *c = EVS_CONTAINER_OF(cl, child, closable);
    siginfo_t info;

    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0)
        send_signal(c, SIGKILL);
}

static void child_cb(evutil_socket_t fd, short what, void *arg)
{
    EVS_UNUSED(fd);
    EVS_UNUSED(what);
    child_poll(arg);
}

static void child_watch(child *c)
{
    struct event_base *base = c->worker->base;

#ifdef SYS_pidfd_open
    c->pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
#else
    c->pidfd = -1;
#endif
    if (c->pidfd >= 0) {
        /* A pidfd becomes readable when the process exits. */
        fcntl(c->pidfd, F_SETFD, FD_CLOEXEC);
        event_assign(&c->ev, base, c->pidfd, EV_READ | EV_PERSIST, child_cb, c);
        event_add(&c->ev, NULL);
    } else {
        struct timeval tv = evs__tv(POLL_INTERVAL);
        event_assign(&c->ev, base, -1, EV_PERSIST, child_cb, c);
        event_add(&c->ev, &tv);
    }
    c->watching = true;
    c->closable.abort = child_abort;
    evs__worker_track(c->worker, &c->closable);
    /* Spawned while the worker stops (by a cancelled task): no poll here,
     * the exit is reported from the loop. */
    if (c->worker->stopping)
        send_signal(c, SIGKILL);
}

/* --- spawning ------------------------------------------------------------------ */

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Move @fd to a number above 2 (close-on-exec) if it is one of 0-2. */
static int lift_above_stdio(int *fd)
{
    int high;

    if (*fd > 2)
        return 0;
    if ((high = fcntl(*fd, F_DUPFD_CLOEXEC, 3)) < 0)
        return -errno;
    close(*fd);
    *fd = high;
    return 0;
}

/*
 * Start the child. @parent receives our ends of the pipes (-1 where the
 * stream is not piped): parent[0] writes to the child's stdin, parent[1]
 * and parent[2] read its stdout and stderr.
 */
static int spawn(const evs_process_options *o, pid_t *pid, int parent[3])
{
    const evs_stdio modes[3] = {o->stdin_mode, o->stdout_mode, o->stderr_mode};
    int given[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
    int childend[3] = {-1, -1, -1};
    int moved[3] = {-1, -1, -1}; /* copies of given fds 0-2, see below */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    const char *file;
    int err = 0;

    parent[0] = parent[1] = parent[2] = -1;
    if (!o->argv || !o->argv[0])
        return -EINVAL;
    for (int i = 0; i < 3; i++) {
        if (modes[i] > EVS_STDIO_STDOUT || (modes[i] == EVS_STDIO_STDOUT && i != 2) ||
            (modes[i] == EVS_STDIO_FD && given[i] < 0))
            return -EINVAL;
    }
    /* The dup2 actions run in order, so a given fd among 0-2 may be
     * replaced before it is used (stdout_fd = 0 with stdin piped, or
     * stderr_fd = 1 with stdout piped): such a one goes as a copy above 2. */
    for (int i = 0; i < 3 && !err; i++) {
        if (modes[i] != EVS_STDIO_FD || given[i] > 2 || given[i] == i)
            continue;
        if ((moved[i] = fcntl(given[i], F_DUPFD_CLOEXEC, 3)) < 0)
            err = -errno;
        given[i] = moved[i];
    }
    for (int i = 0; i < 3 && !err; i++) {
        int p[2];
        if (modes[i] != EVS_STDIO_PIPE)
            continue;
        if (pipe2(p, O_CLOEXEC) < 0) {
            err = -errno;
            break;
        }
        /* In a program that closed its fds 0-2 a pipe gets those numbers,
         * and the child's own dup2 actions would replace its end (stderr's
         * pipe at fd 1 by the stdout action): lift both ends above 2. */
        if ((err = lift_above_stdio(&p[0])) < 0 || (err = lift_above_stdio(&p[1])) < 0) {
            close(p[0]);
            close(p[1]);
            break;
        }
        /* stdin: the child reads p[0]; stdout/stderr: it writes p[1]. */
        childend[i] = i == 0 ? p[0] : p[1];
        parent[i] = i == 0 ? p[1] : p[0];
    }
    if (err)
        goto out_fds;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* The child must not inherit a worker's blocked signals or an
     * embedding program's ignored ones. */
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    for (int i = 0; i < 3; i++) {
        switch (modes[i]) {
        case EVS_STDIO_PIPE:
            posix_spawn_file_actions_adddup2(&fa, childend[i], i);
            break;
        case EVS_STDIO_DEVNULL:
            posix_spawn_file_actions_addopen(&fa, i, "/dev/null", i == 0 ? O_RDONLY : O_WRONLY,
                                             0);
            break;
        case EVS_STDIO_FD:
            /* dup2 onto itself clears close-on-exec (glibc >= 2.26). */
            posix_spawn_file_actions_adddup2(&fa, given[i], i);
            break;
        case EVS_STDIO_STDOUT:
            posix_spawn_file_actions_adddup2(&fa, 1, 2);
            break;
        default:
            break;
        }
    }
    /* Like Popen(close_fds=True): nothing but 0-2 reaches the program. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    if (o->cwd)
        posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
    file = o->file ? o->file : o->argv[0];
    err = strchr(file, '/')
              ? posix_spawn(pid, file, &fa, &attr, (char *const *)o->argv,
                            o->envp ? (char *const *)o->envp : environ)
              : posix_spawnp(pid, file, &fa, &attr, (char *const *)o->argv,
                             o->envp ? (char *const *)o->envp : environ);
    err = -err;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
out_fds:
    for (int i = 0; i < 3; i++) {
        close_fd(&childend[i]);
        close_fd(&moved[i]);
        if (err)
            close_fd(&parent[i]);
    }
    return err;
}

/* --- protocol mode -------------------------------------------------------------- */

typedef struct sp_pipe {
    evs_subprocess *sp;
    int fd;
    evs_transport *t;
} sp_pipe;

struct evs_subprocess {
    const evs_subprocess_protocol *proto;
    void *ctx;
    child c;
    sp_pipe pipes[3];
    int refs;
    bool closed;
    bool exited_called;
    bool finished;
};

static void sp_unref(evs_subprocess *sp)
{
    if (--sp->refs > 0)
        return;
    child_stop_watching(&sp->c);
    free(sp);
}

/* connection_lost once the child is reaped and every pipe is closed. */
static void sp_try_finish(evs_subprocess *sp)
{
    if (sp->finished || !sp->exited_called)
        return;
    for (int i = 0; i < 3; i++)
        if (sp->pipes[i].t)
            return;
    sp->finished = true;
    if (sp->proto->connection_lost)
        sp->proto->connection_lost(sp, 0, sp->ctx);
    sp_unref(sp); /* the reference held until connection_lost */
}

static void sp_exited(child *c, void *arg)
{
    evs_subprocess *sp = arg;

    EVS_UNUSED(c);
    sp->refs++;
    sp->exited_called = true;
    if (sp->proto->process_exited)
        sp->proto->process_exited(sp, sp->ctx);
    sp_try_finish(sp);
    sp_unref(sp);
}

static void pp_data(evs_transport *t, const void *data, size_t len, void *ctx)
{
    sp_pipe *pp = ctx;

    EVS_UNUSED(t);
    if (pp->sp->proto->pipe_data_received)
        pp->sp->proto->pipe_data_received(pp->sp, pp->fd, data, len, pp->sp->ctx);
}

static void pp_lost(evs_transport *t, int err, void *ctx)
{
    sp_pipe *pp = ctx;
    evs_subprocess *sp = pp->sp;

    EVS_UNUSED(t);
    pp->t = NULL;
    sp->refs++;
    if (sp->proto->pipe_connection_lost)
        sp->proto->pipe_connection_lost(sp, pp->fd, err, sp->ctx);
    sp_try_finish(sp);
    sp_unref(sp);
}

static void pp_pause(evs_transport *t, void *ctx)
{
    sp_pipe *pp = ctx;

    EVS_UNUSED(t);
    if (pp->sp->proto->pause_writing)
        pp->sp->proto->pause_writing(pp->sp, pp->sp->ctx);
}

static void pp_resume(evs_transport *t, void *ctx)
{
    sp_pipe *pp = ctx;

    EVS_UNUSED(t);
    if (pp->sp->proto->resume_writing)
        pp->sp->proto->resume_writing(pp->sp, pp->sp->ctx);
}

/* Reading ends close at EOF (eof_received returns false by default). */
static const evs_protocol pipe_protocol = {
    .data_received = pp_data,
    .connection_lost = pp_lost,
    .pause_writing = pp_pause,
    .resume_writing = pp_resume,
};

int evs_subprocess_exec(const evs_process_options *o, const evs_subprocess_protocol *proto,
                        void *ctx, evs_subprocess **out)
{
    evs_worker *w = evs_worker_current();
    evs_subprocess *sp;
    int parent[3];
    pid_t pid;
    int err;

    if (!o || !proto || !w)
        return -EINVAL;
    sp = calloc(1, sizeof *sp);
    if (!sp)
        return -ENOMEM;
    if ((err = spawn(o, &pid, parent)) < 0) {
        free(sp);
        return err;
    }
    sp->proto = proto;
    sp->ctx = ctx;
    sp->refs = 2; /* until connection_lost, and for this call */
    sp->c.worker = w;
    sp->c.pid = pid;
    sp->c.pidfd = -1;
    sp->c.on_exit = sp_exited;
    sp->c.arg = sp;
    for (int i = 0; i < 3; i++) {
        sp->pipes[i].sp = sp;
        sp->pipes[i].fd = i;
    }
    /* Pipes first: their connection_made does nothing. A pipe that cannot
     * be set up (out of memory, the worker stopping) is left out, its end
     * closed: get_pipe_transport gives NULL for it, and the child sees EOF
     * or EPIPE there. */
    for (int i = 0; i < 3; i++) {
        if (parent[i] < 0)
            continue;
        err = i == 0 ? evs_pipe_open(-1, parent[0], &pipe_protocol, &sp->pipes[i],
                                     &sp->pipes[i].t)
                     : evs_pipe_open(parent[i], -1, &pipe_protocol, &sp->pipes[i],
                                     &sp->pipes[i].t);
        if (err)
            sp->pipes[i].t = NULL;
    }
    if (out)
        *out = sp;
    if (proto->connection_made)
        proto->connection_made(sp, ctx);
    /* Watch after connection_made, and never poll here: the exit is
     * reported from the loop, not inside this call. */
    child_watch(&sp->c);
    sp_unref(sp);
    return 0;
}

pid_t evs_subprocess_get_pid(const evs_subprocess *p)
{
    return p->c.pid;
}

evs_transport *evs_subprocess_get_pipe_transport(const evs_subprocess *p, int fd)
{
    if (fd < 0 || fd > 2)
        return NULL;
    return p->pipes[fd].t;
}

bool evs_subprocess_get_returncode(const evs_subprocess *p, int *code)
{
    if (p->c.exited && code)
        *code = p->c.returncode;
    return p->c.exited;
}

int evs_subprocess_send_signal(evs_subprocess *p, int sig)
{
    return child_signal(&p->c, sig);
}

int evs_subprocess_terminate(evs_subprocess *p)
{
    return child_signal(&p->c, SIGTERM);
}

int evs_subprocess_kill(evs_subprocess *p)
{
    return child_signal(&p->c, SIGKILL);
}

void evs_subprocess_close(evs_subprocess *p)
{
    if (p->closed)
        return;
    p->closed = true;
    for (int i = 0; i < 3; i++)
        if (p->pipes[i].t)
            evs_transport_close(p->pipes[i].t);
    if (!p->c.exited)
        child_signal(&p->c, SIGKILL);
}

/* --- stream mode ------------------------------------------------------------------ */

struct evs_process {
    child c;
    evs_writer *in;   /* stdin's pair */
    evs_writer *outw; /* stdout's pair (its reader is what users see) */
    evs_writer *errw;
    evs__waitq waiters;
    int waiting;   /* tasks inside evs_process_wait */
    bool released; /* evs_process_free was called */
};

/* Freed once released, reaped (the watch is gone) and left by every
 * waiter: a waiter woken by the exit may run after another task's
 * evs_process_free, and still reads the exit code. */
static void proc_free_if_done(evs_process *p)
{
    if (p->released && p->c.exited && p->waiting == 0)
        free(p);
}

static void proc_exited(child *c, void *arg)
{
    evs_process *p = arg;

    EVS_UNUSED(c);
    evs__task_wake_all(&p->waiters, 0);
    proc_free_if_done(p);
}

int evs_process_spawn(const evs_process_options *o, evs_process **out)
{
    evs_worker *w = evs_worker_current();
    evs_process *p;
    evs_writer **pairs[3];
    int parent[3];
    pid_t pid;
    int err;

    if (!o || !out || !w)
        return -EINVAL;
    p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    if ((err = spawn(o, &pid, parent)) < 0) {
        free(p);
        return err;
    }
    p->c.worker = w;
    p->c.pid = pid;
    p->c.pidfd = -1;
    p->c.on_exit = proc_exited;
    p->c.arg = p;
    pairs[0] = &p->in;
    pairs[1] = &p->outw;
    pairs[2] = &p->errw;
    for (int i = 0; i < 3; i++) {
        evs_reader *r;
        if (parent[i] < 0)
            continue;
        err = i == 0 ? evs_stream_open_pipe(-1, parent[0], o->limit, &r, pairs[0])
                     : evs_stream_open_pipe(parent[i], -1, o->limit, &r, pairs[i]);
        if (err)
            *pairs[i] = NULL;
    }
    child_watch(&p->c);
    *out = p;
    return 0;
}

evs_writer *evs_process_stdin(const evs_process *p)
{
    return p->in;
}

evs_reader *evs_process_stdout(const evs_process *p)
{
    return p->outw ? evs_writer_reader(p->outw) : NULL;
}

evs_reader *evs_process_stderr(const evs_process *p)
{
    return p->errw ? evs_writer_reader(p->errw) : NULL;
}

pid_t evs_process_pid(const evs_process *p)
{
    return p->c.pid;
}

int evs_process_wait(evs_process *p, int *code)
{
    double began = 0;
    int rc = 0;

    if (!p->c.exited && !evs_task_current())
        return -EINVAL;
    p->waiting++;
    while (!p->c.exited && !p->released && rc == 0)
        rc = evs__task_park_in_call(&p->waiters, &began);
    p->waiting--;
    if (rc == 0 && !p->c.exited)
        rc = -ECANCELED; /* freed by another task */
    if (rc == 0 && code)
        *code = p->c.returncode;
    proc_free_if_done(p);
    return rc;
}

bool evs_process_returncode(const evs_process *p, int *code)
{
    if (p->c.exited && code)
        *code = p->c.returncode;
    return p->c.exited;
}

int evs_process_send_signal(evs_process *p, int sig)
{
    return child_signal(&p->c, sig);
}

int evs_process_terminate(evs_process *p)
{
    return child_signal(&p->c, SIGTERM);
}

int evs_process_kill(evs_process *p)
{
    return child_signal(&p->c, SIGKILL);
}

void evs_process_free(evs_process *p)
{
    if (!p)
        return;
    evs_writer_free(p->in);
    evs_writer_free(p->outw);
    evs_writer_free(p->errw);
    p->in = p->outw = p->errw = NULL;
    /* Wake anyone still waiting (-ECANCELED); p stays until they left. */
    evs__task_wake_all(&p->waiters, -ECANCELED);
    /* Reaped now, or the watch goes on and proc_exited frees it. Released
     * only after: reaping here runs proc_exited, which must not free p. */
    child_poll(&p->c);
    p->released = true;
    proc_free_if_done(p);
}
