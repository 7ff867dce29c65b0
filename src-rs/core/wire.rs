//! The wire format of `docs/PROTOCOL.md`: fixed little-endian records, one per
//! `SOCK_SEQPACKET` message.
//!
//! ```text
//! header      kind:u8 flags:u8 region_count:u16 payload_len:u32      (8 bytes)
//! descriptor  id:u32 flags:u32 size:u64                  (16 bytes, region_count times)
//! payload     payload_len bytes
//! ```
//!
//! This module only encodes and decodes; the rules that need connection state (known
//! ids, limits, descriptors) are checked by the receiving [`Endpoint`](crate::Endpoint).

/// The first eight bytes of every HELLO payload.
pub const MAGIC: [u8; 8] = *b"SHMLINK\0";
/// The protocol version this crate speaks (`docs/PROTOCOL.md` §3).
pub const VERSION: u16 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Bytes in a region descriptor.
pub const DESCRIPTOR_LEN: usize = 16;
/// Bytes in a HELLO payload.
pub const HELLO_LEN: usize = 20;
/// Where the fields of a HELLO payload start (`docs/PROTOCOL.md` §3).
const HELLO_MAGIC_AT: usize = 0;
const HELLO_VERSION_AT: usize = 8;
const HELLO_MAX_REGIONS_AT: usize = 10;
const HELLO_MAX_PAYLOAD_AT: usize = 12;
const HELLO_CAPABILITIES_AT: usize = 16;
/// Capability bit: this side can use a shared-memory ring per direction (§9).
pub const CAP_RING: u32 = 1;
/// The largest inline payload any peer may announce; larger data belongs in a region.
pub const MAX_PAYLOAD_CEILING: u32 = 65536;
/// The most regions any peer may announce per message: Linux passes at most this many
/// descriptors in one message (`SCM_MAX_FD`, unix(7)).
pub const MAX_REGIONS_CEILING: u16 = 253;

/// HELLO: the first frame each side sends; announces version and limits.
pub const KIND_HELLO: u8 = 1;
/// MESSAGE: an inline payload with regions attached.
pub const KIND_MESSAGE: u8 = 2;
/// RELEASE: the sender forgets the listed ids of its own namespace.
pub const KIND_RELEASE: u8 = 3;
/// RING: the sender's ring for its direction (one memory file, no descriptor entries).
pub const KIND_RING: u8 = 4;
/// WAKE: the doorbell; the receiver looks at the sender's ring.
pub const KIND_WAKE: u8 = 5;
/// Bytes in a RING payload: the capacity of its entry area, then flags (0).
pub const RING_PAYLOAD_LEN: usize = 8;

/// Descriptor flag: a descriptor for this region travels with the frame (in order).
pub const FLAG_NEW: u32 = 1;
/// Descriptor flag: the region is write-sealed; receivers map it copy-on-write.
pub const FLAG_FROZEN: u32 = 2;
/// Descriptor flag: the sender gave up access until the region is sent back.
pub const FLAG_TRANSFER: u32 = 4;
const KNOWN_FLAGS: u32 = FLAG_NEW | FLAG_FROZEN | FLAG_TRANSFER;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// One of the `KIND_*` constants.
    pub kind: u8,
    /// Number of region descriptors after the header.
    pub region_count: u16,
    /// Bytes of inline payload after the descriptors.
    pub payload_len: u32,
}

/// A region descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The region's id in the sender's namespace (never 0).
    pub id: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The region's size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// Whether a descriptor travels with this one.
    pub fn is_new(&self) -> bool {
        self.flags & FLAG_NEW != 0
    }
    /// Whether the region is frozen.
    pub fn is_frozen(&self) -> bool {
        self.flags & FLAG_FROZEN != 0
    }
    /// Whether ownership moves to the receiver.
    pub fn is_transfer(&self) -> bool {
        self.flags & FLAG_TRANSFER != 0
    }
}

/// The limits a side announces in its HELLO: what it accepts in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The most regions in one message (1 to 253).
    pub max_regions: u16,
    /// The largest inline payload in bytes (at most 65536).
    pub max_payload: u32,
}

impl Default for Announced {
    fn default() -> Self {
        Announced {
            max_regions: 32,
            max_payload: MAX_PAYLOAD_CEILING,
        }
    }
}

impl Announced {
    /// Whether both limits lie inside the protocol's bounds.
    pub fn is_valid(&self) -> bool {
        (1..=MAX_REGIONS_CEILING).contains(&self.max_regions)
            && self.max_payload <= MAX_PAYLOAD_CEILING
    }

    /// The largest frame a side with these limits can receive.
    pub fn max_frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.max_regions) * DESCRIPTOR_LEN + self.max_payload as usize
    }
}

/// A peer's HELLO: its limits and the capabilities it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hello {
    /// What it accepts in one message.
    pub limits: Announced,
    /// `CAP_*` bits it offers; bits this crate does not know are ignored.
    pub capabilities: u32,
}

impl Hello {
    /// Whether the peer offers `capability`.
    pub fn offers(&self, capability: u32) -> bool {
        self.capabilities & capability == capability
    }
}

/// Why a frame was refused. `Incompatible` means the peer is not speaking this
/// protocol version at all; everything else is a violation by a peer that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong magic or an unsupported version in HELLO.
    Incompatible(String),
    /// Any other broken rule.
    Violation(String),
}

fn violation(text: impl Into<String>) -> Refusal {
    Refusal::Violation(text.into())
}

/// A frame whose structure has been checked: lengths agree, reserved bits are zero,
/// every descriptor is well formed for the frame's kind.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    descriptors: &'a [u8],
    /// The inline payload.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The descriptors, in order.
    pub fn descriptors(&self) -> impl ExactSizeIterator<Item = Descriptor> + 'a {
        self.descriptors
            .chunks_exact(DESCRIPTOR_LEN)
            .map(decode_descriptor)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn decode_descriptor(chunk: &[u8]) -> Descriptor {
    Descriptor {
        id: u32_at(chunk, 0),
        flags: u32_at(chunk, 4),
        size: u64_at(chunk, 8),
    }
}

/// Checks the structure of one received record.
pub fn parse(record: &[u8]) -> Result<Frame<'_>, Refusal> {
    if record.len() < HEADER_LEN {
        return Err(violation(format!(
            "a {}-byte record is shorter than the {HEADER_LEN}-byte header",
            record.len()
        )));
    }
    let header = Header {
        kind: record[0],
        region_count: u16_at(record, 2),
        payload_len: u32_at(record, 4),
    };
    if record[1] != 0 {
        return Err(violation(format!(
            "header flags are {:#04x}; they must be 0",
            record[1]
        )));
    }
    let descriptors_len = usize::from(header.region_count) * DESCRIPTOR_LEN;
    let expected = HEADER_LEN + descriptors_len + header.payload_len as usize;
    if expected != record.len() {
        return Err(violation(format!(
            "the header announces {} regions and {} payload bytes ({expected} bytes in all), \
             but the record has {} bytes",
            header.region_count,
            header.payload_len,
            record.len()
        )));
    }
    let frame = Frame {
        header,
        descriptors: &record[HEADER_LEN..HEADER_LEN + descriptors_len],
        payload: &record[HEADER_LEN + descriptors_len..],
    };
    for d in frame.descriptors() {
        if d.id == 0 {
            return Err(violation("region id 0 is reserved"));
        }
        if d.flags & !KNOWN_FLAGS != 0 {
            return Err(violation(format!(
                "region {} has unknown flags {:#x}",
                d.id, d.flags
            )));
        }
        if d.size == 0 {
            return Err(violation(format!("region {} has size 0", d.id)));
        }
        if header.kind == KIND_RELEASE && d.flags != 0 {
            return Err(violation(format!("released region {} carries flags", d.id)));
        }
    }
    match header.kind {
        KIND_MESSAGE => {}
        KIND_RELEASE if header.payload_len == 0 => {}
        KIND_RELEASE => return Err(violation("a RELEASE frame carries a payload")),
        KIND_HELLO if header.region_count == 0 && frame.payload.len() == HELLO_LEN => {}
        KIND_HELLO => {
            return Err(violation(format!(
                "a HELLO frame must carry {HELLO_LEN} payload bytes and no regions"
            )));
        }
        KIND_RING if header.region_count == 0 && frame.payload.len() == RING_PAYLOAD_LEN => {}
        KIND_RING => {
            return Err(violation(format!(
                "a RING frame must carry {RING_PAYLOAD_LEN} payload bytes and no regions"
            )));
        }
        KIND_WAKE if header.region_count == 0 && header.payload_len == 0 => {}
        KIND_WAKE => return Err(violation("a WAKE frame carries regions or a payload")),
        other => return Err(violation(format!("unknown frame kind {other}"))),
    }
    Ok(frame)
}

/// Checks the first record of a connection, which must be a HELLO, and returns the
/// peer's limits and capabilities. Magic and version are judged before anything else, so
/// a peer of another version (whose HELLO may be laid out differently after them) is
/// reported as incompatible rather than as breaking this version's rules.
pub fn parse_first(record: &[u8]) -> Result<Hello, Refusal> {
    let version_end = HEADER_LEN + HELLO_MAX_REGIONS_AT;
    if record.len() >= version_end && record[0] == KIND_HELLO {
        check_magic_and_version(&record[HEADER_LEN..version_end])?;
    }
    let frame = parse(record)?;
    if frame.header.kind != KIND_HELLO {
        return Err(violation("the peer's first frame is not a HELLO"));
    }
    parse_hello(frame.payload)
}

fn check_magic_and_version(start: &[u8]) -> Result<(), Refusal> {
    if start[HELLO_MAGIC_AT..HELLO_VERSION_AT] != MAGIC {
        return Err(Refusal::Incompatible(
            "the peer's first frame is not a shmlink HELLO (wrong magic)".into(),
        ));
    }
    let version = u16_at(start, HELLO_VERSION_AT);
    if version != VERSION {
        let upgrade = if version < VERSION {
            "upgrade the peer's shmlink library"
        } else {
            "upgrade this side's shmlink library"
        };
        return Err(Refusal::Incompatible(format!(
            "the peer speaks shmlink protocol version {version}; this side speaks {VERSION} \
             and versions do not mix: {upgrade}"
        )));
    }
    Ok(())
}

/// Decodes and checks a HELLO payload.
pub fn parse_hello(payload: &[u8]) -> Result<Hello, Refusal> {
    if payload.len() != HELLO_LEN {
        return Err(violation(format!(
            "a HELLO payload of {} bytes",
            payload.len()
        )));
    }
    check_magic_and_version(&payload[..HELLO_MAX_REGIONS_AT])?;
    let limits = Announced {
        max_regions: u16_at(payload, HELLO_MAX_REGIONS_AT),
        max_payload: u32_at(payload, HELLO_MAX_PAYLOAD_AT),
    };
    if !limits.is_valid() {
        return Err(violation(format!(
            "the peer announced limits outside the protocol's bounds: {} regions, {} bytes",
            limits.max_regions, limits.max_payload
        )));
    }
    Ok(Hello {
        limits,
        capabilities: u32_at(payload, HELLO_CAPABILITIES_AT),
    })
}

/// Appends a frame header to `out`.
pub fn put_header(out: &mut Vec<u8>, kind: u8, region_count: u16, payload_len: u32) {
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&region_count.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
}

/// Appends a region descriptor to `out`.
pub fn put_descriptor(out: &mut Vec<u8>, d: Descriptor) {
    out.extend_from_slice(&d.id.to_le_bytes());
    out.extend_from_slice(&d.flags.to_le_bytes());
    out.extend_from_slice(&d.size.to_le_bytes());
}

/// Appends a whole HELLO frame to `out`.
pub fn put_hello(out: &mut Vec<u8>, hello: Hello) {
    put_header(out, KIND_HELLO, 0, HELLO_LEN as u32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&hello.limits.max_regions.to_le_bytes());
    out.extend_from_slice(&hello.limits.max_payload.to_le_bytes());
    out.extend_from_slice(&hello.capabilities.to_le_bytes());
}

/// A whole HELLO frame announcing `limits` and no capabilities.
pub fn hello_frame(limits: Announced) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + HELLO_LEN);
    put_hello(
        &mut out,
        Hello {
            limits,
            capabilities: 0,
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(descriptors: &[Descriptor], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(
            &mut out,
            KIND_MESSAGE,
            descriptors.len() as u16,
            payload.len() as u32,
        );
        for d in descriptors {
            put_descriptor(&mut out, *d);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn hello_round_trips_and_matches_the_documented_bytes() {
        let mut frame = Vec::new();
        put_hello(
            &mut frame,
            Hello {
                limits: Announced {
                    max_regions: 32,
                    max_payload: 65536,
                },
                capabilities: CAP_RING,
            },
        );
        assert_eq!(
            frame,
            [
                0x01, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
                0x00, // header: HELLO, 0 regions, 20 bytes
                b'S', b'H', b'M', b'L', b'I', b'N', b'K', 0x00, // magic
                0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x01,
                0x00, // version 2, 32 regions, 65536 bytes
                0x01, 0x00, 0x00, 0x00, // capabilities: ring
            ]
        );
        let parsed = parse(&frame).unwrap();
        assert_eq!(parsed.header.kind, KIND_HELLO);
        let hello = parse_hello(parsed.payload).unwrap();
        assert_eq!(
            hello.limits,
            Announced {
                max_regions: 32,
                max_payload: 65536
            }
        );
        assert!(hello.offers(CAP_RING));
    }

    #[test]
    fn unknown_capability_bits_are_ignored() {
        let mut frame = hello_frame(Announced::default());
        frame[HEADER_LEN + HELLO_CAPABILITIES_AT + 3] = 0x80;
        let hello = parse_first(&frame).unwrap();
        assert!(!hello.offers(CAP_RING));
        assert_eq!(hello.limits, Announced::default());
    }

    #[test]
    fn ring_and_wake_frames_have_a_fixed_shape() {
        let mut ring = Vec::new();
        put_header(&mut ring, KIND_RING, 0, RING_PAYLOAD_LEN as u32);
        ring.extend_from_slice(&[0; RING_PAYLOAD_LEN]);
        assert_eq!(parse(&ring).unwrap().header.kind, KIND_RING);
        ring[4] = 4;
        ring.truncate(HEADER_LEN + 4);
        assert!(parse(&ring).is_err());
        let mut wake = Vec::new();
        put_header(&mut wake, KIND_WAKE, 0, 0);
        assert_eq!(parse(&wake).unwrap().header.kind, KIND_WAKE);
        let mut loaded = Vec::new();
        put_header(&mut loaded, KIND_WAKE, 0, 1);
        loaded.push(0);
        assert!(parse(&loaded).is_err());
    }

    #[test]
    fn message_round_trips_descriptors_and_payload() {
        let ds = [
            Descriptor {
                id: 1,
                flags: FLAG_NEW,
                size: 4096,
            },
            Descriptor {
                id: 7,
                flags: FLAG_FROZEN | FLAG_TRANSFER,
                size: 1 << 26,
            },
        ];
        let bytes = message(&ds, b"hello");
        let frame = parse(&bytes).unwrap();
        assert_eq!(frame.descriptors().collect::<Vec<_>>(), ds);
        assert_eq!(frame.payload, b"hello");
    }

    #[test]
    fn rejects_a_record_shorter_than_the_header() {
        assert!(matches!(parse(&[2, 0, 0]), Err(Refusal::Violation(_))));
    }

    #[test]
    fn rejects_a_payload_length_that_lies() {
        let mut bytes = message(&[], b"abc");
        bytes[4] = 4;
        assert!(
            matches!(parse(&bytes), Err(Refusal::Violation(t)) if t.contains("record has 11 bytes"))
        );
        bytes[4] = 2;
        assert!(parse(&bytes).is_err());
    }

    #[test]
    fn rejects_a_region_count_that_lies() {
        let mut bytes = message(
            &[Descriptor {
                id: 1,
                flags: 0,
                size: 8,
            }],
            b"",
        );
        bytes[2] = 2;
        assert!(parse(&bytes).is_err());
    }

    #[test]
    fn rejects_reserved_bits_zero_ids_and_empty_regions() {
        let mut bytes = message(&[], b"");
        bytes[1] = 1;
        assert!(parse(&bytes).is_err());
        assert!(
            parse(&message(
                &[Descriptor {
                    id: 0,
                    flags: 0,
                    size: 8
                }],
                b""
            ))
            .is_err()
        );
        assert!(
            parse(&message(
                &[Descriptor {
                    id: 1,
                    flags: 8,
                    size: 8
                }],
                b""
            ))
            .is_err()
        );
        assert!(
            parse(&message(
                &[Descriptor {
                    id: 1,
                    flags: 0,
                    size: 0
                }],
                b""
            ))
            .is_err()
        );
    }

    #[test]
    fn rejects_unknown_kinds_and_malformed_release_and_hello() {
        let mut bytes = message(&[], b"");
        bytes[0] = 9;
        assert!(parse(&bytes).is_err());
        let mut release = Vec::new();
        put_header(&mut release, KIND_RELEASE, 1, 0);
        put_descriptor(
            &mut release,
            Descriptor {
                id: 3,
                flags: FLAG_NEW,
                size: 8,
            },
        );
        assert!(parse(&release).is_err());
        let mut hello = hello_frame(Announced::default());
        hello[2] = 1;
        assert!(parse(&hello).is_err());
    }

    #[test]
    fn hello_with_wrong_magic_or_version_is_incompatible() {
        let mut hello = hello_frame(Announced::default());
        hello[8] = b'X';
        assert!(matches!(
            parse_hello(&hello[8..]),
            Err(Refusal::Incompatible(_))
        ));
        let mut hello = hello_frame(Announced::default());
        hello[16] = 3;
        assert!(
            matches!(parse_hello(&hello[8..]), Err(Refusal::Incompatible(t)) if t.contains("version 3"))
        );
    }

    /// A version-1 HELLO, byte for byte as version-1 peers send it (PROTOCOL.md §3).
    const V1_HELLO: [u8; 24] = [
        0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, b'S', b'H', b'M', b'L', b'I', b'N', b'K',
        0x00, 0x01, 0x00, 0x20, 0x00, 0x00, 0x00, 0x01, 0x00,
    ];

    #[test]
    fn a_version_1_peer_is_incompatible_and_told_to_upgrade() {
        let Err(Refusal::Incompatible(text)) = parse_first(&V1_HELLO) else {
            panic!("a version-1 HELLO was not refused as incompatible")
        };
        assert!(
            text.contains("version 1") && text.contains("upgrade the peer"),
            "{text}"
        );
    }

    #[test]
    fn a_first_frame_of_another_version_is_incompatible_whatever_its_layout() {
        let mut later = hello_frame(Announced::default());
        later[16] = 3;
        later.extend_from_slice(&[0; 8]);
        later[4] = 28;
        assert!(
            matches!(parse_first(&later), Err(Refusal::Incompatible(t)) if t.contains("version 3"))
        );
        let mut garbage = hello_frame(Announced::default());
        garbage[2] = 1;
        garbage[8] = b'X';
        assert!(matches!(
            parse_first(&garbage),
            Err(Refusal::Incompatible(_))
        ));
    }

    #[test]
    fn a_first_frame_that_is_not_a_hello_is_a_violation() {
        let mut message = Vec::new();
        put_header(&mut message, KIND_MESSAGE, 0, 0);
        assert!(matches!(parse_first(&message), Err(Refusal::Violation(_))));
        let hello = hello_frame(Announced::default());
        assert!(matches!(
            parse_first(&hello[..12]),
            Err(Refusal::Violation(_))
        ));
        assert_eq!(parse_first(&hello).unwrap().limits, Announced::default());
    }

    #[test]
    fn hello_with_out_of_bounds_limits_is_a_violation() {
        for limits in [
            Announced {
                max_regions: 0,
                max_payload: 10,
            },
            Announced {
                max_regions: 254,
                max_payload: 10,
            },
            Announced {
                max_regions: 1,
                max_payload: MAX_PAYLOAD_CEILING + 1,
            },
        ] {
            let hello = hello_frame(limits);
            assert!(matches!(
                parse_hello(&hello[8..]),
                Err(Refusal::Violation(_))
            ));
        }
    }
}
