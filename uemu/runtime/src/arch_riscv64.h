/* riscv64: system calls, the signal restorer and the inject stub (asm-generic/unistd.h). */

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
#define SYS_riscv_flush_icache 259 /* __NR_arch_specific_syscall + 15 */
#define SYS_process_vm_readv 270
#define SYS_process_vm_writev 271

#define TORN_WRITE_ORDER 0

/* ecall: number in a7, arguments in a0..a5.  norvc: a 4-byte ebreak, as uemu writes. */
__asm__(".pushsection .text.uemu_stubs,\"ax\",@progbits\n"
        ".option push\n.option norvc\n"
        ".globl uemu_syscall\n.hidden uemu_syscall\n.type uemu_syscall,@function\n"
        "uemu_syscall:\n"
        "    mv a7, a0\n    mv a0, a1\n    mv a1, a2\n    mv a2, a3\n"
        "    mv a3, a4\n    mv a4, a5\n    mv a5, a6\n"
        "    ecall\n    ret\n"
        ".globl uemu_restorer\n.hidden uemu_restorer\n"
        "uemu_restorer:\n    li a7, " STR(SYS_rt_sigreturn) "\n    ecall\n    ebreak\n"
        ".globl uemu_inject_syscall\n.hidden uemu_inject_syscall\n"
        ".globl uemu_inject_trap\n.hidden uemu_inject_trap\n"
        "uemu_inject_syscall:\n    ecall\nuemu_inject_trap:\n    ebreak\n"
        ".option pop\n"
        ".popsection\n");

static inline long sys_pread64(long fd, void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pread64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

static inline long sys_pwrite64(long fd, const void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pwrite64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

/* fence.i is local to one hart; the kernel flushes every hart of the process. */
static inline void sync_icache(uint64_t start, unsigned long len)
{
    uemu_syscall(SYS_riscv_flush_icache, (long)start, (long)(start + len), 0, 0, 0, 0);
}
