/* server.c: answers each client with the text in the region it sent, in upper case.
 *   cc server.c $(pkg-config --cflags --libs shmlink) -o server && ./server <socket-path> */
#include <shmlink.h>
#include <ctype.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    shmlink_error err;
    shmlink_server *server;
    if (argc != 2)
        return fprintf(stderr, "usage: server <socket-path>\n"), 2;
    if (shmlink_endpoint_listen(argv[1], NULL, &server, &err) != SHMLINK_OK)
        return fprintf(stderr, "%s\n", err.message), 1;
    shmlink_endpoint *client; /* clients of this user (or root) only, one at a time */
    while (shmlink_server_accept(server, -1, &client, &err) == SHMLINK_OK) {
        shmlink_message m = SHMLINK_MESSAGE_INIT;
        char text[4096];
        while (shmlink_endpoint_recv(client, &m, -1, &err) == SHMLINK_OK) { /* frozen regions */
            size_t n = (size_t)shmlink_region_size(m.regions[0]);
            if (n > sizeof text || shmlink_region_read(m.regions[0], 0, text, n, &err) != SHMLINK_OK)
                break; /* a copy */
            for (size_t i = 0; i < n; i++)
                text[i] = (char)toupper((unsigned char)text[i]);
            if (shmlink_endpoint_send(client, text, n, NULL, &err) != SHMLINK_OK)
                break;
        }
        shmlink_message_clear(&m);
        shmlink_endpoint_free(client);
    }
    fprintf(stderr, "%s\n", err.message);
    shmlink_server_free(server);
    return 1;
}
