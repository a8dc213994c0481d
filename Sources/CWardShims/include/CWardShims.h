#ifndef WARD_SHIMS_H
#define WARD_SHIMS_H
#include <stdint.h>
#include <stddef.h>

/* One-line forwarders for OpenSSL macros that Swift cannot import. Nothing else lives here. */
typedef struct ssl_ctx_st SSL_CTX;

int WardShim_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int WardShim_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
long WardShim_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
long WardShim_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
int WardShim_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list);
int WardShim_SSL_get_ex_new_index(void);
void WardShim_OPENSSL_free(void *ptr);
uint64_t WardShim_SSL_OP_NO_RENEGOTIATION(void);
uint64_t WardShim_SSL_OP_NO_COMPRESSION(void);
uint64_t WardShim_SSL_OP_CIPHER_SERVER_PREFERENCE(void);
uint64_t WardShim_SSL_OP_IGNORE_UNEXPECTED_EOF(void);
uint64_t WardShim_SSL_OP_NO_TICKET(void);
void WardShim_SSL_CTX_set_max_cert_list(SSL_CTX *ctx, long size);
#endif
