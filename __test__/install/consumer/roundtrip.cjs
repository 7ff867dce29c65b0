// Run inside a fresh project that installed shmlink: a region round trip through require().
'use strict'
const { Endpoint, Region } = require('shmlink')

async function main() {
  const binaries = () => Object.keys(require.cache).filter((file) => file.endsWith('.node'))
  let pair
  try {
    pair = Endpoint.pair()
  } catch (error) {
    // macOS has no backend yet (docs/PLATFORMS.md): the binary loads and every call says so.
    if (process.platform === 'linux' || error.code !== 'ERR_SHMLINK_UNSUPPORTED') throw error
    console.log(JSON.stringify({ module: 'cjs', unsupported: true, binaries: binaries() }))
    return
  }
  const [a, b] = pair
  const region = Region.create(1 << 16)
  region.bytes.fill(0x5a)
  await a.send('ping', { regions: [region] })
  const message = await b.recv()
  const theirs = message.regions[0]
  theirs.bytes[0] = 1
  const result = {
    module: 'cjs',
    payload: message.payload.toString(),
    size: theirs.size,
    contents: theirs.bytes.subarray(1).every((byte) => byte === 0x5a),
    shared: region.bytes[0] === 1,
    entry: require.resolve('shmlink'),
    binaries: binaries(),
  }
  a.close()
  b.close()
  console.log(JSON.stringify(result))
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
