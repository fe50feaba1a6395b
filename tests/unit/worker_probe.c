/*
 * worker_probe.c - a worker's read-block pool, driven for worker_test.cc.
 * worker.h uses C11 atomics, which C++ cannot include, so the test reaches
 * the pool through these few C calls.
 */
#include <stdlib.h>

#include <event2/event.h>

#include "worker.h"
#include "worker_probe.h"

evs_worker *probe_worker_new(void)
{
    evs_worker *w = malloc(sizeof *w);

    if (w && evs__worker_init(w, NULL, 0, 64 * 1024) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void probe_worker_free(evs_worker *w)
{
    evs__worker_fini(w);
    free(w);
}

void *probe_block_get(evs_worker *w, int large)
{
    return evs__worker_block_get(w, large != 0);
}

void probe_block_put(evs_worker *w, void *block, int large)
{
    evs__worker_block_put(w, block, large != 0);
}

int probe_blocks_kept(const evs_worker *w, int large)
{
    return w->nblocks[large != 0];
}

int probe_trim_armed(const evs_worker *w)
{
    return evtimer_pending(&w->tick_ev, NULL) != 0;
}

void probe_run_once(evs_worker *w)
{
    event_base_loop(w->base, EVLOOP_ONCE);
}
