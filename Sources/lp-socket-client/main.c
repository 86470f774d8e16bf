/*
 * lp-socket-client: a test helper that holds connections to a unix socket, as whatever user runs it (the tests run it
 * with setpriv as a test user, since the daemon identifies control clients by SO_PEERCRED).
 *
 *   lp-socket-client PATH COUNT [LINE]
 *
 * Opens COUNT connections to PATH, sends LINE (plus a newline) on each if given, prints "connected K" (the number
 * that connected; "failed ERRNO" for the first that did not), then holds them all until stdin reaches end of file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: lp-socket-client PATH COUNT [LINE]\n");
        return 2;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof address.sun_path) {
        fprintf(stderr, "path too long\n");
        return 2;
    }
    strcpy(address.sun_path, argv[1]);
    int count = atoi(argv[2]);
    int connected = 0;
    for (int i = 0; i < count; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
            printf("failed %d\n", errno);
            break;
        }
        if (argc > 3) {
            char line[4096];
            int n = snprintf(line, sizeof line, "%s\n", argv[3]);
            if (n <= 0 || n >= (int)sizeof line || send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
                printf("failed %d\n", errno);
                break;
            }
        }
        connected++;
    }
    printf("connected %d\n", connected);
    fflush(stdout);
    char buffer[256];
    while (read(0, buffer, sizeof buffer) > 0) {
    }
    return 0;
}
