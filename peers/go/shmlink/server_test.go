package shmlink

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func listen(t *testing.T, path string, opts *ListenOptions) *Server {
	t.Helper()
	s, err := Listen(path, opts)
	ok(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestListenConnectAccept(t *testing.T) {
	checkNoFdLeak(t)
	path := filepath.Join(t.TempDir(), "s.sock")
	s := listen(t, path, nil)
	if s.Path() != path {
		t.Fatal("path")
	}
	var st unix.Stat_t
	ok(t, unix.Stat(path, &st))
	if st.Mode&0o777 != 0o600 || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("socket file mode %o", st.Mode)
	}
	// Connect completes the handshake before Accept is called: the server sends its
	// HELLO from the background.
	c := must(Connect(path, &ConnectOptions{Timeout: 5 * time.Second}))
	defer c.Close()
	e := must(s.AcceptTimeout(5 * time.Second))
	defer e.Close()
	frozen := must(NewRegion(4096))
	defer frozen.Close()
	ok(t, frozen.Write(0, []byte("frozen data")))
	ok(t, frozen.Freeze())
	ok(t, c.Send([]byte("hi"), &SendOptions{Regions: []*Region{frozen}}))
	m := must(e.Recv())
	defer closeAll(m)
	if string(m.Payload) != "hi" || !m.Regions[0].Frozen() || string(must(m.Regions[0].Read(0, 11))) != "frozen data" {
		t.Fatal("message")
	}
	if p := must(e.Peer()); p.PID != os.Getpid() {
		t.Fatalf("peer %+v", p)
	}
	s.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Close left the socket file")
	}
	_, err := s.Accept()
	wantCode(t, err, CodeClosed)
	// Accepted connections outlive the server.
	ok(t, e.Send([]byte("still here"), nil))
	must(c.Recv())
}

func TestListenAndConnectAcceptOnlyFrozenRegionsByDefault(t *testing.T) {
	checkNoFdLeak(t)
	path := filepath.Join(t.TempDir(), "s.sock")
	s := listen(t, path, nil)
	c := must(Connect(path, nil))
	defer c.Close()
	e := must(s.Accept())
	defer e.Close()
	writable := must(NewRegion(4096))
	defer writable.Close()
	ok(t, c.Send(nil, &SendOptions{Regions: []*Region{writable}}))
	_, err := e.Recv()
	wantCode(t, err, CodeRegionWritable)
	_, err = c.Recv()
	wantCode(t, err, CodePeerClosed)

	// The other way round, and with AcceptWritable both ways.
	c2 := must(Connect(path, nil))
	defer c2.Close()
	e2 := must(s.Accept())
	defer e2.Close()
	ok(t, e2.Send(nil, &SendOptions{Regions: []*Region{writable}}))
	_, err = c2.Recv()
	wantCode(t, err, CodeRegionWritable)

	path3 := filepath.Join(t.TempDir(), "w.sock")
	s3 := listen(t, path3, &ListenOptions{AcceptWritable: true})
	c3 := must(Connect(path3, &ConnectOptions{AcceptWritable: true}))
	defer c3.Close()
	e3 := must(s3.Accept())
	defer e3.Close()
	ok(t, c3.Send(nil, &SendOptions{Regions: []*Region{writable}}))
	m := must(e3.Recv())
	defer closeAll(m)
	ok(t, e3.Send(nil, &SendOptions{Regions: m.Regions}))
	if back := must(c3.Recv()); back.Regions[0] != writable {
		t.Fatal("the region did not come back as itself")
	}
}

func TestCredentialFilters(t *testing.T) {
	checkNoFdLeak(t)
	other := uint32(os.Geteuid() + 4242)
	path := filepath.Join(t.TempDir(), "s.sock")
	s := listen(t, path, &ListenOptions{Allow: Users(other)})
	// The client is shut down unread: it sees end-of-file during the handshake.
	_, err := Connect(path, &ConnectOptions{Timeout: 5 * time.Second})
	wantCode(t, err, CodePeerClosed)
	for i := 0; i < 100 && s.Rejected() == 0; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Rejected() != 1 {
		t.Fatalf("rejected %d", s.Rejected())
	}
	_, err = s.AcceptTimeout(20 * time.Millisecond)
	wantCode(t, err, CodeTimedOut)

	path2 := filepath.Join(t.TempDir(), "t.sock")
	listen(t, path2, &ListenOptions{Allow: AnyUser()})
	_, err = Connect(path2, &ConnectOptions{Server: Users(other)})
	wantCode(t, err, CodePeerRejected)
	c := must(Connect(path2, &ConnectOptions{Server: Users(uint32(os.Geteuid()))}))
	c.Close()
	c = must(Connect(path2, &ConnectOptions{Server: AnyUser()}))
	c.Close()

	if !SameUser().Admits(PeerCredentials{UID: 0}) || !SameUser().Admits(PeerCredentials{UID: uint32(os.Geteuid())}) {
		t.Fatal("SameUser admits this user and root")
	}
	if os.Geteuid() != 0 && SameUser().Admits(PeerCredentials{UID: uint32(os.Geteuid() + 1)}) {
		t.Fatal("SameUser admits another user")
	}
	if Users(5).Admits(PeerCredentials{UID: 0}) {
		t.Fatal("Users does not imply root")
	}
}

func TestConnectErrors(t *testing.T) {
	checkNoFdLeak(t)
	dir := t.TempDir()
	_, err := Connect(filepath.Join(dir, "nobody.sock"), nil)
	wantCode(t, err, CodeOS)
	if !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("%v", err)
	}
	var se *Error
	if !errors.As(err, &se) || se.Syscall != "connect" || se.Errno != syscall.ENOENT {
		t.Fatalf("%+v", se)
	}
	_, err = Connect("", nil)
	wantCode(t, err, CodeInvalidArg)
	// A server that never sends its HELLO: the handshake times out.
	path := filepath.Join(dir, "raw.sock")
	lfd := must(unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0))
	defer unix.Close(lfd)
	ok(t, unix.Bind(lfd, &unix.SockaddrUnix{Name: path}))
	ok(t, unix.Listen(lfd, 4))
	_, err = Connect(path, &ConnectOptions{Timeout: 30 * time.Millisecond})
	wantCode(t, err, CodeTimedOut)
	// A live listener owns its path.
	_, err = Listen(path, nil)
	wantCode(t, err, CodeOS)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("%v", err)
	}
}

func TestListenReplacesAStaleSocketFile(t *testing.T) {
	checkNoFdLeak(t)
	path := filepath.Join(t.TempDir(), "stale.sock")
	fd := must(unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0))
	ok(t, unix.Bind(fd, &unix.SockaddrUnix{Name: path}))
	unix.Close(fd) // the file stays, nobody listens
	s := listen(t, path, nil)
	c := must(Connect(path, nil))
	c.Close()
	s.Close()
}

func TestAbstractNames(t *testing.T) {
	checkNoFdLeak(t)
	name := fmt.Sprintf("shmlink-go-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	s := listen(t, "\x00"+name, nil)
	// Node writes a leading NUL byte; the interop peers "@".
	c := must(Connect("@"+name, nil))
	defer c.Close()
	e := must(s.Accept())
	defer e.Close()
	ok(t, e.Send([]byte("abstract"), nil))
	if m := must(c.Recv()); string(m.Payload) != "abstract" {
		t.Fatal("payload")
	}
}

func TestMaxPendingBoundsWhatWaitsForAccept(t *testing.T) {
	checkNoFdLeak(t)
	path := filepath.Join(t.TempDir(), "p.sock")
	s := listen(t, path, &ListenOptions{MaxPending: 1, Backlog: 1})
	first := must(Connect(path, &ConnectOptions{Timeout: 5 * time.Second}))
	defer first.Close()
	// The second waits in the kernel's backlog, unaccepted: no HELLO comes.
	second := must(connectTo(path, "test"))
	defer unix.Close(second)
	time.Sleep(50 * time.Millisecond)
	buf := make([]byte, 64)
	if _, _, err := unix.Recvfrom(second, buf, unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Fatalf("a connection past MaxPending got something: %v", err)
	}
	e := must(s.Accept())
	defer e.Close()
	// Taking one makes room: the second is accepted and greeted.
	e2 := must(s.AcceptTimeout(5 * time.Second))
	defer e2.Close()
	pfd := []unix.PollFd{{Fd: int32(second), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, 5000); n != 1 {
		t.Fatal("no HELLO after Accept made room")
	}
}
