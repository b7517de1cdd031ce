/* i386: system calls, the signal restorer and the inject stub (arch/x86/entry/syscalls/syscall_32.tbl). */

#define SYS_close 6
#define SYS_getpid 20
#define SYS_mprotect 125
#define SYS_sched_yield 158
#define SYS_nanosleep 162
#define SYS_rt_sigreturn 173
#define SYS_rt_sigaction 174
#define SYS_pread64 180
#define SYS_pwrite64 181
#define SYS_gettid 224
#define SYS_tgkill 270
#define SYS_openat 295
#define SYS_process_vm_readv 347
#define SYS_process_vm_writev 348

#define TORN_WRITE_ORDER 1
#define TRAP_INSN_BYTE 0xcc

/* int $0x80: number in eax, arguments in ebx ecx edx esi edi ebp.  Out of line in assembly
 * because ebp (and, under -fPIE, ebx) cannot be named in an inline asm's constraints. */
__asm__(".pushsection .text.uemu_stubs,\"ax\",@progbits\n"
        ".globl uemu_syscall\n.hidden uemu_syscall\n.type uemu_syscall,@function\n"
        "uemu_syscall:\n"
        "    push %ebp\n    push %edi\n    push %esi\n    push %ebx\n"
        "    mov 20(%esp), %eax\n    mov 24(%esp), %ebx\n    mov 28(%esp), %ecx\n"
        "    mov 32(%esp), %edx\n    mov 36(%esp), %esi\n    mov 40(%esp), %edi\n"
        "    mov 44(%esp), %ebp\n"
        "    int $0x80\n"
        "    pop %ebx\n    pop %esi\n    pop %edi\n    pop %ebp\n    ret\n"
        ".globl uemu_restorer\n.hidden uemu_restorer\n"
        "uemu_restorer:\n    mov $" STR(SYS_rt_sigreturn) ", %eax\n    int $0x80\n    hlt\n"
        ".globl uemu_inject_syscall\n.hidden uemu_inject_syscall\n"
        ".globl uemu_inject_trap\n.hidden uemu_inject_trap\n"
        "uemu_inject_syscall:\n    int $0x80\nuemu_inject_trap:\n    int3\n"
        ".popsection\n");

/* The 64-bit offset goes in two registers, low word first. */
static inline long sys_pread64(long fd, void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pread64, fd, (long)buf, (long)len, (long)offset, (long)(offset >> 32), 0);
}

static inline long sys_pwrite64(long fd, const void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pwrite64, fd, (long)buf, (long)len, (long)offset, (long)(offset >> 32), 0);
}

static inline void sync_icache(uint64_t start, unsigned long len)
{
    (void)start;
    (void)len;
}
