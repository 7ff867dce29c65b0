/**
 * The one interop harness's settings and process plumbing, shared by
 * `__test__/interop.spec.ts` (the peer matrix, hostile frames, valgrind) and
 * `__test__/languages.spec.ts` (the quick starts of docs/LANGUAGES.md). The settings are
 * environment variables, documented in peers/SCENARIO.md ("The test harness"):
 *
 * - `SHMLINK_PEERS`: which languages besides Node to run (`rust,go,python,c`, the default);
 * - `SHMLINK_PEER_TIMEOUT`: seconds any one program may run before it is killed (90);
 * - `SHMLINK_PEER_TMPDIR`: a directory not on tmpfs for the disk-file hostile case;
 * - `SHMLINK_VALGRIND`: `auto` (when installed), `0` (never) or `1` (required);
 * - `CARGO_TARGET_DIR`: where cargo builds (`target`).
 *
 * Every program the harness starts is killed when its test ends, whatever happened.
 */
import test from 'ava'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, statfsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'

import type { Endpoint, Server } from '../../index'

export const ROOT = join(__dirname, '..', '..')
export const PEERS_DIR = join(ROOT, 'peers')
export const SCENARIO = join(PEERS_DIR, 'scenario.json')
export const HOSTILE = join(PEERS_DIR, 'hostile-frames.json')

// -- settings --------------------------------------------------------------------------

export type Lang = 'node' | 'rust' | 'go' | 'python' | 'c'
/** The languages whose libraries live in peers/ (Node is this process). */
export const OTHER_LANGS: ReadonlyArray<Exclude<Lang, 'node'>> = ['rust', 'go', 'python', 'c']

function selectedLangs(value: string | undefined): ReadonlySet<Lang> {
  if (value === undefined || value.trim() === '') return new Set<Lang>(['node', ...OTHER_LANGS])
  const names = value.split(',').map((name) => name.trim()).filter((name) => name !== '')
  const unknown = names.filter((name) => name !== 'node' && !(OTHER_LANGS as readonly string[]).includes(name))
  if (unknown.length > 0) throw new Error(`SHMLINK_PEERS names ${unknown.join(', ')}; it takes ${OTHER_LANGS.join(',')}`)
  return new Set<Lang>(['node', ...(names as Lang[])])
}

function seconds(name: string, fallback: number): number {
  const value = process.env[name]
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}=${value} is not a number of seconds`)
  return n
}

function valgrindSetting(): 'auto' | 'off' | 'required' {
  const value = process.env.SHMLINK_VALGRIND ?? 'auto'
  if (value === 'auto' || value === '') return 'auto'
  if (value === '0') return 'off'
  if (value === '1') return 'required'
  throw new Error(`SHMLINK_VALGRIND=${value}: use auto, 0 or 1`)
}

const TMPFS_MAGIC = 0x01021994

export const CARGO_TARGET = process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target')

export const settings = {
  /** `SHMLINK_PEERS`: Node and the languages to pair with it. */
  langs: selectedLangs(process.env.SHMLINK_PEERS),
  /** `SHMLINK_PEER_TIMEOUT`: how long any one program may run (peers give up after 60 s). */
  peerTimeoutMs: seconds('SHMLINK_PEER_TIMEOUT', 90) * 1000,
  /** `SHMLINK_VALGRIND`. */
  valgrind: valgrindSetting(),
}

/** How long a peer gets to connect or bind after it was started. */
export const CONNECT_MS = Math.min(30_000, settings.peerTimeoutMs)

/** Why `lang`'s tests are skipped, or undefined when they run. */
export function notSelected(lang: Lang): string | undefined {
  return settings.langs.has(lang) ? undefined : `${lang} is not in SHMLINK_PEERS=${process.env.SHMLINK_PEERS}`
}

/** Whether valgrind runs, or why not; throws when SHMLINK_VALGRIND=1 and it is missing. */
export function valgrindSkip(): string | undefined {
  if (settings.valgrind === 'off') return 'SHMLINK_VALGRIND=0'
  const found = spawnSync('valgrind', ['--version'], { stdio: 'ignore' }).status === 0
  if (found) return undefined
  if (settings.valgrind === 'required') throw new Error('SHMLINK_VALGRIND=1 but valgrind is not installed')
  return 'valgrind is not installed'
}

// -- directories -----------------------------------------------------------------------

const runId = `${process.pid}-${Date.now().toString(36)}`
let counter = 0

const workRoot = mkdtempSync(join(tmpdir(), 'shmlink-interop-'))

/**
 * `SHMLINK_PEER_TMPDIR` for hostile peers: a regular file there must not be on tmpfs
 * (a tmpfs file can carry seals and would be refused as unsealed, not as not-a-memfd).
 */
export const peerTmpdir: string = (() => {
  const given = process.env.SHMLINK_PEER_TMPDIR
  if (given !== undefined && given !== '') {
    mkdirSync(given, { recursive: true })
    if (statfsSync(given).type === TMPFS_MAGIC) throw new Error(`SHMLINK_PEER_TMPDIR=${given} is on tmpfs; the disk-file case needs a disk`)
    return given
  }
  if (statfsSync(workRoot).type !== TMPFS_MAGIC) return workRoot
  const dir = join(CARGO_TARGET, 'tmp', `shmlink-interop-${runId}`)
  mkdirSync(dir, { recursive: true })
  return dir
})()

process.on('exit', () => {
  rmSync(workRoot, { recursive: true, force: true })
  if (peerTmpdir !== workRoot && peerTmpdir !== process.env.SHMLINK_PEER_TMPDIR) {
    rmSync(peerTmpdir, { recursive: true, force: true })
  }
})

/** A fresh directory for one run; the caller removes it. */
export function workDir(name: string): string {
  const dir = join(workRoot, `${counter++}-${name}`)
  mkdirSync(dir)
  return dir
}

/** Where a listener binds and what the other side is told: a path, or `@name` for `\0name`. */
export function address(dir: string, abstract: boolean): { listen: string; arg: string } {
  if (abstract) {
    const name = `shmlink-interop-${runId}-${counter++}`
    return { listen: '\0' + name, arg: '@' + name }
  }
  const path = join(dir, 's.sock')
  return { listen: path, arg: path }
}

// -- programs --------------------------------------------------------------------------

/** The Python interpreter of the virtualenv peers/build.sh installs the shmlink wheel into. */
export const VENV_PYTHON = join(PEERS_DIR, 'python', 'build', 'venv', 'bin', 'python')

interface PeerProgram {
  file: string
  args: string[]
  /** How to build what is missing. */
  build: string
}

/** Each language's interop peer (peers/SCENARIO.md), as `bash peers/build.sh` leaves it. */
export const PEER_PROGRAMS: Record<Lang, PeerProgram> = {
  node: {
    file: process.execPath,
    args: ['--import', 'tsx', join(__dirname, 'node-peer.ts')],
    build: 'npm run build (the package), then run it with tsx',
  },
  rust: { file: join(CARGO_TARGET, 'release', 'shmlink-peer'), args: [], build: 'bash peers/build.sh' },
  go: { file: join(PEERS_DIR, 'go', 'build', 'shmlink-peer'), args: [], build: 'bash peers/build.sh' },
  // The peer runs on the installed wheel, not on the source tree.
  python: {
    file: VENV_PYTHON,
    args: [join(PEERS_DIR, 'python', 'peer.py')],
    build: 'bash peers/build.sh (builds the wheel and installs it into peers/python/build/venv)',
  },
  c: { file: join(PEERS_DIR, 'c', 'build', 'shmlink-peer'), args: [], build: 'bash peers/build.sh (make -C peers/c)' },
}

/** Why `lang`'s peer cannot run, or undefined. */
export function peerMissing(lang: Lang): string | undefined {
  const program = PEER_PROGRAMS[lang]
  return existsSync(program.file) ? undefined : `no ${lang} peer at ${program.file}; build it: ${program.build}`
}

const live = new Set<ChildProgram>()

/** A program started by a test; killed when the test ends, whatever happened. */
export class ChildProgram {
  readonly child: ChildProcess
  output = ''
  /** Resolves once the process exited and its output is closed. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  #killTimer: NodeJS.Timeout
  #done = false

  /** How long it may run before it is killed (longer under valgrind). */
  readonly lifetimeMs: number

  constructor(
    /** Names it in messages, e.g. `go peer (driver)`. */
    readonly label: string,
    file: string,
    args: string[],
    options: { env?: NodeJS.ProcessEnv; cwd?: string; killAfterMs?: number } = {},
  ) {
    this.child = spawn(file, args, {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', SHMLINK_PEER_TMPDIR: peerTmpdir, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    live.add(this)
    this.child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()))
    this.child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()))
    this.lifetimeMs = options.killAfterMs ?? settings.peerTimeoutMs
    this.#killTimer = setTimeout(() => this.kill(), this.lifetimeMs)
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

  get running(): boolean {
    return !this.#done && this.child.exitCode === null && this.child.signalCode === null
  }

  kill(): void {
    if (this.running) this.child.kill('SIGKILL')
  }

  /** Waits for the exit (killing the process after `ms`); describes it for messages. */
  async finish(ms: number = settings.peerTimeoutMs): Promise<{ code: number | null; summary: string }> {
    const timer = setTimeout(() => this.kill(), ms)
    const { code, signal } = await this.exited
    clearTimeout(timer)
    const how = signal !== null ? `was killed (${signal})` : `exited ${code}`
    const output = this.output.trim()
    return { code, summary: `${this.label} ${how}${output ? `: ${output}` : ''}` }
  }
}

/** Starts `lang`'s peer with SCENARIO.md's command line `args` (`listen` first to bind). */
export function startPeer(lang: Lang, args: string[], options: { wrapper?: string[]; killAfterMs?: number; env?: NodeJS.ProcessEnv } = {}): ChildProgram {
  const problem = peerMissing(lang)
  if (problem !== undefined) throw new Error(problem)
  const program = PEER_PROGRAMS[lang]
  const role = args[0] === 'listen' ? `listen ${args[1]}` : args[0]
  const [file, ...rest] = [...(options.wrapper ?? []), program.file, ...program.args, ...args]
  return new ChildProgram(`${lang} peer (${role})`, file, rest, { killAfterMs: options.killAfterMs, env: options.env })
}

function killAll(): void {
  for (const program of live) program.kill()
}
process.on('exit', killAll)
test.afterEach.always(killAll)

// -- waiting ---------------------------------------------------------------------------

export function timeout<T>(ms: number, what: string): Promise<T> {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref()
  })
}

/** How long to wait for `program` to connect or bind: longer for a program given longer to run (valgrind). */
function connectWait(program: ChildProgram): number {
  return Math.max(CONNECT_MS, Math.min(program.lifetimeMs, CONNECT_MS * (program.lifetimeMs / settings.peerTimeoutMs)))
}

/** The connection of `program`, or why it did not come. */
export async function acceptFrom(server: Server, program: ChildProgram): Promise<Endpoint> {
  return Promise.race([
    server.accept(),
    program.exited.then(() => {
      throw new Error(`${program.label} exited before connecting: ${program.output.trim()}`)
    }),
    timeout<Endpoint>(connectWait(program), `${program.label} did not connect`),
  ])
}

/** Waits until `program` has bound the socket file `path`. */
export async function socketBound(path: string, program: ChildProgram): Promise<void> {
  const deadline = Date.now() + connectWait(program)
  while (!existsSync(path)) {
    if (!program.running) throw new Error(`${program.label} exited before binding ${path}: ${program.output.trim()}`)
    if (Date.now() > deadline) throw new Error(`${program.label} did not bind ${path}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/**
 * Two programs without Node in between: `listener` binds `sock` (a path), then
 * `connector` is started. Resolves with both exits once both ended.
 */
export async function runPair(
  sock: string,
  listener: () => ChildProgram,
  connector: () => ChildProgram,
): Promise<Array<{ code: number | null; summary: string }>> {
  const programs = [listener()]
  try {
    await socketBound(sock, programs[0])
    programs.push(connector())
    return await Promise.all(programs.map((p) => p.finish()))
  } finally {
    for (const program of programs) program.kill()
  }
}

// -- comparing -------------------------------------------------------------------------

/** Where two lists first differ, for a failure message; undefined when they are equal. */
export function firstDifference(actual: readonly unknown[], expected: readonly unknown[]): string | undefined {
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
