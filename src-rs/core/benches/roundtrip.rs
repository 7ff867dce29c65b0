//! One round trip over a socketpair between two threads (each end its own realm, as two
//! processes would be): the other thread echoes each
//! message (with its regions). Measures the cost of attaching a region the peer knows
//! (only its id travels) against attaching none, and a new region each time (its
//! descriptor travels, the peer checks and maps it).
//!
//! `cargo bench -p shmlink --bench roundtrip`

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shmlink::{Attach, Endpoint, ErrorKind, Region};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn echo(endpoint: Endpoint) {
    loop {
        match endpoint.recv_timeout(None) {
            Ok(message) => {
                let attach: Vec<Attach> = message
                    .regions
                    .iter()
                    .map(|r| Attach::share(&r.region))
                    .collect();
                endpoint
                    .send_blocking(&message.payload, &attach, WAIT)
                    .expect("echo");
                for incoming in &message.regions {
                    if incoming.new {
                        endpoint.release(&incoming.region);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::PeerClosed => return,
            Err(e) => panic!("{e}"),
        }
    }
}

fn round_trips(c: &mut Criterion) {
    let (client, server) = Endpoint::pair().expect("pair");
    let echoer = std::thread::spawn(move || echo(server));
    let payload = [7u8; 16];
    let known = Region::create(4096).expect("region");
    client
        .send_blocking(&payload, &[Attach::share(&known)], WAIT)
        .expect("send");
    client.recv_timeout(WAIT).expect("recv");

    let mut group = c.benchmark_group("round trip, 16 B payload");
    // `fresh`: the regions are new each time, so release them after the round trip.
    let mut measure = |name: &str, fresh: bool, regions: &dyn Fn() -> Vec<Region>| {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let attached = regions();
                    let attach: Vec<Attach> = attached.iter().map(Attach::share).collect();
                    let start = Instant::now();
                    client.send_blocking(&payload, &attach, WAIT).expect("send");
                    client.recv_timeout(WAIT).expect("recv");
                    total += start.elapsed();
                    for region in attached.iter().filter(|_| fresh) {
                        client.release(region);
                    }
                }
                total
            })
        });
    };
    measure("no region", false, &Vec::new);
    measure("a region the peer knows", false, &|| vec![known.clone()]);
    measure("a new 4 KiB region each time", true, &|| {
        vec![Region::create(4096).expect("region")]
    });
    group.finish();
    drop(client);
    echoer.join().expect("echo thread");
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
