// Rings at rest and in a stream: one-way throughput of 16-byte messages (awaited sends)
// and the CPU time both processes use while idle right after that traffic, with rings on
// and off (issue: ring_idle_cpu_percent, and throughput ring against socket). A ring that
// busy-polls must stop polling once traffic stops; the socket path is the reference.
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'

import { BENCH_DIR, onChildCpu, track } from './transports.mjs'

const require = createRequire(import.meta.url)
const { spawnWithEndpoint } = require('../../index.js')

const CHILD = path.join(BENCH_DIR, 'children', 'ring-idle-child.cjs')
const CLOCK_TICK_MS = 1000 / 100 // USER_HZ: /proc reports CPU time in 10 ms ticks

/** User + system CPU time of `pid` in milliseconds, from /proc (clock-tick resolution). */
function cpuMsOf(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function measureOne(ring, { messages, idleMs }) {
  const [command, args] = onChildCpu(process.execPath, [CHILD, ring ? 'ring' : 'socket'])
  const { child, endpoint } = spawnWithEndpoint(command, args, { stdio: ['ignore', 'inherit', 'inherit'], ring })
  track(child)
  const exited = new Promise((resolve) => child.once('exit', resolve))
  try {
    await endpoint.send('x')
    await endpoint.recv()
    const message = Buffer.alloc(16, 7)
    const started = process.hrtime.bigint()
    for (let i = 0; i < messages; i++) await endpoint.send(message)
    await endpoint.send('x')
    const counted = Number((await endpoint.recv()).payload.toString())
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    if (counted !== messages) throw new Error(`the child counted ${counted} of ${messages} messages`)
    const child0 = cpuMsOf(child.pid)
    const parent0 = process.cpuUsage()
    await sleep(idleMs)
    const parentUsage = process.cpuUsage(parent0)
    const parentMs = (parentUsage.user + parentUsage.system) / 1000
    const childMs = cpuMsOf(child.pid) - child0
    return {
      messages_per_second: Math.round(messages / seconds),
      idle_ms: idleMs,
      idle_cpu_ms: { parent: Number(parentMs.toFixed(2)), child: childMs },
      idle_cpu_percent: Number((((parentMs + childMs) / idleMs) * 100).toFixed(3)),
      ring_messages_out: endpoint.stats().ringMessagesOut,
    }
  } finally {
    endpoint.close()
    await Promise.race([exited, sleep(5000)])
    child.kill('SIGKILL')
  }
}

/**
 * Both modes, ring first: `{ ring, socket }`, each with messages_per_second,
 * idle_cpu_percent (CPU of both processes over `idleMs` of idleness after the stream, as
 * a percent of one CPU), the raw CPU milliseconds and how many messages went through the
 * ring (0 for the socket; for the ring, all but the handshake's).
 */
export async function measureRingIdle({ messages = 50_000, idleMs = 5000 } = {}) {
  return {
    what: `${messages} one-way 16-byte messages (await send), then ${idleMs / 1000} s idle; the child's CPU time comes from /proc in 10 ms ticks`,
    ring: await measureOne(true, { messages, idleMs }),
    socket: await measureOne(false, { messages, idleMs }),
  }
}
