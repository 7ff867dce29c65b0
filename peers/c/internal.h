/*
 * internal.h - what the files of libshmlink share; not installed.
 *
 *   error.c    codes, filling shmlink_error
 *   sys.c      every system call: memfds, seals, mappings, sockets
 *   region.c   regions, the registry of memory files, the process limits
 *   session.c  the protocol state of one connection, without I/O: frames in, frames and
 *              messages out, binding tables, the receiver's checks and policy
 *   endpoint.c endpoints and servers: move records between sockets and sessions
 *
 * Locking: one process-wide mutex (shmlink_lock) guards all library state. Every public
 * function takes it; functions named *_locked expect it held. It is released only while a
 * call waits in poll(2).
 */
#ifndef SHMLINK_INTERNAL_H
#define SHMLINK_INTERNAL_H

#include "shmlink.h"

#include <stdarg.h>
#include <sys/types.h>

/* ---- locking --------------------------------------------------------------------- */

void shmlink_lock(void);
void shmlink_unlock(void);

/* ---- errors (error.c) ------------------------------------------------------------ */

/* Fills *err (if not NULL) and returns code. */
__attribute__((format(printf, 4, 5))) shmlink_code set_error(shmlink_error *err, shmlink_code code,
                                                             const char *op, const char *fmt, ...);
/* A failed system call: errnum is kept; the message is "op: syscall failed: ENAME (text);
 * advice". */
__attribute__((format(printf, 6, 7))) shmlink_code set_sys_error(shmlink_error *err,
                                                                 shmlink_code code, const char *op,
                                                                 const char *syscall, int errnum,
                                                                 const char *fmt, ...);
/* Copies src into *dst, reported for operation op. */
shmlink_code copy_error(shmlink_error *dst, const shmlink_error *src, const char *op);
const char *errno_name(int errnum);

/* ---- system calls (sys.c) -------------------------------------------------------- */

typedef struct file_id {
    uint64_t dev, ino;
} file_id;

typedef struct file_info {
    bool regular;
    bool on_shmem; /* fstatfs says TMPFS_MAGIC (asked of regular files only) */
    int64_t size;
    file_id id;
} file_info;

typedef struct seal_set {
    bool sealable; /* F_GET_SEALS answered: a memory file */
    bool shrink, grow, write, future_write;
} seal_set;

void close_fd(int fd);
shmlink_code sys_create_memfd(uint64_t size, int *fd, shmlink_error *err, const char *op);
shmlink_code sys_file_info(int fd, file_info *info, shmlink_error *err, const char *op);
shmlink_code sys_seals(int fd, seal_set *seals, shmlink_error *err, const char *op);
shmlink_code sys_seal_contents(int fd, shmlink_error *err, const char *op);
shmlink_code sys_map(int fd, uint64_t size, bool frozen, void **base, shmlink_error *err,
                     const char *op);
bool sys_remap(void *base, uint64_t size, int fd, bool private_map);
bool sys_discard(void *base, uint64_t size);
void sys_unmap(void *base, uint64_t size);
shmlink_code sys_pread(int fd, uint64_t offset, void *dst, size_t len, shmlink_error *err,
                       const char *op);

shmlink_code sys_socketpair(int fds[2], shmlink_error *err, const char *op);
shmlink_code sys_connect(const char *path, int *fd, shmlink_error *err, const char *op);
shmlink_code sys_listen(const char *path, int backlog, int *fd, bool *has_file, file_id *file,
                        shmlink_error *err, const char *op);
void sys_remove_if_same(const char *path, bool has_file, const file_id *file);
/* accept4, non-blocking and close-on-exec; -1 with errno (EAGAIN when none waits). */
int sys_accept(int lfd);
shmlink_code sys_peer_credentials(int fd, shmlink_peer_credentials *out, shmlink_error *err,
                                  const char *op);
/* Checks that fd is an open, connected AF_UNIX SOCK_SEQPACKET socket above 2, and makes it
 * non-blocking and close-on-exec; SHMLINK_ERR_INVALID_ARG says what it is instead. */
shmlink_code sys_claim_socket(int fd, shmlink_error *err, const char *op);
void sys_shutdown(int fd);
uid_t sys_euid(void);
/* poll(2) one descriptor for `events` up to timeout_ms (-1: forever); false on timeout. */
bool sys_wait(int fd, short events, int timeout_ms);
/* Milliseconds left until deadline_ms (CLOCK_MONOTONIC), -1 for no deadline, 0 if over. */
int64_t now_ms(void);
int remaining_ms(int64_t deadline_ms);

/* One recvmsg into buf with room for exactly max_fds descriptors (CMSG_LEN, not
 * CMSG_SPACE: PROTOCOL.md section 5.4 rule 3). Every descriptor that arrived is appended
 * to fds. Returns the length, or -1 with errno (ECONNRESET is retried). */
typedef struct received {
    size_t len;
    bool data_truncated;    /* MSG_TRUNC */
    bool control_truncated; /* MSG_CTRUNC */
} received;
int sys_recv_record(int fd, uint8_t *buf, size_t cap, unsigned max_fds, int *fds, size_t *nfds,
                    received *out);
/* One sendmsg of head + payload with fds in one SCM_RIGHTS message, MSG_NOSIGNAL. Returns
 * 0, or the errno. */
int sys_send_record(int fd, const uint8_t *head, size_t head_len, const void *payload,
                    size_t payload_len, const int *fds, size_t nfds);

/* ---- regions (region.c) ---------------------------------------------------------- */

/* A region's memory file, shared by the region and by the connections that keep it while
 * the peer has it bound. */
typedef struct memfile {
    int fd;
    unsigned long refs;
} memfile;

memfile *memfile_new(int fd);
memfile *memfile_ref(memfile *f);
void memfile_unref(memfile *f);

/* How a connection ended, as the regions transferred over it need to know
 * (docs/PROTOCOL.md section 6, MEMORY-MODEL.md 5.1): the side that ends a connection gives
 * up the regions transferred to it over that connection, and the other side may take back
 * the regions it transferred. Shared by the session and those regions. */
typedef enum fate_state { FATE_OPEN, FATE_ENDED_BY_PEER, FATE_ENDED_HERE } fate_state;

typedef struct fate {
    fate_state state;
    unsigned long refs;
} fate;

fate *fate_new(void);
fate *fate_ref(fate *f);
void fate_unref(fate *f);

/* Where a region is, as far as this process is concerned. */
typedef enum custody {
    CUSTODY_HERE,    /* this process may use it */
    CUSTODY_AWAY,    /* transferred to a peer: back with any frame that brings it, or reclaim */
    CUSTODY_GIVEN_UP /* transferred here over a connection this side then ended: its sender's */
} custody;

struct shmlink_region {
    uint64_t serial; /* never reused: the key of own-namespace tables */
    uint64_t size;
    file_id id;
    uint64_t realm;
    unsigned long refs;
    memfile *file; /* NULL once closed */
    void *base;    /* NULL once unmapped */
    bool lent;     /* bytes() handed out the pointer: unmapped only with the last reference */
    bool frozen, closed;
    bool away;       /* custody != CUSTODY_HERE */
    custody custody;
    fate *over;      /* away: the connection it was transferred over */
    fate *via;       /* here: the connection it last arrived over with a transfer */
    uint64_t charge;    /* bytes counted against the process limits */
    bool charged;
    /* Endpoints that bound it in their namespace (told when it closes). */
    shmlink_endpoint **binders;
    size_t nbinders, binders_cap;
    shmlink_region *prev, *next; /* the registry */
};

/* Realm 0 is the process; the second end of a pair gets a realm of its own. */
uint64_t unique_realm(void);
/* A new region of one reference around file (taken) and its mapping. NULL if out of memory
 * (the caller still owns file and mapping). */
shmlink_region *region_new_locked(memfile *file, void *base, uint64_t size, file_id id,
                                  uint64_t realm, bool frozen, uint64_t charge);
shmlink_region *region_lookup_locked(uint64_t realm, file_id id, bool frozen);
shmlink_region *region_ref_locked(shmlink_region *r);
void region_unref_locked(shmlink_region *r);
void region_close_locked(shmlink_region *r);
/* SHMLINK_OK unless closed (REGION_CLOSED) or away (REGION_TRANSFERRED). */
shmlink_code region_check_usable(const shmlink_region *r, shmlink_error *err, const char *op);
bool region_add_binder_locked(shmlink_region *r, shmlink_endpoint *ep);
void region_remove_binder_locked(shmlink_region *r, shmlink_endpoint *ep);
void region_send_away_locked(shmlink_region *r, fate *over);
/* A frame brought the region over `via`; with `transferred`, this side gives it up again if
 * it ends that connection before passing the region on. */
void region_arrive_locked(shmlink_region *r, fate *via, bool transferred);
/* This side ended the connection `via`: every region that came over it with a transfer and
 * is still here goes back to its sender (access refused from now on). */
void regions_give_up_from_locked(fate *via);

/* The process limits: reserve counts a received region against them. */
shmlink_code process_reserve_locked(uint64_t size, shmlink_error *err);
void process_unreserve_locked(uint64_t size);

/* ---- endpoints (endpoint.c) ------------------------------------------------------- */

/* A region ep bound was closed: forget it and tell the peer (RELEASE). */
void endpoint_region_closed_locked(shmlink_endpoint *ep, shmlink_region *r);

/* ---- the session (session.c) ----------------------------------------------------- */

/* A binding table: open addressing keyed by a u64. */
typedef struct binding {
    uint64_t key;
    uint32_t id;
    shmlink_region *region; /* NULL: empty slot; one reference */
    memfile *file;          /* peer bindings: the file, kept while bound */
} binding;

typedef struct table {
    binding *slots;
    size_t cap, count;
} table;

typedef struct descriptor {
    uint32_t id, flags;
    uint64_t size;
} descriptor;

typedef struct session {
    shmlink_limits limits;
    bool accept_writable;
    uint64_t realm;
    bool have_peer;
    uint32_t peer_max_regions, peer_max_payload;
    bool hello_sent;
    bool ended;
    fate *fate;
    uint64_t next_id;
    table own_by_serial; /* region serial -> our id */
    table own_by_id;     /* our id -> region */
    table peer;          /* peer id -> region, file */
    uint64_t held_bytes; /* bytes of distinct files the peer's bindings hold */
    descriptor *releases;
    size_t nreleases, releases_cap;
} session;

/* What a record meant. */
typedef enum inbound_kind { IN_HANDSHAKE, IN_RELEASED, IN_MESSAGE, IN_EOF } inbound_kind;

typedef struct attachment {
    shmlink_region *region;
    bool transfer;
} attachment;

typedef enum control_kind { CONTROL_NONE, CONTROL_HELLO, CONTROL_RELEASE } control_kind;

shmlink_code session_init(session *s, const shmlink_limits *limits, bool accept_writable,
                          uint64_t realm, shmlink_error *err);
void session_destroy_locked(session *s, shmlink_endpoint *ep);
/* Ends the session: by the peer (end-of-file) or by this side (closed here, or a failure
 * this side detected). Both tables are dropped; when this side ended it, the regions
 * transferred to it over the connection go back to the peer (PROTOCOL.md section 6). */
void session_end_locked(session *s, shmlink_endpoint *ep, bool by_peer);
/* The next control frame (HELLO, RELEASE) into frame; its length, 0 if none. */
size_t session_poll_control(const session *s, uint8_t *frame, control_kind *kind, size_t *count);
void session_control_sent(session *s, control_kind kind, size_t count);
shmlink_code session_check_message(const session *s, size_t payload_len, const attachment *atts,
                                   size_t count, shmlink_error *err, const char *op);
/* Encodes a MESSAGE header and descriptors into frame; the files of NEW descriptors (one
 * reference each) into files, the new ids' attachment indexes into new_index. */
shmlink_code session_encode_locked(session *s, size_t payload_len, const attachment *atts,
                                   size_t count, uint8_t *frame, size_t *frame_len,
                                   memfile **files, uint32_t *new_ids, size_t *new_index,
                                   size_t *nnew, shmlink_error *err, const char *op);
void session_message_sent_locked(session *s, shmlink_endpoint *ep, const attachment *atts,
                                 const uint32_t *new_ids, const size_t *new_index, size_t nnew);
bool session_own_id(const session *s, const shmlink_region *r, uint32_t *id);
/* Forgets our id for r and queues its RELEASE; false if the peer had nothing bound. */
bool session_release_locked(session *s, shmlink_endpoint *ep, shmlink_region *r);
size_t session_own_count(const session *s);
size_t session_peer_count(const session *s);

/* Judges one record (PROTOCOL.md section 7) and applies it. Every descriptor in fds is
 * consumed or closed. On a failure the session has ended. A message's payload and
 * regions go into msg. */
shmlink_code session_handle_locked(session *s, shmlink_endpoint *ep, const uint8_t *bytes,
                                   const received *rec, int *fds, size_t nfds,
                                   inbound_kind *kind, shmlink_message *msg, shmlink_error *err);

#endif /* SHMLINK_INTERNAL_H */
