/* bench/c/pingpong.c: the floor for any socket-woken design.
 *
 * A SOCK_SEQPACKET socketpair and fork(); the child blocks in recv(), touches the data
 * (one byte per 4 KiB page) and answers with a 16-byte ack; the parent times send + recv.
 * It is driven by bench/driver.mjs over stdin/stdout so that its blocks interleave with
 * the Node transports:
 *
 *   inline <size> <rounds> <verify>   each round sends <size> bytes (<= 65536) in one record
 *   shared <size> <rounds> <verify>   a sealed memfd of <size> bytes is handed to the child
 *                                     once per size (untimed: the fd travels, the child maps
 *                                     it and reads every page); each timed round then sends a
 *                                     16-byte record naming it and the child touches one
 *                                     byte per page of its mapping: the C version of a
 *                                     shmlink "known region" handoff
 *   quit
 *
 * Each command answers one line: "ok <n> <ns> <ns> ..." (one latency per timed round) or
 * "err <reason>". With <verify> 1, an untimed round first has the child checksum every
 * byte, and the parent compares it with its own. Every timed round's ack carries the
 * child's page sum, which the parent checks after stopping the clock.
 *
 * Options: --child-cpu N  the forked child pins itself to CPU N (the split placement).
 *
 * Build: cc -O2 -o bench/build/pingpong bench/c/pingpong.c
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_INLINE 65536
#define CTL_LEN 12 /* data records are >= 16 bytes, so a 12-byte record is a command */

enum { CTL_INLINE = 'I', CTL_SHARED = 'S', CTL_KNOWN = 'K', CTL_QUIT = 'Q' };

struct ctl {
    uint8_t tag; /* 'C' */
    uint8_t op;
    uint8_t verify;
    uint8_t pad;
    uint64_t size;
} __attribute__((packed));

struct ack {
    uint32_t magic, page_sum, a, b;
};

static void die(const char *what) {
    fprintf(stderr, "pingpong: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void send_ack(int fd, uint32_t page, uint32_t a, uint32_t b) {
    struct ack k = {ACK_MAGIC, page, a, b};
    if (send(fd, &k, sizeof k, 0) != (ssize_t)sizeof k) die("child send");
}

/* The child: answers records until end-of-file or QUIT. */
static void child_loop(int fd) {
    static uint8_t buf[MAX_INLINE + 64];
    uint8_t *map = NULL;
    size_t map_len = 0;
    int verify_next = 0;
    int shared_mode = 0;
    for (;;) {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {buf, sizeof buf};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n == 0) _exit(0);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("child recvmsg");
        }
        if (n == CTL_LEN && buf[0] == 'C') {
            struct ctl c;
            memcpy(&c, buf, sizeof c);
            if (c.op == CTL_QUIT) _exit(0);
            verify_next = c.verify;
            shared_mode = c.op == CTL_SHARED || c.op == CTL_KNOWN;
            if (c.op == CTL_SHARED) {
                struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
                if (cm == NULL || cm->cmsg_type != SCM_RIGHTS) {
                    fprintf(stderr, "pingpong: shared command without a descriptor\n");
                    _exit(1);
                }
                int memfd;
                memcpy(&memfd, CMSG_DATA(cm), sizeof memfd);
                if (map != NULL) munmap(map, map_len);
                map_len = c.size;
                map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
                if (map == MAP_FAILED) die("child mmap");
                close(memfd);
                /* First sight of the region: read every page (and checksum it if asked). */
                uint32_t a = 0, b = 0;
                if (verify_next) full_sum(map, map_len, &a, &b);
                send_ack(fd, page_sum(map, map_len), a, b);
                verify_next = 0;
            } else {
                send_ack(fd, 0, 0, 0);
            }
            continue;
        }
        const uint8_t *data = buf;
        size_t len = (size_t)n;
        if (shared_mode) { /* a known-region round: the record only names the region */
            data = map;
            len = map_len;
        }
        uint32_t a = 0, b = 0;
        if (verify_next) {
            full_sum(data, len, &a, &b);
            verify_next = 0;
        }
        send_ack(fd, page_sum(data, len), a, b);
    }
}

static int sock; /* the parent's end */

static void send_ctl(uint8_t op, int verify, uint64_t size, int memfd) {
    struct ctl c = {'C', op, (uint8_t)verify, 0, size};
    struct iovec iov = {&c, sizeof c};
    struct msghdr msg = {0};
    char cbuf[CMSG_SPACE(sizeof(int))];
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (memfd >= 0) {
        memset(cbuf, 0, sizeof cbuf);
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &memfd, sizeof memfd);
    }
    if (sendmsg(sock, &msg, 0) != (ssize_t)sizeof c) die("sendmsg ctl");
}

static struct ack recv_ack(void) {
    struct ack k;
    ssize_t n = recv(sock, &k, sizeof k, 0);
    if (n != (ssize_t)sizeof k || k.magic != ACK_MAGIC) {
        fprintf(stderr, "pingpong: bad ack (%zd bytes)\n", n);
        exit(1);
    }
    return k;
}

/* The parent's shared region (the "known region" of the shared mode). */
static uint8_t *region;
static size_t region_len;

static int setup_shared(size_t size, int verify, char *err, size_t errlen) {
    if (region != NULL && region_len == size && !verify) { /* already mapped on both sides */
        send_ctl(CTL_KNOWN, 0, size, -1);
        recv_ack();
        return 0;
    }
    if (region != NULL) munmap(region, region_len);
    int fd = memfd_create("bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) die("F_ADD_SEALS");
    region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (region == MAP_FAILED) die("mmap");
    region_len = size;
    fill_pattern(region, size, 7);
    send_ctl(CTL_SHARED, verify, size, fd);
    close(fd);
    struct ack k = recv_ack();
    if (k.page_sum != page_sum(region, size)) {
        snprintf(err, errlen, "shared setup page sum %u != %u", k.page_sum, page_sum(region, size));
        return -1;
    }
    if (verify) {
        uint32_t a, b;
        full_sum(region, size, &a, &b);
        if (k.a != a || k.b != b) {
            snprintf(err, errlen, "shared checksum mismatch");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    int child_cpu = -1;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--child-cpu") == 0) child_cpu = atoi(argv[i + 1]);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(sv[0]);
        if (child_cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(child_cpu, &set);
            if (sched_setaffinity(0, sizeof set, &set) != 0) die("child sched_setaffinity");
        }
        child_loop(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    sock = sv[0];

    static uint8_t data[MAX_INLINE];
    char line[256];
    uint64_t *samples = NULL;
    size_t cap = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin) != NULL) {
        char cmd[32];
        unsigned long long size = 0, rounds = 0;
        int verify = 0;
        char err[256] = "";
        if (sscanf(line, "%31s %llu %llu %d", cmd, &size, &rounds, &verify) < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        int shared = strcmp(cmd, "shared") == 0;
        if (!shared && strcmp(cmd, "inline") != 0) {
            printf("err unknown command %s\n", cmd);
            fflush(stdout);
            continue;
        }
        if (size == 0 || (!shared && size > MAX_INLINE) || (!shared && size < 16)) {
            printf("err bad size %llu\n", size);
            fflush(stdout);
            continue;
        }
        if (rounds > cap) {
            cap = rounds;
            samples = realloc(samples, cap * sizeof *samples);
            if (samples == NULL) die("realloc");
        }
        const uint8_t *payload;
        size_t payload_len;
        uint32_t expect_page;
        if (shared) {
            if (setup_shared(size, verify, err, sizeof err) != 0) goto fail;
            static uint8_t ping[16] = {'R'};
            payload = ping;
            payload_len = sizeof ping;
            expect_page = page_sum(region, region_len);
        } else {
            fill_pattern(data, size, 7);
            send_ctl(CTL_INLINE, verify, size, -1);
            recv_ack();
            payload = data;
            payload_len = size;
            expect_page = page_sum(data, size);
            if (verify) { /* an untimed round checksummed in full by the child */
                if (send(sock, payload, payload_len, 0) != (ssize_t)payload_len) die("send");
                struct ack k = recv_ack();
                uint32_t a, b;
                full_sum(data, size, &a, &b);
                if (k.a != a || k.b != b || k.page_sum != expect_page) {
                    snprintf(err, sizeof err, "inline checksum mismatch");
                    goto fail;
                }
            }
        }
        int bad = 0;
        for (unsigned long long r = 0; r < rounds; r++) {
            uint64_t t0 = now_ns();
            if (send(sock, payload, payload_len, 0) != (ssize_t)payload_len) die("send");
            struct ack k;
            ssize_t n = recv(sock, &k, sizeof k, 0);
            uint64_t t1 = now_ns();
            if (n != (ssize_t)sizeof k || k.magic != ACK_MAGIC || k.page_sum != expect_page) bad = 1;
            samples[r] = t1 - t0;
        }
        if (bad) {
            snprintf(err, sizeof err, "a round's ack did not match");
            goto fail;
        }
        printf("ok %llu", rounds);
        for (unsigned long long r = 0; r < rounds; r++) printf(" %llu", (unsigned long long)samples[r]);
        printf("\n");
        fflush(stdout);
        continue;
    fail:
        printf("err %s\n", err);
        fflush(stdout);
    }
    send_ctl(CTL_QUIT, 0, 0, -1);
    close(sock);
    waitpid(pid, NULL, 0);
    return 0;
}
