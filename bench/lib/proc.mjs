// What a process holds, read from /proc: descriptors, resident memory, memfd mappings;
// and the machine's shared memory (Shmem: in /proc/meminfo). Linux only.
import fs from 'node:fs'

/** The kernel names shmlink's regions `memfd:shmlink` in /proc/<pid>/maps. */
const REGION_MAPPING = 'memfd:shmlink'

function kB(text, field) {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)
  return match === null ? undefined : Number(match[1])
}

/**
 * The memory files of shmlink regions process `pid` holds open: how many, and the memory
 * they occupy (their allocated blocks, which for a memfd are its pages in RAM or swap) by
 * inode, so that files two processes share are counted once.
 */
export function memfdsOf(pid) {
  const files = new Map()
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`)
      if (!target.startsWith(`/${REGION_MAPPING}`)) continue
      const stat = fs.statSync(`/proc/${pid}/fd/${fd}`)
      files.set(stat.ino, stat.blocks * 512)
    } catch {
      // closed meanwhile
    }
  }
  return files
}

const sumKb = (files) => Math.round([...files.values()].reduce((a, b) => a + b, 0) / 1024)

/** The memory of the memory files the processes `pids` hold, each file counted once (kB). */
export function memfdKbOf(pids) {
  const all = new Map()
  for (const pid of pids) for (const [ino, bytes] of memfdsOf(pid)) all.set(ino, bytes)
  return sumKb(all)
}

/**
 * One sample of process `pid`: open descriptors, resident set (total, anonymous and
 * shared-memory parts, kB), the memfd mappings of shmlink regions (count and bytes), and
 * the memory files of regions it holds open (count and kB).
 */
export function sampleProcess(pid) {
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length
  const memfds = memfdsOf(pid)
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  let regionMappings = 0
  let regionMappedBytes = 0
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    if (!line.includes(REGION_MAPPING)) continue
    regionMappings++
    const [start, end] = line.slice(0, line.indexOf(' ')).split('-')
    regionMappedBytes += Number.parseInt(end, 16) - Number.parseInt(start, 16)
  }
  return {
    fds,
    rssKb: kB(status, 'VmRSS'),
    rssAnonKb: kB(status, 'RssAnon'),
    rssShmemKb: kB(status, 'RssShmem'),
    regionMappings,
    regionMappedBytes,
    memfds: memfds.size,
    memfdKb: sumKb(memfds),
  }
}

/** The machine-wide `Shmem:` of /proc/meminfo, kB (every process's shared memory, not only ours). */
export function shmemKb() {
  return kB(fs.readFileSync('/proc/meminfo', 'utf8'), 'Shmem')
}
