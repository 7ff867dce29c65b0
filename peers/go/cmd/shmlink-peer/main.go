// Command shmlink-peer is the Go interop peer for shmlink. It plays the
// roles of peers/SCENARIO.md against any other peer:
//
//	shmlink-peer driver    <socket-path> <scenario.json> <transcript-out>
//	shmlink-peer responder <socket-path> <transcript-out>
//	shmlink-peer echo      <socket-path>
//	shmlink-peer hostile   <socket-path> <hostile-frames.json> <case-name>
//	shmlink-peer expect-hostile <socket-path> <hostile-frames.json> <case-name>
//
// Like the Rust peer it also accepts "listen" before the role, to bind the
// socket path and accept one connection instead of connecting.
//
// It exits 0 when the role completed and every check passed; otherwise it
// prints one line to stderr and exits 1.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"shmlink.dev/peers/go/shmlink"
)

// timeout bounds every wait (SCENARIO.md: never more than 60 seconds).
const timeout = 60 * time.Second

// connectRetry is how long a connecting peer retries while the socket
// does not exist yet or is not listening yet, so that a harness that starts
// both sides at once does not race.
const connectRetry = 10 * time.Second

const usage = `usage:
  shmlink-peer [listen] driver    <socket-path> <scenario.json> <transcript-out>
  shmlink-peer [listen] responder <socket-path> <transcript-out>
  shmlink-peer [listen] echo      <socket-path>
  shmlink-peer [listen] hostile   <socket-path> <hostile-frames.json> <case-name>
  shmlink-peer [listen] expect-hostile <socket-path> <hostile-frames.json> <case-name>`

func main() {
	args := os.Args[1:]
	listen := false
	if len(args) > 0 && args[0] == "listen" {
		listen = true
		args = args[1:]
	}
	if len(args) < 2 {
		fail("", errors.New(strings.ReplaceAll(usage, "\n", " ")))
	}
	role, sock := args[0], args[1]
	want := map[string]int{"driver": 4, "responder": 3, "echo": 2, "hostile": 4, "expect-hostile": 4}
	n, ok := want[role]
	if !ok || len(args) != n {
		fail(role, fmt.Errorf("bad command line %q; %s", strings.Join(os.Args[1:], " "), strings.ReplaceAll(usage, "\n", " ")))
	}
	conn := connector{path: sock, listen: listen}
	var err error
	switch role {
	case "driver":
		err = runDriver(conn, args[2], args[3])
	case "responder":
		err = runResponder(conn, args[2])
	case "echo":
		err = runEcho(conn)
	case "hostile":
		err = runHostile(conn, args[2], args[3])
	case "expect-hostile":
		err = runExpectHostile(conn, args[2], args[3])
	}
	if err != nil {
		fail(role, err)
	}
}

func fail(role string, err error) {
	line := strings.ReplaceAll(err.Error(), "\n", " ")
	if role != "" {
		fmt.Fprintf(os.Stderr, "shmlink-peer %s: %s\n", role, line)
	} else {
		fmt.Fprintf(os.Stderr, "shmlink-peer: %s\n", line)
	}
	os.Exit(1)
}

// connector produces the connected socket for a role.
type connector struct {
	path   string
	listen bool
}

// socket returns a connected SOCK_SEQPACKET socket with SO_RCVTIMEO and
// SO_SNDTIMEO set.
func (c connector) socket() (int, error) {
	if c.listen {
		return c.accept()
	}
	deadline := time.Now().Add(connectRetry)
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("socket: %w", err)
		}
		if err := setTimeouts(fd); err != nil {
			unix.Close(fd)
			return -1, err
		}
		err = unix.Connect(fd, shmlink.SockaddrFor(c.path))
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

func (c connector) accept() (int, error) {
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, shmlink.SockaddrFor(c.path)); err != nil {
		return -1, fmt.Errorf("bind %s: %w", c.path, err)
	}
	if !shmlink.IsAbstract(c.path) {
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
	if err := setTimeouts(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func setTimeouts(fd int) error {
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_SNDTIMEO: %w", err)
	}
	return nil
}

// endpoint connects and wraps the socket in a shmlink endpoint (which sends
// our HELLO: 32 regions, 65536 payload bytes, as every peer announces).
func (c connector) endpoint() (*shmlink.Endpoint, error) {
	fd, err := c.socket()
	if err != nil {
		return nil, err
	}
	return shmlink.NewEndpoint(fd, &shmlink.Options{Timeout: timeout})
}
