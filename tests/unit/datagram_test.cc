// Datagram endpoints: UDP over IPv4 and IPv6 and Unix datagram sockets,
// bound (server side) and connected (client side); sendto with and without
// an address and the seed's address rules; empty datagrams; error_received
// for ICMP errors (connected and unconnected), oversized sends and
// datagrams larger than max_datagram; write-queue flow control; close
// flushing and abort dropping; pause/resume_reading; SO_REUSEPORT; extra
// info. Everything over real sockets inside evs_run().
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <functional>
#include <atomic>
#include <string>
#include <vector>

#include <evstream/datagram.h>

#include "helpers.h"

using namespace evs_test;

namespace {

template <typename F>
void run(F f) {
    EXPECT_EQ(0, run_in_task(f));
}


struct Dg {
    std::string data;
    struct sockaddr_storage from;
    socklen_t fromlen;
};

struct Rec {
    int made = 0, lost = 0, pause = 0, resume = 0, after_lost = 0;
    int lost_err = INT_MIN;
    std::vector<Dg> got;
    std::vector<int> errors;
    evs_datagram *d = nullptr;
    bool echo = false;  // send every datagram back to its sender
};

Rec *R(void *c) { return static_cast<Rec *>(c); }

const evs_datagram_protocol kProto = {
    .connection_made = [](evs_datagram *d, void *c) { R(c)->made++; R(c)->d = d; },
    .datagram_received =
        [](evs_datagram *d, const void *data, size_t len, const struct sockaddr *a,
           socklen_t alen, void *c) {
            Rec &r = *R(c);
            if (r.lost) r.after_lost++;
            Dg g;
            g.data.assign(static_cast<const char *>(data), len);
            memset(&g.from, 0, sizeof g.from);
            if (a) memcpy(&g.from, a, alen);
            g.fromlen = alen;
            r.got.push_back(g);
            if (r.echo) {
                EXPECT_EQ(0, evs_datagram_sendto(d, data, len, a, alen));
            }
        },
    .error_received = [](evs_datagram *, int err, void *c) { R(c)->errors.push_back(err); },
    .connection_lost =
        [](evs_datagram *, int err, void *c) {
            R(c)->lost++;
            R(c)->lost_err = err;
        },
    .pause_writing = [](evs_datagram *, void *c) { R(c)->pause++; },
    .resume_writing = [](evs_datagram *, void *c) { R(c)->resume++; },
};

struct sockaddr_in loopback4(uint16_t port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

struct sockaddr_in6 loopback6(uint16_t port) {
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    return a;
}

struct sockaddr_un unix_addr(const std::string &path, socklen_t *len) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path.size() + 1);
    return a;
}

uint16_t port_of(evs_datagram *d) {
    struct sockaddr_storage ss;
    socklen_t sl;
    EXPECT_EQ(0, evs_datagram_get_sockname(d, &ss, &sl));
    return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                         : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

// A UDP port nobody listens on (bound and closed at once).
uint16_t closed_udp_port() {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = loopback4(0);
    socklen_t l = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

// Server bound, client connected: a round trip both ways, then close.
void round_trip(const struct sockaddr *srv_addr, socklen_t srv_len,
                const struct sockaddr *cli_local, socklen_t cli_local_len,
                std::function<void(const struct sockaddr *, socklen_t *)> fill_remote) {
    Rec srv, cli;
    srv.echo = true;
    run([&] {
        evs_datagram_options so = {};
        so.local_addr = srv_addr;
        so.local_addrlen = srv_len;
        evs_datagram *s = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&so, &kProto, &srv, &s));
        EXPECT_EQ(1, srv.made);
        EXPECT_EQ(s, srv.d);
        struct sockaddr_storage remote;
        socklen_t rl = 0;
        {
            struct sockaddr_storage ss;
            socklen_t sl;
            ASSERT_EQ(0, evs_datagram_get_sockname(s, &ss, &sl));
            memcpy(&remote, &ss, sl);
            rl = sl;
            fill_remote((struct sockaddr *)&remote, &rl);
        }
        struct sockaddr_storage peer;
        socklen_t pl;
        EXPECT_EQ(-ENOTCONN, evs_datagram_get_peername(s, &peer, &pl));
        evs_datagram_options co = {};
        co.local_addr = cli_local;
        co.local_addrlen = cli_local_len;
        co.remote_addr = (struct sockaddr *)&remote;
        co.remote_addrlen = rl;
        evs_datagram *c = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&co, &kProto, &cli, &c));
        EXPECT_EQ(0, evs_datagram_get_peername(c, &peer, &pl));
        EXPECT_EQ(remote.ss_family, peer.ss_family);
        for (int i = 0; i < 5; i++) {
            std::string msg = "datagram " + std::to_string(i);
            ASSERT_EQ(0, evs_datagram_sendto(c, msg.data(), msg.size(), nullptr, 0));
        }
        EXPECT_TRUE(wait_until([&] { return cli.got.size() == 5; }));
        ASSERT_EQ(5u, srv.got.size());
        for (int i = 0; i < 5; i++) {
            EXPECT_EQ("datagram " + std::to_string(i), srv.got[(size_t)i].data);
            EXPECT_EQ("datagram " + std::to_string(i), cli.got[(size_t)i].data);
        }
        // The server saw the client's address.
        struct sockaddr_storage cs;
        socklen_t cl;
        ASSERT_EQ(0, evs_datagram_get_sockname(c, &cs, &cl));
        EXPECT_EQ(cs.ss_family, srv.got[0].from.ss_family);
        char a[128], b[128];
        EXPECT_STREQ(evs_format_address((struct sockaddr *)&cs, cl, a, sizeof a),
                     evs_format_address((struct sockaddr *)&srv.got[0].from, srv.got[0].fromlen,
                                        b, sizeof b));
        evs_datagram_close(c);
        evs_datagram_close(s);
        EXPECT_TRUE(evs_datagram_is_closing(s));
        EXPECT_EQ(0, srv.lost);  // never from inside close()
        EXPECT_TRUE(wait_until([&] { return srv.lost == 1 && cli.lost == 1; }));
        EXPECT_EQ(0, srv.lost_err);
        EXPECT_EQ(0, cli.lost_err);
    });
    EXPECT_TRUE(srv.errors.empty());
    EXPECT_TRUE(cli.errors.empty());
    EXPECT_EQ(0, srv.after_lost + cli.after_lost);
}

}  // namespace

TEST(DatagramTest, UdpIpv4ServerAndConnectedClient) {
    struct sockaddr_in a = loopback4(0);
    round_trip((struct sockaddr *)&a, sizeof a, nullptr, 0,
               [](const struct sockaddr *, socklen_t *) {});
}

TEST(DatagramTest, UdpIpv6ServerAndConnectedClient) {
    int probe = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 a = loopback6(0);
    if (probe < 0 || bind(probe, (struct sockaddr *)&a, sizeof a) < 0) {
        if (probe >= 0) close(probe);
        GTEST_SKIP() << "no IPv6 loopback";
    }
    close(probe);
    round_trip((struct sockaddr *)&a, sizeof a, nullptr, 0,
               [](const struct sockaddr *, socklen_t *) {});
}

TEST(DatagramTest, UnixDatagramServerAndConnectedClient) {
    std::string dir = make_temp_dir();
    socklen_t sl, cl;
    struct sockaddr_un s = unix_addr(dir + "/srv.sock", &sl);
    struct sockaddr_un c = unix_addr(dir + "/cli.sock", &cl);
    round_trip((struct sockaddr *)&s, sl, (struct sockaddr *)&c, cl,
               [](const struct sockaddr *, socklen_t *) {});
    remove_dir(dir);
}

// A client bound to a path whose connect fails leaves no socket file.
TEST(DatagramTest, AFailedUnixOpenLeavesNoSocketFile) {
    std::string dir = make_temp_dir();
    socklen_t sl, cl;
    struct sockaddr_un nobody = unix_addr(dir + "/nobody.sock", &sl);
    struct sockaddr_un c = unix_addr(dir + "/cli.sock", &cl);
    Rec cli;
    run([&] {
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&c;
        o.local_addrlen = cl;
        o.remote_addr = (struct sockaddr *)&nobody;
        o.remote_addrlen = sl;
        evs_datagram *d = nullptr;
        EXPECT_EQ(-ENOENT, evs_datagram_open(&o, &kProto, &cli, &d));
        EXPECT_EQ(nullptr, d);
    });
    struct stat st;
    EXPECT_NE(0, lstat((dir + "/cli.sock").c_str(), &st)) << "the failed open left its socket file";
    remove_dir(dir);
}

TEST(DatagramTest, SendtoAddressRules) {
    Rec srv, cli, other;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *s = nullptr, *x = nullptr, *c = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &srv, &s));
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &other, &x));
        struct sockaddr_in sa = loopback4(port_of(s));
        struct sockaddr_in xa = loopback4(port_of(x));
        // Unconnected: an address is required.
        EXPECT_EQ(-EDESTADDRREQ, evs_datagram_sendto(s, "x", 1, nullptr, 0));
        EXPECT_EQ(-EINVAL, evs_datagram_sendto(s, "x", 1, (struct sockaddr *)&xa, 1));
        EXPECT_EQ(0, evs_datagram_sendto(s, "to x", 4, (struct sockaddr *)&xa, sizeof xa));
        // Connected: none, or the remote address itself.
        evs_datagram_options co = {};
        co.remote_addr = (struct sockaddr *)&sa;
        co.remote_addrlen = sizeof sa;
        ASSERT_EQ(0, evs_datagram_open(&co, &kProto, &cli, &c));
        EXPECT_EQ(-EISCONN, evs_datagram_sendto(c, "no", 2, (struct sockaddr *)&xa, sizeof xa));
        EXPECT_EQ(0, evs_datagram_sendto(c, "same", 4, (struct sockaddr *)&sa, sizeof sa));
        EXPECT_EQ(0, evs_datagram_sendto(c, "", 0, nullptr, 0));  // an empty datagram
        EXPECT_TRUE(wait_until([&] { return srv.got.size() == 2 && other.got.size() == 1; }));
        EXPECT_EQ("same", srv.got[0].data);
        EXPECT_EQ("", srv.got[1].data);
        EXPECT_EQ("to x", other.got[0].data);
        evs_datagram_close(c);
        // After close: -EPIPE, nothing sent.
        EXPECT_EQ(-EPIPE, evs_datagram_sendto(c, "late", 4, nullptr, 0));
        evs_datagram_close(s);
        evs_datagram_close(x);
        EXPECT_TRUE(wait_until([&] { return srv.lost + cli.lost + other.lost == 3; }));
    });
    EXPECT_EQ(2u, srv.got.size());
}

TEST(DatagramTest, IcmpPortUnreachableReachesErrorReceivedConnected) {
    Rec cli;
    run([&] {
        struct sockaddr_in dst = loopback4(closed_udp_port());
        evs_datagram_options o = {};
        o.remote_addr = (struct sockaddr *)&dst;
        o.remote_addrlen = sizeof dst;
        evs_datagram *c = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &cli, &c));
        ASSERT_EQ(0, evs_datagram_sendto(c, "anyone?", 7, nullptr, 0));
        EXPECT_TRUE(wait_until([&] { return !cli.errors.empty(); }));
        ASSERT_FALSE(cli.errors.empty());
        EXPECT_EQ(-ECONNREFUSED, cli.errors[0]);
        // The endpoint lives on: not lost, still sending.
        EXPECT_FALSE(evs_datagram_is_closing(c));
        EXPECT_EQ(0, cli.lost);
        EXPECT_EQ(0, evs_datagram_sendto(c, "again", 5, nullptr, 0));
        evs_datagram_close(c);
        EXPECT_TRUE(wait_until([&] { return cli.lost == 1; }));
        EXPECT_EQ(0, cli.lost_err);
    });
}

TEST(DatagramTest, IcmpPortUnreachableReachesErrorReceivedUnconnected) {
    Rec s;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        struct sockaddr_in dst = loopback4(closed_udp_port());
        ASSERT_EQ(0, evs_datagram_sendto(d, "ping", 4, (struct sockaddr *)&dst, sizeof dst));
        EXPECT_TRUE(wait_until([&] { return !s.errors.empty(); }));
        ASSERT_EQ(1u, s.errors.size());  // reported once, not again and again
        EXPECT_EQ(-ECONNREFUSED, s.errors[0]);
        EXPECT_EQ(0, evs_sleep(0.05));
        EXPECT_EQ(1u, s.errors.size());
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
}

// Linux leaves an ICMP error pending on the socket as well as in the
// error queue, and the next sendto() failed with it whatever its address:
// one peer's "port unreachable" cost the next reply to another peer, and
// the error was reported twice (from the send, then from the queue).
TEST(DatagramTest, OnePeersIcmpErrorDoesNotCostADatagramToAnother) {
    Rec s;
    int live = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(live, 0);
    struct sockaddr_in la = loopback4(0);
    socklen_t ll = sizeof la;
    ASSERT_EQ(0, bind(live, (struct sockaddr *)&la, sizeof la));
    ASSERT_EQ(0, getsockname(live, (struct sockaddr *)&la, &ll));
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        struct sockaddr_in gone = loopback4(closed_udp_port());
        ASSERT_EQ(0, evs_datagram_sendto(d, "ping", 4, (struct sockaddr *)&gone, sizeof gone));
        usleep(50 * 1000);  // the ICMP error arrives; the loop does not run
        ASSERT_EQ(0, evs_datagram_sendto(d, "reply", 5, (struct sockaddr *)&la, sizeof la));
        char buf[16];
        ssize_t n = recv(live, buf, sizeof buf, MSG_DONTWAIT);
        EXPECT_EQ(5, n);
        EXPECT_EQ(0, evs_sleep(0.05));
        ASSERT_EQ(1u, s.errors.size());
        EXPECT_EQ(-ECONNREFUSED, s.errors[0]);
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
    close(live);
}

// An IPv6 endpoint that is not v6-only serves IPv4 peers too; their ICMPv4
// errors reached nobody (only IPV6_RECVERR was on).
TEST(DatagramTest, IcmpErrorsOfIpv4PeersReachADualStackEndpoint) {
    Rec s;
    run([&] {
        struct sockaddr_in6 a = loopback6(0);
        a.sin6_addr = in6addr_any;
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        int rc = evs_datagram_open(&o, &kProto, &s, &d);
        if (rc == -EAFNOSUPPORT || rc == -EADDRNOTAVAIL) GTEST_SKIP() << "no IPv6 here";
        ASSERT_EQ(0, rc);
        int v6only = 1;
        socklen_t vl = sizeof v6only;
        ASSERT_EQ(0, getsockopt(evs_datagram_get_fd(d), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vl));
        if (v6only) GTEST_SKIP() << "IPv6 sockets are v6-only here";
        struct sockaddr_in6 gone = loopback6(closed_udp_port());
        ASSERT_EQ(1, inet_pton(AF_INET6, "::ffff:127.0.0.1", &gone.sin6_addr));
        ASSERT_EQ(0, evs_datagram_sendto(d, "ping", 4, (struct sockaddr *)&gone, sizeof gone));
        EXPECT_TRUE(wait_until([&] { return !s.errors.empty(); }));
        ASSERT_EQ(1u, s.errors.size());
        EXPECT_EQ(-ECONNREFUSED, s.errors[0]);
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
}

// A Unix path that is a stream socket (EPROTOTYPE) or lies under a file
// (ENOTDIR) is that datagram's error: it ended the endpoint, and with it
// evstreamd's unixgram: listener, for any local client that swapped its
// socket file.
TEST(DatagramTest, AUnixPathThatCannotTakeDatagramsCostsOneDatagram) {
    std::string dir = make_temp_dir();
    int stream = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t sl, fl, rl;
    struct sockaddr_un sa = unix_addr(dir + "/stream.sock", &sl);
    ASSERT_EQ(0, bind(stream, (struct sockaddr *)&sa, sl));
    ASSERT_EQ(0, listen(stream, 1));
    int file = open((dir + "/file").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(file, 0);
    close(file);
    struct sockaddr_un fa = unix_addr(dir + "/file/sock", &fl);
    Rec s, r;
    run([&] {
        struct sockaddr_un ra = unix_addr(dir + "/ok.sock", &rl);
        evs_datagram_options ro = {};
        ro.local_addr = (struct sockaddr *)&ra;
        ro.local_addrlen = rl;
        evs_datagram *rd = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&ro, &kProto, &r, &rd));
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_new(fd, 0, &kProto, &s, &d));
        EXPECT_EQ(0, evs_datagram_sendto(d, "a", 1, (struct sockaddr *)&sa, sl));
        EXPECT_EQ(0, evs_datagram_sendto(d, "b", 1, (struct sockaddr *)&fa, fl));
        EXPECT_EQ(0, evs_datagram_sendto(d, "c", 1, (struct sockaddr *)&ra, rl));
        EXPECT_TRUE(wait_until([&] { return r.got.size() == 1; }));
        ASSERT_EQ(2u, s.errors.size());
        EXPECT_EQ(-EPROTOTYPE, s.errors[0]);
        EXPECT_EQ(-ENOTDIR, s.errors[1]);
        EXPECT_FALSE(evs_datagram_is_closing(d));
        EXPECT_EQ(0, s.lost);
        evs_datagram_close(d);
        evs_datagram_close(rd);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1 && r.lost == 1; }));
        EXPECT_EQ(0, s.lost_err);
    });
    close(stream);
}

TEST(DatagramTest, OversizedSendIsReportedNotFatal) {
    Rec s;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        struct sockaddr_in self = loopback4(port_of(d));
        std::string huge(70000, 'h');  // over UDP's 65507-byte payload limit
        EXPECT_EQ(0, evs_datagram_sendto(d, huge.data(), huge.size(), (struct sockaddr *)&self,
                                         sizeof self));
        ASSERT_EQ(1u, s.errors.size());
        EXPECT_EQ(-EMSGSIZE, s.errors[0]);
        EXPECT_EQ(0u, evs_datagram_get_write_buffer_size(d));
        // Still working: a normal datagram to itself arrives.
        EXPECT_EQ(0, evs_datagram_sendto(d, "ok", 2, (struct sockaddr *)&self, sizeof self));
        EXPECT_TRUE(wait_until([&] { return s.got.size() == 1; }));
        EXPECT_EQ("ok", s.got[0].data);
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
        EXPECT_EQ(0, s.lost_err);
    });
}

TEST(DatagramTest, DatagramLargerThanMaxIsDroppedWithEmsgsize) {
    Rec s;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        o.max_datagram = 100;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        struct sockaddr_in dst = loopback4(port_of(d));
        int raw = socket(AF_INET, SOCK_DGRAM, 0);
        std::string big(200, 'B'), exact(100, 'E'), small(50, 's');
        sendto(raw, big.data(), big.size(), 0, (struct sockaddr *)&dst, sizeof dst);
        sendto(raw, exact.data(), exact.size(), 0, (struct sockaddr *)&dst, sizeof dst);
        sendto(raw, small.data(), small.size(), 0, (struct sockaddr *)&dst, sizeof dst);
        close(raw);
        EXPECT_TRUE(wait_until([&] { return s.got.size() == 2; }));
        ASSERT_EQ(1u, s.errors.size());
        EXPECT_EQ(-EMSGSIZE, s.errors[0]);
        ASSERT_EQ(2u, s.got.size());
        EXPECT_EQ(exact, s.got[0].data);  // exactly max_datagram is whole
        EXPECT_EQ(small, s.got[1].data);
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
}

TEST(DatagramTest, FlowControlQueuesPausesAndResumesInOrder) {
    int sv[2];
    ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv));
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    Rec s;
    std::vector<std::string> received;
    run([&] {
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_new(sv[0], 0, &kProto, &s, &d));
        ASSERT_EQ(0, evs_datagram_set_write_buffer_limits(d, 4000, 1000));
        size_t lo, hi;
        evs_datagram_get_write_buffer_limits(d, &lo, &hi);
        EXPECT_EQ(4000u, hi);
        EXPECT_EQ(1000u, lo);
        // The peer does not read: the kernel fills up, then the queue grows.
        int i = 0;
        while (s.pause == 0 && i < 10000) {
            std::string msg = std::to_string(i++) + std::string(500, '.');
            ASSERT_EQ(0, evs_datagram_sendto(d, msg.data(), msg.size(), nullptr, 0));
        }
        ASSERT_EQ(1, s.pause);
        EXPECT_GT(evs_datagram_get_write_buffer_size(d), 4000u);
        EXPECT_EQ(0, s.resume);
        // Reading on the peer lets the queue drain: resume at or below low.
        char buf[2048];
        EXPECT_TRUE(wait_until([&] {
            ssize_t n;
            while ((n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT)) >= 0)
                received.emplace_back(buf, (size_t)n);
            return (int)received.size() == i;
        }));
        EXPECT_EQ(1, s.resume);
        EXPECT_EQ(0u, evs_datagram_get_write_buffer_size(d));
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
    for (size_t k = 0; k < received.size(); k++)
        EXPECT_EQ(std::to_string(k), received[k].substr(0, std::to_string(k).size()));
    EXPECT_TRUE(s.errors.empty());
    close(sv[1]);
}

// A Unix receiver that does not read fills its own queue, which our
// socket's writability cannot show: those datagrams are dropped and
// reported (-EAGAIN), and one that shut down its reading side gives
// -EPIPE; neither queues, spins or ends the endpoint, and other receivers
// are still served. The first queued for good and spun the worker; the
// second lost the endpoint.
TEST(DatagramTest, UnixReceiversThatDoNotReadCostTheirDatagramsOnly) {
    std::string dir = make_temp_dir();
    socklen_t sl, fl, cl, rl;
    struct sockaddr_un srv = unix_addr(dir + "/srv.sock", &sl);
    struct sockaddr_un full = unix_addr(dir + "/full.sock", &fl);
    struct sockaddr_un closed = unix_addr(dir + "/closed.sock", &cl);
    struct sockaddr_un reader = unix_addr(dir + "/reader.sock", &rl);
    int fd_full = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int fd_closed = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int fd_reader = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(0, bind(fd_full, (struct sockaddr *)&full, fl));
    ASSERT_EQ(0, bind(fd_closed, (struct sockaddr *)&closed, cl));
    ASSERT_EQ(0, bind(fd_reader, (struct sockaddr *)&reader, rl));
    ASSERT_EQ(0, shutdown(fd_closed, SHUT_RD));
    Rec s;
    run([&] {
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&srv;
        o.local_addrlen = sl;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        // Far more than a Unix receive queue holds (max_dgram_qlen, 10 by default).
        for (int i = 0; i < 200; i++)
            ASSERT_EQ(0, evs_datagram_sendto(d, "x", 1, (struct sockaddr *)&full, fl));
        EXPECT_EQ(0u, evs_datagram_get_write_buffer_size(d));
        EXPECT_EQ(0, evs_datagram_sendto(d, "y", 1, (struct sockaddr *)&closed, cl));
        EXPECT_EQ(0, evs_datagram_sendto(d, "z", 1, (struct sockaddr *)&reader, rl));
        char buf[8];
        EXPECT_TRUE(wait_until([&] { return recv(fd_reader, buf, sizeof buf, MSG_DONTWAIT) == 1; }));
        EXPECT_EQ('z', buf[0]);
        evs_yield();
        EXPECT_EQ(0, s.lost);
        EXPECT_EQ(0u, evs_datagram_get_write_buffer_size(d));
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
        EXPECT_EQ(0, s.lost_err);
    });
    int eagain = 0, epipe = 0;
    for (int e : s.errors) {
        eagain += e == -EAGAIN;
        epipe += e == -EPIPE;
    }
    EXPECT_GT(eagain, 0);
    EXPECT_EQ(eagain + epipe, (int)s.errors.size());
    EXPECT_EQ(1, epipe);
    close(fd_full);
    close(fd_closed);
    close(fd_reader);
    remove_dir(dir);
}

TEST(DatagramTest, CloseFlushesQueueAbortDropsIt) {
    for (bool abort_it : {false, true}) {
        int sv[2];
        ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv));
        int small = 4096;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        Rec s;
        size_t sent = 0, received = 0;
        run([&] {
            evs_datagram *d = nullptr;
            ASSERT_EQ(0, evs_datagram_new(sv[0], 0, &kProto, &s, &d));
            while (evs_datagram_get_write_buffer_size(d) < 10000) {
                ASSERT_EQ(0, evs_datagram_sendto(d, std::string(400, 'q').data(), 400, nullptr, 0));
                sent++;
            }
            if (abort_it)
                evs_datagram_abort(d);
            else
                evs_datagram_close(d);
            EXPECT_EQ(0, s.lost);
            char buf[1024];
            EXPECT_TRUE(wait_until([&] {
                while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0) received++;
                return s.lost == 1;
            }));
            while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0) received++;
            EXPECT_EQ(0, s.lost_err);
        });
        if (abort_it)
            EXPECT_LT(received, sent);
        else
            EXPECT_EQ(sent, received);
        close(sv[1]);
    }
}

TEST(DatagramTest, PauseAndResumeReading) {
    Rec s;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        EXPECT_TRUE(evs_datagram_is_reading(d));
        evs_datagram_pause_reading(d);
        evs_datagram_pause_reading(d);  // idempotent
        EXPECT_FALSE(evs_datagram_is_reading(d));
        struct sockaddr_in self = loopback4(port_of(d));
        EXPECT_EQ(0, evs_datagram_sendto(d, "held", 4, (struct sockaddr *)&self, sizeof self));
        EXPECT_EQ(0, evs_sleep(0.05));
        EXPECT_TRUE(s.got.empty());
        evs_datagram_resume_reading(d);
        EXPECT_TRUE(wait_until([&] { return s.got.size() == 1; }));
        EXPECT_EQ("held", s.got[0].data);
        evs_datagram_close(d);
        EXPECT_FALSE(evs_datagram_is_reading(d));
        EXPECT_TRUE(wait_until([&] { return s.lost == 1; }));
    });
}

TEST(DatagramTest, ReusePortLetsSeveralEndpointsShareAPort) {
    Rec a1, a2, a3;
    run([&] {
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        o.reuse_port = true;
        evs_datagram *d1 = nullptr, *d2 = nullptr, *d3 = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &a1, &d1));
        struct sockaddr_in same = loopback4(port_of(d1));
        o.local_addr = (struct sockaddr *)&same;
        EXPECT_EQ(0, evs_datagram_open(&o, &kProto, &a2, &d2));
        EXPECT_EQ(port_of(d1), port_of(d2));
        o.reuse_port = false;
        EXPECT_EQ(-EADDRINUSE, evs_datagram_open(&o, &kProto, &a3, &d3));
        EXPECT_EQ(0, a3.made);
        evs_datagram_close(d1);
        evs_datagram_close(d2);
        EXPECT_TRUE(wait_until([&] { return a1.lost + a2.lost == 2; }));
    });
}

TEST(DatagramTest, ExtraInfoProtocolSwitchAndBadArguments) {
    Rec s, s2;
    run([&] {
        EXPECT_EQ(-EINVAL, evs_datagram_open(nullptr, &kProto, &s, nullptr));
        evs_datagram_options none = {};
        EXPECT_EQ(-EINVAL, evs_datagram_open(&none, &kProto, &s, nullptr));
        int stream = socket(AF_INET, SOCK_STREAM, 0);
        EXPECT_EQ(-EINVAL, evs_datagram_new(stream, 0, &kProto, &s, nullptr));
        EXPECT_EQ(-1, fcntl(stream, F_GETFD));  // closed on failure
        // A receive buffer of SIZE_MAX + 1 bytes was malloc(0): every
        // datagram was then dropped as too big.
        int dgram = socket(AF_INET, SOCK_DGRAM, 0);
        EXPECT_EQ(-EINVAL, evs_datagram_new(dgram, SIZE_MAX, &kProto, &s, nullptr));
        EXPECT_EQ(-1, fcntl(dgram, F_GETFD));
        std::string dir = make_temp_dir();  // refused before a socket file is made
        socklen_t ul;
        struct sockaddr_un u = unix_addr(dir + "/big.sock", &ul);
        evs_datagram_options big = {};
        big.local_addr = (struct sockaddr *)&u;
        big.local_addrlen = ul;
        big.max_datagram = SIZE_MAX;
        EXPECT_EQ(-EINVAL, evs_datagram_open(&big, &kProto, &s, nullptr));
        EXPECT_NE(0, access((dir + "/big.sock").c_str(), F_OK));
        remove_dir(dir);
        struct sockaddr_in a = loopback4(0);
        evs_datagram_options o = {};
        o.local_addr = (struct sockaddr *)&a;
        o.local_addrlen = sizeof a;
        evs_datagram *d = nullptr;
        ASSERT_EQ(0, evs_datagram_open(&o, &kProto, &s, &d));
        EXPECT_GE(evs_datagram_get_fd(d), 0);
        EXPECT_EQ(evs_worker_current(), evs_datagram_worker(d));
        void *ctx = nullptr;
        EXPECT_EQ(&kProto, evs_datagram_get_protocol(d, &ctx));
        EXPECT_EQ(&s, ctx);
        evs_datagram_set_protocol(d, &kProto, &s2);
        struct sockaddr_in self = loopback4(port_of(d));
        EXPECT_EQ(0, evs_datagram_sendto(d, "new", 3, (struct sockaddr *)&self, sizeof self));
        EXPECT_TRUE(wait_until([&] { return s2.got.size() == 1; }));
        EXPECT_TRUE(s.got.empty());
        EXPECT_EQ(-EINVAL, evs_datagram_set_write_buffer_limits(d, 10, 20));
        evs_datagram_close(d);
        EXPECT_TRUE(wait_until([&] { return s2.lost == 1; }));
    });
    // Not on a worker.
    struct sockaddr_in a = loopback4(0);
    evs_datagram_options o = {};
    o.local_addr = (struct sockaddr *)&a;
    o.local_addrlen = sizeof a;
    EXPECT_EQ(-EINVAL, evs_datagram_open(&o, &kProto, &s, nullptr));
}

// A runtime that stops with endpoints still open ends them: connection_lost
// runs on their workers and evs_runtime_stop returns.
TEST(DatagramShutdown, RuntimeStopEndsOpenEndpoints) {
    evs_runtime *rt;
    evs_runtime_options ro{};
    ro.workers = 2;
    ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
    static std::atomic<int> opened, lost;
    opened = 0;
    lost = 0;
    static evs_datagram_protocol proto{};
    proto.connection_lost = [](evs_datagram *, int, void *) { lost++; };
    ASSERT_EQ(0, evs_runtime_broadcast(
                     rt,
                     [](evs_worker *, void *) {
                         int fd = socket(AF_INET, SOCK_DGRAM, 0);
                         struct sockaddr_in sin{};
                         sin.sin_family = AF_INET;
                         sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                         bind(fd, (struct sockaddr *)&sin, sizeof sin);
                         evs_datagram *d;
                         if (evs_datagram_new(fd, 0, &proto, nullptr, &d) == 0) opened++;
                     },
                     nullptr));
    for (int i = 0; i < 2000 && opened.load() < 2; i++) usleep(1000);
    ASSERT_EQ(2, opened.load());
    evs_runtime_stop(rt, 1);
    EXPECT_EQ(2, lost.load());
}
