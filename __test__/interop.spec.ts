/**
 * The cross-language comparison matrix of peers/SCENARIO.md.
 *
 * - `<driver>_to_<responder>`: the scenario between Node (in this process, on the public
 *   API: `__test__/interop/node-peer.ts`) and each peer program, in both directions
 *   (`node_to_node` runs the responder as a child Node process). Both transcripts of every
 *   run must equal those of a Rust <-> Rust baseline (the Rust peer's `listen` mode, no
 *   Node involved), so all driver transcripts are identical to each other and so are all
 *   responder transcripts; `transcripts_agree_across_all_pairs` groups the runs to show
 *   who disagrees with whom.
 * - `wire_<driver>_to_<responder>`: the same pairs through `interop/wiretap.py`, a relay
 *   that logs every record: what each side sent (kinds, flags, descriptors, payload digest,
 *   descriptor count, RELEASE frames included) must be what the Rust peers send each other.
 * - `hostile_<case>__<lang>_to_node`: each peer program plays `hostile` with every case of
 *   peers/hostile-frames.json; Node's first receive must fail with the case's `expect`
 *   code, no descriptor may stay open here, and the peer must see end-of-file.
 *
 * The harness always listens (`Endpoint.listen`: a path, or an abstract name when a peer
 * drives) and the peer connects. Pairs run one at a time (64 MiB regions). The peers are
 * built by `bash peers/build.sh` (the `pretest` step). Every peer except C must be present;
 * while the C binary is missing its tests are skipped, saying so in their titles.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'

import { Endpoint, type Server } from '../index'
import * as nodePeer from './interop/node-peer'
import type { TranscriptLine } from './interop/node-peer'

const ROOT = join(__dirname, '..')
const SCENARIO = join(ROOT, 'peers', 'scenario.json')
const HOSTILE = join(ROOT, 'peers', 'hostile-frames.json')
const CARGO_TARGET = process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target')

/** A peer process gets this long before it is killed (peers give up after 60 s themselves). */
const PEER_KILL_MS = 90_000
/** How long a peer gets to connect after it was started. */
const CONNECT_MS = 30_000

// -- peers -----------------------------------------------------------------------------

type Lang = 'node' | 'rust' | 'go' | 'python' | 'c'
const LANGS: Lang[] = ['node', 'rust', 'go', 'python', 'c']

interface PeerProgram {
  file: string
  args: string[]
  /** What must exist for the peer to run, and how to build it. */
  needs: string
  build: string
  /** Missing is a failure, not a skip (only the C peer may still be missing). */
  required: boolean
}

const PROGRAMS: Record<Lang, PeerProgram> = {
  node: {
    file: process.execPath,
    args: ['--import', 'tsx', join(__dirname, 'interop', 'node-peer.ts')],
    needs: join(__dirname, 'interop', 'node-peer.ts'),
    build: 'npm run build (the package), then run it with tsx',
    required: true,
  },
  rust: {
    file: join(CARGO_TARGET, 'release', 'shmlink-peer'),
    args: [],
    needs: join(CARGO_TARGET, 'release', 'shmlink-peer'),
    build: 'bash peers/build.sh',
    required: true,
  },
  go: {
    file: join(ROOT, 'peers', 'go', 'build', 'shmlink-peer'),
    args: [],
    needs: join(ROOT, 'peers', 'go', 'build', 'shmlink-peer'),
    build: 'bash peers/build.sh',
    required: true,
  },
  python: {
    // The venv peers/build.sh makes, with the shmlink wheel installed: the peer runs on
    // the installed package, not on the source tree.
    file: join(ROOT, 'peers', 'python', 'build', 'venv', 'bin', 'python'),
    args: [join(ROOT, 'peers', 'python', 'peer.py')],
    needs: join(ROOT, 'peers', 'python', 'build', 'venv', 'bin', 'python'),
    build: 'bash peers/build.sh (builds the wheel and installs it into peers/python/build/venv)',
    required: true,
  },
  c: {
    file: join(ROOT, 'peers', 'c', 'build', 'shmlink-peer'),
    args: [],
    needs: join(ROOT, 'peers', 'c', 'build', 'shmlink-peer'),
    build: 'bash peers/build.sh (make -C peers/c)',
    required: false,
  },
}

function missing(lang: Lang): string | undefined {
  const program = PROGRAMS[lang]
  return existsSync(program.needs) ? undefined : `no ${lang} peer at ${program.needs}; build it: ${program.build}`
}

const live = new Set<ChildProgram>()

/** A program started by a test; killed when the test ends, whatever happened. */
class ChildProgram {
  readonly child: ChildProcess
  output = ''
  /** Resolves once the process exited and its output is closed. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  #killTimer: NodeJS.Timeout
  #done = false

  constructor(
    /** Names it in messages, e.g. `go peer (driver)`. */
    readonly label: string,
    file: string,
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ) {
    this.child = spawn(file, args, {
      cwd: ROOT,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    live.add(this)
    this.child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()))
    this.child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()))
    this.#killTimer = setTimeout(() => this.kill(), PEER_KILL_MS)
    this.exited = new Promise((resolve) => {
      this.child.on('error', (error) => {
        this.output += `spawn failed: ${error.message}\n`
        this.#finish()
        resolve({ code: null, signal: null })
      })
      this.child.on('close', (code, signal) => {
        this.#finish()
        resolve({ code, signal })
      })
    })
  }

  #finish(): void {
    this.#done = true
    clearTimeout(this.#killTimer)
    live.delete(this)
  }

  kill(): void {
    if (!this.#done && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }

  /** Waits for the exit (killing the process after `ms`); describes it for messages. */
  async finish(ms: number): Promise<{ code: number | null; summary: string }> {
    const timer = setTimeout(() => this.kill(), ms)
    const { code, signal } = await this.exited
    clearTimeout(timer)
    const how = signal !== null ? `was killed (${signal})` : `exited ${code}`
    const output = this.output.trim()
    return { code, summary: `${this.label} ${how}${output ? `: ${output}` : ''}` }
  }
}

/** Starts the peer program of `lang` with SCENARIO.md's command line `args`. */
function startPeer(lang: Lang, args: string[], env: NodeJS.ProcessEnv = {}): ChildProgram {
  const problem = missing(lang)
  if (problem !== undefined) throw new Error(problem)
  const program = PROGRAMS[lang]
  return new ChildProgram(`${lang} peer (${args[0] === 'listen' ? args[1] : args[0]})`, program.file, [...program.args, ...args], env)
}

function killAll(): void {
  for (const peer of live) peer.kill()
}
process.on('exit', killAll)
test.afterEach.always(killAll)

// -- addresses and directories ---------------------------------------------------------

const TMPFS_MAGIC = 0x01021994
const runId = `${process.pid}-${Date.now().toString(36)}`
let counter = 0

const workRoot = mkdtempSync(join(tmpdir(), 'shmlink-interop-'))
/** For the `file` descriptors of hostile cases: a regular file must not be on tmpfs. */
const peerTmpdir = (() => {
  if (statfsSync(workRoot).type !== TMPFS_MAGIC) return workRoot
  const dir = join(CARGO_TARGET, 'tmp', `shmlink-interop-${runId}`)
  mkdirSync(dir, { recursive: true })
  return dir
})()
process.on('exit', () => {
  rmSync(workRoot, { recursive: true, force: true })
  if (peerTmpdir !== workRoot) rmSync(peerTmpdir, { recursive: true, force: true })
})

function workDir(name: string): string {
  const dir = join(workRoot, `${counter++}-${name}`)
  mkdirSync(dir)
  return dir
}

/** Where the harness listens and what the peer is told: a path, or `@name` for `\0name`. */
function address(dir: string, abstract: boolean): { listen: string; arg: string } {
  if (abstract) {
    const name = `shmlink-interop-${runId}-${counter++}`
    return { listen: '\0' + name, arg: '@' + name }
  }
  const path = join(dir, 's.sock')
  return { listen: path, arg: path }
}

function timeout<T>(ms: number, what: string): Promise<T> {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref()
  })
}

/** The connection of `peer`, or why it did not come. */
async function acceptFrom(server: Server, peer: ChildProgram): Promise<Endpoint> {
  return Promise.race([
    server.accept(),
    peer.exited.then(() => {
      throw new Error(`${peer.label} exited before connecting: ${peer.output.trim()}`)
    }),
    timeout<Endpoint>(CONNECT_MS, `${peer.label} did not connect`),
  ])
}

/** Waits until `program` has bound the socket file `path`. */
async function socketBound(path: string, program: ChildProgram): Promise<void> {
  const deadline = Date.now() + CONNECT_MS
  while (!existsSync(path)) {
    if (program.child.exitCode !== null || program.child.signalCode !== null) {
      throw new Error(`${program.label} exited before binding ${path}: ${program.output.trim()}`)
    }
    if (Date.now() > deadline) throw new Error(`${program.label} did not bind ${path}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

// -- the wire tap ---------------------------------------------------------------------

const WIRETAP = join(__dirname, 'interop', 'wiretap.py')

/** One record as `wiretap.py` logged it. */
interface WireRecord {
  dir: 'up' | 'down'
  len: number
  fds: number
  kind?: number
  flags?: number
  regions?: Array<[number, number, number]>
  payload_len?: number
  payload_sha256?: string
}

/** The records each role sent. */
interface Wire {
  driver: Omit<WireRecord, 'dir'>[]
  responder: Omit<WireRecord, 'dir'>[]
}

/** A relay that connects to `upstream` and lets the other side connect to `downstream`. */
function startTap(upstream: string, downstream: string, log: string): ChildProgram {
  return new ChildProgram('wiretap', PROGRAMS.python.file, [WIRETAP, upstream, downstream, log])
}

/** Splits a tap log by sender; `driverDir` is the direction of the driver's records. */
function readWire(log: string, driverDir: 'up' | 'down'): Wire {
  const records = readFileSync(log, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as WireRecord)
  const strip = ({ dir: _, ...rest }: WireRecord) => rest
  return {
    driver: records.filter((r) => r.dir === driverDir).map(strip),
    responder: records.filter((r) => r.dir !== driverDir).map(strip),
  }
}

// -- transcripts ----------------------------------------------------------------------

interface Transcripts {
  driver: TranscriptLine[]
  responder: TranscriptLine[]
}

const scenario = nodePeer.loadScenario(SCENARIO)
const sendSteps = scenario.steps.filter((s) => s.op === 'send').length

/** Every run's transcripts, by test name, for the cross-pair comparison. */
const runs = new Map<string, Transcripts>()

/**
 * Rust driver <-> Rust responder (the Rust peer's `listen` mode, no Node involved): the
 * transcripts every run must reproduce, and with `tapped` what went over the wire.
 */
async function rustBaseline(tapped: boolean): Promise<Transcripts & { wire?: Wire }> {
  const dir = workDir(tapped ? 'wire-baseline' : 'baseline')
  const sock = join(dir, 's.sock')
  const driverOut = join(dir, 'driver.jsonl')
  const responderOut = join(dir, 'responder.jsonl')
  const programs: ChildProgram[] = []
  try {
    const listening = startPeer('rust', ['listen', 'responder', sock, responderOut])
    programs.push(listening)
    await socketBound(sock, listening)
    let connectTo = sock
    if (tapped) {
      connectTo = join(dir, 't.sock')
      const tap = startTap(sock, connectTo, join(dir, 'wire.jsonl'))
      programs.push(tap)
      await socketBound(connectTo, tap)
    }
    programs.push(startPeer('rust', ['driver', connectTo, SCENARIO, driverOut]))
    const ends = await Promise.all(programs.map((p) => p.finish(PEER_KILL_MS)))
    if (ends.some((e) => e.code !== 0)) throw new Error(`the Rust baseline failed: ${ends.map((e) => e.summary).join('; ')}`)
    return {
      driver: nodePeer.readTranscript(driverOut),
      responder: nodePeer.readTranscript(responderOut),
      // The responder listens upstream of the tap: the driver's records go up.
      wire: tapped ? readWire(join(dir, 'wire.jsonl'), 'up') : undefined,
    }
  } finally {
    for (const program of programs) program.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

let baselinePromise: Promise<Transcripts> | undefined
function baseline(): Promise<Transcripts> {
  baselinePromise ??= rustBaseline(false).then((result) => {
    runs.set('rust_to_rust (baseline)', result)
    return result
  })
  return baselinePromise
}

let wireBaselinePromise: Promise<Wire> | undefined
function wireBaseline(): Promise<Wire> {
  wireBaselinePromise ??= rustBaseline(true).then((result) => result.wire!)
  return wireBaselinePromise
}

/** Where two lists first differ, for a failure message; undefined when they are equal. */
function firstDifference(actual: readonly unknown[], expected: readonly unknown[]): string | undefined {
  const n = Math.min(actual.length, expected.length)
  const lines: number[] = []
  for (let i = 0; i < n; i++) if (!isDeepStrictEqual(actual[i], expected[i])) lines.push(i)
  if (lines.length === 0 && actual.length === expected.length) return undefined
  const parts = [`${lines.length} of ${n} entries differ${lines.length ? ` (${lines.slice(0, 10).join(', ')})` : ''}`]
  if (actual.length !== expected.length) parts.push(`${actual.length} entries, expected ${expected.length}`)
  if (lines.length) {
    parts.push(`entry ${lines[0]}:\n    got      ${JSON.stringify(actual[lines[0]])}\n    expected ${JSON.stringify(expected[lines[0]])}`)
  }
  return parts.join('; ')
}

// -- the scenario ---------------------------------------------------------------------

interface Outcome extends Transcripts {
  /** Steps the Node driver could not attach in the scenario's order. */
  wire?: Wire
}

/**
 * One scenario run: the harness listens, the peer program plays the other role and
 * connects, Node plays its role here (with Node on both sides the responder is a child
 * process). With `tapped`, `wiretap.py` connects instead and relays to the peer.
 */
async function runScenario(driverLang: Lang, responderLang: Lang, tapped: boolean, ring = false): Promise<Outcome> {
  const dir = workDir(`${ring ? 'ring_' : ''}${driverLang}_to_${responderLang}`)
  // Abstract names when a peer drives directly, paths otherwise, so both forms are covered.
  const addr = address(dir, driverLang !== 'node' && !tapped)
  const nodeDrives = driverLang === 'node'
  const out = join(dir, nodeDrives ? 'responder.jsonl' : 'driver.jsonl')
  const server = Endpoint.listen(addr.listen, { acceptWritable: true, ring })
  const programs: ChildProgram[] = []
  const env = { SHMLINK_PEER_RING: ring ? '1' : '0' }
  try {
    const peerArgs = (sock: string) =>
      nodeDrives ? startPeer(responderLang, ['responder', sock, out], env) : startPeer(driverLang, ['driver', sock, SCENARIO, out], env)
    let endpoint: Endpoint
    if (tapped) {
      const downstream = join(dir, 't.sock')
      const tap = startTap(addr.arg, downstream, join(dir, 'wire.jsonl'))
      programs.push(tap)
      endpoint = await acceptFrom(server, tap)
      await socketBound(downstream, tap)
      programs.push(peerArgs(downstream))
    } else {
      const peer = peerArgs(addr.arg)
      programs.push(peer)
      endpoint = await acceptFrom(server, peer)
    }
    server.close()
    let mine: TranscriptLine[]
    try {
      mine = nodeDrives ? await nodePeer.driver(endpoint, scenario) : await nodePeer.responder(endpoint)
    } catch (error) {
      const ends = await Promise.all(programs.map((p) => p.finish(5_000)))
      throw new Error(`the Node ${nodeDrives ? 'driver' : 'responder'} failed: ${(error as Error).message}\n  ${ends.map((e) => e.summary).join('\n  ')}`)
    }
    const ends = await Promise.all(programs.map((p) => p.finish(PEER_KILL_MS)))
    if (ends.some((e) => e.code !== 0)) throw new Error(ends.map((e) => e.summary).join('\n  '))
    const theirs = nodePeer.readTranscript(out)
    return {
      driver: nodeDrives ? mine : theirs,
      responder: nodeDrives ? theirs : mine,
      // Node is upstream of the tap: when it drives, the driver's records go down.
      wire: tapped ? readWire(join(dir, 'wire.jsonl'), nodeDrives ? 'down' : 'up') : undefined,
    }
  } finally {
    server.close()
    for (const program of programs) program.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}


async function scenarioTest(t: ExecutionContext, driverLang: Lang, responderLang: Lang): Promise<void> {
  t.timeout(150_000)
  const expected = await baseline()
  const started = Date.now()
  const outcome = await runScenario(driverLang, responderLang, false)
  t.log(`${driverLang} driver <-> ${responderLang} responder: ${Date.now() - started} ms`)
  runs.set(t.title, outcome)
  t.is(outcome.driver.length, sendSteps, 'one driver transcript line per send step')
  const driverDiff = firstDifference(outcome.driver, expected.driver)
  t.true(driverDiff === undefined, `driver transcript differs from the baseline: ${driverDiff}`)
  const responderDiff = firstDifference(outcome.responder, expected.responder)
  t.true(responderDiff === undefined, `responder transcript differs from the baseline: ${responderDiff}`)
}

/** The driver's RELEASE frames, with how many records it had sent before each. */
function releases(records: Wire['driver']): Array<{ after: number; regions: unknown }> {
  return records.flatMap((r, i) => (r.kind === 3 ? [{ after: i, regions: r.regions }] : []))
}

async function wireTest(t: ExecutionContext, driverLang: Lang, responderLang: Lang): Promise<void> {
  t.timeout(150_000)
  const expected = await wireBaseline()
  const outcome = await runScenario(driverLang, responderLang, true)
  t.true(releases(expected.driver).length > 0, 'the baseline driver sends RELEASE frames')
  t.deepEqual(releases(outcome.wire!.driver), releases(expected.driver), `the driver's RELEASE frames`)
  for (const role of ['driver', 'responder'] as const) {
    const diff = firstDifference(outcome.wire![role], expected[role])
    t.true(diff === undefined, `the ${role}'s records differ from the Rust baseline's: ${diff}`)
  }
}

function skipReason(...langs: Lang[]): string | undefined {
  for (const lang of langs) {
    const problem = missing(lang)
    if (problem !== undefined && !PROGRAMS[lang].required) return problem
  }
  return undefined
}

const pairs: Array<[Lang, Lang]> = LANGS.flatMap((lang): Array<[Lang, Lang]> =>
  lang === 'node' ? [['node', 'node']] : [['node', lang], [lang, 'node']],
)

for (const [driverLang, responderLang] of pairs) {
  const title = `${driverLang}_to_${responderLang}`
  const skip = skipReason(driverLang, responderLang)
  if (skip !== undefined) test.skip(`${title} (skipped: ${skip})`, () => {})
  else test.serial(title, scenarioTest, driverLang, responderLang)
}

/**
 * The languages whose library implements rings (docs/PROTOCOL.md §9); the others offer
 * none (peers/SCENARIO.md), and a ring-offering Node side must fall back to the socket.
 */
const RING_LANGS: readonly Lang[] = ['node', 'rust']

/**
 * `ring_<driver>_to_<responder>`: the same scenario with every side asked to offer rings
 * (`SHMLINK_PEER_RING=1`; Node with `ring: true`). The transcripts must still equal the
 * ring-less Rust baseline, and Node's counters must show the path taken: rings when both
 * languages implement them, the socket alone otherwise.
 */
async function ringScenarioTest(t: ExecutionContext, driverLang: Lang, responderLang: Lang): Promise<void> {
  t.timeout(150_000)
  const expected = await baseline()
  nodePeer.ringUse.out = nodePeer.ringUse.in = 0
  const outcome = await runScenario(driverLang, responderLang, false, true)
  t.is(firstDifference(outcome.driver, expected.driver), undefined, 'driver transcript')
  t.is(firstDifference(outcome.responder, expected.responder), undefined, 'responder transcript')
  const peer = driverLang === 'node' ? responderLang : driverLang
  const use = `Node sent ${nodePeer.ringUse.out} and received ${nodePeer.ringUse.in} messages through rings`
  if (RING_LANGS.includes(peer)) {
    t.true(nodePeer.ringUse.out > 0 && nodePeer.ringUse.in > 0, `both offer rings: ${use}`)
  } else {
    t.true(nodePeer.ringUse.out === 0 && nodePeer.ringUse.in === 0, `${peer} offers none: ${use}`)
  }
}

for (const [driverLang, responderLang] of pairs) {
  const title = `ring_${driverLang}_to_${responderLang}`
  const skip = skipReason(driverLang, responderLang)
  if (skip !== undefined) test.skip(`${title} (skipped: ${skip})`, () => {})
  else test.serial(title, ringScenarioTest, driverLang, responderLang)
}

test.serial('transcripts_agree_across_all_pairs', async (t) => {
  await baseline()
  for (const role of ['driver', 'responder'] as const) {
    const groups: Array<{ transcript: TranscriptLine[]; runs: string[] }> = []
    for (const [name, run] of runs) {
      const group = groups.find((g) => isDeepStrictEqual(g.transcript, run[role]))
      if (group) group.runs.push(name)
      else groups.push({ transcript: run[role], runs: [name] })
    }
    const description = groups.map((g, i) => `  group ${i + 1}: ${g.runs.join(', ')}`).join('\n')
    t.log(`${role} transcripts (${runs.size} runs):\n${description}`)
    t.is(groups.length, 1, `${role} transcripts fall into ${groups.length} groups:\n${description}`)
  }
})

// The same pairs through wiretap.py: every record each side sent (kind, flags,
// descriptors, payload digest, number of descriptors passed) must be what the Rust peers
// send each other. Transcripts show what receivers saw; this shows RELEASE frames too.
for (const [driverLang, responderLang] of pairs) {
  const title = `wire_${driverLang}_to_${responderLang}`
  const skip = skipReason(driverLang, responderLang)
  if (skip !== undefined) test.skip(`${title} (skipped: ${skip})`, () => {})
  else test.serial(title, wireTest, driverLang, responderLang)
}

// -- hostile frames -------------------------------------------------------------------

const hostileCases = nodePeer.loadHostileCases(HOSTILE)

function openFds(): number {
  return readdirSync('/proc/self/fd').length
}

async function hostileTest(t: ExecutionContext, lang: Lang, hostile: nodePeer.HostileCase): Promise<void> {
  t.timeout(100_000)
  const dir = workDir(`hostile-${lang}-${hostile.name}`)
  const addr = address(dir, false)
  const fdsBefore = openFds()
  const server = Endpoint.listen(addr.listen, { acceptWritable: true })
  let peer: ChildProgram | undefined
  try {
    peer = startPeer(lang, ['hostile', addr.arg, HOSTILE, hostile.name], { SHMLINK_PEER_TMPDIR: peerTmpdir })
    const endpoint = await acceptFrom(server, peer)
    server.close()
    let code: string
    try {
      code = await nodePeer.expectHostile(endpoint)
    } catch (error) {
      const { summary } = await peer.finish(5_000)
      throw new Error(`${(error as Error).message}\n  ${summary}`)
    }
    // The hostile peer exits 0 once it reads end-of-file: Node must have shut the
    // connection down after refusing the frame (PROTOCOL.md §7).
    const { code: exit, summary } = await peer.finish(70_000)
    t.is(code, hostile.expect, `Node's recv failed with ${code}; ${summary}`)
    t.is(exit, 0, summary)
  } finally {
    server.close()
    peer?.kill()
    rmSync(dir, { recursive: true, force: true })
  }
  // Every descriptor of the refused record was closed (PROTOCOL.md §5.4); sockets and
  // pipes close on the event loop, so give it a few turns.
  let fds = openFds()
  for (let i = 0; i < 50 && fds > fdsBefore; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    fds = openFds()
  }
  t.true(fds <= fdsBefore, `${fds - fdsBefore} more descriptors open than before the case`)
}

for (const lang of LANGS.filter((l) => l !== 'node')) {
  const skip = skipReason(lang)
  if (skip !== undefined) {
    test.skip(`hostile_*__${lang}_to_node: ${hostileCases.length} cases (skipped: ${skip})`, () => {})
    continue
  }
  for (const hostile of hostileCases) test.serial(`hostile_${hostile.name}__${lang}_to_node`, hostileTest, lang, hostile)
}
