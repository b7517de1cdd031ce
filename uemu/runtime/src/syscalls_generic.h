/* System call numbers of asm-generic/unistd.h: the table of arm64 and every port since. */

#define SYS_openat 56
#define SYS_close 57
#define SYS_read 63
#define SYS_pread64 67
#define SYS_pwrite64 68
#define SYS_futex 98
#define SYS_nanosleep 101
#define SYS_clock_gettime 113
#define SYS_sched_yield 124
#define SYS_kill 129
#define SYS_tgkill 131
#define SYS_rt_sigaction 134
#define SYS_rt_sigreturn 139
#define SYS_getpid 172
#define SYS_gettid 178
#define SYS_mprotect 226
#define SYS_process_vm_readv 270
#define SYS_process_vm_writev 271
