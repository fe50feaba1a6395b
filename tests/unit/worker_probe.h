/* worker_probe.h - C calls into a worker for worker_test.cc. */
#ifndef EVS_TEST_WORKER_PROBE_H
#define EVS_TEST_WORKER_PROBE_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct evs_worker evs_worker;

evs_worker *probe_worker_new(void); /* no runtime; NULL on failure */
void probe_worker_free(evs_worker *w);
void *probe_block_get(evs_worker *w, int large);
void probe_block_put(evs_worker *w, void *block, int large);
int probe_blocks_kept(const evs_worker *w, int large);
int probe_trim_armed(const evs_worker *w);
/* One turn of the worker's loop: blocks until an event (the trim) fires. */
void probe_run_once(evs_worker *w);

#ifdef __cplusplus
}
#endif

#endif
