//! A Rust child of a Node parent: started with `spawnWithEndpoint`, it adds 1 to the first
//! byte of each frame and hands the frame back.
//!
//! ```sh
//! cargo build -p shmlink --example child
//! node examples/languages/node/parent.js target/debug/examples/child   # done true 43
//! ```

use shmlink::{Attach, Endpoint, ErrorKind, Options};

fn main() -> Result<(), shmlink::Error> {
    let parent = Endpoint::inherited(Options::trusted())?; // the socket SHMLINK_FD names
    loop {
        let message = match parent.recv_timeout(None) {
            Ok(message) => message,
            Err(e) if e.kind() == ErrorKind::PeerClosed => return Ok(()), // the parent closed
            Err(e) => return Err(e),
        };
        let frame = &message.regions[0].region;
        let mut first = [0u8];
        frame.read(0, &mut first)?; // read and write copy; Region::mapping is zero-copy
        frame.write(0, &[first[0].wrapping_add(1)])?;
        parent.send_blocking(b"done", &[Attach::transfer(frame)], None)?;
    }
}
