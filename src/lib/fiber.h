/*
 * fiber.h - stackful coroutines for tasks (internal, never installed).
 *
 * A fiber runs a function on its own stack. Switching is asymmetric: the
 * thread's loop context resumes a fiber, the fiber yields back to the loop
 * context that resumed it. A fiber never leaves the thread that created it.
 *
 * Stacks come from a per-thread pool (mmap'd, a 64 KiB guard at the low end,
 * reused). The switch is a small assembly routine on x86-64 and aarch64 and
 * ucontext elsewhere (configure: --with-fiber-switch=asm|ucontext, which
 * defines EVS_FIBER_UCONTEXT for the fallback). ASan, TSan and valgrind are
 * told about every switch and every stack.
 *
 * Thread: every function here is called by the thread that owns the pool.
 */
#ifndef EVS_FIBER_H
#define EVS_FIBER_H

#include <stdbool.h>
#include <stddef.h>

#ifdef HAVE_CONFIG_H
#include "build-config.h" /* EVS_FIBER_UCONTEXT */
#endif

#if !defined(EVS_FIBER_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define EVS_FIBER_UCONTEXT 1
#endif

/* For the thread-locals read at every task switch. A shared library's
 * thread-locals are otherwise found through a __tls_get_addr call (about
 * 70 instructions per request in stream-mode echo); initial-exec reads
 * them at a fixed offset from the thread pointer. The cost: the library's
 * whole thread-local block (about 350 bytes) takes static TLS room, which
 * glibc keeps for libraries loaded with dlopen. With ucontext that block
 * holds a ucontext_t (1-4.5 KB), too big for that room: the default model. */
#ifdef EVS_FIBER_UCONTEXT
#define EVS__SWITCH_TLS _Thread_local
#else
#define EVS__SWITCH_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#endif

typedef struct evs__fiber evs__fiber;
typedef struct evs__stack_pool evs__stack_pool;
typedef void (*evs__fiber_fn)(void *arg);

/** Default usable stack size (doubled under ASan). */
#define EVS__FIBER_STACK_DEFAULT (256u * 1024u)

/**
 * Create a pool of stacks of @p stack_size usable bytes (0 = default; rounded
 * up to pages) that keeps at most @p max_cached free stacks for reuse.
 * @return the pool, or NULL with errno set.
 */
evs__stack_pool *evs__stack_pool_new(size_t stack_size, size_t max_cached);

/** Free the pool and its cached stacks. Every fiber of it must be freed first. */
void evs__stack_pool_free(evs__stack_pool *pool);

/** Usable size of the pool's stacks. */
size_t evs__stack_pool_stack_size(const evs__stack_pool *pool);

/**
 * Create a fiber that runs fn(arg) on its first resume. When fn returns the
 * fiber is done and control goes back to the loop context.
 * @return the fiber, or NULL with errno set (ENOMEM: mmap or mprotect failed,
 *         for example when vm.max_map_count is reached).
 */
evs__fiber *evs__fiber_new(evs__stack_pool *pool, evs__fiber_fn fn, void *arg);

/**
 * Switch from the loop context into @p f; returns when @p f yields or ends.
 * Must not be called from inside a fiber.
 */
void evs__fiber_resume(evs__fiber *f);

/** From inside a fiber: switch back to the loop context that resumed it. */
void evs__fiber_yield(void);

/**
 * Run fn(arg) on the loop context's stack and return to the caller when it
 * returns: from a fiber, a switch to the loop and back; from the loop
 * context, a plain call. For deep library code (OpenSSL) whose stack pages
 * would otherwise stay resident in every task's stack. fn runs as loop code
 * (evs__fiber_current() is NULL) and must not yield.
 */
void evs__fiber_call_on_loop(evs__fiber_fn fn, void *arg);

/** True once the fiber's function has returned. */
bool evs__fiber_done(const evs__fiber *f);

/**
 * Start loading @f's record and its newest frames into the cache: the
 * caller is about to resume it, and with many fibers neither is warm.
 */
void evs__fiber_prefetch(const evs__fiber *f);

/**
 * Free a fiber that is done or that never ran, returning its stack to the
 * pool. Must not be called from inside @p f itself.
 */
void evs__fiber_free(evs__fiber *f);

/** The fiber running on this thread, or NULL in the loop context. */
evs__fiber *evs__fiber_current(void);

/**
 * Per-thread set-up: an alternate signal stack and (once per process) a
 * SIGSEGV handler that reports an overflow into a fiber's guard as
 * "evstream: a task overflowed its stack: ..." on stderr, then aborts.
 * Faults elsewhere are passed on to the previous handler or the default
 * action.
 * @return 0 or a negative errno.
 */
int evs__fiber_thread_init(void);

/** Undo evs__fiber_thread_init() for this thread. */
void evs__fiber_thread_fini(void);

#endif
