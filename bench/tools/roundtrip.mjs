// A bare shmlink inline round-trip loop for profilers (strace -c -f, perf stat/record):
//   node bench/tools/roundtrip.mjs [loop|sync] [rounds] [payload bytes, default 16]
// Prints the median round trip. Uses the same child as the benchmark.
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const { spawnWithEndpoint } = require('../../index.js')
const here = path.dirname(fileURLToPath(import.meta.url))
const mode = process.argv[2] ?? 'loop'
const rounds = Number(process.argv[3] ?? 20000)

const { child, endpoint } = spawnWithEndpoint(process.execPath, [path.join(here, '..', 'children', 'shmlink-child.mjs'), mode], {
  stdio: ['ignore', 'inherit', 'inherit'],
})
const size = Number(process.argv[4] ?? 16)
const payload = Buffer.alloc(size, 1)
const samples = new Float64Array(rounds)
const now = process.hrtime.bigint
if (mode === 'sync') {
  for (let i = 0; i < rounds; i++) {
    const t0 = now()
    endpoint.sendSync(payload)
    endpoint.recvSync(process.env.RT_TIMEOUT ? { timeoutMs: 120000 } : {})
    samples[i] = Number(now() - t0)
  }
} else {
  for (let i = 0; i < rounds; i++) {
    const t0 = now()
    await endpoint.send(payload)
    await endpoint.recv()
    samples[i] = Number(now() - t0)
  }
}
samples.sort()
console.log(`${mode}: ${size} B × ${rounds} rounds, median ${(samples[rounds >> 1] / 1000).toFixed(2)} µs, min ${(samples[0] / 1000).toFixed(2)} µs`)
endpoint.close()
child.on('exit', () => process.exit(0))
