/* riscv64: system call numbers (asm-generic/unistd.h) and instructions. */

#include "syscalls_generic.h"
#define SYS_riscv_flush_icache 259 /* __NR_arch_specific_syscall + 15 */

#define TORN_WRITE_ORDER 0

/* norvc: a 4-byte ebreak, as uemu writes them. */
#define ASM_PROLOGUE ".option push\n.option norvc\n"
#define ASM_EPILOGUE ".option pop\n"
#define ASM_SYSCALL "ecall"
#define ASM_TRAP "ebreak"
/* uemu_syscall(nr, a..f): number in a7, arguments in a0..a5. */
#define ASM_SYSCALL_BODY                                                        \
    "    mv a7, a0\n    mv a0, a1\n    mv a1, a2\n    mv a2, a3\n"              \
    "    mv a3, a4\n    mv a4, a5\n    mv a5, a6\n    ecall\n    ret\n"
#define ASM_RESTORER "    li a7, " STR(SYS_rt_sigreturn) "\n    ecall\n    ebreak\n"

/* fence.i is local to one hart; the kernel flushes every hart of the process. */
#define sync_icache(start, len) \
    uemu_syscall(SYS_riscv_flush_icache, (long)(start), (long)((start) + (len)), 0, 0, 0, 0)
