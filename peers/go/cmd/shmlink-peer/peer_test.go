package main

import (
	"bytes"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"shmlink.dev/peers/go/shmlink"
)

// naivePattern is SCENARIO.md's formula, byte by byte.
func naivePattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	for k := range b {
		b[k] = byte(seed*131 + uint64(k%4096)*7 + uint64(k/4096)*13)
	}
	return b
}

func TestPattern(t *testing.T) {
	for _, seed := range []uint64{0, 1, 255, 256, 1000, 5039, 1<<32 - 1} {
		for _, n := range []int{0, 1, 7, 4095, 4096, 4097, 65536, 1 << 20, 3*4096 + 5} {
			want := naivePattern(seed, n)
			got := make([]byte, n)
			fill(got, seed)
			if !bytes.Equal(got, want) {
				t.Fatalf("fill(%d, %d) differs", seed, n)
			}
			if sum := hashPattern(newHash(), seed, n); sum != sha256.Sum256(want) {
				t.Fatalf("hashPattern(%d, %d) differs", seed, n)
			}
		}
	}
}

// TestEcho runs the echo role against an endpoint in the test: the same
// payload and regions must come back, without TRANSFER, and the role must
// end cleanly at end-of-file.
func TestEcho(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "echo.sock")
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, shmlink.SockaddrFor(sock)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- runEcho(connector{path: sock}) }()
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := shmlink.NewEndpoint(fd, &shmlink.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := shmlink.NewRegion(1 << 20)
	defer r.Close()
	f, _ := shmlink.NewRegion(8192)
	defer f.Close()
	f.Freeze()
	for i := 0; i < 3; i++ {
		payload := naivePattern(uint64(i), 100*i)
		if err := ep.Send(payload, shmlink.Attachment{Region: r, Transfer: true}, shmlink.Attachment{Region: f}); err != nil {
			t.Fatal(err)
		}
		m, err := ep.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.Payload, payload) || len(m.Regions) != 2 ||
			m.Regions[0].Region != r || m.Regions[1].Region != f ||
			m.Regions[0].Transfer || m.Regions[1].Transfer || !m.Regions[1].Frozen ||
			m.Regions[0].New != (i == 0) || m.Regions[0].ID != 1 || m.Regions[1].ID != 2 {
			t.Fatalf("echo %d: %+v", i, m.Regions)
		}
		m.Close()
	}
	ep.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("echo did not end at end-of-file")
	}
}
