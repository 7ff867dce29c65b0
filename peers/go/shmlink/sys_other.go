//go:build !linux

package shmlink

// Every call of the operating-system layer fails with CodeUnsupported: shmlink needs
// sealable memory files and SOCK_SEQPACKET, which only Linux has (docs/PLATFORMS.md).

import (
	"fmt"
	"syscall"
	"unsafe"
)

func unsupported(op string) error {
	return newError(CodeUnsupported, op, "shmlink needs Linux (sealable memfds and SOCK_SEQPACKET sockets); see docs/PLATFORMS.md")
}

func errnoName(e syscall.Errno) string { return fmt.Sprintf("errno %d", int(e)) }

// closeFd has nothing to close: no call here creates a descriptor.
func closeFd(fd int) {}

func createMemoryFile(size int, op string) (int, error) { return -1, unsupported(op) }
func statFile(fd int, op string) (fileInfo, error)      { return fileInfo{}, unsupported(op) }
func getSeals(fd int, op string) (sealSet, bool, error) { return sealSet{}, false, unsupported(op) }
func sealContents(fd int, op string) error              { return unsupported(op) }
func mapRegion(fd, size int, frozen bool) (unsafe.Pointer, error) {
	return nil, unsupported("map region")
}
func remapInPlace(addr unsafe.Pointer, size, fd int, private bool) error {
	return unsupported("Region.Freeze")
}
func discardInPlace(addr unsafe.Pointer, size int) error       { return unsupported("Region.Close") }
func unmap(addr unsafe.Pointer, size int)                      {}
func preadFull(fd int, off int64, dst []byte, op string) error { return unsupported(op) }
func seqpacketPair(op string) (int, int, error)                { return -1, -1, unsupported(op) }
func connectTo(path, op string) (int, error)                   { return -1, unsupported(op) }
func listenAt(path string, backlog int, op string) (int, *fileID, error) {
	return -1, nil, unsupported(op)
}
func removeIfSame(path string, id *fileID) {}
func acceptOne(lfd int) (int, error)       { return -1, unsupported("accept") }
func peerCredentials(fd int, op string) (PeerCredentials, error) {
	return PeerCredentials{}, unsupported(op)
}
func geteuid() uint32                      { return uint32(syscall.Geteuid()) }
func claimSocket(raw int, op string) error { return unsupported(op) }
func shutdownBoth(fd int)                  {}
func controlLen(maxFds int) int            { return 16 + 4*maxFds }
func recvRecord(fd int, buf, oob []byte, fds *[]int) (recvResult, error) {
	return recvResult{}, unsupported("recv")
}
func sendRecord(fd int, head, payload []byte, fds []int) error { return unsupported("send") }
func isWouldBlock(err error) bool                              { return false }
func isDisconnected(err error) bool                            { return false }
