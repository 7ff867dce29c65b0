/*
 * peer.c - shmlink-peer, the C interop peer: a thin program on the public API of
 * libshmlink (shmlink.h) that plays the roles of peers/SCENARIO.md.
 *
 *   shmlink-peer [listen] driver    <socket-path> <scenario.json> <transcript-out>
 *   shmlink-peer [listen] responder <socket-path> <transcript-out>
 *   shmlink-peer [listen] echo      <socket-path>
 *   shmlink-peer [listen] hostile   <socket-path> <hostile-frames.json> <case-name>
 *   shmlink-peer [listen] expect-hostile <socket-path> <hostile-frames.json> <case-name>
 *
 * The peer connects ("@name" is a Linux abstract name), or with "listen" binds the path
 * and accepts one connection. The test harness started both sides, so they trust each
 * other with writable regions (accept_writable). Only the hostile role uses raw sockets:
 * the library refuses to send what it sends. Exit 0 when the role completed and every
 * check passed; otherwise one line on stderr and exit 1.
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
#include <poll.h>
#include <stddef.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PROGRAM "shmlink-peer"

/* SCENARIO.md: "A peer never waits more than 60 seconds for anything." */
#define PEER_TIMEOUT_MS 60000u
/* The harness listens before it starts us; a short retry covers a listener that has
 * bound its path but not called listen(2) yet. */
#define CONNECT_RETRY_MS 10000u
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

static bool g_listen;

static void die_err(const char *what, const shmlink_error *err)
{
    die("%s: %s: %s", what, shmlink_code_string(err->code), err->message);
}

/* Connects (retrying while nobody listens yet: the harness listens before it starts us,
 * a short retry covers a listener that bound its path but has not called listen(2) yet),
 * or in listen mode accepts one connection. The handshake is done when it returns. */
static shmlink_endpoint *open_endpoint(const char *path, shmlink_error *err, bool *failed)
{
    shmlink_endpoint *ep = NULL;
    *failed = false;
    if (g_listen) {
        shmlink_server *server;
        const shmlink_listen_options lo = { .accept_writable = true };
        if (shmlink_endpoint_listen(path, &lo, &server, err) != SHMLINK_OK)
            die_err("listen", err);
        *failed = shmlink_server_accept(server, PEER_TIMEOUT_MS, &ep, err) != SHMLINK_OK;
        shmlink_server_free(server);
        return ep;
    }
    const shmlink_connect_options co = { .accept_writable = true, .timeout_ms = PEER_TIMEOUT_MS };
    const long long deadline = now_ms() + CONNECT_RETRY_MS;
    for (;;) {
        if (shmlink_endpoint_connect(path, &co, &ep, err) == SHMLINK_OK)
            return ep;
        const bool absent = err->syscall != NULL && strcmp(err->syscall, "connect") == 0 &&
                            (err->errnum == ENOENT || err->errnum == ECONNREFUSED);
        if (!absent || now_ms() >= deadline) {
            *failed = true;
            return NULL;
        }
        const struct timespec step = { 0, CONNECT_RETRY_STEP_NS };
        nanosleep(&step, NULL); /* an early wake-up only shortens one retry step */
    }
}

static shmlink_endpoint *connect_endpoint(const char *path)
{
    shmlink_error err;
    bool failed;
    shmlink_endpoint *ep = open_endpoint(path, &err, &failed);
    if (failed)
        die_err("opening the connection", &err);
    return ep;
}

/* The bytes of a region this process may read now. */
static const uint8_t *region_bytes(shmlink_region *r, size_t *size)
{
    void *p;
    shmlink_error err;
    if (shmlink_region_bytes(r, &p, size, &err) != SHMLINK_OK)
        die_err("region", &err);
    return p;
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
        shmlink_region *r = m->regions[i];
        size_t same = i;
        for (size_t j = 0; j < i && same == i; j++)
            if (m->regions[j] == r)
                same = j; /* the same region twice in one frame: hash it once */
        if (same != i) {
            memcpy(DIGEST(digests, 1 + i), DIGEST(digests, 1 + same), SHA256_DIGEST_LEN);
            continue;
        }
        size_t size;
        const uint8_t *bytes = region_bytes(r, &size);
        sha256(bytes, size, DIGEST(digests, 1 + i));
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
        const shmlink_descriptor *d = &m->descriptors[i];
        sha256_hex(DIGEST(digests, 1 + i), hex);
        fprintf(f,
                "%s{\"id\":%u,\"size\":%llu,\"new\":%s,\"frozen\":%s,\"transferred\":%s,"
                "\"sha256\":\"%s\"}",
                i != 0 ? "," : "", (unsigned)d->id,
                (unsigned long long)shmlink_region_size(m->regions[i]), json_bool_text(d->is_new),
                json_bool_text(d->frozen), json_bool_text(d->transferred), hex);
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
    shmlink_region *region; /* one reference */
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
    shmlink_error err;
    if (shmlink_region_create(size, &nr->region, &err) != SHMLINK_OK)
        die_err("creating a region", &err);
    return nr;
}

/* Forgets a name; closing the region first releases it on the connection (RELEASE). */
static void remove_name(region_names *names, named_region *nr, bool close)
{
    if (close)
        shmlink_region_close(nr->region);
    shmlink_region_unref(nr->region);
    free(nr->name);
    *nr = names->items[--names->count];
}

typedef struct driver {
    shmlink_endpoint *ep;
    FILE *transcript;
    size_t received;
    region_names names;
    uint8_t payload[SHMLINK_MAX_PAYLOAD_MAX];
    shmlink_region *regions[SHMLINK_DEFAULT_MAX_REGIONS];
    shmlink_region *transfer[SHMLINK_DEFAULT_MAX_REGIONS];
    /* Indices into names.items, not pointers: creating a region may move the array. */
    size_t slots[SHMLINK_DEFAULT_MAX_REGIONS];
    bool transferred[SHMLINK_DEFAULT_MAX_REGIONS];
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
    shmlink_error err;

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
            size_t n;
            pattern_fill((uint8_t *)region_bytes(nr->region, &n), seed_value, size);
            nr->digest_valid = false;
        }
        if (need_bool(r, "freeze") && shmlink_region_freeze(nr->region, &err) != SHMLINK_OK)
            die_err("freezing", &err);
        d->regions[count] = nr->region;
        d->slots[count] = (size_t)(nr - d->names.items);
        d->transferred[count] = need_bool(r, "transfer");
        if (d->transferred[count])
            d->transfer[transfers++] = nr->region;
    }

    /* What the ack must say: digests of exactly what is sent. Hash now, while the
     * regions are ours to read; TRANSFER gives them away. */
    pattern_fill(d->payload, payload_seed, payload_len);
    sha256(d->payload, (size_t)payload_len, DIGEST(d->expected, 0));
    for (size_t i = 0; i < count; i++) {
        named_region *nr = &d->names.items[d->slots[i]];
        if (!nr->digest_valid) {
            size_t size;
            const uint8_t *bytes = region_bytes(nr->region, &size);
            sha256(bytes, size, nr->digest);
            nr->digest_valid = true;
        }
        memcpy(DIGEST(d->expected, 1 + i), nr->digest, SHA256_DIGEST_LEN);
    }

    /* 2. Send: the regions in the step's order, TRANSFER on those that say so. */
    const shmlink_send_options o = { .regions = d->regions, .region_count = count,
                                     .transfer = d->transfer, .transfer_count = transfers,
                                     .timeout_ms = PEER_TIMEOUT_MS };
    if (shmlink_endpoint_send(d->ep, d->payload, (size_t)payload_len, &o, &err) != SHMLINK_OK)
        die_err("send", &err);

    /* 3. The ack, recorded, then checked. */
    if (shmlink_endpoint_recv(d->ep, &d->ack, PEER_TIMEOUT_MS, &err) != SHMLINK_OK)
        die_err("receiving the ack", &err);
    digest_message(&d->ack, d->got);
    transcript_append(d->transcript, d->received++, &d->ack, d->got);
    if (d->ack.payload_len != DIGESTS_LEN(count) ||
        memcmp(d->ack.payload, d->expected, d->ack.payload_len) != 0)
        die("step %zu: the ack's digests do not match what was sent", step);

    /* 4. The transferred regions come back, in order: the library resolves a file this
     * process has (same st_dev, st_ino) to the region that was sent. */
    if (d->ack.region_count != transfers)
        die("step %zu: ack carries %zu regions, %zu were transferred", step,
            d->ack.region_count, transfers);
    for (size_t k = 0; k < transfers; k++) {
        if (d->ack.regions[k] != d->transfer[k])
            die("step %zu: ack region %zu is not the region that was transferred", step, k);
        if (!d->ack.descriptors[k].transferred)
            die("step %zu: ack region %zu came back without TRANSFER", step, k);
        if (shmlink_region_transferred(d->transfer[k]))
            die("step %zu: ack region %zu is still marked transferred", step, k);
    }
    /* The responder may have stamped them: their contents are no longer what we hashed. */
    for (size_t i = 0; i < count; i++)
        if (d->transferred[i] && !shmlink_region_frozen(d->regions[i]))
            d->names.items[d->slots[i]].digest_valid = false;
}

static void driver_release(driver *d, size_t step, const json_node *s)
{
    const char *name = need_string(s, "name");
    named_region *nr = find_name(&d->names, name);
    if (nr == NULL)
        die("step %zu: release of unknown region \"%s\"", step, name);
    /* Closing a region releases it on every connection it was sent on (RELEASE); a later
     * step with this name creates a new region. */
    remove_name(&d->names, nr, true);
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
    /* The connection ends first, so that dropping the regions sends no RELEASE. */
    shmlink_endpoint_free(d->ep);
    close_transcript(d->transcript, out_path);
    shmlink_message_clear(&d->ack);
    while (d->names.count != 0)
        remove_name(&d->names, &d->names.items[0], false);
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
    shmlink_region *back[SHMLINK_MAX_REGIONS_MAX];
} responder;

static int role_responder(const char *path, const char *out_path)
{
    responder *st = xmalloc(sizeof *st);
    memset(st, 0, sizeof *st);
    FILE *transcript = open_transcript(out_path);
    shmlink_endpoint *ep = connect_endpoint(path);
    shmlink_error err;
    for (size_t n = 0;; n++) {
        const shmlink_code code = shmlink_endpoint_recv(ep, &st->msg, PEER_TIMEOUT_MS, &err);
        if (code == SHMLINK_ERR_PEER_CLOSED)
            break;
        if (code != SHMLINK_OK)
            die_err("receive", &err);
        const shmlink_message *m = &st->msg;
        /* 1-2. Record it, with the digests taken before anything is stamped. */
        digest_message(m, st->digests);
        transcript_append(transcript, n, m, st->digests);
        /* 3. Stamp transferred, writable regions with their digest; 4. send them back. */
        size_t back = 0;
        for (size_t i = 0; i < m->region_count; i++) {
            const shmlink_descriptor *desc = &m->descriptors[i];
            if (!desc->transferred)
                continue;
            if (!desc->frozen) {
                const uint64_t size = shmlink_region_size(m->regions[i]);
                /* A region smaller than a digest gets as much of it as fits. */
                if (shmlink_region_write(m->regions[i], 0, DIGEST(st->digests, 1 + i),
                                         size < SHA256_DIGEST_LEN ? (size_t)size : SHA256_DIGEST_LEN,
                                         &err) != SHMLINK_OK)
                    die_err("stamping a region", &err);
            }
            st->back[back++] = m->regions[i];
        }
        const shmlink_send_options o = { .transfer = st->back, .transfer_count = back,
                                         .timeout_ms = PEER_TIMEOUT_MS };
        if (shmlink_endpoint_send(ep, st->digests, DIGESTS_LEN(m->region_count), &o, &err) != SHMLINK_OK)
            die_err("sending the ack", &err);
    }
    shmlink_message_clear(&st->msg);
    shmlink_endpoint_free(ep);
    close_transcript(transcript, out_path);
    free(st);
    return EXIT_SUCCESS;
}

/* Keeps the touching reads of the echo role from being optimised away. */
static volatile uint8_t g_touch_sink;

static int role_echo(const char *path)
{
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_endpoint *ep = connect_endpoint(path);
    shmlink_error err;
    for (;;) {
        const shmlink_code code = shmlink_endpoint_recv(ep, &msg, PEER_TIMEOUT_MS, &err);
        if (code == SHMLINK_ERR_PEER_CLOSED)
            break;
        if (code != SHMLINK_OK)
            die_err("receive", &err);
        uint8_t acc = 0;
        for (size_t i = 0; i < msg.region_count; i++) {
            size_t size;
            const volatile uint8_t *bytes = region_bytes(msg.regions[i], &size);
            for (size_t off = 0; off < size; off += TOUCH_STRIDE)
                acc = (uint8_t)(acc + bytes[off]);
        }
        g_touch_sink = acc;
        const shmlink_send_options o = { .regions = msg.regions, .region_count = msg.region_count,
                                         .timeout_ms = PEER_TIMEOUT_MS };
        if (shmlink_endpoint_send(ep, msg.payload, msg.payload_len, &o, &err) != SHMLINK_OK)
            die_err("echo", &err);
    }
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(ep);
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

/* The address of path, "@name" being the abstract name (exact length). */
static socklen_t raw_address(const char *path, struct sockaddr_un *addr)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    const size_t n = strlen(path);
    if (n == 0 || n >= sizeof addr->sun_path)
        die("bad socket path %s", path);
    memcpy(addr->sun_path, path, n);
    if (path[0] == '@') {
        addr->sun_path[0] = '\0';
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    }
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/* A connected raw SOCK_SEQPACKET socket (retrying while nobody listens yet), or in listen
 * mode the one connection accepted. */
static int raw_socket(const char *path)
{
    struct sockaddr_un addr;
    const socklen_t len = raw_address(path, &addr);
    if (g_listen) {
        const int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, len) != 0 || listen(lfd, 1) != 0)
            die("listen on %s: %s", path, strerror(errno));
        struct pollfd p = { .fd = lfd, .events = POLLIN };
        if (poll(&p, 1, (int)PEER_TIMEOUT_MS) != 1)
            die("no connection within 60 s");
        const int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            die("accept: %s", strerror(errno));
        close_or_die(lfd);
        if (path[0] != '@')
            unlink(path);
        set_socket_timeouts(fd);
        return fd;
    }
    const long long deadline = now_ms() + CONNECT_RETRY_MS;
    for (;;) {
        const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket: %s", strerror(errno));
        if (connect(fd, (struct sockaddr *)&addr, len) == 0) {
            set_socket_timeouts(fd);
            return fd;
        }
        const int e = errno;
        close_or_die(fd);
        if ((e != ENOENT && e != ECONNREFUSED) || now_ms() >= deadline)
            die("connect %s: %s", path, strerror(e));
        const struct timespec step = { 0, CONNECT_RETRY_STEP_NS };
        nanosleep(&step, NULL);
    }
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
    const int fd = raw_socket(path);
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

/* The first receive (which includes reading the peer's HELLO: connect does that part)
 * must fail with the code the case expects. The library has then closed every descriptor
 * of the refused record and shut the socket down. */
static int role_expect_hostile(const char *path, const char *cases_path, const char *case_name)
{
    json_doc *doc = load_json(cases_path);
    const json_node *c = find_case(json_root(doc), case_name);
    const char *expect = need_string(c, "expect");
    shmlink_error err;
    bool failed;
    shmlink_endpoint *ep = open_endpoint(path, &err, &failed);
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    if (!failed && shmlink_endpoint_recv(ep, &msg, PEER_TIMEOUT_MS, &err) == SHMLINK_OK)
        die("case %s: the frame was accepted; expected %s", case_name, expect);
    if (strcmp(shmlink_code_string(err.code), expect) != 0)
        die("case %s: refused with %s (%s); expected %s", case_name,
            shmlink_code_string(err.code), err.message, expect);
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(ep);
    json_free(doc);
    return EXIT_SUCCESS;
}

/* ==================================================================================== */

__attribute__((noreturn)) static void usage(void)
{
    fprintf(stderr,
            "usage: " PROGRAM " [listen] driver|responder|echo|hostile|expect-hostile <socket-path> ... "
            "(see peers/SCENARIO.md)\n");
    exit(EXIT_FAILURE);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "listen") == 0) {
        g_listen = true;
        argv++;
        argc--;
    }
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
