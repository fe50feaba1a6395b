/*
 * cxx_echo - a test plugin written in C++: EVS_PLUGIN_DEFINE must export
 * its descriptor from C++ too (a const at namespace scope has internal
 * linkage there, and the loader found no symbol). Echoes one line.
 */
#include <evstream.h>

#include <sys/types.h>

static void client_connected(evs_reader *r, evs_writer *w, void *)
{
    const void *line;
    ssize_t n = evs_readline(r, &line);

    if (n > 0) {
        evs_write(w, line, static_cast<size_t>(n));
        evs_drain(w);
    }
}

EVS_PLUGIN_DEFINE(.name = "cxx_echo", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected);
