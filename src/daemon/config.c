/*
 * config.c - evstreamd's configuration file.
 *
 * libconfig does the syntax and @include; this file expands ${VAR} and
 * ${VAR:-default} in strings, refuses unknown settings (a typo must never
 * pass silently) and range-checks every value. Each problem is reported as
 * "file:line: setting: what was expected", and all of them are collected
 * so the operator fixes the file in one go.
 */
#include "config.h"
#include "config_integers.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef EVSD_PLUGIN_DIR
#define EVSD_PLUGIN_DIR "/usr/local/lib/evstream/plugins"
#endif

typedef struct errlist {
    char *buf;
    size_t len;
    int count;
    const char *dir; /* the config file's directory, for @included file names */
} errlist;

static char *xstrdup(const char *s);
static char *join_path(const char *dir, const char *path);
static char *dir_of(const char *path);

/* The file a setting comes from, as a path that stands on its own: libconfig
 * names an @included file as written, relative to the include directory. */
static char *source_path(const errlist *e, const config_setting_t *s)
{
    const char *file = config_setting_source_file(s);
    return file ? join_path(e->dir, file) : xstrdup("?");
}

static void add_error(errlist *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_error(errlist *e, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    size_t n;
    char *grown;

    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    n = strlen(line);
    grown = realloc(e->buf, e->len + n + 2);
    if (!grown)
        return;
    e->buf = grown;
    memcpy(e->buf + e->len, line, n);
    e->len += n;
    e->buf[e->len++] = '\n';
    e->buf[e->len] = '\0';
    e->count++;
}

/* "listeners[1].limits.idle_timeout" for a setting. */
static void setting_path(const config_setting_t *s, char *buf, size_t len)
{
    char tmp[200];
    const config_setting_t *p = config_setting_parent(s);

    if (!p || config_setting_is_root(s)) {
        snprintf(buf, len, "%s", "(top)");
        return;
    }
    if (config_setting_is_root(p)) {
        snprintf(buf, len, "%s", config_setting_name(s) ? config_setting_name(s) : "?");
        return;
    }
    setting_path(p, tmp, sizeof tmp);
    /* Deep paths are cut; the file and line still point at the spot. */
    if (config_setting_name(s) && config_setting_type(p) == CONFIG_TYPE_GROUP)
        snprintf(buf, len, "%.190s.%.50s", tmp, config_setting_name(s));
    else
        snprintf(buf, len, "%.190s[%d]", tmp, config_setting_index(s) & 0xffff);
}

static void bad(errlist *e, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void bad(errlist *e, const config_setting_t *s, const char *fmt, ...)
{
    char what[768], path[256];
    char *file;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (!s) { /* a caller's bug: still an error, not a crash */
        add_error(e, "configuration: %s", what);
        return;
    }
    file = source_path(e, s);
    setting_path(s, path, sizeof path);
    add_error(e, "%s:%u: %s: %s", file, config_setting_source_line(s), path, what);
    free(file);
}

static char *xstrdup(const char *s)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d) {
        fputs("evstreamd: out of memory\n", stderr);
        abort();
    }
    return d;
}

/* --- ${VAR} expansion -------------------------------------------------- */

/* Expand one string. @return a malloc'd string, or NULL after reporting. */
static char *expand(errlist *e, const config_setting_t *s, const char *in)
{
    size_t cap = strlen(in) + 64, len = 0;
    char *out = malloc(cap);

    if (!out)
        return NULL;
    for (const char *p = in; *p;) {
        const char *val = NULL;
        char name[256];
        size_t vlen;

        if (p[0] == '$' && p[1] == '$') { /* "$$" is a literal '$' */
            val = "$";
            vlen = 1;
            p += 2;
        } else if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            const char *def = NULL;
            size_t nlen;

            if (!end) {
                bad(e, s, "unterminated ${...} in \"%s\"", in);
                free(out);
                return NULL;
            }
            nlen = (size_t)(end - (p + 2));
            const char *colon = memchr(p + 2, ':', nlen);
            if (colon && colon[1] == '-') {
                def = colon + 2;
                nlen = (size_t)(colon - (p + 2));
            }
            if (nlen == 0 || nlen >= sizeof name) {
                bad(e, s, "bad variable name in \"%s\"", in);
                free(out);
                return NULL;
            }
            memcpy(name, p + 2, nlen);
            name[nlen] = '\0';
            for (size_t i = 0; i < nlen; i++) {
                if (!isalnum((unsigned char)name[i]) && name[i] != '_') {
                    bad(e, s, "bad variable name '%s' in \"%s\"", name, in);
                    free(out);
                    return NULL;
                }
            }
            val = getenv(name);
            if (val && *val) {
                vlen = strlen(val);
            } else if (def) {
                val = def;
                vlen = (size_t)(end - def);
            } else {
                bad(e, s, "environment variable %s is not set (use ${%s:-default} for a default)",
                    name, name);
                free(out);
                return NULL;
            }
            p = end + 1;
        } else {
            val = p;
            vlen = 1;
            p++;
        }
        if (len + vlen + 1 > cap) {
            char *grown;
            cap = (len + vlen + 1) * 2;
            grown = realloc(out, cap);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        memcpy(out + len, val, vlen);
        len += vlen;
    }
    out[len] = '\0';
    return out;
}

static void expand_all(errlist *e, config_setting_t *s)
{
    int type = config_setting_type(s);

    if (type == CONFIG_TYPE_STRING) {
        const char *v = config_setting_get_string(s);
        if (v && strchr(v, '$')) {
            char *x = expand(e, s, v);
            if (x) {
                config_setting_set_string(s, x);
                free(x);
            }
        }
        return;
    }
    if (type == CONFIG_TYPE_GROUP || type == CONFIG_TYPE_LIST || type == CONFIG_TYPE_ARRAY) {
        int n = config_setting_length(s);
        for (int i = 0; i < n; i++)
            expand_all(e, config_setting_get_elem(s, (unsigned)i));
    }
}

/* --- typed getters ----------------------------------------------------- */

static bool check_keys(errlist *e, const config_setting_t *group, const char *const *allowed)
{
    bool ok = true;
    int n = config_setting_length(group);

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        bool known = false;
        char list[512] = "";

        for (const char *const *a = allowed; *a; a++) {
            if (name && strcmp(name, *a) == 0)
                known = true;
            if (strlen(list) + strlen(*a) + 3 < sizeof list) {
                if (*list)
                    strcat(list, ", ");
                strcat(list, *a);
            }
        }
        if (!known) {
            bad(e, m, "unknown setting (expected one of: %s)", list);
            ok = false;
        }
    }
    return ok;
}

static bool is_int(const config_setting_t *v)
{
    return config_setting_type(v) == CONFIG_TYPE_INT || config_setting_type(v) == CONFIG_TYPE_INT64;
}

static const char *get_string(errlist *e, const config_setting_t *g, const char *key, bool required)
{
    const config_setting_t *v = config_setting_get_member(g, key);

    if (!v) {
        if (required) {
            char *file = source_path(e, g);
            char path[256];
            setting_path(g, path, sizeof path);
            add_error(e, "%s:%u: %s: missing required setting '%s'", file,
                      config_setting_source_line(g), path, key);
            free(file);
        }
        return NULL;
    }
    if (config_setting_type(v) != CONFIG_TYPE_STRING) {
        bad(e, v, "expected a string");
        return NULL;
    }
    return config_setting_get_string(v);
}

static void get_size(errlist *e, const config_setting_t *g, const char *key, uint64_t min,
                     uint64_t max, uint64_t *out)
{
    const config_setting_t *v = config_setting_get_member(g, key);
    uint64_t n;

    if (!v)
        return;
    if (is_int(v) && config_setting_get_int64(v) >= 0)
        n = (uint64_t)config_setting_get_int64(v);
    else if (config_setting_type(v) != CONFIG_TYPE_STRING ||
             evs_parse_size(config_setting_get_string(v), &n) < 0) {
        bad(e, v, "expected a size: a number of bytes or a string like \"64k\", \"16M\"");
        return;
    }
    if (n < min || n > max) {
        bad(e, v, "%llu is out of range (%llu to %llu)", (unsigned long long)n,
            (unsigned long long)min, (unsigned long long)max);
        return;
    }
    *out = n;
}

/* An integer in [min, max] into @out; false (and @out untouched) when
 * @key is absent or wrong, which was reported. */
static bool get_integer(errlist *e, const config_setting_t *g, const char *key, long long min,
                        long long max, long long *out)
{
    const config_setting_t *v = config_setting_get_member(g, key);
    long long n;

    if (!v)
        return false;
    if (!is_int(v)) {
        bad(e, v, "expected an integer");
        return false;
    }
    n = config_setting_get_int64(v);
    if (n < min || n > max) {
        bad(e, v, "%lld is out of range (%lld to %lld)", n, min, max);
        return false;
    }
    *out = n;
    return true;
}

static void get_count(errlist *e, const config_setting_t *g, const char *key, long long min,
                      long long max, uint64_t *out)
{
    long long n;

    if (get_integer(e, g, key, min, max, &n))
        *out = (uint64_t)n;
}

static void get_duration(errlist *e, const config_setting_t *g, const char *key, double max,
                         double *out)
{
    const config_setting_t *v = config_setting_get_member(g, key);
    double d;

    if (!v)
        return;
    if (is_int(v) && config_setting_get_int64(v) >= 0)
        d = (double)config_setting_get_int64(v);
    else if (config_setting_type(v) == CONFIG_TYPE_FLOAT && config_setting_get_float(v) >= 0)
        d = config_setting_get_float(v);
    else if (config_setting_type(v) != CONFIG_TYPE_STRING ||
             evs_parse_duration(config_setting_get_string(v), &d) < 0) {
        bad(e, v, "expected a duration: seconds or a string like \"30s\", \"500ms\", \"5m\"");
        return;
    }
    if (d > max) {
        bad(e, v, "%g seconds is out of range (at most %g)", d, max);
        return;
    }
    *out = d;
}

static void get_bool(errlist *e, const config_setting_t *g, const char *key, bool *out)
{
    const config_setting_t *v = config_setting_get_member(g, key);

    if (!v)
        return;
    if (config_setting_type(v) != CONFIG_TYPE_BOOL) {
        bad(e, v, "expected true or false");
        return;
    }
    *out = config_setting_get_bool(v);
}

static void get_int(errlist *e, const config_setting_t *g, const char *key, long long min,
                    long long max, int *out)
{
    long long n;

    if (get_integer(e, g, key, min, max, &n))
        *out = (int)n;
}

/* --- sections ---------------------------------------------------------- */

#define MAX_BYTES (UINT64_C(1) << 40)
#define MAX_SECONDS (365.0 * 86400.0)

static const char *const limit_keys[] = {
    "max_connections", "stream_limit", "write_high_water", "write_low_water", "idle_timeout",
    "handshake_timeout", "shutdown_timeout", "stack_size", "first_byte_timeout", "read_timeout",
    "write_timeout", "lifetime", "max_write_buffer", "write_budget", "max_connections_per_ip",
    "connection_rate_per_ip", "connection_burst_per_ip", "reject_message", NULL};

static void get_rate(errlist *e, const config_setting_t *g, const char *key, double *out)
{
    const config_setting_t *v = config_setting_get_member(g, key);
    double d;

    if (!v)
        return;
    if (is_int(v))
        d = (double)config_setting_get_int64(v);
    else if (config_setting_type(v) == CONFIG_TYPE_FLOAT)
        d = config_setting_get_float(v);
    else {
        bad(e, v, "expected a number (connections per second)");
        return;
    }
    if (d < 0 || d > 1e6) {
        bad(e, v, "%g is out of range (0 to 1000000)", d);
        return;
    }
    *out = d;
}

static void read_limits(errlist *e, const config_setting_t *g, evsd_limits *l, bool global)
{
    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { ... }");
        return;
    }
    check_keys(e, g, limit_keys);
    get_count(e, g, "max_connections", 0, 10000000, &l->max_connections);
    get_size(e, g, "stream_limit", 1, MAX_BYTES, &l->stream_limit);
    get_size(e, g, "write_high_water", 1, MAX_BYTES, &l->write_high_water);
    get_size(e, g, "write_low_water", 0, MAX_BYTES, &l->write_low_water);
    get_duration(e, g, "idle_timeout", MAX_SECONDS, &l->idle_timeout);
    get_duration(e, g, "handshake_timeout", MAX_SECONDS, &l->handshake_timeout);
    if (config_setting_get_member(g, "handshake_timeout") && l->handshake_timeout <= 0)
        bad(e, config_setting_get_member(g, "handshake_timeout"),
            "must be more than 0 (a TLS handshake needs time)");
    get_duration(e, g, "first_byte_timeout", MAX_SECONDS, &l->first_byte_timeout);
    get_duration(e, g, "read_timeout", MAX_SECONDS, &l->read_timeout);
    get_duration(e, g, "write_timeout", MAX_SECONDS, &l->write_timeout);
    get_duration(e, g, "lifetime", MAX_SECONDS, &l->lifetime);
    get_size(e, g, "max_write_buffer", 0, MAX_BYTES, &l->max_write_buffer);
    get_count(e, g, "max_connections_per_ip", 0, 10000000, &l->max_connections_per_ip);
    get_rate(e, g, "connection_rate_per_ip", &l->connection_rate_per_ip);
    get_rate(e, g, "connection_burst_per_ip", &l->connection_burst_per_ip);
    /* Only where it is set: an inherited value was judged where it was. */
    if (config_setting_get_member(g, "connection_burst_per_ip") &&
        l->connection_burst_per_ip > 0 && l->connection_burst_per_ip < 1)
        bad(e, config_setting_get_member(g, "connection_burst_per_ip"),
            "must be 0 (one second's worth of connection_rate_per_ip) or at least 1");
    {
        const char *msg = get_string(e, g, "reject_message", false);
        if (msg) {
            if (strlen(msg) > 512)
                bad(e, config_setting_get_member(g, "reject_message"), "longer than 512 bytes");
            free(l->reject_message);
            l->reject_message = xstrdup(msg);
        }
    }
    if (l->max_write_buffer && l->max_write_buffer < l->write_high_water)
        bad(e, g, "max_write_buffer (%llu) is below write_high_water (%llu): drain() could "
                  "never return before the cap",
            (unsigned long long)l->max_write_buffer, (unsigned long long)l->write_high_water);
    if (global) {
        get_duration(e, g, "shutdown_timeout", MAX_SECONDS, &l->shutdown_timeout);
        get_size(e, g, "stack_size", 64 * 1024, 64 * 1024 * 1024, &l->stack_size);
        get_size(e, g, "write_budget", 0, MAX_BYTES, &l->write_budget);
    } else {
        const char *only_global[] = {"shutdown_timeout", "stack_size", "write_budget"};
        for (size_t i = 0; i < 3; i++) {
            const config_setting_t *v = config_setting_get_member(g, only_global[i]);
            if (v)
                bad(e, v, "only valid in the global limits group");
        }
    }
    /* As asyncio: a high mark alone brings its low mark (a quarter). */
    if (config_setting_get_member(g, "write_high_water") &&
        !config_setting_get_member(g, "write_low_water"))
        l->write_low_water = l->write_high_water / 4;
    if (l->write_low_water > l->write_high_water) {
        bad(e, g, "write_low_water (%llu) must not exceed write_high_water (%llu)",
            (unsigned long long)l->write_low_water, (unsigned long long)l->write_high_water);
    }
}

static void read_log(errlist *e, const config_setting_t *g, evsd_config *c)
{
    static const char *const keys[] = {"level", "file", NULL};
    const char *level, *file;

    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { level = ...; file = ...; }");
        return;
    }
    check_keys(e, g, keys);
    level = get_string(e, g, "level", false);
    if (level && evs_log_level_parse(level, &c->log_level) < 0)
        bad(e, config_setting_get_member(g, "level"),
            "expected \"error\", \"warn\", \"info\" or \"debug\"");
    file = get_string(e, g, "file", false);
    if (file) {
        if (!*file)
            bad(e, config_setting_get_member(g, "file"),
                "expected \"stderr\", \"syslog\" or a file path");
        else {
            char *confdir = dir_of(c->path);
            free(c->log_file);
            /* Like every path in the file: relative to its directory. */
            if (strcmp(file, "stderr") == 0 || strcmp(file, "syslog") == 0)
                c->log_file = xstrdup(file);
            else
                c->log_file = join_path(confdir, file);
            free(confdir);
        }
    }
}

static char *dir_of(const char *path)
{
    char *copy = xstrdup(path);
    char *d = xstrdup(dirname(copy));
    free(copy);
    return d;
}

static char *join_path(const char *dir, const char *path)
{
    char *out;

    if (path[0] == '/' || !dir)
        return xstrdup(path);
    out = malloc(strlen(dir) + strlen(path) + 2);
    if (!out)
        abort();
    sprintf(out, "%s/%s", dir, path);
    return out;
}

static void read_plugins(errlist *e, const config_setting_t *list, evsd_config *c)
{
    static const char *const keys[] = {"name", "path", NULL};
    int n;

    if (config_setting_type(list) != CONFIG_TYPE_LIST) {
        bad(e, list, "expected a list ( { name = ...; path = ...; }, ... )");
        return;
    }
    n = config_setting_length(list);
    c->plugins = calloc((size_t)n + 1, sizeof *c->plugins);
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        const char *name, *path;

        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            bad(e, g, "expected a group { name = ...; path = ...; }");
            continue;
        }
        check_keys(e, g, keys);
        name = get_string(e, g, "name", true);
        path = get_string(e, g, "path", true);
        if (!name || !path)
            continue;
        for (size_t j = 0; j < c->nplugins; j++)
            if (strcmp(c->plugins[j].name, name) == 0)
                bad(e, g, "plugin '%s' is declared twice (first at line %d)", name,
                    c->plugins[j].line);
        evsd_plugin_conf *p = &c->plugins[c->nplugins++];
        p->name = xstrdup(name);
        p->path = join_path(c->plugin_dir, path);
        p->file = source_path(e, g);
        p->line = (int)config_setting_source_line(g);
    }
}

static int parse_port(const char *s, uint16_t *out)
{
    char *end;
    long v;

    if (!*s || !isdigit((unsigned char)*s))
        return -1;
    v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* A name is one word of the ports file ("NAME ADDRESS" per line), of log
 * lines and of /status; "admin" is the admin listener's there. */
static void check_listener_name(errlist *e, const config_setting_t *v, const char *name)
{
    if (!*name) {
        bad(e, v, "a listener name cannot be empty");
        return;
    }
    for (const char *p = name; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            bad(e, v, "a listener name cannot hold spaces or control characters: set "
                      "name = \"...\" without them");
            return;
        }
    }
    if (strcmp(name, "admin") == 0)
        bad(e, v, "the name 'admin' is the admin listener's");
}

static bool parse_listen(errlist *e, const config_setting_t *v, const char *text,
                         evsd_listener_conf *l)
{
    const char *colon;
    bool datagram = false;

    if (strncmp(text, "unixgram:", 9) == 0 || strncmp(text, "unix:", 5) == 0) {
        datagram = text[4] == 'g';
        const char *path = text + (datagram ? 9 : 5);
        l->family = datagram ? EVSD_UNIXGRAM : EVSD_UNIX;
        if (!*path || strcmp(path, "@") == 0 || strlen(path) > 107) {
            bad(e, v, "expected \"unix:/path/to.sock\", \"unix:@name\" or \"unixgram:/path\" "
                      "(at most 107 bytes)");
            return false;
        }
        /* A relative path would land wherever the daemon runs (/ with -d). */
        if (path[0] != '/' && path[0] != '@') {
            bad(e, v, "a socket path must be absolute (\"unix:/run/x.sock\") or abstract "
                      "(\"unix:@name\")");
            return false;
        }
        l->path = xstrdup(path);
        return true;
    }
    if (strncmp(text, "udp:", 4) == 0) {
        datagram = true;
        text += 4;
    }
    l->family = datagram ? EVSD_UDP : EVSD_TCP;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || parse_port(close + 2, &l->port) < 0 ||
            close == text + 1) {
            bad(e, v, "expected \"[ipv6-address]:port\" with a port from 0 to 65535");
            return false;
        }
        l->host = strndup(text + 1, (size_t)(close - text - 1));
        return true;
    }
    colon = strrchr(text, ':');
    if (!colon || parse_port(colon + 1, &l->port) < 0 || memchr(text, ':', (size_t)(colon - text))) {
        bad(e, v,
            "expected \"host:port\", \"[v6]:port\", \"unix:/path\" or \"unix:@name\" "
            "with a port from 0 to 65535");
        return false;
    }
    if (colon > text && !(colon == text + 1 && text[0] == '*'))
        l->host = strndup(text, (size_t)(colon - text));
    return true;
}

/* A numeric user or group id. (uid_t)-1 is not one: chown() reads it as
 * "leave unchanged", and a larger number would wrap round to another id. */
static bool numeric_id(const char *text, unsigned long *id)
{
    char *end;

    if (!isdigit((unsigned char)text[0]))
        return false;
    errno = 0;
    *id = strtoul(text, &end, 10);
    return !*end && errno == 0 && *id < (unsigned long)(uid_t)-1 && *id < (unsigned long)(gid_t)-1;
}

static void read_unix_owner(errlist *e, const config_setting_t *g, evsd_listener_conf *l)
{
    const char *mode = get_string(e, g, "mode", false);
    const char *owner = get_string(e, g, "owner", false);
    const char *group = get_string(e, g, "group", false);
    const config_setting_t *v;

    if ((mode || owner || group) && l->family != EVSD_UNIX && l->family != EVSD_UNIXGRAM) {
        v = config_setting_get_member(g, mode ? "mode" : owner ? "owner" : "group");
        bad(e, v, "mode, owner and group apply to unix: listeners only");
        return;
    }
    if ((mode || owner || group) && l->path && l->path[0] == '@') {
        v = config_setting_get_member(g, mode ? "mode" : owner ? "owner" : "group");
        bad(e, v,
            "mode, owner and group do not apply to an abstract socket (%s): it has no file, "
            "and any local user may connect to it",
            l->listen);
        return;
    }
    if (mode) {
        char *end;
        long m = strtol(mode, &end, 8);
        if (!*mode || *end || m < 0 || m > 07777)
            bad(e, config_setting_get_member(g, "mode"), "expected an octal mode like \"0660\"");
        else if (m == 0) /* the library would take 0 for "as created" */
            bad(e, config_setting_get_member(g, "mode"),
                "mode \"%s\" lets no one but root connect; expected an octal mode like \"0660\"",
                mode);
        else {
            l->has_mode = true;
            l->mode = (unsigned)m;
        }
    }
    if (owner) {
        struct passwd *pw = getpwnam(owner);
        unsigned long id;
        if (pw) {
            l->owner = pw->pw_uid;
            l->has_owner = true;
        } else if (numeric_id(owner, &id)) {
            l->owner = (uid_t)id;
            l->has_owner = true;
        } else
            bad(e, config_setting_get_member(g, "owner"),
                "no such user '%s' (a numeric uid is 0 to 4294967294)", owner);
    }
    if (group) {
        struct group *gr = getgrnam(group);
        unsigned long id;
        if (gr) {
            l->group = gr->gr_gid;
            l->has_group = true;
        } else if (numeric_id(group, &id)) {
            l->group = (gid_t)id;
            l->has_group = true;
        } else
            bad(e, config_setting_get_member(g, "group"),
                "no such group '%s' (a numeric gid is 0 to 4294967294)", group);
    }
}

static char *path_setting(errlist *e, const config_setting_t *g, const char *key, bool required,
                          const char *confdir)
{
    const char *v = get_string(e, g, key, required);

    if (v && !*v) {
        bad(e, config_setting_get_member(g, key), "expected a file path, not an empty string");
        return NULL;
    }
    return v ? join_path(confdir, v) : NULL;
}

/* A list (or array) of strings, NULL-terminated. */
static char **string_list(errlist *e, const config_setting_t *g, const char *key, size_t *count)
{
    const config_setting_t *v = config_setting_get_member(g, key);
    char **out;
    int n;

    *count = 0;
    if (!v)
        return NULL;
    if (config_setting_type(v) != CONFIG_TYPE_LIST && config_setting_type(v) != CONFIG_TYPE_ARRAY) {
        bad(e, v, "expected a list of strings like [\"a\", \"b\"]");
        return NULL;
    }
    n = config_setting_length(v);
    out = calloc((size_t)n + 1, sizeof *out);
    for (int i = 0; i < n; i++) {
        const config_setting_t *el = config_setting_get_elem(v, (unsigned)i);
        if (config_setting_type(el) != CONFIG_TYPE_STRING || !*config_setting_get_string(el)) {
            bad(e, el, "expected a non-empty string");
            continue;
        }
        out[(*count)++] = xstrdup(config_setting_get_string(el));
    }
    return out;
}

static void free_strings(char **list)
{
    for (char **p = list; p && *p; p++)
        free(*p);
    free(list);
}

static void read_cert(errlist *e, const config_setting_t *g, const char *confdir, evsd_tls_cert *c)
{
    c->certificate = path_setting(e, g, "certificate", true, confdir);
    c->key = path_setting(e, g, "key", true, confdir);
    c->password_file = path_setting(e, g, "password_file", false, confdir);
}

/* A setting that another one turns off is an error, not ignored: the
 * operator expects it to act (a ca_file that verifies no client). */
static void only_with(errlist *e, const config_setting_t *g, const char *key, const char *needs)
{
    const config_setting_t *v = config_setting_get_member(g, key);

    if (v)
        bad(e, v, "has no effect without %s", needs);
}

/* An SNI name as the matcher (tls.c) reads it: a host name, or "*." and a
 * host name (one leading wildcard label). A pattern it could never match,
 * or one an earlier certificate already serves, is an error: the operator
 * would expect it to pick this certificate. */
static bool sni_name_ok(const char *name)
{
    const char *host = strncmp(name, "*.", 2) == 0 ? name + 2 : name;

    if (!*host || *host == '.' || host[strlen(host) - 1] == '.' || strstr(host, ".."))
        return false;
    for (const char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return true;
}

static void check_sni_names(errlist *e, const config_setting_t *v, const evsd_tls_cert *certs,
                            size_t ncerts)
{
    const evsd_tls_cert *cert = &certs[ncerts - 1];

    for (char **n = cert->names; n && *n; n++) {
        if (!sni_name_ok(*n)) {
            bad(e, v, "'%s' is not a host name or \"*.\" and a host name", *n);
            continue;
        }
        for (size_t i = 1; i < ncerts; i++)
            for (char **m = certs[i].names; m && *m && m != n; m++)
                if (strcasecmp(*m, *n) == 0)
                    bad(e, v, "'%s' is already a name of sni[%zu]", *n, i - 1);
    }
}

static evsd_tls_conf *read_tls(errlist *e, const config_setting_t *g, const evsd_config *c)
{
    static const char *const keys[] = {
        "certificate", "key", "password_file", "sni", "min_protocol", "max_protocol", "ciphers",
        "ciphersuites", "groups", "alpn", "alpn_required", "client_certificates", "ca_file",
        "verify_depth", "session_tickets", "ticket_rotation", NULL};
    static const char *const sni_keys[] = {"names", "certificate", "key", "password_file", NULL};
    evsd_tls_conf *t;
    const config_setting_t *v;
    const char *s;
    char *confdir = dir_of(c->path);

    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { certificate = ...; key = ...; }");
        free(confdir);
        return NULL;
    }
    check_keys(e, g, keys);
    t = calloc(1, sizeof *t);
    v = config_setting_get_member(g, "sni");
    size_t nsni = v && config_setting_type(v) == CONFIG_TYPE_LIST ? (size_t)config_setting_length(v) : 0;
    t->certs = calloc(nsni + 1, sizeof *t->certs);
    t->ncerts = 1;
    read_cert(e, g, confdir, &t->certs[0]);
    if (v && config_setting_type(v) != CONFIG_TYPE_LIST)
        bad(e, v, "expected a list ( { names = [...]; certificate = ...; key = ...; }, ... )");
    for (size_t i = 0; i < nsni; i++) {
        const config_setting_t *el = config_setting_get_elem(v, (unsigned)i);
        evsd_tls_cert *cert = &t->certs[t->ncerts++];
        size_t n;
        if (config_setting_type(el) != CONFIG_TYPE_GROUP) {
            bad(e, el, "expected a group { names = [...]; certificate = ...; key = ...; }");
            continue;
        }
        check_keys(e, el, sni_keys);
        read_cert(e, el, confdir, cert);
        cert->names = string_list(e, el, "names", &n);
        if (n == 0)
            bad(e, el, "an SNI certificate needs names = [\"host.example\", \"*.example.org\"]");
        check_sni_names(e, config_setting_get_member(el, "names"), t->certs, t->ncerts);
    }
    t->min_protocol = xstrdup(get_string(e, g, "min_protocol", false));
    t->max_protocol = xstrdup(get_string(e, g, "max_protocol", false));
    for (int k = 0; k < 2; k++) {
        const char *p = k ? t->max_protocol : t->min_protocol;
        if (p && strcmp(p, "TLSv1.2") != 0 && strcmp(p, "TLSv1.3") != 0)
            bad(e, config_setting_get_member(g, k ? "max_protocol" : "min_protocol"),
                "expected \"TLSv1.2\" or \"TLSv1.3\"");
    }
    t->ciphers = xstrdup(get_string(e, g, "ciphers", false));
    t->ciphersuites = xstrdup(get_string(e, g, "ciphersuites", false));
    t->groups = xstrdup(get_string(e, g, "groups", false));
    t->alpn = string_list(e, g, "alpn", &t->nalpn);
    get_bool(e, g, "alpn_required", &t->alpn_required);
    if (t->alpn_required && t->nalpn == 0)
        bad(e, config_setting_get_member(g, "alpn_required"),
            "alpn_required needs alpn = [\"...\"], the protocols to require");
    if ((s = get_string(e, g, "client_certificates", false))) {
        if (strcmp(s, "none") == 0)
            t->verify_client = EVS_TLS_CLIENT_CERT_NONE;
        else if (strcmp(s, "optional") == 0)
            t->verify_client = EVS_TLS_CLIENT_CERT_OPTIONAL;
        else if (strcmp(s, "require") == 0)
            t->verify_client = EVS_TLS_CLIENT_CERT_REQUIRE;
        else
            bad(e, config_setting_get_member(g, "client_certificates"),
                "expected \"none\", \"optional\" or \"require\"");
    }
    t->ca_file = path_setting(e, g, "ca_file", false, confdir);
    if (t->verify_client != EVS_TLS_CLIENT_CERT_NONE && !t->ca_file)
        bad(e, g, "client_certificates needs ca_file (the CAs that sign client certificates)");
    get_int(e, g, "verify_depth", 1, 100, &t->verify_depth);
    if (t->verify_client == EVS_TLS_CLIENT_CERT_NONE) {
        only_with(e, g, "ca_file", "client_certificates = \"optional\" or \"require\"");
        only_with(e, g, "verify_depth", "client_certificates = \"optional\" or \"require\"");
    }
    t->session_tickets = true;
    get_bool(e, g, "session_tickets", &t->session_tickets);
    get_duration(e, g, "ticket_rotation", MAX_SECONDS, &t->ticket_rotation);
    if (!t->session_tickets)
        only_with(e, g, "ticket_rotation", "session_tickets = true");
    free(confdir);
    return t;
}

static void free_tls(evsd_tls_conf *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ncerts; i++) {
        free(t->certs[i].certificate);
        free(t->certs[i].key);
        free(t->certs[i].password_file);
        free_strings(t->certs[i].names);
    }
    free(t->certs);
    free(t->min_protocol);
    free(t->max_protocol);
    free(t->ciphers);
    free(t->ciphersuites);
    free(t->groups);
    free_strings(t->alpn);
    free(t->ca_file);
    free(t);
}

/* proxy_protocol = { trusted = ["127.0.0.1/32"]; timeout = "5s"; }; */
static void read_proxy_protocol(errlist *e, const config_setting_t *g, evsd_listener_conf *l)
{
    static const char *const keys[] = {"trusted", "timeout", NULL};

    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { trusted = [\"127.0.0.1/32\"]; timeout = \"5s\"; }");
        return;
    }
    check_keys(e, g, keys);
    l->proxy_protocol = true;
    l->proxy_timeout = 5;
    l->proxy_trusted = string_list(e, g, "trusted", &l->nproxy_trusted);
    for (size_t i = 0; i < l->nproxy_trusted; i++) {
        char buf[64];
        const char *slash = strchr(l->proxy_trusted[i], '/');
        size_t n = slash ? (size_t)(slash - l->proxy_trusted[i]) : strlen(l->proxy_trusted[i]);
        unsigned char addr[16];
        char *end;
        long bits = slash ? strtol(slash + 1, &end, 10) : 0;
        snprintf(buf, sizeof buf, "%.*s", (int)(n < 63 ? n : 63), l->proxy_trusted[i]);
        bool v4 = inet_pton(AF_INET, buf, addr) == 1, v6 = inet_pton(AF_INET6, buf, addr) == 1;
        if ((!v4 && !v6) || (slash && (!slash[1] || *end || bits < 0 || bits > (v4 ? 32 : 128))))
            bad(e, config_setting_get_member(g, "trusted"),
                "'%s' is not an address or a network like \"10.0.0.0/8\"", l->proxy_trusted[i]);
    }
    if (l->nproxy_trusted == 0 && l->family == EVSD_TCP)
        bad(e, g, "trusted = [ ... ] is required: the networks of the proxies allowed to "
                  "send PROXY headers");
    get_duration(e, g, "timeout", MAX_SECONDS, &l->proxy_timeout);
    /* No bound would let a silent client hold a connection for good. */
    if (l->proxy_timeout <= 0)
        bad(e, config_setting_get_member(g, "timeout"), "expected a duration above 0");
}

/* access_log = { file = "..."; format = "$time $peer ..."; }; */
static void read_access_log(errlist *e, const config_setting_t *g, const evsd_config *c,
                            evsd_listener_conf *l)
{
    static const char *const keys[] = {"file", "format", NULL};
    char *confdir;
    const char *format;

    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { file = \"access.log\"; format = \"...\"; }");
        return;
    }
    check_keys(e, g, keys);
    confdir = dir_of(c->path);
    l->access_log = path_setting(e, g, "file", true, confdir);
    free(confdir);
    format = get_string(e, g, "format", false);
    if (format) {
        static const char *const vars[] = {"time", "peer", "listener", "duration", "bytes_in",
                                           "bytes_out", "tls_version", "tls_cipher", "reason",
                                           "worker", NULL};
        for (const char *p = strchr(format, '$'); p; p = strchr(p + 1, '$')) {
            bool known = false;
            for (const char *const *v = vars; *v && !known; v++) {
                size_t n = strlen(*v);
                known = strncmp(p + 1, *v, n) == 0 &&
                        !(isalnum((unsigned char)p[1 + n]) || p[1 + n] == '_');
            }
            if (!known) {
                bad(e, config_setting_get_member(g, "format"),
                    "unknown variable at \"%.20s\" (expected $time, $peer, $listener, $duration, "
                    "$bytes_in, $bytes_out, $tls_version, $tls_cipher, $reason, $worker)",
                    p);
                break;
            }
        }
        l->access_log_format = xstrdup(format);
    }
}

static void read_listener(errlist *e, const config_setting_t *g, evsd_config *c,
                          evsd_listener_conf *l)
{
    static const char *const keys[] = {"name", "listen", "plugin", "backlog", "mode", "owner",
                                       "group", "reuseport", "limits", "settings", "tls",
                                       "access_log", "proxy_protocol", NULL};
    const char *listen, *plugin, *name;
    const config_setting_t *v;
    bool found = false;

    l->file = source_path(e, g);
    l->line = (int)config_setting_source_line(g);
    l->limits = c->limits;
    l->limits.reject_message = xstrdup(c->limits.reject_message); /* each its own copy */
    l->backlog = 511;
    check_keys(e, g, keys);
    listen = get_string(e, g, "listen", true);
    plugin = get_string(e, g, "plugin", true);
    name = get_string(e, g, "name", false);
    if (listen) {
        l->listen = xstrdup(listen);
        parse_listen(e, config_setting_get_member(g, "listen"), listen, l);
    }
    l->name = xstrdup(name ? name : listen ? listen : "?");
    check_listener_name(e, config_setting_get_member(g, name ? "name" : "listen"), l->name);
    if (plugin) {
        l->plugin = xstrdup(plugin);
        for (size_t i = 0; i < c->nplugins; i++)
            found = found || strcmp(c->plugins[i].name, plugin) == 0;
        if (!found)
            bad(e, config_setting_get_member(g, "plugin"),
                "no plugin named '%s' in the plugins list", plugin);
    }
    get_int(e, g, "backlog", 1, 65535, &l->backlog);
    get_bool(e, g, "reuseport", &l->reuseport);
    if (l->reuseport && l->family != EVSD_TCP)
        bad(e, config_setting_get_member(g, "reuseport"),
            "reuseport applies to TCP only (udp: listeners always use one socket per worker)");
    read_unix_owner(e, g, l);
    if ((v = config_setting_get_member(g, "limits"))) {
        read_limits(e, v, &l->limits, false);
        l->own_max_connections = config_setting_get_member(v, "max_connections") != NULL;
    }
    if ((v = config_setting_get_member(g, "settings"))) {
        if (config_setting_type(v) != CONFIG_TYPE_GROUP)
            bad(e, v, "expected a group { key = value; ... } for the plugin");
        else
            l->settings = v;
    }
    if ((v = config_setting_get_member(g, "tls")))
        l->tls = read_tls(e, v, c);
    if ((v = config_setting_get_member(g, "access_log")))
        read_access_log(e, v, c, l);
    if (l->family == EVSD_UDP || l->family == EVSD_UNIXGRAM) {
        /* Datagrams have no connections: these make no sense there. */
        static const char *const stream_only[] = {"tls", "proxy_protocol", "access_log",
                                                  "backlog"};
        for (size_t i = 0; i < sizeof stream_only / sizeof stream_only[0]; i++)
            if ((v = config_setting_get_member(g, stream_only[i])))
                bad(e, v, "not for datagram (udp: or unixgram:) listeners");
    }
    if ((v = config_setting_get_member(g, "proxy_protocol")))
        read_proxy_protocol(e, v, l);
}

/* Two listeners on one address: with reuseport (always for udp:, whose
 * workers each bind a socket) both would bind, and the kernel would split
 * the connections or datagrams between two plugins; without it the second
 * would fail at start only. Port 0 is not one address: each gets a port. */
static bool same_address(const evsd_listener_conf *a, const evsd_listener_conf *b)
{
    if (a->family != b->family)
        return false;
    if (a->family == EVSD_UNIX || a->family == EVSD_UNIXGRAM)
        return a->path && b->path && strcmp(a->path, b->path) == 0;
    return a->port != 0 && a->port == b->port &&
           strcmp(a->host ? a->host : "*", b->host ? b->host : "*") == 0;
}

static void read_listeners(errlist *e, const config_setting_t *list, evsd_config *c)
{
    int n;

    if (config_setting_type(list) != CONFIG_TYPE_LIST) {
        bad(e, list, "expected a list ( { listen = ...; plugin = ...; }, ... )");
        return;
    }
    n = config_setting_length(list);
    c->listeners = calloc((size_t)n + 1, sizeof *c->listeners);
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, (unsigned)i);
        evsd_listener_conf *l;

        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            bad(e, g, "expected a group { listen = ...; plugin = ...; }");
            continue;
        }
        l = &c->listeners[c->nlisteners++];
        read_listener(e, g, c, l);
        for (size_t j = 0; j + 1 < c->nlisteners; j++) {
            if (strcmp(c->listeners[j].name, l->name) == 0)
                bad(e, g, "listener '%s' is declared twice (first at line %d)", l->name,
                    c->listeners[j].line);
            else if (same_address(&c->listeners[j], l))
                bad(e, g, "listener '%s': %s is also the address of listener '%s' (line %d)",
                    l->name, l->listen, c->listeners[j].name, c->listeners[j].line);
        }
    }
}

/* user, group, allow_root, umask: checked now, applied by main.c. */
static void read_privileges(errlist *e, const config_setting_t *root, evsd_config *c)
{
    const char *user = get_string(e, root, "user", false);
    const char *group = get_string(e, root, "group", false);
    const char *mask = get_string(e, root, "umask", false);

    if (user) {
        if (!getpwnam(user))
            bad(e, config_setting_get_member(root, "user"), "no such user '%s'", user);
        c->user = xstrdup(user);
    }
    if (group) {
        if (!getgrnam(group))
            bad(e, config_setting_get_member(root, "group"), "no such group '%s'", group);
        c->group = xstrdup(group);
    }
    if (group && !user)
        bad(e, config_setting_get_member(root, "group"), "group needs user as well");
    get_bool(e, root, "allow_root", &c->allow_root);
    if (mask) {
        char *end;
        long m = strtol(mask, &end, 8);
        if (!*mask || *end || m < 0 || m > 0777)
            bad(e, config_setting_get_member(root, "umask"), "expected an octal mask like \"0027\"");
        else {
            c->has_umask = true;
            c->umask_value = (unsigned)m;
        }
    }
}

/* admin = { listen = "127.0.0.1:9100"; mode = "0600"; }: /metrics, /status. */
static void read_admin(errlist *e, const config_setting_t *g, evsd_config *c)
{
    static const char *const keys[] = {"listen", "mode", "owner", "group", NULL};
    evsd_listener_conf *l;
    const char *listen;

    if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
        bad(e, g, "expected a group { listen = \"127.0.0.1:9100\"; }");
        return;
    }
    check_keys(e, g, keys);
    listen = get_string(e, g, "listen", true);
    if (!listen)
        return;
    l = calloc(1, sizeof *l);
    if (!l)
        abort();
    c->admin = l;
    l->file = xstrdup(config_setting_source_file(g));
    l->line = (int)config_setting_source_line(g);
    l->name = xstrdup("admin");
    l->listen = xstrdup(listen);
    l->backlog = 64;
    l->limits = c->limits;
    l->limits.reject_message = xstrdup(c->limits.reject_message); /* each its own copy */
    if (parse_listen(e, config_setting_get_member(g, "listen"), listen, l) &&
        l->family != EVSD_TCP && l->family != EVSD_UNIX)
        bad(e, config_setting_get_member(g, "listen"),
            "the admin listener serves HTTP: expected \"host:port\" or \"unix:/path\"");
    else if (l->family == EVSD_UNIX && l->path[0] == '@')
        bad(e, config_setting_get_member(g, "listen"),
            "the admin listener cannot be an abstract socket: it has no file mode, so any "
            "local user could read /status; expected \"unix:/path\" or \"127.0.0.1:PORT\"");
    read_unix_owner(e, g, l);
}

static void read_top(errlist *e, evsd_config *c)
{
    static const char *const keys[] = {"workers", "dispatch", "log", "limits", "plugin_dir",
                                       "plugins", "listeners", "admin", "user", "group",
                                       "allow_root", "umask", NULL};
    const config_setting_t *root = config_root_setting(&c->cfg);
    const config_setting_t *v;
    const char *s;
    char *confdir = dir_of(c->path);

    check_keys(e, root, keys);
    if ((v = config_setting_get_member(root, "workers"))) {
        if (config_setting_type(v) == CONFIG_TYPE_STRING &&
            strcmp(config_setting_get_string(v), "auto") == 0)
            c->workers = 0;
        else if (is_int(v) && config_setting_get_int64(v) >= 1 &&
                 config_setting_get_int64(v) <= 1024)
            c->workers = (int)config_setting_get_int64(v);
        else
            bad(e, v, "expected \"auto\" or a number of workers from 1 to 1024");
    }
    if ((s = get_string(e, root, "dispatch", false))) {
        if (strcmp(s, "least-connections") == 0)
            c->dispatch = EVS_DISPATCH_LEAST_CONNECTIONS;
        else if (strcmp(s, "round-robin") == 0)
            c->dispatch = EVS_DISPATCH_ROUND_ROBIN;
        else
            bad(e, config_setting_get_member(root, "dispatch"),
                "expected \"least-connections\" or \"round-robin\"");
    }
    if ((v = config_setting_get_member(root, "log")))
        read_log(e, v, c);
    if ((v = config_setting_get_member(root, "limits")))
        read_limits(e, v, &c->limits, true);
    s = get_string(e, root, "plugin_dir", false);
    /* Without plugin_dir: $EVSTREAMD_PLUGIN_DIR, else the install location. */
    if (s)
        c->plugin_dir = join_path(confdir, s);
    else if (getenv("EVSTREAMD_PLUGIN_DIR") && *getenv("EVSTREAMD_PLUGIN_DIR"))
        c->plugin_dir = xstrdup(getenv("EVSTREAMD_PLUGIN_DIR"));
    else
        c->plugin_dir = xstrdup(EVSD_PLUGIN_DIR);
    free(confdir);
    if ((v = config_setting_get_member(root, "plugins")))
        read_plugins(e, v, c);
    if ((v = config_setting_get_member(root, "admin")))
        read_admin(e, v, c);
    read_privileges(e, root, c);
    if ((v = config_setting_get_member(root, "listeners"))) {
        read_listeners(e, v, c);
        if (config_setting_type(v) == CONFIG_TYPE_LIST && c->nlisteners == 0)
            bad(e, v, "no listeners: add at least one { listen = ...; plugin = ...; }");
    } else {
        add_error(e, "%s: no listeners: add a listeners = ( ... ); list", c->path);
    }
}

static void set_defaults(evsd_config *c)
{
    c->workers = 0;
    c->dispatch = EVS_DISPATCH_LEAST_CONNECTIONS;
    c->log_level = EVS_LOG_INFO;
    c->log_file = xstrdup("stderr");
    c->limits.max_connections = 10000;
    c->limits.stream_limit = 64 * 1024;
    c->limits.write_high_water = 64 * 1024;
    c->limits.write_low_water = 16 * 1024;
    c->limits.idle_timeout = 300;
    c->limits.handshake_timeout = 60;
    c->limits.shutdown_timeout = 30;
    c->limits.stack_size = 256 * 1024;
}

/* Why libconfig could not read @path: it leaves errno unreliable (a
 * directory reads as EINVAL), so ask the file system. */
static int why_unreadable(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return errno;
    if (S_ISDIR(st.st_mode))
        return EISDIR;
    return access(path, R_OK) < 0 ? errno : EIO;
}

/* The file named by the @include on line `line` of `file`, or NULL:
 * libconfig 1.5 reports only "cannot open include file". */
static char *included_name(const char *file, int line)
{
    char *buf = NULL, *start, *end, *name = NULL;
    size_t cap = 0;
    FILE *f = fopen(file, "r");
    int n = 0;

    if (!f)
        return NULL;
    while (getline(&buf, &cap, f) > 0 && ++n < line)
        ;
    fclose(f);
    if (n == line && (start = strstr(buf, "@include")) && (start = strchr(start, '"')) &&
        (end = strchr(start + 1, '"'))) {
        *end = '\0';
        name = xstrdup(start + 1);
    }
    free(buf);
    return name;
}

static void syntax_error(errlist *e, config_t *cfg, const char *path, const char *confdir)
{
    const char *at = config_error_file(cfg);
    char *file = join_path(confdir, at ? at : path);
    int line = config_error_line(cfg);
    /* Only this message is about a file it could not open ("include file
     * nesting too deep" says enough as it is). */
    char *name = strstr(config_error_text(cfg), "cannot open include file")
                     ? included_name(file, line)
                     : NULL;

    if (name) {
        char *included = join_path(confdir, name);
        add_error(e, "%s:%d: @include \"%s\": cannot read %s: %s", file, line, name, included,
                  strerror(why_unreadable(included)));
        free(included);
        free(name);
    } else {
        add_error(e, "%s:%d: syntax error: %s", file, line, config_error_text(cfg));
    }
    free(file);
}

static void report_wide_integer(void *arg, const char *file, int line, int len, const char *text)
{
    add_error(arg,
              "%s:%d: %.*s does not fit in 32 bits, and this libconfig would cut it: write "
              "%.*sL (a 64-bit integer)",
              file, line, len, text, len, text);
}

int evsd_config_load(const char *path, evsd_config **out, char **errors)
{
    errlist e = {0};
    evsd_config *c = calloc(1, sizeof *c);
    char *confdir;

    *errors = NULL;
    if (!c)
        return -1;
    config_init(&c->cfg);
    c->path = xstrdup(path);
    set_defaults(c);
    confdir = dir_of(path);
    e.dir = confdir;
    config_set_include_dir(&c->cfg, confdir);
    if (!config_read_file(&c->cfg, path)) {
        if (config_error_type(&c->cfg) == CONFIG_ERR_FILE_IO) {
            add_error(&e, "%s: cannot read: %s", path, strerror(why_unreadable(path)));
        } else {
            syntax_error(&e, &c->cfg, path, confdir);
        }
    } else {
        evsd_check_integer_literals(path, confdir, report_wide_integer, &e);
        expand_all(&e, config_root_setting(&c->cfg));
        if (e.count == 0)
            read_top(&e, c);
    }
    free(confdir);
    if (e.count > 0) {
        *errors = e.buf;
        evsd_config_free(c);
        return -1;
    }
    free(e.buf);
    *out = c;
    return 0;
}

void evsd_config_free(evsd_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nplugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].path);
        free(c->plugins[i].file);
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        evsd_listener_conf *l = &c->listeners[i];
        free(l->name);
        free(l->listen);
        free(l->host);
        free(l->path);
        free(l->plugin);
        free(l->file);
        free_tls(l->tls);
        free(l->access_log);
        free(l->access_log_format);
        free(l->limits.reject_message);
        free_strings(l->proxy_trusted);
    }
    free(c->limits.reject_message);
    free(c->user);
    free(c->group);
    if (c->admin) {
        free(c->admin->limits.reject_message);
        free(c->admin->name);
        free(c->admin->listen);
        free(c->admin->host);
        free(c->admin->path);
        free(c->admin->file);
        free(c->admin);
    }
    free(c->plugins);
    free(c->listeners);
    free(c->plugin_dir);
    free(c->log_file);
    free(c->path);
    config_destroy(&c->cfg);
    free(c);
}

char *evsd_listener_key(const evsd_listener_conf *l)
{
    char buf[512];

    /* The address alone: backlog, reuseport and a Unix socket's mode and
     * owner are applied again to a socket that is handed over. */
    if (l->family == EVSD_UNIX || l->family == EVSD_UNIXGRAM)
        snprintf(buf, sizeof buf, "%s:%s", l->family == EVSD_UNIX ? "unix" : "unixgram", l->path);
    else
        snprintf(buf, sizeof buf, "%s:%s:%u", l->family == EVSD_TCP ? "tcp" : "udp",
                 l->host ? l->host : "*", l->port);
    return xstrdup(buf);
}

/* --- what a reload cannot change ----------------------------------------- */

static bool same_text(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void note_change(char *buf, size_t len, const char *what)
{
    size_t used = strlen(buf);

    if (used < len)
        snprintf(buf + used, len - used, "%s%s", used ? ", " : "", what);
}

/* The admin listener is made once, at start: any of its settings. */
static bool same_admin(const evsd_listener_conf *a, const evsd_listener_conf *b)
{
    if (!a || !b)
        return a == b;
    return same_text(a->listen, b->listen) && a->backlog == b->backlog &&
           a->has_mode == b->has_mode && a->mode == b->mode && a->has_owner == b->has_owner &&
           a->owner == b->owner && a->has_group == b->has_group && a->group == b->group;
}

void evsd_config_restart_only_changes(const evsd_config *old, const evsd_config *new, char *buf,
                                      size_t len)
{
    if (len)
        buf[0] = '\0';
    if (old->workers != new->workers)
        note_change(buf, len, "workers");
    if (old->dispatch != new->dispatch)
        note_change(buf, len, "dispatch");
    if (old->limits.max_connections != new->limits.max_connections)
        note_change(buf, len, "limits.max_connections");
    if (old->limits.stack_size != new->limits.stack_size)
        note_change(buf, len, "limits.stack_size");
    if (old->limits.write_budget != new->limits.write_budget)
        note_change(buf, len, "limits.write_budget");
    if (!same_text(old->user, new->user) || !same_text(old->group, new->group) ||
        old->allow_root != new->allow_root || old->has_umask != new->has_umask ||
        old->umask_value != new->umask_value)
        note_change(buf, len, "user, group, umask or allow_root");
    if (!same_admin(old->admin, new->admin))
        note_change(buf, len, "admin");
}
