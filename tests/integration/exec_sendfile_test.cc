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
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <netinet/in.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"
#include "process.h"

using namespace evs_test;

namespace {

// Plugins built by hand can be tested without copying them into the build dir.
const char *const kPluginDirEnv = "EVS_TEST_PLUGIN_DIR";

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

// Whether @pid gets exactly one child (named @comm, unless empty) within
// 10 s; a failure says which children there were.
testing::AssertionResult one_child(pid_t pid, const std::string &comm = "") {
    std::vector<ProcInfo> kids;
    if (eventually(10, [&] {
            kids = children_of(pid);
            return kids.size() == 1 && (comm.empty() || kids[0].comm == comm);
        }))
        return testing::AssertionSuccess();
    return testing::AssertionFailure() << "children: " << describe(kids);
}

// These tests need no more of a daemon than start, port and stop.
using Daemon = DaemonProcess;

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
            ASSERT_TRUE(file_exists(plugin_dir(kPluginDirEnv) + "/" + p + ".so"))
                << p << ".so is not in " << plugin_dir(kPluginDirEnv) << ": run make first";
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
                             "plugin_dir = \"" + plugin_dir(kPluginDirEnv) + "\";\n"
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
        daemon->start(conf, next_name("daemon.out"));
        return *daemon;
    }

    Result run(const std::vector<std::string> &args, double seconds = 20) {
        std::string out = next_name("out"), err = next_name("err");
        return finish(spawn(args, "", out, err), args[0], seconds, out, err);
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
    ASSERT_TRUE(one_child(d.pid, "sleep")) << "the child did not start";
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

// A client's EOF closes the child's stdin, but the child may go on: it still
// gets its answer out after a half-close, and once the connection ends (here
// by the idle timeout) a child that neither reads nor writes is stopped.
TEST_F(ExecSendfileTest, ChildOutlivingAHalfClosedClientIsStoppedWhenTheConnectionEnds) {
    Daemon &d = start(
        "  { name = \"late\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    settings = { argv = [\"/bin/sh\", \"-c\", \"cat >/dev/null; sleep 0.3; echo done\"]; }; },\n"
        "  { name = \"silent\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    limits = { idle_timeout = \"1s\"; };\n"
        "    settings = { argv = [\"/bin/sleep\", \"60\"]; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("late"));
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, "input\n", 6));
    shutdown(fd, SHUT_WR);
    EXPECT_EQ("done\n", read_to_eof(fd));
    close(fd);
    expect_no_children("after the answer");

    for (int i = 0; i < 2; i++) {
        int c = connect_tcp(d.port("silent"));
        ASSERT_GE(c, 0);
        ASSERT_TRUE(one_child(d.pid));
        if (i == 0)
            shutdown(c, SHUT_WR);  // half-close, still connected
        close(c);  // then gone (a FIN: the server learns nothing more)
        expect_no_children("after the client left and the idle timeout");
    }
}

// A child that stops reading its stdin without closing it, fed until its
// pipe is full: the task feeding it waited on the pipe for good, and no
// task watched the connection, so a client that left was never noticed and
// the child ran on (here for 60 s) after its client had gone.
TEST_F(ExecSendfileTest, AChildThatStopsReadingIsStoppedWhenItsClientLeaves) {
    Daemon &d = start(
        "  { name = \"deaf\"; listen = \"127.0.0.1:0\"; plugin = \"exec\";\n"
        "    limits = { idle_timeout = \"1s\"; };\n"
        "    settings = { argv = [\"/bin/sh\", \"-c\", \"read x; exec sleep 60\"]; }; }");
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("deaf"));
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, "x\n", 2));
    ASSERT_TRUE(one_child(d.pid, "sleep"));
    // More than the pipe, the write buffer and the reader's limit hold.
    const std::string data = pattern(4 * 1024 * 1024, 5);
    set_timeouts(fd, 2);  // the server stops reading: the write blocks
    (void)write_all(fd, data.data(), data.size());
    close_with_reset(fd);
    expect_no_children("after the client of a child that stopped reading left");
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
    REQUIRE_TOOL(openssl, "openssl", "openssl");
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

// A FIFO put where the file was must not hold a worker (opening it for
// reading would block until a writer came): the client is closed at once,
// and the next one gets the regular file again. At the config check the
// FIFO is refused, without hanging.
TEST_F(SendfileTest, AFifoInPlaceOfTheFileClosesTheClientAndHoldsNoWorker) {
    Daemon &d = start(listener("sf"));
    ASSERT_TRUE(d.running());
    ASSERT_EQ(0, rename(file.c_str(), (file + ".away").c_str()));
    ASSERT_EQ(0, mkfifo(file.c_str(), 0600));
    for (int i = 0; i < 2; i++) {  // each worker (round-robin on ties)
        int fd = connect_tcp(d.port("sf"));
        ASSERT_GE(fd, 0);
        set_timeouts(fd, 10);
        char c;
        EXPECT_EQ(0, recv(fd, &c, 1, 0)) << "not closed at once: " << strerror(errno);
        close(fd);
    }
    std::string conf = config("  { name = \"sf\"; listen = \"127.0.0.1:0\"; plugin = \"sendfile_server\";\n"
                              "    settings = { file = \"" + file + "\"; }; }");
    Result r = run({daemon_path(), "-t", "-c", conf}, 20);
    EXPECT_NE(0, r.status);
    EXPECT_TRUE(contains(r.err, "is not a regular file")) << r.err;
    ASSERT_EQ(0, unlink(file.c_str()));
    ASSERT_EQ(0, rename((file + ".away").c_str(), file.c_str()));
    int fd = connect_tcp(d.port("sf"));
    ASSERT_GE(fd, 0);
    set_timeouts(fd, 10);
    EXPECT_EQ(header.size() + 1 + data.size(), read_to_eof(fd).size());
    close(fd);
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
