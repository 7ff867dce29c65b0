// The other side of suite.mjs's cross-runtime check: increments the first byte of each
// region it gets, sends it back with one region of its own, until "end".
import { Endpoint, Region } from '../../index.mjs'

const parent = Endpoint.inherited()
const own = Region.create(4096)
own.bytes[0] = 100
for await (const message of parent) {
  if (message.payload.toString() === 'end') break
  const [region] = message.regions
  region.bytes[0] += 1
  await parent.send('added', { regions: [region, own], transfer: [region] })
}
parent.close()
