/* x86_64: system calls, the signal restorer and the inject stub (arch/x86/entry/syscalls/syscall_64.tbl). */

#define SYS_close 3
#define SYS_mprotect 10
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_sched_yield 24
#define SYS_nanosleep 35
#define SYS_getpid 39
#define SYS_gettid 186
#define SYS_tgkill 234
#define SYS_openat 257
#define SYS_process_vm_readv 310
#define SYS_process_vm_writev 311

/* Variable-length instructions: a site longer than one byte is restored int3 first (see
 * restore_site()). */
#define TORN_WRITE_ORDER 1
#define TRAP_INSN_BYTE 0xcc

/* syscall: number in rax, arguments in rdi rsi rdx r10 r8 r9; rcx and r11 clobbered. */
__asm__(".pushsection .text.uemu_stubs,\"ax\",@progbits\n"
        ".globl uemu_syscall\n.hidden uemu_syscall\n.type uemu_syscall,@function\n"
        "uemu_syscall:\n"
        "    mov %rdi, %rax\n    mov %rsi, %rdi\n    mov %rdx, %rsi\n    mov %rcx, %rdx\n"
        "    mov %r8, %r10\n    mov %r9, %r8\n    mov 8(%rsp), %r9\n"
        "    syscall\n    ret\n"
        ".globl uemu_restorer\n.hidden uemu_restorer\n"
        "uemu_restorer:\n    mov $" STR(SYS_rt_sigreturn) ", %eax\n    syscall\n    hlt\n"
        ".globl uemu_inject_syscall\n.hidden uemu_inject_syscall\n"
        ".globl uemu_inject_trap\n.hidden uemu_inject_trap\n"
        "uemu_inject_syscall:\n    syscall\nuemu_inject_trap:\n    int3\n"
        ".popsection\n");

static inline long sys_pread64(long fd, void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pread64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

static inline long sys_pwrite64(long fd, const void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pwrite64, fd, (long)buf, (long)len, (long)offset, 0, 0);
}

/* x86 keeps instruction fetch coherent with stores. */
static inline void sync_icache(uint64_t start, unsigned long len)
{
    (void)start;
    (void)len;
}
