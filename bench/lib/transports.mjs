// The transports under comparison. Each one moves `size` bytes of the fill pattern to a
// receiver that touches one byte per 4 KiB page and answers with a small ack; a round is
// timed from just before the send until the ack is in the sender's hands.
//
// Interface (bench/driver.mjs drives it):
//   start()                       spawn the receiving side
//   supports(size)
//   prepare(size, data, want)     untimed: per-size setup, and one round whose receiver
//                                 checksums every byte, compared with `want`
//   runBlock(n)                   one discarded round, then n timed rounds -> Float64Array ns
//   barrier()                     untimed: the receiver collects its garbage
//   finishSize()                  untimed: release what prepare() made
//   stop()                        end the receiving side
//   abort(error)                  make a stuck runBlock() fail (watchdog)
// and optionally:
//   meta                          fields recorded with the row (strategy, settings, skipped)
//   sizeExtras()                  fields recorded with the row's summary for this size
//                                 (further series measured alongside the samples)
import { spawn, fork } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import { createInterface } from 'node:readline'
import { MessageChannel, Worker } from 'node:worker_threads'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { Bench } from 'tinybench'

import { ACK_LEN, ACK_MAGIC, PAGE, fullSum, pageSum, patternBuffer, readAck } from './data.mjs'
import { MAX_INLINE } from './plan.mjs'
import { summarize } from './stats.mjs'

const require = createRequire(import.meta.url)
const shmlink = require('../../index.js')
const { Region, RegionPool, spawnWithEndpoint } = shmlink

const here = path.dirname(fileURLToPath(import.meta.url))
export const BENCH_DIR = path.resolve(here, '..')
const CHILD = (name) => path.join(BENCH_DIR, 'children', name)
const now = process.hrtime.bigint
const SYNC_TIMEOUT_MS = 120_000

/** Every child process started here, so the driver can kill them all on the way out. */
export const children = new Set()
export function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** The per-size figures of a pooled-stream row from what its measured blocks summed. */
function poolStreamExtras(e, counter) {
  return {
    latency: summaryOf(e.latency),
    minflt_per_frame: {
      producer: e.frames > 0 ? e.minflt_producer / e.frames : null,
      consumer: e.frames > 0 ? e.minflt_consumer / e.frames : null,
      frames: e.frames,
      note: `minor page faults of each process (${counter}) over whole measured blocks (not setup, not the warm-up block), divided by their frames`,
    },
  }
}

function check(what, got, want) {
  if (got.page !== want.page) throw new Error(`${what}: page sum ${got.page} != ${want.page}`)
  if (got.a !== undefined && want.full !== undefined && (got.a !== want.full[0] || got.b !== want.full[1])) {
    throw new Error(`${what}: checksum ${got.a}/${got.b} != ${want.full[0]}/${want.full[1]}`)
  }
}

function checkPages(what, pages, count, want) {
  for (let i = 0; i < count; i++) {
    if (pages[i] !== want.page) throw new Error(`${what}: round ${i} page sum ${pages[i]} != ${want.page}`)
  }
}

const nodeArgs = ['--expose-gc']

// ---------------------------------------------------------------------------------------
// Placement: where the receiving processes run.

/**
 * Set once by the driver. In the split placement the driver itself runs under
 * `taskset -c 0` and every receiving process is started on CPU 1: Node children and peers
 * through `taskset -c 1`, the C programs' forked children with `--child-cpu 1` (they pin
 * themselves), the worker thread by `taskset -p` on its thread id. In the other
 * placements the children inherit the driver's affinity.
 */
export const placement = { name: 'unpinned', childCpu: undefined }

export function setPlacement(name) {
  placement.name = name
  placement.childCpu = name === 'split' ? 1 : undefined
}

/** [command, args] that run `command args` on the receiving CPU of this placement. */
export function onChildCpu(command, args) {
  if (placement.childCpu === undefined) return [command, args]
  return ['taskset', ['-c', String(placement.childCpu), command, ...args]]
}

/** The options a C program takes for this placement. */
export function cArgs() {
  return placement.childCpu === undefined ? [] : ['--child-cpu', String(placement.childCpu)]
}

// ---------------------------------------------------------------------------------------
// shmlink

const HEADER_KEEP = Buffer.from('R\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0') // a known region: keep it mapped
const HEADER_CLOSE = Buffer.from('R\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0') // first-time: unmap after the ack
const HEADER_COPY = Buffer.from('R\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0') // copy mode: the receiver copies out with readInto
const COMMAND = (letter) => Buffer.from(`${letter}\0\0\0`)

/** One child process (bench/children/shmlink-child.mjs) in one receive mode. */
export class ShmlinkConn {
  /**
   * ring: both ends offer a ring (docs/PROTOCOL.md §9), with the default busy-poll window.
   * into (sync mode only): both ends receive with recvSync({ into }), each into one buffer
   * of 64 KiB reused for every message.
   */
  constructor(mode, ring = false, into = false) {
    this.mode = mode // 'loop' | 'sync'
    this.ring = ring
    this.into = into
    this.users = 0
  }

  async start() {
    if (this.endpoint !== undefined) return
    const { child, endpoint } = spawnWithEndpoint(
      ...onChildCpu(process.execPath, [...nodeArgs, CHILD('shmlink-child.mjs'), this.into ? 'sync-into' : this.mode, this.ring ? 'ring' : 'socket']),
      { stdio: ['ignore', 'inherit', 'inherit'], ring: this.ring },
    )
    this.child = track(child)
    this.endpoint = endpoint
    this.exited = new Promise((resolve) => child.once('exit', resolve))
    await this.command('N')
  }

  /** An untimed exchange, in whichever mode. */
  async exchange(payload, options) {
    if (this.mode === 'sync') {
      this.endpoint.sendSync(payload, options)
      return this.endpoint.recvSync({ timeoutMs: SYNC_TIMEOUT_MS })
    }
    await this.endpoint.send(payload, options)
    return this.endpoint.recv()
  }

  async command(letter) {
    readAck((await this.exchange(COMMAND(letter))).payload)
  }

  abort(error) {
    this.endpoint?.close()
    this.child?.kill('SIGKILL')
    this.abortError = error
  }

  async stop() {
    if (this.endpoint === undefined) return
    this.endpoint.close()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
    this.endpoint = undefined
  }
}

export class ShmlinkTransport {
  /**
   * kind: 'inline' (the payload is the data), 'first' (a new region each round), 'known',
   * 'copy' (a known region in copy mode, as in Electron: the sender copies the data in with
   * region.write() each round, the receiver copies it out with readInto()).
   */
  constructor(conn, kind) {
    this.conn = conn
    this.kind = kind
    const sync = conn.mode === 'sync'
    this.id = `shmlink${conn.ring ? '-ring' : ''}-${kind}${sync ? '-sync' : ''}${conn.into ? '-into' : ''}`
    this.family = 'shmlink'
    this.label =
      {
        inline: 'shmlink, inline payload',
        first: 'shmlink, region sent the first time',
        known: 'shmlink, region already known to the peer',
        copy: 'shmlink copy mode (Electron): region.write() in, readInto() out, region known to the peer',
      }[kind] +
      (conn.ring ? ', through the ring (busy-poll 50 µs)' : '') +
      (sync ? (conn.into ? ' (recvSync into a reused buffer)' : ' (recvSync)') : ' (await recv)')
  }

  supports(size) {
    return this.kind !== 'inline' || size <= MAX_INLINE
  }

  start() {
    return this.conn.start()
  }

  async prepare(size, data, want) {
    this.size = size
    this.data = data
    this.want = want
    await this.conn.command('V')
    let reply
    if (this.kind === 'inline') {
      reply = await this.conn.exchange(data)
    } else {
      const region = Region.create(size)
      region.bytes.set(data)
      const header = { known: HEADER_KEEP, copy: HEADER_COPY, first: HEADER_CLOSE }[this.kind]
      reply = await this.conn.exchange(header, { regions: [region] })
      if (this.kind !== 'first') this.region = region
      else {
        region.close()
        await this.conn.command('N')
      }
    }
    check(`${this.id} ${size} B`, readAck(reply.payload), want)
  }

  async runBlock(n) {
    const samples = new Float64Array(n + 1)
    const pages = new Uint32Array(n + 1)
    const ep = this.conn.endpoint
    if (this.conn.mode === 'sync') {
      const data = this.data
      const region = this.region
      const recvOptions = this.conn.into ? { timeoutMs: SYNC_TIMEOUT_MS, into: Buffer.alloc(MAX_INLINE) } : { timeoutMs: SYNC_TIMEOUT_MS }
      if (this.kind === 'inline') {
        for (let i = 0; i <= n; i++) {
          const t0 = now()
          ep.sendSync(data)
          const m = ep.recvSync(recvOptions)
          samples[i] = Number(now() - t0)
          pages[i] = m.payload.readUInt32LE(4)
        }
      } else if (this.kind === 'known') {
        for (let i = 0; i <= n; i++) {
          const t0 = now()
          ep.sendSync(HEADER_KEEP, { regions: [region] })
          const m = ep.recvSync(recvOptions)
          samples[i] = Number(now() - t0)
          pages[i] = m.payload.readUInt32LE(4)
        }
      } else {
        throw new Error('first-time regions are measured in loop mode only')
      }
    } else if (this.kind === 'inline') {
      const data = this.data
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        await ep.send(data)
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        pages[i] = m.payload.readUInt32LE(4)
      }
    } else if (this.kind === 'copy') {
      const { region, data } = this
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        region.write(0, data)
        await ep.send(HEADER_COPY, { regions: [region] })
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        pages[i] = m.payload.readUInt32LE(4)
      }
    } else if (this.kind === 'known') {
      const region = this.region
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        await ep.send(HEADER_KEEP, { regions: [region] })
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        pages[i] = m.payload.readUInt32LE(4)
      }
    } else {
      for (let i = 0; i <= n; i++) {
        const region = Region.create(this.size)
        region.bytes.set(this.data)
        // Creation and fill are untimed, as in c-first; so is the collection the new 64 MiB
        // view starts in this process (V8 counts it as external memory), which would
        // otherwise run in the timed window, on the receiver's CPU when pinned.
        gc()
        const t0 = now()
        await ep.send(HEADER_CLOSE, { regions: [region] })
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        pages[i] = m.payload.readUInt32LE(4)
        region.close()
        await this.conn.command('N') // the child has unmapped it before the next round
      }
    }
    checkPages(this.id, pages, n + 1, this.want)
    return samples.subarray(1)
  }

  barrier() {
    return this.conn.command('B')
  }

  async finishSize() {
    if (this.region !== undefined) {
      this.region.close()
      this.region = undefined
      await this.conn.command('F')
    }
    this.data = undefined
  }

  abort(error) {
    this.conn.abort(error)
  }

  stop() {
    return this.conn.stop()
  }
}

/**
 * Frames in the warm-up block of the pooled-stream rows (the first block after prepare(),
 * discarded), however few rounds the plan gives 64 MiB. A few thousand frames, as the small
 * sizes' 4 000 warm-up rounds (bench/lib/plan.mjs): V8 optimizes the per-frame JavaScript
 * only after thousands of calls, and the consumer's young generation grows meanwhile, which
 * shows as page faults. With 100 warm-up frames, 2 400 measured frames counted 1.09 faults per
 * frame in the consumer; a 12 s stream of 18 800 frames counted 0.097, and over 5 s of a
 * stream already running `perf record -c 1 -e page-faults` saw 237 faults in about 8 500
 * frames, from TurboFan's compiler and malloc, none in the regions.
 */
const POOL_WARM_FRAMES = 3000

/** Writes `value` at offset 0, 4096, ... of `bytes` (the producer's part of a pooled frame). */
function stampPages(bytes, value) {
  for (let k = 0; k < bytes.length; k += PAGE) bytes[k] = value
}

/**
 * shmlink's pooled stream, measured as bench/c/pool.c measures c-pool-stream: a
 * RegionPool of `count` regions; per frame the producer acquires a region, writes one byte
 * per page (frame * 7 + 1 mod 256) and sends it; the consumer (children/pool-child.mjs)
 * reads one byte per page and hands it back; at most `depth` frames in flight. A sample is
 * the interval between successive hand-backs the producer sees; the first `depth` of a
 * block (the pipeline filling) are dropped. `handBack` is 'transfer' (the region is
 * transferred each way: neither side can touch it while the other has it) or 'shared'
 * (sent without transfer; the pool's acquire/release is the only discipline).
 */
export class ShmlinkPoolStreamTransport {
  constructor(handBack, { count = 3, depth = 3, framesPerRound = 50, sizes = [64 * 1024 * 1024], warmFrames = POOL_WARM_FRAMES } = {}) {
    this.handBack = handBack
    this.warmFrames = warmFrames
    this.count = count
    this.depth = depth
    this.framesPerRound = framesPerRound
    this.sizes = sizes
    this.id = handBack === 'transfer' ? 'shmlink-pool-stream-transfer' : 'shmlink-pool-stream'
    this.family = 'shmlink'
    this.label = `shmlink pooled stream (RegionPool of ${count}, ${handBack === 'transfer' ? 'each frame transferred to the consumer and back' : 'frames sent without transfer and sent back'}); per frame one byte per page written and read, at most ${depth} in flight; time per frame`
    this.meta = { count, depth, frames_per_round: framesPerRound, warmup_frames: warmFrames, hand_back: handBack, sample: 'interval between successive hand-backs seen by the producer (the stream period)' }
  }

  supports(size) {
    return this.sizes.includes(size)
  }

  async start() {
    const { child, endpoint } = spawnWithEndpoint(...onChildCpu(process.execPath, [...nodeArgs, CHILD('pool-child.mjs'), this.handBack]), {
      stdio: ['ignore', 'inherit', 'inherit'],
    })
    this.child = track(child)
    this.endpoint = endpoint
    this.exited = new Promise((resolve) => child.once('exit', resolve))
  }

  async prepare(size, data, want) {
    this.size = size
    this.pool = new RegionPool({ size, capacity: this.count })
    this.pages = Math.ceil(size / PAGE)
    this.frame = 0
    this.extra = { latency: [], minflt_producer: 0, minflt_consumer: 0, frames: 0 }
    this.warmUp = true
    // Every region of the pool made, mapped and checked on both sides once (as c/pool.c's setup).
    const regions = []
    for (let i = 0; i < this.count; i++) {
      const region = this.pool.tryAcquire()
      region.bytes.set(data.subarray(0, size))
      regions.push(region)
    }
    for (const region of regions) {
      const back = await this.exchange(region)
      check(`${this.id} ${size} B setup`, { page: back.readUInt32LE(4) }, want)
      this.pool.release(region)
    }
  }

  /** Sends one region and waits for it to come back; the hand-back record. */
  async exchange(region) {
    const header = Buffer.alloc(16)
    await this.endpoint.send(header, this.handBack === 'transfer' ? { transfer: [region] } : { regions: [region] })
    return (await this.endpoint.recv()).payload
  }

  async command(letter) {
    await this.endpoint.send(letter)
    return (await this.endpoint.recv()).payload.readUInt32LE(0)
  }

  async runBlock(n) {
    const frames = Math.max(n * this.framesPerRound, this.depth + 2, this.warmUp ? this.warmFrames : 0)
    const ep = this.endpoint
    const pool = this.pool
    const transfer = this.handBack === 'transfer'
    const samples = new Float64Array(frames)
    const latency = new Float64Array(frames)
    const started = new Float64Array(frames)
    const header = Buffer.alloc(16)
    await this.command('S')
    const faults0 = process.resourceUsage().minorPageFault
    let sent = 0
    let back = 0
    let last = now()
    while (back < frames) {
      while (sent < frames && sent - back < this.depth) {
        const region = pool.tryAcquire()
        if (region === undefined) break
        const frame = this.frame + sent
        started[sent] = Number(now())
        stampPages(region.bytes, (frame * 7 + 1) & 0xff)
        header.writeUInt32LE(frame, 0)
        await ep.send(header, transfer ? { transfer: [region] } : { regions: [region] })
        sent++
      }
      const { payload, regions } = await ep.recv()
      const t = now()
      const frame = payload.readUInt32LE(0)
      const want = (((frame * 7 + 1) & 0xff) * this.pages) >>> 0
      if (payload.readUInt32LE(4) !== want) throw new Error(`${this.id}: frame ${frame} page sum ${payload.readUInt32LE(4)} != ${want}`)
      pool.release(regions[0])
      samples[back] = Number(t - last)
      latency[back] = Number(t) - started[frame - this.frame]
      last = t
      back++
    }
    const producerFaults = process.resourceUsage().minorPageFault - faults0
    const consumerFaults = await this.command('E')
    this.frame += frames
    if (this.warmUp) {
      this.warmUp = false
      return samples.subarray(this.depth)
    }
    for (const x of latency.subarray(this.depth)) this.extra.latency.push(x)
    this.extra.minflt_producer += producerFaults
    this.extra.minflt_consumer += consumerFaults
    this.extra.frames += frames
    return samples.subarray(this.depth)
  }

  sizeExtras() {
    return poolStreamExtras(this.extra, 'process.resourceUsage')
  }

  async barrier() {}

  async finishSize() {
    this.pool?.close()
    this.pool = undefined
  }

  abort(error) {
    this.endpoint?.close()
    this.child?.kill('SIGKILL')
    this.abortError = error
  }

  async stop() {
    if (this.endpoint === undefined) return
    this.endpoint.close()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
    this.endpoint = undefined
  }
}

// ---------------------------------------------------------------------------------------
// child_process IPC

export class ChildProcessTransport {
  constructor(serialization) {
    this.serialization = serialization
    this.json = serialization === 'json'
    this.id = `child_process-${serialization}`
    this.family = 'copy'
    this.label = `child_process IPC, serialization '${serialization}'` + (this.json ? ' (data as base64)' : '')
  }

  supports() {
    return true
  }

  async start() {
    // fork() runs `execPath ...execArgv module ...args`; in the split placement execPath
    // is taskset, which keeps the IPC descriptor and execs Node on the child's CPU.
    const [execPath, execArgv] = onChildCpu(process.execPath, nodeArgs)
    const child = fork(CHILD('cp-child.mjs'), [this.serialization], {
      serialization: this.serialization,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execPath,
      execArgv,
    })
    this.child = track(child)
    this.exited = new Promise((resolve) => child.once('exit', resolve))
    child.on('message', (m) => {
      const waiter = this.waiter
      this.waiter = undefined
      waiter?.resolve(m)
    })
    child.once('exit', (code, signal) => {
      this.waiter?.reject(this.abortError ?? new Error(`${this.id} child exited (${code ?? signal})`))
      this.waiter = undefined
    })
    await this.roundTrip({ c: 'B' })
  }

  roundTrip(message) {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject }
      this.child.send(message)
    })
  }

  async prepare(size, data, want) {
    this.data = data
    this.want = want
    const reply = await this.roundTrip({ v: 1, d: this.json ? data.toString('base64') : data })
    check(`${this.id} ${size} B`, { page: reply.p, a: reply.a, b: reply.b }, want)
  }

  async runBlock(n) {
    const samples = new Float64Array(n + 1)
    const pages = new Uint32Array(n + 1)
    const data = this.data
    if (this.json) {
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        const m = await this.roundTrip({ d: data.toString('base64') })
        samples[i] = Number(now() - t0)
        pages[i] = m.p
      }
    } else {
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        const m = await this.roundTrip({ d: data })
        samples[i] = Number(now() - t0)
        pages[i] = m.p
      }
    }
    checkPages(this.id, pages, n + 1, this.want)
    return samples.subarray(1)
  }

  async barrier() {
    await this.roundTrip({ c: 'B' })
  }

  finishSize() {
    this.data = undefined
  }

  abort(error) {
    this.abortError = error
    this.child?.kill('SIGKILL')
  }

  async stop() {
    if (this.child === undefined) return
    this.child.disconnect()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------------------------------
// net over a UNIX socket

export class NetTransport {
  constructor(socketPath) {
    this.socketPath = socketPath
    this.id = 'net-unix'
    this.family = 'copy'
    this.label = 'net, UNIX stream socket (length-prefixed frames)'
    this.ack = Buffer.alloc(ACK_LEN)
    this.have = 0
  }

  supports() {
    return true
  }

  async start() {
    const server = net.createServer()
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.socketPath, resolve)
    })
    const accepted = new Promise((resolve) => server.once('connection', resolve))
    const child = spawn(...onChildCpu(process.execPath, [...nodeArgs, CHILD('net-child.mjs'), this.socketPath]), {
      stdio: ['ignore', 'inherit', 'inherit'],
    })
    this.child = track(child)
    this.exited = new Promise((resolve) => child.once('exit', resolve))
    child.once('exit', (code, signal) => {
      this.waiter?.reject(this.abortError ?? new Error(`net child exited (${code ?? signal})`))
      this.waiter = undefined
    })
    this.socket = await accepted
    server.close()
    this.socket.on('data', (chunk) => this.#onData(chunk))
    this.socket.on('error', (error) => {
      this.waiter?.reject(error)
      this.waiter = undefined
    })
    this.headers = { plain: Buffer.alloc(8), verify: Buffer.alloc(8), barrier: Buffer.alloc(8) }
    this.headers.verify[4] = 1
    this.headers.barrier[4] = 2
    await this.barrier()
  }

  #onData(chunk) {
    let at = 0
    while (at < chunk.length) {
      const take = Math.min(ACK_LEN - this.have, chunk.length - at)
      chunk.copy(this.ack, this.have, at, at + take)
      this.have += take
      at += take
      if (this.have === ACK_LEN) {
        this.have = 0
        const waiter = this.waiter
        this.waiter = undefined
        waiter?.resolve(this.ack)
      }
    }
  }

  roundTrip(header, data) {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject }
      const socket = this.socket
      socket.cork()
      socket.write(header)
      if (data !== undefined) socket.write(data)
      socket.uncork()
    })
  }

  async prepare(size, data, want) {
    this.data = data
    this.want = want
    this.headers.plain.writeUInt32LE(size, 0)
    this.headers.verify.writeUInt32LE(size, 0)
    check(`${this.id} ${size} B`, readAck(await this.roundTrip(this.headers.verify, data)), want)
  }

  async runBlock(n) {
    const samples = new Float64Array(n + 1)
    const pages = new Uint32Array(n + 1)
    const { data } = this
    const header = this.headers.plain
    for (let i = 0; i <= n; i++) {
      const t0 = now()
      const ack = await this.roundTrip(header, data)
      samples[i] = Number(now() - t0)
      pages[i] = ack.readUInt32LE(4)
    }
    checkPages(this.id, pages, n + 1, this.want)
    return samples.subarray(1)
  }

  async barrier() {
    readAck(await this.roundTrip(this.headers.barrier))
  }

  finishSize() {
    this.data = undefined
  }

  abort(error) {
    this.abortError = error
    this.socket?.destroy()
    this.child?.kill('SIGKILL')
  }

  async stop() {
    if (this.socket === undefined) return
    this.socket.end()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------------------------------
// In-process transports, timed with tinybench.

/** Runs `fn` n times after one warm-up call; latency samples in ns (sorted: tinybench sorts them). */
async function tinybench(name, n, fn, divide = 1) {
  const bench = new Bench({
    iterations: n,
    time: 0,
    warmup: true,
    warmupIterations: 1,
    warmupTime: 0,
    retainSamples: true,
    timestampProvider: 'hrtimeNow',
    throws: true,
  })
  bench.add(name, fn)
  await bench.run()
  const result = bench.tasks[0].result
  if (result.state !== 'completed' || result.latency?.samples === undefined) {
    throw new Error(`tinybench ${name}: ${result.state} ${result.error?.message ?? ''}`)
  }
  return Float64Array.from(result.latency.samples, (ms) => (ms * 1e6) / divide)
}

export class WorkerTransport {
  constructor() {
    this.id = 'worker_threads'
    this.family = 'reference'
    this.label = 'worker_threads MessageChannel (same process, structured clone)'
  }

  supports() {
    return true
  }

  async start() {
    const { port1, port2 } = new MessageChannel()
    this.port = port1
    this.worker = new Worker(CHILD('worker.mjs'), {
      workerData: { port: port2, cpu: placement.childCpu },
      transferList: [port2],
    })
    this.worker.on('error', (error) => {
      this.waiter?.reject(error)
      this.waiter = undefined
    })
    port1.on('message', (m) => {
      const waiter = this.waiter
      this.waiter = undefined
      waiter?.resolve(m)
    })
    await this.roundTrip({ c: 'B' })
  }

  roundTrip(message) {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject }
      this.port.postMessage(message)
    })
  }

  async prepare(size, data, want) {
    this.data = data
    this.want = want
    const reply = await this.roundTrip({ v: 1, d: data })
    check(`${this.id} ${size} B`, { page: reply.p, a: reply.a, b: reply.b }, want)
  }

  async runBlock(n) {
    const pages = []
    const message = { d: this.data }
    const samples = await tinybench(this.id, n, async () => {
      const m = await this.roundTrip(message)
      pages.push(m.p)
    })
    checkPages(this.id, pages, pages.length, this.want)
    return samples
  }

  async barrier() {
    await this.roundTrip({ c: 'B' })
  }

  finishSize() {
    this.data = undefined
  }

  abort(error) {
    this.waiter?.reject(error)
    this.waiter = undefined
    this.worker?.terminate()
  }

  async stop() {
    this.port?.close()
    await this.worker?.terminate()
  }
}

export class MemcpyTransport {
  constructor() {
    this.id = 'memcpy'
    this.family = 'floor'
    this.label = 'memcpy (Buffer.copy, one process): the floor for a copying design'
  }

  supports() {
    return true
  }

  async start() {}

  async prepare(size, data, want) {
    this.src = data
    this.dst = Buffer.allocUnsafeSlow(size)
    this.want = want
    data.copy(this.dst) // also faults the destination in
    check(`memcpy ${size} B`, { page: pageSum(this.dst), a: fullSum(this.dst)[0], b: fullSum(this.dst)[1] }, want)
    // Tiny copies are timed in batches (a sample is the batch time divided by its length).
    this.reps = Math.max(1, Math.floor(16384 / size))
  }

  async runBlock(n) {
    const { src, dst, reps } = this
    const samples = await tinybench(
      this.id,
      n,
      reps === 1
        ? () => {
            src.copy(dst)
          }
        : () => {
            for (let r = 0; r < reps; r++) src.copy(dst)
          },
      reps,
    )
    if (pageSum(dst) !== this.want.page) throw new Error('memcpy: destination does not match')
    return samples
  }

  async barrier() {}

  finishSize() {
    this.src = undefined
    this.dst = undefined
  }

  abort() {}

  async stop() {}
}

// ---------------------------------------------------------------------------------------
// The C programs, driven over stdin/stdout.

/**
 * A line-oriented C helper process: one command line in, one answer line out. An answer
 * is "ok <n> <v>..." optionally followed by named series " | <name> <n> <v>...", or
 * "err <reason>". `args` are its command-line options (cArgs() for the placement).
 */
export class CProcess {
  constructor(binary, args = []) {
    this.binary = binary
    this.args = args
  }

  start() {
    if (this.proc !== undefined) return
    this.proc = track(spawn(this.binary, this.args, { stdio: ['pipe', 'pipe', 'inherit'] }))
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve))
    this.lines = createInterface({ input: this.proc.stdout, crlfDelay: Infinity })
    this.queue = []
    this.lines.on('line', (line) => {
      const waiter = this.waiter
      this.waiter = undefined
      waiter?.resolve(line)
    })
    this.proc.stdin.on('error', () => {}) // a dead process shows up as 'exit'
    this.proc.once('exit', (code, signal) => {
      this.dead = this.abortError ?? new Error(`${path.basename(this.binary)} exited (${code ?? signal})`)
      this.waiter?.reject(this.dead)
      this.waiter = undefined
    })
  }

  /** Sends one command; returns its answer: { samples, series: { name: Float64Array } } (ns). */
  async runSeries(command) {
    if (this.dead !== undefined) throw this.dead
    const line = await new Promise((resolve, reject) => {
      this.waiter = { resolve, reject }
      this.proc.stdin.write(`${command}\n`)
    })
    if (!line.startsWith('ok ')) throw new Error(`${path.basename(this.binary)} ${command}: ${line}`)
    const parse = (parts) => {
      const n = Number(parts[0])
      if (!(parts.length - 1 === n)) throw new Error(`${path.basename(this.binary)} ${command}: malformed answer`)
      return Float64Array.from(parts.slice(1), Number)
    }
    const [head, ...rest] = line.split(' | ')
    const samples = parse(head.split(' ').slice(1))
    const series = {}
    for (const part of rest) {
      const [name, ...values] = part.split(' ')
      series[name] = parse(values)
    }
    return { samples, series }
  }

  /** Sends one command and returns the samples of its answer (ns). */
  async run(command) {
    return (await this.runSeries(command)).samples
  }

  abort(error) {
    this.abortError = error
    this.proc?.kill('SIGKILL')
  }

  async stop() {
    if (this.proc === undefined) return
    this.proc.stdin.end('quit\n')
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
    this.proc = undefined
  }
}

export class CPingPongTransport {
  /** mode: 'inline' (the record carries the data) or 'shared' (a known memfd region). */
  constructor(proc, mode) {
    this.proc = proc
    this.mode = mode
    this.id = `c-seqpacket-${mode}`
    this.family = 'floor'
    this.label =
      mode === 'inline'
        ? 'C SOCK_SEQPACKET ping-pong, data in the record (floor for inline)'
        : 'C SOCK_SEQPACKET ping-pong, memfd known to the peer (floor for a known region)'
  }

  supports(size) {
    return this.mode === 'shared' || (size >= 16 && size <= MAX_INLINE)
  }

  async start() {
    this.proc.start()
  }

  async prepare(size) {
    this.size = size
    await this.proc.run(`${this.mode} ${size} 0 1`) // the C side verifies the checksum itself
  }

  async runBlock(n) {
    return (await this.proc.run(`${this.mode} ${this.size} ${n + 1} 0`)).subarray(1)
  }

  async barrier() {}

  finishSize() {}

  abort(error) {
    this.proc.abort(error)
  }

  stop() {
    return this.proc.stop()
  }
}

// ---------------------------------------------------------------------------------------
// The C and JavaScript baselines for pools, rings and first-time handoffs (bench/c/first.c,
// pool.c, spin.c; bench/children/spin-child.mjs). Each program documents exactly what it
// measures; docs/BENCHMARKS.md summarizes it.

/** The populate strategies of bench/c/first.c, and the one the `c-first` row uses. */
export const FIRST_PRODUCER = ['none', 'map_populate', 'madv_populate_write']
export const FIRST_RECEIVER = ['none', 'map_populate', 'madv_populate_read']
/**
 * The default: measured on the benchmark machine (docs/BENCHMARKS.md, "First-time handoff
 * in C"), populating on the receiver made the handoff slower (the populate call walks
 * every page again after fault-around has mapped them 16 at a time) and populating on the
 * producer made no difference beyond noise, so the baseline populates nothing. The
 * `first_strategies` section of each placement re-measures all nine combinations.
 */
export const FIRST_DEFAULT = { producer: 'none', receiver: 'none' }

function summaryOf(values) {
  return values.length > 0 ? summarize(values) : undefined
}

/** shmlink-first in C: a new sealed memfd per round, its descriptor sent once. */
export class CFirstTransport {
  constructor(proc, strategy = FIRST_DEFAULT) {
    this.proc = proc
    this.strategy = strategy
    this.id = 'c-first'
    this.family = 'floor'
    this.label = `C first-time handoff: a new sealed memfd each round, its descriptor over SOCK_SEQPACKET; the receiver checks, maps and reads every page (populate: producer ${strategy.producer}, receiver ${strategy.receiver})`
    this.meta = { strategy }
  }

  supports(size) {
    return size % 4096 === 0
  }

  async start() {
    this.proc.start()
    const { series } = await this.proc.runSeries('probe')
    this.meta.madv_populate_supported = { read: series.supported[0] === 1, write: series.supported[1] === 1 }
  }

  command(rounds, verify) {
    return `first ${this.size} ${rounds} ${verify} ${this.strategy.producer} ${this.strategy.receiver}`
  }

  async prepare(size) {
    this.size = size
    this.extra = { fill: [], total: [], recv_minflt: [] }
    this.warmUp = true // the driver runs one warm-up block after prepare(): not in the extras
    await this.proc.run(this.command(1, 1)) // the child checksums every byte; the program compares
  }

  async runBlock(n) {
    const { samples, series } = await this.proc.runSeries(this.command(n + 1, 0))
    if (this.warmUp) {
      this.warmUp = false
      return samples.subarray(1)
    }
    for (const [name, store] of Object.entries(this.extra)) {
      for (let i = 1; i < series[name].length; i++) store.push(series[name][i])
    }
    return samples.subarray(1)
  }

  sizeExtras() {
    return {
      handover: 'the samples: sendmsg of the descriptor until the ack (what shmlink-first times)',
      fill: summaryOf(this.extra.fill),
      total: summaryOf(this.extra.total),
      recv_minflt: summaryOf(this.extra.recv_minflt),
    }
  }

  async barrier() {}

  finishSize() {}

  abort(error) {
    this.proc.abort(error)
  }

  stop() {
    return this.proc.stop()
  }
}

/** A stream of frames through a fixed pool of regions (bench/c/pool.c). */
export class CPoolStreamTransport {
  /** A block of n rounds is n * framesPerRound frames; count regions, at most depth in flight. */
  constructor(proc, { count = 3, depth = 3, framesPerRound = 50, sizes = [64 * 1024 * 1024] } = {}) {
    this.proc = proc
    this.sizes = sizes
    this.count = count
    this.depth = depth
    this.framesPerRound = framesPerRound
    this.id = 'c-pool-stream'
    this.family = 'floor'
    this.label = `C pooled stream: ${count} memfd regions mapped once on both sides; per frame the producer writes one byte per page of a free region and sends its index, the consumer reads one byte per page and hands the index back (at most ${depth} in flight); time per frame`
    this.meta = { count, depth, frames_per_round: framesPerRound, warmup_frames: POOL_WARM_FRAMES, sample: 'interval between successive hand-backs seen by the producer (the stream period)' }
  }

  supports(size) {
    return this.sizes.includes(size)
  }

  async start() {
    this.proc.start()
  }

  async prepare(size) {
    this.size = size
    this.extra = { latency: [], minflt_producer: 0, minflt_consumer: 0, frames: 0 }
    this.warmUp = true // the driver runs one warm-up block after prepare(): not in the extras
    await this.proc.run(`setup ${size} ${this.count} 1`) // verifies every region in full
  }

  async runBlock(n) {
    const frames = Math.max(n * this.framesPerRound, this.depth + 2, this.warmUp ? POOL_WARM_FRAMES : 0)
    const { samples, series } = await this.proc.runSeries(`stream ${frames} ${this.depth}`)
    if (this.warmUp) {
      this.warmUp = false
      return samples
    }
    for (const x of series.latency) this.extra.latency.push(x)
    this.extra.minflt_producer += series.minflt[0]
    this.extra.minflt_consumer += series.minflt[1]
    this.extra.frames += series.frames[0]
    return samples
  }

  sizeExtras() {
    return poolStreamExtras(this.extra, 'ru_minflt')
  }

  async barrier() {}

  async finishSize() {
    await this.proc.run('teardown')
  }

  abort(error) {
    this.proc.abort(error)
  }

  stop() {
    return this.proc.stop()
  }
}

/** How many round trips one spin sample averages (a clock read costs about as much as a round). */
/**
 * The JavaScript floor of the pooled stream (bench/children/pool-touch.mjs): its page
 * loops, one frame after another in one process, with no IPC. A block of n rounds is
 * n * framesPerRound frames; a sample is one frame (write one byte per page of a region,
 * then read one byte per page of the region written two frames before).
 */
export class JsPoolTouchTransport {
  constructor({ count = 3, framesPerRound = 50, sizes = [64 * 1024 * 1024] } = {}) {
    this.count = count
    this.framesPerRound = framesPerRound
    this.sizes = sizes
    this.id = 'js-pool-touch'
    this.family = 'floor'
    this.label = `JavaScript floor of the pooled stream: the same page loops on ${count} shmlink regions in one process, no IPC; per frame one byte per page written, then one byte per page read of the region written two frames before`
    this.meta = { count, frames_per_round: framesPerRound, warmup_frames: POOL_WARM_FRAMES, sample: 'one frame' }
  }

  supports(size) {
    return this.sizes.includes(size)
  }

  async start() {
    this.proc = new CProcess(...onChildCpu(process.execPath, [...nodeArgs, CHILD('pool-touch.mjs')]))
    this.proc.start()
  }

  async prepare(size) {
    await this.proc.run(`setup ${size} ${this.count}`)
    this.warmUp = true
  }

  async runBlock(n) {
    const frames = Math.max(n * this.framesPerRound, this.count, this.warmUp ? POOL_WARM_FRAMES : 0)
    this.warmUp = false
    return this.proc.run(`frames ${frames}`)
  }

  async barrier() {}

  async finishSize() {}

  abort(error) {
    this.proc?.abort(error)
  }

  stop() {
    return this.proc?.stop()
  }
}

export const SPIN_BATCH = 10

/** The C spin floor (bench/c/spin.c): 16-byte round trips through one cache line each way. */
export class CSpinTransport {
  /** spinLimit: pause-spins before a sched_yield() (1: yield at once, the right thing on one CPU). */
  constructor(proc, spinLimit) {
    this.proc = proc
    this.spinLimit = spinLimit
    this.id = 'c-spin'
    this.family = 'floor'
    this.label = `C spin floor: 16-byte round trip through shared memory, C11 acquire/release on one cache line per direction, busy-wait (sched_yield after ${spinLimit} spins); each sample averages ${SPIN_BATCH} round trips`
    this.meta = { spin_limit: spinLimit, batch: SPIN_BATCH }
  }

  supports(size) {
    return size === 16
  }

  async start() {
    this.proc.start()
  }

  async prepare() {
    this.yields = [0, 0]
    this.rounds = 0
    this.warmUp = true // the driver runs one warm-up block after prepare(): not in the counts
    await this.proc.run(`spin 1 1 ${this.spinLimit} 1`) // the child checksums the message; compared in C
  }

  async runBlock(n) {
    const { samples, series } = await this.proc.runSeries(`spin ${n + 1} 0 ${this.spinLimit} ${SPIN_BATCH}`)
    if (this.warmUp) {
      this.warmUp = false
      return samples.subarray(1)
    }
    this.yields[0] += series.yields[0]
    this.yields[1] += series.yields[1]
    this.rounds += (n + 1) * SPIN_BATCH
    return samples.subarray(1)
  }

  sizeExtras() {
    return { yields_per_round: { parent: this.yields[0] / this.rounds, child: this.yields[1] / this.rounds } }
  }

  async barrier() {}

  finishSize() {}

  abort(error) {
    this.proc.abort(error)
  }

  stop() {
    return this.proc.stop()
  }
}

/**
 * The JavaScript spin floor: two Node processes ping-pong through one word per direction
 * of a 4 KiB shmlink region with Atomics.load / Atomics.store, busy-waiting
 * (bench/children/spin-child.mjs has the layout and the ordering argument). The region is
 * handed to the child once at start; the endpoint then carries only per-block commands.
 */
export class JsSpinTransport {
  /** napAfter: unsuccessful loads before a 50 µs nap (0: never); skip: why not to run here. */
  constructor({ napAfter = 0, skip } = {}) {
    this.napAfter = napAfter
    this.skip = skip
    this.id = 'js-spin'
    this.family = 'floor'
    this.label = `JavaScript spin floor: 16-byte round trip through a shmlink region, Atomics.load/Atomics.store on an Int32Array, busy-wait${napAfter ? ` (a 50 µs nap after ${napAfter} loads)` : ''}; each sample averages ${SPIN_BATCH} round trips`
    this.meta = skip ? { skipped: skip } : { nap_after: napAfter, batch: SPIN_BATCH }
    this.next = 1
  }

  supports(size) {
    return size === 16 && this.skip === undefined
  }

  async start() {
    if (this.skip !== undefined) return
    const { child, endpoint } = spawnWithEndpoint(
      ...onChildCpu(process.execPath, [...nodeArgs, CHILD('spin-child.mjs')]),
      { stdio: ['ignore', 'inherit', 'inherit'] },
    )
    this.child = track(child)
    this.endpoint = endpoint
    this.exited = new Promise((resolve) => child.once('exit', resolve))
    this.region = Region.create(4096)
    const bytes = this.region.bytes
    this.w = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
    endpoint.sendSync(Buffer.from('R'), { regions: [this.region] }) // the only time it travels
    readAck(endpoint.recvSync({ timeoutMs: SYNC_TIMEOUT_MS }).payload)
    this.napWord = new Int32Array(new SharedArrayBuffer(4))
    // The message: 16 pattern bytes as four little-endian words; word 1 carries the round.
    const m = patternBuffer(16)
    this.msg = [m.readInt32LE(0), m.readInt32LE(4), m.readInt32LE(8), m.readInt32LE(12)]
    this.page = m[0]
  }

  command(first, rounds, verify) {
    const c = Buffer.alloc(17)
    c[0] = 0x53 // S
    c.writeInt32LE(first, 4)
    c.writeUInt32LE(rounds, 8)
    c[12] = verify ? 1 : 0
    c.writeUInt32LE(this.napAfter, 13)
    this.endpoint.sendSync(c)
    readAck(this.endpoint.recvSync({ timeoutMs: SYNC_TIMEOUT_MS }).payload) // the child is spinning now
  }

  /**
   * Throws if the child has died or a round has waited too long: a spinning loop never
   * returns to the event loop, so neither 'exit' events nor the driver's watchdog can
   * stop it. Called every few million unsuccessful loads.
   */
  checkPeer() {
    let state
    try {
      state = fs.readFileSync(`/proc/${this.child.pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0]
    } catch {
      state = 'gone'
    }
    if (state === 'Z' || state === 'X' || state === 'gone') throw new Error('js-spin: the child died')
    const t = Date.now()
    this.spinSince ??= t
    if (t - this.spinSince > SYNC_TIMEOUT_MS) throw new Error('js-spin: no reply for too long')
  }

  /** The end of a block: the child's answer carries its nap count. */
  done() {
    return readAck(this.endpoint.recvSync({ timeoutMs: SYNC_TIMEOUT_MS }).payload).page
  }

  async prepare(size, data, want) {
    this.naps = [0, 0]
    this.rounds = 0
    this.warmUp = true
    // One untimed round whose reply is the child's checksum of the 16 bytes as sent.
    const first = this.next++
    this.command(first, 1, true)
    const w = this.w
    w[1] = this.msg[0]
    w[2] = first
    w[3] = this.msg[2]
    w[4] = this.msg[3]
    Atomics.store(w, 0, first)
    for (let misses = 1; Atomics.load(w, 16) !== first; misses++) {
      if ((misses & 0x3fffff) === 0) this.checkPeer()
    }
    const got = { magic: w[17] >>> 0, page: w[18], a: w[19] >>> 0, b: w[20] >>> 0 }
    this.done()
    const sent = Buffer.alloc(16)
    for (let k = 0; k < 4; k++) sent.writeInt32LE(w[1 + k], k * 4)
    const [a, b] = fullSum(sent)
    if (got.magic !== ACK_MAGIC || got.page !== this.page || got.a !== a || got.b !== b) {
      throw new Error('js-spin: the child did not read the message that was sent')
    }
    if (size !== 16 || want.page !== this.page) throw new Error('js-spin: measures 16-byte messages only')
  }

  async runBlock(n) {
    const batches = n + 1
    const rounds = batches * SPIN_BATCH
    const first = this.next
    this.next += rounds
    this.spinSince = undefined
    this.command(first, rounds, false)
    const samples = new Float64Array(batches)
    const magic = new Int32Array(rounds)
    const page = new Int32Array(rounds)
    const echo = new Int32Array(rounds)
    const w = this.w
    const [m0, , m2, m3] = this.msg
    const napAfter = this.napAfter
    const slowPath = napAfter || 1 << 22
    const napWord = this.napWord
    let naps = 0
    let seq = first
    for (let s = 0; s < batches; s++) {
      const t0 = now()
      for (let k = 0; k < SPIN_BATCH; k++, seq++) {
        w[1] = m0
        w[2] = seq
        w[3] = m2
        w[4] = m3
        Atomics.store(w, 0, seq) // publishes the four words above (see spin-child.mjs)
        let misses = 0
        while (Atomics.load(w, 16) !== seq) {
          if (++misses < slowPath) continue
          // Every slowPath unsuccessful loads: nap if asked to, and see whether the child lives.
          misses = 0
          if (napAfter !== 0) {
            Atomics.wait(napWord, 0, 0, 0.05)
            naps++
          }
          this.checkPeer()
        }
        const r = seq - first
        magic[r] = w[17]
        page[r] = w[18]
        echo[r] = w[19]
      }
      samples[s] = Number(now() - t0) / SPIN_BATCH
    }
    const childNaps = this.done()
    for (let r = 0; r < rounds; r++) {
      if (magic[r] >>> 0 !== ACK_MAGIC || page[r] !== this.page || echo[r] !== first + r) {
        throw new Error(`js-spin: round ${r}: the reply does not match`)
      }
    }
    if (this.warmUp) this.warmUp = false // the driver's warm-up block: not in the counts
    else {
      this.naps[0] += naps
      this.naps[1] += childNaps
      this.rounds += rounds
    }
    return samples.subarray(1)
  }

  sizeExtras() {
    return this.napAfter ? { naps_per_round: { parent: this.naps[0] / this.rounds, child: this.naps[1] / this.rounds } } : {}
  }

  async barrier() {
    this.endpoint.sendSync(Buffer.from('B'))
    readAck(this.endpoint.recvSync({ timeoutMs: SYNC_TIMEOUT_MS }).payload)
  }

  finishSize() {}

  abort(error) {
    this.abortError = error
    this.endpoint?.close()
    this.child?.kill('SIGKILL')
  }

  async stop() {
    if (this.endpoint === undefined) return
    this.endpoint.close()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(timer)
    this.region.close()
    this.endpoint = undefined
  }
}

// ---------------------------------------------------------------------------------------
// Region creation: shmlink against the same system calls in C.

export class NodeRegionCreate {
  constructor() {
    this.id = 'shmlink-region-create'
    this.label = 'Region.create(size) + region.bytes + region.close()'
  }

  async runBlock(size, n) {
    return tinybench(this.id, n, () => {
      const region = Region.create(size)
      if (region.bytes.length !== size) throw new Error('region has the wrong size')
      region.close()
    })
  }
}

export class NodeRegionCreateBare {
  constructor() {
    this.id = 'shmlink-region-create-no-view'
    this.label = 'Region.create(size) + region.close() (no JavaScript view)'
  }

  async runBlock(size, n) {
    return tinybench(this.id, n, () => {
      Region.create(size).close()
    })
  }
}

export class CRegionCreate {
  constructor(proc) {
    this.proc = proc
    this.id = 'c-region-create'
    this.label = 'C: memfd_create + ftruncate + F_ADD_SEALS + mmap + munmap + close'
  }

  async runBlock(size, n) {
    this.proc.start()
    return (await this.proc.run(`${size} ${n + 1}`)).subarray(1)
  }
}

export { shmlink }
