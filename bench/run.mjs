#!/usr/bin/env node
// shmlink benchmarks: `npm run bench` (full) or `npm run bench -- --quick`.
//
// Builds the C floors and baselines (bench/c/*.c, with the system cc, into bench/build/),
// then runs bench/driver.mjs once per placement:
//   pinned    under `taskset -c 0`: both ends on one CPU (every process the driver starts
//             inherits the affinity);
//   unpinned  as it is: the scheduler chooses;
//   split     under `taskset -c 0`, every receiving process on CPU 1 (lib/transports.mjs,
//             setPlacement). A quick run measures only SPLIT_QUICK there.
// Merges them into bench/results/latest.json with the headline ratios and the baselines
// summary, and after a full run (or with --docs) rewrites docs/benchmarks.svg and the
// generated parts of docs/BENCHMARKS.md and README.md (lib/docs.mjs).
//
// Options:
//   --quick              fewer rounds, no 256 MiB; same JSON keys
//   --placement P        pinned | unpinned | split, comma-separated, or all (default all;
//                        "both" means pinned,unpinned)
//   --docs / --no-docs   write the SVG and the generated docs (default: only after a full run)
//   --build-peers        build the Rust, Go and C echo peers first (otherwise peers that
//                        are not built are skipped and recorded as skipped)
//   --out FILE           where to write the JSON (default bench/results/latest.json)
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const BENCH = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(BENCH, '..')
const BUILD = path.join(BENCH, 'build')
const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const option = (name, fallback) => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 && at + 1 < argv.length ? argv[at + 1] : fallback
}
const mode = flag('quick') ? 'quick' : 'full'
const placementOption = option('placement', 'all')
const writeDocs = flag('docs') || (mode === 'full' && !flag('no-docs'))
const outFile = path.resolve(option('out', path.join(BENCH, 'results', 'latest.json')))
const DRIVER_TIMEOUT_MS = (mode === 'quick' ? 5 : 45) * 60_000
const C_PROGRAMS = ['pingpong', 'region', 'first', 'pool', 'spin']
/**
 * What a quick run measures in the split placement (a full run measures everything): the
 * C floors and baselines and the spin floors, the rows later split comparisons divide by,
 * for about 10 s more per quick run.
 */
const SPLIT_QUICK = [
  'c-seqpacket-inline',
  'c-seqpacket-shared',
  'c-first',
  'c-pool-stream',
  'shmlink-pool-stream',
  'shmlink-pool-stream-transfer',
  'c-spin',
  'js-spin',
  'shmlink-ring-inline',
  'shmlink-ring-inline-sync',
  'shmlink-ring-inline-sync-into',
]
/** Placements that run the driver under taskset -c 0. */
const ON_CPU0 = new Set(['pinned', 'split'])

function say(message) {
  process.stdout.write(`${message}\n`)
}

function fatal(message) {
  process.stderr.write(`bench: ${message}\n`)
  process.exit(1)
}

// -- preconditions ---------------------------------------------------------------------

if (process.platform !== 'linux') fatal('the benchmarks need Linux (memfd, SOCK_SEQPACKET, taskset)')
try {
  const require = (await import('node:module')).createRequire(import.meta.url)
  require('../index.js')
} catch (error) {
  fatal(`cannot load shmlink (${error.message.split('\n')[0]}); run \`npm run build\` first`)
}
try {
  await import('tinybench')
} catch {
  fatal('tinybench is missing: it is a devDependency (npm install)')
}

const started = Date.now()

function buildC() {
  fs.mkdirSync(BUILD, { recursive: true })
  const cc = process.env.CC ?? 'cc'
  for (const name of C_PROGRAMS) {
    const source = path.join(BENCH, 'c', `${name}.c`)
    const target = path.join(BUILD, name)
    const args = ['-O2', '-Wall', '-Wextra', '-o', target, source]
    const result = spawnSync(cc, args, { stdio: 'inherit' })
    if (result.status !== 0) fatal(`could not build ${path.relative(ROOT, source)} with ${cc} ${args.join(' ')}`)
  }
  say(`built ${C_PROGRAMS.map((n) => `bench/build/${n}`).join(', ')} with ${cc} -O2`)
}

function buildPeers() {
  const steps = [
    ['rust', 'cargo', ['build', '-p', 'shmlink-peer', '--release'], ROOT],
    ['go', 'go', ['build', '-o', 'build/shmlink-peer', './cmd/shmlink-peer'], path.join(ROOT, 'peers', 'go')],
    ['c', 'make', ['-C', path.join(ROOT, 'peers', 'c')], ROOT],
  ]
  for (const [lang, command, args, cwd] of steps) {
    const result = spawnSync(command, args, { cwd, stdio: 'inherit' })
    say(`${lang} peer: ${result.status === 0 ? 'built' : 'did not build (it will be skipped)'}`)
  }
}

function tasksetWorks(cpu = '0') {
  return spawnSync('taskset', ['-c', cpu, 'true']).status === 0
}

// -- the drivers -----------------------------------------------------------------------

const live = new Set()
const scratch = new Set()
function killDrivers() {
  for (const child of live) {
    try {
      process.kill(-child.pid, 'SIGKILL') // the driver's own process group: it and its children
    } catch {}
  }
  for (const dir of scratch) fs.rmSync(dir, { recursive: true, force: true })
}
process.on('exit', killDrivers)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    killDrivers()
    process.exit(130)
  })
}

async function runDriver(placement) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmlink-bench-'))
  scratch.add(dir)
  const tmp = path.join(dir, 'results.json')
  const nodeArgs = [
    '--expose-gc',
    path.join(BENCH, 'driver.mjs'),
    '--plan',
    mode,
    '--placement',
    placement,
    '--out',
    tmp,
    '--socket-dir',
    dir,
  ]
  if (mode === 'quick') nodeArgs.push('--skip-first-strategies')
  if (mode === 'quick' && placement === 'split') {
    nodeArgs.push('--only', SPLIT_QUICK.join(','), '--skip-region', '--skip-cross')
  }
  const [command, args] = ON_CPU0.has(placement)
    ? ['taskset', ['-c', '0', process.execPath, ...nodeArgs]]
    : [process.execPath, nodeArgs]
  say(`\n== ${placement}: ${ON_CPU0.has(placement) ? 'taskset -c 0 ' : ''}node ${nodeArgs.slice(0, 2).join(' ')} …`)
  const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit'], detached: true, cwd: ROOT })
  live.add(child)
  const timer = setTimeout(() => {
    process.stderr.write(`bench: the ${placement} driver ran past ${DRIVER_TIMEOUT_MS / 60000} min; killing it\n`)
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {}
  }, DRIVER_TIMEOUT_MS)
  const code = await new Promise((resolve) => child.once('exit', (c, s) => resolve(c ?? s)))
  clearTimeout(timer)
  try {
    process.kill(-child.pid, 'SIGKILL') // anything it left behind
  } catch {}
  live.delete(child)
  try {
    const results = JSON.parse(fs.readFileSync(tmp, 'utf8'))
    fs.rmSync(dir, { recursive: true, force: true })
    scratch.delete(dir)
    if (code !== 0) results.errors.push({ transport: 'driver', error: `driver exited with ${code}` })
    return results
  } catch {
    fs.rmSync(dir, { recursive: true, force: true })
    scratch.delete(dir)
    return { placement, errors: [{ transport: 'driver', error: `driver exited with ${code} and wrote no results` }] }
  }
}

// -- main ------------------------------------------------------------------------------

buildC()
if (flag('build-peers')) buildPeers()

const { machineInfo } = await import('./lib/machine.mjs')
const { baselinesSummary, computeRatios, judgeTargets, ringRatios, RING_TARGETS } = await import('./lib/ratios.mjs')
const { ratiosTable, latencyTable } = await import('./lib/report.mjs')
const { writeDocsFrom } = await import('./lib/docs.mjs')

const placements =
  placementOption === 'all'
    ? ['pinned', 'unpinned', 'split']
    : placementOption === 'both'
      ? ['pinned', 'unpinned']
      : placementOption.split(',').map((p) => p.trim())
for (const p of placements) {
  if (!['pinned', 'unpinned', 'split'].includes(p)) fatal(`unknown placement ${p} (pinned, unpinned, split, all, both)`)
}
const notes = []
const results = {
  schema: 1,
  mode,
  command: `npm run bench${argv.length > 0 ? ` -- ${argv.join(' ')}` : ''}`,
  started: new Date(started).toISOString(),
  machine: machineInfo(ROOT),
  method: {
    round:
      'sender starts the clock, sends size bytes, the receiver reads one byte per 4 KiB page of what it received and sends a 16-byte ack; the clock stops when the ack is in the sender’s hands',
    verification:
      'per size and transport, one untimed round in which the receiver checksums every byte (Fletcher-style, bench/lib/data.mjs) against the sender’s value; every timed round’s ack carries the page sum, checked after the clock stops',
    interleaving:
      'per size, one block per transport in turn, each pass in a fixed pseudo-random order (seeded, the same every run); one warm-up block per transport and the first round of every block are discarded; between blocks (untimed) the receiver and the driver collect garbage, then everything idles 20 ms so that concurrent sweeping is over',
    statistics: 'median, p99 (linear interpolation), min, max, mean over all kept rounds, in nanoseconds',
    pinned: 'taskset -c 0 on the driver, which every child inherits',
    split:
      'taskset -c 0 on the driver; every receiving process on CPU 1 (Node children and peers through taskset -c 1, the C programs’ forked children pin themselves with sched_setaffinity, the worker thread is moved with taskset -p); in-process rows (memcpy, region creation) run on CPU 0. A quick run measures only the rows in split_quick_rows',
    split_quick_rows: SPLIT_QUICK,
    load: 'other work on the machine during the run shows in machine.loadavg_before / loadavg_after',
    in_process_timing: 'tinybench (memcpy, worker_threads, region creation); the two-process rounds use process.hrtime.bigint()',
  },
  placements: {},
  errors: [],
}
for (const placement of placements) {
  if (ON_CPU0.has(placement) && !tasksetWorks()) {
    notes.push(`${placement} placement skipped: taskset (util-linux) is not available or cannot pin to CPU 0`)
    results.placements[placement] = { skipped: notes.at(-1) }
    continue
  }
  if (placement === 'split' && (os.cpus().length < 2 || !tasksetWorks('1'))) {
    notes.push('split placement skipped: it needs two CPUs and taskset -c 1')
    results.placements.split = { skipped: notes.at(-1) }
    continue
  }
  const r = await runDriver(placement)
  results.placements[placement] = r
  for (const e of r.errors) results.errors.push({ placement, ...e })
}
results.notes = notes

const primary = ['pinned', 'unpinned', 'split'].find((p) => results.placements[p]?.transports) ?? 'pinned'
const { ratios, extra } = computeRatios(results.placements[primary])
results.ratios_placement = primary
results.ratios = ratios
results.ratios_extra = extra
if (results.placements.unpinned?.transports && primary !== 'unpinned') {
  const u = computeRatios(results.placements.unpinned)
  results.ratios_unpinned = u.ratios
  results.ratios_extra_unpinned = u.extra
}
if (results.placements.split?.transports) {
  const s = computeRatios(results.placements.split)
  results.ratios_split = s.ratios
  results.ratios_extra_split = s.extra
}
results.baselines = baselinesSummary(results.placements)
results.targets = judgeTargets(ratios)
// The ring ratios compare placements with each other (docs/BENCHMARKS.md, issue 14).
results.ratios_ring = ringRatios(results.placements)
results.targets_ring = judgeTargets(results.ratios_ring, RING_TARGETS)
results.cross_language_skipped = Object.fromEntries(
  Object.entries(results.placements[primary]?.cross_language?.skipped ?? {}),
)
results.machine.loadavg_after = os.loadavg()
results.finished = new Date().toISOString()
results.wall_seconds = (Date.now() - started) / 1000

fs.mkdirSync(path.dirname(outFile), { recursive: true })
fs.writeFileSync(`${outFile}.tmp`, `${JSON.stringify(results, null, 1)}\n`)
fs.renameSync(`${outFile}.tmp`, outFile)

say(`\n${latencyTable(results, primary).replace(/<br><sub>/g, ' ').replace(/<\/sub>/g, '')}\n`)
say(ratiosTable(results))
say(`\nwrote ${path.relative(process.cwd(), outFile)} (${mode}, ${results.wall_seconds.toFixed(0)} s)`)

if (writeDocs) {
  writeDocsFrom(results, primary, say)
}
if (results.errors.length > 0) {
  process.stderr.write(`bench: ${results.errors.length} error(s) during the run (recorded in the JSON)\n`)
  process.exitCode = 1
}
