/*
 * libevent_echo - a plain libevent bufferevent echo server: what evstream
 * builds on, with nothing on top. Single-threaded.
 *
 * usage: libevent_echo PORT|unix:/path
 */
#define _GNU_SOURCE
#include "common.h"
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <signal.h>

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    bufferevent_write_buffer(bev, bufferevent_get_input(bev));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}

static int is_tcp;

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    (void)sa; (void)len; (void)arg;
    if (is_tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct bufferevent *bev = bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    bufferevent_enable(bev, EV_READ);
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: libevent_echo PORT|unix:/path\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int lfd = ref_listen(argv[1], &is_tcp);
    struct event_base *base = event_base_new();
    struct evconnlistener *l = evconnlistener_new(base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, lfd);
    if (!l) { fprintf(stderr, "evconnlistener_new failed\n"); return 1; }
    event_base_dispatch(base);
    return 0;
}
