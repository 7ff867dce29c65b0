/* bench/c/spin.c: the floor for a busy-waiting shared-memory channel (no system call, no
 * wake-up): what a ring in shared memory can at best do for a 16-byte round trip.
 *
 * Two processes (this program and a child forked from it) share one page of a memfd,
 * mapped MAP_SHARED before the fork. The page holds one cache line per direction:
 * a 32-bit sequence word and a 16-byte message. One round, timed by the parent:
 *
 *   parent: write the 16-byte message into the ping line, store the round's number into
 *           the ping sequence word (release), spin until the pong sequence word holds it
 *           (acquire), read the 16-byte reply;
 *   child:  spin until the ping word holds the round's number (acquire), read the
 *           message, write the reply (an ack: magic, the message's byte 0 - its "page
 *           sum" - and the round number it carried) into the pong line, store the number
 *           (release).
 *
 * Memory ordering: the message bytes are plain stores made before a release store of the
 * sequence word; the peer's acquire load that reads that value synchronizes with it, so
 * its later plain loads of the message see those bytes (C11 5.1.2.4). Both processes map
 * the same physical page, and lock-free atomics are address-free (C11 7.17.5: a lock-free
 * atomic in memory shared by two processes works), which `_Static_assert` checks below.
 * Neither side writes a line while the other may read it: the parent writes the next
 * message only after it has seen the reply to the previous one, and the child writes a
 * reply only after seeing a new message, so the plain accesses never race.
 *
 * Waiting: spin on the word with `pause` (the x86 spin-wait hint); after <spin_limit>
 * spins without news, sched_yield() and spin again. With both processes on one CPU a pure
 * spin would burn the whole time slice before the peer could run; the yield hands the CPU
 * over. The number of yields is reported. <spin_limit> 0 never yields (only safe with the
 * processes on different CPUs). While spinning, a side checks now and then (every 1024
 * yields, or every 2^22 spins) whether the socket to its peer has hung up, so a dead peer
 * ends the program instead of spinning forever.
 *
 * Driven over stdin/stdout like pingpong.c:
 *   spin <samples> <verify> <spin_limit> <batch>
 *       -> "ok <n> <ns>... | yields 2 <parent> <child> | spin_limit 1 <limit> | batch 1 <batch>"
 *       Each sample is the time of <batch> consecutive round trips divided by <batch>
 *       (rounded to 1 ns): reading the clock costs about as much as a round trip here.
 *       With <verify> 1 one untimed round comes first in which the child checksums the 16
 *       bytes in full (Fletcher-style, common.h) and the parent compares. Every timed
 *       round's reply (magic, byte 0, round number) is checked after the clock stops.
 *   quit
 * The socket carries only the per-block commands; the rounds never touch it.
 *
 * Options: --child-cpu N  pin the child to CPU N (the split placement).
 * Build: cc -O2 -Wall -Wextra -o bench/build/spin bench/c/spin.c
 */
#include "ipc.h"

#include <stdatomic.h>
#include <sys/mman.h>

#define MSG 16

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free to work across processes");

struct line {
    _Atomic uint32_t seq;
    uint8_t msg[MSG];
} __attribute__((aligned(64)));

struct shared {
    struct line ping; /* parent -> child */
    struct line pong; /* child -> parent */
};

struct ack {
    uint32_t magic, page, round, b;
};

/* Parent -> child over the socket: run a block of `rounds` rounds numbered first.. */
struct cmd {
    uint8_t tag; /* 'B' block, 'Q' quit */
    uint8_t verify;
    uint16_t pad;
    uint32_t first;
    uint32_t rounds;
    uint32_t spin_limit;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t yields;

/* Spins until *word == want (acquire). */
static void wait_for(_Atomic uint32_t *word, uint32_t want, uint32_t limit, int sock) {
    uint32_t spins = 0;
    while (atomic_load_explicit(word, memory_order_acquire) != want) {
        cpu_relax();
        spins++;
        if (limit != 0 && spins >= limit) {
            spins = 0;
            sched_yield();
            yields++;
            if ((yields & 1023) == 0 && peer_gone(sock)) die_msg("the peer went away");
        } else if ((spins & ((1u << 22) - 1)) == 0 && peer_gone(sock)) {
            die_msg("the peer went away");
        }
    }
}

static void child_loop(int sock, struct shared *sh) {
    for (;;) {
        struct cmd c;
        size_t n = recv_record(sock, &c, sizeof c, NULL, NULL);
        if (n == 0 || c.tag == 'Q') return; /* the parent closed its end (or died) or said quit */
        if (n != sizeof c || c.tag != 'B') die_msg("child: not a command");
        yields = 0;
        send_record(sock, &c, sizeof c, NULL, 0); /* "ready": the parent starts the rounds */
        for (uint32_t r = 0; r < c.rounds; r++) {
            uint32_t want = c.first + r;
            wait_for(&sh->ping.seq, want, c.spin_limit, sock);
            uint8_t in[MSG];
            memcpy(in, sh->ping.msg, MSG); /* ordered after the acquire load above */
            struct ack k = {ACK_MAGIC, in[0], 0, 0};
            if (c.verify) full_sum(in, MSG, &k.round, &k.b);
            else memcpy(&k.round, in + 4, sizeof k.round);
            memcpy(sh->pong.msg, &k, sizeof k);
            /* Release: the reply bytes above are visible to whoever acquires this value. */
            atomic_store_explicit(&sh->pong.seq, want, memory_order_release);
        }
        uint64_t y = yields;
        send_record(sock, &y, sizeof y, NULL, 0);
    }
}

static int sock;

int main(int argc, char **argv) {
    prog_name = "spin";
    int fd = memfd_create("bench-spin", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, PAGE) != 0) die("ftruncate");
    struct shared *sh = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) die("mmap");
    if (close(fd) != 0) die("close"); /* the mapping, inherited by the child, is enough */
    atomic_init(&sh->ping.seq, 0);
    atomic_init(&sh->pong.seq, 0);

    int child_sock = -1;
    pid_t pid = fork_pair(child_cpu_option(argc, argv), &sock, &child_sock);
    if (pid == 0) {
        child_loop(child_sock, sh);
        _exit(0);
    }

    uint8_t pattern[MSG];
    fill_pattern(pattern, MSG, 7);
    uint32_t next = 1; /* the sequence number of the next round; 0 is "nothing yet" */
    char line[256];
    uint64_t *samples = NULL;
    uint32_t *echo = NULL, *page = NULL, *magic = NULL;
    size_t cap = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin) != NULL) {
        char cmd[32];
        unsigned long long nsamples = 0, limit = 0, batch = 1;
        int verify = 0;
        if (sscanf(line, "%31s %llu %d %llu %llu", cmd, &nsamples, &verify, &limit, &batch) < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        if (strcmp(cmd, "spin") != 0 || nsamples == 0 || batch == 0 || batch > 1000 || nsamples > (1u << 20) ||
            limit > (1u << 30)) {
            printf("err usage: spin <samples> <verify> <spin_limit> <batch, 1..1000>\n");
            fflush(stdout);
            continue;
        }
        unsigned long long rounds = nsamples * batch;
        if (rounds > cap) {
            cap = rounds;
            free(samples);
            free(echo);
            free(page);
            free(magic);
            samples = calloc(cap, sizeof *samples);
            echo = calloc(cap, sizeof *echo);
            page = calloc(cap, sizeof *page);
            magic = calloc(cap, sizeof *magic);
            if (samples == NULL || echo == NULL || page == NULL || magic == NULL) die("calloc");
        }
        char err[256] = "";
        if (verify) { /* one untimed round, checksummed in full by the child */
            struct cmd c = {'B', 1, 0, next, 1, (uint32_t)limit};
            send_record(sock, &c, sizeof c, NULL, 0);
            if (recv_record(sock, &c, sizeof c, NULL, NULL) == 0) die_msg("the child went away");
            memcpy(sh->ping.msg, pattern, MSG);
            memcpy(sh->ping.msg + 4, &next, sizeof next);
            atomic_store_explicit(&sh->ping.seq, next, memory_order_release);
            wait_for(&sh->pong.seq, next, (uint32_t)limit, sock);
            struct ack k;
            memcpy(&k, sh->pong.msg, sizeof k);
            uint64_t y;
            if (recv_record(sock, &y, sizeof y, NULL, NULL) == 0) die_msg("the child went away");
            uint8_t sent[MSG];
            memcpy(sent, pattern, MSG);
            memcpy(sent + 4, &next, sizeof next);
            uint32_t a, b;
            full_sum(sent, MSG, &a, &b);
            next++;
            if (k.magic != ACK_MAGIC || k.page != sent[0] || k.round != a || k.b != b) {
                snprintf(err, sizeof err, "the child's checksum of the message does not match");
                goto fail;
            }
        }
        struct cmd c = {'B', 0, 0, next, (uint32_t)rounds, (uint32_t)limit};
        send_record(sock, &c, sizeof c, NULL, 0);
        if (recv_record(sock, &c, sizeof c, NULL, NULL) == 0) die_msg("the child went away");
        yields = 0;
        uint32_t first = next;
        for (unsigned long long s = 0, r = 0; s < nsamples; s++) {
            uint64_t t0 = now_ns();
            for (unsigned long long j = 0; j < batch; j++, r++, next++) {
                memcpy(sh->ping.msg, pattern, MSG);
                memcpy(sh->ping.msg + 4, &next, sizeof next);
                /* Release: the message bytes above are visible to whoever acquires this value. */
                atomic_store_explicit(&sh->ping.seq, next, memory_order_release);
                wait_for(&sh->pong.seq, next, (uint32_t)limit, sock);
                struct ack k;
                memcpy(&k, sh->pong.msg, sizeof k); /* ordered after the acquire load in wait_for */
                magic[r] = k.magic;
                page[r] = k.page;
                echo[r] = k.round;
            }
            samples[s] = (now_ns() - t0 + batch / 2) / batch;
        }
        uint64_t ys[2] = {yields, 0};
        if (recv_record(sock, &ys[1], sizeof ys[1], NULL, NULL) == 0) die_msg("the child went away");
        for (unsigned long long r = 0; r < rounds; r++) {
            if (magic[r] != ACK_MAGIC || page[r] != pattern[0] || echo[r] != first + (uint32_t)r) {
                snprintf(err, sizeof err, "round %llu: the reply does not match", r);
                goto fail;
            }
        }
        print_series(NULL, samples, nsamples);
        print_series("yields", ys, 2);
        uint64_t l = limit, b = batch;
        print_series("spin_limit", &l, 1);
        print_series("batch", &b, 1);
        printf("\n");
        fflush(stdout);
        continue;
    fail:
        printf("err %s\n", err);
        fflush(stdout);
    }
    struct cmd q = {'Q', 0, 0, 0, 0, 0};
    send_record(sock, &q, sizeof q, NULL, 0);
    if (close(sock) != 0) die("close");
    reap(pid);
    if (munmap(sh, PAGE) != 0) die("munmap");
    free(samples);
    free(echo);
    free(page);
    free(magic);
    return 0;
}
