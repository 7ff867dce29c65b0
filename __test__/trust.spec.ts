// The trust boundary (docs/SECURITY.md), tried as a hostile peer and a careless caller
// would: every case ends the connection with a stable code (or keeps it, where that is the
// promise), crashes nothing, and leaves no descriptor or mapping behind.
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { randomFill } from 'node:crypto'
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import { join } from 'node:path'
import { once } from 'node:events'

import { Endpoint, Region, processStats, setProcessLimits, spawnWithEndpoint, type Server, type ShmlinkError } from '../index'
import { fdCount, fixture, settle } from './helpers'

const PEER = join(__dirname, 'hostile', 'peer.py')
let names = 0
const abstractName = (label: string): string => `\0shmlink-trust-${process.pid}-${label}-${names++}`
const asArg = (name: string): string => `@${name.slice(1)}`

/** Mappings of memory files (any name) in this process. */
function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes('/memfd:')).length
}

/** Descriptors of this process that are memory files. */
function memfdDescriptors(): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:')
    } catch {
      return false
    }
  }).length
}

interface PeerRun {
  result: Promise<Record<string, unknown>>
  kill(): void
}

function runPeer(args: string[], options: { uid?: number } = {}): PeerRun {
  const child = spawn('python3', [PEER, ...args], { stdio: ['pipe', 'pipe', 'inherit'], uid: options.uid, gid: options.uid })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const result = once(child, 'exit').then(() => JSON.parse(out.trim().split('\n').pop() || '{}') as Record<string, unknown>)
  return { result, kill: () => child.kill('SIGKILL') }
}

/** The first connection to `server`, and the error its first receive fails with. */
async function firstFailure(server: Server): Promise<ShmlinkError> {
  const endpoint = await server.accept()
  const error = await endpoint.recv().then(
    () => endpoint.recv(),
  ).then(
    () => {
      throw new Error('the connection carried on')
    },
    (e: ShmlinkError) => e,
  )
  endpoint.close()
  return error
}

async function leaves_nothing(t: ExecutionContext, before: { fds: number; maps: number }): Promise<void> {
  await settle()
  t.true(fdCount() <= before.fds, `descriptors grew from ${before.fds} to ${fdCount()}`)
  t.true(memfdMappings() <= before.maps, `memfd mappings grew from ${before.maps} to ${memfdMappings()}`)
}

const snapshot = (): { fds: number; maps: number } => ({ fds: fdCount(), maps: memfdMappings() })

test.serial('a listener accepts only frozen regions by default: a writable one ends the connection before it is mapped', async (t) => {
  const name = abstractName('writable')
  const server = Endpoint.listen(name)
  const before = snapshot()
  const peer = runPeer(['writable', asArg(name)])
  const endpoint = await server.accept()
  await t.throwsAsync(endpoint.recv(), { code: 'ERR_SHMLINK_REGION_WRITABLE' })
  t.true(endpoint.closed)
  t.deepEqual(await peer.result, { eof: true })
  endpoint.close()
  server.close()
  await leaves_nothing(t, before)
})

test.serial('frozen regions pass the default policy; a writable one after them still ends the connection', async (t) => {
  const name = abstractName('frozen')
  const server = Endpoint.listen(name)
  const peer = runPeer(['frozen_then_writable', asArg(name)])
  const endpoint = await server.accept()
  const first = await endpoint.recv()
  t.true(first.regions[0].frozen)
  await t.throwsAsync(endpoint.recv(), { code: 'ERR_SHMLINK_REGION_WRITABLE' })
  t.deepEqual(await peer.result, { eof: true })
  t.is(first.regions[0].size, 4096, 'regions received before the failure stay valid')
  endpoint.close()
  server.close()
})

test.serial('a peer rewriting a shared writable region cannot crash a receiver that copies before decoding', async (t) => {
  const name = abstractName('rewrite')
  const server = Endpoint.listen(name, { acceptWritable: true })
  const peer = runPeer(['rewrite', asArg(name), '1.5'])
  const endpoint = await server.accept()
  const { regions } = await endpoint.recv()
  const done = endpoint.recv()
  let decoded = 0
  let finished = false
  void done.then(() => (finished = true))
  while (!finished) {
    const text = regions[0].read().toString('utf8')
    decoded += text.length > 0 ? 1 : 0
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.true(decoded > 10, `decoded ${decoded} copies while the peer rewrote the region`)
  endpoint.close()
  t.true(((await peer.result).rounds as number) > 0)
  server.close()
})

test.serial('a hugetlbfs memfd is refused before it is mapped', async (t) => {
  const name = abstractName('hugetlb')
  const server = Endpoint.listen(name, { acceptWritable: true })
  const before = snapshot()
  const peer = runPeer(['hugetlb', asArg(name)])
  const error = await firstFailure(server)
  t.is(error.code, 'ERR_SHMLINK_REGION_NOT_SHMEM', error.message)
  t.deepEqual(await peer.result, { eof: true })
  server.close()
  await leaves_nothing(t, before)
})

test.serial('a sparse region over the size limit is refused before it is mapped', async (t) => {
  const name = abstractName('sparse')
  const server = Endpoint.listen(name)
  const before = snapshot()
  const peer = runPeer(['sparse', asArg(name), String(2 ** 40)])
  const error = await firstFailure(server)
  t.is(error.code, 'ERR_SHMLINK_LIMIT_EXCEEDED', error.message)
  t.deepEqual(await peer.result, { eof: true })
  server.close()
  await leaves_nothing(t, before)
})

test.serial('many connections together cannot map more than the process limit', async (t) => {
  const name = abstractName('process')
  const limits = processStats()
  setProcessLimits({ maxMappedBytes: 3 * 2 ** 30, maxRegions: limits.maxRegions })
  const server = Endpoint.listen(name, { limits: { maxRegionSize: 2 ** 40, maxMappedBytes: 2 ** 40 } })
  try {
    const held = []
    for (let i = 0; i < 2; i++) {
      const peer = runPeer(['sparse', asArg(name), String(2 ** 30)])
      const endpoint = await server.accept()
      held.push({ endpoint, message: await endpoint.recv(), peer })
    }
    t.is(processStats().mappedBytes, 2 * 2 ** 30)
    const third = runPeer(['sparse', asArg(name), String(2 * 2 ** 30)])
    const error = await firstFailure(server)
    t.is(error.code, 'ERR_SHMLINK_LIMIT_EXCEEDED', error.message)
    t.deepEqual(await third.result, { eof: true })
    t.false(held[0].endpoint.closed, 'the connections inside the limit stay open')
    for (const { endpoint, message, peer } of held) {
      message.regions[0].close()
      endpoint.close()
      await peer.result
    }
    t.is(processStats().mappedBytes, 0, 'closing the regions gives their share back at once')
  } finally {
    setProcessLimits({ maxMappedBytes: limits.maxMappedBytes, maxRegions: limits.maxRegions })
    server.close()
  }
})

test.serial('a peer that sends regions and never releases them hits maxBoundRegions', async (t) => {
  const name = abstractName('flood')
  const server = Endpoint.listen(name, { limits: { maxBoundRegions: 100 } })
  const before = snapshot()
  const peer = runPeer(['flood', asArg(name), '150'])
  const endpoint = await server.accept()
  let received = 0
  const error = await (async () => {
    for (;;) {
      try {
        const message = await endpoint.recv()
        message.regions[0].close()
        received++
      } catch (e) {
        return e as ShmlinkError
      }
    }
  })()
  t.is(error.code, 'ERR_SHMLINK_LIMIT_EXCEEDED', error.message)
  t.is(received, 100)
  t.true((await peer.result).eof as boolean)
  endpoint.close()
  server.close()
  await leaves_nothing(t, before)
})

test.serial('nothing is read or mapped from a connection before the application accepts it', async (t) => {
  const name = abstractName('early')
  const server = Endpoint.listen(name)
  const peer = runPeer(['connect_and_send', asArg(name)])
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.is(processStats().regions, 0, 'no region mapped for a connection nobody accepted')
  const endpoint = await server.accept()
  const message = await endpoint.recv()
  t.is(message.payload.toString(), 'early')
  t.is(processStats().regions, 1)
  message.regions[0].close()
  endpoint.close()
  server.close()
  t.deepEqual(await peer.result, { eof: true })
})

/** Descriptors of this process that are sockets. */
function sockets(): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')
    } catch {
      return false
    }
  }).length
}

test.serial('accepted connections nobody takes wait in a bounded queue; the rest wait in the kernel', async (t) => {
  const name = abstractName('pending')
  const server = Endpoint.listen(name, { maxPending: 4 })
  const child = spawn('python3', [PEER, 'many', asArg(name), '40'], { stdio: ['pipe', 'pipe', 'inherit'] })
  // Counted after spawn(), whose stdio pipes are sockets too, before the loop can accept.
  const before = sockets()
  try {
    const [line] = (await once(child.stdout, 'data')) as [Buffer]
    const { connected } = JSON.parse(line.toString()) as { connected: number }
    t.true(connected >= 4, `${connected} clients connected`)
    // The listener runs on this event loop: let it accept what it will.
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve))
    t.is(sockets() - before, 4, 'the listener holds maxPending connections, no more')
    const taken = await server.accept()
    taken.close()
  } finally {
    child.stdin.end()
    await once(child, 'exit')
    server.close()
  }
})

const asRoot = process.getuid?.() === 0 ? test.serial : test.serial.skip

asRoot('a client of another user is refused before anything is read; an explicit filter admits it', async (t) => {
  const name = abstractName('uid')
  const server = Endpoint.listen(name)
  const peer = runPeer(['connect_and_send', asArg(name)], { uid: 65534 })
  t.deepEqual(await peer.result, { eof: true }, 'the client sees end-of-file')
  t.is(server.rejected, 1)
  server.close()

  const open = Endpoint.listen(name, { allow: { uids: [65534] } })
  const admitted = runPeer(['connect_and_send', asArg(name)], { uid: 65534 })
  const endpoint = await open.accept()
  t.is(endpoint.peer.uid, 65534)
  t.is((await endpoint.recv()).payload.toString(), 'early')
  endpoint.close()
  await admitted.result
  open.close()
})

asRoot('connect checks who serves: a server of another user is refused before anything is sent', async (t) => {
  const name = abstractName('server')
  const child = spawn('python3', [PEER, 'serve', asArg(name), '2'], { stdio: ['ignore', 'pipe', 'inherit'], uid: 65534, gid: 65534 })
  await once(child.stdout, 'data')
  await t.throwsAsync(Endpoint.connect(name), { code: 'ERR_SHMLINK_PEER_REJECTED' })
  const trusting = await Endpoint.connect(name, { server: { uids: [65534] } })
  t.is(trusting.peer.uid, 65534)
  trusting.close()
  await once(child, 'exit')
})

test.serial('close() while the thread pool still writes into bytes neither crashes nor waits for a GC', async (t) => {
  const before = snapshot()
  const writes: Promise<void>[] = []
  for (let i = 0; i < 8; i++) {
    const region = Region.create(64 * 2 ** 20)
    writes.push(new Promise((resolve, reject) => randomFill(region.bytes, (error) => (error ? reject(error) : resolve()))))
    region.close()
  }
  await Promise.all(writes)
  t.is(memfdDescriptors(), 0, 'every memory file is closed at once')
  t.true(memfdMappings() <= before.maps, 'no mapping of a memory file is left, collected or not')
})

test.serial('close() gives shared memory back without a GC', async (t) => {
  const shmem = (): number => Number(/RssShmem:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024
  const start = shmem()
  const views: Uint8Array[] = []
  for (let i = 0; i < 32; i++) {
    const region = Region.create(64 * 2 ** 20)
    region.bytes.fill(1)
    views.push(region.bytes)
    region.close()
  }
  t.true(shmem() - start < 64 * 2 ** 20, `${((shmem() - start) / 2 ** 20).toFixed(0)} MiB of shared memory still mapped`)
  t.true(views.every((view) => view.length === 0), 'the views are detached')
})

test.serial('a received region and its endpoint closed: descriptor and mapping go at once', async (t) => {
  const before = snapshot()
  const [a, b] = Endpoint.pair()
  const region = Region.create(1 << 20)
  await a.send('', { transfer: [region] })
  const theirs = (await b.recv()).regions[0]
  a.close()
  region.close()
  theirs.close()
  b.close()
  t.is(memfdDescriptors(), 0)
  t.true(memfdMappings() <= before.maps)
})

test.serial('a region that goes out and back keeps its mapping', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(1 << 20)
  region.bytes[0] = 1
  const mapsBefore = memfdMappings()
  for (let i = 0; i < 10; i++) {
    await a.send('', { transfer: [region] })
    const theirs = (await b.recv()).regions[0]
    await b.send('', { transfer: [theirs] })
    await a.recv()
    region.bytes[0]++
  }
  t.is(region.bytes[0], 11)
  t.is(memfdMappings(), mapsBefore + 1, "one mapping here and one for the other end, however many round trips")
  a.close()
  b.close()
})

test.serial('copies that no Buffer can hold are refused with a code, never an abort', (t) => {
  const huge = Region.create(2 ** 40)
  t.throws(() => huge.read(0, 2 ** 40), { code: 'ERR_SHMLINK_REGION_TOO_LARGE' })
  t.throws(() => huge.bytes, { code: 'ERR_SHMLINK_REGION_TOO_LARGE' })
  const target = new Uint8Array(16)
  t.is(huge.readInto(2 ** 40 - 8, target), 8, 'readInto copies what fits')
  huge.close()
})

test.serial('a write whose source overlaps the region is a memmove', (t) => {
  const region = Region.create(8192)
  const view = region.bytes
  for (let i = 0; i < 4000; i++) view[i] = i & 0xff
  region.write(1, view.subarray(0, 4000))
  t.is(view[0], 0)
  t.true(Array.from(view.subarray(1, 4001)).every((byte, i) => byte === (i & 0xff)))
  region.close()
})

test.serial('reclaim() takes back a region transferred over a connection that ended, and not before', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  await a.send('', { transfer: [region] })
  t.throws(() => region.reclaim(), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  b.close()
  await t.throwsAsync(a.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
  region.reclaim()
  t.false(region.transferred)
  region.bytes[0] = 1
  a.close()
})

function startHolder(mode: string) {
  const spawned = spawnWithEndpoint(process.execPath, [fixture('reclaim-child.cjs'), mode], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  spawned.child.stdout!.on('data', (d) => (out += d))
  const line = async (): Promise<string> => {
    while (!out.includes('\n')) await once(spawned.child.stdout!, 'data')
    const [first] = out.split('\n')
    out = out.slice(first.length + 1)
    return first
  }
  return { ...spawned, line }
}

test.serial('a child that dies holding a transferred region: the parent reclaims it and owns it again', async (t) => {
  const { child, endpoint, line } = startHolder('wait')
  const region = Region.create(1 << 20)
  region.bytes[0] = 42
  await endpoint.send('', { transfer: [region] })
  t.is(await line(), 'holding')
  t.throws(() => region.reclaim(), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' }, 'not while the child may use it')
  child.kill('SIGKILL')
  await t.throwsAsync(endpoint.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
  region.reclaim()
  t.is(region.bytes[0], 42)
  region.bytes[0] = 43
  endpoint.close()
})

test.serial('a child that closes the connection gives its transferred region back: it can no longer touch it, the parent can', async (t) => {
  const { child, endpoint, line } = startHolder('close')
  const region = Region.create(1 << 20)
  await endpoint.send('', { transfer: [region] })
  t.deepEqual(JSON.parse(await line()), { after: 'ERR_SHMLINK_REGION_TRANSFERRED', transferred: true })
  await t.throwsAsync(endpoint.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
  region.reclaim()
  region.bytes[0] = 1
  await once(child, 'exit')
  endpoint.close()
})

test.serial('a parent that closes the connection leaves its transferred region with the child', async (t) => {
  const { child, endpoint, line } = startHolder('keep')
  const region = Region.create(1 << 20)
  await endpoint.send('', { transfer: [region] })
  t.is(await line(), 'holding')
  endpoint.close()
  t.throws(() => region.reclaim(), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' }, 'the child keeps what it was given')
  t.deepEqual(JSON.parse(await line()), { wrote: 7 })
  await once(child, 'exit')
})
