// Per-message cost without wake-ups: both endpoints of an Endpoint.pair() in one thread,
// so nothing waits for another process. Compare with bench/tools/selfpair.c (the two system
// calls alone). Timed with tinybench. With --ring the pair talks through its rings.
//   node bench/tools/per-message.mjs [--ring]
import { createRequire } from 'node:module'
import { Bench } from 'tinybench'

const require = createRequire(import.meta.url)
const { Endpoint, Region } = require('../../index.js')

const [a, b] = Endpoint.pair({ ring: process.argv.includes('--ring') })
const payload = Buffer.alloc(16, 1)
const region = Region.create(1 << 20)
region.bytes.fill(1)
// Make the region known to b first.
a.sendSync('x', { regions: [region] })
b.recvSync({ timeoutMs: 1000 })

const bench = new Bench({ time: 1500, warmupTime: 300, timestampProvider: 'hrtimeNow' })
bench
  .add('sendSync(16 B) + recvSync({timeoutMs: 0})', () => {
    a.sendSync(payload)
    b.recvSync({ timeoutMs: 0 })
  })
  .add('sendSync(16 B) + recvSync()', () => {
    a.sendSync(payload)
    b.recvSync()
  })
  .add('await send(16 B) + await recv() (one event-loop turn)', async () => {
    await a.send(payload)
    await b.recv()
  })
  .add('sendSync(16 B, known region) + recvSync()', () => {
    a.sendSync(payload, { regions: [region] })
    b.recvSync()
  })
  .add('Buffer.alloc(16) (reference)', () => Buffer.alloc(16))
await bench.run()
for (const task of bench.tasks) {
  const l = task.result.latency
  console.log(`${task.name.padEnd(58)} median ${(l.p50 * 1e6).toFixed(0).padStart(6)} ns  (n=${l.samplesCount})`)
}
a.close()
b.close()
