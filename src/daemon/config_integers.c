/*
 * config_integers.c - integer literals libconfig would read wrong.
 *
 * libconfig before 1.7 (Debian 12 ships 1.5) stores an integer written
 * without an L suffix in 32 bits, silently: max_connections = 4294967296
 * reads as 0 (no limit) and 0xFFFFFFFF as -1. The value that reaches the
 * setting cannot tell, so the file's text is scanned for such literals
 * before the settings are read. Where libconfig itself promotes wide
 * integers to 64 bits, nothing needs scanning.
 */
#include "config_integers.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INCLUDE_DEPTH 10

/* Whether this libconfig keeps an integer over 32 bits, once per process. */
static bool wide_integers_kept(void)
{
    static int kept = -1;
    config_t c;

    if (kept >= 0)
        return kept;
    config_init(&c);
    kept = config_read_string(&c, "x = 4294967296;") == CONFIG_TRUE &&
           config_setting_type(config_lookup(&c, "x")) == CONFIG_TYPE_INT64;
    config_destroy(&c);
    return kept;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (!f)
        return NULL;
    do {
        if (cap - len < 4096) {
            char *grown = realloc(buf, cap + 65536);
            if (!grown) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = grown;
            cap += 65536;
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    fclose(f);
    buf[len] = '\0';
    return buf;
}

typedef struct scan {
    const char *dir; /* where @include names are found */
    evsd_integer_report report;
    void *arg;
    int found;
} scan;

static void scan_file(scan *sc, const char *path, int depth);

static bool name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '*';
}

/* The rest of a float from @p (at its '.', 'e' or 'E'): the fraction's
 * digits and the exponent, which must not be read as integers. */
static const char *skip_float_tail(const char *p)
{
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    if ((*p == 'e' || *p == 'E') &&
        (isdigit((unsigned char)p[1]) ||
         ((p[1] == '+' || p[1] == '-') && isdigit((unsigned char)p[2])))) {
        for (p += 2; isdigit((unsigned char)*p); p++)
            ;
    }
    return p;
}

/* The literal at @p (a sign or a digit, not inside a name): report it when
 * it has no L and does not fit in 32 bits. @return where it ends. */
static const char *check_number(scan *sc, const char *file, int line, const char *p)
{
    const char *start = p, *digits;
    bool hex, negative = *p == '-';
    unsigned long long v;
    char *end;

    if (*p == '-' || *p == '+')
        p++;
    digits = p;
    hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    errno = 0;
    v = strtoull(digits, &end, hex ? 16 : 10);
    if (end == digits)
        return p; /* a lone sign */
    if (!hex && (*end == '.' || *end == 'e' || *end == 'E'))
        return skip_float_tail(end); /* a float: strtod's business, not ours */
    if (*end == 'L')
        return end + 1;
    if (errno == ERANGE || (hex ? v > 0x7fffffffULL
                                : v > (negative ? (unsigned long long)INT_MAX + 1 : INT_MAX))) {
        sc->report(sc->arg, file, line, (int)(end - start), start);
        sc->found++;
    }
    return end;
}

/* An @include line at @p: scan the file it names (relative names from
 * the include directory, as libconfig finds them). */
static void follow_include(scan *sc, const char *p, int depth)
{
    const char *q = p + strlen("@include"), *close;
    char name[8192];
    int len;

    while (*q == ' ' || *q == '\t')
        q++;
    if (*q != '"' || !(close = strchr(q + 1, '"')))
        return; /* libconfig reports it */
    len = (int)(close - q - 1);
    if (q[1] == '/' || !sc->dir)
        snprintf(name, sizeof name, "%.*s", len, q + 1);
    else
        snprintf(name, sizeof name, "%s/%.*s", sc->dir, len, q + 1);
    scan_file(sc, name, depth + 1);
}

static void scan_text(scan *sc, const char *file, const char *text, int depth)
{
    const char *p = text;
    int line = 1;
    bool line_start = true;

    while (*p) {
        char c = *p;

        if (c == '\n') {
            line++;
            line_start = true;
            p++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            p++;
            continue;
        }
        if (c == '#' || (c == '/' && p[1] == '/')) {
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (c == '/' && p[1] == '*') {
            for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
                line += *p == '\n';
            p += *p ? 2 : 0;
            line_start = false;
            continue;
        }
        if (c == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                line += *p == '\n';
            }
            p += *p ? 1 : 0;
            line_start = false;
            continue;
        }
        if (line_start && strncmp(p, "@include", 8) == 0) {
            follow_include(sc, p, depth);
            while (*p && *p != '\n')
                p++;
            continue;
        }
        line_start = false;
        if (name_char(c) && !isdigit((unsigned char)c) && c != '-') {
            while (name_char(*p))
                p++;
            continue;
        }
        if (c == '.' && isdigit((unsigned char)p[1])) { /* a float like .5 */
            p = skip_float_tail(p);
            continue;
        }
        if (isdigit((unsigned char)c) || ((c == '-' || c == '+') && isdigit((unsigned char)p[1]))) {
            p = check_number(sc, file, line, p);
            while (name_char(*p)) /* the rest of a malformed token */
                p++;
            continue;
        }
        p++;
    }
}

static void scan_file(scan *sc, const char *path, int depth)
{
    char *text;

    if (depth > MAX_INCLUDE_DEPTH || !(text = read_all(path)))
        return; /* libconfig reports what it cannot read */
    scan_text(sc, path, text, depth);
    free(text);
}

int evsd_check_integer_literals(const char *path, const char *include_dir,
                                evsd_integer_report report, void *arg)
{
    scan sc = {include_dir, report, arg, 0};

    if (wide_integers_kept())
        return 0;
    scan_file(&sc, path, 0);
    return sc.found;
}
