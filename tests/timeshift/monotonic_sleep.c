/*
 * Preloaded BEFORE libfaketime when the test suite runs with the clock moved (tests/timeshift/run-shifted).
 *
 * The monotonic clock stays real (FAKETIME_DONT_FAKE_MONOTONIC=1): faking it too makes timed waits in
 * threads hang. But then libfaketime 0.9.10 mishandles clock_nanosleep on CLOCK_MONOTONIC with
 * TIMER_ABSTIME (libfaketime#426): it moves the absolute deadline as if it were a realtime one, and
 * Python's time.sleep(), which sleeps exactly that way, fails with EINVAL. So sleeps on the unfaked
 * clocks go straight to the kernel here; realtime ones still go through libfaketime.
 *
 * Timed waits on a condition variable bound to CLOCK_MONOTONIC are mishandled as well: libfaketime's
 * pthread_cond_timedwait returns ETIMEDOUT at once. CPython's GIL waits that way (the 5 ms switch
 * interval), so every thread waiting for the GIL demanded it back immediately, and a loaded machine
 * crawled. Those go to glibc's pthread_cond_clockwait (not wrapped by libfaketime) instead.
 *
 * Build: gcc -O2 -Wall -shared -fPIC -o monotonic_sleep.so monotonic_sleep.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
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

/* glibc (2.25+, the condvar layout of pthread_cond_t@@GLIBC_2.3.2): bit 1 of __wrefs is the clock the
 * condition variable was initialised with, set for CLOCK_MONOTONIC. */
int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex, const struct timespec *abstime) {
    if (cond->__data.__wrefs & 2) {
        return pthread_cond_clockwait(cond, mutex, CLOCK_MONOTONIC, abstime);
    }
    typedef int (*timedwait_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    static timedwait_fn next; /* libfaketime's (it moves realtime deadlines), or libc's */
    if (next == NULL) {
        next = (timedwait_fn)dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
    }
    return next(cond, mutex, abstime);
}
