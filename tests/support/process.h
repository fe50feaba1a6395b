// Helpers for the integration tests that run real programs (evstreamd and
// the clients it is tested with): where the build put them, the files they
// read and write, and child processes that are always ended by their pid
// after a bounded wait, so that a failing test can neither hang nor leave a
// process behind.
//
// Paths: the daemon is $EVS_TEST_BUILDDIR/src/daemon/evstreamd and the
// example plugins are in $EVS_TEST_BUILDDIR/plugins (make check sets the
// variable; without it the build dir is found from the test program's path).
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace evs_test {

// --- paths -------------------------------------------------------------------

std::string builddir();
std::string daemon_path();
// @override_env names a variable that, when set and not empty, replaces
// <builddir>/plugins (for plugins built by hand).
std::string plugin_dir(const char *override_env = nullptr);

// --- files and text ----------------------------------------------------------

// The whole file; "" when it cannot be read.
std::string read_file(const std::string &path);
// Written to a temporary name and renamed, so a daemon reloading the file
// never sees half of it. Fails the test when the rename fails.
void write_file(const std::string &path, const std::string &text);
// lstat: a dangling symlink counts as existing.
bool file_exists(const std::string &path);
bool contains(const std::string &hay, const std::string &needle);
// Occurrences of @needle in @hay, overlapping ones included.
size_t count_of(const std::string &hay, const std::string &needle);
std::vector<std::string> split_lines(const std::string &text);
// The port of "host:port" (0 without a colon).
uint16_t port_of(const std::string &address);

// --- waiting -----------------------------------------------------------------

void nap_ms(int ms);
// Poll @pred every 10 ms for at most @seconds, from a plain thread (inside a
// task, use wait_until from helpers.h).
bool eventually(double seconds, const std::function<bool()> &pred);

// --- client programs ---------------------------------------------------------

// The full path of @name in $PATH, or "" when it is not installed.
std::string find_tool(const std::string &name);

// Declares std::string @var with the path of @name, or skips the test naming
// the Debian package that has it.
#define REQUIRE_TOOL(var, name, package)                                                  \
    std::string var = find_tool(name);                                                    \
    if (var.empty()) GTEST_SKIP() << name " is not installed (Debian package: " package ")"

// --- child processes ---------------------------------------------------------

// Environment changes for spawn: NAME, value ("<unset>" removes NAME).
using Env = std::vector<std::pair<std::string, std::string>>;

struct Result {
    int status = -1;  // exit status, -1 when killed by a signal or timed out
    std::string out, err;
};

// fork + execve of @args (args[0] is a path) with stdin from @in_path
// ("": /dev/null) and stdout/stderr to files (the same path: one file, both
// streams in the order written), in this process's environment changed by
// @env. The child gets @pass_fds as fds 3, 4, ... (at most 16), the way
// systemd's socket activation passes sockets: LISTEN_FDS=<how many> (unless
// @env sets it) and LISTEN_PID=<its pid>.
// Everything the child needs is prepared before fork: only
// async-signal-safe calls after it, since the test process has threads.
// @return the pid, -1 when fork fails.
pid_t spawn(const std::vector<std::string> &args, const std::string &in_path,
            const std::string &out_path, const std::string &err_path, const Env &env = {},
            const std::vector<int> &pass_fds = {});

// waitpid for at most @seconds. @return true and the status once it exited.
// A process that is not our child (a daemon that forked into the background)
// is polled with kill(pid, 0) and reported as a plain exit 0 when gone.
bool wait_exit(pid_t pid, double seconds, int *status);

// End a child by its pid: SIGTERM, a bounded wait, SIGKILL as a last resort.
// @return whether it was reaped; then *status (when given) has its status,
// else *status is left as it was.
bool end_child(pid_t pid, int *status);

// "exit N", "signal N" or "status N".
std::string describe_status(int st);

// Wait at most @seconds for @pid, spawned with stdout/stderr to @out_path
// and @err_path, and collect what it wrote. Running too long (then it is
// ended) or dying by a signal fails the test, naming @what.
Result finish(pid_t pid, const std::string &what, double seconds, const std::string &out_path,
              const std::string &err_path);

// An evstreamd started with --ports-file; the destructor makes sure it is gone.
struct DaemonProcess {
    pid_t pid = -1;
    std::string err_path, ports_path;
    bool reaped = false;
    int raw_status = 0;

    DaemonProcess() = default;
    DaemonProcess(const DaemonProcess &) = delete;
    DaemonProcess &operator=(const DaemonProcess &) = delete;
    ~DaemonProcess();

    // Spawn daemon_path() on @conf (stdout to @out_path, stderr to err_path)
    // and wait until it lists its listeners in ports_path; fails the test if
    // it does not within 20 s or exits instead.
    void start(const std::string &conf, const std::string &out_path);
    std::string err() const { return read_file(err_path); }
    bool running();
    // The port of listener @name from the "name address" lines of ports_path (0 if none).
    uint16_t port(const std::string &name) const;
    // SIGTERM and a bounded wait; @return the exit status (-1: killed).
    int stop();
};

}  // namespace evs_test
