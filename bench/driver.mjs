// Measures every transport in one placement and writes the raw results as JSON.
// bench/run.mjs starts it (under `taskset -c 0` for the pinned placement; every process it
// starts inherits that). Not meant to be run by hand, but it can be:
//
//   node --expose-gc bench/driver.mjs --plan quick|full --placement pinned|unpinned|split --out FILE
//        [--only id,id] [--sizes bytes,bytes] [--skip-cross] [--skip-region]
//        [--skip-first-strategies] [--socket-dir DIR]
//
// Placements: run.mjs starts the driver under `taskset -c 0` for "pinned" (every process
// inherits CPU 0) and for "split" (the receiving processes are moved to CPU 1: see
// setPlacement() in lib/transports.mjs); "unpinned" runs it as it is.
//
// Interleaving: for each size, every transport runs one block in turn (A B C … then
// another order of A B C …), each pass in a fixed pseudo-random order (see shuffled()),
// so that slow drift of the machine, and whatever one transport leaves behind for the
// next, lands on all of them alike. Before the passes: per-size setup, one checksummed
// round per transport, and one warm-up block per transport, all discarded; the first
// round of every block is discarded too. Between blocks the receiver and this process
// collect garbage and then idle for 20 ms (see settle()), so that one transport's garbage
// is not collected on another's time.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { EchoPeer, LANGUAGES } from './lib/cross.mjs'
import { expected, MiB, patternBuffer, sizeLabel } from './lib/data.mjs'
import { plan as getPlan } from './lib/plan.mjs'
import { measureRingIdle } from './lib/ring-idle.mjs'
import { summarize } from './lib/stats.mjs'
import {
  BENCH_DIR,
  cArgs,
  CFirstTransport,
  ChildProcessTransport,
  children,
  CPingPongTransport,
  CPoolStreamTransport,
  ShmlinkPoolStreamTransport,
  CProcess,
  CRegionCreate,
  CSpinTransport,
  FIRST_DEFAULT,
  FIRST_PRODUCER,
  FIRST_RECEIVER,
  JsPoolTouchTransport,
  JsSpinTransport,
  MemcpyTransport,
  NetTransport,
  NodeRegionCreate,
  NodeRegionCreateBare,
  setPlacement,
  ShmlinkConn,
  ShmlinkTransport,
  WorkerTransport,
} from './lib/transports.mjs'

const args = parseArgs(process.argv.slice(2))
const plan = getPlan(args.plan ?? 'quick')
const placement = args.placement ?? 'unpinned'
if (!['pinned', 'unpinned', 'split'].includes(placement)) throw new Error(`unknown placement ${placement}`)
setPlacement(placement)
const BLOCK_TIMEOUT_MS = 180_000
const BUILD = path.join(BENCH_DIR, 'build')

function parseArgs(argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '')
    if (['skip-cross', 'skip-region', 'skip-first-strategies'].includes(key)) out[key] = true
    else out[key] = argv[++i]
  }
  return out
}

function log(message) {
  process.stderr.write(`[${placement}] ${message}\n`)
}

const gc = globalThis.gc ?? (() => {})
const socketDir = args['socket-dir'] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'shmlink-bench-'))

function cleanup() {
  for (const child of children) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
  // Sockets only: run.mjs owns the directory (the results file is in it) and removes it.
  try {
    for (const name of fs.readdirSync(socketDir, { withFileTypes: true })) {
      if (name.isSocket()) fs.rmSync(path.join(socketDir, name.name), { force: true })
    }
  } catch {}
  if (args['socket-dir'] === undefined) fs.rmSync(socketDir, { recursive: true, force: true })
}
process.on('exit', cleanup)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    cleanup()
    process.exit(130)
  })
}

/** Runs `fn` with a watchdog that aborts `target` if it takes longer than `ms`. */
async function guarded(target, what, fn, ms = BLOCK_TIMEOUT_MS) {
  let timer
  const error = new Error(`${what}: timed out after ${ms} ms`)
  try {
    timer = setTimeout(() => target.abort(error), ms)
    return await fn()
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Between blocks, untimed: the receiver and this process collect their garbage, then
 * everything idles for SETTLE_MS so that V8's concurrent sweeping (background threads, on
 * the same CPU when pinned) is over before the next block starts. Without the pause the
 * rounds after a collection measured up to twice their steady time.
 */
const SETTLE_MS = Number(process.env.BENCH_SETTLE_MS ?? 20) // the variable is for experiments
async function settle(t) {
  await t?.barrier()
  gc()
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS))
}

/**
 * The order of pass `pass`: a permutation drawn from a generator seeded with (`salt`, pass),
 * so every run uses the same orders while each transport follows every other one about
 * equally often. (Rotating one fixed order would keep the same neighbours in every pass,
 * and some transports leave the machine slower for the next one: see docs/BENCHMARKS.md.)
 */
function shuffled(list, salt, pass) {
  let state = (Math.imul(salt | 0, 0x9e3779b1) ^ Math.imul(pass + 1, 0x85ebca6b)) >>> 0 || 1
  const random = () => {
    state ^= state << 13
    state >>>= 0
    state ^= state >>> 17
    state ^= state << 5
    state >>>= 0
    return state / 2 ** 32
  }
  const out = [...list]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

function append(store, samples) {
  for (const x of samples) store.push(x)
}

/**
 * The spin baselines' waiting, per placement. On one CPU (pinned) the C spin yields after
 * one unsuccessful look (the peer cannot make progress while we spin; a few hundred
 * `pause` spins first cost about 8 µs per wait here) and the JavaScript one, which cannot
 * yield (Node has no sched_yield), is not run. Across CPUs (split, and unpinned, where the
 * scheduler usually spreads the two busy processes) the C spin yields after 256 spins and
 * the JavaScript one naps 50 µs after 65 536 loads in a row (unpinned only, in case both
 * land on one CPU).
 */
const SPIN = {
  pinned: {
    cLimit: 1,
    js: {
      skip: 'both processes on one CPU: a JavaScript busy-wait cannot yield (no sched_yield in Node), so each side would burn its whole time slice before the other runs',
    },
  },
  split: { cLimit: 256, js: { napAfter: 0 } },
  unpinned: { cLimit: 256, js: { napAfter: 1 << 16 } },
}[placement]

async function measureTransports(results) {
  const cPingPong = new CProcess(path.join(BUILD, 'pingpong'), cArgs())
  const loop = new ShmlinkConn('loop')
  const sync = new ShmlinkConn('sync')
  const ringLoop = new ShmlinkConn('loop', true)
  const ringSync = new ShmlinkConn('sync', true)
  const syncInto = new ShmlinkConn('sync', false, true)
  const ringSyncInto = new ShmlinkConn('sync', true, true)
  let transports = [
    new ShmlinkTransport(loop, 'inline'),
    new ShmlinkTransport(sync, 'inline'),
    new ShmlinkTransport(ringLoop, 'inline'),
    new ShmlinkTransport(ringSync, 'inline'),
    new ShmlinkTransport(syncInto, 'inline'),
    new ShmlinkTransport(ringSyncInto, 'inline'),
    new ShmlinkTransport(loop, 'first'),
    new ShmlinkTransport(loop, 'known'),
    new ShmlinkTransport(sync, 'known'),
    new ShmlinkTransport(loop, 'copy'),
    new ChildProcessTransport('json'),
    new ChildProcessTransport('advanced'),
    new NetTransport(path.join(socketDir, 'net.sock')),
    new WorkerTransport(),
    new CPingPongTransport(cPingPong, 'inline'),
    new CPingPongTransport(cPingPong, 'shared'),
    new MemcpyTransport(),
    new CFirstTransport(new CProcess(path.join(BUILD, 'first'), cArgs()), FIRST_DEFAULT),
    new CPoolStreamTransport(new CProcess(path.join(BUILD, 'pool'), cArgs())),
    // Transferred frames take milliseconds each (a new view per frame): a shorter warm-up.
    new ShmlinkPoolStreamTransport('transfer', { warmFrames: 500 }),
    new ShmlinkPoolStreamTransport('shared'),
    new JsPoolTouchTransport(),
    new CSpinTransport(new CProcess(path.join(BUILD, 'spin'), cArgs()), SPIN.cLimit),
    new JsSpinTransport(SPIN.js),
  ]
  if (args.only) {
    const only = new Set(args.only.split(','))
    transports = transports.filter((t) => only.has(t.id))
  }
  const table = {}
  for (const t of transports) table[t.id] = { label: t.label, family: t.family, ...(t.meta ?? {}), sizes: {} }
  results.transports = table
  const failed = new Map()
  const fail = (t, error) => {
    log(`FAILED ${t.id}: ${error.message}`)
    failed.set(t.id, error.message)
    results.errors.push({ transport: t.id, error: error.message })
    try {
      t.abort(error)
    } catch {}
  }

  for (const t of transports) {
    try {
      await guarded(t, `${t.id} start`, () => t.start(), 30_000)
    } catch (error) {
      fail(t, error)
    }
  }
  results.affinity = affinity()

  const sizes = args.sizes ? args.sizes.split(',').map(Number) : plan.sizes
  for (const size of sizes) {
    const { warm, passes, block } = plan.rounds(size)
    const data = patternBuffer(size)
    const want = expected(data)
    const active = transports.filter((t) => t.supports(size) && !failed.has(t.id))
    const samples = new Map(active.map((t) => [t.id, []]))
    const spent = new Map(active.map((t) => [t.id, 0])) // wall time per transport, settling included
    const warmMedians = new Map()
    const timed = async (t, fn) => {
      const t0 = performance.now()
      try {
        return await fn()
      } finally {
        spent.set(t.id, spent.get(t.id) + performance.now() - t0)
      }
    }
    const started = Date.now()
    for (const t of active) {
      try {
        await timed(t, async () => {
          await guarded(t, `${t.id} ${sizeLabel(size)} prepare`, () => t.prepare(size, data, want))
          const warmed = await guarded(t, `${t.id} ${sizeLabel(size)} warm-up`, () => t.runBlock(warm))
          warmMedians.set(t.id, summarize(warmed).median)
          await settle(t)
        })
      } catch (error) {
        fail(t, error)
      }
    }
    for (let pass = 0; pass < passes; pass++) {
      for (const t of shuffled(active, Math.log2(size), pass)) {
        if (failed.has(t.id)) continue
        try {
          await timed(t, async () => {
            const s = await guarded(t, `${t.id} ${sizeLabel(size)} block`, () => t.runBlock(block))
            append(samples.get(t.id), s)
            await settle(t)
          })
        } catch (error) {
          fail(t, error)
        }
      }
    }
    for (const t of active) {
      if (!failed.has(t.id)) {
        try {
          await guarded(t, `${t.id} finish`, () => t.finishSize(), 30_000)
        } catch (error) {
          fail(t, error)
        }
      }
      const s = samples.get(t.id)
      table[t.id].sizes[size] = failed.has(t.id)
        ? { error: failed.get(t.id) }
        : {
            ...summarize(s),
            blocks: passes,
            block_rounds: block,
            warmup_rounds: warm,
            warmup_median: warmMedians.get(t.id) ?? null,
            seconds: Math.round(spent.get(t.id)) / 1000,
            ...(t.sizeExtras?.() ?? {}),
          }
    }
    gc()
    const medians = active
      .map((t) => `${t.id}=${table[t.id].sizes[size].median ?? 'x'}`)
      .join(' ')
    log(`${sizeLabel(size)} done in ${((Date.now() - started) / 1000).toFixed(1)} s: ${medians}`)
  }
  for (const t of transports) {
    try {
      await t.stop()
    } catch (error) {
      log(`stop ${t.id}: ${error.message}`)
    }
  }
}

/**
 * Where every process and thread of this run may execute: the driver's threads and every
 * descendant process (children, peers, the C programs and their forked children), with
 * their Cpus_allowed_list. Recorded once all transports have started, so the JSON shows
 * that a placement is what it says.
 */
function affinity() {
  const read = (file) => {
    try {
      return fs.readFileSync(file, 'utf8')
    } catch {
      return ''
    }
  }
  const cpus = (status) => /Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1]
  const threads = {}
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const status = read(`/proc/self/task/${tid}/status`)
    const name = /Name:\s*(.*)/.exec(status)?.[1] ?? tid
    const key = `${name}: ${cpus(status)}`
    threads[key] = (threads[key] ?? 0) + 1
  }
  const processes = []
  const walk = (pid, depth) => {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`, { withFileTypes: false })) {
      for (const child of read(`/proc/${pid}/task/${tid}/children`).split(' ').filter(Boolean)) {
        const status = read(`/proc/${child}/status`)
        const cmd = read(`/proc/${child}/cmdline`).split('\0').filter(Boolean).map((a) => path.basename(a))
        processes.push({ pid: Number(child), depth, command: cmd.slice(0, 3).join(' '), cpus_allowed: cpus(status) })
        if (depth < 3) walk(child, depth + 1)
      }
    }
  }
  try {
    walk(process.pid, 1)
  } catch {}
  return { driver_threads: threads, processes }
}

/**
 * The C first-time handoff at 64 MiB with every populate strategy (bench/c/first.c),
 * interleaved like the transports: which way of filling page tables is fastest here.
 */
async function measureFirstStrategies(results) {
  const out = {}
  results.first_strategies = out
  if (args['skip-first-strategies']) {
    out.skipped = 'not run in this mode (quick runs skip it; see plan.mjs)'
    return
  }
  const { size, warm, passes, block } = plan.firstStrategies
  const proc = new CProcess(path.join(BUILD, 'first'), cArgs())
  proc.start()
  out.size = size
  out.combinations = {}
  const combos = FIRST_PRODUCER.flatMap((producer) => FIRST_RECEIVER.map((receiver) => ({ producer, receiver })))
  const key = (c) => `${c.producer}+${c.receiver}`
  const series = new Map(combos.map((c) => [key(c), { handover: [], fill: [], total: [], recv_minflt: [] }]))
  const command = (c, rounds, verify) => `first ${size} ${rounds} ${verify} ${c.producer} ${c.receiver}`
  const failed = new Map()
  try {
    for (const c of combos) {
      try {
        await guarded(proc, 'first strategies', () => proc.run(command(c, 1, 1)))
        if (warm > 0) await guarded(proc, 'first strategies', () => proc.run(command(c, warm, 0)))
      } catch (error) {
        if (proc.dead !== undefined) throw error
        failed.set(key(c), error.message)
      }
    }
    for (let pass = 0; pass < passes; pass++) {
      for (const c of shuffled(combos, 300, pass)) {
        if (failed.has(key(c))) continue
        const { samples, series: extra } = await guarded(proc, 'first strategies', () =>
          proc.runSeries(command(c, block + 1, 0)),
        )
        const store = series.get(key(c))
        append(store.handover, samples.subarray(1))
        for (const name of ['fill', 'total', 'recv_minflt']) append(store[name], extra[name].subarray(1))
        await settle()
      }
    }
  } catch (error) {
    log(`FAILED first strategies: ${error.message}`)
    results.errors.push({ transport: 'first_strategies', error: error.message })
  } finally {
    await proc.stop()
  }
  for (const c of combos) {
    const s = series.get(key(c))
    out.combinations[key(c)] = failed.has(key(c))
      ? { ...c, error: failed.get(key(c)) }
      : {
          ...c,
          ...summarize(s.handover),
          fill: summarize(s.fill),
          total: summarize(s.total),
          recv_minflt: summarize(s.recv_minflt),
          blocks: passes,
          block_rounds: block,
          warmup_rounds: warm,
        }
  }
  const ok = Object.entries(out.combinations).filter(([, v]) => typeof v.median === 'number')
  const best = (pick) => ok.reduce((a, b) => (pick(b[1]) < pick(a[1]) ? b : a), ok[0])?.[0]
  out.best_by_handover = best((v) => v.median)
  out.best_by_total = best((v) => v.total.median)
  out.default = key(FIRST_DEFAULT)
  log(`first strategies: best handover ${out.best_by_handover}, best total ${out.best_by_total}`)
}

async function measureRegionCreate(results) {
  const cRegion = new CProcess(path.join(BUILD, 'region'))
  const impls = [new NodeRegionCreate(), new NodeRegionCreateBare(), new CRegionCreate(cRegion)]
  const out = {}
  for (const impl of impls) out[impl.id] = { label: impl.label, sizes: {} }
  results.region_create = out
  const { sizes, warm, passes, block } = plan.region
  try {
    for (const size of sizes) {
      const samples = new Map(impls.map((i) => [i.id, []]))
      for (const impl of impls) await guarded(cRegion, 'region warm-up', () => impl.runBlock(size, warm))
      for (let pass = 0; pass < passes; pass++) {
        for (const impl of shuffled(impls, 100 + Math.log2(size), pass)) {
          append(samples.get(impl.id), await guarded(cRegion, 'region block', () => impl.runBlock(size, block)))
          await settle()
        }
      }
      for (const impl of impls) {
        out[impl.id].sizes[size] = { ...summarize(samples.get(impl.id)), blocks: passes, block_rounds: block, warmup_rounds: warm }
      }
      log(`region create ${sizeLabel(size)}: ${impls.map((i) => `${i.id}=${out[i.id].sizes[size].median}`).join(' ')}`)
    }
  } catch (error) {
    log(`FAILED region create: ${error.message}`)
    results.errors.push({ transport: 'region_create', error: error.message })
  } finally {
    await cRegion.stop()
  }
}

async function measureCrossLanguage(results) {
  const out = { peers: {}, skipped: {} }
  results.cross_language = out
  const peers = []
  for (const spec of LANGUAGES) {
    const peer = new EchoPeer(spec, socketDir)
    const missing = peer.missing()
    if (missing !== undefined) {
      out.skipped[spec.lang] = missing
      log(`cross-language: skipping ${spec.lang}: ${missing}`)
      continue
    }
    try {
      await peer.start()
      peers.push(peer)
      out.peers[spec.lang] = {
        command: [spec.command, ...spec.args, 'echo', '<socket>'].join(' '),
        cpus_allowed: cpusOf(peer.child.pid),
        rows: {},
      }
    } catch (error) {
      out.skipped[spec.lang] = `peer failed to start: ${error.message}`
      results.errors.push({ transport: `cross-${spec.lang}`, error: error.message })
      peer.abort()
    }
  }
  const rows = [
    { row: 'rtt16', kind: 'inline', size: 16, rounds: plan.cross.rtt16 },
    { row: 'known64m', kind: 'known', size: 64 * MiB, rounds: plan.cross.known64m },
  ]
  const failed = new Set()
  const fail = (peer, error) => {
    log(`FAILED cross ${peer.lang}: ${error.message}`)
    failed.add(peer.lang)
    out.peers[peer.lang].error = error.message
    results.errors.push({ transport: `cross-${peer.lang}`, error: error.message })
    peer.abort()
  }
  for (const { row, kind, size, rounds } of rows) {
    const samples = new Map(peers.map((p) => [p.lang, []]))
    for (const peer of peers) {
      if (failed.has(peer.lang)) continue
      try {
        await guarded(peer, `${peer.lang} prepare`, () => peer.prepare(kind, size), 30_000)
        await guarded(peer, `${peer.lang} warm-up`, () => peer.runBlock(rounds.warm), 60_000)
      } catch (error) {
        fail(peer, error)
      }
    }
    for (let pass = 0; pass < rounds.passes; pass++) {
      for (const peer of shuffled(peers, 200 + size, pass)) {
        if (failed.has(peer.lang)) continue
        try {
          append(
            samples.get(peer.lang),
            await guarded(peer, `${peer.lang} ${row}`, () => peer.runBlock(rounds.block), 60_000),
          )
          await settle()
        } catch (error) {
          fail(peer, error)
        }
      }
    }
    for (const peer of peers) {
      peer.finish()
      if (!failed.has(peer.lang)) {
        out.peers[peer.lang].rows[row] = {
          ...summarize(samples.get(peer.lang)),
          size,
          blocks: rounds.passes,
          block_rounds: rounds.block,
          warmup_rounds: rounds.warm,
        }
      }
    }
    log(`cross ${row}: ${peers.map((p) => `${p.lang}=${out.peers[p.lang].rows[row]?.median ?? 'x'}`).join(' ')}`)
  }
  for (const peer of peers) await peer.stop().catch(() => {})
}

/** Cpus_allowed_list of a process (undefined if it is gone). */
function cpusOf(pid) {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  } catch {
    return undefined
  }
}

function allowedCpus() {
  try {
    return /Cpus_allowed_list:\s*(\S+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1]
  } catch {
    return undefined
  }
}

const results = {
  placement,
  plan: args.plan,
  cpus_allowed: allowedCpus(),
  errors: [],
  started: new Date().toISOString(),
}
if (placement !== 'unpinned' && results.cpus_allowed !== '0') {
  log(`warning: placement "${placement}" but this process may run on CPUs ${results.cpus_allowed}`)
}
const t0 = Date.now()
try {
  await measureTransports(results)
  await measureFirstStrategies(results)
  if (!args['skip-region']) await measureRegionCreate(results)
  if (!args['skip-cross']) await measureCrossLanguage(results)
  try {
    results.ring_idle = await measureRingIdle()
    log(`ring idle: ${JSON.stringify(results.ring_idle.ring)} socket ${JSON.stringify(results.ring_idle.socket)}`)
  } catch (error) {
    log(`FAILED ring idle: ${error.message}`)
    results.errors.push({ transport: 'ring_idle', error: error.message })
  }
} catch (error) {
  log(`FAILED: ${error.stack}`)
  results.errors.push({ transport: 'driver', error: error.message })
}
results.wall_seconds = (Date.now() - t0) / 1000
fs.writeFileSync(args.out, JSON.stringify(results, null, 1))
log(`done in ${results.wall_seconds.toFixed(1)} s`)
cleanup()
process.exit(0)
