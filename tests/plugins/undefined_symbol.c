/*
 * undefined_symbol - a test plugin that calls a function defined nowhere,
 * so dlopen(RTLD_NOW) fails and the daemon must report the plugin file.
 */
#include <evstream.h>

/* Deliberately never defined: the unresolved reference is the point. */
extern int evs_test_function_that_does_not_exist(void);

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    (void)r;
    (void)w;
    (void)state;
    evs_test_function_that_does_not_exist();
}

EVS_PLUGIN_DEFINE(.name = "undefined_symbol", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected);
