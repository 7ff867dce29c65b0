/*
 * test_shmlink.c - unit tests of libshmlink over socketpairs, SHA-256 test vectors, and
 * (given the peer binary as argv[1]) a round-trip test and timing of its echo role.
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

/* An endpoint on one end of a socketpair; the raw end has read its HELLO. */
typedef struct pair {
    shmlink_endpoint *ep;
    int raw;
} pair;

static pair open_pair(void)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    set_timeout(sv[1]);
    shmlink_options opts = SHMLINK_OPTIONS_DEFAULT;
    opts.timeout_ms = TEST_TIMEOUT_MS;
    pair p = { NULL, sv[1] };
    REQUIRE(shmlink_endpoint_open(sv[0], &opts, &p.ep) == SHMLINK_OK, "endpoint_open");
    uint8_t h[SHMLINK_HELLO_FRAME_SIZE];
    size_t nfds;
    const size_t n = raw_recv(p.raw, h, sizeof h, NULL, &nfds);
    uint8_t expect[SHMLINK_HELLO_FRAME_SIZE];
    valid_hello(expect);
    CHECK(n == sizeof expect && memcmp(h, expect, n) == 0 && nfds == 0, "endpoint's HELLO");
    return p;
}

/* The raw end must now read end-of-file: the endpoint shut the connection down. */
static bool raw_sees_eof(int raw)
{
    uint8_t buf[SHMLINK_HELLO_FRAME_SIZE];
    return raw_recv(raw, buf, sizeof buf, NULL, NULL) == 0;
}

/* ==================================================================================== */
/* Refusals                                                                              */
/* ==================================================================================== */

typedef struct hostile {
    const char *name;
    shmlink_error expect;
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
    pair p = open_pair();
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

    shmlink_message msg = { 0 };
    for (size_t i = 0; i < h->setup; i++) {
        const shmlink_error err = shmlink_recv(p.ep, &msg);
        CHECK(err == SHMLINK_OK, "%s: setup frame refused: %s", h->name, shmlink_error_code(err));
    }
    const shmlink_error err = shmlink_recv(p.ep, &msg);
    CHECK(err == h->expect, "%s: got %s (%s), expected %s", h->name, shmlink_error_code(err),
          shmlink_endpoint_detail(p.ep), shmlink_error_code(h->expect));
    CHECK(msg.region_count == 0, "%s: refused message still holds regions", h->name);
    if (h->expect != SHMLINK_E_PEER_CLOSED)
        CHECK(raw_sees_eof(p.raw), "%s: no end-of-file after the refusal", h->name);
    const shmlink_error again = shmlink_recv(p.ep, &msg);
    CHECK(again == SHMLINK_E_CLOSED, "%s: after the failure, recv says %s", h->name,
          shmlink_error_code(again));
    CHECK(shmlink_send(p.ep, "x", 1, NULL, 0) == SHMLINK_E_CLOSED, "%s: send after failure",
          h->name);
    /* Only the endpoint and the raw end are open; the refused fds are closed. */
    CHECK(fd_count() == fds_before + 2, "%s: %d fds open, expected %d", h->name, fd_count(),
          fds_before + 2);
    shmlink_message_clear(&msg);
    shmlink_close(p.ep);
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "%s: fd leak: %d before, %d after", h->name, fds_before,
          fd_count());
    CHECK(memfd_mappings() == maps_before, "%s: mapping leak: %d before, %d after", h->name,
          maps_before, memfd_mappings());
}

static hostile *new_case(const char *name, shmlink_error expect)
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

    h = new_case("memfd without seals", SHMLINK_E_REGION_UNSEALED);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, SEALS_NONE));
    run_and_free(h);

    h = new_case("memfd that can shrink", SHMLINK_E_REGION_UNSEALED);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, F_SEAL_GROW));
    run_and_free(h);

    h = new_case("FROZEN without write seal", SHMLINK_E_REGION_UNSEALED);
    one_region(h, 1, NEW | FROZEN, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("write seal without FROZEN", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS | F_SEAL_WRITE));
    run_and_free(h);

    h = new_case("pipe", SHMLINK_E_REGION_NOT_MEMFD);
    one_region(h, 1, NEW, SMALL);
    int pp[2];
    REQUIRE(pipe2(pp, O_CLOEXEC) == 0, "pipe2");
    REQUIRE(close(pp[1]) == 0, "close");
    add_fd(h, pp[0]); /* the read end */
    run_and_free(h);

    h = new_case("socket", SHMLINK_E_REGION_NOT_MEMFD);
    one_region(h, 1, NEW, SMALL);
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    REQUIRE(close(sv[1]) == 0, "close");
    add_fd(h, sv[0]);
    run_and_free(h);

    const char *tmpdir = getenv("SHMLINK_PEER_TMPDIR");
    if (tmpdir != NULL && tmpdir[0] != '\0') {
        h = new_case("disk file", SHMLINK_E_REGION_NOT_MEMFD);
        one_region(h, 1, NEW, SMALL);
        char path[4096];
        snprintf(path, sizeof path, "%s/test-shmlink-XXXXXX", tmpdir);
        const int fd = mkostemp(path, O_CLOEXEC);
        REQUIRE(fd >= 0 && unlink(path) == 0 && ftruncate(fd, SMALL) == 0, "disk file");
        add_fd(h, fd);
        run_and_free(h);
    } else {
        printf("  (SHMLINK_PEER_TMPDIR unset: disk-file case skipped)\n");
    }

    h = new_case("size larger than file", SHMLINK_E_REGION_SIZE_MISMATCH);
    one_region(h, 1, NEW, 2 * SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size smaller than file", SHMLINK_E_REGION_SIZE_MISMATCH);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(2 * SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("more fds than NEW descriptors", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("fewer fds than NEW descriptors", SHMLINK_E_PROTOCOL_VIOLATION);
    {
        const desc d[2] = { { 1, NEW, SMALL }, { 2, NEW, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, 2, 0);
    }
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("more fds than the receiver accepts", SHMLINK_E_FDS_TRUNCATED);
    {
        desc d[TOO_MANY_FDS];
        for (unsigned i = 0; i < TOO_MANY_FDS; i++)
            d[i] = (desc){ i + 1, NEW, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, TOO_MANY_FDS, 0);
        for (unsigned i = 0; i < TOO_MANY_FDS; i++)
            add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    }
    run_and_free(h);

    h = new_case("second descriptor bad after a good one", SHMLINK_E_REGION_NOT_MEMFD);
    {
        const desc d[2] = { { 1, NEW, SMALL }, { 2, NEW, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, d, 2, 0);
        add_fd(h, make_memfd(SMALL, GOOD_SEALS));
        REQUIRE(pipe2(pp, O_CLOEXEC) == 0, "pipe2");
        REQUIRE(close(pp[1]) == 0, "close");
        add_fd(h, pp[0]);
    }
    run_and_free(h);

    h = new_case("unknown region id", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 42, 0, SMALL);
    run_and_free(h);

    h = new_case("NEW for a bound id", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size differs from binding", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, 0, 2 * SMALL);
    run_and_free(h);

    h = new_case("FROZEN differs from binding", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    one_region(h, 1, FROZEN, SMALL);
    run_and_free(h);

    h = new_case("id 0", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 0, NEW, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("size 0", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW, 0);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("unknown descriptor flags", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 1, NEW | 0x40u, SMALL);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("truncated header", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = hex_to_bytes("0200000005", h->frame, sizeof h->frame);
    run_and_free(h);

    h = new_case("payload length lies", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 12);
    shmlink_put_le32(h->frame + SHMLINK_HEADER_OFF_PAYLOAD_LEN, 200);
    run_and_free(h);

    h = new_case("region count lies", SHMLINK_E_PROTOCOL_VIOLATION);
    one_region(h, 1, 0, SMALL);
    shmlink_put_le16(h->frame + SHMLINK_HEADER_OFF_REGION_COUNT, 3);
    run_and_free(h);

    h = new_case("reserved header flags", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 0);
    h->frame[SHMLINK_HEADER_OFF_FLAGS] = 1;
    run_and_free(h);

    h = new_case("unknown kind", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, 9, NULL, 0, 0);
    run_and_free(h);

    h = new_case("RELEASE of an unbound id", SHMLINK_E_PROTOCOL_VIOLATION);
    {
        const desc d = { 9, 0, 64 };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 0);
    }
    run_and_free(h);

    h = new_case("RELEASE with payload", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d = { 1, 0, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 1);
    }
    run_and_free(h);

    h = new_case("RELEASE with flags", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d = { 1, FROZEN, SMALL };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, &d, 1, 0);
    }
    run_and_free(h);

    h = new_case("RELEASE twice in one frame", SHMLINK_E_PROTOCOL_VIOLATION);
    h->setup = 1;
    {
        const desc d[2] = { { 1, 0, SMALL }, { 1, 0, SMALL } };
        h->len = make_frame(h->frame, SHMLINK_KIND_RELEASE, d, 2, 0);
    }
    run_and_free(h);

    h = new_case("payload over the announced limit", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, SHMLINK_DEFAULT_MAX_PAYLOAD + 1);
    run_and_free(h);

    h = new_case("record longer than any allowed frame", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = (size_t)SHMLINK_FRAME_SIZE(SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_DEFAULT_MAX_PAYLOAD) + 1;
    make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 0);
    run_and_free(h);

    h = new_case("second HELLO", SHMLINK_E_PROTOCOL_VIOLATION);
    h->len = valid_hello(h->frame);
    run_and_free(h);

    h = new_case("message before HELLO", SHMLINK_E_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = make_frame(h->frame, SHMLINK_KIND_MESSAGE, NULL, 0, 5);
    run_and_free(h);

    h = new_case("wrong magic", SHMLINK_E_PEER_INCOMPATIBLE);
    h->no_hello = true;
    h->len = make_hello(h->frame, "NOTSHMLK", SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
                        SHMLINK_DEFAULT_MAX_PAYLOAD);
    run_and_free(h);

    h = new_case("wrong version", SHMLINK_E_PEER_INCOMPATIBLE);
    h->no_hello = true;
    h->len = make_hello(h->frame, SHMLINK_MAGIC, SHMLINK_VERSION + 1,
                        SHMLINK_DEFAULT_MAX_REGIONS, SHMLINK_DEFAULT_MAX_PAYLOAD);
    run_and_free(h);

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
        h = new_case(limits[i].name, SHMLINK_E_PROTOCOL_VIOLATION);
        h->no_hello = true;
        h->len = make_hello(h->frame, SHMLINK_MAGIC, SHMLINK_VERSION, limits[i].max_regions,
                            limits[i].max_payload);
        run_and_free(h);
    }

    h = new_case("fds on a HELLO", SHMLINK_E_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = valid_hello(h->frame);
    add_fd(h, make_memfd(SMALL, GOOD_SEALS));
    run_and_free(h);

    h = new_case("HELLO with a region count", SHMLINK_E_PROTOCOL_VIOLATION);
    h->no_hello = true;
    h->len = valid_hello(h->frame);
    shmlink_put_le16(h->frame + SHMLINK_HEADER_OFF_REGION_COUNT, 1);
    run_and_free(h);
}

/* End-of-file and a peer that left before our HELLO could be sent. */
static void test_end_of_file(void)
{
    const int fds_before = fd_count();
    /* EOF after HELLO: reported once as PEER_CLOSED, then CLOSED. */
    pair p = open_pair();
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    REQUIRE(close(p.raw) == 0, "close");
    shmlink_message msg = { 0 };
    CHECK(shmlink_recv(p.ep, &msg) == SHMLINK_E_PEER_CLOSED, "EOF after HELLO");
    CHECK(shmlink_recv(p.ep, &msg) == SHMLINK_E_CLOSED, "recv after EOF");
    shmlink_close(p.ep);

    /* The peer sent a bad HELLO and closed without reading ours: Linux answers the next
     * recvmsg with ECONNRESET before the queued HELLO; the refusal must still be about
     * the HELLO. */
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    shmlink_endpoint *ep;
    REQUIRE(shmlink_endpoint_open(sv[0], NULL, &ep) == SHMLINK_OK, "open");
    raw_send(sv[1], hello,
             make_hello(hello, "NOTSHMLK", SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
                        SHMLINK_DEFAULT_MAX_PAYLOAD),
             NULL, 0);
    REQUIRE(close(sv[1]) == 0, "close");
    const shmlink_error err = shmlink_recv(ep, &msg);
    CHECK(err == SHMLINK_E_PEER_INCOMPATIBLE, "bad HELLO then close: %s (%s)",
          shmlink_error_code(err), shmlink_endpoint_detail(ep));
    shmlink_close(ep);

    /* The peer left before we even sent our HELLO: opening still succeeds, receiving
     * reports what it sent, sending reports it gone. */
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    raw_send(sv[1], hello, valid_hello(hello), NULL, 0);
    REQUIRE(close(sv[1]) == 0, "close");
    REQUIRE(shmlink_endpoint_open(sv[0], NULL, &ep) == SHMLINK_OK, "open after peer left");
    CHECK(shmlink_send(ep, "x", 1, NULL, 0) == SHMLINK_E_PEER_CLOSED, "send to a gone peer");
    shmlink_close(ep);
    CHECK(fd_count() == fds_before, "fd leak in end-of-file tests");
}

/* ==================================================================================== */
/* What the endpoint sends                                                               */
/* ==================================================================================== */

/* PROTOCOL.md section 8, byte for byte, and ids 1, 2, 3, ... never reused. */
static void test_wire_bytes(void)
{
    const int fds_before = fd_count();
    pair p = open_pair();
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);

    uint8_t expect[SHMLINK_MAX_FRAME_SIZE];
    size_t expect_len = hex_to_bytes("01000000100000005348 4d4c494e4b00 010020000000 0100",
                                     expect, sizeof expect);
    uint8_t ours[SHMLINK_HELLO_FRAME_SIZE];
    make_hello(ours, SHMLINK_MAGIC, SHMLINK_VERSION, SHMLINK_DEFAULT_MAX_REGIONS,
               SHMLINK_DEFAULT_MAX_PAYLOAD);
    CHECK(expect_len == sizeof ours && memcmp(expect, ours, expect_len) == 0,
          "HELLO differs from PROTOCOL.md section 8");

    shmlink_region *r1, *r2;
    REQUIRE(shmlink_region_create(SMALL, &r1) == SHMLINK_OK, "create");
    REQUIRE(shmlink_region_create(MEDIUM, &r2) == SHMLINK_OK, "create");
    REQUIRE(shmlink_region_freeze(r2) == SHMLINK_OK, "freeze");
    CHECK(shmlink_region_mut_bytes(r2) == NULL, "frozen region writable");
    CHECK(shmlink_region_freeze(r2) == SHMLINK_E_REGION_FROZEN, "freeze twice");
    const shmlink_attachment atts[2] = { { r1, true }, { r2, false } };
    CHECK(shmlink_send(p.ep, "hello", 5, atts, 2) == SHMLINK_OK, "send");

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
    }
    close_all(fds, nfds);

    /* Transferred: no access, cannot be sent again until it comes back. */
    CHECK(shmlink_region_bytes(r1) == NULL && shmlink_region_is_transferred(r1),
          "transferred region still accessible");
    CHECK(shmlink_send(p.ep, NULL, 0, atts, 1) == SHMLINK_E_REGION_TRANSFERRED,
          "sent a transferred region");
    CHECK(shmlink_region_freeze(r2) == SHMLINK_E_REGION_FROZEN, "freeze a frozen region");

    CHECK(shmlink_release(p.ep, r1) == SHMLINK_OK, "release");
    n = raw_recv(p.raw, buf, sizeof buf, NULL, &nfds);
    expect_len = hex_to_bytes("03000100000000000100000000000000"
                              "0010000000000000",
                              expect, sizeof expect);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0 && nfds == 0,
          "RELEASE differs from section 8");
    CHECK(shmlink_release(p.ep, r1) == SHMLINK_E_INVALID_ARGUMENT, "released twice");

    /* Ids: a new region gets 3 (1 is never reused); r2 is still bound as 2, so it goes
     * without NEW; a region twice in one frame binds on its first occurrence only. */
    shmlink_region *r3, *r4;
    REQUIRE(shmlink_region_create(SMALL, &r3) == SHMLINK_OK, "create");
    REQUIRE(shmlink_region_create(SMALL, &r4) == SHMLINK_OK, "create");
    CHECK(shmlink_region_freeze(r4) == SHMLINK_OK, "freeze before sending");
    const shmlink_attachment more[4] = { { r3, false }, { r2, false }, { r4, false },
                                         { r4, false } };
    CHECK(shmlink_send(p.ep, NULL, 0, more, 4) == SHMLINK_OK, "send more");
    n = raw_recv(p.raw, buf, sizeof buf, fds, &nfds);
    const desc want[4] = { { 3, SHMLINK_DESC_NEW, SMALL },
                           { 2, SHMLINK_DESC_FROZEN, MEDIUM },
                           { 4, SHMLINK_DESC_NEW | SHMLINK_DESC_FROZEN, SMALL },
                           { 4, SHMLINK_DESC_FROZEN, SMALL } };
    expect_len = make_frame(expect, SHMLINK_KIND_MESSAGE, want, 4, 0);
    CHECK(n == expect_len && memcmp(buf, expect, n) == 0, "ids or NEW flags wrong");
    CHECK(nfds == 2, "%zu fds for two NEW descriptors", nfds);
    close_all(fds, nfds);
    CHECK(shmlink_region_freeze(r3) == SHMLINK_E_INVALID_ARGUMENT, "froze a region after sending");

    /* Local limits: more regions than the peer accepts is refused before sending. */
    shmlink_attachment many[SHMLINK_DEFAULT_MAX_REGIONS + 1];
    for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
        many[i] = (shmlink_attachment){ r3, false };
    CHECK(shmlink_send(p.ep, NULL, 0, many, sizeof many / sizeof many[0]) ==
              SHMLINK_E_LIMIT_EXCEEDED,
          "sent more regions than the peer accepts");
    static uint8_t big[SHMLINK_MAX_PAYLOAD_MAX + 1];
    CHECK(shmlink_send(p.ep, big, sizeof big, NULL, 0) == SHMLINK_E_LIMIT_EXCEEDED,
          "sent more payload than the peer accepts");

    shmlink_region_unmap(r1);
    shmlink_region_unmap(r2);
    shmlink_region_unmap(r3);
    shmlink_region_unmap(r4);
    shmlink_close(p.ep);
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "fd leak in wire test");
    CHECK(memfd_mappings() == 0, "mappings left after wire test: %d", memfd_mappings());
}

/* ==================================================================================== */
/* Many bindings: both tables under insertions and removals in scrambled order            */
/* ==================================================================================== */

#define MANY 200u
#define SCRAMBLE 7919u /* a prime: i * SCRAMBLE % MANY visits every index once */

/* The peer binds MANY ids, releases the odd ones in scrambled order, then refers to every
 * even one: all must resolve. Then an odd (released) id must be refused. */
static void test_many_peer_bindings(void)
{
    const int fds_before = fd_count();
    pair p = open_pair();
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    static uint8_t f[SHMLINK_MAX_FRAME_SIZE];
    desc d[SHMLINK_DEFAULT_MAX_REGIONS];
    int fds[SHMLINK_DEFAULT_MAX_REGIONS];
    shmlink_message msg = { 0 };
    const unsigned per_frame = 10;
    for (unsigned base = 0; base < MANY; base += per_frame) {
        for (unsigned i = 0; i < per_frame; i++) {
            d[i] = (desc){ base + i + 1, SHMLINK_DESC_NEW, SMALL + PAGE * ((base + i) % 3) };
            fds[i] = make_memfd(d[i].size, GOOD_SEALS);
        }
        raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, d, per_frame, 0), fds, per_frame);
        close_all(fds, per_frame);
        CHECK(shmlink_recv(p.ep, &msg) == SHMLINK_OK, "binding frame at %u", base);
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
            const shmlink_error err = shmlink_recv(p.ep, &msg);
            CHECK(err == SHMLINK_OK && msg.region_count == n, "even ids up to %u: %s (%s)", i + 1,
                  shmlink_error_code(err), shmlink_endpoint_detail(p.ep));
            n = 0;
        }
    }
    shmlink_message_clear(&msg);
    CHECK(memfd_mappings() == (int)MANY / 2, "released regions still mapped: %d",
          memfd_mappings());
    const desc odd = { 2, 0, SMALL + PAGE };
    raw_send(p.raw, f, make_frame(f, SHMLINK_KIND_MESSAGE, &odd, 1, 0), NULL, 0);
    CHECK(shmlink_recv(p.ep, &msg) == SHMLINK_E_PROTOCOL_VIOLATION, "released id accepted");
    CHECK(memfd_mappings() == 0, "bindings not dropped on failure: %d", memfd_mappings());
    shmlink_close(p.ep);
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "fd leak with many bindings");
}

/* We bind MANY regions, release a scrambled half, and send all again: kept ones go by
 * their old id, released ones get new ids after MANY, in order. */
static void test_many_own_bindings(void)
{
    const int fds_before = fd_count();
    pair p = open_pair();
    uint8_t hello[SHMLINK_HELLO_FRAME_SIZE];
    raw_send(p.raw, hello, valid_hello(hello), NULL, 0);
    shmlink_region *r[MANY];
    static uint8_t buf[SHMLINK_MAX_FRAME_SIZE];
    int fds[SHMLINK_MAX_REGIONS_MAX];
    size_t nfds;
    for (unsigned i = 0; i < MANY; i++) {
        REQUIRE(shmlink_region_create(SMALL, &r[i]) == SHMLINK_OK, "create");
        const shmlink_attachment a = { r[i], false };
        CHECK(shmlink_send(p.ep, NULL, 0, &a, 1) == SHMLINK_OK, "send %u", i);
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
        CHECK(shmlink_release(p.ep, r[i]) == SHMLINK_OK, "release %u", i);
        raw_recv(p.raw, buf, sizeof buf, NULL, NULL);
        CHECK(shmlink_get_le32(buf + SHMLINK_HEADER_SIZE + SHMLINK_DESC_OFF_ID) == i + 1,
              "released id of region %u", i);
        released[i] = true;
    }
    uint32_t next_new = MANY + 1;
    for (unsigned i = 0; i < MANY; i++) {
        const shmlink_attachment a = { r[i], false };
        CHECK(shmlink_send(p.ep, NULL, 0, &a, 1) == SHMLINK_OK, "resend %u", i);
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
        shmlink_region_unmap(r[i]);
    CHECK(memfd_mappings() == (int)MANY, "the endpoint keeps its bound regions");
    shmlink_close(p.ep);
    CHECK(memfd_mappings() == 0, "regions left after close: %d", memfd_mappings());
    REQUIRE(close(p.raw) == 0, "close");
    CHECK(fd_count() == fds_before, "fd leak with many own bindings");
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
    if (shmlink_endpoint_open(fd, NULL, &ep) != SHMLINK_OK)
        return 2;
    shmlink_message msg = { 0 };
    shmlink_attachment atts[SHMLINK_MAX_REGIONS_MAX];
    for (;;) {
        shmlink_error err = shmlink_recv(ep, &msg);
        if (err == SHMLINK_E_PEER_CLOSED)
            break;
        if (err != SHMLINK_OK)
            return 3;
        for (size_t i = 0; i < msg.region_count; i++) {
            shmlink_region *r = msg.regions[i].region;
            if ((msg.regions[i].flags & SHMLINK_DESC_FROZEN) != 0) {
                if (shmlink_region_mut_bytes(r) != NULL || shmlink_region_bytes(r) == NULL)
                    return 4;
            } else if (msg.regions[i].flags & SHMLINK_DESC_TRANSFER) {
                shmlink_region_mut_bytes(r)[0] = STAMP;
            }
            atts[i] = (shmlink_attachment){ r, true };
        }
        if (shmlink_send(ep, msg.payload, msg.payload_len, atts, msg.region_count) != SHMLINK_OK)
            return 5;
    }
    shmlink_message_clear(&msg);
    shmlink_close(ep);
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
    shmlink_options opts = SHMLINK_OPTIONS_DEFAULT;
    opts.timeout_ms = TEST_TIMEOUT_MS;
    shmlink_endpoint *ep;
    REQUIRE(shmlink_endpoint_open(sv[0], &opts, &ep) == SHMLINK_OK, "open");
    shmlink_region *moving, *frozen;
    REQUIRE(shmlink_region_create(LARGE, &moving) == SHMLINK_OK, "create");
    REQUIRE(shmlink_region_create(SMALL, &frozen) == SHMLINK_OK, "create");
    memset(shmlink_region_mut_bytes(moving), 1, LARGE);
    REQUIRE(shmlink_region_freeze(frozen) == SHMLINK_OK, "freeze");
    const int fds_with_regions = fd_count();
    shmlink_message msg = { 0 };
    for (unsigned round = 0; round < 3; round++) {
        const shmlink_attachment atts[2] = { { moving, true }, { frozen, true } };
        CHECK(shmlink_send(ep, "ping", 4, atts, 2) == SHMLINK_OK, "send round %u", round);
        const shmlink_error err = shmlink_recv(ep, &msg);
        CHECK(err == SHMLINK_OK, "recv round %u: %s (%s)", round, shmlink_error_code(err),
              shmlink_endpoint_detail(ep));
        if (err != SHMLINK_OK)
            break;
        CHECK(msg.payload_len == 4 && memcmp(msg.payload, "ping", 4) == 0, "payload");
        CHECK(msg.region_count == 2 && msg.regions[0].region == moving &&
                  msg.regions[1].region == frozen,
              "returning regions not resolved to our own objects");
        const uint32_t new_flag = round == 0 ? SHMLINK_DESC_NEW : 0;
        CHECK(msg.regions[0].id == 1 && msg.regions[1].id == 2 &&
                  msg.regions[0].flags == (new_flag | SHMLINK_DESC_TRANSFER) &&
                  msg.regions[1].flags == (new_flag | SHMLINK_DESC_TRANSFER | SHMLINK_DESC_FROZEN),
              "round %u: ids/flags from the peer", round);
        CHECK(!shmlink_region_is_transferred(moving) && shmlink_region_bytes(moving)[0] == STAMP &&
                  shmlink_region_bytes(moving)[1] == 1,
              "stamp not visible after the region came back");
        /* The returning fds were duplicates of ours and must have been closed. */
        CHECK(fd_count() == fds_with_regions, "round %u: %d fds, expected %d", round, fd_count(),
              fds_with_regions);
        shmlink_message_clear(&msg);
    }
    shmlink_close(ep);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    shmlink_region_unmap(moving);
    shmlink_region_unmap(frozen);
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
    unlink(path);
    const int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    memcpy(addr.sun_path, path, strlen(path) + 1);
    REQUIRE(lfd >= 0 && bind(lfd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
                listen(lfd, 1) == 0,
            "listen on %s: %s", path, strerror(errno));
    const pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        execl(peer, peer, "echo", path, (char *)NULL);
        _exit(127);
    }
    const int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    REQUIRE(fd >= 0, "accept: %s", strerror(errno));
    REQUIRE(close(lfd) == 0 && unlink(path) == 0, "cleanup listener");
    shmlink_options opts = SHMLINK_OPTIONS_DEFAULT;
    opts.timeout_ms = TEST_TIMEOUT_MS;
    shmlink_endpoint *ep;
    REQUIRE(shmlink_endpoint_open(fd, &opts, &ep) == SHMLINK_OK, "open");
    shmlink_region *r;
    REQUIRE(shmlink_region_create(LARGE, &r) == SHMLINK_OK, "create");
    memset(shmlink_region_mut_bytes(r), 7, LARGE);
    uint8_t payload[ECHO_PAYLOAD];
    shmlink_message msg = { 0 };
    const shmlink_attachment att = { r, false };
    const double start = seconds_now();
    unsigned bad = 0;
    for (unsigned i = 0; i < ECHO_ROUNDS; i++) {
        memset(payload, (int)(i & 0xFF), sizeof payload);
        if (shmlink_send(ep, payload, sizeof payload, &att, 1) != SHMLINK_OK ||
            shmlink_recv(ep, &msg) != SHMLINK_OK) {
            bad++;
            break;
        }
        bad += msg.payload_len != sizeof payload || memcmp(msg.payload, payload, sizeof payload) ||
               msg.region_count != 1 || msg.regions[0].region != r ||
               (msg.regions[0].flags & SHMLINK_DESC_NEW) != (i == 0 ? SHMLINK_DESC_NEW : 0u);
    }
    const double elapsed = seconds_now() - start;
    CHECK(bad == 0, "echo: %u bad replies (%s)", bad, shmlink_endpoint_detail(ep));
    shmlink_message_clear(&msg);
    shmlink_close(ep);
    shmlink_region_unmap(r);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "echo peer exit status %d", status);
    /* Wall time includes the scheduler's wake-ups on both sides; the echo peer's own CPU
     * time is what one message costs it. */
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
    printf("refusals (PROTOCOL.md section 7), fd and mapping counts\n");
    test_refusals();
    printf("end-of-file\n");
    test_end_of_file();
    printf("wire bytes (PROTOCOL.md section 8) and ids\n");
    test_wire_bytes();
    printf("many bindings\n");
    test_many_peer_bindings();
    test_many_own_bindings();
    printf("round trip with another process\n");
    test_round_trip();
    if (argc > 1) {
        printf("echo role of %s\n", argv[1]);
        test_echo(argv[1]);
    }
    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
