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
import { spawn, fork } from 'node:child_process'
import { createRequire } from 'node:module'
import net from 'node:net'
import { createInterface } from 'node:readline'
import { MessageChannel, Worker } from 'node:worker_threads'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { Bench } from 'tinybench'

import { ACK_LEN, fullSum, pageSum, readAck } from './data.mjs'
import { MAX_INLINE } from './plan.mjs'

const require = createRequire(import.meta.url)
const shmlink = require('../../index.js')
const { Region, spawnWithEndpoint } = shmlink

const here = path.dirname(fileURLToPath(import.meta.url))
export const BENCH_DIR = path.resolve(here, '..')
const CHILD = (name) => path.join(BENCH_DIR, 'children', name)
const now = process.hrtime.bigint
const SYNC_TIMEOUT_MS = 120_000

/** Every child process started here, so the driver can kill them all on the way out. */
export const children = new Set()
function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
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
// shmlink

const HEADER_KEEP = Buffer.from('R\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0') // a known region: keep it mapped
const HEADER_CLOSE = Buffer.from('R\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0') // first-time: unmap after the ack
const COMMAND = (letter) => Buffer.from(`${letter}\0\0\0`)

/** One child process (bench/children/shmlink-child.mjs) in one receive mode. */
export class ShmlinkConn {
  constructor(mode) {
    this.mode = mode // 'loop' | 'sync'
    this.users = 0
  }

  async start() {
    if (this.endpoint !== undefined) return
    const { child, endpoint } = spawnWithEndpoint(process.execPath, [...nodeArgs, CHILD('shmlink-child.mjs'), this.mode], {
      stdio: ['ignore', 'inherit', 'inherit'],
    })
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
  /** kind: 'inline' (the payload is the data), 'first' (a new region each round), 'known'. */
  constructor(conn, kind) {
    this.conn = conn
    this.kind = kind
    const sync = conn.mode === 'sync'
    this.id = `shmlink-${kind}${sync ? '-sync' : ''}`
    this.family = 'shmlink'
    this.label = {
      inline: 'shmlink, inline payload',
      first: 'shmlink, region sent the first time',
      known: 'shmlink, region already known to the peer',
    }[kind] + (sync ? ' (recvSync)' : ' (await recv)')
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
      reply = await this.conn.exchange(this.kind === 'known' ? HEADER_KEEP : HEADER_CLOSE, { regions: [region] })
      if (this.kind === 'known') this.region = region
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
      const recvOptions = { timeoutMs: SYNC_TIMEOUT_MS }
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
    const child = fork(CHILD('cp-child.mjs'), [this.serialization], {
      serialization: this.serialization,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: nodeArgs,
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
    const child = spawn(process.execPath, [...nodeArgs, CHILD('net-child.mjs'), this.socketPath], {
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
    this.worker = new Worker(CHILD('worker.mjs'), { workerData: { port: port2 }, transferList: [port2] })
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

/** A line-oriented C helper process: one command line in, one answer line out. */
export class CProcess {
  constructor(binary) {
    this.binary = binary
  }

  start() {
    if (this.proc !== undefined) return
    this.proc = track(spawn(this.binary, [], { stdio: ['pipe', 'pipe', 'inherit'] }))
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

  /** Sends one command and returns the samples of its answer (ns). */
  async run(command) {
    if (this.dead !== undefined) throw this.dead
    const line = await new Promise((resolve, reject) => {
      this.waiter = { resolve, reject }
      this.proc.stdin.write(`${command}\n`)
    })
    const parts = line.split(' ')
    if (parts[0] !== 'ok') throw new Error(`${path.basename(this.binary)} ${command}: ${line}`)
    const n = Number(parts[1])
    const samples = new Float64Array(n)
    for (let i = 0; i < n; i++) samples[i] = Number(parts[i + 2])
    return samples
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
