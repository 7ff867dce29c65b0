//! A peer that breaks the protocol, one rule per test. Each test checks the error kind,
//! that the connection ends as `docs/PROTOCOL.md` §6 says (this side reports `Closed`
//! afterwards and the peer reads end-of-file), and that every descriptor the kernel
//! installed for the bad message was closed.
#![cfg(target_os = "linux")]

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use common::*;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use shmlink::Limits;
use shmlink::wire::{self, Descriptor, FLAG_FROZEN, FLAG_NEW};
use shmlink::{Endpoint, ErrorKind, Region};

/// Sends `frame` with `fds` from a hostile peer and returns what the endpoint's next
/// receive reports, after checking that no descriptor leaked and the connection is over.
fn expect_refusal(limits: Limits, setup: &[&[u8]], frame: &[u8], fds: &[RawFd]) -> ErrorKind {
    let peer = hostile_pair(limits, true);
    for earlier in setup {
        send_raw(&peer.raw, earlier, &[]);
    }
    for _ in setup {
        peer.endpoint.try_recv().unwrap();
    }
    let before = fd_count();
    send_raw(&peer.raw, frame, fds);
    let error = peer.endpoint.try_recv().unwrap_err();
    assert_eq!(
        fd_count(),
        before,
        "descriptors from the refused message leaked: {error}"
    );
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        peer.endpoint.send(b"", &[]).unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert!(
        raw_sees_eof(&peer.raw),
        "the peer must see end-of-file after a violation"
    );
    error.kind()
}

fn one_new(size: u64) -> Vec<u8> {
    message(
        &[Descriptor {
            id: 1,
            flags: FLAG_NEW,
            size,
        }],
        b"payload",
    )
}

fn memfd(size: i64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(
        c"hostile",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    nix::unistd::ftruncate(&fd, size).unwrap();
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

#[test]
fn a_memfd_without_seals_is_refused() {
    let _serial = serial();
    let fd = memfd(4096, SealFlag::empty());
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[fd.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionUnsealed);
}

#[test]
fn a_memfd_the_peer_could_still_shrink_is_refused() {
    let _serial = serial();
    let fd = memfd(4096, SealFlag::F_SEAL_GROW);
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[fd.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionUnsealed);
}

#[test]
fn a_frozen_flag_without_the_write_seal_is_refused() {
    let _serial = serial();
    let fd = memfd(4096, SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK);
    let frame = message(
        &[Descriptor {
            id: 1,
            flags: FLAG_NEW | FLAG_FROZEN,
            size: 4096,
        }],
        b"",
    );
    let kind = expect_refusal(Limits::default(), &[], &frame, &[fd.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionUnsealed);
}

#[test]
fn a_write_sealed_region_without_the_frozen_flag_is_refused() {
    let _serial = serial();
    let fd = memfd(
        4096,
        SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE,
    );
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[fd.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn a_pipe_is_refused() {
    let _serial = serial();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[r.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionNotMemfd);
}

#[test]
fn a_socket_is_refused() {
    let _serial = serial();
    let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[s.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionNotMemfd);
}

#[test]
fn a_regular_disk_file_is_refused() {
    let _serial = serial();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("hostile-{}.bin", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(4096).unwrap();
    std::fs::remove_file(&path).unwrap();
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[file.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionNotMemfd);
}

#[test]
fn a_tmpfs_file_that_was_never_sealed_is_refused() {
    let _serial = serial();
    let path =
        std::path::Path::new("/dev/shm").join(format!("shmlink-hostile-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(4096).unwrap();
    std::fs::remove_file(&path).unwrap();
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[file.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::RegionUnsealed);
}

#[test]
fn a_descriptor_size_larger_than_the_file_is_refused() {
    let _serial = serial();
    let (regions, _) = with_n_fds(1, 4096);
    let kind = expect_refusal(Limits::default(), &[], &one_new(8192), &raw_fds(&regions));
    assert_eq!(kind, ErrorKind::RegionSizeMismatch);
}

#[test]
fn a_descriptor_size_smaller_than_the_file_is_refused() {
    let _serial = serial();
    let (regions, _) = with_n_fds(1, 8192);
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &raw_fds(&regions));
    assert_eq!(kind, ErrorKind::RegionSizeMismatch);
}

#[test]
fn more_fds_than_new_descriptors_is_refused() {
    let _serial = serial();
    let (regions, descriptors) = with_n_fds(3, 4096);
    let frame = message(&descriptors[..2], b"");
    let kind = expect_refusal(Limits::default(), &[], &frame, &raw_fds(&regions));
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn fewer_fds_than_new_descriptors_is_refused() {
    let _serial = serial();
    let (regions, descriptors) = with_n_fds(3, 4096);
    let frame = message(&descriptors, b"");
    let kind = expect_refusal(Limits::default(), &[], &frame, &raw_fds(&regions[..2]));
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn fds_with_a_message_that_marks_none_new_are_refused() {
    let _serial = serial();
    let (regions, _) = with_n_fds(1, 4096);
    let kind = expect_refusal(
        Limits::default(),
        &[],
        &message(&[], b"x"),
        &raw_fds(&regions),
    );
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn more_fds_than_the_receiver_accepts_is_truncated_and_refused() {
    let _serial = serial();
    let (regions, descriptors) = with_n_fds(5, 4096);
    let limits = Limits {
        max_regions: 2,
        max_payload: 1024,
        ..Limits::default()
    };
    let kind = expect_refusal(limits, &[], &message(&descriptors, b""), &raw_fds(&regions));
    assert_eq!(kind, ErrorKind::FdsTruncated);
}

#[test]
fn more_descriptors_than_the_receiver_accepts_is_refused() {
    let _serial = serial();
    let limits = Limits {
        max_regions: 2,
        max_payload: 1024,
        ..Limits::default()
    };
    let descriptors: Vec<Descriptor> = (1..=3)
        .map(|id| Descriptor {
            id,
            flags: 0,
            size: 64,
        })
        .collect();
    let kind = expect_refusal(limits, &[], &message(&descriptors, b""), &[]);
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn a_payload_over_the_announced_limit_is_refused() {
    let _serial = serial();
    let limits = Limits {
        max_regions: 8,
        max_payload: 100,
        ..Limits::default()
    };
    let kind = expect_refusal(limits, &[], &message(&[], &[0u8; 101]), &[]);
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn a_record_longer_than_any_valid_frame_is_refused() {
    let _serial = serial();
    let limits = Limits {
        max_regions: 1,
        max_payload: 100,
        ..Limits::default()
    };
    let kind = expect_refusal(limits, &[], &message(&[], &[0u8; 4000]), &[]);
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn an_unknown_region_id_is_refused() {
    let _serial = serial();
    let frame = message(
        &[Descriptor {
            id: 42,
            flags: 0,
            size: 4096,
        }],
        b"",
    );
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame, &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn a_known_id_with_another_size_is_refused() {
    let _serial = serial();
    let (regions, descriptors) = with_n_fds(1, 4096);
    let peer = hostile_pair(Limits::default(), true);
    send_raw(&peer.raw, &message(&descriptors, b""), &raw_fds(&regions));
    peer.endpoint.try_recv().unwrap();
    send_raw(
        &peer.raw,
        &message(
            &[Descriptor {
                id: 1,
                flags: 0,
                size: 8192,
            }],
            b"",
        ),
        &[],
    );
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::Protocol
    );
    assert!(raw_sees_eof(&peer.raw));
}

#[test]
fn a_new_descriptor_for_a_bound_id_is_refused() {
    let _serial = serial();
    let (regions, descriptors) = with_n_fds(2, 4096);
    let peer = hostile_pair(Limits::default(), true);
    send_raw(
        &peer.raw,
        &message(&descriptors[..1], b""),
        &raw_fds(&regions[..1]),
    );
    peer.endpoint.try_recv().unwrap();
    let before = fd_count();
    send_raw(
        &peer.raw,
        &message(&descriptors[..1], b""),
        &raw_fds(&regions[1..]),
    );
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::Protocol
    );
    assert!(
        fd_count() < before,
        "the bound region and the refused descriptor must both be closed"
    );
}

#[test]
fn a_release_of_an_unbound_id_is_refused() {
    let _serial = serial();
    let mut frame = Vec::new();
    wire::put_header(&mut frame, wire::KIND_RELEASE, 1, 0);
    wire::put_descriptor(
        &mut frame,
        Descriptor {
            id: 9,
            flags: 0,
            size: 64,
        },
    );
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame, &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn a_truncated_header_is_refused() {
    let _serial = serial();
    let frame = message(&[], b"");
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame[..5], &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn a_payload_length_that_lies_is_refused() {
    let _serial = serial();
    let mut frame = message(&[], b"twelve bytes");
    frame[4] = 200;
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame, &[]),
        ErrorKind::Protocol
    );
    let mut frame = message(&[], b"twelve bytes");
    frame[4] = 3;
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame, &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn an_unknown_frame_kind_is_refused() {
    let _serial = serial();
    let mut frame = message(&[], b"");
    frame[0] = 77;
    assert_eq!(
        expect_refusal(Limits::default(), &[], &frame, &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn a_second_hello_is_refused() {
    let _serial = serial();
    let hello = wire::hello_frame(wire::Announced::default());
    assert_eq!(
        expect_refusal(Limits::default(), &[], &hello, &[]),
        ErrorKind::Protocol
    );
}

fn expect_handshake_refusal(first: &[u8], fds: &[RawFd]) -> ErrorKind {
    let peer = hostile_pair(Limits::default(), false);
    let before = fd_count();
    send_raw(&peer.raw, first, fds);
    let error = peer.endpoint.try_recv().unwrap_err();
    assert_eq!(fd_count(), before, "{error}");
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert!(raw_sees_eof(&peer.raw));
    error.kind()
}

#[test]
fn a_wrong_magic_is_incompatible() {
    let _serial = serial();
    let mut hello = wire::hello_frame(wire::Announced::default());
    hello[8..16].copy_from_slice(b"NOTSHMLK");
    assert_eq!(
        expect_handshake_refusal(&hello, &[]),
        ErrorKind::Incompatible
    );
}

/// A HELLO as a version-1 peer sends it (PROTOCOL.md §3.5): 16 payload bytes.
const V1_HELLO: [u8; 24] = [
    0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, b'S', b'H', b'M', b'L', b'I', b'N', b'K', 0x00,
    0x01, 0x00, 0x20, 0x00, 0x00, 0x00, 0x01, 0x00,
];

#[test]
fn a_version_1_peer_is_incompatible_and_the_message_says_to_upgrade_it() {
    let _serial = serial();
    let peer = hostile_pair(Limits::default(), false);
    send_raw(&peer.raw, &V1_HELLO, &[]);
    let error = peer.endpoint.try_recv().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Incompatible);
    let text = error.to_string();
    assert!(
        text.contains("version 1") && text.contains("upgrade the peer"),
        "{text}"
    );
    assert!(raw_sees_eof(&peer.raw));
}

#[test]
fn a_later_protocol_version_is_incompatible() {
    let _serial = serial();
    let mut hello = wire::hello_frame(wire::Announced::default());
    hello[16] = 3;
    assert_eq!(
        expect_handshake_refusal(&hello, &[]),
        ErrorKind::Incompatible
    );
}

#[test]
fn a_message_before_the_hello_is_refused() {
    let _serial = serial();
    assert_eq!(
        expect_handshake_refusal(&message(&[], b"early"), &[]),
        ErrorKind::Protocol
    );
}

#[test]
fn descriptors_with_the_hello_are_refused() {
    let _serial = serial();
    let (regions, _) = with_n_fds(1, 4096);
    let hello = wire::hello_frame(wire::Announced::default());
    assert_eq!(
        expect_handshake_refusal(&hello, &raw_fds(&regions)),
        ErrorKind::Protocol
    );
}

#[test]
fn a_send_before_an_incompatible_hello_fails_incompatible() {
    let _serial = serial();
    let peer = hostile_pair(Limits::default(), false);
    let mut hello = wire::hello_frame(wire::Announced::default());
    hello[16] = 9;
    send_raw(&peer.raw, &hello, &[]);
    assert_eq!(
        peer.endpoint.send(b"x", &[]).unwrap_err().kind(),
        ErrorKind::Incompatible
    );
}

#[test]
fn end_of_file_in_the_middle_of_a_conversation_is_peer_closed() {
    let _serial = serial();
    let regions = [foreign_file(4096, b"before eof")];
    let descriptors = with_n_fds(1, 4096).1;
    let peer = hostile_pair(Limits::default(), true);
    send_raw(
        &peer.raw,
        &message(&descriptors, b"one"),
        &raw_fds(&regions),
    );
    let received = peer.endpoint.try_recv().unwrap();
    drop(peer.raw);
    let before = fd_count();
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    assert_eq!(
        peer.endpoint.send(b"", &[]).unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
    assert_eq!(
        fd_count(),
        before,
        "the received region is still held by the message"
    );
    assert_eq!(
        &region_bytes(&received.regions[0].region)[..10],
        b"before eof"
    );
    drop(received);
    assert_eq!(
        fd_count(),
        before - 1,
        "the connection's tables must have let the region go"
    );
}

#[test]
fn a_peer_cannot_shrink_a_region_it_sent() {
    let _serial = serial();
    let region = Region::create(4096).unwrap();
    let e = nix::unistd::ftruncate(region.file().unwrap(), 0).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EPERM);
    let e = nix::unistd::ftruncate(region.file().unwrap(), 8192).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EPERM);
}

#[test]
fn an_endpoint_survives_a_million_bytes_of_garbage_records_without_leaking() {
    let _serial = serial();
    assert_no_fd_leak(|| {
        let mut state = 0x2545f4914f6cdd1du64;
        for _ in 0..2000 {
            let peer = hostile_pair(Limits::default(), true);
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state % 600) as usize;
            let record: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
            send_raw(&peer.raw, &record, &[]);
            match peer.endpoint.try_recv() {
                Ok(_) => {}
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::Protocol | ErrorKind::Incompatible),
                    "{e}"
                ),
            }
        }
    });
}

#[test]
fn hostile_endpoints_are_send_and_sync() {
    let _serial = serial();
    fn assert_bounds<T: Send + Sync>() {}
    assert_bounds::<Endpoint>();
    assert_bounds::<Region>();
}

#[test]
fn a_region_that_refuses_new_writable_mappings_is_refused_unless_frozen() {
    let _serial = serial();
    let fd = memfd(
        4096,
        SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_FUTURE_WRITE,
    );
    let kind = expect_refusal(Limits::default(), &[], &one_new(4096), &[fd.as_raw_fd()]);
    assert_eq!(kind, ErrorKind::Protocol);
}

#[test]
fn what_a_peer_sent_before_closing_unread_arrives_before_end_of_file() {
    let _serial = serial();
    let peer = hostile_pair(Limits::default(), true);
    send_raw(&peer.raw, &message(&[], b"parting words"), &[]);
    // The raw side never read the endpoint's HELLO: closing it makes Linux report
    // ECONNRESET once, ahead of the record still queued.
    drop(peer.raw);
    assert_eq!(peer.endpoint.try_recv().unwrap().payload, b"parting words");
    assert_eq!(
        peer.endpoint.try_recv().unwrap_err().kind(),
        ErrorKind::PeerClosed
    );
}
