// evstreamd as a process: the real binary, started with generated configs
// (TCP on 127.0.0.1 port 0, Unix sockets in a temp dir), driven through
// sockets and signals, and always ended by its pid (SIGTERM, a bounded
// wait, SIGKILL only as a last resort).
//
// Paths: the daemon is $EVS_TEST_BUILDDIR/src/daemon/evstreamd, the example
// plugins are in $EVS_TEST_BUILDDIR/plugins and the test plugins in
// $EVS_TEST_BUILDDIR/tests/plugins/.libs (make check sets the variable;
// without it the build dir is found from this program's own path).
#include <gtest/gtest.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "helpers.h"
#include "process.h"

using namespace evs_test;

namespace {

using Clock = std::chrono::steady_clock;

// --- paths ------------------------------------------------------------------

std::string test_plugin(const std::string &name) {
    return builddir() + "/tests/plugins/.libs/" + name + ".so";
}

// --- small utilities -------------------------------------------------------

// 1-based number of the first line of @text containing @marker (0 if none).
int line_of(const std::string &text, const std::string &marker) {
    size_t at = text.find(marker);
    if (at == std::string::npos) return 0;
    int line = 1;
    for (size_t i = 0; i < at; i++)
        if (text[i] == '\n') line++;
    return line;
}

// A TCP port that was free a moment ago (bound to port 0, then closed).
uint16_t free_port() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        if (fd >= 0) close(fd);
        return 0;
    }
    close(fd);
    return ntohs(sin.sin_port);
}

// Bind (and listen on) 127.0.0.1:port; -1 on failure.
int bind_tcp(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 8) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

// Read one '\n'-terminated line (without the newline); "<eof>"/"<error>" otherwise.
std::string read_line(int fd) {
    std::string line;
    for (;;) {
        char c;
        ssize_t n = recv(fd, &c, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return line + "<eof>";
        if (n < 0) return line + "<error: " + strerror(errno) + ">";
        if (c == '\n') return line;
        line += c;
        if (line.size() > 65536) return line + "<too long>";
    }
}

// Write "text\n" and read the answer line.
std::string ask(int fd, const std::string &text) {
    std::string msg = text + "\n";
    if (!write_all(fd, msg.data(), msg.size())) return std::string("<write error: ") + strerror(errno) + ">";
    return read_line(fd);
}

// Read and discard until EOF or an error, for at most @seconds.
// @return 0 on EOF, else -errno (-ETIMEDOUT when nothing ended it in time).
int wait_eof(int fd, int seconds) {
    set_timeouts(fd, seconds);
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return 0;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
    }
}

// Send @n pattern bytes from a writer thread while reading them back here
// (so neither side can block the other), and compare byte for byte.
void expect_echo(int fd, size_t n, uint32_t seed) {
    ASSERT_GE(fd, 0);
    std::string data = pattern(n, seed);
    bool wrote = false;
    std::thread writer([&] { wrote = write_all(fd, data.data(), data.size()); });
    std::string back(n, '\0');
    bool read_ok = read_exact(fd, &back[0], n);
    writer.join();
    EXPECT_TRUE(wrote);
    ASSERT_TRUE(read_ok);
    EXPECT_TRUE(back == data) << "echoed bytes differ";
}

// "name address" lines of a --ports-file.
std::map<std::string, std::string> parse_ports(const std::string &text) {
    std::map<std::string, std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        size_t sp = line.find(' ');
        if (sp != std::string::npos) out[line.substr(0, sp)] = line.substr(sp + 1);
    }
    return out;
}

// One evstreamd process. The destructor makes sure it is gone.
struct Daemon {
    pid_t pid = -1;
    std::string out_path, err_path, ports_path;
    int raw_status = 0;
    bool reaped = false;

    ~Daemon() { kill_hard(); }

    std::string out() const { return read_file(out_path); }
    std::string err() const { return read_file(err_path); }
    std::string ports_text() const { return read_file(ports_path); }
    std::map<std::string, std::string> ports() const { return parse_ports(ports_text()); }
    uint16_t port(const std::string &listener) const { return port_of(ports()[listener]); }

    bool running() {
        if (reaped || pid <= 0) return false;
        if (wait_exit(pid, 0, &raw_status)) {
            reaped = true;
            return false;
        }
        return true;
    }

    void signal(int sig) {
        ASSERT_FALSE(reaped) << "the daemon already exited";
        ASSERT_EQ(0, kill(pid, sig));
    }

    // Wait for the exit; @return its exit status, -1 after a signal or a timeout.
    int wait(double seconds) {
        if (!reaped) {
            if (!wait_exit(pid, seconds, &raw_status)) return -1;
            reaped = true;
        }
        return WIFEXITED(raw_status) ? WEXITSTATUS(raw_status) : -1;
    }

    // SIGTERM and a bounded wait; @return the exit status (-1: it had to be killed).
    int stop(double seconds = 15) {
        if (reaped) return WIFEXITED(raw_status) ? WEXITSTATUS(raw_status) : -1;
        kill(pid, SIGTERM);
        int rc = wait(seconds);
        if (!reaped) kill_hard();
        return rc;
    }

    void kill_hard() {
        if (reaped || pid <= 0) return;
        reaped = end_child(pid, &raw_status);
    }
};

// A config: @top settings, plugin_dir, the good plugins (+ @extra_plugins
// entries, see plugin_entry), and the listeners list. Unless @top sets them:
// two workers, and a short shutdown_timeout so that a failed test's leftover
// connections cannot hold the daemon up for the default 30 s.
std::string config(const std::string &listeners, const std::string &top = "",
                   const std::string &extra_plugins = "") {
    std::string c;
    if (!contains(top, "workers")) c += "workers = 2;\n";
    if (geteuid() == 0 && !contains(top, "allow_root")) c += "allow_root = true;\n";
    if (!contains(top, "limits")) c += "limits = { shutdown_timeout = \"3s\"; };\n";
    c += top;
    c += "plugin_dir = \"" + plugin_dir() + "\";\n";
    c += "plugins = (\n";
    c += "  { name = \"echo\"; path = \"echo.so\"; },\n";
    c += "  { name = \"echo_protocol\"; path = \"echo_protocol.so\"; },\n";
    c += "  { name = \"line_upper\"; path = \"line_upper.so\"; },\n";
    c += "  { name = \"settings_echo\"; path = \"" + test_plugin("settings_echo") + "\"; }";
    c += extra_plugins;
    c += "\n);\n";
    c += "listeners = (\n" + listeners + "\n);\n";
    return c;
}

// ",\n  { name = NAME; path = <test plugin NAME> }" (+ @tail on its line).
std::string plugin_entry(const std::string &name, const std::string &tail = "") {
    return ",\n  { name = \"" + name + "\"; path = \"" + test_plugin(name) + "\"; }" + tail;
}

// SIGHUP @d and wait for its @nth "reloaded @conf" (counted, so that a
// test's second reload does not pass on the first one's line).
void reload_expecting_success(Daemon &d, const std::string &conf, size_t nth = 1) {
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return count_of(d.err(), "reloaded " + conf) >= nth; }))
        << d.err();
    ASSERT_TRUE(d.running());
}

// Write @text as @d's config, SIGHUP, and wait for the daemon's @nth
// "reload failed"; it keeps running.
void reload_expecting_failure(Daemon &d, const std::string &conf, const std::string &text,
                              size_t nth) {
    write_file(conf, text);
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return count_of(d.err(), "reload failed") >= nth; }))
        << d.err();
    ASSERT_TRUE(d.running());
}

class DaemonTest : public ::testing::Test {
  protected:
    std::string dir;
    std::vector<std::unique_ptr<Daemon>> daemons;
    int serial = 0;

    void SetUp() override {
        dir = make_temp_dir();
        ASSERT_FALSE(dir.empty());
        // The daemon reports files by their real path.
        char *real = realpath(dir.c_str(), nullptr);
        ASSERT_NE(nullptr, real);
        dir = real;
        free(real);
        ASSERT_EQ(0, access(daemon_path().c_str(), X_OK))
            << daemon_path() << " is missing: build it first (or set EVS_TEST_BUILDDIR)";
    }

    void TearDown() override {
        for (auto &d : daemons) {
            if (d->running()) {
                int rc = d->stop();
                EXPECT_EQ(0, rc) << "evstreamd did not stop cleanly; its log:\n" << d->err();
            }
        }
        daemons.clear();
        if (HasFailure()) {
            // Keep the evidence when something went wrong.
            fprintf(stderr, "[daemon_test] files of the failed test kept in %s\n", dir.c_str());
        } else {
            remove_dir(dir);
        }
    }

    std::string path(const std::string &name) const { return dir + "/" + name; }

    std::string write(const std::string &name, const std::string &text) {
        std::string p = path(name);
        write_file(p, text);
        return p;
    }

    // Start evstreamd with @args (plus --ports-file); no waiting.
    Daemon &launch(const std::vector<std::string> &args, const Env &env = {}) {
        auto d = std::make_unique<Daemon>();
        int n = serial++;
        d->out_path = path("stdout." + std::to_string(n));
        d->err_path = path("stderr." + std::to_string(n));
        d->ports_path = path("ports." + std::to_string(n));
        std::vector<std::string> argv = {daemon_path()};
        argv.insert(argv.end(), args.begin(), args.end());
        argv.push_back("--ports-file");
        argv.push_back(d->ports_path);
        d->pid = spawn(argv, "", d->out_path, d->err_path, env);
        EXPECT_GT(d->pid, 0);
        daemons.push_back(std::move(d));
        return *daemons.back();
    }

    // Start evstreamd on @conf_path and wait until it lists its listeners
    // in the ports file; fails the test if it exits instead.
    Daemon &start(const std::string &conf_path, const std::vector<std::string> &more = {},
                  const Env &env = {}) {
        std::vector<std::string> args = {"-c", conf_path};
        args.insert(args.end(), more.begin(), more.end());
        Daemon &d = launch(args, env);
        bool up = eventually(30, [&] { return file_exists(d.ports_path) || !d.running(); });
        EXPECT_TRUE(up) << "evstreamd did not start within 30 s";
        EXPECT_TRUE(d.running()) << "evstreamd exited (" << describe_status(d.raw_status)
                                 << "); stderr:\n"
                                 << d.err();
        return d;
    }

    // Run evstreamd to completion (at most @seconds) and collect its output.
    Result run(const std::vector<std::string> &args, const Env &env = {}, double seconds = 30) {
        int n = serial++;
        std::string out = path("run-out." + std::to_string(n));
        std::string err = path("run-err." + std::to_string(n));
        std::vector<std::string> argv = {daemon_path()};
        argv.insert(argv.end(), args.begin(), args.end());
        return finish(spawn(argv, "", out, err, env), "evstreamd", seconds, out, err);
    }
};

// --- echo, both plugin modes, TCP and Unix -----------------------------------

class EchoTest : public DaemonTest {
  protected:
    void echo_16mib(const std::string &plugin, bool unix_socket) {
        std::string sock = path("echo.sock");
        std::string listen = unix_socket ? "unix:" + sock : "127.0.0.1:0";
        std::string conf = write("evstreamd.conf",
                                 config("  { name = \"e\"; listen = \"" + listen +
                                        "\"; plugin = \"" + plugin + "\"; }"));
        Daemon &d = start(conf);
        ASSERT_TRUE(d.running());
        int fd = unix_socket ? connect_unix(sock) : connect_tcp(d.port("e"));
        ASSERT_GE(fd, 0) << strerror(errno);
        expect_echo(fd, 16u << 20, 7);
        // The connection still works after the big transfer, then closes cleanly.
        EXPECT_EQ("after", ask(fd, "after"));
        shutdown(fd, SHUT_WR);
        EXPECT_EQ(0, wait_eof(fd, 10));
        close(fd);
        EXPECT_EQ(0, d.stop());
    }
};

TEST_F(EchoTest, StreamPluginTcp16MiB) { echo_16mib("echo", false); }
TEST_F(EchoTest, StreamPluginUnix16MiB) { echo_16mib("echo", true); }
TEST_F(EchoTest, ProtocolPluginTcp16MiB) { echo_16mib("echo_protocol", false); }
TEST_F(EchoTest, ProtocolPluginUnix16MiB) { echo_16mib("echo_protocol", true); }

// --- settings reach the plugin ------------------------------------------------

TEST_F(DaemonTest, ListenersOfOnePluginGetTheirOwnSettings) {
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"one\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";\n"
               "    settings = { prefix = \"one> \"; }; },\n"
               "  { name = \"two\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";\n"
               "    settings = { prefix = \"two> \"; max_line = 8; }; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    ASSERT_NE(d.port("one"), d.port("two"));
    int a = connect_tcp(d.port("one"));
    int b = connect_tcp(d.port("two"));
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    EXPECT_EQ("one> HELLO", ask(a, "hello"));
    EXPECT_EQ("two> HELLO", ask(b, "hello"));
    // max_line only applies to "two".
    EXPECT_EQ("one> A LONGER LINE", ask(a, "a longer line"));
    EXPECT_EQ("ERR line too long", ask(b, "a longer line"));
    // A short line still passes, on a fresh connection.
    close(b);
    b = connect_tcp(d.port("two"));
    ASSERT_GE(b, 0);
    EXPECT_EQ("two> OK", ask(b, "ok"));
    close(a);
    close(b);
}

TEST_F(DaemonTest, EveryTypedSettingReachesThePlugin) {
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"s\"; listen = \"127.0.0.1:0\"; plugin = \"settings_echo\";\n"
               "    settings = { str = \"text\"; int = 42; float = 2.5; bool = true;\n"
               "                 size = \"64k\"; duration = \"250ms\";\n"
               "                 list = [ \"a\", \"b\", \"c\" ]; }; },\n"
               "  { name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"settings_echo\";\n"
               "    settings = { size = 4096; duration = 2; list = ( \"x\" ); }; },\n"
               "  { name = \"none\"; listen = \"127.0.0.1:0\"; plugin = \"settings_echo\"; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("s"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("str=text int=42 float=2.5 bool=true size=65536 duration_ms=250 list=a,b,c count=7",
              read_line(fd));
    EXPECT_EQ("ping", ask(fd, "ping"));  // then it echoes
    close(fd);
    fd = connect_tcp(d.port("plain"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("str=- int=- float=- bool=- size=4096 duration_ms=2000 list=x count=3", read_line(fd));
    close(fd);
    fd = connect_tcp(d.port("none"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("str=- int=- float=- bool=- size=- duration_ms=- list=- count=0", read_line(fd));
    close(fd);
}

// --- configuration errors -------------------------------------------------------
//
// Each case is a config with one mistake; "#@" marks the line the message
// must name (in include.conf for the @include cases). Both `-t` and a normal
// start must exit 1 with a line naming the file, that line, and the setting.

struct ConfigError {
    std::string main;                 // evstreamd.conf
    std::string include;              // include.conf ("" = none)
    std::vector<std::string> expect;  // text the same message line must contain
    Env env;
};

// A listener "l" whose @extra settings are on a line of their own; with
// @mark_head the first line (listen, plugin) carries the "#@" marker.
std::string listener(const std::string &extra, const std::string &listen = "127.0.0.1:0",
                     const std::string &plugin = "echo", bool mark_head = false) {
    return "  { name = \"l\"; listen = \"" + listen + "\"; plugin = \"" + plugin + "\";" +
           (mark_head ? " #@" : "") + "\n    " + extra + "\n  }";
}

ConfigError config_error_case(const std::string &name) {
    const std::string ok = listener("");
    if (name == "SyntaxError")
        return {config(ok, "workers = 2;\nlog = { level = = \"info\"; }; #@\n"), "", {"syntax error"}};
    if (name == "UnknownTopLevelKey")
        return {config(ok, "workers = 2;\ncolour = \"blue\"; #@\n"), "",
                {"colour: unknown setting", "listeners"}};
    if (name == "UnknownKeyInLimits")
        return {config(ok, "limits = {\n  stream_limit = \"64k\";\n  bogus = 1; #@\n};\n"), "",
                {"limits.bogus: unknown setting", "idle_timeout"}};
    if (name == "UnknownKeyInListener")
        return {config(listener("colour = 1; #@")), "", {"listeners[0].colour: unknown setting"}};
    if (name == "WorkersOfWrongType")
        return {config(ok, "workers = true; #@\n"), "", {"workers: expected"}};
    if (name == "BacklogOfWrongType")
        return {config(listener("backlog = \"x\"; #@")), "",
                {"listeners[0].backlog: expected an integer"}};
    if (name == "PortOutOfRange")
        return {config(listener("", "127.0.0.1:99999", "echo", true)), "",
                {"listeners[0].listen: expected", "port from 0 to 65535"}};
    if (name == "AddressWithoutPort")
        return {config(listener("", "nohostport", "echo", true)), "", {"listeners[0].listen: expected"}};
    if (name == "EmptyUnixPath")
        return {config(listener("", "unix:", "echo", true)), "", {"listeners[0].listen: expected"}};
    if (name == "UnsetVariable")
        return {config(listener("", "${EVS_TEST_SURELY_UNSET}:0", "echo", true)),
                "",
                {"listeners[0].listen: environment variable EVS_TEST_SURELY_UNSET is not set"},
                {{"EVS_TEST_SURELY_UNSET", "<unset>"}}};
    if (name == "SizeWithBadUnit")
        return {config(ok, "limits = {\n  stream_limit = \"64q\"; #@\n};\n"), "",
                {"limits.stream_limit: expected a size"}};
    if (name == "DurationWithBadUnit")
        return {config(ok, "limits = {\n  idle_timeout = \"3x\"; #@\n};\n"), "",
                {"limits.idle_timeout: expected a duration"}};
    if (name == "ListenerDurationWithBadUnit")
        return {config(listener("limits = { handshake_timeout = \"10 parsecs\"; }; #@")), "",
                {"listeners[0].limits.handshake_timeout: expected a duration"}};
    if (name == "UndeclaredPlugin")
        return {config(listener("", "127.0.0.1:0", "nope", true)), "",
                {"listeners[0].plugin: no plugin named 'nope'"}};
    if (name == "MissingPluginFile")
        return {config(listener("", "127.0.0.1:0", "ghost"), "workers = 2;\n",
                       ",\n  { name = \"ghost\"; path = \"does_not_exist.so\"; } #@"),
                "",
                {plugin_dir() + "/does_not_exist.so", "plugin 'ghost' declared at"}};
    if (name == "PluginAbiMismatch")
        return {config(listener("", "127.0.0.1:0", "abi_mismatch"), "workers = 2;\n",
                       plugin_entry("abi_mismatch", " #@")),
                "",
                {test_plugin("abi_mismatch"), "ABI version 999"}};
    if (name == "PluginWithoutDescriptor")
        return {config(listener("", "127.0.0.1:0", "no_descriptor"), "workers = 2;\n",
                       plugin_entry("no_descriptor", " #@")),
                "",
                {test_plugin("no_descriptor"), "evs_plugin_descriptor"}};
    if (name == "PluginWithUndefinedSymbol")
        return {config(listener("", "127.0.0.1:0", "undefined_symbol"), "workers = 2;\n",
                       plugin_entry("undefined_symbol", " #@")),
                "",
                {test_plugin("undefined_symbol"), "evs_test_function_that_does_not_exist"}};
    if (name == "PluginInitFails")
        return {config(listener("", "127.0.0.1:0", "failing_init", true), "workers = 2;\n",
                       plugin_entry("failing_init")),
                "",
                {test_plugin("failing_init"), "listener 'l'",
                 "failing_init refuses to start (test plugin)"}};
    if (name == "PluginInitFailsWithSettings")
        return {config(listener("settings = { anything = 1; }; #@", "127.0.0.1:0", "failing_init"),
                       "workers = 2;\n", plugin_entry("failing_init")),
                "",
                {"listener 'l'", "failing_init refuses to start (test plugin)"}};
    if (name == "PluginRejectsSettingType")
        return {config(listener("settings = {\n      str = \"ok\";\n      int = \"x\"; #@\n    };",
                                "127.0.0.1:0", "settings_echo")),
                "",
                {"listener 'l'", "settings.int: expected an integer"}};
    // Found when a listener is prepared, before binding: -t must find them too.
    if (name == "AccessLogCannotBeOpened")
        return {config(listener("access_log = { file = \"no_such_dir/access.log\"; };",
                                "127.0.0.1:0", "echo", true)),
                "",
                {"listener 'l'", "access log", "/no_such_dir/access.log: No such file or directory"}};
    if (name == "DatagramPluginOnStreamAddress")
        return {config(listener("", "127.0.0.1:0", "udp_echo", true), "workers = 2;\n",
                       ",\n  { name = \"udp_echo\"; path = \"udp_echo.so\"; }"),
                "",
                {"listener 'l'", "plugin 'udp_echo' serves datagrams"}};
    if (name == "TwoUdpListenersOnOneAddress")  // SO_REUSEPORT: both bound, datagrams split
        return {config(listener("", "udp:127.0.0.1:5353", "udp_echo") +
                           ",\n  { name = \"m\"; listen = \"udp:127.0.0.1:5353\"; plugin = \"udp_echo\"; } #@",
                       "workers = 2;\n", ",\n  { name = \"udp_echo\"; path = \"udp_echo.so\"; }"),
                "",
                {"listener 'm': udp:127.0.0.1:5353 is also the address of listener 'l'"}};
    if (name == "TwoReuseportListenersOnOneAddress")  // both bound, connections split
        return {config(listener("reuseport = true;", "127.0.0.1:5353") +
                       ",\n  { name = \"m\"; listen = \"127.0.0.1:5353\"; plugin = \"echo\"; reuseport = true; } #@"),
                "",
                {"listener 'm': 127.0.0.1:5353 is also the address of listener 'l'"}};
    if (name == "OneAddressWrittenTwoWays")  // the text differs: both bound, connections split
        return {config(listener("reuseport = true;", "127.0.0.1:5353") +
                       ",\n  { name = \"m\"; listen = \"localhost:5353\"; plugin = \"echo\"; reuseport = true; } #@"),
                "",
                {"listener 'm': localhost:5353 resolves to 127.0.0.1 port 5353, an address of listener 'l'"}};
    if (name == "StreamPluginOnDatagramAddress")
        return {config(listener("", "udp:127.0.0.1:0", "echo", true)), "",
                {"listener 'l'", "plugin 'echo' is not a datagram plugin"}};
    if (name == "AdminOnDatagramAddress")  // it served HTTP on a random port of every interface
        return {config(ok, "workers = 2;\nadmin = { listen = \"unixgram:/tmp/evs-admin.sock\"; }; #@\n"),
                "", {"admin.listen: the admin listener serves HTTP"}};
    // TLS settings that something else turns off: ignoring them would leave
    // clients unverified, or protocols unrequired, where the operator expects it.
    const std::string tls = "tls = { certificate = \"c.pem\"; key = \"k.pem\";\n      ";
    if (name == "TlsCaFileWithoutClientCertificates")
        return {config(listener(tls + "ca_file = \"ca.pem\"; #@\n    };")), "",
                {"listeners[0].tls.ca_file: has no effect without client_certificates"}};
    if (name == "TlsVerifyDepthWithoutClientCertificates")
        return {config(listener(tls + "client_certificates = \"none\";\n      verify_depth = 3; #@\n    };")),
                "", {"listeners[0].tls.verify_depth: has no effect without client_certificates"}};
    if (name == "TlsAlpnRequiredWithoutAlpn")
        return {config(listener(tls + "alpn = [];\n      alpn_required = true; #@\n    };")), "",
                {"listeners[0].tls.alpn_required: alpn_required needs alpn"}};
    if (name == "TlsTicketRotationWithoutTickets")
        return {config(listener(tls + "session_tickets = false;\n      ticket_rotation = \"1h\"; #@\n    };")),
                "", {"listeners[0].tls.ticket_rotation: has no effect without session_tickets = true"}};
    if (name == "OwnerUidOutOfRange")  // chown() reads (uid_t)-1 as "unchanged"
        return {config(listener("owner = \"4294967295\"; #@", "unix:/tmp/evs-test-owner.sock")), "",
                {"listeners[0].owner: no such user '4294967295'", "0 to 4294967294"}};
    if (name == "GroupGidWrapsRound")  // was gid 0: root
        return {config(listener("group = \"4294967296\"; #@", "unix:/tmp/evs-test-owner.sock")), "",
                {"listeners[0].group: no such group '4294967296'"}};
    if (name == "UnixModeZero")  // the library took 0 for "as created"; a reload applied it
        return {config(listener("mode = \"0000\"; #@", "unix:/tmp/evs-test-owner.sock")), "",
                {"listeners[0].mode: mode \"0000\" lets no one but root connect"}};
    if (name == "RelativeUnixPath")  // it landed in the working directory, / with -d
        return {config(listener("", "unix:rel.sock", "echo", true)), "",
                {"listeners[0].listen: a socket path must be absolute"}};
    if (name == "ListenerNameWithSpaces")  // it split a line of the ports file
        return {config("  { name = \"a b\"; #@\n    listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"), "",
                {"listeners[0].name: a listener name cannot hold spaces"}};
    if (name == "ListenerNamedAdmin")
        return {config("  { name = \"admin\"; #@\n    listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"), "",
                {"listeners[0].name: the name 'admin' is the admin listener's"}};
    if (name == "EmptyListenerName")
        return {config("  { name = \"\"; #@\n    listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"), "",
                {"listeners[0].name: a listener name cannot be empty"}};
    if (name == "SniWildcardInsideAName")  // it could only ever match a literal '*'
        return {config(listener(tls + "sni = ( { certificate = \"c.pem\"; key = \"k.pem\";\n"
                                      "                names = [\"a.*.example\"]; } ); #@\n    };")),
                "", {"listeners[0].tls.sni[0].names: 'a.*.example' is not a host name"}};
    if (name == "SniNameTwice")  // the first certificate won, silently
        return {config(listener(tls + "sni = ( { names = [\"a.example\"]; certificate = \"c.pem\"; key = \"k.pem\"; },\n"
                                      "              { names = [\"A.Example\"]; certificate = \"c.pem\"; key = \"k.pem\"; } ); #@\n    };")),
                "", {"'A.Example' is already a name of sni[0]"}};
    if (name == "ProxyTimeoutZero")  // it meant 5 s, silently
        return {config(listener("proxy_protocol = { trusted = [\"127.0.0.1\"]; timeout = 0; }; #@")), "",
                {"listeners[0].proxy_protocol.timeout: expected a duration above 0"}};
    if (name == "BurstBelowOne")  // it meant one second of the rate, silently
        return {config(listener("limits = { connection_rate_per_ip = 1000; connection_burst_per_ip = 0.5; #@\n  };")), "",
                {"connection_burst_per_ip: must be 0 (one second's worth of connection_rate_per_ip) or at least 1"}};
    if (name == "SettingsForAPluginWithoutInit")  // nothing read them: a typo passed
        return {config(listener("settings = { bogus = 1; }; #@")), "",
                {"listener 'l': plugin 'echo' takes no settings"}};
    if (name == "GlobalBurstBelowOne")  // a listener's own limits group crashed the check
        return {config(listener("limits = { max_connections = 10; };"),
                       "limits = { shutdown_timeout = \"3s\"; connection_rate_per_ip = 5;\n"
                       "  connection_burst_per_ip = 0.5; }; #@\n"),
                "",
                {"limits.connection_burst_per_ip: must be 0 (one second's worth of connection_rate_per_ip) or at least 1"}};
    if (name == "AdminOnAbstractSocket")  // any local user could read /status
        return {config(ok, "workers = 2;\nadmin = { listen = \"unix:@evs-admin\"; }; #@\n"),
                "", {"admin.listen: the admin listener cannot be an abstract socket"}};
    if (name == "ModeOnAbstractSocket")  // it was ignored: no file, anyone may connect
        return {config(listener("mode = \"0600\"; #@", "unix:@evs-mode")), "",
                {"listeners[0].mode: mode, owner and group do not apply to an abstract socket"}};
    if (name == "ErrorInIncludedFile")
        return {"@include \"include.conf\"\n" + config(ok, "workers = 2;  # limits: in include.conf\n"),
                "limits = {\n  stream_limit = \"lots\"; #@\n};\n",
                {"limits.stream_limit: expected a size"}};
    if (name == "SyntaxErrorInIncludedFile")
        return {"@include \"include.conf\"\n" + config(ok, "workers = 2;  # limits: in include.conf\n"),
                "limits = { shutdown_timeout = \"3s\"; };\nlog = { level = = \"info\"; }; #@\n",
                {"syntax error"}};
    if (name == "IncludedFileIncludesItself")  // it said "cannot read" it: Input/output error
        return {"@include \"include.conf\"\n" + config(ok), "@include \"include.conf\" #@\n",
                {"syntax error", "include file nesting too deep"}};
    if (name == "MissingIncludedFile")  // it said "cannot open include file", naming none
        return {"@include \"missing.conf\" #@\n" + config(ok), "",
                {"@include \"missing.conf\": cannot read", "missing.conf: No such file or directory"}};
    ADD_FAILURE() << "no case " << name;
    return {};
}

// The first line of @text naming @file:@line (followed by ':' or ')').
std::string line_naming(const std::string &text, const std::string &file, int line) {
    std::string where = file + ":" + std::to_string(line);
    std::istringstream in(text);
    std::string l;
    while (std::getline(in, l)) {
        size_t at = l.find(where);
        if (at == std::string::npos) continue;
        char next = at + where.size() < l.size() ? l[at + where.size()] : '\0';
        if (next == ':' || next == ')') return l;
    }
    return "";
}

class ConfigErrorTest : public DaemonTest, public ::testing::WithParamInterface<const char *> {};

TEST_P(ConfigErrorTest, NamesFileLineAndSettingAndExits1) {
    ConfigError c = config_error_case(GetParam());
    std::string conf = write("evstreamd.conf", c.main);
    std::string file = conf;
    int line = line_of(c.main, "#@");
    if (!c.include.empty()) {
        file = write("include.conf", c.include);
        line = line_of(c.include, "#@");
    }
    ASSERT_GT(line, 0) << "the case has no #@ marker";

    // evstreamd -t
    Result t = run({"-t", "-c", conf}, c.env);
    EXPECT_EQ(1, t.status);
    EXPECT_FALSE(contains(t.out, "OK")) << t.out;
    std::string msg = line_naming(t.err, file, line);
    EXPECT_NE("", msg) << "no message names " << file << ":" << line << "; stderr:\n" << t.err;
    for (auto &e : c.expect) EXPECT_TRUE(contains(msg, e)) << "'" << e << "' missing in: " << msg;
    EXPECT_TRUE(contains(t.err, "configuration " + conf + " has errors")) << t.err;

    // A normal start fails the same way and never gets to listen.
    std::string ports = path("ports");
    Result s = run({"-c", conf, "--ports-file", ports}, c.env);
    EXPECT_EQ(1, s.status);
    msg = line_naming(s.err, file, line);
    EXPECT_NE("", msg) << "no message names " << file << ":" << line << "; stderr:\n" << s.err;
    for (auto &e : c.expect) EXPECT_TRUE(contains(msg, e)) << "'" << e << "' missing in: " << msg;
    EXPECT_FALSE(file_exists(ports));
    EXPECT_FALSE(contains(s.out, "listening on")) << s.out;
}

INSTANTIATE_TEST_SUITE_P(
    Daemon, ConfigErrorTest,
    ::testing::Values("SyntaxError", "UnknownTopLevelKey", "UnknownKeyInLimits",
                      "UnknownKeyInListener", "WorkersOfWrongType", "BacklogOfWrongType",
                      "PortOutOfRange", "AddressWithoutPort", "EmptyUnixPath", "UnsetVariable",
                      "SizeWithBadUnit", "DurationWithBadUnit", "ListenerDurationWithBadUnit",
                      "UndeclaredPlugin", "MissingPluginFile", "PluginAbiMismatch",
                      "PluginWithoutDescriptor", "PluginWithUndefinedSymbol", "PluginInitFails",
                      "PluginInitFailsWithSettings", "PluginRejectsSettingType",
                      "AccessLogCannotBeOpened", "DatagramPluginOnStreamAddress", "TwoUdpListenersOnOneAddress", "TwoReuseportListenersOnOneAddress",
                      "OneAddressWrittenTwoWays", "StreamPluginOnDatagramAddress", "AdminOnDatagramAddress",
                      "AdminOnAbstractSocket", "ModeOnAbstractSocket",
                      "TlsCaFileWithoutClientCertificates", "TlsVerifyDepthWithoutClientCertificates",
                      "TlsAlpnRequiredWithoutAlpn", "TlsTicketRotationWithoutTickets", "OwnerUidOutOfRange",
                      "GroupGidWrapsRound", "UnixModeZero", "RelativeUnixPath", "ListenerNameWithSpaces",
                      "ListenerNamedAdmin", "EmptyListenerName", "SniWildcardInsideAName",
                      "SniNameTwice", "ProxyTimeoutZero", "BurstBelowOne", "GlobalBurstBelowOne",
                      "SettingsForAPluginWithoutInit",
                      "ErrorInIncludedFile",
                      "SyntaxErrorInIncludedFile", "MissingIncludedFile",
                      "IncludedFileIncludesItself"),
    [](const ::testing::TestParamInfo<const char *> &info) { return std::string(info.param); });

TEST_F(DaemonTest, EveryConfigErrorIsReportedAtOnce) {
    std::string text = config(listener("backlog = 0; #2\n    reuseport = \"yes\"; #3"),
                              "workers = 0; #1\n");
    std::string conf = write("evstreamd.conf", text);
    Result t = run({"-t", "-c", conf});
    EXPECT_EQ(1, t.status);
    EXPECT_TRUE(contains(line_naming(t.err, conf, line_of(text, "#1")), "workers")) << t.err;
    EXPECT_TRUE(contains(line_naming(t.err, conf, line_of(text, "#2")), "listeners[0].backlog"))
        << t.err;
    EXPECT_TRUE(contains(line_naming(t.err, conf, line_of(text, "#3")), "listeners[0].reuseport"))
        << t.err;
}

// An integer over 32 bits without an L: libconfig before 1.7 cut it
// silently (backlog = 4294967301 listened with a backlog of 5, and
// max_connections = 4294967296 meant no limit). Either it is refused for
// its width or, where libconfig keeps it, for its range: never another
// value. Numbers in comments and strings, floats and L literals are left.
TEST_F(DaemonTest, AnIntegerWiderThan32BitsIsNeverCut) {
    std::string inc = write("wide.conf", "workers = 0xFFFFFFFF;\n");
    std::string text = config(listener("backlog = 4294967301; #2\n"
                                       "    # backlog = 99999999999 in a comment\n"
                                       "    access_log_format = \"99999999999\";"),
                              "@include \"wide.conf\"  # workers\nx_float = 1.5e10;\n"
                              "x_fraction = 0.33333333333;\nx_dot = .12345678901;\n");
    std::string conf = write("evstreamd.conf", text);
    Result t = run({"-t", "-c", conf});
    EXPECT_EQ(1, t.status);
    EXPECT_TRUE(contains(line_naming(t.err, conf, line_of(text, "#2")), "4294967301")) << t.err;
    EXPECT_TRUE(contains(line_naming(t.err, inc, 1), "0xFFFFFFFF") ||
                contains(line_naming(t.err, inc, 1), "4294967295"))
        << t.err;
    EXPECT_FALSE(contains(t.err, "99999999999")) << t.err;
    EXPECT_FALSE(contains(t.err, "1.5e10")) << t.err;
    EXPECT_FALSE(contains(t.err, "33333333333")) << t.err;  // a float's fraction
    EXPECT_FALSE(contains(t.err, "12345678901")) << t.err;
}

// A host that does not resolve: -t says so (it said OK), and a start says
// "cannot resolve" (it said "No route to host"). RES_OPTIONS bounds the
// lookup where no DNS server answers.
TEST_F(DaemonTest, AHostThatDoesNotResolveIsNamed) {
    std::string text = config(listener("", "nosuchhost.invalid:0") + ",\n" +
                              "  { name = \"m\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }");
    std::string conf = write("evstreamd.conf", text);
    Env env = {{"RES_OPTIONS", "timeout:1 attempts:1"}};
    Result t = run({"-t", "-c", conf}, env);
    EXPECT_EQ(1, t.status);
    EXPECT_TRUE(contains(t.err, "listener 'l': cannot resolve 'nosuchhost.invalid'")) << t.err;
    Result s = run({"-c", conf}, env);
    EXPECT_EQ(1, s.status);
    EXPECT_TRUE(contains(s.err, "cannot resolve 'nosuchhost.invalid'")) << s.err;
    EXPECT_FALSE(contains(s.err, "No route to host")) << s.err;
}

// A unix: path that is a regular file: named as such (it said "Address
// already in use"), and left alone.
TEST_F(DaemonTest, AUnixPathThatIsNoSocketIsNamedAndKept) {
    std::string file = write("not-a-socket", "keep me");
    std::string conf = write("evstreamd.conf", config(listener("", "unix:" + file)));
    Result s = run({"-c", conf});
    EXPECT_EQ(1, s.status);
    EXPECT_TRUE(contains(s.err, file + " exists and is not a socket")) << s.err;
    EXPECT_EQ("keep me", read_file(file));
}

TEST_F(DaemonTest, MissingConfigFileExits1) {
    Result t = run({"-t", "-c", path("nowhere.conf")});
    EXPECT_EQ(1, t.status);
    EXPECT_TRUE(contains(t.err, path("nowhere.conf"))) << t.err;
    Result s = run({"-c", path("nowhere.conf")});
    EXPECT_EQ(1, s.status);
    EXPECT_TRUE(contains(s.err, path("nowhere.conf"))) << s.err;
}

// --- ${VAR} and @include ----------------------------------------------------------

TEST_F(DaemonTest, EnvironmentVariablesAreExpanded) {
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"${EVS_TEST_NAME:-fallback}\"; listen = \"${EVS_TEST_HOST}:${EVS_TEST_PORT:-0}\";\n"
               "    plugin = \"line_upper\"; settings = { prefix = \"${EVS_TEST_EMPTY:-dflt}$$ \"; }; }"));
    Daemon &d = start(conf, {},
                      {{"EVS_TEST_HOST", "127.0.0.1"},
                       {"EVS_TEST_PORT", "<unset>"},
                       {"EVS_TEST_EMPTY", ""},
                       {"EVS_TEST_NAME", "from-env"}});
    ASSERT_TRUE(d.running());
    auto ports = d.ports();
    ASSERT_EQ(1u, ports.size()) << d.ports_text();
    ASSERT_EQ(1u, ports.count("from-env")) << d.ports_text();
    EXPECT_EQ(0u, ports["from-env"].find("127.0.0.1:")) << ports["from-env"];
    int fd = connect_tcp(port_of(ports["from-env"]));
    ASSERT_GE(fd, 0);
    // An empty variable takes the default; "$$" is a literal "$".
    EXPECT_EQ("dflt$ HI", ask(fd, "hi"));
    close(fd);
}

TEST_F(DaemonTest, IncludedFileIsRead) {
    write("listeners.conf",
          "listeners = (\n"
          "  { name = \"inc\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";\n"
          "    settings = { prefix = \"inc: \"; }; }\n"
          ");\n");
    std::string main_text = config("", "workers = 2;\n");
    // Replace the (empty) listeners list by the include.
    main_text = main_text.substr(0, main_text.find("listeners = (")) + "@include \"listeners.conf\"\n";
    std::string conf = write("evstreamd.conf", main_text);
    Result t = run({"-t", "-c", conf});
    EXPECT_EQ(0, t.status) << t.err;
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("inc"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("inc: ABC", ask(fd, "abc"));
    close(fd);
}

// --- command line -------------------------------------------------------------------

TEST_F(DaemonTest, TestModeSaysOkAndBindsNothing) {
    uint16_t port = free_port();
    ASSERT_NE(0, port);
    std::string sock = path("t.sock");
    // -t tries the log files: a new one must not be left behind, an old
    // one must not change.
    std::string old_log = write("old-access.log", "a line from before\n");
    struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    ASSERT_EQ(0, utimensat(AT_FDCWD, old_log.c_str(), times, 0));
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"tcp\"; listen = \"127.0.0.1:" + std::to_string(port) +
                   "\"; plugin = \"line_upper\"; settings = { prefix = \"x\"; };\n"
                   "    access_log = { file = \"new-access.log\"; }; },\n"
                   "  { name = \"unix\"; listen = \"unix:" + sock + "\"; plugin = \"echo\";\n"
                   "    access_log = { file = \"old-access.log\"; }; }",
               "log = { file = \"evstreamd.log\"; };\n"));
    std::string pidfile = path("t.pid");
    Result t = run({"-t", "-c", conf, "-p", pidfile});
    EXPECT_EQ(0, t.status) << t.err;
    EXPECT_TRUE(contains(t.out, "configuration " + conf + " OK")) << t.out;
    EXPECT_EQ("", t.err);
    // Nothing was bound or created: the port is ours to take.
    int fd = bind_tcp(port);
    EXPECT_GE(fd, 0) << "port " << port << " is not free after -t: " << strerror(errno);
    if (fd >= 0) close(fd);
    EXPECT_FALSE(file_exists(sock));
    EXPECT_FALSE(file_exists(pidfile));
    EXPECT_FALSE(file_exists(path("new-access.log")));
    EXPECT_FALSE(file_exists(path("evstreamd.log")));
    EXPECT_EQ("a line from before\n", read_file(old_log));
    struct stat st;
    ASSERT_EQ(0, stat(old_log.c_str(), &st));
    EXPECT_EQ(1000000000, st.st_mtim.tv_sec);
}

// A start only warns when its log file cannot be opened (it logs to stderr
// instead), so -t warns and still says OK.
TEST_F(DaemonTest, TestModeWarnsAboutALogFileItCannotOpen) {
    std::string conf = write("evstreamd.conf",
                             config("  { listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "log = { file = \"no_such_dir/evstreamd.log\"; };\n"));
    Result t = run({"-t", "-c", conf});
    EXPECT_EQ(0, t.status) << t.err;
    EXPECT_TRUE(contains(t.out, "configuration " + conf + " OK")) << t.out;
    EXPECT_TRUE(contains(t.err, conf + ": warning: log file " + path("no_such_dir/evstreamd.log") +
                                    ": No such file or directory"))
        << t.err;
}

// max_connections needs file descriptors: a start that cannot raise its
// limit that far refuses to run, and so does -t (run with the same limits).
// A log file that cannot be opened leaves the log on stderr, at the
// configured level (it fell back to the library's default, warn).
TEST_F(DaemonTest, LogLevelAppliesWhenTheLogFileCannotBeOpened) {
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "log = { file = \"no_such_dir/evstreamd.log\"; level = \"info\"; };\n"));
    Daemon &d = launch({"-c", conf});
    ASSERT_TRUE(eventually(20, [&] { return file_exists(d.ports_path); })) << read_file(d.err_path);
    std::string err = read_file(d.err_path);
    EXPECT_TRUE(contains(err, "No such file or directory; logging to stderr")) << err;
    EXPECT_TRUE(contains(err, "[main] listening on 127.0.0.1:")) << err;
}

// A FIFO with no reader as the log file is one that cannot be opened: the
// start logs to stderr. Its open waited for a reader, for good, with the
// signals that would have stopped the daemon blocked.
TEST_F(DaemonTest, AFifoWithoutAReaderAsTheLogFileLeavesTheLogOnStderr) {
    std::string fifo = path("evstreamd.log");
    ASSERT_EQ(0, mkfifo(fifo.c_str(), 0600));
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "log = { file = \"" + fifo + "\"; level = \"info\"; };\n"));
    Daemon &d = launch({"-c", conf});
    ASSERT_TRUE(eventually(20, [&] { return file_exists(d.ports_path); })) << read_file(d.err_path);
    std::string err = read_file(d.err_path);
    EXPECT_TRUE(contains(err, "No such device or address; logging to stderr")) << err;
    EXPECT_TRUE(contains(err, "[main] listening on 127.0.0.1:")) << err;
}

TEST_F(DaemonTest, TestModeChecksTheFileDescriptorLimitLikeAStart) {
    const unsigned long long need = 10000000ULL + 256;  // max_connections + the daemon's overhead
    struct rlimit rl;
    ASSERT_EQ(0, getrlimit(RLIMIT_NOFILE, &rl));
    unsigned long long ceiling = rl.rlim_max;
    if (geteuid() == 0) ceiling = std::stoull(read_file("/proc/sys/fs/nr_open"));  // root's ceiling
    if (ceiling >= need) GTEST_SKIP() << "this system allows " << need << " file descriptors";
    std::string conf = write(
        "evstreamd.conf",
        config("  { listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
               "limits = { shutdown_timeout = \"3s\"; max_connections = 10000000; };\n"));
    Result t = run({"-t", "-c", conf});
    EXPECT_EQ(1, t.status);
    EXPECT_FALSE(contains(t.out, "OK")) << t.out;
    EXPECT_TRUE(contains(t.err, conf + ": max_connections = 10000000")) << t.err;
    EXPECT_TRUE(contains(t.err, "configuration " + conf + " has errors")) << t.err;
    std::string ports = path("ports");
    Result s = run({"-c", conf, "--ports-file", ports});
    EXPECT_EQ(1, s.status);
    EXPECT_TRUE(contains(s.err, conf + ": max_connections = 10000000")) << s.err;
    EXPECT_FALSE(file_exists(ports));
}

TEST_F(DaemonTest, VersionHelpAndBadOptions) {
    Result v = run({"-V"});
    EXPECT_EQ(0, v.status);
    EXPECT_EQ(std::string("evstreamd ") + evs_version() + "\n", v.out);
    Result v2 = run({"--version"});
    EXPECT_EQ(v.out, v2.out);

    Result h = run({"-h"});
    EXPECT_EQ(0, h.status);
    EXPECT_EQ(0u, h.out.find("usage: evstreamd")) << h.out;
    EXPECT_TRUE(contains(h.out, "--config")) << h.out;
    EXPECT_TRUE(contains(h.out, "--ports-file")) << h.out;

    Result bad = run({"--no-such-option"});
    EXPECT_EQ(2, bad.status);
    EXPECT_TRUE(contains(bad.err, "usage: evstreamd")) << bad.err;
    EXPECT_EQ("", bad.out);

    Result extra = run({"-c", "x.conf", "stray"});
    EXPECT_EQ(2, extra.status);
    EXPECT_TRUE(contains(extra.err, "stray")) << extra.err;

    Result workers = run({"-w", "0", "-t"});
    EXPECT_EQ(2, workers.status);
    // 2^32 + 1 is out of range, not 1 after a cast.
    Result wrapped = run({"-w", "4294967297", "-t"});
    EXPECT_EQ(2, wrapped.status);
    EXPECT_TRUE(contains(wrapped.err, "from 1 to 1024")) << wrapped.err;
    Result level = run({"-l", "loud", "-t"});
    EXPECT_EQ(2, level.status);
}

// --- signals -------------------------------------------------------------------------

// A second SIGTERM or SIGINT during the grace period stops at once: the
// operator means now (it was ignored until shutdown_timeout ran out).
TEST_F(DaemonTest, ASecondSignalEndsTheGracePeriod) {
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "limits = { shutdown_timeout = \"60s\"; };\n"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    int idle = connect_tcp(d.port("e"));
    ASSERT_GE(idle, 0);
    EXPECT_EQ("x", ask(idle, "x"));
    d.signal(SIGTERM);
    ASSERT_TRUE(eventually(20, [&] { return contains(d.err(), "SIGTERM: stopping"); })) << d.err();
    d.signal(SIGINT);
    int rc = d.wait(30);
    EXPECT_EQ(0, rc) << describe_status(d.raw_status) << "\n" << d.err();
    EXPECT_TRUE(contains(d.err(), "SIGINT again: not waiting for the handlers any longer"))
        << d.err();
    EXPECT_EQ(0, wait_eof(idle, 10));
    close(idle);
}

TEST_F(DaemonTest, SigtermLetsHandlersFinishThenAbortsTheRest) {
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "workers = 2;\nlimits = { shutdown_timeout = \"2s\"; };\n"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("e");

    // idle: a complete exchange, then nothing.
    int idle = connect_tcp(port);
    ASSERT_GE(idle, 0);
    expect_echo(idle, 256 * 1024, 1);
    // pending: its data is sent before SIGTERM, read back only after it.
    int pending = connect_tcp(port);
    ASSERT_GE(pending, 0);
    std::string sent = pattern(64 * 1024, 2);
    ASSERT_TRUE(write_all(pending, sent.data(), sent.size()));
    // stuck: writes 1 MiB and never reads; its handler waits in drain().
    int stuck = connect_tcp(port);
    ASSERT_GE(stuck, 0);
    std::string big = pattern(1 << 20, 3);
    std::thread stuck_writer([&] { write_all(stuck, big.data(), big.size()); });
    nap_ms(300);  // let the echo handlers run into their waits

    auto t0 = Clock::now();
    d.signal(SIGTERM);

    // Handlers keep running in the grace period: everything sent before
    // SIGTERM comes back, and the connection still answers.
    std::string back(sent.size(), '\0');
    ASSERT_TRUE(read_exact(pending, &back[0], back.size()));
    EXPECT_TRUE(back == sent);
    EXPECT_EQ("still here", ask(pending, "still here"));
    shutdown(pending, SHUT_WR);
    EXPECT_EQ(0, wait_eof(pending, 10)) << "the finished handler's connection was not closed";

    // The daemon exits 0, bounded by shutdown_timeout (2 s) plus slack.
    int rc = d.wait(20);
    double took = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_EQ(0, rc) << describe_status(d.raw_status) << "\n" << d.err();
    EXPECT_LT(took, 12.0) << "shutdown_timeout was not applied";
    // ... and not before: the idle and stuck handlers had their 2 s.
    EXPECT_GE(took, 1.5) << "live handlers were not given shutdown_timeout";
    EXPECT_TRUE(contains(d.err(), "SIGTERM: stopping")) << d.err();
    EXPECT_TRUE(contains(d.err(), "aborting")) << d.err();

    // The idle client sees the end of the stream.
    EXPECT_EQ(0, wait_eof(idle, 10));
    stuck_writer.join();
    close(idle);
    close(pending);
    close(stuck);
    // Nothing listens any more.
    int late = connect_tcp(port);
    EXPECT_LT(late, 0);
    if (late >= 0) close(late);
}

TEST_F(DaemonTest, SigintStopsToo) {
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    d.signal(SIGINT);
    EXPECT_EQ(0, d.wait(20));
    EXPECT_TRUE(contains(d.err(), "SIGINT: stopping")) << d.err();
}

std::string upper_listener(const std::string &name, const std::string &prefix,
                           const std::string &listen = "127.0.0.1:0") {
    return "  { name = \"" + name + "\"; listen = \"" + listen +
           "\"; plugin = \"line_upper\"; settings = { prefix = \"" + prefix + "\"; }; }";
}

TEST_F(DaemonTest, SighupAddsListenerAndNewSettingsWhileConnectionsStay) {
    std::string conf = write("evstreamd.conf", config(upper_listener("up", "a:")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("up");
    ASSERT_NE(0, port);

    const int kConns = 100;
    std::vector<int> fds;
    for (int i = 0; i < kConns; i++) {
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0) << "connection " << i << ": " << strerror(errno);
        fds.push_back(fd);
        ASSERT_EQ("a:X" + std::to_string(i), ask(fd, "x" + std::to_string(i)));
    }

    write_file(conf, config(upper_listener("up", "b:") + ",\n" + upper_listener("more", "c:")));
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return d.ports().size() == 2; }))
        << "the reload did not list two listeners:\n" << d.ports_text() << d.err();
    EXPECT_EQ(port, d.port("up")) << "the unchanged listener lost its socket";
    uint16_t more = d.port("more");
    ASSERT_NE(0, more);
    EXPECT_NE(port, more);

    // Live connections keep their instance (and its settings).
    for (int i = 0; i < kConns; i++)
        EXPECT_EQ("a:Y" + std::to_string(i), ask(fds[i], "y" + std::to_string(i))) << "connection " << i;
    // New connections get the new configuration.
    int fresh = connect_tcp(port);
    ASSERT_GE(fresh, 0);
    EXPECT_EQ("b:NEW", ask(fresh, "new"));
    int extra = connect_tcp(more);
    ASSERT_GE(extra, 0);
    EXPECT_EQ("c:MORE", ask(extra, "more"));
    EXPECT_TRUE(contains(d.err(), "reloaded " + conf)) << d.err();

    // The old connections end normally; their instance is finished later.
    for (int i = 0; i < kConns; i++) {
        shutdown(fds[i], SHUT_WR);
        EXPECT_EQ(0, wait_eof(fds[i], 10));
        close(fds[i]);
    }
    EXPECT_EQ("b:AGAIN", ask(fresh, "again"));
    close(fresh);
    close(extra);
    EXPECT_EQ(0, d.stop());
}

// Listening TCP sockets on @port (IPv4), from /proc/net/tcp.
static int listening_sockets(uint16_t port) {
    std::ifstream in("/proc/net/tcp");
    std::string line;
    char want[16];
    snprintf(want, sizeof want, ":%04X", port);
    int n = 0;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string slot, local, remote, state;
        f >> slot >> local >> remote >> state;
        if (state == "0A" && local.size() > 5 && local.substr(local.size() - 5) == want) n++;
    }
    return n;
}

TEST_F(DaemonTest, ReuseportGivesEachWorkerASocketAndKeepsThemAcrossAReload) {
    auto listener = [](const std::string &prefix) {
        return "  { name = \"up\"; listen = \"127.0.0.1:0\"; reuseport = true; plugin = "
               "\"line_upper\"; settings = { prefix = \"" + prefix + "\"; }; }";
    };
    std::string conf = write("evstreamd.conf", config(listener("a:")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("up");
    ASSERT_NE(0, port);
    EXPECT_EQ(2, listening_sockets(port));  // workers = 2
    std::vector<int> fds;
    for (int i = 0; i < 40; i++) {
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
        fds.push_back(fd);
        ASSERT_EQ("a:X" + std::to_string(i), ask(fd, "x" + std::to_string(i)));
    }
    write_file(conf, config(listener("b:")));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_EQ(port, d.port("up"));
    EXPECT_EQ(2, listening_sockets(port));  // the same two, handed over
    for (int i = 0; i < 40; i++) {
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
        EXPECT_EQ("b:N" + std::to_string(i), ask(fd, "n" + std::to_string(i)));
        close(fd);
    }
    for (size_t i = 0; i < fds.size(); i++) {
        EXPECT_EQ("a:Y", ask(fds[i], "y")) << "connection " << i;
        close(fds[i]);
    }
    EXPECT_EQ(0, d.stop());
    EXPECT_EQ(0, listening_sockets(port));
}

TEST_F(DaemonTest, SighupWithBadConfigKeepsTheOldOne) {
    std::string good = config(upper_listener("up", "a:"));
    std::string conf = write("evstreamd.conf", good);
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("up");
    int live = connect_tcp(port);
    ASSERT_GE(live, 0);
    EXPECT_EQ("a:ONE", ask(live, "one"));
    std::string ports_before = d.ports_text();
    struct stat st_before;
    ASSERT_EQ(0, stat(d.ports_path.c_str(), &st_before));

    int blocker = bind_tcp(0);
    ASSERT_GE(blocker, 0);
    struct sockaddr_in sin{};
    socklen_t len = sizeof sin;
    ASSERT_EQ(0, getsockname(blocker, (struct sockaddr *)&sin, &len));
    std::string taken = "127.0.0.1:" + std::to_string(ntohs(sin.sin_port));

    const std::vector<std::pair<std::string, std::string>> bad = {
        {"unknown setting", config(upper_listener("up", "b:"), "workers = 2;\nbogus = 1;\n")},
        {"failing init", config(upper_listener("up", "b:") + ",\n" +
                                    listener("", "127.0.0.1:0", "failing_init"),
                                "workers = 2;\n", plugin_entry("failing_init"))},
        {"port in use", config(upper_listener("up", "b:") + ",\n" + upper_listener("busy", "c:", taken))},
    };
    size_t failures = 0;
    for (auto &b : bad) {
        SCOPED_TRACE(b.first);
        ASSERT_NO_FATAL_FAILURE(reload_expecting_failure(d, conf, b.second, ++failures));
        // The old configuration still serves, old and new connections alike.
        EXPECT_EQ("a:TWO", ask(live, "two"));
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0);
        EXPECT_EQ("a:THREE", ask(fd, "three"));
        close(fd);
        struct stat st;
        ASSERT_EQ(0, stat(d.ports_path.c_str(), &st));
        EXPECT_EQ(st_before.st_ino, st.st_ino) << "the ports file was rewritten";
        EXPECT_EQ(ports_before, d.ports_text());
    }
    EXPECT_TRUE(contains(d.err(), "bogus: unknown setting")) << d.err();
    EXPECT_TRUE(contains(d.err(), "failing_init refuses to start")) << d.err();
    EXPECT_TRUE(contains(d.err(), "cannot listen on " + taken)) << d.err();
    close(blocker);

    // And a good config is still accepted afterwards.
    write_file(conf, good);
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_EQ("a:FOUR", ask(live, "four"));
    close(live);
}

// Failures that only show once the listener is made (its access log, its
// plugin's mode) come before the old sockets are given up: the reload
// fails and the old listener keeps its port.
TEST_F(DaemonTest, SighupFailingOnAKeptListenerKeepsTheOldOne) {
    std::string conf = write("evstreamd.conf", config(upper_listener("up", "a:")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("up");
    int live = connect_tcp(port);
    ASSERT_GE(live, 0);
    EXPECT_EQ("a:ONE", ask(live, "one"));

    std::string no_log = "  { name = \"up\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\";\n"
                         "    settings = { prefix = \"b:\"; };\n"
                         "    access_log = { file = \"" + path("missing/dir/a.log") + "\"; }; }";
    std::string datagram_plugin = "  { name = \"up\"; listen = \"127.0.0.1:0\"; plugin = \"udp_echo\"; }";
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"access log cannot be opened", config(no_log)},
        {"datagram plugin on a TCP address",
         config(datagram_plugin, "", ",\n  { name = \"udp_echo\"; path = \"udp_echo.so\"; }")},
    };
    size_t failures = 0;
    for (auto &b : bad) {
        SCOPED_TRACE(b.first);
        ASSERT_NO_FATAL_FAILURE(reload_expecting_failure(d, conf, b.second, ++failures));
        EXPECT_EQ(0u, count_of(d.err(), "reloaded ")) << d.err();
        EXPECT_EQ(port, d.port("up")) << d.ports_text();
        EXPECT_EQ("a:TWO", ask(live, "two"));
        int fd = connect_tcp(port);
        ASSERT_GE(fd, 0) << "the old listener lost its socket; log:\n" << d.err();
        EXPECT_EQ("a:THREE", ask(fd, "three")) << d.err();
        close(fd);
    }
    EXPECT_TRUE(contains(d.err(), "access log")) << d.err();
    EXPECT_TRUE(contains(d.err(), "serves datagrams")) << d.err();
    close(live);
}

namespace {

// Install @from as the plugin file @so the way docs/plugins.md asks: a
// copy renamed over it, never a write into the loaded file.
void install_plugin(const std::string &so, const std::string &from) {
    write_file(so + ".new", read_file(from));
    ASSERT_EQ(0, rename((so + ".new").c_str(), so.c_str()));
}

// One listener "l" served by the plugin at @so, named "hot".
std::string hot_plugin_config(const std::string &so) {
    return config("  { name = \"l\"; listen = \"127.0.0.1:0\"; plugin = \"hot\"; }", "",
                  ",\n  { name = \"hot\"; path = \"" + so + "\"; }");
}

}  // namespace

// A reload loads a plugin whose file was replaced (installed by rename, as
// docs/plugins.md asks): new connections run the new code, live ones keep
// the old. A replacement that cannot load fails the reload with a message
// naming the configured file (not the private copy it was loaded from) and
// no claim that the new version was loaded.
TEST_F(DaemonTest, AReloadLoadsAReplacedPluginAndNamesOneThatFails) {
    std::string so = path("hot.so");
    auto install = [&](const std::string &from) { install_plugin(so, from); };
    install(plugin_dir() + "/echo.so");
    std::string text = hot_plugin_config(so);
    std::string conf = write("evstreamd.conf", text);
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    int old = connect_tcp(d.port("l"));
    ASSERT_GE(old, 0);
    EXPECT_EQ("hello", ask(old, "hello"));

    install(plugin_dir() + "/line_upper.so");
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_TRUE(contains(d.err(), "plugin " + so + " changed: loaded the new version")) << d.err();
    int fresh = connect_tcp(d.port("l"));
    ASSERT_GE(fresh, 0);
    EXPECT_EQ("HELLO", ask(fresh, "hello"));
    EXPECT_EQ("still", ask(old, "still"));

    install(test_plugin("no_descriptor"));
    reload_expecting_failure(d, conf, text, 1);
    std::string err = d.err();
    EXPECT_EQ(1u, count_of(err, "changed: loaded the new version")) << err;
    EXPECT_TRUE(contains(err, so + ": not an evstream plugin")) << err;
    EXPECT_FALSE(contains(err, "evstreamd-plugin-")) << err;
    EXPECT_EQ("STILL NEW", ask(fresh, "still new"));
    close(old);
    close(fresh);
}

// The private copy of a replaced plugin goes to $TMPDIR (a /tmp mounted
// noexec cannot hold it). A copy that cannot be made fails the reload with
// the reason; the old version serves on.
TEST_F(DaemonTest, AReplacedPluginIsCopiedToTmpdirAndAFailedCopySaysWhy) {
    std::string so = path("hot.so"), copies = path("copies");
    auto install = [&](const std::string &from) { install_plugin(so, from); };
    install(plugin_dir() + "/echo.so");
    std::string text = hot_plugin_config(so);
    std::string conf = write("evstreamd.conf", text);
    Daemon &d = start(conf, {}, {{"TMPDIR", copies}});
    ASSERT_TRUE(d.running());

    install(plugin_dir() + "/line_upper.so");  // copies/ does not exist yet
    reload_expecting_failure(d, conf, text, 1);
    EXPECT_TRUE(contains(d.err(), so + ": cannot copy the changed plugin to " + copies +
                                      ": No such file or directory"))
        << d.err();
    int fd = connect_tcp(d.port("l"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("hello", ask(fd, "hello"));
    close(fd);

    ASSERT_EQ(0, mkdir(copies.c_str(), 0700));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_TRUE(contains(d.err(), "plugin " + so + " changed: loaded the new version")) << d.err();
    fd = connect_tcp(d.port("l"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("HELLO", ask(fd, "hello"));
    close(fd);
    EXPECT_EQ(0, rmdir(copies.c_str())) << "the private copy was left behind";
}

// The configuration is named by a symlink switched to a new version: a
// reload reads the version the link names now. The link was resolved once,
// at the start, and every reload read the first version again.
TEST_F(DaemonTest, AReloadFollowsASwitchedSymlink) {
    std::string v1 = write("v1.conf", config("  { name = \"l\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    std::string v2 = write("v2.conf", config("  { name = \"l\"; listen = \"127.0.0.1:0\"; plugin = \"line_upper\"; }"));
    std::string link = path("current.conf");
    ASSERT_EQ(0, symlink(v1.c_str(), link.c_str()));
    Daemon &d = start(link);
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("l"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("hello", ask(fd, "hello"));
    close(fd);

    ASSERT_EQ(0, symlink(v2.c_str(), (link + ".new").c_str()));
    ASSERT_EQ(0, rename((link + ".new").c_str(), link.c_str()));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, link));
    fd = connect_tcp(d.port("l"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("HELLO", ask(fd, "hello")) << d.err();
    close(fd);
}

// A ports file that cannot be written fails the start, as a pidfile does:
// a script waiting for the file would wait forever while the daemon ran.
TEST_F(DaemonTest, AnUnwritablePortsFileFailsTheStart) {
    std::string conf = write("evstreamd.conf", config(listener("")));
    Result s = run({"-c", conf, "--ports-file", path("no_such_dir/ports")}, {}, 20);
    EXPECT_EQ(1, s.status) << s.err;
    EXPECT_TRUE(contains(s.err, "ports file " + path("no_such_dir/ports.tmp") +
                                    ": No such file or directory"))
        << s.err;
}

// The ports file is rewritten in place when its temporary file cannot be
// made (here a directory holds that name). A FIFO put in its place made
// the reload wait in open() for good; it fails that write and nothing else.
TEST_F(DaemonTest, AFifoAsThePortsFileFailsItsRewriteNotTheDaemon) {
    std::string conf = write("evstreamd.conf", config(listener("")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("l");
    ASSERT_EQ(0, unlink(d.ports_path.c_str()));
    ASSERT_EQ(0, mkdir((d.ports_path + ".tmp").c_str(), 0700));
    ASSERT_EQ(0, mkfifo(d.ports_path.c_str(), 0600));
    ASSERT_EQ(0, kill(d.pid, SIGHUP));
    std::string want = "ports file " + d.ports_path + ": No such device or address";
    EXPECT_TRUE(eventually(20, [&] { return contains(d.err(), want); })) << d.err();
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    EXPECT_EQ("hello", ask(fd, "hello")) << d.err();
    close(fd);
}

// A plugin written in C++ with EVS_PLUGIN_DEFINE loads and serves: its
// descriptor had internal linkage there ("no 'evs_plugin_descriptor'
// symbol").
TEST_F(DaemonTest, APluginWrittenInCxxLoads) {
    std::string conf = write("evstreamd.conf", config(listener("", "127.0.0.1:0", "cxx_echo"), "",
                                                      plugin_entry("cxx_echo")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running()) << d.err();
    int fd = connect_tcp(d.port("l"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("from c++", ask(fd, "from c++")) << d.err();
    close(fd);
}

// A plugin path without a '/' names a file in the current directory: it
// was checked there and then looked for by dlopen on the library path.
TEST(PluginLoad, ANameWithoutASlashIsInTheCurrentDirectory) {
    char cwd[4096];
    ASSERT_NE(nullptr, getcwd(cwd, sizeof cwd));
    std::string dir = test_plugin("cxx_echo");
    dir.resize(dir.rfind('/'));
    ASSERT_EQ(0, chdir(dir.c_str()));
    evs_plugin_handle *h = nullptr;
    char err[512] = "";
    int rc = evs_plugin_load("cxx_echo.so", &h, err, sizeof err);
    EXPECT_EQ(0, chdir(cwd));
    ASSERT_EQ(0, rc) << err;
    EXPECT_STREQ("cxx_echo", evs_plugin_get(h)->name);
    evs_plugin_unload(h);
}

// The ports file exists only while the daemon listens: a stop removes
// it, and with -p (whose lock says no other instance runs) one an earlier
// (killed) run left is removed at start, even by a start that fails.
// Without -p it is left: it may be a running instance's.
TEST_F(DaemonTest, ThePortsFileExistsOnlyWhileListening) {
    std::string conf = write("evstreamd.conf", config(listener("")));
    std::string ports = path("ports");
    std::string busy_conf =
        write("busy.conf", config(listener("", "unix:" + path("no_such_dir/s.sock"))));
    write_file(ports, "l 127.0.0.1:1\n");
    Result unlocked = run({"-c", busy_conf, "--ports-file", ports}, {}, 20);
    EXPECT_EQ(1, unlocked.status) << unlocked.err;
    EXPECT_EQ("l 127.0.0.1:1\n", read_file(ports));
    Result failed = run({"-c", busy_conf, "-p", path("pid"), "--ports-file", ports}, {}, 20);
    EXPECT_EQ(1, failed.status) << failed.err;
    EXPECT_FALSE(file_exists(ports)) << read_file(ports);

    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    EXPECT_NE(0, d.port("l"));
    EXPECT_EQ(0, d.stop());
    EXPECT_FALSE(file_exists(d.ports_path)) << read_file(d.ports_path);
}

// A directory given as the configuration: the message said "Invalid argument".
TEST_F(DaemonTest, ADirectoryAsTheConfigurationSaysSo) {
    Result t = run({"-t", "-c", dir});
    EXPECT_EQ(1, t.status);
    EXPECT_TRUE(contains(t.err, dir + ": cannot read: Is a directory")) << t.err;
}

// What a reload cannot apply is named in a warning, not passed over, for
// as long as the file and the running daemon differ: each reload compares
// with what runs, not with the file the last reload read.
TEST_F(DaemonTest, AReloadWarnsOfTheChangesThatWaitForARestart) {
    std::string started = config(listener(""));
    std::string conf = write("evstreamd.conf", started);
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    write_file(conf, config(listener("reuseport = true;"),
                            "workers = 1;\nlimits = { shutdown_timeout = \"3s\"; max_connections = 7; };\n"
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf, 1));
    EXPECT_TRUE(contains(d.err(), "reload: changed workers, limits.max_connections, admin: "
                                  "applied at the next restart"))
        << d.err();
    EXPECT_TRUE(contains(d.err(), "reload: changed reuseport of 'l': applied at the next restart"))
        << d.err();
    EXPECT_EQ(2u, count_of(d.err(), "applied at the next restart")) << d.err();
    // Reloaded again, the same file still differs from what runs.
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf, 2));
    EXPECT_EQ(4u, count_of(d.err(), "applied at the next restart")) << d.err();
    // The file as the daemon started: nothing waits any more.
    write_file(conf, started);
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf, 3));
    EXPECT_EQ(4u, count_of(d.err(), "applied at the next restart")) << d.err();
}

// A listener on port 0, reloaded with the port it got, keeps its socket and
// its connections: binding that port again failed with EADDRINUSE against
// the daemon's own socket.
TEST_F(DaemonTest, AReloadNamingThePortAListenerGotKeepsItsSocket) {
    std::string conf = write("evstreamd.conf", config(listener("")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("l");
    ASSERT_NE(0, port);
    int old = connect_tcp(port);
    ASSERT_GE(old, 0);
    EXPECT_EQ("before", ask(old, "before"));

    write_file(conf, config(listener("", "127.0.0.1:" + std::to_string(port), "line_upper")));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_FALSE(contains(d.err(), "cannot listen")) << d.err();
    EXPECT_EQ(port, d.port("l"));
    int fresh = connect_tcp(port);
    ASSERT_GE(fresh, 0);
    EXPECT_EQ("AFTER", ask(fresh, "after"));
    EXPECT_EQ("still", ask(old, "still"));
    close(old);
    close(fresh);
}

// A reloaded listener goes on counting the connections its old generation
// still holds: with max_connections = 1 and one open from before the
// reload, a second waits until the first closes.
TEST_F(DaemonTest, AReloadedListenersMaxConnectionsCountsTheOldGenerationsConnections) {
    const std::string limit = "limits = { max_connections = 1; };";
    std::string conf = write("evstreamd.conf", config(listener(limit)));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("l");
    ASSERT_NE(0, port);
    int old = connect_tcp(port);
    ASSERT_GE(old, 0);
    EXPECT_EQ("before", ask(old, "before"));

    write_file(conf, config(listener(limit, "127.0.0.1:" + std::to_string(port))));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    int fresh = connect_tcp(port);
    ASSERT_GE(fresh, 0);
    ASSERT_TRUE(write_all(fresh, "after\n", 6));
    pollfd p = {fresh, POLLIN, 0};
    EXPECT_EQ(0, poll(&p, 1, 300)) << "served while the old connection held the one place";
    close(old);
    EXPECT_EQ("after", read_line(fresh));
    close(fresh);
}

// How many addresses "localhost" has here, for a listener bound to each.
static int localhost_addresses() {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo("localhost", "0", &hints, &res) != 0) return 0;
    int n = 0;
    for (addrinfo *ai = res; ai; ai = ai->ai_next) n++;
    freeaddrinfo(res);
    return n;
}

// Port 0 on a name of two addresses gets each its own port: a reload that
// names the first port cannot keep both sockets (it did, and served the
// second address on a port nobody named). It fails against the daemon's
// own socket, and the running listener serves on.
TEST_F(DaemonTest, AReloadNamingOnePortOfAPortZeroListenerOnTwoAddressesFails) {
    if (localhost_addresses() < 2) GTEST_SKIP() << "localhost has one address here";
    std::string conf = write("evstreamd.conf", config(listener("", "localhost:0")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("l");
    ASSERT_NE(0, port);

    write_file(conf, config(listener("", "localhost:" + std::to_string(port), "line_upper")));
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return contains(d.err(), "reload failed"); })) << d.err();
    EXPECT_TRUE(contains(d.err(), "Address already in use")) << d.err();
    EXPECT_FALSE(contains(d.err(), "reloaded " + conf)) << d.err();
    EXPECT_TRUE(d.running());
    EXPECT_EQ(port, d.port("l"));
}

// Taking over a port-0 listener's socket cannot give it reuseport (one
// socket, not one per worker): the reload says so, as it does when the
// address is unchanged.
TEST_F(DaemonTest, AReloadTakingOverAPortZeroSocketWarnsThatReuseportWaits) {
    std::string conf = write("evstreamd.conf", config(listener("")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t port = d.port("l");
    ASSERT_NE(0, port);

    write_file(conf, config(listener("reuseport = true;", "127.0.0.1:" + std::to_string(port))));
    ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf));
    EXPECT_TRUE(contains(d.err(), "changed reuseport of 'l': applied at the next restart"))
        << d.err();
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    EXPECT_EQ("kept", ask(fd, "kept"));
    close(fd);
}

// A replaced server is freed once its connections are gone; it held a TLS
// context with its session cache (about 20 KB). Leaked, 300 reloads grew
// the daemon by about 6 MB; the bound leaves room for allocator noise.
TEST_F(DaemonTest, ReloadsFreeTheReplacedServers) {
    REQUIRE_TOOL(openssl, "openssl", "openssl");
    Result r = finish(spawn({openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                             "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                             "/CN=localhost", "-keyout", path("server.key"), "-out",
                             path("server.pem")},
                            "", path("openssl.out"), path("openssl.err"), {}),
                      "openssl", 60, path("openssl.out"), path("openssl.err"));
    ASSERT_EQ(0, r.status) << r.err;
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"t\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
               "    tls = { certificate = \"" + path("server.pem") + "\"; key = \"" +
               path("server.key") + "\"; }; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    auto rss_kb = [&] {
        std::string st = read_file("/proc/" + std::to_string(d.pid) + "/status");
        size_t at = st.find("VmRSS:");
        return at == std::string::npos ? -1L : atol(st.c_str() + at + 6);
    };
    const size_t warmup = 50, reloads = 300;
    for (size_t i = 0; i < warmup; i++)
        ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf, i + 1));
    long before = rss_kb();
    ASSERT_GT(before, 0);
    for (size_t i = warmup; i < warmup + reloads; i++)
        ASSERT_NO_FATAL_FAILURE(reload_expecting_success(d, conf, i + 1));
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // A sanitizer's allocator holds freed memory back (ASan's quarantine):
    // RSS says nothing of leaks there. The reloads above still ran every
    // free under the sanitizer.
    return;
#endif
    long after = rss_kb();
    EXPECT_LT(after - before, 2048) << "RSS " << before << " kB -> " << after << " kB after "
                                    << reloads << " reloads";
    printf("[daemon_test] RSS %ld kB -> %ld kB after %zu reloads\n", before, after, reloads);
}

TEST_F(DaemonTest, SighupRemovingListenerStopsItsPortButNotItsConnections) {
    // Both on port 0: each must keep its own socket across the reload.
    std::string conf = write("evstreamd.conf",
                             config(upper_listener("first", "1:") + ",\n" +
                                    upper_listener("second", "2:") + ",\n" +
                                    upper_listener("third", "3:")));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    uint16_t p1 = d.port("first"), p2 = d.port("second"), p3 = d.port("third");
    int c1 = connect_tcp(p1), c2 = connect_tcp(p2);
    ASSERT_GE(c1, 0);
    ASSERT_GE(c2, 0);
    EXPECT_EQ("1:A", ask(c1, "a"));
    EXPECT_EQ("2:A", ask(c2, "a"));

    // Remove "first"; "second" and "third" stay, unchanged.
    write_file(conf, config(upper_listener("second", "2:") + ",\n" + upper_listener("third", "3:")));
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return d.ports().size() == 2; })) << d.err();
    EXPECT_EQ(p2, d.port("second")) << d.ports_text();
    EXPECT_EQ(p3, d.port("third")) << d.ports_text();

    // Its port stops accepting (bounded poll: the acceptor closes it).
    EXPECT_TRUE(eventually(10, [&] {
        int fd = connect_tcp(p1);
        if (fd < 0) return true;
        close(fd);
        return false;
    })) << "port " << p1 << " of the removed listener still accepts";
    // Its live connection goes on, and so does everything else.
    EXPECT_EQ("1:B", ask(c1, "b"));
    EXPECT_EQ("2:B", ask(c2, "b"));
    int n2 = connect_tcp(p2), n3 = connect_tcp(p3);
    ASSERT_GE(n2, 0);
    ASSERT_GE(n3, 0);
    EXPECT_EQ("2:C", ask(n2, "c"));
    EXPECT_EQ("3:C", ask(n3, "c"));
    close(c1);
    close(c2);
    close(n2);
    close(n3);
}

TEST_F(DaemonTest, Sigusr1ReopensTheLogFile) {
    std::string log = path("evstreamd.log");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "workers = 2;\nlog = { file = \"" + log + "\"; level = \"info\"; };\n"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    ASSERT_TRUE(eventually(10, [&] { return contains(read_file(log), "listening on"); }))
        << read_file(log);
    EXPECT_FALSE(contains(d.err(), "listening on")) << "the log went to stderr";

    std::string rotated = path("evstreamd.log.1");
    ASSERT_EQ(0, rename(log.c_str(), rotated.c_str()));
    d.signal(SIGUSR1);
    ASSERT_TRUE(eventually(10, [&] { return contains(read_file(log), "log files reopened"); }))
        << "no new log file after SIGUSR1";
    d.signal(SIGHUP);  // something that logs
    ASSERT_TRUE(eventually(10, [&] { return contains(read_file(log), "reloaded"); }))
        << read_file(log);
    std::string old_text = read_file(rotated);
    EXPECT_TRUE(contains(old_text, "listening on"));
    EXPECT_FALSE(contains(old_text, "reloaded")) << "lines still go to the renamed file";
    EXPECT_EQ(0, d.stop());
    EXPECT_TRUE(contains(read_file(log), "stopped"));
}

// A log file that could not be opened at the start (the log went to
// stderr) is tried again by SIGUSR1: once its directory exists, the log
// moves there. SIGUSR1 said "log files reopened" and left it on stderr.
TEST_F(DaemonTest, Sigusr1OpensALogFileTheStartCouldNotOpen) {
    std::string dir_of_log = path("logs"), log = dir_of_log + "/evstreamd.log";
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "log = { file = \"" + log + "\"; level = \"info\"; };\n"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    EXPECT_TRUE(contains(d.err(), "No such file or directory; logging to stderr")) << d.err();

    d.signal(SIGUSR1);  // still no directory: it says so, and logs on to stderr
    ASSERT_TRUE(eventually(10, [&] { return contains(d.err(), "cannot open the log " + log); }))
        << d.err();
    ASSERT_EQ(0, mkdir(dir_of_log.c_str(), 0700));
    d.signal(SIGUSR1);
    ASSERT_TRUE(eventually(10, [&] { return contains(read_file(log), "log files reopened"); }))
        << d.err();
    EXPECT_FALSE(contains(d.err(), "log files reopened")) << d.err();
    EXPECT_EQ(0, d.stop());
    EXPECT_TRUE(contains(read_file(log), "stopped"));
}

// --- pidfile, daemon mode --------------------------------------------------------------

TEST_F(DaemonTest, PidfileLocksOutASecondDaemon) {
    std::string pidfile = path("evstreamd.pid");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    Daemon &d = start(conf, {"-p", pidfile});
    ASSERT_TRUE(d.running());
    EXPECT_EQ(std::to_string(d.pid) + "\n", read_file(pidfile));

    Daemon &second = launch({"-c", conf, "-p", pidfile});
    EXPECT_EQ(1, second.wait(20));
    EXPECT_TRUE(contains(second.err(), "another evstreamd is running (pid " + std::to_string(d.pid)))
        << second.err();
    EXPECT_FALSE(file_exists(second.ports_path));
    // The first one is untouched.
    EXPECT_EQ(std::to_string(d.pid) + "\n", read_file(pidfile));
    int fd = connect_tcp(d.port("e"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("alive", ask(fd, "alive"));
    close(fd);

    EXPECT_EQ(0, d.stop());
    EXPECT_FALSE(file_exists(pidfile));
}

TEST_F(DaemonTest, StalePidfileIsReused) {
    std::string pidfile = path("evstreamd.pid");
    write_file(pidfile, "999999\n");  // left by a crash: nobody holds the lock
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    Daemon &d = start(conf, {"-p", pidfile});
    ASSERT_TRUE(d.running());
    EXPECT_EQ(std::to_string(d.pid) + "\n", read_file(pidfile));
    EXPECT_EQ(0, d.stop());
    EXPECT_FALSE(file_exists(pidfile));
}

// Run as `user`, evstreamd cannot remove a pidfile in a directory only
// root may write to: it empties it instead. It left its pid there, which
// soon names another process, and a logrotate postrotate signals it.
TEST_F(DaemonTest, APidfileTheUserCannotRemoveIsEmptiedAtTheStop) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string pidfile = path("evstreamd.pid");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "user = \"nobody\";\n"));
    Daemon &d = start(conf, {"-p", pidfile});
    ASSERT_TRUE(d.running());
    EXPECT_EQ(std::to_string(d.pid) + "\n", read_file(pidfile));
    EXPECT_EQ(0, d.stop());
    EXPECT_TRUE(file_exists(pidfile));
    EXPECT_EQ("", read_file(pidfile));
    EXPECT_TRUE(contains(d.err(), "cannot remove the pidfile")) << d.err();
}

TEST_F(DaemonTest, DaemonModeBackgroundsAndStopsByPidfile) {
    std::string pidfile = path("evstreamd.pid");
    std::string log = path("evstreamd.log");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "workers = 2;\nlog = { file = \"" + log + "\"; };\n"));
    // The background process is a grandchild: become its reaper so its exit
    // status can be read (and no zombie is left whatever PID 1 does).
    ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1));
    struct Unreaper {
        ~Unreaper() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
    } unreaper;

    // A relative pidfile names a file in the directory evstreamd started in,
    // not in "/" where the background process runs.
    char cwd[4096];
    ASSERT_NE(nullptr, getcwd(cwd, sizeof cwd));
    ASSERT_EQ(0, chdir(path("").c_str()));
    Daemon &parent = launch({"-d", "-c", conf, "-p", "evstreamd.pid"});
    ASSERT_EQ(0, chdir(cwd));
    // The parent exits 0 once the daemon serves, and not before.
    ASSERT_EQ(0, parent.wait(30)) << parent.err();
    ASSERT_TRUE(file_exists(parent.ports_path));
    std::string text = read_file(pidfile);
    pid_t bg = (pid_t)atol(text.c_str());
    ASSERT_GT(bg, 1) << text;
    EXPECT_NE(parent.pid, bg);
    // From here on the background daemon is ours to end.
    auto bgd = std::make_unique<Daemon>();
    bgd->pid = bg;
    bgd->err_path = log;
    Daemon &b = *bgd;
    daemons.push_back(std::move(bgd));

    EXPECT_EQ(0, kill(bg, 0));
    int fd = connect_tcp(parent.port("e"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("backgrounded", ask(fd, "backgrounded"));
    close(fd);

    ASSERT_EQ(0, kill(bg, SIGTERM));
    // The intermediate process of the double fork ends up here too; reap
    // it along with the daemon.
    bool gone = eventually(20, [&] {
        int st;
        pid_t r;
        while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
            if (r == bg) {
                b.raw_status = st;
                b.reaped = true;
            }
        }
        return b.reaped || (kill(bg, 0) < 0 && errno == ESRCH);
    });
    ASSERT_TRUE(gone) << "the background daemon did not stop";
    if (b.reaped) {
        EXPECT_EQ(0, b.wait(0)) << describe_status(b.raw_status);
    }
    b.reaped = true;
    EXPECT_FALSE(file_exists(pidfile));
    EXPECT_TRUE(contains(read_file(log), "stopped")) << read_file(log);
}

TEST_F(DaemonTest, DaemonModeReportsStartFailure) {
    std::string conf = write("evstreamd.conf",
                             config(listener("", "127.0.0.1:0", "failing_init"), "workers = 2;\n",
                                    plugin_entry("failing_init")));
    ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1));
    Daemon &parent = launch({"-d", "-c", conf});
    EXPECT_EQ(1, parent.wait(30));
    EXPECT_TRUE(contains(parent.err(), "failing_init refuses to start")) << parent.err();
    // Reap the background processes, which exit by themselves.
    eventually(10, [&] {
        while (waitpid(-1, nullptr, WNOHANG) > 0) {
        }
        return waitpid(-1, nullptr, WNOHANG) < 0 && errno == ECHILD;
    });
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

// --- Unix socket files ------------------------------------------------------------------

TEST_F(DaemonTest, StaleUnixSocketIsReplaced) {
    std::string sock = path("stale.sock");
    {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock.c_str());
        ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sun, sizeof sun));
        close(fd);  // the file stays, nobody listens: stale
    }
    ASSERT_TRUE(file_exists(sock));
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"u\"; listen = \"unix:" + sock +
                                    "\"; mode = \"0600\"; plugin = \"echo\"; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    EXPECT_EQ("u unix:" + sock + "\n", d.ports_text());
    int fd = connect_unix(sock);
    ASSERT_GE(fd, 0) << strerror(errno);
    EXPECT_EQ("fresh", ask(fd, "fresh"));
    close(fd);
    struct stat st;
    ASSERT_EQ(0, stat(sock.c_str(), &st));
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(0600u, st.st_mode & 07777);
}

TEST_F(DaemonTest, LiveUnixSocketIsNotStolen) {
    std::string sock = path("live.sock");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"u\"; listen = \"unix:" + sock + "\"; plugin = \"echo\"; }"));
    Daemon &first = start(conf);
    ASSERT_TRUE(first.running());
    Daemon &second = launch({"-c", conf});
    EXPECT_EQ(1, second.wait(20)) << second.err();
    EXPECT_TRUE(contains(second.err(), sock)) << second.err();
    // The first daemon still owns and serves the socket.
    int fd = connect_unix(sock);
    ASSERT_GE(fd, 0);
    EXPECT_EQ("first", ask(fd, "first"));
    close(fd);
    EXPECT_EQ(0, first.stop());
}

TEST_F(DaemonTest, RegularFileAtSocketPathIsRefusedAndKept) {
    std::string sock = path("not-a-socket");
    write_file(sock, "precious data\n");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"u\"; listen = \"unix:" + sock + "\"; plugin = \"echo\"; }"));
    Daemon &d = launch({"-c", conf});
    EXPECT_EQ(1, d.wait(20)) << d.err();
    EXPECT_TRUE(contains(d.err(), sock)) << d.err();
    EXPECT_EQ("precious data\n", read_file(sock));
}

// --- limits, logging --------------------------------------------------------------------------

TEST_F(DaemonTest, IdleTimeoutClosesIdleConnections) {
    std::string conf = write(
        "evstreamd.conf",
        config("  { name = \"idle\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
               "    limits = { idle_timeout = \"300ms\"; }; },\n"
               "  { name = \"patient\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    int fd = connect_tcp(d.port("idle"));
    int other = connect_tcp(d.port("patient"));
    ASSERT_GE(fd, 0);
    ASSERT_GE(other, 0);
    EXPECT_EQ("hello", ask(fd, "hello"));
    EXPECT_EQ("hello", ask(other, "hello"));
    auto t0 = Clock::now();
    EXPECT_EQ(0, wait_eof(fd, 10)) << "an idle connection was not closed within 10 s";
    double took = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_GE(took, 0.2) << "closed before it was idle for 300 ms";
    // The listener without the override keeps its connection (default 5m).
    EXPECT_EQ("still", ask(other, "still"));
    close(fd);
    close(other);
}

TEST_F(DaemonTest, LogsAndPortsFileGiveRealAddresses) {
    std::string sock = path("a.sock");
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"tcp\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; },\n"
                                    "  { listen = \"unix:" + sock + "\"; plugin = \"echo_protocol\"; }"));
    Daemon &d = start(conf);
    ASSERT_TRUE(d.running());
    auto ports = d.ports();
    ASSERT_EQ(2u, ports.size()) << d.ports_text();
    std::string tcp = ports["tcp"];
    uint16_t port = port_of(tcp);
    EXPECT_EQ("127.0.0.1:" + std::to_string(port), tcp);
    EXPECT_NE(0, port);
    // An unnamed listener is named by its address.
    EXPECT_EQ("unix:" + sock, ports["unix:" + sock]) << d.ports_text();
    EXPECT_TRUE(contains(d.out(), "listening on " + tcp + " (listener 'tcp', plugin 'echo')"))
        << d.out();
    EXPECT_TRUE(contains(d.err(), "listening on " + tcp + " (listener 'tcp', plugin 'echo')"))
        << d.err();
    EXPECT_TRUE(contains(d.err(), "listening on unix:" + sock)) << d.err();
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    EXPECT_EQ("real", ask(fd, "real"));
    close(fd);
    fd = connect_unix(sock);
    ASSERT_GE(fd, 0);
    EXPECT_EQ("real", ask(fd, "real"));
    close(fd);
    EXPECT_EQ(0, d.stop());
    EXPECT_TRUE(contains(d.err(), "stopped")) << d.err();
}

size_t thread_count(pid_t pid) {
    std::string dir = "/proc/" + std::to_string(pid) + "/task";
    size_t n = 0;
    if (DIR *d = opendir(dir.c_str())) {
        while (struct dirent *e = readdir(d))
            if (e->d_name[0] != '.') n++;
        closedir(d);
    }
    return n;
}

TEST_F(DaemonTest, WorkersAndLogLevelOptionsOverrideConfig) {
    std::string conf = write("evstreamd.conf",
                             config("  { name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                                    "workers = 4;\n"));
    Daemon &four = start(conf);
    ASSERT_TRUE(four.running());
    Daemon &one = start(conf, {"-w", "1", "-l", "error"});
    ASSERT_TRUE(one.running());
    // Same process otherwise: the difference is three worker threads.
    size_t t4 = thread_count(four.pid), t1 = thread_count(one.pid);
    EXPECT_GT(t1, 1u);
    EXPECT_EQ(t4, t1 + 3) << "threads with workers = 4: " << t4 << ", with -w 1: " << t1;
    int fd = connect_tcp(one.port("e"));
    ASSERT_GE(fd, 0);
    EXPECT_EQ("w", ask(fd, "w"));
    close(fd);
    EXPECT_EQ(0, one.stop());
    EXPECT_EQ(0, four.stop());
    // -l error: no info lines in the log (the listening lines still go to stdout).
    EXPECT_TRUE(contains(four.err(), "listening on")) << four.err();
    EXPECT_FALSE(contains(one.err(), "listening on")) << one.err();
    EXPECT_FALSE(contains(one.err(), "stopped")) << one.err();
    EXPECT_TRUE(contains(one.out(), "listening on")) << one.out();
}

}  // namespace
