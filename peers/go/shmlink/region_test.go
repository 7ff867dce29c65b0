package shmlink

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNewRegionIsASealedCloseOnExecMemfd(t *testing.T) {
	checkNoFdLeak(t)
	r := must(NewRegion(10000))
	defer r.Close()
	if r.Size() != 10000 || r.Frozen() || r.Closed() || r.Transferred() {
		t.Fatalf("state: size %d frozen %v closed %v transferred %v", r.Size(), r.Frozen(), r.Closed(), r.Transferred())
	}
	fd := r.res.file.fd
	seals := must(unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0))
	if seals&sealed != sealed || seals&unix.F_SEAL_WRITE != 0 {
		t.Fatalf("seals %#x", seals)
	}
	if flags := must(unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)); flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("not close-on-exec")
	}
	// Where the kernel knows MFD_NOEXEC_SEAL (Linux 6.3), the file can never be made
	// executable: it carries F_SEAL_EXEC and no exec bits.
	if probe, err := unix.MemfdCreate("probe", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|mfdNoexecSeal); err == nil {
		unix.Close(probe)
		var st unix.Stat_t
		ok(t, unix.Fstat(fd, &st))
		if seals&0x20 == 0 || st.Mode&0o111 != 0 {
			t.Fatalf("created without MFD_NOEXEC_SEAL: seals %#x, mode %o", seals, st.Mode)
		}
	}
	var fs unix.Statfs_t
	ok(t, unix.Fstatfs(fd, &fs))
	if fs.Type != unix.TMPFS_MAGIC {
		t.Fatalf("not on shmem: %#x", fs.Type)
	}
	for _, size := range []int{0, -1} {
		_, err := NewRegion(size)
		wantCode(t, err, CodeInvalidArg)
	}
}

func TestRegionCopies(t *testing.T) {
	r := must(NewRegion(8192))
	defer r.Close()
	ok(t, r.Write(100, []byte("hello")))
	if got := must(r.Read(100, 5)); string(got) != "hello" {
		t.Fatalf("Read = %q", got)
	}
	b := must(r.Bytes())
	if len(b) != 8192 || string(b[100:105]) != "hello" {
		t.Fatal("Bytes does not show the write")
	}
	b[0] = 7
	if got := must(r.Read(0, 1)); got[0] != 7 {
		t.Fatal("Read does not show a write through Bytes")
	}
	dst := make([]byte, 10)
	if n := must(r.ReadInto(8190, dst)); n != 2 {
		t.Fatalf("ReadInto near the end copied %d", n)
	}
	if n := must(r.ReadInto(8192, dst)); n != 0 {
		t.Fatalf("ReadInto at the end copied %d", n)
	}
	// A copy from the region into itself is a memmove.
	ok(t, r.Write(101, b[100:105]))
	if got := must(r.Read(100, 6)); string(got) != "hhello" {
		t.Fatalf("overlapping write: %q", got)
	}
	for _, bad := range []struct{ off, n int }{{-1, 1}, {8192, 1}, {8000, 193}, {0, -1}} {
		_, err := r.Read(bad.off, bad.n)
		wantCode(t, err, CodeInvalidArg)
	}
	wantCode(t, r.Write(8190, []byte("abc")), CodeInvalidArg)
	_, err := r.ReadInto(8193, dst)
	wantCode(t, err, CodeInvalidArg)
}

func TestFreezeKeepsTheAddressAndProtectsTheFile(t *testing.T) {
	checkNoFdLeak(t)
	r := must(NewRegion(4096))
	defer r.Close()
	ok(t, r.Write(0, []byte("frozen")))
	b := must(r.Bytes())
	ok(t, r.Freeze())
	ok(t, r.Freeze()) // again: nothing to do
	if !r.Frozen() {
		t.Fatal("not frozen")
	}
	seals := must(unix.FcntlInt(uintptr(r.res.file.fd), unix.F_GET_SEALS, 0))
	if seals&(unix.F_SEAL_WRITE|unix.F_SEAL_SEAL) != unix.F_SEAL_WRITE|unix.F_SEAL_SEAL {
		t.Fatalf("seals %#x", seals)
	}
	if string(b[:6]) != "frozen" {
		t.Fatal("the old slice does not read the contents")
	}
	// A stray write through the slice changes a private copy, not the file.
	b[0] = 'X'
	if got := must(r.Read(0, 6)); string(got) != "frozen" {
		t.Fatalf("Read of a frozen region = %q, want the file's contents", got)
	}
	wantCode(t, r.Write(0, []byte("x")), CodeRegionFrozen)
}

func TestFreezeWhileMappedSharedElsewhereIsBusyAndChangesNothing(t *testing.T) {
	checkNoFdLeak(t)
	r := must(NewRegion(4096))
	defer r.Close()
	// Another shared writable mapping of the file, as a peer's would be.
	other := must(unix.Mmap(r.res.file.fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED))
	defer unix.Munmap(other)
	wantCode(t, r.Freeze(), CodeRegionBusy)
	if r.Frozen() {
		t.Fatal("frozen anyway")
	}
	// Still shared and writable both ways.
	ok(t, r.Write(0, []byte("shared")))
	if string(other[:6]) != "shared" {
		t.Fatal("the region is no longer shared")
	}
	other[0] = 'S'
	if got := must(r.Read(0, 1)); got[0] != 'S' {
		t.Fatal("the region no longer sees the other mapping")
	}
}

func TestCloseLeavesLentSlicesHarmless(t *testing.T) {
	checkNoFdLeak(t)
	r := must(NewRegion(4096))
	ok(t, r.Write(0, []byte("secret")))
	b := must(r.Bytes())
	ok(t, r.Close())
	ok(t, r.Close()) // idempotent
	if !r.Closed() || r.Size() != 0 {
		t.Fatal("state after close")
	}
	// The address range is private zero pages now: reads see zeros, writes stay here.
	if !bytes.Equal(b[:6], make([]byte, 6)) {
		t.Fatalf("a stale slice reads %q", b[:6])
	}
	b[0] = 1
	_, err := r.Bytes()
	wantCode(t, err, CodeRegionClosed)
	_, err = r.Read(0, 1)
	wantCode(t, err, CodeRegionClosed)
	wantCode(t, r.Write(0, []byte{1}), CodeRegionClosed)
	wantCode(t, r.Freeze(), CodeRegionClosed)
	wantCode(t, r.Reclaim(), CodeRegionClosed)
}

func TestCloseUnmapsARegionNeverLent(t *testing.T) {
	r := must(NewRegion(4096))
	addr := r.res.addr
	ok(t, r.Close())
	if r.res.addr != nil || addr == nil {
		t.Fatal("the mapping of a region nobody holds a slice of should be gone")
	}
}
