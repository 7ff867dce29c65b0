/*
 * peer.c - shmlink-peer, the C interop peer: the roles of peers/SCENARIO.md.
 *
 *   shmlink-peer driver    <socket-path> <scenario.json> <transcript-out>
 *   shmlink-peer responder <socket-path> <transcript-out>
 *   shmlink-peer echo      <socket-path>
 *   shmlink-peer hostile   <socket-path> <hostile-frames.json> <case-name>
 *   shmlink-peer expect-hostile <socket-path> <hostile-frames.json> <case-name>
 *
 * The peer always connects. Exit 0 when the role completed and every check passed;
 * otherwise one line on stderr and exit 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS, pipe2, mkostemp */
#endif

#include "json.h"
#include "sha256.h"
#include "shmlink.h"

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
#include <time.h>
#include <unistd.h>

#define PROGRAM "shmlink-peer"

/* SCENARIO.md: "A peer never waits more than 60 seconds for anything." */
#define PEER_TIMEOUT_MS 60000u
/* The harness listens before it starts us; a short retry covers a listener that has
 * bound its path but not called listen(2) yet. */
#define CONNECT_RETRY_MS 5000u
#define CONNECT_RETRY_STEP_NS 10000000L /* 10 ms */
#define NS_PER_MS 1000000L
#define MS_PER_S 1000L

/* The fill pattern (SCENARIO.md): byte k of pattern(seed, len) is
 * (seed * 131 + (k % 4096) * 7 + (k / 4096) * 13) mod 256. */
#define PATTERN_PAGE 4096u
#define PATTERN_SEED_FACTOR 131u
#define PATTERN_BYTE_FACTOR 7u
#define PATTERN_PAGE_FACTOR 13u
#define PATTERN_VARIANTS 256u /* a page depends only on its first byte, mod 256 */

/* What the echo role touches: one byte per page of every region. */
#define TOUCH_STRIDE 4096u

#define SCENARIO_VERSION 1u
#define ERR_LEN 256u

static const char *g_role = "";

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROGRAM " %s: ", g_role);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_FAILURE);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n != 0 ? n : 1);
    if (p == NULL)
        die("out of memory");
    return p;
}

/* ==================================================================================== */
/* Pattern                                                                               */
/* ==================================================================================== */

/* The 256 distinct pages: page c holds bytes c + 7j (mod 256). Built once. */
static uint8_t *g_pattern_pages;

static void pattern_init(void)
{
    if (g_pattern_pages != NULL)
        return;
    g_pattern_pages = xmalloc((size_t)PATTERN_VARIANTS * PATTERN_PAGE);
    for (unsigned c = 0; c < PATTERN_VARIANTS; c++)
        for (unsigned j = 0; j < PATTERN_PAGE; j++)
            g_pattern_pages[(size_t)c * PATTERN_PAGE + j] =
                (uint8_t)(c + j * PATTERN_BYTE_FACTOR);
}

static void pattern_fill(uint8_t *dst, uint64_t seed, uint64_t len)
{
    pattern_init();
    const uint64_t base = (seed % PATTERN_VARIANTS) * PATTERN_SEED_FACTOR;
    uint64_t page = 0;
    for (uint64_t off = 0; off < len; off += PATTERN_PAGE, page++) {
        const uint64_t first = (base + (page % PATTERN_VARIANTS) * PATTERN_PAGE_FACTOR) %
                               PATTERN_VARIANTS;
        const uint64_t n = len - off < PATTERN_PAGE ? len - off : PATTERN_PAGE;
        memcpy(dst + off, g_pattern_pages + first * PATTERN_PAGE, (size_t)n);
    }
}

/* ==================================================================================== */
/* Connections and JSON helpers                                                          */
/* ==================================================================================== */

static long long now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime: %s", strerror(errno));
    return (long long)ts.tv_sec * MS_PER_S + ts.tv_nsec / NS_PER_MS;
}

static int connect_socket(const char *path)
{
    const long long deadline = now_ms() + CONNECT_RETRY_MS;
    for (;;) {
        const int fd = shmlink_socket_connect(path);
        if (fd >= 0)
            return fd;
        if ((errno != ENOENT && errno != ECONNREFUSED) || now_ms() >= deadline)
            die("connect %s: %s", path, strerror(errno));
        const struct timespec step = { 0, CONNECT_RETRY_STEP_NS };
        nanosleep(&step, NULL); /* an early wake-up only shortens one retry step */
    }
}

static shmlink_endpoint *connect_endpoint(const char *path)
{
    shmlink_options opts = SHMLINK_OPTIONS_DEFAULT;
    opts.timeout_ms = PEER_TIMEOUT_MS;
    shmlink_endpoint *ep;
    const shmlink_error err = shmlink_endpoint_open(connect_socket(path), &opts, &ep);
    if (err != SHMLINK_OK)
        die("opening the connection: %s (%s)", shmlink_error_code(err), strerror(errno));
    return ep;
}

static void die_shmlink(shmlink_endpoint *ep, const char *what, shmlink_error err)
{
    die("%s: %s: %s", what, shmlink_error_code(err), shmlink_endpoint_detail(ep));
}

static json_doc *load_json(const char *path)
{
    char err[ERR_LEN];
    json_doc *doc = json_load_file(path, err, sizeof err);
    if (doc == NULL)
        die("%s: %s", path, err);
    return doc;
}

static uint64_t need_u64(const json_node *obj, const char *key)
{
    uint64_t v;
    if (!json_get_u64(json_get(obj, key), &v))
        die("\"%s\" must be a non-negative integer", key);
    return v;
}

static bool need_bool(const json_node *obj, const char *key)
{
    bool v;
    if (!json_get_bool(json_get(obj, key), &v))
        die("\"%s\" must be a boolean", key);
    return v;
}

static const char *need_string(const json_node *obj, const char *key)
{
    const char *s = json_get_string(json_get(obj, key));
    if (s == NULL)
        die("\"%s\" must be a string", key);
    return s;
}

static const json_node *need_array(const json_node *obj, const char *key)
{
    const json_node *a = json_get(obj, key);
    if (a == NULL || a->type != JSON_ARRAY)
        die("\"%s\" must be an array", key);
    return a;
}

/* ==================================================================================== */
/* Digests and transcripts                                                               */
/* ==================================================================================== */

/* Digests of a message, concatenated (the ack payload's format): the payload's first,
 * then each region's full contents. DIGEST(d, 0) is the payload's, DIGEST(d, 1 + i)
 * region i's. */
#define DIGEST(digests, k) ((digests) + (size_t)(k) * SHA256_DIGEST_LEN)
#define DIGESTS_LEN(regions) ((1 + (size_t)(regions)) * SHA256_DIGEST_LEN)

static void digest_message(const shmlink_message *m, uint8_t *digests)
{
    sha256(m->payload, m->payload_len, DIGEST(digests, 0));
    for (size_t i = 0; i < m->region_count; i++) {
        const shmlink_region *r = m->regions[i].region;
        size_t same = i;
        for (size_t j = 0; j < i && same == i; j++)
            if (m->regions[j].region == r)
                same = j; /* the same region twice in one frame: hash it once */
        if (same != i) {
            memcpy(DIGEST(digests, 1 + i), DIGEST(digests, 1 + same), SHA256_DIGEST_LEN);
            continue;
        }
        const uint8_t *bytes = shmlink_region_bytes(r);
        if (bytes == NULL)
            die("received region %zu is not accessible", i);
        sha256(bytes, (size_t)shmlink_region_size(r), DIGEST(digests, 1 + i));
    }
}

static const char *json_bool_text(bool b) { return b ? "true" : "false"; }

/* One transcript line (SCENARIO.md "Transcripts"). */
static void transcript_append(FILE *f, size_t n, const shmlink_message *m,
                              const uint8_t *digests)
{
    char hex[SHA256_HEX_LEN + 1];
    sha256_hex(DIGEST(digests, 0), hex);
    fprintf(f, "{\"n\":%zu,\"payload_len\":%zu,\"payload_sha256\":\"%s\",\"regions\":[", n,
            m->payload_len, hex);
    for (size_t i = 0; i < m->region_count; i++) {
        const shmlink_received_region *rr = &m->regions[i];
        sha256_hex(DIGEST(digests, 1 + i), hex);
        fprintf(f,
                "%s{\"id\":%u,\"size\":%llu,\"new\":%s,\"frozen\":%s,\"transferred\":%s,"
                "\"sha256\":\"%s\"}",
                i != 0 ? "," : "", (unsigned)rr->id,
                (unsigned long long)shmlink_region_size(rr->region),
                json_bool_text(rr->flags & SHMLINK_DESC_NEW),
                json_bool_text(rr->flags & SHMLINK_DESC_FROZEN),
                json_bool_text(rr->flags & SHMLINK_DESC_TRANSFER), hex);
    }
    fputs("]}\n", f);
}

static FILE *open_transcript(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die("%s: %s", path, strerror(errno));
    return f;
}

static void close_transcript(FILE *f, const char *path)
{
    const bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed)
        die("writing %s failed", path);
}

/* ==================================================================================== */
/* Role driver                                                                           */
/* ==================================================================================== */

typedef struct named_region {
    char *name;
    shmlink_region *region;
    bool digest_valid; /* digest matches the contents: filled or hashed since last change */
    uint8_t digest[SHA256_DIGEST_LEN];
} named_region;

typedef struct region_names {
    named_region *items;
    size_t count, cap;
} region_names;

static named_region *find_name(region_names *names, const char *name)
{
    for (size_t i = 0; i < names->count; i++)
        if (strcmp(names->items[i].name, name) == 0)
            return &names->items[i];
    return NULL;
}

static named_region *add_name(region_names *names, const char *name, uint64_t size)
{
    if (names->count == names->cap) {
        names->cap = names->cap != 0 ? names->cap * 2 : 8;
        names->items = realloc(names->items, names->cap * sizeof *names->items);
        if (names->items == NULL)
            die("out of memory");
    }
    named_region *nr = &names->items[names->count++];
    *nr = (named_region){ 0 };
    const size_t len = strlen(name) + 1;
    nr->name = xmalloc(len);
    memcpy(nr->name, name, len);
    const shmlink_error err = shmlink_region_create(size, &nr->region);
    if (err != SHMLINK_OK)
        die("creating region \"%s\" of %llu bytes: %s (%s)", name, (unsigned long long)size,
            shmlink_error_code(err), strerror(errno));
    return nr;
}

static void remove_name(region_names *names, named_region *nr)
{
    shmlink_region_unmap(nr->region);
    free(nr->name);
    *nr = names->items[--names->count];
}

static bool same_file(const shmlink_region *a, const shmlink_region *b)
{
    dev_t da, db;
    ino_t ia, ib;
    shmlink_region_file_id(a, &da, &ia);
    shmlink_region_file_id(b, &db, &ib);
    return da == db && ia == ib;
}

typedef struct driver {
    shmlink_endpoint *ep;
    FILE *transcript;
    size_t received;
    region_names names;
    uint8_t payload[SHMLINK_MAX_PAYLOAD_MAX];
    shmlink_attachment atts[SHMLINK_DEFAULT_MAX_REGIONS];
    /* Indices into names.items, not pointers: creating a region may move the array. */
    size_t slots[SHMLINK_DEFAULT_MAX_REGIONS];
    uint8_t expected[DIGESTS_LEN(SHMLINK_DEFAULT_MAX_REGIONS)];
    uint8_t got[DIGESTS_LEN(SHMLINK_MAX_REGIONS_MAX)];
    shmlink_message ack;
} driver;

static void driver_send(driver *d, size_t step, const json_node *s)
{
    const json_node *payload = json_get(s, "payload");
    const uint64_t payload_len = need_u64(payload, "len");
    const uint64_t payload_seed = need_u64(payload, "seed");
    const json_node *regions = need_array(s, "regions");
    if (payload_len > SHMLINK_MAX_PAYLOAD_MAX || regions->count > SHMLINK_DEFAULT_MAX_REGIONS)
        die("step %zu: payload or region count beyond the limits", step);

    /* 1. Create, fill and freeze the named regions. */
    size_t count = 0, transfers = 0;
    for (const json_node *r = regions->child; r != NULL; r = r->next, count++) {
        const char *name = need_string(r, "name");
        const uint64_t size = need_u64(r, "size");
        named_region *nr = find_name(&d->names, name);
        if (nr == NULL)
            nr = add_name(&d->names, name, size);
        else if (shmlink_region_size(nr->region) != size)
            die("step %zu: region \"%s\" has %llu bytes, not %llu", step, name,
                (unsigned long long)shmlink_region_size(nr->region), (unsigned long long)size);
        const json_node *seed = json_get(r, "seed");
        if (!json_is_null(seed)) {
            uint64_t seed_value;
            if (!json_get_u64(seed, &seed_value))
                die("step %zu: \"seed\" must be an integer or null", step);
            uint8_t *bytes = shmlink_region_mut_bytes(nr->region);
            if (bytes == NULL)
                die("step %zu: region \"%s\" cannot be filled (frozen or away)", step, name);
            pattern_fill(bytes, seed_value, size);
            nr->digest_valid = false;
        }
        if (need_bool(r, "freeze") && !shmlink_region_is_frozen(nr->region)) {
            const shmlink_error err = shmlink_region_freeze(nr->region);
            if (err != SHMLINK_OK)
                die("step %zu: freezing \"%s\": %s (%s)", step, name, shmlink_error_code(err),
                    strerror(errno));
        }
        const bool transfer = need_bool(r, "transfer");
        d->atts[count] = (shmlink_attachment){ nr->region, transfer };
        d->slots[count] = (size_t)(nr - d->names.items);
        transfers += transfer;
    }

    /* What the ack must say: digests of exactly what is sent. Hash now, while the
     * regions are ours to read; TRANSFER gives them away. */
    pattern_fill(d->payload, payload_seed, payload_len);
    sha256(d->payload, (size_t)payload_len, DIGEST(d->expected, 0));
    for (size_t i = 0; i < count; i++) {
        named_region *nr = &d->names.items[d->slots[i]];
        if (!nr->digest_valid) {
            const uint8_t *bytes = shmlink_region_bytes(nr->region);
            if (bytes == NULL)
                die("step %zu: region \"%s\" is away", step, nr->name);
            sha256(bytes, (size_t)shmlink_region_size(nr->region), nr->digest);
            nr->digest_valid = true;
        }
        memcpy(DIGEST(d->expected, 1 + i), nr->digest, SHA256_DIGEST_LEN);
    }

    /* 2. Send. */
    shmlink_error err = shmlink_send(d->ep, d->payload, (size_t)payload_len, d->atts, count);
    if (err != SHMLINK_OK)
        die_shmlink(d->ep, "send", err);

    /* 3. The ack, recorded, then checked. */
    err = shmlink_recv(d->ep, &d->ack);
    if (err != SHMLINK_OK)
        die_shmlink(d->ep, "receiving the ack", err);
    digest_message(&d->ack, d->got);
    transcript_append(d->transcript, d->received++, &d->ack, d->got);
    if (d->ack.payload_len != DIGESTS_LEN(count) ||
        memcmp(d->ack.payload, d->expected, d->ack.payload_len) != 0)
        die("step %zu: the ack's digests do not match what was sent", step);

    /* 4. The transferred regions come back, in order, as our own files. */
    if (d->ack.region_count != transfers)
        die("step %zu: ack carries %zu regions, %zu were transferred", step,
            d->ack.region_count, transfers);
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        if (!d->atts[i].transfer)
            continue;
        const shmlink_received_region *rr = &d->ack.regions[k++];
        if (!same_file(rr->region, d->atts[i].region))
            die("step %zu: ack region %zu is not the region \"%s\" we sent", step, k - 1,
                d->names.items[d->slots[i]].name);
        if (!(rr->flags & SHMLINK_DESC_TRANSFER))
            die("step %zu: ack region %zu came back without TRANSFER", step, k - 1);
        /* The responder may have stamped it: its contents are no longer what we hashed. */
        d->names.items[d->slots[i]].digest_valid = shmlink_region_is_frozen(d->atts[i].region);
    }
    shmlink_message_clear(&d->ack);
}

static void driver_release(driver *d, size_t step, const json_node *s)
{
    const char *name = need_string(s, "name");
    named_region *nr = find_name(&d->names, name);
    if (nr == NULL)
        die("step %zu: release of unknown region \"%s\"", step, name);
    const shmlink_error err = shmlink_release(d->ep, nr->region);
    if (err != SHMLINK_OK)
        die_shmlink(d->ep, "release", err);
    remove_name(&d->names, nr); /* a later step with this name creates a new region */
}

static int role_driver(const char *path, const char *scenario_path, const char *out_path)
{
    json_doc *doc = load_json(scenario_path);
    const json_node *root = json_root(doc);
    if (need_u64(root, "version") != SCENARIO_VERSION)
        die("%s: unsupported scenario version", scenario_path);
    const json_node *steps = need_array(root, "steps");

    driver *d = xmalloc(sizeof *d);
    memset(d, 0, sizeof *d);
    d->transcript = open_transcript(out_path);
    d->ep = connect_endpoint(path);
    size_t index = 0;
    for (const json_node *s = steps->child; s != NULL; s = s->next, index++) {
        const char *op = need_string(s, "op");
        if (strcmp(op, "send") == 0)
            driver_send(d, index, s);
        else if (strcmp(op, "release") == 0)
            driver_release(d, index, s);
        else
            die("step %zu: unknown op \"%s\"", index, op);
    }
    shmlink_close(d->ep);
    close_transcript(d->transcript, out_path);
    while (d->names.count != 0)
        remove_name(&d->names, &d->names.items[0]);
    free(d->names.items);
    free(d);
    json_free(doc);
    return EXIT_SUCCESS;
}

/* ==================================================================================== */
/* Roles responder and echo                                                              */
/* ==================================================================================== */

typedef struct responder {
    shmlink_message msg;
    uint8_t digests[DIGESTS_LEN(SHMLINK_MAX_REGIONS_MAX)];
    shmlink_attachment atts[SHMLINK_MAX_REGIONS_MAX];
} responder;

static int role_responder(const char *path, const char *out_path)
{
    responder *st = xmalloc(sizeof *st);
    memset(st, 0, sizeof *st);
    FILE *transcript = open_transcript(out_path);
    shmlink_endpoint *ep = connect_endpoint(path);
    for (size_t n = 0;; n++) {
        shmlink_error err = shmlink_recv(ep, &st->msg);
        if (err == SHMLINK_E_PEER_CLOSED)
            break;
        if (err != SHMLINK_OK)
            die_shmlink(ep, "receive", err);
        const shmlink_message *m = &st->msg;
        /* 1-2. Record it, with the digests taken before anything is stamped. */
        digest_message(m, st->digests);
        transcript_append(transcript, n, m, st->digests);
        /* 3. Stamp transferred, writable regions with their digest; 4. send them back. */
        size_t back = 0;
        for (size_t i = 0; i < m->region_count; i++) {
            const shmlink_received_region *rr = &m->regions[i];
            if (!(rr->flags & SHMLINK_DESC_TRANSFER))
                continue;
            if (!(rr->flags & SHMLINK_DESC_FROZEN)) {
                uint8_t *bytes = shmlink_region_mut_bytes(rr->region);
                if (bytes == NULL)
                    die("region id %u is not writable", (unsigned)rr->id);
                const uint64_t size = shmlink_region_size(rr->region);
                /* A region smaller than a digest gets as much of it as fits. */
                memcpy(bytes, DIGEST(st->digests, 1 + i),
                       size < SHA256_DIGEST_LEN ? (size_t)size : SHA256_DIGEST_LEN);
            }
            st->atts[back++] = (shmlink_attachment){ rr->region, true };
        }
        err = shmlink_send(ep, st->digests, DIGESTS_LEN(m->region_count), st->atts, back);
        if (err != SHMLINK_OK)
            die_shmlink(ep, "sending the ack", err);
    }
    shmlink_message_clear(&st->msg);
    shmlink_close(ep);
    close_transcript(transcript, out_path);
    free(st);
    return EXIT_SUCCESS;
}

/* Keeps the touching reads of the echo role from being optimised away. */
static volatile uint8_t g_touch_sink;

static int role_echo(const char *path)
{
    shmlink_message *msg = xmalloc(sizeof *msg);
    shmlink_attachment *atts = xmalloc(sizeof *atts * SHMLINK_MAX_REGIONS_MAX);
    memset(msg, 0, sizeof *msg);
    shmlink_endpoint *ep = connect_endpoint(path);
    for (;;) {
        shmlink_error err = shmlink_recv(ep, msg);
        if (err == SHMLINK_E_PEER_CLOSED)
            break;
        if (err != SHMLINK_OK)
            die_shmlink(ep, "receive", err);
        uint8_t acc = 0;
        for (size_t i = 0; i < msg->region_count; i++) {
            shmlink_region *r = msg->regions[i].region;
            const volatile uint8_t *bytes = shmlink_region_bytes(r);
            if (bytes == NULL)
                die("region id %u is not accessible", (unsigned)msg->regions[i].id);
            const uint64_t size = shmlink_region_size(r);
            for (uint64_t off = 0; off < size; off += TOUCH_STRIDE)
                acc = (uint8_t)(acc + bytes[off]);
            atts[i] = (shmlink_attachment){ r, false };
        }
        g_touch_sink = acc;
        /* The payload is still in the endpoint's receive buffer; send reads it from there. */
        err = shmlink_send(ep, msg->payload, msg->payload_len, atts, msg->region_count);
        if (err != SHMLINK_OK)
            die_shmlink(ep, "echo", err);
    }
    shmlink_message_clear(msg);
    shmlink_close(ep);
    free(atts);
    free(msg);
    return EXIT_SUCCESS;
}

/* ==================================================================================== */
/* Roles hostile and expect-hostile                                                      */
/* ==================================================================================== */

static const json_node *find_case(const json_node *root, const char *name)
{
    const json_node *cases = need_array(root, "cases");
    for (const json_node *c = cases->child; c != NULL; c = c->next)
        if (strcmp(need_string(c, "name"), name) == 0)
            return c;
    die("no case named \"%s\"", name);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode hex into a new buffer of len/2 + extra bytes (the extra ones zero). */
static uint8_t *decode_hex(const char *hex, size_t extra, size_t *out_len)
{
    const size_t n = strlen(hex);
    if (n % 2 != 0)
        die("odd-length hex string");
    if (extra > SIZE_MAX - n / 2)
        die("pad too large");
    uint8_t *buf = xmalloc(n / 2 + extra);
    for (size_t i = 0; i < n / 2; i++) {
        const int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            die("bad hex digit");
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    memset(buf + n / 2, 0, extra);
    *out_len = n / 2 + extra;
    return buf;
}

static void send_raw(int fd, const void *data, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = { (void *)(uintptr_t)data, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    void *control = NULL;
    if (nfds != 0) {
        const size_t space = CMSG_SPACE(nfds * sizeof(int));
        control = xmalloc(space);
        memset(control, 0, space);
        mh.msg_control = control;
        mh.msg_controllen = space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("sendmsg of %zu bytes with %zu fds: %s", len, nfds, strerror(errno));
    if ((size_t)n != len)
        die("sendmsg sent %zd of %zu bytes", n, len);
    free(control);
}

static void close_or_die(int fd)
{
    if (close(fd) != 0)
        die("close: %s", strerror(errno));
}

static unsigned seal_bit(const char *name)
{
    if (strcmp(name, "shrink") == 0)
        return F_SEAL_SHRINK;
    if (strcmp(name, "grow") == 0)
        return F_SEAL_GROW;
    if (strcmp(name, "write") == 0)
        return F_SEAL_WRITE;
    if (strcmp(name, "seal") == 0)
        return F_SEAL_SEAL;
    die("unknown seal \"%s\"", name);
}

/* Step 2 of role hostile: one file descriptor as the case describes it. */
static int make_hostile_fd(const json_node *spec)
{
    const char *type = need_string(spec, "type");
    if (strcmp(type, "memfd") == 0) {
        const uint64_t size = need_u64(spec, "size");
        const int fd = memfd_create("shmlink-hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t)size) != 0)
            die("memfd: %s", strerror(errno));
        unsigned seals = 0;
        const json_node *list = need_array(spec, "seals");
        for (const json_node *s = list->child; s != NULL; s = s->next) {
            const char *name = json_get_string(s);
            if (name == NULL)
                die("seal names must be strings");
            seals |= seal_bit(name);
        }
        if (seals != 0 && fcntl(fd, F_ADD_SEALS, (int)seals) != 0)
            die("F_ADD_SEALS %#x: %s", seals, strerror(errno));
        return fd;
    }
    if (strcmp(type, "pipe") == 0) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0)
            die("pipe2: %s", strerror(errno));
        close_or_die(p[1]);
        return p[0];
    }
    if (strcmp(type, "socket") == 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            die("socketpair: %s", strerror(errno));
        close_or_die(sv[1]);
        return sv[0];
    }
    if (strcmp(type, "file") == 0) {
        const uint64_t size = need_u64(spec, "size");
        const char *dir = getenv("SHMLINK_PEER_TMPDIR");
        if (dir == NULL || dir[0] == '\0')
            dir = "/var/tmp"; /* SCENARIO.md names no default; this one is rarely tmpfs */
        const size_t len = strlen(dir) + sizeof "/shmlink-hostile-XXXXXX";
        char *path = xmalloc(len);
        snprintf(path, len, "%s/shmlink-hostile-XXXXXX", dir);
        const int fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0)
            die("creating a file in %s: %s", dir, strerror(errno));
        if (unlink(path) != 0 || ftruncate(fd, (off_t)size) != 0)
            die("%s: %s", path, strerror(errno));
        free(path);
        return fd;
    }
    die("unknown fd type \"%s\"", type);
}

/* Step 4 of role hostile: read (and discard) until end-of-file; the timeout bounds it. */
static void wait_for_eof(int fd)
{
    static uint8_t buf[SHMLINK_MAX_FRAME_SIZE];
    _Alignas(struct cmsghdr) unsigned char
        control[CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)];
    for (;;) {
        struct iovec iov = { buf, sizeof buf };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control };
        const ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        /* ECONNRESET is reported once, ahead of records still queued: read on. */
        if (n < 0 && (errno == EINTR || errno == ECONNRESET))
            continue;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); n >= 0 && c != NULL; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int received;
                memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
                close_or_die(received);
            }
        }
        if (n == 0)
            return;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            die("no end-of-file from the peer within %u ms", PEER_TIMEOUT_MS);
        if (n < 0)
            die("recvmsg: %s", strerror(errno));
    }
}

static void set_socket_timeouts(int fd)
{
    const struct timeval tv = { .tv_sec = PEER_TIMEOUT_MS / MS_PER_S,
                                .tv_usec = 0 };
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        die("setsockopt: %s", strerror(errno));
}

static int role_hostile(const char *path, const char *cases_path, const char *case_name)
{
    json_doc *doc = load_json(cases_path);
    const json_node *c = find_case(json_root(doc), case_name);
    const char *hello = need_string(c, "hello");
    const char *frame = need_string(c, "frame");
    uint64_t pad = 0;
    const json_node *pad_node = json_get(c, "pad");
    if (pad_node != NULL && !json_get_u64(pad_node, &pad))
        die("\"pad\" must be a non-negative integer");
    if (pad > SHMLINK_MAX_FRAME_SIZE)
        die("\"pad\" is larger than any frame");
    const json_node *fd_specs = need_array(c, "fds");

    /* 1. Connect and send the HELLO the case asks for. */
    const int fd = connect_socket(path);
    set_socket_timeouts(fd);
    if (strcmp(hello, "valid") == 0) {
        uint8_t h[SHMLINK_HELLO_FRAME_SIZE] = { 0 };
        h[SHMLINK_HEADER_OFF_KIND] = SHMLINK_KIND_HELLO;
        shmlink_put_le32(h + SHMLINK_HEADER_OFF_PAYLOAD_LEN, SHMLINK_HELLO_PAYLOAD_LEN);
        uint8_t *p = h + SHMLINK_HEADER_SIZE;
        memcpy(p + SHMLINK_HELLO_OFF_MAGIC, SHMLINK_MAGIC, SHMLINK_MAGIC_LEN);
        shmlink_put_le16(p + SHMLINK_HELLO_OFF_VERSION, SHMLINK_VERSION);
        shmlink_put_le16(p + SHMLINK_HELLO_OFF_MAX_REGIONS, SHMLINK_DEFAULT_MAX_REGIONS);
        shmlink_put_le32(p + SHMLINK_HELLO_OFF_MAX_PAYLOAD, SHMLINK_DEFAULT_MAX_PAYLOAD);
        send_raw(fd, h, sizeof h, NULL, 0);
    } else if (strcmp(hello, "none") != 0) {
        size_t len;
        uint8_t *bytes = decode_hex(hello, 0, &len);
        send_raw(fd, bytes, len, NULL, 0);
        free(bytes);
    }

    /* 3 (early). No frame: close at once. */
    if (frame[0] == '\0') {
        close_or_die(fd);
        json_free(doc);
        return EXIT_SUCCESS;
    }

    /* 2. The descriptors. */
    const size_t nfds = fd_specs->count;
    int *fds = xmalloc(nfds * sizeof *fds);
    size_t made = 0;
    for (const json_node *s = fd_specs->child; s != NULL; s = s->next)
        fds[made++] = make_hostile_fd(s);

    /* 3. The frame plus padding, as one record with every descriptor. */
    size_t len;
    uint8_t *record = decode_hex(frame, (size_t)pad, &len);
    send_raw(fd, record, len, fds, nfds);
    free(record);
    for (size_t i = 0; i < nfds; i++)
        close_or_die(fds[i]);
    free(fds);

    /* 4. The receiver must refuse the frame and shut the connection down. */
    wait_for_eof(fd);
    close_or_die(fd);
    json_free(doc);
    return EXIT_SUCCESS;
}

static int role_expect_hostile(const char *path, const char *cases_path, const char *case_name)
{
    json_doc *doc = load_json(cases_path);
    const json_node *c = find_case(json_root(doc), case_name);
    const char *expect = need_string(c, "expect");
    shmlink_endpoint *ep = connect_endpoint(path);
    shmlink_message *msg = xmalloc(sizeof *msg);
    memset(msg, 0, sizeof *msg);
    const shmlink_error err = shmlink_recv(ep, msg);
    if (err == SHMLINK_OK)
        die("case %s: the frame was accepted; expected %s", case_name, expect);
    const char *code = shmlink_error_code(err);
    if (strcmp(code, expect) != 0)
        die("case %s: refused with %s (%s); expected %s", case_name, code,
            shmlink_endpoint_detail(ep), expect);
    /* The refusal already closed the record's descriptors and shut the socket down. */
    shmlink_close(ep);
    free(msg);
    json_free(doc);
    return EXIT_SUCCESS;
}

/* ==================================================================================== */

__attribute__((noreturn)) static void usage(void)
{
    fprintf(stderr,
            "usage: " PROGRAM " driver|responder|echo|hostile|expect-hostile <socket-path> ... "
            "(see peers/SCENARIO.md)\n");
    exit(EXIT_FAILURE);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    g_role = argv[1];
    const char *role = argv[1];
    if (strcmp(role, "driver") == 0 && argc == 5)
        return role_driver(argv[2], argv[3], argv[4]);
    if (strcmp(role, "responder") == 0 && argc == 4)
        return role_responder(argv[2], argv[3]);
    if (strcmp(role, "echo") == 0 && argc == 3)
        return role_echo(argv[2]);
    if (strcmp(role, "hostile") == 0 && argc == 5)
        return role_hostile(argv[2], argv[3], argv[4]);
    if (strcmp(role, "expect-hostile") == 0 && argc == 5)
        return role_expect_hostile(argv[2], argv[3], argv[4]);
    usage();
}
