/*
 * fuzz_settings.c - libFuzzer target for the size and duration syntax
 * (evs_parse_size, evs_parse_duration) and the typed settings getters
 * (evs_settings_get_*) of src/lib/settings.c.
 *
 * The first byte picks the mode:
 *   even: the rest is one value string, given to both parsers;
 *   odd:  the rest is a libconfig file; its root group is wrapped with
 *         evs_settings_from_libconfig and every key is read with every
 *         getter.
 * Invariants:
 *   - parse_size: on success the value is an integer below 2^64, and its
 *     decimal spelling parses back to the same value; the text never
 *     changes the output on failure;
 *   - parse_duration: on success the value is finite and >= 0 (a duration
 *     of "inf" seconds is as invalid as a negative one), and "%.17g" of it
 *     parses back to the same value;
 *   - getters return 0, -ENOENT or -EINVAL; -EINVAL (and only a failure)
 *     records a message naming the key; -ENOENT for absent keys leaves the
 *     output untouched; get_size / get_duration on a string agree with
 *     the parsers; list getters stay in bounds.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include <evstream.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);      \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_size(const char *text)
{
    uint64_t v = 0xdeadbeefcafef00dULL, again = 0;
    char buf[32];
    int rc = evs_parse_size(text, &v);

    CHECK(rc == 0 || rc == -EINVAL);
    if (rc < 0) {
        CHECK(v == 0xdeadbeefcafef00dULL); /* untouched on failure */
        return;
    }
    CHECK(*text != '\0');
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    CHECK(evs_parse_size(buf, &again) == 0 && again == v);
}

static void check_duration(const char *text)
{
    double v = -1234.5, again = -1;
    char buf[64];
    int rc = evs_parse_duration(text, &v);

    CHECK(rc == 0 || rc == -EINVAL);
    if (rc < 0) {
        CHECK(v == -1234.5);
        return;
    }
    CHECK(*text != '\0');
    CHECK(isfinite(v) && v >= 0);
    snprintf(buf, sizeof buf, "%.17g", v);
    CHECK(evs_parse_duration(buf, &again) == 0 && again == v);
}

/* The message of a failed getter names the key; a getter that succeeds
 * records nothing. Each getter runs on a fresh wrapper (see FRESH) so that
 * an earlier failure does not hide a later one. */
static void check_failed(evs_settings *s, const char *key, int rc)
{
    const char *err = evs_settings_error(s);

    CHECK(rc == -EINVAL);
    CHECK(err != NULL && *err != '\0');
    CHECK(strstr(err, "settings.") != NULL);
    CHECK(strlen(err) < 512);
    (void)key; /* a long key is cut from the message: only its prefix is there */
}

static void check_ok(evs_settings *s)
{
    CHECK(evs_settings_error(s) == NULL);
}

#define FRESH()                                                                               \
    do {                                                                                      \
        evs_settings_free(s);                                                                 \
        s = evs_settings_from_libconfig(root);                                                \
        CHECK(s != NULL);                                                                     \
    } while (0)

static void check_key(const config_setting_t *root, const char *key)
{
    evs_settings *s = NULL;
    const config_setting_t *m = config_setting_get_member(root, key);
    const char *str = NULL;
    int64_t i = 0;
    double d = 0;
    bool b = false;
    uint64_t sz = 0;
    size_t n = 0;
    int rc;

    CHECK(m != NULL);
    FRESH();
    rc = evs_settings_get_string(s, key, &str);
    if (rc == 0) {
        check_ok(s);
        CHECK(config_setting_type(m) == CONFIG_TYPE_STRING && str != NULL);
        check_size(str);
        check_duration(str);
    } else {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_int(s, key, &i);
    if (rc == 0) {
        check_ok(s);
        CHECK(i == config_setting_get_int64(m));
    } else {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_float(s, key, &d);
    if (rc == 0) {
        check_ok(s);
    } else {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_bool(s, key, &b);
    if (rc == 0) {
        check_ok(s);
        CHECK(b == (config_setting_get_bool(m) != 0));
    } else {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_size(s, key, &sz);
    if (rc == 0) {
        check_ok(s);
    }
    if (rc == 0 && config_setting_type(m) == CONFIG_TYPE_STRING) {
        uint64_t p = 0;
        CHECK(evs_parse_size(config_setting_get_string(m), &p) == 0 && p == sz);
    } else if (rc != 0) {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_duration(s, key, &d);
    if (rc == 0) {
        check_ok(s);
        CHECK(isfinite(d) && d >= 0);
        if (config_setting_type(m) == CONFIG_TYPE_STRING) {
            double p = 0;
            CHECK(evs_parse_duration(config_setting_get_string(m), &p) == 0 && p == d);
        }
    } else {
        check_failed(s, key, rc);
    }
    FRESH();
    rc = evs_settings_get_list_size(s, key, &n);
    if (rc == 0) {
        check_ok(s);
        CHECK(n == (size_t)config_setting_length(m));
        for (size_t k = 0; k <= n; k++) {
            rc = evs_settings_get_list_string(s, key, k, &str);
            if (k == n) {
                CHECK(rc == -ENOENT);
            } else if (rc == 0) {
                CHECK(str != NULL);
            } else {
                check_failed(s, key, rc);
                FRESH();
            }
        }
    } else {
        check_failed(s, key, rc);
    }
    evs_settings_free(s);
}

static void check_group(const char *text)
{
    config_t cfg;

    config_init(&cfg);
    if (config_read_string(&cfg, text)) {
        const config_setting_t *root = config_root_setting(&cfg);
        evs_settings *s = evs_settings_from_libconfig(root);
        size_t count;
        uint64_t untouched = 42;

        CHECK(s != NULL);
        CHECK(evs_settings_error(s) == NULL);
        count = evs_settings_count(s);
        CHECK(count == (size_t)config_setting_length(root));
        CHECK(evs_settings_key(s, count) == NULL);
        for (size_t k = 0; k < count; k++) {
            const char *key = evs_settings_key(s, k);
            CHECK(key != NULL);
            check_key(root, key);
        }
        /* An absent key: -ENOENT and the default stays. */
        if (!config_setting_get_member(root, "no_such_key_here")) {
            CHECK(evs_settings_get_size(s, "no_such_key_here", &untouched) == -ENOENT);
            CHECK(untouched == 42);
        }
        evs_settings_free(s);
    }
    config_destroy(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text;

    if (size == 0 || size > 4096) {
        return -1;
    }
    /* NUL-terminated, exact size: the parsers read C strings. */
    text = malloc(size);
    CHECK(text != NULL);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    if (data[0] & 1) {
        check_group(text);
    } else {
        check_size(text);
        check_duration(text);
    }
    free(text);
    return 0;
}
