import test from 'ava'

import { once } from 'node:events'

import { Endpoint, Region, spawnWithEndpoint } from '../index'
import { fdCount, fixture, regionMappingCount, settle } from './helpers'

// Serial: each test counts this process's descriptors and mappings.

test.serial('10 000 region create/close cycles leave descriptors and mappings flat', async (t) => {
  for (let i = 0; i < 100; i++) Region.create(4096).close()
  await settle()
  const fds = fdCount()
  for (let i = 0; i < 10_000; i++) {
    const region = Region.create(64 * 1024)
    region.bytes[i % 4096] = 1
    region.close()
  }
  await settle()
  t.true(fdCount() <= fds, `descriptors grew from ${fds} to ${fdCount()}`)
  // The memfd mappings are ours; V8 adds and drops heap mappings of its own meanwhile.
  t.is(regionMappingCount(), 0)
})

test.serial('regions dropped without close are unmapped by the garbage collector', async (t) => {
  await settle()
  const fds = fdCount()
  for (let i = 0; i < 2000; i++) Region.create(4096).bytes[0] = 1
  await settle(6)
  t.true(fdCount() <= fds, `descriptors grew from ${fds} to ${fdCount()}`)
  t.is(regionMappingCount(), 0)
})

test.serial('100 000 messages, some with new regions, leave descriptors and mappings flat', async (t) => {
  const [a, b] = Endpoint.pair()
  const shared = Region.create(4096)
  await a.send('warm-up', { regions: [shared] })
  await b.recv()
  await settle()
  const fds = fdCount()
  const regionMaps = regionMappingCount()
  for (let i = 0; i < 100_000; i++) {
    if (i % 1000 === 0) {
      const fresh = Region.create(16 * 1024)
      fresh.bytes[0] = i & 0xff
      await a.send('fresh', { transfer: [fresh] })
      const received = await b.recv()
      t.is(received.regions[0].bytes[0], i & 0xff)
      received.regions[0].close()
      fresh.close()
    } else {
      await a.send('x', i % 10 === 0 ? { regions: [shared] } : {})
      await b.recv()
    }
  }
  await settle()
  t.true(fdCount() <= fds, `descriptors grew from ${fds} to ${fdCount()}`)
  t.is(regionMappingCount(), regionMaps, 'region mappings')
  // Used to the end: a region nothing holds any more is released and unmapped.
  shared.close()
  a.close()
  b.close()
})

test.serial('1000 endpoint pairs opened and closed leave descriptors flat', async (t) => {
  await settle()
  const fds = fdCount()
  for (let i = 0; i < 1000; i++) {
    const [a, b] = Endpoint.pair()
    await a.send('hi')
    await b.recv()
    a.close()
    b.close()
  }
  await settle()
  t.true(fdCount() <= fds, `descriptors grew from ${fds} to ${fdCount()}`)
})

/** Sends `region` once over a new pair, closes the pair and returns a weak reference to it. */
async function sendOverShortLivedPair(region: Region): Promise<WeakRef<Endpoint>> {
  const [a, b] = Endpoint.pair()
  await a.send('', { regions: [region] })
  await b.recv()
  a.close()
  b.close()
  return new WeakRef(a)
}

test.serial('a long-lived region does not keep the endpoints it was sent on alive', async (t) => {
  const region = Region.create(4096)
  const gone: WeakRef<Endpoint>[] = []
  for (let i = 0; i < 20; i++) gone.push(await sendOverShortLivedPair(region))
  await settle(6)
  t.is(gone.filter((ref) => ref.deref() !== undefined).length, 0)
  region.close()
})

test.serial('frames a child hands back and lets go of are released: the README pattern, looped', async (t) => {
  // Without this, the child's id for each frame it sent back kept the frame alive in both
  // processes (a descriptor here, a mapping there) until the connection ended.
  const { child, endpoint } = spawnWithEndpoint(process.execPath, ['--expose-gc', fixture('hand-back-child.cjs')], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  await settle()
  const fds = fdCount()
  for (const transfer of [true, false]) {
    for (let i = 0; i < 40; i++) {
      const frame = Region.create(1024 * 1024)
      frame.bytes.fill(42)
      await endpoint.send(`frame ${i}`, transfer ? { transfer: [frame] } : { regions: [frame] })
      const { payload, regions } = await endpoint.recv()
      t.is(payload.toString(), 'done')
      t.is(regions[0], frame)
      t.is(frame.bytes[0], 43)
      frame.close()
    }
    await endpoint.send('collect')
    t.is((await endpoint.recv()).payload.toString(), 'collected')
    await settle()
    t.deepEqual(
      { peerRegions: endpoint.stats().peerRegions, ownRegions: endpoint.stats().ownRegions },
      { peerRegions: 0, ownRegions: 0 },
      `transfer: ${transfer}`,
    )
    t.true(fdCount() <= fds, `descriptors grew from ${fds} to ${fdCount()} (transfer: ${transfer})`)
    t.is(regionMappingCount(), 0)
  }
  endpoint.close()
  await once(child, 'exit')
})
