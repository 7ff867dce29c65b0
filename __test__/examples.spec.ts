// The examples run as a user would run them.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { runNode } from './helpers'

const ROOT = join(__dirname, '..')

test('fan-out to two TypeScript children started through tsx', async (t) => {
  const result = await runNode(['--import', 'tsx', join(ROOT, 'examples', 'fanout', 'parent.ts')])
  t.is(result.code, 0, result.stderr)
  t.regex(result.stdout, /8 jobs over 2 TypeScript children, every sum right/)
})

test("README's example runs as written, and README shows it as it is in examples/readme", async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  for (const file of ['parent.js', 'child.js']) {
    const source = readFileSync(join(ROOT, 'examples', 'readme', file), 'utf8')
    t.true(readme.includes(source.trim()), `README.md shows examples/readme/${file} verbatim`)
  }
  const result = await runNode([join(ROOT, 'examples', 'readme', 'parent.js')])
  t.is(result.code, 0, result.stderr)
  t.is(result.stdout.trim(), 'done true 43')
})
