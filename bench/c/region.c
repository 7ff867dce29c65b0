/* bench/c/region.c: what creating a shared-memory region costs in C, the floor for
 * shmlink's Region.create() + region.bytes + region.close().
 *
 * One iteration: memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), ftruncate,
 * fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), mmap(MAP_SHARED), munmap, close:
 * the system calls shmlink makes (it adds one fstat for the region's identity).
 *
 * Driven over stdin like pingpong.c: "<size> <iterations>" answers
 * "ok <n> <ns> <ns> ..."; "quit" ends it.
 *
 * Build: cc -O2 -o bench/build/region bench/c/region.c
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static int one(size_t size) {
    int fd = memfd_create("shmlink", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) return -1;
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) return -1;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -1;
    if (munmap(p, size) != 0) return -1;
    return close(fd);
}

int main(void) {
    char line[256];
    uint64_t *samples = NULL;
    size_t cap = 0;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fgets(line, sizeof line, stdin) != NULL) {
        unsigned long long size = 0, n = 0;
        if (strncmp(line, "quit", 4) == 0) break;
        if (sscanf(line, "%llu %llu", &size, &n) != 2 || size == 0) {
            printf("err bad command\n");
            fflush(stdout);
            continue;
        }
        if (n > cap) {
            cap = n;
            samples = realloc(samples, cap * sizeof *samples);
            if (samples == NULL) return 1;
        }
        int failed = 0;
        for (unsigned long long i = 0; i < n; i++) {
            uint64_t t0 = now_ns();
            if (one(size) != 0) failed = errno;
            samples[i] = now_ns() - t0;
        }
        if (failed) {
            printf("err %s\n", strerror(failed));
        } else {
            printf("ok %llu", n);
            for (unsigned long long i = 0; i < n; i++) printf(" %llu", (unsigned long long)samples[i]);
            printf("\n");
        }
        fflush(stdout);
    }
    return 0;
}
