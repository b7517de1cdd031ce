/* aarch64: system calls, the signal restorer and the inject stub (asm-generic/unistd.h). */

#define SYS_openat 56
#define SYS_close 57
#define SYS_pread64 67
#define SYS_pwrite64 68
#define SYS_nanosleep 101
#define SYS_sched_yield 124
#define SYS_tgkill 131
#define SYS_rt_sigaction 134
#define SYS_rt_sigreturn 139
#define SYS_getpid 172
#define SYS_gettid 178
#define SYS_mprotect 226
#define SYS_process_vm_readv 270
#define SYS_process_vm_writev 271

#define TORN_WRITE_ORDER 0

/* svc #0: number in x8, arguments in x0..x5.  The inject stub's brk immediate is not the
 * kernel's UPROBES_BRK_IMM (5), so the kernel's uprobe hook never looks at it. */
__asm__(".pushsection .text.uemu_stubs,\"ax\",@progbits\n"
        ".globl uemu_syscall\n.hidden uemu_syscall\n.type uemu_syscall,%function\n"
        "uemu_syscall:\n"
        "    mov x8, x0\n    mov x0, x1\n    mov x1, x2\n    mov x2, x3\n"
        "    mov x3, x4\n    mov x4, x5\n    mov x5, x6\n"
        "    svc #0\n    ret\n"
        ".globl uemu_restorer\n.hidden uemu_restorer\n"
        "uemu_restorer:\n    mov x8, #" STR(SYS_rt_sigreturn) "\n    svc #0\n    brk #0x3e5\n"
        ".globl uemu_inject_syscall\n.hidden uemu_inject_syscall\n"
        ".globl uemu_inject_trap\n.hidden uemu_inject_trap\n"
        "uemu_inject_syscall:\n    svc #0\nuemu_inject_trap:\n    brk #0x3e5\n"
        ".popsection\n");

static inline long sys_pread64(long fd, void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pread64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

static inline long sys_pwrite64(long fd, const void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pwrite64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

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
