// parent.js: starts a child program, in any language, with an endpoint connected to it,
// hands it a region and gets it back.   node parent.js <program> [args...]
const { Region, spawnWithEndpoint } = require('shmlink')

async function main() {
  const [program, ...args] = process.argv.slice(2)
  const { child, endpoint } = spawnWithEndpoint(program, args) // sets SHMLINK_FD for it
  const frame = Region.create(1 << 20)
  frame.bytes.fill(42) // write straight into shared memory
  await endpoint.send('frame', { transfer: [frame] }) // the child may write it now
  const { payload, regions } = await endpoint.recv() // and has handed it back
  console.log(payload.toString(), regions[0] === frame, frame.bytes[0]) // done true 43
  endpoint.close() // the child's loop ends, and it exits
  child.on('exit', (code) => (process.exitCode = code ?? 1))
}

main()
