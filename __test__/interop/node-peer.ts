/**
 * The Node interop peer: the roles of `peers/SCENARIO.md` on the public API of the
 * package (`index.ts`), for the comparison matrix of `__test__/interop.spec.ts`.
 *
 * In-process (what the matrix does): the role functions take an accepted or connected
 * {@link Endpoint} and return the transcript lines. As a program, like the other peers:
 *
 *     node --import tsx __test__/interop/node-peer.ts driver    <socket> <scenario.json> <transcript-out>
 *     node --import tsx __test__/interop/node-peer.ts responder <socket> <transcript-out>
 *     node --import tsx __test__/interop/node-peer.ts echo      <socket>
 *     node --import tsx __test__/interop/node-peer.ts expect-hostile <socket> <hostile-frames.json> <case-name>
 *
 * A socket starting with `@` is a Linux abstract name. `hostile` is not implemented:
 * Node has no way to send raw records with `SCM_RIGHTS`, and the package refuses to send
 * anything malformed; the other peers play that role against Node.
 */
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'

import { Endpoint, Region, zeroCopy, isShmlinkError, type Message } from '../../index'

/** Every wait of a role is bounded (SCENARIO.md: never more than 60 seconds). */
export const WAIT_MS = 60_000

// -- the fill pattern -------------------------------------------------------------------
//
// Byte k of pattern(seed, n) is (seed*131 + (k % 4096)*7 + (k / 4096)*13) mod 256. Page p
// starts at c = seed*131 + 13p; the seed-0 page p' starts at 13p', so the pattern of any
// seed is the seed-0 pattern shifted by q = seed*131*13^-1 = seed*207 (mod 256) pages, and
// every pattern repeats after 256 pages (1 MiB). A 2 MiB table of seed 0 holds each
// pattern of up to 1 MiB as a slice; longer ones are that slice copied on.

const PAGE = 4096
const PERIOD = 256 * PAGE
let seed0: Uint8Array | undefined

function seed0Table(): Uint8Array {
  if (seed0 === undefined) {
    seed0 = new Uint8Array(2 * PERIOD)
    for (let k = 0; k < seed0.length; k++) seed0[k] = ((k % PAGE) * 7 + Math.floor(k / PAGE) * 13) & 0xff
  }
  return seed0
}

function patternStart(seed: number): number {
  return (((seed % 256) * 207) % 256) * PAGE
}

/** `pattern(seed, length)` for `length` up to 1 MiB, as a view of a shared table. */
export function pattern(seed: number, length: number): Uint8Array {
  if (length > PERIOD) throw new RangeError('pattern(): use fillPattern() beyond 1 MiB')
  const start = patternStart(seed)
  return seed0Table().subarray(start, start + length)
}

/** Writes `pattern(seed, target.length)` over all of `target`. */
export function fillPattern(target: Uint8Array, seed: number): void {
  let done = Math.min(target.length, PERIOD)
  target.set(pattern(seed, done), 0)
  // When more remains, `done` is a whole number of periods, so copying the filled prefix
  // onward continues the pattern exactly.
  while (done < target.length) {
    const step = Math.min(done, target.length - done)
    target.copyWithin(done, 0, step)
    done += step
  }
}

// -- transcripts ---------------------------------------------------------------------

export interface TranscriptRegion {
  id: number
  size: number
  new: boolean
  frozen: boolean
  transferred: boolean
  sha256: string
}

export interface TranscriptLine {
  n: number
  payload_len: number
  payload_sha256: string
  regions: TranscriptRegion[]
}

function sha256(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest()
}

/** A region's full contents: a zero-copy view where the runtime allows one. */
function contents(region: Region): Uint8Array {
  return zeroCopy() ? region.bytes : region.read()
}

/**
 * Appends `message` to `lines` as SCENARIO.md's transcript line; returns the digests of
 * the payload and of each region (in attachment order), taken before anything is stamped.
 */
function record(lines: TranscriptLine[], message: Message): Buffer[] {
  const digests = [sha256(message.payload)]
  const regions: TranscriptRegion[] = message.regions.map((region, i) => {
    const descriptor = message.descriptors[i]
    const digest = sha256(contents(region))
    digests.push(digest)
    return {
      id: descriptor.id,
      size: region.size,
      new: descriptor.new,
      frozen: descriptor.frozen,
      transferred: descriptor.transferred,
      sha256: digest.toString('hex'),
    }
  })
  lines.push({
    n: lines.length,
    payload_len: message.payload.length,
    payload_sha256: digests[0].toString('hex'),
    regions,
  })
  return digests
}

export function writeTranscript(path: string, lines: readonly TranscriptLine[]): void {
  writeFileSync(path, lines.map((line) => JSON.stringify(line) + '\n').join(''))
}

export function readTranscript(path: string): TranscriptLine[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as TranscriptLine)
}

function describe(error: unknown): string {
  if (isShmlinkError(error)) return `${error.code}: ${error.message}`
  return error instanceof Error ? error.message : String(error)
}

function recv(endpoint: Endpoint): Promise<Message> {
  return endpoint.recv({ signal: AbortSignal.timeout(WAIT_MS) })
}

/** Sends with `regions` attached in order; those also in `transfer` are handed over. */
function send(endpoint: Endpoint, payload: Uint8Array, regions: Region[], transfer: Region[]): Promise<void> {
  return endpoint.send(payload, { regions, transfer, signal: AbortSignal.timeout(WAIT_MS) })
}

// -- driver --------------------------------------------------------------------------

export interface RegionSpec {
  name: string
  size: number
  seed: number | null
  freeze: boolean
  transfer: boolean
}

export type Step =
  | { op: 'send'; payload: { len: number; seed: number }; regions: RegionSpec[] }
  | { op: 'release'; name: string }

export interface Scenario {
  version: number
  steps: Step[]
}

export function loadScenario(path: string): Scenario {
  const scenario = JSON.parse(readFileSync(path, 'utf8')) as Scenario
  if (scenario.version !== 1 || !Array.isArray(scenario.steps)) throw new Error(`${path}: not a version-1 scenario`)
  return scenario
}

/**
 * Plays `driver` on `endpoint` (connected, handshake done or pending) and closes it.
 * Throws `step N: why` when a check fails; the transcript so far is on the error as
 * `transcript`.
 */
/** Messages the last role sent and received through rings (docs/PROTOCOL.md §9). */
export const ringUse = { out: 0, in: 0 }

/** Records the endpoint's ring counters before it closes. */
function noteRingUse(endpoint: Endpoint): void {
  // After the peer's end-of-file the endpoint still answers; after a failure it may not.
  try {
    const stats = endpoint.stats()
    ringUse.out = stats.ringMessagesOut
    ringUse.in = stats.ringMessagesIn
  } catch {
    ringUse.out = ringUse.in = -1
  }
}

export async function driver(endpoint: Endpoint, scenario: Scenario): Promise<TranscriptLine[]> {
  const named = new Map<string, Region>()
  const transcript: TranscriptLine[] = []
  try {
    for (const [index, step] of scenario.steps.entries()) {
      try {
        if (step.op === 'release') {
          const region = named.get(step.name)
          if (region === undefined) throw new Error(`no region named ${step.name}`)
          // Closing a Region releases it on every endpoint it was sent on (a RELEASE frame).
          region.close()
          named.delete(step.name)
        } else if (step.op === 'send') {
          await driverSend(endpoint, step, named, transcript)
        } else {
          throw new Error(`unknown op ${JSON.stringify((step as { op: unknown }).op)}`)
        }
      } catch (error) {
        throw Object.assign(new Error(`step ${index}: ${describe(error)}`, { cause: error }), { transcript })
      }
    }
  } finally {
    noteRingUse(endpoint)
    // The connection ends first, so that closing the regions sends no RELEASE.
    endpoint.close()
    for (const region of named.values()) region.close()
  }
  return transcript
}

async function driverSend(
  endpoint: Endpoint,
  step: Extract<Step, { op: 'send' }>,
  named: Map<string, Region>,
  transcript: TranscriptLine[],
): Promise<void> {
  const attached: Array<{ name: string; region: Region; transfer: boolean }> = []
  for (const spec of step.regions) {
    let region = named.get(spec.name)
    if (region === undefined) {
      region = Region.create(spec.size)
      named.set(spec.name, region)
    }
    if (spec.seed !== null) {
      if (zeroCopy()) {
        fillPattern(region.bytes, spec.seed)
      } else {
        const data = new Uint8Array(region.size)
        fillPattern(data, spec.seed)
        region.write(0, data)
      }
    }
    if (spec.freeze) region.freeze()
    attached.push({ name: spec.name, region, transfer: spec.transfer })
  }
  const payload = pattern(step.payload.seed, step.payload.len)
  const transfer = attached.filter((a) => a.transfer)
  // The responder must echo the digests of exactly what was sent, in the step's order.
  const expected = Buffer.concat([sha256(payload), ...attached.map((a) => sha256(contents(a.region)))])
  await send(
    endpoint,
    payload,
    attached.map((a) => a.region),
    transfer.map((a) => a.region),
  )
  const ack = await recv(endpoint)
  record(transcript, ack)
  if (!ack.payload.equals(expected)) throw new Error("the responder's digests differ from what was sent")
  // The ack brings the transferred regions back, in order; the package resolves a file it
  // already has (same st_dev and st_ino) to the Region object that was sent.
  if (ack.regions.length !== transfer.length || ack.regions.some((region, i) => region !== transfer[i].region)) {
    throw new Error('the ack did not bring back the transferred regions')
  }
  for (const { region } of transfer) {
    if (region.transferred) throw new Error('a region that came back is still marked transferred')
  }
}

// -- responder -----------------------------------------------------------------------

/**
 * Plays `responder` on `endpoint` until end-of-file; returns the transcript. Regions that
 * arrived are closed once the connection is over (closing one before would release it).
 */
export async function responder(endpoint: Endpoint): Promise<TranscriptLine[]> {
  const transcript: TranscriptLine[] = []
  const held = new Set<Region>()
  try {
    for (;;) {
      let message: Message
      try {
        message = await recv(endpoint)
      } catch (error) {
        if (isShmlinkError(error) && error.code === 'ERR_SHMLINK_PEER_CLOSED') break
        throw error
      }
      for (const region of message.regions) held.add(region)
      const digests = record(transcript, message)
      const back: Region[] = []
      message.regions.forEach((region, i) => {
        const descriptor = message.descriptors[i]
        if (!descriptor.transferred) return
        if (!descriptor.frozen) region.write(0, digests[i + 1].subarray(0, region.size))
        back.push(region)
      })
      await send(endpoint, Buffer.concat(digests), [], back)
    }
  } catch (error) {
    throw Object.assign(new Error(`message ${transcript.length}: ${describe(error)}`, { cause: error }), {
      transcript,
    })
  } finally {
    noteRingUse(endpoint)
    endpoint.close()
    for (const region of held) region.close()
  }
  return transcript
}

// -- echo ----------------------------------------------------------------------------

/** Plays `echo` (benchmarks) until end-of-file. */
export async function echo(endpoint: Endpoint): Promise<void> {
  try {
    for (;;) {
      let message: Message
      try {
        message = await recv(endpoint)
      } catch (error) {
        if (isShmlinkError(error) && error.code === 'ERR_SHMLINK_PEER_CLOSED') return
        throw error
      }
      let sum = 0
      for (const region of message.regions) {
        if (zeroCopy()) {
          const bytes = region.bytes
          for (let page = 0; page < bytes.length; page += PAGE) sum += bytes[page]
        } else {
          for (let page = 0; page < region.size; page += PAGE) sum += region.read(page, 1)[0]
        }
      }
      if (sum < 0) throw new Error('unreachable')
      await send(endpoint, message.payload, message.regions, [])
    }
  } finally {
    endpoint.close()
  }
}

// -- expect-hostile ------------------------------------------------------------------

export interface HostileCase {
  name: string
  hello: string
  frame: string
  pad?: number
  fds: unknown[]
  expect: string
}

export function loadHostileCases(path: string): HostileCase[] {
  const cases = JSON.parse(readFileSync(path, 'utf8')) as { version: number; cases: HostileCase[] }
  if (cases.version !== 1 || !Array.isArray(cases.cases)) throw new Error(`${path}: not version-1 hostile cases`)
  return cases.cases
}

/**
 * Plays `expect-hostile`: the first receive must fail. Resolves with the failure's code
 * (the caller compares it with the case's `expect`); throws if a message was accepted.
 * Closes the endpoint either way.
 */
export async function expectHostile(endpoint: Endpoint): Promise<string> {
  try {
    const message = await recv(endpoint)
    for (const region of message.regions) region.close()
    throw new Error(
      `a hostile frame was accepted: ${message.payload.length} payload bytes, ${message.regions.length} regions`,
    )
  } catch (error) {
    if (isShmlinkError(error)) return error.code
    throw error
  } finally {
    endpoint.close()
  }
}

// -- the program ---------------------------------------------------------------------

/** The address the package takes for a peer's socket argument (`@name`: abstract). */
export function socketAddress(arg: string): string {
  return arg.startsWith('@') ? '\0' + arg.slice(1) : arg
}

async function main(args: string[]): Promise<void> {
  const [role, socket, ...rest] = args
  const want: Record<string, number> = { driver: 2, responder: 1, echo: 0, 'expect-hostile': 2 }
  if (role === 'hostile') throw new Error('the Node peer does not play hostile (Node cannot send raw records)')
  if (socket === undefined || want[role] !== rest.length) {
    throw new Error('usage: node-peer driver|responder|echo|expect-hostile <socket> ... (peers/SCENARIO.md)')
  }
  // SCENARIO.md: SHMLINK_PEER_RING=1 offers rings.
  const ring = process.env.SHMLINK_PEER_RING === '1'
  const endpoint = await Endpoint.connect(socketAddress(socket), { signal: AbortSignal.timeout(WAIT_MS), acceptWritable: true, ring })
  switch (role) {
    case 'driver': {
      const scenario = loadScenario(rest[0])
      writeTranscript(rest[1], await driver(endpoint, scenario))
      break
    }
    case 'responder':
      writeTranscript(rest[0], await responder(endpoint))
      break
    case 'echo':
      await echo(endpoint)
      break
    case 'expect-hostile': {
      const wanted = loadHostileCases(rest[0]).find((c) => c.name === rest[1])
      if (wanted === undefined) {
        endpoint.close()
        throw new Error(`no case ${rest[1]}`)
      }
      const code = await expectHostile(endpoint)
      if (code !== wanted.expect) throw new Error(`expected ${wanted.expect}, got ${code}`)
      break
    }
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`node-peer: ${describe(error).replace(/\n/g, ' ')}\n`)
      process.exit(1)
    },
  )
}
