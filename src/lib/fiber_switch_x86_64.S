/*
 * fiber_switch_x86_64.S - fiber context switch for x86-64 (System V ABI).
 *
 *   void evs__fiber_switch(void **save_sp, void *load_sp);
 *
 * Pushes the callee-saved state (rbp, rbx, r12-r15, MXCSR, x87 control word)
 * on the current stack, stores the stack pointer into *save_sp, switches to
 * load_sp and pops the same state from there, then returns on the new stack.
 *
 * Frame at the saved SP, from low to high addresses:
 *   [sp+0]  MXCSR (4 bytes), x87 control word (2 bytes), 2 bytes padding
 *   [sp+8]  r15, r14, r13, r12, rbx, rbp
 *   [sp+56] return address
 *
 * A new fiber's first frame (built by fiber.c) returns into
 * evs__fiber_trampoline with r12 = the fiber and rsp = 8 (mod 16), as on
 * entry to any function; the trampoline calls evs__fiber_entry(r12), which
 * never returns.
 *
 * Assembles to nothing on other architectures and when EVS_FIBER_UCONTEXT
 * is defined (the ucontext fallback is used then).
 */
#ifdef HAVE_CONFIG_H
#include "build-config.h"  /* EVS_FIBER_UCONTEXT */
#endif

#if defined(__x86_64__) && !defined(EVS_FIBER_UCONTEXT)

#if defined(__APPLE__)
#define SYM(n) _##n
#define FUNC_TYPE(n)
#define FUNC_SIZE(n)
#define HIDDEN(n) .private_extern SYM(n)
#else
#define SYM(n) n
#define FUNC_TYPE(n) .type n, @function
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
	pushq	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbp, 0
	pushq	%rbx
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbx, 0
	pushq	%r12
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r12, 0
	pushq	%r13
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r13, 0
	pushq	%r14
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r14, 0
	pushq	%r15
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r15, 0
	subq	$8, %rsp
	.cfi_adjust_cfa_offset 8
	stmxcsr	(%rsp)
	fnstcw	4(%rsp)

	movq	%rsp, (%rdi)		/* *save_sp = rsp */
	movq	%rsi, %rsp		/* switch stacks; same frame layout */

	ldmxcsr	(%rsp)
	fldcw	4(%rsp)
	addq	$8, %rsp
	.cfi_adjust_cfa_offset -8
	popq	%r15
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r15
	popq	%r14
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r14
	popq	%r13
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r13
	popq	%r12
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r12
	popq	%rbx
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbx
	popq	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbp
	ret
	.cfi_endproc
	FUNC_SIZE(evs__fiber_switch)

	.globl	SYM(evs__fiber_trampoline)
	HIDDEN(evs__fiber_trampoline)
	FUNC_TYPE(evs__fiber_trampoline)
	.p2align 4
SYM(evs__fiber_trampoline):
	.cfi_startproc
	.cfi_undefined %rip		/* outermost frame: stop unwinding */
	xorl	%ebp, %ebp
	movq	%r12, %rdi
	subq	$8, %rsp		/* rsp = 0 (mod 16) at the call */
	.cfi_adjust_cfa_offset 8
	call	SYM(evs__fiber_entry)
	ud2				/* evs__fiber_entry never returns */
	.cfi_endproc
	FUNC_SIZE(evs__fiber_trampoline)

#endif /* __x86_64__ && !EVS_FIBER_UCONTEXT */

#if defined(__linux__) && defined(__ELF__)
	.section .note.GNU-stack,"",@progbits
#endif
