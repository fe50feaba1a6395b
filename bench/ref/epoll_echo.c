/*
 * epoll_echo - the limit: a minimal single-threaded epoll echo server.
 * Level-triggered epoll, one shared 64 KiB read buffer, per-connection
 * memory only for bytes the client has not taken yet (a short write).
 *
 * usage: epoll_echo PORT|unix:/path
 */
#define _GNU_SOURCE
#include "common.h"
#include <signal.h>
#include <sys/epoll.h>

typedef struct {
    int fd;
    char *pend; /* unsent bytes after a short write, or NULL */
    size_t plen, poff;
} conn;

static int ep;
static char buf[65536];

static void conn_free(conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    free(c->pend);
    free(c);
}

/* Write out c->pend; 0 when all sent, 1 when blocked, -1 on error. */
static int flush(conn *c)
{
    while (c->poff < c->plen) {
        ssize_t n = send(c->fd, c->pend + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 1 : -1;
        c->poff += (size_t)n;
    }
    free(c->pend);
    c->pend = NULL;
    c->plen = c->poff = 0;
    return 0;
}

static void on_conn(conn *c, uint32_t ev)
{
    if (c->pend) {
        int r = flush(c);
        if (r < 0) { conn_free(c); return; }
        if (r > 0) return;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
        if (!(ev & EPOLLIN)) return;
    }
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) { conn_free(c); return; }
    if (n < 0) return;
    ssize_t w = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) { conn_free(c); return; }
    if (w < 0) w = 0;
    if (w < n) { /* stop reading until the client catches up */
        c->plen = (size_t)(n - w);
        c->pend = malloc(c->plen);
        memcpy(c->pend, buf + w, c->plen);
        struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: epoll_echo PORT|unix:/path\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int tcp, lfd = ref_listen(argv[1], &tcp);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (tcp) {
                        int one = 1;
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    }
                    conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
            } else {
                on_conn(evs[i].data.ptr, evs[i].events);
            }
        }
    }
}
