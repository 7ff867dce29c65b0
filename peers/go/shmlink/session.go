package shmlink

import (
	"fmt"
	"math"
	"weak"
)

// The protocol state of one connection, without I/O: records and descriptors go in,
// frames to send and received messages come out. The Endpoint moves the bytes; what the
// protocol decides (the handshake, whether a record is allowed, which ids are bound,
// the limits and the trust policy) is decided here. The Endpoint's mutex guards it.

// record is one record as the socket delivered it. The session owns fds: each one is
// consumed (set to -1) or closed by handleRecord.
type record struct {
	bytes            []byte
	fds              []int
	dataTruncated    bool
	controlTruncated bool
}

type inboundKind int

const (
	inHandshake inboundKind = iota
	inReleased
	inMessage
	inEOF
)

type incoming struct {
	region *Region
	d      descriptor
}

type inbound struct {
	kind    inboundKind
	payload []byte
	regions []incoming
}

type attachment struct {
	region   *Region
	transfer bool
}

type controlKind int

const (
	controlNone controlKind = iota
	controlHello
	controlRelease
)

// plan is how a MESSAGE was encoded: the files to pass (one reference each, dropped by
// done) and the ids that bind once it is sent.
type plan struct {
	files  []*memFile
	newIDs []newID
}

type newID struct {
	id    uint32
	index int
}

func (p *plan) fds() []int {
	fds := make([]int, len(p.files))
	for i, f := range p.files {
		fds[i] = f.fd
	}
	return fds
}

func (p *plan) done() {
	for _, f := range p.files {
		f.unref()
	}
	p.files = nil
}

type peerBinding struct {
	region *Region
	file   *memFile // kept while bound: the region itself lets go of its file when closed
}

type heldEntry struct {
	bindings int
	size     uint64
}

type session struct {
	limits         Limits
	acceptWritable bool
	realm          uint64
	peer           *announced
	helloSent      bool
	ended          bool
	// fate says how the connection ended; regions transferred over it share it, so that
	// Reclaim knows.
	fate *fate
	// transferredIn are the regions that arrived with a transfer: given up when this
	// side ends the connection (docs/PROTOCOL.md §6).
	transferredIn []weak.Pointer[Region]

	own         map[uint32]*Region
	ownBySerial map[uint64]uint32
	nextID      uint32
	peers       map[uint32]peerBinding
	held        map[fileID]*heldEntry
	heldBytes   uint64
	releases    []descriptor
}

func newSession(limits Limits, acceptWritable bool, realm uint64) *session {
	return &session{
		limits:         limits,
		acceptWritable: acceptWritable,
		realm:          realm,
		fate:           new(fate),
		own:            make(map[uint32]*Region),
		ownBySerial:    make(map[uint64]uint32),
		nextID:         1,
		peers:          make(map[uint32]peerBinding),
		held:           make(map[fileID]*heldEntry),
	}
}

// --- sending -----------------------------------------------------------------------------

// pollControl appends the next frame the session itself needs sent (HELLO, RELEASE).
func (s *session) pollControl(b []byte) ([]byte, controlKind, int) {
	if s.ended {
		return b, controlNone, 0
	}
	if !s.helloSent {
		return putHello(b, s.limits.announced()), controlHello, 0
	}
	if s.peer == nil || len(s.releases) == 0 {
		return b, controlNone, 0
	}
	count := min(len(s.releases), s.peer.maxRegions)
	b = putHeader(b, kindRelease, count, 0)
	for _, d := range s.releases[:count] {
		b = putDescriptor(b, d)
	}
	return b, controlRelease, count
}

func (s *session) controlSent(kind controlKind, count int) {
	switch kind {
	case controlHello:
		s.helloSent = true
	case controlRelease:
		s.releases = s.releases[count:]
	}
}

// checkMessage checks what can be checked before sending: the peer's limits and the
// regions' state. Nothing changes on failure.
func (s *session) checkMessage(op string, payloadLen int, atts []attachment) error {
	bounds := announced{maxRegions: MaxRegionsCeiling, maxPayload: MaxPayloadCeiling}
	if s.peer != nil {
		bounds = *s.peer
	}
	if payloadLen > bounds.maxPayload {
		return errorf(CodePayloadTooLarge, op, "the payload has %d bytes but the peer accepts at most %d; put large data in a region", payloadLen, bounds.maxPayload)
	}
	if len(atts) > bounds.maxRegions {
		return errorf(CodeTooManyRegions, op, "%d regions attached but the peer accepts at most %d per message; send several messages", len(atts), bounds.maxRegions)
	}
	for i, a := range atts {
		if a.region == nil {
			return invalidArg(op, "attachment %d is a nil *Region", i)
		}
		if err := a.region.checkUsable(op); err != nil {
			return err
		}
	}
	for i, a := range atts {
		for _, b := range atts[:i] {
			if b.region == a.region && (a.transfer || b.transfer) {
				return invalidArg(op, "a transferred region can be attached to a message only once")
			}
		}
	}
	return nil
}

// nextFreeID is the next unbound id at or after the last one handed out, skipping 0
// and taken (ids planned for the same frame). Ids are not reused until all 2^32-1 have
// been (docs/PROTOCOL.md §5.2 rule 3).
func (s *session) nextFreeID(taken []newID) uint32 {
	id := s.nextID
	for {
		if _, bound := s.own[id]; id != 0 && !bound && !planned(taken, id) {
			return id
		}
		id++
	}
}

func planned(taken []newID, id uint32) bool {
	for _, t := range taken {
		if t.id == id {
			return true
		}
	}
	return false
}

// encodeMessage appends a MESSAGE header and descriptors to b. A region's descriptor
// travels only the first time this connection sees it; later frames carry its id.
func (s *session) encodeMessage(op string, payloadLen int, atts []attachment, b []byte) ([]byte, *plan, error) {
	p := &plan{}
	b = putHeader(b, kindMessage, len(atts), payloadLen)
	for index, a := range atts {
		var d descriptor
		if id, ok := s.ownBySerial[a.region.serial]; ok {
			d.id = id
		} else if earlier := p.idOf(atts, a.region); earlier != 0 {
			d.id = earlier
		} else {
			file := a.region.fileRef()
			if file == nil {
				p.done()
				return b, nil, newError(CodeRegionClosed, op, "a region was closed before it could be sent")
			}
			d.id = s.nextFreeID(p.newIDs)
			d.flags |= flagNew
			p.newIDs = append(p.newIDs, newID{id: d.id, index: index})
			p.files = append(p.files, file)
		}
		if a.region.Frozen() {
			d.flags |= flagFrozen
		}
		if a.transfer {
			d.flags |= flagTransfer
		}
		d.size = uint64(a.region.size)
		b = putDescriptor(b, d)
	}
	return b, p, nil
}

func (p *plan) idOf(atts []attachment, r *Region) uint32 {
	for _, n := range p.newIDs {
		if atts[n.index].region == r {
			return n.id
		}
	}
	return 0
}

// messageSent binds the new ids of a message that left. A region closed meanwhile is
// released at once.
func (s *session) messageSent(atts []attachment, p *plan, ep *Endpoint) {
	for _, n := range p.newIDs {
		r := atts[n.index].region
		s.ownBySerial[r.serial] = n.id
		s.own[n.id] = r
		s.nextID = n.id + 1
		if !r.addBinder(ep) {
			s.release(r)
		}
	}
}

// ownID is this side's id for r, while the peer has it bound.
func (s *session) ownID(r *Region) (uint32, bool) {
	id, ok := s.ownBySerial[r.serial]
	return id, ok
}

// release forgets this side's id for r and queues its RELEASE; false when the peer had
// nothing of it bound.
func (s *session) release(r *Region) bool {
	id, ok := s.ownBySerial[r.serial]
	if !ok {
		return false
	}
	delete(s.ownBySerial, r.serial)
	delete(s.own, id)
	if !s.ended {
		s.releases = append(s.releases, descriptor{id: id, size: uint64(r.size)})
	}
	return true
}

// end ends the session: by the peer (end-of-file) or by this side (closed here, or a
// failure this side detected). The tables are dropped. When the peer ended it, the
// regions this side transferred over it become reclaimable; when this side did, the
// regions transferred to it over the connection go back to the peer (docs/PROTOCOL.md
// §6).
func (s *session) end(byPeer bool) {
	if s.ended {
		return
	}
	s.ended = true
	s.releases = nil
	clear(s.own)
	clear(s.ownBySerial)
	for id, b := range s.peers {
		b.file.unref()
		delete(s.peers, id)
	}
	clear(s.held)
	s.heldBytes = 0
	s.fate.end(byPeer)
	if !byPeer {
		for _, p := range s.transferredIn {
			if r := p.Value(); r != nil {
				r.giveUpIfFrom(s.fate)
			}
		}
	}
	s.transferredIn = nil
}

// --- receiving ---------------------------------------------------------------------------

// handleRecord judges one record in the order of docs/PROTOCOL.md §7 and applies it.
// Every descriptor of the record is consumed or closed. On an error the session has
// ended; the caller shuts the socket down.
func (s *session) handleRecord(rec *record) (inbound, error) {
	if s.ended {
		closeFds(rec.fds)
		return inbound{}, closedError("recv")
	}
	var adopted []*Region
	in, err := s.judge(rec, &adopted)
	closeFds(rec.fds)
	if err != nil {
		for _, r := range adopted {
			r.closeUnseen()
		}
		s.end(false)
		return inbound{}, err
	}
	if in.kind == inEOF {
		s.end(true)
	}
	return in, nil
}

func closeFds(fds []int) {
	for i, fd := range fds {
		if fd >= 0 {
			closeFd(fd)
			fds[i] = -1
		}
	}
}

func refusalError(r *refusal) error {
	if r.incompatible {
		return newError(CodePeerIncompatible, "recv", r.text+"; the connection was closed")
	}
	return violation("%s", r.text)
}

func (s *session) judge(rec *record, adopted *[]*Region) (inbound, error) {
	if len(rec.bytes) == 0 && len(rec.fds) == 0 && !rec.controlTruncated {
		return inbound{kind: inEOF}, nil
	}
	if rec.controlTruncated {
		return inbound{}, errorf(CodeFdsTruncated, "recv",
			"the kernel dropped descriptors from a message (%d arrived and were closed): the peer sent more than the %d this side accepts, or this process is at its open-file limit (ulimit -n); the connection was closed",
			len(rec.fds), s.limits.MaxRegions)
	}
	if rec.dataTruncated {
		return inbound{}, violation("the peer sent a record longer than the %d bytes this side's limits allow", s.limits.announced().maxFrameLen())
	}
	if s.peer == nil {
		a, r := parseFirst(rec.bytes)
		if r != nil {
			return inbound{}, refusalError(r)
		}
		if len(rec.fds) != 0 {
			return inbound{}, violation("descriptors arrived with the HELLO")
		}
		s.peer = &a
		return inbound{kind: inHandshake}, nil
	}
	f, r := parse(rec.bytes)
	if r != nil {
		return inbound{}, refusalError(r)
	}
	newCount := 0
	for i := 0; i < f.header.regionCount; i++ {
		if f.descriptor(i).isNew() {
			newCount++
		}
	}
	if newCount != len(rec.fds) {
		return inbound{}, violation("%d descriptors are marked new but %d file descriptors arrived", newCount, len(rec.fds))
	}
	if f.header.regionCount > s.limits.MaxRegions {
		return inbound{}, violation("%d regions in one message; this side announced at most %d", f.header.regionCount, s.limits.MaxRegions)
	}
	if f.header.payloadLen > s.limits.MaxPayload {
		return inbound{}, violation("%d payload bytes; this side announced at most %d", f.header.payloadLen, s.limits.MaxPayload)
	}
	switch f.header.kind {
	case kindHello:
		return inbound{}, violation("a second HELLO")
	case kindRelease:
		for i := 0; i < f.header.regionCount; i++ {
			d := f.descriptor(i)
			b, ok := s.peers[d.id]
			if !ok {
				return inbound{}, violation("RELEASE of region id %d, which is not bound", d.id)
			}
			if uint64(b.region.size) != d.size {
				return inbound{}, violation("RELEASE of region %d with the wrong size", d.id)
			}
			s.unbindPeer(d.id)
		}
		return inbound{kind: inReleased}, nil
	}
	regions := make([]incoming, 0, f.header.regionCount)
	next := 0
	for i := 0; i < f.header.regionCount; i++ {
		d := f.descriptor(i)
		var region *Region
		var err error
		if d.isNew() {
			fd := rec.fds[next]
			rec.fds[next] = -1
			next++
			region, err = s.bindNew(d, fd, adopted)
		} else {
			region, err = s.resolveKnown(d, adopted)
		}
		if err != nil {
			return inbound{}, err
		}
		regions = append(regions, incoming{region: region, d: d})
	}
	for _, in := range regions {
		in.region.arrive(s.fate, in.d.isTransfer())
		if in.d.isTransfer() {
			live := s.transferredIn[:0]
			for _, p := range s.transferredIn {
				if p.Value() != nil {
					live = append(live, p)
				}
			}
			s.transferredIn = append(live, weak.Make(in.region))
		}
	}
	return inbound{kind: inMessage, payload: append([]byte(nil), f.payload...), regions: regions}, nil
}

// inspect applies docs/PROTOCOL.md §5.3 steps 1-5 to a received descriptor. It does not
// take fd.
func inspect(fd int, size uint64, frozen bool) (fileInfo, error) {
	const op = "recv"
	info, err := statFile(fd, op)
	if err != nil {
		return info, err
	}
	if !info.regular {
		return info, newError(CodeRegionNotMemfd, op, "the peer sent a descriptor that is not a memory file (a pipe, socket or device); the connection was closed")
	}
	seals, sealable, err := getSeals(fd, op)
	if err != nil {
		return info, err
	}
	if !sealable {
		return info, newError(CodeRegionNotMemfd, op, "the peer sent a file that cannot be sealed (not a memfd); regions must come from memfd_create; the connection was closed")
	}
	if !info.onShmem {
		return info, newError(CodeRegionNotShmem, op, "the peer sent a memory file that is not on shmem (a hugetlbfs memfd, whose owner could take its pages away and crash this process with SIGBUS); the connection was closed")
	}
	if !seals.shrink || !seals.grow {
		return info, newError(CodeRegionUnsealed, op, "the peer sent a memfd without F_SEAL_SHRINK and F_SEAL_GROW; it could shrink it and crash this process; the connection was closed")
	}
	if frozen && !seals.write {
		return info, newError(CodeRegionUnsealed, op, "the peer marked a region frozen but did not add F_SEAL_WRITE; the connection was closed")
	}
	if !frozen && (seals.write || seals.futureWrite) {
		return info, violation("the peer sent a write-sealed region without the frozen flag")
	}
	if info.size < 0 || uint64(info.size) != size {
		return info, errorf(CodeRegionSizeMismatch, op, "the descriptor says %d bytes but the file has %d bytes; the connection was closed", size, info.size)
	}
	if size > math.MaxInt {
		return info, newError(CodeLimitExceeded, op, "the region is larger than this process's address space; the connection was closed")
	}
	return info, nil
}

// bindNew is §5.2 rule 1 and §5.3, with this side's trust policy and limits checked
// before anything is mapped. It takes fd.
func (s *session) bindNew(d descriptor, fd int, adopted *[]*Region) (*Region, error) {
	if _, bound := s.peers[d.id]; bound {
		closeFd(fd)
		return nil, violation("region id %d is already bound; RELEASE it before reusing it", d.id)
	}
	info, err := inspect(fd, d.size, d.isFrozen())
	if err == nil {
		err = s.checkPolicy(d, info.id)
	}
	if err != nil {
		closeFd(fd)
		return nil, err
	}
	if r := lookupRegion(s.realm, info.id, d.isFrozen()); r != nil {
		file := r.fileRef()
		if file == nil {
			file = newMemFile(fd)
		} else {
			closeFd(fd)
		}
		s.bindPeer(d.id, r, file)
		return r, nil
	}
	if err := reserve(d.size); err != nil {
		closeFd(fd)
		return nil, err
	}
	file := newMemFile(fd)
	r, err := adoptRegion(file.ref(), int(d.size), info.id, d.isFrozen(), s.realm, d.size)
	if err != nil {
		unreserve(d.size)
		file.unref()
		file.unref()
		return nil, err
	}
	*adopted = append(*adopted, r)
	s.bindPeer(d.id, r, file)
	return r, nil
}

// checkPolicy is this side's own policy (docs/PROTOCOL.md §7.1): trust, then limits.
func (s *session) checkPolicy(d descriptor, id fileID) error {
	if !d.isFrozen() && !s.acceptWritable {
		return newError(CodeRegionWritable, "recv", "the peer sent a region it can still write, and this endpoint accepts only frozen regions from peers it did not start (opt in with AcceptWritable for trusted peers); the connection was closed")
	}
	if d.size > s.limits.MaxRegionSize {
		return limitExceeded(fmt.Sprintf("the peer sent a %d-byte region; this side accepts at most %d (MaxRegionSize)", d.size, s.limits.MaxRegionSize))
	}
	if len(s.peers) >= s.limits.MaxBoundRegions {
		return limitExceeded(fmt.Sprintf("the peer has %d regions bound, the most this side accepts (MaxBoundRegions); it must RELEASE regions before sending new ones", len(s.peers)))
	}
	if held := s.heldBytesWith(id, d.size); held > s.limits.MaxMappedBytes {
		return limitExceeded(fmt.Sprintf("the peer's regions would hold %d bytes mapped; this side accepts at most %d (MaxMappedBytes)", held, s.limits.MaxMappedBytes))
	}
	return nil
}

// resolveKnown resolves a descriptor without NEW to the region its id is bound to.
func (s *session) resolveKnown(d descriptor, adopted *[]*Region) (*Region, error) {
	b, ok := s.peers[d.id]
	if !ok {
		return nil, violation("unknown region id %d (never sent with its descriptor)", d.id)
	}
	if uint64(b.region.size) != d.size {
		return nil, violation("region %d was bound with %d bytes but the descriptor says %d", d.id, b.region.size, d.size)
	}
	if b.region.Frozen() != d.isFrozen() {
		return nil, violation("region %d's frozen flag changed", d.id)
	}
	if !b.region.Closed() {
		return b.region, nil
	}
	// This side closed the region while the peer kept it bound: map the file again.
	info, err := inspect(b.file.fd, d.size, d.isFrozen())
	if err != nil {
		return nil, err
	}
	r := lookupRegion(s.realm, info.id, d.isFrozen())
	if r == nil {
		if err := reserve(d.size); err != nil {
			return nil, err
		}
		if r, err = adoptRegion(b.file.ref(), int(d.size), info.id, d.isFrozen(), s.realm, d.size); err != nil {
			unreserve(d.size)
			b.file.unref()
			return nil, err
		}
		*adopted = append(*adopted, r)
	}
	s.peers[d.id] = peerBinding{region: r, file: b.file}
	return r, nil
}

func (s *session) heldBytesWith(id fileID, size uint64) uint64 {
	if _, ok := s.held[id]; ok {
		return s.heldBytes
	}
	if s.heldBytes+size < s.heldBytes {
		return math.MaxUint64
	}
	return s.heldBytes + size
}

func (s *session) bindPeer(id uint32, r *Region, file *memFile) {
	s.peers[id] = peerBinding{region: r, file: file}
	h, ok := s.held[r.id]
	if !ok {
		h = &heldEntry{size: uint64(r.size)}
		s.held[r.id] = h
		s.heldBytes += h.size
	}
	h.bindings++
}

func (s *session) unbindPeer(id uint32) {
	b := s.peers[id]
	delete(s.peers, id)
	b.file.unref()
	if h, ok := s.held[b.region.id]; ok {
		if h.bindings--; h.bindings == 0 {
			delete(s.held, b.region.id)
			s.heldBytes -= h.size
		}
	}
}
