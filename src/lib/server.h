/*
 * server.h - servers and the runtime's acceptor (internal).
 */
#ifndef EVS_SERVER_INTERNAL_H
#define EVS_SERVER_INTERNAL_H

#include "internal.h"

#include <pthread.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "worker.h"

/* A trusted network for the PROXY protocol. */
typedef struct evs__cidr {
    int family;
    int bits;
    uint8_t addr[16];
} evs__cidr;

/* A pause at a connection limit, logged at most once a second with how many
 * pauses the line stands for: under churn a limit is reached and left again
 * thousands of times a second (acceptor.c). Lock-free: the acceptor and
 * workers accepting on their own sockets pause at the same limit. */
typedef struct evs__pause_log {
    _Atomic unsigned long pauses; /* since the last line */
    _Atomic uint64_t last_ms;     /* monotonic time of the last line; 0: none yet */
} evs__pause_log;

/* What a server's own limits are counted in: its max_connections and the
 * per-address table. A reload successor (opts.predecessor) shares its
 * predecessor's, so connections still open on an older generation count
 * against the new one (iplimit.c). */
typedef struct evs__limits {
    _Atomic size_t refs;
    _Atomic size_t conns; /* live connections of every generation */
    _Atomic bool paused;  /* a generation stopped at its max_connections */
    pthread_mutex_t lock; /* the table and the refusal log */
    struct ip_entry **table;
    uint64_t mult;  /* the table's random odd multiplier, set with it */
    size_t sweep;   /* the table's next bucket to sweep */
    double rate;    /* the newest generation's connection_rate_per_ip */
    double burst;   /* and its bucket size */
    unsigned long rejects_unlogged;
    double last_reject_log;
} evs__limits;

/* One listening socket. Its event lives on the base of the thread that
 * accepts from it: the acceptor's, or with reuse_port one worker's (each
 * worker then accepts on its own SO_REUSEPORT socket, with no hand-off).
 * Only that thread touches the event; fd changes are made under rt->lock. */
typedef struct evs__listener {
    struct evs_server *server;
    int fd;
    evs_worker *owner; /* NULL: the acceptor */
    struct event ev;
    bool ev_assigned; /* set by the owner once it watches the socket */
    bool ev_added;
} evs__listener;

struct evs_server {
    evs_runtime *rt;
    evs_server_options opts; /* strings below are the server's copies */
    char *path;
    dev_t path_dev;
    ino_t path_ino;
    evs__listener *listeners;
    size_t nlisteners;
    uint16_t port;

    _Atomic bool serving;
    _Atomic bool closed;
    _Atomic size_t conns;      /* this server's own live connections */
    _Atomic size_t handlers;   /* stream handlers spawned and not returned */
    evs__limits *limits;       /* what opts.max_connections and the per-address limits count */
    evs__pause_log limit_log;
    _Atomic uint64_t accepted;
    _Atomic uint64_t closed_count;
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t tls_handshakes;
    _Atomic uint64_t tls_failed;
    _Atomic uint64_t tls_resumed;
    _Atomic uint64_t proxy_rejected;
    char *reject_message; /* the server's copy */
    evs__cidr *trusted; /* PROXY protocol peers */
    size_t ntrusted;
    _Atomic uint64_t rejected_per_ip;
    _Atomic uint64_t rejected_rate;
    bool keep_path;            /* sockets handed over: leave the file */

    evs_server *next; /* the runtime's list, under rt->lock; only the
                         acceptor removes from it (evs_server_free) */
};

struct evs_runtime {
    evs_runtime_options opts;
    int nworkers;
    evs_worker *workers;
    evs_worker acceptor; /* its base, inbox and thread; runs no tasks */
    evs_dispatch dispatch;
    unsigned rr;
    size_t max_connections;

    _Atomic size_t conns;         /* live connections of every server */
    _Atomic bool limit_paused;    /* acceptor stopped at max_connections */
    evs__pause_log limit_log;
    _Atomic bool fd_paused;       /* accepting stopped by EMFILE */
    struct event retry_ev;        /* re-enables accepting after EMFILE */
    double retry_delay;           /* acceptor thread */
    _Atomic bool worker_accepted; /* a worker's own socket accepted since the last back-off step */

    pthread_mutex_t lock;
    evs_server *servers;
    _Atomic bool stopping;

    /* The workers run worker_started only once every thread exists: a
     * hook may evs_worker_call another worker, which would wait for ever
     * on one whose thread is not there yet, or never will be. */
    pthread_mutex_t start_lock;
    pthread_cond_t start_cond;
    int threads_state; /* 0 being created, 1 all created, -1 one failed */
};

int evs__unix_address(const char *path, struct sockaddr_un *sun, socklen_t *len);

/* A server's limits (iplimit.c): fresh, or another server's shared. */
evs__limits *evs__limits_new(void);
evs__limits *evs__limits_ref(evs__limits *lim);
void evs__limits_unref(evs__limits *lim);
void evs__limits_set_rate(evs__limits *lim, double rate, double burst);

/* Per-address limits (iplimit.c). */
bool evs__iplimit_enabled(const evs_server *s);
bool evs__ip_key(const struct sockaddr_storage *peer, uint64_t *key);
/* @return 0 (admitted, counted), -EMFILE (too many from it) or -EAGAIN (rate). */
int evs__iplimit_admit(evs_server *s, uint64_t key);
void evs__iplimit_release(evs_server *s, uint64_t key);
void evs__iplimit_reject(evs_server *s, int fd, int why, const struct sockaddr_storage *peer,
                         socklen_t plen);
void evs__iplimit_reject_transport(evs_server *s, evs_transport *t, int why,
                                   const struct sockaddr_storage *peer, socklen_t plen);
/* How many addresses the table holds (tests). */
size_t evs__iplimit_entries(evs_server *s);

/* PROXY protocol (proxy_stage.c). */
int evs__cidr_parse(const char *text, evs__cidr *out);
bool evs__proxy_trusted(const evs_server *s, const struct sockaddr_storage *peer);
/* Put the header-reading stage in front of the transport's protocol. */
int evs__proxy_stage_install(evs_server *s, evs_transport *t);

/* Acceptor thread (acceptor.c). */
void evs__acceptor_add(evs_worker *acceptor, void *server);
void evs__acceptor_serve(evs_worker *acceptor, void *server);
void evs__acceptor_remove(evs_worker *acceptor, void *server);
void evs__acceptor_resume(evs_worker *acceptor, void *unused);
void evs__acceptor_stop(evs_worker *acceptor, void *unused);
/* On a listener's owner: stop watching it and close its socket. */
void evs__listener_close(evs_worker *owner, void *listener);
/* Set up the acceptor's retry timer (runtime.c, before its thread starts). */
void evs__acceptor_init(evs_runtime *rt);
/* Worker side: take over an accepted connection (@m stays the caller's). */
void evs__server_take(evs_worker *w, const evs__msg *m);
/* Worker side: a server connection ended. */
void evs__connection_closed(evs_server *s, evs_worker *w);
/* Free a closed server (runtime stop). */
void evs__server_free(evs_server *s);

#endif
