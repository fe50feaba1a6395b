// The exec and sendfile_server example plugins in the real evstreamd.
//
// exec: /bin/cat echoes a large stream byte-exact, /usr/bin/env shows the
// tcpserver variables of the connection, clients that leave early (a reset
// while the child ignores SIGTERM, closes with unread data) leave neither a
// running child nor a zombie, and a listener without argv fails `evstreamd
// -t` naming the setting. sendfile_server: a generated 5 MiB file with its
// header line, over plain TCP and over a TLS listener (openssl s_client as
// the client; skipped when openssl is missing).
//
// Every daemon gets a generated config on 127.0.0.1 port 0 and two workers,
// and is ended by its pid (SIGTERM, bounded waitpid). Paths: the daemon is
// $EVS_TEST_BUILDDIR/src/daemon/evstreamd and the plugins are in
// $EVS_TEST_BUILDDIR/plugins (make check sets the variable; without it the
// build dir is found from this program's path). EVS_TEST_PLUGIN_DIR, when
// set, overrides the plugin directory (for plugins built by hand).
#include <gtest/gtest.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <netinet/in.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"

extern char **environ;

using namespace evs_test;

namespace {

using Clock = std::chrono::steady_clock;

std::string dirname_of(const std::string &p) {
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}

std::string builddir() {
    const char *env = getenv("EVS_TEST_BUILDDIR");
    if (env && *env) return env;
    // <builddir>/tests/integration/exec_sendfile_test
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return ".";
    exe[n] = '\0';
    std::string dir = dirname_of(exe);
    if (dir.size() > 5 && dir.compare(dir.size() - 5, 5, "/.libs") == 0) dir = dirname_of(dir);
    return dirname_of(dirname_of(dir));
}

std::string daemon_path() { return builddir() + "/src/daemon/evstreamd"; }
std::string plugin_dir() {
    const char *env = getenv("EVS_TEST_PLUGIN_DIR");
    return env && *env ? env : builddir() + "/plugins";
}

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string &path, const std::string &text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

bool file_exists(const std::string &path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

bool contains(const std::string &hay, const std::string &needle) {
    return hay.find(needle) != std::string::npos;
}

std::vector<std::string> split_lines(const std::string &text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) out.push_back(line);
    return out;
}

void nap_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Poll @pred every 10 ms for at most @seconds.
bool eventually(double seconds, const std::function<bool()> &pred) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
        if (pred()) return true;
        if (Clock::now() >= deadline) return false;
        nap_ms(10);
    }
}

uint16_t port_of(const std::string &address) {
    size_t colon = address.rfind(':');
    return colon == std::string::npos ? 0 : (uint16_t)atoi(address.c_str() + colon + 1);
}

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

// The local port of a connected socket.
uint16_t local_port(int fd) {
    struct sockaddr_in sin{};
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0) return 0;
    return ntohs(sin.sin_port);
}

// Close with a reset (SO_LINGER 0): the server's next read fails at once.
void close_with_reset(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

// --- /proc ---------------------------------------------------------------------

struct ProcInfo {
    pid_t pid;
    char state;
    std::string comm;
};

// The children of @parent, with their state (from /proc/<pid>/stat).
std::vector<ProcInfo> children_of(pid_t parent) {
    std::vector<ProcInfo> out;
    DIR *d = opendir("/proc");
    if (!d) return out;
    while (struct dirent *e = readdir(d)) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        std::string stat = read_file("/proc/" + std::string(e->d_name) + "/stat");
        // "pid (comm) S ppid ...": comm may hold spaces and parens.
        size_t close_paren = stat.rfind(')');
        size_t open_paren = stat.find('(');
        if (close_paren == std::string::npos || open_paren == std::string::npos) continue;
        char state = 0;
        long ppid = 0;
        if (sscanf(stat.c_str() + close_paren + 1, " %c %ld", &state, &ppid) != 2) continue;
        if (ppid == parent)
            out.push_back({(pid_t)pid, state,
                           stat.substr(open_paren + 1, close_paren - open_paren - 1)});
    }
    closedir(d);
    return out;
}

std::string describe(const std::vector<ProcInfo> &procs) {
    std::string s;
    for (auto &p : procs) s += std::to_string(p.pid) + " " + p.comm + " " + p.state + "; ";
    return s.empty() ? "none" : s;
}

// --- child processes -------------------------------------------------------------

// fork + execve with stdin from @in_path (or /dev/null) and stdout/stderr to
// files; only async-signal-safe calls after fork (this process has threads).
pid_t spawn(const std::vector<std::string> &args, const std::string &in_path,
            const std::string &out_path, const std::string &err_path) {
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);
    const char *in_file = in_path.empty() ? "/dev/null" : in_path.c_str();
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536) maxfd = 65536;

    pid_t pid = fork();
    if (pid != 0) return pid;
    int in = open(in_file, O_RDONLY);
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(126);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    for (long fd = 3; fd < maxfd; fd++) close((int)fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv.data(), environ);
    _exit(127);
}

bool wait_exit(pid_t pid, double seconds, int *status) {
    return eventually(seconds, [&] {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            *status = st;
            return true;
        }
        return false;
    });
}

// SIGTERM, a bounded wait, SIGKILL as a last resort.
void end_child(pid_t pid, int *status) {
    int st = 0;
    if (kill(pid, SIGTERM) == 0 && wait_exit(pid, 10, &st)) {
        if (status) *status = st;
        return;
    }
    kill(pid, SIGKILL);
    wait_exit(pid, 10, &st);
    if (status) *status = st;
}

struct Result {
    int status = -1;
    std::string out, err;
};

struct Daemon {
    pid_t pid = -1;
    std::string err_path, ports_path;
    bool reaped = false;
    int raw_status = 0;

    ~Daemon() {
        if (!reaped && pid > 0) end_child(pid, nullptr);
    }
    std::string err() const { return read_file(err_path); }
    bool running() {
        if (reaped || pid <= 0) return false;
        if (waitpid(pid, &raw_status, WNOHANG) == pid) reaped = true;
        return !reaped;
    }
    uint16_t port(const std::string &name) const {
        for (auto &line : split_lines(read_file(ports_path))) {
            size_t sp = line.find(' ');
            if (sp != std::string::npos && line.substr(0, sp) == name)
                return port_of(line.substr(sp + 1));
        }
        return 0;
    }
    int stop() {
        if (!reaped) {
            end_child(pid, &raw_status);
            reaped = true;
        }
        return WIFEXITED(raw_status) ? WEXITSTATUS(raw_status) : -1;
    }
};

class ExecSendfileTest : public ::testing::Test {
  protected:
    std::string dir;
    std::unique_ptr<Daemon> daemon;
    int serial = 0;

    void SetUp() override {
        signal(SIGPIPE, SIG_IGN);
        dir = make_temp_dir();
        ASSERT_FALSE(dir.empty());
        ASSERT_EQ(0, access(daemon_path().c_str(), X_OK))
            << daemon_path() << " is missing: build it first (or set EVS_TEST_BUILDDIR)";
        for (const char *p : {"exec", "sendfile_server"})
            ASSERT_TRUE(file_exists(plugin_dir() + "/" + p + ".so"))
                << p << ".so is not in " << plugin_dir() << ": run make first";
    }

    void TearDown() override {
        if (daemon) {
            if (daemon->running()) {
                EXPECT_EQ(0, daemon->stop()) << "evstreamd did not stop cleanly; its log:\n"
                                             << daemon->err();
            } else if (daemon->pid > 0) {
                ADD_FAILURE() << "evstreamd exited early; its log:\n" << daemon->err();
            }
            daemon.reset();
        }
        if (HasFailure())
            fprintf(stderr, "[exec_sendfile_test] files of the failed test kept in %s\n",
                    dir.c_str());
        else
            remove_dir(dir);
    }

    std::string path(const std::string &name) const { return dir + "/" + name; }
    std::string next_name(const std::string &base) {
        return path(base + "." + std::to_string(serial++));
    }

    std::string config(const std::string &listeners) {
        std::string conf = next_name("evstreamd.conf");
        write_file(conf, "workers = 2;\n" +
                             std::string(geteuid() == 0 ? "allow_root = true;\n" : "") +
                             "limits = { shutdown_timeout = \"3s\"; };\n"
                             "log = { level = \"debug\"; };\n"
                             "plugin_dir = \"" + plugin_dir() + "\";\n"
                             "plugins = (\n"
                             "  { name = \"exec\"; path = \"exec.so\"; },\n"
                             "  { name = \"sendfile_server\"; path = \"sendfile_server.so\"; }\n"
                             ");\n"
                             "listeners = (\n" + listeners + "\n);\n");
        return conf;
    }

    // Start evstreamd with @listeners and wait for its ports file.
    Daemon &start(const std::string &listeners) {
        std::string conf = config(listeners);
        daemon = std::make_unique<Daemon>();
        daemon->err_path = next_name("daemon.err");
        daemon->ports_path = next_name("ports");
        daemon->pid = spawn({daemon_path(), "-c", conf, "--ports-file", daemon->ports_path}, "",
                            next_name("daemon.out"), daemon->err_path);
        EXPECT_GT(daemon->pid, 0);
        Daemon &d = *daemon;
        bool up = eventually(20, [&] { return file_exists(d.ports_path) || !d.running(); });
        EXPECT_TRUE(up) << "evstreamd did not start within 20 s";
        EXPECT_TRUE(d.running()) << "evstreamd exited; its log:\n" << d.err();
        return d;
    }

    Result run(const std::vector<std::string> &args, double seconds = 20) {
        Result r;
        std::string out = next_name("out"), err = next_name("err");
        pid_t pid = spawn(args, "", out, err);
        int st = 0;
        if (!wait_exit(pid, seconds, &st)) {
            end_child(pid, &st);
            ADD_FAILURE() << args[0] << " did not finish within " << seconds << " s";
        } else if (WIFEXITED(st)) {
            r.status = WEXITSTATUS(st);
        } else {
            ADD_FAILURE() << args[0] << " was killed by signal " << WTERMSIG(st);
        }
        r.out = read_file(out);
        r.err = read_file(err);
        return r;
    }

    // Wait (bounded) until the daemon has no child at all, running or zombie.
    void expect_no_children(const char *what) {
        std::vector<ProcInfo> left;
        bool none = eventually(15, [&] {
            left = children_of(daemon->pid);
            return left.empty();
        });
        EXPECT_TRUE(none) << what << ": children of evstreamd left: " << describe(left)
                          << "\nits log:\n"
                          << daemon->err();
    }
};

// =============================================================================
// exec
// =============================================================================

TEST_F(ExecSendfileTest, ExecCatEchoesOneMebibyteByteExact) {
    Daemon &d = start("  { name = \"cat\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
                      "    settings = { argv = [\"/bin/cat\", \"-u\"]; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("cat"));
    ASSERT_GE(fd, 0);
    const std::string data = pattern(1 << 20, 7);
    // Write from a thread while this one reads: cat echoes as it goes, so
    // writing everything first could fill both directions and stall.
    bool wrote = false;
    std::thread writer([&] {
        wrote = write_all(fd, data.data(), data.size());
        shutdown(fd, SHUT_WR);  // the child's EOF: cat exits, the server closes
    });
    std::string echoed = read_to_eof(fd);
    writer.join();
    close(fd);
    EXPECT_TRUE(wrote);
    ASSERT_EQ(data.size(), echoed.size());
    EXPECT_TRUE(echoed == data) << "the echo differs from what was sent";
    expect_no_children("after cat exited");
    EXPECT_TRUE(eventually(5, [&] { return contains(d.err(), "exec: /bin/cat (pid "); }));
    EXPECT_TRUE(contains(d.err(), "exited with 0")) << d.err();
}

TEST_F(ExecSendfileTest, ExecEnvShowsTcpserverVariables) {
    Daemon &d = start(
        "  { name = \"env\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    settings = { argv = [\"/usr/bin/env\"]; env = [\"GREETING=hi\", \"PROTO=bogus\"]; }; }");
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("env");
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    uint16_t mine = local_port(fd);
    ASSERT_NE(0, mine);
    shutdown(fd, SHUT_WR);
    std::string out = read_to_eof(fd);
    close(fd);
    std::vector<std::string> lines = split_lines(out);
    auto has = [&](const std::string &line) {
        for (auto &l : lines)
            if (l == line) return true;
        return false;
    };
    EXPECT_TRUE(has("PROTO=TCP")) << out;
    EXPECT_FALSE(has("PROTO=bogus")) << "the configured PROTO must be replaced: " << out;
    EXPECT_TRUE(has("TCPREMOTEIP=127.0.0.1")) << out;
    EXPECT_TRUE(has("TCPREMOTEPORT=" + std::to_string(mine))) << out;
    EXPECT_TRUE(has("TCPLOCALIP=127.0.0.1")) << out;
    EXPECT_TRUE(has("TCPLOCALPORT=" + std::to_string(port))) << out;
    EXPECT_TRUE(has("GREETING=hi")) << out;
    // env replaces the daemon's environment: nothing else is there.
    EXPECT_EQ(6u, lines.size()) << out;
}

TEST_F(ExecSendfileTest, ClientsLeavingEarlyLeaveNoChildOrZombie) {
    // "stubborn" ignores SIGTERM (ignored dispositions survive exec), so it
    // needs the SIGKILL after the grace; "cat" is fed and never read.
    Daemon &d = start(
        "  { name = \"stubborn\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    settings = { argv = [\"/bin/sh\", \"-c\", \"trap '' TERM; exec sleep 60\"];\n"
        "                 stderr = \"null\"; }; },\n"
        "  { name = \"cat\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    settings = { argv = [\"/bin/cat\"]; }; }");
    ASSERT_TRUE(d.running());

    int fd = connect_tcp(d.port("stubborn"));
    ASSERT_GE(fd, 0);
    std::vector<ProcInfo> kids;
    ASSERT_TRUE(eventually(10, [&] {
        kids = children_of(d.pid);
        return kids.size() == 1 && kids[0].comm == "sleep";
    })) << "the child did not start: "
        << describe(kids);
    close_with_reset(fd);
    expect_no_children("after a reset with a child that ignores SIGTERM");
    EXPECT_TRUE(eventually(5, [&] { return contains(d.err(), "killed by signal 9"); }))
        << d.err();

    // Several cat clients that send data and leave without reading the echo:
    // some close with a reset (unread data), some half-way through.
    const std::string data = pattern(256 * 1024, 3);
    for (int i = 0; i < 6; i++) {
        int c = connect_tcp(d.port("cat"));
        ASSERT_GE(c, 0);
        set_timeouts(c, 2);  // the echo is not read: writing may block
        (void)write_all(c, data.data(), data.size());
        if (i % 2)
            close_with_reset(c);
        else
            close(c);
    }
    expect_no_children("after cat clients left early");
    // The daemon still serves.
    int fd2 = connect_tcp(d.port("cat"));
    ASSERT_GE(fd2, 0);
    ASSERT_TRUE(write_all(fd2, "still here\n", 11));
    shutdown(fd2, SHUT_WR);
    EXPECT_EQ("still here\n", read_to_eof(fd2));
    close(fd2);
}

TEST_F(ExecSendfileTest, MissingArgvFailsTheConfigCheck) {
    std::string conf = config("  { name = \"noargv\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
                              "    settings = { cwd = \"/\"; }; }");
    Result r = run({daemon_path(), "-t", "-c", conf});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "argv")) << r.err;
    EXPECT_TRUE(contains(r.err, "required")) << r.err;

    // An unknown key and a bad stderr value are refused as well, by name.
    conf = config("  { name = \"typo\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
                  "    settings = { argv = [\"/bin/cat\"]; stdErr = \"null\"; }; }");
    r = run({daemon_path(), "-t", "-c", conf});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "unknown setting 'stdErr'")) << r.err;
    conf = config("  { name = \"bad\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
                  "    settings = { argv = [\"/bin/cat\"]; stderr = \"file\"; }; }");
    r = run({daemon_path(), "-t", "-c", conf});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "stderr must be")) << r.err;
}

// =============================================================================
// sendfile_server
// =============================================================================

class SendfileTest : public ExecSendfileTest {
  protected:
    std::string file, data;
    const std::string header = "EVS-FILE 1";

    void SetUp() override {
        ExecSendfileTest::SetUp();
        if (HasFatalFailure()) return;
        file = path("payload.bin");
        data = pattern(5 << 20, 11);
        write_file(file, data);
    }
    std::string listener(const std::string &name, const std::string &extra = "") {
        return "  { name = \"" + name + "\"; listen = \"127.0.0.1:0\"; plugin = \"sendfile_server\";" +
               extra + "\n    settings = { file = \"" + file + "\"; header = \"" + header +
               "\"; }; }";
    }
};

TEST_F(SendfileTest, SendsTheFileAfterTheHeaderOverTcp) {
    Daemon &d = start(listener("sf"));
    ASSERT_TRUE(d.running());
    for (int i = 0; i < 2; i++) {  // two connections: both workers
        int fd = connect_tcp(d.port("sf"));
        ASSERT_GE(fd, 0);
        std::string got = read_to_eof(fd);
        close(fd);
        ASSERT_EQ(header.size() + 1 + data.size(), got.size());
        EXPECT_EQ(header + "\n", got.substr(0, header.size() + 1));
        EXPECT_TRUE(got.compare(header.size() + 1, std::string::npos, data) == 0)
            << "the file differs";
    }
}

TEST_F(SendfileTest, SendsTheFileOverTls) {
    std::string openssl = find_tool("openssl");
    if (openssl.empty()) GTEST_SKIP() << "openssl is not installed (Debian package: openssl)";
    Result r = run({openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout",
                    path("server.key"), "-out", path("server.pem")});
    ASSERT_EQ(0, r.status) << r.err;
    Daemon &d = start(listener("sf-tls", "\n    tls = { certificate = \"" + path("server.pem") +
                                             "\"; key = \"" + path("server.key") + "\"; };"));
    ASSERT_TRUE(d.running());
    // -quiet implies -ign_eof: s_client reads until the server closes.
    r = run({openssl, "s_client", "-quiet", "-connect", "127.0.0.1:" + std::to_string(d.port("sf-tls")),
             "-CAfile", path("server.pem"), "-verify_return_error", "-servername", "localhost"},
            60);
    EXPECT_EQ(0, r.status) << r.err;
    ASSERT_EQ(header.size() + 1 + data.size(), r.out.size()) << r.err;
    EXPECT_EQ(header + "\n", r.out.substr(0, header.size() + 1));
    EXPECT_TRUE(r.out.compare(header.size() + 1, std::string::npos, data) == 0)
        << "the file differs";
}

TEST_F(SendfileTest, UnreadableFileFailsTheConfigCheck) {
    std::string conf = config("  { name = \"sf\"; listen = \"127.0.0.1:0\"; plugin = \"sendfile_server\";\n"
                              "    settings = { file = \"" + path("missing.bin") + "\"; }; }");
    Result r = run({daemon_path(), "-t", "-c", conf});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "missing.bin")) << r.err;
    EXPECT_TRUE(contains(r.err, "cannot be read")) << r.err;
    conf = config("  { name = \"sf\"; listen = \"127.0.0.1:0\"; plugin = \"sendfile_server\";\n"
                  "    settings = { header = \"x\"; }; }");
    r = run({daemon_path(), "-t", "-c", conf});
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "file = ")) << r.err;
}

}  // namespace
