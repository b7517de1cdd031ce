/* A program that owns SIGTRAP: it sets its own action while traced, reads it back,
 * raises its own traps, and passes a probe -- all on command, one line of stdin per
 * step, so a test can place each step before or after a tracer arrives or dies.
 *
 *   set    install on_trap (SA_RESTART), print what the old action was
 *   query  print whether the action is this program's own
 *   trap   raise(SIGTRAP), print how many it has caught
 *   hit    pass sigtrap:hit with a count
 *   reset  put SIG_DFL back, print what the old action was
 *   quit   exit 0
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/sdt.h>

static volatile sig_atomic_t caught;

static void on_trap(int sig) {
    (void)sig;
    caught++;
}

static const char *whose(const struct sigaction *action) {
    if (action->sa_handler == on_trap)
        return "own";
    return action->sa_handler == SIG_DFL ? "default" : "other";
}

int main(void) {
    char line[64];
    int hits = 0;
    struct sigaction action, old;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        memset(&action, 0, sizeof action);
        sigemptyset(&action.sa_mask);
        if (!strcmp(line, "set\n")) {
            action.sa_handler = on_trap;
            action.sa_flags = SA_RESTART;
            sigaction(SIGTRAP, &action, &old);
            printf("set: was %s\n", whose(&old));
        } else if (!strcmp(line, "query\n")) {
            sigaction(SIGTRAP, NULL, &old);
            printf("query: %s\n", whose(&old));
        } else if (!strcmp(line, "trap\n")) {
            raise(SIGTRAP);
            printf("trap: caught %d\n", (int)caught);
        } else if (!strcmp(line, "hit\n")) {
            hits++;
            STAP_PROBE1(sigtrap, hit, hits);
            printf("hit: %d caught %d\n", hits, (int)caught);
        } else if (!strcmp(line, "reset\n")) {
            action.sa_handler = SIG_DFL;
            sigaction(SIGTRAP, &action, &old);
            printf("reset: was %s\n", whose(&old));
        } else if (!strcmp(line, "quit\n")) {
            break;
        }
    }
    return 0;
}
