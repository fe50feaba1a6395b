#include "process.h"

#include <algorithm>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

extern char **environ;

namespace evs_test {

namespace {

std::string dirname_of(const std::string &p) {
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}

}  // namespace

// --- paths -------------------------------------------------------------------

std::string builddir() {
    const char *env = getenv("EVS_TEST_BUILDDIR");
    if (env && *env) return env;
    // <builddir>/tests/integration/<program>, or .libs/<program> under it
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return ".";
    exe[n] = '\0';
    std::string dir = dirname_of(exe);
    if (dir.size() > 5 && dir.compare(dir.size() - 5, 5, "/.libs") == 0) dir = dirname_of(dir);
    return dirname_of(dirname_of(dir));
}

std::string daemon_path() { return builddir() + "/src/daemon/evstreamd"; }

std::string plugin_dir(const char *override_env) {
    const char *env = override_env ? getenv(override_env) : nullptr;
    return env && *env ? env : builddir() + "/plugins";
}

// --- files and text ----------------------------------------------------------

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string &path, const std::string &text) {
    std::string tmp = path + ".writing";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << text;
    }
    ASSERT_EQ(0, rename(tmp.c_str(), path.c_str())) << path << ": " << strerror(errno);
}

bool file_exists(const std::string &path) {
    struct stat st;
    return lstat(path.c_str(), &st) == 0;
}

bool contains(const std::string &hay, const std::string &needle) {
    return hay.find(needle) != std::string::npos;
}

size_t count_of(const std::string &hay, const std::string &needle) {
    size_t n = 0;
    for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) n++;
    return n;
}

std::vector<std::string> split_lines(const std::string &text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) out.push_back(line);
    return out;
}

uint16_t port_of(const std::string &address) {
    size_t colon = address.rfind(':');
    return colon == std::string::npos ? 0 : (uint16_t)atoi(address.c_str() + colon + 1);
}

// --- waiting -----------------------------------------------------------------

void nap_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

bool eventually(double seconds, const std::function<bool()> &pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
        if (pred()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        nap_ms(10);
    }
}

// --- client programs ---------------------------------------------------------

std::string find_tool(const std::string &name) {
    const char *path = getenv("PATH");
    std::string dirs = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::istringstream in(dirs);
    std::string dir;
    while (std::getline(in, dir, ':')) {
        std::string p = (dir.empty() ? "." : dir) + "/" + name;
        if (access(p.c_str(), X_OK) == 0) return p;
    }
    return "";
}

// --- child processes ---------------------------------------------------------

namespace {

// "LISTEN_PID=" and room for any pid, filled in by the child: its pid is
// not known before fork.
constexpr char kListenPid[] = "LISTEN_PID=";
constexpr size_t kPidDigits = 20;

// Async-signal-safe: writes getpid() after the "LISTEN_PID=" in @slot.
void put_own_pid(char *slot) {
    char digits[kPidDigits];
    size_t n = 0;
    for (unsigned long v = (unsigned long)getpid(); v > 0 || n == 0; v /= 10)
        digits[n++] = (char)('0' + v % 10);
    char *p = slot + sizeof kListenPid - 1;
    while (n > 0) *p++ = digits[--n];
    *p = '\0';
}

}  // namespace

pid_t spawn(const std::vector<std::string> &args, const std::string &in_path,
            const std::string &out_path, const std::string &err_path, const Env &env,
            const std::vector<int> &pass_fds) {
    constexpr size_t kMaxPassed = 16;
    size_t npass = pass_fds.size();
    int passed[kMaxPassed];
    if (npass > kMaxPassed) return -1;
    std::copy(pass_fds.begin(), pass_fds.end(), passed);
    Env changes = env;
    if (npass > 0) {
        // A test may claim another count (@env's LISTEN_FDS wins).
        if (std::none_of(env.begin(), env.end(), [](const auto &p) { return p.first == "LISTEN_FDS"; }))
            changes.emplace_back("LISTEN_FDS", std::to_string(npass));
        changes.emplace_back("LISTEN_PID", std::string(kPidDigits, ' '));
    }
    std::vector<std::string> envs;
    for (char **e = environ; *e; e++) {
        std::string kv = *e;
        bool overridden = false;
        for (auto &p : changes)
            if (kv.compare(0, p.first.size() + 1, p.first + "=") == 0) overridden = true;
        if (!overridden) envs.push_back(kv);
    }
    for (auto &p : changes)
        if (p.second != "<unset>") envs.push_back(p.first + "=" + p.second);
    std::vector<char *> argv, envp;
    char *pid_slot = nullptr;
    for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);
    for (auto &e : envs) {
        envp.push_back(&e[0]);
        if (npass > 0 && e.compare(0, sizeof kListenPid - 1, kListenPid) == 0) pid_slot = &e[0];
    }
    envp.push_back(nullptr);
    const char *in_file = in_path.empty() ? "/dev/null" : in_path.c_str();
    bool one_file = out_path == err_path;
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536) maxfd = 65536;

    pid_t pid = fork();
    if (pid != 0) return pid;
    // Above every fd dup2'd below, so that those cannot overwrite them.
    for (size_t i = 0; i < npass; i++)
        if ((passed[i] = fcntl(passed[i], F_DUPFD, 3 + (int)kMaxPassed)) < 0) _exit(126);
    int in = open(in_file, O_RDONLY);
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = one_file ? out : open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(126);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    for (size_t i = 0; i < npass; i++) dup2(passed[i], 3 + (int)i);
    if (npass > 0) put_own_pid(pid_slot);
    for (long fd = 3 + (long)npass; fd < maxfd; fd++) close((int)fd);
    // A signal mask and ignored signals survive execve; the tests ignore
    // SIGPIPE, the programs they run expect the default.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
}

bool wait_exit(pid_t pid, double seconds, int *status) {
    return eventually(seconds, [&] {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            *status = st;
            return true;
        }
        if (r < 0 && errno == ECHILD && kill(pid, 0) < 0 && errno == ESRCH) {
            *status = 0;
            return true;
        }
        return false;
    });
}

bool end_child(pid_t pid, int *status) {
    int st = 0;
    bool reaped = (kill(pid, SIGTERM) == 0 && wait_exit(pid, 10, &st));
    if (!reaped) {
        kill(pid, SIGKILL);
        reaped = wait_exit(pid, 10, &st);
    }
    if (reaped && status) *status = st;
    return reaped;
}

std::string describe_status(int st) {
    if (WIFEXITED(st)) return "exit " + std::to_string(WEXITSTATUS(st));
    if (WIFSIGNALED(st)) return "signal " + std::to_string(WTERMSIG(st));
    return "status " + std::to_string(st);
}

Result finish(pid_t pid, const std::string &what, double seconds, const std::string &out_path,
              const std::string &err_path) {
    Result r;
    int st = 0;
    if (!wait_exit(pid, seconds, &st)) {
        end_child(pid, &st);
        ADD_FAILURE() << what << " did not finish within " << seconds << " s";
    } else if (WIFEXITED(st)) {
        r.status = WEXITSTATUS(st);
    } else {
        ADD_FAILURE() << what << " ended by " << describe_status(st);
    }
    r.out = read_file(out_path);
    r.err = read_file(err_path);
    return r;
}

// --- DaemonProcess -----------------------------------------------------------

DaemonProcess::~DaemonProcess() {
    if (!reaped && pid > 0) end_child(pid, nullptr);
}

void DaemonProcess::start(const std::string &conf, const std::string &out_path) {
    pid = spawn({daemon_path(), "-c", conf, "--ports-file", ports_path}, "", out_path, err_path);
    EXPECT_GT(pid, 0);
    bool up = eventually(20, [&] { return file_exists(ports_path) || !running(); });
    EXPECT_TRUE(up) << "evstreamd did not start within 20 s";
    EXPECT_TRUE(running()) << "evstreamd exited; its log:\n" << err();
}

bool DaemonProcess::running() {
    if (reaped || pid <= 0) return false;
    if (waitpid(pid, &raw_status, WNOHANG) == pid) reaped = true;
    return !reaped;
}

uint16_t DaemonProcess::port(const std::string &name) const {
    for (auto &line : split_lines(read_file(ports_path))) {
        size_t sp = line.find(' ');
        if (sp != std::string::npos && line.substr(0, sp) == name)
            return port_of(line.substr(sp + 1));
    }
    return 0;
}

int DaemonProcess::stop() {
    if (!reaped) {
        end_child(pid, &raw_status);
        reaped = true;
    }
    return WIFEXITED(raw_status) ? WEXITSTATUS(raw_status) : -1;
}

}  // namespace evs_test
