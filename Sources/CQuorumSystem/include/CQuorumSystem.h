// The few Linux system interfaces that Swift's Glibc module does not export (epoll, eventfd, accept4),
// plus small wrappers so Swift never touches packed kernel structures or variadic functions directly.
#ifndef CQUORUM_SYSTEM_H
#define CQUORUM_SYSTEM_H


#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/// Readiness bits, as plain integers.
static const uint32_t CQ_EPOLLIN = EPOLLIN;
static const uint32_t CQ_EPOLLOUT = EPOLLOUT;
static const uint32_t CQ_EPOLLERR = EPOLLERR;
static const uint32_t CQ_EPOLLHUP = EPOLLHUP;
static const uint32_t CQ_EPOLLRDHUP = EPOLLRDHUP;

/// A close-on-exec epoll instance.
static inline int cq_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

/// Adds (op 1), modifies (op 3) or removes (op 2) `fd` with the interest `events` and the token `token`.
static inline int cq_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
  struct epoll_event event;
  memset(&event, 0, sizeof event);
  event.events = events;
  event.data.u64 = token;
  int kernelOp = op == 1 ? EPOLL_CTL_ADD : (op == 2 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD);
  return epoll_ctl(epfd, kernelOp, fd, &event);
}

/// Waits for at most `max` (up to 256) events; writes their tokens and readiness bits to the two arrays.
static inline int cq_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeoutMillis) {
  struct epoll_event buffer[256];
  if (max > 256) max = 256;
  int n = epoll_wait(epfd, buffer, max, timeoutMillis);
  for (int i = 0; i < n; i++) {
    tokens[i] = buffer[i].data.u64;
    events[i] = buffer[i].events;
  }
  return n;
}

/// A non-blocking, close-on-exec eventfd.
static inline int cq_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

// accept4 is declared by <sys/socket.h> only under _GNU_SOURCE, which would change the definitions of
// system types and clash with Swift's Glibc module; declare it directly instead.
extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// Accepts a connection as a non-blocking, close-on-exec socket.
static inline int cq_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

/// A non-blocking, close-on-exec TCP socket of `family` (AF_INET or AF_INET6).
static inline int cq_tcp_socket(int family) {
  return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
}

/// A blocking TCP socket of `family`, for baselines and tests.
static inline int cq_blocking_tcp_socket(int family) { return socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP); }

/// Sets an integer socket option.
static inline int cq_setsockopt_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

/// Reads an integer socket option (for example SO_ERROR); returns -1 on failure.
static inline int cq_getsockopt_int(int fd, int level, int name, int *value) {
  socklen_t length = sizeof *value;
  return getsockopt(fd, level, name, value, &length);
}

/// Sets TCP_NODELAY, SO_KEEPALIVE with the given idle/interval/count (seconds, seconds, probes).
static inline int cq_tune_tcp(int fd, int keepaliveIdle, int keepaliveInterval, int keepaliveCount) {
  if (cq_setsockopt_int(fd, IPPROTO_TCP, TCP_NODELAY, 1) != 0) return -1;
  if (keepaliveIdle <= 0) return 0;
  if (cq_setsockopt_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1) != 0) return -1;
  if (cq_setsockopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, keepaliveIdle) != 0) return -1;
  if (cq_setsockopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, keepaliveInterval) != 0) return -1;
  return cq_setsockopt_int(fd, IPPROTO_TCP, TCP_KEEPCNT, keepaliveCount);
}

/// Sets TCP_USER_TIMEOUT: the kernel drops the connection when sent data stays unacknowledged this long.
static inline int cq_set_user_timeout(int fd, int milliseconds) {
  return cq_setsockopt_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, milliseconds);
}

/// Fills `storage` with the numeric address `host` (IPv4 dotted or IPv6) and `port`; returns the address
/// length, or 0 if `host` is not a numeric address. `family` receives AF_INET or AF_INET6.
static inline int cq_make_address(const char *host, int port, struct sockaddr_storage *storage, int *family) {
  memset(storage, 0, sizeof *storage);
  struct sockaddr_in *v4 = (struct sockaddr_in *)storage;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    *family = AF_INET;
    return (int)sizeof *v4;
  }
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)storage;
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *family = AF_INET6;
    return (int)sizeof *v6;
  }
  return 0;
}

/// Binds `fd` (with SO_REUSEADDR) to `host:port` and listens; returns 0 or -1 with errno set.
static inline int cq_bind_listen(int fd, const char *host, int port, int backlog) {
  struct sockaddr_storage storage;
  int family = 0;
  int length = cq_make_address(host, port, &storage, &family);
  if (length == 0) {
    errno = EINVAL;
    return -1;
  }
  if (cq_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1) != 0) return -1;
  if (bind(fd, (struct sockaddr *)&storage, (socklen_t)length) != 0) return -1;
  return listen(fd, backlog);
}

/// Starts connecting `fd` to `host:port`; returns 0, or -1 with errno set (EINPROGRESS when non-blocking).
static inline int cq_connect(int fd, const char *host, int port) {
  struct sockaddr_storage storage;
  int family = 0;
  int length = cq_make_address(host, port, &storage, &family);
  if (length == 0) {
    errno = EINVAL;
    return -1;
  }
  return connect(fd, (struct sockaddr *)&storage, (socklen_t)length);
}

/// Binds `fd` to the numeric `host` with any port (so a test can dial from another loopback address).
static inline int cq_bind_source(int fd, const char *host) {
  struct sockaddr_storage storage;
  int family = 0;
  int length = cq_make_address(host, 0, &storage, &family);
  if (length == 0) {
    errno = EINVAL;
    return -1;
  }
  return bind(fd, (struct sockaddr *)&storage, (socklen_t)length);
}

/// Resolves the host name `host` (blocking: call it off the event loop) and writes one of its addresses,
/// in numeric form, to `out`: the first IPv4 address getaddrinfo returns, or its first address if there is
/// none (a name listed for both families often has an IPv6 loopback that a container has disabled).
/// Returns 0, or a getaddrinfo error code (EAI_*; for EAI_SYSTEM, errno says more).
static inline int cq_resolve(const char *host, char *out, int capacity) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo *found = NULL;
  int code = getaddrinfo(host, NULL, &hints, &found);
  if (code != 0) return code;
  if (found == NULL) return EAI_NONAME;
  struct addrinfo *chosen = found;
  for (struct addrinfo *each = found; each != NULL; each = each->ai_next) {
    if (each->ai_family == AF_INET) {
      chosen = each;
      break;
    }
  }
  code = getnameinfo(chosen->ai_addr, chosen->ai_addrlen, out, (socklen_t)capacity, NULL, 0, NI_NUMERICHOST);
  freeaddrinfo(found);
  return code;
}

/// The message for a getaddrinfo error code.
static inline const char *cq_resolve_error(int code) { return gai_strerror(code); }

/// The address family of the numeric host, or 0 if it is not numeric.
static inline int cq_address_family(const char *host) {
  struct sockaddr_storage storage;
  int family = 0;
  return cq_make_address(host, 1, &storage, &family) ? family : 0;
}

/// The port `fd` is bound to, or -1.
static inline int cq_local_port(int fd) {
  struct sockaddr_storage storage;
  socklen_t length = sizeof storage;
  if (getsockname(fd, (struct sockaddr *)&storage, &length) != 0) return -1;
  if (storage.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&storage)->sin_port);
  if (storage.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&storage)->sin6_port);
  return -1;
}

/// The remote address of `fd` as text "host:port" (IPv6 in brackets) written to `out`; returns 0 or -1.
static inline int cq_peer_name(int fd, char *out, int capacity) {
  struct sockaddr_storage storage;
  socklen_t length = sizeof storage;
  if (getpeername(fd, (struct sockaddr *)&storage, &length) != 0) return -1;
  char host[INET6_ADDRSTRLEN];
  if (storage.ss_family == AF_INET) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&storage;
    if (!inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host)) return -1;
    snprintf(out, (size_t)capacity, "%s:%d", host, ntohs(v4->sin_port));
    return 0;
  }
  if (storage.ss_family == AF_INET6) {
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&storage;
    if (!inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host)) return -1;
    snprintf(out, (size_t)capacity, "[%s]:%d", host, ntohs(v6->sin6_port));
    return 0;
  }
  return -1;
}

/// Sends without raising SIGPIPE on a closed connection.
static inline ssize_t cq_send(int fd, const void *bytes, size_t count) { return send(fd, bytes, count, MSG_NOSIGNAL); }

/// Sends `count` buffers in one call (a gathering write), without SIGPIPE.
static inline ssize_t cq_sendv(int fd, const struct iovec *vectors, int count) {
  struct msghdr message;
  memset(&message, 0, sizeof message);
  message.msg_iov = (struct iovec *)vectors;
  message.msg_iovlen = (size_t)count;
  return sendmsg(fd, &message, MSG_NOSIGNAL);
}

/// Ignores SIGPIPE for the whole process (executables call it at start).
static inline void cq_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

// MARK: HMAC-SHA-256 for frame codes (sha256.c)

/// Whether SHA-256 runs on the x86 SHA extensions (decided once, from CPUID).
int cq_sha256_accelerated(void);

/// Chooses the extensions (if `enabled` and available) or portable C; returns whether they are available. Both
/// give the same results: tests use this to check one against the other.
int cq_sha256_use_accelerated(int enabled);

/// The SHA-256 compression function over `blocks` 64-byte blocks, with the extensions when available.
void cq_sha256_compress(uint32_t state[8], const uint8_t *data, size_t blocks);

/// The same in portable C.
void cq_sha256_compress_portable(uint32_t state[8], const uint8_t *data, size_t blocks);

/// The SHA-256 states after absorbing `key` XOR ipad and `key` XOR opad (RFC 2104; a key over 64 bytes is hashed
/// first): computed once per session key.
void cq_hmac_sha256_init(const uint8_t *key, size_t length, uint32_t inner[8], uint32_t outer[8]);

/// HMAC-SHA-256, from the states of `cq_hmac_sha256_init`, of `sequence` (8 bytes, little-endian) followed by
/// `data`: the code of one frame.
void cq_hmac_sha256_frame(const uint32_t inner[8], const uint32_t outer[8], uint64_t sequence, const uint8_t *data,
                          size_t length, uint8_t code[32]);

#endif
