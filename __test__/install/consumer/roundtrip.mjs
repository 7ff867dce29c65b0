// Run inside a fresh project that installed shmlink: a region round trip through import.
import { createRequire } from 'node:module'
import shmlink, { Endpoint, Region } from 'shmlink'

const require = createRequire(import.meta.url)
const common = {
  module: 'esm',
  entry: import.meta.resolve('shmlink'),
  sameModule: shmlink.Region === Region && shmlink === require('shmlink'),
  esmNames: Object.keys(await import('shmlink'))
    .filter((name) => name !== 'default')
    .sort(),
  cjsNames: Object.keys(require('shmlink'))
    .filter((name) => name !== '__esModule')
    .sort(),
}
const binaries = () => Object.keys(require.cache).filter((file) => file.endsWith('.node'))

let pair
try {
  pair = Endpoint.pair()
} catch (error) {
  // macOS has no backend yet (docs/PLATFORMS.md): the binary loads and every call says so.
  if (process.platform === 'linux' || error.code !== 'ERR_SHMLINK_UNSUPPORTED') throw error
  console.log(JSON.stringify({ ...common, unsupported: true, binaries: binaries() }))
  process.exit(0)
}
const [a, b] = pair
const region = Region.create(1 << 16)
region.bytes.fill(0x5a)
await a.send('ping', { regions: [region] })
const message = await b.recv()
const theirs = message.regions[0]
theirs.bytes[0] = 1
const result = {
  ...common,
  payload: message.payload.toString(),
  size: theirs.size,
  contents: theirs.bytes.subarray(1).every((byte) => byte === 0x5a),
  shared: region.bytes[0] === 1,
  binaries: binaries(),
}
a.close()
b.close()
console.log(JSON.stringify(result))
