package shmlink

import "strings"

// Types of the operating-system layer shared by every backend (sys_linux.go, and
// sys_other.go, whose every call fails with CodeUnsupported).

// fileID is (st_dev, st_ino): equal for every descriptor of one file.
type fileID struct{ dev, ino uint64 }

type fileInfo struct {
	regular bool
	onShmem bool
	size    int64
	id      fileID
}

type sealSet struct {
	shrink, grow, write, futureWrite bool
}

// recvResult is one recvmsg.
type recvResult struct {
	n                int
	dataTruncated    bool // MSG_TRUNC
	controlTruncated bool // MSG_CTRUNC
}

// isAbstract reports whether path names a Linux abstract socket: a leading NUL byte (as
// Node writes it) or "@" (as the interop peers do).
func isAbstract(path string) bool {
	return strings.HasPrefix(path, "@") || strings.HasPrefix(path, "\x00")
}
