/* Calibration target for bench/probe_cost.py: functions whose first (or
 * probed) instruction is one the kernel emulates for a uprobe (push, call)
 * or must single-step (sub), called in a timed loop. Commands on stdin:
 *   "fn N GAP"  call fn N times, spinning GAP ns after each call (a traced
 *               thread that does other work between probe hits), and print
 *               nanoseconds per call;  "q" quit.
 * Written in assembly so the instruction at each probe site is fixed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

__asm__(".text\n"
        ".globl cal_leaf\n.type cal_leaf,@function\ncal_leaf:\n ret\n.size cal_leaf,.-cal_leaf\n"
        ".globl cal_push\n.type cal_push,@function\ncal_push:\n push %rbx\n pop %rbx\n ret\n.size cal_push,.-cal_push\n"
        ".globl cal_sub\n.type cal_sub,@function\ncal_sub:\n sub $8,%rsp\n add $8,%rsp\n ret\n.size cal_sub,.-cal_sub\n"
        /* cal_call+4 is a call: the offset site used on qemu_coroutine_switch */
        ".globl cal_call\n.type cal_call,@function\ncal_call:\n sub $8,%rsp\n call cal_leaf\n add $8,%rsp\n ret\n.size cal_call,.-cal_call\n");

void cal_leaf(void);
void cal_push(void);
void cal_sub(void);
void cal_call(void);

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(void)
{
    char fn[32];
    long n, gap;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    while (scanf("%31s", fn) == 1 && strcmp(fn, "q") != 0) {
        if (scanf("%ld %ld", &n, &gap) != 2)
            return 2;
        void (*f)(void) = !strcmp(fn, "push") ? cal_push : !strcmp(fn, "sub") ? cal_sub
                        : !strcmp(fn, "call") ? cal_call : NULL;
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (f)
                f();
            else
                syscall(SYS_getppid); /* "syscall": a tracepoint site */
            if (gap) {
                double until = now_ns() + gap;
                while (now_ns() < until)
                    ;
            }
        }
        printf("%.1f\n", (now_ns() - t0) / n);
    }
    return 0;
}
