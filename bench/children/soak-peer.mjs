// The child of the soak (bench/soak.mjs): answers every request of the parent in order,
// on the endpoint it inherited and on a second connection it makes to the parent's
// listener (argv[2]) and makes again whenever that one ends, until the parent says STOP.
// Every message is checked (bench/lib/soak-wire.mjs); the first wrong one ends this
// process with exit code 3 and says why on stderr.
import { createRequire } from 'node:module'
import { Flag, HEADER, MAX_PAYLOAD, Op, OP_NAMES, answerSeed, decode, encode, fill, mismatch, seedOf } from '../lib/soak-wire.mjs'

const require = createRequire(import.meta.url)
const { Endpoint, Region, processStats } = require('../../index.js')

const listenPath = process.argv[2]
/**
 * A fault to inject, to show that the soak catches it (docs/RELIABILITY.md): `corrupt`
 * flips a byte of a shared region, `drop` leaves a request unanswered, `duplicate`
 * answers one twice, `leak` keeps every new region it is sent; each once the primary
 * connection has seen 20 000 requests (`leak`: from then on).
 */
let fault = process.env.SHMLINK_SOAK_FAULT
const leaked = []
const FAULT_AFTER = 20_000
const totals = { messagesIn: 0, messagesOut: 0, connections: 0, connectRetries: 0, heldRegionsClosed: 0 }
let stopReconnecting = false
let connections = 0
/**
 * The parent's long-lived frozen region, as it first arrived: over either connection it
 * must arrive as this same object (one Region per memory file in a process).
 */
let keptFrozen

function fail(message) {
  process.stderr.write(`soak-peer: ${message}\n`)
  process.exit(3)
}

const gc = globalThis.gc ?? (() => fail('run with --expose-gc'))

async function settle() {
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
}

function checkRegion(region, seed, what) {
  const at = mismatch(region.bytes, seed)
  if (at >= 0) fail(`${what}: region of ${region.size} bytes corrupted at byte ${at}`)
}

/** Serves one connection until it ends; returns why: 'peer-closed', 'bye' or 'quit'. */
async function serve(endpoint, connection) {
  const state = { id: connection, recvSeq: 0, sendSeq: 0, held: [] }

  const answer = (op, ref, { flags = 0, bodyLength = 0, body, regions, transfer, sync = false } = {}) => {
    const seq = state.sendSeq++
    const payload = encode(op, flags, seq, ref, seedOf(connection, seq, 1), bodyLength, body)
    totals.messagesOut++
    if (sync) {
      endpoint.sendSync(payload, { regions, transfer, timeoutMs: 60_000 })
      return undefined
    }
    return endpoint.send(payload, { regions, transfer })
  }

  for (;;) {
    let message
    try {
      message = await endpoint.recv()
    } catch (error) {
      if (error.code === 'ERR_SHMLINK_PEER_CLOSED') return { reason: 'peer-closed', state }
      throw error
    }
    let header
    try {
      header = decode(message.payload)
    } catch (error) {
      fail(`connection ${connection}: ${error.message}`)
    }
    if (header.seq !== state.recvSeq) fail(`connection ${connection}: request seq ${header.seq}, expected ${state.recvSeq} (lost, duplicated or reordered)`)
    state.recvSeq++
    totals.messagesIn++
    const what = `connection ${connection} seq ${header.seq} ${OP_NAMES[header.op]}`
    const [region] = message.regions
    const tinyBody = header.seq % 49
    const faulty = fault !== undefined && connection === 0 && header.seq >= FAULT_AFTER
    switch (header.op) {
      case Op.TINY:
        if (faulty && fault === 'drop' && header.seq < FAULT_AFTER + 100) {
          fault = undefined
          break
        }
        await answer(Op.TINY, header.seq, { bodyLength: tinyBody })
        if (faulty && fault === 'duplicate') {
          fault = undefined
          state.sendSeq--
          await answer(Op.TINY, header.seq, { bodyLength: tinyBody })
        }
        break
      case Op.BIG:
        await answer(Op.BIG, header.seq, { bodyLength: header.flags & Flag.ECHO ? MAX_PAYLOAD - HEADER : tinyBody })
        break
      case Op.SHARED:
      case Op.TRANSFER: {
        const moved = header.op === Op.TRANSFER
        if (region === undefined || message.descriptors[0].transferred !== moved) fail(`${what}: wrong attachment`)
        checkRegion(region, header.seed, what)
        fill(region.bytes, answerSeed(header.seed))
        if (faulty && fault === 'corrupt') {
          fault = undefined
          region.bytes[region.size >> 1] ^= 0x01
        }
        await answer(header.op, header.seq, moved ? { transfer: [region] } : { regions: [region] })
        break
      }
      case Op.FRESH: {
        const moved = (header.flags & Flag.MOVE) !== 0
        if (region === undefined || !message.descriptors[0].new || message.descriptors[0].transferred !== moved) fail(`${what}: wrong attachment`)
        checkRegion(region, header.seed, what)
        if (faulty && fault === 'leak') leaked.push(region)
        else region.close()
        await answer(Op.FRESH, header.seq)
        break
      }
      case Op.CHILD_FRESH: {
        const moved = (header.flags & Flag.MOVE) !== 0
        const fresh = Region.create(4096 << header.seed % 8)
        fill(fresh.bytes, answerSeed(header.seed))
        await answer(Op.CHILD_FRESH, header.seq, moved ? { transfer: [fresh] } : { regions: [fresh] })
        // The parent has the memory mapped now, or will map the descriptor in its socket:
        // closing this handle must not take the contents away from it.
        fresh.close()
        break
      }
      case Op.FROZEN: {
        if (region === undefined || !region.frozen || !message.descriptors[0].frozen) fail(`${what}: not frozen`)
        const at = mismatch(region.read(), header.seed)
        if (at >= 0) fail(`${what}: frozen region corrupted at byte ${at}`)
        try {
          region.write(0, 'x')
          fail(`${what}: wrote into a frozen region`)
        } catch (error) {
          if (error.code !== 'ERR_SHMLINK_REGION_FROZEN') throw error
        }
        if (header.flags & Flag.KEEP) {
          keptFrozen ??= region
          if (keptFrozen !== region) fail(`${what}: the long-lived frozen region arrived as another object (${JSON.stringify(message.descriptors)})`)
        } else {
          region.bytes[0] ^= 0xff // a private copy: the parent checks that it did not change
          region.close()
        }
        await answer(Op.FROZEN, header.seq)
        break
      }
      case Op.SYNC: {
        answer(Op.SYNC, header.seq, { sync: true })
        const follow = endpoint.recvSync({ timeoutMs: 60_000 })
        const next = decode(follow.payload)
        if (next.op !== Op.SYNC_FOLLOW || next.seq !== state.recvSeq) fail(`${what}: SYNC_FOLLOW expected, got ${OP_NAMES[next.op]} seq ${next.seq}`)
        state.recvSeq++
        totals.messagesIn++
        checkRegion(follow.regions[0], next.seed, `${what} follow`)
        fill(follow.regions[0].bytes, answerSeed(next.seed))
        answer(Op.SYNC_FOLLOW, next.seq, { sync: true, regions: [follow.regions[0]] })
        break
      }
      case Op.STATS: {
        await settle()
        const body = Buffer.from(JSON.stringify({ processStats: processStats(), memoryUsage: process.memoryUsage(), totals }))
        await answer(Op.STATS, header.seq, { body })
        break
      }
      case Op.HOLD:
        if (region === undefined || !message.descriptors[0].transferred) fail(`${what}: wrong attachment`)
        checkRegion(region, header.seed, what)
        state.held.push(region)
        await answer(Op.HOLD, header.seq)
        break
      case Op.BYE:
        await answer(Op.BYE, header.seq)
        endpoint.close()
        return { reason: 'bye', state }
      case Op.STOP:
        stopReconnecting = true
        await answer(Op.STOP, header.seq)
        break
      case Op.QUIT: {
        // Counted with this answer.
        const body = Buffer.from(JSON.stringify({ totals: { ...totals, messagesOut: totals.messagesOut + 1 } }))
        await answer(Op.QUIT, header.seq, { body })
        endpoint.close()
        return { reason: 'quit', state }
      }
      default:
        fail(`${what}: unknown op ${header.op}`)
    }
  }
}

/** Closes the regions a connection left with this side. */
function cleanUp({ state }) {
  for (const region of state.held) {
    region.close()
    totals.heldRegionsClosed++
  }
}

async function secondary() {
  while (!stopReconnecting) {
    let endpoint
    try {
      endpoint = await Endpoint.connect(listenPath, { acceptWritable: true })
    } catch (error) {
      if (stopReconnecting) break
      totals.connectRetries++
      if (totals.connectRetries > 1000) throw error
      await new Promise((resolve) => setTimeout(resolve, 10))
      continue
    }
    totals.connections++
    const result = await serve(endpoint, ++connections)
    endpoint.close()
    cleanUp(result)
  }
}

const primary = Endpoint.inherited()
const secondaryDone = secondary()
const result = await serve(primary, 0)
cleanUp(result)
keptFrozen?.close()
if (result.reason !== 'quit') fail(`the primary connection ended without QUIT (${result.reason})`)
await secondaryDone
