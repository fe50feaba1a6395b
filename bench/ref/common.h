/* Shared listener setup of the C reference servers (bench/ only). */
#ifndef BENCH_REF_COMMON_H
#define BENCH_REF_COMMON_H
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ADDR is PORT (on 127.0.0.1) or unix:/path. Returns a non-blocking listener. */
static int ref_listen(const char *addr, int *is_tcp)
{
    int fd;
    if (!strncmp(addr, "unix:", 5)) {
        struct sockaddr_un u = {.sun_family = AF_UNIX};
        snprintf(u.sun_path, sizeof u.sun_path, "%s", addr + 5);
        unlink(u.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&u, sizeof u) < 0) {
            perror("bind");
            exit(1);
        }
        *is_tcp = 0;
    } else {
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(addr))};
        in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&in, sizeof in) < 0) {
            perror("bind");
            exit(1);
        }
        *is_tcp = 1;
    }
    if (listen(fd, 4096) < 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}
#endif
