/* A single-threaded epoll echo server: the upstream for scripts/bench. Usage: echo PORT */
#define _GNU_SOURCE
#include <sys/select.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 4096)) {
        perror("echo: bind");
        return 1;
    }
    socklen_t length = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &length);
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    int poll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(poll, EPOLL_CTL_ADD, listener, &event);
    static char buffer[256 * 1024];
    struct epoll_event events[256];
    for (;;) {
        int count = epoll_wait(poll, events, 256, -1);
        for (int i = 0; i < count; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event add = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(poll, EPOLL_CTL_ADD, client, &add);
                }
                continue;
            }
            for (;;) {
                ssize_t got = read(fd, buffer, sizeof buffer);
                if (got > 0) {
                    ssize_t sent = 0;
                    while (sent < got) {
                        ssize_t n = write(fd, buffer + sent, got - sent);
                        if (n > 0) {
                            sent += n;
                        } else if (n < 0 && errno == EAGAIN) {
                            /* The peer is slow: wait for it, as a real upstream would. */
                            fd_set writable;
                            FD_ZERO(&writable);
                            FD_SET(fd, &writable);
                            select(fd + 1, NULL, &writable, NULL, NULL);
                        } else {
                            break;
                        }
                    }
                    continue;
                }
                if (got == 0 || (got < 0 && errno != EAGAIN)) close(fd);
                break;
            }
        }
    }
}
