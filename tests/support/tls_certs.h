// Test certificates made at test time with the OpenSSL API (P-256 keys but
// for `rsa`, SHA-256 signatures, notBefore an hour in the past but for
// `expired` and `future`), written as PEM files into a fresh temp dir.
// Nothing is checked in, so nothing expires.
#pragma once

#include <string>

namespace evs_test {

struct TlsCerts {
    std::string dir;

    std::string ca;          // CA certificate (trust anchor for servers and clients)
    std::string ca_key;

    std::string server;      // CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    std::string server_key;
    std::string server_noip; // CN=localhost, SAN DNS:localhost only (no IP SAN)
    std::string server_noip_key;
    std::string other;       // CN=other.test, SAN DNS:other.test
    std::string other_key;
    std::string rsa;         // CN=rsa.test, SAN DNS:rsa.test, an RSA 2048 key
    std::string rsa_key;
    std::string wild;        // CN=*.wild.test, SAN DNS:*.wild.test
    std::string wild_key;
    std::string reload;      // CN=reloaded, SAN DNS:localhost, IP:127.0.0.1
    std::string reload_key;

    std::string client;      // CN=client-good, signed by the CA
    std::string client_key;

    std::string wrong_ca;    // an unrelated CA
    std::string wrong_ca_key;
    std::string wrong_client; // CN=client-wrong, signed by wrong_ca
    std::string wrong_client_key;

    std::string expired;     // as server, but its validity ended an hour ago
    std::string expired_key;
    std::string future;      // as server, but valid only from tomorrow
    std::string future_key;

    std::string enc_key;       // the server key, encrypted (AES-256-CBC)
    std::string password;      // file: the right password
    std::string bad_password;  // file: a wrong one
};

// Make every certificate into a new temp dir; false (with a gtest failure)
// when OpenSSL refuses something.
bool make_tls_certs(TlsCerts *out);
// Remove the temp dir.
void remove_tls_certs(TlsCerts *certs);

}  // namespace evs_test
