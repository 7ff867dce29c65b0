//! A server: answers each client with the text in the region it sent, in upper case.
//!
//! ```sh
//! cargo run -p shmlink --example server -- /tmp/upper.sock &
//! node examples/languages/node/client.js /tmp/upper.sock   # HELLO FROM NODE
//! ```

use shmlink::{Endpoint, ErrorKind, ListenOptions, Listener};

fn main() -> Result<(), shmlink::Error> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: server <socket-path>");
        std::process::exit(2);
    };
    let server = Listener::bind(path, ListenOptions::default())?; // this user (or root) only
    loop {
        let client = server.accept_timeout(None)?;
        std::thread::spawn(move || serve(client));
    }
}

fn serve(client: Endpoint) -> Result<(), shmlink::Error> {
    loop {
        let message = match client.recv_timeout(None) {
            Ok(message) => message, // frozen regions only: clients are not trusted
            Err(e) if e.kind() == ErrorKind::PeerClosed => return Ok(()),
            Err(e) => return Err(e),
        };
        let region = &message.regions[0].region;
        let mut text = vec![0u8; region.size()];
        region.read(0, &mut text)?; // a copy
        client.send_blocking(&text.to_ascii_uppercase(), &[], None)?;
    }
}
