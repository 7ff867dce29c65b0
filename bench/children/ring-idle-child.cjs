// The other end of bench/lib/ring-idle.mjs: counts 16-byte messages; a 1-byte message
// asks for the count (and resets it).
const { Endpoint } = require('../../index.js')

const endpoint = Endpoint.inherited({ ring: process.argv[2] === 'ring' })
let count = 0
;(async () => {
  for await (const m of endpoint) {
    if (m.payload.length === 1) {
      await endpoint.send(String(count))
      count = 0
    } else count++
  }
  endpoint.close()
})()
