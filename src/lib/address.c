/*
 * address.c - formatting socket addresses and building Unix ones.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "server.h"

const char *evs_format_address(const struct sockaddr *addr, socklen_t len, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];

    if (size == 0)
        return buf;
    buf[0] = '\0';
    if (!addr || len < sizeof(sa_family_t)) {
        snprintf(buf, size, "?");
        return buf;
    }
    /* An address shorter than its family's structure is not read past
     * @p len: it is shown as "?". */
    if ((addr->sa_family == AF_INET && len < sizeof(struct sockaddr_in)) ||
        (addr->sa_family == AF_INET6 && len < sizeof(struct sockaddr_in6))) {
        snprintf(buf, size, "?");
        return buf;
    }
    switch (addr->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
        size_t n = len > offsetof(struct sockaddr_un, sun_path)
                       ? len - offsetof(struct sockaddr_un, sun_path)
                       : 0;
        if (n > sizeof un->sun_path)
            n = sizeof un->sun_path; /* a longer len does not reach past it */
        if (n == 0)
            snprintf(buf, size, "unix:");
        else if (un->sun_path[0] == '\0')
            snprintf(buf, size, "unix:@%.*s", (int)(n - 1), un->sun_path + 1);
        else
            snprintf(buf, size, "unix:%.*s", (int)strnlen(un->sun_path, n), un->sun_path);
        break;
    }
    default:
        snprintf(buf, size, "family-%d", addr->sa_family);
        break;
    }
    return buf;
}

int evs__unix_address(const char *path, struct sockaddr_un *sun, socklen_t *len)
{
    size_t n;

    if (!path || !*path)
        return -EINVAL;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    n = strlen(path);
    if (path[0] == '@') {
        /* Linux abstract namespace: a leading NUL, no terminator. */
        if (n < 2 || n > sizeof sun->sun_path)
            return -ENAMETOOLONG;
        memcpy(sun->sun_path + 1, path + 1, n - 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return 0;
    }
    if (n >= sizeof sun->sun_path)
        return -ENAMETOOLONG;
    memcpy(sun->sun_path, path, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}
