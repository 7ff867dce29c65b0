/*
 * region.c - regions, the registry that makes one memory file one region, the process
 * limits, and the library lock.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define GIB (UINT64_C(1) << 30)

/* ---- the lock -------------------------------------------------------------------- */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

void shmlink_lock(void) { (void)pthread_mutex_lock(&g_lock); }
void shmlink_unlock(void) { (void)pthread_mutex_unlock(&g_lock); }

/* ---- shared small objects --------------------------------------------------------- */

memfile *memfile_new(int fd)
{
    memfile *f = malloc(sizeof *f);
    if (f != NULL)
        *f = (memfile){ fd, 1 };
    return f;
}

memfile *memfile_ref(memfile *f)
{
    f->refs++;
    return f;
}

void memfile_unref(memfile *f)
{
    if (f != NULL && --f->refs == 0) {
        close_fd(f->fd);
        free(f);
    }
}

fate *fate_new(void)
{
    fate *f = malloc(sizeof *f);
    if (f != NULL)
        *f = (fate){ FATE_OPEN, 1 };
    return f;
}

fate *fate_ref(fate *f)
{
    if (f != NULL)
        f->refs++;
    return f;
}

void fate_unref(fate *f)
{
    if (f != NULL && --f->refs == 0)
        free(f);
}

/* ---- process limits --------------------------------------------------------------- */

static shmlink_process_limits g_limits = { 64 * GIB, 16384 };
static uint64_t g_mapped_bytes, g_regions;

shmlink_code process_reserve_locked(uint64_t size, shmlink_error *err)
{
    if (g_regions + 1 > g_limits.max_regions)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, "recv",
                         "this process already holds %llu regions from peers (process limit "
                         "max_regions); the connection was closed (raise the limit if the peer "
                         "is trusted)",
                         (unsigned long long)g_limits.max_regions);
    if (g_mapped_bytes + size < g_mapped_bytes || g_mapped_bytes + size > g_limits.max_mapped_bytes)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, "recv",
                         "a %llu-byte region would take this process over %llu bytes mapped from "
                         "peers (process limit max_mapped_bytes); the connection was closed (raise "
                         "the limit if the peer is trusted)",
                         (unsigned long long)size, (unsigned long long)g_limits.max_mapped_bytes);
    g_regions++;
    g_mapped_bytes += size;
    return SHMLINK_OK;
}

void process_unreserve_locked(uint64_t size)
{
    g_regions--;
    g_mapped_bytes -= size;
}

void shmlink_process_stats_get(shmlink_process_stats *out)
{
    shmlink_lock();
    *out = (shmlink_process_stats){ g_limits.max_mapped_bytes, g_limits.max_regions, g_mapped_bytes,
                                    g_regions };
    shmlink_unlock();
}

shmlink_code shmlink_set_process_limits(const shmlink_process_limits *limits, shmlink_error *err)
{
    const char *op = "shmlink_set_process_limits";
    if (limits == NULL || limits->max_mapped_bytes == 0 || limits->max_regions == 0)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "max_mapped_bytes and max_regions must be positive");
    shmlink_lock();
    g_limits = *limits;
    shmlink_unlock();
    return SHMLINK_OK;
}

/* ---- the registry ----------------------------------------------------------------- */

/* Every live region, to resolve a memory file that arrives again to its region. */
static shmlink_region *g_registry;
static uint64_t g_next_serial = 1;
static uint64_t g_next_realm = 1;

uint64_t unique_realm(void)
{
    shmlink_lock();
    const uint64_t realm = g_next_realm++;
    shmlink_unlock();
    return realm;
}

shmlink_region *region_new_locked(memfile *file, void *base, uint64_t size, file_id id,
                                  uint64_t realm, bool frozen, uint64_t charge)
{
    shmlink_region *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    *r = (shmlink_region){ .serial = g_next_serial++,
                           .size = size,
                           .id = id,
                           .realm = realm,
                           .refs = 1,
                           .file = file,
                           .base = base,
                           .frozen = frozen,
                           .charge = charge,
                           .charged = charge != 0,
                           .next = g_registry };
    if (g_registry != NULL)
        g_registry->prev = r;
    g_registry = r;
    return r;
}

shmlink_region *region_lookup_locked(uint64_t realm, file_id id, bool frozen)
{
    for (shmlink_region *r = g_registry; r != NULL; r = r->next)
        if (r->realm == realm && r->id.dev == id.dev && r->id.ino == id.ino && !r->closed &&
            r->frozen == frozen)
            return r;
    return NULL;
}

shmlink_region *region_ref_locked(shmlink_region *r)
{
    r->refs++;
    return r;
}

/* Gives back the file and the charge; a mapping never lent is unmapped, a lent one is
 * replaced by private zero pages at the same address and unmapped with the last
 * reference. */
static void release_resources(shmlink_region *r)
{
    memfile_unref(r->file);
    r->file = NULL;
    if (r->charged) {
        process_unreserve_locked(r->charge);
        r->charged = false;
    }
    if (r->base == NULL)
        return;
    if (!r->lent) {
        sys_unmap(r->base, r->size);
        r->base = NULL;
    } else if (!sys_discard(r->base, r->size)) {
        /* No memory for page tables: the shared mapping stays until the last reference,
         * still valid memory. */
    }
}

void region_close_locked(shmlink_region *r)
{
    if (r->closed)
        return;
    r->closed = true;
    release_resources(r);
    /* Peers it was sent to are told (RELEASE). The binders drop their references. */
    region_ref_locked(r);
    while (r->nbinders > 0) {
        shmlink_endpoint *ep = r->binders[r->nbinders - 1];
        endpoint_region_closed_locked(ep, r); /* removes ep from r->binders */
    }
    region_unref_locked(r);
}

void region_unref_locked(shmlink_region *r)
{
    if (r == NULL || --r->refs != 0)
        return;
    if (!r->closed) {
        /* Every binder holds a reference, so none is left to tell. */
        r->closed = true;
        release_resources(r);
    }
    sys_unmap(r->base, r->size);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        g_registry = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    fate_unref(r->over);
    fate_unref(r->via);
    free(r->binders);
    free(r);
}

shmlink_code region_check_usable(const shmlink_region *r, shmlink_error *err, const char *op)
{
    if (r->closed)
        return set_error(err, SHMLINK_ERR_REGION_CLOSED, op, "the region is closed; create a new one");
    if (r->away)
        return set_error(err, SHMLINK_ERR_REGION_TRANSFERRED, op,
                         "the region was transferred to a peer; it is usable again when the peer "
                         "sends it back, or after shmlink_region_reclaim once that connection has "
                         "ended");
    return SHMLINK_OK;
}

bool region_add_binder_locked(shmlink_region *r, shmlink_endpoint *ep)
{
    if (r->closed)
        return false;
    for (size_t i = 0; i < r->nbinders; i++)
        if (r->binders[i] == ep)
            return true;
    if (r->nbinders == r->binders_cap) {
        const size_t cap = r->binders_cap != 0 ? 2 * r->binders_cap : 2;
        shmlink_endpoint **b = realloc(r->binders, cap * sizeof *b);
        if (b == NULL)
            return false; /* the caller releases the region at once: correct, if wasteful */
        r->binders = b;
        r->binders_cap = cap;
    }
    r->binders[r->nbinders++] = ep;
    return true;
}

void region_remove_binder_locked(shmlink_region *r, shmlink_endpoint *ep)
{
    for (size_t i = 0; i < r->nbinders; i++)
        if (r->binders[i] == ep) {
            r->binders[i] = r->binders[--r->nbinders];
            return;
        }
}

static void set_custody(shmlink_region *r, custody c, fate *over, fate *via)
{
    fate_unref(r->over);
    fate_unref(r->via);
    r->custody = c;
    r->over = fate_ref(over);
    r->via = fate_ref(via);
    r->away = c != CUSTODY_HERE;
}

void region_send_away_locked(shmlink_region *r, fate *over)
{
    set_custody(r, CUSTODY_AWAY, over, NULL);
}

void region_arrive_locked(shmlink_region *r, fate *via, bool transferred)
{
    set_custody(r, CUSTODY_HERE, NULL, transferred ? via : NULL);
}

void regions_give_up_from_locked(fate *via)
{
    for (shmlink_region *r = g_registry; r != NULL; r = r->next)
        if (r->custody == CUSTODY_HERE && r->via == via)
            set_custody(r, CUSTODY_GIVEN_UP, NULL, NULL);
}

/* ---- the public region API --------------------------------------------------------- */

shmlink_code shmlink_region_create(uint64_t size, shmlink_region **out, shmlink_error *err)
{
    const char *op = "shmlink_region_create";
    if (out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "out is NULL");
    *out = NULL;
    if (size == 0 || size > (uint64_t)INT64_MAX || size > (uint64_t)SIZE_MAX)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "size must be between 1 and %lld bytes, not %llu", (long long)INT64_MAX,
                         (unsigned long long)size);
    int fd;
    shmlink_code code = sys_create_memfd(size, &fd, err, op);
    if (code != SHMLINK_OK)
        return code;
    file_info info;
    void *base = NULL;
    if ((code = sys_file_info(fd, &info, err, op)) != SHMLINK_OK ||
        (code = sys_map(fd, size, false, &base, err, op)) != SHMLINK_OK) {
        close_fd(fd);
        return code;
    }
    memfile *file = memfile_new(fd);
    shmlink_lock();
    shmlink_region *r = file != NULL ? region_new_locked(file, base, size, info.id, 0, false, 0) : NULL;
    shmlink_unlock();
    if (r == NULL) {
        free(file);
        sys_unmap(base, size);
        close_fd(fd);
        return set_error(err, SHMLINK_ERR_OS, op, "out of memory");
    }
    *out = r;
    return SHMLINK_OK;
}

uint64_t shmlink_region_size(const shmlink_region *r)
{
    shmlink_lock();
    const uint64_t size = r->closed ? 0 : r->size;
    shmlink_unlock();
    return size;
}

bool shmlink_region_frozen(const shmlink_region *r)
{
    shmlink_lock();
    const bool v = r->frozen;
    shmlink_unlock();
    return v;
}

bool shmlink_region_closed(const shmlink_region *r)
{
    shmlink_lock();
    const bool v = r->closed;
    shmlink_unlock();
    return v;
}

bool shmlink_region_transferred(const shmlink_region *r)
{
    shmlink_lock();
    const bool v = r->away;
    shmlink_unlock();
    return v;
}

shmlink_code shmlink_region_bytes(shmlink_region *r, void **ptr, size_t *size, shmlink_error *err)
{
    const char *op = "shmlink_region_bytes";
    if (r == NULL || ptr == NULL || size == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region, ptr and size must not be NULL");
    shmlink_lock();
    shmlink_code code = region_check_usable(r, err, op);
    if (code == SHMLINK_OK) {
        r->lent = true;
        *ptr = r->base;
        *size = (size_t)r->size;
    }
    shmlink_unlock();
    return code;
}

static shmlink_code check_range(const shmlink_region *r, uint64_t offset, uint64_t length,
                                shmlink_error *err, const char *op)
{
    if (offset > r->size || length > r->size - offset)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "bytes %llu..%llu+%llu lie outside the region's %llu bytes",
                         (unsigned long long)offset, (unsigned long long)offset,
                         (unsigned long long)length, (unsigned long long)r->size);
    return SHMLINK_OK;
}

/* Copies out under the lock: a copy is never half done when the region is frozen or
 * closed. A frozen region is read from its file (pread), which is what every peer sees. */
static shmlink_code copy_out_locked(shmlink_region *r, uint64_t offset, void *dst, size_t len,
                                    shmlink_error *err, const char *op)
{
    if (len == 0)
        return SHMLINK_OK;
    if (r->frozen)
        return sys_pread(r->file->fd, offset, dst, len, err, op);
    memmove(dst, (const uint8_t *)r->base + offset, len);
    return SHMLINK_OK;
}

shmlink_code shmlink_region_read(shmlink_region *r, uint64_t offset, void *dst, size_t length,
                                 shmlink_error *err)
{
    const char *op = "shmlink_region_read";
    if (r == NULL || (dst == NULL && length != 0))
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region and dst must not be NULL");
    shmlink_lock();
    shmlink_code code = region_check_usable(r, err, op);
    if (code == SHMLINK_OK)
        code = check_range(r, offset, length, err, op);
    if (code == SHMLINK_OK)
        code = copy_out_locked(r, offset, dst, length, err, op);
    shmlink_unlock();
    return code;
}

shmlink_code shmlink_region_read_into(shmlink_region *r, uint64_t offset, void *dst,
                                      size_t capacity, size_t *copied, shmlink_error *err)
{
    const char *op = "shmlink_region_read_into";
    if (r == NULL || (dst == NULL && capacity != 0) || copied == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region, dst and copied must not be NULL");
    *copied = 0;
    shmlink_lock();
    shmlink_code code = region_check_usable(r, err, op);
    if (code == SHMLINK_OK)
        code = check_range(r, offset, 0, err, op);
    if (code == SHMLINK_OK) {
        const uint64_t left = r->size - offset;
        const size_t n = left < capacity ? (size_t)left : capacity;
        code = copy_out_locked(r, offset, dst, n, err, op);
        if (code == SHMLINK_OK)
            *copied = n;
    }
    shmlink_unlock();
    return code;
}

shmlink_code shmlink_region_write(shmlink_region *r, uint64_t offset, const void *src,
                                  size_t length, shmlink_error *err)
{
    const char *op = "shmlink_region_write";
    if (r == NULL || (src == NULL && length != 0))
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region and src must not be NULL");
    shmlink_lock();
    shmlink_code code = region_check_usable(r, err, op);
    if (code == SHMLINK_OK && r->frozen)
        code = set_error(err, SHMLINK_ERR_REGION_FROZEN, op,
                         "the region is frozen and cannot be written; copy the data into a new "
                         "region");
    if (code == SHMLINK_OK)
        code = check_range(r, offset, length, err, op);
    if (code == SHMLINK_OK && length != 0)
        memmove((uint8_t *)r->base + offset, src, length);
    shmlink_unlock();
    return code;
}

shmlink_code shmlink_region_freeze(shmlink_region *r, shmlink_error *err)
{
    const char *op = "shmlink_region_freeze";
    if (r == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region is NULL");
    shmlink_lock();
    shmlink_code code = region_check_usable(r, err, op);
    if (code != SHMLINK_OK || r->frozen) {
        shmlink_unlock();
        return code;
    }
    seal_set seals;
    if ((code = sys_seals(r->file->fd, &seals, err, op)) != SHMLINK_OK) {
        shmlink_unlock();
        return code;
    }
    if (seals.write || seals.future_write) {
        shmlink_unlock();
        return set_error(err, SHMLINK_ERR_REGION_BUSY, op,
                         "a peer added F_SEAL_FUTURE_WRITE to the region while mapping it "
                         "writable; it cannot be frozen");
    }
    /* Our own shared mapping would block F_SEAL_WRITE too: make it private first, at the
     * same address, so pointers stay valid (PROTOCOL.md 5.1). */
    if (!sys_remap(r->base, r->size, r->file->fd, true)) {
        code = set_sys_error(err, SHMLINK_ERR_OS, op, "mmap(MAP_PRIVATE|MAP_FIXED)", errno,
                             "the mapping could not be made copy-on-write");
        shmlink_unlock();
        return code;
    }
    code = sys_seal_contents(r->file->fd, err, op);
    if (code != SHMLINK_OK) {
        if (!sys_remap(r->base, r->size, r->file->fd, false)) {
            /* The shared mapping cannot come back: a private one would let local writes
             * silently miss the peer. Close the region instead. */
            region_close_locked(r);
            code = set_error(err, SHMLINK_ERR_REGION_BUSY, op,
                             "a peer sealed the region while it was being frozen; the region was "
                             "closed rather than left diverging from the peer's copy");
        }
        shmlink_unlock();
        return code;
    }
    r->frozen = true;
    shmlink_unlock();
    return SHMLINK_OK;
}

shmlink_code shmlink_region_reclaim(shmlink_region *r, shmlink_error *err)
{
    const char *op = "shmlink_region_reclaim";
    if (r == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "region is NULL");
    shmlink_lock();
    shmlink_code code = SHMLINK_OK;
    if (r->closed)
        code = set_error(err, SHMLINK_ERR_REGION_CLOSED, op, "the region is closed; create a new one");
    else if (r->custody == CUSTODY_AWAY && r->over->state == FATE_ENDED_BY_PEER)
        set_custody(r, CUSTODY_HERE, NULL, NULL);
    else if (r->custody == CUSTODY_AWAY && r->over->state == FATE_OPEN)
        code = set_error(err, SHMLINK_ERR_REGION_TRANSFERRED, op,
                         "the connection the region was transferred over is still open; wait "
                         "until the peer sends it back");
    else if (r->custody == CUSTODY_AWAY)
        code = set_error(err, SHMLINK_ERR_REGION_TRANSFERRED, op,
                         "this side ended the connection the region was transferred over, so the "
                         "peer keeps it (docs/MEMORY-MODEL.md section 5.1)");
    else if (r->custody == CUSTODY_GIVEN_UP)
        code = set_error(err, SHMLINK_ERR_REGION_TRANSFERRED, op,
                         "the region was transferred to this side over a connection this side "
                         "ended, so it went back to its sender");
    shmlink_unlock();
    return code;
}

void shmlink_region_close(shmlink_region *r)
{
    if (r == NULL)
        return;
    shmlink_lock();
    region_close_locked(r);
    shmlink_unlock();
}

shmlink_region *shmlink_region_ref(shmlink_region *r)
{
    shmlink_lock();
    region_ref_locked(r);
    shmlink_unlock();
    return r;
}

void shmlink_region_unref(shmlink_region *r)
{
    if (r == NULL)
        return;
    shmlink_lock();
    region_unref_locked(r);
    shmlink_unlock();
}
