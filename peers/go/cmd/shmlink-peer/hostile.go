package main

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

type hostileFile struct {
	Version int           `json:"version"`
	Cases   []hostileCase `json:"cases"`
}

type hostileCase struct {
	Name   string      `json:"name"`
	Hello  string      `json:"hello"`
	Frame  string      `json:"frame"`
	Pad    int         `json:"pad"`
	Fds    []hostileFd `json:"fds"`
	Expect string      `json:"expect"`
}

type hostileFd struct {
	Type  string   `json:"type"`
	Size  int64    `json:"size"`
	Seals []string `json:"seals"`
}

func loadCase(path, name string) (*hostileCase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f hostileFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("%s: unsupported version %d", path, f.Version)
	}
	for i := range f.Cases {
		if f.Cases[i].Name == name {
			return &f.Cases[i], nil
		}
	}
	return nil, fmt.Errorf("%s: no case named %q", path, name)
}

// runHostile plays SCENARIO.md "Role hostile": send a malformed HELLO or
// frame with arbitrary descriptors, then wait for the receiver to shut the
// connection down. It talks to the raw socket; the shmlink package would
// refuse to send any of this.
func runHostile(c connector, path, name string) error {
	hc, err := loadCase(path, name)
	if err != nil {
		return err
	}
	var hello []byte
	switch hc.Hello {
	case "valid":
		hello = validHello()
	case "none":
	default:
		if hello, err = hex.DecodeString(hc.Hello); err != nil {
			return fmt.Errorf("case %s: hello: %w", name, err)
		}
	}
	frame, err := hex.DecodeString(hc.Frame)
	if err != nil {
		return fmt.Errorf("case %s: frame: %w", name, err)
	}
	if hc.Pad > 0 {
		frame = append(frame, make([]byte, hc.Pad)...)
	}

	fd, err := c.rawSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if hello != nil {
		if err := unix.Sendmsg(fd, hello, nil, nil, unix.MSG_NOSIGNAL); err != nil {
			return fmt.Errorf("sending HELLO: %w", err)
		}
	}
	fds, cleanup, err := makeFds(hc.Fds)
	defer cleanup()
	if err != nil {
		return fmt.Errorf("case %s: %w", name, err)
	}
	if len(frame) == 0 {
		// "Send nothing and close the connection at once." We shut down
		// our sending side rather than close(2): closing with the peer's
		// HELLO still unread in our queue makes Linux report ECONNRESET to
		// the peer before it has read what we sent, which would hide the
		// HELLO it is meant to refuse.
		unix.Shutdown(fd, unix.SHUT_WR)
	} else {
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(fd, frame, oob, nil, unix.MSG_NOSIGNAL); err != nil {
			return fmt.Errorf("sending frame: %w", err)
		}
	}
	cleanup() // our copies are no longer needed; the peer has its own
	return waitEOF(fd)
}

// waitEOF reads and discards records (closing any descriptors) until
// end-of-file, for at most the socket's 60 s receive timeout.
func waitEOF(fd int) error {
	buf := make([]byte, 1<<17)
	oob := make([]byte, unix.CmsgSpace(4*shmlink.MaxRegionsCeiling))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if oobn > 0 {
			closeRights(oob[:oobn])
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ECONNRESET:
			return nil // the peer closed; that is the end-of-file we wait for
		case err == unix.EAGAIN:
			return errors.New("the peer did not shut the connection down within 60 s")
		case err != nil:
			return fmt.Errorf("recvmsg: %w", err)
		case n == 0 && oobn == 0:
			return nil
		}
	}
}

func closeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}

// makeFds creates the descriptors of a hostile case. cleanup closes all
// of them (and any helper descriptors); it is safe to call twice.
func makeFds(specs []hostileFd) (fds []int, cleanup func(), err error) {
	var all []int
	cleanup = func() {
		for _, fd := range all {
			unix.Close(fd)
		}
		all = nil
	}
	for i, s := range specs {
		fd, extra, err := makeFd(s)
		if err != nil {
			return nil, cleanup, fmt.Errorf("fd %d (%s): %w", i, s.Type, err)
		}
		fds = append(fds, fd)
		all = append(all, fd)
		if extra >= 0 {
			all = append(all, extra)
		}
	}
	return fds, cleanup, nil
}

var sealBits = map[string]int{
	"shrink": unix.F_SEAL_SHRINK,
	"grow":   unix.F_SEAL_GROW,
	"write":  unix.F_SEAL_WRITE,
	"seal":   unix.F_SEAL_SEAL,
}

// makeFd returns the descriptor to send and a helper descriptor to close
// afterwards (the other end of a pipe or socketpair), or -1.
func makeFd(s hostileFd) (fd, extra int, err error) {
	switch s.Type {
	case "memfd":
		fd, err := unix.MemfdCreate("shmlink-hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			return -1, -1, err
		}
		if err := unix.Ftruncate(fd, s.Size); err != nil {
			unix.Close(fd)
			return -1, -1, err
		}
		seals := 0
		for _, name := range s.Seals {
			bit, ok := sealBits[name]
			if !ok {
				unix.Close(fd)
				return -1, -1, fmt.Errorf("unknown seal %q", name)
			}
			seals |= bit
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				unix.Close(fd)
				return -1, -1, err
			}
		}
		return fd, -1, nil
	case "pipe":
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return -1, -1, err
		}
		return p[0], p[1], nil
	case "socket":
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, -1, err
		}
		return p[0], p[1], nil
	case "file":
		dir := os.Getenv("SHMLINK_PEER_TMPDIR")
		if dir == "" {
			// SCENARIO.md names the variable but no fallback. The file
			// must not be on tmpfs (a tmpfs file can carry seals, so it
			// would be refused as unsealed, not as not-a-memfd).
			dir = "/var/tmp"
		}
		f, err := os.CreateTemp(dir, "shmlink-hostile-*")
		if err != nil {
			return -1, -1, err
		}
		defer f.Close()
		os.Remove(f.Name())
		if err := f.Truncate(s.Size); err != nil {
			return -1, -1, err
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return -1, -1, err
		}
		return fd, -1, nil
	}
	return -1, -1, fmt.Errorf("unknown descriptor type %q", s.Type)
}

// runExpectHostile plays SCENARIO.md "Role expect-hostile": the first receive (which
// includes reading the peer's HELLO: Connect does that part) must fail with the code the
// case expects. The library has then closed every descriptor of the refused record and
// shut the socket down.
func runExpectHostile(c connector, path, name string) error {
	hc, err := loadCase(path, name)
	if err != nil {
		return err
	}
	ep, err := c.endpoint()
	if err == nil {
		defer ep.Close()
		var msg *shmlink.Message
		if msg, err = ep.RecvTimeout(timeout); err == nil {
			for _, r := range msg.Regions {
				r.Close()
			}
			return fmt.Errorf("case %s: the frame was accepted (expected %s)", name, hc.Expect)
		}
	}
	if got := shmlink.CodeOf(err); string(got) != hc.Expect {
		return fmt.Errorf("case %s: refused with %v, expected %s", name, err, hc.Expect)
	}
	return nil
}

// validHello is a version-2 HELLO announcing 32 regions, 65536 payload bytes and no
// capabilities (docs/PROTOCOL.md §3, §8).
func validHello() []byte {
	h := []byte{1, 0, 0, 0, 20, 0, 0, 0, 'S', 'H', 'M', 'L', 'I', 'N', 'K', 0}
	h = binary.LittleEndian.AppendUint16(h, shmlink.ProtocolVersion)
	h = binary.LittleEndian.AppendUint16(h, 32)
	h = binary.LittleEndian.AppendUint32(h, 65536)
	return binary.LittleEndian.AppendUint32(h, 0)
}

// rawSocket is a connected SOCK_SEQPACKET socket for the hostile role, which must send
// what the library refuses to: connected (retrying while nobody listens yet), or the
// one connection accepted in listen mode. Receives time out after 60 s.
func (c connector) rawSocket() (int, error) {
	fd, err := c.rawConnect()
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	return fd, nil
}

func (c connector) rawConnect() (int, error) {
	addr := &unix.SockaddrUnix{Name: c.path}
	if c.listen {
		lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(lfd)
		if err := unix.Bind(lfd, addr); err != nil {
			return -1, fmt.Errorf("bind %s: %w", c.path, err)
		}
		if c.path[0] != '@' {
			defer os.Remove(c.path)
		}
		if err := unix.Listen(lfd, 1); err != nil {
			return -1, fmt.Errorf("listen: %w", err)
		}
		fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, int(timeout.Milliseconds()))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return -1, fmt.Errorf("poll: %w", err)
			}
			if n == 0 {
				return -1, errors.New("no connection within 60 s")
			}
			break
		}
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		return fd, nil
	}
	deadline := time.Now().Add(connectRetry)
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("socket: %w", err)
		}
		err = unix.Connect(fd, addr)
		if err == nil {
			return fd, nil
		}
		unix.Close(fd)
		if (err == unix.ENOENT || err == unix.ECONNREFUSED) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		return -1, fmt.Errorf("connect %s: %w", c.path, err)
	}
}
