/* One thread, one SOCK_SEQPACKET socketpair: send 16 bytes on one end, receive them on the
 * other, N times. No context switch and no wake-up: what the two system calls of one
 * message cost. Companion of bench/tools/per-message.mjs.
 * Build: cc -O2 -o bench/build/selfpair bench/tools/selfpair.c */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0) return 1;
    char buf[16] = {1}, in[65536];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (send(sv[0], buf, sizeof buf, 0) != sizeof buf) return 1;
        if (recv(sv[1], in, sizeof in, 0) != sizeof buf) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("C send+recv, one thread: %.0f ns per message\n", ns / n);
    return 0;
}
