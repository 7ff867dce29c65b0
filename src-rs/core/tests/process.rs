//! Two real processes: this test binary re-runs itself as the child.
//!
//! `SHMLINK_LITMUS_ITERATIONS` sets the message-passing litmus test's length (the long
//! mode is 1000000; the default keeps `cargo test` quick).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::checksum;
use shmlink::{Attach, Endpoint, ListenOptions, Listener, Options, PeerFilter, Region};

const ROLE: &str = "SHMLINK_TEST_ROLE";
const SOCKET: &str = "SHMLINK_TEST_SOCKET";
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn main() {
    if !cfg!(target_os = "linux") {
        println!("skipped: these tests need Linux (memfd seals, SOCK_SEQPACKET)");
        return;
    }
    match std::env::var(ROLE).as_deref() {
        Ok("echo") => echo_child(&socket_from_env()),
        Ok("litmus") => litmus_reader(&socket_from_env()),
        Ok(other) => panic!("unknown role {other}"),
        Err(_) => {
            run(
                "a thousand messages with regions and checksums",
                thousand_messages,
            );
            run("message-passing litmus test", litmus);
            run("a child that dies mid-conversation", child_dies);
        }
    }
}

fn run(name: &str, test: fn()) {
    print!("test {name} ... ");
    test();
    println!("ok");
}

fn socket_from_env() -> PathBuf {
    PathBuf::from(std::env::var_os(SOCKET).expect("the parent sets the socket path"))
}

/// Starts this binary as a child in `role`, connected to a fresh listener.
fn spawn(role: &str) -> (Child, Endpoint) {
    let path = std::env::temp_dir().join(format!(
        "shmlink-process-{}-{role}.sock",
        std::process::id()
    ));
    let listener = Listener::bind(
        &path,
        ListenOptions {
            endpoint: Options::trusted(),
            ..ListenOptions::default()
        },
    )
    .unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(SOCKET, &path)
        .spawn()
        .unwrap();
    let endpoint = listener.accept_timeout(WAIT).unwrap();
    (child, endpoint)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The child's side of `thousand_messages`: checksum what arrives, stamp each region
/// with that checksum, and hand it back.
fn echo_child(path: &Path) {
    let endpoint = Endpoint::connect(path, &PeerFilter::SameUser, Options::trusted()).unwrap();
    loop {
        let message = match endpoint.recv_timeout(WAIT) {
            Ok(m) => m,
            Err(e) if e.kind() == shmlink::ErrorKind::PeerClosed => return,
            Err(e) => panic!("{e}"),
        };
        let mut sum = checksum(&message.payload);
        for incoming in &message.regions {
            let mut bytes = vec![0u8; incoming.region.size()];
            incoming.region.read(0, &mut bytes).unwrap();
            sum ^= checksum(&bytes);
        }
        for incoming in &message.regions {
            incoming.region.write(0, &sum.to_le_bytes()).unwrap();
        }
        let back: Vec<Attach> = message
            .regions
            .iter()
            .map(|r| Attach::transfer(&r.region))
            .collect();
        endpoint
            .send_blocking(&sum.to_le_bytes(), &back, WAIT)
            .unwrap();
    }
}

fn thousand_messages() {
    let (mut child, endpoint) = spawn("echo");
    let sizes = [4096, 64 * 1024, 1 << 20, 100, 3 * 4096 + 17];
    let mut pool: Vec<Region> = sizes.iter().map(|&s| Region::create(s).unwrap()).collect();
    for i in 0..1000u64 {
        if i % 100 == 99 {
            let slot = (i as usize / 100) % pool.len();
            endpoint.release(&pool[slot]);
            pool[slot] = Region::create(sizes[slot]).unwrap();
        }
        let attached = [
            &pool[i as usize % pool.len()],
            &pool[(i as usize + 2) % pool.len()],
        ];
        let payload = pattern(i, (i % 300) as usize);
        let mut expected = checksum(&payload);
        for (n, region) in attached.iter().enumerate() {
            let contents = pattern(i * 7 + n as u64, region.size());
            region.write(0, &contents).unwrap();
            expected ^= checksum(&contents);
        }
        let attach: Vec<Attach> = attached.iter().map(|r| Attach::transfer(r)).collect();
        endpoint.send_blocking(&payload, &attach, WAIT).unwrap();
        let reply = endpoint.recv_timeout(WAIT).unwrap();
        assert_eq!(
            reply.payload,
            expected.to_le_bytes(),
            "message {i}: checksums differ"
        );
        for (incoming, sent) in reply.regions.iter().zip(attached) {
            assert!(
                incoming.region.same_as(sent),
                "message {i}: a region came back as another object"
            );
            let mut stamp = [0u8; 8];
            sent.read(0, &mut stamp).unwrap();
            assert_eq!(
                u64::from_le_bytes(stamp),
                expected,
                "message {i}: the child's stamp is missing"
            );
        }
    }
    endpoint.close();
    assert!(child.wait().unwrap().success());
}

fn litmus_iterations() -> u64 {
    std::env::var("SHMLINK_LITMUS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn litmus_word(round: u64, index: usize) -> u64 {
    round.wrapping_mul(0x9e3779b97f4a7c15) ^ index as u64
}

/// The reader checks every word of the region for the writer's latest round, counts
/// stale words, and hands the region back.
fn litmus_reader(path: &Path) {
    let endpoint = Endpoint::connect(path, &PeerFilter::SameUser, Options::trusted()).unwrap();
    let mut stale = 0u64;
    let mut words = Vec::new();
    loop {
        let message = match endpoint.recv_timeout(WAIT) {
            Ok(m) => m,
            Err(e) if e.kind() == shmlink::ErrorKind::PeerClosed => break,
            Err(e) => panic!("{e}"),
        };
        let round = u64::from_le_bytes(message.payload[..8].try_into().unwrap());
        let region = &message.regions[0].region;
        words.resize(region.size(), 0u8);
        region.read(0, &mut words).unwrap();
        for (index, word) in words.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(word.try_into().unwrap()) != litmus_word(round, index) {
                stale += 1;
            }
        }
        endpoint
            .send_blocking(&stale.to_le_bytes(), &[Attach::transfer(region)], WAIT)
            .unwrap();
    }
}

fn litmus() {
    let iterations = litmus_iterations();
    let (mut child, endpoint) = spawn("litmus");
    let region = Region::create(16 * 1024).unwrap();
    let mut words = vec![0u8; region.size()];
    for round in 0..iterations {
        for (index, word) in words.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&litmus_word(round, index).to_le_bytes());
        }
        region.write(0, &words).unwrap();
        endpoint
            .send_blocking(&round.to_le_bytes(), &[Attach::transfer(&region)], WAIT)
            .unwrap();
        let reply = endpoint.recv_timeout(WAIT).unwrap();
        let stale = u64::from_le_bytes(reply.payload[..8].try_into().unwrap());
        assert_eq!(
            stale, 0,
            "round {round}: the reader saw {stale} stale words"
        );
    }
    endpoint.close();
    assert!(child.wait().unwrap().success());
    print!("({iterations} rounds, 0 stale words) ");
}

fn child_dies() {
    let (mut child, endpoint) = spawn("echo");
    let region = Region::create(4096).unwrap();
    endpoint
        .send_blocking(b"one", &[Attach::share(&region)], WAIT)
        .unwrap();
    endpoint.recv_timeout(WAIT).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let e = endpoint.recv_timeout(WAIT).unwrap_err();
    assert_eq!(e.kind(), shmlink::ErrorKind::PeerClosed);
    region.write(0, b"still mine").unwrap();
}
