package shmlink

import (
	"encoding/binary"
	"fmt"
)

// The wire format of docs/PROTOCOL.md §2 and §3: little-endian records, one per
// SOCK_SEQPACKET message. This file only encodes and decodes; the rules that need
// connection state are in session.go.
const (
	kindHello   = 1
	kindMessage = 2
	kindRelease = 3

	flagNew      = 1
	flagFrozen   = 2
	flagTransfer = 4
	knownFlags   = flagNew | flagFrozen | flagTransfer

	headerLen     = 8
	descriptorLen = 16
	helloLen      = 20

	// ProtocolVersion is the version of docs/PROTOCOL.md this package speaks.
	ProtocolVersion = 2
	// MaxRegionsCeiling is the most regions per message any side may announce (Linux
	// passes at most 253 descriptors in one message, SCM_MAX_FD).
	MaxRegionsCeiling = 253
	// MaxPayloadCeiling is the largest inline payload any side may announce; larger
	// data belongs in a region.
	MaxPayloadCeiling = 65536
)

var magic = [8]byte{'S', 'H', 'M', 'L', 'I', 'N', 'K', 0}

// announced is what a HELLO says: what its sender accepts in one message.
type announced struct {
	maxRegions int
	maxPayload int
}

func (a announced) valid() bool {
	return a.maxRegions >= 1 && a.maxRegions <= MaxRegionsCeiling && a.maxPayload >= 0 && a.maxPayload <= MaxPayloadCeiling
}

// maxFrameLen is the longest record a side announcing a can be sent.
func (a announced) maxFrameLen() int {
	return headerLen + descriptorLen*a.maxRegions + a.maxPayload
}

type header struct {
	kind        uint8
	regionCount int
	payloadLen  int
}

type descriptor struct {
	id    uint32
	flags uint32
	size  uint64
}

func (d descriptor) isNew() bool      { return d.flags&flagNew != 0 }
func (d descriptor) isFrozen() bool   { return d.flags&flagFrozen != 0 }
func (d descriptor) isTransfer() bool { return d.flags&flagTransfer != 0 }

// frame is a record whose structure was checked.
type frame struct {
	header      header
	descriptors []byte
	payload     []byte
}

func (f *frame) descriptor(i int) descriptor {
	b := f.descriptors[i*descriptorLen:]
	return descriptor{
		id:    binary.LittleEndian.Uint32(b[0:]),
		flags: binary.LittleEndian.Uint32(b[4:]),
		size:  binary.LittleEndian.Uint64(b[8:]),
	}
}

// refusal is why a record's structure was refused: incompatible (another protocol or
// version) or a violation.
type refusal struct {
	incompatible bool
	text         string
}

func violationf(format string, args ...any) *refusal {
	return &refusal{text: fmt.Sprintf(format, args...)}
}

// parse checks the structure of one record (docs/PROTOCOL.md §2, §4, §7 rule 6).
func parse(record []byte) (*frame, *refusal) {
	if len(record) < headerLen {
		return nil, violationf("a %d-byte record is shorter than the %d-byte header", len(record), headerLen)
	}
	h := header{
		kind:        record[0],
		regionCount: int(binary.LittleEndian.Uint16(record[2:])),
		payloadLen:  int(binary.LittleEndian.Uint32(record[4:])),
	}
	if record[1] != 0 {
		return nil, violationf("header flags are %#02x; they must be 0", record[1])
	}
	descLen := h.regionCount * descriptorLen
	if expected := headerLen + descLen + h.payloadLen; expected != len(record) {
		return nil, violationf("the header announces %d regions and %d payload bytes (%d bytes in all), but the record has %d bytes",
			h.regionCount, h.payloadLen, expected, len(record))
	}
	f := &frame{header: h, descriptors: record[headerLen : headerLen+descLen], payload: record[headerLen+descLen:]}
	for i := 0; i < h.regionCount; i++ {
		d := f.descriptor(i)
		switch {
		case d.id == 0:
			return nil, violationf("region id 0 is reserved")
		case d.flags&^knownFlags != 0:
			return nil, violationf("region %d has unknown flags %#x", d.id, d.flags)
		case d.size == 0:
			return nil, violationf("region %d has size 0", d.id)
		case h.kind == kindRelease && d.flags != 0:
			return nil, violationf("released region %d carries flags", d.id)
		}
	}
	switch h.kind {
	case kindMessage:
	case kindRelease:
		if h.payloadLen != 0 {
			return nil, violationf("a RELEASE frame carries a payload")
		}
	case kindHello:
		if h.regionCount != 0 || len(f.payload) != helloLen {
			return nil, violationf("a HELLO frame must carry %d payload bytes and no regions", helloLen)
		}
	default:
		return nil, violationf("unknown frame kind %d", h.kind)
	}
	return f, nil
}

// parseFirst checks a connection's first record, which must be a HELLO (§3 rule 3):
// magic and version first (incompatible), then the rest (violation).
func parseFirst(record []byte) (announced, *refusal) {
	if len(record) >= headerLen+10 && record[0] == kindHello {
		if r := checkMagicAndVersion(record[headerLen : headerLen+10]); r != nil {
			return announced{}, r
		}
	}
	f, r := parse(record)
	if r != nil {
		return announced{}, r
	}
	if f.header.kind != kindHello {
		return announced{}, violationf("the peer's first frame is not a HELLO")
	}
	a := announced{
		maxRegions: int(binary.LittleEndian.Uint16(f.payload[10:])),
		maxPayload: int(binary.LittleEndian.Uint32(f.payload[12:])),
	}
	if !a.valid() {
		return announced{}, violationf("the peer announced limits outside the protocol's bounds: %d regions, %d bytes", a.maxRegions, a.maxPayload)
	}
	return a, nil
}

func checkMagicAndVersion(start []byte) *refusal {
	if [8]byte(start[:8]) != magic {
		return &refusal{incompatible: true, text: "the peer's first frame is not a shmlink HELLO (wrong magic)"}
	}
	if v := binary.LittleEndian.Uint16(start[8:]); v != ProtocolVersion {
		upgrade := "upgrade the peer's shmlink library"
		if v > ProtocolVersion {
			upgrade = "upgrade this side's shmlink library"
		}
		return &refusal{incompatible: true, text: fmt.Sprintf("the peer speaks shmlink protocol version %d; this side speaks %d and versions do not mix: %s", v, ProtocolVersion, upgrade)}
	}
	return nil
}

func putHeader(b []byte, kind uint8, regionCount, payloadLen int) []byte {
	b = append(b, kind, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(regionCount))
	return binary.LittleEndian.AppendUint32(b, uint32(payloadLen))
}

func putDescriptor(b []byte, d descriptor) []byte {
	b = binary.LittleEndian.AppendUint32(b, d.id)
	b = binary.LittleEndian.AppendUint32(b, d.flags)
	return binary.LittleEndian.AppendUint64(b, d.size)
}

// putHello appends this side's HELLO. Its capabilities are 0: this package offers no
// ring (docs/PROTOCOL.md §9), so its peers keep every message on the socket, and a RING
// or WAKE frame from a peer is an unknown kind here (a violation).
func putHello(b []byte, a announced) []byte {
	b = putHeader(b, kindHello, 0, helloLen)
	b = append(b, magic[:]...)
	b = binary.LittleEndian.AppendUint16(b, ProtocolVersion)
	b = binary.LittleEndian.AppendUint16(b, uint16(a.maxRegions))
	b = binary.LittleEndian.AppendUint32(b, uint32(a.maxPayload))
	return binary.LittleEndian.AppendUint32(b, 0)
}
