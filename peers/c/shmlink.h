/*
 * shmlink.h - libshmlink, the C library of shmlink: zero-copy IPC over shared memory on
 * Linux (https://github.com/shmlink/shmlink).
 *
 * Processes hand each other sealed memory files ("regions") with small messages over
 * AF_UNIX SOCK_SEQPACKET sockets; the receiving side maps the same memory instead of
 * receiving a copy. libshmlink speaks the wire protocol of docs/PROTOCOL.md, version 1,
 * with the Node package and the Python, Go and Rust libraries, and mirrors the Node API:
 * the same operations, option names and error codes (docs/ERRORS.md).
 *
 * The first part of this header restates docs/PROTOCOL.md as C declarations (frame
 * kinds, flags, offsets, limits, the HELLO magic). Nothing in it is specific to this
 * library. The second part is the library's API.
 *
 * Conventions of the API:
 *  - Every function that can fail returns an enum shmlink_code: SHMLINK_OK (0) or one of
 *    the ERR_SHMLINK_* codes, and fills *err (when err is not NULL) with the code, the
 *    operation, the system call and errno that failed, and a message that says what to do.
 *  - Options structs are zero-initialised for the defaults; a NULL options pointer means
 *    the defaults too.
 *  - Timeouts that are function parameters follow poll(2): -1 waits as long as it takes,
 *    0 does not wait. Timeouts in options structs are 0 for "no limit".
 *  - Thread safety: every function may be called from any thread. One lock guards the
 *    library's state; it is released while a call waits for a socket. Two exceptions:
 *    shmlink_endpoint_free and shmlink_server_free must not race with any other call on
 *    that endpoint or server (use shmlink_endpoint_close to wake a blocked thread first).
 *
 * Build with pkg-config: cc prog.c $(pkg-config --cflags --libs shmlink)
 */
#ifndef SHMLINK_H
#define SHMLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(SHMLINK_BUILDING)
#define SHMLINK_API __attribute__((visibility("default")))
#else
#define SHMLINK_API
#endif

#define SHMLINK_VERSION_STRING "0.1.0"

/* ==================================================================================== */
/* Wire protocol (docs/PROTOCOL.md). All integers are unsigned little-endian, no padding. */
/* ==================================================================================== */

/* Frame kinds (PROTOCOL.md section 2, header field `kind`). */
enum shmlink_kind {
    SHMLINK_KIND_HELLO = 1,
    SHMLINK_KIND_MESSAGE = 2,
    SHMLINK_KIND_RELEASE = 3,
    SHMLINK_KIND_RING = 4, /* section 9: the sender's ring, one memory file attached */
    SHMLINK_KIND_WAKE = 5  /* section 9: the doorbell */
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

/* HELLO payload (section 3): 20 bytes. */
#define SHMLINK_HELLO_PAYLOAD_LEN 20u
#define SHMLINK_HELLO_OFF_MAGIC 0u         /* 8 bytes: "SHMLINK\0" */
#define SHMLINK_HELLO_OFF_VERSION 8u       /* u16 */
#define SHMLINK_HELLO_OFF_MAX_REGIONS 10u  /* u16 */
#define SHMLINK_HELLO_OFF_MAX_PAYLOAD 12u  /* u32 */
#define SHMLINK_HELLO_OFF_CAPABILITIES 16u /* u32: SHMLINK_CAP_* bits; unknown bits ignored */
#define SHMLINK_CAP_RING 0x1u              /* section 9: a ring per direction */
#define SHMLINK_HELLO_FRAME_SIZE (SHMLINK_HEADER_SIZE + SHMLINK_HELLO_PAYLOAD_LEN)

#define SHMLINK_MAGIC "SHMLINK" /* sizeof() == 8: the string's NUL is the magic's 0 byte */
#define SHMLINK_MAGIC_LEN 8u
#define SHMLINK_VERSION 2u

/* Ranges a HELLO may announce (section 3 rule 2). */
#define SHMLINK_MAX_REGIONS_MIN 1u
#define SHMLINK_MAX_REGIONS_MAX 253u /* SCM_MAX_FD of Linux */
#define SHMLINK_MAX_PAYLOAD_MAX 65536u

/* What shmlink announces by default (and every interop peer, peers/SCENARIO.md). */
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

/* ==================================================================================== */
/* Errors (docs/ERRORS.md, in its order)                                                 */
/* ==================================================================================== */

/*
 * One value per code of docs/ERRORS.md; shmlink_code_string() returns the exact string.
 * Test codes, never messages. A few codes describe conditions that cannot arise in C;
 * they are listed so that every code of every shmlink library has a value here.
 */
typedef enum shmlink_code {
    SHMLINK_OK = 0,
    SHMLINK_ERR_CLOSED,                /* closed here, or after a failure already reported */
    SHMLINK_ERR_PEER_CLOSED,           /* the peer closed the connection (end-of-file) */
    SHMLINK_ERR_PEER_REJECTED,         /* connect: the server fails the `server` filter */
    SHMLINK_ERR_WOULD_BLOCK,           /* connect: the listener's backlog is full (EAGAIN) */
    SHMLINK_ERR_TIMED_OUT,             /* a timeout ran out; the connection is intact */
    SHMLINK_ERR_PROTOCOL_VIOLATION,    /* the peer broke PROTOCOL.md; connection closed */
    SHMLINK_ERR_PEER_INCOMPATIBLE,     /* not a shmlink version-1 peer; connection closed */
    SHMLINK_ERR_LIMIT_EXCEEDED,        /* the peer went over a local limit; connection closed */
    SHMLINK_ERR_REGION_UNSEALED,       /* received file lacks the required seals */
    SHMLINK_ERR_REGION_SIZE_MISMATCH,  /* received file's size differs from its descriptor */
    SHMLINK_ERR_REGION_NOT_MEMFD,      /* the peer sent a pipe, socket or disk file */
    SHMLINK_ERR_REGION_NOT_SHMEM,      /* the peer sent a file not on shmem (hugetlbfs) */
    SHMLINK_ERR_REGION_WRITABLE,       /* a writable region from a peer not trusted with it */
    SHMLINK_ERR_REGION_TRANSFERRED,    /* the region was transferred and is not back */
    SHMLINK_ERR_REGION_FROZEN,         /* a write to a frozen region */
    SHMLINK_ERR_REGION_BUSY,           /* freeze while a peer maps the region writable */
    SHMLINK_ERR_REGION_CLOSED,         /* the region was closed */
    SHMLINK_ERR_REGION_TOO_LARGE,      /* never returned in C */
    SHMLINK_ERR_TOO_MANY_REGIONS,      /* more regions than the peer accepts; nothing sent */
    SHMLINK_ERR_PAYLOAD_TOO_LARGE,     /* payload over the peer's limit; nothing sent */
    SHMLINK_ERR_FDS_TRUNCATED,         /* the kernel dropped descriptors; connection closed */
    SHMLINK_ERR_INVALID_ARG,           /* a bad argument; inherited() without usable SHMLINK_FD */
    SHMLINK_ERR_ZERO_COPY_UNAVAILABLE, /* never returned in C */
    SHMLINK_ERR_UNSUPPORTED,           /* never returned: the library builds on Linux only */
    SHMLINK_ERR_RUNTIME,               /* never returned in C */
    SHMLINK_ERR_OS,                    /* another system call failed: see syscall, errnum */
    SHMLINK_ERR_BINARY_NOT_FOUND       /* never returned in C */
} shmlink_code;

#define SHMLINK_CODE_COUNT 28 /* SHMLINK_OK and the 27 codes */

/* "ERR_SHMLINK_CLOSED", ... for every code; "OK" for SHMLINK_OK; never NULL. */
SHMLINK_API const char *shmlink_code_string(shmlink_code code);

#define SHMLINK_MESSAGE_LEN 320

/* What a failed call reports. */
typedef struct shmlink_error {
    shmlink_code code;
    const char *op;      /* the operation, such as "shmlink_endpoint_send" (static) */
    const char *syscall; /* the system call that failed ("sendmsg"), or NULL (static) */
    int errnum;          /* its errno, or 0 */
    /* "op: syscall failed: ENAME (text); what happened and what to do" */
    char message[SHMLINK_MESSAGE_LEN];
} shmlink_error;

/* ==================================================================================== */
/* Regions                                                                               */
/* ==================================================================================== */

/*
 * A region: an anonymous memory file (memfd) sealed against shrinking and growing,
 * mapped into this process. The process holds one region object per memory file: a
 * region that comes back from a peer is the same shmlink_region pointer.
 *
 * Handles are reference counted. create gives the caller one reference; every region in
 * a received message is one reference owned by the message (shmlink_message_clear drops
 * it); shmlink_region_ref adds one; shmlink_region_unref drops one. The last reference
 * frees the object (and closes the region if it is still open).
 *
 * shmlink_region_close is Node's region.close(): it releases the memory file now and
 * tells peers (RELEASE) on every open connection that bound it, whoever holds references.
 */
typedef struct shmlink_region shmlink_region;

/* A new, zero-filled region of `size` (> 0) bytes, shared-mapped and writable. */
SHMLINK_API shmlink_code shmlink_region_create(uint64_t size, shmlink_region **out,
                                               shmlink_error *err);

/* Size in bytes (0 once closed). */
SHMLINK_API uint64_t shmlink_region_size(const shmlink_region *region);
/* Whether shmlink_region_freeze made the contents immutable for every process. */
SHMLINK_API bool shmlink_region_frozen(const shmlink_region *region);
/* Whether shmlink_region_close was called. */
SHMLINK_API bool shmlink_region_closed(const shmlink_region *region);
/* Whether the region was sent with transfer and has not come back (or been reclaimed), or
 * was given up: it came here with a transfer over a connection this side then ended. */
SHMLINK_API bool shmlink_region_transferred(const shmlink_region *region);

/*
 * Zero-copy access: *ptr and *size describe the mapping itself.
 *
 * Lifetime of the pointer: valid while you hold a reference to the region. Closing the
 * region does not unmap it: its contents are replaced, at the same address, by private
 * zero pages (stale pointers read zeros, writes go nowhere); the range is unmapped when
 * the last reference is dropped. Other rules:
 *  - while a peer can write the region, the memory changes under you: copy with
 *    shmlink_region_read before parsing untrusted data;
 *  - writes to a frozen region change a private copy that nobody else sees;
 *  - after a transfer the peer owns the memory: do not use old pointers until the region
 *    is back (this call fails with SHMLINK_ERR_REGION_TRANSFERRED meanwhile).
 */
SHMLINK_API shmlink_code shmlink_region_bytes(shmlink_region *region, void **ptr, size_t *size,
                                              shmlink_error *err);

/* Copies exactly `length` bytes at `offset` into dst (SHMLINK_ERR_INVALID_ARG if out of
 * range). For a frozen region: what the memory file holds, whatever was written to the
 * private mapping. */
SHMLINK_API shmlink_code shmlink_region_read(shmlink_region *region, uint64_t offset, void *dst,
                                             size_t length, shmlink_error *err);
/* Copies bytes at `offset` into dst, as many as fit in `capacity`; *copied says how many. */
SHMLINK_API shmlink_code shmlink_region_read_into(shmlink_region *region, uint64_t offset,
                                                  void *dst, size_t capacity, size_t *copied,
                                                  shmlink_error *err);
/* Copies `length` bytes from src into the region at `offset` (a memmove: src may be in any
 * region). SHMLINK_ERR_REGION_FROZEN for a frozen region. */
SHMLINK_API shmlink_code shmlink_region_write(shmlink_region *region, uint64_t offset,
                                              const void *src, size_t length, shmlink_error *err);

/*
 * Makes the contents immutable for every process (F_SEAL_WRITE | F_SEAL_SEAL). The mapping
 * is first replaced at the same address by a copy-on-write one, so pointers stay valid.
 * Freeze before sharing: SHMLINK_ERR_REGION_BUSY while a peer maps the region writable,
 * and the region stays as it was. Freezing a frozen region does nothing.
 */
SHMLINK_API shmlink_code shmlink_region_freeze(shmlink_region *region, shmlink_error *err);

/*
 * Takes back a region transferred over a connection the peer has since ended, to reuse it.
 * By docs/PROTOCOL.md section 6 the side that ends a connection gives up the regions
 * transferred to it over that connection (they become "transferred" there), and the other
 * side may take back what it transferred. SHMLINK_ERR_REGION_TRANSFERRED while that
 * connection is open, when this side ended it, and for a region given up. A region that is
 * here is left as it is.
 */
SHMLINK_API shmlink_code shmlink_region_reclaim(shmlink_region *region, shmlink_error *err);

/* Lets go of the region now (see above). Idempotent. */
SHMLINK_API void shmlink_region_close(shmlink_region *region);

/* Adds a reference; returns `region`. */
SHMLINK_API shmlink_region *shmlink_region_ref(shmlink_region *region);
/* Drops a reference. NULL is a no-op. */
SHMLINK_API void shmlink_region_unref(shmlink_region *region);

/* ==================================================================================== */
/* Endpoints                                                                             */
/* ==================================================================================== */

typedef struct shmlink_endpoint shmlink_endpoint;
typedef struct shmlink_server shmlink_server;

/* What a peer may send and make this side hold (docs/SECURITY.md); 0 = the default. */
typedef struct shmlink_limits {
    uint32_t max_regions;       /* per message, 1..253, default 32; announced in HELLO */
    uint32_t max_payload;       /* per message, up to 65536 (the default); announced */
    uint64_t max_region_size;   /* default 16 GiB */
    uint32_t max_bound_regions; /* the peer's regions bound at once, default 1024 */
    uint64_t max_mapped_bytes;  /* bytes of the peer's regions mapped, default 16 GiB */
} shmlink_limits;

/* Which peers to accept, by the credentials the kernel recorded (SO_PEERCRED). */
typedef enum shmlink_peer_kind {
    SHMLINK_PEER_SAME_USER = 0, /* this process's effective uid, or root (the default) */
    SHMLINK_PEER_ANY_USER,      /* anyone: say so explicitly */
    SHMLINK_PEER_UIDS           /* exactly these uids (root not implied) */
} shmlink_peer_kind;

typedef struct shmlink_peer_filter {
    shmlink_peer_kind kind;
    const uint32_t *uids; /* SHMLINK_PEER_UIDS: uid_count uids (copied) */
    size_t uid_count;
} shmlink_peer_filter;

/* For pair, from_fd and inherited: a peer this process started (or its parent). */
typedef struct shmlink_endpoint_options {
    /* Refuse regions the peer can still write (Node's acceptWritable: false). The zero
     * value keeps Node's default for these endpoints: writable regions accepted. */
    bool frozen_only;
    shmlink_limits limits;
} shmlink_endpoint_options;

typedef struct shmlink_connect_options {
    shmlink_peer_filter server; /* who must be serving; default same user */
    bool accept_writable;       /* accept regions the server can still write; default false */
    shmlink_limits limits;
    unsigned timeout_ms; /* how long to wait for the server's HELLO; 0: no limit */
} shmlink_connect_options;

typedef struct shmlink_listen_options {
    shmlink_peer_filter allow; /* who may connect (checked before reading); default same user */
    bool accept_writable;      /* accept regions clients can still write; default false */
    shmlink_limits limits;
    uint32_t max_pending; /* accepted connections waiting for accept; default 64 */
    uint32_t backlog;     /* the kernel's queue (listen(2)); default 128 */
} shmlink_listen_options;

/* A connected pair (socketpair(2)), for threads or a child you start yourself (pass one
 * end's fd down and call shmlink_endpoint_from_fd there). The second end resolves regions
 * on its own, as another process would. */
SHMLINK_API shmlink_code shmlink_endpoint_pair(const shmlink_endpoint_options *options,
                                               shmlink_endpoint **a, shmlink_endpoint **b,
                                               shmlink_error *err);

/* Connects to a listening server at `path` (a leading '@' or NUL byte names a Linux
 * abstract socket), checks its credentials against options->server before sending
 * anything, sends this side's HELLO and waits for the server's. */
SHMLINK_API shmlink_code shmlink_endpoint_connect(const char *path,
                                                  const shmlink_connect_options *options,
                                                  shmlink_endpoint **out, shmlink_error *err);

/* Listens at `path` with a socket file of mode 0600 (a stale file nobody listens on is
 * replaced). An abstract name can be reached by any local user: keep `allow`'s default. */
SHMLINK_API shmlink_code shmlink_endpoint_listen(const char *path,
                                                 const shmlink_listen_options *options,
                                                 shmlink_server **out, shmlink_error *err);

/*
 * The endpoint a parent passed down: the descriptor number in the environment variable
 * SHMLINK_FD, as Node's spawnWithEndpoint sets it. Do not assume fd 3: with 'ipc' in a
 * Node parent's stdio the socket is fd 4. SHMLINK_ERR_INVALID_ARG when SHMLINK_FD is
 * unset, not a number, or not the socket (the message says what it found; a wrapper
 * program between the parent and this process is the usual cause). On success the
 * variable is removed from the environment (unsetenv: call this before starting threads
 * that read the environment).
 */
SHMLINK_API shmlink_code shmlink_endpoint_inherited(const shmlink_endpoint_options *options,
                                                    shmlink_endpoint **out, shmlink_error *err);

/* Takes over fd, a connected AF_UNIX SOCK_SEQPACKET socket; makes it non-blocking and
 * close-on-exec. On success the endpoint owns fd; on failure fd is left as it was. */
SHMLINK_API shmlink_code shmlink_endpoint_from_fd(int fd, const shmlink_endpoint_options *options,
                                                  shmlink_endpoint **out, shmlink_error *err);

/* Accepts the next connection, waiting up to timeout_ms (-1: as long as it takes). Each
 * call first accepts what the kernel has queued (up to max_pending), checks each client
 * against `allow` (refused ones are shut down unread) and sends it this side's HELLO;
 * nothing is read from a client before this returns it. */
SHMLINK_API shmlink_code shmlink_server_accept(shmlink_server *server, int timeout_ms,
                                               shmlink_endpoint **out, shmlink_error *err);
/* The listening socket, for poll(2): readable when a client waits. */
SHMLINK_API int shmlink_server_fd(const shmlink_server *server);
SHMLINK_API const char *shmlink_server_path(const shmlink_server *server);
/* Connections refused by `allow` so far. */
SHMLINK_API uint64_t shmlink_server_rejected(const shmlink_server *server);
/* Stops listening, removes the socket file (if still this server's), closes connections
 * not yet accepted; waiting accepts return SHMLINK_ERR_CLOSED. Idempotent. */
SHMLINK_API void shmlink_server_close(shmlink_server *server);
/* Closes and frees. NULL is a no-op. */
SHMLINK_API void shmlink_server_free(shmlink_server *server);

/* What a received region's descriptor said (docs/PROTOCOL.md section 2). */
typedef struct shmlink_descriptor {
    uint32_t id;      /* the sender's id for it on this connection */
    bool is_new;      /* its file descriptor came with this message */
    bool frozen;      /* the region is frozen */
    bool transferred; /* the sender gave up access to it */
} shmlink_descriptor;

/* A received message; zero-initialise it (SHMLINK_MESSAGE_INIT) before the first receive. */
typedef struct shmlink_message {
    uint8_t *payload; /* payload_len bytes, owned by the message */
    size_t payload_len;
    shmlink_region **regions; /* region_count regions in the sender's order, one reference each */
    shmlink_descriptor *descriptors; /* one per region */
    size_t region_count;
    size_t payload_capacity_; /* private: kept allocations for the next receive */
    size_t region_capacity_;
} shmlink_message;

#define SHMLINK_MESSAGE_INIT { 0 }

/* Drops the message's region references and frees its memory. Safe to call twice. */
SHMLINK_API void shmlink_message_clear(shmlink_message *message);

typedef struct shmlink_send_options {
    shmlink_region *const *regions; /* attached in this order; both sides keep access */
    size_t region_count;
    /* Handed over: unusable here until the peer sends them back. A region also in
     * `regions` keeps its place there (and is transferred); the others follow in this
     * order. A transferred region is attached once. */
    shmlink_region *const *transfer;
    size_t transfer_count;
    unsigned timeout_ms; /* how long to wait for room in the socket; 0: no limit */
} shmlink_send_options;

/*
 * Sends `payload` (at most the peer's limit, 64 KiB by default) with regions attached,
 * waiting for the peer's HELLO and for room. A region's memory file travels only the first
 * time this connection sees it; later messages carry its id. A send refused for the
 * message itself (PAYLOAD_TOO_LARGE, TOO_MANY_REGIONS, REGION_CLOSED, REGION_TRANSFERRED,
 * INVALID_ARG) or that timed out changes nothing; after PEER_CLOSED or another failure the
 * connection is over. Sending is a release: writes to a region before the send are what
 * the peer reads after its receive.
 */
SHMLINK_API shmlink_code shmlink_endpoint_send(shmlink_endpoint *ep, const void *payload,
                                               size_t payload_len,
                                               const shmlink_send_options *options,
                                               shmlink_error *err);

/*
 * Receives the next message into *message (its previous contents are cleared first),
 * waiting up to timeout_ms (-1: as long as it takes; 0: only a message already there).
 * RELEASE frames and the peer's HELLO are handled on the way. SHMLINK_ERR_PEER_CLOSED at
 * the end of the conversation; SHMLINK_ERR_TIMED_OUT leaves the connection intact. Any
 * refusal of PROTOCOL.md section 7 closes every descriptor of the record, shuts the socket
 * down and ends the connection; later calls return SHMLINK_ERR_CLOSED.
 */
SHMLINK_API shmlink_code shmlink_endpoint_recv(shmlink_endpoint *ep, shmlink_message *message,
                                               int timeout_ms, shmlink_error *err);

/* Tells the peer this side will not refer to `region` again (RELEASE); the next send of it
 * passes its descriptor anew. Nothing for a region the peer does not have bound. */
SHMLINK_API void shmlink_endpoint_release(shmlink_endpoint *ep, shmlink_region *region);

/* Closes the connection: the peer sees end-of-file; threads blocked in send or receive
 * return SHMLINK_ERR_CLOSED; the peer's regions are unbound (those still referenced stay
 * valid). The handle stays valid until shmlink_endpoint_free. Idempotent. */
SHMLINK_API void shmlink_endpoint_close(shmlink_endpoint *ep);
/* Closes and frees the endpoint and its socket. NULL is a no-op. */
SHMLINK_API void shmlink_endpoint_free(shmlink_endpoint *ep);

typedef struct shmlink_peer_credentials {
    int32_t pid; /* at connect time; for a socketpair, its creator */
    uint32_t uid;
    uint32_t gid;
} shmlink_peer_credentials;

/* The peer's credentials (SO_PEERCRED). */
SHMLINK_API shmlink_code shmlink_endpoint_peer(shmlink_endpoint *ep, shmlink_peer_credentials *out,
                                               shmlink_error *err);

/* This side's id for `region` while the peer has it bound (the id the peer sees). */
SHMLINK_API bool shmlink_endpoint_region_id(shmlink_endpoint *ep, const shmlink_region *region,
                                            uint32_t *id);

typedef struct shmlink_endpoint_stats {
    uint64_t messages_out, bytes_out, messages_in, bytes_in;
    uint64_t own_regions;       /* this side's regions the peer has bound */
    uint64_t peer_regions;      /* the peer's regions bound on this connection */
    uint64_t peer_mapped_bytes; /* bytes of distinct regions the peer's bindings hold */
    uint64_t queued;            /* sends waiting for the handshake or for room */
    uint64_t inbox;             /* always 0: records are read when a receive asks */
    shmlink_limits limits;      /* the limits in force */
} shmlink_endpoint_stats;

SHMLINK_API void shmlink_endpoint_stats_get(shmlink_endpoint *ep, shmlink_endpoint_stats *out);
SHMLINK_API uint64_t shmlink_endpoint_id(const shmlink_endpoint *ep);
/* The socket's descriptor (for poll(2); do not read or write it); -1 once closed. */
SHMLINK_API int shmlink_endpoint_fd(shmlink_endpoint *ep);
/* Whether the connection is over (closed here, by the peer, or after a failure). */
SHMLINK_API bool shmlink_endpoint_closed(shmlink_endpoint *ep);

/* What all peers together may make this process map (docs/SECURITY.md). */
typedef struct shmlink_process_limits {
    uint64_t max_mapped_bytes; /* default 64 GiB */
    uint64_t max_regions;      /* default 16384 */
} shmlink_process_limits;

typedef struct shmlink_process_stats {
    uint64_t max_mapped_bytes, max_regions; /* the limits */
    uint64_t mapped_bytes, regions;         /* what received regions use now */
} shmlink_process_stats;

SHMLINK_API void shmlink_process_stats_get(shmlink_process_stats *out);
SHMLINK_API shmlink_code shmlink_set_process_limits(const shmlink_process_limits *limits,
                                                    shmlink_error *err);

#ifdef __cplusplus
}
#endif

#endif /* SHMLINK_H */
