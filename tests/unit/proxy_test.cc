// The PROXY protocol: the strict v1/v2 parser over many inputs, and servers
// that take the real client's address from trusted proxies only, over real
// sockets (and behind a real haproxy when it is installed).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

#include "helpers.h"

extern "C" {
#include "proxy_protocol.h"
}

using namespace evs_test;

namespace {

int parse(const std::string &s, evs__proxy_header *h) {
    return evs__proxy_parse((const uint8_t *)s.data(), s.size(), h);
}

std::string v2(uint8_t cmd, uint8_t fam, const std::string &body) {
    std::string s("\r\n\r\n\0\r\nQUIT\n", 12);
    s += (char)(0x20 | cmd);
    s += (char)fam;
    s += (char)(body.size() >> 8);
    s += (char)(body.size() & 0xff);
    return s + body;
}

std::string v4_body(const char *src, const char *dst, uint16_t sp, uint16_t dp) {
    std::string b(12, '\0');
    inet_pton(AF_INET, src, &b[0]);
    inet_pton(AF_INET, dst, &b[4]);
    b[8] = (char)(sp >> 8);
    b[9] = (char)sp;
    b[10] = (char)(dp >> 8);
    b[11] = (char)dp;
    return b;
}

std::string addr_of(const evs__proxy_header &h) {
    char buf[128];
    return evs_format_address((const struct sockaddr *)&h.src, h.srclen, buf, sizeof buf);
}

}  // namespace

TEST(ProxyParser, V1Tcp4AndTcp6) {
    evs__proxy_header h;
    std::string s = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
    EXPECT_EQ((int)s.size() - 5, parse(s, &h));
    EXPECT_EQ(1, h.version);
    EXPECT_EQ("192.0.2.1:56324", addr_of(h));
    s = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    EXPECT_EQ((int)s.size(), parse(s, &h));
    EXPECT_EQ("[2001:db8::1]:1", addr_of(h));
    s = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    EXPECT_EQ((int)s.size(), parse(s, &h));
    EXPECT_EQ(1, h.local);
    EXPECT_EQ(15, parse("PROXY UNKNOWN\r\n", &h));
}

TEST(ProxyParser, V1IsStrict) {
    evs__proxy_header h;
    for (const char *bad : {
             "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",      // no CR
             "PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",   // two spaces
             "PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",   // leading zero
             "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",    // port range
             "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",        // family mismatch
             "PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",            // missing field
             "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",        // extra field
             "PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",          // protocol
             "PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",          // case
             "PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",        // address
             "PROXY UNKNOWNX\r\n",
             "GET / HTTP/1.1\r\n",
         }) {
        EXPECT_EQ(-EPROTO, parse(bad, &h)) << bad;
    }
    // No CRLF within 107 bytes.
    EXPECT_EQ(-EPROTO, parse("PROXY TCP4 " + std::string(120, '1'), &h));
}

TEST(ProxyParser, EveryPrefixOfAValidHeaderAsksForMore) {
    evs__proxy_header h;
    std::string v1 = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    for (size_t n = 0; n < v1.size(); n++) EXPECT_EQ(0, parse(v1.substr(0, n), &h)) << n;
    std::string two = v2(1, 0x11, v4_body("10.1.2.3", "10.0.0.1", 1234, 80));
    for (size_t n = 0; n < two.size(); n++) EXPECT_EQ(0, parse(two.substr(0, n), &h)) << n;
    EXPECT_EQ((int)two.size(), parse(two, &h));
}

TEST(ProxyParser, V2AddressesLocalAndTlvs) {
    evs__proxy_header h;
    std::string tlvs;
    tlvs += '\x01';
    tlvs += std::string("\x00\x02", 2) + "h2";  // ALPN
    tlvs += '\x05';
    tlvs += std::string("\x00\x03", 2) + "abc";  // unique id
    std::string s = v2(1, 0x11, v4_body("10.1.2.3", "10.0.0.1", 1234, 80) + tlvs) + "rest";
    EXPECT_EQ((int)s.size() - 4, parse(s, &h));
    EXPECT_EQ(2, h.version);
    EXPECT_EQ("10.1.2.3:1234", addr_of(h));
    const uint8_t *v;
    EXPECT_EQ(2, evs__proxy_tlv(&h, 0x01, &v));
    EXPECT_EQ(0, memcmp(v, "h2", 2));
    EXPECT_EQ(3, evs__proxy_tlv(&h, 0x05, &v));
    EXPECT_EQ(-ENOENT, evs__proxy_tlv(&h, 0x02, &v));

    std::string b6(36, '\0');
    inet_pton(AF_INET6, "2001:db8::7", &b6[0]);
    b6[32] = 0x1f;
    b6[33] = (char)0x90;
    EXPECT_GT(parse(v2(1, 0x21, b6), &h), 0);
    EXPECT_EQ("[2001:db8::7]:8080", addr_of(h));

    EXPECT_EQ(16, parse(v2(0, 0x00, ""), &h));  // LOCAL
    EXPECT_EQ(1, h.local);
}

TEST(ProxyParser, V2IsStrict) {
    evs__proxy_header h;
    std::string body = v4_body("10.1.2.3", "10.0.0.1", 1, 2);
    std::string bad_version = v2(1, 0x11, body);
    bad_version[12] = 0x31;
    EXPECT_EQ(-EPROTO, parse(bad_version, &h));
    EXPECT_EQ(-EPROTO, parse(v2(2, 0x11, body), &h));              // command
    EXPECT_EQ(-EPROTO, parse(v2(1, 0x41, body), &h));              // family
    EXPECT_EQ(-EPROTO, parse(v2(1, 0x21, body), &h));              // too short for IPv6
    EXPECT_EQ(-EPROTO, parse(v2(1, 0x11, body + "\x01\x00"), &h)); // truncated TLV
    EXPECT_EQ(-EPROTO, parse(v2(1, 0x11, body + std::string("\x01\x00\x05" "ab", 5)), &h));
    std::string huge = v2(1, 0x11, body);
    huge[14] = 0x7f;  // announces ~32 KiB
    EXPECT_EQ(-EPROTO, parse(huge, &h));
}

TEST(ProxyParser, RandomBytesNeverCrash) {
    evs__proxy_header h;
    for (uint32_t seed = 1; seed < 3000; seed++) {
        std::string s = pattern(seed % 300, seed);
        if (seed % 3 == 0) s = std::string("\r\n\r\n\0\r\nQUIT\n", 12) + s;
        if (seed % 3 == 1) s = "PROXY " + s;
        int n = parse(s, &h);
        EXPECT_LE(n, (int)s.size());
    }
}

// --- servers ---------------------------------------------------------------

namespace {

// Writes "peer=<client> proxy=<proxy or ->" then echoes.
void whoami(evs_reader *r, evs_writer *w, void *) {
    char a[128], b[128], line[300];
    struct sockaddr_storage ss;
    socklen_t sl;
    evs_transport *t = evs_writer_transport(w);
    const char *peer = evs_transport_get_peername(t, &ss, &sl) == 0
                           ? evs_format_address((struct sockaddr *)&ss, sl, a, sizeof a)
                           : "?";
    const char *proxy = evs_transport_get_proxy_peername(t, &ss, &sl) == 0
                            ? evs_format_address((struct sockaddr *)&ss, sl, b, sizeof b)
                            : "-";
    const void *tlv;
    int tl = evs_transport_get_proxy_tlv(t, 0x05, &tlv);
    int n = snprintf(line, sizeof line, "peer=%s proxy=%s id=%.*s\n", peer, proxy, tl > 0 ? tl : 1,
                     tl > 0 ? (const char *)tlv : "-");
    evs_write(w, line, (size_t)n);
    char buf[4096];
    ssize_t got;
    while ((got = evs_read(r, buf, sizeof buf)) > 0) evs_write(w, buf, (size_t)got);
}

struct ProxyServer {
    evs_runtime *rt = nullptr;
    evs_server *s = nullptr;
    uint16_t port = 0;
    explicit ProxyServer(const char *trusted, double timeout = 0, size_t per_ip = 0) {
        evs_runtime_options ro{};
        ro.workers = 1;
        EXPECT_EQ(0, evs_runtime_new(&ro, &rt));
        static const char *list[1];
        list[0] = trusted;
        evs_server_options o{};
        o.client_connected = whoami;
        o.host = "127.0.0.1";
        o.proxy_protocol = true;
        o.proxy_trusted = list;
        o.nproxy_trusted = 1;
        o.proxy_timeout = timeout;
        o.max_connections_per_ip = per_ip;
        o.reject_message = "busy\n";
        EXPECT_EQ(0, evs_start_server(rt, &o, &s));
        port = evs_server_port(s);
    }
    ~ProxyServer() { evs_runtime_stop(rt, 5); }
    uint64_t rejected() {
        evs_server_stats st;
        evs_server_stats_get(s, &st);
        return st.proxy_rejected;
    }
};

std::string line_of(int fd) {
    std::string s;
    char c;
    while (recv(fd, &c, 1, 0) == 1 && c != '\n') s += c;
    return s;
}

}  // namespace

TEST(ProxyServer, NeedsTrustedNetworks) {
    evs_runtime *rt;
    evs_runtime_options ro{};
    ro.workers = 1;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    evs_server_options o{};
    o.client_connected = whoami;
    o.host = "127.0.0.1";
    o.proxy_protocol = true;
    EXPECT_EQ(-EINVAL, evs_start_server(rt, &o, nullptr));
    o.nproxy_trusted = 1;
    for (const char *bad : {"10.0.0.0/33", "10.0.0.0/", "10.0.0.0/ 8", "10.0.0.0/+8", "10.0.0.0/-0",
                            "10.0.0.0/8x", "::ffff:10.0.0.0/129"}) {
        o.proxy_trusted = &bad;
        EXPECT_EQ(-EINVAL, evs_start_server(rt, &o, nullptr)) << bad;
    }
    evs_runtime_stop(rt, 1);
}

// A network written as IPv4-mapped IPv6 trusts the IPv4 peers in it, as
// the peers themselves are matched (it was accepted and matched nobody).
TEST(ProxyServer, AnIpv4MappedNetworkTrustsItsIpv4Peers) {
    ProxyServer srv("::ffff:127.0.0.0/104");
    int fd = connect_tcp(srv.port);
    std::string msg = "PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n";
    ASSERT_TRUE(write_all(fd, msg.data(), msg.size()));
    std::string first = line_of(fd);
    EXPECT_EQ(0u, first.rfind("peer=203.0.113.9:40000 proxy=127.0.0.1:", 0)) << first;
    close(fd);
}

TEST(ProxyServer, V1HeaderGivesTheRealClientAndDataAfterItArrives) {
    ProxyServer srv("127.0.0.0/8");
    int fd = connect_tcp(srv.port);
    std::string msg = "PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nhello";
    ASSERT_TRUE(write_all(fd, msg.data(), msg.size()));  // header and data in one segment
    std::string first = line_of(fd);
    EXPECT_EQ(0u, first.rfind("peer=203.0.113.9:40000 proxy=127.0.0.1:", 0)) << first;
    char back[5];
    ASSERT_TRUE(read_exact(fd, back, 5));
    EXPECT_EQ("hello", std::string(back, 5));
    close(fd);
}

// Per-address limits count the client each header names, not the proxy
// every connection comes from: with one connection per address, a second
// client through the same proxy was refused and no client was ever limited.
TEST(ProxyServer, PerAddressLimitsCountTheClientsBehindTheProxy) {
    ProxyServer srv("127.0.0.0/8", 0, 1);
    auto open_as = [&](const char *client) {
        int fd = connect_tcp(srv.port);
        std::string h = std::string("PROXY TCP4 ") + client + " 127.0.0.1 40000 80\r\n";
        EXPECT_TRUE(write_all(fd, h.data(), h.size()));
        return fd;
    };
    int a = open_as("198.51.100.1");
    EXPECT_EQ(0u, line_of(a).rfind("peer=198.51.100.1:40000", 0));
    int b = open_as("203.0.113.7");  // another client, the same proxy
    EXPECT_EQ(0u, line_of(b).rfind("peer=203.0.113.7:40000", 0));
    int a2 = open_as("198.51.100.1");  // the first client again: over its limit
    EXPECT_EQ("busy", line_of(a2));
    char c;
    EXPECT_LE(recv(a2, &c, 1, 0), 0);
    close(a2);
    close(a);  // its slot comes back once the close is seen
    bool served = false;
    for (int i = 0; i < 1000 && !served; i++) {
        int again = open_as("198.51.100.1");
        served = line_of(again).rfind("peer=198.51.100.1:40000", 0) == 0;
        close(again);
        if (!served) usleep(10 * 1000);
    }
    EXPECT_TRUE(served);
    evs_server_stats st;
    evs_server_stats_get(srv.s, &st);
    EXPECT_GE(st.rejected_per_ip, 1u);
    close(b);
}

TEST(ProxyServer, V2HeaderWithTlvsInPieces) {
    ProxyServer srv("127.0.0.1");
    int fd = connect_tcp(srv.port);
    std::string tlv = std::string("\x05\x00\x04", 3) + "req7";
    std::string h = v2(1, 0x11, v4_body("198.51.100.20", "127.0.0.1", 5555, 80) + tlv) + "xyz";
    for (char c : h) {  // one byte at a time
        ASSERT_TRUE(write_all(fd, &c, 1));
        usleep(200);
    }
    EXPECT_EQ(0u, line_of(fd).rfind("peer=198.51.100.20:5555 proxy=127.0.0.1:", 0));
    char back[3];
    ASSERT_TRUE(read_exact(fd, back, 3));
    EXPECT_EQ("xyz", std::string(back, 3));
    close(fd);
    int fd2 = connect_tcp(srv.port);
    std::string h2 = v2(1, 0x11, v4_body("198.51.100.21", "127.0.0.1", 1, 80) + tlv);
    ASSERT_TRUE(write_all(fd2, h2.data(), h2.size()));
    EXPECT_NE(std::string::npos, line_of(fd2).find("id=req7"));
    close(fd2);
}

TEST(ProxyServer, LocalCommandKeepsTheSocketAddresses) {
    ProxyServer srv("127.0.0.1");
    int fd = connect_tcp(srv.port);
    std::string h = v2(0, 0x00, "");
    ASSERT_TRUE(write_all(fd, h.data(), h.size()));
    std::string first = line_of(fd);
    EXPECT_EQ(0u, first.rfind("peer=127.0.0.1:", 0)) << first;
    EXPECT_NE(std::string::npos, first.find("proxy=-")) << first;
    close(fd);
}

TEST(ProxyServer, UntrustedMalformedAndLateHeadersAreClosed) {
    ProxyServer untrusted("10.0.0.0/8");
    int fd = connect_tcp(untrusted.port);
    std::string msg = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
    write_all(fd, msg.data(), msg.size());
    EXPECT_EQ("", read_to_eof(fd));
    close(fd);
    EXPECT_EQ(1u, untrusted.rejected());

    ProxyServer srv("127.0.0.1", 0.2);
    fd = connect_tcp(srv.port);
    msg = "GET / HTTP/1.1\r\n\r\n";
    write_all(fd, msg.data(), msg.size());
    EXPECT_EQ("", read_to_eof(fd));
    close(fd);
    fd = connect_tcp(srv.port);
    write_all(fd, "PROXY TCP4", 10);  // then silence
    EXPECT_EQ("", read_to_eof(fd));
    close(fd);
    for (int i = 0; i < 1000 && srv.rejected() < 2; i++) usleep(1000);
    EXPECT_EQ(2u, srv.rejected());
}

// haproxy, when installed, as the real proxy in front: send-proxy (v1) and
// send-proxy-v2.
TEST(ProxyServer, BehindARealHaproxy) {
    if (system("command -v haproxy >/dev/null 2>&1") != 0) GTEST_SKIP() << "haproxy is not installed";
    ProxyServer srv("127.0.0.1");
    for (const char *mode : {"send-proxy", "send-proxy-v2"}) {
        std::string dir = make_temp_dir();
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(l, (struct sockaddr *)&sin, sizeof sin);
        socklen_t len = sizeof sin;
        getsockname(l, (struct sockaddr *)&sin, &len);
        uint16_t front = ntohs(sin.sin_port);
        close(l);  // haproxy binds it next
        std::ofstream(dir + "/haproxy.cfg")
            << "global\n  maxconn 100\n"
            << "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            << "frontend f\n  bind 127.0.0.1:" << front << "\n  default_backend b\n"
            << "backend b\n  server s 127.0.0.1:" << srv.port << " " << mode << "\n";
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            execlp("haproxy", "haproxy", "-db", "-f", (dir + "/haproxy.cfg").c_str(), (char *)nullptr);
            _exit(127);
        }
        int fd = -1;
        for (int i = 0; i < 500 && fd < 0; i++) {
            fd = connect_tcp(front);
            if (fd < 0) usleep(10 * 1000);
        }
        ASSERT_GE(fd, 0) << "haproxy did not start";
        struct sockaddr_in me{};
        len = sizeof me;
        getsockname(fd, (struct sockaddr *)&me, &len);
        ASSERT_TRUE(write_all(fd, "ping", 4));
        std::string first = line_of(fd);
        // The peer is this test's own socket, not haproxy's.
        EXPECT_EQ(0u, first.rfind("peer=127.0.0.1:" + std::to_string(ntohs(me.sin_port)) + " proxy=127.0.0.1:", 0))
            << mode << ": " << first;
        char back[4];
        EXPECT_TRUE(read_exact(fd, back, 4));
        EXPECT_EQ("ping", std::string(back, 4));
        close(fd);
        kill(pid, SIGTERM);
        int st;
        waitpid(pid, &st, 0);
        remove_dir(dir);
    }
}
