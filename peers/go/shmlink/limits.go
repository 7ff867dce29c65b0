package shmlink

import (
	"fmt"
	"sync"
	"sync/atomic"
)

const gib = 1 << 30

// Limits bound what a peer may send and make this side hold (docs/SECURITY.md). The
// first two are announced to the peer in HELLO; the others are local policy, which the
// peer learns only by being disconnected with [CodeLimitExceeded] on this side.
//
// A zero field takes its default, so Limits{} is the defaults (and MaxPayload cannot be
// set to 0).
type Limits struct {
	// MaxRegions is the most regions in one message: 1 to 253, default 32. Announced.
	MaxRegions int
	// MaxPayload is the largest inline payload in bytes: at most 65536, the default.
	// Announced.
	MaxPayload int
	// MaxRegionSize is the largest region the peer may send; default 16 GiB.
	MaxRegionSize uint64
	// MaxBoundRegions is the most of the peer's regions bound at once; default 1024.
	MaxBoundRegions int
	// MaxMappedBytes is the most bytes of the peer's regions mapped at once; default
	// 16 GiB.
	MaxMappedBytes uint64
}

// DefaultLimits returns the defaults: 32 regions and 64 KiB per message, regions up to
// 16 GiB, 1024 regions and 16 GiB mapped per connection.
func DefaultLimits() Limits {
	return Limits{
		MaxRegions:      32,
		MaxPayload:      MaxPayloadCeiling,
		MaxRegionSize:   16 * gib,
		MaxBoundRegions: 1024,
		MaxMappedBytes:  16 * gib,
	}
}

// resolve fills the zero fields with the defaults and checks the ranges.
func (l Limits) resolve(op string) (Limits, error) {
	d := DefaultLimits()
	if l.MaxRegions == 0 {
		l.MaxRegions = d.MaxRegions
	}
	if l.MaxPayload == 0 {
		l.MaxPayload = d.MaxPayload
	}
	if l.MaxRegionSize == 0 {
		l.MaxRegionSize = d.MaxRegionSize
	}
	if l.MaxBoundRegions == 0 {
		l.MaxBoundRegions = d.MaxBoundRegions
	}
	if l.MaxMappedBytes == 0 {
		l.MaxMappedBytes = d.MaxMappedBytes
	}
	if !l.announced().valid() {
		return l, invalidArg(op, "limits must allow 1 to %d regions and at most %d payload bytes per message, not %d and %d",
			MaxRegionsCeiling, MaxPayloadCeiling, l.MaxRegions, l.MaxPayload)
	}
	if l.MaxBoundRegions < 0 {
		return l, invalidArg(op, "Limits.MaxBoundRegions must be positive, not %d", l.MaxBoundRegions)
	}
	return l, nil
}

func (l Limits) announced() announced {
	return announced{maxRegions: l.MaxRegions, maxPayload: l.MaxPayload}
}

// ProcessLimits bound what all peers together may make this process map, so that many
// connections cannot exhaust the address space where one could not.
type ProcessLimits struct {
	// MaxMappedBytes is the most bytes of regions received from peers mapped at once;
	// default 64 GiB.
	MaxMappedBytes uint64
	// MaxRegions is the most regions received from peers alive at once; default 16384.
	MaxRegions uint64
}

// ProcessStats is the process-wide limits and what received regions use of them now.
type ProcessStats struct {
	MaxMappedBytes uint64
	MaxRegions     uint64
	MappedBytes    uint64
	Regions        uint64
}

var process = struct {
	mu          sync.Mutex
	limits      ProcessLimits
	mappedBytes atomic.Uint64
	regions     atomic.Uint64
}{limits: ProcessLimits{MaxMappedBytes: 64 * gib, MaxRegions: 16384}}

// SetProcessLimits sets the process-wide limits. Regions already mapped stay; new ones
// are refused while the usage is over the new limits.
func SetProcessLimits(limits ProcessLimits) error {
	if limits.MaxMappedBytes == 0 || limits.MaxRegions == 0 {
		return invalidArg("SetProcessLimits", "MaxMappedBytes and MaxRegions must be positive")
	}
	process.mu.Lock()
	process.limits = limits
	process.mu.Unlock()
	return nil
}

// GetProcessStats returns the process-wide limits and their use now.
func GetProcessStats() ProcessStats {
	process.mu.Lock()
	l := process.limits
	process.mu.Unlock()
	return ProcessStats{
		MaxMappedBytes: l.MaxMappedBytes,
		MaxRegions:     l.MaxRegions,
		MappedBytes:    process.mappedBytes.Load(),
		Regions:        process.regions.Load(),
	}
}

// reserve counts one received region of size bytes against the process limits.
func reserve(size uint64) error {
	process.mu.Lock()
	defer process.mu.Unlock()
	l := process.limits
	if process.regions.Load()+1 > l.MaxRegions {
		return limitExceeded(fmt.Sprintf("this process already holds %d regions from peers (process limit MaxRegions)", l.MaxRegions))
	}
	if used := process.mappedBytes.Load(); used+size < used || used+size > l.MaxMappedBytes {
		return limitExceeded(fmt.Sprintf("a %d-byte region would take this process over %d bytes mapped from peers (process limit MaxMappedBytes)", size, l.MaxMappedBytes))
	}
	process.regions.Add(1)
	process.mappedBytes.Add(size)
	return nil
}

// unreserve gives back what reserve took.
func unreserve(size uint64) {
	process.regions.Add(^uint64(0))
	process.mappedBytes.Add(-size)
}

func limitExceeded(detail string) *Error {
	return newError(CodeLimitExceeded, "recv", detail+"; the connection was closed (raise the limit if the peer is trusted)")
}
