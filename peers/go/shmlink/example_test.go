package shmlink_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

// A region travels to the peer without being copied; the peer maps the same memory.
func ExampleEndpoint_Send() {
	a, b, err := shmlink.Pair(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	defer b.Close()

	r, err := shmlink.NewRegion(1 << 20)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	mem, _ := r.Bytes() // the mapping itself
	copy(mem, "a megabyte of frames")

	// Hand the region over: it is unusable here until the peer sends it back.
	if err := a.Send([]byte("frame 1"), &shmlink.SendOptions{Transfer: []*shmlink.Region{r}}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("transferred:", r.Transferred())

	m, err := b.Recv()
	if err != nil {
		log.Fatal(err)
	}
	got := m.Regions[0]
	data, _ := got.Read(0, 20)
	fmt.Printf("%s: %q (%d bytes, transferred %v)\n", m.Payload, data, got.Size(), m.Descriptors[0].Transferred)

	// Send it back; the sender gets its own *Region again.
	if err := b.Send([]byte("done"), &shmlink.SendOptions{Transfer: m.Regions}); err != nil {
		log.Fatal(err)
	}
	back, _ := a.Recv()
	fmt.Println("same region:", back.Regions[0] == r, "transferred:", r.Transferred())
	// Output:
	// transferred: true
	// frame 1: "a megabyte of frames" (1048576 bytes, transferred true)
	// same region: true transferred: false
}

// Frozen regions are immutable for every process: safe to give to peers you do not
// trust with writable memory.
func ExampleRegion_Freeze() {
	r, _ := shmlink.NewRegion(4096)
	defer r.Close()
	r.Write(0, []byte("configuration v1"))
	if err := r.Freeze(); err != nil {
		log.Fatal(err)
	}
	err := r.Write(0, []byte("tampered"))
	fmt.Println(shmlink.CodeOf(err))
	// Output: ERR_SHMLINK_REGION_FROZEN
}

// A server accepts only frozen regions from its clients unless AcceptWritable is set,
// and only clients of this user (or root) unless Allow says otherwise.
func ExampleListen() {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("shmlink-example-%d.sock", os.Getpid()))
	server, err := shmlink.Listen(path, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()

	go func() { // a client
		c, err := shmlink.Connect(path, nil)
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		r, _ := shmlink.NewRegion(4096)
		defer r.Close()
		r.Write(0, []byte("report"))
		r.Freeze()
		c.Send([]byte("please file"), &shmlink.SendOptions{Regions: []*shmlink.Region{r}})
		c.Recv() // until the server closes
	}()

	ep, err := server.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()
	m, err := ep.Recv()
	if err != nil {
		log.Fatal(err)
	}
	data, _ := m.Regions[0].Read(0, 6)
	fmt.Printf("%s: %s (frozen %v)\n", m.Payload, data, m.Regions[0].Frozen())
	// Output: please file: report (frozen true)
}

// A Go program started by a Node parent with spawnWithEndpoint. SHMLINK_FD names the
// socket; do not assume fd 3 (with 'ipc' in the parent's stdio it is fd 4).
func ExampleInherited() {
	ep, err := shmlink.Inherited(nil)
	if err != nil {
		log.Fatal(err) // ERR_SHMLINK_INVALID_ARG: SHMLINK_FD unset, not a number, or not the socket
	}
	defer ep.Close()
	for m, err := range ep.Messages() {
		if err != nil {
			log.Fatal(err)
		}
		for _, r := range m.Regions {
			data, _ := r.Read(0, r.Size()) // a copy: the parent may still write the region
			ep.Send([]byte(fmt.Sprintf("%d bytes", len(data))), nil)
		}
	}
}

// Errors carry the codes of docs/ERRORS.md; errors.Is matches them.
func ExampleCode() {
	a, b, _ := shmlink.Pair(nil)
	b.Close()
	_, err := a.Recv()
	fmt.Println(errors.Is(err, shmlink.CodePeerClosed))
	var e *shmlink.Error
	errors.As(err, &e)
	fmt.Println(e.Code, e.Op)
	a.Close()
	// Output:
	// true
	// ERR_SHMLINK_PEER_CLOSED Endpoint.Recv
}
