#ifndef EVS_TEST_WALL_CLOCK_H
#define EVS_TEST_WALL_CLOCK_H
#ifdef __cplusplus
extern "C" {
#endif

/* Move the wall clock (gettimeofday) by @p seconds, as an NTP step or an
 * operator's `date -s` would. */
void wall_clock_step(long seconds);

#ifdef __cplusplus
}
#endif
#endif
