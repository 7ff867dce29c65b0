// The consumer of the shmlink pooled-stream rows (bench/lib/transports.mjs,
// ShmlinkPoolStreamTransport), the JavaScript side of what bench/c/pool.c's child does:
// for each frame, read one byte per 4 KiB page of the region, check their sum, and hand
// the region back with a 16-byte record carrying the sum. argv[2] says how the region
// goes back: 'transfer' (it was transferred here and is transferred back) or 'shared'
// (it was sent without transfer; sending it back is the hand-back).
// Commands (payloads under 16 bytes, no region): 'S' start counting minor page faults,
// 'E' answer with the count since 'S'.
import { createRequire } from 'node:module'
import { pageSum } from '../lib/data.mjs'

const require = createRequire(import.meta.url)
const { Endpoint } = require('../../index.js')

const mode = process.argv[2]
const endpoint = Endpoint.inherited()
const back = Buffer.alloc(16)
let faultsAtStart = 0

for await (const { payload, regions } of endpoint) {
  if (regions.length === 0) {
    const answer = Buffer.alloc(16)
    if (payload[0] === 0x53) faultsAtStart = process.resourceUsage().minorPageFault
    else answer.writeUInt32LE(process.resourceUsage().minorPageFault - faultsAtStart, 0)
    await endpoint.send(answer)
    continue
  }
  const sum = pageSum(regions[0].bytes)
  back.writeUInt32LE(payload.readUInt32LE(0), 0)
  back.writeUInt32LE(sum, 4)
  await endpoint.send(back, mode === 'transfer' ? { transfer: regions } : { regions })
}
endpoint.close()
