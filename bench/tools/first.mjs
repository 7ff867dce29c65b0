// The first hand-over of a new region, bare, for profilers (strace -c -f, perf record):
//   node bench/tools/first.mjs [rounds] [MiB, default 64]
// Each round: a new region filled before the clock, sent with a 16-byte header asking the
// child (the benchmark's) to close it after acking; the child reads one byte per page.
// Prints the median and min of sendmsg-to-ack, as the shmlink-first row measures.
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const { Region, spawnWithEndpoint } = require('../../index.js')
const here = path.dirname(fileURLToPath(import.meta.url))
const rounds = Number(process.argv[2] ?? 30)
const size = Number(process.argv[3] ?? 64) * 1024 * 1024

const { child, endpoint } = spawnWithEndpoint(process.execPath, [...process.execArgv, path.join(here, '..', 'children', 'shmlink-child.mjs'), 'loop'], {
  stdio: ['ignore', 'inherit', 'inherit'],
})
const header = Buffer.from('R\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0')
const command = Buffer.from('N\0\0\0')
const samples = new Float64Array(rounds)
const now = process.hrtime.bigint
for (let i = 0; i < rounds; i++) {
  const region = Region.create(size)
  region.bytes.fill(i + 1)
  const t0 = now()
  await endpoint.send(header, { regions: [region] })
  await endpoint.recv()
  samples[i] = Number(now() - t0)
  region.close()
  await endpoint.send(command)
  await endpoint.recv()
}
samples.sort()
console.log(`first hand-over ${size >> 20} MiB × ${rounds}: median ${(samples[rounds >> 1] / 1e6).toFixed(2)} ms, min ${(samples[0] / 1e6).toFixed(2)} ms`)
endpoint.close()
child.on('exit', () => process.exit(0))
