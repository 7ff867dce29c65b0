/* child.c: started by a Node parent with spawnWithEndpoint; adds 1 to the first byte of
 * each frame, in place, and hands the frame back.
 *   cc child.c $(pkg-config --cflags --libs shmlink) -o child */
#include <shmlink.h>
#include <stdio.h>

int main(void)
{
    shmlink_error err;
    shmlink_endpoint *parent;
    if (shmlink_endpoint_inherited(NULL, &parent, &err) != SHMLINK_OK) /* SHMLINK_FD */
        return fprintf(stderr, "%s\n", err.message), 1;
    shmlink_message m = SHMLINK_MESSAGE_INIT;
    while (shmlink_endpoint_recv(parent, &m, -1, &err) == SHMLINK_OK) {
        void *frame;
        size_t size;
        if (shmlink_region_bytes(m.regions[0], &frame, &size, &err) != SHMLINK_OK)
            break;
        ((unsigned char *)frame)[0] += 1; /* zero copy: the parent's memory */
        const shmlink_send_options back = { .transfer = m.regions, .transfer_count = 1 };
        if (shmlink_endpoint_send(parent, "done", 4, &back, &err) != SHMLINK_OK)
            break;
    }
    shmlink_message_clear(&m);
    shmlink_endpoint_free(parent);
    if (err.code != SHMLINK_ERR_PEER_CLOSED) /* the parent closed: the normal end */
        return fprintf(stderr, "%s\n", err.message), 1;
    return 0;
}
