import test from 'ava'

import { fixture, runNode } from './helpers'

test('worker threads create, use and are terminated with endpoints open; the process exits cleanly', async (t) => {
  const result = await runNode([fixture('workers.cjs')])
  t.is(result.signal, null, result.stderr)
  t.is(result.code, 0, result.stderr)
  t.is(result.stdout.trim(), 'verified 4, terminated 4')
  t.notRegex(result.stderr, /Assertion|abort|open handles/i)
})
