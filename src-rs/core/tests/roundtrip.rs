//! Well-behaved conversations over a socketpair and over a listener.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use shmlink::{
    Attach, Endpoint, ErrorKind, Event, Interest, Limits, ListenOptions, Listener, Options,
    PeerFilter, Realm, Region, Settle, Submitted,
};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn payload_and_region_contents_arrive() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(1 << 20).unwrap();
    let pattern: Vec<u8> = (0..region.size()).map(|i| (i % 251) as u8).collect();
    region.write(0, &pattern).unwrap();
    a.send(b"hello", &[Attach::share(&region)]).unwrap();
    let m = b.recv_timeout(WAIT).unwrap();
    assert_eq!(m.payload, b"hello");
    assert_eq!(m.regions.len(), 1);
    assert!(!m.regions[0].transferred);
    assert_eq!(region_bytes(&m.regions[0].region), pattern);
}

#[test]
fn writes_after_the_handover_are_seen_by_both_sides() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(4096).unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    theirs.write(0, b"reply").unwrap();
    b.send(b"done", &[]).unwrap();
    a.recv_timeout(WAIT).unwrap();
    let mut buf = [0u8; 5];
    region.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"reply");
}

#[test]
fn a_region_sent_twice_passes_its_descriptor_once() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(4096).unwrap();
    a.send(b"1", &[Attach::share(&region)]).unwrap();
    let first = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    let after_first = fd_count();
    for _ in 0..100 {
        a.send(b"again", &[Attach::share(&region)]).unwrap();
        let again = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
        assert!(
            again.same_as(&first),
            "the receiver must resolve the id to the same region"
        );
    }
    assert_eq!(
        fd_count(),
        after_first,
        "a known region must not bring a new descriptor"
    );
}

#[test]
fn a_region_sent_back_is_the_senders_own_region_object() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let mine = Region::create(4096).unwrap();
    a.send(b"", &[Attach::transfer(&mine)]).unwrap();
    assert!(mine.is_transferred());
    assert_eq!(
        mine.write(0, b"x").unwrap_err().kind(),
        ErrorKind::RegionTransferred
    );
    assert_eq!(
        a.send(b"", &[Attach::share(&mine)]).unwrap_err().kind(),
        ErrorKind::RegionTransferred
    );
    let m = b.recv_timeout(WAIT).unwrap();
    assert!(m.regions[0].transferred);
    let theirs = &m.regions[0].region;
    theirs.write(0, b"edited").unwrap();
    b.send(b"back", &[Attach::transfer(theirs)]).unwrap();
    let returned = a.recv_timeout(WAIT).unwrap().regions.remove(0);
    assert!(returned.transferred);
    assert!(returned.region.same_as(&mine));
    assert!(!mine.is_transferred());
    let mut buf = [0u8; 6];
    mine.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"edited");
    // The second return trip passes no descriptor: both sides know each other's id now.
    let before = fd_count();
    a.send(b"", &[Attach::transfer(&mine)]).unwrap();
    let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    b.send(b"", &[Attach::transfer(&theirs)]).unwrap();
    assert!(
        a.recv_timeout(WAIT).unwrap().regions[0]
            .region
            .same_as(&mine)
    );
    assert_eq!(fd_count(), before);
}

#[test]
fn a_frozen_region_arrives_frozen_and_copy_on_write() {
    let _serial = serial();
    let (a, b) = separate_pair();
    let region = Region::create(4096).unwrap();
    region.write(0, b"constant").unwrap();
    region.freeze().unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    assert!(theirs.is_frozen());
    assert_eq!(
        theirs.write(0, b"x").unwrap_err().kind(),
        ErrorKind::RegionFrozen
    );
    assert!(theirs.as_mut_ptr().is_err());
    let stray = theirs.mapping().unwrap();
    // SAFETY: `stray` maps 4096 bytes of a copy-on-write mapping and lives for this block.
    unsafe { stray.as_ptr().write(b'X') };
    let mut buf = [0u8; 8];
    region.read(0, &mut buf).unwrap();
    assert_eq!(
        &buf, b"constant",
        "a stray write on the receiver must not reach the sender"
    );
}

#[test]
fn freezing_a_region_the_peer_maps_writable_is_refused() {
    let _serial = serial();
    let (a, b) = separate_pair();
    let region = Region::create(4096).unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    let _theirs = b.recv_timeout(WAIT).unwrap();
    assert_eq!(region.freeze().unwrap_err().kind(), ErrorKind::RegionBusy);
    region.write(0, b"still writable").unwrap();
}

#[test]
fn release_lets_the_peer_unmap_and_the_next_send_passes_the_descriptor_again() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(4096).unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    drop(b.recv_timeout(WAIT).unwrap());
    assert_eq!(b.stats().peer_regions, 1);
    assert_eq!(a.region_id(&region), Some(1));
    a.release(&region);
    assert_eq!(a.region_id(&region), None);
    a.send(b"after release", &[]).unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().payload, b"after release");
    assert_eq!(
        b.stats().peer_regions,
        0,
        "the receiver must drop a released region"
    );
    region.write(0, b"again").unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    assert_eq!(&region_bytes(&theirs)[..5], b"again");
}

#[test]
fn releasing_and_dropping_unmaps_on_both_sides_without_leaking() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    assert_no_fd_leak(|| {
        for _ in 0..200 {
            let region = Region::create(64 * 1024).unwrap();
            a.send(b"", &[Attach::share(&region)]).unwrap();
            drop(b.recv_timeout(WAIT).unwrap());
            a.release(&region);
        }
        a.send(b"sync", &[]).unwrap();
        b.recv_timeout(WAIT).unwrap();
        assert_eq!(a.stats().own_regions, 0);
        assert_eq!(b.stats().peer_regions, 0);
    });
}

#[test]
fn the_same_region_twice_in_one_message_passes_one_descriptor() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(4096).unwrap();
    a.send(b"", &[Attach::share(&region), Attach::share(&region)])
        .unwrap();
    let m = b.recv_timeout(WAIT).unwrap();
    assert!(m.regions[0].region.same_as(&m.regions[1].region));
}

#[test]
fn limits_are_enforced_before_sending() {
    let _serial = serial();
    let (a, b) = Endpoint::pair_with(Options {
        limits: Limits {
            max_regions: 2,
            max_payload: 100,
            ..Limits::default()
        },
        ..Options::trusted()
    })
    .unwrap();
    assert_eq!(
        a.send(&[0u8; 101], &[]).unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    let regions: Vec<Region> = (0..3).map(|_| Region::create(64).unwrap()).collect();
    let attach: Vec<Attach> = regions.iter().map(Attach::share).collect();
    assert_eq!(
        a.send(b"", &attach).unwrap_err().kind(),
        ErrorKind::TooManyRegions
    );
    a.send(&[7u8; 100], &attach[..2]).unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().payload.len(), 100);
}

#[test]
fn invalid_limits_are_refused() {
    let _serial = serial();
    for limits in [
        Limits {
            max_regions: 0,
            max_payload: 1,
            ..Limits::default()
        },
        Limits {
            max_regions: 1,
            max_payload: 1 << 20,
            ..Limits::default()
        },
        Limits {
            max_bound_regions: 0,
            ..Limits::default()
        },
    ] {
        let options = Options {
            limits,
            ..Options::trusted()
        };
        assert_eq!(
            Endpoint::pair_with(options).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}

#[test]
fn a_full_socket_queues_in_order_and_loses_nothing() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let payload = vec![1u8; 60_000];
    let numbered = |n: u32| {
        let mut bytes = payload.clone();
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        bytes
    };
    let mut sent = 0u32;
    while a.send(&numbered(sent), &[]).unwrap() == Submitted::Sent {
        sent += 1;
    }
    assert!(sent > 0);
    assert_eq!(
        a.send(&numbered(sent + 1), &[]).unwrap(),
        Submitted::Queued(2),
        "once one message waits, later ones queue behind it"
    );
    assert_eq!(a.stats().queued, 2);
    for expected in 0..sent {
        let m = b.recv_timeout(WAIT).unwrap();
        assert_eq!(
            u32::from_le_bytes(m.payload[..4].try_into().unwrap()),
            expected
        );
    }
    assert_eq!(b.try_recv().unwrap_err().kind(), ErrorKind::WouldBlock);
    assert!(a.flush().unwrap(), "the queue drains once there is room");
    for expected in [sent, sent + 1] {
        let m = b.recv_timeout(WAIT).unwrap();
        assert_eq!(
            u32::from_le_bytes(m.payload[..4].try_into().unwrap()),
            expected
        );
    }
}

/// Every notice [`Endpoint::settle`] gives before it says what to wait for, and that.
fn settle_all(endpoint: &Endpoint) -> (Vec<Event>, Interest, bool) {
    let mut notices = Vec::new();
    loop {
        match endpoint.settle() {
            Settle::Notice(event) => notices.push(event),
            Settle::Wait { interest, awaited } => return (notices, interest, awaited),
        }
    }
}

#[test]
fn settle_reports_each_notice_then_what_the_loop_waits_for() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    a.attach_driver();
    let payload = vec![1u8; 60_000];
    while a.send(&payload, &[]).unwrap() == Submitted::Sent {}
    let (notices, interest, awaited) = settle_all(&a);
    assert!(
        !notices.iter().any(|e| matches!(e, Event::Sent { .. })),
        "nothing left the queue yet: {notices:?}"
    );
    assert!(interest.writable && awaited, "a queued send waits for room");
    while b.try_recv().is_ok() {}
    a.on_ready(Interest::WRITABLE);
    let (notices, interest, awaited) = settle_all(&a);
    assert!(
        matches!(notices.as_slice(), [Event::Sent { through: 1 }]),
        "the queued send is reported once: {notices:?}"
    );
    assert!(
        !interest.writable && !awaited,
        "nothing left to send or await"
    );
    b.on_ready(Interest::READABLE);
    assert!(
        b.recv_or_want().unwrap().is_some(),
        "the message that waited in the queue"
    );
    assert!(b.recv_or_want().unwrap().is_none());
    let (_, interest, awaited) = settle_all(&b);
    assert!(
        interest.readable && awaited,
        "a wanted message keeps the loop waiting"
    );
}

#[test]
fn a_message_put_back_comes_next_and_turns_the_loop_for_a_waiting_receive() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    b.attach_driver();
    let timed_out = b.recv_timeout(Some(Duration::from_millis(1))).unwrap_err();
    assert_eq!(timed_out.kind(), ErrorKind::TimedOut);
    a.send(b"first", &[]).unwrap();
    let first = b.recv_timeout(WAIT).unwrap();
    b.put_back(first);
    let again = b.recv_timeout(Some(Duration::from_millis(100)));
    assert_eq!(
        again.map(|m| m.payload).ok(),
        Some(b"first".to_vec().into()),
        "a receive that waited before looks at the inbox first"
    );
    a.send(b"second", &[]).unwrap();
    assert!(b.recv_or_want().unwrap().is_some(), "the second message");
    assert!(b.recv_or_want().unwrap().is_none(), "a receive now waits");
    a.send(b"third", &[]).unwrap();
    let third = b.recv_timeout(WAIT).unwrap();
    b.put_back(third);
    let (_, interest, awaited) = settle_all(&b);
    assert!(
        interest.writable && awaited,
        "the waiting receive's message is in the inbox, not on the socket: the loop must turn"
    );
    b.on_ready(Interest::WRITABLE);
    let delivered = std::iter::from_fn(|| b.poll_event()).find_map(|event| match event {
        Event::Message(message) => Some(message),
        _ => None,
    });
    assert_eq!(delivered.map(|m| m.payload), Some(b"third".to_vec().into()));
    let (_, interest, _) = settle_all(&b);
    assert!(!interest.writable, "nothing left to turn the loop for");
}

#[test]
fn send_blocking_waits_for_room() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut total = 0;
        while total < 1000 {
            b.recv_timeout(WAIT).unwrap();
            total += 1;
        }
    });
    for _ in 0..1000 {
        a.send_blocking(&[0u8; 30_000], &[], WAIT).unwrap();
    }
    reader.join().unwrap();
}

#[test]
fn recv_timeout_times_out() {
    let _serial = serial();
    let (_a, b) = Endpoint::pair().unwrap();
    let e = b.recv_timeout(Some(Duration::from_millis(20))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
}

#[test]
fn close_is_seen_as_peer_closed_and_later_calls_fail_closed() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    a.send(b"last words", &[]).unwrap();
    a.close();
    assert_eq!(a.send(b"", &[]).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(a.try_recv().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(b.recv_timeout(WAIT).unwrap().payload, b"last words");
    assert_eq!(
        b.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    assert_eq!(b.try_recv().unwrap_err().kind(), ErrorKind::PeerClosed);
    assert_eq!(b.send(b"", &[]).unwrap_err().kind(), ErrorKind::PeerClosed);
}

#[test]
fn regions_stay_valid_after_the_connection_ends() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let region = Region::create(4096).unwrap();
    region.write(0, b"kept").unwrap();
    a.send(b"", &[Attach::share(&region)]).unwrap();
    let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
    drop(a);
    drop(region);
    assert_eq!(
        b.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    assert_eq!(&region_bytes(&theirs)[..4], b"kept");
}

fn listen_trusted(path: &std::path::Path) -> Listener {
    let options = ListenOptions {
        endpoint: Options::trusted(),
        ..ListenOptions::default()
    };
    Listener::bind(path, options).unwrap()
}

fn connect_trusted(path: &std::path::Path) -> Endpoint {
    Endpoint::connect(path, &PeerFilter::SameUser, Options::trusted()).unwrap()
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmlink-test-{}-{name}.sock", std::process::id()))
}

#[test]
fn listener_accepts_and_both_sides_converse() {
    let _serial = serial();
    let path = socket_path("converse");
    let listener = listen_trusted(&path);
    let client = connect_trusted(&path);
    let server = listener.accept_timeout(WAIT).unwrap();
    assert_eq!(
        client.handshake(WAIT).unwrap(),
        shmlink::wire::Announced::default()
    );
    let region = Region::create(8192).unwrap();
    region.write(100, b"via listener").unwrap();
    client.send(b"hi", &[Attach::share(&region)]).unwrap();
    let m = server.recv_timeout(WAIT).unwrap();
    assert_eq!(
        &region_bytes(&m.regions[0].region)[100..112],
        b"via listener"
    );
    let creds = server.peer_credentials().unwrap();
    assert_eq!(creds.pid, std::process::id() as i32);
    assert_eq!(creds.uid, nix::unistd::getuid().as_raw());
}

#[test]
fn listener_socket_file_is_private_and_removed_on_drop() {
    let _serial = serial();
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path("mode");
    let listener = listen_trusted(&path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(listener);
    assert!(!path.exists());
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_one_is_not() {
    let _serial = serial();
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
    use std::os::fd::AsRawFd;
    let path = socket_path("stale");
    // A socket file whose listener died without removing it, as after a crash.
    let dead = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(dead.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    drop(dead);
    let live = listen_trusted(&path);
    let e = Listener::bind(&path, ListenOptions::default()).unwrap_err();
    assert_eq!(e.errno(), Some(nix::errno::Errno::EADDRINUSE as i32), "{e}");
    // The refused bind probed the live listener with a connection that closed at once;
    // its server side ends cleanly before the real client is served.
    let probe = live.accept_timeout(WAIT).unwrap();
    assert_eq!(
        probe.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    let client = connect_trusted(&path);
    let server = live.accept_timeout(WAIT).unwrap();
    client.send(b"still served", &[]).unwrap();
    assert_eq!(server.recv_timeout(WAIT).unwrap().payload, b"still served");
}

#[test]
fn abstract_names_leave_no_file() {
    let _serial = serial();
    let name = format!("\0shmlink-test-{}", std::process::id());
    let listener = listen_trusted(std::path::Path::new(&name));
    let client = connect_trusted(std::path::Path::new(&name));
    let server = listener.accept_timeout(WAIT).unwrap();
    client.send(b"abstract", &[]).unwrap();
    assert_eq!(server.recv_timeout(WAIT).unwrap().payload, b"abstract");
}

#[test]
fn connect_to_nothing_fails_with_the_os_error() {
    let _serial = serial();
    let e = Endpoint::connect(
        socket_path("nobody"),
        &PeerFilter::SameUser,
        Options::untrusted(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Os);
    assert!(e.to_string().contains("ENOENT"), "{e}");
}

#[test]
fn from_fd_refuses_what_is_not_a_seqpacket_socket() {
    let _serial = serial();
    let region = Region::create(64).unwrap();
    let fd = region.file().unwrap().try_clone().unwrap();
    assert_eq!(
        Endpoint::from_fd(fd, Options::trusted())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        Endpoint::from_fd(s.into(), Options::trusted())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn an_endpoint_can_receive_on_one_thread_while_another_sends() {
    let _serial = serial();
    let (a, b) = Endpoint::pair().unwrap();
    let b = std::sync::Arc::new(b);
    let echo = {
        let b = std::sync::Arc::clone(&b);
        std::thread::spawn(move || {
            for _ in 0..500 {
                let m = b.recv_timeout(WAIT).unwrap();
                let attach: Vec<Attach> = m
                    .regions
                    .iter()
                    .map(|r| Attach::transfer(&r.region))
                    .collect();
                b.send_blocking(&m.payload, &attach, WAIT).unwrap();
            }
        })
    };
    let region = Region::create(4096).unwrap();
    for i in 0u32..500 {
        region.write(0, &i.to_le_bytes()).unwrap();
        a.send_blocking(&i.to_le_bytes(), &[Attach::transfer(&region)], WAIT)
            .unwrap();
        let m = a.recv_timeout(WAIT).unwrap();
        assert_eq!(m.payload, i.to_le_bytes());
        assert!(m.regions[0].region.same_as(&region));
    }
    echo.join().unwrap();
}

#[test]
fn send_produces_the_frame_documented_in_protocol_md() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let peer = hostile_pair(Limits::default(), true);
    let transferred = Region::create(4096).unwrap();
    let frozen = Region::create(65536).unwrap();
    frozen.freeze().unwrap();
    peer.endpoint
        .send(
            b"hello",
            &[Attach::transfer(&transferred), Attach::share(&frozen)],
        )
        .unwrap();
    let mut buf = [0u8; 128];
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let (len, fds) = {
        // The endpoint's own HELLO comes first.
        recvmsg::<()>(peer.raw.as_raw_fd(), &mut iov, None, MsgFlags::empty()).unwrap();
        let msg = recvmsg::<()>(
            peer.raw.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::empty(),
        )
        .unwrap();
        let fds: Vec<i32> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds,
                _ => Vec::new(),
            })
            .collect();
        (msg.bytes, fds)
    };
    let documented: [u8; 45] = [
        0x02, 0x00, 0x02, 0x00, 0x05, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
        0x00, //
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x00, //
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, b'h', b'e', b'l', b'l', b'o',
    ];
    assert_eq!(&buf[..len], &documented[..]);
    assert_eq!(fds.len(), 2);
    for fd in fds {
        // SAFETY: SCM_RIGHTS installed `fd` for this test alone; closing it once is sound.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
}

#[test]
fn regions_are_created_and_received_under_every_memfd_noexec_setting() {
    let _serial = serial();
    let setting = std::path::Path::new("/proc/sys/vm/memfd_noexec");
    let Ok(original) = std::fs::read_to_string(setting) else {
        eprintln!("skipped: this kernel has no vm.memfd_noexec (Linux < 6.3)");
        return;
    };
    if std::fs::write(setting, original.trim()).is_err() {
        eprintln!("skipped: vm.memfd_noexec can only be changed by root");
        return;
    }
    let outcome = std::panic::catch_unwind(|| {
        for value in ["0", "1", "2"] {
            std::fs::write(setting, value).unwrap();
            let (a, b) = Endpoint::pair().unwrap();
            let region = Region::create(4096).unwrap();
            region.write(0, value.as_bytes()).unwrap();
            a.send(b"", &[Attach::share(&region)]).unwrap();
            let theirs = b.recv_timeout(WAIT).unwrap().regions.remove(0).region;
            assert_eq!(
                &region_bytes(&theirs)[..1],
                value.as_bytes(),
                "vm.memfd_noexec={value}"
            );
        }
    });
    std::fs::write(setting, original.trim()).unwrap();
    outcome.unwrap();
}

/// The README's pattern, looped: a parent hands a new region to a child, the child hands it
/// back and lets go of it, the parent closes it. Nothing may pile up: the child's id for
/// the region it sent back must not keep it (its last handle is gone), so the child
/// releases it and the parent closes its descriptor, frame after frame.
#[test]
fn a_region_handed_back_and_let_go_of_is_released_frame_after_frame() {
    let _serial = serial();
    // Two realms: each end resolves regions as a process of its own would.
    let (parent_realm, child_realm) = (Realm::unique(), Realm::unique());
    let side = |realm| Options {
        realm,
        ..Options::trusted()
    };
    let (parent, fd) = Endpoint::pair_for_child(side(parent_realm)).unwrap();
    let child = Endpoint::from_fd(fd, side(child_realm)).unwrap();
    for transfer in [true, false] {
        assert_no_fd_leak(|| {
            for frame in 0..100u32 {
                let region = Region::create_in(64 * 1024, parent_realm).unwrap();
                region.write(0, &frame.to_le_bytes()).unwrap();
                let attach = |r| {
                    if transfer {
                        Attach::transfer(r)
                    } else {
                        Attach::share(r)
                    }
                };
                parent.send(b"frame", &[attach(&region)]).unwrap();
                let mut got = child.recv_timeout(WAIT).unwrap();
                let theirs = got.regions.remove(0).region;
                child.send(b"done", &[attach(&theirs)]).unwrap();
                drop((got, theirs));
                let back = parent.recv_timeout(WAIT).unwrap();
                assert!(back.regions[0].region.same_as(&region));
                drop(back);
                region.close();
                // The child takes the parent's RELEASE (which drops the region's last
                // handle there), and the parent the child's.
                parent.send(b"sync", &[]).unwrap();
                assert_eq!(child.recv_timeout(WAIT).unwrap().payload, b"sync");
                child.send(b"sync", &[]).unwrap();
                assert_eq!(parent.recv_timeout(WAIT).unwrap().payload, b"sync");
                let (p, c) = (parent.stats(), child.stats());
                assert_eq!(
                    (p.peer_regions, p.own_regions, c.peer_regions, c.own_regions),
                    (0, 0, 0, 0),
                    "frame {frame} (transfer: {transfer}): {p:?} {c:?}"
                );
            }
        });
    }
}
