/*
 * failing_init - a test plugin whose init always refuses its settings with
 * evs_settings_fail, so the daemon must print that message and not start.
 */
#include <evstream.h>

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    (void)r;
    (void)w;
    (void)state;
}

static int init(evs_settings *s, void **state)
{
    (void)state;
    return evs_settings_fail(s, "failing_init refuses to start (test plugin)");
}

EVS_PLUGIN_DEFINE(.name = "failing_init", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init);
