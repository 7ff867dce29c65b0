package shmlink

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The hostile receiver cases: a raw peer sends each bad frame; the endpoint must refuse
// it with the documented code, close every descriptor that came with it, shut the
// connection down (the raw peer reads end-of-file) and report the connection closed.

type hostileCase struct {
	Name  string `json:"name"`
	Hello string `json:"hello"`
	Frame string `json:"frame"`
	Pad   int    `json:"pad"`
	Fds   []struct {
		Type  string   `json:"type"`
		Size  int64    `json:"size"`
		Seals []string `json:"seals"`
	} `json:"fds"`
	Expect Code `json:"expect"`
}

// TestHostileFrames plays every case of peers/hostile-frames.json (the cases every
// peer of the interop matrix refuses) against an endpoint in this process.
func TestHostileFrames(t *testing.T) {
	b, err := os.ReadFile("../../hostile-frames.json")
	if err != nil {
		t.Skip("peers/hostile-frames.json is not here (not a checkout of the repository):", err)
	}
	var file struct {
		Cases []hostileCase `json:"cases"`
	}
	ok(t, json.Unmarshal(b, &file))
	if len(file.Cases) < 20 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, c := range file.Cases {
		t.Run(c.Name, func(t *testing.T) { playHostile(t, c) })
	}
}

var sealBits = map[string]int{"shrink": unix.F_SEAL_SHRINK, "grow": unix.F_SEAL_GROW, "write": unix.F_SEAL_WRITE, "seal": unix.F_SEAL_SEAL}

func playHostile(t *testing.T, c hostileCase) {
	checkNoFdLeak(t)
	ep, raw := newRawPair(t, nil)
	raw.recv() // the endpoint's HELLO
	before := openFds(t)
	switch c.Hello {
	case "valid":
		raw.hello()
	case "none":
	default:
		raw.send(must(hex.DecodeString(c.Hello)))
	}
	var fds []int
	for _, spec := range c.Fds {
		switch spec.Type {
		case "memfd":
			seals := 0
			for _, s := range spec.Seals {
				seals |= sealBits[s]
			}
			fds = append(fds, memfd(t, spec.Size, seals))
		case "pipe":
			var p [2]int
			ok(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
			unix.Close(p[1])
			fds = append(fds, p[0])
		case "socket":
			p := must(unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0))
			unix.Close(p[1])
			fds = append(fds, p[0])
		case "file":
			fds = append(fds, diskFile(t, spec.Size))
		default:
			t.Fatalf("unknown descriptor type %q", spec.Type)
		}
	}
	frame := append(must(hex.DecodeString(c.Frame)), make([]byte, c.Pad)...)
	if len(frame) == 0 {
		ok(t, unix.Shutdown(raw.fd, unix.SHUT_WR))
	} else {
		raw.send(frame, fds...)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	_, err := ep.Recv()
	wantCode(t, err, c.Expect)
	if n := openFds(t); n != before {
		t.Fatalf("%d descriptors open after the refusal, %d before the case", n, before)
	}
	raw.expectEOF()
	if !ep.Closed() {
		t.Fatal("the endpoint is still open")
	}
	later := CodeClosed
	if c.Expect == CodePeerClosed {
		later = CodePeerClosed
	}
	_, err = ep.RecvTimeout(0)
	wantCode(t, err, later)
	wantCode(t, ep.Send(nil, nil), later)
}

// diskFile is a regular file on a file system without seals (not tmpfs), unlinked.
func diskFile(t *testing.T, size int64) int {
	t.Helper()
	for _, dir := range []string{os.Getenv("SHMLINK_PEER_TMPDIR"), "/var/tmp", "."} {
		var fs unix.Statfs_t
		if dir == "" || unix.Statfs(dir, &fs) != nil || fs.Type == unix.TMPFS_MAGIC {
			continue
		}
		f, err := os.CreateTemp(dir, "shmlink-test-*")
		if err != nil {
			continue
		}
		os.Remove(f.Name())
		ok(t, f.Truncate(size))
		fd := must(unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0))
		f.Close()
		return fd
	}
	t.Skip("no directory off tmpfs for a disk file")
	return -1
}

// refuse sends frame with fds to a fresh endpoint made with opts and checks the refusal.
func refuse(t *testing.T, opts *Options, code Code, frame []byte, fds ...int) {
	t.Helper()
	ep, raw := newRawPair(t, opts)
	raw.recv()
	raw.hello()
	before := openFds(t) - len(fds)
	raw.send(frame, fds...)
	for _, fd := range fds {
		unix.Close(fd)
	}
	_, err := ep.Recv()
	wantCode(t, err, code)
	if n := openFds(t); n != before {
		t.Fatalf("%d descriptors open after the refusal, %d before", n, before)
	}
	raw.expectEOF()
	_, err = ep.RecvTimeout(0)
	wantCode(t, err, CodeClosed)
}

func TestHugetlbMemfdIsNotShmem(t *testing.T) {
	checkNoFdLeak(t)
	fd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_HUGETLB)
	if err != nil {
		t.Skip("no hugetlbfs memfds here:", err)
	}
	const size = 2 << 20
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		t.Skip("cannot size a hugetlbfs memfd:", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sealed); err != nil {
		unix.Close(fd)
		t.Skip("cannot seal a hugetlbfs memfd:", err)
	}
	refuse(t, nil, CodeRegionNotShmem, message(nil, descriptor{id: 1, flags: flagNew, size: size}), fd)
}

func TestFutureWriteSealWithoutFrozenIsAViolation(t *testing.T) {
	checkNoFdLeak(t)
	fd := memfd(t, 4096, sealed|unix.F_SEAL_FUTURE_WRITE)
	refuse(t, nil, CodeProtocolViolation, message(nil, descriptor{id: 1, flags: flagNew, size: 4096}), fd)
}

func TestOddDescriptorLimitTruncates(t *testing.T) {
	// Room for exactly 1 descriptor (CMSG_LEN): a second is truncated, not admitted.
	checkNoFdLeak(t)
	a, b := memfd(t, 4096, sealed), memfd(t, 4096, sealed)
	d := descriptor{id: 1, flags: flagNew, size: 4096}
	refuse(t, &Options{Limits: Limits{MaxRegions: 1}}, CodeFdsTruncated, message(nil, d, descriptor{id: 2, flags: flagNew, size: 4096}), a, b)
}

func TestTrustPolicy(t *testing.T) {
	checkNoFdLeak(t)
	t.Run("writable refused when frozen only", func(t *testing.T) {
		refuse(t, &Options{FrozenOnly: true}, CodeRegionWritable,
			message(nil, descriptor{id: 1, flags: flagNew, size: 4096}), memfd(t, 4096, sealed))
	})
	t.Run("frozen accepted when frozen only", func(t *testing.T) {
		ep, raw := newRawPair(t, &Options{FrozenOnly: true})
		raw.recv()
		raw.hello()
		fd := memfd(t, 4096, sealed|unix.F_SEAL_WRITE)
		raw.send(message([]byte("x"), descriptor{id: 1, flags: flagNew | flagFrozen, size: 4096}), fd)
		unix.Close(fd)
		m := must(ep.Recv())
		if !m.Regions[0].Frozen() || !m.Descriptors[0].Frozen {
			t.Fatal("not frozen")
		}
		m.Regions[0].Close()
	})
}

func TestConnectionLimits(t *testing.T) {
	checkNoFdLeak(t)
	d := func(id uint32, size uint64) descriptor { return descriptor{id: id, flags: flagNew, size: size} }
	t.Run("MaxRegionSize", func(t *testing.T) {
		refuse(t, &Options{Limits: Limits{MaxRegionSize: 8192}}, CodeLimitExceeded, message(nil, d(1, 16384)), memfd(t, 16384, sealed))
	})
	t.Run("MaxBoundRegions", func(t *testing.T) {
		ep, raw := newRawPair(t, &Options{Limits: Limits{MaxBoundRegions: 1}})
		raw.recv()
		raw.hello()
		fd := memfd(t, 4096, sealed)
		raw.send(message(nil, d(1, 4096)), fd)
		unix.Close(fd)
		m := must(ep.Recv())
		defer m.Regions[0].Close()
		fd = memfd(t, 4096, sealed)
		raw.send(message(nil, d(2, 4096)), fd)
		unix.Close(fd)
		_, err := ep.Recv()
		wantCode(t, err, CodeLimitExceeded)
		raw.expectEOF()
	})
	t.Run("MaxMappedBytes counts a file once", func(t *testing.T) {
		ep, raw := newRawPair(t, &Options{Limits: Limits{MaxMappedBytes: 8192}})
		raw.recv()
		raw.hello()
		fd := memfd(t, 4096, sealed)
		// The same file under two ids holds 4096 bytes, not 8192.
		raw.send(message(nil, d(1, 4096), d(2, 4096)), fd, fd)
		m := must(ep.Recv())
		if m.Regions[0] != m.Regions[1] {
			t.Fatal("one file is one *Region")
		}
		if st := ep.Stats(); st.PeerRegions != 2 || st.PeerMappedBytes != 4096 {
			t.Fatalf("stats %+v", st)
		}
		two := memfd(t, 4096, sealed)
		raw.send(message(nil, d(3, 4096)), two)
		m2 := must(ep.Recv())
		three := memfd(t, 4096, sealed)
		raw.send(message(nil, d(4, 4096)), three)
		_, err := ep.Recv()
		wantCode(t, err, CodeLimitExceeded)
		for _, fd := range []int{fd, two, three} {
			unix.Close(fd)
		}
		m.Regions[0].Close()
		m2.Regions[0].Close()
		raw.expectEOF()
	})
}

func TestProcessLimits(t *testing.T) {
	checkNoFdLeak(t)
	old := GetProcessStats()
	base := old.Regions
	ok(t, SetProcessLimits(ProcessLimits{MaxMappedBytes: 1 << 30, MaxRegions: base + 1}))
	defer SetProcessLimits(ProcessLimits{MaxMappedBytes: old.MaxMappedBytes, MaxRegions: old.MaxRegions})
	wantCode(t, SetProcessLimits(ProcessLimits{}), CodeInvalidArg)

	// Two connections, each inside its own limits: together over the process's.
	ep1, raw1 := newRawPair(t, nil)
	raw1.recv()
	raw1.hello()
	fd := memfd(t, 4096, sealed)
	raw1.send(message(nil, descriptor{id: 1, flags: flagNew, size: 4096}), fd)
	unix.Close(fd)
	m := must(ep1.Recv())
	if st := GetProcessStats(); st.Regions != base+1 || st.MappedBytes < 4096 {
		t.Fatalf("process stats %+v", st)
	}
	refuse(t, nil, CodeLimitExceeded, message(nil, descriptor{id: 1, flags: flagNew, size: 4096}), memfd(t, 4096, sealed))
	m.Regions[0].Close()
	if st := GetProcessStats(); st.Regions != base {
		t.Fatalf("closing a region gives its share back: %+v", st)
	}
}
