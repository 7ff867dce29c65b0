// A worker started by parent.ts: sums the numbers of each region it is given and hands
// the region back with the sum, until the parent closes the connection.
import { Endpoint } from '../../index'

const parent = Endpoint.inherited()
;(async () => {
  for await (const { payload, regions: [region] } of parent) {
    const numbers = new Uint32Array(region.bytes.buffer)
    let sum = 0
    for (const n of numbers) sum += n
    await parent.send(`${payload} ${sum}`, { transfer: [region] })
  }
})()
