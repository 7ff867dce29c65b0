package shmlink

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func pair(t *testing.T, opts *Options) (*Endpoint, *Endpoint) {
	t.Helper()
	a, b, err := Pair(opts)
	ok(t, err)
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

func TestPairRoundTrip(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	r := must(NewRegion(1 << 20))
	defer r.Close()
	ok(t, r.Write(0, []byte("region data")))
	ok(t, a.Send([]byte("hello"), &SendOptions{Regions: []*Region{r}}))
	m := must(b.Recv())
	if string(m.Payload) != "hello" || len(m.Regions) != 1 {
		t.Fatalf("message %q with %d regions", m.Payload, len(m.Regions))
	}
	got := m.Regions[0]
	defer got.Close()
	if got == r {
		t.Fatal("the other end of a Pair resolves regions on its own, as another process")
	}
	if d := m.Descriptors[0]; d != (Descriptor{ID: 1, New: true}) {
		t.Fatalf("descriptor %+v", d)
	}
	if s := must(got.Read(0, 11)); string(s) != "region data" {
		t.Fatalf("read %q", s)
	}
	// Shared memory: a write on one side is seen on the other after the next message.
	ok(t, got.Write(0, []byte("REGION")))
	ok(t, b.Send(nil, &SendOptions{Regions: []*Region{got}}))
	back := must(a.Recv())
	if back.Regions[0] != r || back.Descriptors[0].New != true {
		t.Fatalf("the region came back as %p (new %v), want %p", back.Regions[0], back.Descriptors[0].New, r)
	}
	if s := must(r.Read(0, 6)); string(s) != "REGION" {
		t.Fatalf("read %q", s)
	}
	// The second time it travels by id.
	ok(t, a.Send(nil, &SendOptions{Regions: []*Region{r}}))
	if m := must(b.Recv()); m.Descriptors[0].New || m.Regions[0] != got {
		t.Fatal("a bound region travels by id and resolves to the same *Region")
	}
	if id, bound := a.RegionID(r); !bound || id != 1 {
		t.Fatalf("RegionID = %d, %v", id, bound)
	}
	st := a.Stats()
	if st.MessagesOut != 2 || st.BytesOut != 5 || st.MessagesIn != 1 || st.OwnRegions != 1 || st.PeerRegions != 1 || st.PeerMappedBytes != 1<<20 || st.Limits != DefaultLimits() {
		t.Fatalf("stats %+v", st)
	}
}

func TestAttachmentRule(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	r := make([]*Region, 4)
	for i := range r {
		r[i] = must(NewRegion(4096 * (i + 1)))
		defer r[i].Close()
	}
	// Regions keep their order; a region also in Transfer is transferred in place; the
	// transfer-only ones follow in their order.
	ok(t, a.Send(nil, &SendOptions{Regions: []*Region{r[0], r[1]}, Transfer: []*Region{r[2], r[1], r[3]}}))
	first := must(b.Recv())
	defer closeAll(first)
	m := first
	var sizes []int
	var transferred []bool
	for i, x := range m.Regions {
		sizes = append(sizes, x.Size())
		transferred = append(transferred, m.Descriptors[i].Transferred)
	}
	if !equal(sizes, []int{4096, 8192, 12288, 16384}) || !equal(transferred, []bool{false, true, true, true}) {
		t.Fatalf("sizes %v transferred %v", sizes, transferred)
	}
	if r[0].Transferred() || !r[1].Transferred() || !r[2].Transferred() || !r[3].Transferred() {
		t.Fatal("custody after send")
	}
	_, err := r[1].Bytes()
	wantCode(t, err, CodeRegionTransferred)
	_, err = r[1].Read(0, 1)
	wantCode(t, err, CodeRegionTransferred)
	wantCode(t, r[1].Write(0, nil), CodeRegionTransferred)
	wantCode(t, a.Send(nil, &SendOptions{Regions: []*Region{r[1]}}), CodeRegionTransferred)
	wantCode(t, r[1].Reclaim(), CodeRegionTransferred)

	// A transferred region is attached once; a refused send changes nothing.
	before := a.Stats()
	wantCode(t, a.Send(nil, &SendOptions{Regions: []*Region{r[0], r[0]}, Transfer: []*Region{r[0]}}), CodeInvalidArg)
	wantCode(t, a.Send(make([]byte, 65537), nil), CodePayloadTooLarge)
	many := make([]*Region, 33)
	for i := range many {
		many[i] = r[0]
	}
	wantCode(t, a.Send(nil, &SendOptions{Regions: many}), CodeTooManyRegions)
	closed := must(NewRegion(4096))
	closed.Close()
	wantCode(t, a.Send(nil, &SendOptions{Regions: []*Region{r[0], closed}}), CodeRegionClosed)
	wantCode(t, a.Send(nil, &SendOptions{Regions: []*Region{nil}}), CodeInvalidArg)
	if r[0].Transferred() || a.Stats() != before {
		t.Fatal("a refused send changed something")
	}
	if _, err := b.RecvTimeout(0); !errors.Is(err, CodeTimedOut) {
		t.Fatalf("a refused send sent something: %v", err)
	}
	// Shared twice in one message: one descriptor, the same region twice.
	ok(t, a.Send(nil, &SendOptions{Regions: []*Region{r[0], r[0]}}))
	m = must(b.Recv())
	if m.Regions[0] != m.Regions[1] || m.Descriptors[0].New || m.Descriptors[1].New {
		t.Fatalf("%+v", m.Descriptors)
	}

	// Back from the peer: the same *Region, usable again.
	ok(t, b.Send(nil, &SendOptions{Transfer: []*Region{first.Regions[1]}}))
	got := must(a.Recv())
	if got.Regions[0] != r[1] || r[1].Transferred() {
		t.Fatal("the transferred region did not come back as itself")
	}
	ok(t, r[1].Write(0, []byte("mine again")))
}

// closeAll closes the regions of m (received regions are the receiver's to close).
func closeAll(m *Message) {
	for _, r := range m.Regions {
		r.Close()
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestReclaimAfterThePeerLeft(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	r := must(NewRegion(4096))
	defer r.Close()
	ok(t, a.Send(nil, &SendOptions{Transfer: []*Region{r}}))
	m := must(b.Recv())
	m.Regions[0].Close()
	wantCode(t, r.Reclaim(), CodeRegionTransferred)
	b.Close()
	_, err := a.Recv()
	wantCode(t, err, CodePeerClosed)
	ok(t, r.Reclaim())
	if r.Transferred() {
		t.Fatal("still away")
	}
	ok(t, r.Write(0, []byte("reused")))
	ok(t, r.Reclaim()) // a region that is here: nothing to do
}

func TestRecvTimeoutLeavesTheConnectionIntact(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	start := time.Now()
	_, err := b.RecvTimeout(50 * time.Millisecond)
	wantCode(t, err, CodeTimedOut)
	if time.Since(start) < 40*time.Millisecond {
		t.Fatal("returned early")
	}
	_, err = b.RecvTimeout(0)
	wantCode(t, err, CodeTimedOut)
	_, err = b.RecvTimeout(-1)
	wantCode(t, err, CodeInvalidArg)
	ok(t, a.Send([]byte("late"), nil))
	if m := must(b.RecvTimeout(time.Second)); string(m.Payload) != "late" {
		t.Fatal("payload")
	}
}

func TestEndOfConversation(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	ok(t, a.Send([]byte("one"), nil))
	ok(t, a.Send([]byte("two"), nil))
	a.Close()
	// Messages sent before the close come first, then end-of-file, for good.
	var got []string
	for m, err := range b.Messages() {
		ok(t, err)
		got = append(got, string(m.Payload))
	}
	if !equal(got, []string{"one", "two"}) {
		t.Fatalf("got %q", got)
	}
	for i := 0; i < 2; i++ {
		_, err := b.Recv()
		wantCode(t, err, CodePeerClosed)
	}
	wantCode(t, b.Send(nil, nil), CodePeerClosed)
	if !b.Closed() {
		t.Fatal("not closed")
	}
	wantCode(t, a.Send(nil, nil), CodeClosed)
	_, err := a.Recv()
	wantCode(t, err, CodeClosed)
	if a.Fd() != -1 {
		t.Fatal("Fd after Close")
	}
	_, err = a.Peer()
	wantCode(t, err, CodeClosed)
}

func TestCloseWakesABlockedReceiverAndSender(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	done := make(chan error, 1)
	go func() {
		_, err := a.Recv()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case err := <-done:
		wantCode(t, err, CodeClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Recv did not return after Close")
	}
	// Fill b's socket until a send waits, then close it.
	payload := make([]byte, 60000)
	sent := make(chan error, 1)
	go func() {
		for {
			if err := b.Send(payload, nil); err != nil {
				sent <- err
				return
			}
		}
	}()
	select {
	case err := <-sent:
		// a closed: the peer is gone.
		wantCode(t, err, CodePeerClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Send did not fail")
	}
}

func TestSendTimeoutWithdrawsTheMessage(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	payload := make([]byte, 60000)
	n := 0
	for ; ; n++ {
		err := a.Send(payload, &SendOptions{Timeout: 30 * time.Millisecond})
		if errors.Is(err, CodeTimedOut) {
			break
		}
		ok(t, err)
	}
	r := must(NewRegion(4096))
	defer r.Close()
	wantCode(t, a.Send(nil, &SendOptions{Transfer: []*Region{r}, Timeout: 10 * time.Millisecond}), CodeTimedOut)
	if r.Transferred() {
		t.Fatal("a send that timed out transferred its region")
	}
	for i := 0; i < n; i++ {
		must(b.Recv())
	}
	_, err := b.RecvTimeout(20 * time.Millisecond)
	wantCode(t, err, CodeTimedOut)
}

func TestConcurrentSendersAndAReceiver(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	const senders, each = 4, 200
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := must(NewRegion(4096))
			defer r.Close()
			for i := 0; i < each; i++ {
				if err := a.Send([]byte{byte(s)}, &SendOptions{Regions: []*Region{r}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	received := map[*Region]bool{}
	for count := 0; count < senders*each; count++ {
		m := must(b.RecvTimeout(10 * time.Second))
		if len(m.Regions) != 1 {
			t.Fatal("regions")
		}
		received[m.Regions[0]] = true
	}
	wg.Wait()
	if len(received) != senders {
		t.Fatalf("%d distinct regions arrived, want %d", len(received), senders)
	}
	for r := range received {
		r.Close()
	}
}

func TestReleaseAndClosingARegionUnbindItOnThePeer(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	r1, r2 := must(NewRegion(4096)), must(NewRegion(8192))
	defer r1.Close()
	ok(t, a.Send(nil, &SendOptions{Regions: []*Region{r1, r2}}))
	m := must(b.Recv())
	if st := b.Stats(); st.PeerRegions != 2 || st.PeerMappedBytes != 12288 {
		t.Fatalf("%+v", st)
	}
	a.Release(r1)
	a.Release(r1) // not bound any more: nothing
	r2.Close()    // sends RELEASE too
	if _, bound := a.RegionID(r1); bound || a.Stats().OwnRegions != 0 {
		t.Fatal("still bound here")
	}
	// b applies RELEASE frames while receiving.
	ok(t, a.Send([]byte("after"), &SendOptions{Regions: []*Region{r1}}))
	m2 := must(b.Recv())
	if !m2.Descriptors[0].New || m2.Descriptors[0].ID != 3 {
		t.Fatalf("a released region travels anew, with a new id: %+v", m2.Descriptors[0])
	}
	if m2.Regions[0] != m.Regions[0] {
		t.Fatal("the same memory file is the same *Region on b")
	}
	if st := b.Stats(); st.PeerRegions != 1 || st.PeerMappedBytes != 4096 {
		t.Fatalf("after RELEASE: %+v", st)
	}
	for _, r := range m.Regions {
		r.Close()
	}
}

func TestPeerCredentials(t *testing.T) {
	a, _ := pair(t, nil)
	p := must(a.Peer())
	if p.PID != os.Getpid() || p.UID != uint32(os.Geteuid()) || p.GID != uint32(os.Getegid()) {
		t.Fatalf("%+v", p)
	}
}

func TestFromFdRefusesWhatIsNotASeqpacketSocket(t *testing.T) {
	checkNoFdLeak(t)
	var p [2]int
	ok(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	_, err := FromFd(p[0], nil)
	wantCode(t, err, CodeInvalidArg)
	if !strings.Contains(err.Error(), "pipe") {
		t.Fatalf("the message does not say what the descriptor is: %v", err)
	}
	s := must(unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0))
	defer unix.Close(s[0])
	defer unix.Close(s[1])
	_, err = FromFd(s[0], nil)
	wantCode(t, err, CodeInvalidArg)
	_, err = FromFd(1, nil)
	wantCode(t, err, CodeInvalidArg)
	_, err = FromFd(p[0], &Options{Limits: Limits{MaxRegions: 254}})
	wantCode(t, err, CodeInvalidArg)
}

func TestInherited(t *testing.T) {
	checkNoFdLeak(t)
	inherited := func(value string) (*Endpoint, error) {
		t.Setenv("SHMLINK_FD", value)
		return Inherited(nil)
	}
	os.Unsetenv("SHMLINK_FD")
	_, err := Inherited(nil)
	wantCode(t, err, CodeInvalidArg)
	if !strings.Contains(err.Error(), "not set") {
		t.Fatalf("unset: %v", err)
	}
	for _, bad := range []string{"", "three", "3x", "-1", "2"} {
		_, err := inherited(bad)
		wantCode(t, err, CodeInvalidArg)
		if !strings.Contains(err.Error(), "not a descriptor number") {
			t.Fatalf("%q: %v", bad, err)
		}
	}
	_, err = inherited("999")
	wantCode(t, err, CodeInvalidArg)
	if !strings.Contains(err.Error(), "not open") || !strings.Contains(err.Error(), "wrapper program") {
		t.Fatalf("closed descriptor: %v", err)
	}
	var p [2]int
	ok(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	_, err = inherited(strconv.Itoa(p[0]))
	unix.Close(p[0])
	unix.Close(p[1])
	wantCode(t, err, CodeInvalidArg)
	if !strings.Contains(err.Error(), "a pipe") || !strings.Contains(err.Error(), "wrapper program") {
		t.Fatalf("pipe: %v", err)
	}

	s := must(unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0))
	peer, err := FromFd(s[1], nil)
	ok(t, err)
	defer peer.Close()
	child, err := inherited(" " + strconv.Itoa(s[0]) + "\n")
	ok(t, err)
	defer child.Close()
	if _, set := os.LookupEnv("SHMLINK_FD"); set {
		t.Fatal("SHMLINK_FD is still set")
	}
	if flags := must(unix.FcntlInt(uintptr(s[0]), unix.F_GETFD, 0)); flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("the inherited socket is not close-on-exec")
	}
	ok(t, child.Send([]byte("from the child"), nil))
	if m := must(peer.Recv()); !bytes.Equal(m.Payload, []byte("from the child")) {
		t.Fatal("payload")
	}
}

// A send waits for the peer's HELLO even while a receiver that gives up is reading.
func TestSendWaitsForTheHandshakeBehindAReceiverThatGivesUp(t *testing.T) {
	checkNoFdLeak(t)
	ep, raw := newRawPair(t, nil)
	raw.recv() // the endpoint's HELLO
	go func() {
		ep.RecvTimeout(20 * time.Millisecond) // holds the receive side, then times out
	}()
	time.Sleep(5 * time.Millisecond)
	sent := make(chan error, 1)
	go func() { sent <- ep.Send([]byte("after hello"), &SendOptions{Timeout: 5 * time.Second}) }()
	time.Sleep(60 * time.Millisecond)
	raw.hello()
	select {
	case err := <-sent:
		ok(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the send never saw the HELLO")
	}
	if b, _ := raw.recv(); string(b[headerLen:]) != "after hello" {
		t.Fatalf("got % x", b)
	}
}

// PROTOCOL.md §6: the side that ends a connection gives up the regions transferred to it
// over it; the other side may take back what it transferred once it read end-of-file.
func TestEndingAConnectionGivesUpWhatWasTransferredToThisSide(t *testing.T) {
	checkNoFdLeak(t)
	a, b := pair(t, nil)
	moved, shared := must(NewRegion(4096)), must(NewRegion(4096))
	defer moved.Close()
	defer shared.Close()
	ok(t, a.Send(nil, &SendOptions{Regions: []*Region{shared}, Transfer: []*Region{moved}}))
	m := must(b.Recv())
	defer closeAll(m)
	gotShared, gotMoved := m.Regions[0], m.Regions[1]
	ok(t, gotMoved.Write(0, []byte("mine for now")))
	b.Close() // b ends the connection: it gives up what was transferred to it
	if !gotMoved.Transferred() || gotShared.Transferred() {
		t.Fatalf("after b ended it: moved transferred %v, shared transferred %v", gotMoved.Transferred(), gotShared.Transferred())
	}
	_, err := gotMoved.Bytes()
	wantCode(t, err, CodeRegionTransferred)
	wantCode(t, gotMoved.Reclaim(), CodeRegionTransferred)
	ok(t, gotShared.Write(0, []byte("still shared here")))
	// a read end-of-file: the region it transferred is its own again.
	_, err = a.Recv()
	wantCode(t, err, CodePeerClosed)
	ok(t, moved.Reclaim())
	if got := must(moved.Read(0, 12)); string(got) != "mine for now" {
		t.Fatalf("read %q", got)
	}

	// The side that ends a connection over which it transferred a region keeps nothing.
	c, d := pair(t, nil)
	r := must(NewRegion(4096))
	defer r.Close()
	ok(t, c.Send(nil, &SendOptions{Transfer: []*Region{r}}))
	closeAll(must(d.Recv()))
	c.Close()
	wantCode(t, r.Reclaim(), CodeRegionTransferred)
	if !r.Transferred() {
		t.Fatal("the peer keeps it")
	}
}
