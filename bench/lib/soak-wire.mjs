// The messages of the soak (bench/soak.mjs and bench/children/soak-peer.mjs).
//
// Every message starts with a 24-byte little-endian header:
//   0  u32 magic "SOAK"
//   4  u8  op, u8 flags, u16 zero
//   8  u32 seq   the sender's count of messages on this connection, from 0
//   12 u32 ref   for a reply: the seq of the request it answers
//   16 u32 seed  the seed of the pattern in the body and in the attached regions
//   20 u32 body  the body's length; the body is pattern(seed) and fills the rest
// A receiver checks all of it: a lost, duplicated or reordered message breaks the seq or
// the ref, a corrupted one the pattern.

export const HEADER = 24
export const MAGIC = 0x4b414f53
/** The largest payload shmlink sends inline (docs/SECURITY.md, `limits.maxPayload`). */
export const MAX_PAYLOAD = 64 * 1024

export const Op = Object.freeze({
  /** Tiny body; the reply is tiny. */
  TINY: 1,
  /** A 64 KiB payload; the reply is tiny, or 64 KiB when flags & ECHO. */
  BIG: 2,
  /** A region of the parent's pool, shared; the child checks it, rewrites it and shares it back. */
  SHARED: 3,
  /** A region of the parent's pool, transferred; the child checks it, rewrites it and transfers it back. */
  TRANSFER: 4,
  /** A new region (shared, or transferred when flags & MOVE); the child checks and closes it. */
  FRESH: 5,
  /** The child creates a region (size in the body's first 4 bytes) and transfers or shares it back. */
  CHILD_FRESH: 6,
  /** A frozen region; the child checks it cannot write it. flags & KEEP: the long-lived frozen region. */
  FROZEN: 7,
  /** The child answers with sendSync, then waits in recvSync for SYNC_FOLLOW and answers that with sendSync. */
  SYNC: 8,
  SYNC_FOLLOW: 9,
  /** The child collects garbage and answers with its counters (JSON body, no pattern). */
  STATS: 10,
  /** A transferred region the child keeps until the connection ends. */
  HOLD: 11,
  /** The child answers, then closes the connection from its side. */
  BYE: 12,
  /** The last message on the primary connection: the child answers with its totals and exits. */
  QUIT: 13,
  /** The parent closes the secondary listener: the child stops reconnecting. */
  STOP: 14,
})

export const Flag = Object.freeze({ ECHO: 1, MOVE: 2, KEEP: 4 })

export const OP_NAMES = Object.fromEntries(Object.entries(Op).map(([name, value]) => [value, name]))

/**
 * The pattern of `seed` over n bytes: the seed itself (4 bytes, little-endian), then n - 4
 * bytes of a fixed random tape starting at an offset the seed picks. Both processes build
 * the same tape, so filling is one copy and checking one comparison, and the seed stamp
 * tells every message and region from any other (an old or misplaced one never passes).
 */
const TAPE_SPAN = 4 << 20
/** The largest pattern: a region of the pool (1 MiB) with room to spare. */
export const PATTERN_MAX = 2 << 20
const TAPE = (() => {
  const tape = Buffer.allocUnsafeSlow(TAPE_SPAN + PATTERN_MAX)
  const words = new Uint32Array(tape.buffer, tape.byteOffset, tape.length >>> 2)
  let state = 0x2545f491
  for (let k = 0; k < words.length; k++) words[k] = state = (Math.imul(state, 1103515245) + 12345) | 0
  return tape
})()

function stamp(seed, k) {
  return (seed >>> (k * 8)) & 255
}

/** Fills `bytes[from, to)` with the pattern of `seed`. */
export function fill(bytes, seed, from = 0, to = bytes.length) {
  const length = to - from
  if (length > PATTERN_MAX) throw new RangeError(`a pattern of ${length} bytes is longer than ${PATTERN_MAX}`)
  const head = Math.min(4, length)
  for (let k = 0; k < head; k++) bytes[from + k] = stamp(seed, k)
  const at = (seed >>> 0) % TAPE_SPAN
  bytes.set(TAPE.subarray(at, at + length - head), from + head)
}

/** The offset of the first byte of `bytes[from, to)` that differs from the pattern of `seed`, or -1. */
export function mismatch(bytes, seed, from = 0, to = bytes.length) {
  const length = to - from
  if (length > PATTERN_MAX) return from
  const head = Math.min(4, length)
  for (let k = 0; k < head; k++) if (bytes[from + k] !== stamp(seed, k)) return from + k
  const at = (seed >>> 0) % TAPE_SPAN
  const actual = bytes.subarray(from + head, to)
  const expected = TAPE.subarray(at, at + length - head)
  if (Buffer.compare(actual, expected) === 0) return -1
  for (let k = 0; k < actual.length; k++) if (actual[k] !== expected[k]) return from + head + k
  return -1
}

/** A message: header, then a body of `bodyLength` pattern bytes (or `body` when given). */
export function encode(op, flags, seq, ref, seed, bodyLength, body) {
  const length = body === undefined ? bodyLength : body.length
  const payload = Buffer.allocUnsafe(HEADER + length)
  payload.writeUInt32LE(MAGIC, 0)
  payload[4] = op
  payload[5] = flags
  payload.writeUInt16LE(0, 6)
  payload.writeUInt32LE(seq >>> 0, 8)
  payload.writeUInt32LE(ref >>> 0, 12)
  payload.writeUInt32LE(seed >>> 0, 16)
  payload.writeUInt32LE(length, 20)
  if (body === undefined) fill(payload, seed, HEADER, HEADER + length)
  else payload.set(body, HEADER)
  return payload
}

/** The header of `payload`, or throws saying what is wrong with it. */
export function decode(payload, checkBody = true) {
  if (payload.length < HEADER) throw new Error(`a ${payload.length}-byte payload is shorter than the header`)
  if (payload.readUInt32LE(0) !== MAGIC) throw new Error('bad magic')
  const header = {
    op: payload[4],
    flags: payload[5],
    seq: payload.readUInt32LE(8),
    ref: payload.readUInt32LE(12),
    seed: payload.readUInt32LE(16),
    length: payload.readUInt32LE(20),
  }
  if (header.length !== payload.length - HEADER) {
    throw new Error(`seq ${header.seq}: body of ${payload.length - HEADER} bytes, header says ${header.length}`)
  }
  if (checkBody) {
    const at = mismatch(payload, header.seed, HEADER, payload.length)
    if (at >= 0) throw new Error(`seq ${header.seq} (${OP_NAMES[header.op]}): body corrupted at byte ${at}`)
  }
  return header
}

/** A seed that differs for every (connection, seq, side): what the pattern of a message is. */
export function seedOf(connection, seq, side) {
  let h = Math.imul(connection + 1, 0x9e3779b1) ^ Math.imul(seq + 1, 0x85ebca6b) ^ Math.imul(side + 1, 0xc2b2ae35)
  h ^= h >>> 15
  return h >>> 0
}

/** The seed a child writes into a region it was given with `seed`, before handing it back. */
export const answerSeed = (seed) => (seed ^ 0x5a5a5a5a) >>> 0
