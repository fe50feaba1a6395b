/*
 * regress_redis_lite.c - the redis_lite example plugin compiled into
 * tests/fuzz/regressions_test, under its own descriptor name: a dlopen'ed
 * plugin would bring its own copy of the library (libevstream.so) next to
 * the test's static one, and the two would not share their workers.
 */
#define evs_plugin_descriptor evs_regress_redis_lite
#include "../../examples/redis_lite/redis_lite.c"

/* The key hash, for a check against SipHash's reference vectors. */
uint64_t evs_regress_siphash(const uint64_t key[2], int c, int d, const void *data, size_t n);
uint64_t evs_regress_siphash(const uint64_t key[2], int c, int d, const void *data, size_t n)
{
    return siphash(key, c, d, data, n);
}
