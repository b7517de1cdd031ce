/* x86_64: system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) and instructions. */

#include "x86_flags.h"

#define SYS_read 0
#define SYS_close 3
#define SYS_mprotect 10
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_sched_yield 24
#define SYS_nanosleep 35
#define SYS_getpid 39
#define SYS_kill 62
#define SYS_gettid 186
#define SYS_futex 202
#define SYS_clock_gettime 228
#define SYS_tgkill 234
#define SYS_openat 257
#define SYS_process_vm_readv 310
#define SYS_process_vm_writev 311

/* Variable-length instructions: a site longer than one byte is restored int3 first (see
 * restore_site()). */
#define TORN_WRITE_ORDER 1
#define TRAP_INSN_BYTE 0xcc

#define ASM_SYSCALL "syscall"
#define ASM_TRAP "int3"
/* uemu_syscall(nr, a..f): number in rax, arguments in rdi rsi rdx r10 r8 r9. */
#define ASM_SYSCALL_BODY                                                        \
    "    mov %rdi, %rax\n    mov %rsi, %rdi\n    mov %rdx, %rsi\n"              \
    "    mov %rcx, %rdx\n    mov %r8, %r10\n    mov %r9, %r8\n    mov 8(%rsp), %r9\n" \
    "    syscall\n    ret\n"
#define ASM_RESTORER "    mov $" STR(SYS_rt_sigreturn) ", %eax\n    syscall\n    hlt\n"

/* x86 keeps instruction fetch coherent with stores. */
#define sync_icache(start, len) ((void)(start), (void)(len))

/* uemu_hit_entry: a trampoline stepped below the red zone, pushed the site's index and
 * called here.  Every register and the flags go on the stack as the frame uemu_hit()
 * reads (arch/x86.py HIT_FRAME_64: r15 at the lowest address ... rflags, then the return
 * address and the index), the stack is aligned for the call, and all comes back (the
 * flags without popf: x86_flags.h).  Neither the pops nor lea touch the flags. */
#define ASM_HIT_ENTRY                                                           \
    "    pushfq\n    push %rax\n    push %rcx\n    push %rdx\n    push %rbx\n"     \
    "    push %rbp\n    push %rsi\n    push %rdi\n    push %r8\n    push %r9\n"     \
    "    push %r10\n    push %r11\n    push %r12\n    push %r13\n    push %r14\n"   \
    "    push %r15\n    cld\n    mov %rsp, %rbx\n    mov 136(%rsp), %edi\n"        \
    "    mov %rsp, %rsi\n    and $-16, %rsp\n    call uemu_hit\n    mov %rbx, %rsp\n" \
    "    mov 120(%rsp), %rax\n" ASM_RESTORE_FLAGS_FROM_EAX                          \
    "    pop %r15\n    pop %r14\n    pop %r13\n    pop %r12\n    pop %r11\n"       \
    "    pop %r10\n    pop %r9\n    pop %r8\n    pop %rdi\n    pop %rsi\n"         \
    "    pop %rbp\n    pop %rbx\n    pop %rdx\n    pop %rcx\n    pop %rax\n"        \
    "    lea 8(%rsp), %rsp\n    ret\n"

/* uemu_read_counter: the TSC, which the runtime reads instead of calling the vDSO's
 * clock where the kernel keeps time by it (JUMPS_FLAG_COUNTER), and else before calling
 * it.  A thread that turned rdtsc off (prctl PR_SET_TSC) faults on it: uemu then zeroes
 * rax and rdx and steps over its 2 bytes (arch/x86.py _TSC), and the read gives 0. */
#define ASM_READ_COUNTER "    rdtsc\n    shl $32, %rdx\n    or %rdx, %rax\n    ret\n"
#define COUNTER_CLOCK 1 /* a record's time through it: runtime.c, now_ns */

/* The fs base, by rdfsbase: only called where the kernel enabled it (HWCAP2_FSGSBASE). */
static inline unsigned long thread_pointer(void)
{
    unsigned long tp;

    __asm__ volatile("rdfsbase %0" : "=r"(tp));
    return tp;
}
