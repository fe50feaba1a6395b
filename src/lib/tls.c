/*
 * tls.c - TLS contexts: certificates (chosen by SNI), protocol versions,
 * ciphers, ALPN, client certificates, sessions and ticket keys.
 *
 * A context is built completely before use and never changed afterwards;
 * every worker shares it (OpenSSL contexts are thread-safe for that) and
 * each connection holds a reference, so a reload that makes a new context
 * leaves live connections on the old one.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

void evs__tls_error_string(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_get_error();
    char detail[256];

    if (e) {
        ERR_error_string_n(e, detail, sizeof detail);
        /* "error:0A000086:SSL routines::certificate verify failed" -> the reason */
        const char *reason = ERR_reason_error_string(e);
        snprintf(buf, len, "%s", reason ? reason : detail);
    } else {
        snprintf(buf, len, "%s", fallback);
    }
    ERR_clear_error();
}

/* --- loading certificates ---------------------------------------------- */

typedef struct cert_entry {
    X509 *leaf;
    EVP_PKEY *key;
    STACK_OF(X509) *chain;
    char **names;
    size_t nnames;
} cert_entry;

/* What SNI needs at handshake time; hung on the SSL_CTX. */
typedef struct server_extra {
    cert_entry *certs;
    size_t ncerts;
    unsigned char *alpn; /* wire format, server preference */
    size_t alpn_len;
    bool alpn_required;
    /* Session ticket keys: the current one and the one before. */
    pthread_mutex_t ticket_lock;
    struct ticket_key {
        unsigned char name[16];
        unsigned char aes[32];
        unsigned char hmac[32];
        time_t created;
    } keys[2];
    double rotation;
} server_extra;

static int extra_index = -1;
static pthread_once_t extra_once = PTHREAD_ONCE_INIT;

static void free_cert(cert_entry *c)
{
    X509_free(c->leaf);
    EVP_PKEY_free(c->key);
    sk_X509_pop_free(c->chain, X509_free);
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
}

static void free_extra(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    server_extra *x = ptr;

    EVS_UNUSED(parent);
    EVS_UNUSED(ad);
    EVS_UNUSED(idx);
    EVS_UNUSED(argl);
    EVS_UNUSED(argp);
    if (!x)
        return;
    for (size_t i = 0; i < x->ncerts; i++)
        free_cert(&x->certs[i]);
    free(x->certs);
    free(x->alpn);
    pthread_mutex_destroy(&x->ticket_lock);
    OPENSSL_cleanse(x->keys, sizeof x->keys);
    free(x);
}

static void make_extra_index(void)
{
    extra_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_extra);
}

static int fail(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    char detail[256];

    evs__tls_error_string(detail, sizeof detail, "");
    if (err && errlen) {
        int n = snprintf(err, errlen, fmt, a ? a : "", b ? b : "");
        if (*detail && n >= 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - (size_t)n, " (%s)", detail);
    }
    return -EINVAL;
}

static int read_password(const char *file, char *buf, size_t len, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");

    if (!f)
        return fail(err, errlen, "%s: cannot read the password file: %s", file, strerror(errno));
    if (!fgets(buf, (int)len, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

/* A certificate outside its validity still loads: the operator may be
 * about to replace it, and the clock may be the one at fault. But every
 * peer that verifies it will refuse it, so say so when it is loaded. */
static void warn_if_not_valid_now(const char *certfile, const X509 *leaf)
{
    const ASN1_TIME *before = X509_get0_notBefore(leaf), *after = X509_get0_notAfter(leaf);
    const ASN1_TIME *at = NULL;
    const char *what = NULL;
    struct tm tm;
    char when[32] = "?";

    if (X509_cmp_current_time(after) < 0) {
        at = after;
        what = "expired on";
    } else if (X509_cmp_current_time(before) > 0) {
        at = before;
        what = "is not valid before";
    }
    if (!at)
        return;
    if (ASN1_TIME_to_tm(at, &tm) == 1)
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    evs__warn("%s: the certificate %s %s: peers that verify it will refuse it", certfile, what,
              when);
}

static int load_cert(const char *certfile, const char *keyfile, const char *password_file,
                     cert_entry *c, char *err, size_t errlen)
{
    char password[512] = "";
    FILE *f;
    X509 *x;

    if (!certfile || !keyfile)
        return fail(err, errlen, "a certificate needs both a certificate and a key file%s%s", NULL,
                    NULL);
    f = fopen(certfile, "r");
    if (!f)
        return fail(err, errlen, "%s: cannot read the certificate: %s", certfile, strerror(errno));
    c->leaf = PEM_read_X509(f, NULL, NULL, NULL);
    c->chain = sk_X509_new_null();
    while (c->leaf && (x = PEM_read_X509(f, NULL, NULL, NULL)))
        sk_X509_push(c->chain, x);
    fclose(f);
    if (!c->leaf) {
        ERR_clear_error();
        return fail(err, errlen, "%s: no PEM certificate in the file%s", certfile, NULL);
    }
    /* The read that ends the chain leaves "no start line" (the end of the
     * file); anything else is a chain certificate that cannot be read, which
     * must not be dropped silently (clients would get an incomplete chain). */
    unsigned long last = ERR_peek_last_error();
    if (last && !(ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE)) {
        char which[16];
        snprintf(which, sizeof which, "%d", sk_X509_num(c->chain) + 2);
        return fail(err, errlen, "%s: certificate %s in the file (the chain) cannot be read",
                    certfile, which);
    }
    ERR_clear_error();
    if (password_file && read_password(password_file, password, sizeof password, err, errlen) < 0)
        return -EINVAL;
    f = fopen(keyfile, "r");
    if (!f)
        return fail(err, errlen, "%s: cannot read the key: %s", keyfile, strerror(errno));
    c->key = PEM_read_PrivateKey(f, NULL, NULL, password);
    fclose(f);
    OPENSSL_cleanse(password, sizeof password);
    if (!c->key)
        return fail(err, errlen, "%s: cannot load the private key%s",
                    keyfile, password_file ? " (wrong password?)" : " (encrypted? set a password file)");
    if (!X509_check_private_key(c->leaf, c->key))
        return fail(err, errlen, "%s: the key does not match the certificate in %s", keyfile,
                    certfile);
    warn_if_not_valid_now(certfile, c->leaf);
    return 0;
}

/* "*.example.com" matches "a.example.com", not "example.com" or "a.b.example.com". */
static bool name_matches(const char *pattern, const char *name)
{
    if (strncmp(pattern, "*.", 2) == 0) {
        const char *dot = strchr(name, '.');
        return dot && dot != name && strcasecmp(dot + 1, pattern + 2) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

/* Pick the certificate for the client's SNI name: an exact name first, then
 * a wildcard, else the default (already on the context). */
static int cert_cb(SSL *ssl, void *arg)
{
    server_extra *x = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    cert_entry *best = NULL;
    char bare[256];
    size_t len;

    if (!name)
        return 1;
    /* A fully qualified name ("a.example.") names the same host. */
    len = strlen(name);
    if (len > 1 && name[len - 1] == '.' && len <= sizeof bare) {
        memcpy(bare, name, len - 1);
        bare[len - 1] = '\0';
        name = bare;
    }
    for (int pass = 0; pass < 2 && !best; pass++) {
        for (size_t i = 0; i < x->ncerts && !best; i++) {
            for (size_t j = 0; j < x->certs[i].nnames; j++) {
                const char *p = x->certs[i].names[j];
                bool wild = strncmp(p, "*.", 2) == 0;
                if (wild == (pass == 1) && name_matches(p, name)) {
                    best = &x->certs[i];
                    break;
                }
            }
        }
    }
    if (!best || best == &x->certs[0])
        return 1;
    /* The connection starts with the default's certificate in the slot of
     * its key type; left there beside one of another type (RSA beside
     * ECDSA), OpenSSL could still pick it. */
    SSL_certs_clear(ssl);
    return SSL_use_cert_and_key(ssl, best->leaf, best->key, best->chain, 1) == 1 ? 1 : 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    server_extra *x = arg;
    unsigned char *sel;

    EVS_UNUSED(ssl);
    /* The server's list first: our preference wins. */
    if (SSL_select_next_proto(&sel, outlen, x->alpn, (unsigned)x->alpn_len, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    return x->alpn_required ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
}

/* A client that offers no ALPN at all never reaches alpn_select: with
 * ALPN required, refuse its hello here, with the no_application_protocol
 * alert. Otherwise its handshake would complete on its side and the
 * connection would only be dropped afterwards, without a reason. */
static int require_alpn_hello(SSL *ssl, int *alert, void *arg)
{
    const unsigned char *ext;
    size_t len;

    EVS_UNUSED(arg);
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                  &len) == 1)
        return SSL_CLIENT_HELLO_SUCCESS;
    *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
    return SSL_CLIENT_HELLO_ERROR;
}

static int alpn_wire(const char *const *list, size_t n, unsigned char **out, size_t *outlen)
{
    size_t len = 0, off = 0;

    for (size_t i = 0; i < n; i++) {
        size_t l = list[i] ? strlen(list[i]) : 0;
        if (l == 0 || l > 255)
            return -EINVAL;
        len += 1 + l;
    }
    *out = malloc(len ? len : 1);
    if (!*out)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(list[i]);
        (*out)[off++] = (unsigned char)l;
        memcpy(*out + off, list[i], l);
        off += l;
    }
    *outlen = len;
    return 0;
}

static int parse_version(const char *v, int *out)
{
    static const struct {
        const char *name;
        int version;
    } versions[] = {{"TLSv1", TLS1_VERSION},     {"TLSv1.0", TLS1_VERSION},
                    {"TLSv1.1", TLS1_1_VERSION}, {"TLSv1.2", TLS1_2_VERSION},
                    {"TLSv1.3", TLS1_3_VERSION}};

    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        if (strcasecmp(v, versions[i].name) == 0) {
            *out = versions[i].version;
            return 0;
        }
    }
    return -EINVAL;
}

static int set_versions(SSL_CTX *ctx, const char *min, const char *max, char *err, size_t errlen)
{
    int v, vmax;

    if (parse_version(min ? min : "TLSv1.2", &v) < 0)
        return fail(err, errlen, "min_protocol '%s': expected TLSv1.2 or TLSv1.3%s", min, NULL);
    SSL_CTX_set_min_proto_version(ctx, v);
    if (max) {
        if (parse_version(max, &vmax) < 0)
            return fail(err, errlen, "max_protocol '%s': expected TLSv1.2 or TLSv1.3%s", max, NULL);
        /* Every handshake would fail with "no protocols available". */
        if (vmax < v)
            return fail(err, errlen, "max_protocol '%s' is below min_protocol '%s'", max,
                        min ? min : "TLSv1.2");
        SSL_CTX_set_max_proto_version(ctx, vmax);
    }
    return 0;
}

/* --- session tickets ---------------------------------------------------- */

static void new_ticket_key(struct ticket_key *k)
{
    RAND_bytes(k->name, sizeof k->name);
    RAND_bytes(k->aes, sizeof k->aes);
    RAND_bytes(k->hmac, sizeof k->hmac);
    k->created = time(NULL);
}

/* Keys shared by every worker of the listener (one context) and rotated on
 * a schedule; a ticket made with the previous key is still accepted and
 * renewed. */
static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    server_extra *x = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), extra_index);
    struct ticket_key key;
    OSSL_PARAM params[3];
    double age;
    int rc = 1;

    pthread_mutex_lock(&x->ticket_lock);
    age = difftime(time(NULL), x->keys[0].created);
    if (age >= x->rotation) {
        x->keys[1] = x->keys[0];
        new_ticket_key(&x->keys[0]);
        /* Rotation happens here, on a handshake: after a quiet spell of two
         * periods the key just retired is past its time as well. */
        if (age >= 2 * x->rotation)
            new_ticket_key(&x->keys[1]);
    }
    if (enc) {
        key = x->keys[0];
    } else if (memcmp(name, x->keys[0].name, 16) == 0) {
        key = x->keys[0];
        /* TLS 1.3 sends a ticket after a resumption only when asked to
         * renew, and clients use each ticket once (RFC 8446 C.4): without
         * a new one, every other connection would be a full handshake. */
        if (SSL_version(ssl) >= TLS1_3_VERSION)
            rc = 2;
    } else if (memcmp(name, x->keys[1].name, 16) == 0) {
        key = x->keys[1];
        rc = 2; /* valid, but issue a ticket with the current key */
    } else {
        rc = 0;
    }
    pthread_mutex_unlock(&x->ticket_lock);
    if (rc == 0)
        return 0;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof key.hmac);
    params[2] = OSSL_PARAM_construct_end();
    if (enc) {
        memcpy(name, key.name, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) <= 0 ||
            !EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv))
            rc = -1;
    } else if (!EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv)) {
        rc = -1;
    }
    if (rc > 0 && !EVP_MAC_CTX_set_params(hctx, params))
        rc = -1;
    OPENSSL_cleanse(&key, sizeof key);
    return rc;
}

/* --- contexts ------------------------------------------------------------ */

static evs_tls_context *wrap(SSL_CTX *ctx, bool server)
{
    evs_tls_context *c = calloc(1, sizeof *c);

    if (!c)
        return NULL;
    c->ctx = ctx;
    c->server = server;
    atomic_store(&c->refs, 1);
    return c;
}

/* Options that would be ignored: each means the operator expects something
 * (a verified client, a required protocol, rotating keys) that would not
 * happen. */
static int check_server_options(const evs_tls_server_options *o, char *err, size_t errlen)
{
    if (o->alpn_required && o->nalpn == 0)
        return fail(err, errlen, "alpn_required needs alpn protocols to require%s%s", NULL, NULL);
    if (o->verify_client == EVS_TLS_CLIENT_CERT_NONE && (o->ca_file || o->verify_depth))
        return fail(err, errlen,
                    "ca_file and verify_depth apply to client certificates, which are not "
                    "asked for (set client certificates to optional or require)%s%s",
                    NULL, NULL);
    if (o->no_tickets && o->ticket_rotation > 0)
        return fail(err, errlen, "ticket_rotation applies to session tickets, which are off%s%s",
                    NULL, NULL);
    return 0;
}

/* The cipher lists and the protocol range together must leave a suite:
 * "ciphersuites" set to "" with TLS 1.3 only, for one, would fail every
 * handshake. */
static int check_some_cipher(SSL_CTX *ctx, char *err, size_t errlen)
{
    SSL *ssl = SSL_new(ctx);
    STACK_OF(SSL_CIPHER) *usable;
    int n;

    if (!ssl)
        return -ENOMEM;
    usable = SSL_get1_supported_ciphers(ssl);
    n = usable ? sk_SSL_CIPHER_num(usable) : 0;
    sk_SSL_CIPHER_free(usable);
    SSL_free(ssl);
    if (n <= 0)
        return fail(err, errlen,
                    "no cipher suite is usable with the allowed TLS versions (see ciphers, "
                    "ciphersuites, min_protocol and max_protocol)%s%s",
                    NULL, NULL);
    return 0;
}

int evs_tls_server_context_new(const evs_tls_server_options *o, evs_tls_context **out, char *err,
                               size_t errlen)
{
    SSL_CTX *ctx;
    server_extra *x;
    unsigned char sid[32];
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (!o || !out || o->ncertificates == 0 || !o->certificates)
        return fail(err, errlen, "a TLS server needs a certificate and a key%s%s", NULL, NULL);
    ERR_clear_error();
    if ((rc = check_server_options(o, err, errlen)) < 0)
        return rc;
    pthread_once(&extra_once, make_extra_index);
    ctx = SSL_CTX_new(TLS_server_method());
    x = calloc(1, sizeof *x);
    if (!ctx || !x) {
        SSL_CTX_free(ctx);
        free(x);
        return -ENOMEM;
    }
    pthread_mutex_init(&x->ticket_lock, NULL);
    SSL_CTX_set_ex_data(ctx, extra_index, x); /* freed with the context */
    x->certs = calloc(o->ncertificates, sizeof *x->certs);
    if (!x->certs)
        goto nomem;
    for (size_t i = 0; i < o->ncertificates; i++) {
        const evs_tls_certificate *c = &o->certificates[i];
        cert_entry *e = &x->certs[i];

        x->ncerts++;
        if ((rc = load_cert(c->certificate, c->key, c->password_file, e, err, errlen)) < 0)
            goto fail;
        for (const char *const *n = c->names; n && *n; n++) {
            char **grown = realloc(e->names, (e->nnames + 1) * sizeof *grown);
            if (!grown)
                goto nomem;
            e->names = grown;
            /* A NULL name would reach strncmp in every SNI lookup. */
            if (!(e->names[e->nnames] = strdup(*n)))
                goto nomem;
            e->nnames++;
        }
    }
    if (SSL_CTX_use_cert_and_key(ctx, x->certs[0].leaf, x->certs[0].key, x->certs[0].chain, 1) !=
        1) {
        rc = fail(err, errlen, "%s: the certificate cannot be used%s", o->certificates[0].certificate,
                  NULL);
        goto fail;
    }
    if (x->ncerts > 1)
        SSL_CTX_set_cert_cb(ctx, cert_cb, x);

    if ((rc = set_versions(ctx, o->min_protocol, o->max_protocol, err, errlen)) < 0)
        goto fail;
    if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
        rc = fail(err, errlen, "ciphers '%s': no usable cipher%s", o->ciphers, NULL);
        goto fail;
    }
    if (o->ciphersuites && SSL_CTX_set_ciphersuites(ctx, o->ciphersuites) != 1) {
        rc = fail(err, errlen, "ciphersuites '%s': no usable suite%s", o->ciphersuites, NULL);
        goto fail;
    }
    /* No TLS 1.3 suite: OpenSSL would refuse every handshake (none for
     * its highest version), so TLS 1.2 is the highest. */
    if (o->ciphersuites && !o->ciphersuites[0] &&
        (SSL_CTX_get_max_proto_version(ctx) == 0 ||
         SSL_CTX_get_max_proto_version(ctx) > TLS1_2_VERSION))
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if ((rc = check_some_cipher(ctx, err, errlen)) < 0)
        goto fail;
    if (o->groups && SSL_CTX_set1_groups_list(ctx, o->groups) != 1) {
        rc = fail(err, errlen, "groups '%s': unknown group%s", o->groups, NULL);
        goto fail;
    }
    if (o->nalpn > 0) {
        if (alpn_wire(o->alpn, o->nalpn, &x->alpn, &x->alpn_len) < 0) {
            rc = fail(err, errlen, "alpn: protocol names must be 1 to 255 bytes%s%s", NULL, NULL);
            goto fail;
        }
        x->alpn_required = o->alpn_required;
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, x);
        if (o->alpn_required)
            SSL_CTX_set_client_hello_cb(ctx, require_alpn_hello, NULL);
    }
    if (o->verify_client != EVS_TLS_CLIENT_CERT_NONE) {
        STACK_OF(X509_NAME) *names;
        if (!o->ca_file) {
            rc = fail(err, errlen, "client certificates need a ca_file%s%s", NULL, NULL);
            goto fail;
        }
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1 ||
            !(names = SSL_load_client_CA_file(o->ca_file))) {
            rc = fail(err, errlen, "%s: cannot load the CA certificates%s", o->ca_file, NULL);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx,
                           SSL_VERIFY_PEER | (o->verify_client == EVS_TLS_CLIENT_CERT_REQUIRE
                                                  ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                  : 0),
                           NULL);
        if (o->verify_depth > 0)
            SSL_CTX_set_verify_depth(ctx, o->verify_depth);
    }
    /* Always set: resumption with client certificates fails without it. */
    RAND_bytes(sid, sizeof sid);
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (o->no_tickets) {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    } else {
        x->rotation = o->ticket_rotation > 0 ? o->ticket_rotation : 12 * 3600.0;
        new_ticket_key(&x->keys[0]);
        new_ticket_key(&x->keys[1]);
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    }
    /* Idle connections hold no record buffers; busy ones keep theirs
     * (tls_transport.c clears the mode for them). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    *out = wrap(ctx, true);
    if (!*out)
        goto nomem;
    (*out)->alpn_required = o->alpn_required && o->nalpn > 0;
    return 0;

nomem:
    rc = -ENOMEM;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

int evs_tls_client_context_new(const evs_tls_client_options *o, evs_tls_context **out, char *err,
                               size_t errlen)
{
    evs_tls_client_options defaults;
    SSL_CTX *ctx;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    memset(&defaults, 0, sizeof defaults);
    if (!o)
        o = &defaults;
    if (!out)
        return -EINVAL;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return -ENOMEM;
    if ((rc = set_versions(ctx, o->min_protocol, o->max_protocol, err, errlen)) < 0)
        goto fail;
    if (!o->no_verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (o->ca_file ? SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1
                       : SSL_CTX_set_default_verify_paths(ctx) != 1) {
            rc = fail(err, errlen, "%s: cannot load the CA certificates%s",
                      o->ca_file ? o->ca_file : "system store", NULL);
            goto fail;
        }
    }
    if (o->certificate || o->key) {
        cert_entry c;
        memset(&c, 0, sizeof c);
        rc = load_cert(o->certificate, o->key, o->password_file, &c, err, errlen);
        if (rc == 0 && SSL_CTX_use_cert_and_key(ctx, c.leaf, c.key, c.chain, 1) != 1)
            rc = fail(err, errlen, "%s: the certificate cannot be used%s", o->certificate, NULL);
        free_cert(&c);
        if (rc < 0)
            goto fail;
    }
    if (o->nalpn > 0) {
        unsigned char *wire;
        size_t len;
        if (alpn_wire(o->alpn, o->nalpn, &wire, &len) < 0) {
            rc = fail(err, errlen, "alpn: protocol names must be 1 to 255 bytes%s%s", NULL, NULL);
            goto fail;
        }
        SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)len);
        free(wire);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    *out = wrap(ctx, false);
    if (!*out) {
        rc = -ENOMEM;
        goto fail;
    }
    return 0;

fail:
    SSL_CTX_free(ctx);
    return rc;
}

evs_tls_context *evs_tls_context_ref(evs_tls_context *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void evs_tls_context_unref(evs_tls_context *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    SSL_CTX_free(c->ctx);
    free(c);
}

void *evs_tls_context_ssl_ctx(evs_tls_context *c)
{
    return c->ctx;
}
