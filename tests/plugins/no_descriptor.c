/*
 * no_descriptor - a loadable shared object that does not export
 * evs_plugin_descriptor; the daemon must say so and not start.
 */
#include <evstream.h>

int evs_test_not_a_plugin(void);

__attribute__((visibility("default"))) int evs_test_not_a_plugin(void)
{
    return 42;
}
