/*
 * session.c - the protocol state of one connection, without I/O (as the Rust core's
 * session is): records and descriptors go in, frames to send and received messages come
 * out. What the protocol decides (the handshake, whether a record is allowed, which ids
 * are bound, the limits and the trust policy) is decided here. Section numbers refer to
 * docs/PROTOCOL.md. The caller holds the library lock.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GIB (UINT64_C(1) << 30)
#define OP_RECV "recv"

/* ==================================================================================== */
/* Binding tables: open addressing with linear probing, keyed by a u64                    */
/* ==================================================================================== */

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

/* Insert a key known to be absent; capacity was reserved. */
static void table_insert(table *t, binding b)
{
    size_t i = table_home(t, b.key);
    while (t->slots[i].region != NULL)
        i = (i + 1) & (t->cap - 1);
    t->slots[i] = b;
    t->count++;
}

/* Room for `extra` more bindings at a load of at most one half. */
static bool table_reserve(table *t, size_t extra)
{
    if ((t->count + extra) * 2 <= t->cap)
        return true;
    size_t cap = t->cap != 0 ? t->cap : TABLE_MIN_CAP;
    while ((t->count + extra) * 2 > cap) {
        if (cap > SIZE_MAX / 4 / sizeof(binding))
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
            table_insert(t, old.slots[i]);
    free(old.slots);
    return true;
}

/* Remove a binding and return it. Backward-shift deletion keeps every probe chain
 * unbroken without tombstones. */
static binding table_remove(table *t, binding *b)
{
    const binding removed = *b;
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
    t->slots[hole] = (binding){ 0 };
    t->count--;
    return removed;
}

/* Visits every binding: a snapshot of the slots, so that f may change the table. */
static void table_take_all(table *t, binding **all, size_t *n)
{
    *all = NULL;
    *n = 0;
    if (t->count == 0)
        return;
    binding *list = malloc(t->count * sizeof *list);
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].region != NULL && list != NULL)
            list[(*n)++] = t->slots[i];
    memset(t->slots, 0, t->cap * sizeof *t->slots);
    t->count = 0;
    *all = list;
}

/* ==================================================================================== */
/* The session                                                                           */
/* ==================================================================================== */

__attribute__((format(printf, 2, 3))) static shmlink_code violation(shmlink_error *err,
                                                                    const char *fmt, ...)
{
    char text[SHMLINK_MESSAGE_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return set_error(err, SHMLINK_ERR_PROTOCOL_VIOLATION, OP_RECV,
                     "%s; the connection was closed (docs/PROTOCOL.md section 7)", text);
}

shmlink_code session_init(session *s, const shmlink_limits *in, bool accept_writable,
                          uint64_t realm, shmlink_error *err)
{
    shmlink_limits l = in != NULL ? *in : (shmlink_limits){ 0 };
    if (l.max_regions == 0)
        l.max_regions = SHMLINK_DEFAULT_MAX_REGIONS;
    if (l.max_payload == 0)
        l.max_payload = SHMLINK_DEFAULT_MAX_PAYLOAD;
    if (l.max_region_size == 0)
        l.max_region_size = 16 * GIB;
    if (l.max_bound_regions == 0)
        l.max_bound_regions = 1024;
    if (l.max_mapped_bytes == 0)
        l.max_mapped_bytes = 16 * GIB;
    if (l.max_regions > SHMLINK_MAX_REGIONS_MAX || l.max_payload > SHMLINK_MAX_PAYLOAD_MAX)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, "limits",
                         "limits must allow 1 to %u regions and at most %u payload bytes per "
                         "message, not %u and %u",
                         SHMLINK_MAX_REGIONS_MAX, SHMLINK_MAX_PAYLOAD_MAX, l.max_regions,
                         l.max_payload);
    *s = (session){ .limits = l, .accept_writable = accept_writable, .realm = realm, .next_id = 1 };
    s->fate = fate_new();
    if (s->fate == NULL)
        return set_error(err, SHMLINK_ERR_OS, "limits", "out of memory");
    return SHMLINK_OK;
}

static void unbind_all_locked(session *s, shmlink_endpoint *ep)
{
    binding *all;
    size_t n;
    table_take_all(&s->own_by_serial, &all, &n);
    free(all);
    table_take_all(&s->own_by_id, &all, &n);
    for (size_t i = 0; i < n; i++) {
        region_remove_binder_locked(all[i].region, ep);
        region_unref_locked(all[i].region);
    }
    free(all);
    table_take_all(&s->peer, &all, &n);
    for (size_t i = 0; i < n; i++) {
        memfile_unref(all[i].file);
        region_unref_locked(all[i].region);
    }
    free(all);
    s->held_bytes = 0;
}

void session_end_locked(session *s, shmlink_endpoint *ep, bool by_peer)
{
    if (s->ended)
        return;
    s->ended = true;
    s->nreleases = 0;
    unbind_all_locked(s, ep);
    if (s->fate->state == FATE_OPEN)
        s->fate->state = by_peer ? FATE_ENDED_BY_PEER : FATE_ENDED_HERE;
    if (!by_peer)
        regions_give_up_from_locked(s->fate);
}

void session_destroy_locked(session *s, shmlink_endpoint *ep)
{
    session_end_locked(s, ep, false);
    free(s->own_by_serial.slots);
    free(s->own_by_id.slots);
    free(s->peer.slots);
    free(s->releases);
    fate_unref(s->fate);
    *s = (session){ 0 };
}

size_t session_own_count(const session *s) { return s->own_by_id.count; }
size_t session_peer_count(const session *s) { return s->peer.count; }

/* ---- sending ----------------------------------------------------------------------- */

static void put_header(uint8_t *h, unsigned kind, size_t count, size_t payload_len)
{
    h[SHMLINK_HEADER_OFF_KIND] = (uint8_t)kind;
    h[SHMLINK_HEADER_OFF_FLAGS] = 0;
    shmlink_put_le16(h + SHMLINK_HEADER_OFF_REGION_COUNT, (uint16_t)count);
    shmlink_put_le32(h + SHMLINK_HEADER_OFF_PAYLOAD_LEN, (uint32_t)payload_len);
}

static void put_desc(uint8_t *d, descriptor v)
{
    shmlink_put_le32(d + SHMLINK_DESC_OFF_ID, v.id);
    shmlink_put_le32(d + SHMLINK_DESC_OFF_FLAGS, v.flags);
    shmlink_put_le64(d + SHMLINK_DESC_OFF_SIZE, v.size);
}

size_t session_poll_control(const session *s, uint8_t *frame, control_kind *kind, size_t *count)
{
    *kind = CONTROL_NONE;
    *count = 0;
    if (s->ended)
        return 0;
    if (!s->hello_sent) {
        put_header(frame, SHMLINK_KIND_HELLO, 0, SHMLINK_HELLO_PAYLOAD_LEN);
        uint8_t *p = frame + SHMLINK_HEADER_SIZE;
        memcpy(p + SHMLINK_HELLO_OFF_MAGIC, SHMLINK_MAGIC, SHMLINK_MAGIC_LEN);
        shmlink_put_le16(p + SHMLINK_HELLO_OFF_VERSION, SHMLINK_VERSION);
        shmlink_put_le16(p + SHMLINK_HELLO_OFF_MAX_REGIONS, (uint16_t)s->limits.max_regions);
        shmlink_put_le32(p + SHMLINK_HELLO_OFF_MAX_PAYLOAD, s->limits.max_payload);
        *kind = CONTROL_HELLO;
        return SHMLINK_HELLO_FRAME_SIZE;
    }
    if (!s->have_peer || s->nreleases == 0)
        return 0;
    const size_t n = s->nreleases < s->peer_max_regions ? s->nreleases : s->peer_max_regions;
    put_header(frame, SHMLINK_KIND_RELEASE, n, 0);
    for (size_t i = 0; i < n; i++)
        put_desc(frame + SHMLINK_HEADER_SIZE + i * SHMLINK_DESC_SIZE, s->releases[i]);
    *kind = CONTROL_RELEASE;
    *count = n;
    return SHMLINK_HEADER_SIZE + n * SHMLINK_DESC_SIZE;
}

void session_control_sent(session *s, control_kind kind, size_t count)
{
    if (kind == CONTROL_HELLO) {
        s->hello_sent = true;
    } else if (kind == CONTROL_RELEASE) {
        memmove(s->releases, s->releases + count, (s->nreleases - count) * sizeof *s->releases);
        s->nreleases -= count;
    }
}

shmlink_code session_check_message(const session *s, size_t payload_len, const attachment *atts,
                                   size_t count, shmlink_error *err, const char *op)
{
    const uint32_t max_payload = s->have_peer ? s->peer_max_payload : SHMLINK_MAX_PAYLOAD_MAX;
    const uint32_t max_regions = s->have_peer ? s->peer_max_regions : SHMLINK_MAX_REGIONS_MAX;
    if (payload_len > max_payload)
        return set_error(err, SHMLINK_ERR_PAYLOAD_TOO_LARGE, op,
                         "the payload has %zu bytes but the peer accepts at most %u; put large "
                         "data in a region",
                         payload_len, max_payload);
    if (count > max_regions)
        return set_error(err, SHMLINK_ERR_TOO_MANY_REGIONS, op,
                         "%zu regions attached but the peer accepts at most %u per message; send "
                         "several messages",
                         count, max_regions);
    for (size_t i = 0; i < count; i++) {
        if (atts[i].region == NULL)
            return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "attachment %zu is NULL", i);
        const shmlink_code code = region_check_usable(atts[i].region, err, op);
        if (code != SHMLINK_OK)
            return code;
    }
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < i; j++)
            if (atts[i].region == atts[j].region && (atts[i].transfer || atts[j].transfer))
                return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                                 "a transferred region can be attached to a message only once");
    return SHMLINK_OK;
}

bool session_own_id(const session *s, const shmlink_region *r, uint32_t *id)
{
    const binding *b = table_find(&s->own_by_serial, r->serial);
    if (b != NULL && id != NULL)
        *id = b->id;
    return b != NULL;
}

/* The next unbound id from the last one handed out, skipping 0 and the ids planned for
 * this frame; not reused until all 2^32 - 1 have been (5.2 rule 3). */
static uint32_t next_free_id(const session *s, const uint32_t *planned, size_t nplanned)
{
    uint32_t id = (uint32_t)s->next_id;
    for (;; id++) {
        if (id == 0 || table_find(&s->own_by_id, id) != NULL)
            continue;
        bool taken = false;
        for (size_t i = 0; i < nplanned && !taken; i++)
            taken = planned[i] == id;
        if (!taken)
            return id;
    }
}

shmlink_code session_encode_locked(session *s, size_t payload_len, const attachment *atts,
                                   size_t count, uint8_t *frame, size_t *frame_len,
                                   memfile **files, uint32_t *new_ids, size_t *new_index,
                                   size_t *nnew, shmlink_error *err, const char *op)
{
    *nnew = 0;
    put_header(frame, SHMLINK_KIND_MESSAGE, count, payload_len);
    for (size_t i = 0; i < count; i++) {
        shmlink_region *r = atts[i].region;
        descriptor d = { 0, 0, r->size };
        const binding *b = table_find(&s->own_by_serial, r->serial);
        size_t earlier = *nnew;
        for (size_t k = 0; k < *nnew && earlier == *nnew; k++)
            if (atts[new_index[k]].region == r)
                earlier = k;
        if (b != NULL) {
            d.id = b->id;
        } else if (earlier < *nnew) {
            d.id = new_ids[earlier]; /* 5.2 rule 5: only the first occurrence binds it */
        } else {
            d.id = next_free_id(s, new_ids, *nnew);
            d.flags |= SHMLINK_DESC_NEW;
            files[*nnew] = memfile_ref(r->file);
            new_ids[*nnew] = d.id;
            new_index[(*nnew)++] = i;
        }
        if (r->frozen)
            d.flags |= SHMLINK_DESC_FROZEN;
        if (atts[i].transfer)
            d.flags |= SHMLINK_DESC_TRANSFER;
        put_desc(frame + SHMLINK_HEADER_SIZE + i * SHMLINK_DESC_SIZE, d);
    }
    /* Room for the new bindings now: after the message left, binding must not fail. */
    if (!table_reserve(&s->own_by_serial, *nnew) || !table_reserve(&s->own_by_id, *nnew)) {
        for (size_t k = 0; k < *nnew; k++)
            memfile_unref(files[k]);
        *nnew = 0;
        return set_error(err, SHMLINK_ERR_OS, op, "out of memory");
    }
    *frame_len = SHMLINK_HEADER_SIZE + count * SHMLINK_DESC_SIZE;
    return SHMLINK_OK;
}

void session_message_sent_locked(session *s, shmlink_endpoint *ep, const attachment *atts,
                                 const uint32_t *new_ids, const size_t *new_index, size_t nnew)
{
    for (size_t k = 0; k < nnew; k++) {
        shmlink_region *r = atts[new_index[k]].region;
        table_insert(&s->own_by_serial, (binding){ r->serial, new_ids[k], r, NULL });
        table_insert(&s->own_by_id, (binding){ new_ids[k], new_ids[k], region_ref_locked(r), NULL });
        s->next_id = (uint64_t)new_ids[k] + 1;
        if (!region_add_binder_locked(r, ep))
            session_release_locked(s, ep, r); /* closed meanwhile: release at once */
    }
}

bool session_release_locked(session *s, shmlink_endpoint *ep, shmlink_region *r)
{
    binding *b = table_find(&s->own_by_serial, r->serial);
    if (b == NULL)
        return false;
    const uint32_t id = b->id;
    table_remove(&s->own_by_serial, b);
    binding *by_id = table_find(&s->own_by_id, id);
    if (by_id != NULL)
        table_remove(&s->own_by_id, by_id);
    region_remove_binder_locked(r, ep);
    if (!s->ended) {
        if (s->nreleases == s->releases_cap) {
            const size_t cap = s->releases_cap != 0 ? 2 * s->releases_cap : 8;
            descriptor *more = realloc(s->releases, cap * sizeof *more);
            if (more != NULL) {
                s->releases = more;
                s->releases_cap = cap;
            }
        }
        /* Out of memory: the peer keeps the binding until the connection ends. */
        if (s->nreleases < s->releases_cap)
            s->releases[s->nreleases++] = (descriptor){ id, 0, r->size };
    }
    if (by_id != NULL)
        region_unref_locked(r);
    return true;
}

/* ---- receiving --------------------------------------------------------------------- */

typedef struct frame {
    unsigned kind;
    size_t count;
    uint32_t payload_len;
    const uint8_t *descs;
    const uint8_t *payload;
} frame;

static descriptor desc_at(const frame *f, size_t i)
{
    const uint8_t *d = f->descs + i * SHMLINK_DESC_SIZE;
    return (descriptor){ shmlink_get_le32(d + SHMLINK_DESC_OFF_ID),
                         shmlink_get_le32(d + SHMLINK_DESC_OFF_FLAGS),
                         shmlink_get_le64(d + SHMLINK_DESC_OFF_SIZE) };
}

/* Section 2, 4 and 7 rule 6: the structure of one record. */
static shmlink_code parse_frame(const uint8_t *b, size_t len, frame *f, shmlink_error *err)
{
    if (len < SHMLINK_HEADER_SIZE)
        return violation(err, "a %zu-byte record is shorter than the %u-byte header", len,
                         SHMLINK_HEADER_SIZE);
    *f = (frame){ .kind = b[SHMLINK_HEADER_OFF_KIND],
                  .count = shmlink_get_le16(b + SHMLINK_HEADER_OFF_REGION_COUNT),
                  .payload_len = shmlink_get_le32(b + SHMLINK_HEADER_OFF_PAYLOAD_LEN),
                  .descs = b + SHMLINK_HEADER_SIZE };
    if (b[SHMLINK_HEADER_OFF_FLAGS] != 0)
        return violation(err, "header flags are %#x; they must be 0", b[SHMLINK_HEADER_OFF_FLAGS]);
    if (SHMLINK_FRAME_SIZE(f->count, f->payload_len) != len)
        return violation(err,
                         "the header announces %zu regions and %u payload bytes, but the record "
                         "has %zu bytes",
                         f->count, (unsigned)f->payload_len, len);
    f->payload = f->descs + f->count * SHMLINK_DESC_SIZE;
    for (size_t i = 0; i < f->count; i++) {
        const descriptor d = desc_at(f, i);
        if (d.id == 0)
            return violation(err, "region id 0 is reserved");
        if (d.flags & ~SHMLINK_DESC_KNOWN_FLAGS)
            return violation(err, "region %u has unknown flags %#x", (unsigned)d.id, (unsigned)d.flags);
        if (d.size == 0)
            return violation(err, "region %u has size 0", (unsigned)d.id);
        if (f->kind == SHMLINK_KIND_RELEASE && d.flags != 0)
            return violation(err, "released region %u carries flags", (unsigned)d.id);
    }
    switch (f->kind) {
    case SHMLINK_KIND_MESSAGE:
        return SHMLINK_OK;
    case SHMLINK_KIND_RELEASE:
        return f->payload_len == 0 ? SHMLINK_OK : violation(err, "a RELEASE frame carries a payload");
    case SHMLINK_KIND_HELLO:
        if (f->count == 0 && f->payload_len == SHMLINK_HELLO_PAYLOAD_LEN)
            return SHMLINK_OK;
        return violation(err, "a HELLO frame must carry %u payload bytes and no regions",
                         SHMLINK_HELLO_PAYLOAD_LEN);
    default:
        return violation(err, "unknown frame kind %u", f->kind);
    }
}

/* Section 3 rule 3: the first record, judged magic and version first. */
static shmlink_code parse_hello(session *s, const uint8_t *b, size_t len, size_t nfds,
                                shmlink_error *err)
{
    const uint8_t *p = b + SHMLINK_HEADER_SIZE;
    if (len >= SHMLINK_HEADER_SIZE + SHMLINK_HELLO_OFF_MAX_REGIONS && b[0] == SHMLINK_KIND_HELLO) {
        if (memcmp(p + SHMLINK_HELLO_OFF_MAGIC, SHMLINK_MAGIC, SHMLINK_MAGIC_LEN) != 0)
            return set_error(err, SHMLINK_ERR_PEER_INCOMPATIBLE, OP_RECV,
                             "the peer's first frame is not a shmlink HELLO (wrong magic); the "
                             "connection was closed");
        const unsigned version = shmlink_get_le16(p + SHMLINK_HELLO_OFF_VERSION);
        if (version != SHMLINK_VERSION)
            return set_error(err, SHMLINK_ERR_PEER_INCOMPATIBLE, OP_RECV,
                             "the peer speaks shmlink protocol version %u; this side speaks %u "
                             "and versions do not mix: upgrade %s shmlink library; the "
                             "connection was closed",
                             version, SHMLINK_VERSION,
                             version < SHMLINK_VERSION ? "the peer's" : "this side's");
    }
    frame f;
    const shmlink_code code = parse_frame(b, len, &f, err);
    if (code != SHMLINK_OK)
        return code;
    if (f.kind != SHMLINK_KIND_HELLO)
        return violation(err, "the peer's first frame is not a HELLO");
    const unsigned max_regions = shmlink_get_le16(p + SHMLINK_HELLO_OFF_MAX_REGIONS);
    const uint32_t max_payload = shmlink_get_le32(p + SHMLINK_HELLO_OFF_MAX_PAYLOAD);
    if (max_regions < SHMLINK_MAX_REGIONS_MIN || max_regions > SHMLINK_MAX_REGIONS_MAX ||
        max_payload > SHMLINK_MAX_PAYLOAD_MAX)
        return violation(err,
                         "the peer announced limits outside the protocol's bounds: %u regions, %u "
                         "bytes",
                         max_regions, (unsigned)max_payload);
    if (nfds != 0)
        return violation(err, "descriptors arrived with the HELLO");
    s->have_peer = true;
    s->peer_max_regions = max_regions;
    s->peer_max_payload = max_payload;
    return SHMLINK_OK;
}

/* Section 5.3 steps 1-5; does not take fd. */
static shmlink_code inspect(int fd, uint64_t size, bool frozen, file_info *info, shmlink_error *err)
{
    shmlink_code code = sys_file_info(fd, info, err, OP_RECV);
    if (code != SHMLINK_OK)
        return code;
    if (!info->regular)
        return set_error(err, SHMLINK_ERR_REGION_NOT_MEMFD, OP_RECV,
                         "the peer sent a descriptor that is not a memory file (a pipe, socket or "
                         "device); the connection was closed");
    seal_set seals;
    if ((code = sys_seals(fd, &seals, err, OP_RECV)) != SHMLINK_OK)
        return code;
    if (!seals.sealable)
        return set_error(err, SHMLINK_ERR_REGION_NOT_MEMFD, OP_RECV,
                         "the peer sent a file that cannot be sealed (not a memfd); regions must "
                         "come from memfd_create; the connection was closed");
    if (!info->on_shmem)
        return set_error(err, SHMLINK_ERR_REGION_NOT_SHMEM, OP_RECV,
                         "the peer sent a memory file that is not on shmem (a hugetlbfs memfd, "
                         "whose owner could take its pages away and crash this process with "
                         "SIGBUS); the connection was closed");
    if (!seals.shrink || !seals.grow)
        return set_error(err, SHMLINK_ERR_REGION_UNSEALED, OP_RECV,
                         "the peer sent a memfd without F_SEAL_SHRINK and F_SEAL_GROW; it could "
                         "shrink it and crash this process; the connection was closed");
    if (frozen && !seals.write)
        return set_error(err, SHMLINK_ERR_REGION_UNSEALED, OP_RECV,
                         "the peer marked a region frozen but did not add F_SEAL_WRITE; the "
                         "connection was closed");
    if (!frozen && (seals.write || seals.future_write))
        return violation(err, "the peer sent a write-sealed region without the frozen flag");
    if (info->size < 0 || (uint64_t)info->size != size)
        return set_error(err, SHMLINK_ERR_REGION_SIZE_MISMATCH, OP_RECV,
                         "the descriptor says %llu bytes but the file has %lld bytes; the "
                         "connection was closed",
                         (unsigned long long)size, (long long)info->size);
    if (size > (uint64_t)SIZE_MAX)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, OP_RECV,
                         "the region is larger than this process's address space");
    return SHMLINK_OK;
}

static bool peer_holds_file(const session *s, file_id id, const binding *except)
{
    for (size_t i = 0; i < s->peer.cap; i++) {
        const binding *b = &s->peer.slots[i];
        if (b->region != NULL && b != except && b->region->id.dev == id.dev && b->region->id.ino == id.ino)
            return true;
    }
    return false;
}

/* Section 7.1, in order: trust, then the connection's limits. */
static shmlink_code check_policy(const session *s, descriptor d, file_id id, shmlink_error *err)
{
    const char *again = "; the connection was closed (raise the limit if the peer is trusted)";
    if (!(d.flags & SHMLINK_DESC_FROZEN) && !s->accept_writable)
        return set_error(err, SHMLINK_ERR_REGION_WRITABLE, OP_RECV,
                         "the peer sent a region it can still write, and this endpoint accepts "
                         "only frozen regions from peers it did not start (opt in with "
                         "accept_writable for trusted peers); the connection was closed");
    if (d.size > s->limits.max_region_size)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, OP_RECV,
                         "the peer sent a %llu-byte region; this side accepts at most %llu "
                         "(max_region_size)%s",
                         (unsigned long long)d.size, (unsigned long long)s->limits.max_region_size, again);
    if (s->peer.count >= s->limits.max_bound_regions)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, OP_RECV,
                         "the peer has %zu regions bound, the most this side accepts "
                         "(max_bound_regions); it must RELEASE regions before sending new ones%s",
                         s->peer.count, again);
    const uint64_t held = peer_holds_file(s, id, NULL) ? s->held_bytes : s->held_bytes + d.size;
    if (held < s->held_bytes || held > s->limits.max_mapped_bytes)
        return set_error(err, SHMLINK_ERR_LIMIT_EXCEEDED, OP_RECV,
                         "the peer's regions would hold %llu bytes mapped; this side accepts at "
                         "most %llu (max_mapped_bytes)%s",
                         (unsigned long long)held, (unsigned long long)s->limits.max_mapped_bytes,
                         again);
    return SHMLINK_OK;
}

/* Binds the peer's id (region: one reference, file: one reference, both taken). */
static shmlink_code bind_peer(session *s, uint32_t id, shmlink_region *r, memfile *file,
                              shmlink_error *err)
{
    if (!table_reserve(&s->peer, 1)) {
        memfile_unref(file);
        region_unref_locked(r);
        return set_error(err, SHMLINK_ERR_OS, OP_RECV, "out of memory");
    }
    if (!peer_holds_file(s, r->id, NULL))
        s->held_bytes += r->size;
    table_insert(&s->peer, (binding){ id, id, r, file });
    return SHMLINK_OK;
}

static void unbind_peer(session *s, binding *b)
{
    const binding gone = table_remove(&s->peer, b);
    if (!peer_holds_file(s, gone.region->id, NULL))
        s->held_bytes -= gone.region->size;
    memfile_unref(gone.file);
    region_unref_locked(gone.region);
}

/* Maps a file that passed inspect as a new region of this session's realm, charged to the
 * process limits; file: one reference, taken. */
static shmlink_code adopt(session *s, memfile *file, uint64_t size, file_id id, bool frozen,
                          shmlink_region **out, shmlink_error *err)
{
    shmlink_code code = process_reserve_locked(size, err);
    if (code != SHMLINK_OK) {
        memfile_unref(file);
        return code;
    }
    void *base;
    if ((code = sys_map(file->fd, size, frozen, &base, err, OP_RECV)) != SHMLINK_OK) {
        process_unreserve_locked(size);
        memfile_unref(file);
        return code;
    }
    *out = region_new_locked(file, base, size, id, s->realm, frozen, size);
    if (*out == NULL) {
        sys_unmap(base, size);
        process_unreserve_locked(size);
        memfile_unref(file);
        return set_error(err, SHMLINK_ERR_OS, OP_RECV, "out of memory");
    }
    return SHMLINK_OK;
}

/* 5.2 rule 1 and 5.3, with the policy checked before anything is mapped. Takes fd. */
static shmlink_code bind_new(session *s, descriptor d, int fd, shmlink_region **out,
                             shmlink_error *err)
{
    if (table_find(&s->peer, d.id) != NULL) {
        close_fd(fd);
        return violation(err, "region id %u is already bound; RELEASE it before reusing it",
                         (unsigned)d.id);
    }
    const bool frozen = (d.flags & SHMLINK_DESC_FROZEN) != 0;
    file_info info;
    shmlink_code code = inspect(fd, d.size, frozen, &info, err);
    if (code == SHMLINK_OK)
        code = check_policy(s, d, info.id, err);
    if (code != SHMLINK_OK) {
        close_fd(fd);
        return code;
    }
    shmlink_region *r = region_lookup_locked(s->realm, info.id, frozen);
    if (r != NULL) {
        /* A file this realm holds (typically our own region coming back): the same region,
         * and the duplicate descriptor is closed (5.2 rule 6). */
        close_fd(fd);
        *out = r;
        return bind_peer(s, d.id, region_ref_locked(r), memfile_ref(r->file), err);
    }
    memfile *file = memfile_new(fd);
    if (file == NULL) {
        close_fd(fd);
        return set_error(err, SHMLINK_ERR_OS, OP_RECV, "out of memory");
    }
    if ((code = adopt(s, memfile_ref(file), d.size, info.id, frozen, &r, err)) != SHMLINK_OK) {
        memfile_unref(file);
        return code;
    }
    *out = r;
    return bind_peer(s, d.id, r, file, err);
}

static shmlink_code resolve_known(session *s, descriptor d, shmlink_region **out, shmlink_error *err)
{
    binding *b = table_find(&s->peer, d.id);
    const bool frozen = (d.flags & SHMLINK_DESC_FROZEN) != 0;
    if (b == NULL)
        return violation(err, "unknown region id %u (never sent with its descriptor)", (unsigned)d.id);
    if (b->region->size != d.size)
        return violation(err, "region %u was bound with %llu bytes but the descriptor says %llu",
                         (unsigned)d.id, (unsigned long long)b->region->size,
                         (unsigned long long)d.size);
    if (b->region->frozen != frozen)
        return violation(err, "region %u's frozen flag changed", (unsigned)d.id);
    if (!b->region->closed) {
        *out = b->region;
        return SHMLINK_OK;
    }
    /* This side closed the region while the peer kept it bound: map the file again. */
    file_info info;
    shmlink_code code = inspect(b->file->fd, d.size, frozen, &info, err);
    if (code != SHMLINK_OK)
        return code;
    shmlink_region *r = region_lookup_locked(s->realm, info.id, frozen);
    if (r != NULL)
        region_ref_locked(r);
    else if ((code = adopt(s, memfile_ref(b->file), d.size, info.id, frozen, &r, err)) != SHMLINK_OK)
        return code;
    region_unref_locked(b->region);
    b->region = r;
    *out = r;
    return SHMLINK_OK;
}

static bool reserve_message(shmlink_message *msg, size_t regions, size_t payload_len)
{
    if (regions > msg->region_capacity_) {
        shmlink_region **rs = realloc(msg->regions, regions * sizeof *rs);
        if (rs == NULL)
            return false;
        msg->regions = rs;
        shmlink_descriptor *ds = realloc(msg->descriptors, regions * sizeof *ds);
        if (ds == NULL)
            return false;
        msg->descriptors = ds;
        msg->region_capacity_ = regions;
    }
    if (payload_len > msg->payload_capacity_) {
        uint8_t *p = realloc(msg->payload, payload_len);
        if (p == NULL)
            return false;
        msg->payload = p;
        msg->payload_capacity_ = payload_len;
    }
    return true;
}

static shmlink_code judge(session *s, const uint8_t *b, const received *rec, int *fds, size_t nfds,
                          inbound_kind *kind, shmlink_message *msg, shmlink_error *err)
{
    if (rec->len == 0 && nfds == 0 && !rec->control_truncated) {
        *kind = IN_EOF;
        return SHMLINK_OK;
    }
    if (rec->control_truncated)
        return set_error(err, SHMLINK_ERR_FDS_TRUNCATED, OP_RECV,
                         "the kernel dropped descriptors from a message (%zu arrived and were "
                         "closed): the peer sent more than the %u this side accepts, or this "
                         "process is at its open-file limit (ulimit -n); the connection was closed",
                         nfds, s->limits.max_regions);
    if (rec->data_truncated)
        return violation(err, "the peer sent a record longer than the %llu bytes this side's limits allow",
                         (unsigned long long)SHMLINK_FRAME_SIZE(s->limits.max_regions, s->limits.max_payload));
    if (!s->have_peer) {
        *kind = IN_HANDSHAKE;
        return parse_hello(s, b, rec->len, nfds, err);
    }
    frame f;
    shmlink_code code = parse_frame(b, rec->len, &f, err);
    if (code != SHMLINK_OK)
        return code;
    size_t new_count = 0;
    for (size_t i = 0; i < f.count; i++)
        new_count += (desc_at(&f, i).flags & SHMLINK_DESC_NEW) != 0;
    if (new_count != nfds)
        return violation(err, "%zu descriptors are marked new but %zu file descriptors arrived",
                         new_count, nfds);
    if (f.count > s->limits.max_regions)
        return violation(err, "%zu regions in one message; this side announced at most %u", f.count,
                         s->limits.max_regions);
    if (f.payload_len > s->limits.max_payload)
        return violation(err, "%u payload bytes; this side announced at most %u",
                         (unsigned)f.payload_len, s->limits.max_payload);
    if (f.kind == SHMLINK_KIND_HELLO)
        return violation(err, "a second HELLO");
    if (f.kind == SHMLINK_KIND_RELEASE) {
        for (size_t i = 0; i < f.count; i++) {
            const descriptor d = desc_at(&f, i);
            binding *bound = table_find(&s->peer, d.id);
            if (bound == NULL)
                return violation(err, "RELEASE of region id %u, which is not bound", (unsigned)d.id);
            if (bound->region->size != d.size)
                return violation(err, "RELEASE of region %u with the wrong size", (unsigned)d.id);
            unbind_peer(s, bound);
        }
        *kind = IN_RELEASED;
        return SHMLINK_OK;
    }
    if (!reserve_message(msg, f.count, f.payload_len))
        return set_error(err, SHMLINK_ERR_OS, OP_RECV, "out of memory");
    size_t next_fd = 0;
    for (size_t i = 0; i < f.count; i++) {
        const descriptor d = desc_at(&f, i);
        shmlink_region *r = NULL;
        if (d.flags & SHMLINK_DESC_NEW) {
            const int fd = fds[next_fd];
            fds[next_fd++] = -1; /* 5.2 rule 2: in order; bind_new owns it now */
            code = bind_new(s, d, fd, &r, err);
        } else {
            code = resolve_known(s, d, &r, err);
        }
        if (code != SHMLINK_OK)
            return code;
        msg->regions[i] = region_ref_locked(r);
        msg->descriptors[i] = (shmlink_descriptor){ d.id, (d.flags & SHMLINK_DESC_NEW) != 0,
                                                    (d.flags & SHMLINK_DESC_FROZEN) != 0,
                                                    (d.flags & SHMLINK_DESC_TRANSFER) != 0 };
        msg->region_count = i + 1;
    }
    /* The frame is accepted: every region in it is back with this process (5.2 rule 8). */
    for (size_t i = 0; i < f.count; i++)
        region_arrive_locked(msg->regions[i], s->fate, msg->descriptors[i].transferred);
    if (f.payload_len != 0)
        memcpy(msg->payload, f.payload, f.payload_len);
    msg->payload_len = f.payload_len;
    *kind = IN_MESSAGE;
    return SHMLINK_OK;
}

shmlink_code session_handle_locked(session *s, shmlink_endpoint *ep, const uint8_t *bytes,
                                   const received *rec, int *fds, size_t nfds,
                                   inbound_kind *kind, shmlink_message *msg, shmlink_error *err)
{
    shmlink_code code;
    if (s->ended)
        code = set_error(err, SHMLINK_ERR_CLOSED, OP_RECV, "the endpoint is closed; create or accept a new one");
    else
        code = judge(s, bytes, rec, fds, nfds, kind, msg, err);
    /* 5.4 rule 2: every descriptor not kept is closed, on any outcome. */
    for (size_t i = 0; i < nfds; i++) {
        close_fd(fds[i]);
        fds[i] = -1;
    }
    if (code != SHMLINK_OK) {
        for (size_t i = 0; i < msg->region_count; i++)
            region_unref_locked(msg->regions[i]);
        msg->region_count = 0;
        msg->payload_len = 0;
        session_end_locked(s, ep, false);
    } else if (*kind == IN_EOF) {
        session_end_locked(s, ep, true);
    }
    return code;
}
