/* bench/c/pool.c: the C baseline for a pooled stream of large frames.
 *
 * Two processes (this program and a child forked from it) joined by a
 * socketpair(AF_UNIX, SOCK_SEQPACKET), and a fixed pool of <count> regions of <size> bytes:
 * sealed memfds created, filled, passed (SCM_RIGHTS, all in one record) and mapped on both
 * sides once, at setup. Then a stream of frames:
 *
 *   producer: take a free region (if none is free, block until the consumer hands one
 *             back), write one byte at offset 0, 4096, ... of it (the byte is the frame's
 *             value v = frame*7+1 mod 256), send a 16-byte record {index, frame};
 *   consumer: read one byte per page of that region (their sum must be v * pages), send
 *             the same index back with the sum: the region is free again ("transfer back").
 *
 * At most <depth> frames are in flight (default: all <count> regions), so with the
 * processes on different CPUs the producer writes frame f+1 while the consumer reads
 * frame f. The producer takes returned indices without blocking whenever it can send.
 *
 * A frame's "time" is the interval between the producer seeing frame f-1 and frame f come
 * back (the stream's period: their sum is the block's duration); "latency" is from the
 * producer starting to write frame f to seeing it come back. The first <depth> frames of
 * a block, while the pipeline fills, are dropped from both. Minor page faults
 * (getrusage ru_minflt) are counted over the whole block in both processes: with every
 * page mapped at setup they should be about 0.
 *
 * Driven over stdin/stdout like pingpong.c:
 *   setup <size> <count> <verify>  create, fill, pass and map the pool (replacing any old
 *                                  one); the child page-sums every region (and with
 *                                  <verify> 1 checksums every byte) against the producer's
 *                                  values -> "ok 0"
 *   stream <frames> <depth>        -> "ok <n> <interval ns>... | latency <n> <ns>...
 *                                      | minflt 2 <producer> <consumer> | frames 1 <frames>"
 *   teardown                       both sides unmap and close the pool -> "ok 0"
 *   quit
 *
 * Options: --child-cpu N  pin the child to CPU N (the split placement).
 * Build: cc -O2 -Wall -Wextra -o bench/build/pool bench/c/pool.c
 */
#include "ipc.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define MAX_POOL MAX_FDS

struct rec {
    uint8_t tag; /* S setup (fds attached), G go (a stream starts), F frame, T teardown,
                    B back (child -> parent), E end of stream (child -> parent), A ack */
    uint8_t count;
    uint16_t pad;
    uint32_t index;
    uint64_t value; /* S: the size; G: the frame count; F/B: the frame number; E: faults;
                       A (setup): the full checksum's a */
    uint32_t sum;   /* B/A: the page sum */
    uint32_t sum2;  /* A (setup): the full checksum's b */
};

struct pool {
    uint8_t *map[MAX_POOL];
    int fd[MAX_POOL];
    int count;
    size_t size;
};

static void pool_release(struct pool *p) {
    for (int i = 0; i < p->count; i++) {
        if (munmap(p->map[i], p->size) != 0) die("munmap");
        if (p->fd[i] >= 0 && close(p->fd[i]) != 0) die("close");
    }
    p->count = 0;
}

static uint8_t frame_value(uint64_t frame) {
    return (uint8_t)(frame * 7u + 1u);
}

static void child_send(int sock, struct rec r) {
    send_record(sock, &r, sizeof r, NULL, 0);
}

/* The consumer: answers records until end-of-file. */
static void child_loop(int sock) {
    struct pool p = {.count = 0};
    for (;;) {
        struct rec r;
        int fds[MAX_POOL], nfds = MAX_POOL;
        size_t n = recv_record(sock, &r, sizeof r, fds, &nfds);
        if (n == 0) break; /* the parent closed its end or died */
        if (n != sizeof r) die_msg("child: a record of the wrong size");
        if (r.tag == 'F') { /* the hot path */
            if (r.index >= (uint32_t)p.count) die_msg("child: frame names no region");
            struct rec back = {'B', 0, 0, r.index, r.value, page_sum(p.map[r.index], p.size), 0};
            child_send(sock, back);
            continue;
        }
        if (r.tag == 'S') {
            pool_release(&p);
            if (nfds != r.count || r.count == 0 || r.count > MAX_POOL) die_msg("child: setup without its descriptors");
            p.size = r.value;
            for (int i = 0; i < nfds; i++) {
                struct stat st;
                if (fstat(fds[i], &st) != 0) die("child fstat");
                int seals = fcntl(fds[i], F_GET_SEALS);
                if ((uint64_t)st.st_size != p.size || seals < 0 ||
                    (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
                    die_msg("child: a pool region has the wrong size or lacks its seals");
                }
                p.map[i] = mmap(NULL, p.size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
                if (p.map[i] == MAP_FAILED) die("child mmap");
                if (close(fds[i]) != 0) die("child close");
                p.fd[i] = -1; /* the mapping keeps the memory; the descriptor is not needed */
                p.count = i + 1;
            }
            /* One ack per region: its page sum, and its full checksum when asked. */
            for (int i = 0; i < p.count; i++) {
                struct rec a = {'A', 0, 0, (uint32_t)i, 0, page_sum(p.map[i], p.size), 0};
                if (r.pad) {
                    uint32_t fa, fb;
                    full_sum(p.map[i], p.size, &fa, &fb);
                    a.value = fa;
                    a.sum2 = fb;
                }
                child_send(sock, a);
            }
            continue;
        }
        for (int i = 0; i < nfds; i++) close(fds[i]);
        if (r.tag == 'G') {
            uint64_t frames = r.value;
            uint64_t f0 = minflt_self();
            child_send(sock, (struct rec){'A', 0, 0, 0, 0, 0, 0});
            for (uint64_t f = 0; f < frames; f++) {
                struct rec fr;
                size_t m = recv_record(sock, &fr, sizeof fr, NULL, NULL);
                if (m == 0) goto out;
                if (m != sizeof fr || fr.tag != 'F' || fr.index >= (uint32_t)p.count) die_msg("child: not a frame");
                struct rec back = {'B', 0, 0, fr.index, fr.value, page_sum(p.map[fr.index], p.size), 0};
                child_send(sock, back);
            }
            child_send(sock, (struct rec){'E', 0, 0, 0, minflt_self() - f0, 0, 0});
        } else if (r.tag == 'T') {
            pool_release(&p);
            child_send(sock, (struct rec){'A', 0, 0, 0, 0, 0, 0});
        } else if (r.tag == 'Q') {
            break;
        } else {
            die_msg("child: unknown record");
        }
    }
out:
    pool_release(&p);
}

static int sock;

static struct rec recv_rec(void) {
    struct rec r;
    size_t n = recv_record(sock, &r, sizeof r, NULL, NULL);
    if (n == 0) die_msg("the child went away");
    if (n != sizeof r) die_msg("a record of the wrong size");
    return r;
}

static int setup(struct pool *p, size_t size, int count, int verify, char *err, size_t errlen) {
    pool_release(p);
    p->size = size;
    for (int i = 0; i < count; i++) {
        int fd = memfd_create("bench-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) die("memfd_create");
        if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) die("fcntl(F_ADD_SEALS)");
        p->map[i] = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p->map[i] == MAP_FAILED) die("mmap");
        p->fd[i] = fd;
        p->count = i + 1;
        fill_pattern(p->map[i], size, 7u + (uint32_t)i);
    }
    struct rec s = {'S', (uint8_t)count, (uint16_t)(verify != 0), 0, size, 0, 0};
    send_record(sock, &s, sizeof s, p->fd, count);
    int bad = 0;
    for (int i = 0; i < count; i++) {
        struct rec a = recv_rec();
        uint32_t want = page_sum(p->map[a.index], size);
        if (a.tag != 'A' || a.index >= (uint32_t)count || a.sum != want) bad = 1;
        if (verify && !bad) {
            uint32_t x, y;
            full_sum(p->map[a.index], size, &x, &y);
            if (x != (uint32_t)a.value || y != a.sum2) bad = 1;
        }
    }
    /* The child has its own mappings now; the producer keeps its descriptors only to
     * close them at teardown (it could close them here just as well). */
    if (bad) snprintf(err, errlen, "the child's sums of the pool do not match");
    return bad ? -1 : 0;
}

int main(int argc, char **argv) {
    prog_name = "pool";
    int child_sock = -1;
    pid_t pid = fork_pair(child_cpu_option(argc, argv), &sock, &child_sock);
    if (pid == 0) {
        child_loop(child_sock);
        _exit(0);
    }

    struct pool p = {.count = 0};
    char line[256];
    uint64_t *interval = NULL, *latency = NULL, *started = NULL;
    size_t cap = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin) != NULL) {
        char cmd[32];
        unsigned long long a = 0, b = 0;
        int c = 0;
        char err[256] = "";
        if (sscanf(line, "%31s %llu %llu %d", cmd, &a, &b, &c) < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        if (strcmp(cmd, "setup") == 0) {
            if (a == 0 || a % PAGE != 0 || b == 0 || b > MAX_POOL) {
                printf("err usage: setup <size, a multiple of 4096> <count, 1..%d> <verify>\n", MAX_POOL);
            } else if (setup(&p, a, (int)b, c, err, sizeof err) != 0) {
                printf("err %s\n", err);
            } else {
                printf("ok 0\n");
            }
            fflush(stdout);
            continue;
        }
        if (strcmp(cmd, "teardown") == 0) {
            pool_release(&p);
            struct rec t = {'T', 0, 0, 0, 0, 0, 0};
            send_record(sock, &t, sizeof t, NULL, 0);
            recv_rec();
            printf("ok 0\n");
            fflush(stdout);
            continue;
        }
        unsigned long long frames = a, depth = b == 0 ? (unsigned long long)p.count : b;
        if (strcmp(cmd, "stream") != 0 || p.count == 0 || frames <= depth || depth > (unsigned long long)p.count) {
            printf("err usage: setup first, then stream <frames> <depth, 1..count>, frames > depth\n");
            fflush(stdout);
            continue;
        }
        if (frames > cap) {
            cap = frames;
            free(interval);
            free(latency);
            free(started);
            interval = malloc(cap * sizeof *interval);
            latency = malloc(cap * sizeof *latency);
            started = malloc(cap * sizeof *started);
            if (interval == NULL || latency == NULL || started == NULL) die("malloc");
            /* Fault the arrays in now, not during the stream. */
            memset(interval, 0, cap * sizeof *interval);
            memset(latency, 0, cap * sizeof *latency);
            memset(started, 0, cap * sizeof *started);
        }
        struct rec go = {'G', 0, 0, 0, frames, 0, 0};
        send_record(sock, &go, sizeof go, NULL, 0);
        recv_rec(); /* the child has taken its fault count and waits for frames */

        uint32_t free_list[MAX_POOL];
        int nfree = p.count;
        for (int i = 0; i < p.count; i++) free_list[i] = (uint32_t)(p.count - 1 - i);
        uint64_t sent = 0, done = 0, inflight = 0;
        uint32_t pages = (uint32_t)(p.size / PAGE);
        int bad = 0;
        uint64_t m0 = minflt_self();
        uint64_t t_prev = now_ns();
        while (done < frames) {
            /* Hand-backs first, without blocking while there is work to do; block only when
             * nothing can be sent. */
            int can_send = sent < frames && inflight < depth && nfree > 0;
            struct rec r;
            ssize_t n = recv_record_flags(sock, &r, sizeof r, NULL, NULL, can_send ? MSG_DONTWAIT : 0);
            if (n == 0) die_msg("the child went away");
            if (n > 0) {
                uint64_t t = now_ns();
                if (n != (ssize_t)sizeof r || r.tag != 'B' || r.index >= (uint32_t)p.count || r.value >= sent) {
                    die_msg("not a hand-back");
                }
                if (r.sum != (uint32_t)(frame_value(r.value) * pages)) bad = 1;
                interval[done] = t - t_prev;
                latency[done] = t - started[r.value];
                t_prev = t;
                done++;
                inflight--;
                free_list[nfree++] = r.index;
                continue;
            }
            uint32_t idx = free_list[--nfree];
            uint8_t v = frame_value(sent);
            started[sent] = now_ns();
            volatile uint8_t *m = p.map[idx];
            for (size_t k = 0; k < p.size; k += PAGE) m[k] = v;
            /* The write above must be complete before the record leaves: sendmsg is a system
             * call (a compiler barrier), and the consumer's recvmsg returning after it orders
             * the consumer's reads after these writes. */
            struct rec f = {'F', 0, 0, idx, sent, 0, 0};
            send_record(sock, &f, sizeof f, NULL, 0);
            sent++;
            inflight++;
        }
        uint64_t m1 = minflt_self();
        struct rec e = recv_rec();
        if (e.tag != 'E') die_msg("no end-of-stream record");
        if (bad) {
            printf("err a frame's page sum did not match\n");
            fflush(stdout);
            continue;
        }
        size_t skip = (size_t)depth;
        print_series(NULL, interval + skip, frames - skip);
        print_series("latency", latency + skip, frames - skip);
        uint64_t faults[2] = {m1 - m0, e.value};
        print_series("minflt", faults, 2);
        uint64_t nframes = frames;
        print_series("frames", &nframes, 1);
        printf("\n");
        fflush(stdout);
    }
    pool_release(&p);
    struct rec q = {'Q', 0, 0, 0, 0, 0, 0};
    send_record(sock, &q, sizeof q, NULL, 0);
    if (close(sock) != 0) die("close");
    reap(pid);
    free(interval);
    free(latency);
    free(started);
    return 0;
}
