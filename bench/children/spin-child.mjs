// The receiving end of the js-spin transport (bench/lib/transports.mjs, JsSpinTransport):
// a JavaScript busy-wait ping-pong over one shared page, with no system call per round.
//
// The parent hands a 4 KiB region over once (spawnWithEndpoint, then one message with the
// region attached); from then on the endpoint carries only per-block commands and every
// round goes through the region's memory:
//
//   words 0..4 of an Int32Array over region.bytes: the ping line (sequence word, then the
//   16-byte message); words 16..20 (byte 64, the next cache line): the pong line.
//
// Per round the child spins on Atomics.load(w, PING) until it holds the round's number,
// reads the message (plain loads), writes its reply (plain stores: magic, the message's
// byte 0 - its "page sum" - and the round number the message carried) and publishes it
// with Atomics.store(w, PONG, number). Ordering: V8 compiles Atomics.load/store as
// sequentially consistent operations (a plain load, and an xchg on x86) that it never
// reorders plain accesses across, and x86 keeps stores in order (TSO); so the reply bytes
// are in memory before the pong word. This is a floor measurement that relies on that; it
// is not a pattern for portable code (the memory is not a SharedArrayBuffer, so the
// JavaScript memory model says nothing about another process).
//
// Commands (payload): 'S' u32 first, u32 rounds, u8 verify, u32 nap_after: spin `rounds`
// rounds numbered from `first` (verify: reply with the message's full checksum instead of
// its round number); answer once before (ready) and once after (with the number of naps).
// After `nap_after` unsuccessful loads in a row (0: never) the waiting side sleeps 50 µs
// (Atomics.wait on a private SharedArrayBuffer: Node has no sched_yield) and counts a nap:
// a safety valve for when both processes end up on one CPU, reported, not a design.
// 'B': collect garbage, answer. End of the conversation: exit. A spinning child checks every
// few million loads whether its parent is still there (process.ppid), so it never outlives it.
import { createRequire } from 'node:module'
import { ACK_MAGIC, fullSum } from '../lib/data.mjs'

const require = createRequire(import.meta.url)
const { Endpoint } = require('../../index.js')

const PING = 0
const PONG = 16
const endpoint = Endpoint.inherited()
const parent = process.ppid
const napWord = new Int32Array(new SharedArrayBuffer(4))
let region
let w

function isEnd(error) {
  return error?.code === 'ERR_SHMLINK_PEER_CLOSED' || error?.code === 'ERR_SHMLINK_CLOSED'
}

function reply(u32s) {
  const b = Buffer.alloc(16)
  u32s.forEach((v, i) => b.writeUInt32LE(v >>> 0, i * 4))
  return b
}

/** The hot loop: `rounds` rounds from `first`. Returns the number of naps. */
function spin(first, rounds, verify, napAfter) {
  let naps = 0
  const slowPath = napAfter || 1 << 22
  const message = new Uint8Array(16)
  for (let r = 0; r < rounds; r++) {
    const want = (first + r) | 0
    let misses = 0
    while (Atomics.load(w, PING) !== want) {
      if (++misses < slowPath) continue
      misses = 0
      if (napAfter !== 0) {
        Atomics.wait(napWord, 0, 0, 0.05)
        naps++
      }
      if (process.ppid !== parent) process.exit(1) // the parent died while we were spinning
    }
    const m0 = w[1]
    const m1 = w[2]
    let a = m1
    let b = 0
    if (verify) {
      const view = new DataView(message.buffer)
      for (let k = 0; k < 4; k++) view.setInt32(k * 4, w[1 + k], true)
      ;[a, b] = fullSum(message)
    }
    w[PONG + 1] = ACK_MAGIC
    w[PONG + 2] = m0 & 255
    w[PONG + 3] = a
    w[PONG + 4] = b
    Atomics.store(w, PONG, want)
  }
  return naps
}

for (;;) {
  let message
  try {
    message = endpoint.recvSync()
  } catch (error) {
    if (isEnd(error)) break
    throw error
  }
  if (message.regions.length > 0) {
    region = message.regions[0]
    const bytes = region.bytes
    w = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
    endpoint.sendSync(reply([ACK_MAGIC, 0, 0, 0]))
    continue
  }
  const p = message.payload
  if (p[0] === 0x42 /* B */) {
    globalThis.gc?.()
    endpoint.sendSync(reply([ACK_MAGIC, 0, 0, 0]))
    continue
  }
  if (p[0] !== 0x53 /* S */ || w === undefined) throw new Error('spin-child: unexpected message')
  const first = p.readInt32LE(4)
  const rounds = p.readUInt32LE(8)
  const verify = p[12] !== 0
  const napAfter = p.readUInt32LE(13)
  endpoint.sendSync(reply([ACK_MAGIC, 0, 0, 0]))
  const naps = spin(first, rounds, verify, napAfter)
  endpoint.sendSync(reply([ACK_MAGIC, naps, 0, 0]))
}
region?.close()
endpoint.close()
