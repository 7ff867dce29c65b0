/* Shared by the C floor programs: the fill pattern, the checksums and a clock that the
 * JavaScript side (bench/lib/data.mjs) computes identically. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define PAGE 4096u
#define ACK_MAGIC 0x214b4341u /* "ACK!" little-endian */

/* peers/SCENARIO.md "The fill pattern": byte k = seed*131 + (k%4096)*7 + (k/4096)*13 (mod 256). */
static inline void fill_pattern(uint8_t *p, size_t len, uint32_t seed) {
    uint8_t page[PAGE];
    for (size_t k = 0; k < PAGE; k++) page[k] = (uint8_t)(seed * 131u + k * 7u);
    for (size_t off = 0, n = 0; off < len; off += PAGE, n++) {
        size_t chunk = len - off < PAGE ? len - off : PAGE;
        uint8_t add = (uint8_t)(n * 13u);
        for (size_t k = 0; k < chunk; k++) p[off + k] = (uint8_t)(page[k] + add);
    }
}

/* One byte read from every 4 KiB page (offsets 0, 4096, ...), summed: what a receiver does
 * to "touch" the data. Volatile so that the reads happen. */
static inline uint32_t page_sum(const volatile uint8_t *p, size_t len) {
    uint32_t s = 0;
    for (size_t k = 0; k < len; k += PAGE) s += p[k];
    return s;
}

/* The full check: a Fletcher-style pair over every byte, wrapping at 2^32. */
static inline void full_sum(const uint8_t *p, size_t len, uint32_t *a_out, uint32_t *b_out) {
    uint32_t a = 0, b = 0;
    for (size_t k = 0; k < len; k++) {
        a += p[k];
        b += a;
    }
    *a_out = a;
    *b_out = b;
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#endif
