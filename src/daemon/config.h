/*
 * config.h - evstreamd's configuration file: read it with libconfig,
 * expand ${VAR}, and check every setting.
 */
#ifndef EVSD_CONFIG_H
#define EVSD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <libconfig.h>

#include <evstream.h>

typedef struct evsd_limits {
    uint64_t max_connections;  /* 0 = unlimited */
    uint64_t stream_limit;     /* reader limit */
    uint64_t write_high_water;
    uint64_t write_low_water;
    double idle_timeout;       /* 0 = none */
    double handshake_timeout;  /* TLS listeners */
    double shutdown_timeout;   /* global only */
    uint64_t stack_size;       /* global only */
    double first_byte_timeout; /* 0 = none, as the other timeouts */
    double read_timeout;
    double write_timeout;
    double lifetime;
    uint64_t max_write_buffer;       /* per connection; 0 = no cap */
    uint64_t write_budget;           /* global only: all connections' queued bytes */
    uint64_t max_connections_per_ip; /* 0 = no limit */
    double connection_rate_per_ip;   /* new connections per second; 0 = no limit */
    double connection_burst_per_ip;
    char *reject_message;            /* a line for refused connections, or NULL */
} evsd_limits;

typedef struct evsd_plugin_conf {
    char *name;
    char *path; /* resolved against plugin_dir */
    char *file;
    int line;
} evsd_plugin_conf;

typedef struct evsd_tls_cert {
    char *certificate;
    char *key;
    char *password_file;
    char **names; /* NULL-terminated; NULL for the default certificate */
} evsd_tls_cert;

typedef struct evsd_tls_conf {
    evsd_tls_cert *certs; /* [0] is the default */
    size_t ncerts;
    char *min_protocol;
    char *max_protocol;
    char *ciphers;
    char *ciphersuites;
    char *groups;
    char **alpn;
    size_t nalpn;
    bool alpn_required;
    evs_tls_verify_client verify_client;
    char *ca_file;
    int verify_depth;
    bool session_tickets;
    double ticket_rotation;
} evsd_tls_conf;

typedef enum evsd_family { EVSD_TCP, EVSD_UNIX, EVSD_UDP, EVSD_UNIXGRAM } evsd_family;

typedef struct evsd_listener_conf {
    char *name;   /* the "name" setting, or the listen address */
    char *listen; /* as written (after ${VAR} expansion) */
    evsd_family family;
    char *host;   /* TCP; NULL = every interface */
    uint16_t port;
    char *path;   /* Unix: a path or "@name" */
    int backlog;
    bool has_mode;
    unsigned mode;
    bool has_owner;
    uid_t owner;
    bool has_group;
    gid_t group;
    bool reuseport;
    char *plugin;
    evsd_limits limits;                /* the globals with this listener's overrides */
    bool own_max_connections;          /* limits.max_connections set for this listener */
    const config_setting_t *settings;  /* the plugin's settings group, or NULL */
    evsd_tls_conf *tls;                /* NULL: plaintext */
    char *access_log;                  /* a file, or NULL */
    bool proxy_protocol;               /* PROXY v1/v2 headers from trusted peers */
    char **proxy_trusted;              /* CIDRs, NULL-terminated */
    size_t nproxy_trusted;
    double proxy_timeout;
    char *access_log_format;           /* NULL: the default */
    char *file;
    int line;
} evsd_listener_conf;

typedef struct evsd_config {
    config_t cfg; /* kept: the settings groups point into it */
    char *path;
    int workers;  /* 0 = one per online CPU */
    evs_dispatch dispatch;
    evs_log_level log_level;
    char *log_file; /* "stderr", "syslog" or a path */
    evsd_limits limits;
    char *plugin_dir;
    evsd_plugin_conf *plugins;
    size_t nplugins;
    evsd_listener_conf *listeners;
    size_t nlisteners;
    evsd_listener_conf *admin;         /* the metrics listener, or NULL */
    char *user;                        /* drop to this user after binding */
    char *group;
    bool allow_root;                   /* run as root without user = ... */
    bool has_umask;
    unsigned umask_value;
} evsd_config;

/*
 * Read and check @path. On failure *errors receives every problem found,
 * one "file:line: setting: what was expected" per line (free it).
 * @return 0 or -1.
 */
int evsd_config_load(const char *path, evsd_config **out, char **errors);
void evsd_config_free(evsd_config *c);

/* The settings that differ between @old, the configuration the daemon
 * started with, and @new, which a reload cannot apply (they wait for a
 * restart), as "workers, admin, ..." in @buf; "" when none. A listener's
 * reuseport is judged by the service, which knows its sockets. */
void evsd_config_restart_only_changes(const evsd_config *old, const evsd_config *new, char *buf,
                                      size_t len);

/* The listener's socket identity: two listeners with the same key can hand
 * their socket over on a reload. Returns a malloc'd string. */
char *evsd_listener_key(const evsd_listener_conf *l);

#endif
