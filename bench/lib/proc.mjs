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
 * One sample of process `pid`: open descriptors, resident set (total and its shared-memory
 * part, kB), and the memfd mappings of shmlink regions (count and bytes).
 */
export function sampleProcess(pid) {
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length
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
  }
}

/** The machine-wide `Shmem:` of /proc/meminfo, kB (every process's shared memory, not only ours). */
export function shmemKb() {
  return kB(fs.readFileSync('/proc/meminfo', 'utf8'), 'Shmem')
}
