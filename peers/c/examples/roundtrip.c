/*
 * roundtrip.c - a small program against an installed libshmlink:
 *
 *   cc roundtrip.c $(pkg-config --cflags --libs shmlink) -o roundtrip && ./roundtrip
 *
 * One end of a pair hands a region to the other (transfer), which stamps it and hands it
 * back; the first end gets its own region back and sees the stamp, without a copy.
 */
#include <shmlink.h>

#include <stdio.h>
#include <string.h>

#define CHECK(call)                                                                        \
    do {                                                                                   \
        if ((call) != SHMLINK_OK) {                                                        \
            fprintf(stderr, "%s: %s\n", shmlink_code_string(err.code), err.message);       \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

int main(void)
{
    shmlink_error err;
    shmlink_endpoint *a, *b;
    CHECK(shmlink_endpoint_pair(NULL, &a, &b, &err));

    shmlink_region *region;
    CHECK(shmlink_region_create(1 << 20, &region, &err));
    CHECK(shmlink_region_write(region, 0, "ping", 4, &err));
    const shmlink_send_options give = { .transfer = &region, .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(a, "here", 4, &give, &err));

    shmlink_message m = SHMLINK_MESSAGE_INIT;
    CHECK(shmlink_endpoint_recv(b, &m, 1000, &err));
    void *mem;
    size_t size;
    CHECK(shmlink_region_bytes(m.regions[0], &mem, &size, &err)); /* zero copy */
    memcpy(mem, "pong", 4);
    const shmlink_send_options back = { .transfer = m.regions, .transfer_count = 1 };
    CHECK(shmlink_endpoint_send(b, "back", 4, &back, &err));

    shmlink_message reply = SHMLINK_MESSAGE_INIT;
    CHECK(shmlink_endpoint_recv(a, &reply, 1000, &err));
    char text[5] = { 0 };
    CHECK(shmlink_region_read(region, 0, text, 4, &err));
    const int ok = reply.regions[0] == region && !shmlink_region_transferred(region) &&
                   strcmp(text, "pong") == 0 && size == 1 << 20;
    printf("%s: %.*s, region back: %s, contents: %s\n", ok ? "ok" : "FAILED",
           (int)reply.payload_len, (const char *)reply.payload,
           reply.regions[0] == region ? "same" : "different", text);

    shmlink_message_clear(&m);
    shmlink_message_clear(&reply);
    shmlink_region_unref(region);
    shmlink_endpoint_free(a);
    shmlink_endpoint_free(b);
    return ok ? 0 : 1;
}
