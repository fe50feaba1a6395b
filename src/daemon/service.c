/*
 * service.c - turn a configuration into plugins, instances and servers on
 * a runtime, and move from one configuration to the next on a reload.
 *
 * An instance is one use of a plugin by one listener: init(settings) ->
 * worker_start on every worker -> connections -> worker_stop -> fini.
 * On a reload every listener gets a new instance; the old one is retired
 * and finished once its server's last connection has ended. A listener
 * whose socket settings did not change hands its listening socket to its
 * successor (evs_server_take_sockets), so connections waiting in the
 * kernel's queue are never dropped.
 */
#include "service.h"

#include "accesslog.h"
#include "datagram.h"
#include "logging.h"
#include "systemd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* --- plugins, shared by path ------------------------------------------ */

typedef struct loaded_plugin {
    char *path;
    evs_plugin_handle *handle;
    struct stat st; /* the file as it was loaded */
    int refs;
    struct loaded_plugin *next;
} loaded_plugin;

static loaded_plugin *plugins;

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Copy what is left of @in to @out. @return 0 or a negative errno. */
static int copy_fd(int in, int out)
{
    char buf[65536];
    ssize_t n;

    while ((n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        for (ssize_t done = 0, w; done < n; done += w) {
            w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                w = 0;
            else if (w < 0)
                return -errno;
        }
    }
    return 0;
}

/* The dynamic loader hands back the already loaded object for a path it
 * knows, so a plugin file that changed since is loaded from a private copy
 * (removed at once; the mapping stays) in $TMPDIR, or /tmp: a host whose
 * /tmp is mounted noexec names another directory there. */
static int load_copy(const char *path, evs_plugin_handle **out, char *err, size_t errlen)
{
    const char *dir = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    int in = -1, fd = -1, rc;

    if (!dir || !*dir)
        dir = "/tmp";
    if (snprintf(tmpl, sizeof tmpl, "%s/evstreamd-plugin-XXXXXX", dir) >= (int)sizeof tmpl)
        rc = -ENAMETOOLONG;
    else if ((in = open(path, O_RDONLY | O_CLOEXEC)) < 0 || (fd = mkstemp(tmpl)) < 0)
        rc = -errno;
    else
        rc = copy_fd(in, fd);
    if (rc < 0)
        snprintf(err, errlen, "%s: cannot copy the changed plugin to %s: %s", path, dir,
                 strerror(-rc));
    if (in >= 0)
        close(in);
    if (fd >= 0)
        close(fd);
    if (rc == 0) {
        char why[512];

        rc = evs_plugin_load(tmpl, out, why, sizeof why);
        if (rc == 0)
            evs_log(EVS_LOG_INFO, "plugin %s changed: loaded the new version", path);
        else if (strncmp(why, tmpl, strlen(tmpl)) == 0) /* name the operator's file */
            snprintf(err, errlen, "%s%s", path, why + strlen(tmpl));
        else
            snprintf(err, errlen, "%s", why);
    }
    if (fd >= 0)
        unlink(tmpl);
    return rc;
}

static loaded_plugin *plugin_get(const char *path, char *err, size_t errlen)
{
    loaded_plugin *p, *stale = NULL;
    struct stat st;

    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "%s: cannot load plugin: %s", path, strerror(errno));
        return NULL;
    }
    for (p = plugins; p; p = p->next) {
        if (strcmp(p->path, path) != 0)
            continue;
        if (same_file(&p->st, &st)) {
            p->refs++;
            return p;
        }
        stale = p;
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    if ((stale ? load_copy(path, &p->handle, err, errlen)
               : evs_plugin_load(path, &p->handle, err, errlen)) < 0) {
        free(p);
        return NULL;
    }
    p->path = strdup(path);
    p->st = st;
    p->refs = 1;
    p->next = plugins;
    plugins = p;
    return p;
}

static void plugin_put(loaded_plugin *p)
{
    loaded_plugin **pp;

    if (--p->refs > 0)
        return;
    for (pp = &plugins; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    evs_plugin_unload(p->handle);
    free(p->path);
    free(p);
}

/* --- instances --------------------------------------------------------- */

typedef struct instance {
    loaded_plugin *plugin;
    const evs_plugin *desc;
    void *state;
    const evsd_listener_conf *conf;
    bool on_workers; /* worker_start ran (worker_stop is owed) */
    struct instance *next; /* every instance with on_workers, for the exit hook */
} instance;

static const evsd_plugin_conf *find_plugin_conf(const evsd_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nplugins; i++)
        if (strcmp(cfg->plugins[i].name, name) == 0)
            return &cfg->plugins[i];
    return NULL;
}

static bool is_datagram(const evsd_listener_conf *c)
{
    return c->family == EVSD_UDP || c->family == EVSD_UNIXGRAM;
}

/* Load the listener's plugin, check that its mode fits the address, and
 * init an instance. Reasons go to @err. */
static instance *instance_new(const evsd_config *cfg, const evsd_listener_conf *l, char *err,
                              size_t errlen)
{
    const evsd_plugin_conf *pc = find_plugin_conf(cfg, l->plugin);
    instance *in = calloc(1, sizeof *in);
    evs_settings *settings;
    int rc;

    if (!in || !pc) {
        free(in);
        snprintf(err, errlen, "%s:%d: listener '%s': no plugin '%s'", l->file, l->line, l->name,
                 l->plugin);
        return NULL;
    }
    in->plugin = plugin_get(pc->path, err, errlen);
    if (!in->plugin) {
        size_t n = strlen(err);
        snprintf(err + n, errlen - n, " (plugin '%s' declared at %s:%d)", pc->name, pc->file,
                 pc->line);
        free(in);
        return NULL;
    }
    in->desc = evs_plugin_get(in->plugin->handle);
    in->conf = l;
    /* Datagram plugins serve udp: and unixgram: addresses, and only those.
     * Checked before init, so a plugin that cannot serve here never starts. */
    if (is_datagram(l) != (in->desc->mode == EVS_PLUGIN_DATAGRAM)) {
        if (is_datagram(l))
            snprintf(err, errlen, "%s:%d: listener '%s': plugin '%s' is not a datagram plugin",
                     l->file, l->line, l->name, l->plugin);
        else
            snprintf(err, errlen,
                     "%s:%d: listener '%s': plugin '%s' serves datagrams: use a udp: or "
                     "unixgram: address",
                     l->file, l->line, l->name, l->plugin);
        plugin_put(in->plugin);
        free(in);
        return NULL;
    }
    if (in->desc->init) {
        settings = evs_settings_from_libconfig(l->settings);
        rc = settings ? in->desc->init(settings, &in->state) : -ENOMEM;
        if (rc < 0) {
            const char *why = settings ? evs_settings_error(settings) : NULL;
            static const char nowhere[] = "(settings):0: ";
            if (why && l->settings)
                snprintf(err, errlen, "%s: init failed for listener '%s': %s", pc->path, l->name,
                         why);
            else if (why) /* no settings group to point at: name the listener's line */
                snprintf(err, errlen, "%s: init failed for listener '%s' (%s:%d): %s", pc->path,
                         l->name, l->file, l->line,
                         strncmp(why, nowhere, sizeof nowhere - 1) == 0 ? why + sizeof nowhere - 1
                                                                        : why);
            else
                snprintf(err, errlen, "%s: init failed for listener '%s' (%s:%d): %s", pc->path,
                         l->name, l->file, l->line, evs_strerror(rc));
            evs_settings_free(settings);
            plugin_put(in->plugin);
            free(in);
            return NULL;
        }
        evs_settings_free(settings);
    } else if (l->settings && config_setting_length(l->settings) > 0) {
        /* Nothing would read them: a typo would pass unseen. */
        snprintf(err, errlen, "%s:%d: listener '%s': plugin '%s' takes no settings",
                 config_setting_source_file(l->settings) ? config_setting_source_file(l->settings)
                                                         : l->file,
                 config_setting_source_line(l->settings), l->name, l->plugin);
        plugin_put(in->plugin);
        free(in);
        return NULL;
    }
    return in;
}

static void instance_free(instance *in)
{
    if (!in)
        return;
    if (in->desc->fini)
        in->desc->fini(in->state);
    plugin_put(in->plugin);
    free(in);
}

/* Build the listener's TLS context; NULL (and 0) for a plaintext one. */
static int make_tls(const evsd_listener_conf *l, evs_tls_context **out, char *err, size_t errlen)
{
    const evsd_tls_conf *c = l->tls;
    evs_tls_certificate *certs;
    evs_tls_server_options o;
    char why[512];
    int rc;

    *out = NULL;
    if (!c)
        return 0;
    certs = calloc(c->ncerts, sizeof *certs);
    if (!certs)
        return -ENOMEM;
    for (size_t i = 0; i < c->ncerts; i++) {
        certs[i].certificate = c->certs[i].certificate;
        certs[i].key = c->certs[i].key;
        certs[i].password_file = c->certs[i].password_file;
        certs[i].names = (const char *const *)c->certs[i].names;
    }
    memset(&o, 0, sizeof o);
    o.certificates = certs;
    o.ncertificates = c->ncerts;
    o.min_protocol = c->min_protocol;
    o.max_protocol = c->max_protocol;
    o.ciphers = c->ciphers;
    o.ciphersuites = c->ciphersuites;
    o.groups = c->groups;
    o.alpn = (const char *const *)c->alpn;
    o.nalpn = c->nalpn;
    o.alpn_required = c->alpn_required;
    o.verify_client = c->verify_client;
    o.ca_file = c->ca_file;
    o.verify_depth = c->verify_depth;
    o.no_tickets = !c->session_tickets;
    o.ticket_rotation = c->ticket_rotation;
    rc = evs_tls_server_context_new(&o, out, why, sizeof why);
    free(certs);
    if (rc < 0)
        snprintf(err, errlen, "%s:%d: listener '%s': tls: %s", l->file, l->line, l->name, why);
    return rc;
}

/* --- running something on every worker and waiting ---------------------- */

typedef struct fanout {
    int (*fn)(evs_worker *w, instance *in);
    instance **list;
    size_t n;
    int failures;
} fanout;

static void fanout_run(evs_worker *w, void *arg)
{
    fanout *f = arg;

    for (size_t i = 0; i < f->n; i++)
        if (f->list[i] && f->fn(w, f->list[i]) < 0)
            f->failures++;
}

/* Run fn(worker, instance) for each instance on every worker, one worker
 * after the other. @return the number of failed calls (a worker that
 * cannot be reached counts once). */
static int on_all_workers(evs_runtime *rt, int (*fn)(evs_worker *, instance *), instance **list,
                          size_t n)
{
    fanout f = {.fn = fn, .list = list, .n = n};
    int workers = evs_runtime_worker_count(rt);

    for (int i = 0; i < workers; i++)
        if (evs_worker_call(evs_runtime_worker(rt, i), fanout_run, &f) < 0)
            f.failures++;
    return f.failures;
}

static int call_worker_start(evs_worker *w, instance *in)
{
    int rc = in->desc->worker_start ? in->desc->worker_start(w, in->state) : 0;

    if (rc < 0)
        evs_log(EVS_LOG_ERROR, "plugin %s: worker_start failed on worker %d: %s",
                in->plugin->path, evs_worker_id(w), evs_strerror(rc));
    return rc;
}

static int call_worker_stop(evs_worker *w, instance *in)
{
    if (in->desc->worker_stop)
        in->desc->worker_stop(w, in->state);
    return 0;
}

/* --- the service ------------------------------------------------------- */

typedef struct listener {
    const evsd_listener_conf *conf;
    instance *inst;
    evs_tls_context *tls;
    evsd_access_log *access_log;
    evsd_datagram *dgram; /* udp: and unixgram: listeners */
    evs_server *server;
    char *key;
    char address[160];
    struct listener *prev; /* reload: the old listener whose socket this one takes */
    bool claimed;          /* reload: a new listener takes this one's socket */
    /* Its sockets are one per worker with SO_REUSEPORT. A kept socket keeps
     * what it was bound with, so this is the running state, which the
     * file's `reuseport` may differ from until a restart. */
    bool reuseport_sockets;
    /* Its socket came from the service manager (socket activation), which
     * made its Unix socket file and keeps it: the file is never ours to
     * remove, in this generation or a later one. */
    bool managers_socket;
    /* The counts of the earlier generations of this listener name, so that
     * a reload neither drops the connections it leaves running nor resets
     * the counters: `freed` sums the servers already freed (main thread
     * only); `earlier` adds the retired ones still serving, as of the last
     * evsd_service_reap (under view_lock, which the admin listener reads). */
    evs_server_stats freed;
    evs_server_stats earlier;
} listener;

/* A configuration and its listeners; kept until its last instance ends. */
typedef struct generation {
    evsd_config *cfg;
    listener *listeners;
    size_t n;
    size_t live; /* listeners whose instance is not finished yet */
    struct generation *next;
} generation;

struct evsd_service {
    evs_runtime *rt;
    generation *current;
    generation *retired; /* older generations with live connections */
    pthread_mutex_t lock; /* the list below, read by the worker exit hook */
    instance *on_workers;
    pthread_mutex_t view_lock; /* `current` as the admin listener reads it */
    char admin_address[160];
    evs_server *admin; /* deferred like the listeners, started by evsd_service_serve */
    time_t started;
    /* The configuration the service started with, kept to the end: the
     * settings a reload cannot change still run as it says. */
    evsd_config *boot;
};

/* Runtime hook: the worker's connections are all gone; say goodbye to
 * every instance still started on it. */
static void worker_stopping(evs_worker *w, void *arg)
{
    evsd_service *svc = arg;

    pthread_mutex_lock(&svc->lock);
    for (instance *in = svc->on_workers; in; in = in->next)
        call_worker_stop(w, in);
    pthread_mutex_unlock(&svc->lock);
}

static void track(evsd_service *svc, instance *in)
{
    pthread_mutex_lock(&svc->lock);
    in->on_workers = true;
    in->next = svc->on_workers;
    svc->on_workers = in;
    pthread_mutex_unlock(&svc->lock);
}

static void untrack(evsd_service *svc, instance *in)
{
    pthread_mutex_lock(&svc->lock);
    for (instance **pp = &svc->on_workers; *pp; pp = &(*pp)->next) {
        if (*pp == in) {
            *pp = in->next;
            break;
        }
    }
    in->on_workers = false;
    pthread_mutex_unlock(&svc->lock);
}

/* worker_stop on every worker, then fini. */
static void retire_instance(evsd_service *svc, instance *in)
{
    if (!in)
        return;
    if (in->on_workers) {
        untrack(svc, in);
        on_all_workers(svc->rt, call_worker_stop, &in, 1);
    }
    instance_free(in);
}

static void generation_free(evsd_service *svc, generation *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n; i++) {
        /* Endpoints first: their callbacks use the instance's state. */
        evsd_datagram_stop(svc->rt, g->listeners[i].dgram);
        g->listeners[i].dgram = NULL;
        retire_instance(svc, g->listeners[i].inst);
        evs_tls_context_unref(g->listeners[i].tls);
        evsd_access_log_close(g->listeners[i].access_log);
        free(g->listeners[i].key);
    }
    free(g->listeners);
    if (g->cfg != svc->boot)
        evsd_config_free(g->cfg);
    free(g);
}

/* A problem found while preparing a listener: on @errors for `-t`, in the
 * log (NULL) for a start or a reload. */
static void report(FILE *errors, const char *what)
{
    if (errors)
        fprintf(errors, "%s\n", what);
    else
        evs_log(EVS_LOG_ERROR, "%s", what);
}

/* The addresses @c's socket would bind, resolved as its bind does: a TCP
 * listener as the library's server.c (AI_ADDRCONFIG first, then without
 * it, which hides ::1 on hosts with only loopback IPv6), a udp: one as
 * datagram.c (which binds the first). No host is every interface.
 * @return 0 and *@out, or a getaddrinfo error. */
static int resolve_listener(const evsd_listener_conf *c, struct addrinfo **out)
{
    struct addrinfo hints;
    char port[8];
    int rc;

    if (c->family == EVSD_UDP)
        return evsd_datagram_resolve(c, out);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG;
    snprintf(port, sizeof port, "%u", (unsigned)c->port);
    rc = getaddrinfo(c->host, port, &hints, out);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
        hints.ai_flags &= ~AI_ADDRCONFIG;
        rc = getaddrinfo(c->host, port, &hints, out);
    }
    return rc;
}

static const char *host_text(const evsd_listener_conf *c)
{
    return c->host ? c->host : "*"; /* config.c: NULL for "*" and no host */
}

static bool same_sockaddr(const struct addrinfo *a, const struct addrinfo *b)
{
    if (a->ai_family != b->ai_family)
        return false;
    if (a->ai_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a->ai_addr, *y = (const void *)b->ai_addr;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ai_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a->ai_addr, *y = (const void *)b->ai_addr;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

/* The next address a listener binds after @a: a udp: listener binds only
 * the first its host resolves to. */
static const struct addrinfo *next_bound(const struct addrinfo *a, evsd_family f)
{
    return f == EVSD_UDP ? NULL : a->ai_next;
}

/* The first address that listeners of family @f bound at @a and at @b
 * share, or NULL. */
static const struct addrinfo *shared_address(const struct addrinfo *a, const struct addrinfo *b,
                                             evsd_family f)
{
    for (; a; a = next_bound(a, f))
        for (const struct addrinfo *x = b; x; x = next_bound(x, f))
            if (same_sockaddr(a, x))
                return a;
    return NULL;
}

/* Resolve every TCP and UDP listener's host: for `-t` (@check), a host
 * that does not resolve is a problem (a start or a reload finds out when
 * it binds). Two listeners whose hosts resolve to one address are one
 * too: config.c compares the address text, which misses one address
 * written two ways ("localhost:P" and "127.0.0.1:P"). With reuseport
 * both would bind and the kernel would split the connections between two
 * plugins. A TCP wildcard beside a specific address is allowed: the
 * kernel gives the specific one its connections.
 * @return the number of problems, each reported. */
static int check_addresses(const evsd_config *cfg, bool check, FILE *errors)
{
    struct addrinfo **res = calloc(cfg->nlisteners + 1, sizeof *res);
    char err[1024], text[INET6_ADDRSTRLEN];
    int failures = 0, rc;

    if (!res) {
        report(errors, "cannot check the listeners' addresses: out of memory");
        return 1;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const evsd_listener_conf *c = &cfg->listeners[i];

        if (c->family != EVSD_TCP && c->family != EVSD_UDP)
            continue;
        if ((rc = resolve_listener(c, &res[i])) != 0) {
            res[i] = NULL;
            if (check) {
                snprintf(err, sizeof err, "%s:%d: listener '%s': cannot resolve '%s': %s",
                         c->file, c->line, c->name, host_text(c), gai_strerror(rc));
                report(errors, err);
                failures++;
            }
            continue;
        }
        for (size_t j = 0; j < i && c->port != 0; j++) {
            const evsd_listener_conf *o = &cfg->listeners[j];
            const struct addrinfo *a;

            if (o->family != c->family || !(a = shared_address(res[i], res[j], c->family)))
                continue;
            getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof text, NULL, 0, NI_NUMERICHOST);
            snprintf(err, sizeof err,
                     "%s:%d: listener '%s': %s resolves to %s port %u, an address of listener "
                     "'%s' (%s)",
                     c->file, c->line, c->name, c->listen, text, (unsigned)c->port, o->name,
                     o->listen);
            report(errors, err);
            failures++;
            break;
        }
    }
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (res[i])
            freeaddrinfo(res[i]);
    free(res);
    return failures;
}

/* Everything a listener needs before its socket: its plugin instance
 * (loaded, its mode fitting the address, init run), its TLS context and
 * its access log. A start, a reload and `-t` all come through here, so
 * `-t` finds what they would. With @check (-t) the access log file is
 * only tried (evsd_log_file_check): a check leaves no file behind.
 * @return the number of problems, each reported. */
static int prepare_listener(const evsd_config *cfg, listener *l, bool check, FILE *errors)
{
    const evsd_listener_conf *c = l->conf;
    char err[1024];
    int failures = 0, rc;

    l->inst = instance_new(cfg, c, err, sizeof err);
    if (!l->inst) {
        report(errors, err);
        failures++;
    }
    if (make_tls(c, &l->tls, err, sizeof err) < 0) {
        report(errors, err);
        failures++;
    }
    if (c->access_log) {
        if (check) {
            rc = evsd_log_file_check(c->access_log);
        } else {
            l->access_log = evsd_access_log_open(c->access_log, c->name, c->access_log_format);
            rc = l->access_log ? 0 : -errno;
        }
        if (rc < 0) {
            snprintf(err, sizeof err, "%s:%d: listener '%s': access log %s: %s", c->file,
                     c->line, c->name, c->access_log, evs_strerror(rc));
            report(errors, err);
            failures++;
        }
    }
    return failures;
}

int evsd_service_check(const evsd_config *cfg, FILE *errors)
{
    listener *ls = calloc(cfg->nlisteners + 1, sizeof *ls);
    int failures = 0;

    if (!ls) {
        fprintf(errors, "evstreamd: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        ls[i].conf = &cfg->listeners[i];
        failures += prepare_listener(cfg, &ls[i], true, errors);
    }
    failures += check_addresses(cfg, true, errors);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        instance_free(ls[i].inst);
        evs_tls_context_unref(ls[i].tls);
    }
    free(ls);
    return failures ? -1 : 0;
}

/* Make the generation's instances and start them on the workers. Takes
 * @cfg: on failure it is freed. */
static generation *generation_new(evsd_service *svc, evsd_config *cfg)
{
    generation *g = calloc(1, sizeof *g);
    instance **list = calloc(cfg->nlisteners + 1, sizeof *list);
    int failures = 0;

    if (g)
        g->listeners = calloc(cfg->nlisteners + 1, sizeof *g->listeners);
    if (!g || !g->listeners || !list) {
        evs_log(EVS_LOG_ERROR, "cannot load the configuration: out of memory");
        if (g)
            free(g->listeners);
        free(g);
        free(list);
        evsd_config_free(cfg);
        return NULL;
    }
    g->cfg = cfg;
    g->n = cfg->nlisteners;
    for (size_t i = 0; i < g->n; i++) {
        listener *l = &g->listeners[i];
        l->conf = &cfg->listeners[i];
        l->key = evsd_listener_key(l->conf);
        l->reuseport_sockets = l->conf->reuseport; /* unless it takes a socket (a reload) */
        failures += prepare_listener(cfg, l, false, NULL);
        list[i] = l->inst;
    }
    failures += check_addresses(cfg, false, NULL);
    g->live = g->n;
    if (failures == 0) {
        for (size_t i = 0; i < g->n; i++)
            track(svc, list[i]);
        failures = on_all_workers(svc->rt, call_worker_start, list, g->n);
    }
    free(list);
    if (failures) {
        generation_free(svc, g);
        return NULL;
    }
    return g;
}

static void describe_address(listener *l)
{
    int fds[4];
    size_t n;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    /* A socket from the service manager is matched by name, and may be
     * bound elsewhere than the file says: say where it really is. */
    if (l->conf->family == EVSD_UNIX && !l->managers_socket) {
        snprintf(l->address, sizeof l->address, "unix:%s", l->conf->path);
        return;
    }
    n = evs_server_sockets(l->server, fds, 4);
    if (n > 0 && getsockname(fds[0], (struct sockaddr *)&ss, &len) == 0)
        evs_format_address((struct sockaddr *)&ss, len, l->address, sizeof l->address);
    else
        snprintf(l->address, sizeof l->address, "%s", l->conf->listen);
}

static int start_datagram_listener(evsd_service *svc, listener *l, int inherited)
{
    const evs_plugin *d = l->inst->desc; /* a datagram plugin: instance_new checked */

    l->dgram = evsd_datagram_start(svc->rt, l->conf, d->datagram, l->inst->state, inherited,
                                   l->address, sizeof l->address);
    return l->dgram ? 0 : -EADDRINUSE;
}

/* A Unix socket file's owner and group, when the listener sets them. */
static int set_socket_owner(const evsd_listener_conf *c)
{
    if (c->path[0] == '@' || (!c->has_owner && !c->has_group))
        return 0;
    if (chown(c->path, c->has_owner ? c->owner : (uid_t)-1,
              c->has_group ? c->group : (gid_t)-1) < 0)
        return -errno;
    return 0;
}

/* The service manager made the socket and its file: their mode, owner
 * and group belong in its .socket unit, and are never applied here. Said
 * at the start and at each reload, so a setting that does nothing does
 * not pass unnoticed. */
static void warn_managers_file_settings(const evsd_listener_conf *c)
{
    if (c->family == EVSD_UNIX && (c->has_mode || c->has_owner || c->has_group))
        evs_log(EVS_LOG_WARN,
                "listener '%s': mode, owner and group are not applied to a socket from the "
                "service manager (set SocketMode=, SocketUser= and SocketGroup= in its .socket "
                "unit)",
                c->name);
}

/* A socket kept across a reload takes the listener's new settings once
 * the reload can no longer fail (before, a failed reload would leave the
 * running listener with them): as well as the kernel lets, with a warning
 * for what it refuses. */
static void adjust_kept_sockets(const listener *l)
{
    const evsd_listener_conf *c = l->conf;
    size_t n = evs_server_sockets(l->server, NULL, 0);
    int *fds = calloc(n + 1, sizeof *fds), rc;

    n = fds ? evs_server_sockets(l->server, fds, n) : 0;
    for (size_t i = 0; i < n; i++) {
        int one = 1;
        if (listen(fds[i], c->backlog) < 0)
            evs_log(EVS_LOG_WARN, "listener '%s': backlog: %s", c->name, strerror(errno));
        if (c->reuseport)
            setsockopt(fds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    free(fds);
    /* The service manager's socket file is its own (and perhaps not at
     * c->path at all: a name matched it): never chmod or chown it. */
    if (l->managers_socket)
        warn_managers_file_settings(c);
    if (c->family != EVSD_UNIX || l->managers_socket)
        return;
    if (c->path[0] != '@' && c->has_mode && chmod(c->path, c->mode) < 0)
        evs_log(EVS_LOG_WARN, "listener '%s': mode of %s: %s", c->name, c->path, strerror(errno));
    if ((rc = set_socket_owner(c)) < 0)
        evs_log(EVS_LOG_WARN, "listener '%s': owner of %s: %s", c->name, c->path,
                evs_strerror(rc));
}

/* Create the listener's server, not serving yet. @fds: sockets handed
 * over, still the caller's if this fails. */
static int start_listener(evsd_service *svc, listener *l, const int *fds, size_t nfds)
{
    const evsd_listener_conf *c = l->conf;
    evs_server_options o;
    int rc;

    if (is_datagram(c))
        return start_datagram_listener(svc, l, nfds ? fds[0] : -1);
    memset(&o, 0, sizeof o);
    if (l->inst->desc->mode == EVS_PLUGIN_STREAM)
        o.client_connected = l->inst->desc->client_connected;
    else
        o.protocol = l->inst->desc->protocol;
    o.arg = l->inst->state;
    o.backlog = c->backlog;
    o.reuse_port = c->reuseport;
    o.limit = c->limits.stream_limit;
    o.write_high_water = c->limits.write_high_water;
    o.write_low_water = c->limits.write_low_water;
    o.idle_timeout = c->limits.idle_timeout;
    o.timeouts.first_byte = c->limits.first_byte_timeout;
    o.timeouts.read = c->limits.read_timeout;
    o.timeouts.write = c->limits.write_timeout;
    o.timeouts.lifetime = c->limits.lifetime;
    o.max_write_buffer = c->limits.max_write_buffer;
    o.max_connections_per_ip = c->limits.max_connections_per_ip;
    o.connection_rate_per_ip = c->limits.connection_rate_per_ip;
    o.connection_burst_per_ip = c->limits.connection_burst_per_ip;
    o.reject_message = c->limits.reject_message;
    o.max_connections = c->own_max_connections ? c->limits.max_connections : 0;
    /* A reload's successor goes on counting its predecessor's connections. */
    o.predecessor = l->prev ? l->prev->server : NULL;
    o.tls = l->tls;
    o.tls_handshake_timeout = c->limits.handshake_timeout;
    /* 0 means "do not wait" for the daemon; the library's 0 is its default. */
    o.tls_shutdown_timeout = c->limits.shutdown_timeout > 0 ? c->limits.shutdown_timeout : 0.001;
    o.defer_serving = true;
    o.fds = fds;
    o.nfds = nfds;
    o.proxy_protocol = c->proxy_protocol;
    o.proxy_trusted = (const char *const *)c->proxy_trusted;
    o.nproxy_trusted = c->nproxy_trusted;
    o.proxy_timeout = c->proxy_timeout;
    if (l->access_log) { /* opened by prepare_listener */
        o.connection_closed = evsd_access_log_write;
        o.connection_closed_arg = l->access_log;
    }
    if (c->family == EVSD_UNIX) {
        /* A server given the path removes the file when it closes. */
        o.path = l->managers_socket ? NULL : c->path;
        o.mode = c->has_mode ? c->mode : 0;
        rc = evs_start_unix_server(svc->rt, &o, &l->server);
        if (rc == 0 && nfds == 0 && (rc = set_socket_owner(c)) < 0) {
            /* It closes the server first. Not left to the runtime,
             * which would free it only at its stop. */
            evs_server_free(l->server);
            l->server = NULL;
        }
    } else {
        o.host = c->host;
        o.port = c->port;
        rc = evs_start_server(svc->rt, &o, &l->server);
    }
    if (rc < 0) {
        char why[PATH_MAX + 64];
        /* The library's codes for a path that is no socket and a name that
         * does not resolve, said in words. */
        if (rc == -EEXIST && c->family == EVSD_UNIX)
            snprintf(why, sizeof why, "%s exists and is not a socket (it is left alone)", c->path);
        else if (rc == -EHOSTUNREACH)
            snprintf(why, sizeof why, "cannot resolve '%s'", c->host ? c->host : "*");
        else
            snprintf(why, sizeof why, "%s", evs_strerror(rc));
        evs_log(EVS_LOG_ERROR, "%s:%d: listener '%s': cannot listen on %s: %s", c->file, c->line,
                c->name, c->listen, why);
        return rc;
    }
    describe_address(l);
    return 0;
}

static void serve_all(evsd_service *svc, generation *g)
{
    for (size_t i = 0; i < g->n; i++) {
        if (g->listeners[i].server)
            evs_server_start_serving(g->listeners[i].server);
        else if (g->listeners[i].dgram)
            evsd_datagram_serve(svc->rt, g->listeners[i].dgram);
        else
            continue; /* its hand-over failed (logged) */
        evs_log(EVS_LOG_INFO, "listening on %s (listener '%s', plugin '%s')",
                g->listeners[i].address, g->listeners[i].conf->name, g->listeners[i].conf->plugin);
    }
}

evsd_service *evsd_service_start(evsd_config *cfg, int workers)
{
    evsd_service *svc = calloc(1, sizeof *svc);
    evs_runtime_options ro;
    int rc;

    if (!svc) {
        evsd_config_free(cfg);
        return NULL;
    }
    pthread_mutex_init(&svc->lock, NULL);
    pthread_mutex_init(&svc->view_lock, NULL);
    svc->started = time(NULL);
    memset(&ro, 0, sizeof ro);
    ro.workers = workers ? workers : cfg->workers;
    ro.dispatch = cfg->dispatch;
    ro.max_connections = cfg->limits.max_connections;
    ro.stack_size = cfg->limits.stack_size;
    ro.write_budget = cfg->limits.write_budget;
    ro.worker_stopping = worker_stopping;
    ro.hook_arg = svc;
    rc = evs_runtime_new(&ro, &svc->rt);
    if (rc < 0) {
        evs_log(EVS_LOG_ERROR, "cannot start the workers: %s", evs_strerror(rc));
        evsd_config_free(cfg);
        free(svc);
        return NULL;
    }
    svc->current = generation_new(svc, cfg);
    if (!svc->current)
        goto fail;
    svc->boot = cfg;
    /* Sockets from the service manager (socket activation, taken by
     * main()) go to the listeners they match; the others are bound here. */
    if (evsd_activation_count() > 0)
        evs_log(EVS_LOG_INFO, "socket activation: %zu socket(s) from the service manager",
                evsd_activation_count());
    for (size_t i = 0; i < svc->current->n; i++) {
        listener *l = &svc->current->listeners[i];
        int fd = evsd_activation_claim(l->conf);
        l->managers_socket = fd >= 0;
        if (l->managers_socket)
            warn_managers_file_settings(l->conf);
        if (fd == -EPROTOTYPE || start_listener(svc, l, fd >= 0 ? &fd : NULL, fd >= 0) < 0)
            goto fail;
    }
    evsd_activation_close_unclaimed();
    return svc;

fail:
    evsd_service_stop(svc);
    return NULL;
}

void evsd_service_serve(evsd_service *svc)
{
    serve_all(svc, svc->current);
    if (svc->admin)
        evs_server_start_serving(svc->admin);
}

/* The port every socket of stream listener @o is bound to, or 0 when they
 * differ: port 0 on a name of several addresses ("*", "localhost") gets
 * each address a port of its own. */
static uint16_t port_of_every_socket(const listener *o)
{
    size_t n = evs_server_sockets(o->server, NULL, 0);
    int *fds = calloc(n ? n : 1, sizeof *fds);
    uint16_t port = 0;

    if (!fds)
        return 0;
    evs_server_sockets(o->server, fds, n);
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        uint16_t p;

        if (getsockname(fds[i], (struct sockaddr *)&ss, &len) < 0) {
            port = 0;
            break;
        }
        p = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
        if (i > 0 && p != port) {
            port = 0;
            break;
        }
        port = p;
    }
    free(fds);
    return port;
}

/* Whether new listener @l names old listener @o's socket: the same address,
 * or @o asked for port 0 and @l names the port it got (binding that port
 * again would fail with EADDRINUSE against the daemon's own socket). A
 * datagram listener binds one address, every worker on its first port. */
static bool names_socket_of(const listener *l, const listener *o)
{
    const char *port = strrchr(o->address, ':');
    evsd_listener_conf got;
    char *bound;
    bool same;

    if (strcmp(o->key, l->key) == 0)
        return true;
    if ((o->conf->family != EVSD_TCP && o->conf->family != EVSD_UDP) || o->conf->port != 0 || !port)
        return false;
    got = *o->conf;
    got.port = o->server ? port_of_every_socket(o) : (uint16_t)atoi(port + 1);
    if (got.port == 0)
        return false;
    bound = evsd_listener_key(&got);
    same = strcmp(bound, l->key) == 0;
    free(bound);
    return same;
}

/* Pair each new listener with an old one of the same socket key, each old
 * one at most once, the same name first: several listeners can share a key
 * (two on "127.0.0.1:0"), and each must keep its own socket. */
static void match_listeners(generation *old, generation *g)
{
    for (int same_name = 1; same_name >= 0; same_name--) {
        for (size_t i = 0; i < g->n; i++) {
            listener *l = &g->listeners[i];

            for (size_t j = 0; !l->prev && j < old->n; j++) {
                listener *o = &old->listeners[j];
                if (o->claimed || (!o->server && !o->dgram) ||
                    (same_name && strcmp(o->conf->name, l->conf->name) != 0) ||
                    !names_socket_of(l, o))
                    continue;
                o->claimed = true;
                l->prev = o;
                /* Taking over one socket cannot make one per worker;
                 * giving them up (reuseport = false) can be done now. */
                l->reuseport_sockets = o->reuseport_sockets && l->conf->reuseport;
                if (l->conf->reuseport && !o->reuseport_sockets)
                    evs_log(EVS_LOG_WARN,
                            "reload: changed reuseport of '%s': applied at the next restart",
                            l->conf->name);
            }
        }
    }
}

/* The successor of a listener whose address is unchanged serves copies
 * (dup) of the old sockets: the old server keeps accepting on them until
 * the reload can no longer fail, and a failure closes only the copies. */
static int start_successor(evsd_service *svc, listener *l)
{
    size_t n = evs_server_sockets(l->prev->server, NULL, 0), k;
    int *fds = calloc(n + 1, sizeof *fds);
    int rc = 0;

    if (!fds)
        return -ENOMEM;
    l->managers_socket = l->prev->managers_socket;
    n = evs_server_sockets(l->prev->server, fds, n);
    for (k = 0; k < n && rc == 0; k++) {
        int fd = fcntl(fds[k], F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            evs_log(EVS_LOG_ERROR, "listener '%s': cannot keep its socket: %s", l->conf->name,
                    evs_strerror(rc));
            break;
        }
        fds[k] = fd;
    }
    if (rc == 0)
        rc = start_listener(svc, l, fds, n);
    if (rc < 0)
        while (k > 0)
            close(fds[--k]);
    free(fds);
    return rc;
}

/* Stop a server of a reload that failed. A successor's sockets are copies
 * of live ones: close them, but leave the Unix socket file, which is the
 * old server's. */
static void discard_server(listener *l)
{
    if (!l->server)
        return;
    if (l->prev && !is_datagram(l->conf))
        evs_server_take_sockets(l->server, NULL, 0);
    else
        evs_server_close(l->server);
    evs_server_free(l->server); /* never served: or else the runtime frees it */
    l->server = NULL;
}

/* --- counts across reloads ----------------------------------------------- */

static void stats_add(evs_server_stats *sum, const evs_server_stats *st)
{
    sum->accepted += st->accepted;
    sum->active += st->active;
    sum->closed += st->closed;
    sum->bytes_in += st->bytes_in;
    sum->bytes_out += st->bytes_out;
    sum->tls_handshakes += st->tls_handshakes;
    sum->tls_failed += st->tls_failed;
    sum->tls_resumed += st->tls_resumed;
    sum->proxy_rejected += st->proxy_rejected;
    sum->rejected_per_ip += st->rejected_per_ip;
    sum->rejected_rate += st->rejected_rate;
}

static listener *current_named(evsd_service *svc, const char *name)
{
    for (size_t i = 0; i < svc->current->n; i++)
        if (strcmp(svc->current->listeners[i].conf->name, name) == 0)
            return &svc->current->listeners[i];
    return NULL;
}

/* A reload: the new listeners carry on the counts of the old ones of their
 * name, whose own servers the retired generation now holds. */
static void carry_freed(generation *old, generation *g)
{
    for (size_t i = 0; i < g->n; i++)
        for (size_t j = 0; j < old->n; j++)
            if (strcmp(old->listeners[j].conf->name, g->listeners[i].conf->name) == 0)
                g->listeners[i].freed = old->listeners[j].freed;
}

/* @g's listeners' `earlier`: their freed predecessors and the retired
 * servers of their names that still have connections. Under view_lock
 * (the admin listener reads `earlier`); it only loads atomic counters. */
static void refresh_earlier(evsd_service *svc, generation *g)
{
    for (size_t i = 0; i < g->n; i++) {
        listener *l = &g->listeners[i];

        l->earlier = l->freed;
        for (generation *r = svc->retired; r; r = r->next)
            for (size_t j = 0; j < r->n; j++) {
                evs_server_stats st;
                if (!r->listeners[j].server ||
                    strcmp(r->listeners[j].conf->name, l->conf->name) != 0)
                    continue;
                evs_server_stats_get(r->listeners[j].server, &st);
                stats_add(&l->earlier, &st);
            }
    }
}

/* Free a retired server once its connections are gone, its final counts
 * going to the current listener of its name. @return 0 if freed. */
static int free_retired_server(evsd_service *svc, listener *r)
{
    evs_server_stats st;
    listener *l;

    /* With no connection left (and none accepted, it is closed), the
     * counts taken now are the final ones. */
    evs_server_stats_get(r->server, &st);
    if (st.active > 0 || evs_server_free(r->server) < 0)
        return -1;
    r->server = NULL;
    if ((l = current_named(svc, r->conf->name)))
        stats_add(&l->freed, &st);
    return 0;
}

int evsd_service_reload(evsd_service *svc, evsd_config *cfg)
{
    generation *old = svc->current, *g;
    size_t i;

    g = generation_new(svc, cfg);
    if (!g)
        return -1;
    match_listeners(old, g);
    /* Everything that can fail comes first, while the old servers still
     * serve: any error leaves the old configuration untouched. */
    for (i = 0; i < g->n; i++) {
        listener *l = &g->listeners[i];
        int rc;

        if (l->prev && is_datagram(l->conf)) {
            /* Datagram sockets are copies of the old ones: nothing is bound
             * again, and a failure leaves the old socket (and file) alone. */
            l->dgram = evsd_datagram_succeed(svc->rt, l->prev->dgram, l->conf,
                                             l->inst->desc->datagram, l->inst->state);
            snprintf(l->address, sizeof l->address, "%s", l->prev->address);
            rc = l->dgram ? 0 : -EADDRINUSE;
        } else if (l->prev) {
            rc = start_successor(svc, l);
        } else {
            rc = start_listener(svc, l, NULL, 0);
        }
        if (rc < 0)
            goto undo;
    }
    /* Nothing fails from here. The old servers let go of the sockets
     * their successors share; nothing is dropped from the accept queues. */
    for (i = 0; i < g->n; i++) {
        listener *l = &g->listeners[i];
        if (l->prev && l->server) {
            evs_server_take_sockets(l->prev->server, NULL, 0);
            adjust_kept_sockets(l);
        }
        if (l->prev && l->dgram)
            evsd_datagram_take_over(l->dgram, l->prev->dgram, l->conf);
    }
    serve_all(svc, g);
    /* Old listeners not carried over stop; all old instances retire when
     * their connections end. */
    for (i = 0; i < old->n; i++)
        evs_server_close(old->listeners[i].server);
    old->next = svc->retired;
    svc->retired = old;
    carry_freed(old, g);
    pthread_mutex_lock(&svc->view_lock);
    /* With the switch, in one section: a scrape must not see the
     * counters fall. */
    refresh_earlier(svc, g);
    svc->current = g;
    pthread_mutex_unlock(&svc->view_lock);
    evsd_service_reap(svc);
    return 0;

undo:
    for (i = 0; i < old->n; i++)
        old->listeners[i].claimed = false;
    for (i = 0; i < g->n; i++)
        discard_server(&g->listeners[i]);
    generation_free(svc, g);
    return -1;
}

void evsd_service_reap(evsd_service *svc)
{
    generation **pp = &svc->retired;

    while (*pp) {
        generation *g = *pp;

        for (size_t i = 0; i < g->n; i++) {
            listener *l = &g->listeners[i];
            /* A server is freed after its last connection and handler
             * (it holds a TLS context, a session cache, a per-address
             * table); only then is its instance surely unused. */
            if (l->server)
                free_retired_server(svc, l);
            if (l->inst && !l->server) {
                evsd_datagram_stop(svc->rt, l->dgram); /* datagrams have no connections */
                l->dgram = NULL;
                retire_instance(svc, l->inst);
                l->inst = NULL;
                g->live--;
            }
        }
        if (g->live == 0) {
            *pp = g->next;
            generation_free(svc, g);
        } else {
            pp = &g->next;
        }
    }
    pthread_mutex_lock(&svc->view_lock);
    refresh_earlier(svc, svc->current);
    pthread_mutex_unlock(&svc->view_lock);
}

void evsd_service_print_addresses(evsd_service *svc, FILE *f, bool human)
{
    for (size_t i = 0; i < svc->current->n; i++) {
        const listener *l = &svc->current->listeners[i];
        if (human)
            fprintf(f, "evstreamd: listening on %s (listener '%s', plugin '%s')\n", l->address,
                    l->conf->name, l->conf->plugin);
        else
            fprintf(f, "%s %s\n", l->conf->name, l->address);
    }
    if (svc->admin_address[0] && !human)
        fprintf(f, "admin %s\n", svc->admin_address);
}

/* --- metrics and status ---------------------------------------------------- */

/* A Prometheus label value: backslash, quote and newline escaped. */
static void label(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

typedef uint64_t (*stat_fn)(const evs_server_stats *st);
#define STAT(field) static uint64_t stat_##field(const evs_server_stats *st) { return st->field; }
STAT(accepted)
STAT(active)
STAT(closed)
STAT(bytes_in)
STAT(bytes_out)
STAT(tls_handshakes)
STAT(tls_failed)
STAT(tls_resumed)
STAT(proxy_rejected)
STAT(rejected_per_ip)
STAT(rejected_rate)
#undef STAT

/* A listener's counts with those of its earlier generations (under
 * view_lock). */
static void listener_totals(const listener *l, evs_server_stats *st)
{
    memset(st, 0, sizeof *st);
    if (l->server)
        evs_server_stats_get(l->server, st);
    stats_add(st, &l->earlier);
}

/* One sample per listener; @extra: more labels (",reason=\"...\""). */
static void listener_samples(FILE *f, generation *g, const char *name, const char *extra,
                             stat_fn get)
{
    for (size_t i = 0; i < g->n; i++) {
        evs_server_stats st;
        if (!g->listeners[i].server)
            continue;
        listener_totals(&g->listeners[i], &st);
        fprintf(f, "%s{listener=\"", name);
        label(f, g->listeners[i].conf->name);
        fprintf(f, "\"%s} %llu\n", extra, (unsigned long long)get(&st));
    }
}

static void listener_family(FILE *f, generation *g, const char *name, const char *type,
                            const char *help, stat_fn get)
{
    family(f, name, type, help);
    listener_samples(f, g, name, "", get);
}

/* Connections ended before their handler ran, one sample per reason. */
static void rejected_family(FILE *f, generation *g)
{
    static const struct {
        const char *reason;
        stat_fn get;
    } reasons[] = {
        {",reason=\"tls_handshake\"", stat_tls_failed},
        {",reason=\"proxy_protocol\"", stat_proxy_rejected},
        {",reason=\"per_ip_limit\"", stat_rejected_per_ip},
        {",reason=\"rate_limit\"", stat_rejected_rate},
    };
    const char *name = "evstream_listener_connections_rejected_total";

    family(f, name, "counter", "Connections ended before the handler ran, by reason.");
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        listener_samples(f, g, name, reasons[i].reason, reasons[i].get);
}

void evsd_service_metrics(evsd_service *svc, FILE *f)
{
    int workers = evs_runtime_worker_count(svc->rt);

    family(f, "evstream_build_info", "gauge", "Version of the running evstreamd.");
    fprintf(f, "evstream_build_info{version=\"");
    label(f, evs_version());
    fprintf(f, "\"} 1\n");
    family(f, "evstream_uptime_seconds", "gauge", "Seconds since evstreamd started.");
    fprintf(f, "evstream_uptime_seconds %.0f\n", difftime(time(NULL), svc->started));

    pthread_mutex_lock(&svc->view_lock);
    generation *g = svc->current;
    listener_family(f, g, "evstream_listener_connections_accepted_total", "counter",
                    "Connections accepted.", stat_accepted);
    listener_family(f, g, "evstream_listener_connections_active", "gauge", "Connections open now.",
                    stat_active);
    listener_family(f, g, "evstream_listener_connections_closed_total", "counter",
                    "Connections closed.", stat_closed);
    rejected_family(f, g);
    listener_family(f, g, "evstream_listener_received_bytes_total", "counter",
                    "Bytes received by closed connections.", stat_bytes_in);
    listener_family(f, g, "evstream_listener_sent_bytes_total", "counter",
                    "Bytes sent by closed connections.", stat_bytes_out);
    listener_family(f, g, "evstream_listener_tls_handshakes_total", "counter",
                    "TLS handshakes that completed.", stat_tls_handshakes);
    listener_family(f, g, "evstream_listener_tls_handshake_failures_total", "counter",
                    "TLS handshakes that failed or timed out.", stat_tls_failed);
    listener_family(f, g, "evstream_listener_tls_resumed_total", "counter",
                    "TLS handshakes that resumed a session.", stat_tls_resumed);
    pthread_mutex_unlock(&svc->view_lock);

    family(f, "evstream_worker_connections_active", "gauge", "Connections open on the worker.");
    for (int i = 0; i < workers; i++) {
        evs_worker_stats ws;
        evs_worker_stats_get(evs_runtime_worker(svc->rt, i), &ws);
        fprintf(f, "evstream_worker_connections_active{worker=\"%d\"} %llu\n", i,
                (unsigned long long)ws.active);
    }
    family(f, "evstream_worker_loop_lag_seconds", "gauge",
           "How late the worker's last 100 ms timer fired.");
    for (int i = 0; i < workers; i++) {
        evs_worker_stats ws;
        evs_worker_stats_get(evs_runtime_worker(svc->rt, i), &ws);
        fprintf(f, "evstream_worker_loop_lag_seconds{worker=\"%d\"} %.6f\n", i,
                (double)ws.loop_lag_us / 1e6);
    }
    family(f, "evstream_worker_tasks", "gauge", "Tasks alive on the worker.");
    for (int i = 0; i < workers; i++) {
        evs_worker_stats ws;
        evs_worker_stats_get(evs_runtime_worker(svc->rt, i), &ws);
        fprintf(f, "evstream_worker_tasks{worker=\"%d\"} %llu\n", i, (unsigned long long)ws.tasks);
    }
}

static void json_string(FILE *f, const char *v)
{
    fputc('"', f);
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void evsd_service_status(evsd_service *svc, FILE *f)
{
    int workers = evs_runtime_worker_count(svc->rt);

    fprintf(f, "{\"version\":");
    json_string(f, evs_version());
    fprintf(f, ",\"uptime_seconds\":%.0f,\"pid\":%ld,\"workers\":[",
            difftime(time(NULL), svc->started), (long)getpid());
    for (int i = 0; i < workers; i++) {
        evs_worker_stats ws;
        evs_worker_stats_get(evs_runtime_worker(svc->rt, i), &ws);
        fprintf(f,
                "%s{\"id\":%d,\"active\":%llu,\"accepted\":%llu,\"closed\":%llu,"
                "\"bytes_in\":%llu,\"bytes_out\":%llu,\"tasks\":%llu,\"loop_lag_ms\":%.3f}",
                i ? "," : "", i, (unsigned long long)ws.active, (unsigned long long)ws.accepted,
                (unsigned long long)ws.closed, (unsigned long long)ws.bytes_in,
                (unsigned long long)ws.bytes_out, (unsigned long long)ws.tasks,
                (double)ws.loop_lag_us / 1e3);
    }
    fprintf(f, "],\"listeners\":[");
    pthread_mutex_lock(&svc->view_lock);
    generation *g = svc->current;
    for (size_t i = 0; i < g->n; i++) {
        const listener *l = &g->listeners[i];
        evs_server_stats st;
        listener_totals(l, &st);
        fprintf(f, "%s{\"name\":", i ? "," : "");
        json_string(f, l->conf->name);
        fprintf(f, ",\"address\":");
        json_string(f, l->address);
        fprintf(f, ",\"plugin\":");
        json_string(f, l->conf->plugin);
        fprintf(f,
                ",\"tls\":%s,\"accepted\":%llu,\"active\":%llu,\"closed\":%llu,"
                "\"bytes_in\":%llu,\"bytes_out\":%llu,\"tls_handshakes\":%llu,"
                "\"tls_failed\":%llu,\"tls_resumed\":%llu,\"proxy_rejected\":%llu,"
                "\"rejected_per_ip\":%llu,\"rejected_rate\":%llu}",
                l->tls ? "true" : "false", (unsigned long long)st.accepted,
                (unsigned long long)st.active, (unsigned long long)st.closed,
                (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                (unsigned long long)st.tls_handshakes, (unsigned long long)st.tls_failed,
                (unsigned long long)st.tls_resumed, (unsigned long long)st.proxy_rejected,
                (unsigned long long)st.rejected_per_ip, (unsigned long long)st.rejected_rate);
    }
    pthread_mutex_unlock(&svc->view_lock);
    fprintf(f, "]}\n");
}

void evsd_service_set_admin(evsd_service *svc, const char *address, evs_server *server)
{
    snprintf(svc->admin_address, sizeof svc->admin_address, "%s", address);
    svc->admin = server;
}

evs_runtime *evsd_service_runtime(evsd_service *svc)
{
    return svc->rt;
}

const evsd_config *evsd_service_config(const evsd_service *svc)
{
    return svc->current ? svc->current->cfg : NULL;
}

const evsd_config *evsd_service_boot_config(const evsd_service *svc)
{
    return svc->boot;
}

static size_t live_connections(evsd_service *svc)
{
    size_t n = 0;

    for (generation *g = svc->current; g; g = g == svc->current ? svc->retired : g->next)
        for (size_t i = 0; i < g->n; i++)
            if (g->listeners[i].server)
                n += evs_server_connections(g->listeners[i].server);
    return n;
}

static double monotonic_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Give the handlers up to @timeout seconds to finish. A second SIGTERM or
 * SIGINT ends the wait at once: an operator who asks again means now.
 * (Both are blocked in every thread; main.c takes them with sigtimedwait.)
 * @return the seconds waited. */
static double wait_for_handlers(evsd_service *svc, double timeout)
{
    double start = monotonic_now(), deadline = start + timeout;
    struct timespec nap = {0, 10 * 1000 * 1000};
    sigset_t stop;
    int sig;

    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    while (live_connections(svc) > 0 && monotonic_now() < deadline) {
        sig = sigtimedwait(&stop, NULL, &nap);
        if (sig == SIGTERM || sig == SIGINT) {
            evs_log(EVS_LOG_WARN, "%s again: not waiting for the handlers any longer",
                    sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
    }
    return monotonic_now() - start;
}

int evsd_service_stop(evsd_service *svc)
{
    double timeout = svc->current ? svc->current->cfg->limits.shutdown_timeout : 0, waited;
    generation *g, *next;

    for (g = svc->current; g; g = g == svc->current ? svc->retired : g->next) {
        for (size_t i = 0; i < g->n; i++) {
            if (g->listeners[i].server)
                evs_server_close(g->listeners[i].server);
            /* Endpoints are closed while their workers still run. */
            evsd_datagram_stop(svc->rt, g->listeners[i].dgram);
            g->listeners[i].dgram = NULL;
        }
    }
    /* Let handlers finish; the runtime aborts what is left. */
    waited = wait_for_handlers(svc, timeout);
    if (live_connections(svc) > 0)
        evs_log(EVS_LOG_WARN, "shutdown: aborting %zu connections still open after %.1fs",
                live_connections(svc), waited);
    evs_runtime_stop(svc->rt, 0);
    /* worker_stop ran in the exit hook; no instance is on a worker now. */
    pthread_mutex_lock(&svc->lock);
    for (instance *in = svc->on_workers; in; in = in->next)
        in->on_workers = false;
    svc->on_workers = NULL;
    pthread_mutex_unlock(&svc->lock);
    svc->rt = NULL;
    for (g = svc->retired; g; g = next) {
        next = g->next;
        generation_free(svc, g);
    }
    generation_free(svc, svc->current);
    evsd_config_free(svc->boot);
    pthread_mutex_destroy(&svc->lock);
    pthread_mutex_destroy(&svc->view_lock);
    free(svc);
    return 0;
}
