// Hands a 64 MiB region to a child process with shmlink, and moves the same 64 MiB with
// child_process IPC, and prints both. Run with `npm run demo`.
const { Region, spawnWithEndpoint } = require('../index.js')

const SIZE = 64 * 1024 * 1024
const ROUNDS = 10

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const ms = (ns) => Number(ns) / 1e6
const format = (millis) => (millis < 1 ? `${(millis * 1000).toFixed(0)} µs` : `${millis.toFixed(1)} ms`)

async function main() {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [`${__dirname}/child.js`], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    serialization: 'advanced',
  })
  const region = Region.create(SIZE)
  const bytes = region.bytes
  for (let page = 0; page < SIZE; page += 4096) bytes[page] = (page >>> 12) & 0xff
  const expected = bytes.reduce((sum, byte, index) => (index % 4096 === 0 ? sum + byte : sum), 0)

  // shmlink: the first hand-over passes the region's descriptor and the child maps it;
  // later ones pass only its id. Either way the child reads every page and answers; the
  // parent does not write the region until that answer has come (the hand-over rule).
  const handoffs = []
  for (let round = 0; round <= ROUNDS; round++) {
    const start = process.hrtime.bigint()
    await endpoint.send('touch every page', { regions: [region] })
    const reply = await endpoint.recv()
    handoffs.push(ms(process.hrtime.bigint() - start))
    if (Number(reply.payload.toString()) !== expected) throw new Error('the child read other bytes')
  }

  // child_process IPC with structured clone ('advanced'): the bytes are copied through
  // the pipe and into a new buffer in the child, which reads every page and replies.
  const copy = Buffer.from(region.bytes)
  const ipc = []
  for (let round = 0; round < 3; round++) {
    const start = process.hrtime.bigint()
    child.send(copy)
    const reply = await new Promise((resolve) => child.once('message', resolve))
    ipc.push(ms(process.hrtime.bigint() - start))
    if (reply !== expected) throw new Error('the child read other bytes over IPC')
  }

  const first = handoffs[0]
  const known = median(handoffs.slice(1))
  const copied = median(ipc)
  console.log(`64 MiB from this process to a child and back, the child reading every page:`)
  console.log(`  shmlink, first hand-over (descriptor passed, region mapped): ${format(first)}`)
  console.log(`  shmlink, region already known to the child (median of ${ROUNDS}): ${format(known)}`)
  console.log(`  child_process IPC, serialization 'advanced' (median of 3):    ${format(copied)}`)
  console.log(`  => shmlink is ${Math.round(copied / known)}x faster for a known region`)

  endpoint.close()
  child.disconnect()
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
