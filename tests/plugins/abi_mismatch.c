/*
 * abi_mismatch - a test plugin whose descriptor claims an ABI version the
 * daemon does not speak. Written by hand instead of with EVS_PLUGIN_DEFINE,
 * which always fills in the current version. evstreamd must refuse it.
 */
#include <evstream.h>

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    (void)r;
    (void)w;
    (void)state;
}

__attribute__((visibility("default"))) const evs_plugin evs_plugin_descriptor = {
    .abi_version = 999,
    .size = sizeof(evs_plugin),
    .name = "abi_mismatch",
    .mode = EVS_PLUGIN_STREAM,
    .client_connected = client_connected,
};
