/* bench/c/first.c: the C baseline for a first-time handoff (shmlink's `shmlink-first` row).
 *
 * Two processes: this program and a child forked from it, joined by a
 * socketpair(AF_UNIX, SOCK_SEQPACKET). One round, as shmlink-first does it
 * (bench/lib/transports.mjs, bench/children/shmlink-child.mjs):
 *
 *   producer, untimed ("fill"): memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), ftruncate,
 *       F_ADD_SEALS(SHRINK | GROW), mmap(MAP_SHARED, read-write), then a memcpy of the whole
 *       size from a buffer holding the fill pattern (shmlink: Region.create(size) then
 *       region.bytes.set(data)); this part is timed separately and reported as "fill";
 *   timed ("handover", the row's samples): sendmsg of a 16-byte header with the descriptor
 *       (SCM_RIGHTS); the child receives it, fstat()s it (the size must match), checks the
 *       seals with F_GET_SEALS, maps it read-write MAP_SHARED, reads one byte of every 4 KiB
 *       page, and sends a 16-byte ack carrying the sum of those bytes; the clock stops when
 *       the ack is in;
 *   untimed: the child unmaps and closes after sending the ack, the producer unmaps and
 *       closes after reading it, and the next round starts after one more exchange ('N'),
 *       so the child has unmapped the old region by then (shmlink: region.close(), then the
 *       'N' command).
 *
 * Populate strategies (how the page tables get filled):
 *   producer: none                  the memcpy write-faults every page (one fault per page:
 *                                   shared file mappings do no fault-around for writes)
 *             map_populate          mmap(MAP_POPULATE): the kernel allocates and maps every
 *                                   page inside mmap (for a shared mapping it populates
 *                                   read-style; shmem allocates the page and maps it writable)
 *             madv_populate_write   madvise(MADV_POPULATE_WRITE) after mmap (Linux >= 5.14)
 *   receiver: none                  the page reads fault; a read fault on shmem maps up to 16
 *                                   pages at once (fault-around), so about size/64 KiB faults
 *             map_populate          mmap(MAP_POPULATE)
 *             madv_populate_read    madvise(MADV_POPULATE_READ) after mmap (Linux >= 5.14)
 * The receiver's strategy is part of the timed handover; the producer's is part of "fill".
 *
 * Driven over stdin/stdout like pingpong.c:
 *   first <size> <rounds> <verify> <producer> <receiver>
 *       -> "ok <n> <handover ns>... | fill <n> <ns>... | total <n> <ns>...
 *           | fill_minflt <n> <faults>... | recv_minflt <n> <faults>..."
 *       With <verify> 1 one untimed round comes first in which the child checksums every
 *       byte (Fletcher-style, common.h) and the producer compares. Every timed round's ack
 *       carries the child's page sum, checked after the clock stops.
 *   probe -> "ok 0 | supported 2 <MADV_POPULATE_READ> <MADV_POPULATE_WRITE>" (1 = works here)
 *   quit
 * An error answers "err <reason>"; an unsupported madvise says so (EINVAL before 5.14).
 *
 * Options: --child-cpu N  pin the child to CPU N (the split placement).
 * Build: cc -O2 -Wall -Wextra -o bench/build/first bench/c/first.c
 */
#include "ipc.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14, include/uapi/asm-generic/mman-common.h */
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef F_SEAL_SHRINK
#error "the C library headers lack memfd seals (F_SEAL_SHRINK)"
#endif

#define ERR_MAGIC 0x21525245u /* "ERR!" */

enum producer_strategy { P_NONE, P_MAP_POPULATE, P_MADV_POPULATE_WRITE };
enum receiver_strategy { R_NONE, R_MAP_POPULATE, R_MADV_POPULATE_READ };
static const char *const PRODUCER_NAMES[] = {"none", "map_populate", "madv_populate_write"};
static const char *const RECEIVER_NAMES[] = {"none", "map_populate", "madv_populate_read"};

/* Parent -> child. 'R' hands a region over (descriptor attached); 'N' asks for an ack. */
struct header {
    uint8_t tag;
    uint8_t verify;
    uint8_t receiver; /* enum receiver_strategy */
    uint8_t pad;
    uint32_t pad2;
    uint64_t size;
};

/* Child -> parent. On failure magic is ERR_MAGIC, page is the errno and a names the step. */
struct ack {
    uint32_t magic, page, a, b;
    uint64_t minflt; /* the child's minor faults while receiving, mapping and reading */
};

enum step { S_FSTAT = 1, S_SIZE, S_SEALS, S_MMAP, S_MADVISE, S_NOFD };
static const char *step_name(uint32_t s) {
    switch (s) {
    case S_FSTAT: return "fstat";
    case S_SIZE: return "size check (fstat size != header size)";
    case S_SEALS: return "seal check (F_GET_SEALS lacks SHRINK|GROW)";
    case S_MMAP: return "mmap";
    case S_MADVISE: return "madvise(MADV_POPULATE_READ)";
    case S_NOFD: return "no descriptor in the record";
    default: return "?";
    }
}

static void child_fail(int sock, uint32_t step, int err) {
    struct ack k = {ERR_MAGIC, (uint32_t)err, step, 0, 0};
    send_record(sock, &k, sizeof k, NULL, 0);
}

/* The receiving process: one record at a time until end-of-file. */
static void child_loop(int sock) {
    for (;;) {
        struct header h;
        int fd = -1, nfds = 1;
        size_t n = recv_record(sock, &h, sizeof h, &fd, &nfds);
        if (n == 0) return; /* the parent closed its end or died */
        if (n != sizeof h) die_msg("child: a record of the wrong size");
        if (h.tag == 'Q') {
            if (nfds > 0) close(fd);
            return;
        }
        if (h.tag == 'N') {
            if (nfds > 0) close(fd);
            struct ack k = {ACK_MAGIC, 0, 0, 0, 0};
            send_record(sock, &k, sizeof k, NULL, 0);
            continue;
        }
        uint64_t f0 = minflt_self();
        if (nfds != 1) {
            child_fail(sock, S_NOFD, 0);
            continue;
        }
        struct stat st;
        if (fstat(fd, &st) != 0) {
            child_fail(sock, S_FSTAT, errno);
            close(fd);
            continue;
        }
        if ((uint64_t)st.st_size != h.size) {
            child_fail(sock, S_SIZE, 0);
            close(fd);
            continue;
        }
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
            child_fail(sock, S_SEALS, seals < 0 ? errno : 0);
            close(fd);
            continue;
        }
        int flags = MAP_SHARED | (h.receiver == R_MAP_POPULATE ? MAP_POPULATE : 0);
        uint8_t *map = mmap(NULL, h.size, PROT_READ | PROT_WRITE, flags, fd, 0);
        if (map == MAP_FAILED) {
            child_fail(sock, S_MMAP, errno);
            close(fd);
            continue;
        }
        if (h.receiver == R_MADV_POPULATE_READ && madvise(map, h.size, MADV_POPULATE_READ) != 0) {
            child_fail(sock, S_MADVISE, errno);
            munmap(map, h.size);
            close(fd);
            continue;
        }
        struct ack k = {ACK_MAGIC, page_sum(map, h.size), 0, 0, 0};
        if (h.verify) full_sum(map, h.size, &k.a, &k.b);
        k.minflt = minflt_self() - f0;
        send_record(sock, &k, sizeof k, NULL, 0);
        if (munmap(map, h.size) != 0) die("child munmap");
        if (close(fd) != 0) die("child close");
    }
}

static int sock;

static struct ack recv_ack(void) {
    struct ack k;
    size_t n = recv_record(sock, &k, sizeof k, NULL, NULL);
    if (n == 0) die_msg("the child went away");
    if (n != sizeof k) die_msg("an ack of the wrong size");
    return k;
}

/* The producer's half of one round. Returns 0, or -1 with err filled. */
static int produce(size_t size, const uint8_t *source, enum producer_strategy ps, int *fd_out, uint8_t **map_out,
                   char *err, size_t errlen) {
    int fd = memfd_create("bench-first", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) die("fcntl(F_ADD_SEALS)");
    int flags = MAP_SHARED | (ps == P_MAP_POPULATE ? MAP_POPULATE : 0);
    uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (map == MAP_FAILED) die("mmap");
    if (ps == P_MADV_POPULATE_WRITE && madvise(map, size, MADV_POPULATE_WRITE) != 0) {
        int e = errno;
        snprintf(err, errlen, "madvise(MADV_POPULATE_WRITE): %s%s", strerror(e),
                 e == EINVAL ? " (this kernel lacks it: it needs Linux >= 5.14)" : "");
        if (munmap(map, size) != 0) die("munmap");
        if (close(fd) != 0) die("close");
        return -1;
    }
    memcpy(map, source, size);
    *fd_out = fd;
    *map_out = map;
    return 0;
}

static void release(int fd, uint8_t *map, size_t size) {
    if (munmap(map, size) != 0) die("munmap");
    if (close(fd) != 0) die("close");
}

static int parse_strategy(const char *s, const char *const *names, int count) {
    for (int i = 0; i < count; i++) {
        if (strcmp(s, names[i]) == 0) return i;
    }
    return -1;
}

static int check_ack(struct ack k, uint32_t want_page, char *err, size_t errlen) {
    if (k.magic == ERR_MAGIC) {
        snprintf(err, errlen, "child: %s: %s%s", step_name(k.a), k.page ? strerror((int)k.page) : "failed",
                 k.a == S_MADVISE && k.page == EINVAL ? " (this kernel lacks it: it needs Linux >= 5.14)" : "");
        return -1;
    }
    if (k.magic != ACK_MAGIC) {
        snprintf(err, errlen, "not an ack");
        return -1;
    }
    if (k.page != want_page) {
        snprintf(err, errlen, "page sum %u != %u", k.page, want_page);
        return -1;
    }
    return 0;
}

/* Whether madvise(advice) works on a small shared memfd mapping here. */
static int probe(int advice) {
    int fd = memfd_create("bench-probe", MFD_CLOEXEC);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, PAGE) != 0) die("ftruncate");
    void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap");
    int ok = madvise(p, PAGE, advice) == 0;
    release(fd, p, PAGE);
    return ok;
}

int main(int argc, char **argv) {
    prog_name = "first";
    int child_sock = -1;
    pid_t pid = fork_pair(child_cpu_option(argc, argv), &sock, &child_sock);
    if (pid == 0) {
        child_loop(child_sock);
        _exit(0);
    }

    char line[256];
    uint64_t *series[5] = {0};
    size_t cap = 0;
    uint8_t *source = NULL;
    size_t source_len = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin) != NULL) {
        char cmd[32], pname[32] = "", rname[32] = "";
        unsigned long long size = 0, rounds = 0;
        int verify = 0;
        char err[256] = "";
        if (sscanf(line, "%31s %llu %llu %d %31s %31s", cmd, &size, &rounds, &verify, pname, rname) < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        if (strcmp(cmd, "probe") == 0) {
            printf("ok 0 | supported 2 %d %d\n", probe(MADV_POPULATE_READ), probe(MADV_POPULATE_WRITE));
            fflush(stdout);
            continue;
        }
        int ps = parse_strategy(pname, PRODUCER_NAMES, 3);
        int rs = parse_strategy(rname, RECEIVER_NAMES, 3);
        if (strcmp(cmd, "first") != 0 || size == 0 || size % PAGE != 0 || ps < 0 || rs < 0) {
            printf("err usage: first <size, a multiple of 4096> <rounds> <verify> "
                   "none|map_populate|madv_populate_write none|map_populate|madv_populate_read\n");
            fflush(stdout);
            continue;
        }
        if (rounds > cap) {
            cap = rounds;
            for (int s = 0; s < 5; s++) {
                free(series[s]);
                series[s] = malloc(cap * sizeof(uint64_t));
                if (series[s] == NULL) die("malloc");
            }
        }
        if (source_len != size) {
            free(source);
            source = malloc(size);
            if (source == NULL) die("malloc");
            fill_pattern(source, size, 7); /* also faults the source in, before any timing */
            source_len = size;
        }
        uint32_t want_page = page_sum(source, size);
        struct header h = {'R', 0, (uint8_t)rs, 0, 0, size};
        struct header sync = {'N', 0, 0, 0, 0, 0};
        int fd;
        uint8_t *map;
        if (verify) { /* untimed: the child checksums every byte */
            if (produce(size, source, ps, &fd, &map, err, sizeof err) != 0) goto fail;
            h.verify = 1;
            send_record(sock, &h, sizeof h, &fd, 1);
            h.verify = 0;
            struct ack k = recv_ack();
            release(fd, map, size);
            if (check_ack(k, want_page, err, sizeof err) != 0) goto fail;
            uint32_t a, b;
            full_sum(source, size, &a, &b);
            if (k.a != a || k.b != b) {
                snprintf(err, sizeof err, "checksum %u/%u != %u/%u", k.a, k.b, a, b);
                goto fail;
            }
            send_record(sock, &sync, sizeof sync, NULL, 0);
            recv_ack();
        }
        for (unsigned long long r = 0; r < rounds; r++) {
            uint64_t m0 = minflt_self();
            uint64_t t0 = now_ns();
            if (produce(size, source, ps, &fd, &map, err, sizeof err) != 0) goto fail;
            uint64_t t1 = now_ns();
            uint64_t m1 = minflt_self();
            send_record(sock, &h, sizeof h, &fd, 1);
            struct ack k = recv_ack();
            uint64_t t2 = now_ns();
            release(fd, map, size);
            if (check_ack(k, want_page, err, sizeof err) != 0) goto fail;
            series[0][r] = t2 - t1;
            series[1][r] = t1 - t0;
            series[2][r] = t2 - t0;
            series[3][r] = m1 - m0;
            series[4][r] = k.minflt;
            send_record(sock, &sync, sizeof sync, NULL, 0); /* the child has unmapped it by the ack */
            recv_ack();
        }
        print_series(NULL, series[0], rounds);
        print_series("fill", series[1], rounds);
        print_series("total", series[2], rounds);
        print_series("fill_minflt", series[3], rounds);
        print_series("recv_minflt", series[4], rounds);
        printf("\n");
        fflush(stdout);
        continue;
    fail:
        printf("err %s\n", err);
        fflush(stdout);
    }
    struct header quit = {'Q', 0, 0, 0, 0, 0};
    send_record(sock, &quit, sizeof quit, NULL, 0);
    if (close(sock) != 0) die("close");
    reap(pid);
    for (int s = 0; s < 5; s++) free(series[s]);
    free(source);
    return 0;
}
