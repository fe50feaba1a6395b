/*
 * settings.c - typed getters over a libconfig group, and the size and
 * duration syntax shared with the daemon's config file.
 */
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

struct evs_settings {
    const config_setting_t *group;
    char error[512];
    bool failed;
};

evs_settings *evs_settings_from_libconfig(const struct config_setting_t *group)
{
    evs_settings *s = calloc(1, sizeof *s);

    if (s)
        s->group = group;
    return s;
}

void evs_settings_free(evs_settings *s)
{
    free(s);
}

const char *evs_settings_error(const evs_settings *s)
{
    return s && s->failed ? s->error : NULL;
}

/* "file:line: settings: " for messages about the group or a key in it. */
static int where(const evs_settings *s, const config_setting_t *at, char *buf, size_t len)
{
    const config_setting_t *node = at ? at : s->group;
    const char *file = node ? config_setting_source_file(node) : NULL;
    unsigned line = node ? config_setting_source_line(node) : 0;

    return snprintf(buf, len, "%s:%u: ", file ? file : "(settings)", line);
}

static int fail_at(evs_settings *s, const config_setting_t *at, const char *key, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

static int fail_at(evs_settings *s, const config_setting_t *at, const char *key, const char *fmt,
                   ...)
{
    int n = where(s, at, s->error, sizeof s->error);
    va_list ap;

    if (n < 0 || (size_t)n >= sizeof s->error)
        n = 0;
    if (key)
        n += snprintf(s->error + n, sizeof s->error - (size_t)n, "settings.%s: ", key);
    if ((size_t)n < sizeof s->error) {
        va_start(ap, fmt);
        vsnprintf(s->error + n, sizeof s->error - (size_t)n, fmt, ap);
        va_end(ap);
    }
    s->failed = true;
    return -EINVAL;
}

int evs_settings_fail(evs_settings *s, const char *fmt, ...)
{
    char msg[400];
    va_list ap;

    /* As the getters take a NULL group (evs_settings_from_libconfig may
     * give one), a failure on it is still a failure. */
    if (!s)
        return -EINVAL;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail_at(s, NULL, NULL, "%s", msg);
}

static const config_setting_t *member(const evs_settings *s, const char *key)
{
    if (!s || !s->group || !key)
        return NULL;
    return config_setting_get_member(s->group, key);
}

static const char *type_name(const config_setting_t *v)
{
    switch (config_setting_type(v)) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a number";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "something else";
    }
}

static bool is_integer(const config_setting_t *v)
{
    return config_setting_type(v) == CONFIG_TYPE_INT || config_setting_type(v) == CONFIG_TYPE_INT64;
}

int evs_settings_get_string(evs_settings *s, const char *key, const char **out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (config_setting_type(v) != CONFIG_TYPE_STRING)
        return fail_at(s, v, key, "expected a string, got %s", type_name(v));
    *out = config_setting_get_string(v);
    return 0;
}

int evs_settings_get_int(evs_settings *s, const char *key, int64_t *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (!is_integer(v))
        return fail_at(s, v, key, "expected an integer, got %s", type_name(v));
    *out = (int64_t)config_setting_get_int64(v);
    return 0;
}

int evs_settings_get_float(evs_settings *s, const char *key, double *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (config_setting_type(v) == CONFIG_TYPE_FLOAT)
        *out = config_setting_get_float(v);
    else if (is_integer(v))
        *out = (double)config_setting_get_int64(v);
    else
        return fail_at(s, v, key, "expected a number, got %s", type_name(v));
    return 0;
}

int evs_settings_get_bool(evs_settings *s, const char *key, bool *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (config_setting_type(v) != CONFIG_TYPE_BOOL)
        return fail_at(s, v, key, "expected true or false, got %s", type_name(v));
    *out = config_setting_get_bool(v) != 0;
    return 0;
}

int evs_settings_get_size(evs_settings *s, const char *key, uint64_t *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (is_integer(v) && config_setting_get_int64(v) >= 0) {
        *out = (uint64_t)config_setting_get_int64(v);
        return 0;
    }
    if (config_setting_type(v) == CONFIG_TYPE_STRING &&
        evs_parse_size(config_setting_get_string(v), out) == 0)
        return 0;
    return fail_at(s, v, key, "expected a size like 65536 or \"64k\"");
}

int evs_settings_get_duration(evs_settings *s, const char *key, double *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (is_integer(v) && config_setting_get_int64(v) >= 0) {
        *out = (double)config_setting_get_int64(v);
        return 0;
    }
    /* libconfig reads 1e400 as infinity: not a duration. */
    if (config_setting_type(v) == CONFIG_TYPE_FLOAT && isfinite(config_setting_get_float(v)) &&
        config_setting_get_float(v) >= 0) {
        *out = config_setting_get_float(v);
        return 0;
    }
    if (config_setting_type(v) == CONFIG_TYPE_STRING &&
        evs_parse_duration(config_setting_get_string(v), out) == 0)
        return 0;
    return fail_at(s, v, key, "expected a duration like 30 or \"30s\" or \"250ms\"");
}

int evs_settings_get_list_size(evs_settings *s, const char *key, size_t *out)
{
    const config_setting_t *v = member(s, key);

    if (!v)
        return -ENOENT;
    if (config_setting_type(v) != CONFIG_TYPE_LIST && config_setting_type(v) != CONFIG_TYPE_ARRAY)
        return fail_at(s, v, key, "expected a list, got %s", type_name(v));
    *out = (size_t)config_setting_length(v);
    return 0;
}

int evs_settings_get_list_string(evs_settings *s, const char *key, size_t i, const char **out)
{
    const config_setting_t *v = member(s, key);
    const config_setting_t *e;

    if (!v)
        return -ENOENT;
    if (config_setting_type(v) != CONFIG_TYPE_LIST && config_setting_type(v) != CONFIG_TYPE_ARRAY)
        return fail_at(s, v, key, "expected a list, got %s", type_name(v));
    e = i <= UINT_MAX ? config_setting_get_elem(v, (unsigned)i) : NULL;
    if (!e)
        return -ENOENT;
    if (config_setting_type(e) != CONFIG_TYPE_STRING)
        return fail_at(s, e, key, "element %zu: expected a string, got %s", i, type_name(e));
    *out = config_setting_get_string(e);
    return 0;
}

size_t evs_settings_count(const evs_settings *s)
{
    return s && s->group ? (size_t)config_setting_length(s->group) : 0;
}

const char *evs_settings_key(const evs_settings *s, size_t i)
{
    const config_setting_t *e;

    if (!s || !s->group)
        return NULL;
    e = i <= UINT_MAX ? config_setting_get_elem(s->group, (unsigned)i) : NULL;
    return e ? config_setting_name(e) : NULL;
}

/* --- value syntax ------------------------------------------------------ */

int evs_parse_size(const char *text, uint64_t *out)
{
    char *end;
    double v;
    double mult = 1;

    if (!text || !*text)
        return -EINVAL;
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || v < 0 || !isfinite(v))
        return -EINVAL;
    while (*end == ' ')
        end++;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mult = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mult = 1024.0 * 1024.0;
        end++;
        break;
    case 'g':
    case 'G':
        mult = 1024.0 * 1024.0 * 1024.0;
        end++;
        break;
    default:
        return -EINVAL;
    }
    if ((*end == 'b' || *end == 'B') && mult > 1)
        end++; /* "64kb" */
    else if ((*end == 'i') && mult > 1 && (end[1] == 'B' || end[1] == 'b'))
        end += 2; /* "64KiB" */
    if (*end)
        return -EINVAL;
    v *= mult;
    if (v >= 18446744073709551616.0 || v != floor(v))
        return -EINVAL;
    *out = (uint64_t)v;
    return 0;
}

int evs_parse_duration(const char *text, double *out)
{
    char *end;
    double v;

    if (!text || !*text)
        return -EINVAL;
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || v < 0 || !isfinite(v))
        return -EINVAL;
    while (*end == ' ')
        end++;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        ;
    else if (strcmp(end, "ms") == 0)
        v /= 1000.0;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        v *= 60.0;
    else if (strcmp(end, "h") == 0)
        v *= 3600.0;
    else if (strcmp(end, "d") == 0)
        v *= 86400.0;
    else
        return -EINVAL;
    if (!isfinite(v))
        return -EINVAL; /* "1e308d" overflows to infinity */
    *out = v;
    return 0;
}
