/* The load generator for scripts/bench: real OpenSSL mTLS clients on blocking sockets.
 *
 *   loadgen handshake HOST PORT CERT KEY CA THREADS SECONDS [resume|full] [MAX]
 *       full handshake (or TLS 1.3 resumption), 64-byte echo, close; prints connections/s;
 *       stops early after MAX connections
 *   loadgen check HOST PORT CERT KEY CA
 *       one connection; exit 0 if the 64-byte echo came back, 1 if refused
 *   loadgen throughput HOST PORT CERT KEY CA MEBIBYTES
 *       one connection, streams MEBIBYTES through the echo and reads it all back
 *   loadgen idle HOST PORT CERT KEY CA COUNT
 *       opens COUNT connections, prints "ready", holds them until stdin closes
 *   loadgen latency HOST PORT CERT KEY CA ROUNDS   (CERT "plain": plain TCP, for the baseline)
 *       64-byte round trips on one connection; prints p50 and p99 in microseconds
 *
 * The workload matches the issue: ECDSA P-256 certificates, TLS 1.3, AES-128-GCM, P-256 key exchange.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *host;
static int port;
static SSL_CTX *context;
static atomic_long completed, failed, resumed;
static volatile int running = 1;
static int resume_sessions;
static long max_connections;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int tcp_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &address.sin_addr);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_all(SSL *ssl, int fd, char *buffer, int length) {
    int got = 0;
    while (got < length) {
        int n = ssl ? SSL_read(ssl, buffer + got, length - got) : (int)read(fd, buffer + got, length - got);
        if (n <= 0) return -1;
        got += n;
    }
    return 0;
}

/* One connection: handshake, 64-byte echo, close. Returns 0 on success. */
static int exchange(SSL_SESSION **session) {
    int fd = tcp_connect();
    if (fd < 0) return -1;
    SSL *ssl = SSL_new(context);
    SSL_set_fd(ssl, fd);
    if (session && *session) SSL_set_session(ssl, *session);
    char payload[64], echo[64];
    memset(payload, 'w', sizeof payload);
    int ok = SSL_connect(ssl) == 1 && SSL_write(ssl, payload, sizeof payload) == sizeof payload &&
             read_all(ssl, fd, echo, sizeof echo) == 0 && memcmp(payload, echo, sizeof echo) == 0;
    if (ok && SSL_session_reused(ssl)) atomic_fetch_add(&resumed, 1);
    if (ok && session) {
        SSL_SESSION *fresh = SSL_get1_session(ssl);
        if (fresh && SSL_SESSION_is_resumable(fresh)) {
            if (*session) SSL_SESSION_free(*session);
            *session = fresh;
        } else if (fresh) {
            SSL_SESSION_free(fresh);
        }
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return ok ? 0 : -1;
}

static void *handshake_loop(void *unused) {
    (void)unused;
    SSL_SESSION *session = NULL;
    while (running) {
        if (exchange(resume_sessions ? &session : NULL) == 0) {
            if (atomic_fetch_add(&completed, 1) + 1 >= max_connections && max_connections > 0) running = 0;
        } else {
            atomic_fetch_add(&failed, 1);
        }
    }
    if (session) SSL_SESSION_free(session);
    return NULL;
}

static SSL *open_tls(int *fd_out) {
    int fd = tcp_connect();
    if (fd < 0) return NULL;
    SSL *ssl = SSL_new(context);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    *fd_out = fd;
    return ssl;
}

struct stream { SSL *ssl; long long bytes; };

static void *stream_writer(void *argument) {
    struct stream *s = argument;
    static char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    for (long long sent = 0; sent < s->bytes; sent += sizeof chunk)
        if (SSL_write(s->ssl, chunk, sizeof chunk) <= 0) break;
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: see the comment at the top of bench/loadgen.c\n");
        return 2;
    }
    const char *mode = argv[1];
    host = argv[2];
    port = atoi(argv[3]);
    int plain = strcmp(argv[4], "plain") == 0;
    if (!plain) {
        context = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(context, "TLS_AES_128_GCM_SHA256");
        SSL_CTX_set1_groups_list(context, "P-256");
        SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_CLIENT);
        if (SSL_CTX_use_certificate_chain_file(context, argv[4]) != 1 ||
            SSL_CTX_use_PrivateKey_file(context, argv[5], SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_load_verify_locations(context, argv[6], NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 2;
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    }
    if (strcmp(mode, "check") == 0) return exchange(NULL) == 0 ? 0 : 1;
    if (strcmp(mode, "handshake") == 0) {
        int threads = atoi(argv[7]);
        double seconds = argc > 8 ? atof(argv[8]) : 5;
        resume_sessions = argc > 9 && strcmp(argv[9], "resume") == 0;
        max_connections = argc > 10 ? atol(argv[10]) : 0;
        pthread_t workers[256];
        double start = now();
        for (int i = 0; i < threads; i++) pthread_create(&workers[i], NULL, handshake_loop, NULL);
        for (double waited = 0; running && waited < seconds; waited += 0.05) usleep(50000);
        running = 0;
        for (int i = 0; i < threads; i++) pthread_join(workers[i], NULL);
        double elapsed = now() - start;
        printf("connections=%ld failures=%ld resumed=%ld seconds=%.3f rate=%.1f\n", atomic_load(&completed),
               atomic_load(&failed), atomic_load(&resumed), elapsed, atomic_load(&completed) / elapsed);
        return 0;
    }
    if (strcmp(mode, "throughput") == 0) {
        int fd;
        SSL *ssl = open_tls(&fd);
        if (!ssl) return 1;
        struct stream s = {ssl, atoll(argv[7]) * 1024 * 1024};
        pthread_t writer;
        double start = now();
        pthread_create(&writer, NULL, stream_writer, &s);
        static char buffer[65536];
        long long got = 0;
        while (got < s.bytes) {
            int n = SSL_read(ssl, buffer, sizeof buffer);
            if (n <= 0) break;
            got += n;
        }
        pthread_join(writer, NULL);
        double elapsed = now() - start;
        printf("bytes=%lld seconds=%.3f mib_per_s=%.1f\n", got, elapsed, got / elapsed / 1048576);
        return got == s.bytes ? 0 : 1;
    }
    if (strcmp(mode, "idle") == 0) {
        int count = atoi(argv[7]);
        for (int i = 0; i < count; i++) {
            int fd;
            SSL *ssl = open_tls(&fd);
            char byte = 'i';
            if (!ssl || SSL_write(ssl, &byte, 1) != 1 || read_all(ssl, fd, &byte, 1) != 0) {
                fprintf(stderr, "idle: connection %d failed\n", i);
                return 1;
            }
        }
        printf("ready %d\n", count);
        fflush(stdout);
        char line[16];
        while (fgets(line, sizeof line, stdin)) {}
        return 0;
    }
    if (strcmp(mode, "latency") == 0) {
        int rounds = atoi(argv[7]);
        int fd = -1;
        SSL *ssl = plain ? NULL : open_tls(&fd);
        if (plain) fd = tcp_connect();
        if (fd < 0 || (!plain && !ssl)) return 1;
        double *samples = malloc(sizeof(double) * rounds);
        char payload[64], echo[64];
        memset(payload, 'l', sizeof payload);
        for (int i = 0; i < rounds; i++) {
            double start = now();
            if ((ssl ? SSL_write(ssl, payload, 64) : (int)write(fd, payload, 64)) != 64) return 1;
            if (read_all(ssl, fd, echo, 64) != 0) return 1;
            samples[i] = (now() - start) * 1e6;
        }
        qsort(samples, rounds, sizeof(double), compare);
        printf("p50_us=%.1f p99_us=%.1f\n", samples[rounds / 2], samples[rounds * 99 / 100]);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
