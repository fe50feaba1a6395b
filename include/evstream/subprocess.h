/**
 * @file evstream/subprocess.h
 * Subprocesses: asyncio's subprocess_exec with a SubprocessTransport and a
 * SubprocessProtocol (protocol mode), and the stream-mode equivalent of
 * asyncio.create_subprocess_exec (a Process with stdin writer, stdout and
 * stderr readers and wait()).
 *
 * Spawning: posix_spawn(), never through a shell: argv is passed as it is.
 * The child starts with an empty signal mask and every signal at its
 * default disposition (glibc's posix_spawn leaves its internal signals 32
 * and 33 ignored), only fds 0-2 open (the rest are closed, like
 * Popen's close_fds), in @c cwd if given, with @c envp (or the current
 * environment). A program that cannot be run (not found, not executable,
 * a bad cwd) makes the spawn call fail with that errno: no process is
 * left behind.
 *
 * Reaping: the child is watched through a pidfd (Linux >= 5.3) on the
 * worker's loop and reaped with waitpid() on that pid only; without pidfd
 * a timer polls waitpid(pid, WNOHANG). Nothing ever calls waitpid(-1) or
 * installs a SIGCHLD handler, so the other children of an embedding program
 * are never disturbed, and no zombie is left once the exit was seen.
 *
 * Return codes follow the seed: the exit status (0-255), or -N when the
 * child was killed by signal N.
 *
 * Lifetime: a worker that stops (evs_runtime_stop's abort, or the end of
 * evs_run()) kills every child it still watches with SIGKILL, as closing
 * its transport would, and its loop runs until they are reaped: the
 * subprocess transport's process_exited and connection_lost still come,
 * and a released Process is freed. Close or wait for children first to
 * end them more gently.
 *
 * Thread: every function runs on the worker that spawned the process.
 */
#ifndef EVSTREAM_SUBPROCESS_H
#define EVSTREAM_SUBPROCESS_H

#include <sys/types.h>

#include <evstream/common.h>
#include <evstream/transport.h>

#ifdef __cplusplus
extern "C" {
#endif

/** What a child's stdin, stdout or stderr is connected to. */
typedef enum evs_stdio {
    EVS_STDIO_INHERIT = 0, /**< the parent's (the zero value) */
    EVS_STDIO_PIPE,        /**< a pipe to this process */
    EVS_STDIO_DEVNULL,     /**< /dev/null */
    EVS_STDIO_FD,          /**< a given fd (duplicated; the caller keeps its own) */
    EVS_STDIO_STDOUT       /**< stderr only: the same as stdout */
} evs_stdio;

/** How to run the child. Zero-initialise and fill what you need. */
typedef struct evs_process_options {
    /** The arguments, argv[0] first, NULL-terminated. Required. */
    const char *const *argv;
    /** The program; NULL = argv[0]. Without a '/', it is searched in PATH. */
    const char *file;
    /** The environment, NULL-terminated "NAME=value" strings; NULL = ours. */
    const char *const *envp;
    /** Working directory; NULL = ours. */
    const char *cwd;
    evs_stdio stdin_mode, stdout_mode, stderr_mode;
    int stdin_fd, stdout_fd, stderr_fd; /**< for EVS_STDIO_FD */
    /** Stream mode: the readers' limit; 0 = 64 KiB. */
    size_t limit;
} evs_process_options;

/* --- protocol mode ------------------------------------------------------- */

/** SubprocessTransport. */
typedef struct evs_subprocess evs_subprocess;

/** SubprocessProtocol. Zero-initialise and fill what you need. */
typedef struct evs_subprocess_protocol {
    /** The child runs; its pipes are connected. */
    void (*connection_made)(evs_subprocess *p, void *ctx);
    /** The child wrote to its stdout (@p fd 1) or stderr (@p fd 2). */
    void (*pipe_data_received)(evs_subprocess *p, int fd, const void *data, size_t len,
                               void *ctx);
    /** One of the pipes (0, 1 or 2) is closed: @p err 0 (EOF, close) or a
     *  negative errno (-EPIPE: the child stopped reading its stdin). */
    void (*pipe_connection_lost)(evs_subprocess *p, int fd, int err, void *ctx);
    /** The child exited (its return code is known from now on). */
    void (*process_exited)(evs_subprocess *p, void *ctx);
    /** The child exited and every pipe is closed: the end. @p err is 0.
     *  The transport is freed after this returns. */
    void (*connection_lost)(evs_subprocess *p, int err, void *ctx);
    /** Flow control of the stdin pipe (see transport.h). */
    void (*pause_writing)(evs_subprocess *p, void *ctx);
    void (*resume_writing)(evs_subprocess *p, void *ctx);
} evs_subprocess_protocol;

/**
 * Spawn a child and connect its pipes to @p proto (subprocess_exec).
 * connection_made is called before this returns.
 * @return 0, -EINVAL (no argv, not on a worker, bad stdio mode), or the
 *         spawn error (-ENOENT, -EACCES...).
 */
EVS_EXTERN int evs_subprocess_exec(const evs_process_options *opts,
                                   const evs_subprocess_protocol *proto, void *ctx,
                                   evs_subprocess **out);
/** The child's pid. */
EVS_EXTERN pid_t evs_subprocess_get_pid(const evs_subprocess *p);
/** The transport of pipe @p fd (0: stdin, write to it; 1, 2: read), or
 *  NULL when that stream is not a pipe or the pipe is closed. */
EVS_EXTERN evs_transport *evs_subprocess_get_pipe_transport(const evs_subprocess *p, int fd);
/** True once the child exited, with its return code in @p code. */
EVS_EXTERN bool evs_subprocess_get_returncode(const evs_subprocess *p, int *code);
/** Send signal @p sig. @return 0, or -ESRCH once the child was reaped. */
EVS_EXTERN int evs_subprocess_send_signal(evs_subprocess *p, int sig);
/** SIGTERM. */
EVS_EXTERN int evs_subprocess_terminate(evs_subprocess *p);
/** SIGKILL. */
EVS_EXTERN int evs_subprocess_kill(evs_subprocess *p);
/** Close the pipes and, if the child has not exited, kill it (the seed's
 *  close()). connection_lost follows once it is reaped. Idempotent. */
EVS_EXTERN void evs_subprocess_close(evs_subprocess *p);

/* --- stream mode ----------------------------------------------------------- */

/** A child process with stream pipes (asyncio.subprocess.Process). */
typedef struct evs_process evs_process;

/**
 * Spawn a child (create_subprocess_exec) with (reader, writer) pipes.
 * Does not park.
 * @return 0, or as evs_subprocess_exec().
 */
EVS_EXTERN int evs_process_spawn(const evs_process_options *opts, evs_process **out);
/** The child's stdin as a writer (NULL unless piped). evs_close() or
 *  evs_write_eof() on it closes the pipe: the child sees EOF. */
EVS_EXTERN evs_writer *evs_process_stdin(const evs_process *p);
/** The child's stdout / stderr as readers (NULL unless piped). */
EVS_EXTERN evs_reader *evs_process_stdout(const evs_process *p);
EVS_EXTERN evs_reader *evs_process_stderr(const evs_process *p);
/** The child's pid. */
EVS_EXTERN pid_t evs_process_pid(const evs_process *p);
/** Wait for the child to exit. Parks. Several tasks may wait; a task
 *  that frees the process while others wait ends their waits (those the
 *  exit already woke still get its code).
 *  @return 0 with its return code in @p code (may be NULL), or
 *  -ECANCELED / -ETIMEDOUT (the child goes on). */
EVS_EXTERN int evs_process_wait(evs_process *p, int *code);
/** True once the child exited, with its return code in @p code. */
EVS_EXTERN bool evs_process_returncode(const evs_process *p, int *code);
/** Signals, as for the protocol-mode transport. */
EVS_EXTERN int evs_process_send_signal(evs_process *p, int sig);
EVS_EXTERN int evs_process_terminate(evs_process *p);
EVS_EXTERN int evs_process_kill(evs_process *p);
/** Release the process: its pipes are closed (stdin flushed first). A
 *  child still running is not killed; it is reaped in the background when
 *  it exits, or killed and reaped when the worker stops first. */
EVS_EXTERN void evs_process_free(evs_process *p);

#ifdef __cplusplus
}
#endif
#endif
