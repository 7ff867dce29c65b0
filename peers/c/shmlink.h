/*
 * shmlink.h - C peer of the shmlink wire protocol, version 1.
 *
 * The first half of this header restates docs/PROTOCOL.md as C declarations: frame kinds,
 * flags, field offsets and sizes, limits, the HELLO magic and version, and the error codes
 * of PROTOCOL.md section 7. Nothing in it is specific to this implementation.
 *
 * The second half is the API of libshmlink: sealed memfd regions and endpoints that
 * exchange them over AF_UNIX SOCK_SEQPACKET sockets.
 *
 * Threading: the library keeps one process-wide registry of live regions (to recognise a
 * region that comes back from a peer, PROTOCOL.md section 5.2 rule 5). It is therefore not
 * thread-safe: call it from one thread, or serialise all calls with one lock.
 */
#ifndef SHMLINK_H
#define SHMLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------ */
/* Wire protocol (PROTOCOL.md). All integers are unsigned little-endian, no padding.      */
/* ------------------------------------------------------------------------------------ */

/* Frame kinds (PROTOCOL.md section 2, header field `kind`). */
enum shmlink_kind {
    SHMLINK_KIND_HELLO = 1,
    SHMLINK_KIND_MESSAGE = 2,
    SHMLINK_KIND_RELEASE = 3
};

/* Frame header: 8 bytes. */
#define SHMLINK_HEADER_SIZE 8u
#define SHMLINK_HEADER_OFF_KIND 0u         /* u8  */
#define SHMLINK_HEADER_OFF_FLAGS 1u        /* u8, reserved, MUST be 0 */
#define SHMLINK_HEADER_OFF_REGION_COUNT 2u /* u16 */
#define SHMLINK_HEADER_OFF_PAYLOAD_LEN 4u  /* u32 */

/* Region descriptor: 16 bytes, `region_count` of them follow the header. */
#define SHMLINK_DESC_SIZE 16u
#define SHMLINK_DESC_OFF_ID 0u    /* u32, sender's namespace, never 0 */
#define SHMLINK_DESC_OFF_FLAGS 4u /* u32 */
#define SHMLINK_DESC_OFF_SIZE 8u  /* u64, never 0 */

/* Descriptor flags (section 2); every other bit MUST be 0. */
#define SHMLINK_DESC_NEW 0x1u      /* binds the id; a file descriptor travels with it */
#define SHMLINK_DESC_FROZEN 0x2u   /* the region carries F_SEAL_WRITE */
#define SHMLINK_DESC_TRANSFER 0x4u /* the sender gives up access until it comes back */
#define SHMLINK_DESC_KNOWN_FLAGS (SHMLINK_DESC_NEW | SHMLINK_DESC_FROZEN | SHMLINK_DESC_TRANSFER)

/* HELLO payload (section 3): 16 bytes. */
#define SHMLINK_HELLO_PAYLOAD_LEN 16u
#define SHMLINK_HELLO_OFF_MAGIC 0u        /* 8 bytes: "SHMLINK\0" */
#define SHMLINK_HELLO_OFF_VERSION 8u      /* u16 */
#define SHMLINK_HELLO_OFF_MAX_REGIONS 10u /* u16 */
#define SHMLINK_HELLO_OFF_MAX_PAYLOAD 12u /* u32 */
#define SHMLINK_HELLO_FRAME_SIZE (SHMLINK_HEADER_SIZE + SHMLINK_HELLO_PAYLOAD_LEN)

#define SHMLINK_MAGIC "SHMLINK" /* sizeof() == 8: the string's NUL is the magic's 0 byte */
#define SHMLINK_MAGIC_LEN 8u
#define SHMLINK_VERSION 1u

/* Ranges a HELLO may announce (section 3 rule 2). */
#define SHMLINK_MAX_REGIONS_MIN 1u
#define SHMLINK_MAX_REGIONS_MAX 253u /* SCM_MAX_FD of Linux */
#define SHMLINK_MAX_PAYLOAD_MAX 65536u

/* What every interop peer announces (peers/SCENARIO.md). */
#define SHMLINK_DEFAULT_MAX_REGIONS 32u
#define SHMLINK_DEFAULT_MAX_PAYLOAD 65536u

/* Record length of a frame with `rc` descriptors and `pl` payload bytes (section 2). */
#define SHMLINK_FRAME_SIZE(rc, pl) \
    ((uint64_t)SHMLINK_HEADER_SIZE + (uint64_t)SHMLINK_DESC_SIZE * (uint64_t)(rc) + (uint64_t)(pl))
#define SHMLINK_MAX_FRAME_SIZE SHMLINK_FRAME_SIZE(SHMLINK_MAX_REGIONS_MAX, SHMLINK_MAX_PAYLOAD_MAX)

/* Little-endian field access; frames are byte arrays, never cast to structs. */
static inline uint16_t shmlink_get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}
static inline uint32_t shmlink_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t shmlink_get_le64(const uint8_t *p)
{
    return (uint64_t)shmlink_get_le32(p) | (uint64_t)shmlink_get_le32(p + sizeof(uint32_t)) << 32;
}
static inline void shmlink_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void shmlink_put_le32(uint8_t *p, uint32_t v)
{
    for (unsigned i = 0; i < sizeof v; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void shmlink_put_le64(uint8_t *p, uint64_t v)
{
    shmlink_put_le32(p, (uint32_t)v);
    shmlink_put_le32(p + sizeof(uint32_t), (uint32_t)(v >> 32));
}

/* ------------------------------------------------------------------------------------ */
/* Errors                                                                                */
/* ------------------------------------------------------------------------------------ */

/*
 * The first seven codes are the failure classes of PROTOCOL.md section 7 plus end-of-file;
 * shmlink_error_code() returns their ERR_SHMLINK_* names. The others are local conditions
 * of this implementation (bad arguments, system errors); their names are this library's.
 */
typedef enum shmlink_error {
    SHMLINK_OK = 0,
    SHMLINK_E_PROTOCOL_VIOLATION,   /* ERR_SHMLINK_PROTOCOL_VIOLATION   */
    SHMLINK_E_PEER_INCOMPATIBLE,    /* ERR_SHMLINK_PEER_INCOMPATIBLE    */
    SHMLINK_E_REGION_NOT_MEMFD,     /* ERR_SHMLINK_REGION_NOT_MEMFD     */
    SHMLINK_E_REGION_UNSEALED,      /* ERR_SHMLINK_REGION_UNSEALED      */
    SHMLINK_E_REGION_SIZE_MISMATCH, /* ERR_SHMLINK_REGION_SIZE_MISMATCH */
    SHMLINK_E_FDS_TRUNCATED,        /* ERR_SHMLINK_FDS_TRUNCATED        */
    SHMLINK_E_PEER_CLOSED,          /* ERR_SHMLINK_PEER_CLOSED: end-of-file */
    /* Local conditions. */
    SHMLINK_E_CLOSED,             /* the connection already failed or ended */
    SHMLINK_E_TIMEOUT,            /* a socket operation exceeded the endpoint's timeout */
    SHMLINK_E_INVALID_ARGUMENT,   /* bad argument, or an operation the state forbids */
    SHMLINK_E_LIMIT_EXCEEDED,     /* more regions/payload than the peer accepts */
    SHMLINK_E_REGION_TRANSFERRED, /* the region was sent with TRANSFER and is not back yet */
    SHMLINK_E_REGION_FROZEN,      /* writing or freezing a frozen region */
    SHMLINK_E_NO_MEMORY,
    SHMLINK_E_SYSTEM /* a system call failed; errno is preserved where possible */
} shmlink_error;

/* "ERR_SHMLINK_..." for every code; never NULL. */
const char *shmlink_error_code(shmlink_error err);

/* ------------------------------------------------------------------------------------ */
/* Regions                                                                               */
/* ------------------------------------------------------------------------------------ */

/*
 * A region is one sealed memfd plus its mapping, reference-counted.
 *
 * Ownership: every function that returns a region (create, map, shmlink_region_ref, a
 * received message) gives the caller one reference, which the caller gives back with
 * shmlink_region_unmap(). An endpoint keeps its own references while a region is bound
 * on it (sent by us and not yet released, or received from the peer), so a region stays
 * mapped as long as any holder needs it; the last unmap unmaps it and closes its fd.
 */
typedef struct shmlink_region shmlink_region;

/* Create a writable region of `size` bytes (> 0), sealed against shrink and grow. */
shmlink_error shmlink_region_create(uint64_t size, shmlink_region **out);

/*
 * Freeze: add F_SEAL_WRITE | F_SEAL_SEAL. Only before the region is first sent (the kernel
 * refuses the write seal while anyone maps it shared-writable). The mapping moves: the old
 * writable pointer is invalid afterwards and shmlink_region_bytes() returns the new,
 * read-only (MAP_PRIVATE) one.
 */
shmlink_error shmlink_region_freeze(shmlink_region *region);

/*
 * Import a file descriptor received out of band, with every check of PROTOCOL.md
 * section 5.3 (steps 1-6). Takes ownership of `fd` in every case: it is kept by the new
 * region, or closed (on failure, or when the file is already known to this process, in
 * which case the existing region is returned with one more reference).
 */
shmlink_error shmlink_region_map(int fd, uint64_t size, bool frozen, shmlink_region **out);

/* Add a reference; returns `region`. */
shmlink_region *shmlink_region_ref(shmlink_region *region);

/* Drop one reference; the last one unmaps the region and closes its fd. NULL is a no-op. */
void shmlink_region_unmap(shmlink_region *region);

uint64_t shmlink_region_size(const shmlink_region *region);
bool shmlink_region_is_frozen(const shmlink_region *region);
/* True from a send with TRANSFER until the region is received back (section 5.2 rule 7). */
bool shmlink_region_is_transferred(const shmlink_region *region);

/*
 * The mapped bytes. NULL while the region is transferred away: the protocol forbids
 * touching it then. A pointer obtained earlier stays mapped but MUST NOT be used until
 * the region comes back. mut_bytes is also NULL for a frozen region.
 */
const uint8_t *shmlink_region_bytes(const shmlink_region *region);
uint8_t *shmlink_region_mut_bytes(shmlink_region *region);

/* The region's fd (borrowed: do not close) and its file identity from fstat(2). */
int shmlink_region_fd(const shmlink_region *region);
void shmlink_region_file_id(const shmlink_region *region, dev_t *dev, ino_t *ino);

/* ------------------------------------------------------------------------------------ */
/* Endpoints                                                                             */
/* ------------------------------------------------------------------------------------ */

typedef struct shmlink_endpoint shmlink_endpoint;

typedef struct shmlink_options {
    uint16_t max_regions; /* announced in our HELLO; SHMLINK_MAX_REGIONS_MIN..._MAX */
    uint32_t max_payload; /* announced in our HELLO; 0..SHMLINK_MAX_PAYLOAD_MAX */
    unsigned timeout_ms;  /* SO_RCVTIMEO/SO_SNDTIMEO on the socket; 0 = wait forever */
} shmlink_options;

/* 32 regions, 65536 payload bytes, no timeout. */
#define SHMLINK_OPTIONS_DEFAULT \
    ((shmlink_options){ SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_DEFAULT_MAX_PAYLOAD, 0 })

/*
 * Connect a SOCK_SEQPACKET|SOCK_CLOEXEC socket to `path` ("@name" = Linux abstract name).
 * Returns the connected fd, or -1 with errno set. No protocol traffic.
 */
int shmlink_socket_connect(const char *path);

/*
 * Wrap a connected AF_UNIX SOCK_SEQPACKET socket and send our HELLO at once. Takes
 * ownership of `fd` (closed on failure too). `options` may be NULL for the defaults.
 */
shmlink_error shmlink_endpoint_open(int fd, const shmlink_options *options, shmlink_endpoint **out);

/* shmlink_socket_connect() + shmlink_endpoint_open(). */
shmlink_error shmlink_connect(const char *path, const shmlink_options *options,
                              shmlink_endpoint **out);

/* One region to attach to a MESSAGE. */
typedef struct shmlink_attachment {
    shmlink_region *region; /* borrowed; the endpoint takes its own reference if it binds it */
    bool transfer;          /* set TRANSFER: we give up access until the region returns */
} shmlink_attachment;

/*
 * Send one MESSAGE. Waits for the peer's HELLO first if it has not arrived (section 3
 * rule 4). A region not bound on this endpoint yet goes with NEW and its fd, later ones
 * by id. Local refusals (SHMLINK_E_LIMIT_EXCEEDED, _INVALID_ARGUMENT, _REGION_TRANSFERRED)
 * leave the connection usable; a failed sendmsg fails the connection.
 */
shmlink_error shmlink_send(shmlink_endpoint *ep, const void *payload, size_t payload_len,
                           const shmlink_attachment *attachments, size_t count);

/* Send RELEASE for a region bound by us on this endpoint and drop our binding of it. */
shmlink_error shmlink_release(shmlink_endpoint *ep, shmlink_region *region);

typedef struct shmlink_received_region {
    shmlink_region *region; /* one reference owned by the message */
    uint32_t id;            /* as in the descriptor: the peer's namespace */
    uint32_t flags;         /* SHMLINK_DESC_* as in the descriptor */
} shmlink_received_region;

typedef struct shmlink_message {
    /* Borrowed from the endpoint: valid until the next shmlink_recv or shmlink_close. */
    const uint8_t *payload;
    size_t payload_len;
    size_t region_count;
    shmlink_received_region regions[SHMLINK_MAX_REGIONS_MAX];
} shmlink_message;

/*
 * Receive the next MESSAGE (HELLO and RELEASE frames are handled internally). `msg` must
 * be zero-initialised or previously used: its old region references are dropped first.
 * Any refusal of PROTOCOL.md section 7 fails the connection: the record's fds are closed,
 * the socket is shut down, both binding tables are dropped, and the class is returned
 * once; later calls return SHMLINK_E_CLOSED. End-of-file returns SHMLINK_E_PEER_CLOSED.
 */
shmlink_error shmlink_recv(shmlink_endpoint *ep, shmlink_message *msg);

/* Drop the message's region references; safe to call twice. */
void shmlink_message_clear(shmlink_message *msg);

/* A human-readable reason for the endpoint's last error ("" if none). */
const char *shmlink_endpoint_detail(const shmlink_endpoint *ep);

/* Close the socket, drop both binding tables, free the endpoint. NULL is a no-op. */
void shmlink_close(shmlink_endpoint *ep);

#ifdef __cplusplus
}
#endif

#endif /* SHMLINK_H */
