// Test helpers: blocking client sockets with timeouts, temp dirs, and a
// runtime fixture. Every helper fails the test instead of hanging.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <functional>
#include <string>

extern "C" {
#include <evstream.h>
}

namespace evs_test {

// Blocking TCP connection to 127.0.0.1:port with 20 s send/receive timeouts; -1 on error.
int connect_tcp(uint16_t port);
// Blocking Unix connection to path ("@name" for abstract) with timeouts; -1 on error.
int connect_unix(const std::string &path);
// Put 20 s send/receive timeouts on a blocking socket.
void set_timeouts(int fd, int seconds = 20);
// A listening TCP socket on 127.0.0.1 at a free port, stored in *port; -1 on error.
int listen_loopback(uint16_t *port);
// A connected AF_UNIX stream socketpair with timeouts on both ends.
void socket_pair(int sv[2]);
// Write everything; false on error.
bool write_all(int fd, const void *buf, size_t n);
// Read exactly n bytes; false on EOF, error or timeout.
bool read_exact(int fd, void *buf, size_t n);
// Read until EOF (or error/timeout); returns what was read.
std::string read_to_eof(int fd, size_t max = 1u << 30);
// A fresh temporary directory, removed with its content by remove_dir().
std::string make_temp_dir();
void remove_dir(const std::string &dir);
// Deterministic pseudo-random bytes.
std::string pattern(size_t n, uint32_t seed = 1);
// Open file descriptors of this process.
int count_open_fds();

// Runs fn on a private loop with evs_run(); returns fn's result.
int run_task(int (*fn)(void *), void *arg);

// Runs f as a task on a private loop. The task's timeout is the watchdog:
// a parked call that never completes fails with -ETIMEDOUT after
// @timeout seconds instead of hanging. @return run_task's result (0).
template <typename F>
int run_in_task(F &f, double timeout = 15.0) {
    struct Call {
        F *f;
        double timeout;
    } call{&f, timeout};
    return run_task(
        [](void *p) -> int {
            auto *c = static_cast<Call *>(p);
            evs_task_set_timeout(evs_task_current(), c->timeout);
            (*c->f)();
            return 0;
        },
        &call);
}

// Inside a task: look at @cond every millisecond (evs_sleep) until it holds
// or @secs pass. @return whether it held.
bool wait_until(const std::function<bool()> &cond, double secs = 10.0);

}  // namespace evs_test
