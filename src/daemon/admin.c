/*
 * admin.c - a tiny HTTP/1.1 server for /metrics and /status. One request
 * per connection (Connection: close), GET and HEAD only, request head
 * bounded to 8 KiB in all; anything else gets the proper status code.
 */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEAD_LIMIT 8192
#define ADMIN_LIFETIME 10.0  /* seconds */
#define ADMIN_FIRST_BYTE 2.0 /* seconds */
#define ADMIN_PER_IP 8       /* connections from one TCP address */

static void respond(evs_writer *w, int code, const char *reason, const char *type,
                    const char *body, size_t len, bool head)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "%sConnection: close\r\n\r\n",
                     code, reason, type, len, code == 405 ? "Allow: GET, HEAD\r\n" : "");
    struct iovec iov[2] = {{hdr, (size_t)n}, {(void *)body, head ? 0 : len}};

    evs_writelines(w, iov, 2);
}

/* "METHOD SP target SP HTTP/1.x" into @method and @path (the target
 * without its query; "" when too long to be one of ours).
 * @return false when the line is malformed. */
static bool parse_request_line(const char *line, size_t n, char method[16], char path[64])
{
    const char *end = line + n, *sp1, *sp2, *q;

    while (end > line && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    sp1 = memchr(line, ' ', (size_t)(end - line));
    if (!sp1 || sp1 == line || sp1 - line >= 16)
        return false;
    sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
    if (!sp2 || sp2 == sp1 + 1 || end - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return false;
    memcpy(method, line, (size_t)(sp1 - line));
    method[sp1 - line] = '\0';
    q = memchr(sp1 + 1, '?', (size_t)(sp2 - sp1 - 1)); /* a scraper's params are not ours */
    if (!q)
        q = sp2;
    if (q - sp1 - 1 < 64) {
        memcpy(path, sp1 + 1, (size_t)(q - sp1 - 1));
        path[q - sp1 - 1] = '\0';
    } else {
        path[0] = '\0';
    }
    return true;
}

static void admin_client(evs_reader *r, evs_writer *w, void *arg)
{
    evsd_service *svc = arg;
    const void *view;
    char method[16], target[64];
    char *body = NULL;
    size_t len = 0, total;
    ssize_t n;
    FILE *f;
    bool head;

    evs_reader_set_limit(r, HEAD_LIMIT);
    n = evs_readline(r, &view);
    if (n <= 0) {
        if (n == EVS_ELIMIT)
            respond(w, 414, "URI Too Long", "text/plain", "request line too long\n", 22, false);
        return;
    }
    if (!parse_request_line(view, (size_t)n, method, target)) {
        respond(w, 400, "Bad Request", "text/plain", "bad request\n", 12, false);
        return;
    }
    /* Skip the headers up to the empty line, within the head's bound. */
    for (total = (size_t)n;; total += (size_t)n) {
        n = evs_readline(r, &view);
        if (n == EVS_ELIMIT || (n > 0 && total + (size_t)n > HEAD_LIMIT)) {
            respond(w, 431, "Request Header Fields Too Large", "text/plain", "headers too large\n",
                    18, false);
            return;
        }
        if (n <= 0)
            return;
        if (n <= 2 && ((const char *)view)[0] != ' ')
            break;
    }
    head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        respond(w, 405, "Method Not Allowed", "text/plain", "GET or HEAD\n", 12, false);
        return;
    }
    f = open_memstream(&body, &len);
    if (!f) {
        respond(w, 500, "Internal Server Error", "text/plain", "out of memory\n", 14, head);
        return;
    }
    if (strcmp(target, "/metrics") == 0) {
        evsd_service_metrics(svc, f);
        fclose(f);
        respond(w, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, len, head);
    } else if (strcmp(target, "/status") == 0) {
        evsd_service_status(svc, f);
        fclose(f);
        respond(w, 200, "OK", "application/json", body, len, head);
    } else {
        fclose(f);
        respond(w, 404, "Not Found", "text/plain", "try /metrics or /status\n", 24, head);
    }
    free(body);
}

int evsd_admin_start(evsd_service *svc, const evsd_listener_conf *c)
{
    evs_server_options o;
    evs_server *s;
    int rc;

    memset(&o, 0, sizeof o);
    o.client_connected = admin_client;
    o.arg = svc;
    o.backlog = c->backlog;
    /* Its own cap, outside the global limit: monitoring must answer when
     * the listeners are full, and must not take their slots. */
    o.max_connections = 64;
    o.no_runtime_limit = true;
    /* Slow clients do not linger: a whole request and its answer within
     * ADMIN_LIFETIME. A bound per read was not enough: a header line every
     * few seconds held one of the 64 slots for hours. */
    o.idle_timeout = ADMIN_LIFETIME;
    o.timeouts.lifetime = ADMIN_LIFETIME;
    /* Nor can one client take every slot: a scraper needs one or two
     * connections, and one that opens and says nothing leaves at once. */
    o.max_connections_per_ip = ADMIN_PER_IP;
    o.timeouts.first_byte = ADMIN_FIRST_BYTE;
    o.defer_serving = true; /* evsd_service_serve, after the switch to `user` */
    if (c->family == EVSD_UNIX) {
        o.path = c->path;
        o.mode = c->has_mode ? c->mode : 0600;
        rc = evs_start_unix_server(evsd_service_runtime(svc), &o, &s);
        if (rc == 0 && c->path[0] != '@' && (c->has_owner || c->has_group) &&
            chown(c->path, c->has_owner ? c->owner : (uid_t)-1, c->has_group ? c->group : (gid_t)-1) <
                0)
            evs_log(EVS_LOG_WARN, "admin: owner of %s: %s", c->path, strerror(errno));
    } else {
        o.host = c->host;
        o.port = c->port;
        rc = evs_start_server(evsd_service_runtime(svc), &o, &s);
    }
    if (rc < 0) {
        evs_log(EVS_LOG_ERROR, "%s:%d: admin: cannot listen on %s: %s", c->file, c->line,
                c->listen, evs_strerror(rc));
        return -1;
    }
    char addr[160];
    if (c->family == EVSD_TCP) {
        int fd;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        snprintf(addr, sizeof addr, "%s", c->listen);
        if (evs_server_sockets(s, &fd, 1) > 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            evs_format_address((struct sockaddr *)&ss, sl, addr, sizeof addr);
    } else {
        snprintf(addr, sizeof addr, "unix:%s", c->path);
    }
    evs_log(EVS_LOG_INFO, "admin: /metrics and /status on %s", addr);
    evsd_service_set_admin(svc, addr, s);
    return 0;
}
