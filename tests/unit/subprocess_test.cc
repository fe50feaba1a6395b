// Subprocesses: the SubprocessTransport/SubprocessProtocol (protocol mode)
// and the stream-mode Process, with real programs (/bin/cat, /bin/true,
// /bin/false, sleep, /bin/sh -c for small scripts): pipes both ways, the
// callback order, return codes (exit status, -signal), signals, close(),
// argv/env/cwd, stdio modes, spawn failures, a clean signal state and no
// inherited fds in the child, children of the embedding program left
// alone, and no zombie after any test.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <fstream>
#include <functional>
#include <list>
#include <sstream>
#include <string>
#include <vector>

#include <evstream/subprocess.h>

#include "helpers.h"

using namespace evs_test;

namespace {

template <typename F>
void run(F f) {
    EXPECT_EQ(0, run_in_task(f));
}


// Children of this process (any state, zombies included), from /proc.
std::vector<int> children() {
    std::vector<int> out;
    DIR *d = opendir("/proc");
    if (!d) return out;
    while (struct dirent *e = readdir(d)) {
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        std::ifstream f("/proc/" + std::string(e->d_name) + "/stat");
        std::string line;
        if (!std::getline(f, line)) continue;
        size_t rp = line.rfind(')');
        if (rp == std::string::npos) continue;
        std::istringstream rest(line.substr(rp + 2));
        std::string state;
        int ppid = 0;
        rest >> state >> ppid;
        if (ppid == getpid()) out.push_back(pid);
    }
    closedir(d);
    return out;
}

// Every test ends with no child left, zombie or not.
class SubprocessTest : public ::testing::Test {
  protected:
    void TearDown() override {
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!children().empty() && std::chrono::steady_clock::now() < end) usleep(2000);
        EXPECT_TRUE(children().empty()) << "children left: " << children().size();
    }
};

struct Rec {
    int made = 0, exited = 0, lost = 0, pause = 0, resume = 0, after_lost = 0;
    int lost_err = INT_MIN;
    std::string out, err;
    std::vector<std::string> order;
    int pipe_lost[3] = {0, 0, 0};
    int pipe_err[3] = {INT_MIN, INT_MIN, INT_MIN};
    int code_at_exit = INT_MIN;
    int kill_after_exit = INT_MIN;
    evs_subprocess *p = nullptr;
};

Rec *R(void *c) { return static_cast<Rec *>(c); }

const evs_subprocess_protocol kProto = {
    .connection_made =
        [](evs_subprocess *p, void *c) {
            R(c)->made++;
            R(c)->p = p;
            R(c)->order.push_back("made");
        },
    .pipe_data_received =
        [](evs_subprocess *, int fd, const void *d, size_t n, void *c) {
            if (R(c)->lost) R(c)->after_lost++;
            (fd == 1 ? R(c)->out : R(c)->err).append(static_cast<const char *>(d), n);
        },
    .pipe_connection_lost =
        [](evs_subprocess *, int fd, int err, void *c) {
            R(c)->pipe_lost[fd]++;
            R(c)->pipe_err[fd] = err;
            R(c)->order.push_back("pipe" + std::to_string(fd));
        },
    .process_exited =
        [](evs_subprocess *p, void *c) {
            R(c)->exited++;
            EXPECT_TRUE(evs_subprocess_get_returncode(p, &R(c)->code_at_exit));
            // Once reaped, no signal goes to a pid that may be reused.
            R(c)->kill_after_exit = evs_subprocess_kill(p);
            R(c)->order.push_back("exited");
        },
    .connection_lost =
        [](evs_subprocess *, int err, void *c) {
            R(c)->lost++;
            R(c)->lost_err = err;
            R(c)->order.push_back("lost");
        },
    .pause_writing = [](evs_subprocess *, void *c) { R(c)->pause++; },
    .resume_writing = [](evs_subprocess *, void *c) { R(c)->resume++; },
};

// Options for argv; the argv array lives until the end of the program.
evs_process_options opts(const std::vector<const char *> &argv) {
    static std::list<std::vector<const char *>> keep;
    keep.push_back(argv);
    keep.back().push_back(nullptr);
    evs_process_options o = {};
    o.argv = keep.back().data();
    return o;
}

// Run argv to completion in protocol mode; returns the return code.
int run_to_exit(const std::vector<const char *> &argv, Rec &r) {
    int code = INT_MIN;
    run([&] {
        evs_process_options o = opts(argv);
        o.stdout_mode = EVS_STDIO_PIPE;
        o.stderr_mode = EVS_STDIO_PIPE;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        code = r.code_at_exit;
    });
    return code;
}

}  // namespace

TEST_F(SubprocessTest, CatEchoesStdinAndCallbacksComeInOrder) {
    Rec r;
    run([&] {
        evs_process_options o = opts({"/bin/cat"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_PIPE;
        o.stderr_mode = EVS_STDIO_DEVNULL;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        EXPECT_EQ(1, r.made);
        EXPECT_EQ(p, r.p);
        EXPECT_GT(evs_subprocess_get_pid(p), 0);
        int code;
        EXPECT_FALSE(evs_subprocess_get_returncode(p, &code));
        evs_transport *in = evs_subprocess_get_pipe_transport(p, 0);
        ASSERT_NE(nullptr, in);
        ASSERT_NE(nullptr, evs_subprocess_get_pipe_transport(p, 1));
        EXPECT_EQ(nullptr, evs_subprocess_get_pipe_transport(p, 2));
        EXPECT_EQ(nullptr, evs_subprocess_get_pipe_transport(p, 3));
        ASSERT_EQ(0, evs_transport_write(in, "hello cat\n", 10));
        EXPECT_TRUE(wait_until([&] { return r.out == "hello cat\n"; }));
        ASSERT_EQ(0, evs_transport_write_eof(in));  // cat sees EOF and exits
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    EXPECT_EQ(0, r.code_at_exit);
    EXPECT_EQ(1, r.exited);
    EXPECT_EQ(1, r.pipe_lost[0]);
    EXPECT_EQ(1, r.pipe_lost[1]);
    EXPECT_EQ(0, r.pipe_lost[2]);
    EXPECT_EQ(0, r.pipe_err[0]);
    EXPECT_EQ(0, r.pipe_err[1]);
    EXPECT_EQ(0, r.lost_err);
    EXPECT_EQ(0, r.after_lost);
    ASSERT_FALSE(r.order.empty());
    EXPECT_EQ("made", r.order.front());
    EXPECT_EQ("lost", r.order.back());
    EXPECT_EQ(5u, r.order.size());
}

TEST_F(SubprocessTest, ReturnCodes) {
    {
        Rec r;
        EXPECT_EQ(0, run_to_exit({"/bin/true"}, r));
    }
    {
        Rec r;
        EXPECT_EQ(1, run_to_exit({"/bin/false"}, r));
    }
    {
        Rec r;
        EXPECT_EQ(7, run_to_exit({"/bin/sh", "-c", "exit 7"}, r));
    }
    {
        Rec r;  // killed by a signal: -N
        EXPECT_EQ(-SIGKILL, run_to_exit({"/bin/sh", "-c", "kill -KILL $$"}, r));
    }
}

TEST_F(SubprocessTest, SignalsTerminateKillSendSignal) {
    struct Case {
        int (*fn)(evs_subprocess *, int);
        int sig;
    };
    for (int sig : {SIGTERM, SIGKILL, SIGUSR1}) {
        Rec r;
        run([&] {
            evs_process_options o = opts({"sleep", "30"});  // found in PATH
            evs_subprocess *p = nullptr;
            ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
            int rc = sig == SIGTERM   ? evs_subprocess_terminate(p)
                     : sig == SIGKILL ? evs_subprocess_kill(p)
                                      : evs_subprocess_send_signal(p, sig);
            EXPECT_EQ(0, rc);
            // Without pipes, connection_lost follows process_exited at once
            // (and p is gone after it).
            EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        });
        EXPECT_EQ(1, r.exited);
        EXPECT_EQ(-sig, r.code_at_exit);
        EXPECT_EQ(-ESRCH, r.kill_after_exit);
    }
}

TEST_F(SubprocessTest, CloseKillsARunningChildAndClosesPipes) {
    Rec r;
    run([&] {
        evs_process_options o = opts({"sleep", "30"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_PIPE;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        evs_subprocess_close(p);
        evs_subprocess_close(p);  // idempotent
        EXPECT_EQ(0, r.lost);     // never from inside close()
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    EXPECT_EQ(-SIGKILL, r.code_at_exit);
    EXPECT_EQ(1, r.pipe_lost[0]);
    EXPECT_EQ(1, r.pipe_lost[1]);
    EXPECT_EQ(1, r.exited);
}

TEST_F(SubprocessTest, StdoutAndStderrSeparateOrMerged) {
    {
        Rec r;
        EXPECT_EQ(0, run_to_exit({"/bin/sh", "-c", "echo out; echo err >&2"}, r));
        EXPECT_EQ("out\n", r.out);
        EXPECT_EQ("err\n", r.err);
        EXPECT_EQ(1, r.pipe_lost[1]);
        EXPECT_EQ(1, r.pipe_lost[2]);
    }
    {
        Rec r;
        run([&] {
            evs_process_options o = opts({"/bin/sh", "-c", "echo out; echo err >&2"});
            o.stdout_mode = EVS_STDIO_PIPE;
            o.stderr_mode = EVS_STDIO_STDOUT;
            ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, nullptr));
            EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
        });
        EXPECT_EQ("out\nerr\n", r.out);
        EXPECT_EQ("", r.err);
    }
}

TEST_F(SubprocessTest, ArgvEnvironmentAndWorkingDirectory) {
    std::string dir = make_temp_dir();
    Rec r;
    run([&] {
        // argv passes as it is: no shell splitting or expansion of "$FOO x".
        evs_process_options o = opts({"/bin/sh", "-c", "echo \"$FOO|$1|$2\"; pwd", "sh",
                                      "$FOO x", "two words"});
        const char *env[] = {"FOO=bar", "PATH=/usr/bin:/bin", nullptr};
        o.envp = env;
        o.cwd = dir.c_str();
        o.stdout_mode = EVS_STDIO_PIPE;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, nullptr));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    char real[PATH_MAX];
    ASSERT_NE(nullptr, realpath(dir.c_str(), real));
    EXPECT_EQ("bar|$FOO x|two words\n" + std::string(real) + "\n", r.out);
    remove_dir(dir);
}

TEST_F(SubprocessTest, SpawnFailuresReportTheErrnoAndLeaveNothing) {
    std::string dir = make_temp_dir();
    std::string noexec = dir + "/noexec";
    close(open(noexec.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    int fds = count_open_fds();
    Rec r;
    run([&] {
        evs_process_options o = opts({"/nonexistent/program"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_PIPE;
        EXPECT_EQ(-ENOENT, evs_subprocess_exec(&o, &kProto, &r, nullptr));
        evs_process_options o2 = opts({"no-such-program-evstream"});
        EXPECT_EQ(-ENOENT, evs_subprocess_exec(&o2, &kProto, &r, nullptr));
        evs_process_options o3 = opts({"/bin/true"});
        o3.cwd = "/nonexistent/dir";
        EXPECT_EQ(-ENOENT, evs_subprocess_exec(&o3, &kProto, &r, nullptr));
        evs_process_options o4 = opts({noexec.c_str()});  // not executable
        EXPECT_EQ(-EACCES, evs_subprocess_exec(&o4, &kProto, &r, nullptr));
        evs_process_options o5 = {};
        EXPECT_EQ(-EINVAL, evs_subprocess_exec(&o5, &kProto, &r, nullptr));
        evs_process_options o6 = opts({"/bin/true"});
        o6.stdin_mode = EVS_STDIO_STDOUT;  // only for stderr
        EXPECT_EQ(-EINVAL, evs_subprocess_exec(&o6, &kProto, &r, nullptr));
        evs_process *sp = nullptr;
        EXPECT_EQ(-ENOENT, evs_process_spawn(&o, &sp));
    });
    EXPECT_EQ(0, r.made);
    EXPECT_EQ(fds, count_open_fds());
    // Not on a worker.
    evs_process_options o = opts({"/bin/true"});
    EXPECT_EQ(-EINVAL, evs_subprocess_exec(&o, &kProto, &r, nullptr));
    remove_dir(dir);
}

TEST_F(SubprocessTest, ChildStartsWithCleanSignalsAndOnlyStdio) {
    // Block and ignore signals here: the child must get neither.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    struct sigaction ign, oldint;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, &oldint);
    int leak[2];
    ASSERT_EQ(0, pipe(leak));  // no CLOEXEC: would leak without closefrom
    std::string script = "grep -E '^Sig(Blk|Ign)' /proc/self/status; "
                         "if [ -e /proc/self/fd/" + std::to_string(leak[1]) +
                         " ]; then echo leaked; else echo closed; fi";
    Rec r;
    EXPECT_EQ(0, run_to_exit({"/bin/sh", "-c", script.c_str()}, r));
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    sigaction(SIGINT, &oldint, nullptr);
    close(leak[0]);
    close(leak[1]);
    EXPECT_NE(std::string::npos, r.out.find("SigBlk:\t0000000000000000")) << r.out;
    // Signals 1-31 at their defaults. (glibc's posix_spawn leaves its own
    // internal signals 32 and 33 ignored; no program uses them.)
    size_t at = r.out.find("SigIgn:\t");
    ASSERT_NE(std::string::npos, at) << r.out;
    unsigned long long ignored = std::stoull(r.out.substr(at + 8, 16), nullptr, 16);
    EXPECT_EQ(0ull, ignored & 0x7fffffffull) << r.out;
    EXPECT_NE(std::string::npos, r.out.find("closed")) << r.out;
}

TEST_F(SubprocessTest, StdinPipeIsLostCleanlyWhenTheChildLeavesWithoutReading) {
    Rec r;
    run([&] {
        evs_process_options o = opts({"/bin/true"});
        o.stdin_mode = EVS_STDIO_PIPE;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        // No write is needed to learn that the read end is gone: without
        // that the stdin pipe would stay open and connection_lost (after
        // which @p is freed) would never come.
        EXPECT_TRUE(wait_until([&] { return r.exited == 1 && r.lost == 1; }));
    });
    EXPECT_EQ(0, r.pipe_err[0]);
}

TEST_F(SubprocessTest, StdinWriterGetsEpipeWhenChildStopsReading) {
    struct sigaction old, dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, &old);  // a SIGPIPE getting through would kill us
    Rec r;
    run([&] {
        evs_process_options o = opts({"/usr/bin/head", "-c", "1"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_DEVNULL;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        evs_transport *in = evs_subprocess_get_pipe_transport(p, 0);
        ASSERT_NE(nullptr, in);
        // More than a pipe holds: bytes are still queued when head leaves.
        std::string big(1 << 20, 'x');
        ASSERT_EQ(0, evs_transport_write(in, big.data(), big.size()));
        EXPECT_TRUE(wait_until([&] { return r.exited == 1 && r.lost == 1; }));
    });
    EXPECT_EQ(-EPIPE, r.pipe_err[0]);
    sigaction(SIGPIPE, &old, nullptr);
}

TEST_F(SubprocessTest, StdinFlowControlPausesAndResumes) {
    Rec r;
    run([&] {
        // The child sleeps a little before reading: the pipe fills up.
        evs_process_options o = opts({"/bin/sh", "-c", "sleep 0.1; exec cat >/dev/null"});
        o.stdin_mode = EVS_STDIO_PIPE;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
        evs_transport *in = evs_subprocess_get_pipe_transport(p, 0);
        std::string big(512 * 1024, 'x');
        ASSERT_EQ(0, evs_transport_write(in, big.data(), big.size()));
        EXPECT_EQ(1, r.pause);
        EXPECT_TRUE(wait_until([&] { return r.resume == 1; }));
        EXPECT_LE(evs_transport_get_write_buffer_size(in), EVS_WRITE_LOW_WATER_DEFAULT);
        ASSERT_EQ(0, evs_transport_write_eof(in));
        EXPECT_TRUE(wait_until([&] { return r.lost == 1; }));
    });
    EXPECT_EQ(0, r.code_at_exit);
}

TEST_F(SubprocessTest, StreamModeCatRoundTripAndWait) {
    run([&] {
        evs_process_options o = opts({"/bin/cat"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_PIPE;
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        EXPECT_GT(evs_process_pid(p), 0);
        evs_writer *in = evs_process_stdin(p);
        evs_reader *out = evs_process_stdout(p);
        ASSERT_NE(nullptr, in);
        ASSERT_NE(nullptr, out);
        EXPECT_EQ(nullptr, evs_process_stderr(p));
        for (int i = 0; i < 20; i++) {
            std::string line = "line " + std::to_string(i) + "\n";
            ASSERT_EQ(0, evs_write(in, line.data(), line.size()));
            ASSERT_EQ(0, evs_drain(in));
            const void *v;
            ssize_t n = evs_readline(out, &v);
            ASSERT_EQ((ssize_t)line.size(), n);
            EXPECT_EQ(line, std::string(static_cast<const char *>(v), (size_t)n));
        }
        int code = INT_MIN;
        EXPECT_FALSE(evs_process_returncode(p, &code));
        ASSERT_EQ(0, evs_write_eof(in));
        char buf[8];
        EXPECT_EQ(0, evs_read(out, buf, sizeof buf));  // EOF: cat is done
        EXPECT_EQ(0, evs_process_wait(p, &code));
        EXPECT_EQ(0, code);
        EXPECT_TRUE(evs_process_returncode(p, &code));
        evs_process_free(p);
    });
}

// A waiter woken by the exit may run after another task has freed the
// process: it read the freed record (ASan: heap-use-after-free). The
// record now lives until its last waiter has left.
TEST_F(SubprocessTest, AWaiterWokenByTheExitOutlivesAFreeByAnotherTask) {
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "exit 3"});
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        struct Waiter {
            evs_process *p;
            int rc = INT_MIN, code = INT_MIN;
        } w{p};
        evs_task *t = nullptr;
        ASSERT_EQ(0, evs_task_spawn(
                         [](void *a) -> int {
                             Waiter *w = static_cast<Waiter *>(a);
                             w->rc = evs_process_wait(w->p, &w->code);
                             return 0;
                         },
                         &w, &t));
        // This task runs before the woken waiter and frees the record.
        while (!evs_process_returncode(p, nullptr)) ASSERT_EQ(0, evs_yield());
        evs_process_free(p);
        ASSERT_EQ(0, evs_task_join(t, nullptr));
        EXPECT_EQ(0, w.rc);
        EXPECT_EQ(3, w.code);
    });
}

// A given fd among 0-2 is the parent's, even when an earlier redirection
// replaced that number in the child: stderr_fd = 1 with stdout piped sent
// the child's stderr into the stdout pipe.
TEST_F(SubprocessTest, AGivenFdIsTheParentsEvenWhenAnEarlierPipeTookItsNumber) {
    std::string dir = make_temp_dir();
    std::string file = dir + "/stderr";
    int f = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(f, 0);
    // The test process's fd 1 is the file for the while.
    fflush(stdout);
    int saved = dup(1);
    ASSERT_GE(saved, 0);
    ASSERT_EQ(1, dup2(f, 1));
    std::string out;
    int code = INT_MIN;
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "echo out; echo err >&2"});
        o.stdout_mode = EVS_STDIO_PIPE;
        o.stderr_mode = EVS_STDIO_FD;
        o.stderr_fd = 1;
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        char buf[64];
        ssize_t n;
        while ((n = evs_read(evs_process_stdout(p), buf, sizeof buf)) > 0) out.append(buf, (size_t)n);
        EXPECT_EQ(0, evs_process_wait(p, &code));
        evs_process_free(p);
    });
    dup2(saved, 1);
    close(saved);
    close(f);
    EXPECT_EQ(0, code);
    EXPECT_EQ("out\n", out);
    char got[16] = "";
    int rf = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(4, read(rf, got, sizeof got - 1));
    close(rf);
    EXPECT_STREQ("err\n", got);
    remove_dir(dir);
}

// In a program that closed its fds 0 and 1, a pipe gets those numbers:
// the stderr pipe's child end was fd 1, the stdout action put /dev/null
// there first, and the child's stderr went to /dev/null.
TEST_F(SubprocessTest, APipeIsTheChildsEvenWhenTheProgramClosedItsStdio) {
    std::string err;
    int code = INT_MIN;
    fflush(stdout);
    int saved0 = dup(0), saved1 = dup(1);
    ASSERT_GE(saved0, 0);
    ASSERT_GE(saved1, 0);
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "echo to-stderr >&2"});
        o.stdin_mode = EVS_STDIO_DEVNULL;
        o.stdout_mode = EVS_STDIO_DEVNULL;
        o.stderr_mode = EVS_STDIO_PIPE;
        evs_process *p = nullptr;
        close(0);  // here, after the loop took its own fds
        close(1);
        int rc = evs_process_spawn(&o, &p);
        if (rc == 0) {
            char buf[64];
            ssize_t n;
            while ((n = evs_read(evs_process_stderr(p), buf, sizeof buf)) > 0)
                err.append(buf, (size_t)n);
            evs_process_wait(p, &code);
            evs_process_free(p);
        }
        dup2(saved0, 0);
        dup2(saved1, 1);
        EXPECT_EQ(0, rc);
    });
    close(saved0);
    close(saved1);
    EXPECT_EQ(0, code);
    EXPECT_EQ("to-stderr\n", err);
}

TEST_F(SubprocessTest, StreamModeLargeDataThroughCatWithAReaderTask) {
    std::string payload = pattern(3 * 1024 * 1024, 11);
    std::string got;
    run([&] {
        evs_process_options o = opts({"/bin/cat"});
        o.stdin_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_PIPE;
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        struct Ctx {
            evs_reader *r;
            std::string *got;
        } ctx = {evs_process_stdout(p), &got};
        evs_task *reader = nullptr;
        ASSERT_EQ(0, evs_task_spawn(
                         [](void *a) -> int {
                             Ctx *c = static_cast<Ctx *>(a);
                             char buf[65536];
                             ssize_t n;
                             while ((n = evs_read(c->r, buf, sizeof buf)) > 0)
                                 c->got->append(buf, (size_t)n);
                             return (int)n;
                         },
                         &ctx, &reader));
        evs_writer *in = evs_process_stdin(p);
        for (size_t off = 0; off < payload.size(); off += 200000) {
            ASSERT_EQ(0, evs_write(in, payload.data() + off,
                                   std::min<size_t>(200000, payload.size() - off)));
            ASSERT_EQ(0, evs_drain(in));
        }
        evs_close(in);
        int result = -1;
        EXPECT_EQ(0, evs_task_join(reader, &result));
        EXPECT_EQ(0, result);
        int code = -1;
        EXPECT_EQ(0, evs_process_wait(p, &code));
        EXPECT_EQ(0, code);
        evs_process_free(p);
    });
    EXPECT_EQ(payload.size(), got.size());
    EXPECT_TRUE(got == payload);
}

TEST_F(SubprocessTest, StreamModeStderrReaderAndSignals) {
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "echo oops >&2; exec sleep 30"});
        o.stderr_mode = EVS_STDIO_PIPE;
        o.stdout_mode = EVS_STDIO_DEVNULL;
        o.stdin_mode = EVS_STDIO_DEVNULL;
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        EXPECT_EQ(nullptr, evs_process_stdin(p));
        EXPECT_EQ(nullptr, evs_process_stdout(p));
        const void *v;
        ssize_t n = evs_readline(evs_process_stderr(p), &v);
        ASSERT_EQ(5, n);
        EXPECT_EQ("oops\n", std::string(static_cast<const char *>(v), 5));
        // wait() bounded by the task's timeout: -ETIMEDOUT, the child goes on.
        evs_task_set_timeout(evs_task_current(), 0.05);
        int code = 0;
        EXPECT_EQ(-ETIMEDOUT, evs_process_wait(p, &code));
        evs_task_set_timeout(evs_task_current(), 15.0);
        EXPECT_EQ(0, evs_process_terminate(p));
        EXPECT_EQ(0, evs_process_wait(p, &code));
        EXPECT_EQ(-SIGTERM, code);
        EXPECT_EQ(-ESRCH, evs_process_kill(p));
        EXPECT_EQ(-ESRCH, evs_process_send_signal(p, SIGUSR1));
        evs_process_free(p);
    });
}

TEST_F(SubprocessTest, FreeingARunningProcessStillReapsIt) {
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "sleep 0.1"});
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        int pid = evs_process_pid(p);
        evs_process_free(p);  // not killed
        EXPECT_EQ(0, kill(pid, 0));
        // Reaped by its watcher once it exits: no zombie stays.
        EXPECT_TRUE(wait_until([&] { return children().empty(); }));
    });
}

TEST_F(SubprocessTest, TheLoopEndingKillsAndReapsAReleasedChild) {
    int pid = -1;
    run([&] {
        evs_process_options o = opts({"sleep", "30"});
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        pid = evs_process_pid(p);
        evs_process_free(p);  // still running: to be reaped in the background
    });
    // The loop did not end before the child: killed, reaped (no zombie),
    // and its record freed (ASan would report the leak).
    ASSERT_GT(pid, 0);
    EXPECT_EQ(-1, kill(pid, 0));
    EXPECT_EQ(ESRCH, errno);
}

TEST_F(SubprocessTest, TheLoopEndingKillsAnOpenSubprocessAndReportsItsEnd) {
    Rec r;
    run([&] {
        evs_process_options o = opts({"sleep", "30"});
        o.stdout_mode = EVS_STDIO_PIPE;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kProto, &r, &p));
    });  // never closed
    EXPECT_EQ(1, r.exited);
    EXPECT_EQ(-SIGKILL, r.code_at_exit);
    EXPECT_EQ(1, r.lost);
    ASSERT_FALSE(r.order.empty());
    EXPECT_EQ("lost", r.order.back());
}

TEST_F(SubprocessTest, OtherChildrenOfTheProgramAreNotReaped) {
    // A child of "the embedding program", started without evstream.
    pid_t mine = fork();
    ASSERT_GE(mine, 0);
    if (mine == 0) {
        usleep(200000);
        _exit(42);
    }
    Rec r;
    EXPECT_EQ(3, run_to_exit({"/bin/sh", "-c", "exit 3"}, r));
    run([&] {
        evs_process_options o = opts({"/bin/true"});
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        int code = -1;
        EXPECT_EQ(0, evs_process_wait(p, &code));
        EXPECT_EQ(0, code);
        evs_process_free(p);
    });
    // Ours is still ours to reap, with its own status.
    int status = 0;
    ASSERT_EQ(mine, waitpid(mine, &status, 0));
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(42, WEXITSTATUS(status));
}

TEST_F(SubprocessTest, StdioFromAGivenFd) {
    std::string dir = make_temp_dir();
    std::string path = dir + "/out.txt";
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    run([&] {
        evs_process_options o = opts({"/bin/sh", "-c", "echo to file"});
        o.stdout_mode = EVS_STDIO_FD;
        o.stdout_fd = fd;
        evs_process *p = nullptr;
        ASSERT_EQ(0, evs_process_spawn(&o, &p));
        int code = -1;
        EXPECT_EQ(0, evs_process_wait(p, &code));
        EXPECT_EQ(0, code);
        evs_process_free(p);
    });
    EXPECT_NE(-1, fcntl(fd, F_GETFD));  // the caller keeps its fd
    close(fd);
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);
    EXPECT_EQ("to file", line);
    remove_dir(dir);
}

namespace {
struct SpRec {
    int exited = 0, lost = 0;
    bool in_kill = false;
    int lost_inside_kill = 0;
};
void sp_exited(evs_subprocess *, void *ctx) { static_cast<SpRec *>(ctx)->exited++; }
void sp_lost(evs_subprocess *, int, void *ctx) {
    auto *r = static_cast<SpRec *>(ctx);
    r->lost++;
    if (r->in_kill) r->lost_inside_kill++;
}
const evs_subprocess_protocol kSp = {
    .connection_made = nullptr,
    .pipe_data_received = nullptr,
    .pipe_connection_lost = nullptr,
    .process_exited = sp_exited,
    .connection_lost = sp_lost,
    .pause_writing = nullptr,
    .resume_writing = nullptr,
};
}  // namespace

// The child has exited but the loop has not seen it yet: kill() must not
// reap it, or process_exited and connection_lost would run inside the call
// and free the transport under the caller (as asyncio, no callback runs
// inside kill()).
TEST(SubprocessKill, DoesNotRunConnectionLostInsideTheCall) {
    SpRec r;
    auto f = [&] {
        const char *argv[] = {"/bin/true", nullptr};
        evs_process_options o{};
        o.argv = argv;
        o.stdin_mode = o.stdout_mode = o.stderr_mode = EVS_STDIO_DEVNULL;
        evs_subprocess *p = nullptr;
        ASSERT_EQ(0, evs_subprocess_exec(&o, &kSp, &r, &p));
        usleep(300 * 1000);  // the child exits; the loop does not run
        r.in_kill = true;
        int rc = evs_subprocess_kill(p);
        r.in_kill = false;
        EXPECT_EQ(0, r.lost_inside_kill) << "connection_lost ran inside evs_subprocess_kill (rc "
                                        << rc << "); p is freed now";
        if (r.lost == 0) {
            evs_subprocess_close(p);  // the seed's kill-then-close
            wait_until([&] { return r.lost == 1; });
        }
    };
    EXPECT_EQ(0, run_in_task(f));
    EXPECT_EQ(1, r.lost);
}
