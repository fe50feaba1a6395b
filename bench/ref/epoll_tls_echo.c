/*
 * epoll_tls_echo - the TLS twin of epoll_echo: single-threaded epoll with
 * non-blocking OpenSSL (SSL_set_fd on the socket, no BIO pairs). Session
 * tickets (OpenSSL's default, stateless) give resumption.
 *
 * usage: epoll_tls_echo PORT|unix:/path CERT.pem KEY.pem
 */
#define _GNU_SOURCE
#include "common.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>

typedef struct {
    int fd;
    SSL *ssl;
    int established;
    uint32_t events;
    char *pend; /* decrypted bytes not yet accepted by SSL_write */
    size_t plen;
} conn;

static int ep;
static char buf[65536];

static void conn_free(conn *c)
{
    SSL_free(c->ssl);
    close(c->fd);
    free(c->pend);
    free(c);
}

static void want(conn *c, uint32_t ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

/* 1 progressed, 0 blocked (interest set), -1 dead */
static int ssl_wait(conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { want(c, EPOLLIN); return 0; }
    if (e == SSL_ERROR_WANT_WRITE) { want(c, EPOLLOUT); return 0; }
    return -1;
}

static void on_conn(conn *c)
{
    if (!c->established) {
        ERR_clear_error();
        int r = SSL_accept(c->ssl);
        if (r != 1) {
            if (ssl_wait(c, r) < 0) conn_free(c);
            return;
        }
        c->established = 1;
        want(c, EPOLLIN);
    }
    for (;;) {
        if (c->pend) {
            ERR_clear_error();
            int r = SSL_write(c->ssl, c->pend, (int)c->plen);
            if (r <= 0) {
                if (ssl_wait(c, r) < 0) conn_free(c);
                return;
            }
            free(c->pend);
            c->pend = NULL;
            want(c, EPOLLIN);
        }
        ERR_clear_error();
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n <= 0) {
            if (ssl_wait(c, n) < 0) conn_free(c);
            return;
        }
        ERR_clear_error();
        int w = SSL_write(c->ssl, buf, n);
        if (w <= 0) {
            /* SSL_write must be retried with the same bytes */
            c->pend = malloc((size_t)n);
            memcpy(c->pend, buf, (size_t)n);
            c->plen = (size_t)n;
            if (ssl_wait(c, w) < 0) conn_free(c);
            return;
        }
        if (!SSL_pending(c->ssl))
            return; /* level-triggered: epoll tells us about the socket */
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: epoll_tls_echo PORT|unix:/path CERT KEY\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"ref", 3);
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
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, fd);
                    c->events = EPOLLIN;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                    on_conn(c); /* nothing yet, usually; cheap */
                }
            } else {
                on_conn(evs[i].data.ptr);
            }
        }
    }
}
