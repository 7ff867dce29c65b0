package shmlink

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
	"weak"
)

// memFile is a region's memory file descriptor, shared by the Region and by the
// bindings of connections that keep the file while the peer has it bound (a region this
// process closed can be mapped again if the peer refers to it once more). The last
// reference closes the descriptor.
type memFile struct {
	fd   int
	refs atomic.Int32
}

func newMemFile(fd int) *memFile {
	f := &memFile{fd: fd}
	f.refs.Store(1)
	return f
}

func (f *memFile) ref() *memFile {
	f.refs.Add(1)
	return f
}

func (f *memFile) unref() {
	if f.refs.Add(-1) == 0 {
		closeFd(f.fd)
	}
}

// regionRes is what a Region releases: its file reference, its share of the process
// limits and its mapping. It is separate from the Region so that the cleanup that runs
// when a Region is garbage collected can release it.
type regionRes struct {
	mu      sync.Mutex
	file    *memFile       // nil once closed
	addr    unsafe.Pointer // nil once unmapped
	size    int
	lent    bool   // Bytes handed the mapping out: it is never unmapped before the cleanup
	charge  uint64 // bytes counted against the process limits (a region a peer sent)
	charged bool
}

// close gives back the file and the charge. A mapping that was never lent is unmapped
// now; a lent one is replaced by private zero pages at the same address, so slices into
// it stay valid, and unmapped by the cleanup once the Region is garbage collected.
func (res *regionRes) close() {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.file != nil {
		res.file.unref()
		res.file = nil
	}
	if res.charged {
		unreserve(res.charge)
		res.charged = false
	}
	if res.addr == nil {
		return
	}
	if !res.lent {
		unmap(res.addr, res.size)
		res.addr = nil
		return
	}
	// Should the kernel refuse (no memory for page tables), the shared mapping stays
	// until the cleanup: still valid memory.
	_ = discardInPlace(res.addr, res.size)
}

// cleanup runs when the Region is unreachable: everything goes.
func (res *regionRes) cleanup() {
	res.close()
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.addr != nil {
		unmap(res.addr, res.size)
		res.addr = nil
	}
}

// regKey identifies a region in the registry: its realm and its file.
type regKey struct {
	realm uint64
	id    fileID
}

// registry maps each realm's memory files to their Region, so that a file that arrives
// again (back from a peer, or over another connection) is the Region this realm has
// (docs/PROTOCOL.md §5.2 rule 6).
var registry = struct {
	mu sync.Mutex
	m  map[regKey]weak.Pointer[Region]
}{m: make(map[regKey]weak.Pointer[Region])}

var nextSerial atomic.Uint64
var nextRealm atomic.Uint64

// uniqueRealm is a realm no other call returned. Realm 0 is the process; the second
// end of a Pair gets a realm of its own, as another process would have, so that a region
// sent from one end to the other is a separate Region there with its own custody.
func uniqueRealm() uint64 { return nextRealm.Add(1) }

type regionCleanup struct {
	res *regionRes
	key regKey
}

// Region is a block of shared memory: an anonymous memory file (memfd) sealed against
// shrinking and growing, mapped into this process. Nothing appears in /dev/shm, so a
// crash leaves nothing behind.
//
// The process holds one Region per memory file: a region that comes back from a peer,
// or arrives again over another connection, is the same *Region.
//
// A Region is safe for concurrent use. Its bytes are not synchronised: the two sides
// agree, above the protocol, on who writes when (docs/MEMORY-MODEL.md).
//
// Close a Region when done with it. One that becomes unreachable without Close is
// released by a cleanup when the garbage collector finds it.
type Region struct {
	serial uint64
	size   int
	id     fileID
	realm  uint64
	res    *regionRes

	frozen atomic.Bool
	closed atomic.Bool
	away   atomic.Bool

	// contents is held shared by copies and exclusively by Freeze and Close, so that no
	// copy is half done when the contents are sealed or discarded.
	contents sync.RWMutex

	mu      sync.Mutex
	custody custody
	over    *fate // away: the connection it was transferred over
	via     *fate // here: the connection it last arrived over with a transfer
	binders []weak.Pointer[Endpoint]
}

// custody is where a region is, as far as this process is concerned.
type custody int

const (
	// here: this process may use it.
	here custody = iota
	// away: transferred to a peer; it comes back with any frame that brings it, or by
	// Reclaim once the peer has ended that connection.
	away
	// givenUp: this side ended the connection the region had been transferred to it
	// over, so it is its sender's again, for good (docs/PROTOCOL.md §6).
	givenUp
)

// fate is how a connection ended, as the regions transferred over it need to know
// (docs/PROTOCOL.md §6, MEMORY-MODEL.md §5.1): the side that ends a connection gives up
// the regions transferred to it over that connection, and the other side may take back
// the regions it transferred.
type fate struct{ state atomic.Uint32 }

const (
	fateOpen uint32 = iota
	fateEndedByPeer
	fateEndedHere
)

// end records how the connection ended; the first report stands.
func (f *fate) end(byPeer bool) {
	v := fateEndedHere
	if byPeer {
		v = fateEndedByPeer
	}
	f.state.CompareAndSwap(fateOpen, v)
}

func newRegion(file *memFile, addr unsafe.Pointer, size int, id fileID, realm uint64, frozen bool, charge uint64) *Region {
	res := &regionRes{file: file, addr: addr, size: size, charge: charge, charged: charge > 0}
	r := &Region{serial: nextSerial.Add(1), size: size, id: id, realm: realm, res: res}
	r.frozen.Store(frozen)
	key := regKey{realm, id}
	runtime.AddCleanup(r, func(c regionCleanup) {
		c.res.cleanup()
		registry.mu.Lock()
		if p, ok := registry.m[c.key]; ok && p.Value() == nil {
			delete(registry.m, c.key)
		}
		registry.mu.Unlock()
	}, regionCleanup{res, key})
	registry.mu.Lock()
	registry.m[key] = weak.Make(r)
	registry.mu.Unlock()
	return r
}

// NewRegion creates a zero-filled region of size bytes, shared-mapped and writable.
//
// It is a memfd created close-on-exec and sealable (with MFD_NOEXEC_SEAL where the
// kernel knows it), sized once and sealed with F_SEAL_SHRINK|F_SEAL_GROW.
func NewRegion(size int) (*Region, error) {
	const op = "NewRegion"
	if size <= 0 {
		return nil, invalidArg(op, "size must be at least 1 byte, not %d", size)
	}
	fd, err := createMemoryFile(size, op)
	if err != nil {
		return nil, err
	}
	info, err := statFile(fd, op)
	if err != nil {
		closeFd(fd)
		return nil, err
	}
	addr, err := mapRegion(fd, size, false)
	if err != nil {
		closeFd(fd)
		return nil, during(err, op)
	}
	return newRegion(newMemFile(fd), addr, size, info.id, 0, false, 0), nil
}

// lookupRegion returns the live, open Region of realm for file id with the given frozen
// state, or nil.
func lookupRegion(realm uint64, id fileID, frozen bool) *Region {
	registry.mu.Lock()
	p, ok := registry.m[regKey{realm, id}]
	registry.mu.Unlock()
	if !ok {
		return nil
	}
	r := p.Value()
	if r == nil || r.closed.Load() || r.frozen.Load() != frozen {
		return nil
	}
	return r
}

// adoptRegion maps a file that passed inspect; it takes over file (one reference) and
// the charge.
func adoptRegion(file *memFile, size int, id fileID, frozen bool, realm uint64, charge uint64) (*Region, error) {
	addr, err := mapRegion(file.fd, size, frozen)
	if err != nil {
		return nil, during(err, "recv")
	}
	return newRegion(file, addr, size, id, realm, frozen, charge), nil
}

// Size is the region's size in bytes, 0 once closed.
func (r *Region) Size() int {
	if r.closed.Load() {
		return 0
	}
	return r.size
}

// Frozen reports whether Freeze made the contents immutable for every process.
func (r *Region) Frozen() bool { return r.frozen.Load() }

// Closed reports whether Close was called.
func (r *Region) Closed() bool { return r.closed.Load() }

// Transferred reports whether the region was sent with Transfer and has not come back
// (or been reclaimed), or was given up: it came to this side with a transfer over a
// connection this side then ended (docs/PROTOCOL.md §6).
func (r *Region) Transferred() bool { return r.away.Load() }

// checkUsable fails unless this process may touch the region now.
func (r *Region) checkUsable(op string) error {
	if r.closed.Load() {
		return regionClosedError(op)
	}
	if r.away.Load() {
		return regionTransferredError(op)
	}
	return nil
}

func (r *Region) checkRange(op string, offset, length int) error {
	if offset < 0 || length < 0 || offset > r.size || length > r.size-offset {
		return invalidArg(op, "bytes %d..%d+%d lie outside the region's %d bytes", offset, offset, length, r.size)
	}
	return nil
}

// Bytes returns the region's memory as a slice, without copying.
//
// Rules for the slice:
//   - While a peer can write the region (it is shared and not frozen), the slice is
//     memory another process changes at any time: copy with Read before parsing
//     untrusted data.
//   - Writes to a frozen region's slice change a private copy that nobody else sees.
//   - After the region is sent with Transfer the slice still points at the memory, but
//     the peer owns it until it comes back: do not use the slice meanwhile (Bytes
//     itself fails with CodeRegionTransferred).
//   - Close does not unmap the slice: its contents become private zero pages at the same
//     address, so a stale slice reads zeros and writes go nowhere. The address range is
//     unmapped when the Region is garbage collected, so keep the *Region reachable while
//     you use a slice (a deferred Close does; otherwise runtime.KeepAlive), as with
//     os.File.Fd.
func (r *Region) Bytes() ([]byte, error) {
	const op = "Region.Bytes"
	if err := r.checkUsable(op); err != nil {
		return nil, err
	}
	r.res.mu.Lock()
	defer r.res.mu.Unlock()
	if r.res.file == nil || r.res.addr == nil {
		return nil, regionClosedError(op)
	}
	r.res.lent = true
	return unsafe.Slice((*byte)(r.res.addr), r.size), nil
}

// Read copies length bytes starting at offset out of the region into a new slice. For a
// frozen region this is what the memory file holds, whatever was written to its Bytes.
func (r *Region) Read(offset, length int) ([]byte, error) {
	if err := r.checkRange("Region.Read", offset, length); err != nil {
		return nil, err
	}
	dst := make([]byte, length)
	if err := r.copyOut("Region.Read", offset, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadInto copies bytes starting at offset into dst, as many as fit, and returns how
// many.
func (r *Region) ReadInto(offset int, dst []byte) (int, error) {
	if err := r.checkRange("Region.ReadInto", offset, 0); err != nil {
		return 0, err
	}
	dst = dst[:min(len(dst), r.size-offset)]
	if err := r.copyOut("Region.ReadInto", offset, dst); err != nil {
		return 0, err
	}
	return len(dst), nil
}

func (r *Region) copyOut(op string, offset int, dst []byte) error {
	r.contents.RLock()
	defer r.contents.RUnlock()
	if err := r.checkUsable(op); err != nil {
		return err
	}
	if len(dst) == 0 {
		return nil
	}
	r.res.mu.Lock()
	file, addr := r.res.file, r.res.addr
	r.res.mu.Unlock()
	if file == nil || addr == nil {
		return regionClosedError(op)
	}
	if r.frozen.Load() {
		return preadFull(file.fd, int64(offset), dst, op)
	}
	// The mapping stays while contents is held: Close waits for it.
	copy(dst, unsafe.Slice((*byte)(addr), r.size)[offset:])
	return nil
}

// Write copies data into the region starting at offset. data may be a slice of any
// region (the copy is a memmove).
func (r *Region) Write(offset int, data []byte) error {
	const op = "Region.Write"
	if err := r.checkRange(op, offset, len(data)); err != nil {
		return err
	}
	r.contents.RLock()
	defer r.contents.RUnlock()
	if err := r.checkUsable(op); err != nil {
		return err
	}
	// Checked under the lock Freeze takes exclusively, so no write lands after the seal.
	if r.frozen.Load() {
		return newError(CodeRegionFrozen, op, "the region is frozen and cannot be written; copy the data into a new region")
	}
	r.res.mu.Lock()
	addr := r.res.addr
	r.res.mu.Unlock()
	if addr == nil {
		return regionClosedError(op)
	}
	if len(data) > 0 {
		copy(unsafe.Slice((*byte)(addr), r.size)[offset:], data)
	}
	return nil
}

// Freeze makes the contents immutable for every process (F_SEAL_WRITE|F_SEAL_SEAL).
//
// This process's mapping is first replaced, at the same address, by a copy-on-write one,
// so slices from Bytes stay valid and readable; a stray write through them changes a
// private copy. Freeze before sharing: it fails with CodeRegionBusy while a peer maps the
// region writable, and leaves the region as it was. Freezing a frozen region does
// nothing. Do not freeze while another goroutine writes through Bytes.
func (r *Region) Freeze() error {
	const op = "Region.Freeze"
	if err := r.checkUsable(op); err != nil {
		return err
	}
	r.contents.Lock()
	defer r.contents.Unlock()
	if err := r.checkUsable(op); err != nil {
		return err
	}
	if r.frozen.Load() {
		return nil
	}
	r.res.mu.Lock()
	defer r.res.mu.Unlock()
	if r.res.file == nil || r.res.addr == nil {
		return regionClosedError(op)
	}
	fd := r.res.file.fd
	seals, _, err := getSeals(fd, op)
	if err != nil {
		return err
	}
	if seals.write || seals.futureWrite {
		return newError(CodeRegionBusy, op, "a peer added F_SEAL_FUTURE_WRITE to the region while mapping it writable; it cannot be frozen")
	}
	if err := remapInPlace(r.res.addr, r.size, fd, true); err != nil {
		return err
	}
	if err := sealContents(fd, op); err != nil {
		if remapInPlace(r.res.addr, r.size, fd, false) != nil {
			// The shared mapping cannot come back: a private one would let local writes
			// silently miss the peer. Close the region instead (after the locks).
			go r.Close()
			return newError(CodeRegionBusy, op, "a peer sealed the region while it was being frozen; the region was closed rather than left diverging from the peer's copy")
		}
		return err
	}
	r.frozen.Store(true)
	return nil
}

// Reclaim takes back a region transferred over a connection the peer has since ended
// (it closed, died or broke the protocol), so a pipeline can reuse its buffers. By
// docs/PROTOCOL.md §6 the side that ends a connection gives up the regions transferred
// to it over that connection; what that assumes (the peer did not pass the region on) is
// docs/MEMORY-MODEL.md §5.1. It fails with CodeRegionTransferred while the connection is
// open, when this side ended it (the peer keeps what it was given), and for a region
// this side gave up; a region that is here is left as it is.
func (r *Region) Reclaim() error {
	const op = "Region.Reclaim"
	if r.closed.Load() {
		return regionClosedError(op)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.custody == here:
		return nil
	case r.custody == away && r.over.state.Load() == fateEndedByPeer:
		r.custody, r.over, r.via = here, nil, nil
		r.away.Store(false)
		return nil
	case r.custody == away && r.over.state.Load() == fateOpen:
		return newError(CodeRegionTransferred, op, "the connection the region was transferred over is still open; wait until the peer sends it back")
	case r.custody == away:
		return newError(CodeRegionTransferred, op, "this side ended the connection the region was transferred over, so the peer keeps it (docs/MEMORY-MODEL.md §5.1)")
	}
	return newError(CodeRegionTransferred, op, "the region was transferred to this side over a connection this side ended, so it went back to its sender")
}

// sendAway hands the region to a peer over the connection whose ending over reports.
func (r *Region) sendAway(over *fate) {
	r.mu.Lock()
	r.custody, r.over, r.via = away, over, nil
	r.away.Store(true)
	r.mu.Unlock()
}

// arrive: a frame brought the region to this process over the connection via; with
// transferred, the peer gave it up, and this side gives it up again if it ends that
// connection before passing the region on.
func (r *Region) arrive(via *fate, transferred bool) {
	r.mu.Lock()
	r.custody, r.over, r.via = here, nil, nil
	if transferred {
		r.via = via
	}
	r.away.Store(false)
	r.mu.Unlock()
}

// giveUpIfFrom: this side ended the connection via; a region that came over it with a
// transfer and is still here goes back to its sender (access refused from now on).
func (r *Region) giveUpIfFrom(via *fate) {
	r.mu.Lock()
	if r.custody == here && r.via == via {
		r.custody, r.via = givenUp, nil
		r.away.Store(true)
	}
	r.mu.Unlock()
}

// fileRef returns the memory file with one more reference, or nil once closed.
func (r *Region) fileRef() *memFile {
	r.res.mu.Lock()
	defer r.res.mu.Unlock()
	if r.res.file == nil {
		return nil
	}
	return r.res.file.ref()
}

// addBinder remembers that ep bound the region in its namespace; false when the region
// is already closed (ep must release it at once).
func (r *Region) addBinder(ep *Endpoint) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return false
	}
	live := r.binders[:0]
	for _, b := range r.binders {
		if b.Value() != nil {
			live = append(live, b)
		}
	}
	r.binders = append(live, weak.Make(ep))
	return true
}

// Close lets go of the region now: peers it was sent to are told they may unmap it
// (a RELEASE on every open connection that bound it), its memory file is closed and its
// mapping released (see Bytes for what happens to slices). Idempotent; always nil.
func (r *Region) Close() error {
	r.contents.Lock()
	r.mu.Lock()
	if r.closed.Swap(true) {
		r.mu.Unlock()
		r.contents.Unlock()
		return nil
	}
	binders := r.binders
	r.binders = nil
	r.mu.Unlock()
	r.res.close()
	r.contents.Unlock()

	registry.mu.Lock()
	key := regKey{r.realm, r.id}
	if p, ok := registry.m[key]; ok && p.Value() == r {
		delete(registry.m, key)
	}
	registry.mu.Unlock()
	for _, b := range binders {
		if ep := b.Value(); ep != nil {
			ep.regionClosed(r)
		}
	}
	return nil
}

// closeUnseen closes a region a refused frame mapped, which the application never saw.
func (r *Region) closeUnseen() { _ = r.Close() }
