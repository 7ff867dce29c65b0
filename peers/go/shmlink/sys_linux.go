//go:build linux

package shmlink

// The operating-system layer: every system call the package makes is in this file (and
// its stub for other systems, sys_other.go). What an errno means is decided here and
// handed out as an *Error or a plain result.

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mfdNoexecSeal is MFD_NOEXEC_SEAL (Linux 6.3): the memfd can never be made executable.
const mfdNoexecSeal = 0x0008

func errnoName(e syscall.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", int(e))
}

func closeFd(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}

// createMemoryFile makes a sealable memfd of size bytes sealed against shrinking and
// growing: close-on-exec, and with MFD_NOEXEC_SEAL where the kernel knows it.
func createMemoryFile(size int, op string) (int, error) {
	base := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate("shmlink", base|mfdNoexecSeal)
	if err == unix.EINVAL {
		fd, err = unix.MemfdCreate("shmlink", base)
	}
	if err != nil {
		return -1, osError(op, "memfd_create", err, "raise the open-file limit (ulimit -n) or close unused regions")
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		closeFd(fd)
		return -1, osError(op, "ftruncate", err, "the region is larger than the memory this process may use")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		closeFd(fd)
		return -1, osError(op, "fcntl(F_ADD_SEALS)", err, "this kernel cannot seal memfds")
	}
	return fd, nil
}

// statFile is fstat, and for a regular file fstatfs: is it on shmem (tmpfs)?
func statFile(fd int, op string) (fileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileInfo{}, osError(op, "fstat", err, "the descriptor cannot be inspected")
	}
	info := fileInfo{
		regular: st.Mode&unix.S_IFMT == unix.S_IFREG,
		size:    st.Size,
		id:      fileID{dev: uint64(st.Dev), ino: st.Ino},
	}
	if info.regular {
		var fs unix.Statfs_t
		if err := unix.Fstatfs(fd, &fs); err != nil {
			return fileInfo{}, osError(op, "fstatfs", err, "the descriptor cannot be inspected")
		}
		info.onShmem = fs.Type == unix.TMPFS_MAGIC
	}
	return info, nil
}

// getSeals returns the file's seals; ok is false when the file cannot carry seals.
func getSeals(fd int, op string) (sealSet, bool, error) {
	s, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err == unix.EINVAL {
		return sealSet{}, false, nil
	}
	if err != nil {
		return sealSet{}, false, osError(op, "fcntl(F_GET_SEALS)", err, "the descriptor cannot be inspected")
	}
	return sealSet{
		shrink:      s&unix.F_SEAL_SHRINK != 0,
		grow:        s&unix.F_SEAL_GROW != 0,
		write:       s&unix.F_SEAL_WRITE != 0,
		futureWrite: s&unix.F_SEAL_FUTURE_WRITE != 0,
	}, true, nil
}

// sealContents adds F_SEAL_WRITE | F_SEAL_SEAL.
func sealContents(fd int, op string) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
	switch err {
	case nil:
		return nil
	case unix.EBUSY:
		return sysError(CodeRegionBusy, op, "fcntl(F_ADD_SEALS)", err, "a peer maps the region writable; freeze regions before sharing them")
	case unix.EPERM:
		return sysError(CodeRegionBusy, op, "fcntl(F_ADD_SEALS)", err, "the region's seals are sealed (F_SEAL_SEAL); it cannot be frozen")
	}
	return osError(op, "fcntl(F_ADD_SEALS)", err, "the region could not be sealed")
}

// mapRegion maps a region's file: shared and writable, or, frozen, private and
// copy-on-write (docs/PROTOCOL.md §5.3 step 6).
func mapRegion(fd, size int, frozen bool) (unsafe.Pointer, error) {
	flags := unix.MAP_SHARED
	syscallName := "mmap(MAP_SHARED)"
	if frozen {
		flags, syscallName = unix.MAP_PRIVATE, "mmap(MAP_PRIVATE)"
	}
	addr, err := unix.MmapPtr(fd, 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, osError("map region", syscallName, err,
			"the region could not be mapped: address space, vm.max_map_count or (for a frozen region, mapped copy-on-write) memory that may be committed is exhausted")
	}
	return addr, nil
}

// remapInPlace replaces the mapping at addr by a shared or private mapping of fd, at
// the same address, so that pointers into it stay valid.
func remapInPlace(addr unsafe.Pointer, size, fd int, private bool) error {
	flags := unix.MAP_SHARED | unix.MAP_FIXED
	if private {
		flags = unix.MAP_PRIVATE | unix.MAP_FIXED
	}
	if _, err := unix.MmapPtr(fd, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, flags); err != nil {
		return osError("Region.Freeze", "mmap(MAP_FIXED)", err, "a mapping could not be replaced")
	}
	return nil
}

// discardInPlace replaces the mapping at addr by private zero pages of the same size:
// pointers stay valid, reads see zeros, writes go nowhere anyone else sees.
func discardInPlace(addr unsafe.Pointer, size int) error {
	_, err := unix.MmapPtr(-1, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE)
	if err != nil {
		return osError("Region.Close", "mmap(MAP_FIXED|MAP_ANONYMOUS)", err, "the region's memory could not be released")
	}
	return nil
}

func unmap(addr unsafe.Pointer, size int) {
	_ = unix.MunmapPtr(addr, uintptr(size))
}

// preadFull copies len(dst) bytes of the file at off: what the file holds, whatever
// this process's private mapping of it says.
func preadFull(fd int, off int64, dst []byte, op string) error {
	for len(dst) > 0 {
		n, err := unix.Pread(fd, dst, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return osError(op, "pread", err, "the region could not be read")
		}
		if n == 0 {
			return newError(CodeOS, op, "the region's file ended early")
		}
		dst, off = dst[n:], off+int64(n)
	}
	return nil
}

// --- sockets ---------------------------------------------------------------------------

// sockaddr is the address of path: a leading NUL byte or "@" names a Linux abstract
// socket (x/sys/unix then gives the address length of exactly the name, §1 rule 8).
func sockaddr(path, op string) (*unix.SockaddrUnix, error) {
	if path == "" || path == "@" || path == "\x00" {
		return nil, invalidArg(op, "the socket path is empty")
	}
	if max := len(unix.RawSockaddrUnix{}.Path); len(path) > max {
		return nil, invalidArg(op, "the socket path %q is longer than %d bytes", path, max)
	}
	return &unix.SockaddrUnix{Name: path}, nil
}

func seqpacketSocket(op string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, osError(op, "socket", err, "raise the open-file limit (ulimit -n)")
	}
	return fd, nil
}

// seqpacketPair is a connected pair of non-blocking, close-on-exec SOCK_SEQPACKET sockets.
func seqpacketPair(op string) (int, int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, -1, osError(op, "socketpair", err, "raise the open-file limit (ulimit -n)")
	}
	return fds[0], fds[1], nil
}

// connectTo connects a non-blocking socket to path. A full backlog is
// CodeWouldBlock (EAGAIN), as in the core.
func connectTo(path, op string) (int, error) {
	addr, err := sockaddr(path, op)
	if err != nil {
		return -1, err
	}
	fd, err := seqpacketSocket(op)
	if err != nil {
		return -1, err
	}
	for {
		err = unix.Connect(fd, addr)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil:
		return fd, nil
	case unix.EAGAIN:
		closeFd(fd)
		return -1, sysError(CodeWouldBlock, op, "connect", err, "the listener's backlog is full; retry after it accepts")
	}
	closeFd(fd)
	return -1, osError(op, "connect", err, fmt.Sprintf("is a shmlink listener running at %q?", path))
}

// listenAt binds and listens at path. The socket file gets mode 0600 before bind
// returns; a stale socket file (nobody listens on it) is replaced.
func listenAt(path string, backlog int, op string) (int, *fileID, error) {
	addr, err := sockaddr(path, op)
	if err != nil {
		return -1, nil, err
	}
	fd, err := seqpacketSocket(op)
	if err != nil {
		return -1, nil, err
	}
	// Linux creates the socket file with the socket inode's mode, so setting it before
	// bind leaves no moment in which other users could connect.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		closeFd(fd)
		return -1, nil, osError(op, "fchmod", err, "the socket's mode could not be set")
	}
	err = unix.Bind(fd, addr)
	if err == unix.EADDRINUSE && !isAbstract(path) && isStale(path) {
		if rmErr := os.Remove(path); rmErr != nil {
			closeFd(fd)
			return -1, nil, errorf(CodeOS, op, "a stale socket file could not be removed: %v", rmErr)
		}
		err = unix.Bind(fd, addr)
	}
	if err != nil {
		closeFd(fd)
		return -1, nil, osError(op, "bind", err, "another listener owns this path, or its directory is not writable")
	}
	if err := unix.Listen(fd, backlog); err != nil {
		closeFd(fd)
		return -1, nil, osError(op, "listen", err, "the socket could not listen")
	}
	var id *fileID
	if !isAbstract(path) {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			id = &fileID{dev: uint64(st.Dev), ino: st.Ino}
		}
	}
	return fd, id, nil
}

// isStale reports whether path is a socket file nobody listens on.
func isStale(path string) bool {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer closeFd(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path}) == unix.ECONNREFUSED
}

// removeIfSame removes the socket file at path if it is still the file id names.
func removeIfSame(path string, id *fileID) {
	if id == nil {
		return
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil && (fileID{dev: uint64(st.Dev), ino: st.Ino}) == *id {
		_ = os.Remove(path)
	}
}

// acceptOne accepts a pending connection (non-blocking, close-on-exec); the error is
// the raw errno (EAGAIN when none waits).
func acceptOne(lfd int) (int, error) {
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		return fd, err
	}
}

func peerCredentials(fd int, op string) (PeerCredentials, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return PeerCredentials{}, osError(op, "getsockopt(SO_PEERCRED)", err, "the peer's credentials are not available")
	}
	return PeerCredentials{PID: int(cred.Pid), UID: cred.Uid, GID: cred.Gid}, nil
}

func geteuid() uint32 { return uint32(unix.Geteuid()) }

// claimSocket checks that raw is an open, connected SOCK_SEQPACKET socket that is not a
// standard stream, and makes it non-blocking and close-on-exec. Failures are
// CodeInvalidArg, saying what the descriptor is instead.
func claimSocket(raw int, op string) error {
	if raw <= 2 {
		return invalidArg(op, "descriptor %d is stdin, stdout or stderr, not a socket", raw)
	}
	if _, err := unix.FcntlInt(uintptr(raw), unix.F_GETFD, 0); err != nil {
		return sysError(CodeInvalidArg, op, "fcntl(F_GETFD)", err, fmt.Sprintf("descriptor %d is not open in this process", raw))
	}
	kind, err := unix.GetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return sysError(CodeInvalidArg, op, "getsockopt(SO_TYPE)", err, fmt.Sprintf("descriptor %d is not a socket (it is %s)", raw, describeDescriptor(raw)))
	}
	if kind != unix.SOCK_SEQPACKET {
		return invalidArg(op, "descriptor %d is a %s socket, not a SOCK_SEQPACKET one; create it with Pair() or socketpair(AF_UNIX, SOCK_SEQPACKET)", raw, socketTypeName(kind))
	}
	if domain, err := unix.GetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && domain != unix.AF_UNIX {
		return invalidArg(op, "descriptor %d is not an AF_UNIX socket", raw)
	}
	if err := unix.SetNonblock(raw, true); err != nil {
		return osError(op, "fcntl(F_SETFL)", err, "the descriptor cannot be made non-blocking")
	}
	if _, err := unix.FcntlInt(uintptr(raw), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return osError(op, "fcntl(F_SETFD)", err, "the descriptor cannot be made close-on-exec")
	}
	return nil
}

func socketTypeName(kind int) string {
	switch kind {
	case unix.SOCK_STREAM:
		return "SOCK_STREAM"
	case unix.SOCK_DGRAM:
		return "SOCK_DGRAM"
	}
	return fmt.Sprintf("type-%d", kind)
}

// describeDescriptor says in words what kind of file fd is, for error messages.
func describeDescriptor(fd int) string {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return "not an open descriptor"
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a pipe"
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFCHR:
		return "a character device, such as a terminal"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "some other kind of file"
}

func shutdownBoth(fd int) { _ = unix.Shutdown(fd, unix.SHUT_RDWR) }

// recvRecord receives one record into buf, offering the kernel exactly oob (the caller
// sizes it with controlLen), and appends every descriptor that arrived to *fds. The
// error is the raw errno (EAGAIN when nothing is there); ECONNRESET is retried (§1
// rule 6).
func recvRecord(fd int, buf, oob []byte, fds *[]int) (recvResult, error) {
	var iov unix.Iovec
	iov.Base = &buf[0]
	iov.SetLen(len(buf))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	msg.Control = &oob[0]
	msg.SetControllen(len(oob))
	for {
		n, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
		switch errno {
		case 0:
		case unix.EINTR, unix.ECONNRESET:
			msg.SetControllen(len(oob))
			continue
		default:
			return recvResult{}, errno
		}
		parseRights(oob[:msg.Controllen], fds)
		return recvResult{
			n:                int(n),
			dataTruncated:    msg.Flags&unix.MSG_TRUNC != 0,
			controlTruncated: msg.Flags&unix.MSG_CTRUNC != 0,
		}, nil
	}
}

// controlLen is the control buffer for exactly maxFds descriptors: CMSG_LEN, not
// CMSG_SPACE, which rounds up and would admit one more when maxFds is odd (§5.4 rule 3).
func controlLen(maxFds int) int { return unix.CmsgLen(4 * maxFds) }

// parseRights collects the descriptors of every SCM_RIGHTS message, in order.
func parseRights(oob []byte, fds *[]int) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		clen := int(h.Len)
		if clen < unix.SizeofCmsghdr || clen > len(oob) {
			return
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for data := oob[unix.CmsgLen(0):clen]; len(data) >= 4; data = data[4:] {
				*fds = append(*fds, int(int32(binary.NativeEndian.Uint32(data))))
			}
		}
		next := unix.CmsgSpace(clen - unix.CmsgLen(0))
		if next > len(oob) {
			return
		}
		oob = oob[next:]
	}
}

// sendRecord sends head and payload as one record, fds in one SCM_RIGHTS message, with
// MSG_NOSIGNAL. The error is the raw errno.
func sendRecord(fd int, head, payload []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	bufs := [][]byte{head}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	for {
		_, err := unix.SendmsgBuffers(fd, bufs, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

func isWouldBlock(err error) bool { return err == unix.EAGAIN }

func isDisconnected(err error) bool {
	return err == unix.EPIPE || err == unix.ECONNRESET || err == unix.ENOTCONN
}
