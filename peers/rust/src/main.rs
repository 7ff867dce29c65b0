//! The Rust interop peer: the roles of `peers/SCENARIO.md`, on the `shmlink` core crate.

use std::collections::HashMap;
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shmlink::{Attach, Endpoint, ErrorKind, Message, Region};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

type Outcome = Result<(), String>;

/// With `listen` first, the peer binds the socket path and accepts one connection instead
/// of connecting: a counterpart for developing the other peers without Node.
static LISTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("listen") {
        args.remove(0);
        LISTEN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["driver", socket, scenario, transcript] => driver(socket, scenario, transcript),
        ["responder", socket, transcript] => responder(socket, transcript),
        ["echo", socket] => echo(socket),
        ["hostile", socket, cases, name] => hostile(socket, cases, name),
        ["expect-hostile", socket, cases, name] => expect_hostile(socket, cases, name),
        _ => Err("usage: shmlink-peer [listen] driver|responder|echo|hostile|expect-hostile <socket> ... \
                  (peers/SCENARIO.md)"
            .into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("shmlink-peer: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(arg: &str) -> PathBuf {
    match arg.strip_prefix('@') {
        Some(name) => PathBuf::from(format!("\0{name}")),
        None => PathBuf::from(arg),
    }
}

/// The scenario shares writable regions between peers the test started; with
/// `SHMLINK_PEER_RING=1` this peer offers rings (peers/SCENARIO.md).
fn options() -> shmlink::Options {
    shmlink::Options {
        ring: std::env::var("SHMLINK_PEER_RING").as_deref() == Ok("1"),
        ..shmlink::Options::trusted()
    }
}

fn connect(socket: &str) -> Result<Endpoint, String> {
    if LISTEN.load(std::sync::atomic::Ordering::Relaxed) {
        let options = shmlink::ListenOptions {
            endpoint: options(),
            ..shmlink::ListenOptions::default()
        };
        let listener =
            shmlink::Listener::bind(socket_path(socket), options).map_err(|e| e.to_string())?;
        return listener.accept_timeout(WAIT).map_err(|e| e.to_string());
    }
    Endpoint::connect(
        socket_path(socket),
        &shmlink::PeerFilter::SameUser,
        options(),
    )
    .map_err(|e| e.to_string())
}

/// The receiving side of a hostile case: the first receive must fail with the case's code.
fn expect_hostile(socket: &str, cases_path: &str, name: &str) -> Outcome {
    let text = std::fs::read_to_string(cases_path).map_err(|e| format!("{cases_path}: {e}"))?;
    let cases: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let case = cases["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .ok_or_else(|| format!("no case {name}"))?;
    let endpoint = connect(socket)?;
    let refusal = match endpoint.recv_timeout(WAIT) {
        Ok(_) => return Err("a hostile frame was accepted".into()),
        Err(e) => e,
    };
    let code = refusal.kind().code();
    if case["expect"].as_str() != Some(code) {
        return Err(format!(
            "refused with {code} ({refusal}), expected {}",
            case["expect"]
        ));
    }
    Ok(())
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let base = (seed % 256) * 131;
    (0..len)
        .map(|k| ((base + (k as u64 % 4096) * 7 + (k as u64 / 4096) * 13) % 256) as u8)
        .collect()
}

fn contents(region: &Region) -> Vec<u8> {
    let mut bytes = vec![0u8; region.size()];
    region
        .read(0, &mut bytes)
        .expect("a received region is readable");
    bytes
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records received messages as SCENARIO.md's transcript lines.
struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    fn record(&mut self, message: &Message) -> Vec<[u8; 32]> {
        let mut digests = vec![sha256(&message.payload)];
        let mut regions = Vec::new();
        for incoming in &message.regions {
            let digest = sha256(&contents(&incoming.region));
            digests.push(digest);
            regions.push(json!({
                "id": incoming.id,
                "size": incoming.region.size(),
                "new": incoming.new,
                "frozen": incoming.region.is_frozen(),
                "transferred": incoming.transferred,
                "sha256": hex(&digest),
            }));
        }
        self.lines.push(
            json!({
                "n": self.lines.len(),
                "payload_len": message.payload.len(),
                "payload_sha256": hex(&digests[0]),
                "regions": regions,
            })
            .to_string(),
        );
        digests
    }

    fn save(&self, path: &str) -> Outcome {
        let mut file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
        for line in &self.lines {
            writeln!(file, "{line}").map_err(|e| format!("{path}: {e}"))?;
        }
        Ok(())
    }
}

fn driver(socket: &str, scenario: &str, transcript_path: &str) -> Outcome {
    let text = std::fs::read_to_string(scenario).map_err(|e| format!("{scenario}: {e}"))?;
    let scenario: Value = serde_json::from_str(&text).map_err(|e| format!("{scenario}: {e}"))?;
    let steps = scenario["steps"]
        .as_array()
        .ok_or("the scenario has no steps")?;
    let endpoint = connect(socket)?;
    let mut regions: HashMap<String, Region> = HashMap::new();
    let mut transcript = Transcript { lines: Vec::new() };
    for (index, step) in steps.iter().enumerate() {
        let fail = |what: String| format!("step {index}: {what}");
        match step["op"].as_str() {
            Some("release") => {
                let name = step["name"]
                    .as_str()
                    .ok_or_else(|| fail("no name".into()))?;
                let region = regions
                    .remove(name)
                    .ok_or_else(|| fail(format!("no region {name}")))?;
                endpoint.release(&region);
            }
            Some("send") => {
                let payload = pattern(
                    step["payload"]["seed"].as_u64().unwrap_or(0),
                    step["payload"]["len"].as_u64().unwrap_or(0) as usize,
                );
                let specs = step["regions"].as_array().cloned().unwrap_or_default();
                let mut attached: Vec<(Region, bool)> = Vec::new();
                for spec in &specs {
                    let name = spec["name"].as_str().unwrap_or_default().to_string();
                    let size = spec["size"].as_u64().unwrap_or(0) as usize;
                    if !regions.contains_key(&name) {
                        regions.insert(
                            name.clone(),
                            Region::create(size).map_err(|e| fail(e.to_string()))?,
                        );
                    }
                    let region = regions[&name].clone();
                    if let Some(seed) = spec["seed"].as_u64() {
                        region
                            .write(0, &pattern(seed, size))
                            .map_err(|e| fail(e.to_string()))?;
                    }
                    if spec["freeze"].as_bool() == Some(true) {
                        region.freeze().map_err(|e| fail(e.to_string()))?;
                    }
                    attached.push((region, spec["transfer"].as_bool() == Some(true)));
                }
                let mut expected = vec![sha256(&payload)];
                expected.extend(attached.iter().map(|(r, _)| sha256(&contents(r))));
                let attach: Vec<Attach> = attached
                    .iter()
                    .map(|(r, transfer)| Attach {
                        region: r,
                        transfer: *transfer,
                    })
                    .collect();
                endpoint
                    .send_blocking(&payload, &attach, WAIT)
                    .map_err(|e| fail(e.to_string()))?;
                let ack = endpoint
                    .recv_timeout(WAIT)
                    .map_err(|e| fail(e.to_string()))?;
                transcript.record(&ack);
                if ack.payload != expected.concat() {
                    return Err(fail(
                        "the responder's digests differ from what was sent".into(),
                    ));
                }
                let returned: Vec<&Region> = attached
                    .iter()
                    .filter(|(_, t)| *t)
                    .map(|(r, _)| r)
                    .collect();
                if ack.regions.len() != returned.len()
                    || ack
                        .regions
                        .iter()
                        .zip(&returned)
                        .any(|(i, r)| !i.region.same_as(r))
                {
                    return Err(fail(
                        "the ack did not bring back the transferred regions".into(),
                    ));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    endpoint.close();
    transcript.save(transcript_path)
}

fn responder(socket: &str, transcript_path: &str) -> Outcome {
    let endpoint = connect(socket)?;
    let mut transcript = Transcript { lines: Vec::new() };
    loop {
        let message = match endpoint.recv_timeout(WAIT) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::PeerClosed => break,
            Err(e) => return Err(e.to_string()),
        };
        let digests = transcript.record(&message);
        let back: Vec<&Region> = message
            .regions
            .iter()
            .filter(|i| i.transferred)
            .map(|i| &i.region)
            .collect();
        for (incoming, digest) in message.regions.iter().zip(&digests[1..]) {
            if incoming.transferred && !incoming.region.is_frozen() {
                let stamp = &digest[..digest.len().min(incoming.region.size())];
                incoming.region.write(0, stamp).map_err(|e| e.to_string())?;
            }
        }
        let attach: Vec<Attach> = back.iter().map(|r| Attach::transfer(r)).collect();
        endpoint
            .send_blocking(&digests.concat(), &attach, WAIT)
            .map_err(|e| e.to_string())?;
    }
    transcript.save(transcript_path)
}

fn echo(socket: &str) -> Outcome {
    let endpoint = connect(socket)?;
    let mut byte = [0u8; 1];
    loop {
        let message = match endpoint.recv_timeout(WAIT) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::PeerClosed => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        for incoming in &message.regions {
            for page in (0..incoming.region.size()).step_by(4096) {
                incoming
                    .region
                    .read(page, &mut byte)
                    .map_err(|e| e.to_string())?;
            }
        }
        let attach: Vec<Attach> = message
            .regions
            .iter()
            .map(|i| Attach::share(&i.region))
            .collect();
        endpoint
            .send_blocking(&message.payload, &attach, WAIT)
            .map_err(|e| e.to_string())?;
    }
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16).map_err(|e| e.to_string())
        })
        .collect()
}

fn hostile(socket: &str, cases_path: &str, name: &str) -> Outcome {
    use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
    let text = std::fs::read_to_string(cases_path).map_err(|e| format!("{cases_path}: {e}"))?;
    let cases: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let case = cases["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .ok_or_else(|| format!("no case {name}"))?;
    let new_socket = || {
        nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())
    };
    let path = socket_path(socket);
    let addr = match path.as_os_str().as_encoded_bytes().split_first() {
        Some((0, abstract_name)) => UnixAddr::new_abstract(abstract_name),
        _ => UnixAddr::new(&path),
    }
    .map_err(|e| e.to_string())?;
    let sock = if LISTEN.load(std::sync::atomic::Ordering::Relaxed) {
        use std::os::fd::FromRawFd;
        let listener = new_socket()?;
        nix::sys::socket::bind(listener.as_raw_fd(), &addr).map_err(|e| format!("bind: {e}"))?;
        nix::sys::socket::listen(
            &listener,
            nix::sys::socket::Backlog::new(1).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("listen: {e}"))?;
        let raw =
            nix::sys::socket::accept(listener.as_raw_fd()).map_err(|e| format!("accept: {e}"))?;
        if !path.as_os_str().as_encoded_bytes().starts_with(&[0]) {
            let _ = std::fs::remove_file(&path);
        }
        // SAFETY: accept returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(raw) }
    } else {
        let sock = new_socket()?;
        nix::sys::socket::connect(sock.as_raw_fd(), &addr).map_err(|e| format!("connect: {e}"))?;
        sock
    };
    let send = |bytes: &[u8], fds: &[i32]| -> Outcome {
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        nix::sys::socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(|e| format!("sendmsg: {e}"))
    };
    match case["hello"].as_str().unwrap_or("valid") {
        "none" => {}
        "valid" => send(
            &shmlink::wire::hello_frame(shmlink::wire::Announced::default()),
            &[],
        )?,
        custom => send(&unhex(custom)?, &[])?,
    }
    let mut keep: Vec<OwnedFd> = Vec::new();
    for spec in case["fds"].as_array().cloned().unwrap_or_default() {
        keep.push(hostile_fd(&spec)?);
    }
    let mut frame = unhex(case["frame"].as_str().unwrap_or(""))?;
    if frame.is_empty() {
        // Half-close and drain, so the other side reads our HELLO (if any) before its
        // end-of-file instead of a reset.
        nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        return wait_for_eof(&sock);
    }
    frame.resize(frame.len() + case["pad"].as_u64().unwrap_or(0) as usize, 0);
    let raw: Vec<i32> = keep.iter().map(|fd| fd.as_raw_fd()).collect();
    send(&frame, &raw)?;
    wait_for_eof(&sock)
}

fn hostile_fd(spec: &Value) -> Result<OwnedFd, String> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let size = spec["size"].as_u64().unwrap_or(0) as i64;
    match spec["type"].as_str() {
        Some("memfd") => {
            let fd = memfd_create(
                c"hostile",
                MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
            )
            .map_err(|e| e.to_string())?;
            nix::unistd::ftruncate(&fd, size).map_err(|e| e.to_string())?;
            let mut seals = SealFlag::empty();
            for seal in spec["seals"].as_array().cloned().unwrap_or_default() {
                seals |= match seal.as_str() {
                    Some("shrink") => SealFlag::F_SEAL_SHRINK,
                    Some("grow") => SealFlag::F_SEAL_GROW,
                    Some("write") => SealFlag::F_SEAL_WRITE,
                    Some("seal") => SealFlag::F_SEAL_SEAL,
                    other => return Err(format!("unknown seal {other:?}")),
                };
            }
            if !seals.is_empty() {
                fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| e.to_string())?;
            }
            Ok(fd)
        }
        Some("pipe") => {
            let (read, write) = nix::unistd::pipe().map_err(|e| e.to_string())?;
            std::mem::forget(write);
            Ok(read)
        }
        Some("socket") => {
            let (one, other) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
            std::mem::forget(other);
            Ok(one.into())
        }
        Some("file") => {
            let dir = std::env::var_os("SHMLINK_PEER_TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!("shmlink-hostile-{}", std::process::id()));
            let file =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            file.set_len(size as u64).map_err(|e| e.to_string())?;
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
            Ok(file.into())
        }
        other => Err(format!("unknown descriptor type {other:?}")),
    }
}

fn wait_for_eof(sock: &OwnedFd) -> Outcome {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 70_000];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left).map_err(|e| e.to_string())?;
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout).map_err(|e| e.to_string())? == 0 {
            return Err("the other side did not close the connection".into());
        }
        match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(0) | Err(nix::errno::Errno::ECONNRESET) => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}
