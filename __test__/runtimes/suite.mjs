// The runtime-neutral suite: runs under Node 20–26, Bun and Deno (`runtimes.spec.ts`).
// Prints one JSON line: every check's name and outcome. Exits with endpoints and regions
// still open on purpose: every runtime must shut down cleanly with them.
//
//   <runtime> suite.mjs [<child runtime> [args...]]
// The child runtime (with the arguments it needs before a script, e.g. `run -A` for Deno)
// is started with spawnWithEndpoint for the cross-runtime check; default: this runtime.
import { Endpoint, Region, spawnWithEndpoint, wakeupBackend } from '../../index.mjs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

const here = dirname(fileURLToPath(import.meta.url))
const results = {}
async function check(name, body) {
  try {
    await body()
    results[name] = 'ok'
  } catch (error) {
    results[name] = `${error?.code ?? ''} ${error?.stack ?? error}`.trim()
  }
}
function expect(condition, what) {
  if (!condition) throw new Error(`expected ${what}`)
}
async function rejects(promise, code) {
  try {
    await promise
  } catch (error) {
    if (error.code === code || error.name === code) return
    throw error
  }
  throw new Error(`expected ${code}`)
}
function throws(body, code) {
  try {
    body()
  } catch (error) {
    if (error.code === code) return
    throw error
  }
  throw new Error(`expected ${code}`)
}

await check('round trip with a region', async () => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(1 << 20)
  region.bytes.fill(7)
  await a.send('hello', { regions: [region] })
  const message = await b.recv()
  expect(message.payload.toString() === 'hello', 'the payload')
  expect(message.regions[0].bytes[1000] === 7, 'the region contents')
  a.close()
  b.close()
})

await check('transfer detaches and comes back', async () => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  const view = region.bytes
  await a.send('', { transfer: [region] })
  expect(view.length === 0, 'a detached view')
  throws(() => region.bytes, 'ERR_SHMLINK_REGION_TRANSFERRED')
  const theirs = (await b.recv()).regions[0]
  theirs.bytes[0] = 9
  await b.send('', { transfer: [theirs] })
  const back = (await a.recv()).regions[0]
  expect(back === region && region.bytes[0] === 9, 'the same region, written by the other side')
  a.close()
  b.close()
})

await check('sync calls', async () => {
  const [a, b] = Endpoint.pair()
  a.sendSync('sync', { regions: [Region.create(64)] })
  const message = b.recvSync({ timeoutMs: 1000 })
  expect(message.payload.toString() === 'sync' && message.regions[0].size === 64, 'the message')
  throws(() => b.recvSync({ timeoutMs: 10 }), 'ERR_SHMLINK_TIMED_OUT')
  const into = new Uint8Array(8)
  a.sendSync('into', { regions: [Region.create(64)] })
  const received = b.recvSync({ into, timeoutMs: 1000 })
  expect(received.payload.toString() === 'into' && received.payload.buffer === into.buffer && received.regions.length === 1, 'a message received into a buffer')
  a.sendSync('too long for it')
  throws(() => b.recvSync({ into, timeoutMs: 1000 }), 'ERR_SHMLINK_PAYLOAD_TOO_LARGE')
  expect(b.recvSync({ timeoutMs: 1000 }).payload.toString() === 'too long for it', 'the message that did not fit, next')
  // Put back while a recv() waits: the wake-up backend must turn the loop for it.
  const waiting = b.recv()
  a.sendSync('for the waiting recv')
  throws(() => b.recvSync({ into, timeoutMs: 1000 }), 'ERR_SHMLINK_PAYLOAD_TOO_LARGE')
  let timer
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('expected the waiting recv() to get it within 5 s')), 5000)
  })
  const got = await Promise.race([waiting, late])
  clearTimeout(timer)
  expect(got.payload.toString() === 'for the waiting recv', 'the waiting recv() got it')
  a.close()
  throws(() => b.recvSync(), 'ERR_SHMLINK_PEER_CLOSED')
})

await check('close and error codes', async () => {
  const [a, b] = Endpoint.pair()
  const closed = new Promise((resolve) => b.once('close', resolve))
  a.close()
  await rejects(a.send('x'), 'ERR_SHMLINK_CLOSED')
  await rejects(b.recv(), 'ERR_SHMLINK_PEER_CLOSED')
  expect((await closed).code === 'ERR_SHMLINK_PEER_CLOSED', "the 'close' reason")
  throws(() => Region.create(0), 'ERR_SHMLINK_INVALID_ARG')
  await rejects(b.send(Buffer.alloc(70_000)), 'ERR_SHMLINK_PEER_CLOSED')
})

await check('AbortSignal', async () => {
  const [a, b] = Endpoint.pair()
  const controller = new AbortController()
  const waiting = b.recv({ signal: controller.signal })
  controller.abort()
  await rejects(waiting, 'AbortError')
  await a.send('after')
  expect((await b.recv()).payload.toString() === 'after', 'the endpoint still usable')
  a.close()
  b.close()
})

await check('a child process, regions both ways', async () => {
  const [runtime, ...args] = process.argv.slice(2).length > 0 ? process.argv.slice(2) : [process.execPath]
  const { child, endpoint } = spawnWithEndpoint(runtime, [...args, join(here, 'echo-child.mjs')], { stdio: ['ignore', 'inherit', 'inherit'] })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  try {
    const mine = Region.create(1 << 20)
    mine.bytes[0] = 1
    await endpoint.send('add', { transfer: [mine] })
    const reply = await endpoint.recv()
    expect(reply.regions[0] === mine && mine.bytes[0] === 2, 'my region back, incremented')
    const theirs = reply.regions[1]
    expect(theirs.bytes[0] === 100, "the child's region")
    await endpoint.send('end')
    expect((await exited) === 0, 'the child exits 0')
  } finally {
    child.kill()
    endpoint.close()
  }
})

// Left open on purpose: the runtime must exit cleanly with them.
const [leftA] = Endpoint.pair()
const leftRegion = Region.create(1 << 16)
leftRegion.bytes[0] = 1
leftA.recv().catch(() => {})
leftA.unref()

console.log(JSON.stringify({ backend: wakeupBackend(), results }))
