// Test helpers: blocking client sockets with timeouts, temp dirs, and a
// runtime fixture. Every helper fails the test instead of hanging.
#pragma once

#include <stdint.h>
#include <sys/types.h>

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

}  // namespace evs_test
