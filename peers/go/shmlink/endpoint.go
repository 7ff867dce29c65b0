package shmlink

import (
	"encoding/binary"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options configure an Endpoint. The zero value means the defaults.
type Options struct {
	// MaxRegions and MaxPayload are announced in our HELLO and bound what
	// we accept (§3.5). Defaults 32 and 65536, as every interop peer uses.
	MaxRegions int
	MaxPayload int
	// Timeout bounds every wait for the socket (SO_RCVTIMEO/SO_SNDTIMEO).
	// Default 60 s (SCENARIO.md: a peer never waits longer).
	Timeout time.Duration
}

func (o *Options) withDefaults() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	if r.MaxRegions == 0 {
		r.MaxRegions = DefaultMaxRegions
	}
	if r.MaxPayload == 0 {
		r.MaxPayload = DefaultMaxPayload
	}
	if r.Timeout == 0 {
		r.Timeout = 60 * time.Second
	}
	if r.MaxRegions < 1 || r.MaxRegions > MaxRegionsLimit || r.MaxPayload < 0 || r.MaxPayload > MaxPayloadLimit {
		return r, newErr(CodeInvalidArgument, "limits outside the ranges of PROTOCOL.md §3", nil)
	}
	return r, nil
}

// Attachment is one region attached to an outgoing MESSAGE.
type Attachment struct {
	Region   *Region
	Transfer bool // set TRANSFER: we promise not to touch it until it comes back
}

// Received is one region attached to an incoming MESSAGE, with the
// descriptor fields as they were on the wire (the id is in the sender's
// namespace).
type Received struct {
	Region   *Region
	ID       uint32
	New      bool
	Frozen   bool
	Transfer bool
}

// Message is a received MESSAGE. It holds one reference to each attached
// region (one per attachment, so a region attached twice is held twice);
// Close drops them.
type Message struct {
	// Payload aliases the endpoint's receive buffer and is valid until the
	// next Recv/RecvInto/Send/Close on the endpoint; copy it to keep it.
	Payload []byte
	Regions []Received
}

// Close drops the message's region references. It is safe to call twice.
func (m *Message) Close() {
	for i := range m.Regions {
		if r := m.Regions[i].Region; r != nil {
			r.Close()
			m.Regions[i].Region = nil
		}
	}
	m.Regions = m.Regions[:0]
}

// peerBinding is an id bound in the peer's namespace.
type peerBinding struct {
	region *Region
	size   uint64
	frozen bool
}

// pending is a binding made earlier in the frame being checked or built.
type pending struct {
	id     uint32
	size   uint64
	frozen bool
	region *Region
}

type state int

const (
	stateOpen   state = iota
	stateFailed       // a failure was reported once; the socket is shut down
	stateEOF          // the peer closed; further receives report PEER_CLOSED
	stateClosed       // Close was called
)

// Endpoint is one side of a shmlink connection. It is not safe for
// concurrent use; one goroutine drives it.
type Endpoint struct {
	fd   int
	opts Options
	st   state

	peerHello      bool
	peerMaxRegions int
	peerMaxPayload int

	// Our namespace (§6): which of our regions the peer has bound.
	nextID  uint32
	ownByID map[uint32]*Region
	ownIDs  map[*Region]uint32
	// The peer's namespace: what its ids resolve to.
	peer map[uint32]peerBinding

	// Reused buffers so that a steady stream of messages does not allocate.
	rbuf    []byte // one record: exactly the largest frame our limits allow
	roob    []byte // control buffer for exactly MaxRegions descriptors
	rfds    []int
	sbuf    []byte // header and descriptors of an outgoing frame
	soob    []byte
	sfds    []int
	pend    []pending
	created []*Region
}

// Dial connects to a listening SOCK_SEQPACKET socket at path ("@name" is the
// Linux abstract name "\0name") and sends our HELLO. The peer's HELLO is
// read by the first Recv, or by Send/Release/Handshake if those come first.
func Dial(path string, opts *Options) (*Endpoint, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, newErr(CodeIO, "socket", err)
	}
	// The send timeout also bounds connect(2) when the backlog is full.
	if err := setTimeouts(fd, o.Timeout); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Connect(fd, SockaddrFor(path)); err != nil {
		unix.Close(fd)
		if err == unix.EAGAIN {
			return nil, newErr(CodeTimeout, "connect "+path, err)
		}
		return nil, newErr(CodeIO, "connect "+path, err)
	}
	return newEndpoint(fd, o)
}

// SockaddrFor returns the address for a socket path, mapping a leading "@"
// to the abstract namespace (x/sys/unix does the NUL substitution).
func SockaddrFor(path string) *unix.SockaddrUnix {
	return &unix.SockaddrUnix{Name: path}
}

// IsAbstract reports whether path names an abstract socket.
func IsAbstract(path string) bool { return strings.HasPrefix(path, "@") }

// NewEndpoint takes ownership of fd, a connected AF_UNIX SOCK_SEQPACKET
// socket (for instance one end of a socketpair), and sends our HELLO.
func NewEndpoint(fd int, opts *Options) (*Endpoint, error) {
	o, err := opts.withDefaults()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := setTimeouts(fd, o.Timeout); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newEndpoint(fd, o)
}

func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return newErr(CodeIO, "SO_RCVTIMEO", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return newErr(CodeIO, "SO_SNDTIMEO", err)
	}
	return nil
}

func newEndpoint(fd int, o Options) (*Endpoint, error) {
	e := &Endpoint{
		fd:      fd,
		opts:    o,
		nextID:  1,
		ownByID: make(map[uint32]*Region),
		ownIDs:  make(map[*Region]uint32),
		peer:    make(map[uint32]peerBinding),
		rbuf:    make([]byte, maxFrameLen(o.MaxRegions, o.MaxPayload)),
		// CmsgLen, not CmsgSpace: CmsgSpace rounds the data up to 8 bytes,
		// which for an odd count would let the kernel install one
		// descriptor more than we announced instead of setting MSG_CTRUNC.
		roob: make([]byte, unix.CmsgLen(4*o.MaxRegions)),
		rfds: make([]int, 0, o.MaxRegions),
		sbuf: make([]byte, HeaderSize+DescriptorSize*MaxRegionsLimit),
		soob: make([]byte, unix.CmsgSpace(4*MaxRegionsLimit)),
	}
	hello := AppendHello(nil, o.MaxRegions, o.MaxPayload)
	if err := e.sendRecord(hello, nil, nil); err != nil {
		// A peer that has already closed (a hostile peer sending a bad
		// HELLO and leaving) makes this fail with EPIPE, yet what it sent
		// is still queued for us and explains why. Keep the endpoint so
		// that Recv reports the real reason (or end-of-file).
		if CodeOf(err) != CodePeerClosed {
			unix.Close(fd)
			return nil, err
		}
	}
	return e, nil
}

// PeerLimits returns the limits from the peer's HELLO (0, 0 before it).
func (e *Endpoint) PeerLimits() (maxRegions, maxPayload int) {
	return e.peerMaxRegions, e.peerMaxPayload
}

// Fd returns the socket descriptor (owned by the endpoint).
func (e *Endpoint) Fd() int { return e.fd }

func (e *Endpoint) closedErr() error {
	switch e.st {
	case stateEOF:
		return newErr(CodePeerClosed, "the peer closed the connection", nil)
	default:
		return newErr(CodeClosed, "the connection is closed", nil)
	}
}

// Handshake waits for the peer's HELLO if it has not arrived yet.
func (e *Endpoint) Handshake() error {
	if e.st != stateOpen {
		return e.closedErr()
	}
	if e.peerHello {
		return nil
	}
	var m Message
	err := e.recvFrame(&m, true)
	m.Close()
	return err
}

// Recv receives the next MESSAGE. HELLO and RELEASE frames are processed on
// the way. At end-of-file it returns an *Error with CodePeerClosed.
func (e *Endpoint) Recv() (*Message, error) {
	m := &Message{}
	if err := e.RecvInto(m); err != nil {
		return nil, err
	}
	return m, nil
}

// RecvInto is Recv into a caller-owned Message, reusing its slices so
// that a receive loop does not allocate. Regions m still holds from a
// previous message are closed first.
func (e *Endpoint) RecvInto(m *Message) error {
	m.Close()
	m.Payload = nil
	if e.st != stateOpen {
		return e.closedErr()
	}
	return e.recvFrame(m, false)
}

// recvFrame reads records until it has a MESSAGE (or, with helloOnly, the
// peer's HELLO).
func (e *Endpoint) recvFrame(m *Message, helloOnly bool) error {
	for {
		n, rflags, err := e.recvRecord()
		if err != nil {
			e.closeFds(e.rfds)
			if CodeOf(err) == CodeTimeout {
				return err // nothing was consumed; the connection is intact
			}
			return e.fail(err)
		}
		if n == 0 && rflags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) == 0 && len(e.rfds) == 0 {
			// End-of-file (§1.5). Frames already received stay valid;
			// the bindings go.
			e.st = stateEOF
			e.dropTables()
			return newErr(CodePeerClosed, "end-of-file", nil)
		}
		gotMessage, err := e.handleRecord(n, rflags, m)
		if err != nil {
			e.closeFds(e.rfds)
			m.Close()
			m.Payload = nil
			return e.fail(err)
		}
		if gotMessage || (helloOnly && e.peerHello) {
			return nil
		}
	}
}

// recvRecord receives one record into rbuf and its descriptors into rfds.
func (e *Endpoint) recvRecord() (n, rflags int, err error) {
	e.rfds = e.rfds[:0]
	var iov unix.Iovec
	iov.Base = &e.rbuf[0]
	iov.SetLen(len(e.rbuf))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	msg.Control = &e.roob[0]
	msg.SetControllen(len(e.roob))
	resets := 0
	for {
		r, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(e.fd),
			uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
		switch errno {
		case 0:
			e.parseRights(e.roob[:msg.Controllen])
			return int(r), int(msg.Flags), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, 0, newErr(CodeTimeout, "no record within the timeout", errno)
		case unix.ECONNRESET:
			// Linux reports ECONNRESET once when the peer closed while
			// frames we sent were unread, before the records it queued
			// for us; reading again returns those, then end-of-file.
			if resets++; resets < 4 {
				continue
			}
		}
		return 0, 0, newErr(CodeIO, "recvmsg", errno)
	}
}

// parseRights collects every descriptor of every SCM_RIGHTS message.
func (e *Endpoint) parseRights(oob []byte) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		clen := int(h.Len)
		if clen < unix.SizeofCmsghdr || clen > len(oob) {
			return
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			data := oob[unix.CmsgLen(0):clen]
			for len(data) >= 4 {
				e.rfds = append(e.rfds, int(int32(binary.NativeEndian.Uint32(data))))
				data = data[4:]
			}
		}
		next := unix.CmsgSpace(clen - unix.CmsgLen(0))
		if next > len(oob) {
			return
		}
		oob = oob[next:]
	}
}

func (e *Endpoint) closeFds(fds []int) {
	for i, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
			fds[i] = -1
		}
	}
}

// handleRecord applies the receiver rules of PROTOCOL.md §3, §5.3 and §7 to
// the record in rbuf and returns the error of §7's table for the first rule
// broken. The documents do not order the frame-level checks against each
// other; the order here is: MSG_CTRUNC, MSG_TRUNC, short record, HELLO
// state, header flags, kind, lengths, limits, descriptor fields, RELEASE
// shape, descriptor count, bindings, then §5.3 per NEW descriptor. It
// returns true when m holds a MESSAGE.
func (e *Endpoint) handleRecord(n, rflags int, m *Message) (bool, error) {
	// MSG_CTRUNC first: the frame may be fine but we lost descriptors, so
	// nothing in it can be trusted to line up (§5.4.3).
	if rflags&unix.MSG_CTRUNC != 0 {
		return false, newErr(CodeFdsTruncated, "control data truncated (more descriptors than announced)", nil)
	}
	if rflags&unix.MSG_TRUNC != 0 {
		return false, violation("record longer than the largest frame our limits allow")
	}
	if n < HeaderSize {
		return false, violation("record of %d bytes is shorter than a header", n)
	}
	rec := e.rbuf[:n]
	h := getHeader(rec)
	if !e.peerHello {
		return false, e.handleHello(rec, h)
	}
	if h.flags != 0 {
		return false, violation("reserved header flags 0x%02x", h.flags)
	}
	switch h.kind {
	case KindMessage, KindRelease:
	case KindHello:
		return false, violation("second HELLO")
	default:
		return false, violation("unknown frame kind %d", h.kind)
	}
	rc := int(h.regionCount)
	if n != HeaderSize+DescriptorSize*rc+int(h.payloadLen) {
		return false, violation("record is %d bytes, header says %d regions and %d payload bytes", n, rc, h.payloadLen)
	}
	if rc > e.opts.MaxRegions {
		return false, violation("%d regions, we accept %d", rc, e.opts.MaxRegions)
	}
	if int(h.payloadLen) > e.opts.MaxPayload {
		return false, violation("%d payload bytes, we accept %d", h.payloadLen, e.opts.MaxPayload)
	}
	newCount := 0
	for i := 0; i < rc; i++ {
		d := getDescriptor(rec[HeaderSize+DescriptorSize*i:])
		if d.flags&^flagsKnown != 0 {
			return false, violation("descriptor %d has unknown flags 0x%x", i, d.flags)
		}
		if d.id == 0 {
			return false, violation("descriptor %d has id 0", i)
		}
		if d.size == 0 {
			return false, violation("descriptor %d has size 0", i)
		}
		if h.kind == KindRelease && d.flags != 0 {
			return false, violation("RELEASE descriptor %d has flags 0x%x", i, d.flags)
		}
		if d.flags&FlagNew != 0 {
			newCount++
		}
	}
	if h.kind == KindRelease && h.payloadLen != 0 {
		return false, violation("RELEASE with %d payload bytes", h.payloadLen)
	}
	if len(e.rfds) != newCount {
		return false, violation("%d descriptors attached for %d NEW regions", len(e.rfds), newCount)
	}
	if h.kind == KindRelease {
		return false, e.handleRelease(rec, rc)
	}
	if err := e.handleMessage(rec, h, m); err != nil {
		return false, err
	}
	return true, nil
}

// handleHello checks the first frame. Magic and version are looked at
// before the exact layout so that a HELLO from a future version (whose
// payload may be longer) is reported as incompatible, not as a violation.
func (e *Endpoint) handleHello(rec []byte, h header) error {
	if h.kind != KindHello {
		return violation("first frame is kind %d, not HELLO", h.kind)
	}
	p := rec[HeaderSize:]
	if h.regionCount == 0 && len(p) >= 8 && [8]byte(p[:8]) != Magic {
		return newErr(CodePeerIncompatible, "HELLO magic is wrong", nil)
	}
	if h.regionCount == 0 && len(p) >= 10 {
		if v := binary.LittleEndian.Uint16(p[8:]); v != Version {
			return newErr(CodePeerIncompatible, "unsupported protocol version "+itoa(int(v)), nil)
		}
	}
	if h.flags != 0 || h.regionCount != 0 || h.payloadLen != HelloPayload || len(p) != HelloPayload {
		return violation("malformed HELLO (flags %d, %d regions, %d payload bytes, record %d bytes)",
			h.flags, h.regionCount, h.payloadLen, len(rec))
	}
	if len(e.rfds) != 0 {
		return violation("descriptors attached to HELLO")
	}
	maxRegions := int(binary.LittleEndian.Uint16(p[10:]))
	maxPayload := int(binary.LittleEndian.Uint32(p[12:]))
	if maxRegions < 1 || maxRegions > MaxRegionsLimit || maxPayload > MaxPayloadLimit {
		return violation("HELLO limits out of range (max_regions %d, max_payload %d)", maxRegions, maxPayload)
	}
	e.peerHello = true
	e.peerMaxRegions = maxRegions
	e.peerMaxPayload = maxPayload
	return nil
}

func (e *Endpoint) handleRelease(rec []byte, rc int) error {
	// Check every id before forgetting any, so a refused frame changes
	// nothing (the tables are dropped anyway, but no reference is lost
	// twice). A duplicate id in one frame releases an unbound id.
	e.pend = e.pend[:0]
	for i := 0; i < rc; i++ {
		d := getDescriptor(rec[HeaderSize+DescriptorSize*i:])
		b, ok := e.peer[d.id]
		if !ok || e.pendingIndex(d.id) >= 0 {
			return violation("RELEASE of unbound id %d", d.id)
		}
		// §5.3 asks bound references to match size and FROZEN; a RELEASE
		// descriptor cannot carry FROZEN (its flags are 0), so only the
		// size is compared.
		if b.size != d.size {
			return violation("RELEASE of id %d with size %d, bound with %d", d.id, d.size, b.size)
		}
		e.pend = append(e.pend, pending{id: d.id})
	}
	for _, p := range e.pend {
		b := e.peer[p.id]
		delete(e.peer, p.id)
		b.region.Close()
	}
	return nil
}

func (e *Endpoint) pendingIndex(id uint32) int {
	for i := range e.pend {
		if e.pend[i].id == id {
			return i
		}
	}
	return -1
}

func (e *Endpoint) handleMessage(rec []byte, h header, m *Message) error {
	rc := int(h.regionCount)
	// Bindings first, without touching any descriptor: NEW must name an
	// unbound id (including ids bound earlier in this frame), a reference
	// must name a bound one with the same size and FROZEN.
	e.pend = e.pend[:0]
	for i := 0; i < rc; i++ {
		d := getDescriptor(rec[HeaderSize+DescriptorSize*i:])
		frozen := d.flags&FlagFrozen != 0
		if d.flags&FlagNew != 0 {
			if _, bound := e.peer[d.id]; bound || e.pendingIndex(d.id) >= 0 {
				return violation("NEW for id %d, which is bound", d.id)
			}
			e.pend = append(e.pend, pending{id: d.id, size: d.size, frozen: frozen})
			continue
		}
		size, fr := uint64(0), false
		if b, ok := e.peer[d.id]; ok {
			size, fr = b.size, b.frozen
		} else if j := e.pendingIndex(d.id); j >= 0 {
			size, fr = e.pend[j].size, e.pend[j].frozen
		} else {
			return violation("unknown region id %d", d.id)
		}
		if size != d.size || fr != frozen {
			return violation("id %d referenced with size %d frozen %v, bound with size %d frozen %v",
				d.id, d.size, frozen, size, fr)
		}
	}
	// Then §5.3 for each NEW descriptor in order, mapping as we go.
	e.created = e.created[:0]
	for j := range e.pend {
		r, err := e.admit(j, e.pend[j].size, e.pend[j].frozen)
		if err != nil {
			for _, c := range e.created {
				c.Close()
			}
			e.created = e.created[:0]
			return err
		}
		e.created = append(e.created, r)
		e.pend[j].region = r
	}
	// Commit. The binding tables keep the references admit returned; the
	// message takes one more per attachment.
	for j := range e.pend {
		p := e.pend[j]
		e.peer[p.id] = peerBinding{region: p.region, size: p.size, frozen: p.frozen}
	}
	e.created = e.created[:0]
	m.Payload = rec[HeaderSize+DescriptorSize*rc:]
	for i := 0; i < rc; i++ {
		d := getDescriptor(rec[HeaderSize+DescriptorSize*i:])
		r := e.peer[d.id].region
		m.Regions = append(m.Regions, Received{
			Region:   r.Retain(),
			ID:       d.id,
			New:      d.flags&FlagNew != 0,
			Frozen:   d.flags&FlagFrozen != 0,
			Transfer: d.flags&FlagTransfer != 0,
		})
	}
	return nil
}

// admit runs PROTOCOL.md §5.3 steps 1-6 on the j-th received descriptor and
// returns a referenced Region. On success the descriptor is consumed (owned
// by a new Region, or closed because the file is one we already hold).
func (e *Endpoint) admit(j int, size uint64, frozen bool) (*Region, error) {
	fd := e.rfds[j]
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, newErr(CodeRegionNotMemfd, "fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, newErr(CodeRegionNotMemfd, "descriptor is not a regular file (mode 0"+otoa(st.Mode&unix.S_IFMT)+")", nil)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, newErr(CodeRegionNotMemfd, "F_GET_SEALS failed: the file cannot carry seals", err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return nil, newErr(CodeRegionUnsealed, "region lacks F_SEAL_SHRINK|F_SEAL_GROW", nil)
	}
	if frozen && seals&unix.F_SEAL_WRITE == 0 {
		return nil, newErr(CodeRegionUnsealed, "FROZEN region lacks F_SEAL_WRITE", nil)
	}
	// F_SEAL_FUTURE_WRITE is not in PROTOCOL.md, but it forbids the
	// shared writable mapping a non-frozen region needs just as
	// F_SEAL_WRITE does, so it is refused the same way rather than
	// surfacing as an mmap failure.
	if !frozen && seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return nil, violation("region has a write seal but FROZEN is not set")
	}
	if st.Size < 0 || uint64(st.Size) != size {
		return nil, newErr(CodeRegionSizeMismatch, "descriptor says "+utoa(size)+" bytes, file has "+itoa(int(st.Size)), nil)
	}
	if uint64(int(size)) != size || int(size) < 0 {
		return nil, newErr(CodeIO, "region too large to map", nil)
	}
	id := FileID{uint64(st.Dev), st.Ino}
	if r := lookupRegion(id); r != nil {
		// A file we already hold (typically our own region coming back):
		// resolve it to the same object and drop the duplicate descriptor.
		if r.Frozen() != frozen {
			r.Close()
			return nil, violation("region comes back with FROZEN %v but is %v here", frozen, r.Frozen())
		}
		unix.Close(fd)
		e.rfds[j] = -1
		return r, nil
	}
	r, err := mapReceived(fd, int(size), id, frozen)
	if err != nil {
		return nil, err
	}
	e.rfds[j] = -1
	return r, nil
}

// Send sends one MESSAGE with payload and the regions attached in order.
// A region not yet bound in our namespace is sent NEW with its descriptor
// and gets the next id; later occurrences (in this frame or later ones)
// refer to the id. Invalid arguments return CodeInvalidArgument and leave
// the connection usable; any other failure ends it.
func (e *Endpoint) Send(payload []byte, regions ...Attachment) error {
	if err := e.Handshake(); err != nil {
		return err
	}
	if len(regions) > e.peerMaxRegions {
		return newErr(CodeInvalidArgument, "more regions than the peer accepts ("+itoa(e.peerMaxRegions)+")", nil)
	}
	if len(payload) > e.peerMaxPayload {
		return newErr(CodeInvalidArgument, "payload larger than the peer accepts ("+itoa(e.peerMaxPayload)+")", nil)
	}
	e.pend = e.pend[:0]
	e.sfds = e.sfds[:0]
	next := e.nextID
	for i, a := range regions {
		r := a.Region
		if r == nil || r.addr == nil {
			return newErr(CodeInvalidArgument, "attachment "+itoa(i)+" is nil or closed", nil)
		}
		d := descriptor{size: uint64(r.size)}
		if id, ok := e.ownIDs[r]; ok {
			d.id = id
		} else if j := e.pendingRegion(r); j >= 0 {
			d.id = e.pend[j].id
		} else {
			if next == 0 {
				return newErr(CodeInvalidArgument, "region ids exhausted", nil)
			}
			d.id = next
			next++
			d.flags |= FlagNew
			e.pend = append(e.pend, pending{id: d.id, region: r})
			e.sfds = append(e.sfds, r.fd)
		}
		if r.Frozen() {
			d.flags |= FlagFrozen
		}
		if a.Transfer {
			d.flags |= FlagTransfer
		}
		putDescriptor(e.sbuf[HeaderSize+DescriptorSize*i:], d)
	}
	putHeader(e.sbuf, header{kind: KindMessage, regionCount: uint16(len(regions)), payloadLen: uint32(len(payload))})
	if err := e.sendRecord(e.sbuf[:HeaderSize+DescriptorSize*len(regions)], payload, e.sfds); err != nil {
		return e.sendFailed(err)
	}
	// Bound from now on: the peer has the descriptor. The binding holds a
	// reference so the id keeps naming a live object.
	e.nextID = next
	for _, p := range e.pend {
		e.ownByID[p.id] = p.region.Retain()
		e.ownIDs[p.region] = p.id
	}
	return nil
}

func (e *Endpoint) pendingRegion(r *Region) int {
	for i := range e.pend {
		if e.pend[i].region == r {
			return i
		}
	}
	return -1
}

// IDOf returns the id r is bound to in our namespace, if it is.
func (e *Endpoint) IDOf(r *Region) (uint32, bool) {
	id, ok := e.ownIDs[r]
	return id, ok
}

// Release sends RELEASE for regions bound in our namespace and forgets
// their ids (§4). The ids are never reused. Regions not bound are an
// invalid argument. More regions than the peer accepts in one frame are
// split over several frames.
func (e *Endpoint) Release(regions ...*Region) error {
	if err := e.Handshake(); err != nil {
		return err
	}
	for i, r := range regions {
		if _, ok := e.ownIDs[r]; !ok {
			return newErr(CodeInvalidArgument, "region "+itoa(i)+" is not bound on this connection", nil)
		}
		for _, q := range regions[:i] {
			if q == r {
				return newErr(CodeInvalidArgument, "region "+itoa(i)+" listed twice", nil)
			}
		}
	}
	for len(regions) > 0 {
		chunk := regions
		if len(chunk) > e.peerMaxRegions {
			chunk = chunk[:e.peerMaxRegions]
		}
		for i, r := range chunk {
			putDescriptor(e.sbuf[HeaderSize+DescriptorSize*i:], descriptor{id: e.ownIDs[r], size: uint64(r.size)})
		}
		putHeader(e.sbuf, header{kind: KindRelease, regionCount: uint16(len(chunk))})
		if err := e.sendRecord(e.sbuf[:HeaderSize+DescriptorSize*len(chunk)], nil, nil); err != nil {
			return e.sendFailed(err)
		}
		for _, r := range chunk {
			id := e.ownIDs[r]
			delete(e.ownIDs, r)
			delete(e.ownByID, id)
			r.Close()
		}
		regions = regions[len(chunk):]
	}
	return nil
}

func (e *Endpoint) sendFailed(err error) error {
	if CodeOf(err) == CodeTimeout {
		return err // nothing was sent (SEQPACKET records are atomic)
	}
	if CodeOf(err) == CodePeerClosed {
		e.st = stateEOF
		e.shutdown()
		e.dropTables()
		return err
	}
	return e.fail(err)
}

// sendRecord sends head+payload as one record with fds in one SCM_RIGHTS
// message, with MSG_NOSIGNAL so a closed peer is an error, not SIGPIPE.
func (e *Endpoint) sendRecord(head, payload []byte, fds []int) error {
	var iov [2]unix.Iovec
	iov[0].Base = &head[0]
	iov[0].SetLen(len(head))
	niov := 1
	if len(payload) > 0 {
		iov[1].Base = &payload[0]
		iov[1].SetLen(len(payload))
		niov = 2
	}
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(niov)
	if len(fds) > 0 {
		clen := unix.CmsgSpace(4 * len(fds))
		oob := e.soob[:clen]
		clear(oob)
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level = unix.SOL_SOCKET
		h.Type = unix.SCM_RIGHTS
		h.SetLen(unix.CmsgLen(4 * len(fds)))
		data := oob[unix.CmsgLen(0):]
		for i, fd := range fds {
			binary.NativeEndian.PutUint32(data[4*i:], uint32(fd))
		}
		msg.Control = &oob[0]
		msg.SetControllen(clen)
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(e.fd),
			uintptr(unsafe.Pointer(&msg)), unix.MSG_NOSIGNAL)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return newErr(CodeTimeout, "the peer did not take the record within the timeout", errno)
		case unix.EPIPE, unix.ECONNRESET, unix.ENOTCONN:
			return newErr(CodePeerClosed, "sendmsg: the peer closed the connection", errno)
		}
		return newErr(CodeIO, "sendmsg", errno)
	}
}

// fail ends the connection after a failure (§7): the caller already closed
// the failing record's descriptors; shut the socket down both ways so the
// peer reads end-of-file, drop both tables, and report err this once.
func (e *Endpoint) fail(err error) error {
	if e.st == stateOpen {
		e.st = stateFailed
		e.shutdown()
		e.dropTables()
	}
	return err
}

func (e *Endpoint) shutdown() {
	if e.fd >= 0 {
		unix.Shutdown(e.fd, unix.SHUT_RDWR)
	}
}

func (e *Endpoint) dropTables() {
	for id, b := range e.peer {
		delete(e.peer, id)
		b.region.Close()
	}
	for id, r := range e.ownByID {
		delete(e.ownByID, id)
		delete(e.ownIDs, r)
		r.Close()
	}
}

// Close shuts the connection down, closes the socket and drops the
// binding tables. Regions held elsewhere (by the caller, by messages) stay
// valid. Safe to call more than once.
func (e *Endpoint) Close() error {
	if e.fd < 0 {
		return nil
	}
	e.shutdown()
	err := unix.Close(e.fd)
	e.fd = -1
	e.st = stateClosed
	e.dropTables()
	if err != nil {
		return newErr(CodeIO, "close", err)
	}
	return nil
}
