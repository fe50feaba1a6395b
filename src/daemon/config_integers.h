/*
 * config_integers.h - find integer literals that libconfig before 1.7
 * would silently cut to 32 bits (no L suffix).
 */
#ifndef EVSD_CONFIG_INTEGERS_H
#define EVSD_CONFIG_INTEGERS_H

#include <stdbool.h>

/* Called for each such literal: its file, line, and text (@len bytes). */
typedef void (*evsd_integer_report)(void *arg, const char *file, int line, int len,
                                    const char *text);

/* Scan @path and the files it @includes (relative to @include_dir) when
 * this libconfig cuts wide integers. @return how many were reported. */
int evsd_check_integer_literals(const char *path, const char *include_dir,
                                evsd_integer_report report, void *arg);

#endif
