/*
 * systemd.c - sd_notify (through libsystemd when it was found at build
 * time) and socket activation, which needs no library: the protocol is a
 * few environment variables and fds from 3 on.
 */
#include "build-config.h"

#include "config.h"

#include "systemd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define FIRST_FD 3
#define MAX_FDS 64

void evsd_notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

void evsd_notify_reloading(void)
{
    char buf[96];
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    evsd_notify(buf);
}

static struct inherited {
    int fd;
    char name[256];
    bool claimed;
} fds[MAX_FDS];
static size_t nfds;

/* Whether @fd, passed as an inherited socket, is one: LISTEN_FDS may count
 * more than were passed, and what sits at those numbers is not ours to
 * take or close. */
static bool usable(int fd)
{
    struct stat st;

    if (fstat(fd, &st) < 0) {
        evs_log(EVS_LOG_WARN, "socket activation: fd %d was not passed (%s); ignoring it", fd,
                strerror(errno));
        return false;
    }
    if (!S_ISSOCK(st.st_mode)) {
        evs_log(EVS_LOG_WARN, "socket activation: fd %d is not a socket; ignoring it", fd);
        return false;
    }
    /* Not for the children of plugins (exec), as the daemon's own are. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return true;
}

size_t evsd_activation_take(void)
{
    const char *pid = getenv("LISTEN_PID"), *count = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    char *end;
    long n;

    if (!pid || !count || strtol(pid, &end, 10) != (long)getpid())
        return 0;
    n = strtol(count, &end, 10);
    if (*end || n <= 0)
        n = 0;
    if (n > MAX_FDS) {
        evs_log(EVS_LOG_WARN, "socket activation: %ld sockets, using the first %d", n, MAX_FDS);
        n = MAX_FDS;
    }
    for (long i = 0; i < n; i++) {
        fds[i].fd = FIRST_FD + (int)i;
        /* One that is no socket counts as claimed: never handed out or closed. */
        fds[i].claimed = !usable(fds[i].fd);
        fds[i].name[0] = '\0';
    }
    /* Names are colon-separated, in fd order. */
    for (long i = 0; names && i < n; i++) {
        const char *colon = strchr(names, ':');
        size_t len = colon ? (size_t)(colon - names) : strlen(names);
        snprintf(fds[i].name, sizeof fds[i].name, "%.*s", (int)len, names);
        names = colon ? colon + 1 : NULL;
    }
    nfds = (size_t)n;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return nfds;
}

/* Whether @l takes datagrams (udp:, unixgram:) rather than connections. */
static bool wants_datagrams(const evsd_listener_conf *l)
{
    return l->family == EVSD_UDP || l->family == EVSD_UNIXGRAM;
}

/* The kind of socket @l serves, for the error that names it. */
static const char *kind_name(const evsd_listener_conf *l)
{
    switch (l->family) {
    case EVSD_TCP:
        return "listening TCP socket";
    case EVSD_UNIX:
        return "listening Unix stream socket";
    case EVSD_UDP:
        return "UDP socket";
    default:
        return "Unix datagram socket";
    }
}

/* Whether @fd is the kind of socket @l serves: of its family (Unix or IP)
 * and type, and for a stream listener listening (not a connection, as
 * Accept=yes would pass). */
static bool right_kind(int fd, const evsd_listener_conf *l)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss, len = sizeof(int);
    int type = 0, listening = 0;
    bool unix_family = l->family == EVSD_UNIX || l->family == EVSD_UNIXGRAM;

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0 ||
        (ss.ss_family == AF_UNIX) != unix_family)
        return false;
    if (wants_datagrams(l))
        return type == SOCK_DGRAM;
    return type == SOCK_STREAM &&
           getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
}

/* Is @fd bound to @l's address? (right_kind says whether it is the right
 * kind: a TCP and a udp: listener may share a port number.) */
static bool same_address(int fd, const evsd_listener_conf *l)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (l->family == EVSD_UNIX || l->family == EVSD_UNIXGRAM) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
        size_t plen = len > offsetof(struct sockaddr_un, sun_path)
                          ? len - offsetof(struct sockaddr_un, sun_path)
                          : 0;
        if (ss.ss_family != AF_UNIX || plen == 0)
            return false;
        if (l->path[0] == '@')
            return un->sun_path[0] == '\0' && plen - 1 == strlen(l->path + 1) &&
                   memcmp(un->sun_path + 1, l->path + 1, plen - 1) == 0;
        return strncmp(un->sun_path, l->path, plen) == 0;
    }
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        return false;
    uint16_t port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                  : ((struct sockaddr_in6 *)&ss)->sin6_port);
    /* Port 0 asks for a fresh port: such a listener matches by name only. */
    if (l->port == 0 || port != l->port)
        return false;
    if (!l->host)
        return true; /* every interface: any bound address of that port */
    struct addrinfo hints, *res, *ai;
    bool match = false;
    char service[8];
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = ss.ss_family;
    snprintf(service, sizeof service, "%u", port);
    if (getaddrinfo(l->host, service, &hints, &res) != 0)
        return false;
    for (ai = res; ai && !match; ai = ai->ai_next)
        match = ai->ai_addrlen <= len && memcmp(ai->ai_addr, &ss, ai->ai_addrlen) == 0;
    freeaddrinfo(res);
    return match;
}

size_t evsd_activation_count(void)
{
    size_t n = 0;

    for (size_t i = 0; i < nfds; i++)
        n += !fds[i].claimed;
    return n;
}

int evsd_activation_claim(const evsd_listener_conf *l)
{
    /* A FileDescriptorName= equal to the listener's name wins. */
    for (size_t i = 0; i < nfds; i++) {
        if (fds[i].claimed || !fds[i].name[0] || strcmp(fds[i].name, l->name) != 0)
            continue;
        if (!right_kind(fds[i].fd, l)) {
            evs_log(EVS_LOG_ERROR,
                    "%s:%d: listener '%s': the socket the service manager named '%s' (fd %d) is "
                    "not a %s%s",
                    l->file, l->line, l->name, fds[i].name, fds[i].fd, kind_name(l),
                    wants_datagrams(l) ? "" : " (Accept=yes is not supported)");
            return -EPROTOTYPE;
        }
        fds[i].claimed = true;
        return fds[i].fd;
    }
    for (size_t i = 0; i < nfds; i++) {
        if (!fds[i].claimed && right_kind(fds[i].fd, l) && same_address(fds[i].fd, l)) {
            fds[i].claimed = true;
            return fds[i].fd;
        }
    }
    return -ENOENT;
}

void evsd_activation_close_unclaimed(void)
{
    for (size_t i = 0; i < nfds; i++) {
        if (fds[i].claimed)
            continue;
        evs_log(EVS_LOG_WARN, "socket activation: no listener for fd %d%s%s; closing it", fds[i].fd,
                fds[i].name[0] ? " named " : "", fds[i].name);
        close(fds[i].fd);
        fds[i].claimed = true;
    }
}
