/*
 * Preloaded BEFORE libfaketime when the test suite runs with the clock moved (tests/timeshift/run-shifted).
 *
 * The monotonic clock stays real (FAKETIME_DONT_FAKE_MONOTONIC=1): faking it too makes timed waits in
 * threads hang. But then libfaketime 0.9.10 mishandles clock_nanosleep on CLOCK_MONOTONIC with
 * TIMER_ABSTIME (libfaketime#426): it moves the absolute deadline as if it were a realtime one, and
 * Python's time.sleep(), which sleeps exactly that way, fails with EINVAL. So sleeps on the unfaked
 * clocks go straight to the kernel here; realtime ones still go through libfaketime.
 *
 * Build: gcc -O2 -Wall -shared -fPIC -o monotonic_sleep.so monotonic_sleep.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req, struct timespec *rem) {
    if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_MONOTONIC_RAW || clock_id == CLOCK_BOOTTIME) {
        /* clock_nanosleep returns the error number; syscall() returns -1 and sets errno */
        return syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == 0 ? 0 : errno;
    }
    static clock_nanosleep_fn next; /* libfaketime's, or libc's when it is not loaded */
    if (next == NULL) {
        next = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    }
    return next(clock_id, flags, req, rem);
}

/* A relative sleep means the same on every clock: the kernel's, never moved (nor scaled by a rate). */
int nanosleep(const struct timespec *req, struct timespec *rem) {
    return syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, req, rem) == 0 ? 0 : -1;
}
