/*
 * fiber.c - stackful coroutines: stack pool, fiber lifecycle, sanitizer and
 * valgrind annotations, guard-page overflow reporting.
 *
 * Context switch: fiber_switch_<arch>.S (evs__fiber_switch), or
 * makecontext/swapcontext when EVS_FIBER_UCONTEXT is defined (also used
 * automatically on architectures without an assembly switch).
 *
 * Layout of a stack mapping (grows down):
 *
 *   base            base + guard                                 base + map_size
 *   | guard (NONE)  | usable (READ|WRITE) ...  initial frame | record |
 *
 * The guard is 64 KiB, not one page: mappings are made top-down, so right
 * below a fiber's guard lies the record of the fiber mapped after it, and a
 * frame larger than the guard (code built without -fstack-clash-protection)
 * would step over it and write into that record, unreported. It costs
 * address space only.
 *
 * The fiber's record (struct evs__fiber) sits at the top of its own
 * mapping, above the stack: that page is resident once the fiber has run,
 * so the record costs no heap (an idle connection's task is one stack page
 * and a few small structures). The pool caches whole mappings for reuse.
 */
#ifdef HAVE_CONFIG_H
#include "build-config.h"  /* HAVE_VALGRIND_VALGRIND_H */
#endif

#include "fiber.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef EVS_FIBER_UCONTEXT
#include <ucontext.h>
#endif

#ifdef HAVE_VALGRIND_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif
#ifndef MAP_STACK
#define MAP_STACK 0
#endif
#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

/* ------------------------------------------------------------------------ */
/* Sanitizer detection                                                      */
/* ------------------------------------------------------------------------ */

#if defined(__SANITIZE_ADDRESS__)
#define EVS__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVS__ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define EVS__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVS__TSAN 1
#endif
#endif

#ifdef EVS__ASAN
/* Declared here rather than via <sanitizer/...> headers so that nothing
 * depends on the compiler shipping them. */
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom,
                                    size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save,
                                     const void **bottom_old, size_t *size_old);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#define EVS__STACK_DEFAULT_SIZE (2u * EVS__FIBER_STACK_DEFAULT)
#else
#define EVS__STACK_DEFAULT_SIZE EVS__FIBER_STACK_DEFAULT
#endif
#define EVS__STACK_GUARD_SIZE (64u * 1024u) /* see the layout above */

#ifdef EVS__TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

/* ------------------------------------------------------------------------ */
/* Types and thread-local state                                             */
/* ------------------------------------------------------------------------ */

struct evs__fiber {
#ifndef EVS_FIBER_UCONTEXT
    void *sp;                 /* saved stack pointer while suspended */
#else
    ucontext_t uc;
#endif
    evs__stack_pool *pool;
    evs__fiber_fn fn;
    void *arg;
    char *map;                /* start of the mapping = the guard */
    size_t map_size;          /* guard + usable */
    evs__fiber *next_cached;  /* link in pool->cache */
    bool started;
    bool done;
    void *asan_fake;          /* ASan: the fiber's fake stack while suspended */
#ifdef EVS__TSAN
    void *tsan_fiber;
#endif
#ifdef HAVE_VALGRIND_VALGRIND_H
    unsigned vg_id;
#endif
};

struct evs__stack_pool {
    size_t stack_size;  /* usable bytes, page multiple */
    size_t page;
    size_t guard;       /* PROT_NONE bytes below each stack, page multiple */
    size_t max_cached;
    size_t ncached;
    size_t live;        /* fibers handed out and not yet freed */
    evs__fiber *cache;
};

struct evs__fiber_tls {
    evs__fiber *current;
#ifndef EVS_FIBER_UCONTEXT
    void *loop_sp;
#else
    ucontext_t loop_uc;
#endif
    evs__fiber_fn call_fn;    /* evs__fiber_call_on_loop: run this, go back */
    void *call_arg;
    void *loop_fake;          /* ASan: the loop's fake stack during a fiber */
    const void *loop_bottom;  /* ASan: the loop context's stack */
    size_t loop_size;
#ifdef EVS__TSAN
    void *tsan_loop;
#endif
    void *altstack;     /* our sigaltstack mapping, or NULL */
    size_t altstack_size;
    stack_t prev_altstack; /* the thread's own, given back at fini */
    unsigned init_count;
};

static EVS__SWITCH_TLS struct evs__fiber_tls tl;

/* Assembly side (fiber_switch_<arch>.S). evs__fiber_entry is defined in
 * every mode so that the .S objects, which the build assembles on every
 * configuration, always link. */
#if defined(__GNUC__)
#define EVS__HIDDEN __attribute__((visibility("hidden")))
#else
#define EVS__HIDDEN
#endif
#ifndef EVS_FIBER_UCONTEXT
EVS__HIDDEN void evs__fiber_switch(void **save_sp, void *load_sp);
EVS__HIDDEN void evs__fiber_trampoline(void);
#endif
EVS__HIDDEN _Noreturn void evs__fiber_entry(void *arg);

/* ------------------------------------------------------------------------ */
/* Small annotation wrappers                                                */
/* ------------------------------------------------------------------------ */

static inline void asan_start_switch(void **save, const void *bottom, size_t size)
{
#ifdef EVS__ASAN
    __sanitizer_start_switch_fiber(save, bottom, size);
#else
    (void)save; (void)bottom; (void)size;
#endif
}

static inline void asan_finish_switch(void *save, const void **old_bottom,
                                      size_t *old_size)
{
#ifdef EVS__ASAN
    __sanitizer_finish_switch_fiber(save, old_bottom, old_size);
#else
    (void)save; (void)old_bottom; (void)old_size;
#endif
}

static inline void asan_unpoison(void *p, size_t n)
{
#ifdef EVS__ASAN
    __asan_unpoison_memory_region(p, n);
#else
    (void)p; (void)n;
#endif
}

static inline void tsan_destroy(evs__fiber *f)
{
#ifdef EVS__TSAN
    if (f->tsan_fiber) {
        __tsan_destroy_fiber(f->tsan_fiber);
        f->tsan_fiber = NULL;
    }
#else
    (void)f;
#endif
}

/*
 * __tsan_switch_to_fiber must be called in the same function that performs
 * the switch (a helper that returned after it would pop TSan's shadow call
 * stack of the wrong fiber), hence a macro rather than an inline function.
 */
#ifdef EVS__TSAN
#define TSAN_SWITCH_TO(fib) __tsan_switch_to_fiber((fib), 0)
#else
#define TSAN_SWITCH_TO(fib) ((void)0)
#endif

/* Usable stack range of a fiber. */
static inline char *stack_lo(const evs__fiber *f) { return f->map + f->pool->guard; }
static inline char *stack_hi(const evs__fiber *f) { return (char *)(uintptr_t)f; }
static inline size_t stack_len(const evs__fiber *f) { return (size_t)(stack_hi(f) - stack_lo(f)); }

/* The record's share of the mapping: a multiple of 64, so the stack's top
 * (the record's address) is aligned for every ABI's initial frame. */
static size_t record_size(void)
{
    return (sizeof(evs__fiber) + 63u) & ~(size_t)63u;
}

static inline void vg_register(evs__fiber *f)
{
#ifdef HAVE_VALGRIND_VALGRIND_H
    f->vg_id = VALGRIND_STACK_REGISTER(stack_lo(f), stack_hi(f));
#else
    (void)f;
#endif
}

static inline void vg_deregister(evs__fiber *f)
{
#ifdef HAVE_VALGRIND_VALGRIND_H
    VALGRIND_STACK_DEREGISTER(f->vg_id);
#else
    (void)f;
#endif
}

/* Raw switches. */
#ifndef EVS_FIBER_UCONTEXT
#define RAW_SWITCH_TO_FIBER(f) evs__fiber_switch(&tl.loop_sp, (f)->sp)
#define RAW_SWITCH_TO_LOOP(f) evs__fiber_switch(&(f)->sp, tl.loop_sp)
#else
#define RAW_SWITCH_TO_FIBER(f) swapcontext(&tl.loop_uc, &(f)->uc)
#define RAW_SWITCH_TO_LOOP(f) swapcontext(&(f)->uc, &tl.loop_uc)
#endif

/* ------------------------------------------------------------------------ */
/* Stack pool                                                               */
/* ------------------------------------------------------------------------ */

static size_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096u;
}

evs__stack_pool *evs__stack_pool_new(size_t stack_size, size_t max_cached)
{
    size_t page = page_size();
    if (stack_size == 0)
        stack_size = EVS__STACK_DEFAULT_SIZE;
    if (stack_size > SIZE_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    stack_size = (stack_size + page - 1) / page * page;

    evs__stack_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->stack_size = stack_size;
    pool->page = page;
    pool->guard = (EVS__STACK_GUARD_SIZE + page - 1) / page * page;
    pool->max_cached = max_cached;
    return pool;
}

static void fiber_destroy(evs__fiber *f)
{
    char *map = f->map; /* the record goes with the mapping */
    size_t size = f->map_size;

    vg_deregister(f);
    munmap(map, size);
}

void evs__stack_pool_free(evs__stack_pool *pool)
{
    if (!pool)
        return;
    assert(pool->live == 0 && "evs__stack_pool_free: fibers still alive");
    evs__fiber *f = pool->cache;
    while (f) {
        evs__fiber *next = f->next_cached;
        fiber_destroy(f);
        f = next;
    }
    free(pool);
}

size_t evs__stack_pool_stack_size(const evs__stack_pool *pool)
{
    return pool->stack_size;
}

/* ------------------------------------------------------------------------ */
/* Fiber lifecycle                                                          */
/* ------------------------------------------------------------------------ */

#ifndef EVS_FIBER_UCONTEXT
/* Build the frame evs__fiber_switch pops on the first switch into @p f. */
static void prepare_frame(evs__fiber *f)
{
    uintptr_t *top = (uintptr_t *)(void *)stack_hi(f);
#if defined(__x86_64__)
    /* From the saved SP upwards: MXCSR (4 bytes) + x87 control word
     * (2 bytes) in one slot, r15, r14, r13, r12, rbx, rbp, return address,
     * then a zero fake return address for the trampoline: after the `ret`,
     * rsp = top - 8, i.e. 8 (mod 16) as on entry to a function. */
    uintptr_t *frame = top - 9;
    frame[0] = (uintptr_t)0x1F80u | ((uintptr_t)0x037Fu << 32);
    frame[1] = 0;                                  /* r15 */
    frame[2] = 0;                                  /* r14 */
    frame[3] = 0;                                  /* r13 */
    frame[4] = (uintptr_t)f;                       /* r12: entry argument */
    frame[5] = 0;                                  /* rbx */
    frame[6] = 0;                                  /* rbp */
    frame[7] = (uintptr_t)&evs__fiber_trampoline;  /* return address */
    frame[8] = 0;                                  /* trampoline's "caller" */
#elif defined(__aarch64__)
    /* x19..x30 (12 slots) then d8..d15 (8 slots): 160 bytes, so after the
     * `ret` sp = top, 16-aligned. */
    uintptr_t *frame = top - 20;
    memset(frame, 0, 20 * sizeof *frame);
    frame[0] = (uintptr_t)f;                       /* x19: entry argument */
    frame[11] = (uintptr_t)&evs__fiber_trampoline; /* x30 */
#else
#error "no assembly fiber switch for this architecture"
#endif
    f->sp = frame;
}
#else
static void uc_entry(void)
{
    /* makecontext passes only ints: the fiber comes from the thread-local
     * current pointer, set by evs__fiber_resume before the switch. */
    evs__fiber_entry(tl.current);
}

static int prepare_frame(evs__fiber *f)
{
    if (getcontext(&f->uc) != 0)
        return -1;
    f->uc.uc_stack.ss_sp = stack_lo(f);
    f->uc.uc_stack.ss_size = stack_len(f);
    f->uc.uc_link = NULL;
    makecontext(&f->uc, uc_entry, 0);
    return 0;
}
#endif

evs__fiber *evs__fiber_new(evs__stack_pool *pool, evs__fiber_fn fn, void *arg)
{
    evs__fiber *f = pool->cache;
    if (f) {
        pool->cache = f->next_cached;
        pool->ncached--;
        /* Left-over redzones of the previous user's frames. */
        asan_unpoison(stack_lo(f), stack_len(f));
    } else {
        size_t map_size = pool->stack_size + pool->guard;
        void *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                       -1, 0);
        if (m == MAP_FAILED) {
            errno = ENOMEM;
            return NULL;
        }
        if (mprotect(m, pool->guard, PROT_NONE) != 0) {
            munmap(m, map_size);
            errno = ENOMEM;
            return NULL;
        }
        /* A fresh mapping is zeroed: the record starts cleared. */
        f = (evs__fiber *)(void *)((char *)m + map_size - record_size());
        f->map = m;
        f->map_size = map_size;
        f->pool = pool;
        vg_register(f);
    }
    f->fn = fn;
    f->arg = arg;
    f->started = false;
    f->done = false;
    f->next_cached = NULL;
    f->asan_fake = NULL;
    pool->live++;
    return f;
}

void evs__fiber_free(evs__fiber *f)
{
    if (!f)
        return;
    evs__stack_pool *pool = f->pool;
    assert(f != tl.current && "evs__fiber_free: fiber frees itself");
    assert((!f->started || f->done) && "evs__fiber_free: fiber suspended");
    tsan_destroy(f);  /* we are not running on it: safe */
    pool->live--;
    if (pool->ncached < pool->max_cached) {
        f->next_cached = pool->cache;
        pool->cache = f;
        pool->ncached++;
    } else {
        fiber_destroy(f);
    }
}

void evs__fiber_prefetch(const evs__fiber *f)
{
    __builtin_prefetch(f);
#ifndef EVS_FIBER_UCONTEXT
    if (f->started)
        __builtin_prefetch(f->sp);
#endif
}

bool evs__fiber_done(const evs__fiber *f)
{
    return f->done;
}

evs__fiber *evs__fiber_current(void)
{
    return tl.current;
}

static void switch_into(evs__fiber *f)
{
    tl.current = f;
    asan_start_switch(&tl.loop_fake, stack_lo(f), stack_len(f));
#ifdef EVS__TSAN
    if (!f->tsan_fiber)
        f->tsan_fiber = __tsan_create_fiber(0);
    tl.tsan_loop = __tsan_get_current_fiber();
#endif
    TSAN_SWITCH_TO(f->tsan_fiber);
    RAW_SWITCH_TO_FIBER(f);
    asan_finish_switch(tl.loop_fake, NULL, NULL);
    tl.current = NULL;
}

void evs__fiber_resume(evs__fiber *f)
{
    assert(tl.current == NULL && "evs__fiber_resume called from a fiber");
    assert(!f->done && "evs__fiber_resume on a finished fiber");
    if (!f->started) {
        f->started = true;
#ifndef EVS_FIBER_UCONTEXT
        prepare_frame(f);
#else
        if (prepare_frame(f) != 0)
            abort();
#endif
    }
    switch_into(f);
    while (tl.call_fn) {
        evs__fiber_fn fn = tl.call_fn;

        tl.call_fn = NULL;
        fn(tl.call_arg);
        switch_into(f);
    }
}

void evs__fiber_call_on_loop(evs__fiber_fn fn, void *arg)
{
    if (!tl.current) {
        fn(arg);
        return;
    }
    tl.call_fn = fn;
    tl.call_arg = arg;
    evs__fiber_yield();
}

void evs__fiber_yield(void)
{
    evs__fiber *f = tl.current;
    assert(f && "evs__fiber_yield outside a fiber");
    asan_start_switch(&f->asan_fake, tl.loop_bottom, tl.loop_size);
    TSAN_SWITCH_TO(tl.tsan_loop);
    RAW_SWITCH_TO_LOOP(f);
    asan_finish_switch(f->asan_fake, &tl.loop_bottom, &tl.loop_size);
}

/* First code run on a new fiber's stack (from the trampoline). */
_Noreturn void evs__fiber_entry(void *arg)
{
    evs__fiber *f = arg;
    /* First entry: no fake stack of ours to restore; learn the loop's stack. */
    asan_finish_switch(NULL, &tl.loop_bottom, &tl.loop_size);
    f->fn(f->arg);
    f->done = true;
    /* Final switch out: NULL lets ASan free this fiber's fake stack. */
    asan_start_switch(NULL, tl.loop_bottom, tl.loop_size);
    TSAN_SWITCH_TO(tl.tsan_loop);
    RAW_SWITCH_TO_LOOP(f);
    abort(); /* a finished fiber is never resumed */
}

/* ------------------------------------------------------------------------ */
/* Overflow detection                                                       */
/* ------------------------------------------------------------------------ */

static pthread_once_t segv_once = PTHREAD_ONCE_INIT;
static struct sigaction segv_prev;
static int segv_install_err;

static void segv_handler(int sig, siginfo_t *si, void *uctx)
{
    evs__fiber *f = tl.current;
    bool sent = !si || si->si_code <= 0; /* kill(), raise(): si_addr is no address */
    if (f && !sent) {
        uintptr_t a = (uintptr_t)si->si_addr;
        uintptr_t lo = (uintptr_t)f->map;
        if (a >= lo && a - lo < f->pool->guard) {
            static const char msg[] =
                "evstream: a task overflowed its stack: give tasks a larger stack "
                "(evs_runtime_options.stack_size; evstreamd: limits.stack_size)\n";
            if (write(2, msg, sizeof msg - 1) < 0) {
                /* nothing more we can do */
            }
            abort();
        }
    }
    /* Not ours: pass it on. */
    if (segv_prev.sa_flags & SA_SIGINFO) {
        if (segv_prev.sa_sigaction) {
            segv_prev.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (segv_prev.sa_handler != SIG_DFL &&
               segv_prev.sa_handler != SIG_IGN) {
        segv_prev.sa_handler(sig);
        return;
    }
    /* A SIGSEGV sent by kill() or raise() gets what it would have got
     * without us: ignored, or the default action (sent again, as nothing
     * re-executes). */
    if (sent && segv_prev.sa_handler == SIG_IGN)
        return;
    /* Default (or ignored, which for a fault means default): restore it and
     * return, so the faulting instruction re-executes and the fault kills
     * the process as it would have without us. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    sigemptyset(&dfl.sa_mask);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, NULL);
    if (sent)
        raise(sig);
}

static void segv_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    if (sigaction(SIGSEGV, &sa, &segv_prev) != 0)
        segv_install_err = errno;
}

int evs__fiber_thread_init(void)
{
    if (tl.init_count++ > 0)
        return 0;

    int rc = pthread_once(&segv_once, segv_install);
    if (rc != 0) {
        tl.init_count = 0;
        return -rc;
    }
    if (segv_install_err) {
        tl.init_count = 0;
        return -segv_install_err;
    }

    size_t want = (size_t)SIGSTKSZ * 4u;
    if (want < 65536u)
        want = 65536u;

    /* Keep an alternate stack someone else (e.g. a sanitizer runtime)
     * already installed if it is big enough. */
    stack_t cur;
    if (sigaltstack(NULL, &cur) != 0)
        cur.ss_flags = SS_DISABLE;
    if (!(cur.ss_flags & SS_DISABLE) && cur.ss_size >= want)
        return 0;

    void *m = mmap(NULL, want, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        tl.init_count = 0;
        return -ENOMEM;
    }
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = m;
    ss.ss_size = want;
    ss.ss_flags = 0;
    if (sigaltstack(&ss, NULL) != 0) {
        int e = errno;
        munmap(m, want);
        tl.init_count = 0;
        return -e;
    }
    tl.altstack = m;
    tl.altstack_size = want;
    tl.prev_altstack = cur; /* too small for us, but the thread's own */
    return 0;
}

void evs__fiber_thread_fini(void)
{
    if (tl.init_count == 0 || --tl.init_count > 0)
        return;
    if (!tl.altstack)
        return;
    stack_t cur;
    if (sigaltstack(NULL, &cur) != 0)
        return;
    if (cur.ss_sp == tl.altstack && !(cur.ss_flags & SS_DISABLE)) {
        if (cur.ss_flags & SS_ONSTACK)
            return; /* running on it: leak rather than unmap a live stack */
        /* Give the thread back its own (or none, if it had none). */
        stack_t ss = tl.prev_altstack;
        ss.ss_flags &= ~SS_ONSTACK;
        if (sigaltstack(&ss, NULL) != 0)
            return;
    }
    munmap(tl.altstack, tl.altstack_size);
    tl.altstack = NULL;
    tl.altstack_size = 0;
}
