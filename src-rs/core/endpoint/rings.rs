//! The endpoint's side of rings (`docs/PROTOCOL.md` §9): it holds this side's ring and
//! the peer's, moves frames through them, and waits on them. What a frame means and when
//! its turn comes in the one ordered stream is the session's to decide; this moves bytes
//! and waits, as the rest of the endpoint does for the socket.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{Arrival, Conn, Deadline, Endpoint, RawFrame, Received, Source, in_slices};
use crate::bytes::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{self, Consumer, LOOP, Mapped, Placement, Producer, Spin};
use crate::session::{Control, Held, Inbound};
use crate::socket::Socket;
use crate::sys::{self, Interest, Io};
use crate::wire;

/// The longest a receive spins on the ring without looking at the socket and its caller:
/// below the 25 ms a parked thread waits between looks (`docs/PROTOCOL.md` §9.5).
const SPIN_SLICE: Duration = Duration::from_millis(10);

/// The WAKE frame (§9.5).
const WAKE: [u8; wire::HEADER_LEN] = [wire::KIND_WAKE, 0, 0, 0, 0, 0, 0, 0];
/// How long one turn of an event loop may busy-poll in all, however many messages keep
/// arriving, before it lets the loop run its other work.
const MAX_TURN_BUSY: Duration = Duration::from_millis(1);

/// The rings of one connection.
#[derive(Debug)]
pub(super) struct Rings {
    /// This side's ring, once created (it is used once its RING has left).
    out: Option<Producer<Arc<Mapped>>>,
    /// Its memory file, until the RING frame has carried it to the peer.
    file: Option<OwnedFd>,
    /// The peer's ring, once its RING arrived.
    inbound: Option<Consumer<Arc<Mapped>>>,
    /// The frame of the entry peeked last, copied out of shared memory.
    entry: Vec<u8>,
    /// A socket frame read before the ring entries that come first (§9.4).
    held: Option<Held>,
    /// The peer's end-of-file arrived; it is the last thing, after what the ring holds.
    eof: bool,
    /// Data was found while the event loop was about to sleep: it must turn once more.
    kick: bool,
    /// WAKE records this side has sent.
    wakes_out: u64,
    /// This side woke the peer from sleep (futex or WAKE) since its own last wait, so the
    /// reply comes late whatever the spin does ([`Spin::record`]).
    woke_peer: bool,
    spin: Spin,
    /// When the event loop's current turn began.
    turn: Instant,
}

/// A socket record as received, before it is judged.
enum Raw {
    Empty,
    Eof,
    Wake,
    Frame(RawFrame),
}

impl Rings {
    pub(super) fn new(busy_poll: Duration) -> Rings {
        Rings {
            out: None,
            file: None,
            inbound: None,
            entry: Vec::new(),
            held: None,
            eof: false,
            kick: false,
            wakes_out: 0,
            woke_peer: false,
            spin: Spin::new(busy_poll),
            turn: Instant::now(),
        }
    }

    /// The frame of the ring entry peeked last.
    pub(super) fn entry_bytes(&self) -> &[u8] {
        &self.entry
    }

    /// Whether the event loop must turn once more although nothing is ready.
    pub(super) fn kick(&self) -> bool {
        self.kick
    }

    /// The peer's ring arrived.
    pub(super) fn arrived(&mut self, consumer: Consumer<Arc<Mapped>>) {
        self.inbound = Some(consumer);
    }

    /// Puts a frame in this side's ring when `active` and it fits, and rings WAKE if the
    /// peer's event loop waits; false when the frame must take the socket.
    pub(super) fn push(
        &mut self,
        active: bool,
        parts: &[Bytes<'_>],
        socket: &Socket,
    ) -> Result<bool> {
        let Some(producer) = self.out.as_mut().filter(|_| active) else {
            return Ok(false);
        };
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len > producer.max_frame() || !producer.push(parts)? {
            return Ok(false);
        }
        let waiting = producer.wake();
        self.woke_peer |= waiting != 0;
        if waiting & LOOP != 0
            && let Some(fd) = socket.borrow()
        {
            // A full socket means the peer has records to read, so its loop wakes anyway;
            // a peer that is gone is reported by the next receive.
            let _ = sys::send_record(fd, &[Bytes::from(&WAKE)], &[]);
            self.wakes_out += 1;
        }
        Ok(true)
    }

    /// WAKE records this side has sent (each costs both sides a system call).
    pub(super) fn wakes_out(&self) -> u64 {
        self.wakes_out
    }

    /// A MESSAGE or RELEASE of this direction left on the socket: the next entry counts
    /// it, and a consumer parked on the ring's futex is woken to look at the socket (an
    /// event loop wakes for the record itself).
    pub(super) fn sent_on_socket(&mut self, active: bool) {
        if let Some(producer) = self.out.as_mut().filter(|_| active) {
            producer.sent_on_socket();
            self.woke_peer |= producer.wake_parked();
        }
    }

    /// Before waiting for the peer's next entry: says which CPU this side waits on, and
    /// returns how long to spin (the peer's own word says where it waits) and whether this
    /// side woke the peer since its last wait (for [`Spin::record`]).
    fn spin_plan(&mut self) -> (Duration, bool) {
        let here = sys::current_cpu();
        if let Some(consumer) = &self.inbound {
            consumer.publish_cpu(here);
        }
        let peer = self.out.as_ref().and_then(Producer::consumer_cpu);
        let placement = match (here, peer) {
            (Some(here), Some(peer)) if here == peer => Placement::SameCpu,
            (Some(_), Some(_)) => Placement::OtherCpus,
            _ => Placement::Unknown,
        };
        (
            self.spin.budget(placement),
            std::mem::take(&mut self.woke_peer),
        )
    }

    /// The connection ended (its socket is shut down): a consumer of the peer's parked on
    /// this side's ring, and a thread of this side parked on the peer's, wake and find it.
    pub(super) fn end(&mut self) {
        if let Some(producer) = self.out.take() {
            producer.wake();
        }
        if let Some(consumer) = self.inbound.take() {
            consumer.waiter().unpark();
        }
        self.file = None;
        self.held = None;
        self.eof = false;
        self.kick = false;
    }
}

impl Conn {
    /// The HELLOs agreed on rings: this side makes its own, and its RING goes out next. A
    /// ring that cannot be made (no memory, no descriptors) leaves this direction on the
    /// socket, which the protocol allows.
    pub(super) fn rings_after_handshake(&mut self) {
        if !self.session.rings_agreed() || self.rings.out.is_some() {
            return;
        }
        if let Ok((mapped, file)) = Mapped::create(ring::CAPACITY) {
            self.rings.out = Some(Producer::new(Arc::new(mapped), ring::CAPACITY));
            self.rings.file = Some(file);
            self.session.ring_created(ring::CAPACITY);
        }
    }

    /// Sends a control frame of the session: RING with its memory file; RELEASE through
    /// the ring when it can.
    pub(super) fn put_control(
        &mut self,
        fd: BorrowedFd<'_>,
        control: Control,
    ) -> Result<Io<usize>> {
        let frame = Bytes::from(self.scratch.frame.as_slice());
        match control {
            Control::Hello => sys::send_record(fd, &[frame], &[]),
            Control::Ring => {
                let Some(file) = self.rings.file.as_ref() else {
                    return Err(Error::new(
                        ErrorKind::Os,
                        "send",
                        "the ring's memory file is gone",
                    ));
                };
                let sent = sys::send_record(fd, &[frame], &[file.as_fd()])?;
                if let Io::Done(_) = sent {
                    self.rings.file = None;
                }
                Ok(sent)
            }
            Control::Release { .. } => {
                let active = self.session.ring_out_active();
                if self.rings.push(active, &[frame], &self.socket)? {
                    return Ok(Io::Done(frame.len()));
                }
                let sent = sys::send_record(fd, &[frame], &[])?;
                if let Io::Done(_) = sent {
                    self.rings.sent_on_socket(active);
                }
                Ok(sent)
            }
        }
    }

    /// Whether something may be received although the socket was last found empty: the
    /// peer's ring holds entries, or a frame or the end-of-file waits its turn.
    pub(super) fn ring_pending(&self) -> bool {
        self.rings.held.is_some()
            || self.rings.eof
            || self.session.owes_socket_frames()
            || self.rings.inbound.as_ref().is_some_and(Consumer::has_data)
    }

    /// Reads the next thing of the one ordered stream (§9.4): the peer's ring entries and
    /// its socket frames, each in its turn. Without the peer's ring, the socket alone.
    pub(super) fn read_next(&mut self, op: &'static str) -> Result<Option<Arrival>> {
        if !self.session.ring_in() || self.rings.inbound.is_none() {
            return self.read_record(op);
        }
        loop {
            if self.session.owes_socket_frames() {
                if let Some(mut held) = self.rings.held.take() {
                    let judged = self.session.handle_socket_frame(held.record());
                    return self.judged(op, judged, Source::Held(held.bytes));
                }
                match self.receive_raw(op)? {
                    Raw::Wake => continue,
                    Raw::Frame(frame) => return self.judge_frame(op, frame),
                    // The producer sends those frames before it publishes the entry that
                    // counts them, so they are in the socket by now (MEMORY-MODEL.md §10.4).
                    Raw::Empty | Raw::Eof => {
                        let error = Error::protocol(
                            op,
                            "a ring entry says frames on the socket come before it, but none did",
                        );
                        return Err(self.failed(op, error));
                    }
                }
            }
            let peeked = match self.rings.inbound.as_mut() {
                Some(consumer) => consumer.peek(&mut self.rings.entry),
                None => return Ok(None),
            };
            match peeked {
                Err(e) => return Err(self.failed(op, e)),
                Ok(Some(socket_before)) => {
                    match self.session.entry_turn(socket_before) {
                        Err(e) => return Err(self.failed(op, e)),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    let judged = self.session.handle_entry(&self.rings.entry);
                    if let Some(consumer) = self.rings.inbound.as_mut() {
                        consumer.take();
                    }
                    if let Ok(Inbound::Message { .. }) = judged {
                        self.stats.ring_messages_in += 1;
                    }
                    return self.judged(op, judged, Source::Entry);
                }
                Ok(None) => {}
            }
            if let Some(mut held) = self.rings.held.take() {
                let judged = self.session.handle_socket_frame(held.record());
                return self.judged(op, judged, Source::Held(held.bytes));
            }
            if self.rings.eof {
                return match self.session.end_of_file() {
                    Ok(()) => Ok(Some(Arrival::EndOfFile)),
                    Err(e) => Err(self.failed(op, e)),
                };
            }
            if !self.readable {
                return Ok(None);
            }
            match self.receive_raw(op)? {
                Raw::Empty => return Ok(None),
                Raw::Wake => {}
                // Entries the peer published before closing come first: look again.
                Raw::Eof => self.rings.eof = true,
                Raw::Frame(frame) => {
                    // Entries published before this frame was sent are visible now; the
                    // next one decides whether the frame comes before it.
                    let next = match self.rings.inbound.as_mut() {
                        Some(consumer) => consumer.peek(&mut self.rings.entry),
                        None => Ok(None),
                    };
                    let turn = next.and_then(|next| self.session.socket_turn(next));
                    match turn {
                        Err(e) => return Err(self.failed(op, e)),
                        Ok(true) => return self.judge_frame(op, frame),
                        Ok(false) => {
                            self.rings.held = Some(Held {
                                bytes: self.scratch.record[..frame.len].to_vec(),
                                fds: frame.fds,
                                data_truncated: frame.data_truncated,
                                control_truncated: frame.control_truncated,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Receives one record into the receive buffer without judging it, telling WAKE
    /// frames and the end of the file apart.
    fn receive_raw(&mut self, op: &'static str) -> Result<Raw> {
        let frame = match self.receive(op)? {
            Received::Empty => return Ok(Raw::Empty),
            Received::Disconnected => return Ok(Raw::Eof),
            Received::Record(frame) => frame,
        };
        if !frame.data_truncated && !frame.control_truncated && frame.fds.is_empty() {
            if frame.len == 0 {
                return Ok(Raw::Eof);
            }
            if self.scratch.record[..frame.len] == WAKE {
                return Ok(Raw::Wake);
            }
        }
        Ok(Raw::Frame(frame))
    }

    /// Judges the record in the receive buffer as a counted socket frame.
    fn judge_frame(&mut self, op: &'static str, frame: RawFrame) -> Result<Option<Arrival>> {
        let judged = self
            .session
            .handle_socket_frame(frame.record(&self.scratch.record));
        self.judged(op, judged, Source::Receive)
    }

    /// The event loop is about to wait: if this endpoint would read what the peer's ring
    /// brings, it announces that its loop waits, so the producer rings WAKE (§9.5); if
    /// something came meanwhile, the loop must turn once more instead ([`Rings::kick`]).
    pub(super) fn arm_loop(&mut self) {
        let Some(consumer) = &self.rings.inbound else {
            return;
        };
        // Only a receive that waits needs the ring read ahead: the socket reports the end
        // of the connection by itself, and a program that receives synchronously (and so
        // never lets the loop wait) would otherwise make its peer ring WAKE per entry.
        let would_read =
            self.driven && self.is_open() && self.inbox_has_room() && self.wants_message();
        if !would_read {
            return;
        }
        let waiter = consumer.waiter();
        let pending = waiter.announce(LOOP)
            || self.rings.held.is_some()
            || self.rings.eof
            || self.session.owes_socket_frames();
        if pending {
            waiter.withdraw(LOOP);
            self.rings.kick = true;
        }
    }

    /// The event loop turned: it is awake, so the producer need not ring it.
    pub(super) fn turn_begins(&mut self) {
        if let Some(consumer) = &self.rings.inbound {
            consumer.waiter().withdraw(LOOP);
            self.rings.kick = false;
            self.rings.turn = Instant::now();
        }
    }
}

impl Endpoint {
    /// For an event loop that has just delivered this turn's messages: busy-polls the
    /// peer's ring for up to the busy-poll window ([`super::Options::busy_poll`], adapted
    /// to what polling earned lately), so that a reply arriving within it is taken without
    /// going back to the loop. True when something arrived: take events again with
    /// [`Endpoint::poll_event`]. Does nothing without a ring from the peer, when nothing
    /// was delivered this turn or no receive waits, and after about a millisecond of one
    /// turn, so the loop still runs its other work.
    pub fn linger(&self) -> bool {
        let (waiter, (budget, woke_peer)) = {
            let mut conn = self.conn();
            let Some(consumer) = &conn.rings.inbound else {
                return false;
            };
            let worth = conn.is_open()
                && conn.delivered_this_turn
                && conn.wants_message()
                && conn.inbox_has_room()
                && conn.rings.held.is_none()
                && !conn.session.owes_socket_frames()
                && conn.rings.turn.elapsed() < MAX_TURN_BUSY;
            if !worth {
                return false;
            }
            let waiter = consumer.waiter();
            // What the handlers sent this turn goes out before waiting for the reply.
            conn.sends_this_turn = 0;
            conn.flush();
            (waiter, conn.rings.spin_plan())
        };
        if budget.is_zero() {
            return false;
        }
        let found = ring::spin_until(budget, &mut || waiter.has_data());
        let mut conn = self.conn();
        conn.rings.spin.record(found, woke_peer);
        if found {
            conn.delivered_this_turn = false;
        }
        found
    }

    /// Waits until something may be received: with the peer's ring, by spinning on it
    /// (adaptively), then parking on its futex in slices that also look at the socket, so
    /// a frame there, the end-of-file or a dead peer (whose socket closes) is noticed.
    /// Otherwise, on the socket. Takes the caller's lock and hands it back, held again:
    /// a message that comes while this side spins is taken without locking twice more.
    pub(super) fn wait_inbound<'a>(
        &'a self,
        mut conn: MutexGuard<'a, Conn>,
        deadline: &mut Deadline,
        op: &'static str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<MutexGuard<'a, Conn>> {
        if conn.session.owes_socket_frames() {
            // The frames an entry counted before it were sent before it was published
            // (§9.4): they are in the socket now, or never come, which the next read
            // finds without waiting.
            return Ok(conn);
        }
        let on_ring = conn.rings.held.is_none() && !conn.rings.eof;
        let (waiter, (budget, woke_peer)) = match &conn.rings.inbound {
            Some(consumer) if on_ring => (consumer.waiter(), conn.rings.spin_plan()),
            _ => {
                drop(conn);
                self.wait(Interest::READABLE, deadline.get(), op, interrupted)?;
                return Ok(self.conn());
            }
        };
        drop(conn);
        // A receive that may wait less than the spin budget spins only that long (a poll
        // with a zero timeout not at all), and such a short spin that finds nothing says
        // nothing about what spinning earns.
        let (mut budget, mut cut) = match deadline.left() {
            Some(left) if left < budget => (left, true),
            _ => (budget, false),
        };
        let socket_ready = || {
            let conn = self.conn();
            match conn.socket.borrow() {
                Some(fd) => sys::wait(fd, Interest::READABLE, Some(Duration::ZERO)).unwrap_or(true),
                None => true,
            }
        };
        // A long window spins in slices, looking at the socket and the caller in between
        // as a parked thread does: a dead peer's end-of-file is noticed while spinning.
        let found = loop {
            let slice = budget.min(SPIN_SLICE);
            let (found, started) = ring::spin_until_timed(slice, &mut || waiter.has_data());
            // The timeout counts from the spin's first clock read, about 1 µs in.
            if let Some(started) = started {
                deadline.start_at(started);
            }
            if found {
                break true;
            }
            budget = budget.saturating_sub(slice);
            if budget.is_zero() {
                break false;
            }
            if socket_ready() || interrupted() {
                cut = true;
                break false;
            }
        };
        if found {
            let mut conn = self.conn();
            conn.rings.spin.record(found, woke_peer);
            return Ok(conn);
        }
        if !cut {
            self.conn().rings.spin.record(found, woke_peer);
        }
        in_slices(deadline.get(), op, interrupted, |slice| {
            waiter.park(slice, &mut || socket_ready());
            Ok(waiter.has_data() || socket_ready())
        })?;
        Ok(self.conn())
    }
}
