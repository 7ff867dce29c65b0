import { readdirSync, readFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { tmpdir } from 'node:os'

/** Open file descriptors of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length
}

/** Mappings of memfd regions (the kernel names them `/memfd:shmlink`). */
export function regionMappingCount(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:shmlink')).length
}

export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run with --expose-gc')
  gc()
}

/** Lets finalizers (scheduled with setImmediate by Node) run. */
export async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    collectGarbage()
    await new Promise((resolve) => setImmediate(resolve))
  }
}

let counter = 0
export function socketPath(name: string): string {
  return join(tmpdir(), `shmlink-${process.pid}-${name}-${counter++}.sock`)
}

export const fixture = (name: string): string => join(__dirname, 'fixtures', name)

export interface Finished {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a node script to completion; resolves with its exit code, signal and output. */
export function runNode(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Finished> {
  return runCommand([process.execPath, ...args], env)
}

/** Runs `command` (program and arguments) to completion, as {@link runNode} does. */
export function runCommand(command: string[], env: NodeJS.ProcessEnv = {}): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const child = spawn(command[0], command.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
}
