/* Shared by the two-process C baselines (first.c, pool.c, spin.c): error exits, CPU
 * placement of the forked child, SOCK_SEQPACKET records with descriptors, and the
 * stdin/stdout answer format that bench/lib/transports.mjs (CProcess) reads. */
#ifndef BENCH_IPC_H
#define BENCH_IPC_H
#include "common.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FDS 16

static const char *prog_name = "bench";

static inline void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", prog_name, what, strerror(errno));
    exit(1);
}

static inline void die_msg(const char *what) {
    fprintf(stderr, "%s: %s\n", prog_name, what);
    exit(1);
}

/* "--child-cpu N" on the command line: the forked child pins itself to CPU N (the split
 * placement: the driver and this program's parent run on CPU 0 under taskset, the child
 * on CPU 1). -1 when absent: the child keeps the affinity it inherited. */
static inline int child_cpu_option(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--child-cpu") == 0) return atoi(argv[i + 1]);
    }
    return -1;
}

static inline void pin_self(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

/* socketpair(SOCK_SEQPACKET) + fork(). Returns the child's pid in the parent (which keeps
 * sv[0] in *parent_sock) and 0 in the child (which keeps sv[1] in *child_sock, pins itself
 * to child_cpu and dies with its parent). */
static inline pid_t fork_pair(int child_cpu, int *parent_sock, int *child_sock) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    /* Flush before fork so that buffered output is not written twice. */
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl(PR_SET_PDEATHSIG)");
        if (getppid() != parent) _exit(0); /* the parent died before prctl took effect */
        if (close(sv[0]) != 0) die("close");
        pin_self(child_cpu);
        *child_sock = sv[1];
        return 0;
    }
    if (close(sv[1]) != 0) die("close");
    *parent_sock = sv[0];
    return pid;
}

/* Sends one record of `len` bytes with `nfds` descriptors attached (SCM_RIGHTS). */
static inline void send_record(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg = {0};
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        if (nfds > MAX_FDS) die_msg("too many descriptors for one record");
        memset(&cbuf, 0, sizeof cbuf);
        msg.msg_control = cbuf.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n == (ssize_t)len) return;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            fprintf(stderr, "%s: the peer went away\n", prog_name);
            exit(1);
        }
        die("sendmsg");
    }
}

/* Receives one record into buf (at most cap bytes); descriptors land in fds (up to
 * *nfds on entry, the count on return; pass NULL to refuse any). Returns the record's
 * length, 0 at end-of-file (the peer closed its end or died), or -1 if `flags` has
 * MSG_DONTWAIT and nothing is waiting. A record that was truncated is an error;
 * descriptors nobody asked for are closed so they do not leak. */
static inline ssize_t recv_record_flags(int sock, void *buf, size_t cap, int *fds, int *nfds, int flags) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    for (;;) {
        struct iovec iov = {buf, cap};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.buf;
        msg.msg_controllen = sizeof cbuf.buf;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && (flags & MSG_DONTWAIT) != 0) return -1;
        if (n < 0 && errno == ECONNRESET) return 0;
        if (n < 0) die("recvmsg");
        int got = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            int count = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + (size_t)i * sizeof(int), sizeof fd);
                if (fds != NULL && got < *nfds) fds[got++] = fd;
                else close(fd);
            }
        }
        if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
            for (int i = 0; i < got; i++) close(fds[i]);
            die_msg("a record or its descriptors were truncated");
        }
        if (nfds != NULL) *nfds = got;
        return n;
    }
}

/* Blocking recv_record_flags: the record's length, or 0 at end-of-file. */
static inline size_t recv_record(int sock, void *buf, size_t cap, int *fds, int *nfds) {
    return (size_t)recv_record_flags(sock, buf, cap, fds, nfds, 0);
}

/* Whether the peer has closed its end (or died): a zero-timeout poll that sees the hang-up.
 * Used by the spinning loops, which never block on the socket. */
static inline int peer_gone(int sock) {
    struct pollfd p = {sock, POLLIN, 0};
    int r = poll(&p, 1, 0);
    if (r < 0) return errno != EINTR;
    return r > 0 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

static inline uint64_t minflt_self(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) die("getrusage");
    return (uint64_t)ru.ru_minflt;
}

/* The answer line for the driver: "ok <n> <v>... [| <name> <n> <v>...]...". */
static inline void print_series(const char *name, const uint64_t *v, size_t n) {
    if (name == NULL) printf("ok %zu", n);
    else printf(" | %s %zu", name, n);
    for (size_t i = 0; i < n; i++) printf(" %llu", (unsigned long long)v[i]);
}

/* Waits for the child; reports how it ended if that was not a clean exit. */
static inline void reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) die("waitpid");
    }
    if (WIFSIGNALED(status)) fprintf(stderr, "%s: child killed by signal %d\n", prog_name, WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0) fprintf(stderr, "%s: child exited with %d\n", prog_name, WEXITSTATUS(status));
}
#endif
