/*
 * echo - the stream-mode plugin of the quick start.
 *
 * Every connection runs echo_client() as a task: read whatever arrived,
 * write it back, and wait (drain) while the client is slow to read, so a
 * client that never reads cannot make the server buffer without bound.
 * When the client closes its side, the handler returns and evstreamd closes
 * the connection after flushing.
 *
 * Run it:  ./quickstart.sh run       (conf/evstreamd.conf serves it on
 *          127.0.0.1:8888 and a Unix socket)
 *          printf 'hello\n' | nc -q1 127.0.0.1 8888
 */
#include <evstream.h>

static void echo_client(evs_reader *r, evs_writer *w, void *state)
{
    /* 4 KiB: the stack is per connection, and every page a frame touches
     * stays resident (bench/RESULTS.md measured 16 KiB here). */
    char buf[4096];
    ssize_t n;

    (void)state;
    while ((n = evs_read(r, buf, sizeof buf)) > 0) {
        if (evs_write(w, buf, (size_t)n) < 0 || evs_drain(w) < 0)
            break;
    }
}

EVS_PLUGIN_DEFINE(.name = "echo", .mode = EVS_PLUGIN_STREAM, .client_connected = echo_client);
