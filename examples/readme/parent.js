// parent.js: hands a 64 MiB frame to a child and gets it back, zero-copy.
const { Region, spawnWithEndpoint } = require('shmlink')

async function main() {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [`${__dirname}/child.js`])
  const frame = Region.create(64 * 1024 * 1024)
  frame.bytes.fill(42) // write straight into shared memory
  await endpoint.send('frame 1', { transfer: [frame] }) // frame.bytes is detached here now
  const { payload, regions } = await endpoint.recv() // the child hands it back
  console.log(payload.toString(), regions[0] === frame, frame.bytes[0]) // done true 43
  endpoint.close() // the child's loop ends; it exits
}

main()
