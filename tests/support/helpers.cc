#include "helpers.h"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <unistd.h>

#include <chrono>

#include <gtest/gtest.h>

namespace evs_test {

void set_timeouts(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int connect_tcp(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    set_timeouts(fd);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int connect_unix(const std::string &path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    set_timeouts(fd);
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    socklen_t len;
    if (!path.empty() && path[0] == '@') {
        memcpy(sun.sun_path + 1, path.data() + 1, path.size() - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path.size());
    } else {
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
        len = sizeof sun;
    }
    if (connect(fd, (struct sockaddr *)&sun, len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int listen_loopback(uint16_t *port) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 16) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

void socket_pair(int sv[2]) {
    ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
    set_timeouts(sv[0]);
    set_timeouts(sv[1]);
}

bool write_all(int fd, const void *buf, size_t n) {
    const char *p = static_cast<const char *>(buf);
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

bool read_exact(int fd, void *buf, size_t n) {
    char *p = static_cast<char *>(buf);
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

std::string read_to_eof(int fd, size_t max) {
    std::string out;
    char buf[65536];
    while (out.size() < max) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        out.append(buf, (size_t)r);
    }
    return out;
}

std::string make_temp_dir() {
    char tmpl[] = "/tmp/evs-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? std::string(d) : std::string();
}

void remove_dir(const std::string &dir) {
    if (dir.empty()) return;
    DIR *d = opendir(dir.c_str());
    if (d) {
        while (struct dirent *e = readdir(d)) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            std::string p = dir + "/" + e->d_name;
            if (unlink(p.c_str()) < 0) remove_dir(p);
        }
        closedir(d);
    }
    rmdir(dir.c_str());
}

std::string pattern(size_t n, uint32_t seed) {
    std::string s(n, '\0');
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s[i] = (char)(x & 0xff);
    }
    return s;
}

int count_open_fds() {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    while (struct dirent *e = readdir(d))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;  // the DIR's own fd
}

int run_task(int (*fn)(void *), void *arg) {
    int result = -1;
    int rc = evs_run(fn, arg, &result);
    EXPECT_EQ(0, rc);
    return result;
}

bool wait_until(const std::function<bool()> &cond, double secs) {
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
    while (!cond()) {
        if (std::chrono::steady_clock::now() > end) return false;
        if (evs_sleep(0.001) < 0) return false;
    }
    return true;
}

}  // namespace evs_test
