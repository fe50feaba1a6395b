// Inputs the libFuzzer targets (tests/fuzz/fuzz_*.c) found, replayed as
// unit tests so the bugs stay fixed in every build (the ASan+UBSan build
// sees the memory and overflow errors themselves; the plain build checks
// the results). Each test names the target and the input that failed.
#include <gtest/gtest.h>

#include <math.h>
#include <string.h>
#include <unistd.h>

#include <libconfig.h>

#include <string>

#include "helpers.h"

extern "C" {
#include "proxy_protocol.h"
extern const evs_plugin evs_regress_redis_lite;  // tests/fuzz/regress_redis_lite.c
uint64_t evs_regress_siphash(const uint64_t key[2], int c, int d, const void *data, size_t n);
}

using namespace evs_test;

namespace {

// The parser on an exact-size heap copy: a read past the end is an ASan error.
int parse_exact(const std::string &s, evs__proxy_header *h) {
    uint8_t *buf = (uint8_t *)malloc(s.size() ? s.size() : 1);
    memcpy(buf, s.data(), s.size());
    int n = evs__proxy_parse(buf, s.size(), h);
    free(buf);
    return n;
}

}  // namespace

// fuzz_proxy_protocol: "PROXY U;\r\n" made parse_v1 compare "TCP4 " at
// offset 6, 5 bytes, past the end of a 10-byte buffer (heap-buffer-overflow
// read in memcmp).
TEST(FuzzRegressions, ProxyV1LineShorterThanItsProtocolIsRefusedInBounds) {
    evs__proxy_header h;
    EXPECT_EQ(-EPROTO, parse_exact(std::string("PROXY U;\r\n"), &h));
    EXPECT_EQ(-EPROTO, parse_exact(std::string("PROXY \r\n"), &h));
    EXPECT_EQ(-EPROTO, parse_exact(std::string("PROXY TCP\r\n"), &h));
    EXPECT_EQ(-EPROTO, parse_exact(std::string("PROXY TCP4\r\n"), &h));
    EXPECT_EQ(-EPROTO, parse_exact(std::string("PROXY UNKNOWN;\r\n"), &h));
    EXPECT_EQ(15, parse_exact(std::string("PROXY UNKNOWN\r\n"), &h));
}

// fuzz_proxy_protocol: a v1 line of 108 bytes (CR at byte 107) was
// accepted; the spec's limit is 107 bytes, CRLF included.
TEST(FuzzRegressions, ProxyV1LineLongerThan107BytesIsRefused) {
    evs__proxy_header h;
    std::string crash = "PROXY UNKNOWN ffff:#1 ::2 1 2" + std::string(77, '^') + "\r\n";
    ASSERT_EQ(108u, crash.size());
    EXPECT_EQ(-EPROTO, parse_exact(crash, &h));
    // Without the CRLF, 106 bytes already cannot end within 107.
    EXPECT_EQ(-EPROTO, parse_exact(crash.substr(0, 106), &h));
    EXPECT_EQ(0, parse_exact(crash.substr(0, 105), &h));
    // Exactly 107 bytes is the longest line there is.
    std::string longest = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
    ASSERT_EQ(107u, longest.size());
    EXPECT_EQ(107, parse_exact(longest, &h));
    EXPECT_EQ(1, h.version);
    EXPECT_EQ(1, h.local);
}

// fuzz_proxy_protocol: "PROXY TCP4 19.168.0.1\0 10.0.0.2 4 41\r\n" was
// accepted as 19.168.0.1: inet_pton stops at the NUL inside the field, so
// any junk after a NUL passed the "strict" v1 grammar.
TEST(FuzzRegressions, ProxyV1AddressWithANulIsRefused) {
    evs__proxy_header h;
    std::string crash("PROXY TCP4 19.168.0.1\0 10.0.0.2 4 41\r\n", 38);
    EXPECT_EQ(-EPROTO, parse_exact(crash, &h));
    std::string junk("PROXY TCP6 ::1\0zz ::2 1 2\r\n", 27);
    EXPECT_EQ(-EPROTO, parse_exact(junk, &h));
    // The same line without the NUL is fine.
    std::string fine = "PROXY TCP4 19.168.0.1 10.0.0.2 4 41\r\n";
    EXPECT_EQ((int)fine.size(), parse_exact(fine, &h));
}

// fuzz_settings: a duration that overflows is invalid, not infinite.
// "1e308d" multiplied to +inf and was returned as 0 (success); a libconfig
// float 1e400 (read as +inf) passed evs_settings_get_duration.
TEST(FuzzRegressions, DurationsThatOverflowAreInvalid) {
    double d = 7;
    EXPECT_EQ(-EINVAL, evs_parse_duration("1e308d", &d));
    EXPECT_EQ(-EINVAL, evs_parse_duration("1e307h", &d));
    EXPECT_EQ(-EINVAL, evs_parse_duration("1.7e308min", &d));
    EXPECT_EQ(7, d);  // untouched on failure
    EXPECT_EQ(0, evs_parse_duration("1e300d", &d));
    EXPECT_TRUE(isfinite(d));

    config_t cfg;
    config_init(&cfg);
    ASSERT_TRUE(config_read_string(&cfg, "s = 1e400; t = 2.5;"));
    evs_settings *s = evs_settings_from_libconfig(config_root_setting(&cfg));
    ASSERT_NE(nullptr, s);
    d = 7;
    EXPECT_EQ(-EINVAL, evs_settings_get_duration(s, "s", &d));
    EXPECT_EQ(7, d);
    ASSERT_NE(nullptr, evs_settings_error(s));
    EXPECT_NE(nullptr, strstr(evs_settings_error(s), "settings.s"));
    evs_settings_free(s);
    s = evs_settings_from_libconfig(config_root_setting(&cfg));
    EXPECT_EQ(0, evs_settings_get_duration(s, "t", &d));
    EXPECT_EQ(2.5, d);
    evs_settings_free(s);
    config_destroy(&cfg);
}

namespace {

// redis_lite as evstreamd runs it: a runtime whose workers own the shards.
struct RedisLite {
    void *state = nullptr;
    evs_runtime *rt = nullptr;
    std::string name;

    static void started(evs_worker *w, void *arg) {
        RedisLite *r = (RedisLite *)arg;
        EXPECT_EQ(0, evs_regress_redis_lite.worker_start(w, r->state));
    }
    static void stopping(evs_worker *w, void *arg) {
        RedisLite *r = (RedisLite *)arg;
        evs_regress_redis_lite.worker_stop(w, r->state);
    }
    void start() {
        evs_settings *s = evs_settings_from_libconfig(nullptr);
        ASSERT_EQ(0, evs_regress_redis_lite.init(s, &state));
        evs_settings_free(s);
        evs_runtime_options ro{};
        ro.workers = 2;
        ro.worker_started = started;
        ro.worker_stopping = stopping;
        ro.hook_arg = this;
        ASSERT_EQ(0, evs_runtime_new(&ro, &rt));
        name = "@evs-regress-redis-" + std::to_string(getpid());
        evs_server_options so{};
        so.client_connected = evs_regress_redis_lite.client_connected;
        so.arg = state;
        so.path = name.c_str();
        ASSERT_EQ(0, evs_start_unix_server(rt, &so, nullptr));
    }
    ~RedisLite() {
        if (rt) evs_runtime_stop(rt, 5);
        if (state) evs_regress_redis_lite.fini(state);
    }
    // Send the requests, then EOF; everything answered until the close.
    std::string exchange(const std::string &req) {
        int fd = connect_unix(name);
        EXPECT_GE(fd, 0);
        if (fd < 0) return "";
        EXPECT_TRUE(write_all(fd, req.data(), req.size()));
        shutdown(fd, SHUT_WR);
        std::string out = read_to_eof(fd);
        close(fd);
        return out;
    }
};

}  // namespace

// redis_lite's key hash is SipHash (1-3 rounds); with 2-4 rounds the same
// code must give the reference vectors of the SipHash paper (key 00..0f,
// messages 00 01 02 ... of 0, 7, 8, 15 and 63 bytes).
TEST(FuzzRegressions, RedisLiteHashIsSipHash) {
    const uint64_t key[2] = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
    unsigned char m[64];
    for (int i = 0; i < 64; i++) m[i] = (unsigned char)i;
    EXPECT_EQ(0x726fdb47dd0e0e31ULL, evs_regress_siphash(key, 2, 4, m, 0));
    EXPECT_EQ(0xab0200f58b01d137ULL, evs_regress_siphash(key, 2, 4, m, 7));
    EXPECT_EQ(0x93f5f5799a932462ULL, evs_regress_siphash(key, 2, 4, m, 8));
    EXPECT_EQ(0xa129ca6149be45e5ULL, evs_regress_siphash(key, 2, 4, m, 15));
    EXPECT_EQ(0x958a324ceb064572ULL, evs_regress_siphash(key, 2, 4, m, 63));
}

// fuzz_redis_lite: SET with PX 9223372036854775807 (accepted, as by Redis)
// computed now + ttl in int64_t: signed overflow (UBSan:
// redis_lite.c:550 "signed integer overflow: 3646851 + 9223372036854775807");
// without the sanitizer the deadline wrapped into the past and the key was
// gone at once. EXPIRE with the largest seconds did the same.
TEST(FuzzRegressions, RedisLiteHugeExpiryKeepsTheKey) {
    RedisLite r;
    ASSERT_NO_FATAL_FAILURE(r.start());
    std::string out = r.exchange(
        "SET k v PX 9223372036854775807\r\n"
        "GET k\r\n"
        "SET e w\r\n"
        "EXPIRE e 9223372036854775\r\n"
        "GET e\r\n"
        "SET x y EX 9223372036854775\r\n"
        "GET x\r\n");
    EXPECT_EQ("+OK\r\n$1\r\nv\r\n+OK\r\n:1\r\n$1\r\nw\r\n+OK\r\n$1\r\ny\r\n", out);
    // The deadline is far away, not in the past.
    out = r.exchange("PTTL k\r\n");
    ASSERT_GT(out.size(), 3u);
    EXPECT_EQ(':', out[0]);
    EXPECT_GT(strtoll(out.c_str() + 1, nullptr, 10), 1000000000LL) << out;
}
