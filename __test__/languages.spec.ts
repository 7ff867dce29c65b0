/**
 * The quick starts of docs/LANGUAGES.md, built and run as a user would, so that the page
 * cannot rot: for each language, `child_<lang>__parent_node` runs
 * examples/languages/node/parent.js with that language's child (which must hand the
 * frame back with its first byte incremented), `..._ipc` does the same with `'ipc'` in
 * the parent's stdio (so the socket is fd 4, not 3), and `server_<lang>__client_node`
 * starts that language's server and runs examples/languages/node/client.js against it
 * twice. Each program is built the way LANGUAGES.md says: Go with `go build` (the module
 * points at peers/go), C against a `make install PREFIX=...` with pkg-config, Rust with
 * `cargo build --example`, Python on the wheel installed in peers/python/build/venv.
 *
 * The settings (SHMLINK_PEERS, SHMLINK_PEER_TIMEOUT, CARGO_TARGET_DIR) are the interop
 * harness's (peers/SCENARIO.md).
 */
import test, { type ExecutionContext } from 'ava'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { Region, spawnWithEndpoint } from '../index'
import { CARGO_TARGET, ChildProgram, ROOT, VENV_PYTHON, notSelected, settings, socketBound, workDir, type Lang } from './interop/harness'

const EXAMPLES = join(ROOT, 'examples', 'languages')
const PARENT = join(EXAMPLES, 'node', 'parent.js')
const CLIENT = join(EXAMPLES, 'node', 'client.js')
const LANGS: Lang[] = ['node', 'python', 'go', 'rust', 'c']

/** Building may compile a crate from scratch on a busy machine. */
const BUILD_MS = 10 * 60_000

/** How to start one quick-start program. */
interface Command {
  file: string
  args: string[]
  env?: NodeJS.ProcessEnv
}

interface Programs {
  child: Command
  server: Command
}

/** Runs a build step to completion; throws with its output if it fails. */
async function build(label: string, file: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  const step = new ChildProgram(label, file, args, { ...options, killAfterMs: BUILD_MS })
  const { code, summary } = await step.finish(BUILD_MS)
  if (code !== 0) throw new Error(summary)
}

const buildDir = workDir('languages')

/** Builds each language's quick starts as docs/LANGUAGES.md says; once per language. */
const builders: Record<Lang, () => Promise<Programs>> = {
  node: async () => ({
    child: { file: process.execPath, args: [join(EXAMPLES, 'node', 'child.js')] },
    server: { file: process.execPath, args: [join(EXAMPLES, 'node', 'server.js')] },
  }),
  python: async () => ({
    child: { file: VENV_PYTHON, args: [join(EXAMPLES, 'python', 'child.py')] },
    server: { file: VENV_PYTHON, args: [join(EXAMPLES, 'python', 'server.py')] },
  }),
  go: async () => {
    const dir = join(EXAMPLES, 'go')
    for (const name of ['child', 'server']) {
      await build(`go build ./${name}`, 'go', ['build', '-buildvcs=false', '-o', join(buildDir, `go-${name}`), `./${name}`], { cwd: dir })
    }
    return {
      child: { file: join(buildDir, 'go-child'), args: [] },
      server: { file: join(buildDir, 'go-server'), args: [] },
    }
  },
  rust: async () => {
    await build('cargo build --example child --example server', 'cargo', ['build', '-p', 'shmlink', '--example', 'child', '--example', 'server'])
    return {
      child: { file: join(CARGO_TARGET, 'debug', 'examples', 'child'), args: [] },
      server: { file: join(CARGO_TARGET, 'debug', 'examples', 'server'), args: [] },
    }
  },
  c: async () => {
    // As a user would: make install PREFIX=..., then cc ... $(pkg-config --cflags --libs shmlink).
    const prefix = join(buildDir, 'prefix')
    await build('make install', 'make', ['-C', join(ROOT, 'peers', 'c'), '--no-print-directory', '-s', 'install', `PREFIX=${prefix}`])
    const env = { PKG_CONFIG_PATH: join(prefix, 'lib', 'pkgconfig') }
    for (const name of ['child', 'server']) {
      const source = join(EXAMPLES, 'c', `${name}.c`)
      const output = join(buildDir, `c-${name}`)
      await build(`cc ${name}.c`, 'sh', ['-c', `cc -std=c11 -Wall -Wextra -Werror "${source}" $(pkg-config --cflags --libs shmlink) -o "${output}"`], { env })
    }
    const run = { LD_LIBRARY_PATH: join(prefix, 'lib') }
    return {
      child: { file: join(buildDir, 'c-child'), args: [], env: run },
      server: { file: join(buildDir, 'c-server'), args: [], env: run },
    }
  },
}

const built = new Map<Lang, Promise<Programs>>()
function programs(lang: Lang): Promise<Programs> {
  let promise = built.get(lang)
  if (promise === undefined) {
    promise = builders[lang]()
    built.set(lang, promise)
  }
  return promise
}

async function childOfNodeParent(t: ExecutionContext, lang: Lang): Promise<void> {
  t.timeout(BUILD_MS + settings.peerTimeoutMs)
  const { child } = await programs(lang)
  const parent = new ChildProgram(`parent.js with the ${lang} child`, process.execPath, [PARENT, child.file, ...child.args], { env: child.env })
  const { code, summary } = await parent.finish()
  t.is(code, 0, summary)
  t.is(parent.output.trim(), 'done true 43', summary)
}

/**
 * The same child with Node's IPC channel as fd 3: spawnWithEndpoint passes the socket as
 * fd 4 and says so in SHMLINK_FD, and the child must find it there.
 */
async function childWithIpc(t: ExecutionContext, lang: Lang): Promise<void> {
  t.timeout(BUILD_MS + settings.peerTimeoutMs)
  const { child: command } = await programs(lang)
  const { child, endpoint } = spawnWithEndpoint(command.file, command.args, {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, ...command.env },
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const killer = setTimeout(() => child.kill('SIGKILL'), settings.peerTimeoutMs)
  try {
    const environ = readFileSync(`/proc/${child.pid}/environ`, 'latin1').split('\0')
    t.true(environ.includes('SHMLINK_FD=4'), 'SHMLINK_FD names fd 4 when the IPC channel is fd 3')
    const frame = Region.create(4096)
    frame.bytes.fill(7)
    await endpoint.send('frame', { transfer: [frame] })
    const { payload, regions } = await endpoint.recv({ signal: AbortSignal.timeout(settings.peerTimeoutMs) })
    t.is(payload.toString(), 'done')
    t.is(regions[0], frame)
    t.is(frame.bytes[0], 8)
    endpoint.close()
    if (child.connected) child.disconnect()
    t.is(await exited, 0)
  } finally {
    clearTimeout(killer)
    endpoint.close()
    child.kill('SIGKILL')
  }
}

async function serverForNodeClient(t: ExecutionContext, lang: Lang): Promise<void> {
  t.timeout(BUILD_MS + settings.peerTimeoutMs)
  const { server: command } = await programs(lang)
  const dir = workDir(`server-${lang}`)
  const sock = join(dir, 'upper.sock')
  const server = new ChildProgram(`the ${lang} server`, command.file, [...command.args, sock], { env: command.env })
  try {
    await socketBound(sock, server)
    for (const round of [1, 2]) {
      const client = new ChildProgram(`client.js (${round})`, process.execPath, [CLIENT, sock])
      const { code, summary } = await client.finish()
      t.is(code, 0, `${summary}\n  ${server.label}: ${server.output.trim()}`)
      t.is(client.output.trim(), 'HELLO FROM NODE', summary)
    }
    t.true(server.running, `the server keeps serving: ${server.output.trim()}`)
  } finally {
    server.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

for (const lang of LANGS) {
  const skip = notSelected(lang)
  const tests: Array<[string, (t: ExecutionContext, lang: Lang) => Promise<void>]> = [
    [`child_${lang}__parent_node`, childOfNodeParent],
    [`child_${lang}__parent_node_ipc`, childWithIpc],
    [`server_${lang}__client_node`, serverForNodeClient],
  ]
  for (const [title, implementation] of tests) {
    if (skip !== undefined) test.skip(`${title} (skipped: ${skip})`, () => {})
    else test.serial(title, implementation, lang)
  }
}

test('docs/LANGUAGES.md shows every quick start as it is in examples/languages', (t) => {
  const doc = readFileSync(join(ROOT, 'docs', 'LANGUAGES.md'), 'utf8')
  const files = [
    'node/parent.js',
    'node/child.js',
    'node/server.js',
    'node/client.js',
    'python/child.py',
    'python/server.py',
    'go/child/main.go',
    'go/server/main.go',
    'c/child.c',
    'c/server.c',
  ].map((file) => join(EXAMPLES, file))
  files.push(join(ROOT, 'src-rs', 'core', 'examples', 'child.rs'), join(ROOT, 'src-rs', 'core', 'examples', 'server.rs'))
  for (const file of files) {
    const source = readFileSync(file, 'utf8').trim()
    t.true(doc.includes(source), `docs/LANGUAGES.md quotes ${file.slice(ROOT.length + 1)} verbatim`)
  }
})
