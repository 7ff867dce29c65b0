/*
 * shmlink.c - libshmlink: the shmlink wire protocol, version 1 (docs/PROTOCOL.md).
 *
 * Section numbers (§n) refer to docs/PROTOCOL.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS, MSG_CMSG_CLOEXEC, SOCK_CLOEXEC */
#endif

#include "shmlink.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

_Static_assert(sizeof(SHMLINK_MAGIC) == SHMLINK_MAGIC_LEN, "magic is 7 letters and a 0 byte");
_Static_assert(SHMLINK_HELLO_OFF_MAX_PAYLOAD + 4 == SHMLINK_HELLO_PAYLOAD_LEN, "HELLO layout");
_Static_assert(SHMLINK_DESC_OFF_SIZE + 8 == SHMLINK_DESC_SIZE, "descriptor layout");
_Static_assert(SHMLINK_MAX_FRAME_SIZE <= SIZE_MAX, "frames fit in memory");

/* The seals that make a region safe to map: it can neither shrink (SIGBUS) nor grow. */
#define REQUIRED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
/* What freezing adds: no writes, and no further seal changes (a SHOULD of §5.1). */
#define FREEZE_SEALS (F_SEAL_WRITE | F_SEAL_SEAL)
#define MEMFD_NAME "shmlink"
#define MS_PER_S 1000u
#define US_PER_MS 1000u

/* ==================================================================================== */
/* Small helpers                                                                         */
/* ==================================================================================== */

/* close(2) whose only possible failure on our own fds is EBADF, which is a double close:
 * a bug that could close someone else's descriptor, hence the assertion. errno is kept so
 * that cleanup paths do not hide the error that caused them. */
static void close_fd(int fd)
{
    if (fd < 0)
        return;
    const int saved = errno;
    const int rc = close(fd);
    assert(rc == 0 || errno != EBADF);
    (void)rc;
    errno = saved;
}

static void unmap_bytes(void *base, uint64_t size)
{
    if (base == NULL)
        return;
    const int saved = errno;
    const int rc = munmap(base, (size_t)size);
    assert(rc == 0); /* only EINVAL is possible, for arguments we got from mmap */
    (void)rc;
    errno = saved;
}

/* ==================================================================================== */
/* Regions                                                                               */
/* ==================================================================================== */

struct shmlink_region {
    int fd;
    uint8_t *base; /* NULL only if a failed freeze could not map the region again */
    uint64_t size;
    dev_t dev; /* file identity: how a region coming back is recognised (§5.2 rule 5) */
    ino_t ino;
    uint64_t serial;    /* unique per region object, never reused: key of the own-id table */
    unsigned long refs; /* caller references + endpoint bindings + message entries */
    bool frozen;
    bool transferred; /* sent with TRANSFER, not received back yet (§5.2 rule 7) */
    bool shared;      /* another process may map it: sent once, or received */
    shmlink_region *prev, *next;
};

/* Every live region of the process, to resolve a returning file to its region object. */
static shmlink_region *g_registry;
static uint64_t g_next_serial = 1;

static shmlink_region *registry_find(dev_t dev, ino_t ino)
{
    for (shmlink_region *r = g_registry; r != NULL; r = r->next)
        if (r->dev == dev && r->ino == ino)
            return r;
    return NULL;
}

/* Wrap an fd and its mapping into a new region with one reference. On failure the caller
 * still owns fd and mapping. */
static shmlink_region *region_new(int fd, void *base, uint64_t size, bool frozen,
                                  const struct stat *st)
{
    shmlink_region *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->fd = fd;
    r->base = base;
    r->size = size;
    r->dev = st->st_dev;
    r->ino = st->st_ino;
    r->serial = g_next_serial++;
    r->refs = 1;
    r->frozen = frozen;
    r->next = g_registry;
    if (g_registry != NULL)
        g_registry->prev = r;
    g_registry = r;
    return r;
}

static void region_destroy(shmlink_region *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        g_registry = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    unmap_bytes(r->base, r->size);
    close_fd(r->fd);
    free(r);
}

/* Map a region's file: shared and writable, or, frozen, private and read-only (§5.3 step
 * 6) so that a stray write faults locally and can never reach the file. */
static void *map_region(int fd, uint64_t size, bool frozen)
{
    const int prot = frozen ? PROT_READ : PROT_READ | PROT_WRITE;
    const int flags = frozen ? MAP_PRIVATE : MAP_SHARED;
    void *base = mmap(NULL, (size_t)size, prot, flags, fd, 0);
    return base == MAP_FAILED ? NULL : base;
}

/* A size a region can have: not 0 (§2), and representable as off_t and size_t. */
static bool valid_region_size(uint64_t size)
{
    return size != 0 && size <= (uint64_t)INT64_MAX && size <= (uint64_t)SIZE_MAX;
}

shmlink_error shmlink_region_create(uint64_t size, shmlink_region **out)
{
    if (out == NULL || !valid_region_size(size))
        return SHMLINK_E_INVALID_ARGUMENT;
    *out = NULL;
    /* §5.1: memfd with sealing allowed, sized once, sealed before it is ever sent. */
    const int fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return SHMLINK_E_SYSTEM;
    struct stat st;
    if (ftruncate(fd, (off_t)size) != 0 || fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS) != 0 ||
        fstat(fd, &st) != 0) {
        close_fd(fd);
        return SHMLINK_E_SYSTEM;
    }
    void *base = map_region(fd, size, false);
    if (base == NULL) {
        close_fd(fd);
        return SHMLINK_E_SYSTEM;
    }
    shmlink_region *r = region_new(fd, base, size, false, &st);
    if (r == NULL) {
        unmap_bytes(base, size);
        close_fd(fd);
        return SHMLINK_E_NO_MEMORY;
    }
    *out = r;
    return SHMLINK_OK;
}

shmlink_error shmlink_region_freeze(shmlink_region *r)
{
    if (r == NULL)
        return SHMLINK_E_INVALID_ARGUMENT;
    if (r->frozen)
        return SHMLINK_E_REGION_FROZEN;
    if (r->transferred)
        return SHMLINK_E_REGION_TRANSFERRED;
    /* Once another process may map it shared-writable, F_SEAL_WRITE would fail (EBUSY)
     * or, worse, succeed while the peer still believes it may write. */
    if (r->shared)
        return SHMLINK_E_INVALID_ARGUMENT;
    /* The kernel refuses F_SEAL_WRITE while a shared writable mapping exists, our own
     * included: drop it, seal, and map again read-only. */
    unmap_bytes(r->base, r->size);
    r->base = NULL;
    if (fcntl(r->fd, F_ADD_SEALS, FREEZE_SEALS) != 0) {
        const int saved = errno;
        r->base = map_region(r->fd, r->size, false);
        errno = saved;
        return SHMLINK_E_SYSTEM;
    }
    r->frozen = true;
    r->base = map_region(r->fd, r->size, true);
    return r->base != NULL ? SHMLINK_OK : SHMLINK_E_SYSTEM;
}

/*
 * §5.3: the checks on a received file descriptor, in the documented order, then mapping.
 * Takes ownership of fd. `why` receives a reason on failure.
 */
static shmlink_error import_fd(int fd, uint64_t size, bool frozen, shmlink_region **out,
                               char *why, size_t why_len)
{
    struct stat st;
    /* Step 1: a regular file; a pipe, socket or device is not a memfd. */
    if (fstat(fd, &st) != 0) {
        snprintf(why, why_len, "fstat of received descriptor: %s", strerror(errno));
        close_fd(fd);
        return SHMLINK_E_SYSTEM;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "received descriptor is not a regular file (mode %#o)",
                 (unsigned)(st.st_mode & S_IFMT));
        close_fd(fd);
        return SHMLINK_E_REGION_NOT_MEMFD;
    }
    /* Step 2: only files that can carry seals answer F_GET_SEALS. */
    const int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        snprintf(why, why_len, "F_GET_SEALS failed (%s): not a memfd", strerror(errno));
        close_fd(fd);
        return SHMLINK_E_REGION_NOT_MEMFD;
    }
    /* Step 3: a file that can shrink could SIGBUS us through the mapping. */
    if ((seals & REQUIRED_SEALS) != REQUIRED_SEALS) {
        snprintf(why, why_len, "region lacks F_SEAL_SHRINK|F_SEAL_GROW (seals %#x)",
                 (unsigned)seals);
        close_fd(fd);
        return SHMLINK_E_REGION_UNSEALED;
    }
    /* Step 4: FROZEN exactly when the write seal is present. */
    if (frozen && !(seals & F_SEAL_WRITE)) {
        snprintf(why, why_len, "FROZEN region lacks F_SEAL_WRITE (seals %#x)", (unsigned)seals);
        close_fd(fd);
        return SHMLINK_E_REGION_UNSEALED;
    }
    if (!frozen && (seals & F_SEAL_WRITE)) {
        snprintf(why, why_len, "region has F_SEAL_WRITE but FROZEN is not set");
        close_fd(fd);
        return SHMLINK_E_PROTOCOL_VIOLATION;
    }
    /* Step 5: the size the peer announced is the file's size. */
    if (st.st_size < 0 || (uint64_t)st.st_size != size) {
        snprintf(why, why_len, "descriptor size %llu but file size %lld",
                 (unsigned long long)size, (long long)st.st_size);
        close_fd(fd);
        return SHMLINK_E_REGION_SIZE_MISMATCH;
    }
    if (!valid_region_size(size)) {
        snprintf(why, why_len, "region size %llu cannot be mapped", (unsigned long long)size);
        close_fd(fd);
        return SHMLINK_E_REGION_SIZE_MISMATCH;
    }
    /* §5.2 rule 5: a file we already hold is the region we already have. The new fd is
     * a duplicate we do not need. */
    shmlink_region *known = registry_find(st.st_dev, st.st_ino);
    if (known != NULL) {
        close_fd(fd);
        *out = shmlink_region_ref(known);
        return SHMLINK_OK;
    }
    /* Step 6: map. */
    void *base = map_region(fd, size, frozen);
    if (base == NULL) {
        snprintf(why, why_len, "mmap of %llu-byte region failed: %s", (unsigned long long)size,
                 strerror(errno));
        close_fd(fd);
        return SHMLINK_E_SYSTEM;
    }
    shmlink_region *r = region_new(fd, base, size, frozen, &st);
    if (r == NULL) {
        snprintf(why, why_len, "out of memory");
        unmap_bytes(base, size);
        close_fd(fd);
        return SHMLINK_E_NO_MEMORY;
    }
    r->shared = true;
    *out = r;
    return SHMLINK_OK;
}

shmlink_error shmlink_region_map(int fd, uint64_t size, bool frozen, shmlink_region **out)
{
    char why[128];
    if (out == NULL) {
        close_fd(fd);
        return SHMLINK_E_INVALID_ARGUMENT;
    }
    *out = NULL;
    return import_fd(fd, size, frozen, out, why, sizeof why);
}

shmlink_region *shmlink_region_ref(shmlink_region *r)
{
    r->refs++;
    return r;
}

void shmlink_region_unmap(shmlink_region *r)
{
    if (r != NULL && --r->refs == 0)
        region_destroy(r);
}

uint64_t shmlink_region_size(const shmlink_region *r) { return r->size; }
bool shmlink_region_is_frozen(const shmlink_region *r) { return r->frozen; }
bool shmlink_region_is_transferred(const shmlink_region *r) { return r->transferred; }
int shmlink_region_fd(const shmlink_region *r) { return r->fd; }

const uint8_t *shmlink_region_bytes(const shmlink_region *r)
{
    return r->transferred ? NULL : r->base;
}

uint8_t *shmlink_region_mut_bytes(shmlink_region *r)
{
    return r->transferred || r->frozen ? NULL : r->base;
}

void shmlink_region_file_id(const shmlink_region *r, dev_t *dev, ino_t *ino)
{
    *dev = r->dev;
    *ino = r->ino;
}

/* ==================================================================================== */
/* Binding tables: open addressing with linear probing, keyed by a u64                    */
/* ==================================================================================== */

/* One binding. In the own table the key is the region's serial and `id` our id for it; in
 * the peer table the key is the peer's id. Each binding holds one region reference. */
typedef struct binding {
    uint64_t key;
    uint32_t id;
    shmlink_region *region; /* NULL: empty slot */
} binding;

typedef struct table {
    binding *slots;
    size_t cap; /* a power of two, or 0 */
    size_t count;
} table;

#define TABLE_MIN_CAP 16u
#define FIBONACCI_HASH UINT64_C(0x9E3779B97F4A7C15)

static size_t table_home(const table *t, uint64_t key)
{
    uint64_t h = key * FIBONACCI_HASH;
    h ^= h >> 32;
    return (size_t)h & (t->cap - 1);
}

static binding *table_find(const table *t, uint64_t key)
{
    if (t->count == 0)
        return NULL;
    for (size_t i = table_home(t, key);; i = (i + 1) & (t->cap - 1)) {
        binding *b = &t->slots[i];
        if (b->region == NULL)
            return NULL;
        if (b->key == key)
            return b;
    }
}

/* Insert a key known to be absent; capacity was reserved. Takes over one reference. */
static void table_insert(table *t, uint64_t key, uint32_t id, shmlink_region *region)
{
    assert(t->cap != 0 && (t->count + 1) * 2 <= t->cap);
    size_t i = table_home(t, key);
    while (t->slots[i].region != NULL)
        i = (i + 1) & (t->cap - 1);
    t->slots[i] = (binding){ key, id, region };
    t->count++;
}

/* Make room for `extra` more bindings, keeping the load at most one half so probes stay
 * short. Growing is the only allocation on the message path, and it is amortised. */
static bool table_reserve(table *t, size_t extra)
{
    if ((t->count + extra) * 2 <= t->cap)
        return true;
    size_t cap = t->cap != 0 ? t->cap : TABLE_MIN_CAP;
    while ((t->count + extra) * 2 > cap) {
        if (cap > SIZE_MAX / 2 / sizeof(binding))
            return false;
        cap *= 2;
    }
    binding *slots = calloc(cap, sizeof *slots);
    if (slots == NULL)
        return false;
    table old = *t;
    *t = (table){ slots, cap, 0 };
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].region != NULL)
            table_insert(t, old.slots[i].key, old.slots[i].id, old.slots[i].region);
    free(old.slots);
    return true;
}

/* Remove a binding and return its region reference to the caller. Backward-shift
 * deletion keeps every probe chain unbroken without tombstones. */
static shmlink_region *table_remove(table *t, binding *b)
{
    shmlink_region *region = b->region;
    size_t hole = (size_t)(b - t->slots);
    const size_t mask = t->cap - 1;
    for (size_t i = (hole + 1) & mask; t->slots[i].region != NULL; i = (i + 1) & mask) {
        const size_t home = table_home(t, t->slots[i].key);
        /* Move slot i into the hole unless its home lies cyclically in (hole, i]. */
        const bool stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (!stays) {
            t->slots[hole] = t->slots[i];
            hole = i;
        }
    }
    t->slots[hole] = (binding){ 0, 0, NULL };
    t->count--;
    return region;
}

/* Drop every binding (and its reference); keep the slots for reuse. */
static void table_clear(table *t)
{
    for (size_t i = 0; i < t->cap && t->count != 0; i++) {
        if (t->slots[i].region != NULL) {
            shmlink_region_unmap(t->slots[i].region);
            t->slots[i] = (binding){ 0, 0, NULL };
            t->count--;
        }
    }
}

static void table_free(table *t)
{
    table_clear(t);
    free(t->slots);
    *t = (table){ NULL, 0, 0 };
}

/* ==================================================================================== */
/* Endpoints                                                                             */
/* ==================================================================================== */

#define DETAIL_LEN 256u
/* A control buffer large enough for the most descriptors any HELLO may announce. Only
 * CMSG_LEN(max_regions) of it is offered to the kernel (§5.4 rule 3). */
#define CONTROL_CAP CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)

struct shmlink_endpoint {
    int fd;
    bool open;           /* false after a failure or end-of-file: nothing more is processed */
    bool hello_received; /* the peer's HELLO arrived: its limits are known */
    bool peer_gone;      /* our HELLO hit EPIPE: the peer left; what it sent is readable */
    shmlink_options opts;
    uint16_t peer_max_regions;
    uint32_t peer_max_payload;
    uint64_t next_id; /* our next id: 1, 2, 3, ... never reused (§5.2 rule 3) */
    table own;        /* region serial -> our id, for regions the peer has bound */
    table peer;       /* peer id -> region */

    uint8_t *rbuf; /* one record; exactly the largest frame our limits allow */
    size_t rbuf_cap;
    int fds[SHMLINK_MAX_REGIONS_MAX]; /* fds of the record in hand; -1 once consumed */
    size_t nfds;

    /* Header and descriptors of the frame being sent; the payload goes as its own iovec. */
    uint8_t sbuf[SHMLINK_HEADER_SIZE + SHMLINK_DESC_SIZE * SHMLINK_MAX_REGIONS_MAX];
    _Alignas(struct cmsghdr) unsigned char rctl[CONTROL_CAP];
    _Alignas(struct cmsghdr) unsigned char sctl[CONTROL_CAP];
    char detail[DETAIL_LEN];
};

static void set_detail(shmlink_endpoint *ep, const char *fmt, va_list ap)
{
    vsnprintf(ep->detail, sizeof ep->detail, fmt, ap);
}

/* A refusal that leaves the connection as it was (bad arguments, local limits). */
__attribute__((format(printf, 3, 4))) static shmlink_error
refuse(shmlink_endpoint *ep, shmlink_error err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_detail(ep, fmt, ap);
    va_end(ap);
    return err;
}

static void close_record_fds(shmlink_endpoint *ep)
{
    for (size_t i = 0; i < ep->nfds; i++) {
        close_fd(ep->fds[i]);
        ep->fds[i] = -1;
    }
    ep->nfds = 0;
}

/*
 * §7: fail the connection, in the documented order: close every fd of the failing record,
 * shut the socket down both ways so the peer reads end-of-file, drop both binding tables.
 * Nothing after this is processed.
 */
__attribute__((format(printf, 3, 4))) static shmlink_error
fail(shmlink_endpoint *ep, shmlink_error err, const char *fmt, ...)
{
    const int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    set_detail(ep, fmt, ap);
    va_end(ap);
    close_record_fds(ep);
    if (ep->open) {
        ep->open = false;
        /* ENOTCONN just means the peer is already gone: the goal is reached. */
        if (shutdown(ep->fd, SHUT_RDWR) != 0 && errno != ENOTCONN) {
            const size_t used = strlen(ep->detail);
            snprintf(ep->detail + used, sizeof ep->detail - used, " (shutdown: %s)",
                     strerror(errno));
        }
    }
    table_clear(&ep->own);
    table_clear(&ep->peer);
    errno = saved;
    return err;
}

/* End-of-file: the peer is gone; drop the bindings, keep every region users hold (§7). */
static shmlink_error end_of_file(shmlink_endpoint *ep)
{
    close_record_fds(ep); /* a 0-byte record may still have carried descriptors */
    ep->open = false;
    table_clear(&ep->own);
    table_clear(&ep->peer);
    snprintf(ep->detail, sizeof ep->detail, "peer closed the connection");
    return SHMLINK_E_PEER_CLOSED;
}

static shmlink_error violation(shmlink_endpoint *ep, const char *what)
{
    return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION, "protocol violation: %s", what);
}

int shmlink_socket_connect(const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    const size_t n = path != NULL ? strlen(path) : 0;
    socklen_t addr_len;
    if (n == 0) {
        errno = EINVAL;
        return -1;
    }
    if (path[0] == '@') {
        /* Abstract name: the '@' becomes a NUL byte, the name is not NUL-terminated. */
        if (n > sizeof addr.sun_path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(addr.sun_path + 1, path + 1, n - 1);
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        if (n >= sizeof addr.sun_path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(addr.sun_path, path, n + 1);
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&addr, addr_len) != 0) {
        /* An interrupted connect of a Unix socket has completed or failed by the time we
         * can look; anything but "already connected" is an error. */
        if (errno != EINTR ||
            (connect(fd, (const struct sockaddr *)&addr, addr_len) != 0 && errno != EISCONN)) {
            close_fd(fd);
            return -1;
        }
    }
    return fd;
}

static bool set_timeouts(int fd, unsigned timeout_ms)
{
    const struct timeval tv = {
        .tv_sec = (time_t)(timeout_ms / MS_PER_S),
        .tv_usec = (suseconds_t)((timeout_ms % MS_PER_S) * US_PER_MS),
    };
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
           setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0;
}

static bool is_seqpacket_unix(int fd)
{
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return false;
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        return false;
    return type == SOCK_SEQPACKET && domain == AF_UNIX;
}

/* sendmsg, restarted on EINTR, never raising SIGPIPE. */
static ssize_t send_record(int fd, const struct msghdr *mh)
{
    ssize_t n;
    do
        n = sendmsg(fd, mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

static bool peer_left(int err) { return err == EPIPE || err == ECONNRESET; }
static bool timed_out(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

shmlink_error shmlink_endpoint_open(int fd, const shmlink_options *options, shmlink_endpoint **out)
{
    const shmlink_options opts = options != NULL ? *options : SHMLINK_OPTIONS_DEFAULT;
    if (out == NULL || fd < 0 || opts.max_regions < SHMLINK_MAX_REGIONS_MIN ||
        opts.max_regions > SHMLINK_MAX_REGIONS_MAX || opts.max_payload > SHMLINK_MAX_PAYLOAD_MAX ||
        !is_seqpacket_unix(fd)) {
        close_fd(fd);
        return SHMLINK_E_INVALID_ARGUMENT;
    }
    *out = NULL;
    shmlink_endpoint *ep = calloc(1, sizeof *ep);
    if (ep == NULL) {
        close_fd(fd);
        return SHMLINK_E_NO_MEMORY;
    }
    ep->fd = fd;
    ep->open = true;
    ep->opts = opts;
    ep->next_id = 1;
    ep->rbuf_cap = (size_t)SHMLINK_FRAME_SIZE(opts.max_regions, opts.max_payload);
    ep->rbuf = malloc(ep->rbuf_cap);
    if (ep->rbuf == NULL) {
        shmlink_close(ep);
        return SHMLINK_E_NO_MEMORY;
    }
    if (opts.timeout_ms != 0 && !set_timeouts(fd, opts.timeout_ms)) {
        shmlink_close(ep);
        return SHMLINK_E_SYSTEM;
    }

    /* §3 rule 1: our HELLO goes out at once, without waiting for the peer's. */
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE] = { 0 };
    hello[SHMLINK_HEADER_OFF_KIND] = SHMLINK_KIND_HELLO;
    shmlink_put_le32(hello + SHMLINK_HEADER_OFF_PAYLOAD_LEN, SHMLINK_HELLO_PAYLOAD_LEN);
    uint8_t *payload = hello + SHMLINK_HEADER_SIZE;
    memcpy(payload + SHMLINK_HELLO_OFF_MAGIC, SHMLINK_MAGIC, SHMLINK_MAGIC_LEN);
    shmlink_put_le16(payload + SHMLINK_HELLO_OFF_VERSION, SHMLINK_VERSION);
    shmlink_put_le16(payload + SHMLINK_HELLO_OFF_MAX_REGIONS, opts.max_regions);
    shmlink_put_le32(payload + SHMLINK_HELLO_OFF_MAX_PAYLOAD, opts.max_payload);
    struct iovec iov = { hello, sizeof hello };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    const ssize_t n = send_record(fd, &mh);
    if (n < 0 && peer_left(errno)) {
        /* The peer already closed. What it sent before is still queued for us, and the
         * first receive must report it (e.g. its bad HELLO), so this is not an error yet. */
        ep->peer_gone = true;
    } else if (n != (ssize_t)sizeof hello) {
        const shmlink_error err = n < 0 && timed_out(errno) ? SHMLINK_E_TIMEOUT : SHMLINK_E_SYSTEM;
        shmlink_close(ep);
        return err;
    }
    *out = ep;
    return SHMLINK_OK;
}

shmlink_error shmlink_connect(const char *path, const shmlink_options *options,
                              shmlink_endpoint **out)
{
    if (out == NULL)
        return SHMLINK_E_INVALID_ARGUMENT;
    *out = NULL;
    const int fd = shmlink_socket_connect(path);
    if (fd < 0)
        return errno == EINVAL || errno == ENAMETOOLONG ? SHMLINK_E_INVALID_ARGUMENT
                                                        : SHMLINK_E_SYSTEM;
    return shmlink_endpoint_open(fd, options, out);
}

/* ------------------------------------------------------------------------------------ */
/* Receiving                                                                             */
/* ------------------------------------------------------------------------------------ */

typedef struct record {
    size_t len;
    bool truncated;        /* MSG_TRUNC: longer than the largest frame we allow */
    bool fds_truncated;    /* MSG_CTRUNC: more descriptors than we offered room for */
    bool foreign_control;  /* a control message other than SCM_RIGHTS */
} record;

/*
 * Read one record. Every descriptor that arrived is recorded in ep->fds, so whatever
 * happens next closes it or hands it to a region (§5.4 rule 2).
 */
static shmlink_error read_record(shmlink_endpoint *ep, record *rec)
{
    struct iovec iov = { ep->rbuf, ep->rbuf_cap };
    struct msghdr mh = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = ep->rctl,
        /* §5.4 rule 3: room for exactly max_regions descriptors. CMSG_LEN, not
         * CMSG_SPACE: the latter rounds up and, for an odd count, would admit one more
         * descriptor without MSG_CTRUNC. */
        .msg_controllen = CMSG_LEN(sizeof(int) * ep->opts.max_regions),
    };
    ssize_t n;
    /* EINTR: restart. ECONNRESET: the peer closed while our records (typically our
     * HELLO) were still unread on its side. Linux reports that pending socket error once,
     * *before* dequeuing what the peer sent ahead of closing; those records are still
     * there and must be judged (e.g. a bad HELLO), and end-of-file follows them. */
    do
        n = recvmsg(ep->fd, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && (errno == EINTR || errno == ECONNRESET));
    ep->nfds = 0;
    *rec = (record){ 0, false, false, false };
    if (n < 0) {
        if (timed_out(errno))
            return refuse(ep, SHMLINK_E_TIMEOUT, "timed out waiting for the peer");
        return fail(ep, SHMLINK_E_SYSTEM, "recvmsg: %s", strerror(errno));
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            rec->foreign_control = true;
            continue;
        }
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof fd, sizeof fd);
            if (ep->nfds < SHMLINK_MAX_REGIONS_MAX)
                ep->fds[ep->nfds++] = fd;
            else
                close_fd(fd); /* cannot happen: the kernel fits them in our buffer */
        }
    }
    rec->len = (size_t)n;
    rec->truncated = (mh.msg_flags & MSG_TRUNC) != 0;
    rec->fds_truncated = (mh.msg_flags & MSG_CTRUNC) != 0;
    return SHMLINK_OK;
}

/* §3: the first frame must be the peer's HELLO. */
static shmlink_error handle_hello(shmlink_endpoint *ep, const record *rec)
{
    const uint8_t *f = ep->rbuf;
    if (rec->len < SHMLINK_HEADER_SIZE)
        return violation(ep, "first record is shorter than a frame header");
    if (f[SHMLINK_HEADER_OFF_KIND] != SHMLINK_KIND_HELLO)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                    "protocol violation: first frame is kind %u, not HELLO",
                    f[SHMLINK_HEADER_OFF_KIND]);
    /* Magic and version identify the protocol, so they are judged first, whatever else is
     * wrong with the frame: a future version may well have a longer HELLO. */
    const uint8_t *p = f + SHMLINK_HEADER_SIZE;
    const size_t avail = rec->len - SHMLINK_HEADER_SIZE;
    if (avail >= SHMLINK_HELLO_OFF_MAGIC + SHMLINK_MAGIC_LEN &&
        memcmp(p + SHMLINK_HELLO_OFF_MAGIC, SHMLINK_MAGIC, SHMLINK_MAGIC_LEN) != 0)
        return fail(ep, SHMLINK_E_PEER_INCOMPATIBLE, "peer incompatible: wrong magic in HELLO");
    if (avail >= SHMLINK_HELLO_OFF_VERSION + sizeof(uint16_t)) {
        const unsigned version = shmlink_get_le16(p + SHMLINK_HELLO_OFF_VERSION);
        if (version != SHMLINK_VERSION)
            return fail(ep, SHMLINK_E_PEER_INCOMPATIBLE,
                        "peer incompatible: HELLO version %u, we implement %u", version,
                        SHMLINK_VERSION);
    }
    if (rec->truncated)
        return violation(ep, "HELLO record longer than the largest frame we accept");
    if (f[SHMLINK_HEADER_OFF_FLAGS] != 0)
        return violation(ep, "reserved header flags set on HELLO");
    if (shmlink_get_le16(f + SHMLINK_HEADER_OFF_REGION_COUNT) != 0 ||
        shmlink_get_le32(f + SHMLINK_HEADER_OFF_PAYLOAD_LEN) != SHMLINK_HELLO_PAYLOAD_LEN ||
        rec->len != SHMLINK_HELLO_FRAME_SIZE)
        return violation(ep, "HELLO must have 0 regions and a 16-byte payload");
    if (ep->nfds != 0)
        return violation(ep, "file descriptors on a HELLO");
    const unsigned max_regions = shmlink_get_le16(p + SHMLINK_HELLO_OFF_MAX_REGIONS);
    const uint32_t max_payload = shmlink_get_le32(p + SHMLINK_HELLO_OFF_MAX_PAYLOAD);
    if (max_regions < SHMLINK_MAX_REGIONS_MIN || max_regions > SHMLINK_MAX_REGIONS_MAX ||
        max_payload > SHMLINK_MAX_PAYLOAD_MAX)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                    "protocol violation: HELLO limits out of range (max_regions %u, "
                    "max_payload %u)",
                    max_regions, (unsigned)max_payload);
    ep->peer_max_regions = (uint16_t)max_regions;
    ep->peer_max_payload = max_payload;
    ep->hello_received = true;
    return SHMLINK_OK;
}

/* §4: RELEASE drops the peer's bindings of the named ids. */
static shmlink_error handle_release(shmlink_endpoint *ep, const uint8_t *descs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const uint8_t *d = descs + i * SHMLINK_DESC_SIZE;
        const uint32_t id = shmlink_get_le32(d + SHMLINK_DESC_OFF_ID);
        const uint64_t size = shmlink_get_le64(d + SHMLINK_DESC_OFF_SIZE);
        binding *b = table_find(&ep->peer, id);
        if (b == NULL)
            return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                        "protocol violation: RELEASE of unbound id %u", (unsigned)id);
        if (b->region->size != size)
            return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                        "protocol violation: RELEASE of id %u with size %llu, bound with %llu",
                        (unsigned)id, (unsigned long long)size,
                        (unsigned long long)b->region->size);
        shmlink_region_unmap(table_remove(&ep->peer, b));
    }
    return SHMLINK_OK;
}

/* §5.2, §5.3: resolve every descriptor of a MESSAGE into msg. */
static shmlink_error handle_message(shmlink_endpoint *ep, const uint8_t *descs, size_t count,
                                    shmlink_message *msg)
{
    size_t next_fd = 0;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *d = descs + i * SHMLINK_DESC_SIZE;
        const uint32_t id = shmlink_get_le32(d + SHMLINK_DESC_OFF_ID);
        const uint32_t flags = shmlink_get_le32(d + SHMLINK_DESC_OFF_FLAGS);
        const uint64_t size = shmlink_get_le64(d + SHMLINK_DESC_OFF_SIZE);
        const bool frozen = (flags & SHMLINK_DESC_FROZEN) != 0;
        shmlink_region *r;
        if (flags & SHMLINK_DESC_NEW) {
            if (table_find(&ep->peer, id) != NULL)
                return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                            "protocol violation: NEW for id %u, which is bound", (unsigned)id);
            /* §5.2 rule 2: descriptors and fds correspond in order. The fd is the new
             * region's (or closed) from here on, whatever import_fd decides. */
            const int fd = ep->fds[next_fd];
            ep->fds[next_fd++] = -1;
            char why[DETAIL_LEN / 2];
            const shmlink_error err = import_fd(fd, size, frozen, &r, why, sizeof why);
            if (err != SHMLINK_OK)
                return fail(ep, err, "region id %u: %s", (unsigned)id, why);
            if (!table_reserve(&ep->peer, 1)) {
                shmlink_region_unmap(r);
                return fail(ep, SHMLINK_E_NO_MEMORY, "out of memory binding id %u",
                            (unsigned)id);
            }
            table_insert(&ep->peer, id, id, r); /* the binding keeps import_fd's reference */
        } else {
            const binding *b = table_find(&ep->peer, id);
            if (b == NULL)
                return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                            "protocol violation: unknown region id %u", (unsigned)id);
            r = b->region;
            if (r->size != size || r->frozen != frozen)
                return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                            "protocol violation: id %u with size %llu frozen %d, bound with "
                            "size %llu frozen %d",
                            (unsigned)id, (unsigned long long)size, frozen,
                            (unsigned long long)r->size, r->frozen);
        }
        msg->regions[i] = (shmlink_received_region){ shmlink_region_ref(r), id, flags };
        msg->region_count = i + 1;
    }
    /* The frame is accepted: every region in it is back with us (§5.2 rule 7). */
    for (size_t i = 0; i < count; i++)
        msg->regions[i].region->transferred = false;
    return SHMLINK_OK;
}

/* §2, §4, §7: a frame after the HELLO. Structural checks first, in the order of the §7
 * table, then the descriptors one by one. */
static shmlink_error handle_frame(shmlink_endpoint *ep, const record *rec, shmlink_message *msg,
                                  bool *got_message)
{
    const uint8_t *f = ep->rbuf;
    if (rec->len < SHMLINK_HEADER_SIZE)
        return violation(ep, "record shorter than a frame header");
    if (rec->truncated)
        return violation(ep, "record longer than the largest frame our limits allow");
    const unsigned kind = f[SHMLINK_HEADER_OFF_KIND];
    const unsigned count = shmlink_get_le16(f + SHMLINK_HEADER_OFF_REGION_COUNT);
    const uint32_t payload_len = shmlink_get_le32(f + SHMLINK_HEADER_OFF_PAYLOAD_LEN);
    if (SHMLINK_FRAME_SIZE(count, payload_len) != rec->len)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                    "protocol violation: record of %zu bytes, header says %u regions and "
                    "%u payload bytes",
                    rec->len, count, (unsigned)payload_len);
    if (f[SHMLINK_HEADER_OFF_FLAGS] != 0)
        return violation(ep, "reserved header flags set");
    if (kind == SHMLINK_KIND_HELLO)
        return violation(ep, "second HELLO");
    if (kind != SHMLINK_KIND_MESSAGE && kind != SHMLINK_KIND_RELEASE)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION, "protocol violation: unknown frame kind %u",
                    kind);
    if (kind == SHMLINK_KIND_RELEASE && payload_len != 0)
        return violation(ep, "RELEASE with payload");
    if (count > ep->opts.max_regions || payload_len > ep->opts.max_payload)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                    "protocol violation: %u regions / %u payload bytes exceed our HELLO's "
                    "%u / %u",
                    count, (unsigned)payload_len, (unsigned)ep->opts.max_regions,
                    (unsigned)ep->opts.max_payload);

    const uint8_t *descs = f + SHMLINK_HEADER_SIZE;
    size_t new_count = 0;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *d = descs + i * SHMLINK_DESC_SIZE;
        const uint32_t flags = shmlink_get_le32(d + SHMLINK_DESC_OFF_FLAGS);
        if (flags & ~SHMLINK_DESC_KNOWN_FLAGS)
            return violation(ep, "reserved descriptor flag bits set");
        if (shmlink_get_le32(d + SHMLINK_DESC_OFF_ID) == 0)
            return violation(ep, "region id 0");
        if (shmlink_get_le64(d + SHMLINK_DESC_OFF_SIZE) == 0)
            return violation(ep, "region size 0");
        if (kind == SHMLINK_KIND_RELEASE && flags != 0)
            return violation(ep, "RELEASE descriptor with flags");
        if (flags & SHMLINK_DESC_NEW)
            new_count++;
    }
    if (new_count != ep->nfds)
        return fail(ep, SHMLINK_E_PROTOCOL_VIOLATION,
                    "protocol violation: %zu file descriptors for %zu NEW descriptors", ep->nfds,
                    new_count);

    shmlink_error err;
    if (kind == SHMLINK_KIND_RELEASE) {
        err = handle_release(ep, descs, count);
    } else {
        msg->payload = descs + (size_t)count * SHMLINK_DESC_SIZE;
        msg->payload_len = payload_len;
        err = handle_message(ep, descs, count, msg);
        *got_message = err == SHMLINK_OK;
    }
    ep->nfds = 0; /* all consumed: each fd now belongs to a region or was closed */
    return err;
}

/* Read records until one is fully handled: `msg` filled for a MESSAGE, or, when msg is
 * NULL, only until the HELLO has arrived. */
static shmlink_error receive(shmlink_endpoint *ep, shmlink_message *msg)
{
    for (;;) {
        if (!ep->open)
            return refuse(ep, SHMLINK_E_CLOSED, "connection is closed");
        if (msg == NULL && ep->hello_received)
            return SHMLINK_OK;
        record rec;
        shmlink_error err = read_record(ep, &rec);
        if (err != SHMLINK_OK)
            return err;
        /* MSG_CTRUNC first: the record is incomplete, so nothing in it can be judged, and
         * its descriptor count must not be mistaken for a lie about NEW descriptors. */
        if (rec.fds_truncated)
            return fail(ep, SHMLINK_E_FDS_TRUNCATED,
                        "descriptors truncated: more than %u file descriptors in one record "
                        "(or we are at the open-file limit)",
                        (unsigned)ep->opts.max_regions);
        if (rec.len == 0)
            return end_of_file(ep);
        if (rec.foreign_control)
            return violation(ep, "control message other than SCM_RIGHTS");
        if (!ep->hello_received) {
            err = handle_hello(ep, &rec);
            if (err != SHMLINK_OK)
                return err;
            continue;
        }
        bool got = false;
        err = handle_frame(ep, &rec, msg, &got);
        if (err != SHMLINK_OK) {
            shmlink_message_clear(msg);
            msg->payload = NULL;
            msg->payload_len = 0;
            return err;
        }
        if (got)
            return SHMLINK_OK;
    }
}

shmlink_error shmlink_recv(shmlink_endpoint *ep, shmlink_message *msg)
{
    if (ep == NULL || msg == NULL)
        return SHMLINK_E_INVALID_ARGUMENT;
    shmlink_message_clear(msg);
    msg->payload = NULL;
    msg->payload_len = 0;
    return receive(ep, msg);
}

void shmlink_message_clear(shmlink_message *msg)
{
    if (msg == NULL)
        return;
    for (size_t i = 0; i < msg->region_count && i < SHMLINK_MAX_REGIONS_MAX; i++) {
        shmlink_region_unmap(msg->regions[i].region);
        msg->regions[i].region = NULL;
    }
    msg->region_count = 0;
}

/* ------------------------------------------------------------------------------------ */
/* Sending                                                                               */
/* ------------------------------------------------------------------------------------ */

/* §3 rule 4: nothing but our HELLO before the peer's HELLO is known. */
static shmlink_error ready_to_send(shmlink_endpoint *ep)
{
    const shmlink_error err = receive(ep, NULL);
    if (err != SHMLINK_OK)
        return err;
    if (ep->peer_gone) {
        ep->open = false;
        table_clear(&ep->own);
        table_clear(&ep->peer);
        return refuse(ep, SHMLINK_E_PEER_CLOSED, "peer closed the connection");
    }
    return SHMLINK_OK;
}

static void put_header(uint8_t *h, unsigned kind, size_t count, size_t payload_len)
{
    h[SHMLINK_HEADER_OFF_KIND] = (uint8_t)kind;
    h[SHMLINK_HEADER_OFF_FLAGS] = 0;
    shmlink_put_le16(h + SHMLINK_HEADER_OFF_REGION_COUNT, (uint16_t)count);
    shmlink_put_le32(h + SHMLINK_HEADER_OFF_PAYLOAD_LEN, (uint32_t)payload_len);
}

static void put_desc(uint8_t *d, uint32_t id, uint32_t flags, uint64_t size)
{
    shmlink_put_le32(d + SHMLINK_DESC_OFF_ID, id);
    shmlink_put_le32(d + SHMLINK_DESC_OFF_FLAGS, flags);
    shmlink_put_le64(d + SHMLINK_DESC_OFF_SIZE, size);
}

/* Send one assembled record; any failure fails the connection, because our binding
 * table already assumes the peer got it. */
static shmlink_error transmit(shmlink_endpoint *ep, struct msghdr *mh, size_t total)
{
    const ssize_t n = send_record(ep->fd, mh);
    if (n == (ssize_t)total)
        return SHMLINK_OK;
    if (n >= 0)
        return fail(ep, SHMLINK_E_SYSTEM, "sendmsg sent %zd of %zu bytes", n, total);
    if (peer_left(errno))
        return fail(ep, SHMLINK_E_PEER_CLOSED, "peer closed the connection");
    if (timed_out(errno))
        return fail(ep, SHMLINK_E_TIMEOUT, "timed out sending to the peer");
    return fail(ep, SHMLINK_E_SYSTEM, "sendmsg: %s", strerror(errno));
}

shmlink_error shmlink_send(shmlink_endpoint *ep, const void *payload, size_t payload_len,
                           const shmlink_attachment *atts, size_t count)
{
    if (ep == NULL || (payload == NULL && payload_len != 0) || (atts == NULL && count != 0))
        return SHMLINK_E_INVALID_ARGUMENT;
    shmlink_error err = ready_to_send(ep);
    if (err != SHMLINK_OK)
        return err;
    /* §3 rule 5: the peer's limits bound what we send. */
    if (count > ep->peer_max_regions || payload_len > ep->peer_max_payload)
        return refuse(ep, SHMLINK_E_LIMIT_EXCEEDED,
                      "%zu regions / %zu payload bytes exceed the peer's %u / %u", count,
                      payload_len, (unsigned)ep->peer_max_regions,
                      (unsigned)ep->peer_max_payload);

    /* Validate everything and count the regions that need new ids before touching the
     * table, so that a refusal leaves no binding the peer never saw. */
    size_t new_count = 0;
    for (size_t i = 0; i < count; i++) {
        const shmlink_region *r = atts[i].region;
        if (r == NULL)
            return refuse(ep, SHMLINK_E_INVALID_ARGUMENT, "attachment %zu has no region", i);
        if (r->transferred)
            return refuse(ep, SHMLINK_E_REGION_TRANSFERRED,
                          "attachment %zu was transferred and has not come back", i);
        if (table_find(&ep->own, r->serial) != NULL)
            continue;
        bool earlier = false; /* §5.2 rule 4: only its first occurrence binds it */
        for (size_t j = 0; j < i && !earlier; j++)
            earlier = atts[j].region == r;
        new_count += !earlier;
    }
    if (new_count > (uint64_t)UINT32_MAX + 1 - ep->next_id)
        return refuse(ep, SHMLINK_E_LIMIT_EXCEEDED, "region ids exhausted");
    if (!table_reserve(&ep->own, new_count))
        return refuse(ep, SHMLINK_E_NO_MEMORY, "out of memory");

    const size_t head_len = SHMLINK_HEADER_SIZE + count * SHMLINK_DESC_SIZE;
    struct iovec iov[2] = { { ep->sbuf, head_len }, { (void *)(uintptr_t)payload, payload_len } };
    struct msghdr mh = { .msg_iov = iov,
                         .msg_iovlen = payload_len != 0 ? 2 : 1,
                         .msg_control = ep->sctl,
                         .msg_controllen = sizeof ep->sctl };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh);
    unsigned char *fd_data = CMSG_DATA(cmsg);
    uint8_t *descs = ep->sbuf + SHMLINK_HEADER_SIZE;
    put_header(ep->sbuf, SHMLINK_KIND_MESSAGE, count, payload_len);
    size_t nfds = 0;
    for (size_t i = 0; i < count; i++) {
        shmlink_region *r = atts[i].region;
        uint32_t flags = (r->frozen ? SHMLINK_DESC_FROZEN : 0u) |
                         (atts[i].transfer ? SHMLINK_DESC_TRANSFER : 0u);
        const binding *b = table_find(&ep->own, r->serial);
        uint32_t id;
        if (b != NULL) {
            id = b->id;
        } else {
            /* §5.2 rule 1: bind with NEW; the fd travels in this record. */
            id = (uint32_t)ep->next_id++;
            flags |= SHMLINK_DESC_NEW;
            table_insert(&ep->own, r->serial, id, shmlink_region_ref(r));
            memcpy(fd_data + nfds * sizeof(int), &r->fd, sizeof(int));
            nfds++;
        }
        put_desc(descs + i * SHMLINK_DESC_SIZE, id, flags, r->size);
    }

    if (nfds != 0) {
        /* §1 rule 4: one SCM_RIGHTS message with the NEW descriptors' fds, in order. */
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    } else {
        mh.msg_control = NULL;
        mh.msg_controllen = 0;
    }
    err = transmit(ep, &mh, head_len + payload_len);
    if (err != SHMLINK_OK)
        return err;
    for (size_t i = 0; i < count; i++) {
        atts[i].region->shared = true;
        if (atts[i].transfer)
            atts[i].region->transferred = true;
    }
    return SHMLINK_OK;
}

shmlink_error shmlink_release(shmlink_endpoint *ep, shmlink_region *region)
{
    if (ep == NULL || region == NULL)
        return SHMLINK_E_INVALID_ARGUMENT;
    shmlink_error err = ready_to_send(ep);
    if (err != SHMLINK_OK)
        return err;
    binding *b = table_find(&ep->own, region->serial);
    if (b == NULL)
        return refuse(ep, SHMLINK_E_INVALID_ARGUMENT, "region is not bound on this endpoint");
    /* §4: RELEASE has no payload and descriptors whose flags are 0. */
    put_header(ep->sbuf, SHMLINK_KIND_RELEASE, 1, 0);
    put_desc(ep->sbuf + SHMLINK_HEADER_SIZE, b->id, 0, region->size);
    const size_t len = SHMLINK_HEADER_SIZE + SHMLINK_DESC_SIZE;
    struct iovec iov = { ep->sbuf, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    err = transmit(ep, &mh, len);
    if (err != SHMLINK_OK)
        return err;
    shmlink_region_unmap(table_remove(&ep->own, b));
    return SHMLINK_OK;
}

const char *shmlink_endpoint_detail(const shmlink_endpoint *ep)
{
    return ep != NULL ? ep->detail : "";
}

void shmlink_close(shmlink_endpoint *ep)
{
    if (ep == NULL)
        return;
    close_record_fds(ep);
    table_free(&ep->own);
    table_free(&ep->peer);
    close_fd(ep->fd);
    free(ep->rbuf);
    free(ep);
}

/* ==================================================================================== */
/* Error names                                                                           */
/* ==================================================================================== */

const char *shmlink_error_code(shmlink_error err)
{
    switch (err) {
    case SHMLINK_OK: return "OK";
    case SHMLINK_E_PROTOCOL_VIOLATION: return "ERR_SHMLINK_PROTOCOL_VIOLATION";
    case SHMLINK_E_PEER_INCOMPATIBLE: return "ERR_SHMLINK_PEER_INCOMPATIBLE";
    case SHMLINK_E_REGION_NOT_MEMFD: return "ERR_SHMLINK_REGION_NOT_MEMFD";
    case SHMLINK_E_REGION_UNSEALED: return "ERR_SHMLINK_REGION_UNSEALED";
    case SHMLINK_E_REGION_SIZE_MISMATCH: return "ERR_SHMLINK_REGION_SIZE_MISMATCH";
    case SHMLINK_E_FDS_TRUNCATED: return "ERR_SHMLINK_FDS_TRUNCATED";
    case SHMLINK_E_PEER_CLOSED: return "ERR_SHMLINK_PEER_CLOSED";
    case SHMLINK_E_CLOSED: return "ERR_SHMLINK_CLOSED";
    case SHMLINK_E_TIMEOUT: return "ERR_SHMLINK_TIMEOUT";
    case SHMLINK_E_INVALID_ARGUMENT: return "ERR_SHMLINK_INVALID_ARGUMENT";
    case SHMLINK_E_LIMIT_EXCEEDED: return "ERR_SHMLINK_LIMIT_EXCEEDED";
    case SHMLINK_E_REGION_TRANSFERRED: return "ERR_SHMLINK_REGION_TRANSFERRED";
    case SHMLINK_E_REGION_FROZEN: return "ERR_SHMLINK_REGION_FROZEN";
    case SHMLINK_E_NO_MEMORY: return "ERR_SHMLINK_NO_MEMORY";
    case SHMLINK_E_SYSTEM: return "ERR_SHMLINK_SYSTEM";
    }
    return "ERR_SHMLINK_UNKNOWN";
}
