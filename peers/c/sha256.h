/*
 * sha256.h - SHA-256 (FIPS 180-4), portable C with an x86-64 SHA-NI fast path chosen at
 * run time. Used by the interop peer for transcripts and digests; not part of the protocol.
 */
#ifndef SHMLINK_SHA256_H
#define SHMLINK_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32u
#define SHA256_BLOCK_LEN 64u
#define SHA256_HEX_LEN (2u * SHA256_DIGEST_LEN) /* without the terminating NUL */

typedef struct sha256_ctx {
    uint32_t state[8];
    uint64_t total_len; /* bytes hashed so far */
    uint8_t block[SHA256_BLOCK_LEN];
    size_t block_len; /* bytes pending in block */
} sha256_ctx;

void sha256_init(sha256_ctx *ctx);
void sha256_update(sha256_ctx *ctx, const void *data, size_t len);
void sha256_final(sha256_ctx *ctx, uint8_t digest[SHA256_DIGEST_LEN]);
void sha256(const void *data, size_t len, uint8_t digest[SHA256_DIGEST_LEN]);

/* Lowercase hex of a digest into `hex` (SHA256_HEX_LEN + 1 bytes, NUL-terminated). */
void sha256_hex(const uint8_t digest[SHA256_DIGEST_LEN], char hex[SHA256_HEX_LEN + 1]);

/* Whether the SHA-NI path is available on this CPU. */
bool sha256_hardware_available(void);
/* Use (true) or avoid (false) the SHA-NI path, e.g. to test both; returns whether it is
 * now in use (false if the CPU lacks it). */
bool sha256_use_hardware(bool enable);

#endif
