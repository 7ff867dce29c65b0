// The runtime matrix: the runtime-neutral suite (runtimes/suite.mjs) under Node 20 (this
// machine's), 22, 24 and 26, Bun and Deno, each installed from npm by scripts/runtimes.sh
// (the pretest step), and cross-runtime pairs with regions both ways. Every run must pass
// every check and exit 0 with endpoints and regions still open.
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'

import { runCommand } from './helpers'

const ROOT = join(__dirname, '..')
const SUITE = join(__dirname, 'runtimes', 'suite.mjs')

const installed = Object.fromEntries(
  execFileSync('bash', [join(ROOT, 'scripts', 'runtimes.sh'), '--list'], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split('=') as [string, string]),
)

/** How to start each runtime on a script. */
const RUNTIMES: Record<string, string[]> = {
  node20: [process.execPath],
  node22: [installed.node22],
  node24: [installed.node24],
  node26: [installed.node26],
  bun: [installed.bun],
  deno: [installed.deno, 'run', '-A'],
}

interface SuiteResult {
  backend: string
  results: Record<string, string>
}

async function suite(parent: string[], child: string[], env: NodeJS.ProcessEnv = {}): Promise<SuiteResult & { failures: string[] }> {
  const outcome = await runCommand([...parent, SUITE, ...child], env)
  if (outcome.code !== 0 || outcome.signal !== null) {
    throw new Error(`exit ${outcome.code} ${outcome.signal ?? ''}\n${outcome.stdout}\n${outcome.stderr}`)
  }
  const parsed = JSON.parse(outcome.stdout.trim().split('\n').pop()!) as SuiteResult
  return { ...parsed, failures: Object.entries(parsed.results).filter(([, r]) => r !== 'ok').map(([name, r]) => `${name}: ${r}`) }
}

for (const [name, command] of Object.entries(RUNTIMES)) {
  test(`${name}: the suite passes and the runtime exits cleanly`, async (t) => {
    t.truthy(command[0], `${name} is not installed: run bash scripts/runtimes.sh`)
    const result = await suite(command, command)
    t.deepEqual(result.failures, [])
    t.is(result.backend, name === 'bun' || name === 'deno' ? 'thread' : 'uv')
  })
}

test('node20 with the thread backend: the same suite', async (t) => {
  const result = await suite(RUNTIMES.node20, RUNTIMES.node20, { SHMLINK_WAKEUP: 'thread' })
  t.deepEqual(result.failures, [])
  t.is(result.backend, 'thread')
})

for (const [parent, child] of [
  ['bun', 'node20'],
  ['node20', 'bun'],
  ['deno', 'node20'],
  ['node20', 'deno'],
]) {
  test(`${parent} parent, ${child} child: regions both ways`, async (t) => {
    const result = await suite(RUNTIMES[parent], RUNTIMES[child])
    t.deepEqual(result.failures, [])
  })
}
