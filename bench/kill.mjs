#!/usr/bin/env node
// The long kill -9 run: `node bench/kill.mjs --kills 300` (npm run soak runs it after the
// message soak). Each kill is one run of __test__/fixtures/kill-run.cjs, the same code
// __test__/kill.spec.ts runs once per case: the scenarios and directions take turns, and
// each kill gets its own seed, which picks the random point.
//
// Options:
//   --kills N        how many (default 300)
//   --seed N         the first kill's seed; kill i has seed N + i (default: random, printed)
//   --jobs N         kills at a time (default 2)
//   --out FILE       results (default bench/results/kill.json)
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { machineInfo } from './lib/machine.mjs'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(BENCH, '..')
const require = createRequire(import.meta.url)
const { SCENARIOS, DIRECTIONS, runKill } = require('../__test__/fixtures/kill-run.cjs')

const argv = process.argv.slice(2)
const option = (name, fallback) => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : fallback
}
const kills = Number(option('kills', 300))
const seed = Number(option('seed', Math.floor(Math.random() * 2 ** 30)))
const jobs = Number(option('jobs', 2))
const outFile = path.resolve(option('out', path.join(BENCH, 'results', 'kill.json')))

if (process.platform !== 'linux') {
  process.stderr.write('kill: Linux only\n')
  process.exit(1)
}

const cases = SCENARIOS.flatMap((scenario) => DIRECTIONS.map((direction) => ({ scenario, direction })))
const say = (message) => process.stdout.write(`${message}\n`)
say(`kill -9 run: ${kills} kills, ${cases.length} cases in turn, seeds ${seed}..${seed + kills - 1}, ${jobs} at a time`)

const started = performance.now()
const outcomes = []
let next = 0
let done = 0
async function worker() {
  while (next < kills) {
    const i = next++
    const outcome = await runKill({ ...cases[i % cases.length], seed: seed + i })
    outcomes[i] = outcome
    done++
    if (outcome.problems.length > 0) say(`FAIL kill ${i} ${outcome.scenario} ${outcome.direction} seed ${outcome.seed}: ${outcome.problems.join('; ')}`)
    else if (done % 25 === 0) say(`  ${done}/${kills}`)
  }
}
await Promise.all(Array.from({ length: jobs }, worker))
const elapsedS = Math.round((performance.now() - started) / 100) / 10

const median = (values) => {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}
const sum = (values) => values.reduce((a, b) => a + b, 0)

const byCase = cases.map(({ scenario, direction }) => {
  const mine = outcomes.filter((o) => o.scenario === scenario && o.direction === direction)
  const reports = mine.map((o) => o.report).filter((r) => r !== undefined)
  const closeMs = reports.map((r) => r.closeAfterKillMs).filter((ms) => ms !== undefined)
  const rejected = reports.map((r) => Object.entries(r.promiseOutcomes ?? {}).filter(([k]) => k !== 'resolved').reduce((a, [, n]) => a + n, 0))
  return {
    scenario,
    direction,
    kills: mine.length,
    passed: mine.filter((o) => o.problems.length === 0).length,
    killedBySigkill: mine.filter((o) => o.victimExit?.signal === 'SIGKILL').length,
    closeEvents: reports.filter((r) => r.closeCode === 'ERR_SHMLINK_PEER_CLOSED').length,
    messagesVerified: sum(reports.map((r) => r.counts.messagesIn)),
    messagesSent: sum(reports.map((r) => r.counts.messagesOut)),
    promisesRejected: sum(rejected),
    regionsReceived: sum(reports.map((r) => r.counts.regionsReceived)),
    regionsReclaimed: sum(reports.map((r) => r.counts.regionsReclaimed)),
    regionsCameBack: sum(reports.map((r) => r.counts.regionsCameBack)),
    socketsReleased: reports.filter((r) => r.socketReleased).length,
    closeAfterKillMs: closeMs.length === 0 ? undefined : { n: closeMs.length, median: median(closeMs), max: Math.max(...closeMs) },
    runMs: { median: median(mine.map((o) => o.elapsedMs)), max: Math.max(...mine.map((o) => o.elapsedMs)) },
  }
})
const problems = outcomes.flatMap((o, i) => o.problems.map((p) => `kill ${i} ${o.scenario} ${o.direction} seed ${o.seed}: ${p}`))
const totals = {
  kills: outcomes.length,
  passed: outcomes.filter((o) => o.problems.length === 0).length,
  killedBySigkill: sum(byCase.map((c) => c.killedBySigkill)),
  closeEvents: sum(byCase.map((c) => c.closeEvents)),
  messagesVerified: sum(byCase.map((c) => c.messagesVerified)),
  promisesRejected: sum(byCase.map((c) => c.promisesRejected)),
  regionsReclaimed: sum(byCase.map((c) => c.regionsReclaimed)),
  socketsReleased: sum(byCase.map((c) => c.socketsReleased)),
}

const rows = [
  ['scenario', 'direction', 'kills', 'passed', 'SIGKILL', "'close'", 'msgs verified', 'rejected', 'reclaimed', 'close ms med/max'],
  ...byCase.map((c) => [
    c.scenario,
    c.direction,
    c.kills,
    c.passed,
    c.killedBySigkill,
    c.closeEvents,
    c.messagesVerified,
    c.promisesRejected,
    c.regionsReclaimed,
    c.closeAfterKillMs === undefined ? '-' : `${c.closeAfterKillMs.median}/${c.closeAfterKillMs.max}`,
  ]),
  ['total', '', totals.kills, totals.passed, totals.killedBySigkill, totals.closeEvents, totals.messagesVerified, totals.promisesRejected, totals.regionsReclaimed, ''],
]
const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)))
say('')
for (const row of rows) say(row.map((cell, c) => (c < 2 ? String(cell).padEnd(widths[c]) : String(cell).padStart(widths[c]))).join('  '))
say(`\n${totals.kills} kills in ${elapsedS} s; ${problems.length === 0 ? 'no problems' : `${problems.length} problems`}`)

const results = {
  date: new Date().toISOString(),
  command: `node bench/kill.mjs --kills ${kills} --seed ${seed} --jobs ${jobs}`,
  machine: machineInfo(ROOT),
  seed,
  elapsedS,
  totals,
  cases: byCase,
  problems,
  outcomes: outcomes.map((o) => ({ scenario: o.scenario, direction: o.direction, seed: o.seed, elapsedMs: o.elapsedMs, plan: o.report?.plan, counts: o.report?.counts, closeAfterKillMs: o.report?.closeAfterKillMs, problems: o.problems })),
}
fs.mkdirSync(path.dirname(outFile), { recursive: true })
fs.writeFileSync(outFile, `${JSON.stringify(results, null, 2)}\n`)
say(`results in ${path.relative(process.cwd(), outFile)}`)
process.exit(problems.length === 0 ? 0 : 1)
