/*
 * sys.c - every system call libshmlink makes. What an errno means is decided here and
 * handed out as a code.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS, MSG_CMSG_CLOEXEC, SOCK_CLOEXEC, accept4 */
#endif

#ifndef __linux__
#error "libshmlink needs Linux: sealable memfds and SOCK_SEQPACKET (docs/PLATFORMS.md)"
#endif

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008u /* Linux 6.3: the memfd can never be made executable */
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define REQUIRED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define FREEZE_SEALS (F_SEAL_WRITE | F_SEAL_SEAL)

/* close(2) that keeps errno, so cleanup paths do not hide the error that caused them. */
void close_fd(int fd)
{
    if (fd < 0)
        return;
    const int saved = errno;
    (void)close(fd);
    errno = saved;
}

/* ---- memory files ---------------------------------------------------------------- */

shmlink_code sys_create_memfd(uint64_t size, int *out, shmlink_error *err, const char *op)
{
    const unsigned base = MFD_CLOEXEC | MFD_ALLOW_SEALING;
    int fd = memfd_create("shmlink", base | MFD_NOEXEC_SEAL);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create("shmlink", base); /* a kernel older than 6.3 */
    if (fd < 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "memfd_create", errno,
                             "raise the open-file limit (ulimit -n) or close unused regions");
    if (ftruncate(fd, (off_t)size) != 0) {
        const int e = errno;
        close_fd(fd);
        return set_sys_error(err, SHMLINK_ERR_OS, op, "ftruncate", e,
                             "the region is larger than the memory this process may use");
    }
    if (fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS) != 0) {
        const int e = errno;
        close_fd(fd);
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fcntl(F_ADD_SEALS)", e,
                             "this kernel cannot seal memfds");
    }
    *out = fd;
    return SHMLINK_OK;
}

shmlink_code sys_file_info(int fd, file_info *info, shmlink_error *err, const char *op)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fstat", errno,
                             "the descriptor cannot be inspected");
    *info = (file_info){ .regular = S_ISREG(st.st_mode),
                         .size = (int64_t)st.st_size,
                         .id = { (uint64_t)st.st_dev, (uint64_t)st.st_ino } };
    /* Only regular files are asked which file system they live on. */
    if (info->regular) {
        struct statfs fs;
        if (fstatfs(fd, &fs) != 0)
            return set_sys_error(err, SHMLINK_ERR_OS, op, "fstatfs", errno,
                                 "the descriptor cannot be inspected");
        info->on_shmem = (unsigned long)fs.f_type == (unsigned long)TMPFS_MAGIC;
    }
    return SHMLINK_OK;
}

shmlink_code sys_seals(int fd, seal_set *out, shmlink_error *err, const char *op)
{
    const int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 && errno == EINVAL) {
        *out = (seal_set){ .sealable = false };
        return SHMLINK_OK;
    }
    if (seals < 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fcntl(F_GET_SEALS)", errno,
                             "the descriptor cannot be inspected");
    *out = (seal_set){ .sealable = true,
                       .shrink = (seals & F_SEAL_SHRINK) != 0,
                       .grow = (seals & F_SEAL_GROW) != 0,
                       .write = (seals & F_SEAL_WRITE) != 0,
                       .future_write = (seals & F_SEAL_FUTURE_WRITE) != 0 };
    return SHMLINK_OK;
}

shmlink_code sys_seal_contents(int fd, shmlink_error *err, const char *op)
{
    if (fcntl(fd, F_ADD_SEALS, FREEZE_SEALS) == 0)
        return SHMLINK_OK;
    if (errno == EBUSY)
        return set_sys_error(err, SHMLINK_ERR_REGION_BUSY, op, "fcntl(F_ADD_SEALS)", errno,
                             "a peer maps the region writable; freeze regions before sharing them");
    if (errno == EPERM)
        return set_sys_error(err, SHMLINK_ERR_REGION_BUSY, op, "fcntl(F_ADD_SEALS)", errno,
                             "the region's seals are sealed (F_SEAL_SEAL); it cannot be frozen");
    return set_sys_error(err, SHMLINK_ERR_OS, op, "fcntl(F_ADD_SEALS)", errno,
                         "the region could not be sealed");
}

/* Shared and writable, or, frozen, private and copy-on-write (PROTOCOL.md 5.3 step 6). */
shmlink_code sys_map(int fd, uint64_t size, bool frozen, void **base, shmlink_error *err,
                     const char *op)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, frozen ? MAP_PRIVATE : MAP_SHARED,
                   fd, 0);
    if (p == MAP_FAILED)
        return set_sys_error(err, SHMLINK_ERR_OS, op, frozen ? "mmap(MAP_PRIVATE)" : "mmap(MAP_SHARED)",
                             errno,
                             "the region could not be mapped: address space, vm.max_map_count or "
                             "(for a frozen region, mapped copy-on-write) memory that may be "
                             "committed is exhausted");
    *base = p;
    return SHMLINK_OK;
}

/* Replaces the mapping at base by a shared or private mapping of fd at the same address. */
bool sys_remap(void *base, uint64_t size, int fd, bool private_map)
{
    const int flags = (private_map ? MAP_PRIVATE : MAP_SHARED) | MAP_FIXED;
    return mmap(base, (size_t)size, PROT_READ | PROT_WRITE, flags, fd, 0) != MAP_FAILED;
}

/* Replaces the mapping at base by private zero pages: pointers stay valid, reads see
 * zeros, writes go nowhere anyone else sees. */
bool sys_discard(void *base, uint64_t size)
{
    return mmap(base, (size_t)size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) != MAP_FAILED;
}

void sys_unmap(void *base, uint64_t size)
{
    if (base != NULL) {
        const int saved = errno;
        (void)munmap(base, (size_t)size);
        errno = saved;
    }
}

shmlink_code sys_pread(int fd, uint64_t offset, void *dst, size_t len, shmlink_error *err,
                       const char *op)
{
    uint8_t *p = dst;
    while (len > 0) {
        const ssize_t n = pread(fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return set_sys_error(err, SHMLINK_ERR_OS, op, "pread", errno,
                                 "the region could not be read");
        if (n == 0)
            return set_error(err, SHMLINK_ERR_OS, op, "the region's file ended early");
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return SHMLINK_OK;
}

/* ---- sockets --------------------------------------------------------------------- */

static bool is_abstract(const char *path) { return path[0] == '@' || path[0] == '\0'; }

/* The address of path; '@name' is the abstract name NUL+name, and the length covers
 * exactly the name (PROTOCOL.md section 1 rule 8). A path that starts with a NUL byte is
 * an empty C string; callers write abstract names with '@'. */
static shmlink_code address_of(const char *path, struct sockaddr_un *addr, socklen_t *len,
                               shmlink_error *err, const char *op)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    const size_t n = path != NULL ? strlen(path) : 0;
    if (n == 0 || (path[0] == '@' && n == 1))
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "the socket path is empty (write an abstract name as \"@name\")");
    if (path[0] == '@') {
        if (n > sizeof addr->sun_path)
            return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                             "the abstract name %s is longer than %zu bytes", path,
                             sizeof addr->sun_path - 1);
        memcpy(addr->sun_path + 1, path + 1, n - 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return SHMLINK_OK;
    }
    if (n >= sizeof addr->sun_path)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "the socket path %s is longer than %zu bytes",
                         path, sizeof addr->sun_path - 1);
    memcpy(addr->sun_path, path, n + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return SHMLINK_OK;
}

static shmlink_code seqpacket_socket(int *fd, shmlink_error *err, const char *op)
{
    *fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (*fd < 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "socket", errno,
                             "raise the open-file limit (ulimit -n)");
    return SHMLINK_OK;
}

shmlink_code sys_socketpair(int fds[2], shmlink_error *err, const char *op)
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "socketpair", errno,
                             "raise the open-file limit (ulimit -n)");
    return SHMLINK_OK;
}

shmlink_code sys_connect(const char *path, int *out, shmlink_error *err, const char *op)
{
    struct sockaddr_un addr;
    socklen_t len;
    shmlink_code code = address_of(path, &addr, &len, err, op);
    if (code != SHMLINK_OK)
        return code;
    int fd;
    if ((code = seqpacket_socket(&fd, err, op)) != SHMLINK_OK)
        return code;
    int rc;
    do
        rc = connect(fd, (const struct sockaddr *)&addr, len);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        const int e = errno;
        close_fd(fd);
        if (e == EAGAIN)
            return set_sys_error(err, SHMLINK_ERR_WOULD_BLOCK, op, "connect", e,
                                 "the listener's backlog is full; retry after it accepts");
        return set_sys_error(err, SHMLINK_ERR_OS, op, "connect", e,
                             "is a shmlink listener running at %s?", path);
    }
    *out = fd;
    return SHMLINK_OK;
}

/* A socket file nobody listens on: connecting to it is refused. */
static bool is_stale(const char *path, const struct sockaddr_un *addr, socklen_t len)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode))
        return false;
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    const bool refused = connect(fd, (const struct sockaddr *)addr, len) != 0 && errno == ECONNREFUSED;
    close_fd(fd);
    return refused;
}

shmlink_code sys_listen(const char *path, int backlog, int *out, bool *has_file, file_id *file,
                        shmlink_error *err, const char *op)
{
    struct sockaddr_un addr;
    socklen_t len;
    shmlink_code code = address_of(path, &addr, &len, err, op);
    if (code != SHMLINK_OK)
        return code;
    int fd;
    if ((code = seqpacket_socket(&fd, err, op)) != SHMLINK_OK)
        return code;
    /* Linux creates the socket file with the socket inode's mode, so setting it before
     * bind leaves no moment in which other users could connect. */
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0) {
        const int e = errno;
        close_fd(fd);
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fchmod", e, "the socket's mode could not be set");
    }
    int rc = bind(fd, (const struct sockaddr *)&addr, len);
    if (rc != 0 && errno == EADDRINUSE && !is_abstract(path) && is_stale(path, &addr, len)) {
        if (unlink(path) != 0) {
            const int e = errno;
            close_fd(fd);
            return set_sys_error(err, SHMLINK_ERR_OS, op, "unlink", e,
                                 "a stale socket file could not be removed");
        }
        rc = bind(fd, (const struct sockaddr *)&addr, len);
    }
    if (rc != 0) {
        const int e = errno;
        close_fd(fd);
        return set_sys_error(err, SHMLINK_ERR_OS, op, "bind", e,
                             "another listener owns this path, or its directory is not writable");
    }
    if (listen(fd, backlog) != 0) {
        const int e = errno;
        close_fd(fd);
        return set_sys_error(err, SHMLINK_ERR_OS, op, "listen", e, "the socket could not listen");
    }
    struct stat st;
    *has_file = !is_abstract(path) && stat(path, &st) == 0;
    if (*has_file)
        *file = (file_id){ (uint64_t)st.st_dev, (uint64_t)st.st_ino };
    *out = fd;
    return SHMLINK_OK;
}

void sys_remove_if_same(const char *path, bool has_file, const file_id *file)
{
    struct stat st;
    if (has_file && lstat(path, &st) == 0 && (uint64_t)st.st_dev == file->dev &&
        (uint64_t)st.st_ino == file->ino)
        (void)unlink(path);
}

int sys_accept(int lfd)
{
    for (;;) {
        const int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        return fd;
    }
}

shmlink_code sys_peer_credentials(int fd, shmlink_peer_credentials *out, shmlink_error *err,
                                  const char *op)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "getsockopt(SO_PEERCRED)", errno,
                             "the peer's credentials are not available");
    *out = (shmlink_peer_credentials){ (int32_t)cred.pid, (uint32_t)cred.uid, (uint32_t)cred.gid };
    return SHMLINK_OK;
}

uid_t sys_euid(void) { return geteuid(); }

static const char *describe(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return "not an open descriptor";
    switch (st.st_mode & S_IFMT) {
    case S_IFIFO: return "a pipe";
    case S_IFREG: return "a regular file";
    case S_IFCHR: return "a character device, such as a terminal";
    case S_IFDIR: return "a directory";
    case S_IFSOCK: return "a socket";
    default: return "some other kind of file";
    }
}

shmlink_code sys_claim_socket(int fd, shmlink_error *err, const char *op)
{
    if (fd <= 2)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "descriptor %d is stdin, stdout or stderr, not a socket", fd);
    if (fcntl(fd, F_GETFD) < 0)
        return set_sys_error(err, SHMLINK_ERR_INVALID_ARG, op, "fcntl(F_GETFD)", errno,
                             "descriptor %d is not open in this process", fd);
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return set_sys_error(err, SHMLINK_ERR_INVALID_ARG, op, "getsockopt(SO_TYPE)", errno,
                             "descriptor %d is not a socket (it is %s)", fd, describe(fd));
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "descriptor %d is not an AF_UNIX socket", fd);
    if (type != SOCK_SEQPACKET)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "descriptor %d is a %s socket, not a SOCK_SEQPACKET one; create it with "
                         "shmlink_endpoint_pair() or socketpair(AF_UNIX, SOCK_SEQPACKET)",
                         fd, type == SOCK_STREAM ? "SOCK_STREAM" : type == SOCK_DGRAM ? "SOCK_DGRAM" : "other");
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fcntl(F_SETFL)", errno,
                             "the descriptor cannot be made non-blocking");
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
        return set_sys_error(err, SHMLINK_ERR_OS, op, "fcntl(F_SETFD)", errno,
                             "the descriptor cannot be made close-on-exec");
    return SHMLINK_OK;
}

void sys_shutdown(int fd)
{
    const int saved = errno;
    (void)shutdown(fd, SHUT_RDWR);
    errno = saved;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int remaining_ms(int64_t deadline_ms)
{
    if (deadline_ms < 0)
        return -1;
    const int64_t left = deadline_ms - now_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

bool sys_wait(int fd, short events, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = events };
    const int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        const int n = poll(&p, 1, remaining_ms(deadline));
        if (n > 0)
            return true;
        if (n == 0)
            return false;
        if (errno != EINTR)
            return true; /* let the caller's next attempt report what is wrong */
    }
}

int sys_recv_record(int fd, uint8_t *buf, size_t cap, unsigned max_fds, int *fds, size_t *nfds,
                    received *out)
{
    _Alignas(struct cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)];
    struct iovec iov = { buf, cap };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = CMSG_LEN(sizeof(int) * max_fds) };
    ssize_t n;
    /* ECONNRESET: the peer closed while records we sent were unread; Linux reports it once,
     * before the records the peer queued (PROTOCOL.md section 1 rule 6). Read on. */
    do {
        mh.msg_controllen = CMSG_LEN(sizeof(int) * max_fds);
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && (errno == EINTR || errno == ECONNRESET));
    *nfds = 0;
    if (n < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue; /* other control messages arrive only if asked for (5.4 rule 3) */
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int got;
            memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
            if (*nfds < SHMLINK_MAX_REGIONS_MAX)
                fds[(*nfds)++] = got;
            else
                close_fd(got); /* cannot happen: the kernel fits them in our buffer */
        }
    }
    *out = (received){ .len = (size_t)n,
                       .data_truncated = (mh.msg_flags & MSG_TRUNC) != 0,
                       .control_truncated = (mh.msg_flags & MSG_CTRUNC) != 0 };
    return 0;
}

int sys_send_record(int fd, const uint8_t *head, size_t head_len, const void *payload,
                    size_t payload_len, const int *fds, size_t nfds)
{
    _Alignas(struct cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * SHMLINK_MAX_REGIONS_MAX)];
    struct iovec iov[2] = { { (void *)(uintptr_t)head, head_len },
                            { (void *)(uintptr_t)payload, payload_len } };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = payload_len != 0 ? 2 : 1 };
    if (nfds != 0) {
        memset(control, 0, CMSG_SPACE(nfds * sizeof(int)));
        mh.msg_control = control;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno;
    if ((size_t)n != head_len + payload_len)
        return EMSGSIZE; /* a SOCK_SEQPACKET record is all or nothing */
    return 0;
}
