#!/usr/bin/env node
// The soak: `npm run soak` (5 minutes of messages, then the long kill -9 run) or
// `npm run soak -- --quick` (20 seconds, then one kill per case). docs/RELIABILITY.md says
// what it checks and what it measured.
//
// This process and a child (bench/children/soak-peer.mjs) exchange requests and answers
// on two connections: the endpoint spawnWithEndpoint passes down, and a second one the
// child makes to Endpoint.listen() and makes again each time it ends (closed by either
// side, sometimes with a region still away, which is reclaimed). The requests mix tiny
// and 64 KiB payloads, regions of a pool shared and transferred out and back, new regions
// of both sides that are released and closed, frozen regions, and blocking sendSync /
// recvSync exchanges. Both sides check every message: the sequence numbers (nothing lost,
// duplicated or reordered) and the pattern of every payload and region (nothing corrupted).
//
// Every few seconds both sides stop, collect garbage and are sampled: open descriptors,
// resident memory, memfd mappings (/proc/<pid>/maps), the library's own counts
// (processStats) and the machine's Shmem (/proc/meminfo). After the warm-up, a sample
// above the warm-up's highest value plus the allowance in BOUNDS fails the run.
//
// Options:
//   --quick            20 s of messages, warm-up 8 s, a sample every 2 s; 16 kills (one per case)
//   --duration S       seconds of messages (default 300)
//   --warmup S         seconds before the bounds apply (default 60)
//   --sample S         seconds between samples (default 5)
//   --kills N          kills in the kill -9 run after the soak (default 300; 0: none)
//   --only-kills       skip the message soak
//   --seed N           seed of the random choices (default: random, printed)
//   --strict-shmem     fail, not only warn, when the machine's Shmem: rises past its bound
//                      (for a machine where nothing else uses shared memory)
//   --out FILE         results (default bench/results/soak.json, or soak-quick.json)
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { machineInfo } from './lib/machine.mjs'
import { memfdKbOf, sampleProcess, shmemKb } from './lib/proc.mjs'
import { Flag, HEADER, MAX_PAYLOAD, Op, OP_NAMES, answerSeed, decode, encode, fill, mismatch, seedOf } from './lib/soak-wire.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(BENCH, '..')
const require = createRequire(import.meta.url)

const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const option = (name, fallback) => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : fallback
}
const quick = flag('quick')
const config = {
  mode: quick ? 'quick' : 'full',
  durationS: Number(option('duration', quick ? 20 : 300)),
  warmupS: Number(option('warmup', quick ? 8 : 60)),
  sampleS: Number(option('sample', quick ? 2 : 5)),
  kills: Number(option('kills', quick ? 16 : 300)),
  seed: Number(option('seed', Math.floor(Math.random() * 2 ** 31))),
  primaryWindow: 32,
  secondaryWindow: 8,
}
const outFile = path.resolve(option('out', path.join(BENCH, 'results', quick ? 'soak-quick.json' : 'soak.json')))
const onlyKills = flag('only-kills')
const strictShmem = flag('strict-shmem')

/**
 * How far a sample may rise above the highest value seen during the warm-up. Descriptors,
 * mappings and regions are counted after both sides collected garbage with nothing in
 * flight, so they should not move at all; the allowances leave room for one reconnect in
 * progress. Memory gets room for the heap's own growth (V8 keeps enlarging its young
 * generation for a while). RssShmem is the region memory a process has mapped and
 * touched; memfdKb the memory of the region files it holds open; soakShmemKb the memory
 * of every region file either process holds, each counted once: the part of the machine's
 * Shmem that is the soak's. The machine's Shmem (/proc/meminfo) moves with every other
 * program's shared memory too, so it only warns, unless --strict-shmem.
 */
const BOUNDS = {
  fds: 2,
  regionMappings: 2,
  regions: 2,
  memfds: 2,
  rssKb: 64 * 1024,
  rssShmemKb: 16 * 1024,
  memfdKb: 16 * 1024,
  heapUsedKb: 16 * 1024,
  soakShmemKb: 16 * 1024,
  shmemKb: 64 * 1024,
}

function say(message) {
  process.stdout.write(`${message}\n`)
}

if (process.platform !== 'linux') {
  process.stderr.write('soak: Linux only (memfd, SOCK_SEQPACKET, /proc)\n')
  process.exit(1)
}
const gc = globalThis.gc
if (gc === undefined) {
  process.stderr.write('soak: run with node --expose-gc (npm run soak does)\n')
  process.exit(1)
}

let shmlink
try {
  shmlink = require('../index.js')
} catch (error) {
  process.stderr.write(`soak: cannot load shmlink (${error.message.split('\n')[0]}); run \`npm run build\` first\n`)
  process.exit(1)
}
const { Endpoint, Region, processStats, spawnWithEndpoint } = shmlink

/** mulberry32: the run's random choices, reproducible from --seed. */
function random(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const rand = random(config.seed)
const pick = (n) => Math.floor(rand() * n)

async function settle() {
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
}

class SoakFailure extends Error {}
function fail(message) {
  throw new SoakFailure(message)
}

// -- the traffic ------------------------------------------------------------------------

/** Request mix: weight of each kind. */
const MIX = [
  ['tiny', 70],
  ['big', 8],
  ['shared', 6],
  ['transfer', 5],
  ['fresh', 3],
  ['childFresh', 3],
  ['frozen', 2],
]
const MIX_TOTAL = MIX.reduce((sum, [, weight]) => sum + weight, 0)
/** One request in this many, on the primary connection, is a blocking sendSync/recvSync exchange. */
const SYNC_EVERY = 2000
const POOL_SIZES = [4096, 16384, 65536, 262144, 1 << 20, 65536, 8192, 131072]

const counts = {
  messagesOut: 0,
  messagesIn: 0,
  requests: Object.fromEntries(Object.values(Op).map((op) => [OP_NAMES[op], 0])),
  regionsCreated: 0,
  regionsClosed: 0,
  regionsReclaimed: 0,
  secondaryConnections: 0,
  closedByParent: 0,
  closedByParentWithRegionAway: 0,
  closedByChild: 0,
  payloadBytes: 0,
}

function newRegion(size) {
  counts.regionsCreated++
  return Region.create(size)
}

function closeRegion(region) {
  counts.regionsClosed++
  region.close()
}

/** Regions the parent owns for the whole run (made by soak()). */
const pools = {}

/** Stops new requests, waits until every connection is idle, then lets them go on. */
class Gate {
  closed = false
  #parked = 0
  #waiting = []
  #reopen = undefined
  #onPark = undefined

  async pass() {
    if (!this.closed) return
    this.#parked++
    this.#onPark?.()
    await this.#reopen
  }

  /** Resolves once `drivers` connections are parked. */
  close(drivers) {
    this.closed = true
    this.#reopen = new Promise((resolve) => this.#waiting.push(resolve))
    return new Promise((resolve) => {
      this.#onPark = () => {
        if (this.#parked >= drivers) resolve()
      }
      this.#onPark()
    })
  }

  open() {
    this.closed = false
    this.#parked = 0
    this.#onPark = undefined
    for (const resolve of this.#waiting.splice(0)) resolve()
  }
}
const gate = new Gate()
let stopping = false

/** One connection as the parent drives it. */
class Link {
  constructor(name, endpoint, connection, window) {
    this.name = name
    this.endpoint = endpoint
    this.connection = connection
    this.window = window
    this.sendSeq = 0
    this.recvSeq = 0
    this.inflight = []
    this.busy = new Set()
  }

  /** Sends a request; `options.sync` sends with sendSync. Returns the inflight record. */
  request(op, { flags = 0, bodyLength = 0, region, move = false, seed, sync = false } = {}) {
    const seq = this.sendSeq++
    seed ??= seedOf(this.connection, seq, 0)
    const payload = encode(op, flags, seq, 0, seed, bodyLength)
    const attach = region === undefined ? {} : move ? { transfer: [region] } : { regions: [region] }
    const record = { seq, op, flags, seed, region }
    this.inflight.push(record)
    counts.messagesOut++
    counts.requests[OP_NAMES[op]]++
    counts.payloadBytes += payload.length
    if (sync) this.endpoint.sendSync(payload, { ...attach, timeoutMs: 60_000 })
    else this.endpoint.send(payload, attach).catch((error) => failLater(`${this.name}: send of seq ${seq} failed: ${error.code} ${error.message}`))
    return record
  }

  /** Checks an answer against the oldest request in flight and finishes that request. */
  answered(message) {
    let header
    try {
      header = decode(message.payload, this.inflight[0]?.op !== Op.STATS && this.inflight[0]?.op !== Op.QUIT)
    } catch (error) {
      fail(`${this.name}: ${error.message}`)
    }
    counts.messagesIn++
    counts.payloadBytes += message.payload.length
    if (header.seq !== this.recvSeq) fail(`${this.name}: answer seq ${header.seq}, expected ${this.recvSeq} (lost, duplicated or reordered)`)
    this.recvSeq++
    const request = this.inflight.shift()
    if (request === undefined) fail(`${this.name}: an answer (seq ${header.seq}) to no request`)
    if (header.ref !== request.seq || header.op !== request.op) {
      fail(`${this.name}: answer to ${OP_NAMES[header.op]} seq ${header.ref}, expected ${OP_NAMES[request.op]} seq ${request.seq} (lost, duplicated or reordered)`)
    }
    const what = `${this.name} seq ${request.seq} ${OP_NAMES[request.op]}`
    const [region] = message.regions
    const check = (r, seed) => {
      const at = mismatch(r.bytes, seed)
      if (at >= 0) fail(`${what}: region of ${r.size} bytes corrupted at byte ${at}`)
    }
    switch (request.op) {
      case Op.SHARED:
      case Op.TRANSFER:
      case Op.SYNC_FOLLOW:
        if (region !== request.region) fail(`${what}: the region came back as another object`)
        if (region.transferred) fail(`${what}: the region is still marked transferred`)
        check(region, answerSeed(request.seed))
        this.busy.delete(region)
        break
      case Op.FRESH:
        if (!(request.flags & Flag.MOVE)) this.endpoint.release(request.region)
        closeRegion(request.region)
        break
      case Op.CHILD_FRESH: {
        const moved = (request.flags & Flag.MOVE) !== 0
        if (region === undefined || region.size !== 4096 << request.seed % 8 || message.descriptors[0].transferred !== moved) fail(`${what}: wrong attachment`)
        check(region, answerSeed(request.seed))
        closeRegion(region)
        break
      }
      case Op.FROZEN: {
        const at = mismatch(request.region.read(), request.seed)
        if (at >= 0) fail(`${what}: the frozen region changed at byte ${at}`)
        if (!(request.flags & Flag.KEEP)) {
          this.endpoint.release(request.region)
          closeRegion(request.region)
        }
        break
      }
      default:
        break
    }
    return { header, message }
  }

  /** Sends one request of the mix (or nothing when the pool it needs is busy). */
  issueOne() {
    let r = pick(MIX_TOTAL)
    let kind = MIX[0][0]
    for (const [name, weight] of MIX) {
      if (r < weight) {
        kind = name
        break
      }
      r -= weight
    }
    switch (kind) {
      case 'tiny':
        return this.request(Op.TINY, { bodyLength: pick(49) })
      case 'big':
        return this.request(Op.BIG, { flags: pick(4) === 0 ? Flag.ECHO : 0, bodyLength: MAX_PAYLOAD - HEADER })
      case 'shared':
      case 'transfer': {
        const pool = pools[kind].filter((region) => !this.busy.has(region) && !otherLinkHas(this, region))
        if (pool.length === 0) return this.request(Op.TINY)
        const region = pool[pick(pool.length)]
        this.busy.add(region)
        const seed = seedOf(this.connection, this.sendSeq, 0)
        fill(region.bytes, seed)
        return this.request(kind === 'shared' ? Op.SHARED : Op.TRANSFER, { region, move: kind === 'transfer', seed })
      }
      case 'fresh': {
        const region = newRegion(4096 << pick(8))
        const seed = seedOf(this.connection, this.sendSeq, 0)
        fill(region.bytes, seed)
        const move = pick(2) === 0
        return this.request(Op.FRESH, { region, move, flags: move ? Flag.MOVE : 0, seed })
      }
      case 'childFresh':
        return this.request(Op.CHILD_FRESH, { flags: pick(2) === 0 ? Flag.MOVE : 0 })
      case 'frozen': {
        if (pick(2) === 0) {
          return this.request(Op.FROZEN, { region: pools.keptFrozen.region, flags: Flag.KEEP, seed: pools.keptFrozen.seed })
        }
        const region = newRegion(4096 << pick(6))
        const seed = seedOf(this.connection, this.sendSeq, 0)
        fill(region.bytes, seed)
        region.freeze()
        return this.request(Op.FROZEN, { region, seed })
      }
    }
    return undefined
  }

  /** Receives answers until nothing is in flight. */
  async drain() {
    while (this.inflight.length > 0) this.answered(await this.endpoint.recv())
  }

  /** The blocking exchange: sendSync, recvSync, and the child waiting in its own recvSync. */
  syncExchange() {
    this.request(Op.SYNC, { sync: true })
    this.answered(this.endpoint.recvSync({ timeoutMs: 60_000 }))
    const region = pools.shared.find((r) => !this.busy.has(r) && !otherLinkHas(this, r))
    if (region === undefined) fail(`${this.name}: no free region for SYNC_FOLLOW`)
    const seed = seedOf(this.connection, this.sendSeq, 0)
    fill(region.bytes, seed)
    this.busy.add(region)
    this.request(Op.SYNC_FOLLOW, { region, seed, sync: true })
    this.answered(this.endpoint.recvSync({ timeoutMs: 60_000 }))
  }

  /** Drives the connection until `until()` or the run stops, parking at the gate. */
  async drive(until = () => false) {
    let sinceSync = 0
    while (!stopping && !until()) {
      if (gate.closed) {
        await this.drain()
        await gate.pass()
        continue
      }
      while (this.inflight.length < this.window && !gate.closed) this.issueOne()
      this.answered(await this.endpoint.recv())
      if (this.name === 'primary' && ++sinceSync >= SYNC_EVERY) {
        sinceSync = 0
        await this.drain()
        this.syncExchange()
      }
    }
    await this.drain()
  }
}

const links = new Set()
function otherLinkHas(link, region) {
  for (const other of links) if (other !== link && other.busy.has(region)) return true
  return false
}

/** The first failure of a connection's driver, a send or the child; ends the run. */
let laterFailure
let onFailure
const runFailed = new Promise((resolve) => {
  onFailure = resolve
})
function failLater(error) {
  laterFailure ??= error instanceof Error ? error : new SoakFailure(error)
  onFailure()
}

/** The second connection: accepted, driven for a while, ended by one side, accepted again. */
async function secondaryLoop(server) {
  let connection = 0
  while (!stopping) {
    const endpoint = await server.accept()
    const link = new Link(`secondary#${++connection}`, endpoint, connection, config.secondaryWindow)
    links.add(link)
    counts.secondaryConnections++
    const budget = 200 + pick(3000)
    await link.drive(() => link.sendSeq >= budget)
    links.delete(link)
    if (stopping) {
      endpoint.close()
      break
    }
    const how = pick(3)
    if (how === 0) {
      endpoint.close()
      counts.closedByParent++
    } else if (how === 1) {
      const seed = seedOf(connection, link.sendSeq, 2)
      fill(pools.hold.bytes, seed)
      link.request(Op.HOLD, { region: pools.hold, move: true, seed })
      await link.drain()
      endpoint.close()
      if (!pools.hold.transferred) fail('HOLD: the held region is not marked transferred')
      pools.hold.reclaim()
      counts.regionsReclaimed++
      const at = mismatch(pools.hold.bytes, seed)
      if (at >= 0) fail(`HOLD: the reclaimed region changed at byte ${at}`)
      counts.closedByParentWithRegionAway++
    } else {
      link.request(Op.BYE)
      await link.drain()
      const error = await endpoint.recv().then(
        () => fail('BYE: a message after the child closed'),
        (e) => e,
      )
      if (error.code !== 'ERR_SHMLINK_PEER_CLOSED') fail(`BYE: recv failed with ${error.code}, expected ERR_SHMLINK_PEER_CLOSED`)
      endpoint.close()
      counts.closedByChild++
    }
  }
}

// -- samples --------------------------------------------------------------------------

/** This process's descriptors and what they are, to name a leak. */
function fdList() {
  return fs.readdirSync('/proc/self/fd').map((fd) => {
    try {
      return `${fd} ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`
    } catch {
      return `${fd} (closed while listing)`
    }
  })
}

/** What V8 reports: the heap in use and reserved, and memory outside it (Buffers, ArrayBuffers). */
function memoryKb(usage) {
  const kb = (bytes) => Math.round(bytes / 1024)
  return { heapUsedKb: kb(usage.heapUsed), heapTotalKb: kb(usage.heapTotal), externalKb: kb(usage.external), arrayBuffersKb: kb(usage.arrayBuffers) }
}

async function takeSample(primary, childPid, started, phase) {
  const stats = primary.request(Op.STATS)
  const { message } = primary.answered(await primary.endpoint.recv())
  if (stats.seq + 1 !== primary.sendSeq) fail('STATS: out of step')
  const child = JSON.parse(message.payload.subarray(HEADER).toString())
  await settle()
  const own = processStats()
  return {
    t: Math.round((performance.now() - started) / 100) / 10,
    phase,
    messages: counts.messagesOut + counts.messagesIn + child.totals.messagesIn + child.totals.messagesOut,
    parent: { ...sampleProcess(process.pid), ...memoryKb(process.memoryUsage()), regions: own.regions, mappedBytes: own.mappedBytes },
    child: { ...sampleProcess(childPid), ...memoryKb(child.memoryUsage), regions: child.processStats.regions, mappedBytes: child.processStats.mappedBytes },
    soakShmemKb: memfdKbOf([process.pid, childPid]),
    shmemKb: shmemKb(),
  }
}

const PROCESS_METRICS = ['fds', 'regionMappings', 'regions', 'memfds', 'rssKb', 'rssShmemKb', 'memfdKb', 'heapUsedKb']

/** Every way a sample after the warm-up exceeds its bound. */
function boundViolations(samples) {
  const warm = samples.filter((s) => s.phase === 'warm-up')
  const after = samples.filter((s) => s.phase === 'run')
  if (warm.length === 0 || after.length === 0) return { problems: ['too few samples: lengthen --duration or shorten --sample'], warnings: [] }
  const highest = (metric) => Math.max(...warm.map((s) => s[metric])) + BOUNDS[metric]
  const limits = { parent: {}, child: {}, soakShmemKb: highest('soakShmemKb'), shmemKb: highest('shmemKb') }
  for (const side of ['parent', 'child']) {
    for (const metric of PROCESS_METRICS) limits[side][metric] = Math.max(...warm.map((s) => s[side][metric])) + BOUNDS[metric]
  }
  const problems = []
  const warnings = []
  for (const sample of after) {
    for (const side of ['parent', 'child']) {
      for (const metric of PROCESS_METRICS) {
        if (sample[side][metric] > limits[side][metric]) problems.push(`t=${sample.t}s ${side} ${metric} ${sample[side][metric]} > bound ${limits[side][metric]}`)
      }
    }
    if (sample.soakShmemKb > limits.soakShmemKb) problems.push(`t=${sample.t}s the soak's region memory ${sample.soakShmemKb} kB > bound ${limits.soakShmemKb} kB`)
    if (sample.shmemKb > limits.shmemKb) {
      ;(strictShmem ? problems : warnings).push(`t=${sample.t}s the machine's Shmem ${sample.shmemKb} kB > bound ${limits.shmemKb} kB (the soak's own: ${sample.soakShmemKb} kB)`)
    }
  }
  return { limits, problems, warnings }
}

// -- the run --------------------------------------------------------------------------

function table(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)))
  return rows.map((row) => row.map((cell, c) => String(cell).padStart(widths[c])).join('  ')).join('\n')
}

async function soak() {
  say(`soak: ${config.durationS} s, warm-up ${config.warmupS} s, a sample every ${config.sampleS} s, seed ${config.seed}`)
  // Writing to a pipe for the first time opens libuv's spare descriptor (/dev/null, kept
  // for EMFILE): done above, before the count that the end is compared with.
  const started = performance.now()
  await settle()
  const before = { parent: sampleProcess(process.pid), shmemKb: shmemKb(), fdList: fdList() }
  pools.shared = POOL_SIZES.map(newRegion)
  pools.transfer = POOL_SIZES.map(newRegion)
  pools.hold = newRegion(65536)
  pools.keptFrozen = { region: newRegion(16384), seed: 0x12345678 }
  fill(pools.keptFrozen.region.bytes, pools.keptFrozen.seed)
  pools.keptFrozen.region.freeze()

  const listenPath = path.join(os.tmpdir(), `shmlink-soak-${process.pid}.sock`)
  const server = Endpoint.listen(listenPath, { acceptWritable: true })
  const { child, endpoint } = spawnWithEndpoint(process.execPath, ['--expose-gc', path.join(BENCH, 'children', 'soak-peer.mjs'), listenPath], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const childExit = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  childExit.then(({ code, signal }) => {
    if (!stopping) failLater(`the child exited early (code ${code}, signal ${signal})`)
  })
  const primary = new Link('primary', endpoint, 0, config.primaryWindow)
  links.add(primary)

  const samples = []
  const secondary = secondaryLoop(server).catch(failLater)
  const driving = primary.drive().catch(failLater)
  const deadline = started + config.durationS * 1000
  const COLUMNS = [['t s', 7], ['messages', 10], ['msg/s', 7], ['fds P/C', 8], ['RSS MiB P/C', 12], ['maps P/C', 9], ['regions P/C', 12], ['heap MiB P/C', 13], ['memfd MiB', 10], ['Shmem MiB', 10]]
  const line = (cells) => say(cells.map((cell, i) => String(cell).padStart(COLUMNS[i][1])).join(''))
  line(COLUMNS.map(([name]) => name))
  let lastMessages = 0
  let lastT = 0
  const mib = (kb) => (kb / 1024).toFixed(1)
  while (performance.now() < deadline && laterFailure === undefined) {
    await Promise.race([runFailed, new Promise((resolve) => setTimeout(resolve, Math.min(config.sampleS * 1000, Math.max(0, deadline - performance.now()))))])
    if (laterFailure !== undefined) break
    await Promise.race([runFailed, gate.close(2)])
    if (laterFailure !== undefined) break
    const phase = performance.now() - started < config.warmupS * 1000 ? 'warm-up' : 'run'
    const sample = await takeSample(primary, child.pid, started, phase)
    sample.messagesPerSecond = Math.round((sample.messages - lastMessages) / (sample.t - lastT))
    lastMessages = sample.messages
    lastT = sample.t
    samples.push(sample)
    line([
      `${sample.t}${phase === 'warm-up' ? 'w' : ' '}`,
      sample.messages,
      sample.messagesPerSecond,
      `${sample.parent.fds}/${sample.child.fds}`,
      `${mib(sample.parent.rssKb)}/${mib(sample.child.rssKb)}`,
      `${sample.parent.regionMappings}/${sample.child.regionMappings}`,
      `${sample.parent.regions}/${sample.child.regions}`,
      `${mib(sample.parent.heapUsedKb)}/${mib(sample.child.heapUsedKb)}`,
      mib(sample.soakShmemKb),
      mib(sample.shmemKb),
    ])
    gate.open()
  }
  stopping = true
  if (laterFailure !== undefined) {
    child.kill('SIGKILL')
    server.close()
    throw laterFailure
  }
  await driving
  primary.request(Op.STOP)
  await primary.drain()
  await secondary
  server.close()
  const quit = primary.request(Op.QUIT)
  const { message } = primary.answered(await primary.endpoint.recv())
  if (quit.seq + 1 !== primary.sendSeq) fail('QUIT: out of step')
  const childTotals = JSON.parse(message.payload.subarray(HEADER).toString()).totals
  const exit = await childExit
  if (exit.code !== 0) fail(`the child exited with code ${exit.code}, signal ${exit.signal}`)
  const elapsedS = (performance.now() - started) / 1000
  endpoint.close()
  for (const region of [...pools.shared, ...pools.transfer, pools.hold, pools.keptFrozen.region]) closeRegion(region)
  await settle()
  await settle()
  const end = { parent: sampleProcess(process.pid), shmemKb: shmemKb(), processStats: processStats(), fdList: fdList() }

  if (laterFailure !== undefined) throw laterFailure
  const problems = []
  if (childTotals.messagesIn !== counts.messagesOut) problems.push(`the child received ${childTotals.messagesIn} messages, the parent sent ${counts.messagesOut}`)
  if (childTotals.messagesOut !== counts.messagesIn) problems.push(`the child sent ${childTotals.messagesOut} messages, the parent received ${counts.messagesIn}`)
  const bounds = boundViolations(samples)
  problems.push(...bounds.problems)
  const leaked = end.fdList.filter((fd) => !before.fdList.includes(fd))
  if (end.parent.fds > before.parent.fds) problems.push(`the parent ends with ${end.parent.fds} descriptors, it started with ${before.parent.fds}: ${leaked.join(', ')}`)
  if (end.parent.regionMappings !== 0) problems.push(`the parent ends with ${end.parent.regionMappings} region mappings`)
  if (end.processStats.regions !== 0) problems.push(`the parent ends holding ${end.processStats.regions} regions of peers`)
  const messages = counts.messagesOut + counts.messagesIn + childTotals.messagesIn + childTotals.messagesOut
  return {
    elapsedS: Math.round(elapsedS * 10) / 10,
    messages,
    messagesPerSecond: Math.round(messages / elapsedS),
    parent: counts,
    child: childTotals,
    bounds: BOUNDS,
    strictShmem,
    limits: bounds.limits,
    start: before,
    end,
    samples,
    problems,
    warnings: bounds.warnings,
  }
}

async function killRun() {
  if (config.kills <= 0) return undefined
  const killOut = path.join(path.dirname(outFile), quick ? 'kill-quick.json' : 'kill.json')
  const args = [path.join(BENCH, 'kill.mjs'), '--kills', String(config.kills), '--seed', String(config.seed), '--out', killOut]
  say(`\nkill -9 run: node ${args.map((a) => path.relative(process.cwd(), a) || a).join(' ')}`)
  const child = spawn(process.execPath, args, { stdio: 'inherit' })
  const code = await new Promise((resolve) => child.on('close', resolve))
  let result
  try {
    result = JSON.parse(fs.readFileSync(killOut, 'utf8'))
  } catch {
    return { problems: [`bench/kill.mjs exited with code ${code} and wrote no results`] }
  }
  if (code !== 0 && result.problems.length === 0) result.problems.push(`bench/kill.mjs exited with code ${code}`)
  return { file: path.relative(ROOT, killOut), kills: result.kills, problems: result.problems }
}

const results = { config, machine: machineInfo(ROOT), date: new Date().toISOString() }
let failed = false
try {
  if (!onlyKills) {
    results.soak = await soak()
    const s = results.soak
    const first = s.samples.find((x) => x.phase === 'run') ?? s.samples[0]
    const last = s.samples.at(-1)
    say(`\n${s.messages} messages in ${s.elapsedS} s (${s.messagesPerSecond}/s); secondary connections ${s.parent.secondaryConnections} ` +
      `(closed by the parent ${s.parent.closedByParent}, with a region away ${s.parent.closedByParentWithRegionAway}, by the child ${s.parent.closedByChild}); ` +
      `regions created by the parent ${s.parent.regionsCreated}`)
    say(table([
      ['', 'fds P', 'fds C', 'RSS MiB P', 'RSS MiB C', 'maps P', 'maps C', 'memfd MiB', 'Shmem MiB'],
      ...[['first sample', s.samples[0]], ['first after warm-up', first], ['last', last]].map(([label, x]) => [
        label, x.parent.fds, x.child.fds, (x.parent.rssKb / 1024).toFixed(1), (x.child.rssKb / 1024).toFixed(1),
        x.parent.regionMappings, x.child.regionMappings, (x.soakShmemKb / 1024).toFixed(1), (x.shmemKb / 1024).toFixed(1),
      ]),
    ]))
    for (const warning of s.warnings) say(`warning: ${warning}`)
    for (const problem of s.problems) say(`FAIL ${problem}`)
    if (s.problems.length > 0) failed = true
  }
} catch (error) {
  failed = true
  results.soak = { problems: [error instanceof SoakFailure ? error.message : String(error.stack ?? error)] }
  say(`FAIL ${results.soak.problems[0]}`)
  process.exitCode = 1
}
results.kills = await killRun()
if (results.kills !== undefined && results.kills.problems.length > 0) failed = true
fs.mkdirSync(path.dirname(outFile), { recursive: true })
fs.writeFileSync(outFile, `${JSON.stringify(results, null, 2)}\n`)
say(`\n${failed ? 'FAILED' : 'passed'}; results in ${path.relative(process.cwd(), outFile)}`)
process.exit(failed ? 1 : 0)
