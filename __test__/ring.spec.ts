/**
 * Rings from Node (docs/PROTOCOL.md §9): negotiation and fallback, the event loop and the
 * blocking calls over the ring, both wake-up backends, and a peer that dies while this
 * side waits on the ring. The core's own tests (src-rs/core/tests/ring.rs, the loom model
 * in ring.rs) cover ordering and hostile rings in depth.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'

import { Endpoint, Region, spawnWithEndpoint } from '../index'
import { fixture } from './helpers'

const linux = process.platform === 'linux' ? test : test.skip

async function pingPong(a: Endpoint, b: Endpoint, rounds: number): Promise<void> {
  const echo = (async () => {
    for (let i = 0; i < rounds; i++) {
      const m = await b.recv()
      await b.send(m.payload)
    }
  })()
  for (let i = 0; i < rounds; i++) {
    await a.send(`ping ${i}`)
    const reply = await a.recv()
    if (reply.payload.toString() !== `ping ${i}`) throw new Error(`round ${i}: ${reply.payload.toString()}`)
  }
  await echo
}

/** The CPUs this process may run on, from /proc (undefined where there is none). */
function readAffinity(): number[] | undefined {
  const list = spawnSync('taskset', ['-c', '-p', String(process.pid)], { encoding: 'utf8' }).stdout?.split(':')[1]?.trim()
  if (!list) return undefined
  return list.split(',').flatMap((part) => {
    const [from, to = from] = part.split('-').map(Number)
    return Array.from({ length: to - from + 1 }, (_, i) => from + i)
  })
}

function pin(pid: number, cpus: number | string): void {
  spawnSync('taskset', ['-c', '-p', String(cpus), String(pid)])
}

linux('messages take the ring only when both sides offer it', async (t) => {
  for (const [ringA, ringB, used] of [
    [true, true, true],
    [true, false, false],
    [false, true, false],
  ] as const) {
    // pair() gives both ends the same options; a child with its own shows the mixed cases.
    const { child, endpoint } = spawnWithEndpoint(process.execPath, [fixture('ring-child.cjs'), ringB ? 'ring' : 'socket'], {
      stdio: ['ignore', 'inherit', 'inherit'],
      ring: ringA,
    })
    for (let i = 0; i < 100; i++) {
      await endpoint.send(`n${i}`)
      t.is((await endpoint.recv()).payload.toString(), `n${i}`)
    }
    const stats = endpoint.stats()
    if (used) {
      t.true(stats.ringMessagesOut >= 95, `ring ${ringA}/${ringB}: ${JSON.stringify(stats)}`)
      t.true(stats.ringMessagesIn >= 95, `ring ${ringA}/${ringB}: ${JSON.stringify(stats)}`)
    } else {
      t.is(stats.ringMessagesOut + stats.ringMessagesIn, 0, `ring ${ringA}/${ringB}: the socket path`)
    }
    endpoint.close()
    const [code] = await once(child, 'exit')
    t.is(code, 0)
  }
})

linux('a peer that receives synchronously is never rung: its loop does not wait', async (t) => {
  // A blocking receiver never lets its event loop wait, so it must not announce that the
  // loop sleeps; the sender would otherwise send a WAKE record (two system calls) per
  // message, and fill the socket with them.
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [fixture('ring-child.cjs'), 'ring', 'sync'], {
    stdio: ['ignore', 'inherit', 'inherit'],
    ring: true,
  })
  const rounds = 2000
  for (let i = 0; i < rounds; i++) {
    endpoint.sendSync(Buffer.from(`n${i}`))
    t.is(endpoint.recvSync({ timeoutMs: 5000 }).payload.toString(), `n${i}`)
  }
  const stats = endpoint.stats()
  t.true(stats.ringMessagesOut >= rounds, JSON.stringify(stats))
  t.true(stats.ringWakesOut <= 2, `${stats.ringWakesOut} WAKE records for ${rounds} messages`)
  endpoint.close()
  await once(child, 'exit')
})

linux('an event loop that busy-polls after delivering is not rung either', async (t) => {
  // Each side's handler replies and asks for the next message from inside the delivery;
  // the driver then busy-polls, so the loop is not waiting and must not say it is. Spinning
  // needs two CPUs (the peer cannot run while this one spins on the same CPU), so the
  // child and this process are given one each.
  const cpus = readAffinity()
  if (cpus === undefined || cpus.length < 2) return t.pass('needs two CPUs')
  pin(process.pid, cpus[0])
  const { child, endpoint } = spawnWithEndpoint('taskset', ['-c', String(cpus[1]), process.execPath, fixture('ring-child.cjs'), 'ring'], {
    stdio: ['ignore', 'inherit', 'inherit'],
    ring: true,
  })
  try {
    const rounds = 2000
    for (let i = 0; i < rounds; i++) {
      await endpoint.send(`n${i}`)
      t.is((await endpoint.recv()).payload.toString(), `n${i}`)
    }
    const stats = endpoint.stats()
    t.true(stats.ringMessagesOut >= rounds, JSON.stringify(stats))
    // Before the fix every message rang (2 000); an unlucky preemption may ring a few.
    t.true(stats.ringWakesOut < rounds / 10, `${stats.ringWakesOut} WAKE records for ${rounds} messages`)
  } finally {
    pin(process.pid, cpus.join(','))
    endpoint.close()
  }
  await once(child, 'exit')
})

linux('the event loop and the blocking calls both run over the ring', async (t) => {
  for (const busyPollUs of [0, 50]) {
    const [a, b] = Endpoint.pair({ ring: true, busyPollUs })
    await pingPong(a, b, 300)
    for (let i = 0; i < 100; i++) {
      a.sendSync(Buffer.from([i]))
      const m = b.recvSync({ timeoutMs: 5000 })
      t.is(m.payload[0], i)
    }
    t.true(a.stats().ringMessagesOut > 350, JSON.stringify(a.stats()))
    // A message with a new region goes over the socket, in order with the ring's.
    const region = Region.create(4096)
    region.write(0, Buffer.from('via the socket'))
    await a.send('first')
    await a.send('second', { regions: [region] })
    await a.send('third')
    const got = [await b.recv(), await b.recv(), await b.recv()]
    t.deepEqual(
      got.map((m) => m.payload.toString()),
      ['first', 'second', 'third'],
    )
    t.is(got[1].regions[0].read(0, 14).toString(), 'via the socket')
    a.close()
    b.close()
  }
})

linux('a received payload is a copy the ring cannot change', async (t) => {
  const [a, b] = Endpoint.pair({ ring: true })
  await a.send('original')
  const m = await b.recv()
  // Enough traffic to wrap the 64 KiB ring many times over the entry m came from.
  for (let i = 0; i < 5000; i++) {
    await a.send('overwrite the ring entries')
    await b.recv()
  }
  t.is(m.payload.toString(), 'original')
  t.false(m.payload.buffer instanceof SharedArrayBuffer)
  a.close()
  b.close()
})

linux('a peer that dies is noticed while this side waits on the ring', async (t) => {
  for (const mode of ['loop', 'sync']) {
    // The child kills itself 100 ms after its echo: recvSync blocks this thread, so no
    // timer of ours could.
    const { child, endpoint } = spawnWithEndpoint(process.execPath, [fixture('ring-child.cjs'), 'ring', 'die'], {
      stdio: ['ignore', 'inherit', 'inherit'],
      ring: true,
    })
    await endpoint.send('hello')
    t.is((await endpoint.recv()).payload.toString(), 'hello')
    if (mode === 'loop') {
      await t.throwsAsync(endpoint.recv(), { code: 'ERR_SHMLINK_PEER_CLOSED' })
    } else {
      t.throws(() => endpoint.recvSync({ timeoutMs: 10_000 }), { code: 'ERR_SHMLINK_PEER_CLOSED' })
    }
    await once(child, 'exit')
    endpoint.close()
  }
})

linux('both wake-up backends drive the ring (libuv poll and the watching thread)', (t) => {
  const script = `
    const { Endpoint, wakeupBackend } = require(${JSON.stringify(join(__dirname, '..', 'index.js'))})
    ;(async () => {
      const [a, b] = Endpoint.pair({ ring: true })
      ;(async () => { for await (const m of b) await b.send(m.payload) })()
      for (let i = 0; i < 200; i++) {
        await a.send(String(i))
        if ((await a.recv()).payload.toString() !== String(i)) process.exit(2)
      }
      if (a.stats().ringMessagesOut < 190) process.exit(3)
      console.log(wakeupBackend())
      a.close()
      b.close()
    })()`
  for (const backend of ['uv', 'thread']) {
    const run = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, SHMLINK_WAKEUP: backend }, encoding: 'utf8', timeout: 60_000 })
    t.is(run.status, 0, `${backend}: ${run.stderr}`)
    t.is(run.stdout.trim(), backend)
  }
})
