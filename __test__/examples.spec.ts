// The examples run as a user would run them.
import test from 'ava'
import { join } from 'node:path'

import { runNode } from './helpers'

const ROOT = join(__dirname, '..')

test('fan-out to two TypeScript children started through tsx', async (t) => {
  const result = await runNode(['--import', 'tsx', join(ROOT, 'examples', 'fanout', 'parent.ts')])
  t.is(result.code, 0, result.stderr)
  t.regex(result.stdout, /8 jobs over 2 TypeScript children, every sum right/)
})
