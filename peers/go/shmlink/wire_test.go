package shmlink

import (
	"bytes"
	"strings"
	"testing"
)

// TestProtocolExample sends the frames of docs/PROTOCOL.md §8 and compares the bytes.
func TestProtocolExample(t *testing.T) {
	checkNoFdLeak(t)
	ep, raw := newRawPair(t, nil)
	hello, nfds := raw.recv()
	want := mustHex(t, "01 00 00 00 14 00 00 00 53 48 4d 4c 49 4e 4b 00 02 00 20 00 00 00 01 00 00 00 00 00")
	if !bytes.Equal(hello, want) || nfds != 0 {
		t.Fatalf("HELLO = % x", hello)
	}
	raw.hello()
	r1 := must(NewRegion(4096))
	defer r1.Close()
	r2 := must(NewRegion(65536))
	defer r2.Close()
	ok(t, r2.Freeze())
	ok(t, ep.Send([]byte("hello"), &SendOptions{Regions: []*Region{r1, r2}, Transfer: []*Region{r1}}))
	frame, nfds := raw.recv()
	want = mustHex(t, `02 00 02 00 05 00 00 00 01 00 00 00 05 00 00 00
		00 10 00 00 00 00 00 00 02 00 00 00 03 00 00 00
		00 00 01 00 00 00 00 00 68 65 6c 6c 6f`)
	if !bytes.Equal(frame, want) || nfds != 2 {
		t.Fatalf("MESSAGE (%d fds) = % x", nfds, frame)
	}
	// Back from the peer, then released by closing it: RELEASE of id 1.
	f := r1.fileRef()
	raw.send(message(nil, descriptor{id: 7, flags: flagNew | flagTransfer, size: 4096}), f.fd)
	f.unref()
	m := must(ep.Recv())
	if m.Regions[0] != r1 || r1.Transferred() {
		t.Fatal("the region did not come back as the same *Region")
	}
	ok(t, r1.Close())
	release, _ := raw.recv()
	want = mustHex(t, "03 00 01 00 00 00 00 00 01 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00")
	if !bytes.Equal(release, want) {
		t.Fatalf("RELEASE = % x", release)
	}
}

func TestParseRefusesMalformedFrames(t *testing.T) {
	for name, frame := range map[string][]byte{
		"short":             {2, 0, 0},
		"header flags":      putHeader(nil, kindMessage, 0, 0)[:1:1],
		"lengths":           append(putHeader(nil, kindMessage, 0, 3), 1),
		"id 0":              message(nil, descriptor{id: 0, flags: 0, size: 1}),
		"size 0":            message(nil, descriptor{id: 1, flags: 0, size: 0}),
		"reserved flag":     message(nil, descriptor{id: 1, flags: 8, size: 1}),
		"release flags":     append(putHeader(nil, kindRelease, 1, 0), putDescriptor(nil, descriptor{1, flagFrozen, 1})...),
		"release payload":   append(putHeader(nil, kindRelease, 0, 1), 0),
		"unknown kind":      putHeader(nil, 9, 0, 0),
		"hello with region": append(putHeader(nil, kindHello, 1, 0), putDescriptor(nil, descriptor{1, 0, 1})...),
	} {
		if name == "header flags" {
			frame = []byte{2, 1, 0, 0, 0, 0, 0, 0}
		}
		if _, r := parse(frame); r == nil || r.incompatible {
			t.Errorf("%s: %v", name, r)
		}
	}
	bad := putHello(nil, announced{32, 65536})
	bad[8] = 'X'
	if _, r := parseFirst(bad); r == nil || !r.incompatible {
		t.Error("wrong magic is incompatible")
	}
	v3 := putHello(nil, announced{32, 65536})
	v3[16] = 3
	if _, r := parseFirst(append(v3, 0, 0)); r == nil || !r.incompatible {
		t.Error("a longer HELLO of version 3 is incompatible, not a violation")
	}
	// A version-1 peer's HELLO, byte for byte (16 payload bytes): incompatible, and the
	// message names its version and says to upgrade it (docs/PROTOCOL.md §3).
	v1 := mustHex(t, "01 00 00 00 10 00 00 00 53 48 4d 4c 49 4e 4b 00 01 00 20 00 00 00 01 00")
	if _, r := parseFirst(v1); r == nil || !r.incompatible || !strings.Contains(r.text, "version 1") || !strings.Contains(r.text, "upgrade the peer") {
		t.Errorf("a version-1 HELLO: %+v", r)
	}
	if _, r := parseFirst(putHello(nil, announced{0, 65536})); r == nil || r.incompatible {
		t.Error("max_regions 0 is a violation")
	}
	if a, r := parseFirst(putHello(nil, announced{253, 0})); r != nil || a != (announced{253, 0}) {
		t.Error("the bounds are allowed")
	}
}
