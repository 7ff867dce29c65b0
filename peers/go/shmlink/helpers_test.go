package shmlink

import (
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openFds counts this process's open descriptors.
func openFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkNoFdLeak fails the test if more descriptors are open at its end than at start.
func checkNoFdLeak(t *testing.T) {
	t.Helper()
	before := openFds(t)
	t.Cleanup(func() {
		// Sockets closed by another goroutine may take a moment.
		for i := 0; i < 100 && openFds(t) > before; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		if after := openFds(t); after > before {
			t.Errorf("%d descriptors open at the end, %d at the start", after, before)
		}
	})
}

func wantCode(t *testing.T, err error, code Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", code)
	}
	if !errors.Is(err, code) {
		t.Fatalf("error %v, want %s", err, code)
	}
}

// must returns v, or panics (failing the test) on an error.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func ok(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawPeer is a hand-driven peer: a raw SOCK_SEQPACKET socket whose other end is an
// Endpoint under test.
type rawPeer struct {
	t  *testing.T
	fd int
}

// newRawPair returns an endpoint (made by FromFd with opts) and the raw socket at its
// other end.
func newRawPair(t *testing.T, opts *Options) (*Endpoint, *rawPeer) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	ok(t, err)
	ep, err := FromFd(p[0], opts)
	if err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		t.Fatal(err)
	}
	raw := &rawPeer{t: t, fd: p[1]}
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	ok(t, unix.SetsockoptTimeval(raw.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	t.Cleanup(func() {
		ep.Close()
		raw.close()
	})
	return ep, raw
}

func (p *rawPeer) close() {
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}

// send sends one record with descriptors.
func (p *rawPeer) send(b []byte, fds ...int) {
	p.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	ok(p.t, unix.Sendmsg(p.fd, b, oob, nil, unix.MSG_NOSIGNAL))
}

// hello sends a valid HELLO announcing 32 regions and 64 KiB.
func (p *rawPeer) hello() { p.send(putHello(nil, announced{32, 65536})) }

// recv reads one record; its descriptors are closed and counted. n is -1 at
// end-of-file.
func (p *rawPeer) recv() (b []byte, nfds int) {
	p.t.Helper()
	buf := make([]byte, 1<<17)
	oob := make([]byte, unix.CmsgSpace(4*253))
	for {
		n, oobn, _, _, err := unix.Recvmsg(p.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.ECONNRESET || err == unix.EINTR {
			continue
		}
		ok(p.t, err)
		if oobn > 0 {
			var fds []int
			parseRights(oob[:oobn], &fds)
			for _, fd := range fds {
				unix.Close(fd)
			}
			nfds = len(fds)
		}
		if n == 0 && oobn == 0 {
			return nil, 0
		}
		return buf[:n], nfds
	}
}

// expectEOF reads (and discards) until end-of-file.
func (p *rawPeer) expectEOF() {
	p.t.Helper()
	for i := 0; i < 1000; i++ {
		if b, _ := p.recv(); b == nil {
			return
		}
	}
	p.t.Fatal("no end-of-file")
}

// memfd makes a memory file of size bytes with the given seals (F_SEAL_* bits).
func memfd(t testing.TB, size int64, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	ok(t, err)
	ok(t, unix.Ftruncate(fd, size))
	if seals != 0 {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
		ok(t, err)
	}
	return fd
}

const sealed = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

// message is a MESSAGE frame with these descriptors and payload.
func message(payload []byte, ds ...descriptor) []byte {
	b := putHeader(nil, kindMessage, len(ds), len(payload))
	for _, d := range ds {
		b = putDescriptor(b, d)
	}
	return append(b, payload...)
}
