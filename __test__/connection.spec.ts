// The defects that lived in the split between core, binding and TypeScript, each as a
// test that failed before the core owned the connection, and what shows that index.ts
// holds no protocol state.
import test from 'ava'
import { once } from 'node:events'

import { Endpoint, Region, spawnWithEndpoint } from '../index'
import { fdCount, fixture, regionMappingCount, settle } from './helpers'

/** Fills `a`'s socket: sends 60 kB messages until one has to wait. */
async function fillSocket(a: Endpoint): Promise<Promise<void>[]> {
  const sends: Promise<void>[] = []
  for (let i = 0; i < 200; i++) {
    let settled = false
    const send = a.send(Buffer.alloc(60_000, i))
    void send.then(() => (settled = true), () => (settled = true))
    sends.push(send)
    await Promise.resolve()
    if (!settled) return sends
  }
  throw new Error('the socket never filled')
}

test('a sendSync that times out behind queued sends leaves them queued; close() settles them and gives transfers back', async (t) => {
  const [a, b] = Endpoint.pair()
  const sends = await fillSocket(a)
  const region = Region.create(4096)
  const queuedTransfer = a.send('transfer', { transfer: [region] })
  t.true(region.transferred, 'a queued transfer is away from the moment it is queued')
  t.throws(() => a.sendSync('sync', { timeoutMs: 20 }), { code: 'ERR_SHMLINK_TIMED_OUT' })
  a.close()
  const outcomes = await Promise.allSettled([...sends, queuedTransfer])
  const rejected = outcomes.filter((o) => o.status === 'rejected') as PromiseRejectedResult[]
  t.is(rejected.length, 2, 'both queued sends reject on close')
  t.true(rejected.every((o) => o.reason.code === 'ERR_SHMLINK_CLOSED'))
  t.false(region.transferred, 'a transfer that never left is usable again')
  t.is(region.bytes.length, 4096)
  b.close()
})

test('a sendSync behind queued async sends goes out after them, in order (a child receives)', async (t) => {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [fixture('order-child.cjs')], { stdio: ['ignore', 'inherit', 'inherit'] })
  const sends: Promise<void>[] = []
  for (let i = 0; i < 40; i++) sends.push(endpoint.send(Buffer.concat([Buffer.from(`a${String(i).padStart(3, '0')}`), Buffer.alloc(60_000)])))
  endpoint.sendSync('sync')
  endpoint.sendSync('last')
  await Promise.all(sends)
  const reply = await endpoint.recv()
  const expected = [...Array.from({ length: 40 }, (_, i) => `a${String(i).padStart(3, '0')}`), 'sync', 'last']
  t.deepEqual(reply.payload.toString().split(','), expected)
  await once(child, 'exit')
  endpoint.close()
})

test('a send refused because a later region is away transfers nothing: every region stays usable', async (t) => {
  const [a, b] = Endpoint.pair()
  const [first, second, away] = [Region.create(4096), Region.create(4096), Region.create(4096)]
  await a.send('', { transfer: [away] })
  const view = first.bytes
  await t.throwsAsync(a.send('x', { transfer: [first, second, away] }), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  t.false(first.transferred || second.transferred)
  t.is(view.length, 4096, 'a view taken before the refused send is still attached')
  view[0] = 1
  t.is(first.read(0, 1)[0], 1)
  a.close()
  b.close()
})

test('a view lent through a Region object since collected is detached when the region is transferred', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  await a.send('', { regions: [region] })
  let view = await (async () => {
    const first = (await b.recv()).regions[0]
    return first.bytes
  })()
  await settle(6)
  await a.send('', { regions: [region] })
  const second = (await b.recv()).regions[0]
  view[0] = 9
  t.is(second.bytes[0], 9, 'the old view and the new wrapper share the memory')
  await b.send('back', { transfer: [second] })
  t.is(view.length, 0, 'every view of the region is detached, whichever wrapper lent it')
  view = new Uint8Array(0)
  await a.recv()
  a.close()
  b.close()
})

test('a region received again through a new Region object lends the view still alive, not a second mapping', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(1 << 20)
  await a.send('', { regions: [region] })
  const { wrapper, view } = await (async () => {
    const first = (await b.recv()).regions[0]
    return { wrapper: new WeakRef(first), view: first.bytes }
  })()
  await settle(6)
  t.is(wrapper.deref(), undefined, 'the first Region object was collected (the case under test)')
  const mappings = regionMappingCount()
  await a.send('', { regions: [region] })
  const second = (await b.recv()).regions[0]
  const again = second.bytes
  t.true(again.buffer === view.buffer, 'the live view is handed out again')
  t.is(regionMappingCount(), mappings, 'no second mapping of the same memory')
  view[1] = 5
  t.is(region.bytes[1], 5)
  await b.send('back', { transfer: [second] })
  t.is(view.length + again.length, 0, 'both views are detached by the transfer')
  await a.recv()
  a.close()
  b.close()
})

test('1 000 endpoint pairs dropped without close() are collected and their descriptors closed', async (t) => {
  await settle()
  const before = fdCount()
  for (let i = 0; i < 1000; i++) {
    const [a, b] = Endpoint.pair()
    await a.send('hi')
    await b.recv()
  }
  t.true(fdCount() >= before + 100, 'the pairs hold descriptors while alive')
  let after = fdCount()
  for (let round = 0; round < 20 && after > before; round++) {
    await settle(3)
    after = fdCount()
  }
  t.true(after <= before, `descriptors went from ${before} to ${after}`)
})

test('an endpoint with a pending recv, a message listener or a queued send is not collected', async (t) => {
  const received: string[] = []
  const [a, b] = Endpoint.pair()
  const refs = (() => {
    const [c, d] = Endpoint.pair()
    const [e, f] = Endpoint.pair()
    d.recv().then((m) => received.push(`recv:${m.payload}`))
    f.on('message', (m) => received.push(`event:${m.payload}`))
    return { c, e, d: new WeakRef(d), f: new WeakRef(f) }
  })()
  await settle(6)
  t.truthy(refs.d.deref(), 'a pending recv keeps its endpoint')
  t.truthy(refs.f.deref(), 'a message listener keeps its endpoint')
  await refs.c.send('one')
  await refs.e.send('two')
  while (received.length < 2) await new Promise((resolve) => setImmediate(resolve))
  t.deepEqual(received.sort(), ['event:two', 'recv:one'])
  a.close()
  b.close()
  refs.c.close()
  refs.e.close()
  refs.f.deref()?.close()
})

test('a loop of awaited sends gives the event loop regular turns', async (t) => {
  const [a, b] = Endpoint.pair()
  let turns = 0
  let done = false
  const spin = (): void => {
    turns++
    if (!done) setImmediate(spin)
  }
  setImmediate(spin)
  let received = 0
  b.on('message', () => received++)
  for (let i = 0; i < 20_000; i++) await a.send('x')
  done = true
  t.true(turns >= 20_000 / 64 / 2, `the loop turned ${turns} times during 20 000 sends`)
  t.true(received > 0, 'the receiving side ran meanwhile')
  a.close()
  b.close()
})

test('index.ts keeps no protocol state: a refused multi-region transfer and a queued transfer are judged by the core', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  await t.throwsAsync(a.send(Buffer.alloc(65_537), { transfer: [region] }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
  t.false(region.transferred)
  await a.send('', { transfer: [region] })
  t.true(region.transferred)
  const theirs = (await b.recv()).regions[0]
  t.not(theirs, region, 'the other end of a pair is another realm, as another process would be')
  t.is(b.regionId(theirs), undefined, 'the receiver has no id of its own for it')
  await b.send('', { transfer: [theirs] })
  t.is(b.regionId(theirs), 1, "the receiver's own id once it sent the region back")
  await a.recv()
  t.false(region.transferred)
  a.close()
  b.close()
})
