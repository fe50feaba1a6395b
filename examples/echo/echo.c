/*
 * echo - the stream-mode plugin of the quick start.
 *
 * Every connection runs echo_client() as a task: take a view of whatever
 * arrived, write it back, and wait (drain) while the client is slow to
 * read, so a client that never reads cannot make the server buffer
 * without bound.
 * When the client closes its side, the handler returns and evstreamd closes
 * the connection after flushing.
 *
 * Run it:  ./quickstart.sh run       (conf/evstreamd.conf serves it on
 *          127.0.0.1:8888 and a Unix socket)
 *          printf 'hello\n' | nc -q1 127.0.0.1 8888
 */
#include <stdint.h>

#include <evstream.h>

static void echo_client(evs_reader *r, evs_writer *w, void *state)
{
    const void *data;
    ssize_t n;

    (void)state;
    /* A view of what arrived, written back from the reader's own buffer:
     * no copy, and no buffer on the task's stack (every page of it that a
     * read touches would stay resident for as long as the client is
     * connected; bench/RESULTS.md measures an idle connection). */
    while ((n = evs_read_view(r, SIZE_MAX, &data)) > 0) {
        if (evs_write(w, data, (size_t)n) < 0 || evs_drain(w) < 0)
            break;
    }
}

EVS_PLUGIN_DEFINE(.name = "echo", .mode = EVS_PLUGIN_STREAM, .client_connected = echo_client);
