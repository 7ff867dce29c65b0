// One list of error codes: docs/ERRORS.md's. The core's (ErrorKind::ALL, through the
// binding), index.ts's ErrorCode type and each other library's list (Python
// ERROR_CODES, Go Codes, C shmlink_code_string over the enum) must name the same codes,
// in the same order.
import test, { type ExecutionContext } from 'ava'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { errorCodes } from '../binding'
import type { ErrorCode } from '../index'

/** Every ErrorCode once: the compiler refuses this object if the type gains or loses a code. */
const typed: Record<ErrorCode, true> = {
  ERR_SHMLINK_CLOSED: true,
  ERR_SHMLINK_PEER_CLOSED: true,
  ERR_SHMLINK_PEER_REJECTED: true,
  ERR_SHMLINK_WOULD_BLOCK: true,
  ERR_SHMLINK_TIMED_OUT: true,
  ERR_SHMLINK_PROTOCOL_VIOLATION: true,
  ERR_SHMLINK_PEER_INCOMPATIBLE: true,
  ERR_SHMLINK_LIMIT_EXCEEDED: true,
  ERR_SHMLINK_REGION_UNSEALED: true,
  ERR_SHMLINK_REGION_SIZE_MISMATCH: true,
  ERR_SHMLINK_REGION_NOT_MEMFD: true,
  ERR_SHMLINK_REGION_NOT_SHMEM: true,
  ERR_SHMLINK_REGION_WRITABLE: true,
  ERR_SHMLINK_REGION_TRANSFERRED: true,
  ERR_SHMLINK_REGION_FROZEN: true,
  ERR_SHMLINK_REGION_BUSY: true,
  ERR_SHMLINK_REGION_CLOSED: true,
  ERR_SHMLINK_REGION_TOO_LARGE: true,
  ERR_SHMLINK_TOO_MANY_REGIONS: true,
  ERR_SHMLINK_PAYLOAD_TOO_LARGE: true,
  ERR_SHMLINK_FDS_TRUNCATED: true,
  ERR_SHMLINK_INVALID_ARG: true,
  ERR_SHMLINK_ZERO_COPY_UNAVAILABLE: true,
  ERR_SHMLINK_UNSUPPORTED: true,
  ERR_SHMLINK_RUNTIME: true,
  ERR_SHMLINK_OS: true,
  ERR_SHMLINK_BINARY_NOT_FOUND: true,
}

/** The loader's own code, raised in JavaScript before any native code exists. */
const LOADER_ONLY = 'ERR_SHMLINK_BINARY_NOT_FOUND'

const ROOT = join(__dirname, '..')
const PEERS = join(ROOT, 'peers')
const documented = [...readFileSync(join(ROOT, 'docs', 'ERRORS.md'), 'utf8').matchAll(/^\| `(ERR_SHMLINK_[A-Z_]+)` \|/gm)].map((m) => m[1])

test('the core, index.ts and docs/ERRORS.md list the same codes in the same order', (t) => {
  const core = errorCodes()
  t.deepEqual(Object.keys(typed).filter((code) => code !== LOADER_ONLY), core)
  t.deepEqual(documented.filter((code) => code !== LOADER_ONLY), core)
  t.true(documented.includes(LOADER_ONLY))
})

/** Fails unless `codes` are docs/ERRORS.md's, in its order; says what differs. */
function sameAsDocumented(t: ExecutionContext, library: string, codes: readonly string[], expected = documented): void {
  const missing = expected.filter((code) => !codes.includes(code))
  const extra = codes.filter((code) => !expected.includes(code))
  const problems = [
    missing.length > 0 ? `lacks ${missing.join(', ')}` : '',
    extra.length > 0 ? `has codes docs/ERRORS.md does not: ${extra.join(', ')}` : '',
  ].filter((p) => p !== '')
  t.deepEqual(codes, expected, `${library}: ${problems.length > 0 ? problems.join('; ') : 'the order differs from docs/ERRORS.md'}`)
}

/** Runs a program that prints a library's codes; names the build step when it cannot. */
function run(file: string, args: string[], options: { cwd?: string; build: string }): string {
  try {
    return execFileSync(file, args, { cwd: options.cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (error) {
    const { stderr } = error as { stderr?: string }
    throw new Error(`${file} ${args.join(' ')} failed (${options.build}): ${stderr ?? (error as Error).message}`)
  }
}

test('rust_codes_match_docs: ErrorKind::ALL, as the binding exports it', (t) => {
  sameAsDocumented(t, 'the Rust core (ErrorKind::ALL)', errorCodes(), documented.filter((code) => code !== LOADER_ONLY))
})

test('node_codes_match_docs: the ErrorCode type', (t) => {
  sameAsDocumented(t, "index.ts's ErrorCode", Object.keys(typed))
})

test('python_codes_match_docs: shmlink.ERROR_CODES of the installed package', (t) => {
  const python = join(PEERS, 'python', 'build', 'venv', 'bin', 'python')
  const out = run(python, ['-c', 'import json, shmlink; print(json.dumps(list(shmlink.ERROR_CODES)))'], {
    cwd: '/',
    build: 'bash peers/build.sh installs the package into peers/python/build/venv',
  })
  sameAsDocumented(t, 'Python (shmlink.ERROR_CODES)', JSON.parse(out) as string[])
})

test('go_codes_match_docs: shmlink.Codes', (t) => {
  const out = run('go', ['run', '.'], { cwd: join(__dirname, 'codes', 'go'), build: 'go run in __test__/codes/go' })
  sameAsDocumented(t, 'Go (shmlink.Codes)', JSON.parse(out) as string[])
})

test('c_codes_match_docs: shmlink_code_string over the enum, and the enum names in shmlink.h', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shmlink-codes-'))
  try {
    const archive = join(PEERS, 'c', 'build', 'libshmlink.a')
    if (!existsSync(archive)) throw new Error(`no ${archive}; build it: bash peers/build.sh`)
    const program = join(dir, 'codes')
    run('cc', ['-std=c11', '-Wall', '-Werror', '-I', join(PEERS, 'c'), join(__dirname, 'codes', 'codes.c'), archive, '-pthread', '-o', program], {
      build: 'compiling __test__/codes/codes.c against peers/c/build/libshmlink.a',
    })
    const strings = run(program, [], { build: 'running it' }).split('\n').filter((line) => line !== '')
    sameAsDocumented(t, 'C (shmlink_code_string)', strings)
    // The enum's names, in the header's order, spell the same codes (SHMLINK_ERR_X is ERR_SHMLINK_X).
    const header = readFileSync(join(PEERS, 'c', 'shmlink.h'), 'utf8')
    const body = /typedef enum shmlink_code \{([^}]*)\} shmlink_code;/.exec(header)
    t.truthy(body, 'shmlink.h has typedef enum shmlink_code { ... } shmlink_code;')
    const names = [...body![1].matchAll(/^\s*(SHMLINK_[A-Z_]+)/gm)].map((m) => m[1]).filter((name) => name !== 'SHMLINK_OK')
    sameAsDocumented(t, 'C (the enum in shmlink.h)', names.map((name) => name.replace(/^SHMLINK_ERR_/, 'ERR_SHMLINK_')))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
