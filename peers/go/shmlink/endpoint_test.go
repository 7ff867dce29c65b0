package shmlink

import (
	"bytes"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openFds counts this process's open descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// memfdMappings counts mappings of our memory files.
func memfdMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "/memfd:shmlink")
}

func seqpacketPair(t *testing.T) (int, int) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p[0], p[1]
}

var testOpts = &Options{Timeout: 5 * time.Second}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	s = strings.Join(strings.Fields(s), "")
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawRecv reads one record from a raw socket, closing any descriptors and
// returning how many there were.
func rawRecv(t *testing.T, fd int) ([]byte, int) {
	t.Helper()
	buf := make([]byte, 1<<17)
	oob := make([]byte, unix.CmsgSpace(4*64))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("recvmsg: %v", err)
	}
	nfds := 0
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for i := range msgs {
			fds, err := unix.ParseUnixRights(&msgs[i])
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			nfds += len(fds)
		}
	}
	return buf[:n], nfds
}

// TestWireExample checks the bytes of PROTOCOL.md §8.
func TestWireExample(t *testing.T) {
	a, raw := seqpacketPair(t)
	defer unix.Close(raw)
	ep, err := NewEndpoint(a, &Options{MaxRegions: 32, MaxPayload: 65536, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	hello, _ := rawRecv(t, raw)
	if want := mustHex(t, "01 00 00 00 10 00 00 00 53 48 4d 4c 49 4e 4b 00 01 00 20 00 00 00 01 00"); !bytes.Equal(hello, want) {
		t.Fatalf("HELLO = % x", hello)
	}
	if err := unix.Sendmsg(raw, AppendHello(nil, 32, 65536), nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	r1, err := NewRegion(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := NewRegion(65536)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := r2.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := ep.Send([]byte("hello"), Attachment{r1, true}, Attachment{r2, false}); err != nil {
		t.Fatal(err)
	}
	frame, nfds := rawRecv(t, raw)
	want := mustHex(t, `02 00 02 00 05 00 00 00 01 00 00 00 05 00 00 00
		00 10 00 00 00 00 00 00 02 00 00 00 03 00 00 00
		00 00 01 00 00 00 00 00 68 65 6c 6c 6f`)
	if !bytes.Equal(frame, want) || nfds != 2 {
		t.Fatalf("MESSAGE = % x with %d fds", frame, nfds)
	}
	if err := ep.Release(r1); err != nil {
		t.Fatal(err)
	}
	frame, nfds = rawRecv(t, raw)
	want = mustHex(t, "03 00 01 00 00 00 00 00 01 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00")
	if !bytes.Equal(frame, want) || nfds != 0 {
		t.Fatalf("RELEASE = % x with %d fds", frame, nfds)
	}
	// Ids are never reused: r1 comes back as id 3; r2 is still bound.
	if err := ep.Send(nil, Attachment{r2, false}, Attachment{r1, false}); err != nil {
		t.Fatal(err)
	}
	frame, nfds = rawRecv(t, raw)
	want = mustHex(t, `02 00 02 00 00 00 00 00 02 00 00 00 02 00 00 00 00 00 01 00 00 00 00 00
		03 00 00 00 01 00 00 00 00 10 00 00 00 00 00 00`)
	if !bytes.Equal(frame, want) || nfds != 1 {
		t.Fatalf("MESSAGE = % x with %d fds", frame, nfds)
	}
}

// TestRoundTrip sends regions both ways between two endpoints and checks
// ids, flags, dedupe of returning regions, RELEASE, and that nothing leaks.
func TestRoundTrip(t *testing.T) {
	fds0, maps0 := openFds(t), memfdMappings(t)
	a, b := seqpacketPair(t)
	ea, err := NewEndpoint(a, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := NewEndpoint(b, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewRegion(8192)
	f, _ := NewRegion(4096)
	copy(r.Bytes(), "shared")
	copy(f.Bytes(), "frozen")
	if err := f.Freeze(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("WriteAt on a frozen region: %v", err)
	}
	// The same region twice: NEW once, then by id.
	if err := ea.Send([]byte("p"), Attachment{r, true}, Attachment{f, false}, Attachment{r, true}); err != nil {
		t.Fatal(err)
	}
	m, err := eb.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := m.Regions
	if string(m.Payload) != "p" || len(got) != 3 ||
		got[0].ID != 1 || !got[0].New || !got[0].Transfer || got[0].Frozen ||
		got[1].ID != 2 || !got[1].New || !got[1].Frozen ||
		got[2].ID != 1 || got[2].New || got[0].Region != got[2].Region {
		t.Fatalf("received %+v", got)
	}
	// Both ends live in this process, so the files resolve to the very
	// objects that were sent (the registry is process-wide).
	if got[0].Region != r || got[1].Region != f {
		t.Fatal("received regions not resolved to the objects of this process")
	}
	copy(got[0].Region.Bytes(), "stamped")
	if err := eb.Send(nil, Attachment{got[0].Region, true}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	back, err := ea.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Regions) != 1 || back.Regions[0].Region != r || back.Regions[0].ID != 1 || !back.Regions[0].New {
		t.Fatalf("returned region not resolved to ours: %+v", back.Regions)
	}
	if string(r.Bytes()[:7]) != "stamped" {
		t.Fatal("shared write not visible")
	}
	back.Close()
	// RELEASE, then the region goes out again under a fresh id.
	if err := ea.Release(r); err != nil {
		t.Fatal(err)
	}
	if err := ea.Send(nil, Attachment{r, false}); err != nil {
		t.Fatal(err)
	}
	m, err = eb.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.Regions[0].ID != 3 || !m.Regions[0].New {
		t.Fatalf("after RELEASE: %+v", m.Regions)
	}
	m.Close()
	if err := ea.Release(f); err != nil {
		t.Fatal(err)
	}
	ea.Close()
	if _, err := eb.Recv(); CodeOf(err) != CodePeerClosed {
		t.Fatalf("after close: %v", err)
	}
	if _, err := eb.Recv(); CodeOf(err) != CodePeerClosed {
		t.Fatalf("second receive after close: %v", err)
	}
	eb.Close()
	r.Close()
	f.Close()
	if n := openFds(t); n != fds0 {
		t.Fatalf("%d descriptors open, %d before", n, fds0)
	}
	if n := memfdMappings(t); n != maps0 {
		t.Fatalf("%d memfd mappings, %d before", n, maps0)
	}
}

type fdSpec struct {
	kind  string // memfd, pipe, socket, file
	size  int64
	seals int
}

var sealed = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

func makeTestFd(t *testing.T, s fdSpec) int {
	t.Helper()
	switch s.kind {
	case "memfd":
		fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, s.size); err != nil {
			t.Fatal(err)
		}
		if s.seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, s.seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	case "pipe":
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return p[0]
	case "socket":
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return p[0]
	case "file":
		f, err := os.CreateTemp(t.TempDir(), "file")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(s.size); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	t.Fatalf("bad kind %q", s.kind)
	return -1
}

func memfds(n int, size int64, seals int) []fdSpec {
	s := make([]fdSpec, n)
	for i := range s {
		s[i] = fdSpec{"memfd", size, seals}
	}
	return s
}

func desc(id, flags uint32, size uint64) string {
	var b [16]byte
	putDescriptor(b[:], descriptor{id, flags, size})
	return hex.EncodeToString(b[:])
}

func hdr(kind, flags uint8, rc uint16, pl uint32) string {
	var b [8]byte
	putHeader(b[:], header{kind, flags, rc, pl})
	return hex.EncodeToString(b[:])
}

var validHello = hex.EncodeToString(AppendHello(nil, 32, 65536))

type hostileCase struct {
	name    string
	hello   string   // hex; "" sends none
	pre     []string // valid frames sent first (hex) with one sealed 4 KiB memfd per NEW
	frame   string   // hex
	pad     int
	fds     []fdSpec
	opts    *Options // receiver options, default testOpts
	eof     bool     // close the hostile side instead of sending frame
	expect  string
	premsgs int // messages the receiver must accept before the refusal
}

var hostileCases = []hostileCase{
	{name: "memfd_without_seals", frame: hdr(2, 0, 1, 1) + desc(1, FlagNew, 4096) + "78", fds: memfds(1, 4096, 0), expect: CodeRegionUnsealed},
	{name: "memfd_that_can_shrink", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(1, 4096, unix.F_SEAL_GROW), expect: CodeRegionUnsealed},
	{name: "frozen_without_write_seal", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew|FlagFrozen, 4096), fds: memfds(1, 4096, sealed), expect: CodeRegionUnsealed},
	{name: "write_seal_without_frozen", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(1, 4096, sealed|unix.F_SEAL_WRITE), expect: CodeProtocolViolation},
	{name: "future_write_seal_without_frozen", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(1, 4096, sealed|unix.F_SEAL_FUTURE_WRITE), expect: CodeProtocolViolation},
	{name: "pipe", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: []fdSpec{{kind: "pipe"}}, expect: CodeRegionNotMemfd},
	{name: "socket", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: []fdSpec{{kind: "socket"}}, expect: CodeRegionNotMemfd},
	{name: "size_larger", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 8192), fds: memfds(1, 4096, sealed), expect: CodeRegionSizeMismatch},
	{name: "size_smaller", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(1, 8192, sealed), expect: CodeRegionSizeMismatch},
	// The second descriptor fails: the first, already mapped, must be undone.
	{name: "second_of_two_bad", frame: hdr(2, 0, 2, 0) + desc(1, FlagNew, 4096) + desc(2, FlagNew, 4096), fds: append(memfds(1, 4096, sealed), fdSpec{kind: "pipe"}), expect: CodeRegionNotMemfd},
	{name: "more_fds_than_new", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(2, 4096, sealed), expect: CodeProtocolViolation},
	{name: "fewer_fds_than_new", frame: hdr(2, 0, 2, 0) + desc(1, FlagNew, 4096) + desc(2, FlagNew, 4096), fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "fds_without_new", frame: hdr(2, 0, 0, 1) + "00", fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "40_fds_ctrunc", frame: hdr(2, 0, 0, 0), fds: memfds(40, 4096, sealed), expect: CodeFdsTruncated},
	// With an odd limit, CMSG_SPACE would leave room for one extra fd.
	{name: "odd_limit_one_too_many", frame: hdr(2, 0, 0, 0), fds: memfds(4, 4096, sealed), opts: &Options{MaxRegions: 3, Timeout: 5 * time.Second}, expect: CodeFdsTruncated},
	{name: "odd_limit_exact", frame: hdr(2, 0, 3, 0) + desc(1, FlagNew, 4096) + desc(2, FlagNew, 4096) + desc(3, FlagNew, 4096), fds: append(memfds(2, 4096, sealed), fdSpec{kind: "pipe"}), opts: &Options{MaxRegions: 3, Timeout: 5 * time.Second}, expect: CodeRegionNotMemfd},
	{name: "disk_file", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: []fdSpec{{kind: "file", size: 4096}}, expect: CodeRegionNotMemfd},
	{name: "unknown_id", frame: hdr(2, 0, 1, 0) + desc(42, 0, 4096), expect: CodeProtocolViolation},
	{name: "id_zero", frame: hdr(2, 0, 1, 0) + desc(0, FlagNew, 4096), fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "size_zero", frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 0), fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "truncated_header", frame: "0200000005", expect: CodeProtocolViolation},
	{name: "payload_length_lies", frame: hdr(2, 0, 0, 200) + "7477656c7665206279746573", expect: CodeProtocolViolation},
	{name: "region_count_lies", frame: hdr(2, 0, 3, 0) + desc(1, 0, 4096), expect: CodeProtocolViolation},
	{name: "reserved_header_flags", frame: hdr(2, 1, 0, 0), expect: CodeProtocolViolation},
	{name: "unknown_descriptor_flags", frame: hdr(2, 0, 1, 0) + desc(1, 0x41, 4096), fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "unknown_kind", frame: hdr(9, 0, 0, 0), expect: CodeProtocolViolation},
	{name: "release_unbound", frame: hdr(3, 0, 1, 0) + desc(9, 0, 64), expect: CodeProtocolViolation},
	{name: "release_with_payload", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(3, 0, 1, 1) + desc(1, 0, 4096) + "00", expect: CodeProtocolViolation},
	{name: "release_with_flags", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(3, 0, 1, 0) + desc(1, FlagTransfer, 4096), expect: CodeProtocolViolation},
	{name: "release_twice_in_one_frame", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(3, 0, 2, 0) + desc(1, 0, 4096) + desc(1, 0, 4096), expect: CodeProtocolViolation},
	{name: "new_for_bound_id", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "new_twice_in_one_frame", frame: hdr(2, 0, 2, 0) + desc(1, FlagNew, 4096) + desc(1, FlagNew, 4096), fds: memfds(2, 4096, sealed), expect: CodeProtocolViolation},
	{name: "reference_size_differs", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(2, 0, 1, 0) + desc(1, 0, 8192), expect: CodeProtocolViolation},
	{name: "reference_frozen_differs", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096)}, premsgs: 1, frame: hdr(2, 0, 1, 0) + desc(1, FlagFrozen, 4096), expect: CodeProtocolViolation},
	{name: "reference_after_release", pre: []string{hdr(2, 0, 1, 0) + desc(1, FlagNew, 4096), hdr(3, 0, 1, 0) + desc(1, 0, 4096)}, premsgs: 1, frame: hdr(2, 0, 1, 0) + desc(1, 0, 4096), expect: CodeProtocolViolation},
	{name: "payload_over_limit", frame: hdr(2, 0, 0, 65537), pad: 65537, expect: CodeProtocolViolation},
	{name: "payload_over_small_limit", frame: hdr(2, 0, 0, 11), pad: 11, opts: &Options{MaxPayload: 10, Timeout: 5 * time.Second}, expect: CodeProtocolViolation},
	{name: "regions_over_limit", frame: hdr(2, 0, 2, 0) + desc(1, 0, 4096) + desc(2, 0, 4096), opts: &Options{MaxRegions: 1, Timeout: 5 * time.Second}, expect: CodeProtocolViolation},
	{name: "record_too_long", frame: hdr(2, 0, 0, 0), pad: 70000, expect: CodeProtocolViolation},
	{name: "second_hello", frame: validHello, expect: CodeProtocolViolation},
	{name: "message_before_hello", hello: "-", frame: hdr(2, 0, 0, 5) + "6561726c79", expect: CodeProtocolViolation},
	{name: "wrong_magic", hello: "01000000100000004e4f5453484d4c4b0100200000000100", eof: true, expect: CodePeerIncompatible},
	{name: "wrong_version", hello: "010000001000000053484d4c494e4b000200200000000100", eof: true, expect: CodePeerIncompatible},
	{name: "longer_hello_of_version_2", hello: "010000001400000053484d4c494e4b00020020000000010000000000", eof: true, expect: CodePeerIncompatible},
	{name: "hello_max_regions_0", hello: "010000001000000053484d4c494e4b000100000000000100", eof: true, expect: CodeProtocolViolation},
	{name: "hello_max_regions_254", hello: "010000001000000053484d4c494e4b000100fe0000000100", eof: true, expect: CodeProtocolViolation},
	{name: "hello_max_payload_65537", hello: "010000001000000053484d4c494e4b000100200001000100", eof: true, expect: CodeProtocolViolation},
	{name: "hello_short", hello: "010000000c00000053484d4c494e4b000100", eof: true, expect: CodeProtocolViolation},
	{name: "hello_with_fds", hello: "-", frame: validHello, fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "empty_record_with_fd", frame: "", fds: memfds(1, 4096, sealed), expect: CodeProtocolViolation},
	{name: "end_of_file_after_hello", eof: true, expect: CodePeerClosed},
}

// TestHostile plays each case against an Endpoint over a socketpair and
// checks the error code, that the refusing side shut the socket down, and
// that every descriptor and mapping that arrived is gone.
func TestHostile(t *testing.T) {
	for _, c := range hostileCases {
		t.Run(c.name, func(t *testing.T) {
			a, raw := seqpacketPair(t)
			defer unix.Close(raw)
			opts := c.opts
			if opts == nil {
				opts = testOpts
			}
			ep, err := NewEndpoint(a, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Close()
			fds0, maps0 := openFds(t), memfdMappings(t)

			switch c.hello {
			case "":
				mustSend(t, raw, mustHex(t, validHello), nil)
			case "-":
			default:
				mustSend(t, raw, mustHex(t, c.hello), nil)
			}
			for _, p := range c.pre {
				frame := mustHex(t, p)
				h := getHeader(frame)
				var fds []int
				for i := 0; i < int(h.regionCount); i++ {
					if getDescriptor(frame[8+16*i:]).flags&FlagNew != 0 {
						fds = append(fds, makeTestFd(t, fdSpec{"memfd", 4096, sealed}))
					}
				}
				mustSend(t, raw, frame, fds)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
			var fds []int
			for _, s := range c.fds {
				fds = append(fds, makeTestFd(t, s))
			}
			if c.eof {
				unix.Shutdown(raw, unix.SHUT_WR)
			} else {
				frame := append(mustHex(t, c.frame), make([]byte, c.pad)...)
				mustSend(t, raw, frame, fds)
			}
			for i := 0; i < c.premsgs; i++ {
				m, err := ep.Recv()
				if err != nil {
					t.Fatalf("valid frame %d refused: %v", i, err)
				}
				m.Close()
			}
			_, err = ep.Recv()
			if CodeOf(err) != c.expect {
				t.Fatalf("got %v, want %s", err, c.expect)
			}
			if _, err2 := ep.Recv(); c.expect != CodePeerClosed && CodeOf(err2) != CodeClosed {
				t.Fatalf("after the failure: %v, want %s", err2, CodeClosed)
			}
			if c.expect != CodePeerClosed {
				// The refusing side shut down: we read its HELLO, then EOF.
				unix.Shutdown(raw, unix.SHUT_WR)
				if rec, _ := rawRecv(t, raw); len(rec) != 24 {
					t.Fatalf("expected the HELLO, got % x", rec)
				}
				if rec, _ := rawRecv(t, raw); len(rec) != 0 {
					t.Fatalf("expected end-of-file, got % x", rec)
				}
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			if n := openFds(t); n != fds0 {
				t.Fatalf("%d descriptors open after the refusal, %d before", n, fds0)
			}
			if n := memfdMappings(t); n != maps0 {
				t.Fatalf("%d memfd mappings after the refusal, %d before", n, maps0)
			}
		})
	}
}

// mustSend sends b as one record with fds. It calls sendmsg(2) directly:
// unix.Sendmsg would add a dummy byte to an empty record carrying fds.
func mustSend(t *testing.T, fd int, b []byte, fds []int) {
	t.Helper()
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(b) > 0 {
		iov.Base = &b[0]
		iov.SetLen(len(b))
		msg.Iov = &iov
		msg.SetIovlen(1)
	}
	if len(fds) > 0 {
		oob := unix.UnixRights(fds...)
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	if _, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0); errno != 0 {
		t.Fatalf("sendmsg: %v", errno)
	}
}

// TestSendLimits: the peer's limits are enforced locally and do not end
// the connection.
func TestSendLimits(t *testing.T) {
	a, raw := seqpacketPair(t)
	defer unix.Close(raw)
	ep, err := NewEndpoint(a, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	mustSend(t, raw, AppendHello(nil, 1, 4), nil)
	r, _ := NewRegion(4096)
	defer r.Close()
	if err := ep.Send([]byte("12345")); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("payload over the peer's limit: %v", err)
	}
	if err := ep.Send(nil, Attachment{r, false}, Attachment{r, false}); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("regions over the peer's limit: %v", err)
	}
	if err := ep.Release(r); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("release of an unbound region: %v", err)
	}
	if err := ep.Send([]byte("1234"), Attachment{r, false}); err != nil {
		t.Fatal(err)
	}
}

// TestFreezeAfterSend: a region the peer maps writable cannot be frozen,
// and the failed attempt leaves it writable and shared.
func TestFreezeAfterSend(t *testing.T) {
	a, raw := seqpacketPair(t)
	defer unix.Close(raw)
	ep, _ := NewEndpoint(a, testOpts)
	defer ep.Close()
	mustSend(t, raw, AppendHello(nil, 32, 65536), nil)
	r, _ := NewRegion(4096)
	defer r.Close()
	if err := ep.Send(nil, Attachment{r, false}); err != nil {
		t.Fatal(err)
	}
	rawRecv(t, raw) // HELLO
	fd := recvOneFd(t, raw)
	defer unix.Close(fd)
	peer, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(peer)
	if err := r.Freeze(); err == nil {
		t.Fatal("froze a region the peer maps writable")
	}
	copy(r.Bytes(), "still shared")
	if string(peer[:12]) != "still shared" {
		t.Fatal("mapping not restored after a failed freeze")
	}
}

// TestFrozenMappingIsPrivate: a stray write into a received frozen region
// neither faults nor reaches the file.
func TestFrozenMappingIsPrivate(t *testing.T) {
	a, raw := seqpacketPair(t)
	defer unix.Close(raw)
	ep, _ := NewEndpoint(a, testOpts)
	defer ep.Close()
	fd := makeTestFd(t, fdSpec{"memfd", 4096, 0})
	defer unix.Close(fd)
	unix.Pwrite(fd, []byte("frozen"), 0)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sealed|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	mustSend(t, raw, AppendHello(nil, 32, 65536), nil)
	mustSend(t, raw, mustHex(t, hdr(2, 0, 1, 0)+desc(1, FlagNew|FlagFrozen, 4096)), []int{fd})
	m, err := ep.Recv()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := m.Regions[0].Region.Bytes()
	if string(b[:6]) != "frozen" || !m.Regions[0].Region.Frozen() {
		t.Fatal("frozen region not received intact")
	}
	b[0] = 'X'
	var got [6]byte
	unix.Pread(fd, got[:], 0)
	if string(got[:]) != "frozen" {
		t.Fatal("a write into a received frozen region reached the file")
	}
}

func recvOneFd(t *testing.T, fd int) int {
	t.Helper()
	buf := make([]byte, 1<<17)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v %v", fds, err)
	}
	return fds[0]
}

func BenchmarkEchoRoundTrip(b *testing.B) {
	a, c := seqpacketPair(&testing.T{})
	ea, _ := NewEndpoint(a, testOpts)
	ec, _ := NewEndpoint(c, testOpts)
	defer ea.Close()
	defer ec.Close()
	r, _ := NewRegion(1 << 20)
	defer r.Close()
	payload := make([]byte, 64)
	var m, back Message
	b.ReportAllocs()
	for b.Loop() {
		if err := ea.Send(payload, Attachment{r, false}); err != nil {
			b.Fatal(err)
		}
		if err := ec.RecvInto(&m); err != nil {
			b.Fatal(err)
		}
		if err := ec.Send(m.Payload, Attachment{m.Regions[0].Region, false}); err != nil {
			b.Fatal(err)
		}
		m.Close()
		if err := ea.RecvInto(&back); err != nil {
			b.Fatal(err)
		}
		back.Close()
	}
}
