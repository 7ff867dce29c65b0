/**
 * The interop harness: the cross-language matrix of peers/SCENARIO.md, the hostile frames
 * with every library as sender and as receiver, and the C peer under valgrind. Its
 * settings (which languages, timeouts, directories, valgrind) are environment variables
 * read in `interop/harness.ts` and documented in peers/SCENARIO.md ("The test harness").
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
 * - `hostile_<case>__rust_to_<lang>`: each library as the receiver (`expect-hostile`) of
 *   every case, sent by the Rust peer (`listen hostile`); it must refuse with the case's
 *   code and shut the connection down. `..._wrong_expectation` runs some cases with the
 *   expected codes swapped: the receiver must then fail, so a peer that accepts any
 *   refusal cannot pass.
 * - `valgrind_*`: the C library's unit tests, and the C peer over a reduced scenario
 *   (regions of at most 1 MiB) and some hostile cases, under valgrind: no memory errors,
 *   no leaks, no descriptor left open. Skipped, saying why, without valgrind.
 *
 * The harness listens (`Endpoint.listen`: a path, or an abstract name when a peer drives)
 * and the peer connects, except where two peers meet without Node. Pairs run one at a
 * time (64 MiB regions). The peers are built by `bash peers/build.sh` (the `pretest`
 * step); a selected peer that is missing fails its tests, naming the command to build it.
 */
import test, { type ExecutionContext } from 'ava'
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'

import { Endpoint } from '../index'
import {
  ChildProgram,
  HOSTILE,
  OTHER_LANGS,
  PEER_PROGRAMS,
  PEERS_DIR,
  SCENARIO,
  acceptFrom,
  address,
  firstDifference,
  notSelected,
  peerMissing,
  peerTmpdir,
  runPair,
  settings,
  socketBound,
  startPeer,
  valgrindSkip,
  workDir,
  type Lang,
} from './interop/harness'
import * as nodePeer from './interop/node-peer'
import type { TranscriptLine } from './interop/node-peer'

const LANGS: Lang[] = ['node', ...OTHER_LANGS]

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
  return new ChildProgram('wiretap', PEER_PROGRAMS.python.file, [WIRETAP, upstream, downstream, log])
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
    const ends = await Promise.all(programs.map((p) => p.finish()))
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
      nodeDrives ? startPeer(responderLang, ['responder', sock, out], { env }) : startPeer(driverLang, ['driver', sock, SCENARIO, out], { env })
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
    const ends = await Promise.all(programs.map((p) => p.finish()))
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
  t.timeout(settings.peerTimeoutMs + 60_000)
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
  t.timeout(settings.peerTimeoutMs + 60_000)
  const expected = await wireBaseline()
  const outcome = await runScenario(driverLang, responderLang, true)
  t.true(releases(expected.driver).length > 0, 'the baseline driver sends RELEASE frames')
  t.deepEqual(releases(outcome.wire!.driver), releases(expected.driver), `the driver's RELEASE frames`)
  for (const role of ['driver', 'responder'] as const) {
    const diff = firstDifference(outcome.wire![role], expected[role])
    t.true(diff === undefined, `the ${role}'s records differ from the Rust baseline's: ${diff}`)
  }
}

/**
 * Why a test of the libraries of `langs` is skipped, or undefined when it runs. The Rust
 * peer also serves every selection as the reference (the baseline, the hostile sender).
 */
function skipReason(...langs: Lang[]): string | undefined {
  for (const lang of langs) {
    const reason = notSelected(lang)
    if (reason !== undefined) return reason
  }
  return undefined
}

/** Registers `title`, or a skipped test saying why in its title. */
function serial<Args extends unknown[]>(
  title: string,
  skip: string | undefined,
  implementation: (t: ExecutionContext, ...args: Args) => Promise<void>,
  ...args: Args
): void {
  if (skip !== undefined) test.skip(`${title} (skipped: ${skip})`, () => {})
  else test.serial(title, implementation, ...args)
}

// A selected peer that is missing fails (startPeer names the build command); this makes
// the reason visible once, before the matrix runs.
test.serial('peers_are_built', (t) => {
  const missing = [...settings.langs].map((lang) => peerMissing(lang)).filter((problem) => problem !== undefined)
  t.deepEqual(missing, [])
  t.log(`languages: ${[...settings.langs].join(', ')}; peer timeout ${settings.peerTimeoutMs / 1000} s; SHMLINK_PEER_TMPDIR ${peerTmpdir}`)
})

const pairs: Array<[Lang, Lang]> = LANGS.flatMap((lang): Array<[Lang, Lang]> =>
  lang === 'node' ? [['node', 'node']] : [['node', lang], [lang, 'node']],
)

for (const [driverLang, responderLang] of pairs) {
  serial(`${driverLang}_to_${responderLang}`, skipReason(driverLang, responderLang), scenarioTest, driverLang, responderLang)
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

test.serial('transcript_comparison_notices_differences', async (t) => {
  // The comparisons above would pass anything if firstDifference saw no difference.
  const { driver } = await baseline()
  t.is(firstDifference(driver, driver), undefined)
  t.regex(firstDifference(driver.slice(0, 3), driver) ?? '', /3 entries, expected/)
  const changed = driver.map((line, i) => (i === 5 ? { ...line, payload_len: line.payload_len + 1 } : line))
  t.regex(firstDifference(changed, driver) ?? '', /1 of \d+ entries differ \(5\)/)
})

// The same pairs through wiretap.py: every record each side sent (kind, flags,
// descriptors, payload digest, number of descriptors passed) must be what the Rust peers
// send each other. Transcripts show what receivers saw; this shows RELEASE frames too.
for (const [driverLang, responderLang] of pairs) {
  serial(`wire_${driverLang}_to_${responderLang}`, skipReason(driverLang, responderLang), wireTest, driverLang, responderLang)
}

// -- hostile frames, Node receiving ---------------------------------------------------

const hostileCases = nodePeer.loadHostileCases(HOSTILE)

function openFds(): number {
  return readdirSync('/proc/self/fd').length
}

async function hostileToNode(t: ExecutionContext, lang: Lang, hostile: nodePeer.HostileCase): Promise<void> {
  t.timeout(settings.peerTimeoutMs + 10_000)
  const dir = workDir(`hostile-${lang}-${hostile.name}`)
  const addr = address(dir, false)
  const fdsBefore = openFds()
  const server = Endpoint.listen(addr.listen, { acceptWritable: true })
  let peer: ChildProgram | undefined
  try {
    peer = startPeer(lang, ['hostile', addr.arg, HOSTILE, hostile.name])
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
    const { code: exit, summary } = await peer.finish()
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

for (const lang of OTHER_LANGS) {
  for (const hostile of hostileCases) {
    serial(`hostile_${hostile.name}__${lang}_to_node`, skipReason(lang), hostileToNode, lang, hostile)
  }
}

// -- hostile frames, every library receiving ------------------------------------------
//
// Node cannot send raw records, so the Rust peer plays `hostile` and binds the socket;
// the library under test connects with `expect-hostile`. Both must exit 0: the receiver
// refused with the expected code (and the Python and Go peers count their descriptors),
// and the sender read end-of-file, so the receiver shut the connection down.

/** Rust `listen hostile` <-> `lang` `expect-hostile`, with the cases of `casesFile`. */
async function hostilePair(
  lang: Lang,
  name: string,
  casesFile: string,
  options: { wrapper?: string[]; killAfterMs?: number } = {},
): Promise<{ sender: { code: number | null; summary: string }; receiver: { code: number | null; summary: string } }> {
  const dir = workDir(`receive-${lang}-${name}`)
  const sock = join(dir, 's.sock')
  try {
    const [sender, receiver] = await runPair(
      sock,
      () => startPeer('rust', ['listen', 'hostile', sock, HOSTILE, name]),
      () => startPeer(lang, ['expect-hostile', sock, casesFile, name], options),
    )
    return { sender, receiver }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function hostileFromRust(t: ExecutionContext, lang: Lang, hostile: nodePeer.HostileCase): Promise<void> {
  t.timeout(settings.peerTimeoutMs + 10_000)
  const { sender, receiver } = await hostilePair(lang, hostile.name, HOSTILE)
  t.is(receiver.code, 0, `the ${lang} library did not refuse with ${hostile.expect}: ${receiver.summary}`)
  t.is(sender.code, 0, `the sender saw no end-of-file: ${sender.summary}`)
}

/** The cases with every `expect` swapped for a wrong code. */
const wrongCases = (() => {
  let path: string | undefined
  return (): string => {
    if (path === undefined) {
      path = join(workDir('wrong-expectations'), 'hostile-frames.json')
      const cases = hostileCases.map((c) => ({
        ...c,
        expect: c.expect === 'ERR_SHMLINK_REGION_SIZE_MISMATCH' ? 'ERR_SHMLINK_PROTOCOL_VIOLATION' : 'ERR_SHMLINK_REGION_SIZE_MISMATCH',
      }))
      writeFileSync(path, JSON.stringify({ version: 1, cases }))
    }
    return path
  }
})()

/** One case of each failure class the receivers tell apart. */
const NEGATIVE_CONTROLS = [
  'memfd_without_seals',
  'pipe_instead_of_memfd',
  'more_fds_than_receiver_accepts',
  'wrong_magic',
  'end_of_file_after_hello',
  'size_larger_than_file',
]

async function wrongExpectation(t: ExecutionContext, lang: Lang, name: string): Promise<void> {
  t.timeout(settings.peerTimeoutMs + 10_000)
  const { receiver } = await hostilePair(lang, name, wrongCases())
  t.is(receiver.code, 1, `expect-hostile with a wrong expected code must fail: ${receiver.summary}`)
  t.regex(receiver.summary, /expected|refused/i, receiver.summary)
}

for (const lang of OTHER_LANGS) {
  for (const hostile of hostileCases) {
    serial(`hostile_${hostile.name}__rust_to_${lang}`, skipReason(lang), hostileFromRust, lang, hostile)
  }
  for (const name of NEGATIVE_CONTROLS) {
    serial(`hostile_${name}__rust_to_${lang}_wrong_expectation`, skipReason(lang), wrongExpectation, lang, name)
  }
}

// -- the C library and peer under valgrind --------------------------------------------

const VALGRIND = ['valgrind', '-q', '--leak-check=full', '--error-exitcode=1']
/** Valgrind slows the programs down; each may run this much longer than a plain peer. */
const VALGRIND_SLOWDOWN = 4

/** Descriptors valgrind reported open at exit that the program did not inherit. */
function leakedFds(log: string): string[] {
  const lines = readFileSync(log, 'utf8').split('\n')
  return lines.filter(
    (line, i) =>
      /Open (file descriptor|AF_UNIX socket) /.test(line) &&
      !lines.slice(i + 1, i + 3).some((later) => later.includes('<inherited from parent>')),
  )
}

function valgrindWrapper(log: string): string[] {
  return [...VALGRIND, '--track-fds=yes', `--log-file=${log}`]
}

/** The scenario without the steps that send regions over 1 MiB (valgrind hides SHA-NI). */
function reducedScenario(): nodePeer.Scenario {
  const dropped = new Set<string>()
  const steps = scenario.steps.filter((step) => {
    if (step.op === 'send' && step.regions.some((r) => r.size > 1 << 20)) {
      for (const r of step.regions) dropped.add(r.name)
      return false
    }
    return !(step.op === 'release' && dropped.has(step.name))
  })
  return { version: scenario.version, steps }
}

async function valgrindScenario(t: ExecutionContext, role: 'driver' | 'responder'): Promise<void> {
  const killAfterMs = settings.peerTimeoutMs * VALGRIND_SLOWDOWN
  t.timeout(killAfterMs + 10_000)
  const dir = workDir(`valgrind-${role}`)
  const small = reducedScenario()
  const smallFile = join(dir, 'scenario.json')
  writeFileSync(smallFile, JSON.stringify(small))
  const log = join(dir, 'valgrind.log')
  const addr = address(dir, false)
  const server = Endpoint.listen(addr.listen, { acceptWritable: true })
  let peer: ChildProgram | undefined
  try {
    const args = role === 'driver' ? ['driver', addr.arg, smallFile, join(dir, 'out.jsonl')] : ['responder', addr.arg, join(dir, 'out.jsonl')]
    peer = startPeer('c', args, { wrapper: valgrindWrapper(log), killAfterMs })
    const endpoint = await acceptFrom(server, peer)
    server.close()
    const mine = role === 'driver' ? await nodePeer.responder(endpoint) : await nodePeer.driver(endpoint, small)
    const { code, summary } = await peer.finish(killAfterMs)
    t.is(code, 0, `${summary}\n${readFileSync(log, 'utf8')}`)
    t.true(mine.length > 0, 'messages went both ways')
    t.deepEqual(leakedFds(log), [], 'descriptors the C peer left open at exit')
  } finally {
    server.close()
    peer?.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

const VALGRIND_CASES = [
  'more_fds_than_receiver_accepts',
  'fewer_fds_than_new_descriptors',
  'pipe_instead_of_memfd',
  'size_smaller_than_file',
  'write_seal_without_frozen_flag',
  'wrong_magic',
]

async function valgrindHostile(t: ExecutionContext, name: string): Promise<void> {
  const killAfterMs = settings.peerTimeoutMs * VALGRIND_SLOWDOWN
  t.timeout(killAfterMs + 10_000)
  const dir = workDir(`valgrind-${name}`)
  const log = join(dir, 'valgrind.log')
  try {
    const { sender, receiver } = await hostilePair('c', name, HOSTILE, { wrapper: valgrindWrapper(log), killAfterMs })
    t.is(receiver.code, 0, `${receiver.summary}\n${readFileSync(log, 'utf8')}`)
    t.is(sender.code, 0, sender.summary)
    t.deepEqual(leakedFds(log), [], 'descriptors the C peer left open at exit')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function valgrindUnitTests(t: ExecutionContext): Promise<void> {
  const killAfterMs = settings.peerTimeoutMs * VALGRIND_SLOWDOWN
  t.timeout(killAfterMs + 10_000)
  const unitTests = join(PEERS_DIR, 'c', 'build', 'test_shmlink')
  const program = new ChildProgram('test_shmlink under valgrind', VALGRIND[0], [...VALGRIND.slice(1), unitTests], { killAfterMs })
  const { code, summary } = await program.finish(killAfterMs)
  t.is(code, 0, summary)
  t.regex(program.output, /\d+ checks, 0 failed/)
}

{
  let skip = skipReason('c')
  if (skip === undefined) skip = valgrindSkip()
  serial('valgrind_c_unit_tests', skip, valgrindUnitTests)
  serial('valgrind_c_to_node', skip, valgrindScenario, 'driver')
  serial('valgrind_node_to_c', skip, valgrindScenario, 'responder')
  for (const name of VALGRIND_CASES) serial(`valgrind_hostile_${name}__rust_to_c`, skip, valgrindHostile, name)
}
