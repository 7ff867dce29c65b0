// What the results were measured on.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'

function run(command, args, options = {}) {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], ...options }).trim()
  } catch {
    return undefined
  }
}

function read(file) {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

function lscpu() {
  const out = {}
  for (const line of (run('lscpu', []) ?? '').split('\n')) {
    const at = line.indexOf(':')
    if (at > 0) out[line.slice(0, at).trim()] = line.slice(at + 1).trim()
  }
  return out
}

export function machineInfo(root) {
  const cpus = os.cpus()
  const l = lscpu()
  const cpuinfo = read('/proc/cpuinfo') ?? ''
  const cc = run(process.env.CC ?? 'cc', ['--version'])?.split('\n')[0]
  return {
    cpu_model: l['Model name'] ?? cpus[0]?.model,
    cpu_mhz: cpus[0]?.speed,
    cores: cpus.length,
    threads_per_core: l['Thread(s) per core'] !== undefined ? Number(l['Thread(s) per core']) : undefined,
    hypervisor: l['Hypervisor vendor'] ?? (cpuinfo.includes(' hypervisor') ? 'yes (vendor unknown)' : 'none'),
    caches: { l1d: l['L1d cache'], l2: l['L2 cache'], l3: l['L3 cache'] },
    memory_bytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    kernel_version: os.version(),
    arch: process.arch,
    clocksource: read('/sys/devices/system/clocksource/clocksource0/current_clocksource'),
    transparent_hugepage_shmem: read('/sys/kernel/mm/transparent_hugepage/shmem_enabled'),
    node: process.version,
    v8: process.versions.v8,
    uv: process.versions.uv,
    cc,
    git_commit: run('git', ['rev-parse', 'HEAD'], { cwd: root }),
    git_dirty: (run('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root }) ?? '') !== '',
    // 1, 5 and 15 minute load averages when the run started (run.mjs adds loadavg_after):
    // anything else running on the machine shows here
    loadavg_before: os.loadavg(),
  }
}
