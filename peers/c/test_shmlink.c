/*
 * test_shmlink.c - unit tests of libshmlink (on its public API, shmlink.h): hostile
 * frames from a raw socket peer, trust policy, limits, regions, endpoints, servers,
 * inherited(), the codes of docs/ERRORS.md; SHA-256 and JSON of the peer program; and
 * (given the peer binary as argv[1]) a round trip with its echo role.
 *
 * Every refusal test checks that the process has the same file descriptors and no more
 * memfd mappings afterwards than before: refusing must not leak.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "json.h"
#include "sha256.h"
#include "shmlink.h"

#include <dirent.h>
#include <pthread.h>
#include <poll.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TEST_TIMEOUT_MS 10000u
#define PAGE 4096u
#define SMALL 4096u
#define MEDIUM 65536u
#define LARGE (1024u * 1024u)
#define TOO_MANY_FDS 40u /* more than SHMLINK_DEFAULT_MAX_REGIONS */
#define ECHO_ROUNDS 20000u
#define ECHO_PAYLOAD 100u

static int g_failures;
static int g_checks;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        g_checks++;                                                                        \
        if (!(cond)) {                                                                     \
            g_failures++;                                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                           \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

#define REQUIRE(cond, ...)                                                                 \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FATAL %s:%d: ", __FILE__, __LINE__);                          \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            exit(EXIT_FAILURE);                                                            \
        }                                                                                  \
    } while (0)

/* ==================================================================================== */
/* Process state probes                                                                  */
/* ==================================================================================== */

static int fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    REQUIRE(d != NULL, "opendir /proc/self/fd: %s", strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            n++;
    REQUIRE(closedir(d) == 0, "closedir");
    return n - 1; /* the directory's own fd */
}

/* Mappings of memfds ("/memfd:name (deleted)" in /proc/self/maps). */
static int memfd_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    REQUIRE(f != NULL, "fopen /proc/self/maps: %s", strerror(errno));
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (strstr(line, "/memfd:") != NULL)
            n++;
    REQUIRE(fclose(f) == 0, "fclose");
    return n;
}

/* ==================================================================================== */
/* SHA-256                                                                               */
/* ==================================================================================== */

static void hex_of(const uint8_t d[SHA256_DIGEST_LEN], char out[SHA256_HEX_LEN + 1])
{
    sha256_hex(d, out);
}

static void test_sha256_vectors(bool hardware)
{
    static const struct {
        const char *msg;
        const char *hex;
    } vectors[] = {
        { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
        { "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklm"
          "nopqrlmnopqrsmnopqrstnopqrstu",
          "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
    };
    const bool using = sha256_use_hardware(hardware);
    const char *impl = using ? "sha-ni" : "portable";
    uint8_t d[SHA256_DIGEST_LEN];
    char hex[SHA256_HEX_LEN + 1];
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        sha256(vectors[i].msg, strlen(vectors[i].msg), d);
        hex_of(d, hex);
        CHECK(strcmp(hex, vectors[i].hex) == 0, "%s sha256(\"%s\") = %s", impl, vectors[i].msg, hex);
    }
    /* One million 'a', fed in uneven pieces to exercise the buffering. */
    static char million[1000000];
    memset(million, 'a', sizeof million);
    sha256_ctx ctx;
    sha256_init(&ctx);
    for (size_t off = 0, step = 1; off < sizeof million; off += step, step = step * 3 % 1000 + 1)
        sha256_update(&ctx, million + off, off + step <= sizeof million ? step : sizeof million - off);
    sha256_final(&ctx, d);
    hex_of(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "%s sha256(a x 1e6) = %s", impl, hex);
}

/* The two implementations agree on every length around the block boundaries. */
static void test_sha256_cross_check(void)
{
    if (!sha256_hardware_available()) {
        printf("  (no SHA-NI on this CPU: cross-check skipped)\n");
        return;
    }
    static uint8_t data[3000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    for (size_t len = 0; len <= sizeof data; len += len < 300 ? 1 : 97) {
        uint8_t a[SHA256_DIGEST_LEN], b[SHA256_DIGEST_LEN];
        sha256_use_hardware(false);
        sha256(data, len, a);
        sha256_use_hardware(true);
        sha256(data, len, b);
        CHECK(memcmp(a, b, sizeof a) == 0, "portable and SHA-NI differ at length %zu", len);
    }
}

/* ==================================================================================== */
/* JSON                                                                                  */
/* ==================================================================================== */

static void test_json(void)
{
    char err[128];
    const char *text = "{\"a\": [1, 2, {\"b\": \"x\\u00e9\\n\"}], \"n\": null, \"t\": true,"
                       " \"big\": 18446744073709551615}";
    json_doc *doc = json_parse(text, strlen(text), err, sizeof err);
    REQUIRE(doc != NULL, "json_parse: %s", err);
    const json_node *root = json_root(doc);
    const json_node *a = json_get(root, "a");
    CHECK(a != NULL && a->type == JSON_ARRAY && a->count == 3, "array a");
    const char *b = json_get_string(json_get(a->child->next->next, "b"));
    CHECK(b != NULL && strcmp(b, "x\xc3\xa9\n") == 0, "escapes decoded");
    CHECK(json_is_null(json_get(root, "n")), "null");
    uint64_t big = 0;
    CHECK(json_get_u64(json_get(root, "big"), &big) && big == UINT64_MAX, "u64 max");
    json_free(doc);
    static const char *bad[] = { "", "{", "[1,]", "{\"a\" 1}", "\"abc", "[1] x", "01", "-",
                                 "\"\\ud800\"", "[\"\x01\"]", "nul", "{\"a\":1,}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        doc = json_parse(bad[i], strlen(bad[i]), err, sizeof err);
        CHECK(doc == NULL, "malformed JSON accepted: %s", bad[i]);
        json_free(doc);
    }
    /* Nesting beyond the limit is refused, not a stack overflow. */
    char deep[2 * (JSON_MAX_DEPTH + 2)];
    memset(deep, '[', JSON_MAX_DEPTH + 2);
    memset(deep + JSON_MAX_DEPTH + 2, ']', JSON_MAX_DEPTH + 2);
    doc = json_parse(deep, sizeof deep, err, sizeof err);
    CHECK(doc == NULL, "over-deep JSON accepted");
    json_free(doc);
    uint64_t v;
    json_node neg = { .type = JSON_NUMBER, .text = "-1", .text_len = 2 };
    CHECK(!json_get_u64(&neg, &v), "negative accepted as u64");
    json_node over = { .type = JSON_NUMBER, .text = "18446744073709551616", .text_len = 20 };
    CHECK(!json_get_u64(&over, &v), "2^64 accepted as u64");
}

/* ==================================================================================== */
/* Raw-side helpers: the test plays a hand-written peer on one end of a socketpair        */
/* ==================================================================================== */

static void set_timeout(int fd)
{
    const struct timeval tv = { TEST_TIMEOUT_MS / 1000, 0 };
    REQUIRE(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0,
            "setsockopt");
}

static void raw_send(int fd, const void *data, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = { (void *)(uintptr_t)data, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    _Alignas(struct cmsghdr) unsigned char
        control[CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)];
    if (nfds != 0) {
        REQUIRE(nfds <= SHMLINK_MAX_REGIONS_MAX, "too many fds");
        memset(control, 0, sizeof control);
        mh.msg_control = control;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    const ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    REQUIRE(n == (ssize_t)len, "raw sendmsg of %zu bytes: %s", len, strerror(errno));
}

/* Receive one record; its fds go to fds_out (or are closed). Returns the length. */
static size_t raw_recv(int fd, uint8_t *buf, size_t cap, int *fds_out, size_t *nfds_out)
{
    struct iovec iov = { buf, cap };
    _Alignas(struct cmsghdr) unsigned char
        control[CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)];
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control };
    const ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    REQUIRE(n >= 0, "raw recvmsg: %s", strerror(errno));
    size_t nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int got;
            memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
            if (fds_out != NULL)
                fds_out[nfds++] = got;
            else
                REQUIRE(close(got) == 0, "close");
        }
    }
    if (nfds_out != NULL)
        *nfds_out = nfds;
    return (size_t)n;
}

static void close_all(const int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        REQUIRE(close(fds[i]) == 0, "close");
}

static size_t hex_to_bytes(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = hex; *p != '\0'; p += 2) {
        while (*p == ' ')
            p++; /* spaces group the bytes for the reader */
        if (*p == '\0')
            break;
        unsigned v;
        REQUIRE(sscanf(p, "%2x", &v) == 1 && n < cap, "bad hex in test");
        out[n++] = (uint8_t)v;
    }
    return n;
}

static size_t make_hello(uint8_t *h, const char *magic, unsigned version, unsigned max_regions,
                         uint32_t max_payload)
{
    memset(h, 0, SHMLINK_HELLO_FRAME_SIZE);
    h[SHMLINK_HEADER_OFF_KIND] = SHMLINK_KIND_HELLO;
    shmlink_put_le32(h + SHMLINK_HEADER_OFF_PAYLOAD_LEN, SHMLINK_HELLO_PAYLOAD_LEN);
    uint8_t *p = h + SHMLINK_HEADER_SIZE;
    memcpy(p + SHMLINK_HELLO_OFF_MAGIC, magic, SHMLINK_MAGIC_LEN);
    shmlink_put_le16(p + SHMLINK_HELLO_OFF_VERSION, (uint16_t)version);
    shmlink_put_le16(p + SHMLINK_HELLO_OFF_MAX_REGIONS, (uint16_t)max_regions);
    shmlink_put_le32(p + SHMLINK_HELLO_OFF_MAX_PAYLOAD, max_payload);
    return SHMLINK_HELLO_FRAME_SIZE;
}

static size_t valid_hello(uint8_t *h)
{
    return make_hello(h, SHMLINK_MAGIC, SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
                      SHMLINK_DEFAULT_MAX_PAYLOAD);
}

/* A frame with `count` descriptors (id, flags, size) and `payload_len` zero bytes. */
typedef struct desc {
    uint32_t id, flags;
    uint64_t size;
} desc;

static size_t make_frame(uint8_t *f, unsigned kind, const desc *d, size_t count,
                         size_t payload_len)
{
    f[SHMLINK_HEADER_OFF_KIND] = (uint8_t)kind;
    f[SHMLINK_HEADER_OFF_FLAGS] = 0;
    shmlink_put_le16(f + SHMLINK_HEADER_OFF_REGION_COUNT, (uint16_t)count);
    shmlink_put_le32(f + SHMLINK_HEADER_OFF_PAYLOAD_LEN, (uint32_t)payload_len);
    uint8_t *p = f + SHMLINK_HEADER_SIZE;
    for (size_t i = 0; i < count; i++, p += SHMLINK_DESC_SIZE) {
        shmlink_put_le32(p + SHMLINK_DESC_OFF_ID, d[i].id);
        shmlink_put_le32(p + SHMLINK_DESC_OFF_FLAGS, d[i].flags);
        shmlink_put_le64(p + SHMLINK_DESC_OFF_SIZE, d[i].size);
    }
    memset(p, 0, payload_len);
    return SHMLINK_HEADER_SIZE + count * SHMLINK_DESC_SIZE + payload_len;
}

enum { SEALS_NONE = 0 };

static int make_memfd(uint64_t size, unsigned seals)
{
    const int fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    REQUIRE(fd >= 0 && ftruncate(fd, (off_t)size) == 0, "memfd: %s", strerror(errno));
    REQUIRE(seals == 0 || fcntl(fd, F_ADD_SEALS, (int)seals) == 0, "seals: %s", strerror(errno));
    return fd;
}

#define GOOD_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

/* An endpoint (from_fd) on one end of a socketpair; the raw end has read its HELLO. */
typedef struct pair {
    shmlink_endpoint *ep;
    int raw;
} pair;

static pair open_pair(const shmlink_endpoint_options *options)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    set_timeout(sv[1]);
    pair p = { NULL, sv[1] };
    shmlink_error err;
    REQUIRE(shmlink_endpoint_from_fd(sv[0], options, &p.ep, &err) == SHMLINK_OK, "from_fd: %s",
            err.message);
    uint8_t h[SHMLINK_HELLO_FRAME_SIZE];
    size_t nfds;
    const size_t n = raw_recv(p.raw, h, sizeof h, NULL, &nfds);
    uint8_t expect[SHMLINK_HELLO_FRAME_SIZE];
    make_hello(expect, SHMLINK_MAGIC, SHMLINK_VERSION,
               options != NULL && options->limits.max_regions != 0 ? options->limits.max_regions
                                                                    : SHMLINK_DEFAULT_MAX_REGIONS,
               SHMLINK_DEFAULT_MAX_PAYLOAD);
    CHECK(n == sizeof expect && memcmp(h, expect, n) == 0 && nfds == 0, "endpoint's HELLO");
    return p;
}

static void close_pair(pair *p)
{
    shmlink_endpoint_free(p->ep);
    REQUIRE(close(p->raw) == 0, "close");
}

/* The raw end must now read end-of-file: the endpoint shut the connection down. */
static bool raw_sees_eof(int raw)
{
    uint8_t buf[SHMLINK_HELLO_FRAME_SIZE];
    return raw_recv(raw, buf, sizeof buf, NULL, NULL) == 0;
}

static shmlink_code send_regions(shmlink_endpoint *ep, shmlink_region *const *regions, size_t n)
{
    const shmlink_send_options o = { .regions = regions, .region_count = n,
                                     .timeout_ms = TEST_TIMEOUT_MS };
    return shmlink_endpoint_send(ep, NULL, 0, &o, NULL);
}

static shmlink_region *new_region(uint64_t size)
{
    shmlink_region *r;
    shmlink_error err;
    REQUIRE(shmlink_region_create(size, &r, &err) == SHMLINK_OK, "create: %s", err.message);
    return r;
}

static uint8_t *bytes_of(shmlink_region *r)
{
    void *p;
    size_t n;
    shmlink_error err;
    REQUIRE(shmlink_region_bytes(r, &p, &n, &err) == SHMLINK_OK, "bytes: %s", err.message);
    return p;
}

/* ==================================================================================== */
/* Refusals                                                                              */
/* ==================================================================================== */

typedef struct hostile {
    const char *name;
    shmlink_code expect;
    bool no_hello;   /* send no HELLO first */
    size_t setup;    /* valid frames (binding id 1 = 4096-byte region) before the bad one */
    uint8_t frame[SHMLINK_MAX_FRAME_SIZE + 16];
    size_t len;
    int fds[SHMLINK_MAX_REGIONS_MAX];
    size_t nfds;
} hostile;

/* Send the case to a fresh endpoint and check the refusal and that nothing leaked. */
static void run_hostile(const hostile *h)
{
    const int fds_before = fd_count() - (int)h->nfds; /* the case's fds are the test's */
    const int maps_before = memfd_mappings();
    pair p = open_pair(NULL);
    if (!h->no_hello) {
        uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
        raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    }
    for (size_t i = 0; i < h->setup; i++) {
        uint8_t f[SHMLINK_HEADER_SIZE + SHMLINK_DESC_SIZE];
        const desc d = { 1, SHMLINK_DESC_NEW, SMALL };
        const int fd = make_memfd(SMALL, GOOD_SEALS);
        raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &fd, 1);
        close_all(&fd, 1);
    }
    raw_send(p.raw, h->frame, h->len, h->fds, h->nfds);
    close_all(h->fds, h->nfds);

    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    for (size_t i = 0; i < h->setup; i++) {
        const shmlink_code code = shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err);
        CHECK(code == SHMLINK_OK, "%s: setup frame refused: %s", h->name, err.message);
    }
    const shmlink_code code = shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err);
    CHECK(code == h->expect && err.code == code, "%s: got %s (%s), expected %s", h->name,
          shmlink_code_string(code), err.message, shmlink_code_string(h->expect));
    CHECK(msg.region_count == 0, "%s: refused message still holds regions", h->name);
    if (h->expect != SHMLINK_ERR_PEER_CLOSED)
        CHECK(raw_sees_eof(p.raw), "%s: no end-of-file after the refusal", h->name);
    /* Later calls: CLOSED, or PEER_CLOSED again after end-of-file. */
    const shmlink_code later = h->expect == SHMLINK_ERR_PEER_CLOSED ? SHMLINK_ERR_PEER_CLOSED
                                                                    : SHMLINK_ERR_CLOSED;
    CHECK(shmlink_endpoint_recv(p.ep, &msg, 0, &err) == later, "%s: after the failure, recv says %s",
          h->name, shmlink_code_string(err.code));
    CHECK(shmlink_endpoint_send(p.ep, "x", 1, NULL, &err) == later, "%s: send after failure: %s",
          h->name, shmlink_code_string(err.code));
    CHECK(shmlink_endpoint_closed(p.ep), "%s: still open", h->name);
    /* Only the endpoint and the raw end are open; the refused fds are closed. */
    CHECK(fd_count() == fds_before + 2, "%s: %d fds open, expected %d", h->name, fd_count(),
          fds_before + 2);
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(p.ep);
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "%s: fd leak: %d before, %d after", h->name, fds_before,
          fd_count());
    CHECK(memfd_mappings() == maps_before, "%s: mapping leak: %d before, %d after", h->name,
          maps_before, memfd_mappings());
}

static hostile *new_case(const char *name, shmlink_code expect)
{
    hostile *h = calloc(1, sizeof *h);
    REQUIRE(h != NULL, "calloc");
    h->name = name;
    h->expect = expect;
    return h;
}

static void one_region(hostile *h, uint32_t id, uint32_t flags, uint64_t size)
{
    const desc d = { id, flags, size };
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, &d, 1, 0);
}

static void add_fd(hostile *h, int fd) { h->fds[h->nfds++] = fd; }

static void run_and_free(hostile *h)
{
    run_hostile(h);
    free(h);
}

static void test_refusals(void)
{
    hostile *h;
    const uint32_t NEW = SHMLINK_DESC_NEW, FROZEN = SHMLINK_DESC_FROZEN;

    h = new_case("memfd without seals", SHMLINK_ERR_REGION_UNSEALED);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, SEALS_NONE));
    run_and_free(h);

    h = new_case("memfd that can shrink", SHMLINK_ERR_REGION_UNSEALED);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, F_SEAL_GROW));
    run_and_free(h);

    h = new_case("FROZEN without write seal", SHMLINK_ERR_REGION_UNSEALED);
    one_region(h, 1, NEW | FROZEN, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("write seal without FROZEN", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS | F_SEAL_WRITE));
    run_and_free(h);

    h = new_case("pipe", SHMLINK_ERR_REGION_NOT_MEMFD);
    one_region(h, 1, NEW, SMALL);
    int pp[2];
    REQUIRE(pipe2(pp, O_CLOEXEC) == 0, "pipe2");
    REQUIRE(close(pp[1]) == 0, "close");
    add_fd(h, pp[0]); /* the read end */
    run_and_free(h);

    h = new_case("socket", SHMLINK_ERR_REGION_NOT_MEMFD);
    one_region(h, 1, NEW, SMALL);
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    REQUIRE(close(sv[1]) == 0, "close");
    add_fd(h, sv[0]);
    run_and_free(h);

    /* A regular file must not be on tmpfs (a tmpfs file carries seals). */
    const char *tmpdir = getenv("SHMLINK_PEER_TMPDIR");
    struct statfs tfs;
    if ((tmpdir == NULL || tmpdir[0] == '\0') && statfs("/var/tmp", &tfs) == 0 &&
        (unsigned long)tfs.f_type != (unsigned long)TMPFS_MAGIC)
        tmpdir = "/var/tmp";
    if (tmpdir != NULL && tmpdir[0] != '\0') {
        h = new_case("disk file", SHMLINK_ERR_REGION_NOT_MEMFD);
        one_region(h, 1, NEW, SMALL);
        char path[4096];
        snprintf(path, sizeof path, "%s/test-shmlink-XXXXXX", tmpdir);
        const int fd = mkostemp(path, O_CLOEXEC);
        REQUIRE(fd >= 0 && unlink(path) == 0 && ftruncate(fd, SMALL) == 0, "disk file");
        add_fd(h, fd);
        run_and_free(h);
    } else {
        printf("  (no SHMLINK_PEER_TMPDIR and /var/tmp is tmpfs: disk-file case skipped)\n");
    }

    h = new_case("size larger than file", SHMLINK_ERR_REGION_SIZE_MISMATCH);
    one_region(h, 1, NEW, 2 * SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size smaller than file", SHMLINK_ERR_REGION_SIZE_MISMATCH);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(2 * SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("more fds than NEW descriptors", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("fewer fds than NEW descriptors", SHMLINK_ERR_PROTOCOL_VIOLATION);
    {
        const desc d[2] = { { 1, NEW, SMALL }, { 2, NEW, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, 2, 0);
    }
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("more fds than the receiver accepts", SHMLINK_ERR_FDS_TRUNCATED);
    {
        desc d[TOO_MANY_FDS];
        for (unsigned i = 0; i < TOO_MANY_FDS; i++)
            d[i] = (desc){ i + 1, NEW, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, TOO_MANY_FDS, 0);
        for (unsigned i = 0; i < TOO_MANY_FDS; i++)
            add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    }
    run_and_free(h);

    h = new_case("second descriptor bad after a good one", SHMLINK_ERR_REGION_NOT_MEMFD);
    {
        const desc d[2] = { { 1, NEW, SMALL }, { 2, NEW, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, 2, 0);
        add_fd(h, make_memfd(SMALL, GOOD_SEALS));
        REQUIRE(pipe2(pp, O_CLOEXEC) == 0, "pipe2");
        REQUIRE(close(pp[1]) == 0, "close");
        add_fd(h, pp[0]);
    }
    run_and_free(h);

    h = new_case("unknown region id", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 42, 0, SMALL);
    run_and_free(h);

    h = new_case("NEW for a bound id", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size differs from binding", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, 0, 2 * SMALL);
    run_and_free(h);

    h = new_case("FROZEN differs from binding", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, FROZEN, SMALL);
    run_and_free(h);

    h = new_case("id 0", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 0, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size 0", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, 0);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("unknown descriptor flags", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW | 0x40u, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("truncated header", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = hex_to_bytes("0200000005", h->frame, sizeof h->frame);
    run_and_free(h);

    h = new_case("payload length lies", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 12);
    shmlink_put_le32(h->frame + SHMLINK_HEADER_OFF_PAYLOAD_LEN, 200);
    run_and_free(h);

    h = new_case("region count lies", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, 0, SMALL);
    shmlink_put_le16(h->frame + SHMLINK_HEADER_OFF_REGION_COUNT, 3);
    run_and_free(h);

    h = new_case("reserved header flags", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 0);
    h->frame[SHMLINK_HEADER_OFF_FLAGS] = 1;
    run_and_free(h);

    h = new_case("unknown kind", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, 9, NULL, 0, 0);
    run_and_free(h);

    h = new_case("RELEASE of an unbound id", SHMLINK_ERR_PROTOCOL_VIOLATION);
    {
        const desc d = { 9, 0, 64 };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 0);
    }
    run_and_free(h);

    h = new_case("RELEASE with payload", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d = { 1, 0, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 1);
    }
    run_and_free(h);

    h = new_case("RELEASE with flags", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d = { 1, FROZEN, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 0);
    }
    run_and_free(h);

    h = new_case("RELEASE twice in one frame", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d[2] = { { 1, 0, SMALL }, { 1, 0, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, d, 2, 0);
    }
    run_and_free(h);

    h = new_case("payload over the announced limit", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, SHMLINK_DEFAULT_MAX_PAYLOAD + 1);
    run_and_free(h);

    h = new_case("record longer than any allowed frame", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = (size_t)SHMLINK_FRAME_SIZE(SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_DEFAULT_MAX_PAYLOAD) + 1;
    make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 0);
    run_and_free(h);

    h = new_case("second HELLO", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->len = valid_hello(h->frame);
    run_and_free(h);

    h = new_case("message before HELLO", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 5);
    run_and_free(h);

    h = new_case("wrong magic", SHMLINK_ERR_PEER_INCOMPATIBLE);
    h->no_hello = true;
    h->len = make_hello(h->frame, "NOTSHMLK", SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
                        SHMLINK_DEFAULT_MAX_PAYLOAD);
    run_and_free(h);

    h = new_case("wrong version", SHMLINK_ERR_PEER_INCOMPATIBLE);
    h->no_hello = true;
    h->len = make_hello(h->frame, SHMLINK_MAGIC, SHMLINK_VERSION + 1,
                        SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_DEFAULT_MAX_PAYLOAD);
    run_and_free(h);

    /* A version-1 peer's HELLO, byte for byte (16 payload bytes, PROTOCOL.md section 3). */
    static const uint8_t v1_hello[] = { 0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
                                        'S',  'H',  'M',  'L',  'I',  'N',  'K',  0x00,
                                        0x01, 0x00, 0x20, 0x00, 0x00, 0x00, 0x01, 0x00 };
    h = new_case("version-1 peer", SHMLINK_ERR_PEER_INCOMPATIBLE);
    h->no_hello = true;
    memcpy(h->frame, v1_hello, sizeof v1_hello);
    h->len = sizeof v1_hello;
    run_and_free(h);
    {
        /* The message names the peer's version and says to upgrade it. */
        pair p = open_pair(NULL);
        raw_send(p.raw, v1_hello, sizeof v1_hello, NULL, 0);
        shmlink_message msg = SHMLINK_MESSAGE_INIT;
        shmlink_error err;
        CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) ==
                      SHMLINK_ERR_PEER_INCOMPATIBLE &&
                  strstr(err.message, "version 1") != NULL &&
                  strstr(err.message, "upgrade the peer") != NULL,
              "version-1 peer: %s", err.message);
        shmlink_endpoint_free(p.ep);
        REQUIRE(close(p.raw) == 0, "close");
    }

    static const struct {
        const char *name;
        unsigned max_regions;
        uint32_t max_payload;
    } limits[] = {
        { "max_regions 0", 0, SHMLINK_DEFAULT_MAX_PAYLOAD },
        { "max_regions 254", SHMLINK_MAX_REGIONS_MAX + 1, SHMLINK_DEFAULT_MAX_PAYLOAD },
        { "max_payload 65537", SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_MAX_PAYLOAD_MAX + 1 },
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        h = new_case(limits[i].name, SHMLINK_ERR_PROTOCOL_VIOLATION);
        h->no_hello = true;
        h->len = make_hello(h->frame, SHMLINK_MAGIC, SHMLINK_VERSION, limits[i].max_regions,
                            limits[i].max_payload);
        run_and_free(h);
    }

    h = new_case("fds on a HELLO", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = valid_hello(h->frame);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("HELLO with a region count", SHMLINK_ERR_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = valid_hello(h->frame);
    shmlink_put_le16(h->frame + SHMLINK_HEADER_OFF_REGION_COUNT, 1);
    run_and_free(h);
}

/* More refusals: what hostile-frames.json cannot express. */
static void test_more_refusals(void)
{
    hostile *h;
    /* A hugetlbfs memfd: its owner can take its pages away (PROTOCOL.md 5.3 step 2). */
    const int huge = memfd_create("test-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
    if (huge >= 0 && ftruncate(huge, 2 << 20) == 0 && fcntl(huge, F_ADD_SEALS, GOOD_SEALS) == 0) {
        h = new_case("hugetlbfs memfd", SHMLINK_ERR_REGION_NOT_SHMEM);
        one_region(h, 1, SHMLINK_DESC_NEW, 2 << 20);
        add_fd(h, huge);
        run_and_free(h);
    } else {
        printf("  (no hugetlbfs memfds here: not-shmem case skipped)\n");
        if (huge >= 0)
            REQUIRE(close(huge) == 0, "close");
    }
    h = new_case("future-write seal without FROZEN", SHMLINK_ERR_PROTOCOL_VIOLATION);
    one_region(h, 1, SHMLINK_DESC_NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS | 0x0010 /* F_SEAL_FUTURE_WRITE */));
    run_and_free(h);
}

/* Refusals by local policy (PROTOCOL.md 7.1): a fresh endpoint with `options` gets one
 * frame and must refuse it with `expect`, leaking nothing. */
static void refuse_with(const char *name, const shmlink_endpoint_options *options,
                        shmlink_code expect, const desc *d, size_t count, const int *fds,
                        size_t nfds)
{
    const int fds_before = fd_count() - (int)nfds;
    const int maps_before = memfd_mappings();
    pair p = open_pair(options);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    static uint8_t f[SHMLINK_MAX_FRAME_SIZE];
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, d, count, 0), fds, nfds);
    close_all(fds, nfds);
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    const shmlink_code code = shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err);
    CHECK(code == expect, "%s: got %s (%s), expected %s", name, shmlink_code_string(code),
          err.message, shmlink_code_string(expect));
    CHECK(raw_sees_eof(p.raw), "%s: no end-of-file after the refusal", name);
    CHECK(fd_count() == fds_before + 2, "%s: %d fds open, expected %d", name, fd_count(),
          fds_before + 2);
    shmlink_message_clear(&msg);
    close_pair(&p);
    CHECK(memfd_mappings() == maps_before, "%s: mapping leak", name);
}

static void test_policy_and_limits(void)
{
    const int fds_before = fd_count();
    const uint32_t NEW = SHMLINK_DESC_NEW, FROZEN = SHMLINK_DESC_FROZEN;
    const shmlink_endpoint_options frozen_only = { .frozen_only = true };
    int fd = make_memfd(SMALL, GOOD_SEALS);
    desc d = { 1, NEW, SMALL };
    refuse_with("writable region, frozen only", &frozen_only, SHMLINK_ERR_REGION_WRITABLE, &d, 1, &fd, 1);

    /* A frozen region is accepted from the same endpoint. */
    pair p = open_pair(&frozen_only);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    uint8_t f[SHMLINK_HEADER_SIZE + 2 * SHMLINK_DESC_SIZE];
    fd = make_memfd(SMALL, GOOD_SEALS | F_SEAL_WRITE);
    d = (desc){ 1, NEW | FROZEN, SMALL };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &fd, 1);
    close_all(&fd, 1);
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_OK &&
              msg.region_count == 1 && shmlink_region_frozen(msg.regions[0]) &&
              msg.descriptors[0].frozen,
          "frozen region from an untrusted peer: %s", err.message);
    /* Frozen regions are mapped copy-on-write: a stray write stays here. */
    uint8_t *bytes = bytes_of(msg.regions[0]);
    bytes[0] = 0x5A;
    uint8_t first = 0;
    CHECK(shmlink_region_read(msg.regions[0], 0, &first, 1, NULL) == SHMLINK_OK && first == 0,
          "a write to a frozen mapping reached the file");
    CHECK(shmlink_region_write(msg.regions[0], 0, "x", 1, &err) == SHMLINK_ERR_REGION_FROZEN,
          "write to a frozen region");
    shmlink_message_clear(&msg);
    close_pair(&p);

    const shmlink_endpoint_options small_regions = { .limits = { .max_region_size = 8192 } };
    fd = make_memfd(16384, GOOD_SEALS);
    d = (desc){ 1, NEW, 16384 };
    refuse_with("max_region_size", &small_regions, SHMLINK_ERR_LIMIT_EXCEEDED, &d, 1, &fd, 1);

    const shmlink_endpoint_options one_bound = { .limits = { .max_bound_regions = 1 } };
    int two[2] = { make_memfd(SMALL, GOOD_SEALS), make_memfd(SMALL, GOOD_SEALS) };
    const desc ds[2] = { { 1, NEW, SMALL }, { 2, NEW, SMALL } };
    refuse_with("max_bound_regions", &one_bound, SHMLINK_ERR_LIMIT_EXCEEDED, ds, 2, two, 2);

    /* max_mapped_bytes counts a file once, whatever the number of ids bound to it. */
    const shmlink_endpoint_options little = { .limits = { .max_mapped_bytes = 2 * SMALL } };
    p = open_pair(&little);
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    fd = make_memfd(SMALL, GOOD_SEALS);
    const int same[2] = { fd, fd };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, ds, 2, 0), same, 2);
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_OK &&
              msg.regions[0] == msg.regions[1],
          "one file under two ids is one region: %s", err.message);
    shmlink_endpoint_stats st;
    shmlink_endpoint_stats_get(p.ep, &st);
    CHECK(st.peer_regions == 2 && st.peer_mapped_bytes == SMALL, "stats: %llu regions, %llu bytes",
          (unsigned long long)st.peer_regions, (unsigned long long)st.peer_mapped_bytes);
    const int more[2] = { make_memfd(SMALL, GOOD_SEALS), make_memfd(SMALL, GOOD_SEALS) };
    d = (desc){ 3, NEW, SMALL };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &more[0], 1);
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_OK, "third: %s",
          err.message);
    d = (desc){ 4, NEW, SMALL };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &more[1], 1);
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_LIMIT_EXCEEDED,
          "max_mapped_bytes: %s", shmlink_code_string(err.code));
    close_all(&fd, 1);
    close_all(more, 2);
    shmlink_message_clear(&msg);
    close_pair(&p);

    /* The process-wide limits: two connections, each inside its own limits. */
    shmlink_process_stats before;
    shmlink_process_stats_get(&before);
    const shmlink_process_limits tight = { 1 << 30, before.regions + 1 };
    CHECK(shmlink_set_process_limits(&tight, NULL) == SHMLINK_OK, "set process limits");
    const shmlink_process_limits zero = { 0, 0 };
    CHECK(shmlink_set_process_limits(&zero, &err) == SHMLINK_ERR_INVALID_ARG, "zero limits");
    p = open_pair(NULL);
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    fd = make_memfd(SMALL, GOOD_SEALS);
    d = (desc){ 1, NEW, SMALL };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &fd, 1);
    close_all(&fd, 1);
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_OK, "first: %s",
          err.message);
    shmlink_process_stats now;
    shmlink_process_stats_get(&now);
    CHECK(now.regions == before.regions + 1 && now.mapped_bytes == before.mapped_bytes + SMALL,
          "process stats");
    fd = make_memfd(SMALL, GOOD_SEALS);
    refuse_with("process max_regions", NULL, SHMLINK_ERR_LIMIT_EXCEEDED, &d, 1, &fd, 1);
    shmlink_message_clear(&msg);
    close_pair(&p);
    shmlink_process_stats_get(&now);
    CHECK(now.regions == before.regions && now.mapped_bytes == before.mapped_bytes,
          "the charge is given back");
    const shmlink_process_limits restore = { before.max_mapped_bytes, before.max_regions };
    CHECK(shmlink_set_process_limits(&restore, NULL) == SHMLINK_OK, "restore process limits");
    CHECK(fd_count() == fds_before, "fd leak in policy tests");
}

/* End-of-file and a peer that left before our HELLO could be sent. */
static void test_end_of_file(void)
{
    const int fds_before = fd_count();
    /* EOF after HELLO: PEER_CLOSED, and again on every later call. */
    pair p = open_pair(NULL);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    REQUIRE(close(p.raw) == 0, "close");
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_PEER_CLOSED,
          "EOF after HELLO");
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_PEER_CLOSED,
          "recv after EOF");
    CHECK(shmlink_endpoint_send(p.ep, "x", 1, NULL, &err) == SHMLINK_ERR_PEER_CLOSED, "send after EOF");
    shmlink_endpoint_free(p.ep);

    /* The peer sent a bad HELLO and closed without reading ours: Linux answers the next
     * recvmsg with ECONNRESET before the queued HELLO; the refusal is about the HELLO. */
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    shmlink_endpoint *ep;
    REQUIRE(shmlink_endpoint_from_fd(sv[0], NULL, &ep, NULL) == SHMLINK_OK, "from_fd");
    raw_send(sv[1], hello,
             make_hello(hello, "NOTSHMLK", SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
                        SHMLINK_DEFAULT_MAX_PAYLOAD),
             NULL, 0);
    REQUIRE(close(sv[1]) == 0, "close");
    const shmlink_code code = shmlink_endpoint_recv(ep, &msg, TEST_TIMEOUT_MS, &err);
    CHECK(code == SHMLINK_ERR_PEER_INCOMPATIBLE, "bad HELLO then close: %s (%s)",
          shmlink_code_string(code), err.message);
    shmlink_endpoint_free(ep);

    /* The peer left before we even sent our HELLO: making the endpoint still succeeds,
     * sending reports the peer gone. */
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    raw_send(sv[1], hello, valid_hello(hello), NULL, 0);
    REQUIRE(close(sv[1]) == 0, "close");
    REQUIRE(shmlink_endpoint_from_fd(sv[0], NULL, &ep, NULL) == SHMLINK_OK, "from_fd after peer left");
    CHECK(shmlink_endpoint_send(ep, "x", 1, NULL, &err) == SHMLINK_ERR_PEER_CLOSED,
          "send to a gone peer: %s", err.message);
    shmlink_endpoint_free(ep);
    shmlink_message_clear(&msg);
    CHECK(fd_count() == fds_before, "fd leak in end-of-file tests");
}

/* ==================================================================================== */
/* What the endpoint sends                                                               */
/* ==================================================================================== */

/* PROTOCOL.md section 8, byte for byte, and ids 1, 2, 3, ... never reused. */
static void test_wire_bytes(void)
{
    const int fds_before = fd_count();
    pair p = open_pair(NULL);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);

    uint8_t expect[SHMLINK_MAX_FRAME_SIZE];
    size_t expect_len = hex_to_bytes("01000000140000005348 4d4c494e4b00 020020000000 0100 00000000",
                                     expect, sizeof expect);
    uint8_t ours[SHMLINK_HELLO_FRAME_SIZE];
    valid_hello(ours);
    CHECK(expect_len == sizeof ours && memcmp(expect, ours, expect_len) == 0,
          "HELLO differs from PROTOCOL.md section 8");

    shmlink_region *r1 = new_region(SMALL), *r2 = new_region(MEDIUM);
    shmlink_error err;
    REQUIRE(shmlink_region_freeze(r2, &err) == SHMLINK_OK, "freeze: %s", err.message);
    CHECK(shmlink_region_freeze(r2, &err) == SHMLINK_OK, "freezing twice does nothing");
    shmlink_region *const both[2] = { r1, r2 };
    shmlink_region *const first[1] = { r1 };
    const shmlink_send_options o = { .regions = both, .region_count = 2, .transfer = first,
                                     .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(p.ep, "hello", 5, &o, &err) == SHMLINK_OK, "send: %s", err.message);

    uint8_t buf[SHMLINK_MAX_FRAME_SIZE];
    int fds[SHMLINK_MAX_REGIONS_MAX];
    size_t nfds;
    size_t n = raw_recv(p.raw, buf, sizeof buf, fds, &nfds);
    expect_len = hex_to_bytes("02000200050000000100000005000000"
                              "00100000000000000200000003000000"
                              "000001000000000068656c6c6f",
                              expect, sizeof expect);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0, "MESSAGE differs from section 8");
    CHECK(nfds == 2, "%zu fds with two NEW descriptors", nfds);
    for (size_t i = 0; i < nfds; i++) {
        struct stat st;
        const int seals = fcntl(fds[i], F_GET_SEALS);
        CHECK(fstat(fds[i], &st) == 0 && (uint64_t)st.st_size == (i == 0 ? SMALL : MEDIUM),
              "fd %zu size", i);
        CHECK(seals >= 0 && (seals & GOOD_SEALS) == GOOD_SEALS, "fd %zu not sealed", i);
        CHECK(i == 0 || (seals & (F_SEAL_WRITE | F_SEAL_SEAL)) == (F_SEAL_WRITE | F_SEAL_SEAL),
              "frozen fd lacks write seal");
        CHECK((fcntl(fds[i], F_GETFD) & FD_CLOEXEC) != 0, "fd %zu arrived without close-on-exec", i);
    }
    close_all(fds, nfds);

    /* Transferred: no access, cannot be sent again until it comes back. */
    void *ptr;
    size_t size;
    CHECK(shmlink_region_transferred(r1) &&
              shmlink_region_bytes(r1, &ptr, &size, &err) == SHMLINK_ERR_REGION_TRANSFERRED,
          "transferred region still accessible");
    CHECK(send_regions(p.ep, first, 1) == SHMLINK_ERR_REGION_TRANSFERRED, "sent a transferred region");
    CHECK(shmlink_region_reclaim(r1, &err) == SHMLINK_ERR_REGION_TRANSFERRED,
          "reclaimed while the connection is open");

    shmlink_endpoint_release(p.ep, r1);
    n = raw_recv(p.raw, buf, sizeof buf, NULL, &nfds);
    expect_len = hex_to_bytes("03000100000000000100000000000000"
                              "0010000000000000",
                              expect, sizeof expect);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0 && nfds == 0,
          "RELEASE differs from section 8");
    uint32_t id;
    CHECK(!shmlink_endpoint_region_id(p.ep, r1, &id), "released region still bound");
    CHECK(shmlink_endpoint_region_id(p.ep, r2, &id) && id == 2, "region id of r2");

    /* Ids: a new region gets 3 (1 is never reused); r2 is still bound as 2, so it goes
     * without NEW; a region twice in one frame binds on its first occurrence only. */
    shmlink_region *r3 = new_region(SMALL), *r4 = new_region(SMALL);
    CHECK(shmlink_region_freeze(r4, &err) == SHMLINK_OK, "freeze before sending");
    shmlink_region *const more[4] = { r3, r2, r4, r4 };
    CHECK(send_regions(p.ep, more, 4) == SHMLINK_OK, "send more");
    n = raw_recv(p.raw, buf, sizeof buf, fds, &nfds);
    const desc want[4] = { { 3, SHMLINK_DESC_NEW, SMALL },
                           { 2, SHMLINK_DESC_FROZEN, MEDIUM },
                           { 4, SHMLINK_DESC_NEW | SHMLINK_DESC_FROZEN, SMALL },
                           { 4, SHMLINK_DESC_FROZEN, SMALL } };
    expect_len = make_frame(expect, SHMLINK_KIND_MESSAGE, want, 4, 0);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0, "ids or NEW flags wrong");
    CHECK(nfds == 2, "%zu fds for two NEW descriptors", nfds);
    close_all(fds, nfds);

    /* Closing a region releases it on every connection that bound it. */
    shmlink_region_close(r3);
    n = raw_recv(p.raw, buf, sizeof buf, NULL, &nfds);
    const desc released = { 3, 0, SMALL };
    expect_len = make_frame(expect, SHMLINK_KIND_RELEASE, &released, 1, 0);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0, "closing a region sent no RELEASE");

    /* The peer's limits: refused before anything is sent, and nothing changes. */
    shmlink_region *many[SHMLINK_DEFAULT_MAX_REGIONS + 1];
    for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
        many[i] = r2;
    CHECK(send_regions(p.ep, many, sizeof many / sizeof many[0]) == SHMLINK_ERR_TOO_MANY_REGIONS,
          "sent more regions than the peer accepts");
    static uint8_t big[SHMLINK_MAX_PAYLOAD_MAX + 1];
    CHECK(shmlink_endpoint_send(p.ep, big, sizeof big, NULL, &err) == SHMLINK_ERR_PAYLOAD_TOO_LARGE,
          "sent more payload than the peer accepts");
    CHECK(shmlink_endpoint_send(p.ep, NULL, 0, &(shmlink_send_options){ .regions = &r3, .region_count = 1 },
                                &err) == SHMLINK_ERR_REGION_CLOSED,
          "sent a closed region");
    shmlink_region *const twice[2] = { r2, r2 };
    const shmlink_send_options bad = { .regions = twice, .region_count = 2, .transfer = twice,
                                       .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(p.ep, NULL, 0, &bad, &err) == SHMLINK_ERR_INVALID_ARG,
          "a transferred region attached twice");
    CHECK(!shmlink_region_transferred(r2), "a refused send transferred a region");
    struct pollfd pf = { .fd = p.raw, .events = POLLIN };
    CHECK(poll(&pf, 1, 0) == 0, "a refused send sent something");

    shmlink_endpoint_stats st;
    shmlink_endpoint_stats_get(p.ep, &st);
    CHECK(st.messages_out == 2 && st.bytes_out == 5 && st.own_regions == 2 &&
              st.limits.max_regions == SHMLINK_DEFAULT_MAX_REGIONS &&
              st.limits.max_bound_regions == 1024,
          "stats: %llu out, %llu own", (unsigned long long)st.messages_out,
          (unsigned long long)st.own_regions);

    shmlink_region_unref(r1);
    shmlink_region_unref(r2);
    shmlink_region_unref(r3);
    shmlink_region_unref(r4);
    close_pair(&p);
    CHECK(fd_count() == fds_before, "fd leak in wire test");
    CHECK(memfd_mappings() == 0, "mappings left after wire test: %d", memfd_mappings());
}

#define MANY 200u
#define SCRAMBLE 7919u /* a prime: i * SCRAMBLE % MANY visits every index once */

/* The peer binds MANY ids, releases the odd ones in scrambled order, then refers to every
 * even one: all must resolve. Then an odd (released) id must be refused. */
static void test_many_peer_bindings(void)
{
    const int fds_before = fd_count();
    pair p = open_pair(NULL);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    static uint8_t f[SHMLINK_MAX_FRAME_SIZE];
    desc d[SHMLINK_DEFAULT_MAX_REGIONS];
    int fds[SHMLINK_DEFAULT_MAX_REGIONS];
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    const unsigned per_frame = 10;
    for (unsigned base = 0; base < MANY; base += per_frame) {
        for (unsigned i = 0; i < per_frame; i++) {
            d[i] = (desc){ base + i + 1, SHMLINK_DESC_NEW, SMALL + PAGE * ((base + i) % 3) };
            fds[i] = make_memfd(d[i].size, GOOD_SEALS);
        }
        raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, d, per_frame, 0), fds, per_frame);
        close_all(fds, per_frame);
        CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_OK,
              "binding frame at %u", base);
    }
    shmlink_message_clear(&msg);
    for (unsigned k = 0; k < MANY; k++) {
        const unsigned i = k * SCRAMBLE % MANY;
        if (i % 2 == 0)
            continue;
        const desc r = { i + 1, 0, SMALL + PAGE * (i % 3) };
        raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_RELEASE, &r, 1, 0), NULL, 0);
    }
    CHECK(memfd_mappings() == (int)MANY / 2 || memfd_mappings() == (int)MANY,
          "mappings: %d", memfd_mappings()); /* releases are processed on the next recv */
    size_t n = 0;
    for (unsigned i = 0; i < MANY; i += 2) {
        d[n++] = (desc){ i + 1, 0, SMALL + PAGE * (i % 3) };
        if (n == SHMLINK_DEFAULT_MAX_REGIONS || i + 2 >= MANY) {
            raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, d, n, 0), NULL, 0);
            const shmlink_code code = shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err);
            CHECK(code == SHMLINK_OK && msg.region_count == n, "even ids up to %u: %s", i + 1,
                  err.message);
            n = 0;
        }
    }
    shmlink_message_clear(&msg);
    CHECK(memfd_mappings() == (int)MANY / 2, "released regions still mapped: %d",
          memfd_mappings());
    const desc odd = { 2, 0, SMALL + PAGE };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &odd, 1, 0), NULL, 0);
    CHECK(shmlink_endpoint_recv(p.ep, &msg, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_PROTOCOL_VIOLATION,
          "released id accepted");
    CHECK(msg.region_count == 0, "a refused message holds regions");
    shmlink_message_clear(&msg); /* what a receive allocated stays until cleared */
    CHECK(memfd_mappings() == 0, "bindings not dropped on failure: %d", memfd_mappings());
    shmlink_endpoint_free(p.ep);
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "fd leak with many bindings");
}

/* We bind MANY regions, release a scrambled half, and send all again: kept ones go by
 * their old id, released ones get new ids after MANY, in order. */
static void test_many_own_bindings(void)
{
    const int fds_before = fd_count();
    pair p = open_pair(NULL);
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    shmlink_region *r[MANY];
    static uint8_t buf[SHMLINK_MAX_FRAME_SIZE];
    int fds[SHMLINK_MAX_REGIONS_MAX];
    size_t nfds;
    for (unsigned i = 0; i < MANY; i++) {
        REQUIRE(shmlink_region_create(SMALL, &r[i], NULL) == SHMLINK_OK, "create");
        CHECK(send_regions(p.ep, &r[i], 1) == SHMLINK_OK, "send %u", i);
        raw_recv(p.raw, buf, sizeof buf, fds, &nfds);
        close_all(fds, nfds);
        CHECK(shmlink_get_le32(buf + SHMLINK_HEADER_SIZE + SHMLINK_DESC_OFF_ID) == i + 1,
              "first id of region %u", i);
    }
    bool released[MANY] = { false };
    for (unsigned k = 0; k < MANY; k++) {
        const unsigned i = k * SCRAMBLE % MANY;
        if (i % 3 != 0)
            continue;
        shmlink_endpoint_release(p.ep, r[i]);
        raw_recv(p.raw, buf, sizeof buf, NULL, NULL);
        CHECK(shmlink_get_le32(buf + SHMLINK_HEADER_SIZE + SHMLINK_DESC_OFF_ID) == i + 1,
              "released id of region %u", i);
        released[i] = true;
    }
    uint32_t next_new = MANY + 1;
    for (unsigned i = 0; i < MANY; i++) {
        CHECK(send_regions(p.ep, &r[i], 1) == SHMLINK_OK, "resend %u", i);
        raw_recv(p.raw, buf, sizeof buf, fds, &nfds);
        close_all(fds, nfds);
        const uint8_t *dsc = buf + SHMLINK_HEADER_SIZE;
        const uint32_t id = shmlink_get_le32(dsc + SHMLINK_DESC_OFF_ID);
        const uint32_t flags = shmlink_get_le32(dsc + SHMLINK_DESC_OFF_FLAGS);
        if (released[i])
            CHECK(id == next_new++ && flags == SHMLINK_DESC_NEW && nfds == 1,
                  "released region %u resent as id %u flags %u", i, id, flags);
        else
            CHECK(id == i + 1 && flags == 0 && nfds == 0, "kept region %u resent as id %u", i,
                  id);
    }
    for (unsigned i = 0; i < MANY; i++)
        shmlink_region_unref(r[i]);
    CHECK(memfd_mappings() == (int)MANY, "the endpoint keeps its bound regions");
    shmlink_endpoint_free(p.ep);
    CHECK(memfd_mappings() == 0, "regions left after close: %d", memfd_mappings());
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "fd leak with many own bindings");
}

/* ==================================================================================== */
/* Regions                                                                               */
/* ==================================================================================== */

static void test_regions(void)
{
    const int fds_before = fd_count();
    shmlink_error err;
    shmlink_region *r;
    CHECK(shmlink_region_create(0, &r, &err) == SHMLINK_ERR_INVALID_ARG && err.code == SHMLINK_ERR_INVALID_ARG,
          "a region of 0 bytes");
    r = new_region(8192);
    CHECK(shmlink_region_size(r) == 8192 && !shmlink_region_frozen(r) && !shmlink_region_closed(r) &&
              !shmlink_region_transferred(r),
          "a new region's state");
    /* A memfd, close-on-exec, sealed against shrinking and growing, on shmem. */
    struct stat st;
    int memfds = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char link[256], path[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        const ssize_t n = readlink(path, link, sizeof link - 1);
        if (n > 0 && (link[n] = '\0', strstr(link, "memfd:shmlink") != NULL)) {
            const int fd = atoi(e->d_name);
            memfds++;
            const int seals = fcntl(fd, F_GET_SEALS);
            struct statfs fs;
            CHECK((seals & GOOD_SEALS) == GOOD_SEALS && (seals & F_SEAL_WRITE) == 0, "seals %#x", seals);
            CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0, "not close-on-exec");
            CHECK(fstatfs(fd, &fs) == 0 && (unsigned long)fs.f_type == (unsigned long)TMPFS_MAGIC,
                  "not on shmem");
            CHECK(fstat(fd, &st) == 0 && st.st_size == 8192, "size");
            /* Where the kernel knows MFD_NOEXEC_SEAL (6.3), never executable: F_SEAL_EXEC. */
            const int probe = memfd_create("probe", MFD_CLOEXEC | MFD_ALLOW_SEALING | 0x0008u);
            if (probe >= 0) {
                CHECK((seals & 0x0020) != 0 && (st.st_mode & 0111) == 0,
                      "created without MFD_NOEXEC_SEAL: seals %#x, mode %o", seals, (unsigned)st.st_mode);
                REQUIRE(close(probe) == 0, "close");
            }
        }
    }
    closedir(d);
    CHECK(memfds == 1, "%d shmlink memfds open", memfds);

    CHECK(shmlink_region_write(r, 100, "hello", 5, &err) == SHMLINK_OK, "write");
    char got[16] = { 0 };
    CHECK(shmlink_region_read(r, 100, got, 5, &err) == SHMLINK_OK && memcmp(got, "hello", 5) == 0, "read");
    uint8_t *bytes = bytes_of(r);
    CHECK(memcmp(bytes + 100, "hello", 5) == 0, "bytes shows the write");
    bytes[0] = 7;
    CHECK(shmlink_region_read(r, 0, got, 1, &err) == SHMLINK_OK && got[0] == 7, "read shows bytes");
    size_t copied;
    CHECK(shmlink_region_read_into(r, 8190, got, sizeof got, &copied, &err) == SHMLINK_OK && copied == 2,
          "read_into near the end");
    CHECK(shmlink_region_read_into(r, 8192, got, sizeof got, &copied, &err) == SHMLINK_OK && copied == 0,
          "read_into at the end");
    CHECK(shmlink_region_read_into(r, 8193, got, sizeof got, &copied, &err) == SHMLINK_ERR_INVALID_ARG,
          "read_into past the end");
    /* Overlapping copies within the region are memmoves. */
    CHECK(shmlink_region_write(r, 101, bytes + 100, 5, &err) == SHMLINK_OK &&
              shmlink_region_read(r, 100, got, 6, &err) == SHMLINK_OK && memcmp(got, "hhello", 6) == 0,
          "overlapping write");
    CHECK(shmlink_region_read(r, 8000, got, 193, &err) == SHMLINK_ERR_INVALID_ARG, "read past the end");
    CHECK(shmlink_region_write(r, 8190, "abc", 3, &err) == SHMLINK_ERR_INVALID_ARG, "write past the end");
    CHECK(shmlink_region_read(r, UINT64_MAX, got, 1, &err) == SHMLINK_ERR_INVALID_ARG, "huge offset");

    /* Freeze: same address, the file protected, a stray write stays private. */
    CHECK(shmlink_region_write(r, 0, "frozen", 6, &err) == SHMLINK_OK, "write");
    CHECK(shmlink_region_freeze(r, &err) == SHMLINK_OK && shmlink_region_frozen(r), "freeze: %s", err.message);
    CHECK(memcmp(bytes, "frozen", 6) == 0, "the old pointer does not read the contents");
    bytes[0] = 'X';
    CHECK(shmlink_region_read(r, 0, got, 6, &err) == SHMLINK_OK && memcmp(got, "frozen", 6) == 0,
          "read of a frozen region does not return the file's contents");
    CHECK(shmlink_region_write(r, 0, "x", 1, &err) == SHMLINK_ERR_REGION_FROZEN, "write to frozen");

    /* Close while the pointer is held: zeros, harmless writes; then REGION_CLOSED. */
    shmlink_region_close(r);
    shmlink_region_close(r);
    CHECK(shmlink_region_closed(r) && shmlink_region_size(r) == 0, "state after close");
    static const uint8_t zeros[6];
    CHECK(memcmp(bytes, zeros, 6) == 0, "a stale pointer does not read zeros");
    bytes[0] = 1;
    void *p;
    size_t n;
    CHECK(shmlink_region_bytes(r, &p, &n, &err) == SHMLINK_ERR_REGION_CLOSED, "bytes after close");
    CHECK(shmlink_region_read(r, 0, got, 1, &err) == SHMLINK_ERR_REGION_CLOSED, "read after close");
    CHECK(shmlink_region_write(r, 0, "x", 1, &err) == SHMLINK_ERR_REGION_CLOSED, "write after close");
    CHECK(shmlink_region_freeze(r, &err) == SHMLINK_ERR_REGION_CLOSED, "freeze after close");
    CHECK(shmlink_region_reclaim(r, &err) == SHMLINK_ERR_REGION_CLOSED, "reclaim after close");
    CHECK(fd_count() == fds_before, "close left the memfd open");
    shmlink_region_unref(r);

    /* A region whose pointer was never taken is unmapped by close at once. */
    r = new_region(SMALL);
    CHECK(memfd_mappings() == 1, "one mapping");
    shmlink_region_close(r);
    CHECK(memfd_mappings() == 0, "close kept the mapping of a region nobody points into");
    shmlink_region_unref(r);

    /* Freeze while another process (here: another mapping) maps it shared and writable. */
    r = new_region(SMALL);
    bytes = bytes_of(r);
    int fd = -1;
    d = opendir("/proc/self/fd");
    for (struct dirent *e; (e = readdir(d)) != NULL && fd < 0;) {
        char link[256], path[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        const ssize_t len = readlink(path, link, sizeof link - 1);
        if (len > 0 && (link[len] = '\0', strstr(link, "memfd:shmlink") != NULL))
            fd = atoi(e->d_name);
    }
    closedir(d);
    uint8_t *other = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(other != MAP_FAILED, "mmap");
    CHECK(shmlink_region_freeze(r, &err) == SHMLINK_ERR_REGION_BUSY && !shmlink_region_frozen(r),
          "freeze while mapped elsewhere: %s", shmlink_code_string(err.code));
    CHECK(shmlink_region_write(r, 0, "shared", 6, &err) == SHMLINK_OK && memcmp(other, "shared", 6) == 0,
          "the region is no longer shared after a refused freeze");
    other[0] = 'S';
    CHECK(bytes[0] == 'S', "the region no longer sees the other mapping");
    REQUIRE(munmap(other, SMALL) == 0, "munmap");
    shmlink_region_unref(r); /* the last reference closes it */
    CHECK(fd_count() == fds_before && memfd_mappings() == 0, "region tests leaked");
}

/* ==================================================================================== */
/* Pairs, attachments, custody, timeouts                                                 */
/* ==================================================================================== */

static shmlink_code recv_ok(shmlink_endpoint *ep, shmlink_message *m)
{
    shmlink_error err;
    const shmlink_code code = shmlink_endpoint_recv(ep, m, TEST_TIMEOUT_MS, &err);
    CHECK(code == SHMLINK_OK, "recv: %s", err.message);
    return code;
}

static void *blocked_recv(void *arg)
{
    shmlink_message m = SHMLINK_MESSAGE_INIT;
    shmlink_error err;
    const shmlink_code code = shmlink_endpoint_recv(arg, &m, -1, &err);
    shmlink_message_clear(&m);
    return (void *)(uintptr_t)code;
}

static void test_pair_and_custody(void)
{
    const int fds_before = fd_count();
    shmlink_endpoint *a, *b;
    shmlink_error err;
    REQUIRE(shmlink_endpoint_pair(NULL, &a, &b, &err) == SHMLINK_OK, "pair: %s", err.message);
    shmlink_region *r[4];
    for (size_t i = 0; i < 4; i++)
        r[i] = new_region(SMALL * (i + 1));
    CHECK(shmlink_region_write(r[0], 0, "region data", 11, &err) == SHMLINK_OK, "write");
    /* Regions keep their order; a region also in transfer is transferred in place; the
     * transfer-only ones follow in theirs. */
    shmlink_region *const regions[2] = { r[0], r[1] };
    shmlink_region *const transfer[3] = { r[2], r[1], r[3] };
    const shmlink_send_options o = { .regions = regions, .region_count = 2, .transfer = transfer,
                                     .transfer_count = 3 };
    CHECK(shmlink_endpoint_send(a, "hello", 5, &o, &err) == SHMLINK_OK, "send: %s", err.message);
    shmlink_message m = SHMLINK_MESSAGE_INIT;
    if (recv_ok(b, &m) == SHMLINK_OK) {
        CHECK(m.payload_len == 5 && memcmp(m.payload, "hello", 5) == 0 && m.region_count == 4, "message");
        const bool want_transfer[4] = { false, true, true, true };
        for (size_t i = 0; i < m.region_count; i++)
            CHECK(shmlink_region_size(m.regions[i]) == SMALL * (i + 1) &&
                      m.descriptors[i].transferred == want_transfer[i] && m.descriptors[i].is_new &&
                      m.descriptors[i].id == i + 1,
                  "attachment %zu", i);
        CHECK(m.regions[0] != r[0], "the other end of a pair resolves regions on its own");
        char got[12] = { 0 };
        CHECK(shmlink_region_read(m.regions[0], 0, got, 11, &err) == SHMLINK_OK &&
                  strcmp(got, "region data") == 0,
              "shared contents");
    }
    CHECK(!shmlink_region_transferred(r[0]) && shmlink_region_transferred(r[1]) &&
              shmlink_region_transferred(r[2]) && shmlink_region_transferred(r[3]),
          "custody after send");
    /* Back from the peer: the same region object, usable again. */
    shmlink_region *back = shmlink_region_ref(m.regions[1]);
    CHECK(shmlink_region_write(back, 0, "stamped", 7, &err) == SHMLINK_OK, "the peer writes: %s", err.message);
    const shmlink_send_options ret = { .transfer = &back, .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(b, NULL, 0, &ret, &err) == SHMLINK_OK, "send back");
    CHECK(shmlink_region_transferred(back), "the peer's copy is away now");
    shmlink_message m2 = SHMLINK_MESSAGE_INIT;
    if (recv_ok(a, &m2) == SHMLINK_OK) {
        char got[8] = { 0 };
        CHECK(m2.region_count == 1 && m2.regions[0] == r[1] && !shmlink_region_transferred(r[1]),
              "the region did not come back as itself");
        CHECK(shmlink_region_read(r[1], 0, got, 7, &err) == SHMLINK_OK && strcmp(got, "stamped") == 0,
              "the peer's write is not visible");
    }
    /* A bound region travels by id, and resolves to the same object there. */
    CHECK(send_regions(a, &r[0], 1) == SHMLINK_OK, "send again");
    shmlink_region *seen = m.regions[0];
    shmlink_region_ref(seen);
    if (recv_ok(b, &m) == SHMLINK_OK)
        CHECK(!m.descriptors[0].is_new && m.regions[0] == seen, "by id");
    shmlink_region_unref(seen);

    /* Timeouts leave the connection intact. */
    CHECK(shmlink_endpoint_recv(b, &m, 0, &err) == SHMLINK_ERR_TIMED_OUT, "recv with nothing there");
    CHECK(shmlink_endpoint_recv(b, &m, 30, &err) == SHMLINK_ERR_TIMED_OUT, "recv timeout");
    CHECK(!shmlink_endpoint_closed(b), "a timeout closed the endpoint");

    /* Peer credentials. */
    shmlink_peer_credentials cred;
    CHECK(shmlink_endpoint_peer(a, &cred, &err) == SHMLINK_OK && cred.pid == getpid() &&
              cred.uid == geteuid() && cred.gid == getegid(),
          "peer credentials");

    /* Fill a's socket: a send with a timeout times out, and changes nothing. */
    static uint8_t payload[60000];
    unsigned sent = 0;
    const shmlink_send_options quick = { .timeout_ms = 30 };
    while (shmlink_endpoint_send(a, payload, sizeof payload, &quick, &err) == SHMLINK_OK)
        sent++;
    CHECK(err.code == SHMLINK_ERR_TIMED_OUT && sent > 0, "send into a full socket: %s", err.message);
    const shmlink_send_options quick_transfer = { .transfer = &r[0], .transfer_count = 1, .timeout_ms = 10 };
    CHECK(shmlink_endpoint_send(a, NULL, 0, &quick_transfer, &err) == SHMLINK_ERR_TIMED_OUT &&
              !shmlink_region_transferred(r[0]),
          "a send that timed out transferred its region");
    for (unsigned i = 0; i < sent; i++)
        recv_ok(b, &m);

    /* Closing wakes a thread blocked in recv. */
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, blocked_recv, a) == 0, "pthread_create");
    const struct timespec pause = { 0, 20000000 };
    nanosleep(&pause, NULL);
    shmlink_endpoint_close(a);
    void *result;
    REQUIRE(pthread_join(t, &result) == 0, "pthread_join");
    CHECK((shmlink_code)(uintptr_t)result == SHMLINK_ERR_CLOSED, "blocked recv after close: %s",
          shmlink_code_string((shmlink_code)(uintptr_t)result));
    CHECK(shmlink_endpoint_fd(a) == -1 && shmlink_endpoint_closed(a), "a after close");
    CHECK(shmlink_endpoint_send(a, NULL, 0, NULL, &err) == SHMLINK_ERR_CLOSED, "send after close");
    CHECK(shmlink_endpoint_peer(a, &cred, &err) == SHMLINK_ERR_CLOSED, "peer after close");

    /* The peer saw end-of-file. a ended the connection, so the regions it transferred over
     * it stay the peer's (PROTOCOL.md section 6). */
    CHECK(shmlink_endpoint_recv(b, &m, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_PEER_CLOSED, "b sees the end");
    CHECK(shmlink_region_reclaim(r[2], &err) == SHMLINK_ERR_REGION_TRANSFERRED &&
              shmlink_region_transferred(r[2]),
          "reclaimed a region over a connection this side ended");
    CHECK(shmlink_region_reclaim(r[0], &err) == SHMLINK_OK, "reclaim of a region that is here");

    /* The other way round: the receiver ends the connection. It gives up what was
     * transferred to it; the sender, once it read end-of-file, takes its region back. */
    shmlink_endpoint *c, *d;
    REQUIRE(shmlink_endpoint_pair(NULL, &c, &d, &err) == SHMLINK_OK, "pair");
    shmlink_region *moved = new_region(SMALL), *kept = new_region(SMALL);
    const shmlink_send_options mv = { .regions = &kept, .region_count = 1, .transfer = &moved,
                                      .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(c, NULL, 0, &mv, &err) == SHMLINK_OK, "send");
    shmlink_message md = SHMLINK_MESSAGE_INIT;
    if (recv_ok(d, &md) == SHMLINK_OK) {
        shmlink_region *got_kept = md.regions[0], *got_moved = md.regions[1];
        CHECK(shmlink_region_write(got_moved, 0, "mine for now", 12, &err) == SHMLINK_OK, "write");
        shmlink_endpoint_close(d);
        void *ptr;
        size_t size;
        CHECK(shmlink_region_transferred(got_moved) &&
                  shmlink_region_bytes(got_moved, &ptr, &size, &err) == SHMLINK_ERR_REGION_TRANSFERRED &&
                  shmlink_region_reclaim(got_moved, &err) == SHMLINK_ERR_REGION_TRANSFERRED,
              "the side that ended the connection still has what was transferred to it");
        CHECK(!shmlink_region_transferred(got_kept) &&
                  shmlink_region_write(got_kept, 0, "shared", 6, &err) == SHMLINK_OK,
              "a region shared without transfer is not given up");
    }
    CHECK(shmlink_endpoint_recv(c, &m, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_PEER_CLOSED, "c sees the end");
    char text[13] = { 0 };
    CHECK(shmlink_region_reclaim(moved, &err) == SHMLINK_OK && !shmlink_region_transferred(moved) &&
              shmlink_region_read(moved, 0, text, 12, &err) == SHMLINK_OK &&
              strcmp(text, "mine for now") == 0,
          "reclaim after the peer ended the connection: %s", err.message);
    shmlink_message_clear(&md);
    shmlink_region_unref(moved);
    shmlink_region_unref(kept);
    shmlink_endpoint_free(c);
    shmlink_endpoint_free(d);

    shmlink_message_clear(&m);
    shmlink_message_clear(&m2);
    shmlink_region_unref(back);
    for (size_t i = 0; i < 4; i++)
        shmlink_region_unref(r[i]);
    shmlink_endpoint_free(a);
    shmlink_endpoint_free(b);
    CHECK(fd_count() == fds_before, "fd leak in pair tests: %d before, %d after", fds_before, fd_count());
    CHECK(memfd_mappings() == 0, "mappings left after pair tests: %d", memfd_mappings());
}

/* ==================================================================================== */
/* Servers, filters, inherited                                                           */
/* ==================================================================================== */

static void test_listen_connect(void)
{
    const int fds_before = fd_count();
    char dir[] = "/tmp/shmlink-c-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL, "mkdtemp");
    char path[128];
    snprintf(path, sizeof path, "%s/s.sock", dir);
    shmlink_error err;
    shmlink_server *s;
    REQUIRE(shmlink_endpoint_listen(path, NULL, &s, &err) == SHMLINK_OK, "listen: %s", err.message);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600,
          "socket file mode %o", (unsigned)st.st_mode);
    CHECK(strcmp(shmlink_server_path(s), path) == 0, "path");
    /* connect returns after the handshake: accept sends the server's HELLO, so accept first
     * in another thread of control: here, a client that does not wait (timeout), then one
     * that does after accept has greeted it. */
    shmlink_endpoint *c = NULL, *e = NULL;
    const shmlink_connect_options quick = { .timeout_ms = 30 };
    CHECK(shmlink_endpoint_connect(path, &quick, &c, &err) == SHMLINK_ERR_TIMED_OUT,
          "connect before anyone accepts: %s", shmlink_code_string(err.code));
    CHECK(shmlink_server_accept(s, TEST_TIMEOUT_MS, &e, &err) == SHMLINK_OK, "accept: %s", err.message);
    shmlink_endpoint_free(e);
    /* Now one the server greets from accept's drain before the client waits. */
    int raw = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    memcpy(addr.sun_path, path, strlen(path) + 1);
    REQUIRE(connect(raw, (struct sockaddr *)&addr, sizeof addr) == 0, "raw connect");
    CHECK(shmlink_server_accept(s, TEST_TIMEOUT_MS, &e, &err) == SHMLINK_OK, "accept raw");
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    CHECK(raw_recv(raw, hello, sizeof hello, NULL, NULL) == sizeof hello, "the server's HELLO");
    raw_send(raw, hello, valid_hello(hello), NULL, 0);
    /* The server accepts frozen regions only, by default. */
    int fd = make_memfd(SMALL, GOOD_SEALS);
    static uint8_t f[SHMLINK_HEADER_SIZE + SHMLINK_DESC_SIZE];
    const desc d = { 1, SHMLINK_DESC_NEW, SMALL };
    raw_send(raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &d, 1, 0), &fd, 1);
    close_all(&fd, 1);
    shmlink_message m = SHMLINK_MESSAGE_INIT;
    CHECK(shmlink_endpoint_recv(e, &m, TEST_TIMEOUT_MS, &err) == SHMLINK_ERR_REGION_WRITABLE,
          "a writable region from a client: %s", shmlink_code_string(err.code));
    CHECK(raw_sees_eof(raw), "the client was not shut down");
    REQUIRE(close(raw) == 0, "close");
    shmlink_endpoint_free(e);

    /* Filters: a server that allows another uid only shuts us down unread. */
    shmlink_server_free(s);
    CHECK(access(path, F_OK) != 0, "the socket file is still there after close");
    const uint32_t other = (uint32_t)geteuid() + 4242u;
    const shmlink_listen_options only_other = { .allow = { SHMLINK_PEER_UIDS, &other, 1 } };
    REQUIRE(shmlink_endpoint_listen(path, &only_other, &s, &err) == SHMLINK_OK, "listen: %s", err.message);
    raw = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    REQUIRE(connect(raw, (struct sockaddr *)&addr, sizeof addr) == 0, "raw connect");
    CHECK(shmlink_server_accept(s, 50, &e, &err) == SHMLINK_ERR_TIMED_OUT, "accept of a refused client");
    CHECK(shmlink_server_rejected(s) == 1, "rejected %llu", (unsigned long long)shmlink_server_rejected(s));
    CHECK(raw_sees_eof(raw), "the refused client did not see end-of-file");
    REQUIRE(close(raw) == 0, "close");
    shmlink_server_free(s);

    /* The client's filter on the server. */
    const shmlink_listen_options anyone = { .allow = { SHMLINK_PEER_ANY_USER, NULL, 0 }, .accept_writable = true };
    REQUIRE(shmlink_endpoint_listen(path, &anyone, &s, &err) == SHMLINK_OK, "listen: %s", err.message);
    const shmlink_connect_options server_other = { .server = { SHMLINK_PEER_UIDS, &other, 1 } };
    CHECK(shmlink_endpoint_connect(path, &server_other, &c, &err) == SHMLINK_ERR_PEER_REJECTED,
          "a server of another user: %s", shmlink_code_string(err.code));
    CHECK(shmlink_server_accept(s, 0, &e, &err) == SHMLINK_OK, "the rejected connection is accepted here");
    shmlink_endpoint_free(e);
    shmlink_server_free(s);

    /* A live listener owns its path; a stale socket file is replaced. */
    REQUIRE(shmlink_endpoint_listen(path, NULL, &s, &err) == SHMLINK_OK, "listen");
    shmlink_server *s2;
    CHECK(shmlink_endpoint_listen(path, NULL, &s2, &err) == SHMLINK_ERR_OS && err.errnum == EADDRINUSE &&
              strcmp(err.syscall, "bind") == 0,
          "a second listener: %s", err.message);
    shmlink_server_free(s);
    const int stale = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    REQUIRE(bind(stale, (struct sockaddr *)&addr, sizeof addr) == 0, "bind");
    REQUIRE(close(stale) == 0, "close");
    CHECK(shmlink_endpoint_listen(path, NULL, &s, &err) == SHMLINK_OK, "listen over a stale file: %s",
          err.message);
    shmlink_server_free(s);

    /* Abstract names; connect to nobody. */
    char name[64];
    snprintf(name, sizeof name, "@shmlink-c-test-%d", (int)getpid());
    REQUIRE(shmlink_endpoint_listen(name, NULL, &s, &err) == SHMLINK_OK, "listen %s", name);
    raw = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un abs = { .sun_family = AF_UNIX };
    memcpy(abs.sun_path + 1, name + 1, strlen(name) - 1);
    CHECK(connect(raw, (struct sockaddr *)&abs, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name))) == 0,
          "connect to the abstract name with its exact length");
    CHECK(shmlink_server_accept(s, TEST_TIMEOUT_MS, &e, &err) == SHMLINK_OK, "accept abstract");
    shmlink_endpoint_free(e);
    REQUIRE(close(raw) == 0, "close");
    shmlink_server_free(s);
    CHECK(shmlink_endpoint_connect(path, NULL, &c, &err) == SHMLINK_ERR_OS && err.errnum == ENOENT &&
              strcmp(err.syscall, "connect") == 0 && strncmp(err.message, "shmlink_endpoint_connect: connect failed: ENOENT", 48) == 0,
          "connect to nobody: %s", err.message);
    CHECK(shmlink_endpoint_connect("", NULL, &c, &err) == SHMLINK_ERR_INVALID_ARG, "empty path");
    REQUIRE(rmdir(dir) == 0, "rmdir");
    shmlink_message_clear(&m);
    CHECK(fd_count() == fds_before, "fd leak in server tests: %d before, %d after", fds_before, fd_count());
}

static void test_inherited(void)
{
    const int fds_before = fd_count();
    shmlink_error err;
    shmlink_endpoint *ep;
    unsetenv("SHMLINK_FD");
    CHECK(shmlink_endpoint_inherited(NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
              strstr(err.message, "not set") != NULL,
          "unset: %s", err.message);
    static const char *bad[] = { "", "three", "3x", "-1", "2" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("SHMLINK_FD", bad[i], 1);
        CHECK(shmlink_endpoint_inherited(NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
                  strstr(err.message, "not a descriptor number") != NULL,
              "\"%s\": %s", bad[i], err.message);
    }
    setenv("SHMLINK_FD", "999", 1);
    CHECK(shmlink_endpoint_inherited(NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
              strstr(err.message, "not open") != NULL && strstr(err.message, "wrapper program") != NULL,
          "closed descriptor: %s", err.message);
    int pp[2];
    REQUIRE(pipe2(pp, O_CLOEXEC) == 0, "pipe2");
    char number[16];
    snprintf(number, sizeof number, "%d", pp[0]);
    setenv("SHMLINK_FD", number, 1);
    CHECK(shmlink_endpoint_inherited(NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
              strstr(err.message, "a pipe") != NULL && strstr(err.message, "wrapper program") != NULL,
          "pipe: %s", err.message);
    CHECK(shmlink_endpoint_from_fd(pp[0], NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
              fcntl(pp[0], F_GETFD) >= 0,
          "from_fd of a pipe (which stays open)");
    close_all(pp, 2);
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    CHECK(shmlink_endpoint_from_fd(sv[0], NULL, &ep, &err) == SHMLINK_ERR_INVALID_ARG &&
              strstr(err.message, "SOCK_STREAM") != NULL,
          "from_fd of a stream socket: %s", err.message);
    close_all(sv, 2);

    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
    shmlink_endpoint *parent;
    REQUIRE(shmlink_endpoint_from_fd(sv[1], NULL, &parent, &err) == SHMLINK_OK, "from_fd: %s", err.message);
    snprintf(number, sizeof number, " %d\n", sv[0]);
    setenv("SHMLINK_FD", number, 1);
    CHECK(shmlink_endpoint_inherited(NULL, &ep, &err) == SHMLINK_OK, "inherited: %s", err.message);
    CHECK(getenv("SHMLINK_FD") == NULL, "SHMLINK_FD is still set");
    CHECK((fcntl(sv[0], F_GETFD) & FD_CLOEXEC) != 0, "the inherited socket is not close-on-exec");
    CHECK(shmlink_endpoint_send(ep, "child", 5, NULL, &err) == SHMLINK_OK, "send from the child");
    shmlink_message m = SHMLINK_MESSAGE_INIT;
    if (recv_ok(parent, &m) == SHMLINK_OK)
        CHECK(m.payload_len == 5 && memcmp(m.payload, "child", 5) == 0, "payload");
    shmlink_message_clear(&m);
    shmlink_endpoint_free(ep);
    shmlink_endpoint_free(parent);
    CHECK(fd_count() == fds_before, "fd leak in inherited tests");
}

/* The codes of docs/ERRORS.md, in its order, and the error struct. */
static void test_codes(void)
{
    FILE *f = fopen("../../docs/ERRORS.md", "r");
    if (f == NULL)
        f = fopen("docs/ERRORS.md", "r");
    if (f == NULL) {
        printf("  (docs/ERRORS.md not found from here: comparison skipped)\n");
    } else {
        char line[2048];
        int row = 0;
        while (fgets(line, sizeof line, f) != NULL) {
            char code[64];
            if (sscanf(line, "| `%63[A-Z_]` |", code) != 1 || strncmp(code, "ERR_SHMLINK_", 12) != 0)
                continue;
            row++;
            CHECK(row < SHMLINK_CODE_COUNT && strcmp(shmlink_code_string((shmlink_code)row), code) == 0,
                  "row %d of docs/ERRORS.md is %s, shmlink_code_string says %s", row, code,
                  shmlink_code_string((shmlink_code)row));
        }
        fclose(f);
        CHECK(row == SHMLINK_CODE_COUNT - 1, "docs/ERRORS.md has %d codes, the enum %d", row,
              SHMLINK_CODE_COUNT - 1);
    }
    CHECK(strcmp(shmlink_code_string(SHMLINK_OK), "OK") == 0, "OK");
    CHECK(strcmp(shmlink_code_string((shmlink_code)99), "ERR_SHMLINK_UNKNOWN") == 0, "unknown");
    /* NULL err is allowed everywhere. */
    shmlink_region *r;
    CHECK(shmlink_region_create(0, &r, NULL) == SHMLINK_ERR_INVALID_ARG, "NULL err");
}

/* ==================================================================================== */
/* Round trip with another process: dedupe of returning regions                          */
/* ==================================================================================== */

#define STAMP 0xA5u

/* The child: receive, stamp byte 0 of transferred writable regions, send all back with
 * TRANSFER; exit 0 at end-of-file. */
static int child_bounce(int fd)
{
    shmlink_endpoint *ep;
    if (shmlink_endpoint_from_fd(fd, NULL, &ep, NULL) != SHMLINK_OK)
        return 2;
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    for (;;) {
        const shmlink_code code = shmlink_endpoint_recv(ep, &msg, TEST_TIMEOUT_MS, NULL);
        if (code == SHMLINK_ERR_PEER_CLOSED)
            break;
        if (code != SHMLINK_OK)
            return 3;
        for (size_t i = 0; i < msg.region_count; i++) {
            shmlink_region *r = msg.regions[i];
            if (msg.descriptors[i].frozen) {
                if (shmlink_region_write(r, 0, "x", 1, NULL) != SHMLINK_ERR_REGION_FROZEN)
                    return 4;
            } else if (msg.descriptors[i].transferred) {
                const uint8_t stamp = STAMP;
                if (shmlink_region_write(r, 0, &stamp, 1, NULL) != SHMLINK_OK)
                    return 6;
            }
        }
        const shmlink_send_options o = { .transfer = msg.regions, .transfer_count = msg.region_count };
        if (shmlink_endpoint_send(ep, msg.payload, msg.payload_len, &o, NULL) != SHMLINK_OK)
            return 5;
    }
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(ep);
    return 0;
}

static void test_round_trip(void)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    const pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        if (close(sv[0]) != 0)
            _exit(EXIT_FAILURE);
        _exit(child_bounce(sv[1]));
    }
    REQUIRE(close(sv[1]) == 0, "close");
    const int fds_before = fd_count();
    shmlink_endpoint *ep;
    shmlink_error err;
    REQUIRE(shmlink_endpoint_from_fd(sv[0], NULL, &ep, &err) == SHMLINK_OK, "from_fd: %s", err.message);
    shmlink_region *moving = new_region(LARGE), *frozen = new_region(SMALL);
    memset(bytes_of(moving), 1, LARGE);
    REQUIRE(shmlink_region_freeze(frozen, &err) == SHMLINK_OK, "freeze");
    const int fds_with_regions = fd_count();
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    for (unsigned round = 0; round < 3; round++) {
        shmlink_region *const both[2] = { moving, frozen };
        const shmlink_send_options o = { .transfer = both, .transfer_count = 2 };
        CHECK(shmlink_endpoint_send(ep, "ping", 4, &o, &err) == SHMLINK_OK, "send round %u", round);
        const shmlink_code code = shmlink_endpoint_recv(ep, &msg, TEST_TIMEOUT_MS, &err);
        CHECK(code == SHMLINK_OK, "recv round %u: %s", round, err.message);
        if (code != SHMLINK_OK)
            break;
        CHECK(msg.payload_len == 4 && memcmp(msg.payload, "ping", 4) == 0, "payload");
        CHECK(msg.region_count == 2 && msg.regions[0] == moving && msg.regions[1] == frozen,
              "returning regions not resolved to our own objects");
        CHECK(msg.descriptors[0].id == 1 && msg.descriptors[1].id == 2 &&
                  msg.descriptors[0].is_new == (round == 0) && msg.descriptors[1].is_new == (round == 0) &&
                  msg.descriptors[0].transferred && msg.descriptors[1].transferred &&
                  !msg.descriptors[0].frozen && msg.descriptors[1].frozen,
              "round %u: ids/flags from the peer", round);
        uint8_t first[2];
        CHECK(!shmlink_region_transferred(moving) &&
                  shmlink_region_read(moving, 0, first, 2, &err) == SHMLINK_OK && first[0] == STAMP &&
                  first[1] == 1,
              "stamp not visible after the region came back");
        /* The returning fds were duplicates of ours and must have been closed. */
        CHECK(fd_count() == fds_with_regions, "round %u: %d fds, expected %d", round, fd_count(),
              fds_with_regions);
    }
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(ep);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    shmlink_region_unref(moving);
    shmlink_region_unref(frozen);
    CHECK(fd_count() == fds_before - 1, "fd leak in round trip"); /* the socket is closed */
    CHECK(memfd_mappings() == 0, "mappings left after round trip");
}

/* ==================================================================================== */
/* The peer's echo role, as a benchmark client would drive it                            */
/* ==================================================================================== */

static double seconds_now(void)
{
    struct timespec ts;
    REQUIRE(clock_gettime(CLOCK_MONOTONIC, &ts) == 0, "clock_gettime");
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_echo(const char *peer)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(path, sizeof path, "/tmp/shmlink-c-echo-%d.sock", (int)getpid());
    shmlink_error err;
    shmlink_server *server;
    const shmlink_listen_options lo = { .accept_writable = true };
    REQUIRE(shmlink_endpoint_listen(path, &lo, &server, &err) == SHMLINK_OK, "listen: %s", err.message);
    const pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        execl(peer, peer, "echo", path, (char *)NULL);
        _exit(127);
    }
    shmlink_endpoint *ep;
    REQUIRE(shmlink_server_accept(server, TEST_TIMEOUT_MS, &ep, &err) == SHMLINK_OK, "accept: %s",
            err.message);
    shmlink_server_free(server);
    shmlink_region *r = new_region(LARGE);
    memset(bytes_of(r), 7, LARGE);
    uint8_t payload[ECHO_PAYLOAD];
    shmlink_message msg = SHMLINK_MESSAGE_INIT;
    const shmlink_send_options o = { .regions = &r, .region_count = 1 };
    const double start = seconds_now();
    unsigned bad = 0;
    for (unsigned i = 0; i < ECHO_ROUNDS; i++) {
        memset(payload, (int)(i & 0xFF), sizeof payload);
        if (shmlink_endpoint_send(ep, payload, sizeof payload, &o, &err) != SHMLINK_OK ||
            shmlink_endpoint_recv(ep, &msg, TEST_TIMEOUT_MS, &err) != SHMLINK_OK) {
            bad++;
            break;
        }
        bad += msg.payload_len != sizeof payload || memcmp(msg.payload, payload, sizeof payload) ||
               msg.region_count != 1 || msg.regions[0] != r || msg.descriptors[0].is_new != (i == 0);
    }
    const double elapsed = seconds_now() - start;
    CHECK(bad == 0, "echo: %u bad replies (%s)", bad, err.message);
    shmlink_message_clear(&msg);
    shmlink_endpoint_free(ep);
    shmlink_region_unref(r);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "echo peer exit status %d", status);
    struct rusage ru;
    REQUIRE(getrusage(RUSAGE_CHILDREN, &ru) == 0, "getrusage");
    const double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    printf("  echo: %u round trips with a 1 MiB region in %.3f s (%.1f us each, "
           "echo peer CPU %.1f us per message)\n",
           ECHO_ROUNDS, elapsed, elapsed * 1e6 / ECHO_ROUNDS, cpu * 1e6 / ECHO_ROUNDS);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("sha256 test vectors\n");
    test_sha256_vectors(false);
    if (sha256_hardware_available())
        test_sha256_vectors(true);
    test_sha256_cross_check();
    sha256_use_hardware(true);
    printf("json reader\n");
    test_json();
    printf("codes (docs/ERRORS.md)\n");
    test_codes();
    printf("refusals (PROTOCOL.md sections 5.3 and 7), fd and mapping counts\n");
    test_refusals();
    test_more_refusals();
    printf("trust policy and limits (PROTOCOL.md 7.1)\n");
    test_policy_and_limits();
    printf("end-of-file\n");
    test_end_of_file();
    printf("wire bytes (PROTOCOL.md section 8), ids, release\n");
    test_wire_bytes();
    printf("regions\n");
    test_regions();
    printf("pairs, attachments, custody, timeouts, threads\n");
    test_pair_and_custody();
    printf("many bindings\n");
    test_many_peer_bindings();
    test_many_own_bindings();
    printf("listen, connect, filters\n");
    test_listen_connect();
    printf("inherited, from_fd\n");
    test_inherited();
    printf("round trip with another process\n");
    test_round_trip();
    if (argc > 1) {
        printf("echo role of %s\n", argv[1]);
        test_echo(argv[1]);
    }
    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
