package shmlink

import "encoding/binary"

// Wire constants of PROTOCOL.md §2 and §3.
const (
	KindHello   = 1
	KindMessage = 2
	KindRelease = 3

	FlagNew      = 1
	FlagFrozen   = 2
	FlagTransfer = 4
	flagsKnown   = FlagNew | FlagFrozen | FlagTransfer

	HeaderSize     = 8
	DescriptorSize = 16
	HelloPayload   = 16
	Version        = 1

	// Bounds on what a HELLO may announce (§3.2).
	MaxRegionsLimit = 253
	MaxPayloadLimit = 65536

	// What every shmlink peer announces (SCENARIO.md) and our defaults.
	DefaultMaxRegions = 32
	DefaultMaxPayload = 65536
)

// Magic is the 8-byte HELLO magic: "SHMLINK" and a NUL.
var Magic = [8]byte{'S', 'H', 'M', 'L', 'I', 'N', 'K', 0}

// header is the decoded 8-byte frame header.
type header struct {
	kind        uint8
	flags       uint8
	regionCount uint16
	payloadLen  uint32
}

func putHeader(b []byte, h header) {
	b[0] = h.kind
	b[1] = h.flags
	binary.LittleEndian.PutUint16(b[2:], h.regionCount)
	binary.LittleEndian.PutUint32(b[4:], h.payloadLen)
}

func getHeader(b []byte) header {
	return header{
		kind:        b[0],
		flags:       b[1],
		regionCount: binary.LittleEndian.Uint16(b[2:]),
		payloadLen:  binary.LittleEndian.Uint32(b[4:]),
	}
}

// descriptor is one decoded 16-byte region descriptor.
type descriptor struct {
	id    uint32
	flags uint32
	size  uint64
}

func putDescriptor(b []byte, d descriptor) {
	binary.LittleEndian.PutUint32(b[0:], d.id)
	binary.LittleEndian.PutUint32(b[4:], d.flags)
	binary.LittleEndian.PutUint64(b[8:], d.size)
}

func getDescriptor(b []byte) descriptor {
	return descriptor{
		id:    binary.LittleEndian.Uint32(b[0:]),
		flags: binary.LittleEndian.Uint32(b[4:]),
		size:  binary.LittleEndian.Uint64(b[8:]),
	}
}

// AppendHello appends a complete version-1 HELLO frame announcing the given
// limits. Exported so test tools can send hand-made HELLOs.
func AppendHello(b []byte, maxRegions, maxPayload int) []byte {
	var f [HeaderSize + HelloPayload]byte
	putHeader(f[:], header{kind: KindHello, payloadLen: HelloPayload})
	copy(f[8:16], Magic[:])
	binary.LittleEndian.PutUint16(f[16:], Version)
	binary.LittleEndian.PutUint16(f[18:], uint16(maxRegions))
	binary.LittleEndian.PutUint32(f[20:], uint32(maxPayload))
	return append(b, f[:]...)
}

// maxFrameLen is the longest record a receiver that announced these limits
// can be sent: header, every descriptor, the whole payload.
func maxFrameLen(maxRegions, maxPayload int) int {
	return HeaderSize + DescriptorSize*maxRegions + maxPayload
}
