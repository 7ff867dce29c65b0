package main

import (
	"bytes"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/shmlink/shmlink/peers/go/shmlink"
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

// TestEcho runs the echo role against a server in the test: the same payload and
// regions come back, without TRANSFER, and the role ends cleanly at end-of-file.
func TestEcho(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "echo.sock")
	server, err := shmlink.Listen(sock, &shmlink.ListenOptions{AcceptWritable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	done := make(chan error, 1)
	go func() { done <- runEcho(connector{path: sock}) }()
	ep, err := server.AcceptTimeout(10 * time.Second)
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
		if err := ep.Send(payload, &shmlink.SendOptions{Regions: []*shmlink.Region{f}, Transfer: []*shmlink.Region{r}}); err != nil {
			t.Fatal(err)
		}
		m, err := ep.RecvTimeout(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		d := m.Descriptors
		if !bytes.Equal(m.Payload, payload) || len(m.Regions) != 2 ||
			m.Regions[0] != f || m.Regions[1] != r || r.Transferred() ||
			d[0].Transferred || d[1].Transferred || !d[0].Frozen ||
			d[1].New != (i == 0) || d[0].ID != 1 || d[1].ID != 2 {
			t.Fatalf("echo %d: %+v", i, d)
		}
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
