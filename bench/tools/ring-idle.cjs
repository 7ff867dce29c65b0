// Not part of `npm run bench` yet: one-way throughput of 16-byte messages (await send,
// 50 000 of them) and the CPU time both processes use over 5 s of idleness right after,
// with rings on and off. `node bench/tools/ring-idle.cjs` (unpinned; wrap in taskset to
// place it). The child's CPU time comes from /proc in clock ticks (10 ms here).
const fs = require('node:fs')
const path = require('node:path')
const { spawnWithEndpoint } = require('../../index.js')

const CHILD = path.join(__dirname, 'ring-idle-child.cjs')
const TICK_MS = 10
const cpuMs = (pid) => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS
}

;(async () => {
  for (const ring of [true, false]) {
    const { child, endpoint } = spawnWithEndpoint(process.execPath, [CHILD, ring ? 'ring' : 'socket'], { stdio: 'inherit', ring })
    const message = Buffer.alloc(16, 7)
    await endpoint.send(Buffer.from('x'))
    await endpoint.recv()
    const count = 50_000
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < count; i++) await endpoint.send(message)
    await endpoint.send(Buffer.from('x'))
    const got = Number((await endpoint.recv()).payload.toString())
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    if (got !== count) throw new Error(`the child counted ${got} of ${count}`)
    const child0 = cpuMs(child.pid)
    const parent0 = process.cpuUsage()
    await new Promise((resolve) => setTimeout(resolve, 5000))
    const parent = process.cpuUsage(parent0)
    const parentMs = (parent.user + parent.system) / 1000
    const childMs = cpuMs(child.pid) - child0
    const idle = ((parentMs + childMs) / 5000) * 100
    console.log(
      `${ring ? 'ring  ' : 'socket'}: ${(count / seconds / 1000).toFixed(0)}k messages/s one way; ` +
        `idle 5 s after: ${parentMs.toFixed(1)} ms + ${childMs} ms CPU = ${idle.toFixed(3)} % of one CPU ` +
        `(${endpoint.stats().ringMessagesOut} messages went through the ring)`,
    )
    endpoint.close()
    await new Promise((resolve) => child.on('exit', resolve))
  }
})()
