import test from 'ava'

import { Region, isShmlinkError, zeroCopy } from '../index'

test('a new region is zeroed, sized and zero-copy', (t) => {
  const region = Region.create(64 * 1024)
  t.is(region.size, 64 * 1024)
  t.true(zeroCopy())
  t.true(region.zeroCopy)
  t.is(region.bytes.length, 64 * 1024)
  t.true(region.bytes.every((b) => b === 0))
  region.close()
})

test('bytes is one view over the memory: writes show in read() and vice versa', (t) => {
  const region = Region.create(4096)
  t.is(region.bytes, region.bytes)
  region.bytes.set([1, 2, 3], 10)
  t.deepEqual([...region.read(10, 3)], [1, 2, 3])
  region.write(100, 'shmlink')
  t.is(Buffer.from(region.bytes.subarray(100, 107)).toString(), 'shmlink')
  region.write(200, new Uint16Array([0x0102]))
  t.deepEqual([...region.read(200, 2)], [2, 1])
  t.is(region.read(4090).length, 6)
  region.close()
})

test('close detaches old views, which then read as empty and never crash', (t) => {
  const region = Region.create(4096)
  const view = region.bytes
  view[0] = 1
  region.close()
  t.is(view.length, 0)
  t.is((view as ArrayLike<number | undefined>)[0], undefined)
  view[0] = 5
  t.true(region.closed)
  t.is(region.size, 0)
  t.throws(() => region.bytes, { code: 'ERR_SHMLINK_REGION_CLOSED' })
  t.throws(() => region.read(0, 1), { code: 'ERR_SHMLINK_REGION_CLOSED' })
  t.throws(() => region.write(0, 'x'), { code: 'ERR_SHMLINK_REGION_CLOSED' })
  t.throws(() => region.freeze(), { code: 'ERR_SHMLINK_REGION_CLOSED' })
  region.close()
})

test('using disposes the region', (t) => {
  let view: Uint8Array
  {
    using region = Region.create(128)
    view = region.bytes
    t.is(view.length, 128)
  }
  t.is(view.length, 0)
})

test('freeze keeps the contents readable and refuses writes', (t) => {
  const region = Region.create(4096)
  region.write(0, 'constant')
  const view = region.bytes
  t.is(region.freeze(), region)
  t.true(region.frozen)
  t.is(region.read(0, 8).toString(), 'constant')
  t.is(Buffer.from(view.subarray(0, 8)).toString(), 'constant')
  t.throws(() => region.write(0, 'x'), { code: 'ERR_SHMLINK_REGION_FROZEN' })
  region.close()
})

test('sizes that are not positive safe integers are refused before any syscall', (t) => {
  for (const size of [0, -1, 1.5, Number.NaN, Infinity, 2 ** 60]) {
    t.throws(() => Region.create(size), { code: 'ERR_SHMLINK_INVALID_ARG', instanceOf: RangeError }, String(size))
  }
  for (const size of ['10', null, undefined, {}, 10n]) {
    t.throws(() => Region.create(size as unknown as number), { code: 'ERR_SHMLINK_INVALID_ARG', instanceOf: TypeError })
  }
})

test('a size larger than memory allows fails with an OS error, not a crash', (t) => {
  const error = t.throws(() => Region.create(2 ** 52))
  t.true(isShmlinkError(error))
})

test('read and write outside the region are refused', (t) => {
  const region = Region.create(100)
  t.throws(() => region.read(99, 2), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => region.read(-1, 2), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => region.write(99, 'ab'), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => region.write(0, 42 as unknown as string), { code: 'ERR_SHMLINK_INVALID_ARG', instanceOf: TypeError })
  region.close()
})

test('isShmlinkError tells shmlink errors from others', (t) => {
  const error = t.throws(() => Region.create(0))
  t.true(isShmlinkError(error))
  t.false(isShmlinkError(new Error('x')))
  t.false(isShmlinkError(Object.assign(new Error('x'), { code: 'ENOENT' })))
  t.false(isShmlinkError('ERR_SHMLINK_CLOSED'))
})
