//! Rings (docs/PROTOCOL.md §9) over real sockets and memory files: negotiation and
//! fallback, one ordered stream across ring and socket, waiting (spin, park, wake), the
//! end of a connection under a parked receiver, and hostile rings.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use memmap2::{MmapOptions, MmapRaw};
use shmlink::wire;
use shmlink::{Attach, Endpoint, ErrorKind, Limits, Options, Region};

fn with_ring(ring: bool) -> Options {
    Options {
        ring,
        ..Options::trusted()
    }
}

fn pair(a: bool, b: bool) -> (Endpoint, Endpoint) {
    let (x, fd) = Endpoint::pair_for_child(with_ring(a)).unwrap();
    let y = Endpoint::from_fd(fd, with_ring(b)).unwrap();
    (x, y)
}

fn recv(endpoint: &Endpoint) -> shmlink::Message {
    endpoint
        .recv_timeout(Some(Duration::from_secs(10)))
        .unwrap()
}

#[test]
fn small_messages_take_the_ring_only_when_both_sides_offer_it() {
    let _serial = serial();
    for (a, b, expect_ring) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let (x, y) = pair(a, b);
        x.handshake(Some(Duration::from_secs(5))).unwrap();
        y.handshake(Some(Duration::from_secs(5))).unwrap();
        for n in 0..50u32 {
            x.send_blocking(&n.to_le_bytes(), &[], None).unwrap();
            let m = recv(&y);
            assert_eq!(m.payload, n.to_le_bytes());
            y.send_blocking(&m.payload, &[], None).unwrap();
            assert_eq!(recv(&x).payload, n.to_le_bytes());
        }
        let (sx, sy) = (x.stats(), y.stats());
        if expect_ring {
            // The first messages may leave before the sender's RING, on the socket.
            assert!(sx.ring_messages_out >= 45, "{sx:?}");
            assert_eq!(sy.ring_messages_in, sx.ring_messages_out);
            assert!(sy.ring_messages_out >= 45 && sx.ring_messages_in == sy.ring_messages_out);
        } else {
            assert_eq!(
                (
                    sx.ring_messages_out,
                    sy.ring_messages_in,
                    sy.ring_messages_out
                ),
                (0, 0, 0),
                "ring {a} vs {b}: the socket path"
            );
        }
    }
}

/// Messages that need the socket (new regions, large payloads) and messages that fit the
/// ring, interleaved, arrive in the order they were sent, and so do RELEASEs.
#[test]
fn one_ordered_stream_across_ring_and_socket() {
    let _serial = serial();
    let (x, y) = pair(true, true);
    x.handshake(Some(Duration::from_secs(5))).unwrap();
    const COUNT: u32 = 300;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut regions = Vec::new();
            let big = vec![7u8; 40 << 10];
            for n in 0..COUNT {
                let mut payload = n.to_le_bytes().to_vec();
                match n % 7 {
                    0 => {
                        let region = Region::create(4096).unwrap();
                        region.write(0, &n.to_le_bytes()).unwrap();
                        x.send_blocking(&payload, &[Attach::share(&region)], None)
                            .unwrap();
                        regions.push(region);
                    }
                    3 => {
                        payload.extend_from_slice(&big);
                        x.send_blocking(&payload, &[], None).unwrap();
                    }
                    5 => {
                        // A known region travels by id, through the ring.
                        let region = regions.last().unwrap();
                        x.send_blocking(&payload, &[Attach::share(region)], None)
                            .unwrap();
                    }
                    6 if regions.len() > 2 => {
                        // Closing a region sends RELEASE, ordered with the messages.
                        regions.remove(0).close();
                        x.send_blocking(&payload, &[], None).unwrap();
                    }
                    _ => x.send_blocking(&payload, &[], None).unwrap(),
                }
            }
        });
        for k in 0..COUNT {
            // Fall behind now and then, so that frames queue on both paths.
            if k % 50 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let m = recv(&y);
            assert_eq!(m.payload[..4], k.to_le_bytes(), "message {k}");
            if k % 7 == 0 {
                let mut head = [0u8; 4];
                m.regions[0].region.read(0, &mut head).unwrap();
                assert_eq!(head, k.to_le_bytes());
            }
        }
    });
    let (sx, sy) = (x.stats(), y.stats());
    assert!(sx.ring_messages_out > 150, "{sx:?}");
    assert!(sx.messages_out - sx.ring_messages_out > 50, "{sx:?}");
    assert_eq!(sy.ring_messages_in, sx.ring_messages_out);
    assert!(sy.peer_regions <= 4, "RELEASEs arrived: {sy:?}");
}

/// A receiver that waits longer than any spin parks on the futex and is woken by the
/// first message; with no busy-poll it parks at once.
#[test]
fn a_parked_receiver_is_woken_by_the_ring_and_by_the_socket() {
    let _serial = serial();
    for busy_poll in [Duration::ZERO, Duration::from_micros(50)] {
        let options = || Options {
            busy_poll,
            ..with_ring(true)
        };
        let (x, fd) = Endpoint::pair_for_child(options()).unwrap();
        let y = Endpoint::from_fd(fd, options()).unwrap();
        x.handshake(Some(Duration::from_secs(5))).unwrap();
        y.handshake(Some(Duration::from_secs(5))).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let mut got = Vec::new();
                for _ in 0..3 {
                    let m = y.recv_timeout(Some(Duration::from_secs(10))).unwrap();
                    got.push((m.payload[0], m.regions.len()));
                }
                got
            });
            for n in 0..3u8 {
                std::thread::sleep(Duration::from_millis(30));
                if n == 1 {
                    // A new region goes over the socket: the parked receiver must look there.
                    let region = Region::create(4096).unwrap();
                    x.send_blocking(&[n], &[Attach::share(&region)], None)
                        .unwrap();
                } else {
                    x.send_blocking(&[n], &[], None).unwrap();
                }
            }
            assert_eq!(waiter.join().unwrap(), [(0, 0), (1, 1), (2, 0)]);
        });
    }
}

/// A pair with a ring each way in use and a 4 s busy-poll window: a receive that spun
/// its whole window would show.
fn spinning_pair() -> (Endpoint, Endpoint) {
    let options = || Options {
        busy_poll: Duration::from_secs(4),
        ..with_ring(true)
    };
    let (x, fd) = Endpoint::pair_for_child(options()).unwrap();
    let y = Endpoint::from_fd(fd, options()).unwrap();
    x.handshake(Some(Duration::from_secs(5))).unwrap();
    y.handshake(Some(Duration::from_secs(5))).unwrap();
    // The first messages may leave before the sender's RING, on the socket.
    for _ in 0..50 {
        x.send_blocking(&[1u8], &[], None).unwrap();
        assert_eq!(recv(&y).payload, [1]);
    }
    assert!(y.stats().ring_messages_in > 0, "{:?}", y.stats());
    (x, y)
}

/// A receive never spins longer than it may wait: with a busy-poll window far longer than
/// its timeout, a receive that times out returns after about its timeout, and a poll
/// (timeout 0) at once, also after a receive that waited (which makes the next one wait
/// for the ring first).
#[test]
fn a_receive_spins_no_longer_than_its_timeout() {
    let _serial = serial();
    let (x, y) = spinning_pair();
    for timeout in [Duration::from_millis(20), Duration::ZERO, Duration::ZERO] {
        let started = Instant::now();
        let error = y.recv_timeout(Some(timeout)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);
        // Spinning the whole window would take 4 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a receive with a timeout of {timeout:?} took {:?}",
            started.elapsed()
        );
    }
    // Spinning then parking waits the timeout once, not once for each.
    let started = Instant::now();
    let error = y
        .recv_timeout(Some(Duration::from_millis(500)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TimedOut);
    assert!(
        started.elapsed() < Duration::from_millis(950),
        "a receive with a timeout of 500 ms took {:?}",
        started.elapsed()
    );
    x.send_blocking(&[2u8], &[], None).unwrap();
    assert_eq!(recv(&y).payload, [2]);
}

/// A receiver spinning through a long busy-poll window notices the peer's end within
/// a slice, not at the end of the window.
#[test]
fn a_spinning_receiver_notices_the_end_before_its_window_runs_out() {
    let _serial = serial();
    let (x, y) = spinning_pair();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let error = y.recv_timeout(None).unwrap_err();
            (error.kind(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(x);
        let (kind, took) = waiter.join().unwrap();
        assert_eq!(kind, ErrorKind::PeerClosed);
        // Spinning the whole window would take 4 s.
        assert!(took < Duration::from_secs(2), "noticed after {took:?}");
    });
}

/// The peer's end, clean or not, reaches a receiver parked on the ring's futex, after
/// every message the peer published before it.
#[test]
fn a_parked_receiver_notices_the_end_after_the_last_message() {
    let _serial = serial();
    let (x, y) = pair(true, true);
    x.handshake(Some(Duration::from_secs(5))).unwrap();
    y.handshake(Some(Duration::from_secs(5))).unwrap();
    for n in 0..5u8 {
        x.send_blocking(&[n], &[], None).unwrap();
    }
    drop(x);
    for n in 0..5u8 {
        assert_eq!(recv(&y).payload, [n]);
    }
    let started = Instant::now();
    let error = y.recv_timeout(Some(Duration::from_secs(10))).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PeerClosed);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let (x, y) = pair(true, true);
    x.handshake(Some(Duration::from_secs(5))).unwrap();
    y.handshake(Some(Duration::from_secs(5))).unwrap();
    x.send_blocking(b"one", &[], None).unwrap();
    assert_eq!(recv(&y).payload, b"one");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let error = y.recv_timeout(Some(Duration::from_secs(10))).unwrap_err();
            (error.kind(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(x);
        let (kind, waited) = waiter.join().unwrap();
        assert_eq!(kind, ErrorKind::PeerClosed);
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    });
}

// -- hostile rings -----------------------------------------------------------------------

/// A raw peer that offered rings, sent its RING, and now writes into the ring as it likes.
struct HostileRing {
    endpoint: Endpoint,
    raw: OwnedFd,
    map: MmapRaw,
    _file: OwnedFd,
}

const CAPACITY: u32 = 4096;

fn hello_with_ring() -> Vec<u8> {
    let mut hello = Vec::new();
    wire::put_hello(
        &mut hello,
        wire::Hello {
            limits: wire::Announced::default(),
            capabilities: wire::CAP_RING,
        },
    );
    hello
}

fn ring_frame(capacity: u32, flags: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::put_header(
        &mut frame,
        wire::KIND_RING,
        0,
        wire::RING_PAYLOAD_LEN as u32,
    );
    frame.extend_from_slice(&capacity.to_le_bytes());
    frame.extend_from_slice(&flags.to_le_bytes());
    frame
}

/// An endpoint offering rings, and the raw socket of its peer.
fn raw_pair() -> (Endpoint, OwnedFd) {
    let (a, b) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    (Endpoint::from_fd(a, with_ring(true)).unwrap(), b)
}

fn hostile_ring() -> HostileRing {
    let (endpoint, b) = raw_pair();
    send_raw(&b, &hello_with_ring(), &[]);
    let file = foreign_file(256 + CAPACITY as usize, b"");
    send_raw(&b, &ring_frame(CAPACITY, 0), &[file.as_raw_fd()]);
    let map = MmapOptions::new().map_raw(&file).unwrap();
    HostileRing {
        endpoint,
        raw: b,
        map,
        _file: file,
    }
}

impl HostileRing {
    fn word(&self, offset: usize) -> &AtomicU32 {
        let at = self.map.as_mut_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: offsets 0, 64, 128 lie in the mapping's first page, 4-aligned; the
        // mapping lives as long as `self`.
        unsafe { AtomicU32::from_ptr(at) }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(256 + at + bytes.len() <= self.map.len());
        let dst = self.map.as_mut_ptr().wrapping_add(256 + at);
        // SAFETY: `dst` is in bounds of the mapping for `bytes.len()` bytes (checked
        // above); the endpoint only copies out of it, so a racing write is what a hostile
        // peer does, which the endpoint must survive.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }

    /// Writes an entry header (and frame) at `at` and publishes `tail`.
    fn entry(&self, at: usize, len: u32, socket_before: u32, frame: &[u8], tail: u32) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&socket_before.to_le_bytes());
        bytes.extend_from_slice(frame);
        self.write(at, &bytes);
        self.word(0).store(tail, Ordering::Release);
    }
}

fn refusal(ring: &HostileRing) -> ErrorKind {
    let before = fd_count();
    let error = ring
        .endpoint
        .recv_timeout(Some(Duration::from_secs(5)))
        .unwrap_err();
    assert!(raw_sees_eof(&ring.raw), "{error}");
    assert!(fd_count() <= before);
    error.kind()
}

#[test]
fn a_message_through_a_hostile_ring_arrives_when_well_formed() {
    let _serial = serial();
    let ring = hostile_ring();
    let frame = message(&[], b"hi");
    ring.entry(0, frame.len() as u32, 0, &frame, 24);
    assert_eq!(recv(&ring.endpoint).payload, b"hi");
    assert_eq!(
        ring.word(64).load(Ordering::Acquire),
        24,
        "the consumer moved head"
    );
}

/// The peer's socket frames come in the place its ring entries give them, whichever the
/// receiver looks at first.
#[test]
fn socket_frames_come_where_the_ring_entries_put_them() {
    let _serial = serial();
    let ring = hostile_ring();
    let in_ring = message(&[], b"ring");
    // Entry 1 (nothing before it), then a socket frame, then entry 2 (one before it).
    ring.entry(0, in_ring.len() as u32, 0, &in_ring, 24);
    send_raw(&ring.raw, &message(&[], b"socket"), &[]);
    ring.entry(24, in_ring.len() as u32, 1, &in_ring, 48);
    let got: Vec<Vec<u8>> = (0..3)
        .map(|_| recv(&ring.endpoint).payload.into_vec())
        .collect();
    assert_eq!(got, [&b"ring"[..], b"socket", b"ring"]);
    // A socket frame after the last entry comes after it.
    send_raw(&ring.raw, &message(&[], b"last"), &[]);
    assert_eq!(recv(&ring.endpoint).payload, b"last");
}

/// An entry that counts more socket frames before it than came is a violation as soon as
/// the socket runs dry, also for a receive that waited last time (and so would wait for
/// the socket first): those frames were sent before the entry was published.
#[test]
fn an_entry_counting_frames_that_never_came_fails_at_once_after_a_wait() {
    let _serial = serial();
    let ring = hostile_ring();
    let timed_out = ring
        .endpoint
        .recv_timeout(Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(timed_out.kind(), ErrorKind::TimedOut);
    send_raw(&ring.raw, &message(&[], b"socket"), &[]);
    let in_ring = message(&[], b"ring");
    ring.entry(0, in_ring.len() as u32, 1000, &in_ring, 24);
    assert_eq!(recv(&ring.endpoint).payload, b"socket");
    let started = Instant::now();
    assert_eq!(refusal(&ring), ErrorKind::Protocol);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );
}

#[test]
fn corrupt_indices_and_lengths_are_violations() {
    let _serial = serial();
    let frame = message(&[], b"hi");
    type Corruption = Box<dyn Fn(&HostileRing)>;
    let cases: Vec<(&str, Corruption)> = vec![
        (
            "tail past the ring",
            Box::new(|r| r.word(0).store(CAPACITY + 8, Ordering::Release)),
        ),
        (
            "tail not aligned",
            Box::new(|r| r.word(0).store(12, Ordering::Release)),
        ),
        ("length past tail", Box::new(|r| r.entry(0, 64, 0, &[], 16))),
        (
            "length huge",
            Box::new(|r| r.entry(0, u32::MAX, 0, &[], 64)),
        ),
        (
            "length under a header",
            Box::new(|r| r.entry(0, 4, 0, &[], 16)),
        ),
        ("wrap at the start", Box::new(|r| r.entry(0, 0, 0, &[], 64))),
        (
            "frame of another kind",
            Box::new(|r| {
                let mut f = message(&[], b"");
                f[0] = wire::KIND_HELLO;
                r.entry(0, 8, 0, &f, 16);
            }),
        ),
        (
            "a new region in the ring",
            Box::new(|r| {
                let d = wire::Descriptor {
                    id: 1,
                    flags: wire::FLAG_NEW,
                    size: 4096,
                };
                let f = message(&[d], b"");
                r.entry(0, f.len() as u32, 0, &f, 32);
            }),
        ),
        (
            "socket frames that never came",
            Box::new(move |r| {
                r.entry(0, frame.len() as u32, 2, &frame, 24);
            }),
        ),
    ];
    for (name, corrupt) in cases {
        let ring = hostile_ring();
        corrupt(&ring);
        assert_eq!(refusal(&ring), ErrorKind::Protocol, "{name}");
    }
}

#[test]
fn a_ring_that_is_not_a_sealed_memfd_of_the_stated_size_is_refused() {
    let _serial = serial();
    let check = |capacity: u32, flags: u32, file: OwnedFd| {
        let (endpoint, b) = raw_pair();
        send_raw(&b, &hello_with_ring(), &[]);
        send_raw(&b, &ring_frame(capacity, flags), &[file.as_raw_fd()]);
        drop(file);
        let error = endpoint
            .recv_timeout(Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(raw_sees_eof(&b));
        error.kind()
    };
    let unsealed = {
        let fd = nix::sys::memfd::memfd_create(
            "unsealed",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::ftruncate(&fd, 256 + 4096).unwrap();
        fd
    };
    assert_eq!(check(4096, 0, unsealed), ErrorKind::RegionUnsealed);
    assert_eq!(
        check(4096, 0, foreign_file(8192, b"")),
        ErrorKind::RegionSizeMismatch
    );
    assert_eq!(check(3000, 0, foreign_file(3256, b"")), ErrorKind::Protocol);
    assert_eq!(check(4096, 1, foreign_file(4352, b"")), ErrorKind::Protocol);
    assert_eq!(
        check(1 << 24, 0, foreign_file(256 + (1 << 24), b"")),
        ErrorKind::Protocol
    );
}

#[test]
fn rings_are_not_used_or_accepted_unless_both_offered() {
    let _serial = serial();
    // The endpoint offered none; the peer sends a RING anyway.
    let peer = hostile_pair(Limits::default(), false);
    send_raw(&peer.raw, &hello_with_ring(), &[]);
    let file = foreign_file(256 + 4096, b"");
    send_raw(&peer.raw, &ring_frame(4096, 0), &[file.as_raw_fd()]);
    let error = peer
        .endpoint
        .recv_timeout(Some(Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Protocol);
    // A WAKE before any RING.
    let peer = hostile_pair(Limits::default(), true);
    let mut wake = Vec::new();
    wire::put_header(&mut wake, wire::KIND_WAKE, 0, 0);
    send_raw(&peer.raw, &wake, &[]);
    let error = peer
        .endpoint
        .recv_timeout(Some(Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Protocol);
    drop(file);
}
