// Inline payloads: large ones reach JavaScript in the receive buffer they arrived in (the
// kernel's copy is the only one), small ones are copied; either way each payload is its
// own memory, untouched by later messages, and receive buffers are reused, not leaked.
import test from 'ava'

import { Endpoint, Region, type Message } from '../index'
import { settle } from './helpers'

const SIZES = [0, 1, 16, 32 * 1024 - 1, 32 * 1024, 48 * 1024 + 5, 64 * 1024]

/** A resizable ArrayBuffer (ES2024, newer than the lib these tests compile against). */
function resizable(length: number, maxByteLength: number): ArrayBuffer & { resize(length: number): void } {
  const Resizable = ArrayBuffer as unknown as new (length: number, options: { maxByteLength: number }) => ArrayBuffer & { resize(length: number): void }
  return new Resizable(length, { maxByteLength })
}

function pattern(size: number, seed: number): Buffer {
  const bytes = Buffer.alloc(size)
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed) & 0xff
  return bytes
}

test('payloads of every size arrive intact, and each stays intact while later ones arrive', async (t) => {
  const [a, b] = Endpoint.pair()
  const held: Buffer[] = []
  for (let round = 0; round < 3; round++) {
    for (const [i, size] of SIZES.entries()) {
      await a.send(pattern(size, round * 16 + i))
      held.push((await b.recv()).payload)
    }
  }
  let k = 0
  for (let round = 0; round < 3; round++) {
    for (const [i, size] of SIZES.entries()) {
      t.true(held[k++].equals(pattern(size, round * 16 + i)), `round ${round}, ${size} bytes`)
    }
  }
  a.close()
  b.close()
})

test('a payload is the receiver’s own memory: writing to it changes nothing else', async (t) => {
  const [a, b] = Endpoint.pair()
  const sent = pattern(64 * 1024, 7)
  await a.send(sent)
  await a.send(sent)
  const first = (await b.recv()).payload
  first.fill(0)
  t.true((await b.recv()).payload.equals(sent))
  t.true(sent.equals(pattern(64 * 1024, 7)))
  a.close()
  b.close()
})

test('recvSync and message events get large payloads intact too', async (t) => {
  const [a, b] = Endpoint.pair()
  a.sendSync(pattern(60000, 1))
  t.true(b.recvSync().payload.equals(pattern(60000, 1)))
  const events: Buffer[] = []
  b.on('message', (message) => events.push(message.payload))
  for (let i = 0; i < 5; i++) await a.send(pattern(40000, i))
  while (events.length < 5) await new Promise((resolve) => setTimeout(resolve, 5))
  events.forEach((payload, i) => t.true(payload.equals(pattern(40000, i)), `event ${i}`))
  a.close()
  b.close()
})

test('a stream of large payloads reuses its receive buffers instead of growing', async (t) => {
  const [a, b] = Endpoint.pair()
  const payload = pattern(64 * 1024, 3)
  const stream = async (count: number) => {
    for (let i = 0; i < count; i++) {
      await a.send(payload)
      if ((await b.recv()).payload.length !== payload.length) throw new Error('short payload')
    }
    await settle()
  }
  await stream(2000)
  const before = process.memoryUsage().rss
  await stream(4000)
  const grown = process.memoryUsage().rss - before
  // 4000 new 64 KiB buffers would be 250 MiB.
  t.true(grown < 32 * 1024 * 1024, `RSS grew by ${(grown / 2 ** 20).toFixed(1)} MiB`)
  a.close()
  b.close()
})

test.serial('a program that only receives synchronously does not keep large payloads’ memory', (t) => {
  // Node frees lent external memory from the event loop, which a recvSync loop never
  // returns to; such payloads must be the runtime's own memory, which its collector frees.
  // Serial: it measures the process's RSS, as the test above does.
  const [a, b] = Endpoint.pair()
  const sent = pattern(64 * 1024, 3)
  const rounds = 3000
  const before = process.memoryUsage().rss
  for (let i = 0; i < rounds; i++) {
    a.sendSync(sent)
    const received = b.recvSync().payload
    if (i % 500 === 0) t.true(received.equals(sent), `round ${i}`)
  }
  const grown = process.memoryUsage().rss - before
  t.true(grown < 64 * 1024 * 1024, `RSS grew ${(grown / 1048576).toFixed(0)} MiB over ${rounds} payloads of 64 KiB (${((rounds * sent.length) / 1048576).toFixed(0)} MiB received)`)
  a.close()
  b.close()
})

test('short payloads reach recv, recvSync and message events as Buffers of their own', async (t) => {
  // They are copied out of one staging area per endpoint; each must be its own memory,
  // whichever way it was received and whatever came after it.
  const [a, b] = Endpoint.pair()
  const sizes = [0, 5, 100, 32 * 1024 - 1]
  const got: Buffer[] = []
  for (const [i, size] of sizes.entries()) {
    await a.send(pattern(size, i))
    got.push((await b.recv()).payload)
    a.sendSync(pattern(size, i + 10))
    got.push(b.recvSync({ timeoutMs: 5000 }).payload)
  }
  const events: Buffer[] = []
  b.on('message', (message) => events.push(message.payload))
  for (const [i, size] of sizes.entries()) await a.send(pattern(size, i + 20))
  while (events.length < sizes.length) await new Promise((resolve) => setTimeout(resolve, 5))
  sizes.forEach((size, i) => {
    t.true(got[2 * i].equals(pattern(size, i)), `recv, ${size} bytes`)
    t.true(got[2 * i + 1].equals(pattern(size, i + 10)), `recvSync, ${size} bytes`)
    t.true(events[i].equals(pattern(size, i + 20)), `message event, ${size} bytes`)
  })
  for (const payload of [...got, ...events]) t.is(payload.buffer.byteLength, payload.length, 'a payload’s ArrayBuffer holds it alone')
  a.close()
  b.close()
})

test('regions are described alike whatever the payload and however the message is received', async (t) => {
  // The binding describes a message's regions in its staging memory as numbers; this checks
  // the descriptions (id, new, frozen, transferred, and the Region objects) against what was
  // sent, for short and long payloads, up to the most regions one message may carry.
  const limits = { maxRegions: 253 }
  const [a, b] = Endpoint.pair({ limits })
  const pool = Array.from({ length: 253 }, (_, i) => (i % 5 === 0 ? Region.create(4096).freeze() : Region.create(4096)))
  const received: { message: Message; sent: Region[]; moved: Region[]; ids: (number | undefined)[]; how: string }[] = []
  const receivers: [string, () => Promise<Message>][] = [
    ['recv', () => b.recv()],
    ['recvSync', async () => b.recvSync({ timeoutMs: 5000 })],
    ['recvSync into', async () => b.recvSync({ timeoutMs: 5000, into: Buffer.alloc(64 * 1024) })],
    ['message event', () => new Promise<Message>((resolve) => b.once('message', resolve))],
  ]
  let seed = 0
  for (const count of [1, 3, 253]) {
    for (const size of [5, 40 * 1024]) {
      for (const [how, receive] of receivers) {
        const sent = pool.slice(0, count)
        const moved = count > 1 ? [pool[count - 1]] : []
        const listening = how === 'message event' ? receive() : undefined
        await a.send(pattern(size, ++seed), { regions: sent.slice(0, count - moved.length), transfer: moved })
        const ids = sent.map((region) => a.regionId(region))
        const message = await (listening ?? receive())
        t.true(message.payload.equals(pattern(size, seed)), `${how}: payload of ${size} bytes with ${count} regions`)
        received.push({ message, sent, moved, ids, how })
        for (const region of moved) {
          // Hand it back, so that later rounds can send it again.
          await b.send('back', { transfer: [message.regions[count - 1]] })
          await a.recv()
          t.false(region.transferred, 'the region came back')
        }
      }
    }
  }
  for (const { message, sent, moved, ids, how } of received) {
    t.is(message.regions.length, sent.length, how)
    t.deepEqual(
      message.descriptors.map((d) => [d.frozen, d.transferred]),
      sent.map((region) => [region.frozen, moved.includes(region)]),
      `${how}: frozen and transferred flags of ${sent.length} regions`,
    )
    t.deepEqual(message.descriptors.map((d) => d.id), ids, `${how}: ids`)
  }
  const firstOf = received[0].message
  t.true(firstOf.descriptors[0].new, 'the first message brings the descriptor')
  t.false(received[1].message.descriptors[0].new, 'later ones only the id')
  t.is(received[1].message.regions[0], firstOf.regions[0], 'the same region arrives as the same object')
  a.close()
  b.close()
})

test('recvSync({ into }) receives every size into the caller’s memory, reused from message to message', (t) => {
  for (const ring of [false, true]) {
    const [a, b] = Endpoint.pair({ ring })
    const memory = new ArrayBuffer(64 * 1024 + 100)
    const into = new Uint8Array(memory, 100)
    for (const [i, size] of SIZES.entries()) {
      a.sendSync(pattern(size, i))
      const { payload } = b.recvSync({ into, timeoutMs: 5000 })
      t.true(payload.equals(pattern(size, i)), `ring ${ring}: ${size} bytes`)
      t.true(Buffer.from(memory, 100, size).equals(pattern(size, i)))
      if (size === 0) continue
      t.is(payload.buffer, memory, 'the payload is the caller’s memory')
      t.is(payload.byteOffset, 100)
    }
    a.close()
    b.close()
  }
})

test('recvSync({ into }) takes any view or ArrayBuffer, and refuses what is not memory', (t) => {
  const [a, b] = Endpoint.pair()
  const sent = pattern(24, 3)
  const targets: [string, ArrayBufferView | ArrayBuffer][] = [
    ['Float64Array', new Float64Array(4)],
    ['DataView', new DataView(new ArrayBuffer(40), 8, 24)],
    ['ArrayBuffer', new ArrayBuffer(24)],
    ['SharedArrayBuffer view', new Uint8Array(new SharedArrayBuffer(32))],
  ]
  for (const [what, into] of targets) {
    a.sendSync(sent)
    t.true(b.recvSync({ into }).payload.equals(sent), what)
  }
  // A view over a resizable buffer follows it: the same view object holds more once the
  // buffer grew.
  const growing = resizable(8, 64)
  const tracking = new Float64Array(growing)
  a.sendSync(sent)
  t.throws(() => b.recvSync({ into: tracking }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
  growing.resize(24)
  t.true(b.recvSync({ into: tracking }).payload.equals(sent), 'the grown buffer holds it')
  const detached = new Uint8Array(16)
  structuredClone(detached.buffer, { transfer: [detached.buffer] })
  a.sendSync('')
  t.is(b.recvSync({ into: detached }).payload.length, 0, 'an empty payload into a detached buffer')
  a.sendSync('abc')
  t.throws(() => b.recvSync({ into: detached }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
  t.is(b.recvSync({ into: new Uint8Array(3) }).payload.toString(), 'abc')
  for (const into of ['text', 5, {}, [1, 2]]) {
    t.throws(() => b.recvSync({ into: into as never, timeoutMs: 0 }), { code: 'ERR_SHMLINK_INVALID_ARG', instanceOf: TypeError })
  }
  a.sendSync('still there')
  t.is(b.recvSync({ timeoutMs: 0 }).payload.toString(), 'still there', 'a refused call received nothing')
  a.close()
  b.close()
})

test('recvSync({ into }) too short for the payload receives nothing: the message, regions and all, comes next', async (t) => {
  for (const ring of [false, true]) {
    const [a, b] = Endpoint.pair({ ring })
    // A receive that waited makes the next one wait for the socket before it looks: a
    // message put back must be found all the same.
    t.throws(() => b.recvSync({ timeoutMs: 1 }), { code: 'ERR_SHMLINK_TIMED_OUT' })
    const region = Region.create(4096)
    region.write(0, 'region data')
    a.sendSync(pattern(1000, 1), { regions: [region] })
    const short = Buffer.alloc(999, 0xee)
    t.throws(() => b.recvSync({ into: short, timeoutMs: 5000 }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE', message: /1000 bytes/ })
    t.true(short.equals(Buffer.alloc(999, 0xee)), 'nothing was written into it')
    t.throws(() => b.recvSync({ into: new Uint8Array(0), timeoutMs: 5000 }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
    // Nothing else is on its way, so only the inbox holds it.
    const first = b.recvSync({ into: Buffer.alloc(1000), timeoutMs: 100 })
    t.true(first.payload.equals(pattern(1000, 1)), `ring ${ring}: the message that did not fit`)
    t.is(first.regions.length, 1)
    t.is(first.regions[0].read(0, 11).toString(), 'region data')
    a.sendSync(pattern(10, 2))
    t.true(b.recvSync({ timeoutMs: 5000 }).payload.equals(pattern(10, 2)), 'then the next one')
    // A message put back goes to a receive that is waiting for one, too.
    const waiting = b.recv()
    a.sendSync(pattern(500, 3))
    t.throws(() => b.recvSync({ into: Buffer.alloc(10), timeoutMs: 5000 }), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
    t.true((await waiting).payload.equals(pattern(500, 3)), 'the waiting recv() got it')
    t.deepEqual(b.stats().inbox, 0)
    region.close()
    a.close()
    b.close()
  }
})

test('recvSync({ into }) allocates nothing per message: 20 000 payloads of 64 KiB leave the heap where it was', (t) => {
  // Without into, each payload is new memory that V8 frees in batches and glibc may give
  // back to the kernel and fault in again (docs/BENCHMARKS.md).
  const [a, b] = Endpoint.pair()
  const into = Buffer.alloc(64 * 1024)
  const sent = pattern(64 * 1024, 9)
  const round = () => {
    a.sendSync(sent)
    return b.recvSync({ into }).payload
  }
  for (let i = 0; i < 1000; i++) round()
  const before = process.memoryUsage().arrayBuffers
  let intact = 0
  let grown = 0
  for (let i = 0; i < 20000; i++) {
    if (round()[65535] === sent[65535]) intact++
    // Without into, the payloads V8 has not yet collected reach tens of MiB here.
    if (i % 100 === 0) grown = Math.max(grown, process.memoryUsage().arrayBuffers - before)
  }
  t.is(intact, 20000)
  t.true(grown < 1024 * 1024, `array buffer memory grew up to ${(grown / 1048576).toFixed(1)} MiB`)
  a.close()
  b.close()
})
