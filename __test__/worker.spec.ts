import test from 'ava'

import { fixture, runNode } from './helpers'

test('worker threads create, use and are terminated with endpoints open; the process exits cleanly', async (t) => {
  const result = await runNode([fixture('workers.cjs')])
  t.is(result.signal, null, result.stderr)
  t.is(result.code, 0, result.stderr)
  t.is(result.stdout.trim(), 'verified 4, terminated 4')
  t.notRegex(result.stderr, /Assertion|abort|open handles/i)
})

test('worker.terminate() ends a worker blocked in recvSync() without a timeout, leaking nothing', async (t) => {
  const result = await runNode([fixture('terminate-blocked.cjs')])
  t.is(result.code, 0, result.stderr)
  const { times, fdsBefore, fdsAfter } = JSON.parse(result.stdout) as { times: number[]; fdsBefore: number; fdsAfter: number }
  t.is(times.length, 5, 'every terminate() settled')
  t.log(`terminate() took ${times.map((ms) => ms.toFixed(1)).join(', ')} ms`)
  t.is(fdsAfter, fdsBefore)
})
