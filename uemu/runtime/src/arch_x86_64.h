/* x86_64: system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) and instructions. */

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
