// The data every transport carries and the checks its receiver answers with; bench/c/common.h
// computes the same values in C.
export const PAGE = 4096
export const ACK_MAGIC = 0x214b4341 // "ACK!" little-endian
export const ACK_LEN = 16
export const SEED = 7

/** peers/SCENARIO.md "The fill pattern": byte k = seed*131 + (k%4096)*7 + (k/4096)*13 (mod 256). */
export function fillPattern(target, seed = SEED) {
  const len = target.length
  const page = new Uint8Array(PAGE)
  for (let k = 0; k < PAGE; k++) page[k] = (seed * 131 + k * 7) & 255
  const shifted = new Uint8Array(PAGE)
  for (let off = 0, n = 0; off < len; off += PAGE, n++) {
    const add = (n * 13) & 255
    const chunk = Math.min(PAGE, len - off)
    for (let k = 0; k < chunk; k++) shifted[k] = (page[k] + add) & 255
    target.set(chunk === PAGE ? shifted : shifted.subarray(0, chunk), off)
  }
  return target
}

/** A Buffer of `size` pattern bytes. */
export function patternBuffer(size, seed = SEED) {
  return fillPattern(Buffer.allocUnsafeSlow(size), seed)
}

/**
 * What a receiver does to "touch" the data: read one byte from every 4 KiB page (offsets
 * 0, 4096, … from the start of `bytes`) and sum them; the same loop as page_sum in
 * bench/c/common.h. It takes no offset: in V8 a loop whose first index is computed runs
 * about 10 % slower here (interleaved runs over three 64 MiB regions), and the pooled
 * stream's frame time is mostly this loop.
 */
export function pageSum(bytes) {
  let sum = 0
  for (let k = 0; k < bytes.length; k += PAGE) sum = (sum + bytes[k]) | 0
  return sum >>> 0
}

/**
 * pageSum for data that arrives in chunks: `start` is the offset of `bytes` within the
 * message and `sum` the sum of the chunks before it.
 */
export function pageSumFrom(bytes, start, sum) {
  const first = start % PAGE === 0 ? 0 : PAGE - (start % PAGE)
  for (let k = first; k < bytes.length; k += PAGE) sum = (sum + bytes[k]) | 0
  return sum >>> 0
}

/** The full check, a Fletcher-style pair over every byte; `state` carries it across chunks. */
export function fullSum(bytes, state = [0, 0]) {
  let a = state[0] | 0
  let b = state[1] | 0
  for (let k = 0; k < bytes.length; k++) {
    a = (a + bytes[k]) | 0
    b = (b + a) | 0
  }
  state[0] = a >>> 0
  state[1] = b >>> 0
  return state
}

/** The 16-byte ack: magic, page sum, and the full sums when the data was verified. */
export function makeAck(page, full = [0, 0], into = Buffer.alloc(ACK_LEN)) {
  into.writeUInt32LE(ACK_MAGIC, 0)
  into.writeUInt32LE(page >>> 0, 4)
  into.writeUInt32LE(full[0] >>> 0, 8)
  into.writeUInt32LE(full[1] >>> 0, 12)
  return into
}

export function readAck(bytes) {
  const view = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (view.length !== ACK_LEN || view.readUInt32LE(0) !== ACK_MAGIC) {
    throw new Error(`not an ack (${view.length} bytes)`)
  }
  return { page: view.readUInt32LE(4), a: view.readUInt32LE(8), b: view.readUInt32LE(12) }
}

/** The expected answers for `size` bytes of the pattern. */
export function expected(buffer) {
  return { page: pageSum(buffer), full: fullSum(buffer) }
}

export const KiB = 1024
export const MiB = 1024 * 1024

export function sizeLabel(size) {
  if (size >= MiB) return `${size / MiB} MiB`
  if (size >= KiB) return `${size / KiB} KiB`
  return `${size} B`
}
