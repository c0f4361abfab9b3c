/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * LD_PRELOAD library for the QEMU comparison: QEMU's migration channel does not set TCP_NODELAY,
 * colod's link does. Preloaded into both QEMUs, this sets it on every TCP socket they connect or
 * accept, and says so once per socket on stderr ("nodelay-preload: TCP_NODELAY on fd N after
 * connect|accept"), so the benchmark can show it took effect.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>

static void set_nodelay(int fd, const char* after)
{
    int type = 0;
    socklen_t type_length = sizeof type;
    struct sockaddr_storage address;
    socklen_t address_length = sizeof address;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_length) != 0 || type != SOCK_STREAM)
        return;
    if (getsockname(fd, (struct sockaddr*)&address, &address_length) != 0 ||
        (address.ss_family != AF_INET && address.ss_family != AF_INET6))
        return;
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
        fprintf(stderr, "nodelay-preload: TCP_NODELAY on fd %d after %s\n", fd, after);
    else
        fprintf(stderr, "nodelay-preload: TCP_NODELAY on fd %d failed: errno %d\n", fd, errno);
}

int connect(int fd, const struct sockaddr* address, socklen_t length)
{
    static int (*real)(int, const struct sockaddr*, socklen_t);
    if (!real)
        real = (int (*)(int, const struct sockaddr*, socklen_t))dlsym(RTLD_NEXT, "connect");
    int saved_errno;
    int rc = real(fd, address, length);
    saved_errno = errno;
    if (rc == 0 || errno == EINPROGRESS)
        set_nodelay(fd, "connect");
    errno = saved_errno;
    return rc;
}

int accept4(int fd, struct sockaddr* address, socklen_t* length, int flags)
{
    static int (*real)(int, struct sockaddr*, socklen_t*, int);
    if (!real)
        real = (int (*)(int, struct sockaddr*, socklen_t*, int))dlsym(RTLD_NEXT, "accept4");
    int rc = real(fd, address, length, flags);
    if (rc >= 0) {
        int saved_errno = errno;
        set_nodelay(rc, "accept");
        errno = saved_errno;
    }
    return rc;
}

int accept(int fd, struct sockaddr* address, socklen_t* length)
{
    return accept4(fd, address, length, 0);
}
