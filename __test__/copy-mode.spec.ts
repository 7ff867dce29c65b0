import test from 'ava'
import { once } from 'node:events'

import { Endpoint, Region, spawnWithEndpoint, zeroCopy } from '../index'
import { fixture } from './helpers'

// The mode Electron's memory cage forces (no external buffers), forced here on Node.
process.env.SHMLINK_FORCE_COPY = '1'

test('copy mode is reported and bytes explains itself', (t) => {
  t.false(zeroCopy())
  const region = Region.create(4096)
  t.false(region.zeroCopy)
  t.throws(() => region.bytes, { code: 'ERR_SHMLINK_ZERO_COPY_UNAVAILABLE', message: /read\(\) and region\.write\(\)/ })
  region.close()
})

test('copy mode round trip: payload, region contents, same object, transfer and return', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(64 * 1024)
  region.write(1000, 'copied explicitly')
  await a.send('hello', { transfer: [region] })
  t.throws(() => region.read(0, 1), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  const message = await b.recv()
  const theirs = message.regions[0]
  t.is(theirs.read(1000, 17).toString(), 'copied explicitly')
  theirs.write(0, 'reply')
  await b.send('back', { transfer: [theirs] })
  const back = await a.recv()
  t.is(back.regions[0], region)
  t.is(region.read(0, 5).toString(), 'reply')
  a.close()
  b.close()
})

test('copy mode with a child process: the child sees the parent’s writes', async (t) => {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [fixture('copy-child.cjs')], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const region = Region.create(1 << 20)
  region.write(12345, 'from the parent')
  await endpoint.send('', { transfer: [region] })
  const reply = await endpoint.recv()
  t.is(reply.payload.toString(), 'from the parent')
  t.is(region.read(0, 9).toString(), 'the child')
  endpoint.close()
  const [code] = await once(child, 'exit')
  t.is(code, 0)
})

test('copy mode recvSync({ into }): payload in the caller’s memory, regions listed by the binding', (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  region.write(0, 'listed')
  a.sendSync('with a region', { regions: [region] })
  a.sendSync('alone')
  const into = Buffer.alloc(64)
  const first = b.recvSync({ into, timeoutMs: 5000 })
  t.is(first.payload.toString(), 'with a region')
  t.is(first.payload.buffer, into.buffer)
  t.is(first.regions[0].read(0, 6).toString(), 'listed')
  t.true(first.descriptors[0].new)
  const second = b.recvSync({ into, timeoutMs: 5000 })
  t.is(second.payload.toString(), 'alone')
  t.deepEqual(second.regions, [])
  region.close()
  a.close()
  b.close()
})
