package shmlink

import (
	"errors"
	"iter"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// PeerFilter says which peers to accept, judged by the credentials the kernel recorded
// for the socket (SO_PEERCRED) before anything is read or mapped. The zero value is
// SameUser.
type PeerFilter struct {
	any  bool
	uids []uint32
}

// SameUser admits this process's effective user, or root (which can reach this process
// anyway). It is the zero PeerFilter.
func SameUser() PeerFilter { return PeerFilter{} }

// AnyUser admits every local user; say so explicitly.
func AnyUser() PeerFilter { return PeerFilter{any: true} }

// Users admits exactly these user ids (root is not implied).
func Users(uids ...uint32) PeerFilter {
	return PeerFilter{uids: append([]uint32{}, uids...)}
}

// Admits reports whether a peer with these credentials passes the filter.
func (f PeerFilter) Admits(peer PeerCredentials) bool {
	switch {
	case f.any:
		return true
	case f.uids != nil:
		for _, uid := range f.uids {
			if uid == peer.UID {
				return true
			}
		}
		return false
	}
	return peer.UID == 0 || peer.UID == geteuid()
}

func (f PeerFilter) String() string {
	switch {
	case f.any:
		return "any user"
	case f.uids != nil:
		ids := make([]string, len(f.uids))
		for i, uid := range f.uids {
			ids[i] = strconv.FormatUint(uint64(uid), 10)
		}
		return "uids " + strings.Join(ids, ", ")
	}
	return "this user or root"
}

// PeerCredentials is who is at the other end of a connection, as the kernel recorded it
// (SO_PEERCRED): for a socketpair, its creator; the pid is the peer's at connect time.
type PeerCredentials struct {
	PID int
	UID uint32
	GID uint32
}

// Options configure an endpoint made by Pair, FromFd or Inherited: a peer this process
// started (or its parent), trusted with writable regions unless FrozenOnly is set. The
// zero value is the defaults.
type Options struct {
	// FrozenOnly refuses regions the peer can still write (CodeRegionWritable). It is
	// Node's acceptWritable: false; Go's zero value keeps Node's default (true) here.
	FrozenOnly bool
	// Limits on what the peer may send; zero fields take the defaults.
	Limits Limits
}

// ConnectOptions configure Connect. The zero value is the defaults.
type ConnectOptions struct {
	// Server is who must be serving (checked before anything is sent); default
	// SameUser.
	Server PeerFilter
	// AcceptWritable accepts regions the server can still write; default false: frozen
	// regions only (docs/SECURITY.md).
	AcceptWritable bool
	// Limits on what the server may send; zero fields take the defaults.
	Limits Limits
	// Timeout bounds the wait for the server's HELLO; 0 waits as long as it takes.
	Timeout time.Duration
}

// SendOptions are the attachments of a message and how long to wait for room.
type SendOptions struct {
	// Regions are attached in this order; both sides keep access.
	Regions []*Region
	// Transfer regions are handed over: unusable here until the peer sends them back.
	// A region also in Regions keeps its place there (and is transferred); the others
	// are attached after Regions, in this order. A transferred region is attached once.
	Transfer []*Region
	// Timeout bounds the wait for room in the socket; 0 waits as long as it takes. A
	// send that times out was not sent.
	Timeout time.Duration
}

// Descriptor is what a received region's descriptor said (docs/PROTOCOL.md §2).
type Descriptor struct {
	// ID is the id the sender gave the region on this connection.
	ID uint32
	// New reports whether the region's file descriptor came with this message.
	New bool
	// Frozen reports whether the region is frozen.
	Frozen bool
	// Transferred reports whether the sender gave up access to it.
	Transferred bool
}

// Message is a received message.
type Message struct {
	// Payload is the inline payload (at most 64 KiB), a copy this program owns.
	Payload []byte
	// Regions are the attached regions in the order the sender attached them. A region
	// this process already had (sent back by the peer) is the same *Region.
	Regions []*Region
	// Descriptors has one entry per region, as it arrived.
	Descriptors []Descriptor
}

// Stats are an endpoint's traffic and binding counters and the limits in force.
type Stats struct {
	MessagesOut uint64
	BytesOut    uint64
	MessagesIn  uint64
	BytesIn     uint64
	// OwnRegions is this side's regions the peer has bound now.
	OwnRegions int
	// PeerRegions is the peer's regions bound on this connection now.
	PeerRegions int
	// PeerMappedBytes is the bytes of distinct regions the peer's bindings hold.
	PeerMappedBytes uint64
	// Queued is the sends waiting for the handshake or for room in the socket.
	Queued int
	// Inbox is always 0 in Go: an endpoint reads a record only when Recv asks for one.
	Inbox  int
	Limits Limits
}

var nextEndpointID atomic.Uint64

// Endpoint is one side of a connection.
//
// An Endpoint is safe for concurrent use: one goroutine may block in Recv while others
// Send; sends leave in the order they get the send lock. An Endpoint that becomes
// unreachable without Close is closed by a cleanup, but close it yourself.
type Endpoint struct {
	id   uint64
	fd   int
	file *os.File
	raw  syscall.RawConn

	sendMu sync.Mutex // one Send at a time, in order
	recvMu sync.Mutex // one receive at a time
	mu     sync.Mutex // guards everything below, and every write to the socket

	s         *session
	ended     *Error // why the connection ended; nil while open
	closed    bool   // Close was called
	handshook chan struct{}
	shaken    bool // handshook is closed
	stats     Stats

	queued atomic.Int32

	// Receive buffers, guarded by recvMu: one record of exactly the largest frame this
	// side's limits allow plus one byte (so a longer record sets MSG_TRUNC), and a control
	// buffer for exactly MaxRegions descriptors.
	rbuf []byte
	oob  []byte
	rfds []int
	// Frame buffers, guarded by mu.
	sframe []byte
	cframe []byte
}

// newEndpoint wraps a connected, non-blocking socket and sends this side's HELLO. It
// takes fd, also on failure.
func newEndpoint(fd int, limits Limits, acceptWritable bool, realm uint64, op string) (*Endpoint, error) {
	file := os.NewFile(uintptr(fd), "shmlink-socket")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, errorf(CodeOS, op, "the socket cannot be watched: %v", err)
	}
	e := &Endpoint{
		id:        nextEndpointID.Add(1),
		fd:        fd,
		file:      file,
		raw:       raw,
		s:         newSession(limits, acceptWritable, realm),
		handshook: make(chan struct{}),
		rbuf:      make([]byte, limits.announced().maxFrameLen()+1),
		oob:       make([]byte, controlLen(limits.MaxRegions)),
	}
	runtime.AddCleanup(e, func(s *session) { s.end(false) }, e.s)
	e.mu.Lock()
	err = e.flushControlLocked()
	e.mu.Unlock()
	if err != nil {
		e.Close()
		return nil, during(err, op)
	}
	return e, nil
}

// Pair returns a connected pair of endpoints (socketpair(2)), for goroutines of this
// program or a child process you start yourself (pass one end's descriptor down and call
// FromFd there). Both accept writable regions unless opts says otherwise. The second end
// resolves regions on its own, as another process would: a region sent from one end to
// the other is a separate *Region there.
func Pair(opts *Options) (*Endpoint, *Endpoint, error) {
	const op = "Pair"
	o, limits, err := resolveOptions(opts, op)
	if err != nil {
		return nil, nil, err
	}
	a, b, err := seqpacketPair(op)
	if err != nil {
		return nil, nil, err
	}
	first, err := newEndpoint(a, limits, !o.FrozenOnly, 0, op)
	if err != nil {
		closeFd(b)
		return nil, nil, err
	}
	second, err := newEndpoint(b, limits, !o.FrozenOnly, uniqueRealm(), op)
	if err != nil {
		first.Close()
		return nil, nil, err
	}
	return first, second, nil
}

func resolveOptions(opts *Options, op string) (Options, Limits, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	limits, err := o.Limits.resolve(op)
	return o, limits, err
}

// Connect connects to a Listen server at path (a path starting with a NUL byte or "@"
// is a Linux abstract name), checks that the server passes opts.Server, sends this
// side's HELLO and waits for the server's. Only frozen regions are accepted from the
// server unless opts.AcceptWritable is set.
func Connect(path string, opts *ConnectOptions) (*Endpoint, error) {
	const op = "Connect"
	var o ConnectOptions
	if opts != nil {
		o = *opts
	}
	if o.Timeout < 0 {
		return nil, invalidArg(op, "ConnectOptions.Timeout must not be negative")
	}
	limits, err := o.Limits.resolve(op)
	if err != nil {
		return nil, err
	}
	var deadline time.Time
	if o.Timeout > 0 {
		deadline = time.Now().Add(o.Timeout)
	}
	fd, err := connectTo(path, op)
	if err != nil {
		return nil, err
	}
	peer, err := peerCredentials(fd, op)
	if err != nil {
		closeFd(fd)
		return nil, err
	}
	if !o.Server.Admits(peer) {
		closeFd(fd)
		return nil, errorf(CodePeerRejected, op,
			"the server runs as uid %d (pid %d), which the filter (%s) does not allow; nothing was sent; connect to the right path or widen ConnectOptions.Server",
			peer.UID, peer.PID, o.Server)
	}
	e, err := newEndpoint(fd, limits, o.AcceptWritable, 0, op)
	if err != nil {
		return nil, err
	}
	e.sendMu.Lock()
	err = e.awaitHandshake(op, deadline)
	e.sendMu.Unlock()
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// FromFd takes over fd, a connected AF_UNIX SOCK_SEQPACKET socket (one a parent passed
// down, or one end of a socketpair), makes it non-blocking and close-on-exec, and sends
// this side's HELLO. On success the endpoint owns fd; on failure fd is left as it was.
func FromFd(fd int, opts *Options) (*Endpoint, error) {
	const op = "FromFd"
	o, limits, err := resolveOptions(opts, op)
	if err != nil {
		return nil, err
	}
	if err := claimSocket(fd, op); err != nil {
		return nil, err
	}
	return newEndpoint(fd, limits, !o.FrozenOnly, 0, op)
}

const wrapperAdvice = "the usual cause is a wrapper program (a shell script, go run, npx, tsx) between the parent and this process, which started this process with its own descriptors: start this program directly (build it and spawn the binary)"

// Inherited returns the endpoint a parent passed down: the descriptor number in the
// environment variable SHMLINK_FD, as Node's spawnWithEndpoint sets it. Do not assume
// fd 3: with 'ipc' in a Node parent's stdio the socket is fd 4. The variable is removed
// from the environment once the endpoint exists, so that children of this process do not
// read it.
//
// It fails with CodeInvalidArg when SHMLINK_FD is unset, is not a number, or does not
// name the socket (the message says what it found there).
func Inherited(opts *Options) (*Endpoint, error) {
	const op = "Inherited"
	value, ok := os.LookupEnv("SHMLINK_FD")
	if !ok {
		return nil, invalidArg(op, "SHMLINK_FD is not set: this process was not started by Node's spawnWithEndpoint() (or a parent that passes a socket the same way: an AF_UNIX SOCK_SEQPACKET socket, its number in SHMLINK_FD)")
	}
	fd, err := strconv.Atoi(strings.TrimSpace(value))
	if err != nil || fd <= 2 {
		return nil, invalidArg(op, "SHMLINK_FD is %q, which is not a descriptor number above 2; the parent must set it to the number of the socket it passed down", value)
	}
	o, limits, err := resolveOptions(opts, op)
	if err != nil {
		return nil, err
	}
	if err := claimSocket(fd, op); err != nil {
		var se *Error
		if errors.As(err, &se) && se.Code == CodeInvalidArg {
			c := *se
			c.Message = "SHMLINK_FD=" + strconv.Itoa(fd) + " does not name the socket the parent passed down: " + se.Message + "; " + wrapperAdvice
			return nil, &c
		}
		return nil, err
	}
	e, err := newEndpoint(fd, limits, !o.FrozenOnly, 0, op)
	if err != nil {
		return nil, err
	}
	os.Unsetenv("SHMLINK_FD")
	return e, nil
}

// ID identifies this connection within the process.
func (e *Endpoint) ID() uint64 { return e.id }

// Fd is the socket's descriptor, -1 once closed. Do not read or write it.
func (e *Endpoint) Fd() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return -1
	}
	return e.fd
}

// Closed reports whether the connection is over: closed here, by the peer, or after a
// failure.
func (e *Endpoint) Closed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ended != nil
}

// Peer returns the peer's process, user and group ids (SO_PEERCRED).
func (e *Endpoint) Peer() (PeerCredentials, error) {
	const op = "Endpoint.Peer"
	var creds PeerCredentials
	var err error
	if cerr := e.raw.Control(func(fd uintptr) { creds, err = peerCredentials(int(fd), op) }); cerr != nil {
		return creds, closedError(op)
	}
	return creds, err
}

// Stats returns traffic and binding counters and the limits in force.
func (e *Endpoint) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.stats
	st.OwnRegions = len(e.s.own)
	st.PeerRegions = len(e.s.peers)
	st.PeerMappedBytes = e.s.heldBytes
	st.Queued = int(e.queued.Load())
	st.Limits = e.s.limits
	return st
}

// RegionID is this side's id for r on this connection while the peer has it bound (the
// id the peer sees in its descriptors).
func (e *Endpoint) RegionID(r *Region) (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.s.ownID(r)
}

// closedErrLocked is what an operation on an ended connection reports: CodePeerClosed
// after end-of-file, CodeClosed otherwise.
func (e *Endpoint) closedErrLocked(op string) error {
	if e.ended != nil && e.ended.Code == CodePeerClosed {
		return peerClosedError(op)
	}
	return closedError(op)
}

// endLocked ends the connection with reason: the socket is shut down both ways so the
// peer reads end-of-file, and both binding tables are dropped.
func (e *Endpoint) endLocked(reason *Error) {
	if e.ended != nil {
		return
	}
	e.ended = reason
	_ = e.raw.Control(func(fd uintptr) { shutdownBoth(int(fd)) })
	e.s.end(reason.Code == CodePeerClosed)
	if !e.shaken {
		e.shaken = true
		close(e.handshook)
	}
}

func (e *Endpoint) endWith(err error) {
	var se *Error
	if !errors.As(err, &se) {
		se = errorf(CodeOS, "recv", "%v", err)
	}
	e.endLocked(se)
}

// flushControlLocked sends the frames the session has pending (HELLO, RELEASE) while the
// socket has room. A full socket leaves them pending: they go with the next send or
// receive.
func (e *Endpoint) flushControlLocked() error {
	if e.ended != nil {
		return nil
	}
	var result error
	cerr := e.raw.Control(func(fd uintptr) { result = e.flushControlFD(int(fd)) })
	if cerr != nil {
		return nil
	}
	if errors.Is(result, errWouldBlock) {
		return nil
	}
	return result
}

var errWouldBlock = errors.New("would block")

func (e *Endpoint) flushControlFD(fd int) error {
	for {
		frame, kind, count := e.s.pollControl(e.cframe[:0])
		e.cframe = frame
		if kind == controlNone {
			return nil
		}
		err := sendRecord(fd, frame, nil, nil)
		switch {
		case err == nil:
			e.s.controlSent(kind, count)
		case isWouldBlock(err):
			return errWouldBlock
		case isDisconnected(err) && kind == controlHello:
			// A peer already gone is reported by the first receive, after whatever it
			// sent before leaving (docs/PROTOCOL.md §3 rule 4).
			e.s.controlSent(kind, count)
		case isDisconnected(err):
			e.endLocked(peerClosedError("send"))
			return peerClosedError("send")
		default:
			oe := osError("send", "sendmsg", err, "the connection was closed")
			e.endLocked(oe)
			return oe
		}
	}
}

// regionClosed: a region this endpoint bound was closed; the peer is told (RELEASE).
func (e *Endpoint) regionClosed(r *Region) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s.release(r) {
		_ = e.flushControlLocked()
	}
}

// Release tells the peer that this side will not refer to r again (a RELEASE frame), so
// it may unmap it; the next send of r passes its descriptor anew. It does nothing for a
// region the peer does not have bound. A RELEASE that finds the socket full leaves with
// the next send or receive.
func (e *Endpoint) Release(r *Region) {
	if r == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s.release(r) {
		_ = e.flushControlLocked()
	}
}

// Close closes the connection: the peer sees end-of-file, goroutines blocked in Recv or
// Send return CodeClosed, and the peer's regions are unbound (regions still held here
// stay valid). Idempotent; always nil.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.endLocked(closedError("Endpoint.Close"))
	e.mu.Unlock()
	e.file.Close()
	return nil
}

// awaitHandshake waits for the peer's HELLO (sendMu held). The HELLO is always the
// peer's first record, so reading it can never take a message from a receiver.
func (e *Endpoint) awaitHandshake(op string, deadline time.Time) error {
	var expire <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expire = t.C
	}
	for {
		e.mu.Lock()
		established, ended := e.s.peer != nil, e.ended != nil
		var err error
		if ended {
			err = e.closedErrLocked(op)
		}
		e.mu.Unlock()
		if ended {
			return err
		}
		if established {
			return nil
		}
		if e.recvMu.TryLock() {
			e.mu.Lock()
			established = e.s.peer != nil
			e.mu.Unlock()
			if !established {
				_, err = e.readOne(op, deadline, false)
			}
			e.recvMu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		// A receiver is reading: it will take the HELLO, unless it gives up first (its own
		// timeout), so look again now and then.
		retry := time.NewTimer(25 * time.Millisecond)
		select {
		case <-e.handshook:
		case <-retry.C:
		case <-expire:
			retry.Stop()
			return timedOutError(op)
		}
		retry.Stop()
	}
}

// Send sends payload (at most the peer's limit, 64 KiB by default) with regions
// attached, waiting for the peer's HELLO and for room in the socket. A region's memory
// file travels only the first time this connection sees it; later messages carry its id.
//
// Sending is a release: what this process wrote to a region before Send is what the peer
// reads after its receive (docs/MEMORY-MODEL.md).
//
// A send refused for the message itself (CodePayloadTooLarge, CodeTooManyRegions,
// CodeRegionClosed, CodeRegionTransferred, CodeInvalidArg) or that timed out changes
// nothing; after CodePeerClosed or another failure the connection is over.
func (e *Endpoint) Send(payload []byte, opts *SendOptions) error {
	const op = "Endpoint.Send"
	var o SendOptions
	if opts != nil {
		o = *opts
	}
	if o.Timeout < 0 {
		return invalidArg(op, "SendOptions.Timeout must not be negative")
	}
	atts := attachmentsOf(o)
	var deadline time.Time
	if o.Timeout > 0 {
		deadline = time.Now().Add(o.Timeout)
	}
	e.queued.Add(1)
	defer e.queued.Add(-1)
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.awaitHandshake(op, deadline); err != nil {
		return err
	}
	if err := e.file.SetWriteDeadline(deadline); err != nil {
		return e.ioError(op, err)
	}
	var result error
	werr := e.raw.Write(func(fd uintptr) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		result = e.trySendLocked(int(fd), op, payload, atts)
		return result != errWouldBlock
	})
	if werr != nil {
		return e.ioError(op, werr)
	}
	return result
}

// attachmentsOf is Node's attachment rule: Regions in order, then the rest of Transfer;
// a region in Transfer is transferred wherever it is attached.
func attachmentsOf(o SendOptions) []attachment {
	atts := make([]attachment, 0, len(o.Regions)+len(o.Transfer))
	in := func(list []*Region, r *Region) bool {
		for _, x := range list {
			if x == r {
				return true
			}
		}
		return false
	}
	for _, r := range o.Regions {
		atts = append(atts, attachment{region: r, transfer: r != nil && in(o.Transfer, r)})
	}
	for _, r := range o.Transfer {
		if r == nil || !in(o.Regions, r) {
			atts = append(atts, attachment{region: r, transfer: true})
		}
	}
	return atts
}

// ioError maps a poller error: a passed deadline, or a socket closed meanwhile.
func (e *Endpoint) ioError(op string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return timedOutError(op)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closedErrLocked(op)
}

func (e *Endpoint) trySendLocked(fd int, op string, payload []byte, atts []attachment) error {
	if e.ended != nil {
		return e.closedErrLocked(op)
	}
	if err := e.s.checkMessage(op, len(payload), atts); err != nil {
		return err
	}
	if err := e.flushControlFD(fd); err != nil {
		if err == errWouldBlock {
			return err
		}
		return during(err, op)
	}
	frame, p, err := e.s.encodeMessage(op, len(payload), atts, e.sframe[:0])
	e.sframe = frame
	if err != nil {
		return err
	}
	defer p.done()
	// SYNC POINT: release (MEMORY-MODEL.md §3). sendmsg is a system call: every write
	// this goroutine made to the attached regions happens before the peer's receive.
	serr := sendRecord(fd, frame, payload, p.fds())
	switch {
	case serr == nil:
	case isWouldBlock(serr):
		return errWouldBlock
	case isDisconnected(serr):
		e.endLocked(peerClosedError(op))
		return peerClosedError(op)
	default:
		oe := osError(op, "sendmsg", serr, "the connection was closed")
		e.endLocked(oe)
		return oe
	}
	e.s.messageSent(atts, p, e)
	for _, a := range atts {
		if a.transfer {
			a.region.sendAway(e.s.fate)
		}
	}
	e.stats.MessagesOut++
	e.stats.BytesOut += uint64(len(payload))
	return nil
}

// Recv receives the next message, waiting as long as it takes. RELEASE frames and the
// peer's HELLO are handled on the way. At the end of the conversation it returns
// CodePeerClosed (messages the peer sent before closing come first).
//
// Receiving is an acquire: the peer's writes to a region before its send are visible
// here after Recv returns.
func (e *Endpoint) Recv() (*Message, error) {
	return e.recv("Endpoint.Recv", time.Time{}, false)
}

// RecvTimeout is Recv waiting at most timeout; 0 takes only a message that is already
// there. When the time runs out it returns CodeTimedOut and the connection is intact.
func (e *Endpoint) RecvTimeout(timeout time.Duration) (*Message, error) {
	const op = "Endpoint.RecvTimeout"
	if timeout < 0 {
		return nil, invalidArg(op, "the timeout must not be negative")
	}
	if timeout == 0 {
		return e.recv(op, time.Time{}, true)
	}
	return e.recv(op, time.Now().Add(timeout), false)
}

// Messages returns an iterator over the messages until the connection ends, for
// range-over-func. It stops quietly at CodePeerClosed or CodeClosed and yields any other
// error once, as the last element. Breaking out leaves the endpoint open.
func (e *Endpoint) Messages() iter.Seq2[*Message, error] {
	return func(yield func(*Message, error) bool) {
		for {
			m, err := e.Recv()
			if err != nil {
				if c := CodeOf(err); c != CodePeerClosed && c != CodeClosed {
					yield(nil, err)
				}
				return
			}
			if !yield(m, nil) {
				return
			}
		}
	}
}

func (e *Endpoint) recv(op string, deadline time.Time, poll bool) (*Message, error) {
	e.recvMu.Lock()
	defer e.recvMu.Unlock()
	for {
		in, err := e.readOne(op, deadline, poll)
		if err != nil {
			return nil, err
		}
		if in.kind != inMessage {
			continue
		}
		m := &Message{
			Payload:     in.payload,
			Regions:     make([]*Region, len(in.regions)),
			Descriptors: make([]Descriptor, len(in.regions)),
		}
		for i, r := range in.regions {
			m.Regions[i] = r.region
			m.Descriptors[i] = Descriptor{ID: r.d.id, New: r.d.isNew(), Frozen: r.d.isFrozen(), Transferred: r.d.isTransfer()}
		}
		return m, nil
	}
}

// readOne reads and judges one record (recvMu held). A failure ends the connection and
// is returned; a timeout leaves it intact.
func (e *Endpoint) readOne(op string, deadline time.Time, poll bool) (inbound, error) {
	e.mu.Lock()
	if e.ended != nil {
		err := e.closedErrLocked(op)
		e.mu.Unlock()
		return inbound{}, err
	}
	_ = e.flushControlLocked()
	e.mu.Unlock()

	e.rfds = e.rfds[:0]
	var res recvResult
	var rerr error
	read := func(fd uintptr) bool {
		res, rerr = recvRecord(int(fd), e.rbuf, e.oob, &e.rfds)
		return !isWouldBlock(rerr)
	}
	var cerr error
	if poll {
		cerr = e.raw.Control(func(fd uintptr) { read(fd) })
		if cerr == nil && isWouldBlock(rerr) {
			return inbound{}, timedOutError(op)
		}
	} else {
		if err := e.file.SetReadDeadline(deadline); err != nil {
			return inbound{}, e.ioError(op, err)
		}
		cerr = e.raw.Read(read)
	}
	if cerr != nil {
		closeFds(e.rfds)
		return inbound{}, e.ioError(op, cerr)
	}
	// SYNC POINT: acquire (MEMORY-MODEL.md §4). recvmsg returned: the peer's writes
	// before its send happen before every read this goroutine makes from here on.
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended != nil {
		closeFds(e.rfds)
		return inbound{}, e.closedErrLocked(op)
	}
	if rerr != nil {
		closeFds(e.rfds)
		oe := osError(op, "recvmsg", rerr, "the connection was closed")
		e.endLocked(oe)
		return inbound{}, oe
	}
	rec := &record{
		bytes:            e.rbuf[:min(res.n, len(e.rbuf))],
		fds:              e.rfds,
		dataTruncated:    res.dataTruncated,
		controlTruncated: res.controlTruncated,
	}
	in, err := e.s.handleRecord(rec)
	if err != nil {
		e.endWith(err)
		return inbound{}, during(err, op)
	}
	switch in.kind {
	case inHandshake:
		if !e.shaken {
			e.shaken = true
			close(e.handshook)
		}
		_ = e.flushControlLocked()
	case inEOF:
		e.endLocked(peerClosedError(op))
		return inbound{}, peerClosedError(op)
	case inMessage:
		e.stats.MessagesIn++
		e.stats.BytesIn += uint64(len(in.payload))
	}
	return in, nil
}
