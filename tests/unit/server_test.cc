// Servers: start_server / start_unix_server options, both handler modes,
// many concurrent connections through a runtime, and stopping.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"

using namespace evs_test;

namespace {

void echo_handler(evs_reader *r, evs_writer *w, void *) {
    char buf[16384];
    ssize_t n;
    while ((n = evs_read(r, buf, sizeof buf)) > 0) {
        if (evs_write(w, buf, (size_t)n) < 0) break;
        if (evs_drain(w) < 0) break;
    }
}

void proto_made(evs_transport *, void *) {}
void proto_data(evs_transport *t, const void *d, size_t n, void *) { evs_transport_write(t, d, n); }
const evs_protocol echo_protocol = {
    .connection_made = proto_made,
    .data_received = proto_data,
};

struct Runtime {
    evs_runtime *rt = nullptr;
    explicit Runtime(int workers = 2, size_t max_conn = 0) {
        evs_runtime_options o{};
        o.workers = workers;
        o.max_connections = max_conn;
        EXPECT_EQ(0, evs_runtime_new(&o, &rt));
    }
    ~Runtime() {
        if (rt) evs_runtime_stop(rt, 5);
    }
};

void expect_echo(int fd, size_t n) {
    ASSERT_GE(fd, 0);
    std::string data = pattern(n, (uint32_t)n);
    std::thread writer([&] { EXPECT_TRUE(write_all(fd, data.data(), data.size())); });
    std::string back(n, '\0');
    EXPECT_TRUE(read_exact(fd, &back[0], n));
    writer.join();
    EXPECT_TRUE(back == data);
}

}  // namespace

TEST(Server, StreamModeTcpEcho) {
    Runtime r;
    evs_server_options o{};
    o.client_connected = echo_handler;
    o.host = "127.0.0.1";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    ASSERT_NE(0, evs_server_port(s));
    int fd = connect_tcp(evs_server_port(s));
    expect_echo(fd, 1 << 20);
    close(fd);
}

TEST(Server, ProtocolModeTcpEcho) {
    Runtime r;
    evs_server_options o{};
    o.protocol = &echo_protocol;
    o.host = "127.0.0.1";
    evs_server *s;
    ASSERT_EQ(0, evs_start_server(r.rt, &o, &s));
    int fd = connect_tcp(evs_server_port(s));
    expect_echo(fd, 1 << 20);
    close(fd);
}

TEST(Server, UnixEchoBothModes) {
    Runtime r;
    std::string dir = make_temp_dir();
    for (int mode = 0; mode < 2; mode++) {
        std::string path = dir + "/s" + std::to_string(mode);
        evs_server_options o{};
        if (mode) o.protocol = &echo_protocol; else o.client_connected = echo_handler;
        o.path = path.c_str();
        o.mode = 0600;
        evs_server *s;
        ASSERT_EQ(0, evs_start_unix_server(r.rt, &o, &s));
        struct stat st;
        ASSERT_EQ(0, stat(path.c_str(), &st));
        EXPECT_EQ(0600u, st.st_mode & 0777);
        int fd = connect_unix(path);
        expect_echo(fd, 256 * 1024);
        close(fd);
    }
    remove_dir(dir);
}
