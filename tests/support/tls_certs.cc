#include "tls_certs.h"

#include <stdio.h>
#include <string.h>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "helpers.h"

namespace evs_test {

namespace {

struct Made {
    X509 *cert = nullptr;
    EVP_PKEY *key = nullptr;
    ~Made() {
        X509_free(cert);
        EVP_PKEY_free(key);
    }
};

bool add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, nullptr, nullptr, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (!ext) return false;
    bool ok = X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

// A certificate for @cn, signed by @issuer (self-signed when null). @san is
// an OpenSSL subjectAltName value ("DNS:a,IP:1.2.3.4") or null.
bool make_cert(Made *out, const char *cn, const char *san, bool is_ca, const Made *issuer,
               long serial, long from, long until) {
    if (!out->key) out->key = EVP_EC_gen("P-256");  // else made by the caller (RSA)
    out->cert = X509_new();
    if (!out->key || !out->cert) return false;
    X509 *x = out->cert;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), from);
    X509_gmtime_adj(X509_getm_notAfter(x), until);
    X509_set_pubkey(x, out->key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"evstream tests",
                               -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert) : name);
    X509 *icert = issuer ? issuer->cert : nullptr;
    if (is_ca) {
        if (!add_ext(x, icert, NID_basic_constraints, "critical,CA:TRUE") ||
            !add_ext(x, icert, NID_key_usage, "critical,keyCertSign,cRLSign") ||
            !add_ext(x, icert, NID_subject_key_identifier, "hash"))
            return false;
    } else {
        if (!add_ext(x, icert, NID_basic_constraints, "critical,CA:FALSE") ||
            !add_ext(x, icert, NID_key_usage, "critical,digitalSignature") ||
            !add_ext(x, icert, NID_ext_key_usage, "serverAuth,clientAuth") ||
            !add_ext(x, icert, NID_subject_key_identifier, "hash") ||
            !add_ext(x, icert, NID_authority_key_identifier, "keyid:always"))
            return false;
    }
    if (san && !add_ext(x, icert, NID_subject_alt_name, san)) return false;
    return X509_sign(x, issuer ? issuer->key : out->key, EVP_sha256()) > 0;
}

bool write_cert(const std::string &path, X509 *x) {
    FILE *f = fopen(path.c_str(), "w");
    if (!f) return false;
    bool ok = PEM_write_X509(f, x) == 1;
    return fclose(f) == 0 && ok;
}

bool write_key(const std::string &path, EVP_PKEY *k, const char *password = nullptr) {
    FILE *f = fopen(path.c_str(), "w");
    if (!f) return false;
    bool ok = password ? PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(),
                                              (const unsigned char *)password,
                                              (int)strlen(password), nullptr, nullptr) == 1
                       : PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    return fclose(f) == 0 && ok;
}

bool write_text(const std::string &path, const char *text) {
    FILE *f = fopen(path.c_str(), "w");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

// Make one certificate and write it (and its key) as dir/<base>.pem and
// dir/<base>.key. It is valid from @from to @until seconds from now: by
// default from an hour in the past (a clock a little behind does not make it
// "not yet valid") for a week.
bool issue(TlsCerts *c, const char *base, const char *cn, const char *san, bool is_ca,
           const Made *issuer, long serial, Made *made, std::string *cert_path,
           std::string *key_path, long from = -3600, long until = 7L * 24 * 3600) {
    *cert_path = c->dir + "/" + base + ".pem";
    *key_path = c->dir + "/" + base + ".key";
    if (!make_cert(made, cn, san, is_ca, issuer, serial, from, until)) {
        ADD_FAILURE() << "cannot make the certificate " << base;
        return false;
    }
    if (!write_cert(*cert_path, made->cert) || !write_key(*key_path, made->key)) {
        ADD_FAILURE() << "cannot write the certificate " << base;
        return false;
    }
    return true;
}

}  // namespace

bool make_tls_certs(TlsCerts *c) {
    c->dir = make_temp_dir();
    Made ca, server, noip, other, wild, reload, client, wrong_ca, wrong_client, expired, future,
        rsa;
    long serial = 1;
    rsa.key = EVP_RSA_gen(2048);
    if (!issue(c, "ca", "evstream test CA", nullptr, true, nullptr, serial++, &ca, &c->ca,
               &c->ca_key) ||
        !issue(c, "server", "localhost", "DNS:localhost,IP:127.0.0.1", false, &ca, serial++,
               &server, &c->server, &c->server_key) ||
        !issue(c, "server-noip", "localhost", "DNS:localhost", false, &ca, serial++, &noip,
               &c->server_noip, &c->server_noip_key) ||
        !issue(c, "other", "other.test", "DNS:other.test", false, &ca, serial++, &other,
               &c->other, &c->other_key) ||
        !issue(c, "rsa", "rsa.test", "DNS:rsa.test", false, &ca, serial++, &rsa, &c->rsa,
               &c->rsa_key) ||
        !issue(c, "wild", "*.wild.test", "DNS:*.wild.test", false, &ca, serial++, &wild,
               &c->wild, &c->wild_key) ||
        !issue(c, "reload", "reloaded", "DNS:localhost,IP:127.0.0.1", false, &ca, serial++,
               &reload, &c->reload, &c->reload_key) ||
        !issue(c, "client", "client-good", nullptr, false, &ca, serial++, &client, &c->client,
               &c->client_key) ||
        !issue(c, "wrong-ca", "evstream wrong CA", nullptr, true, nullptr, serial++, &wrong_ca,
               &c->wrong_ca, &c->wrong_ca_key) ||
        !issue(c, "wrong-client", "client-wrong", nullptr, false, &wrong_ca, serial++,
               &wrong_client, &c->wrong_client, &c->wrong_client_key) ||
        !issue(c, "expired", "localhost", "DNS:localhost,IP:127.0.0.1", false, &ca, serial++,
               &expired, &c->expired, &c->expired_key, -2 * 24 * 3600L, -3600) ||
        !issue(c, "future", "localhost", "DNS:localhost,IP:127.0.0.1", false, &ca, serial++,
               &future, &c->future, &c->future_key, 24 * 3600L, 7L * 24 * 3600))
        return false;
    c->enc_key = c->dir + "/server-enc.key";
    c->password = c->dir + "/password.txt";
    c->bad_password = c->dir + "/bad-password.txt";
    if (!write_key(c->enc_key, server.key, "s3cret pass") ||
        !write_text(c->password.c_str(), "s3cret pass\n") ||
        !write_text(c->bad_password.c_str(), "not the password\n")) {
        ADD_FAILURE() << "cannot write the encrypted key";
        return false;
    }
    return true;
}

void remove_tls_certs(TlsCerts *c) {
    if (!c->dir.empty()) remove_dir(c->dir);
    c->dir.clear();
}

}  // namespace evs_test
