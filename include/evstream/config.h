/**
 * @file evstream/config.h
 * Typed access to a plugin's settings (a listener's `settings` group in
 * evstreamd.conf) and the value syntax shared with the daemon's config:
 * sizes ("64k", "16M", "1g" or a plain number of bytes) and durations
 * ("250ms", "30s", "5m", "1h", "2d" or a plain number of seconds).
 *
 * Every getter returns 0 and stores the value, -ENOENT when the key is
 * absent (the output is left untouched, so preset it to the default), or
 * -EINVAL when the value has the wrong type or syntax (a message naming
 * the file, line and key is recorded for the daemon to print).
 */
#ifndef EVSTREAM_CONFIG_H
#define EVSTREAM_CONFIG_H

#include <evstream/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A group of settings; owned by the daemon (valid during init). */
typedef struct evs_settings evs_settings;

/** A string, valid only until init returns: copy what you keep. */
EVS_EXTERN int evs_settings_get_string(evs_settings *s, const char *key, const char **out);
EVS_EXTERN int evs_settings_get_int(evs_settings *s, const char *key, int64_t *out);
EVS_EXTERN int evs_settings_get_float(evs_settings *s, const char *key, double *out);
EVS_EXTERN int evs_settings_get_bool(evs_settings *s, const char *key, bool *out);
/** A size: an integer, or a string with a k/m/g suffix (powers of 1024). */
EVS_EXTERN int evs_settings_get_size(evs_settings *s, const char *key, uint64_t *out);
/** A duration in seconds: a number, or a string with ms/s/m/h/d. */
EVS_EXTERN int evs_settings_get_duration(evs_settings *s, const char *key, double *out);
/** Number of elements of a list or array setting (-ENOENT, -EINVAL as above). */
EVS_EXTERN int evs_settings_get_list_size(evs_settings *s, const char *key, size_t *out);
/** Element @p i of a list or array of strings. */
EVS_EXTERN int evs_settings_get_list_string(evs_settings *s, const char *key, size_t i,
                                            const char **out);
/** Number of keys in the group, and the name of key @p i (for plugins that
 *  check for unknown keys). */
EVS_EXTERN size_t evs_settings_count(const evs_settings *s);
EVS_EXTERN const char *evs_settings_key(const evs_settings *s, size_t i);

/**
 * Record why the settings are unacceptable (printf format); the daemon
 * prints it with the file and line of the group and refuses the config.
 * @return -EINVAL, so that `return evs_settings_fail(s, ...)` ends init.
 */
EVS_EXTERN int evs_settings_fail(evs_settings *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** The message recorded by a failing getter or evs_settings_fail(), or NULL. */
EVS_EXTERN const char *evs_settings_error(const evs_settings *s);

struct config_setting_t;

/**
 * Wrap a libconfig group (NULL: no settings, every getter says -ENOENT).
 * The group must outlive the wrapper. Free with evs_settings_free().
 * @return the wrapper, or NULL when out of memory.
 */
EVS_EXTERN evs_settings *evs_settings_from_libconfig(const struct config_setting_t *group);
EVS_EXTERN void evs_settings_free(evs_settings *s);

/** Parse a size ("64k", "1M", "4096"). @return 0 or -EINVAL (also on overflow). */
EVS_EXTERN int evs_parse_size(const char *text, uint64_t *out);
/** Parse a duration ("30s", "250ms", "1.5"). @return 0 or -EINVAL. */
EVS_EXTERN int evs_parse_duration(const char *text, double *out);

#ifdef __cplusplus
}
#endif
#endif
