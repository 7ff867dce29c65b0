package shmlink

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FileID identifies the file behind a descriptor: (st_dev, st_ino). Two
// descriptors with the same FileID are the same memory file (PROTOCOL.md
// §5.2 rule 5).
type FileID struct {
	Dev uint64
	Ino uint64
}

// Region is a sealed memory file mapped into this process (PROTOCOL.md §5).
//
// A Region is reference counted because several owners may hold the same
// file at once: the code that created or received it, every Message that
// carries it, and each connection's binding tables. NewRegion and every
// received Message hand out one reference each; Close drops one. The
// mapping and the descriptor go away with the last reference, so a region
// stays valid in this process as long as anybody holds it, whether or not
// the connection lasts (§6).
//
// Regions are safe to share between goroutines; the bytes themselves are
// not synchronised (the peers agree above the protocol on who writes when).
type Region struct {
	fd   int
	size int
	id   FileID
	addr unsafe.Pointer
	// frozen is atomic because a region frozen by one goroutine may be
	// looked up by another's endpoint (the registry is process-wide).
	frozen atomic.Bool
	refs   int // guarded by registry.mu
}

// registry maps every live Region by FileID so that a file coming back from
// a peer resolves to the Region object this process already has (§5.2.5).
// It is process-wide because a region may arrive on one connection and
// return on another.
var registry = struct {
	mu sync.Mutex
	m  map[FileID]*Region
}{m: make(map[FileID]*Region)}

// NewRegion creates a writable region of size bytes: a memfd created with
// MFD_CLOEXEC|MFD_ALLOW_SEALING, sized once, sealed against shrinking and
// growing (so a mapping can never SIGBUS), and mapped shared.
func NewRegion(size int) (*Region, error) {
	if size <= 0 {
		return nil, newErr(CodeInvalidArgument, "region size must be positive", nil)
	}
	fd, err := unix.MemfdCreate("shmlink", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, newErr(CodeIO, "memfd_create", err)
	}
	r, err := newOwnRegion(fd, size)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return r, nil
}

func newOwnRegion(fd, size int) (*Region, error) {
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, newErr(CodeIO, "ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		return nil, newErr(CodeIO, "F_ADD_SEALS", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, newErr(CodeIO, "fstat", err)
	}
	// MAP_POPULATE: the creator is about to fill the region; allocating
	// and mapping every page in one call is much cheaper than one write
	// fault per 4 KiB page.
	addr, err := unix.MmapPtr(fd, 0, nil, uintptr(size),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, newErr(CodeIO, "mmap", err)
	}
	r := &Region{fd: fd, size: size, id: FileID{uint64(st.Dev), st.Ino}, addr: addr, refs: 1}
	registry.mu.Lock()
	registry.m[r.id] = r
	registry.mu.Unlock()
	return r, nil
}

// mapReceived maps a descriptor that passed the checks of §5.3 steps 1-5.
// Frozen regions are mapped MAP_PRIVATE (step 6): the file cannot be mapped
// shared-writable once write-sealed, and a private copy-on-write mapping
// means a stray write neither faults (which would kill a Go program) nor
// reaches the file. On success the Region owns fd.
func mapReceived(fd, size int, id FileID, frozen bool) (*Region, error) {
	flags := unix.MAP_SHARED
	if frozen {
		flags = unix.MAP_PRIVATE
	}
	addr, err := unix.MmapPtr(fd, 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, newErr(CodeIO, "mmap", err)
	}
	r := &Region{fd: fd, size: size, id: id, addr: addr, refs: 1}
	r.frozen.Store(frozen)
	registry.mu.Lock()
	registry.m[id] = r
	registry.mu.Unlock()
	return r, nil
}

// lookupRegion returns the live Region for id with one more reference, or
// nil. A Region whose count reached zero is already out of the map.
func lookupRegion(id FileID) *Region {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	r := registry.m[id]
	if r != nil {
		r.refs++
	}
	return r
}

// Bytes returns the mapped contents. The slice stays valid until the last
// reference is dropped. Writing into a frozen region's slice changes only a
// private copy (see Freeze); use WriteAt to be told instead.
func (r *Region) Bytes() []byte {
	return unsafe.Slice((*byte)(r.addr), r.size)
}

// Size is the region's size in bytes.
func (r *Region) Size() int { return r.size }

// Frozen reports whether the region carries F_SEAL_WRITE.
func (r *Region) Frozen() bool { return r.frozen.Load() }

// FileID returns (st_dev, st_ino) of the underlying file.
func (r *Region) FileID() FileID { return r.id }

// Fd returns the region's descriptor (owned by the Region; do not close).
func (r *Region) Fd() int { return r.fd }

// ReadAt copies from the region at off.
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(r.size) {
		return 0, newErr(CodeInvalidArgument, "offset out of range", nil)
	}
	return copy(p, r.Bytes()[off:]), nil
}

// WriteAt copies into the region at off; frozen regions refuse.
func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if r.frozen.Load() {
		return 0, newErr(CodeInvalidArgument, "region is frozen", nil)
	}
	if off < 0 || off+int64(len(p)) > int64(r.size) {
		return 0, newErr(CodeInvalidArgument, "write out of range", nil)
	}
	return copy(r.Bytes()[off:], p), nil
}

// Freeze makes the region immutable: F_SEAL_WRITE|F_SEAL_SEAL. It must be
// called before the region is first sent: the kernel refuses F_SEAL_WRITE
// while any process maps the file shared and writable (§5.1).
//
// Our own shared mapping is replaced in place (MAP_FIXED) by a private one
// first, since it would block the seal too; the address does not change,
// so slices from Bytes stay valid, they just no longer write through.
func (r *Region) Freeze() error {
	if r.frozen.Load() {
		return nil
	}
	if _, err := unix.MmapPtr(r.fd, 0, r.addr, uintptr(r.size),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED); err != nil {
		return newErr(CodeIO, "mmap private for freeze", err)
	}
	if _, err := unix.FcntlInt(uintptr(r.fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		// Put the shared mapping back so the region stays usable. If even
		// that fails the address range must not stay pointing at a private
		// copy the caller thinks is shared, so report both.
		if _, err2 := unix.MmapPtr(r.fd, 0, r.addr, uintptr(r.size),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED); err2 != nil {
			return newErr(CodeIO, "F_ADD_SEALS failed and the shared mapping could not be restored", err2)
		}
		return newErr(CodeIO, "F_ADD_SEALS write (is the region mapped writable elsewhere?)", err)
	}
	r.frozen.Store(true)
	return nil
}

// Retain adds a reference; it returns r for convenience.
func (r *Region) Retain() *Region {
	registry.mu.Lock()
	r.refs++
	registry.mu.Unlock()
	return r
}

// Close drops one reference. The last one unmaps the region and closes its
// descriptor. Closing more often than references were handed out is a bug
// and panics rather than unmapping memory somebody still uses.
func (r *Region) Close() error {
	registry.mu.Lock()
	r.refs--
	if r.refs < 0 {
		registry.mu.Unlock()
		panic("shmlink: Region closed more often than retained")
	}
	if r.refs > 0 {
		registry.mu.Unlock()
		return nil
	}
	if registry.m[r.id] == r {
		delete(registry.m, r.id)
	}
	registry.mu.Unlock()
	var first error
	if err := unix.MunmapPtr(r.addr, uintptr(r.size)); err != nil {
		first = newErr(CodeIO, "munmap", err)
	}
	if err := unix.Close(r.fd); err != nil && first == nil {
		first = newErr(CodeIO, "close", err)
	}
	r.addr = nil
	r.fd = -1
	return first
}
