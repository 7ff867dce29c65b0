// Command shmlink-peer is the Go interop peer of shmlink: a thin program on the public
// API of package shmlink that plays the roles of peers/SCENARIO.md:
//
//	shmlink-peer [listen] driver    <socket-path> <scenario.json> <transcript-out>
//	shmlink-peer [listen] responder <socket-path> <transcript-out>
//	shmlink-peer [listen] echo      <socket-path>
//	shmlink-peer [listen] hostile   <socket-path> <hostile-frames.json> <case-name>
//	shmlink-peer [listen] expect-hostile <socket-path> <hostile-frames.json> <case-name>
//
// It connects to <socket-path> ("@name" is a Linux abstract name), or with "listen"
// binds it and accepts one connection. The test harness starts the peers it pairs, so
// they trust each other with writable regions (AcceptWritable). Only the hostile role
// talks to the raw socket: the library refuses to send what that role sends.
//
// It exits 0 when the role completed and every check passed; otherwise it prints one
// line to stderr and exits 1.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

// timeout bounds every wait (SCENARIO.md: never more than 60 seconds).
const timeout = 60 * time.Second

// connectRetry is how long a connecting peer retries while the socket does not exist
// or does not listen yet.
const connectRetry = 10 * time.Second

const usage = `usage:
  shmlink-peer [listen] driver    <socket-path> <scenario.json> <transcript-out>
  shmlink-peer [listen] responder <socket-path> <transcript-out>
  shmlink-peer [listen] echo      <socket-path>
  shmlink-peer [listen] hostile   <socket-path> <hostile-frames.json> <case-name>
  shmlink-peer [listen] expect-hostile <socket-path> <hostile-frames.json> <case-name>`

func main() {
	args := os.Args[1:]
	listen := len(args) > 0 && args[0] == "listen"
	if listen {
		args = args[1:]
	}
	want := map[string]int{"driver": 4, "responder": 3, "echo": 2, "hostile": 4, "expect-hostile": 4}
	if len(args) < 2 || want[args[0]] != len(args) {
		fail("", fmt.Errorf("bad command line %q; %s", strings.Join(os.Args[1:], " "), strings.ReplaceAll(usage, "\n", " ")))
	}
	role := args[0]
	c := connector{path: args[1], listen: listen}
	var err error
	switch role {
	case "driver":
		err = runDriver(c, args[2], args[3])
	case "responder":
		err = runResponder(c, args[2])
	case "echo":
		err = runEcho(c)
	case "hostile":
		err = runHostile(c, args[2], args[3])
	case "expect-hostile":
		err = runExpectHostile(c, args[2], args[3])
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

// connector makes the connection of a role.
type connector struct {
	path   string
	listen bool
}

// endpoint connects (retrying while nobody listens yet) or listens and accepts one
// connection; the handshake is done when it returns.
func (c connector) endpoint() (*shmlink.Endpoint, error) {
	if c.listen {
		server, err := shmlink.Listen(c.path, &shmlink.ListenOptions{AcceptWritable: true})
		if err != nil {
			return nil, err
		}
		defer server.Close()
		return server.AcceptTimeout(timeout)
	}
	deadline := time.Now().Add(connectRetry)
	for {
		ep, err := shmlink.Connect(c.path, &shmlink.ConnectOptions{AcceptWritable: true, Timeout: timeout})
		if err == nil || !notListening(err) || time.Now().After(deadline) {
			return ep, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func notListening(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}
