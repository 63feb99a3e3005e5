// SPDX-License-Identifier: Apache-2.0
//
// LD_PRELOAD shim for bench/e2e.sh's in-pod modes: every TCP socket the
// process creates gets SO_MARK $SOMARK (e.g. 0x539) before it is used, as
// ztunnel does with all of its sockets in a workload netns. Debian 12's
// haproxy (2.6) cannot mark its server-side connections itself (`set-mark`
// marks the client side only; `set-bc-mark` came later), and in-pod
// redirection, iptables, nft or BPF, recognises the proxy's own traffic by
// that mark. Listening sockets are marked too, so accepted connections
// inherit it (as ztunnel's do).
//
// SOPORTS=LOW-HIGH gives each socket its own ephemeral port range
// (IP_LOCAL_PORT_RANGE, Linux 6.3+; it narrows the netns' range), so that
// the proxy's upstream connections and the app's, which leave the same
// netns from the same address to the same server, never pick the same
// port. e2e.sh gives the load generators (all modes) the lower half of the
// pod's range and the in-pod proxy the upper half.
//
//   cc -shared -fPIC -O2 -o somark.so somark.c -ldl
//   SOMARK=0x539 SOPORTS=32768-65535 LD_PRELOAD=./somark.so haproxy ...
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <netinet/in.h>

#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif

static int (*real_socket)(int, int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static unsigned int mark;
static unsigned int ports; // high << 16 | low, as IP_LOCAL_PORT_RANGE takes it
// Which fds socket() made TCP sockets of, so that connect() needs no
// getsockopt (fds beyond the table are looked up).
#define KNOWN_FDS 65536
static unsigned char tcp_fd[KNOWN_FDS / 8];

__attribute__((constructor)) static void init(void)
{
    const char *m = getenv("SOMARK");
    const char *p = getenv("SOPORTS");
    real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    mark = m ? (unsigned int)strtoul(m, NULL, 0) : 0;
    if (p) {
        char *end;
        unsigned long lo = strtoul(p, &end, 10), hi = *end == '-' ? strtoul(end + 1, NULL, 10) : 0;
        if (lo > 0 && hi >= lo && hi < 65536)
            ports = (unsigned int)(hi << 16 | lo);
    }
}

int socket(int domain, int type, int protocol)
{
    int fd = real_socket(domain, type, protocol);
    // SOCK_STREAM with any flags (SOCK_NONBLOCK, SOCK_CLOEXEC) or'ed in.
    if (fd >= 0 && fd < KNOWN_FDS)
        tcp_fd[fd / 8] &= (unsigned char)~(1u << (fd % 8));
    if (fd >= 0 && (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM) {
        if (fd < KNOWN_FDS)
            tcp_fd[fd / 8] |= (unsigned char)(1u << (fd % 8));
        if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
            abort(); // an unmarked proxy socket would be captured again
    }
    return fd;
}

// The port range is set at connect() only: on a socket about to listen it
// made haproxy's bind() fail (EADDRINUSE), and only connect()'s implicit
// bind uses it.
int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    int type = 0;
    socklen_t tl = sizeof(type);
    if (ports && addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        int tcp = fd >= 0 && fd < KNOWN_FDS
                      ? tcp_fd[fd / 8] >> (fd % 8) & 1
                      : getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM;
        if (tcp)
            setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &ports, sizeof(ports));
    }
    return real_connect(fd, addr, len);
}
