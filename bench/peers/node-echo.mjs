// The Node peer for the cross-language rows: plays role `echo` of peers/SCENARIO.md.
// Usage: node bench/peers/node-echo.mjs echo <socket-path>
// Receives until end-of-file; for each message reads one byte from every 4096-byte page of
// each region, then sends back the same payload with the same regions attached.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Endpoint } = require('../../index.js')

const [role, path] = process.argv.slice(2)
if (role !== 'echo' || path === undefined) {
  console.error('usage: node-echo.mjs echo <socket-path>')
  process.exit(1)
}
const endpoint = await Endpoint.connect(path.startsWith('@') ? `\0${path.slice(1)}` : path, { acceptWritable: true })
let sink = 0
for (;;) {
  let message
  try {
    message = await endpoint.recv()
  } catch (error) {
    if (error?.code === 'ERR_SHMLINK_PEER_CLOSED' || error?.code === 'ERR_SHMLINK_CLOSED') break
    console.error('node-echo:', error.message)
    process.exit(1)
  }
  for (const region of message.regions) {
    const bytes = region.bytes
    for (let k = 0; k < bytes.length; k += 4096) sink = (sink + bytes[k]) | 0
  }
  await endpoint.send(message.payload, { regions: message.regions })
}
endpoint.close()
process.exitCode = sink === 0.5 ? 1 : 0
