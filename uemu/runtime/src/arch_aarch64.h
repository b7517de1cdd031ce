/* aarch64: system call numbers (asm-generic/unistd.h) and instructions. */

#include "syscalls_generic.h"

#define TORN_WRITE_ORDER 0

#define ASM_SYSCALL "svc #0"
/* Not the kernel's UPROBES_BRK_IMM (5): the kernel's uprobe hook never looks at it. */
#define ASM_TRAP "brk #0x3e5"
/* uemu_syscall(nr, a..f): number in x8, arguments in x0..x5. */
#define ASM_SYSCALL_BODY                                                        \
    "    mov x8, x0\n    mov x0, x1\n    mov x1, x2\n    mov x2, x3\n"          \
    "    mov x3, x4\n    mov x4, x5\n    mov x5, x6\n    svc #0\n    ret\n"
#define ASM_RESTORER "    mov x8, #" STR(SYS_rt_sigreturn) "\n    svc #0\n    " ASM_TRAP "\n"

/* After a store to code through process_vm_writev (which, unlike /proc/self/mem, does not
 * flush): clean the data cache and invalidate the instruction cache to the point of
 * unification, broadcast to every CPU (Linux sets SCTLR_EL1.UCI, so EL0 may). */
static inline void sync_icache(uint64_t start, unsigned long len)
{
    unsigned long ctr, line, end = start + len, p;

    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    line = 4UL << ((ctr >> 16) & 15);
    for (p = start & ~(line - 1); p < end; p += line)
        __asm__ volatile("dc cvau, %0" : : "r"(p) : "memory");
    __asm__ volatile("dsb ish" : : : "memory");
    line = 4UL << (ctr & 15);
    for (p = start & ~(line - 1); p < end; p += line)
        __asm__ volatile("ic ivau, %0" : : "r"(p) : "memory");
    __asm__ volatile("dsb ish\n\tisb" : : : "memory");
}
