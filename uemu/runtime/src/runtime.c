/*
 * uemu's in-target runtime: the net (a SIGTRAP handler inside every traced process that
 * undoes everything uemu wrote there when uemu is gone) and the jump path's hit recorder
 * (uemu_hit_entry: a trampoline's call, which writes the hit into the event ring).
 *
 * While uemu lives, ptrace takes every SIGTRAP first and this handler runs only for a
 * trap uemu found not to be its own (then it chains to the program's action) or when
 * uemu asks it to put the program's action back (R6).  When uemu is dead (SIGKILL, OOM,
 * a crash), a thread meeting one of uemu's breakpoints lands here: the table in the
 * area's data part (uemu/runtime/layout.py) says what uemu wrote, and the handler writes
 * the program's bytes back, lowers the semaphores uemu raised, brings a thread left in
 * an XOL slot to where its step would have ended, puts the program's SIGTRAP action back
 * and returns to the site, where the original instruction now runs.
 *
 * Written once, compiled for each ABI into a flat position-independent blob by
 * uemu/runtime/build.py: no libc, no global data, no run-time relocations.  The area's
 * base is the blob's own start (a PC-relative address); the table is CODE_SIZE further.
 * Every access to the program's memory goes through /proc/self/mem or
 * process_vm_readv/writev, so a page that is gone costs a skipped entry, never a fault.
 */

#include <stddef.h>
#include <stdint.h>

#define STR_(x) #x
#define STR(x) STR_(x)
/* On a hit's usual way: inlined, whatever the compiler would weigh (a call, its saves
 * and a struct copied through memory cost as much as the work). */
#define HOT inline __attribute__((always_inline))

#include "layout.h" /* generated: the table's records, the area's sizes, this ABI's facts */

#pragma GCC visibility push(hidden)

long uemu_syscall(long nr, long a, long b, long c, long d, long e, long f);

#include ARCH_HEADER /* syscall numbers, instructions, icache sync */

#ifndef ASM_PROLOGUE
#define ASM_PROLOGUE ""
#define ASM_EPILOGUE ""
#endif
#ifndef OFFSET_ARGS
#define OFFSET_ARGS(offset) (long)(offset), 0
#endif

/* The entry points that must be assembly: the system call, the signal restorer
 * (rt_sigreturn, for SA_RESTORER), the inject stub (the ABI's syscall instruction
 * followed by its trap, so a thread uemu left in an injected call reaches the handler),
 * and the trampolines' hit entry (every register saved around uemu_hit()). */
#define ASM_GLOBAL(name) ".globl " #name "\n.hidden " #name "\n" #name ":\n"
__asm__(".pushsection .text.uemu_stubs,\"ax\",%progbits\n" ASM_PROLOGUE
        ASM_GLOBAL(uemu_syscall) ASM_SYSCALL_BODY
        ASM_GLOBAL(uemu_restorer) ASM_RESTORER
        ASM_GLOBAL(uemu_inject_syscall) "    " ASM_SYSCALL "\n"
        ASM_GLOBAL(uemu_inject_trap) "    " ASM_TRAP "\n"
        ASM_GLOBAL(uemu_hit_entry) ASM_HIT_ENTRY
#ifdef ASM_READ_COUNTER
        ASM_GLOBAL(uemu_read_counter) ASM_READ_COUNTER
#endif
        ASM_EPILOGUE ".popsection\n");

static long sys_pread64(long fd, void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pread64, fd, (long)buf, (long)len, OFFSET_ARGS(offset), 0);
}

static long sys_pwrite64(long fd, const void *buf, unsigned long len, uint64_t offset)
{
    return uemu_syscall(SYS_pwrite64, fd, (long)buf, (long)len, OFFSET_ARGS(offset), 0);
}

#define SIGTRAP 5
#define SI_USER 0
#define SI_TKILL (-6)
#define TRAP_TRACE 2
#define SA_RESETHAND 0x80000000UL
#define SIG_DFL 0UL
#define SIG_IGN 1UL
#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_RDWR 02
#define O_CLOEXEC 02000000
#define PROT_WRITE 2
#define ESRCH 3
#define SIGSET_SIZE 8

extern const char uemu_blob_start[];
extern const char uemu_inject_trap[];
void uemu_trap_handler(int sig, void *info, void *uc);

/* The head of the kernel's siginfo: the union after si_code is pointer-aligned. */
struct ksiginfo {
    int32_t signo;
    int32_t err;
    int32_t code;
    union {
        struct {
            int32_t pid;
            uint32_t uid;
        } kill;
        unsigned long align;
    } u;
};

struct iovec {
    void *base;
    unsigned long len;
};

struct timespec {
    long sec;
    long nsec;
};

/* gcc may emit calls to these four even in freestanding code. */
void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d < s)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;

    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;

    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

static long sys0(long nr)
{
    return uemu_syscall(nr, 0, 0, 0, 0, 0, 0);
}

static long sys3(long nr, long a, long b, long c)
{
    return uemu_syscall(nr, a, b, c, 0, 0, 0);
}

/* ---------------------------------------------------------------------------------------
 * The table and the ucontext
 * ------------------------------------------------------------------------------------ */

/* The table, CODE_SIZE past the blob's start.  The empty asm hides the symbol from the
 * compiler: folded into "symbol + 1 MiB", aarch64's gcc would load that address from a
 * literal pool that needs a run-time relocation. */
static struct table_header *table(void)
{
    const char *base = uemu_blob_start;

    __asm__("" : "+r"(base));
    return (struct table_header *)(base + CODE_SIZE);
}

#define TABLE_ARRAY(t, type) ((struct type *)((char *)(t) + (t)->type##s_off))

static struct inject_header *inject_of(struct table_header *t)
{
    return (struct inject_header *)((char *)t + INJECT_OFF);
}

static unsigned long uc_get(void *uc, uint32_t off)
{
    return *(unsigned long *)((char *)uc + off);
}

static void uc_set(void *uc, uint32_t off, unsigned long value)
{
    *(unsigned long *)((char *)uc + off) = value;
}

static uint32_t load(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------------------------------
 * Fault-safe access to the program's memory
 * ------------------------------------------------------------------------------------ */

struct memio {
    long fd; /* /proc/self/mem, or negative when it cannot be opened */
    long pid;
};

static void mem_open(struct memio *io, struct table_header *t)
{
    io->pid = sys0(SYS_getpid);
    io->fd = sys3(SYS_openat, AT_FDCWD, (long)t->mem_path, O_RDWR | O_CLOEXEC);
}

static void mem_close(struct memio *io)
{
    if (io->fd >= 0)
        sys3(SYS_close, io->fd, 0, 0);
}

static int vm_copy(struct memio *io, long nr, uint64_t addr, void *buf, unsigned long len)
{
    struct iovec local = { buf, len };
    struct iovec remote = { (void *)(uintptr_t)addr, len };

    return uemu_syscall(nr, io->pid, (long)&local, 1, (long)&remote, 1, 0) == (long)len ? 0 : -1;
}

static int mem_read(struct memio *io, uint64_t addr, void *buf, unsigned long len)
{
    if (io->fd >= 0 && sys_pread64(io->fd, buf, len, addr) == (long)len)
        return 0;
    return vm_copy(io, SYS_process_vm_readv, addr, buf, len);
}

/* Writable data (semaphores, the stack): /proc/self/mem, else process_vm_writev. */
static int mem_write_data(struct memio *io, uint64_t addr, const void *buf, unsigned long len)
{
    if (io->fd >= 0 && sys_pwrite64(io->fd, buf, len, addr) == (long)len)
        return 0;
    return vm_copy(io, SYS_process_vm_writev, addr, (void *)buf, len);
}

/*
 * Code: /proc/self/mem writes through read-only text as uemu's own writes do, and the
 * kernel syncs the instruction cache.  Where that is refused (no /proc, or
 * proc_mem.force_override=never|ptrace): make the pages writable for the copy, then put
 * their protection back.  Under memory-deny-write-execute that mprotect fails and the
 * site stays as it is.
 */
static int mem_write_code(struct memio *io, uint64_t addr, const void *buf, unsigned long len, uint32_t prot)
{
    uint64_t start = addr & ~(uint64_t)(PAGE - 1);
    uint64_t end = (addr + len + PAGE - 1) & ~(uint64_t)(PAGE - 1);
    int err;

    if (io->fd >= 0 && sys_pwrite64(io->fd, buf, len, addr) == (long)len)
        return 0;
    if (sys3(SYS_mprotect, (long)start, (long)(end - start), (long)(prot | PROT_WRITE)) != 0)
        return -1;
    err = vm_copy(io, SYS_process_vm_writev, addr, (void *)buf, len);
    sys3(SYS_mprotect, (long)start, (long)(end - start), (long)prot);
    if (!err)
        sync_icache(addr, len);
    return err;
}

/* ---------------------------------------------------------------------------------------
 * Undoing uemu's writes
 * ------------------------------------------------------------------------------------ */

/*
 * The program's bytes back at a site that still holds uemu's, and only then: a site
 * rewritten since (the program's own code, another tool) is left alone.  Kernel: like
 * set_orig_insn() -> uprobe_write_opcode(), which verifies the opcode first.
 */
static void restore_site(struct memio *io, const struct site *s)
{
    uint8_t cur[sizeof s->trap];
    unsigned long len = s->len;

    if (len == 0 || len > sizeof cur || mem_read(io, s->addr, cur, len) || memcmp(cur, s->trap, len))
        return;
#if TORN_WRITE_ORDER
    /* A thread may execute here meanwhile: first an int3 at the first byte (it traps and
     * waits for our lock), then the tail, then the first byte; never a torn instruction. */
    if (len > 1) {
        static const uint8_t int3 = TRAP_INSN_BYTE;

        if (mem_write_code(io, s->addr, &int3, 1, s->prot) ||
            mem_write_code(io, s->addr + 1, s->orig + 1, len - 1, s->prot))
            return;
        mem_write_code(io, s->addr, s->orig, 1, s->prot);
        return;
    }
#endif
    mem_write_code(io, s->addr, s->orig, len, s->prot);
}

/* A 16-bit signed semaphore lowered as often as uemu raised it, never below 0 (Kernel:
 * __update_ref_ctr() refuses to go negative).  ``raised`` is zeroed so a restore that is
 * redone (a fork copied a half-done one) does not lower twice. */
static void lower_counter(struct memio *io, struct counter *c)
{
    uint32_t n = c->raised;
    int16_t value, was;

    c->raised = 0;
    if (!n || mem_read(io, c->addr, &value, sizeof value))
        return;
    for (was = value; n && value > 0; n--)
        value--;
    if (value != was)
        mem_write_data(io, c->addr, &value, sizeof value);
}

/* Take the table's lock: 0 when free, else the tid of its holder.  A holder that is not a
 * thread of this process any more (a fork copied the lock held) is taken over.  Returns 0
 * when this very thread holds it (re-entered through a handler of the program). */
static int lock_table(struct table_header *t, long pid, long tid)
{
    for (;;) {
        uint32_t holder = 0;

        if (__atomic_compare_exchange_n(&t->lock, &holder, (uint32_t)tid, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return 1;
        if (holder == (uint32_t)tid)
            return 0;
        if (sys3(SYS_tgkill, pid, holder, 0) == -ESRCH &&
            __atomic_compare_exchange_n(&t->lock, &holder, (uint32_t)tid, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return 1;
        sys0(SYS_sched_yield);
    }
}

static unsigned long action_word(const uint8_t *action, unsigned off)
{
    return *(const unsigned long *)(action + off);
}

static void set_default_action(void)
{
    static const uint8_t dfl[KSA_SIZE];

    uemu_syscall(SYS_rt_sigaction, SIGTRAP, (long)dfl, 0, SIGSET_SIZE, 0, 0);
}

/* The program's own SIGTRAP action back, if ours is still installed. */
static void put_action_back(struct table_header *t)
{
    uint8_t cur[KSA_SIZE];

    if (uemu_syscall(SYS_rt_sigaction, SIGTRAP, 0, (long)cur, SIGSET_SIZE, 0, 0) == 0 &&
        action_word(cur, KSA_HANDLER) == (unsigned long)uemu_trap_handler)
        uemu_syscall(SYS_rt_sigaction, SIGTRAP, (long)t->saved_action, 0, SIGSET_SIZE, 0, 0);
    store(&t->action_back, 1);
}

/*
 * Undo everything, once, whichever thread comes first; the others wait for the lock and
 * find it done.  Then, outside the lock, wait restore_delay_ms before putting the
 * program's action back: a thread that trapped on a breakpoint just before it was
 * restored may still be on its way to signal delivery, and must find our action.
 */
static void restore_all(struct table_header *t)
{
    long pid = sys0(SYS_getpid), tid = sys0(SYS_gettid);
    struct memio io;
    uint32_t i, pass, state;

    if (!lock_table(t, pid, tid))
        return;
    state = load(&t->state);
    if (state != STATE_ARMED && state != STATE_RESTORING) {
        store(&t->lock, 0);
        return;
    }
    store(&t->state, STATE_RESTORING);
    mem_open(&io, t);
    /* One-byte writes first: a pun's displacement may be the start of the jump uemu
     * wrote over its successor (an evicted one), which must outlive it. */
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < t->sites_cap; i++)
            if (TABLE_ARRAY(t, site)[i].state == SITE_ARMED && (TABLE_ARRAY(t, site)[i].len == 1) == !pass)
                restore_site(&io, &TABLE_ARRAY(t, site)[i]);
    for (i = 0; i < t->counters_cap; i++)
        lower_counter(&io, &TABLE_ARRAY(t, counter)[i]);
    mem_close(&io);
    store(&t->state, STATE_RESTORED);
    store(&t->lock, 0);

    if (t->restore_delay_ms) {
        struct timespec delay = { t->restore_delay_ms / 1000, (t->restore_delay_ms % 1000) * 1000000L };

        sys3(SYS_nanosleep, (long)&delay, 0, 0);
    }
    put_action_back(t);
    store(&t->state, STATE_DETACHED);
}

/* ---------------------------------------------------------------------------------------
 * Deciding whether a trap is ours, and what to change in the thread
 * ------------------------------------------------------------------------------------ */

enum verdict {
    NOT_OURS,
    AT_SITE,      /* R1: return to the site, where the original instruction is back */
    SWALLOWED,    /* R3: the registers uemu set are right; the trap was the stop's */
    STEP_DONE,    /* R2, R4: finish an out-of-line step */
    INJECT_DONE,  /* R5: give back the registers of an injected syscall */
};

struct trap {
    int code;
    unsigned long ip;
    unsigned long addr; /* ip - TRAP_IP_ADJUST: the trap instruction's address */
    long tid;
    enum verdict verdict;
    struct slot *slot;
    unsigned long after; /* where the step stopped (R2: the slot's trap; R4: ip) */
    struct thread *thread;
};

static struct site *find_site(struct table_header *t, unsigned long addr)
{
    uint32_t i;

    for (i = 0; i < t->sites_cap; i++)
        if (TABLE_ARRAY(t, site)[i].state == SITE_ARMED && TABLE_ARRAY(t, site)[i].addr == addr)
            return &TABLE_ARRAY(t, site)[i];
    return 0;
}

/*
 * x86 writes a second int3 one byte into an instruction of two bytes or more (never run
 * while uemu lives).  The kernel drops the SIGTRAP of a thread whose tracer dies in its
 * signal-delivery stop and resumes it after the first int3, inside the instruction: the
 * second one brings it here, and it belongs at the site.
 */
static struct site *shadow_of(struct table_header *t, unsigned long addr)
{
    struct site *site = find_site(t, addr - 1);

    return site && site->len >= 2 && site->trap[1] == site->trap[0] ? site : 0;
}

static struct slot *find_slot(struct table_header *t, unsigned long trap_addr)
{
    uint32_t i;

    for (i = 0; i < t->slots_cap; i++)
        if ((TABLE_ARRAY(t, slot)[i].flags & SLOT_VALID) && TABLE_ARRAY(t, slot)[i].trap_addr == trap_addr)
            return &TABLE_ARRAY(t, slot)[i];
    return 0;
}

static struct thread *find_thread(struct table_header *t, long tid)
{
    uint32_t i;

    for (i = 0; i < t->threads_cap; i++)
        if (TABLE_ARRAY(t, thread)[i].tid == (uint32_t)tid && TABLE_ARRAY(t, thread)[i].flags)
            return &TABLE_ARRAY(t, thread)[i];
    return 0;
}

/*
 * R1-R5.  Only a trap the kernel raised (si_code > 0) can be ours.  R3 comes first: it
 * names this very thread, ip and sp, and an instruction uemu emulated may leave ip just
 * past a site (a 1-byte push), which R1 would take for the site's trap and run again.
 */
static void classify(struct table_header *t, struct trap *trap, void *uc)
{
    struct thread *thread = find_thread(t, trap->tid);
    struct inject_header *inject = inject_of(t);
    unsigned long inject_trap = (unsigned long)uemu_inject_trap;

    trap->verdict = NOT_OURS;
    trap->thread = thread;
    if (trap->code <= 0)
        return;
    if (thread && (thread->flags & THREAD_SWALLOW) && thread->swallow_ip == trap->ip &&
        thread->swallow_sp == uc_get(uc, UC_SP_OFF)) {
        trap->verdict = SWALLOWED;
    } else if (trap->code == TRAP_SI_CODE && find_site(t, trap->addr)) {
        trap->verdict = AT_SITE;
    } else if (trap->code == TRAP_SI_CODE && TRAP_IP_ADJUST && shadow_of(t, trap->addr)) {
        trap->verdict = AT_SITE;
        trap->addr -= 1;
    } else if ((trap->code == TRAP_SI_CODE && (trap->slot = find_slot(t, trap->addr))) ||
               (trap->code == TRAP_TRACE && (trap->slot = find_slot(t, trap->ip)))) {
        trap->verdict = STEP_DONE;
        trap->after = trap->slot->trap_addr;
    } else if (thread && (thread->flags & THREAD_STEP) && trap->code == TRAP_TRACE &&
               thread->step_slot < t->slots_cap) {
        trap->verdict = STEP_DONE;
        trap->slot = &TABLE_ARRAY(t, slot)[thread->step_slot];
        trap->after = trap->ip;
    } else if (load(&inject->state) == INJECT_ACTIVE && inject->tid == (uint32_t)trap->tid &&
               (trap->addr == inject_trap || trap->ip == inject_trap)) {
        trap->verdict = INJECT_DONE;
    }
}

/*
 * Where the step would have ended, then the kernel's post-xol fix-ups.  Kernel:
 * default_post_xol_op() (FIX_IP, FIX_CALL) and riprel_post_xol() (SCRATCH).
 */
static void finish_step(struct table_header *t, const struct slot *slot, unsigned long after, void *uc)
{
    unsigned long end = slot->slot + slot->insn_len;
    int in_slot = after >= slot->slot && after <= end;

    uc_set(uc, UC_IP_OFF, after);
    if ((slot->flags & SLOT_FIX_IP) && in_slot)
        uc_set(uc, UC_IP_OFF, slot->site + (after - slot->slot));
    /* A stepped call left ip at its target: only the return address tells. */
    if ((slot->flags & SLOT_FIX_CALL) && slot->word == sizeof(unsigned long)) {
        unsigned long sp = uc_get(uc, UC_SP_OFF), ret, fixed = slot->site + slot->insn_len;
        struct memio io;

        mem_open(&io, t);
        if (!mem_read(&io, sp, &ret, sizeof ret) && ret == end)
            mem_write_data(&io, sp, &fixed, sizeof fixed);
        mem_close(&io);
    }
    if ((slot->flags & SLOT_SCRATCH) && slot->scratch_off < UC_REGS_END)
        uc_set(uc, slot->scratch_off, (unsigned long)slot->scratch_value);
}

static int tracer_alive(const struct table_header *t);

static void give_back_injected(struct table_header *t, void *uc)
{
    struct inject_header *inject = inject_of(t);
    struct inject_reg *regs = (struct inject_reg *)((char *)t + INJECT_REGS_OFF);
    uint32_t i;

    for (i = 0; i < inject->count && i < INJECT_REGS; i++)
        if (regs[i].offset < UC_REGS_END)
            uc_set(uc, regs[i].offset, (unsigned long)regs[i].value);
    store(&inject->state, INJECT_IDLE);
}

/*
 * Not ours: what the program's own action would have done.  Our action carries the
 * program's flags and mask, so the thread's mask is already the one its handler expects.
 * Kernel: force_sig_info_to_task() resets an ignored fault signal to SIG_DFL; a default
 * SIGTRAP is re-raised to be delivered at sigreturn, when the mask allows it.
 */
static void chain(struct table_header *t, int sig, struct ksiginfo *info, void *uc)
{
    unsigned long handler = action_word(t->saved_action, KSA_HANDLER);
    unsigned long flags = action_word(t->saved_action, KSA_FLAGS);

    if (handler == SIG_IGN && info->code <= 0)
        return;
    if (handler == SIG_DFL || handler == SIG_IGN) {
        set_default_action();
        sys3(SYS_tgkill, sys0(SYS_getpid), sys0(SYS_gettid), SIGTRAP);
        return;
    }
    if (flags & SA_RESETHAND)
        set_default_action();
    ((void (*)(int, void *, void *))handler)(sig, info, uc);
}

static int is_valid(const struct table_header *t)
{
    static const uint8_t magic[] = TABLE_MAGIC_INIT;

    return !memcmp(t->magic, magic, sizeof t->magic) && t->version == TABLE_VERSION;
}

/* R6: uemu, leaving, asks for the program's action back with a SIGTRAP of its own. */
static int is_request(struct table_header *t, const struct ksiginfo *info)
{
    return (info->code == SI_TKILL || info->code == SI_USER) && (uint64_t)info->u.kill.pid == t->tracer_pid &&
           load(&t->state) == STATE_DETACHED;
}

void uemu_trap_handler(int sig, void *siginfo, void *uc)
{
    struct table_header *t = table();
    struct ksiginfo *info = siginfo;
    struct trap trap;

    if (!is_valid(t)) {
        set_default_action();
        sys3(SYS_tgkill, sys0(SYS_getpid), sys0(SYS_gettid), SIGTRAP);
        return;
    }
    if (is_request(t, info)) {
        put_action_back(t);
        return;
    }
    trap.code = info->code;
    trap.ip = uc_get(uc, UC_IP_OFF);
    trap.addr = trap.ip - TRAP_IP_ADJUST;
    trap.tid = sys0(SYS_gettid);
    trap.slot = 0;
    classify(t, &trap, uc);
    /* A trap reaches us while uemu still traces this thread only when uemu found it not its
     * own (the program's: its own int3, a trap flag it set itself).  The table cannot
     * tell: a thread's record outlives its step, and R4 would take the program's next
     * TRAP_TRACE for that step's end and undo everything under a living uemu. */
    if (trap.verdict != NOT_OURS && tracer_alive(t))
        trap.verdict = NOT_OURS;
    if (trap.verdict == NOT_OURS) {
        chain(t, sig, info, uc);
        return;
    }
    restore_all(t);
    switch (trap.verdict) {
    case AT_SITE:
        uc_set(uc, UC_IP_OFF, trap.addr);
        break;
    case STEP_DONE:
        finish_step(t, trap.slot, trap.after, uc);
        break;
    case INJECT_DONE:
        give_back_injected(t, uc);
        break;
    case SWALLOWED:
    case NOT_OURS:
        break;
    }
    if (trap.thread)
        trap.thread->flags = 0; /* used up: this thread's next trap is judged afresh */
}

/* ---------------------------------------------------------------------------------------
 * The jump path: a trampoline's hit, recorded into the event ring
 *
 * A jumped site sends the thread to its trampoline (uemu/jumps.py writes them), which
 * moves below the red zone, passes the site's index to uemu_hit_entry (assembly: every
 * register and the flags saved as a frame) and, back from it, runs the displaced
 * instruction and jumps back.  uemu_hit() reads the site's fetch program (built by uemu
 * from the probe's argument specs), and writes one record into the ring: a memfd shared
 * with uemu and every process forked from this one (uemu/runtime/layout.py, RingHeader).
 * Nothing here may fault or block the program for good: memory the specs name is read
 * with process_vm_readv unless the compiler addressed it from the stack pointer, a full
 * ring waits only while uemu lives (or drops the event, counted), and a hit that finds
 * uemu gone without having left cleanly runs the net's restore_all().
 * ------------------------------------------------------------------------------------ */

#define CLOCK_MONOTONIC 1
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define ETIMEDOUT 110
#define HEARTBEAT_STALE 1000 /* units of 2**20 ns: about a second without the reader's look */
#define CHECK_EVERY 100      /* ... and at most one look at TracerPid per 100 of them */
#define WAIT_SLICE_NS 10000000L
#define FUTEX_OWNER_DIED 0x40000000u

extern void uemu_hit_entry(void);
void uemu_hit(uint32_t index, const unsigned long *frame);

static struct jumps_header *jumps_of(struct table_header *t)
{
    return (struct jumps_header *)((char *)t + JUMPS_OFF);
}

#define JUMPS_ARRAY(j, type) ((struct type *)((char *)(j) + (j)->type##s_off))

static uint32_t cas(uint32_t *p, uint32_t expected, uint32_t value)
{
    __atomic_compare_exchange_n(p, &expected, value, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return expected; /* the value found: == the expected one when the swap happened */
}

static void add(uint32_t *p, uint32_t n)
{
    __atomic_fetch_add(p, n, __ATOMIC_ACQ_REL);
}

static long futex(uint32_t *word, long op, uint32_t value, const struct timespec *timeout)
{
    return uemu_syscall(SYS_futex, (long)word, op, value, (long)timeout, 0, 0);
}

static uint64_t ns_of(const struct timespec *ts)
{
    return (uint64_t)ts->sec * 1000000000ULL + (uint64_t)ts->nsec;
}

static uint64_t syscall_clock_ns(void)
{
    struct timespec ts = { 0, 0 };

    uemu_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts, 0, 0, 0, 0);
    return ns_of(&ts);
}

/* Whether hits may call the vDSO's clock: the process has one, and no thread of it was
 * found with the counter that clock reads turned off (SYSCALL_CLOCK). */
static int vdso_clock_usable(const struct jumps_header *j)
{
    return j->clock && !(__atomic_load_n(&j->flags, __ATOMIC_RELAXED) & JUMPS_FLAG_SYSCALL_CLOCK);
}

/* CLOCK_MONOTONIC from the vDSO (the system call without one, or where it would fault).
 * x86: only once this thread has read the counter in this hit (checked_clock_ns). */
static uint64_t clock_ns(const struct jumps_header *j)
{
    struct timespec ts = { 0, 0 };

    if (!vdso_clock_usable(j))
        return syscall_clock_ns();
    ((long (*)(long, struct timespec *))(uintptr_t)j->clock)(CLOCK_MONOTONIC, &ts);
    return ns_of(&ts);
}

#ifdef ASM_READ_COUNTER
uint64_t uemu_read_counter(void);

/* The vDSO's clock, the counter read first: a thread may turn the counter off (x86:
 * prctl PR_SET_TSC), and the vDSO's clock, which reads it, then faults inside the vDSO,
 * where uemu could not take the fault back; the runtime's own read, it takes back
 * (JumpPath.counter_refused: it sets SYSCALL_CLOCK and the read gives 0).  Only while
 * uemu's sentinel holds the ring: without uemu such a fault would kill the program, so
 * then the system call's clock. */
static uint64_t checked_clock_ns(const struct jumps_header *j, const struct ring_header *r)
{
    uint32_t owner = load(&r->owner);

    if (!vdso_clock_usable(j) || !owner || (owner & FUTEX_OWNER_DIED))
        return syscall_clock_ns();
    uemu_read_counter(); /* 0 if refused: then SYSCALL_CLOCK is set, and clock_ns takes the system call */
    return clock_ns(j);
}
#else
static uint64_t checked_clock_ns(const struct jumps_header *j, const struct ring_header *r)
{
    (void)r;
    return clock_ns(j);
}
#endif

#ifdef COUNTER_CLOCK
/* The clock read through the CPU's counter (x86: the TSC): a hit reads the counter and
 * interpolates from a pair (counter, CLOCK_MONOTONIC) in the process's jumps header, which
 * the first hit to find it older than COUNTER_REFRESH_NS takes again from the vDSO.  Why: the
 * vDSO's clock (an ordered rdtsc and its seqlock) was a third of a record's cost; a bare
 * rdtsc and a multiply are a fraction of it.
 *
 * Kernel: the vDSO does the same from the timekeeper's pair, which the kernel refreshes
 * every tick, and the pair is kept as a seqcount latch (two copies, the one being written
 * never read: raw_write_seqcount_latch()), so no hit ever waits for the hit writing it,
 * which uemu may have parked or the scheduler left there.  Differs: the rate is measured
 * between two of our pairs, over one interval or more (hits in the first interval take
 * the vDSO's time), and each new pair starts where the line before it stood, its rate
 * slewed to meet the vDSO's clock one interval later.  A hit that finds another taking a
 * pair, or cannot take a good one, reads the line it has, beyond its interval.  So a
 * thread's times never step back, and a time is off the vDSO's by the error of a pair
 * (the vDSO's call between two reads of the counter: tens of ns) and the clock's change
 * of rate over an interval (NTP slews at most 500 ppm: 0.5 us). */
#define COUNTER_REFRESH_NS 1000000ULL
#define COUNTER_RATE_MIN_NS 1000000ULL
#define COUNTER_RATE_MAX_NS (1ULL << 31) /* (ns << 32) stays within 64 bits */
#define COUNTER_SLEW_MAX_NS 100000LL     /* a line further off restarts at the clock */
#define COUNTER_PAIR_TRIES 2             /* reads of the clock a pair keeps the closest of */
#define COUNTER_PAIR_WIDTH_MAX 1024ULL   /* counts a pair may take (a vDSO call: about 100) */
#define COUNTER_PAIR_AGE_MAX 8192ULL     /* counts from taking a pair to writing it */

static struct clock_pair *clock_pairs(struct jumps_header *j)
{
    return (struct clock_pair *)(void *)j->clock_pairs;
}

/* A pair's words, each read and written once (relaxed).  i386 (general registers only)
 * has no 8-byte atomic load or store without libatomic: there two halves, which the
 * latch makes safe, as it does the pair as a whole (a reader whose copy is written over
 * meanwhile sees the latch move and reads again). */
#if __SIZEOF_LONG__ == 8
#define PAIR_LOAD(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#define PAIR_STORE(p, v) __atomic_store_n(p, v, __ATOMIC_RELAXED)
#else
#define PAIR_LOAD(p) (*(volatile const uint64_t *)(p))
#define PAIR_STORE(p, v) (*(volatile uint64_t *)(p) = (v))
#endif

/* The pair hits read now: the copy the latch names, read whole (again if the latch moved
 * meanwhile: the copy may have been written over, which takes a few stores). */
static HOT struct clock_pair read_pair(struct jumps_header *j)
{
    struct clock_pair pair;
    uint32_t seq;

    do {
        const struct clock_pair *copy;

        seq = __atomic_load_n(&j->clock_seq, __ATOMIC_ACQUIRE);
        copy = &clock_pairs(j)[seq & 1];
        pair.at = PAIR_LOAD(&copy->at);
        pair.truth = PAIR_LOAD(&copy->truth);
        pair.base = PAIR_LOAD(&copy->base);
        pair.mult = PAIR_LOAD(&copy->mult);
        pair.span = PAIR_LOAD(&copy->span);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    } while (__atomic_load_n(&j->clock_seq, __ATOMIC_RELAXED) != seq);
    return pair;
}

static void write_copy(struct clock_pair *copy, const struct clock_pair *pair)
{
    PAIR_STORE(&copy->at, pair->at);
    PAIR_STORE(&copy->truth, pair->truth);
    PAIR_STORE(&copy->base, pair->base);
    PAIR_STORE(&copy->mult, pair->mult);
    PAIR_STORE(&copy->span, pair->span);
}

/* Kernel: raw_write_seqcount_latch() around each copy in turn. */
static void write_pair(struct jumps_header *j, const struct clock_pair *pair)
{
    uint32_t seq = __atomic_load_n(&j->clock_seq, __ATOMIC_RELAXED);

    store(&j->clock_seq, seq + 1); /* readers to one copy, the other written */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    write_copy(&clock_pairs(j)[((seq + 1) & 1) ^ 1], pair);
    store(&j->clock_seq, seq + 2); /* and the other way round */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    write_copy(&clock_pairs(j)[((seq + 2) & 1) ^ 1], pair);
}

/* (a * b) >> 32, its low 64 bits.  i386 has no 128-bit type: the product by halves
 * (floor((ah bh 2^64 + (ah bl + al bh) 2^32 + al bl) / 2^32), every term exact but the
 * last, modulo 2^64). */
static uint64_t mul_shift32(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    return (uint64_t)(((unsigned __int128)a * b) >> 32);
#else
    uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;

    return ((ah * bh) << 32) + ah * bl + al * bh + ((al * bl) >> 32);
#endif
}

/* n / d.  i386 has no 64-bit division without libgcc: shift and subtract, once a pair
 * (d below 2^63 here: a count of the counter or a rate). */
static uint64_t div64(uint64_t n, uint64_t d)
{
#if __SIZEOF_LONG__ == 8
    return n / d;
#else
    uint64_t q = 0, r = 0;
    int i;

    for (i = 63; i >= 0; i--) {
        r = r << 1 | ((n >> i) & 1);
        if (r >= d) {
            r -= d;
            q |= 1ULL << i;
        }
    }
    return q;
#endif
}

/* The line's time at ``counter``, before or after the pair's. */
static HOT uint64_t interpolate(const struct clock_pair *pair, uint64_t counter)
{
    if (counter >= pair->at)
        return pair->base + mul_shift32(counter - pair->at, pair->mult);
    return pair->base - mul_shift32(pair->at - counter, pair->mult);
}

/* The time at ``counter`` when no new pair can be had: the line as it is, or the clock
 * before there is one. */
static uint64_t line_or_clock(const struct jumps_header *j, const struct clock_pair *pair, uint64_t counter)
{
    return pair->mult ? interpolate(pair, counter) : clock_ns(j);
}

/* The clock and the counter at the same moment: the counter read on both sides of the
 * vDSO's call, the closest of COUNTER_PAIR_TRIES.  0: no pair, the counter read 0 (turned
 * off) or every try took longer than COUNTER_PAIR_WIDTH_MAX (the thread was preempted or
 * interrupted in the middle: its midpoint could be far off). */
static uint64_t take_pair(const struct jumps_header *j, uint64_t *truth)
{
    uint64_t at = 0, width = ~0ULL;
    int i;

    for (i = 0; i < COUNTER_PAIR_TRIES; i++) {
        uint64_t before = uemu_read_counter(), now, after;

        if (!before)
            return 0;
        now = clock_ns(j);
        after = uemu_read_counter();
        if (!after)
            return 0;
        if (after - before < width) {
            width = after - before;
            at = before + width / 2;
            *truth = now;
        }
    }
    return width <= COUNTER_PAIR_WIDTH_MAX ? at : 0;
}

/* A new pair from ``old``, by the hit holding the clock's lock; this hit's time.  With no
 * good pair taken, or one too young to measure a rate, the line stays as it was. */
static uint64_t refresh_clock(struct jumps_header *j, const struct clock_pair *old, uint64_t counter)
{
    struct clock_pair pair = *old;
    uint64_t truth = 0, at = take_pair(j, &truth), dc = at - old->at, dn = truth - old->truth, rate;

    if (!at)
        return line_or_clock(j, old, counter);
    pair.at = at;
    pair.truth = truth;
    pair.base = truth;
    if (!old->truth || dn >= COUNTER_RATE_MAX_NS || (int64_t)dc <= 0) {
        /* the first pair, or a long pause: start again, the rate as it was */
    } else if (dn >= COUNTER_RATE_MIN_NS) {
        rate = div64(dn << 32, dc);
        if (old->mult && dc < 4 * old->span) {
            uint64_t line = interpolate(old, at);
            int64_t off = (int64_t)(line - truth);

            if (off < COUNTER_SLEW_MAX_NS && off > -COUNTER_SLEW_MAX_NS) {
                uint64_t step = div64((uint64_t)(off < 0 ? -off : off) << 32, dc);
                int64_t slew = off < 0 ? -(int64_t)step : (int64_t)step;

                pair.base = line;
                rate = (int64_t)rate - slew > (int64_t)(rate / 2) ? rate - (uint64_t)slew : rate / 2;
            }
        }
        pair.mult = rate;
    } else {
        return truth; /* too young to measure a rate (no line yet: hits take the clock) */
    }
    pair.span = pair.mult ? div64(COUNTER_REFRESH_NS << 32, pair.mult) : 0;
    if (uemu_read_counter() - at > COUNTER_PAIR_AGE_MAX) /* parked or preempted since: stale */
        return line_or_clock(j, old, counter);
    write_pair(j, &pair);
    return pair.base;
}

/* The line's time at ``counter`` in ``*ns``, if the pair the latch names covers it: a
 * hit's usual way, inlined whole (no call, no copy of the pair). */
static HOT int on_line(struct jumps_header *j, uint64_t counter, uint64_t *ns)
{
    struct clock_pair pair = read_pair(j);

    if (!pair.mult || (counter - pair.at >= pair.span && pair.at - counter >= pair.span))
        return 0;
    *ns = interpolate(&pair, counter);
    return 1;
}

/* The time at ``counter`` off the line: the clock while there is no rate yet, a pair
 * taken again, or the line as it is while another hit takes one.  Once a millisecond:
 * out of line, so that the hit's own frame stays small. */
static __attribute__((noinline)) uint64_t off_line_ns(struct jumps_header *j, uint64_t counter)
{
    struct clock_pair pair = read_pair(j);
    uint64_t now;

    if (pair.truth && !pair.mult && (now = clock_ns(j)) - pair.truth < COUNTER_RATE_MIN_NS)
        return now; /* no rate yet: the clock, until the pair is old enough */
    if (cas(&j->clock_lock, 0, 1) != 0) /* another hit is taking a pair */
        return line_or_clock(j, &pair, counter);
    pair = read_pair(j); /* as the last hit to hold the lock left it */
    now = pair.mult && counter - pair.at < pair.span ? interpolate(&pair, counter) : refresh_clock(j, &pair, counter);
    store(&j->clock_lock, 0);
    return now;
}

static HOT uint64_t now_ns(struct jumps_header *j, const struct ring_header *r)
{
    uint32_t owner = load(&r->owner);
    uint64_t counter, now;

    /* Only while uemu's sentinel holds the ring: a fault of the counter's read (prctl
     * PR_SET_TSC) must reach uemu, or it would kill the program. */
    if (!(__atomic_load_n(&j->flags, __ATOMIC_RELAXED) & JUMPS_FLAG_COUNTER) || !owner || (owner & FUTEX_OWNER_DIED))
        return checked_clock_ns(j, r);
    /* The counter first, whatever comes next: in a thread that turned it off, the vDSO's
     * clock would fault too, and only this read's fault is uemu's to take back (it then
     * sets SYSCALL_CLOCK).  So this thread calls the vDSO below only once it has read
     * the counter itself. */
    counter = uemu_read_counter();
    if (!counter)
        return clock_ns(j); /* uemu found the counter turned off for this thread */
    return on_line(j, counter, &now) ? now : off_line_ns(j, counter);
}
#else
static uint64_t now_ns(struct jumps_header *j, const struct ring_header *r)
{
    return checked_clock_ns(j, r);
}
#endif

static uint32_t coarse(uint64_t ns)
{
    return (uint32_t)(ns >> 20);
}

/* ----- is uemu still there? ------------------------------------------------------- */

static const char tracer_key[] = "TracerPid:";

/* TracerPid of this very thread (uemu seizes every thread), from /proc/thread-self/status
 * read in small pieces: this runs on the program's stack, maybe a small sigaltstack.
 * Without /proc: whether a process uemu's pid is alive at all. */
static int tracer_alive(const struct table_header *t)
{
    static const char path[] = "/proc/thread-self/status";
    char buf[64];
    unsigned matched = 0, digits = 0;
    uint64_t pid = 0;
    long fd = sys3(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC), n, i;

    if (fd < 0)
        return sys3(SYS_kill, (long)t->tracer_pid, 0, 0) != -ESRCH;
    while ((n = sys3(SYS_read, fd, (long)buf, sizeof buf)) > 0) {
        for (i = 0; i < n; i++) {
            char c = buf[i];

            if (matched < sizeof tracer_key - 1) {
                matched = c == tracer_key[matched] ? matched + 1 : c == tracer_key[0];
            } else if (c >= '0' && c <= '9') {
                pid = pid * 10 + (uint64_t)(c - '0');
                digits++;
            } else if (digits || c == '\n') {
                goto done;
            }
        }
    }
done:
    sys3(SYS_close, fd, 0, 0);
    return digits && pid == t->tracer_pid;
}

/* A look at TracerPid is due: no thread of any process sharing the ring has asked lately
 * (one asks, the others go on), and at a hit, uemu's reader has not looked at the ring
 * for a while (a heartbeat ahead of this thread's clock is a fresh one). */
static HOT int check_due(struct ring_header *r, uint32_t now, int at_hit)
{
    uint32_t last = load(&r->checked);

    if (at_hit && (int32_t)(now - load(&r->heartbeat)) <= HEARTBEAT_STALE)
        return 0;
    return now - last >= CHECK_EVERY && cas(&r->checked, last, now) == last;
}

/* uemu died without leaving: undo everything now, as a trap of ours would.  The kernel
 * says so at once in ``owner`` (uemu's sentinel thread holds it in its robust futex list:
 * exit_robust_list() sets FUTEX_OWNER_DIED when uemu dies, SIGKILL too); without a
 * sentinel, TracerPid is asked now and then. */
static HOT int uemu_gone(struct table_header *t, struct ring_header *r, uint64_t now, int at_hit)
{
    if (!(load(&r->owner) & FUTEX_OWNER_DIED) && (!check_due(r, coarse(now), at_hit) || tracer_alive(t)))
        return 0;
    restore_all(t);
    return 1;
}

/* ----- which thread ----------------------------------------------------------------- */

static uint32_t tp_hash(unsigned long tp)
{
    uint64_t v = tp;

    return (uint32_t)((v >> 4) ^ (v >> 20) ^ (v >> 36)) * 0x9E3779B1u;
}

/* This thread's slot, found by its thread pointer (uemu fills the table as it sees each
 * thread's first stop); 0 when the pointer cannot be read or is not there. */
static struct tp_slot *thread_slot(struct jumps_header *j)
{
    struct tp_slot *slots = JUMPS_ARRAY(j, tp_slot);
    uint32_t mask = j->tp_slots_cap - 1, at, n;
    unsigned long tp;

    if (!(j->flags & JUMPS_FLAG_THREAD_POINTER) || !(tp = thread_pointer()))
        return 0;
    at = tp_hash(tp) & mask;
    for (n = 0; n < TP_PROBES && n <= mask; n++, at = (at + 1) & mask) {
        uint64_t key = *(volatile uint64_t *)&slots[at].tp;

        if (key == tp)
            return slots[at].tid && slots[at].tid != TP_SHARED ? &slots[at] : 0;
        if (!key)
            break;
    }
    return 0;
}

/* ----- the ring --------------------------------------------------------------------- */

/* The ring is full.  Wait for uemu's reader to make room (a futex on tail_seq, in slices,
 * asking now and then whether uemu still traces), unless the event must be dropped:
 * asked so (--drop), a hit re-entered from a signal handler (the record the reader waits
 * for is the interrupted hit's own), a reader stuck behind a record nobody will finish,
 * uemu leaving or gone.  0: drop, counted. */
static int wait_for_room(struct table_header *t, struct ring_header *r, uint32_t tail, int nested)
{
    static const struct timespec slice = { 0, WAIT_SLICE_NS };
    struct jumps_header *j = jumps_of(t);
    uint32_t seq = load(&r->tail_seq);

    if (nested || (r->flags & RING_FLAG_DROP) || load(&r->stalled) || load(&j->state) != JUMPS_STATE_ON ||
        load(&t->state) != STATE_ARMED) {
        add(&r->lost, 1);
        return 0;
    }
    if (load(&r->tail) != tail)
        return 1;
    add(&r->waiters, 1);
    futex(&r->tail_seq, FUTEX_WAIT, seq, &slice);
    add(&r->waiters, (uint32_t)-1);
    if (uemu_gone(t, r, now_ns(j, r), 0)) {
        add(&r->lost, 1);
        return 0;
    }
    return 1;
}

/* The stamps of the record at ``pos``, ``len`` bytes: every 8 bytes but the first get the
 * lap, then the first gets the lap, ``flags`` and the length, released after the record's
 * bytes and the other stamps (layout.RingHeader: a stale stamp is of the lap before).
 * Between reserve() and this, the first stamp says BUSY with the length. */
static uint16_t *stamp_of(struct ring_header *r, uint32_t pos)
{
    return (uint16_t *)((uint8_t *)r + r->data_off + r->size) + ((pos & (r->size - 1)) >> 3);
}

static HOT void commit(struct ring_header *r, uint32_t pos, uint32_t len, uint32_t flags)
{
    uint32_t n = len >> 3, i;
    uint16_t *stamps = stamp_of(r, pos);
    uint16_t lap = (uint16_t)((pos & r->size ? 2 : 1) << STAMP_LAP_SHIFT); /* size: a power of two */

    for (i = 1; i < n; i++)
        __atomic_store_n(&stamps[i], lap, __ATOMIC_RELAXED);
    __atomic_store_n(&stamps[0], (uint16_t)(lap | flags | n), __ATOMIC_RELEASE);
}

/*
 * Room for ``len`` bytes: one compare-and-swap of ``head`` takes [head, head + len), as
 * long as that stays within ``size`` bytes of ``tail`` (head is read first: a tail read
 * after it is as new or newer).  A record never wraps: the end of the data is taken as
 * a PAD first.  1 and the record's position in ``*pos``; 0: dropped, counted.
 */
static int reserve(struct table_header *t, struct ring_header *r, uint32_t len, int nested, uint32_t *pos)
{
    uint32_t size = r->size;

    for (;;) {
        uint32_t head = load(&r->head), tail = load(&r->tail);
        uint32_t used = head - tail, off = head & (size - 1), need = len;

        if ((int32_t)used < 0 || used > size)
            continue; /* head read before the reader moved tail past it */
        if (off + len > size)
            need = size - off;
        if (used + need > size) {
            if (!wait_for_room(t, r, tail, nested))
                return 0;
            continue;
        }
        if (cas(&r->head, head, head + need) != head)
            continue;
        if (need == len) {
            __atomic_store_n(stamp_of(r, head), (uint16_t)(STAMP_BUSY | len >> 3), __ATOMIC_RELAXED);
            *pos = head;
            return 1;
        }
        commit(r, head, need, STAMP_PAD);
    }
}

/* ----- fetching arguments ----------------------------------------------------------- */

static unsigned long frame_reg(const unsigned long *frame, const struct jump_site *s, uint8_t reg)
{
    if (reg == REG_SP)
        return (unsigned long)frame + HIT_FRAME_SP;
    if (reg == REG_IP)
        return (unsigned long)s->addr;
    return reg < HIT_FRAME_WORDS ? frame[reg] : 0;
}

static unsigned long index_value(const struct fetch_op *op, unsigned long value)
{
    unsigned bits = op->index_bytes * 8;

    if (!bits || bits >= sizeof value * 8)
        return value;
    value &= (1UL << bits) - 1;
    if ((op->flags & FETCH_FLAG_INDEX_SIGNED) && (value >> (bits - 1)))
        value |= ~0UL << bits;
    return value;
}

static long vm_read(long pid, struct iovec *local, unsigned long nlocal, struct iovec *remote, unsigned long n)
{
    return uemu_syscall(SYS_process_vm_readv, pid, (long)local, (long)nlocal, (long)remote, (long)n, 0);
}

/* A string at ``ptr``: the bytes before its NUL, at most ``max``.  One iovec per page, so
 * a string that ends before an unreadable page is still read (as Memory.read_string). */
static uint32_t fetch_string(long pid, unsigned long ptr, uint8_t *out, uint32_t max)
{
    struct iovec local = { out, max }, remote[STR_MAX / PAGE + 2];
    unsigned long at = ptr, left = max, n = 0;
    long got;
    uint32_t i;

    if (!ptr)
        return STR_UNREADABLE;
    while (left) {
        unsigned long chunk = PAGE - (at & (PAGE - 1));

        if (chunk > left)
            chunk = left;
        remote[n].base = (void *)at;
        remote[n++].len = chunk;
        at += chunk;
        left -= chunk;
    }
    got = vm_read(pid, &local, 1, remote, n);
    if (got <= 0)
        return STR_UNREADABLE;
    for (i = 0; i < (uint32_t)got; i++)
        if (!out[i])
            return i;
    return (uint32_t)got;
}

/* The fixed-size copies below are __builtin_memcpy: one move each (the runtime's own
 * memcpy, a byte loop, was inlined as rep movsb, a fifth of a record's time). */
static void fetch(const struct jumps_header *j, const struct jump_site *s, const unsigned long *frame,
                  uint8_t *record)
{
    const struct fetch_op *op = JUMPS_ARRAY(j, fetch_op) + s->ops;
    uint8_t *out = record + sizeof(struct record_header);
    uint32_t i;

    for (i = 0; i < s->nops && s->ops + i < j->fetch_ops_cap; i++, op++) {
        if (op->kind == FETCH_REG || op->kind == FETCH_CONST) {
            uint64_t value = op->kind == FETCH_REG ? frame_reg(frame, s, op->base) : op->disp;

            __builtin_memcpy(out, &value, 8);
            out += 8;
        } else if (op->kind == FETCH_MEM) {
            unsigned long addr = (unsigned long)op->disp;
            uint32_t status = op->size;

            if (op->base != REG_NONE)
                addr += frame_reg(frame, s, op->base);
            if (op->index != REG_NONE)
                addr += index_value(op, frame_reg(frame, s, op->index)) * (unsigned long)(long)(int8_t)op->scale;
            if (op->flags & FETCH_FLAG_DIRECT) {
                memcpy(out + 8, (const void *)addr, op->size);
            } else {
                struct iovec local = { out + 8, op->size }, remote = { (void *)addr, op->size };

                if (vm_read(j->pid, &local, 1, &remote, 1) != op->size)
                    status = 0;
            }
            __builtin_memcpy(out, &status, 4);
            out += 8 + ((op->size + 7u) & ~7u);
        } else if (op->kind == FETCH_STR) {
            unsigned long ptr = 0;
            uint32_t at = op->base | (uint32_t)op->index << 8, max = (uint32_t)op->disp, len;

            if (op->size <= sizeof ptr && max <= STR_MAX) {
                memcpy(&ptr, record + at, op->size);
                len = fetch_string(j->pid, ptr, out + 8, max);
            } else {
                len = STR_UNREADABLE;
            }
            __builtin_memcpy(out, &len, 4);
            out += 8 + ((max + 7u) & ~7u);
        }
    }
}

/* ----- the hit ---------------------------------------------------------------------- */

/* One more, atomically.  i386 (general registers only) has no 8-byte atomic load or add
 * without libatomic, but cmpxchg8b: a torn first read just fails the swap once. */
static void add64(uint64_t *counter)
{
#if __SIZEOF_LONG__ == 8
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
#else
    uint64_t seen = *(volatile uint64_t *)counter;

    while (!__sync_bool_compare_and_swap(counter, seen, seen + 1))
        seen = *(volatile uint64_t *)counter;
#endif
}

/* Whether uemu died (then everything is undone now), asked without a record's clock:
 * the sentinel's word alone where there is one (the clock and TracerPid only without it). */
static int died_at_hit(struct table_header *t, struct jumps_header *j, struct ring_header *r)
{
    uint32_t owner = load(&r->owner);

    if (owner & FUTEX_OWNER_DIED) {
        restore_all(t);
        return 1;
    }
    return !owner && uemu_gone(t, r, checked_clock_ns(j, r), 1);
}

/* A site only counted: one add to its counter in the ring, no clock, no record. */
static void count_hit(struct table_header *t, struct jumps_header *j, struct ring_header *r,
                      const struct jump_site *s)
{
    if (died_at_hit(t, j, r))
        return;
    if (s->counter < r->counters_cap)
        add64((uint64_t *)((uint8_t *)r + r->counters_off) + s->counter);
}

/* A thread's hits under way: only the thread itself writes its slot's depth, and a signal
 * handler's hit puts it back before the interrupted one goes on, so a plain load and store
 * are enough (no locked instruction: the fetch_add and sub cost more than the rest of
 * the bookkeeping).  The fences keep the compiler from moving them across the hit. */
static uint32_t enter(struct tp_slot *slot)
{
    uint32_t depth = __atomic_load_n(&slot->depth, __ATOMIC_RELAXED);

    __atomic_store_n(&slot->depth, depth + 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return depth;
}

static void leave(struct tp_slot *slot, uint32_t depth)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&slot->depth, depth, __ATOMIC_RELAXED);
}

void uemu_hit(uint32_t index, const unsigned long *frame)
{
    struct table_header *t = table();
    struct jumps_header *j = jumps_of(t);
    const struct jump_site *s;
    struct ring_header *r;
    struct record_header *rec;
    struct tp_slot *slot;
    uint32_t pos = 0, tid, depth = 0, id, len;
    uint64_t now;
    int reserved;

    if (load(&t->state) != STATE_ARMED || index >= j->jump_sites_cap || !j->ring)
        return;
    s = JUMPS_ARRAY(j, jump_site) + index;
    r = (struct ring_header *)(uintptr_t)j->ring;
    if (load(&j->state) != JUMPS_STATE_ON) {
        /* uemu is leaving: it takes this jump away soon, unless it dies first. */
        died_at_hit(t, j, r);
        return;
    }
    if (s->state == JUMP_SITE_COUNTED) {
        count_hit(t, j, r, s);
        return;
    }
    id = s->id;
    len = s->record;
    if (s->state != JUMP_SITE_ON || len < sizeof *rec || len > STAMP_LEN * 8 || len & 7)
        return;
    now = now_ns(j, r);
    if (uemu_gone(t, r, now, 1))
        return;
    slot = thread_slot(j);
    if (slot) {
        tid = slot->tid;
        depth = enter(slot);
        /* A thread's records in the order of its hits, whatever the clock's line did
         * between them (now_ns: a pair taken again, a thread parked between
         * reading the counter and the pair).  Differs: the kernel's clock needs no such
         * care; the nanoseconds added are the line's error, tens of them at most. */
        if (now <= slot->last_ns)
            now = slot->last_ns + 1;
        slot->last_ns = now;
    } else {
        tid = (uint32_t)sys0(SYS_gettid);
    }
    reserved = reserve(t, r, len, depth > 0, &pos);
    if (reserved && __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == JUMP_SITE_ON && s->id == id) {
        rec = (struct record_header *)((uint8_t *)r + r->data_off + (pos & (r->size - 1)));
        rec->len = len;
        rec->id = id;
        rec->pid = j->pid;
        rec->tid = tid;
        rec->ts_ns = now;
        fetch(j, s, frame, (uint8_t *)rec);
        commit(r, pos, len, 0); /* the reader may take it */
    } else if (reserved) { /* uemu took the site away while this thread waited: nothing to fetch */
        add(&r->lost, 1);
        commit(r, pos, len, STAMP_PAD);
    }
    if (reserved && load(&r->reader_wait) && __atomic_exchange_n(&r->reader_wait, 0, __ATOMIC_ACQ_REL))
        futex(&r->reader_wait, FUTEX_WAKE, 1, 0);
    if (slot)
        leave(slot, depth);
}
