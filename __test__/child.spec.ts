import test from 'ava'
import { createHash } from 'node:crypto'
import { once } from 'node:events'

import { Region, spawnWithEndpoint } from '../index'
import { fixture } from './helpers'

function startChild() {
  return spawnWithEndpoint(process.execPath, [fixture('checksum-child.cjs')], { stdio: ['ignore', 'inherit', 'inherit'] })
}

test('a 64 MiB region handed to a child comes back with its checksum and the child’s writes', async (t) => {
  const { child, endpoint } = startChild()
  const region = Region.create(64 * 1024 * 1024)
  const bytes = region.bytes
  for (let i = 0; i < bytes.length; i += 4096) bytes[i] = (i / 4096) & 0xff
  bytes.fill(7, 1, 4096)
  const expected = createHash('sha256').update(bytes).digest('hex')
  await endpoint.send('checksum', { transfer: [region] })
  t.is(bytes.length, 0, 'the parent’s view is detached while the child owns the region')
  const reply = await endpoint.recv()
  t.is(reply.payload.toString(), expected)
  t.is(reply.regions[0], region, 'the region comes back as the same object')
  t.deepEqual([...region.bytes.subarray(0, 16)], new Array(16).fill(0x5a))
  t.is(region.bytes[4096], 1)
  await endpoint.send('exit')
  const [code] = await once(child, 'exit')
  t.is(code, 0)
  endpoint.close()
})

test('the same region sent twice to a child is mapped once there', async (t) => {
  const { child, endpoint } = startChild()
  const region = Region.create(1 << 20)
  region.bytes.fill(3)
  await endpoint.send('checksum', { transfer: [region] })
  const first = await endpoint.recv()
  t.true(first.descriptors[0].new)
  await endpoint.send('checksum', { transfer: [region] })
  const second = await endpoint.recv()
  t.false(second.descriptors[0].new, 'the child sends its id back, not a new descriptor')
  t.is(second.regions[0], region)
  endpoint.close()
  const [code] = await once(child, 'exit')
  t.is(code, 0)
})

test('a child cannot change a frozen region, and its stray write does not crash it', async (t) => {
  const { child, endpoint } = startChild()
  const region = Region.create(4096)
  region.write(0, 'frozen!')
  region.freeze()
  await endpoint.send('stray-write', { regions: [region] })
  const report = JSON.parse((await endpoint.recv()).payload.toString())
  t.true(report.frozen)
  t.is(report.before, 'f'.charCodeAt(0))
  t.is(region.read(0, 7).toString(), 'frozen!')
  await endpoint.send('exit')
  const [code] = await once(child, 'exit')
  t.is(code, 0)
  endpoint.close()
})

test('the child’s credentials name the parent as the socket’s creator', async (t) => {
  const { child, endpoint } = startChild()
  await endpoint.send('peer')
  const peer = JSON.parse((await endpoint.recv()).payload.toString())
  t.is(peer.pid, process.pid)
  t.is(peer.uid, process.getuid!())
  endpoint.close()
  await once(child, 'exit')
})

test('a parent that closes ends the child’s iteration; a child that dies ends the parent’s', async (t) => {
  const first = startChild()
  first.endpoint.close()
  const [code] = await once(first.child, 'exit')
  t.is(code, 0)

  const second = startChild()
  const closed = once(second.endpoint, 'close')
  second.child.kill('SIGKILL')
  const [reason] = await closed
  t.is((reason as { code: string }).code, 'ERR_SHMLINK_PEER_CLOSED')
  await t.throwsAsync(second.endpoint.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
})
