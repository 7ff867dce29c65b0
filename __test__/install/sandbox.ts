/**
 * Child processes for the install tests: npm and node run as a user's would, with cargo and
 * rustc hidden, compilers replaced by shims that record being called, no proxies, a fresh
 * npm cache and config, and a registry on 127.0.0.1.
 */
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { delimiter, dirname, join } from 'node:path'

export interface Result {
  code: number | null
  stdout: string
  stderr: string
}

/** Tools a compile step would call. Each shim records its call and fails. */
const COMPILERS = [
  'cargo',
  'rustc',
  'rustup',
  'cc',
  'gcc',
  'g++',
  'c++',
  'clang',
  'make',
  'cmake',
  'node-gyp',
  'zig',
  'napi',
]

/** Runs a command to completion without blocking this process (the test's servers must answer). */
export function run(
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 100_000)
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** npm's CLI script, run with this node. */
export function npmCli(): string {
  const execpath = process.env.npm_execpath
  if (execpath !== undefined && /npm-cli\.js$/.test(execpath) && existsSync(execpath)) return execpath
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(dir, 'npm')
    if (dir !== '' && existsSync(candidate)) {
      const real = realpathSync(candidate)
      if (real.endsWith('.js')) return real
      const sibling = join(dirname(real), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js')
      if (existsSync(sibling)) return sibling
    }
  }
  throw new Error('npm not found on PATH')
}

export function npm(
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<Result> {
  return run(process.execPath, [npmCli(), ...args], options)
}

export interface Sandbox {
  env: NodeJS.ProcessEnv
  /** What the compiler shims recorded: empty when nothing tried to compile. */
  compilerCalls(): string[]
}

/**
 * An environment for `npm install` as a user without a Rust toolchain: PATH keeps node, npm
 * and the system's directories, minus any directory holding cargo or rustc and any
 * node_modules/.bin; shims for compilers come first.
 */
export function sandbox(dir: string, registryUrl: string, extraEnv: NodeJS.ProcessEnv = {}): Sandbox {
  const shims = join(dir, 'shims')
  const tools = join(dir, 'tools')
  const home = join(dir, 'home')
  for (const d of [shims, tools, home]) mkdirSync(d, { recursive: true })
  const log = join(dir, 'compiler-calls.log')
  for (const name of COMPILERS) {
    const shim = join(shims, name)
    writeFileSync(
      shim,
      `#!/bin/sh\necho "${name} $*" >> '${log}'\necho "${name}: hidden by the shmlink install test" >&2\nexit 127\n`,
    )
    chmodSync(shim, 0o755)
  }
  symlinkSync(process.execPath, join(tools, 'node'))
  symlinkSync(npmCli(), join(tools, 'npm'))
  const kept = (process.env.PATH ?? '')
    .split(delimiter)
    .filter(
      (d) => d !== '' && !d.includes('node_modules') && !existsSync(join(d, 'cargo')) && !existsSync(join(d, 'rustc')),
    )
  writeFileSync(join(dir, 'npmrc'), '')
  writeFileSync(join(dir, 'npmrc-global'), '')

  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    const k = key.toLowerCase()
    // npm's own settings from the test runner (npm test), proxies and Rust's variables stay out.
    if (
      k.startsWith('npm_') ||
      k.includes('proxy') ||
      k.startsWith('cargo') ||
      k.startsWith('rust') ||
      k.startsWith('napi_rs')
    )
      continue
    env[key] = value
  }
  Object.assign(env, {
    PATH: [shims, tools, ...kept].join(delimiter),
    HOME: home,
    npm_config_registry: `${registryUrl}/`,
    npm_config_cache: join(dir, 'npm-cache'),
    npm_config_userconfig: join(dir, 'npmrc'),
    npm_config_globalconfig: join(dir, 'npmrc-global'),
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    ...extraEnv,
  })
  return {
    env,
    compilerCalls: () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : []),
  }
}

export interface FileServer {
  url: string
  requests: string[]
  close(): Promise<void>
}

/**
 * Serves `files` (URL path → file) on 127.0.0.1 and 404 for anything else. A value
 * `{ redirect: path }` answers 302 to that path instead, as GitHub's release downloads do.
 */
export async function serveFiles(files: Record<string, string | { redirect: string }>): Promise<FileServer> {
  const requests: string[] = []
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    requests.push(`${req.method} ${path}`)
    const file = Object.prototype.hasOwnProperty.call(files, path) ? files[path] : undefined
    if (file === undefined) {
      res.writeHead(404)
      res.end()
      return
    }
    if (typeof file !== 'string') {
      res.writeHead(302, { location: file.redirect })
      res.end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/gzip' })
    res.end(readFileSync(file))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

/** A 127.0.0.1 URL nothing listens on: a server is started and stopped to free the port. */
export async function deadUrl(): Promise<string> {
  const server = await serveFiles({})
  await server.close()
  return server.url
}
