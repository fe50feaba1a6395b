// Operations: the admin listener (/metrics in Prometheus text format, checked
// strictly, and /status as JSON, scraped with curl), access logs and their
// reopening, sd_notify messages and socket activation, all against the real
// evstreamd started as a process (ended by its PID).
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "build-config.h"
#include "helpers.h"
#include "process.h"

using namespace evs_test;

namespace {

// The daemon as a child process, with its stdout and stderr in one file.
struct Daemon {
    pid_t pid = -1;
    std::string dir, ports, log;
    std::map<std::string, std::string> addresses;

    // @env: "NAME=value" strings. @inherit: sockets to pass as fds 3, 4, ...
    // with LISTEN_FDS (socket activation), named by @fdnames (LISTEN_FDNAMES,
    // colon-separated) when not empty.
    Daemon(const std::string &dir_, const std::string &conf, std::vector<std::string> env = {},
           std::vector<int> inherit = {}, const std::string &fdnames = "")
        : dir(dir_), ports(dir_ + "/ports"), log(dir_ + "/daemon.out") {
        std::string confpath = dir + "/evstreamd.conf";
        write_file(confpath, conf);
        unlink(ports.c_str());
        Env changes = {{"EVSTREAMD_PLUGIN_DIR", plugin_dir()}};
        for (auto &e : env) {
            size_t eq = e.find('=');
            changes.emplace_back(e.substr(0, eq), e.substr(eq + 1));
        }
        if (!fdnames.empty()) changes.emplace_back("LISTEN_FDNAMES", fdnames);
        pid = spawn({daemon_path(), "-c", confpath, "--ports-file", ports, "-l", "info"}, "", log,
                    log, changes, inherit);
    }
    bool ready() {
        bool ok = eventually(20, [&] { return access(ports.c_str(), R_OK) == 0; });
        std::istringstream in(read_file(ports));
        std::string name, addr;
        while (in >> name >> addr) addresses[name] = addr;
        return ok;
    }
    uint16_t port(const std::string &name) { return port_of(addresses[name]); }
    void signal(int sig) { kill(pid, sig); }
    // @return the exit status, -1 when it had to be killed.
    int stop() {
        int st = -1;
        if (pid <= 0) return st;
        kill(pid, SIGTERM);
        if (!wait_exit(pid, 30, &st)) {
            end_child(pid, nullptr);
            st = -1;
        }
        pid = -1;
        return st;
    }
    ~Daemon() { stop(); }
};

// evstreamd run to its end on @conf with @args before "-c" ("-t": check
// only), its stdout and stderr together in @out; bounded by finish().
Result run_daemon(const std::string &conf, const std::vector<std::string> &args) {
    std::vector<std::string> argv = {daemon_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("-c");
    argv.push_back(conf);
    std::string out = conf + ".out";
    pid_t pid = spawn(argv, "", out, out, {{"EVSTREAMD_PLUGIN_DIR", plugin_dir()}});
    return finish(pid, "evstreamd", 30, out, out);
}

std::string base_conf(const std::string &listeners, const std::string &extra = "") {
    return std::string("workers = 2;\n") + (geteuid() == 0 ? "allow_root = true;\n" : "") + extra +
           "plugins = ( { name = \"echo\"; path = \"echo.so\"; } );\n"
           "listeners = (\n" +
           listeners + "\n);\n";
}

// curl's output for a URL (empty when curl is missing or fails).
std::string curl(const std::string &url, int *code = nullptr) {
    std::string cmd = "timeout 20 curl -s -w '\\n%{http_code}' '" + url + "' 2>/dev/null";
    FILE *p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while (p && (n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    if (p) pclose(p);
    size_t nl = out.rfind('\n');
    if (code) *code = nl == std::string::npos ? 0 : atoi(out.c_str() + nl + 1);
    return nl == std::string::npos ? out : out.substr(0, nl);
}

bool have_curl() { return system("command -v curl >/dev/null 2>&1") == 0; }

void echo_once(uint16_t port, const std::string &msg) {
    int fd = connect_tcp(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, msg.data(), msg.size()));
    std::string back(msg.size(), '\0');
    ASSERT_TRUE(read_exact(fd, &back[0], back.size()));
    EXPECT_EQ(msg, back);
    close(fd);
}

// Strict checks of the Prometheus text exposition format (version 0.0.4):
// every sample belongs to a family declared by HELP and TYPE before it,
// names and labels are well formed, values are numbers, counters end in
// _total, no family is declared twice.
std::string prometheus_errors(const std::string &text, std::map<std::string, double> *samples) {
    static const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
    static const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
    static const std::regex sample(
        R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)$)");
    std::map<std::string, std::string> types;
    std::set<std::string> helped, seen;
    std::istringstream in(text);
    std::string line, errors;
    int n = 0;
    if (text.empty() || text.back() != '\n') errors += "does not end with a newline\n";
    while (std::getline(in, line)) {
        n++;
        std::smatch m;
        if (std::regex_match(line, m, help)) {
            if (!helped.insert(m[1]).second) errors += "line " + std::to_string(n) + ": HELP twice\n";
        } else if (std::regex_match(line, m, type)) {
            if (types.count(m[1])) errors += "line " + std::to_string(n) + ": TYPE twice\n";
            types[m[1]] = m[2];
            if (m[2] == "counter" && !std::regex_search(std::string(m[1]), std::regex("_total$")))
                errors += "line " + std::to_string(n) + ": counter without _total\n";
        } else if (std::regex_match(line, m, sample)) {
            std::string name = m[1];
            if (!types.count(name) || !helped.count(name))
                errors += "line " + std::to_string(n) + ": sample before its HELP/TYPE: " + name + "\n";
            std::string key = name + std::string(m[2]);
            if (!seen.insert(key).second) errors += "line " + std::to_string(n) + ": duplicate sample\n";
            (*samples)[key] = atof(std::string(m[7]).c_str());
        } else {
            errors += "line " + std::to_string(n) + ": not valid: " + line + "\n";
        }
    }
    return errors;
}

// A small strict JSON validator (RFC 8259 grammar).
struct Json {
    const char *p;
    void ws() { while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++; }
    bool lit(const char *s) {
        size_t n = strlen(s);
        if (strncmp(p, s, n)) return false;
        p += n;
        return true;
    }
    bool str() {
        if (*p++ != '"') return false;
        while (*p && *p != '"') {
            if ((unsigned char)*p < 0x20) return false;
            if (*p == '\\') {
                p++;
                if (*p == 'u') {
                    for (int i = 1; i <= 4; i++) if (!isxdigit((unsigned char)p[i])) return false;
                    p += 5;
                    continue;
                }
                if (!strchr("\"\\/bfnrt", *p)) return false;
            }
            p++;
        }
        return *p++ == '"';
    }
    bool num() {
        const char *s = p;
        if (*p == '-') p++;
        if (*p == '0') p++;
        else if (isdigit((unsigned char)*p)) while (isdigit((unsigned char)*p)) p++;
        else return false;
        if (*p == '.') { p++; if (!isdigit((unsigned char)*p)) return false; while (isdigit((unsigned char)*p)) p++; }
        if (*p == 'e' || *p == 'E') { p++; if (*p == '+' || *p == '-') p++; if (!isdigit((unsigned char)*p)) return false; while (isdigit((unsigned char)*p)) p++; }
        return p > s;
    }
    bool value() {
        ws();
        bool ok;
        if (*p == '{') {
            p++; ws();
            if (*p == '}') { p++; return true; }
            do { ws(); if (!str()) return false; ws(); if (*p++ != ':') return false; if (!value()) return false; ws(); } while (*p == ',' && p++);
            ok = *p++ == '}';
        } else if (*p == '[') {
            p++; ws();
            if (*p == ']') { p++; return true; }
            do { if (!value()) return false; ws(); } while (*p == ',' && p++);
            ok = *p++ == ']';
        } else if (*p == '"') ok = str();
        else ok = lit("true") || lit("false") || lit("null") || num();
        ws();
        return ok;
    }
    static bool valid(const std::string &s) {
        Json j{s.c_str()};
        return j.value() && *j.p == '\0';
    }
};

}  // namespace

TEST(Ops, MetricsArePrometheusTextAndCountConnections) {
    if (!have_curl()) GTEST_SKIP() << "curl is not installed";
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    for (int i = 0; i < 3; i++) echo_once(d.port("plain"), "hello " + std::to_string(i));
    std::string base = "http://127.0.0.1:" + std::to_string(d.port("admin"));
    std::map<std::string, double> samples;
    ASSERT_TRUE(eventually(10, [&] {
        samples.clear();
        std::string text = curl(base + "/metrics");
        std::string errors = prometheus_errors(text, &samples);
        EXPECT_EQ("", errors) << text;
        return samples["evstream_listener_connections_closed_total{listener=\"plain\"}"] == 3;
    }));
    EXPECT_EQ(3, samples["evstream_listener_connections_accepted_total{listener=\"plain\"}"]);
    EXPECT_EQ(0, samples["evstream_listener_connections_active{listener=\"plain\"}"]);
    EXPECT_EQ(3 * 7, samples["evstream_listener_received_bytes_total{listener=\"plain\"}"]);
    EXPECT_EQ(3 * 7, samples["evstream_listener_sent_bytes_total{listener=\"plain\"}"]);
    EXPECT_EQ(1, samples["evstream_build_info{version=\"" + std::string(evs_version()) + "\"}"]);
    EXPECT_TRUE(samples.count("evstream_worker_loop_lag_seconds{worker=\"1\"}"));
    EXPECT_TRUE(samples.count("evstream_worker_connections_active{worker=\"0\"}"));

    int code = 0;
    std::string status = curl(base + "/status", &code);
    EXPECT_EQ(200, code);
    EXPECT_TRUE(Json::valid(status)) << status;
    EXPECT_NE(std::string::npos, status.find("\"name\":\"plain\"")) << status;
    EXPECT_NE(std::string::npos, status.find("\"accepted\":3")) << status;
    curl(base + "/nope", &code);
    EXPECT_EQ(404, code);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// The admin listener's HTTP: a scraper's query string is ignored, other
// methods get 405 with Allow, unknown or overlong targets 404, a malformed
// line 400, and headers past 8 KiB in all 431.
TEST(Ops, AdminAnswersEveryRequestWithTheRightStatus) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    auto ask = [&](const std::string &request) {
        int fd = connect_tcp(d.port("admin"));
        EXPECT_GE(fd, 0);
        EXPECT_TRUE(write_all(fd, request.data(), request.size()));
        set_timeouts(fd, 10);
        std::string answer = read_to_eof(fd);
        close(fd);
        return answer;
    };
    auto status_of = [](const std::string &answer) { return answer.substr(0, answer.find("\r\n")); };
    std::string ok = ask("GET /metrics?name[]=evstream_uptime_seconds HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ("HTTP/1.1 200 OK", status_of(ok));
    EXPECT_NE(std::string::npos, ok.find("evstream_uptime_seconds ")) << ok;
    std::string head = ask("HEAD /status HTTP/1.0\r\n\r\n");
    EXPECT_EQ("HTTP/1.1 200 OK", status_of(head));
    EXPECT_EQ(head.size(), head.find("\r\n\r\n") + 4) << "HEAD has no body";
    std::string post = ask("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ("HTTP/1.1 405 Method Not Allowed", status_of(post));
    EXPECT_NE(std::string::npos, post.find("\r\nAllow: GET, HEAD\r\n")) << post;
    EXPECT_EQ("HTTP/1.1 404 Not Found", status_of(ask("GET /nope HTTP/1.1\r\n\r\n")));
    EXPECT_EQ("HTTP/1.1 404 Not Found",
              status_of(ask("GET /" + std::string(300, 'a') + " HTTP/1.1\r\n\r\n")));
    // A bad request line is answered at once: send nothing after it, so
    // that no unread byte turns the close into a reset.
    EXPECT_EQ("HTTP/1.1 400 Bad Request", status_of(ask("HELLO\r\n")));
    EXPECT_EQ("HTTP/1.1 400 Bad Request", status_of(ask("GET /metrics HTTP/2.0\r\n")));
    // Short headers, many of them: the one that takes the head past 8 KiB
    // is the last sent, so nothing is left unread (no reset) when it ends.
    std::string many = "GET /metrics HTTP/1.1\r\n";
    for (int i = 0; many.size() <= 8192; i++) many += "X-Filler-" + std::to_string(i) + ": 0123456789\r\n";
    EXPECT_EQ("HTTP/1.1 431 Request Header Fields Too Large", status_of(ask(many)));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// A client that sends a header line every few seconds is cut off when its
// connection's time is up (10 s): a bound per read let 64 of them hold
// every admin slot for hours, and /metrics went unanswered.
TEST(Ops, ASlowAdminClientIsCutOff) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    int fd = connect_tcp(d.port("admin"));
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, "GET /metrics HTTP/1.1\r\n", 23));
    // A line every 2 s, for at most 40 s (the watchdog): the old bound
    // (10 s per read) never ran out.
    bool cut = false;
    for (int i = 0; i < 20 && !cut; i++) {
        struct pollfd p = {fd, POLLIN, 0};
        cut = poll(&p, 1, 2000) > 0;
        if (!cut) {
            ASSERT_TRUE(write_all(fd, "X-Slow: 1\r\n", 11));
        }
    }
    EXPECT_TRUE(cut) << "still open after 40 s";
    set_timeouts(fd, 10);
    EXPECT_EQ("", read_to_eof(fd));
    close(fd);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// One client cannot take the admin listener's 64 slots: 8 per address,
// and a connection that says nothing is closed after 2 s (it held its slot
// for the whole 10 s, and 64 of them every 10 s kept /metrics from ever
// being answered).
TEST(Ops, OneAdminClientCannotTakeEverySlot) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    const std::string req = "GET /status HTTP/1.0\r\n\r\n";
    auto status = [&]() {
        int fd = connect_tcp(d.port("admin"));
        if (fd < 0) return std::string("<no connection>");
        std::string got = write_all(fd, req.data(), req.size()) ? "" : "<write error>";
        set_timeouts(fd, 10);
        got += read_to_eof(fd);
        close(fd);
        return got.substr(0, got.find('\r'));
    };
    // Eight slow clients, each with half a request: they have sent a byte,
    // so only the 10 s lifetime ends them, and the ninth is the one refused.
    std::vector<int> slow;
    for (int i = 0; i < 8; i++) {
        int fd = connect_tcp(d.port("admin"));
        ASSERT_GE(fd, 0);
        ASSERT_TRUE(write_all(fd, "GET /status HTTP/1.0\r\n", 22));
        slow.push_back(fd);
    }
    EXPECT_EQ("", status()) << "a ninth connection from one address was served";
    for (int fd : slow) close(fd);
    // Their slots come back once the daemon sees them go.
    EXPECT_TRUE(eventually(10, [&] { return status() == "HTTP/1.1 200 OK"; }));
    // One that says nothing is closed at 2 s, well before the 10 s lifetime.
    int silent = connect_tcp(d.port("admin"));
    ASSERT_GE(silent, 0);
    struct pollfd p = {silent, POLLIN, 0};
    EXPECT_EQ(1, poll(&p, 1, 8000)) << "a silent admin connection was kept past 8 s";
    set_timeouts(silent, 10);
    EXPECT_EQ("", read_to_eof(silent));
    close(silent);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// Connections refused before their handler ran are counted by reason, in
// /metrics and in /status.
TEST(Ops, MetricsCountRejectionsByReason) {
    if (!have_curl()) GTEST_SKIP() << "curl is not installed";
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"limited\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                            "  limits = { max_connections_per_ip = 1; }; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    int first = connect_tcp(d.port("limited"));
    ASSERT_TRUE(write_all(first, "x", 1));
    char c;
    ASSERT_TRUE(read_exact(first, &c, 1));  // served, and held open
    for (int i = 0; i < 2; i++) {
        int extra = connect_tcp(d.port("limited"));
        read_to_eof(extra);  // refused: over the per-address limit
        close(extra);
    }
    std::string base = "http://127.0.0.1:" + std::to_string(d.port("admin"));
    const std::string per_ip = "evstream_listener_connections_rejected_total{listener=\"limited\",reason=\"per_ip_limit\"}";
    std::map<std::string, double> samples;
    ASSERT_TRUE(eventually(10, [&] {
        samples.clear();
        std::string text = curl(base + "/metrics");
        EXPECT_EQ("", prometheus_errors(text, &samples)) << text;
        return samples[per_ip] == 2;
    })) << samples[per_ip];
    for (const char *reason : {"tls_handshake", "proxy_protocol", "rate_limit"})
        EXPECT_EQ(0, samples.at("evstream_listener_connections_rejected_total{listener=\"limited\",reason=\"" +
                                std::string(reason) + "\"}"))
            << reason;
    std::string status = curl(base + "/status");
    EXPECT_TRUE(Json::valid(status)) << status;
    EXPECT_NE(std::string::npos, status.find("\"rejected_per_ip\":2")) << status;
    close(first);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// A reload keeps a listener's counts: connections it leaves running stay in
// the active gauge and their closes are counted; the counters go on from
// where they were. /metrics and /status showed the new generation only.
TEST(Ops, MetricsCarryOnAcrossAReload) {
    if (!have_curl()) GTEST_SKIP() << "curl is not installed";
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    std::string base = "http://127.0.0.1:" + std::to_string(d.port("admin"));
    std::map<std::string, double> samples;
    auto metrics_reach = [&](double accepted, double active, double closed) {
        return eventually(10, [&] {
            samples.clear();
            std::string text = curl(base + "/metrics");
            EXPECT_EQ("", prometheus_errors(text, &samples)) << text;
            return samples["evstream_listener_connections_accepted_total{listener=\"e\"}"] == accepted &&
                   samples["evstream_listener_connections_active{listener=\"e\"}"] == active &&
                   samples["evstream_listener_connections_closed_total{listener=\"e\"}"] == closed;
        });
    };
    auto reloads = [&](size_t n) {
        return eventually(10, [&] {
            std::string log = read_file(d.log);
            size_t k = 0;
            for (size_t at = log.find("reloaded "); at != std::string::npos; at = log.find("reloaded ", at + 1)) k++;
            return k == n;
        });
    };
    echo_once(d.port("e"), "closed before");
    int old_conn = connect_tcp(d.port("e"));
    ASSERT_TRUE(write_all(old_conn, "x", 1));
    char c;
    ASSERT_TRUE(read_exact(old_conn, &c, 1));  // served, and held open
    ASSERT_TRUE(metrics_reach(2, 1, 1));
    // Scraped all through the reload, the counter never falls.
    d.signal(SIGHUP);
    const std::string accepted = "evstream_listener_connections_accepted_total{listener=\"e\"}";
    for (int i = 0, after = 0; i < 200 && after < 5; i++) {
        std::map<std::string, double> now;
        prometheus_errors(curl(base + "/metrics"), &now);
        if (now.count(accepted)) {
            EXPECT_LE(2, now[accepted]) << "scrape " << i;
        }
        if (read_file(d.log).find("reloaded ") != std::string::npos) after++;
    }
    ASSERT_TRUE(reloads(1)) << read_file(d.log);
    EXPECT_TRUE(metrics_reach(2, 1, 1)) << samples["evstream_listener_connections_active{listener=\"e\"}"];
    echo_once(d.port("e"), "new generation");
    EXPECT_TRUE(metrics_reach(3, 1, 2));
    std::string status = curl(base + "/status");
    EXPECT_NE(std::string::npos, status.find("\"accepted\":3,\"active\":1,\"closed\":2")) << status;
    close(old_conn);  // the old generation's last connection: its server is freed
    EXPECT_TRUE(metrics_reach(3, 0, 3));
    EXPECT_EQ(13 + 1 + 14, samples["evstream_listener_received_bytes_total{listener=\"e\"}"]);
    d.signal(SIGHUP);
    ASSERT_TRUE(reloads(2)) << read_file(d.log);
    EXPECT_TRUE(metrics_reach(3, 0, 3));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// The admin listener is outside limits.max_connections: it takes none of the
// listeners' slots, and answers while they are full with clients queued.
TEST(Ops, AdminAnswersWhileTheListenersAreAtMaxConnections) {
    if (!have_curl()) GTEST_SKIP() << "curl is not installed";
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "limits = { max_connections = 5; };\n"
                            "admin = { listen = \"127.0.0.1:0\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    // An admin connection held open in the middle of its request: whether
    // it is accepted before the clients below or after them, it must
    // neither take one of their five slots nor wait for one.
    int held = connect_tcp(d.port("admin"));
    ASSERT_GE(held, 0);
    const std::string line = "GET /status HTTP/1.1\r\n";
    ASSERT_TRUE(write_all(held, line.data(), line.size()));
    std::vector<int> clients;
    for (int i = 0; i < 10; i++) {
        int fd = connect_tcp(d.port("plain"));
        ASSERT_GE(fd, 0);
        clients.push_back(fd);
        char c = 'a' + i;
        ASSERT_TRUE(write_all(fd, &c, 1));
        if (i < 5) {  // served: five slots are theirs
            ASSERT_TRUE(read_exact(fd, &c, 1)) << "client " << i;
            EXPECT_EQ('a' + i, c);
        }
    }
    ASSERT_TRUE(eventually(10, [&] {
        return contains(read_file(d.log), "max_connections (5) reached");
    })) << read_file(d.log);
    std::string base = "http://127.0.0.1:" + std::to_string(d.port("admin"));
    int code = 0;
    std::string status = curl(base + "/status", &code);
    EXPECT_EQ(200, code);
    EXPECT_TRUE(Json::valid(status)) << status;
    EXPECT_NE(std::string::npos, status.find("\"active\":5")) << status;
    ASSERT_TRUE(write_all(held, "\r\n", 2));
    set_timeouts(held, 10);
    std::string answer = read_to_eof(held);
    EXPECT_EQ(0u, answer.rfind("HTTP/1.1 200 OK\r\n", 0)) << answer;
    close(held);
    // The global limit still holds for the listener: a queued client is
    // served once a served one leaves.
    close(clients[0]);
    char c;
    EXPECT_TRUE(read_exact(clients[5], &c, 1));
    EXPECT_EQ('f', c);
    for (int fd : clients) close(fd);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// Reaching limits.max_connections is logged at most once a second: 20
// clients connecting, sending and closing in a loop reach and leave the
// limit thousands of times a second (that was a line each).
TEST(Ops, MaxConnectionsPausesAreLoggedAtMostOnceASecond) {
    std::string dir = make_temp_dir();
    auto start = std::chrono::steady_clock::now();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "limits = { max_connections = 2; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    const std::string reached = "max_connections (2) reached";
    // The first pause is logged at once.
    int held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = connect_tcp(d.port("plain"));
        ASSERT_GE(held[i], 0);
    }
    ASSERT_TRUE(eventually(10, [&] { return contains(read_file(d.log), reached); }))
        << read_file(d.log);
    for (int fd : held) close(fd);
    std::vector<std::thread> churn;
    for (int t = 0; t < 20; t++)
        churn.emplace_back([&] {
            auto end = std::chrono::steady_clock::now() + std::chrono::seconds(3);
            while (std::chrono::steady_clock::now() < end) {
                int fd = connect_tcp(d.port("plain"));
                if (fd < 0) continue;
                write_all(fd, "x", 1);
                close(fd);
            }
        });
    for (auto &t : churn) t.join();
    // A line logged after the clients stopped would still be within the bound.
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    std::string log = read_file(d.log);
    size_t lines = count_of(log, reached);
    EXPECT_GE(lines, 1u);
    EXPECT_LE(lines, (size_t)secs + 2) << "in " << secs << "s:\n" << log.substr(0, 4000);
    remove_dir(dir);
}

// SIGTERM with connections that outlive shutdown_timeout: one warning says
// how many were aborted after how long; the runtime, told to abort at once,
// adds no line claiming a wait of 0.0s.
TEST(Ops, ShutdownLogsTheAbortedConnectionsOnce) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"plain\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "limits = { shutdown_timeout = \"1s\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    std::vector<int> clients;
    for (int i = 0; i < 3; i++) {
        int fd = connect_tcp(d.port("plain"));
        ASSERT_GE(fd, 0);
        clients.push_back(fd);
        char c = 'x';
        ASSERT_TRUE(write_all(fd, &c, 1));
        ASSERT_TRUE(read_exact(fd, &c, 1));  // served, and held open
    }
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    std::string log = read_file(d.log);
    EXPECT_EQ(1u, count_of(log, "shutdown: aborting 3 connections still open after 1.0s")) << log;
    EXPECT_EQ(0u, count_of(log, "stopping: aborting")) << log;
    for (int fd : clients) EXPECT_EQ("", read_to_eof(fd));  // aborted
    for (int fd : clients) close(fd);
    remove_dir(dir);
}

TEST(Ops, AccessLogHasALinePerConnectionAndReopensOnSIGUSR1) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"logged\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                            "  access_log = { file = \"access.log\";\n"
                            "    format = \"$peer $listener $bytes_in/$bytes_out $tls_version $reason w$worker\"; }; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    std::string logfile = dir + "/access.log";
    echo_once(d.port("logged"), "12345");
    ASSERT_TRUE(eventually(10, [&] { return read_file(logfile).find('\n') != std::string::npos; }));
    std::string first = read_file(logfile);
    EXPECT_TRUE(std::regex_match(first, std::regex(R"(127\.0\.0\.1:[0-9]+ logged 5/5 - closed w[01]\n)"))) << first;

    // Rotation: move the file away, SIGUSR1, and the next line goes to a new file.
    ASSERT_EQ(0, rename(logfile.c_str(), (logfile + ".1").c_str()));
    d.signal(SIGUSR1);
    ASSERT_TRUE(eventually(10, [&] { return access(logfile.c_str(), F_OK) == 0; }));
    echo_once(d.port("logged"), "abc");
    ASSERT_TRUE(eventually(10, [&] { return read_file(logfile).find(" 3/3 ") != std::string::npos; }));
    EXPECT_EQ(first, read_file(logfile + ".1"));

    // A path that cannot be opened any more: the failure names the file,
    // and the lines go on to the old one.
    ASSERT_EQ(0, rename(logfile.c_str(), (logfile + ".2").c_str()));
    ASSERT_EQ(0, mkdir(logfile.c_str(), 0755));
    d.signal(SIGUSR1);
    ASSERT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("cannot reopen the access log " + logfile + ": Is a directory") !=
               std::string::npos;
    })) << read_file(d.log);
    echo_once(d.port("logged"), "wxyz");
    ASSERT_TRUE(eventually(10, [&] { return read_file(logfile + ".2").find(" 4/4 ") != std::string::npos; }));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    rmdir(logfile.c_str());
    remove_dir(dir);
}

// A log that cannot be reopened (its directory removed) says so on stderr
// too: the error went only to the old file, which nobody could see.
TEST(Ops, ALogThatCannotBeReopenedSaysSoOnStderr) {
    std::string dir = make_temp_dir();
    std::string sub = dir + "/logs", logfile = sub + "/main.log";
    ASSERT_EQ(0, mkdir(sub.c_str(), 0755));
    Daemon d(dir, base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                            "log = { file = \"" + logfile + "\"; level = \"info\"; };\n"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    ASSERT_EQ(0, unlink(logfile.c_str()));
    ASSERT_EQ(0, rmdir(sub.c_str()));
    d.signal(SIGUSR1);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("evstreamd: cannot reopen the log " + logfile +
                                     ": No such file or directory") != std::string::npos;
    })) << read_file(d.log);
    echo_once(d.port("e"), "still served");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// A Unix client names its own address: a newline in it must not forge a
// line of the access log, nor spaces shift its fields.
TEST(Ops, AccessLogEscapesThePeerAddress) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"u\"; listen = \"unix:" + dir + "/u.sock\"; plugin = \"echo\";\n"
                            "  access_log = { file = \"access.log\"; format = \"$peer $listener $reason\"; }; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    std::string self = dir + "/c\nforged 1.2.3.4";
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un me{}, srv{};
    me.sun_family = srv.sun_family = AF_UNIX;
    snprintf(me.sun_path, sizeof me.sun_path, "%s", self.c_str());
    snprintf(srv.sun_path, sizeof srv.sun_path, "%s/u.sock", dir.c_str());
    ASSERT_EQ(0, bind(fd, (sockaddr *)&me, sizeof me));
    ASSERT_EQ(0, connect(fd, (sockaddr *)&srv, sizeof srv));
    ASSERT_TRUE(write_all(fd, "x\n", 2));
    char back[2];
    ASSERT_TRUE(read_exact(fd, back, 2));
    close(fd);
    unlink(self.c_str());
    std::string logfile = dir + "/access.log";
    ASSERT_TRUE(eventually(10, [&] { return read_file(logfile).find('\n') != std::string::npos; }));
    EXPECT_EQ("unix:" + dir + "/c\\x0aforged\\x201.2.3.4 u closed\n", read_file(logfile));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// A write cut short (a full disk) leaves part of a line without its
// newline; the next line starts on a line of its own. It was glued to the
// cut one. A file size limit on the daemon plays the full disk.
TEST(Ops, AccessLogLineCutShortDoesNotGlueTheNext) {
    std::string dir = make_temp_dir();
    std::string logfile = dir + "/access.log";
    struct sigaction ign{}, old{};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &ign, &old);  // inherited: a write past the limit is cut, not fatal
    Daemon d(dir, base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                            "  access_log = { file = \"access.log\"; format = \"$listener $reason\"; }; }"));
    sigaction(SIGXFSZ, &old, nullptr);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    auto size_is = [&](size_t n) { return eventually(10, [&] { return read_file(logfile).size() == n; }); };
    echo_once(d.port("e"), "one");
    ASSERT_TRUE(size_is(9)) << read_file(logfile);
    struct rlimit lim{};
    ASSERT_EQ(0, prlimit(d.pid, RLIMIT_FSIZE, nullptr, &lim));
    struct rlimit tight = lim;
    tight.rlim_cur = 13;  // room for "e cl" only
    ASSERT_EQ(0, prlimit(d.pid, RLIMIT_FSIZE, &tight, nullptr));
    echo_once(d.port("e"), "two");
    ASSERT_TRUE(size_is(13)) << read_file(logfile);
    ASSERT_EQ(0, prlimit(d.pid, RLIMIT_FSIZE, &lim, nullptr));
    echo_once(d.port("e"), "three");
    ASSERT_TRUE(eventually(10, [&] { return read_file(logfile).size() > 13; }));
    EXPECT_TRUE(eventually(10, [&] { return read_file(logfile) == "e closed\ne cl\ne closed\n"; }))
        << read_file(logfile);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

TEST(Ops, AccessLogFormatErrorsNameTheLine) {
    std::string dir = make_temp_dir();
    std::string conf = dir + "/bad.conf";
    write_file(conf, base_conf("{ listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                               "  access_log = { file = \"a.log\"; format = \"$peer $bogus\"; }; }"));
    Result r = run_daemon(conf, {"-t"});
    const std::string &out = r.out;
    EXPECT_EQ(1, r.status);
    // The line of the format setting in the file as written.
    std::string text = read_file(conf);
    int line = 1 + (int)std::count(text.begin(), text.begin() + (long)text.find("$bogus"), '\n');
    EXPECT_NE(std::string::npos,
              out.find(conf + ":" + std::to_string(line) + ": listeners[0].access_log.format"))
        << out;
    EXPECT_NE(std::string::npos, out.find("unknown variable")) << out;
    remove_dir(dir);
}

#ifdef HAVE_LIBSYSTEMD
TEST(Ops, NotifiesReadyReloadingAndStopping) {
    std::string dir = make_temp_dir();
    std::string sockpath = dir + "/notify";
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sockpath.c_str());
    ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sun, sizeof sun));
    set_timeouts(fd, 20);
    auto next = [&]() {
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        return n > 0 ? std::string(buf, (size_t)n) : std::string();
    };
    Daemon d(dir, base_conf("{ listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"),
             {"NOTIFY_SOCKET=" + sockpath});
    std::string m = next();
    EXPECT_NE(std::string::npos, m.find("READY=1")) << m;
    EXPECT_NE(std::string::npos, m.find("STATUS=serving")) << m;
    ASSERT_TRUE(d.ready());
    d.signal(SIGHUP);
    m = next();
    EXPECT_NE(std::string::npos, m.find("RELOADING=1")) << m;
    EXPECT_NE(std::string::npos, m.find("MONOTONIC_USEC=")) << m;
    m = next();
    EXPECT_NE(std::string::npos, m.find("READY=1")) << m;
    d.signal(SIGTERM);
    m = next();
    EXPECT_NE(std::string::npos, m.find("STOPPING=1")) << m;
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    close(fd);
    remove_dir(dir);
}
#endif

namespace {

// A socket of @type bound to 127.0.0.1:@port (0: any port), as systemd's
// .socket unit would pass it: a stream socket listens. A failure is a test
// failure unless @may_fail (then -errno).
int bound_socket(int type, uint16_t *port, bool may_fail = false) {
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(*port);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        (type == SOCK_STREAM && listen(fd, 16) < 0) ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        int err = errno;
        if (!may_fail) ADD_FAILURE() << "cannot bind a socket: " << strerror(err);
        if (fd >= 0) close(fd);
        return -err;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

// A Unix socket of @type bound to @path (listening, for a stream one), as
// a service manager makes it; its address in *@sun. -1 on error.
int bound_unix(int type, const std::string &path, struct sockaddr_un *sun) {
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    *sun = {};
    sun->sun_family = AF_UNIX;
    snprintf(sun->sun_path, sizeof sun->sun_path, "%s", path.c_str());
    if (fd < 0 || bind(fd, (struct sockaddr *)sun, sizeof *sun) < 0 ||
        (type == SOCK_STREAM && listen(fd, 16) < 0)) {
        ADD_FAILURE() << "cannot bind " << path << ": " << strerror(errno);
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

// A UDP and a TCP socket on one port number. The TCP port may be taken
// by somebody else (tests run side by side): then another UDP port.
bool udp_and_tcp_on_one_port(int *udp, int *tcp, uint16_t *port) {
    for (int attempt = 0; attempt < 50; attempt++) {
        *port = 0;
        if ((*udp = bound_socket(SOCK_DGRAM, port)) < 0) return false;
        if ((*tcp = bound_socket(SOCK_STREAM, port, true)) >= 0) return true;
        close(*udp);
    }
    ADD_FAILURE() << "no port free for both UDP and TCP";
    return false;
}

}  // namespace

TEST(Ops, SocketActivationMatchesByName) {
    std::string dir = make_temp_dir();
    uint16_t port = 0;
    int lfd = bound_socket(SOCK_STREAM, &port);
    // The configured address differs: the name decides.
    Daemon d(dir, base_conf("{ name = \"activated\"; listen = \"127.0.0.1:1\"; plugin = \"echo\"; }"),
             {}, {lfd}, "activated");
    close(lfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    EXPECT_EQ(port, d.port("activated"));
    echo_once(port, "through systemd's socket");
    EXPECT_NE(std::string::npos, read_file(d.log).find("socket activation: 1 socket")) << read_file(d.log);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

TEST(Ops, SocketActivationMatchesByAddressAndClosesUnclaimed) {
    std::string dir = make_temp_dir();
    uint16_t port = 0;
    int lfd = bound_socket(SOCK_STREAM, &port);
    Daemon d(dir, base_conf("{ name = \"by-address\"; listen = \"127.0.0.1:" + std::to_string(port) +
                            "\"; plugin = \"echo\"; }"),
             {}, {lfd}, "some-other-name");
    close(lfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    echo_once(port, "matched by address");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));

    // A socket no listener wants is closed with a warning, not leaked.
    uint16_t other = 0;
    int ofd = bound_socket(SOCK_STREAM, &other);
    Daemon e(dir, base_conf("{ name = \"x\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"), {},
             {ofd}, "unwanted");
    close(ofd);
    ASSERT_TRUE(e.ready()) << read_file(e.log);
    EXPECT_NE(std::string::npos, read_file(e.log).find("no listener for fd 3")) << read_file(e.log);
    EXPECT_EQ(-1, connect_tcp(other));  // nobody listens there any more
    EXPECT_EQ(0, WEXITSTATUS(e.stop()));
    remove_dir(dir);
}

TEST(Ops, RootNeedsUserOrAllowRootAndDropsToTheUser) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    std::string conf = dir + "/root.conf";
    write_file(conf, "plugins = ( { name = \"echo\"; path = \"echo.so\"; } );\n"
                     "listeners = ( { listen = \"127.0.0.1:0\"; plugin = \"echo\"; } );\n");
    Result r = run_daemon(conf, {});
    EXPECT_EQ(1, r.status);
    EXPECT_NE(std::string::npos, r.out.find("refusing to run as root")) << r.out;
    // -t refuses it too, naming the file.
    Result t = run_daemon(conf, {"-t"});
    EXPECT_EQ(1, t.status);
    EXPECT_NE(std::string::npos, t.out.find(conf + ": refusing to run as root")) << t.out;
    EXPECT_NE(std::string::npos, t.out.find("configuration " + conf + " has errors")) << t.out;

    // A user that is root is no way round it.
    std::string as_root = dir + "/as_root.conf";
    write_file(as_root, "user = \"root\";\n" + read_file(conf));
    Result u = run_daemon(as_root, {});
    EXPECT_EQ(1, u.status);
    EXPECT_NE(std::string::npos, u.out.find("user = \"root\" is root (uid 0)")) << u.out;
    Result ut = run_daemon(as_root, {"-t"});
    EXPECT_EQ(1, ut.status);
    EXPECT_NE(std::string::npos, ut.out.find("refusing to run as root")) << ut.out;

    // With user = "nobody" it binds as root, then runs as nobody.
    chmod(dir.c_str(), 0755);
    Daemon d(dir, "user = \"nobody\";\numask = \"0027\";\n" +
                      base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    echo_once(d.port("e"), "as nobody");
    // The switch comes right after the ports file is written.
    std::string status;
    EXPECT_TRUE(eventually(10, [&] {
        status = read_file("/proc/" + std::to_string(d.pid) + "/status");
        return status.find("Uid:\t65534\t65534\t65534\t65534") != std::string::npos;
    })) << status;
    // The daemon logs the switch after making it: the line may come a little later.
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("running as user nobody") != std::string::npos;
    })) << read_file(d.log);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// No connection is handled before the switch to `user`: a client already
// queued on a socket from the service manager was served as root (its
// child process stayed root), in the gap between the listeners starting
// and the switch.
TEST(Ops, AQueuedClientIsServedAsTheUserNeverAsRoot) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    chmod(dir.c_str(), 0755);
    uint16_t port = 0;
    int lfd = bound_socket(SOCK_STREAM, &port);
    int early = connect_tcp(port);  // queued before the daemon runs
    ASSERT_GE(early, 0);
    Daemon d(dir, "user = \"nobody\";\n"
                  "plugins = ( { name = \"exec\"; path = \"exec.so\"; } );\n"
                  "listeners = ( { name = \"id\"; listen = \"127.0.0.1:1\"; plugin = \"exec\";\n"
                  "  settings = { argv = [\"/usr/bin/id\", \"-u\"]; }; } );\n",
             {}, {lfd}, "id");
    close(lfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    set_timeouts(early, 10);
    EXPECT_EQ("65534\n", read_to_eof(early)) << read_file(d.log);
    close(early);
    int late = connect_tcp(port);
    set_timeouts(late, 10);
    EXPECT_EQ("65534\n", read_to_eof(late));
    close(late);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// Log files are made by root before the switch to `user` and reopened by
// `user`: at every reload (access logs) and at SIGUSR1 (rotation). Root's
// files refused them ("Permission denied"), so every reload failed.
TEST(Ops, TheUserReopensTheLogsRootMade) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    chmod(dir.c_str(), 0755);
    std::string main_log = dir + "/main.log", access_log = dir + "/access.log";
    Daemon d(dir, "user = \"nobody\";\nlog = { file = \"" + main_log + "\"; };\n" +
                      base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                                "  access_log = { file = \"" + access_log + "\"; }; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    ASSERT_TRUE(eventually(10, [&] {
        return read_file(main_log).find("running as user nobody") != std::string::npos;
    })) << read_file(main_log);
    for (const std::string &f : {main_log, access_log}) {
        struct stat st;
        ASSERT_EQ(0, stat(f.c_str(), &st)) << f;
        EXPECT_EQ(65534u, st.st_uid) << f;
    }
    d.signal(SIGHUP);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(main_log).find("reloaded ") != std::string::npos;
    })) << read_file(main_log);
    d.signal(SIGUSR1);
    echo_once(d.port("e"), "after the reopen");
    EXPECT_TRUE(eventually(10, [&] { return !read_file(access_log).empty(); }));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    std::string log = read_file(main_log);
    EXPECT_EQ(std::string::npos, log.find("reload failed")) << log;
    EXPECT_EQ(std::string::npos, log.find("cannot reopen")) << log;
    remove_dir(dir);
}

// The ports file is rewritten at a reload by `user`, in a directory only
// root may write to: it failed ("Permission denied") and kept naming the
// old listeners.
TEST(Ops, TheUserRewritesThePortsFileRootMade) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    chmod(dir.c_str(), 0755);
    std::string one = "{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }";
    std::string conf = dir + "/evstreamd.conf";
    Daemon d(dir, "user = \"nobody\";\n" + base_conf(one));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    ASSERT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("running as user nobody") != std::string::npos;
    })) << read_file(d.log);
    write_file(conf, "user = \"nobody\";\n" +
                         base_conf(one + ",\n{ name = \"f\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    d.signal(SIGHUP);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.ports).find("\nf 127.0.0.1:") != std::string::npos;
    })) << read_file(d.ports) << read_file(d.log);
    EXPECT_TRUE(d.ready());
    echo_once(d.port("f"), "the new listener");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    std::string log = read_file(d.log);
    EXPECT_EQ(std::string::npos, log.find("error [main] ports file")) << log;
    // At the stop the user cannot remove it from root's directory, so it
    // is emptied: no stale addresses are left in it.
    EXPECT_NE(std::string::npos, log.find("cannot remove the ports file " + d.ports +
                                          ": Permission denied (emptied it)"))
        << log;
    EXPECT_EQ("", read_file(d.ports));
    remove_dir(dir);
}

// A symbolic link planted at the ports file's temporary name (its directory
// may be the user's) is replaced, not followed: root wrote the addresses
// through it into the link's target and then gave that file to the user.
TEST(Ops, ALinkAtThePortsFilesNameIsNotFollowed) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    chmod(dir.c_str(), 0755);
    std::string victim = dir + "/root-only";
    write_file(victim, "root's own\n");
    ASSERT_EQ(0, symlink(victim.c_str(), (dir + "/ports.tmp").c_str()));
    Daemon d(dir, "user = \"nobody\";\n" +
                      base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    ASSERT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("running as user nobody") != std::string::npos;
    })) << read_file(d.log);
    EXPECT_EQ("root's own\n", read_file(victim));
    struct stat st;
    ASSERT_EQ(0, lstat(victim.c_str(), &st));
    EXPECT_EQ(0u, st.st_uid);
    ASSERT_EQ(0, lstat(d.ports.c_str(), &st));
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(65534u, st.st_uid);  // the user's, for the reloads
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// Log files are never opened through a symbolic link: root, at the start,
// appended to whatever a link planted in a log directory its user may write
// to named. Like any log file that cannot be opened, it is a warning that
// names the file (-t) and the daemon logs to stderr instead.
TEST(Ops, ALogFileThatIsASymbolicLinkIsNotFollowed) {
    std::string dir = make_temp_dir();
    std::string victim = dir + "/victim", link = dir + "/main.log";
    write_file(victim, "untouched\n");
    ASSERT_EQ(0, symlink(victim.c_str(), link.c_str()));
    std::string conf = "log = { file = \"" + link + "\"; };\n" +
                       base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }");
    write_file(dir + "/t.conf", conf);
    Result r = run_daemon(dir + "/t.conf", {"-t"});
    EXPECT_NE(std::string::npos, r.out.find("log file " + link + ": " + strerror(ELOOP))) << r.out;
    Daemon d(dir, conf);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    echo_once(d.port("e"), "served");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    EXPECT_NE(std::string::npos, read_file(d.log).find(strerror(ELOOP))) << read_file(d.log);
    EXPECT_EQ("untouched\n", read_file(victim));
    remove_dir(dir);
}

// umask applies to every file the daemon makes, the main log first: the
// log was created before the umask was set (0640 under "0077").
TEST(Ops, TheUmaskAppliesToTheMainLog) {
    std::string dir = make_temp_dir();
    Daemon d(dir, "umask = \"0077\";\nlog = { file = \"" + dir + "/main.log\"; };\n" +
                      base_conf("{ name = \"e\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    struct stat st;
    ASSERT_EQ(0, stat((dir + "/main.log").c_str(), &st));
    EXPECT_EQ(0600u, st.st_mode & 0777u);
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

TEST(Ops, PerAddressLimitsAndTimeoutsFromTheConfig) {
    std::string dir = make_temp_dir();
    Daemon d(dir, base_conf("{ name = \"limited\"; listen = \"127.0.0.1:0\"; plugin = \"echo\";\n"
                            "  limits = { max_connections_per_ip = 1; first_byte_timeout = \"300ms\";\n"
                            "             reject_message = \"busy\\n\"; }; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    int first = connect_tcp(d.port("limited"));
    ASSERT_TRUE(write_all(first, "x", 1));
    char c;
    ASSERT_TRUE(read_exact(first, &c, 1));  // served
    int second = connect_tcp(d.port("limited"));
    EXPECT_EQ("busy\n", read_to_eof(second));  // one per address
    close(second);
    close(first);
    // A client that never sends is cut by the first-byte timeout.
    int silent = -1;
    for (int i = 0; i < 100; i++) {  // the slot frees once the first close is seen
        silent = connect_tcp(d.port("limited"));
        set_timeouts(silent, 10);
        std::string got = read_to_eof(silent);
        close(silent);
        if (got.empty()) break;  // EOF without "busy": accepted, then timed out
        usleep(20 * 1000);
    }
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

namespace {

std::string datagram_conf(const std::string &listeners) {
    return std::string("workers = 2;\n") + (geteuid() == 0 ? "allow_root = true;\n" : "") +
           "plugins = ( { name = \"udp_echo\"; path = \"udp_echo.so\"; },\n"
           "            { name = \"echo\"; path = \"echo.so\"; } );\n"
           "listeners = (\n" + listeners + "\n);\n";
}

// Send @msg from a fresh UDP (or unixgram) socket and wait for the answer.
std::string udp_ask(const struct sockaddr *to, socklen_t tolen, const std::string &msg,
                    const std::string &bind_path = "", int wait_secs = 10) {
    int fd = socket(to->sa_family, SOCK_DGRAM, 0);
    if (!bind_path.empty()) {  // a unixgram client needs an address to be answered
        struct sockaddr_un me{};
        me.sun_family = AF_UNIX;
        snprintf(me.sun_path, sizeof me.sun_path, "%s", bind_path.c_str());
        unlink(bind_path.c_str());
        bind(fd, (struct sockaddr *)&me, sizeof me);
    }
    set_timeouts(fd, wait_secs);
    sendto(fd, msg.data(), msg.size(), 0, to, tolen);
    char buf[2048];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    close(fd);
    return n > 0 ? std::string(buf, (size_t)n) : std::string();
}

// How many IPv4 UDP sockets are bound to @port (from /proc/net/udp).
int udp_sockets_on(uint16_t port) {
    char suffix[8];
    snprintf(suffix, sizeof suffix, ":%04X", port);
    std::istringstream in(read_file("/proc/net/udp"));
    std::string line, sl, local;
    int n = 0;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        if (fields >> sl >> local && local.size() > 5) n += local.compare(local.size() - 5, 5, suffix) == 0;
    }
    return n;
}

}  // namespace

// Datagram listeners take sockets from the service manager too: a udp: one
// by address beside a TCP listener on the same port number (each gets its
// own kind), a unixgram: one by name. Every worker reads the one socket, a
// reload keeps it, and the socket file stays the service manager's.
TEST(Ops, SocketActivationServesDatagramListeners) {
    std::string dir = make_temp_dir();
    uint16_t port = 0;
    int udp = -1, tcp = -1;
    ASSERT_TRUE(udp_and_tcp_on_one_port(&udp, &tcp, &port));
    std::string gram = dir + "/gram.sock";
    struct sockaddr_un sun;
    int gfd = bound_unix(SOCK_DGRAM, gram, &sun);
    ASSERT_GE(gfd, 0);
    std::string p = std::to_string(port);
    Daemon d(dir,
             datagram_conf("{ name = \"t\"; listen = \"127.0.0.1:" + p + "\"; plugin = \"echo\"; },\n"
                           "{ name = \"u\"; listen = \"udp:127.0.0.1:" + p + "\"; plugin = \"udp_echo\"; },\n"
                           "{ name = \"g\"; listen = \"unixgram:" + dir + "/elsewhere.sock\"; "
                           "plugin = \"udp_echo\"; }"),
             {}, {udp, tcp, gfd}, "unknown:unknown:g");
    close(udp);
    close(tcp);
    close(gfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    EXPECT_EQ("udp:127.0.0.1:" + p, d.addresses["u"]);
    EXPECT_EQ("unixgram:" + gram, d.addresses["g"]);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    for (int i = 0; i < 10; i++) {  // from many source ports: both workers read
        std::string msg = "activated datagram " + std::to_string(i);
        EXPECT_EQ(msg, udp_ask((struct sockaddr *)&sin, sizeof sin, msg));
    }
    echo_once(port, "and a connection on the same port");
    EXPECT_EQ("over the passed file", udp_ask((struct sockaddr *)&sun, sizeof sun,
                                              "over the passed file", dir + "/client.sock"));
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return read_file(d.log).find("reloaded ") != std::string::npos; }))
        << read_file(d.log);
    EXPECT_EQ("after the reload", udp_ask((struct sockaddr *)&sin, sizeof sin, "after the reload"));
    EXPECT_EQ("gram after the reload", udp_ask((struct sockaddr *)&sun, sizeof sun,
                                               "gram after the reload", dir + "/client.sock"));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    struct stat st;
    EXPECT_EQ(0, lstat(gram.c_str(), &st)) << "the service manager's socket file was removed";
    EXPECT_EQ(std::string::npos, read_file(d.log).find("no listener for fd")) << read_file(d.log);
    remove_dir(dir);
}

// A unix: listener on a socket from the service manager leaves the file,
// which is the manager's, through a reload and the stop. It removed it at
// the stop, so after a restart the passed socket had no name to reach it by.
TEST(Ops, SocketActivationLeavesTheManagersUnixSocketFile) {
    std::string dir = make_temp_dir();
    std::string path = dir + "/stream.sock";
    struct sockaddr_un sun;
    int sfd = bound_unix(SOCK_STREAM, path, &sun);
    ASSERT_GE(sfd, 0);
    auto echo_unix = [&](const std::string &msg) {
        int fd = connect_unix(path);
        ASSERT_GE(fd, 0) << strerror(errno);
        ASSERT_TRUE(write_all(fd, msg.data(), msg.size()));
        std::string back(msg.size(), '\0');
        ASSERT_TRUE(read_exact(fd, &back[0], back.size()));
        EXPECT_EQ(msg, back);
        close(fd);
    };
    for (int run = 0; run < 2; run++) {  // the second run is the restart
        Daemon d(dir, base_conf("{ name = \"s\"; listen = \"unix:" + path + "\"; plugin = \"echo\"; }"),
                 {}, {sfd}, "s");
        ASSERT_TRUE(d.ready()) << read_file(d.log);
        echo_unix("run " + std::to_string(run));
        d.signal(SIGHUP);
        ASSERT_TRUE(eventually(20, [&] { return read_file(d.log).find("reloaded ") != std::string::npos; }))
            << read_file(d.log);
        echo_unix("after the reload");
        EXPECT_EQ(0, WEXITSTATUS(d.stop()));
        struct stat st;
        EXPECT_EQ(0, lstat(path.c_str(), &st)) << "the service manager's socket file was removed";
    }
    close(sfd);
    remove_dir(dir);
}

// A Unix socket matched by name may be bound elsewhere than the file
// says: it is reported where it is, and a reload leaves the configured
// path alone (it chmod'ed it, following links, as root).
TEST(Ops, SocketActivationByNameReportsTheRealPathAndLeavesTheConfiguredOne) {
    std::string dir = make_temp_dir();
    std::string real = dir + "/real.sock", configured = dir + "/configured";
    write_file(configured, "not a socket\n");
    ASSERT_EQ(0, chmod(configured.c_str(), 0600));
    struct sockaddr_un sun;
    int sfd = bound_unix(SOCK_STREAM, real, &sun);
    ASSERT_GE(sfd, 0);
    Daemon d(dir,
             base_conf("{ name = \"s\"; listen = \"unix:" + configured +
                       "\"; mode = \"0666\"; plugin = \"echo\"; }"),
             {}, {sfd}, "s");
    close(sfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    EXPECT_NE(std::string::npos, read_file(d.log).find("listening on unix:" + real))
        << read_file(d.log);
    const std::string unapplied = "listener 's': mode, owner and group are not applied";
    EXPECT_EQ(1u, count_of(read_file(d.log), unapplied)) << read_file(d.log);
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(20, [&] { return read_file(d.log).find("reloaded ") != std::string::npos; }))
        << read_file(d.log);
    EXPECT_EQ(2u, count_of(read_file(d.log), unapplied)) << "the reload did not say it again";
    struct stat st;
    ASSERT_EQ(0, stat(configured.c_str(), &st));
    EXPECT_EQ(0600u, st.st_mode & 07777) << "the reload chmod'ed a file that is not its socket";
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

// LISTEN_FDS counting more sockets than were passed: the numbers past them
// are not sockets of ours. They were taken after the log file and the
// pidfile had been opened there, and closed as unclaimed: the log went to
// whatever connection got the number next, and the pidfile lost its lock.
TEST(Ops, SocketActivationCountingMoreThanWerePassedLeavesTheDaemonsFilesAlone) {
    std::string dir = make_temp_dir();
    uint16_t port = 0;
    int lfd = bound_socket(SOCK_STREAM, &port);
    ASSERT_GE(lfd, 0);
    std::string logfile = dir + "/evstreamd.log";
    Daemon d(dir,
             base_conf("{ name = \"a\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                       "log = { file = \"" + logfile + "\"; level = \"info\"; };\n"),
             {"LISTEN_FDS=3"}, {lfd}, "unwanted");
    close(lfd);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    echo_once(d.port("a"), "still served");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    std::string out = read_file(d.log), log = read_file(logfile);
    EXPECT_NE(std::string::npos, out.find("fd 4 was not passed")) << out;
    EXPECT_NE(std::string::npos, out.find("fd 5 was not passed")) << out;
    EXPECT_NE(std::string::npos, log.find("no listener for fd 3")) << log;  // the passed one
    EXPECT_EQ(std::string::npos, log.find("no listener for fd 4")) << log;
    EXPECT_NE(std::string::npos, log.find("stopped")) << "the log file lost its descriptor:\n" << log;
    remove_dir(dir);
}

// A socket named for a listener but of the other kind is a clear error at
// start, not an "Invalid argument" from listen().
TEST(Ops, SocketActivationRefusesASocketOfTheWrongKind) {
    std::string dir = make_temp_dir();
    // A UDP socket named for a TCP listener (the wrong type), and for a
    // unixgram: one (the wrong family: its address was printed as garbage).
    struct Case {
        std::string listener, error;
    };
    for (const Case &k : {Case{"{ name = \"t\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }",
                               "is not a listening TCP socket"},
                          Case{"{ name = \"t\"; listen = \"unixgram:" + dir +
                                   "/g.sock\"; plugin = \"udp_echo\"; }",
                               "is not a Unix datagram socket"}}) {
        uint16_t port = 0;
        int udp = bound_socket(SOCK_DGRAM, &port);
        ASSERT_GE(udp, 0);
        Daemon d(dir, datagram_conf(k.listener), {}, {udp}, "t");
        close(udp);
        int st = -1;
        ASSERT_TRUE(wait_exit(d.pid, 20, &st)) << read_file(d.log);
        d.pid = -1;
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << st;
        EXPECT_NE(std::string::npos,
                  read_file(d.log).find("listener 't': the socket the service manager named 't' "
                                        "(fd 3) " + k.error))
            << read_file(d.log);
    }
    remove_dir(dir);
}

TEST(Ops, UdpAndUnixgramListenersServeDatagramPlugins) {
    std::string dir = make_temp_dir();
    std::string gram = dir + "/gram.sock";
    Daemon d(dir, datagram_conf("{ name = \"udp\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; },\n"
                                "{ name = \"gram\"; listen = \"unixgram:" + gram + "\"; plugin = \"udp_echo\"; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    EXPECT_EQ(0u, d.addresses["udp"].rfind("udp:127.0.0.1:", 0)) << d.addresses["udp"];
    EXPECT_EQ("unixgram:" + gram, d.addresses["gram"]);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(d.port("udp"));
    // Many clients (many source ports): the workers' sockets share the port.
    for (int i = 0; i < 20; i++) {
        std::string msg = "datagram " + std::to_string(i);
        EXPECT_EQ(msg, udp_ask((struct sockaddr *)&sin, sizeof sin, msg));
    }
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    EXPECT_EQ("over unixgram", udp_ask((struct sockaddr *)&sun, sizeof sun, "over unixgram",
                                       dir + "/client.sock"));
    // A reload re-creates the endpoints; the port keeps answering.
    d.signal(SIGHUP);
    usleep(300 * 1000);
    EXPECT_EQ("after reload", udp_ask((struct sockaddr *)&sin, sizeof sin, "after reload"));
    EXPECT_EQ("gram after reload", udp_ask((struct sockaddr *)&sun, sizeof sun, "gram after reload",
                                           dir + "/client2.sock"));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    struct stat st;
    EXPECT_NE(0, stat(gram.c_str(), &st));  // the socket file is removed at stop
    remove_dir(dir);
}

// Unixgram clients that never read (their queue fills) or shut down their
// reading side (EPIPE) cost their own answers only: the listener answers
// the next client, a reload keeps it, and the daemon stops cleanly. The
// second ended the worker's endpoint, which the daemon then closed again
// at the reload (freed memory).
TEST(Ops, UnixgramClientsThatDoNotReadCostOnlyTheirAnswers) {
    std::string dir = make_temp_dir();
    std::string gram = dir + "/gram.sock";
    Daemon d(dir, datagram_conf("{ name = \"gram\"; listen = \"unixgram:" + gram +
                                "\"; plugin = \"udp_echo\"; }"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    auto bound_client = [&](const std::string &name) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un me{};
        me.sun_family = AF_UNIX;
        snprintf(me.sun_path, sizeof me.sun_path, "%s/%s", dir.c_str(), name.c_str());
        EXPECT_EQ(0, bind(fd, (struct sockaddr *)&me, sizeof me));
        return fd;
    };
    int deaf = bound_client("deaf.sock");
    ASSERT_EQ(0, shutdown(deaf, SHUT_RD));
    EXPECT_EQ(1, sendto(deaf, "x", 1, 0, (struct sockaddr *)&sun, sizeof sun));
    int idle = bound_client("idle.sock");
    for (int i = 0; i < 100; i++)
        sendto(idle, "y", 1, MSG_DONTWAIT, (struct sockaddr *)&sun, sizeof sun);
    EXPECT_EQ("still here", udp_ask((struct sockaddr *)&sun, sizeof sun, "still here",
                                    dir + "/client.sock"));
    d.signal(SIGHUP);
    usleep(300 * 1000);
    EXPECT_EQ("after reload", udp_ask((struct sockaddr *)&sun, sizeof sun, "after reload",
                                      dir + "/client2.sock"));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    EXPECT_EQ(std::string::npos, read_file(d.log).find("lost its socket")) << read_file(d.log);
    close(deaf);
    close(idle);
    remove_dir(dir);
}

// An endpoint its plugin closed (or a fatal socket error ended) gets a new
// socket at the next reload. The reload tried to copy the lost endpoint's
// socket and failed ("cannot keep its socket"), and so did every later
// one: the unixgram listener stayed deaf until a restart.
TEST(Ops, AReloadGivesALostDatagramEndpointANewSocket) {
    std::string dir = make_temp_dir();
    std::string gram = dir + "/gram.sock";
    Daemon d(dir, std::string("workers = 2;\n") + (geteuid() == 0 ? "allow_root = true;\n" : "") +
                      "plugins = ( { name = \"closer\"; path = \"" + builddir() +
                      "/tests/plugins/.libs/datagram_closer.so\"; } );\n"
                      "listeners = (\n"
                      "{ name = \"udp\"; listen = \"udp:127.0.0.1:0\"; plugin = \"closer\"; },\n"
                      "{ name = \"gram\"; listen = \"unixgram:" + gram + "\"; plugin = \"closer\"; } );\n");
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(d.port("udp"));
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    auto gram_ask = [&](const std::string &msg, int secs = 10) {
        return udp_ask((struct sockaddr *)&sun, sizeof sun, msg, dir + "/client.sock", secs);
    };
    auto all_udp_answered = [&](const std::string &tag) {
        for (int i = 0; i < 20; i++) {  // 20 source ports: both workers' sockets
            std::string msg = tag + " " + std::to_string(i);
            if (udp_ask((struct sockaddr *)&sin, sizeof sin, msg) != msg) return false;
        }
        return true;
    };
    auto reloads = [&] {
        std::string log = read_file(d.log);
        size_t n = 0;
        for (size_t at = log.find("reloaded "); at != std::string::npos; at = log.find("reloaded ", at + 1)) n++;
        return n;
    };
    EXPECT_EQ("before", gram_ask("before"));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(5, sendto(fd, "close", 5, 0, (struct sockaddr *)&sun, sizeof sun));
    close(fd);
    // Queued behind "close", never read: the listener is deaf.
    EXPECT_EQ("", gram_ask("unheard", 1));
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(5, sendto(fd, "close", 5, 0, (struct sockaddr *)&sin, sizeof sin));
    close(fd);
    auto udp_sockets = [&] { return udp_sockets_on(d.port("udp")); };
    ASSERT_TRUE(eventually(10, [&] { return udp_sockets() == 1; })) << udp_sockets();
    EXPECT_TRUE(all_udp_answered("one worker left"));  // the kernel skips a closed socket

    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(10, [&] { return reloads() == 1; })) << read_file(d.log);
    std::string log = read_file(d.log);
    EXPECT_NE(std::string::npos, log.find("listener 'gram': worker 0 had lost its socket")) << log;
    EXPECT_NE(std::string::npos, log.find("listener 'udp': worker ")) << log;
    EXPECT_EQ(2, udp_sockets());  // one per worker again
    EXPECT_EQ("after", gram_ask("after"));
    EXPECT_TRUE(all_udp_answered("after"));
    // The next reload keeps the new sockets.
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(10, [&] { return reloads() == 2; })) << read_file(d.log);
    EXPECT_EQ("again", gram_ask("again"));
    EXPECT_TRUE(all_udp_answered("again"));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    log = read_file(d.log);
    EXPECT_EQ(std::string::npos, log.find("reload failed")) << log;
    struct stat st;
    EXPECT_NE(0, stat(gram.c_str(), &st));  // the new socket file is removed at stop
    remove_dir(dir);
}

// A lost endpoint that cannot get a new socket (after the switch to `user`,
// in a directory only root may write to) is a warning: the reload goes on,
// the other listeners take the new configuration.
TEST(Ops, ALostDatagramEndpointThatCannotBeReboundDoesNotFailTheReload) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    std::string dir = make_temp_dir();
    chmod(dir.c_str(), 0755);
    std::string gram = dir + "/gram.sock";
    std::string udp_port = "0";  // the second config keeps the port the first got
    auto conf = [&](const std::string &tcp_name) {
        return std::string("user = \"nobody\";\nworkers = 2;\n") +
               "plugins = ( { name = \"closer\"; path = \"" + builddir() +
               "/tests/plugins/.libs/datagram_closer.so\"; },\n"
               "            { name = \"echo\"; path = \"echo.so\"; } );\n"
               "listeners = (\n"
               "{ name = \"gram\"; listen = \"unixgram:" + gram + "\"; plugin = \"closer\"; },\n"
               "{ name = \"udp\"; listen = \"udp:127.0.0.1:" + udp_port + "\"; plugin = \"closer\"; },\n"
               "{ name = \"" + tcp_name + "\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; } );\n";
    };
    Daemon d(dir, conf("first"));
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    ASSERT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("running as user nobody") != std::string::npos;
    })) << read_file(d.log);
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(5, sendto(fd, "close", 5, 0, (struct sockaddr *)&sun, sizeof sun));
    close(fd);
    EXPECT_EQ("", udp_ask((struct sockaddr *)&sun, sizeof sun, "unheard", dir + "/client.sock", 1));
    // One udp: worker's socket closed: as `user`, a new one cannot join
    // root's SO_REUSEPORT group, so that worker shares the other's.
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(d.port("udp"));
    udp_port = std::to_string(d.port("udp"));
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(5, sendto(fd, "close", 5, 0, (struct sockaddr *)&sin, sizeof sin));
    close(fd);
    ASSERT_TRUE(eventually(10, [&] { return udp_sockets_on(d.port("udp")) == 1; }));
    write_file(dir + "/evstreamd.conf", conf("second"));
    d.signal(SIGHUP);
    ASSERT_TRUE(eventually(10, [&] { return read_file(d.log).find("reloaded ") != std::string::npos; }))
        << read_file(d.log);
    std::string log = read_file(d.log);
    EXPECT_NE(std::string::npos, log.find("listener 'gram': worker 0 lost its socket and cannot get a new one")) << log;
    EXPECT_NE(std::string::npos, log.find("had lost its socket; it has a copy of another worker's")) << log;
    EXPECT_EQ(std::string::npos, log.find("reload failed")) << log;
    for (int i = 0; i < 20; i++) {  // 20 source ports: every datagram is answered
        std::string msg = "udp " + std::to_string(i);
        EXPECT_EQ(msg, udp_ask((struct sockaddr *)&sin, sizeof sin, msg));
    }
    ASSERT_TRUE(d.ready());
    echo_once(d.port("second"), "the new configuration");
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    remove_dir(dir);
}

TEST(Ops, FailedReloadKeepsTheUnixgramListener) {
    std::string dir = make_temp_dir();
    std::string gram = dir + "/gram.sock";
    std::string good = datagram_conf("{ name = \"gram\"; listen = \"unixgram:" + gram +
                                     "\"; plugin = \"udp_echo\"; },\n"
                                     "{ name = \"tcp\"; listen = \"127.0.0.1:0\"; plugin = \"echo\"; }");
    Daemon d(dir, good);
    ASSERT_TRUE(d.ready()) << read_file(d.log);
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    EXPECT_EQ("before", udp_ask((struct sockaddr *)&sun, sizeof sun, "before", dir + "/c1.sock"));
    // The reload fails on another listener: a port somebody else holds.
    int busy = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sin;
    ASSERT_EQ(0, bind(busy, (struct sockaddr *)&sin, sizeof sin));
    ASSERT_EQ(0, listen(busy, 1));
    getsockname(busy, (struct sockaddr *)&sin, &sl);
    write_file(dir + "/evstreamd.conf",
               datagram_conf("{ name = \"gram\"; listen = \"unixgram:" + gram +
                             "\"; plugin = \"udp_echo\"; },\n"
                             "{ name = \"tcp\"; listen = \"127.0.0.1:" +
                             std::to_string(ntohs(sin.sin_port)) + "\"; plugin = \"echo\"; }"));
    d.signal(SIGHUP);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("reload failed") != std::string::npos;
    })) << read_file(d.log);
    struct stat st;
    EXPECT_EQ(0, stat(gram.c_str(), &st)) << "the running listener's socket file is gone";
    EXPECT_EQ("after", udp_ask((struct sockaddr *)&sun, sizeof sun, "after", dir + "/c2.sock"));
    close(busy);
    // A reload that succeeds keeps it too, on the same socket.
    write_file(dir + "/evstreamd.conf", good);
    d.signal(SIGHUP);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("reloaded") != std::string::npos;
    })) << read_file(d.log);
    EXPECT_EQ("reloaded", udp_ask((struct sockaddr *)&sun, sizeof sun, "reloaded", dir + "/c3.sock"));
    EXPECT_EQ(0, WEXITSTATUS(d.stop()));
    EXPECT_NE(0, stat(gram.c_str(), &st));  // removed at stop
    remove_dir(dir);
}

TEST(Ops, LiveUnixgramSocketIsNotStolen) {
    std::string dir = make_temp_dir(), other = make_temp_dir();
    std::string gram = dir + "/gram.sock";
    std::string conf = datagram_conf("{ name = \"gram\"; listen = \"unixgram:" + gram +
                                     "\"; plugin = \"udp_echo\"; }");
    Daemon first(dir, conf);
    ASSERT_TRUE(first.ready()) << read_file(first.log);
    Daemon second(other, conf);
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(second.log).find("Address already in use") != std::string::npos;
    })) << read_file(second.log);
    second.stop();
    struct sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", gram.c_str());
    EXPECT_EQ("still here", udp_ask((struct sockaddr *)&sun, sizeof sun, "still here",
                                    dir + "/c.sock"));
    EXPECT_EQ(0, WEXITSTATUS(first.stop()));
    remove_dir(other);
    remove_dir(dir);
}

// A UDP port another daemon serves is not shared: the workers' sockets
// set SO_REUSEPORT, so without a check the second daemon bound it too and
// the kernel split the first one's datagrams between the two.
TEST(Ops, LiveUdpPortIsNotShared) {
    std::string dir = make_temp_dir(), other = make_temp_dir();
    Daemon first(dir, datagram_conf("{ name = \"udp\"; listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; }"));
    ASSERT_TRUE(first.ready()) << read_file(first.log);
    std::string port = std::to_string(first.port("udp"));
    Daemon second(other, datagram_conf("{ name = \"udp\"; listen = \"udp:127.0.0.1:" + port +
                                       "\"; plugin = \"udp_echo\"; }"));
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(second.log).find("Address already in use") != std::string::npos;
    })) << read_file(second.log);
    second.stop();
    struct sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(first.port("udp"));
    for (int i = 0; i < 10; i++)  // many source ports: all reach the first daemon
        EXPECT_EQ("mine " + std::to_string(i),
                  udp_ask((struct sockaddr *)&sin, sizeof sin, "mine " + std::to_string(i)));
    EXPECT_EQ(0, WEXITSTATUS(first.stop()));
    remove_dir(other);
    remove_dir(dir);
}

// Two udp: listeners whose addresses differ in text but overlap in the
// kernel (every address, and 127.0.0.1, on one port) are refused at start.
TEST(Ops, UdpListenersOverlappingOnAPortAreRefused) {
    int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin{};
    socklen_t len = sizeof sin;
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, bind(probe, (struct sockaddr *)&sin, sizeof sin));
    ASSERT_EQ(0, getsockname(probe, (struct sockaddr *)&sin, &len));
    close(probe);  // a free port, for the config below
    std::string dir = make_temp_dir(), port = std::to_string(ntohs(sin.sin_port));
    std::string conf = dir + "/evstreamd.conf";
    write_file(conf, datagram_conf("{ name = \"all\"; listen = \"udp:*:" + port +
                                   "\"; plugin = \"udp_echo\"; },\n"
                                   "{ name = \"lo\"; listen = \"udp:127.0.0.1:" + port +
                                   "\"; plugin = \"udp_echo\"; }"));
    Result r = run_daemon(conf, {});
    EXPECT_NE(0, r.status) << r.out;
    EXPECT_NE(std::string::npos, r.out.find("listener 'lo': cannot listen on udp:127.0.0.1:" + port +
                                            ": Address already in use"))
        << r.out;
    remove_dir(dir);
}

// A live stream socket at a unixgram path (another server's unix:
// listener) does not answer a datagram connect, yet is not stale: its
// file stays, and the listener fails with Address already in use.
TEST(Ops, LiveStreamSocketIsNotTakenForAStaleUnixgramFile) {
    std::string dir = make_temp_dir();
    std::string path = dir + "/taken.sock";
    struct sockaddr_un sun;
    int lfd = bound_unix(SOCK_STREAM, path, &sun);
    ASSERT_GE(lfd, 0);
    Daemon d(dir, datagram_conf("{ name = \"gram\"; listen = \"unixgram:" + path +
                                "\"; plugin = \"udp_echo\"; }"));
    EXPECT_TRUE(eventually(10, [&] {
        return read_file(d.log).find("Address already in use") != std::string::npos;
    })) << read_file(d.log);
    d.stop();
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(0, connect(c, (struct sockaddr *)&sun, sizeof sun)) << "the listener lost its file";
    close(c);
    close(lfd);
    remove_dir(dir);
}

TEST(Ops, DatagramAndStreamPluginsAreNotMixedUp) {
    std::string dir = make_temp_dir();
    for (const char *listeners :
         {"{ listen = \"udp:127.0.0.1:0\"; plugin = \"echo\"; }",
          "{ listen = \"127.0.0.1:0\"; plugin = \"udp_echo\"; }"}) {
        Daemon d(dir, datagram_conf(listeners));
        std::string log;
        EXPECT_TRUE(eventually(10, [&] {
            log = read_file(d.log);
            return log.find("is not a datagram plugin") != std::string::npos ||
                   log.find("serves datagrams") != std::string::npos;
        })) << log;
        d.stop();
    }
    std::string conf = dir + "/bad.conf";
    write_file(conf, datagram_conf("{ listen = \"udp:127.0.0.1:0\"; plugin = \"udp_echo\"; "
                                   "tls = { certificate = \"c\"; key = \"k\"; }; }"));
    Result r = run_daemon(conf, {"-t"});
    EXPECT_EQ(1, r.status);
    EXPECT_NE(std::string::npos, r.out.find("not for datagram")) << r.out;
    remove_dir(dir);
}
