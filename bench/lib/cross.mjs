// Node against a peer written in each language, every peer playing role `echo` of
// peers/SCENARIO.md: it connects to a socket we listen on, and answers each message with the
// same payload and the same regions after reading one byte per 4 KiB page of them.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

import { patternBuffer } from './data.mjs'
import { BENCH_DIR, children, onChildCpu, shmlink } from './transports.mjs'

const ROOT = path.resolve(BENCH_DIR, '..')
const { Endpoint, Region } = shmlink
const now = process.hrtime.bigint

export const LANGUAGES = [
  { lang: 'node', command: process.execPath, args: [path.join(BENCH_DIR, 'peers', 'node-echo.mjs')], built: process.execPath },
  { lang: 'rust', command: path.join(ROOT, 'target', 'release', 'shmlink-peer'), args: [] },
  { lang: 'go', command: path.join(ROOT, 'peers', 'go', 'build', 'shmlink-peer'), args: [] },
  { lang: 'python', command: path.join(ROOT, 'peers', 'python', 'build', 'venv', 'bin', 'python'), args: [path.join(ROOT, 'peers', 'python', 'peer.py')] },
  { lang: 'c', command: path.join(ROOT, 'peers', 'c', 'build', 'shmlink-peer'), args: [] },
]

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

export class EchoPeer {
  constructor(spec, socketDir) {
    this.lang = spec.lang
    this.spec = spec
    this.socketPath = path.join(socketDir, `echo-${spec.lang}.sock`)
  }

  /** Why this peer cannot run here, or undefined. */
  missing() {
    const file = this.spec.built ?? this.spec.command
    try {
      fs.accessSync(file, this.spec.built === undefined ? fs.constants.X_OK : fs.constants.R_OK)
      return undefined
    } catch {
      const shown = path.relative(ROOT, file)
      return `peer not built: ${shown.startsWith('..') ? file : shown}`
    }
  }

  async start() {
    const server = Endpoint.listen(this.socketPath, { acceptWritable: true })
    try {
      const child = spawn(...onChildCpu(this.spec.command, [...this.spec.args, 'echo', this.socketPath]), {
        stdio: ['ignore', 'inherit', 'inherit'],
      })
      children.add(child)
      this.child = child
      this.exited = new Promise((resolve) => {
        child.once('exit', (code, signal) => resolve(code ?? signal))
        child.once('error', (error) => resolve(error.message)) // e.g. python3 not installed
      })
      child.once('exit', () => children.delete(child))
      this.endpoint = await withTimeout(
        Promise.race([server.accept(), this.exited.then((code) => Promise.reject(new Error(`peer exited (${code})`)))]),
        20_000,
        `${this.lang} peer connect`,
      )
    } finally {
      server.close()
    }
  }

  /** Untimed: the first 16-byte exchange, and the 64 MiB region's first handoff. */
  async prepare(kind, size) {
    this.kind = kind
    this.payload = patternBuffer(16, 3)
    if (kind === 'known') {
      this.region = Region.create(size)
      this.region.bytes.set(patternBuffer(size))
      await this.endpoint.send(this.payload, { regions: [this.region] })
      const reply = await this.endpoint.recv()
      this.#check(reply)
    } else {
      await this.endpoint.send(this.payload)
      this.#check(await this.endpoint.recv())
    }
  }

  #check(reply) {
    if (!reply.payload.equals(this.payload)) throw new Error(`${this.lang} echo: payload differs`)
    if (this.kind === 'known' && (reply.regions.length !== 1 || reply.regions[0] !== this.region)) {
      throw new Error(`${this.lang} echo: the region did not come back as the same region`)
    }
  }

  async runBlock(n) {
    const samples = new Float64Array(n + 1)
    const replies = new Array(n + 1)
    const ep = this.endpoint
    const payload = this.payload
    if (this.kind === 'known') {
      const region = this.region
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        await ep.send(payload, { regions: [region] })
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        replies[i] = m
      }
    } else {
      for (let i = 0; i <= n; i++) {
        const t0 = now()
        await ep.send(payload)
        const m = await ep.recv()
        samples[i] = Number(now() - t0)
        replies[i] = m
      }
    }
    for (const reply of replies) this.#check(reply)
    return samples.subarray(1)
  }

  finish() {
    this.region?.close()
    this.region = undefined
  }

  abort() {
    this.endpoint?.close()
    this.child?.kill('SIGKILL')
  }

  async stop() {
    this.region?.close()
    this.endpoint?.close()
    if (this.child !== undefined) {
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
      await this.exited
      clearTimeout(timer)
    }
  }
}
