/*
 * fiber_switch_aarch64.S - fiber context switch for AArch64 (AAPCS64).
 *
 *   void evs__fiber_switch(void **save_sp, void *load_sp);
 *
 * Stores the callee-saved state (x19-x28, fp x29, lr x30, d8-d15) in a
 * 160-byte frame on the current stack, stores sp into *save_sp, switches to
 * load_sp, loads the same frame from there and returns (to the loaded x30).
 *
 * Frame at the saved SP (16-aligned), from low to high addresses:
 *   [sp+0]   x19 x20 x21 x22 x23 x24 x25 x26 x27 x28 x29 x30
 *   [sp+96]  d8 d9 d10 d11 d12 d13 d14 d15
 *
 * A new fiber's first frame (built by fiber.c) has x19 = the fiber,
 * x29 = 0 and x30 = evs__fiber_trampoline, so the `ret` enters the
 * trampoline with sp = top of the stack (16-aligned); it calls
 * evs__fiber_entry(x19), which never returns.
 *
 * Assembles to nothing on other architectures and when EVS_FIBER_UCONTEXT
 * is defined (the ucontext fallback is used then).
 */
#ifdef HAVE_CONFIG_H
#include "build-config.h"  /* EVS_FIBER_UCONTEXT */
#endif

#if defined(__aarch64__) && !defined(EVS_FIBER_UCONTEXT)

#if defined(__APPLE__)
#define SYM(n) _##n
#define FUNC_TYPE(n)
#define FUNC_SIZE(n)
#define HIDDEN(n) .private_extern SYM(n)
#else
#define SYM(n) n
#define FUNC_TYPE(n) .type n, %function
#define FUNC_SIZE(n) .size n, .-n
#define HIDDEN(n) .hidden n
#endif

	.text

	.globl	SYM(evs__fiber_switch)
	HIDDEN(evs__fiber_switch)
	FUNC_TYPE(evs__fiber_switch)
	.p2align 4
SYM(evs__fiber_switch):
	.cfi_startproc
	sub	sp, sp, #160
	.cfi_def_cfa_offset 160
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	.cfi_offset x19, -160
	.cfi_offset x20, -152
	.cfi_offset x21, -144
	.cfi_offset x22, -136
	.cfi_offset x23, -128
	.cfi_offset x24, -120
	.cfi_offset x25, -112
	.cfi_offset x26, -104
	.cfi_offset x27, -96
	.cfi_offset x28, -88
	.cfi_offset x29, -80
	.cfi_offset x30, -72
	stp	d8, d9, [sp, #96]
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]

	mov	x2, sp
	str	x2, [x0]		/* *save_sp = sp */
	mov	sp, x1			/* switch stacks; same frame layout */

	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldp	d8, d9, [sp, #96]
	ldp	d10, d11, [sp, #112]
	ldp	d12, d13, [sp, #128]
	ldp	d14, d15, [sp, #144]
	add	sp, sp, #160
	.cfi_def_cfa_offset 0
	.cfi_restore x19
	.cfi_restore x20
	.cfi_restore x21
	.cfi_restore x22
	.cfi_restore x23
	.cfi_restore x24
	.cfi_restore x25
	.cfi_restore x26
	.cfi_restore x27
	.cfi_restore x28
	.cfi_restore x29
	.cfi_restore x30
	ret
	.cfi_endproc
	FUNC_SIZE(evs__fiber_switch)

	.globl	SYM(evs__fiber_trampoline)
	HIDDEN(evs__fiber_trampoline)
	FUNC_TYPE(evs__fiber_trampoline)
	.p2align 4
SYM(evs__fiber_trampoline):
	.cfi_startproc
	.cfi_undefined x30		/* outermost frame: stop unwinding */
	mov	x29, #0
	mov	x0, x19
	bl	SYM(evs__fiber_entry)
	brk	#0x3e8			/* evs__fiber_entry never returns */
	.cfi_endproc
	FUNC_SIZE(evs__fiber_trampoline)

#endif /* __aarch64__ && !EVS_FIBER_UCONTEXT */

#if defined(__linux__) && defined(__ELF__)
	.section .note.GNU-stack,"",%progbits
#endif
