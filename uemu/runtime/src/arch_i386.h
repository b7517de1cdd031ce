/* i386: system call numbers (arch/x86/entry/syscalls/syscall_32.tbl) and instructions. */

#include "x86_flags.h"

#define SYS_read 3
#define SYS_close 6
#define SYS_getpid 20
#define SYS_kill 37
#define SYS_mprotect 125
#define SYS_sched_yield 158
#define SYS_nanosleep 162
#define SYS_rt_sigreturn 173
#define SYS_rt_sigaction 174
#define SYS_pread64 180
#define SYS_pwrite64 181
#define SYS_gettid 224
#define SYS_futex 240
#define SYS_clock_gettime 265
#define SYS_tgkill 270
#define SYS_openat 295
#define SYS_process_vm_readv 347
#define SYS_process_vm_writev 348

#define TORN_WRITE_ORDER 1
#define TRAP_INSN_BYTE 0xcc

/* A 64-bit file offset goes in two registers, low word first. */
#define OFFSET_ARGS(offset) (long)(offset), (long)((offset) >> 32)

#define ASM_SYSCALL "int $0x80"
#define ASM_TRAP "int3"
/* uemu_syscall(nr, a..f), cdecl: number in eax, arguments in ebx ecx edx esi edi ebp.  In
 * assembly because ebp (and, under -fPIE, ebx) cannot be named in inline asm constraints. */
#define ASM_SYSCALL_BODY                                                        \
    "    push %ebp\n    push %edi\n    push %esi\n    push %ebx\n"              \
    "    mov 20(%esp), %eax\n    mov 24(%esp), %ebx\n    mov 28(%esp), %ecx\n"  \
    "    mov 32(%esp), %edx\n    mov 36(%esp), %esi\n    mov 40(%esp), %edi\n"  \
    "    mov 44(%esp), %ebp\n    int $0x80\n"                                   \
    "    pop %ebx\n    pop %esi\n    pop %edi\n    pop %ebp\n    ret\n"
#define ASM_RESTORER "    mov $" STR(SYS_rt_sigreturn) ", %eax\n    int $0x80\n    hlt\n"

#define sync_icache(start, len) ((void)(start), (void)(len))

/* uemu_hit_entry: a trampoline pushed the site's index and called here.  pushal and the
 * flags make the frame uemu_hit() reads (arch/x86.py HIT_FRAME_32: edi at the lowest
 * address ... eflags, then the return address and the index); cdecl, 16-byte aligned.
 * The flags come back without popf (x86_flags.h); popal and lea leave them alone. */
#define ASM_HIT_ENTRY                                                           \
    "    pushfl\n    pushal\n    cld\n    mov %esp, %ebx\n    mov 40(%esp), %eax\n" \
    "    and $-16, %esp\n    sub $8, %esp\n    push %ebx\n    push %eax\n"            \
    "    call uemu_hit\n    mov %ebx, %esp\n    mov 32(%esp), %eax\n"               \
    ASM_RESTORE_FLAGS_FROM_EAX "    popal\n    lea 4(%esp), %esp\n    ret\n"

/* uemu_read_counter: the TSC in edx:eax (a uint64_t's return), as on x86_64 (arch_x86_64.h);
 * a fault uemu takes back zeroes eax and edx (arch/x86.py _TSC_32). */
#define ASM_READ_COUNTER "    rdtsc\n    ret\n"
#define COUNTER_CLOCK 1

/* %gs:0 holds the thread control block's own address (the i386 TLS ABI); a null %gs (no
 * TLS set up yet: early in ld.so) reads as 0 instead of faulting. */
static inline unsigned long thread_pointer(void)
{
    unsigned long gs, tp = 0;

    __asm__ volatile("mov %%gs, %0" : "=r"(gs));
    if (gs & 0xfffc)
        __asm__ volatile("mov %%gs:0, %0" : "=r"(tp));
    return tp;
}
