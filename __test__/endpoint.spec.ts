import test from 'ava'
import { statSync } from 'node:fs'
import { join } from 'node:path'

import { Endpoint, Region, setProcessLimits, spawnWithEndpoint, type Message } from '../index'
import { runNode, socketPath, fixture } from './helpers'

test('a message with a region arrives with the region contents', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(1 << 20)
  region.bytes.fill(0xab)
  await a.send('hello', { regions: [region] })
  const message = await b.recv()
  t.is(message.payload.toString(), 'hello')
  t.is(message.regions.length, 1)
  t.deepEqual(message.descriptors, [{ id: 1, new: true, frozen: false, transferred: false }])
  const theirs = message.regions[0]
  t.is(theirs.size, 1 << 20)
  t.true(theirs.bytes.every((byte) => byte === 0xab))
  theirs.bytes[0] = 1
  t.is(region.bytes[0], 1, 'shared regions are the same memory on both sides')
  a.close()
  b.close()
})

test('payloads of every kind arrive byte for byte', async (t) => {
  const [a, b] = Endpoint.pair()
  const inputs: Array<[string | ArrayBufferView | ArrayBuffer, Buffer]> = [
    ['', Buffer.alloc(0)],
    ['text ✓', Buffer.from('text ✓')],
    [Buffer.from([1, 2, 3]), Buffer.from([1, 2, 3])],
    [new Float64Array([1.5]), Buffer.from(new Float64Array([1.5]).buffer)],
    [new Uint8Array([9, 8, 7]).subarray(1), Buffer.from([8, 7])],
    [new ArrayBuffer(5), Buffer.alloc(5)],
    [Buffer.alloc(65536, 3), Buffer.alloc(65536, 3)],
  ]
  for (const [input] of inputs) await a.send(input)
  for (const [, expected] of inputs) t.deepEqual((await b.recv()).payload, expected)
  a.close()
  b.close()
})

test('attachments keep the order of regions; transfer marks them in place', async (t) => {
  const [a, b] = Endpoint.pair()
  const [first, moved, last, extra] = [1, 2, 3, 4].map((n) => {
    const region = Region.create(4096)
    region.write(0, String(n))
    return region
  })
  await a.send('', { regions: [first, moved, last], transfer: [moved, extra] })
  const message = await b.recv()
  t.deepEqual(message.regions.map((r) => r.read(0, 1).toString()), ['1', '2', '3', '4'])
  t.deepEqual(message.descriptors.map((d) => d.transferred), [false, true, false, true])
  t.true(moved.transferred && extra.transferred)
  t.false(first.transferred || last.transferred)
  a.close()
  b.close()
})

test('a region sent again is the same Region object on the receiving side', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  await a.send('1', { regions: [region] })
  const first = (await b.recv()).regions[0]
  await a.send('2', { regions: [region] })
  const second = await b.recv()
  t.is(second.regions[0], first)
  t.false(second.descriptors[0].new, 'only the id travels the second time')
  a.close()
  b.close()
})

test('transfer detaches the sender until the region comes back, then re-attaches it', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  const before = region.bytes
  before[0] = 42
  const sent = a.send('take it', { transfer: [region] })
  t.true(region.transferred)
  t.is(before.length, 0, 'the old view is detached at once')
  t.throws(() => region.bytes, { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  t.throws(() => region.read(0, 1), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  await t.throwsAsync(a.send('again', { regions: [region] }), { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  await sent
  const message = await b.recv()
  t.true(message.descriptors[0].transferred)
  const theirs = message.regions[0]
  t.is(theirs.bytes[0], 42)
  theirs.bytes[1] = 43
  await b.send('back', { transfer: [theirs] })
  t.throws(() => theirs.bytes, { code: 'ERR_SHMLINK_REGION_TRANSFERRED' })
  const returned = await a.recv()
  t.is(returned.regions[0], region)
  t.false(region.transferred)
  t.deepEqual([...region.bytes.subarray(0, 2)], [42, 43])
  a.close()
  b.close()
})

test('a frozen region reaches the receiver read-only; a stray write does not crash or leak back', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  region.write(0, 'constant')
  region.freeze()
  await a.send('', { regions: [region] })
  const message = await b.recv()
  const theirs = message.regions[0]
  t.true(theirs.frozen)
  t.true(message.descriptors[0].frozen)
  t.throws(() => theirs.write(0, 'x'), { code: 'ERR_SHMLINK_REGION_FROZEN' })
  theirs.bytes[0] = 0x58
  t.is(region.read(0, 8).toString(), 'constant')
  a.close()
  b.close()
})

test('freezing a region the peer has mapped writable is refused', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(4096)
  await a.send('', { regions: [region] })
  await b.recv()
  t.throws(() => region.freeze(), { code: 'ERR_SHMLINK_REGION_BUSY' })
  t.false(region.frozen)
  a.close()
  b.close()
})

test('async iteration yields messages in order and ends when the peer closes', async (t) => {
  const [a, b] = Endpoint.pair()
  for (let i = 0; i < 50; i++) await a.send(String(i))
  a.close()
  const seen: string[] = []
  for await (const message of b) seen.push(message.payload.toString())
  t.deepEqual(seen, Array.from({ length: 50 }, (_, i) => String(i)))
  t.true(b.closed)
})

test('recv can be aborted with an AbortSignal and the endpoint stays usable', async (t) => {
  const [a, b] = Endpoint.pair()
  const controller = new AbortController()
  const pending = b.recv({ signal: controller.signal })
  controller.abort(new Error('changed my mind'))
  const error = await t.throwsAsync(pending, { name: 'AbortError', code: 'ABORT_ERR' } as never)
  t.is((error?.cause as Error).message, 'changed my mind')
  await t.throwsAsync(b.recv({ signal: AbortSignal.abort() }), { name: 'AbortError' })
  await a.send('after abort')
  t.is((await b.recv()).payload.toString(), 'after abort')
  a.close()
  b.close()
})

test('recvSync and sendSync block with timeouts', (t) => {
  const [a, b] = Endpoint.pair()
  t.throws(() => b.recvSync({ timeoutMs: 10 }), { code: 'ERR_SHMLINK_TIMED_OUT' })
  a.sendSync('sync', { regions: [Region.create(64)] })
  const message = b.recvSync({ timeoutMs: 1000 })
  t.is(message.payload.toString(), 'sync')
  t.is(message.regions[0].size, 64)
  t.throws(() => b.recvSync({ timeoutMs: -5 }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  a.close()
  t.throws(() => b.recvSync(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
  t.true(b.closed)
})

test('a full socket makes send wait; nothing is dropped or reordered', async (t) => {
  const [a, b] = Endpoint.pair()
  const payload = Buffer.alloc(60_000)
  const sends: Promise<void>[] = []
  for (let i = 0; i < 200; i++) {
    payload.writeUInt32LE(i, 0)
    sends.push(a.send(Buffer.from(payload)))
  }
  let settled = 0
  for (const send of sends) void send.then(() => settled++)
  await new Promise((resolve) => setImmediate(resolve))
  t.true(settled < 200, 'a 12 MB burst cannot fit in the socket buffer at once')
  for (let i = 0; i < 200; i++) {
    const message = await b.recv()
    t.is(message.payload.readUInt32LE(0), i)
  }
  await Promise.all(sends)
  a.close()
  b.close()
})

test('a send waiting for room can be aborted, and later sends still go out in order', async (t) => {
  const [a, b] = Endpoint.pair()
  const big = Buffer.alloc(60_000)
  const sends: Promise<void>[] = []
  for (let i = 0; i < 20; i++) sends.push(a.send(big))
  const controller = new AbortController()
  const aborted = a.send('aborted', { signal: controller.signal })
  const after = a.send('after')
  controller.abort()
  await t.throwsAsync(aborted, { name: 'AbortError' })
  for (let i = 0; i < 20; i++) await b.recv()
  t.is((await b.recv()).payload.toString(), 'after')
  await Promise.all([...sends, after])
  a.close()
  b.close()
})

test('bad arguments are refused with a code before anything is sent', async (t) => {
  const [a, b] = Endpoint.pair()
  const closed = Region.create(64)
  closed.close()
  await t.throwsAsync(a.send(42 as unknown as string), { code: 'ERR_SHMLINK_INVALID_ARG', instanceOf: TypeError })
  await t.throwsAsync(a.send('x', { regions: [{} as Region] }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  await t.throwsAsync(a.send('x', { regions: 'no' as unknown as Region[] }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  await t.throwsAsync(a.send('x', { regions: [closed] }), { code: 'ERR_SHMLINK_REGION_CLOSED' })
  const twice = Region.create(64)
  await t.throwsAsync(a.send('x', { regions: [twice, twice], transfer: [twice] }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.false(twice.transferred)
  await t.throwsAsync(a.send(Buffer.alloc(65537)), { code: 'ERR_SHMLINK_PAYLOAD_TOO_LARGE' })
  const many = Array.from({ length: 33 }, () => Region.create(64))
  await t.throwsAsync(a.send('x', { regions: many }), { code: 'ERR_SHMLINK_TOO_MANY_REGIONS' })
  await t.throwsAsync(b.recv({ signal: 'no' as unknown as AbortSignal }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  await a.send('still fine')
  t.is((await b.recv()).payload.toString(), 'still fine')
  a.close()
  b.close()
})

test('endpoint options of the wrong type or range are refused with a code, by every constructor', async (t) => {
  const bad: [string, unknown][] = [
    ['options.ring', { ring: 1 }],
    ['options.acceptWritable', { acceptWritable: 'yes' }],
    ['options.busyPollUs', { busyPollUs: '50' }],
    ['options.busyPollUs', { busyPollUs: -1 }],
    ['options.limits', { limits: 5 }],
    ['options.limits.maxPayload', { limits: { maxPayload: 'x' } }],
    ['options.limits.maxPayload', { limits: { maxPayload: 2 ** 32 } }],
    ['options.limits.maxRegions', { limits: { maxRegions: -1 } }],
    ['options.limits.maxPayloads', { limits: { maxPayloads: 5 } }],
    ['options must be an object', null],
  ]
  type Options = Parameters<typeof Endpoint.pair>[0]
  for (const [name, options] of bad) {
    const expect = { code: 'ERR_SHMLINK_INVALID_ARG', message: new RegExp(name.replace(/[.]/g, '[.]')) }
    t.throws(() => Endpoint.pair(options as Options), expect, `pair ${JSON.stringify(options)}`)
    t.throws(() => spawnWithEndpoint(process.execPath, ['-e', ''], options as Options), expect, `spawnWithEndpoint ${JSON.stringify(options)}`)
    t.throws(() => Endpoint.listen(socketPath('bad-options'), options as Options), expect, `listen ${JSON.stringify(options)}`)
    await t.throwsAsync(Endpoint.connect(socketPath('bad-options'), options as Options), expect, `connect ${JSON.stringify(options)}`)
  }
  t.throws(() => Endpoint.listen(socketPath('bad-options'), { allow: { uids: ['0' as unknown as number] } }), {
    code: 'ERR_SHMLINK_INVALID_ARG',
  })
  t.throws(() => Endpoint.listen(socketPath('bad-options'), { maxPending: 2 ** 32 }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  const setLimits = setProcessLimits as (limits?: unknown) => void
  t.throws(() => setLimits(), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => setLimits({ maxMappedBytes: '1', maxRegions: 5 }), { code: 'ERR_SHMLINK_INVALID_ARG' })
  const [a, b] = Endpoint.pair({ ring: true, busyPollUs: 0, limits: { maxPayload: 1024, maxMappedBytes: 2 ** 40 } })
  a.close()
  b.close()
})

test('a closed endpoint refuses everything with ERR_SHMLINK_CLOSED and emits close once', async (t) => {
  const [a, b] = Endpoint.pair()
  const closes: unknown[] = []
  a.on('close', (reason) => closes.push(reason))
  const waiting = a.recv()
  a.close()
  a.close()
  await t.throwsAsync(waiting, { code: 'ERR_SHMLINK_CLOSED' })
  await t.throwsAsync(a.send('x'), { code: 'ERR_SHMLINK_CLOSED' })
  await t.throwsAsync(a.recv(), { code: 'ERR_SHMLINK_CLOSED' })
  t.throws(() => a.recvSync(), { code: 'ERR_SHMLINK_CLOSED' })
  t.is(a.fd, -1)
  await new Promise((resolve) => setImmediate(resolve))
  t.deepEqual(closes, [undefined])
  const peerClose = await new Promise<unknown>((resolve) => b.once('close', resolve))
  t.is((peerClose as { code: string }).code, 'ERR_SHMLINK_PEER_CLOSED')
  await t.throwsAsync(b.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
})

test('a waiting recv on an unref()ed endpoint does not keep the process alive', async (t) => {
  const unrefd = await runNode([fixture('idle-recv.cjs'), 'unref'])
  t.is(unrefd.code, 0, unrefd.stderr)
  t.is(unrefd.stdout.trim(), 'exited while waiting')
})

test('a waiting recv keeps the process alive until the message comes', async (t) => {
  const result = await runNode([fixture('idle-recv.cjs'), 'ref'])
  t.is(result.code, 0, result.stderr)
  t.is(result.stdout.trim(), 'got late message')
})

test('listen, connect, peer credentials and a private socket file', async (t) => {
  const path = socketPath('listen')
  const server = Endpoint.listen(path, { acceptWritable: true })
  t.is(statSync(path).mode & 0o777, 0o600)
  const accepted = server.accept()
  const client = await Endpoint.connect(path)
  const serverSide = await accepted
  t.deepEqual(serverSide.peer, { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() })
  const region = Region.create(8192)
  region.write(0, 'over a path')
  await client.send('hi', { regions: [region] })
  const message = await serverSide.recv()
  t.is(message.regions[0].read(0, 11).toString(), 'over a path')
  server.close()
  await new Promise((resolve) => setImmediate(resolve))
  t.throws(() => statSync(path), { code: 'ENOENT' })
  client.close()
  serverSide.close()
})

test('a server is an async iterable of connections', async (t) => {
  const path = `\0shmlink-test-${process.pid}`
  const server = Endpoint.listen(path)
  const clients = await Promise.all([Endpoint.connect(path), Endpoint.connect(path)])
  const accepted: Endpoint[] = []
  for await (const endpoint of server) {
    accepted.push(endpoint)
    if (accepted.length === 2) break
  }
  t.is(accepted.length, 2)
  for (const client of clients) client.close()
  for (const endpoint of accepted) endpoint.close()
})

test('connecting to nothing fails with the OS error', async (t) => {
  const error = await t.throwsAsync(Endpoint.connect(socketPath('nobody')), { code: 'ERR_SHMLINK_OS' })
  t.is((error as { syscall?: string }).syscall, 'connect')
  t.is((error as { errno?: number }).errno, 2)
})

test('listening on a path in use by a live server fails with EADDRINUSE', (t) => {
  const path = socketPath('busy')
  const server = Endpoint.listen(path)
  const error = t.throws(() => Endpoint.listen(path), { code: 'ERR_SHMLINK_OS' })
  t.regex(error!.message, /EADDRINUSE/)
  server.close()
})

test('fromFd refuses descriptors that are not seqpacket sockets', (t) => {
  t.throws(() => Endpoint.fromFd(1), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => Endpoint.fromFd(987654), { code: 'ERR_SHMLINK_INVALID_ARG' })
  t.throws(() => Endpoint.fromFd(-1), { code: 'ERR_SHMLINK_INVALID_ARG' })
})

test('NODE_DEBUG=shmlink logs traffic through util.debuglog', async (t) => {
  const quiet = await runNode([fixture('debuglog.cjs')], { NODE_DEBUG: '' })
  t.is(quiet.stderr, '')
  const logged = await runNode([fixture('debuglog.cjs')], { NODE_DEBUG: 'shmlink' })
  t.regex(logged.stderr, /SHMLINK \d+: connection \d+ send 6 bytes, 1 regions \[1:4096:transfer\]/)
  t.regex(logged.stderr, /SHMLINK \d+: connection \d+ recv 6 bytes, 1 regions \[1:4096:new:transfer\]/)
  t.regex(logged.stderr, /send 6 bytes, 0 regions \[\] queued as #1 \(waiting for the peer's HELLO/)
  t.regex(logged.stderr, /connection \d+ ended: recv: the peer closed the connection/)
})

test('inherited() outside spawnWithEndpoint explains itself', (t) => {
  t.throws(() => Endpoint.inherited(), { code: 'ERR_SHMLINK_INVALID_ARG', message: /SHMLINK_FD is not set.*spawnWithEndpoint/ })
})

/** What Endpoint.inherited() throws in a child whose environment has `SHMLINK_FD=value`. */
async function inheritedError(value: string): Promise<{ code: string; message: string }> {
  const script = `try { require(${JSON.stringify(join(__dirname, '..', 'index.js'))}).Endpoint.inherited() } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }`
  const { stdout } = await runNode(['-e', script], { SHMLINK_FD: value })
  return JSON.parse(stdout)
}

test('inherited() says what is wrong with SHMLINK_FD: not a number, a standard stream, not a socket', async (t) => {
  for (const value of ['abc', '0', '-3', '3.5']) {
    const error = await inheritedError(value)
    t.is(error.code, 'ERR_SHMLINK_INVALID_ARG', value)
    t.regex(error.message, /SHMLINK_FD is "[^"]*", which is not a descriptor number above 2/, value)
  }
  // A descriptor that is open but is not the socket: what a wrapper program leaves behind.
  const notSocket = await inheritedError('1')
  t.regex(notSocket.message, /not a descriptor number above 2/)
  const closed = await inheritedError('57')
  t.is(closed.code, 'ERR_SHMLINK_INVALID_ARG')
  t.regex(closed.message, /SHMLINK_FD=57 does not name the socket the parent passed down: .*wrapper program .*process\.execPath/)
})

test('stats() counts messages, bytes and regions both ways, with the limits they count against', async (t) => {
  const [a, b] = Endpoint.pair()
  const region = Region.create(8192)
  await a.send('four', { regions: [region] })
  await b.recv()
  t.like(a.stats(), { messagesOut: 1, bytesOut: 4, ownRegions: 1 })
  t.like(b.stats(), { messagesIn: 1, bytesIn: 4, peerRegions: 1, peerMappedBytes: 8192 })
  t.is(b.stats().limits.maxBoundRegions, 1024)
  a.close()
  b.close()
  region.close()
})

test('messages nobody asked for yet are kept in order; past the high-water mark the sender waits', async (t) => {
  const [a, b] = Endpoint.pair()
  const sends = Array.from({ length: 2000 }, (_, i) => a.send(String(i)))
  let sent = 0
  for (const send of sends) void send.then(() => sent++)
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.true(sent < 2000, 'the receiver stops reading when nobody consumes, so the sender must wait')
  const seen: Message[] = []
  for (let i = 0; i < 2000; i++) seen.push(await b.recv())
  t.deepEqual(seen.map((m) => m.payload.toString()), Array.from({ length: 2000 }, (_, i) => String(i)))
  await Promise.all(sends)
  a.close()
  b.close()
})
