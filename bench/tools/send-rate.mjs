// Messages per second of a loop of awaited sends (16 bytes) to a child that only counts
// them: the per-message cost of send() on the event loop, with a receiver keeping up.
//   node bench/tools/send-rate.mjs [messages, default 100000]
// SHMLINK_TREE=/path/to/another/checkout measures that checkout's build instead (to
// compare two versions with the same script).
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const tree = process.env.SHMLINK_TREE ?? path.join(here, '..', '..')
const require = createRequire(import.meta.url)
const { spawnWithEndpoint } = require(path.join(tree, 'index.js'))
const count = Number(process.argv[2] ?? 100000)

if (process.argv[2] === '--child') {
  const { Endpoint } = require(path.join(tree, 'index.js'))
  const parent = Endpoint.inherited()
  let received = 0
  for (;;) {
    let message
    try {
      message = await parent.recv()
    } catch {
      break
    }
    if (message.payload.length > 0) received++
    else {
      await parent.send(String(received))
      received = 0
    }
  }
  parent.close()
} else {
  const { endpoint } = spawnWithEndpoint(process.execPath, [fileURLToPath(import.meta.url), '--child'], {
    stdio: 'inherit',
    env: { ...process.env, SHMLINK_TREE: tree },
  })
  const payload = Buffer.alloc(16, 1)
  for (const round of ['warm-up', 'measured']) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < count; i++) await endpoint.send(payload)
    await endpoint.send('')
    const received = Number((await endpoint.recv()).payload.toString())
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    if (received !== count) throw new Error(`${received} of ${count} messages arrived`)
    if (round === 'measured') console.log(`${Math.round(count / seconds / 1000)}k messages/s (${count} awaited sends of 16 B)`)
  }
  endpoint.close()
}
