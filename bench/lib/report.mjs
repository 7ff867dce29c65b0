// Markdown tables from a results object, for docs/BENCHMARKS.md and the console.
import { sizeLabel } from './data.mjs'
import { BASELINE_ROWS, DEFINITIONS, RING_DEFINITIONS } from './ratios.mjs'
import { formatNs } from './stats.mjs'

function fmtRatio(v) {
  if (v === null || v === undefined) return '–'
  if (v >= 100) return v.toFixed(0)
  if (v >= 10) return v.toFixed(1)
  if (v < 0.1) return v.toPrecision(2) // spin floors against socket round trips are ~0.003
  return v.toFixed(2)
}

export function ratiosTable(results) {
  const lines = [
    `| ratio | what it divides (medians) | target | ${results.ratios_placement ?? 'pinned'} | met | unpinned | split |`,
    '| --- | --- | --- | ---: | :---: | ---: | ---: |',
  ]
  for (const [key, t] of Object.entries(results.targets)) {
    const met = t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'
    lines.push(
      `| \`${key}\` | ${DEFINITIONS[key] ?? ''} | ${t.target.replace('<=', '≤').replace('>=', '≥')} | ${fmtRatio(t.value)} | ${met} | ${fmtRatio(results.ratios_unpinned?.[key])} | ${fmtRatio(results.ratios_split?.[key])} |`,
    )
  }
  return lines.join('\n')
}

export function extraRatiosTable(results) {
  const lines = [
    `| ratio | what it divides (medians) | ${results.ratios_placement ?? 'pinned'} | unpinned | split |`,
    '| --- | --- | ---: | ---: | ---: |',
  ]
  for (const [key, value] of Object.entries(results.ratios_extra ?? {})) {
    lines.push(
      `| \`${key}\` | ${DEFINITIONS[key] ?? ''} | ${fmtRatio(value)} | ${fmtRatio(results.ratios_extra_unpinned?.[key])} | ${fmtRatio(results.ratios_extra_split?.[key])} |`,
    )
  }
  return lines.join('\n')
}

/** Transport × size: "median / p99" (min in the JSON). */
export function latencyTable(results, placement) {
  const transports = results.placements?.[placement]?.transports
  if (transports === undefined) return `_(no ${placement} run)_`
  const sizes = [...new Set(Object.values(transports).flatMap((t) => Object.keys(t.sizes).map(Number)))].sort(
    (a, b) => a - b,
  )
  const lines = [
    `| transport | ${sizes.map(sizeLabel).join(' | ')} |`,
    `| --- | ${sizes.map(() => '---:').join(' | ')} |`,
  ]
  for (const [id, t] of Object.entries(transports)) {
    const cells = sizes.map((size) => {
      const s = t.sizes[size]
      if (s === undefined) return ''
      if (s.error !== undefined) return 'failed'
      return `${formatNs(s.median)}<br><sub>min ${formatNs(s.min)} · p99 ${formatNs(s.p99)}</sub>`
    })
    const name = /^c-(first|pool|spin)/.test(id)
      ? `\`${id}\` (C baseline)`
      : id === 'js-spin' || id === 'js-pool-touch'
        ? `\`${id}\` (JavaScript baseline)`
        : `\`${id}\``
    if (t.skipped !== undefined) cells[0] = `not run (see \`baselines\`)`
    lines.push(`| ${name} | ${cells.join(' | ')} |`)
  }
  return lines.join('\n')
}

const fmtSummary = (s) => (s?.median === undefined ? '–' : `${formatNs(s.median)} (min ${formatNs(s.min)})`)

/** What a baseline row adds besides its median: the strategy, faults, yields … */
function baselineDetails(key, e) {
  const out = []
  if (e.strategy) out.push(`populate: producer ${e.strategy.producer}, receiver ${e.strategy.receiver}`)
  if (e.fill) out.push(`fill (untimed) ${fmtSummary(e.fill)}`)
  if (e.total) out.push(`fill + handover ${fmtSummary(e.total)}`)
  if (e.recv_minflt) out.push(`receiver faults ${e.recv_minflt.median}`)
  if (e.count) out.push(`${e.count} regions, ≤ ${e.depth} in flight`)
  if (e.latency) out.push(`frame latency ${fmtSummary(e.latency)}`)
  if (e.minflt_per_frame) {
    const f = e.minflt_per_frame
    out.push(`minor faults per frame: producer ${f.producer?.toFixed(3)}, consumer ${f.consumer?.toFixed(3)} (${f.frames} frames)`)
  }
  if (e.spin_limit !== undefined) out.push(`sched_yield after ${e.spin_limit} spin${e.spin_limit === 1 ? '' : 's'}`)
  if (e.yields_per_round) out.push(`yields per round ${e.yields_per_round.parent.toFixed(3)} / ${e.yields_per_round.child.toFixed(3)}`)
  if (e.nap_after) out.push(`nap after ${e.nap_after} loads`)
  if (e.naps_per_round) out.push(`naps per round ${e.naps_per_round.parent.toFixed(4)} / ${e.naps_per_round.child.toFixed(4)}`)
  if (e.batch) out.push(`a sample averages ${e.batch} round trips`)
  return out.join('; ')
}

/** The C and JavaScript baselines (results.baselines), every placement. */
export function baselinesTable(results) {
  const b = results.baselines
  if (b === undefined) return '_(no baselines in this run)_'
  const lines = ['| baseline | placement | median | min | p99 | details |', '| --- | --- | ---: | ---: | ---: | --- |']
  for (const key of Object.keys(BASELINE_ROWS)) {
    const entry = b[key]
    if (entry === undefined) continue
    for (const [placement, e] of Object.entries(entry.placements)) {
      if (e.skipped !== undefined || e.error !== undefined) {
        lines.push(`| \`${key}\` | ${placement} | – | – | – | ${e.skipped ? `not run: ${e.skipped}` : `failed: ${e.error}`} |`)
        continue
      }
      lines.push(
        `| \`${key}\` | ${placement} | ${formatNs(e.median)} | ${formatNs(e.min)} | ${formatNs(e.p99)} | ${baselineDetails(key, e)} |`,
      )
    }
  }
  const best = b.c_seqpacket_rtt16_best
  if (best) lines.push('', `Best C socket placement for 16 B (\`c_seqpacket_rtt16_best\`): ${best.placement}, ${formatNs(best.median)}.`)
  return lines.join('\n')
}

/** bench/c/first.c with every populate strategy at 64 MiB, per placement. */
export function firstStrategiesTable(results) {
  const placements = Object.entries(results.placements ?? {}).filter(([, p]) => p.first_strategies?.combinations)
  if (placements.length === 0) return '_(not measured in this run: the full run measures it)_'
  const keys = Object.keys(placements[0][1].first_strategies.combinations)
  const lines = [
    `| producer + receiver | ${placements.map(([name]) => `${name}: handover | fill | total`).join(' | ')} |`,
    `| --- | ${placements.map(() => '---: | ---: | ---:').join(' | ')} |`,
  ]
  for (const key of keys) {
    const cells = placements.map(([, p]) => {
      const c = p.first_strategies.combinations[key]
      if (c.error !== undefined) return `failed: ${c.error} | | `
      return `${fmtSummary(c)} | ${formatNs(c.fill?.median)} | ${formatNs(c.total?.median)}`
    })
    const mark = placements.some(([, p]) => p.first_strategies.default === key) ? ' (default)' : ''
    lines.push(`| \`${key}\`${mark} | ${cells.join(' | ')} |`)
  }
  lines.push(
    '',
    placements
      .map(
        ([name, p]) =>
          `${name}: fastest handover \`${p.first_strategies.best_by_handover}\`, fastest fill + handover \`${p.first_strategies.best_by_total}\``,
      )
      .join('; ') + '.',
  )
  return lines.join('\n')
}

export function regionTable(results) {
  const lines = []
  for (const placement of Object.keys(results.placements ?? {})) {
    const r = results.placements[placement].region_create
    if (r === undefined) continue
    const sizes = [...new Set(Object.values(r).flatMap((t) => Object.keys(t.sizes).map(Number)))].sort((a, b) => a - b)
    if (lines.length === 0) {
      lines.push(`| placement | implementation | ${sizes.map(sizeLabel).join(' | ')} |`)
      lines.push(`| --- | --- | ${sizes.map(() => '---:').join(' | ')} |`)
    }
    for (const [id, t] of Object.entries(r)) {
      lines.push(
        `| ${placement} | \`${id}\`: ${t.label} | ${sizes
          .map((s) =>
            t.sizes[s]
              ? `${formatNs(t.sizes[s].median)}<br><sub>min ${formatNs(t.sizes[s].min)} · p99 ${formatNs(t.sizes[s].p99)}</sub>`
              : '',
          )
          .join(' | ')} |`,
      )
    }
  }
  return lines.join('\n')
}

export function crossTable(results) {
  const lines = [
    '| placement | peer | 16 B echo: median | min | p99 | 64 MiB known region: median | min | p99 |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const [placement, p] of Object.entries(results.placements ?? {})) {
    const cross = p.cross_language
    if (cross === undefined) continue
    for (const [lang, peer] of Object.entries(cross.peers)) {
      const a = peer.rows.rtt16
      const b = peer.rows.known64m
      lines.push(
        `| ${placement} | Node↔${lang} | ${formatNs(a?.median)} | ${formatNs(a?.min)} | ${formatNs(a?.p99)} | ${formatNs(b?.median)} | ${formatNs(b?.min)} | ${formatNs(b?.p99)} |${peer.error ? ` failed: ${peer.error}` : ''}`,
      )
    }
    for (const [lang, why] of Object.entries(cross.skipped)) {
      lines.push(`| ${placement} | Node↔${lang} | skipped: ${why} | | | | | |`)
    }
  }
  return lines.join('\n')
}

/** The ring ratios (they compare placements) and the ring's idle and throughput figures. */
export function ringTable(results) {
  const lines = ['| ratio | what it divides | target | value | met |', '| --- | --- | --- | ---: | :---: |']
  for (const [key, value] of Object.entries(results.ratios_ring ?? {})) {
    const t = results.targets_ring?.[key]
    const met = t === undefined ? '' : t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'
    const target = t === undefined ? '—' : t.target.replace('<=', '≤').replace('>=', '≥')
    lines.push(`| \`${key}\` | ${RING_DEFINITIONS[key] ?? ''} | ${target} | ${fmtRatio(value)} | ${met} |`)
  }
  lines.push('', '| placement | ring: messages/s | socket: messages/s | ring: idle CPU after | socket: idle CPU after |', '| --- | ---: | ---: | ---: | ---: |')
  for (const [placement, p] of Object.entries(results.placements ?? {})) {
    const idle = p.ring_idle
    if (idle === undefined) continue
    const cpu = (m) => `${m.idle_cpu_percent.toFixed(3)} % (${m.idle_cpu_ms.parent} + ${m.idle_cpu_ms.child} ms)`
    lines.push(
      `| ${placement} | ${idle.ring.messages_per_second.toLocaleString('en-US')} | ${idle.socket.messages_per_second.toLocaleString('en-US')} | ${cpu(idle.ring)} | ${cpu(idle.socket)} |`,
    )
  }
  return lines.join('\n')
}

/** The generated part of docs/BENCHMARKS.md. */
export function resultsSection(results) {
  const m = results.machine
  return [
    `Run: \`${results.command}\` (${results.mode} mode), ${results.finished}, ${results.wall_seconds.toFixed(0)} s wall time.`,
    `Machine: ${m.cpu_model}, ${m.cores} cores (${m.hypervisor === 'none' ? 'bare metal' : `virtual machine, ${m.hypervisor}`}), ${(m.memory_bytes / 2 ** 30).toFixed(0)} GiB, ${m.kernel}, Node ${m.node}, ${m.cc ?? 'cc'}; commit ${m.git_commit?.slice(0, 12) ?? '?'}${m.git_dirty ? ' (with uncommitted changes)' : ''}.`,
    '',
    '### Ratios and targets',
    '',
    ratiosTable(results),
    '',
    'Informative ratios (no target):',
    '',
    extraRatiosTable(results),
    '',
    '### Round trip by transport and size, both processes pinned to one CPU',
    '',
    'Median, with min and p99 below it; max, mean and round counts are in `bench/results/latest.json`.',
    '',
    latencyTable(results, 'pinned'),
    '',
    '### The same, unpinned',
    '',
    latencyTable(results, 'unpinned'),
    '',
    '### The same, split (the driver on CPU 0, every receiving process on CPU 1)',
    '',
    ...(results.mode === 'quick' ? ['A quick run measures only some rows here (`method.split_quick_rows`).', ''] : []),
    latencyTable(results, 'split'),
    '',
    '### C and JavaScript baselines',
    '',
    'The rows later shmlink pool, ring and first-handoff rows are compared against (`baselines` in the JSON). C baselines are C programs (`bench/c/`), not shmlink.',
    '',
    baselinesTable(results),
    '',
    '### First-time handoff in C: populate strategies (64 MiB)',
    '',
    'Median handover (sendmsg → ack; min in brackets), the untimed fill (memfd_create … memcpy) and their sum, per strategy (`bench/c/first.c`).',
    '',
    firstStrategiesTable(results),
    '',
    '### Region creation (create + map + close)',
    '',
    regionTable(results),
    '',
    '### Rings',
    '',
    'Ratios between placements (`ratios_ring`, `targets_ring`), then `ring_idle` of each placement: one-way 16-byte messages per second with awaited sends, and the CPU time of both processes (parent + child) over 5 s of idleness right after.',
    '',
    ringTable(results),
    '',
    '### Node against every peer language (role `echo`)',
    '',
    crossTable(results),
    ...(results.errors.length > 0
      ? ['', '### Errors during the run', '', ...results.errors.map((e) => `- ${e.placement} ${e.transport}: ${e.error}`)]
      : []),
  ].join('\n')
}

// -- prose figures ----------------------------------------------------------------------
// The sentences of README.md ("Speed") and docs/BENCHMARKS.md ("In short") that quote
// figures are generated here from the results, so that every figure they show is one of
// the run in bench/results/latest.json.

const MIB64 = 64 * 2 ** 20

function rowMedian(results, placement, id, size) {
  return results.placements?.[placement]?.transports?.[id]?.sizes?.[size]?.median
}

/** "a ÷ b" as "N×", rounded as the ratio tables round. */
function times(a, b) {
  if (typeof a !== 'number' || typeof b !== 'number' || b === 0) return '–'
  return `${fmtRatio(a / b)}×`
}

function poolFaults(results, placement, id) {
  const f = results.placements?.[placement]?.transports?.[id]?.sizes?.[MIB64]?.minflt_per_frame
  if (typeof f?.producer !== 'number' || typeof f?.consumer !== 'number') return '–'
  return Math.max(f.producer, f.consumer).toFixed(2)
}

/** The "Speed" paragraph of README.md. */
export function readmeSpeed(results) {
  const p = results.ratios_placement ?? 'pinned'
  const m = (id, size) => rowMedian(results, p, id, size)
  const known = m('shmlink-known', MIB64)
  const advanced = m('child_process-advanced', MIB64)
  return [
    `Handing a 64 MiB region the child already knows, with the child reading every page and`,
    `acknowledging, takes ${formatNs(known)} here; \`child_process\` IPC with \`serialization: 'advanced'\``,
    `needs ${formatNs(advanced)} for the same bytes (${times(advanced, known)}). A 16-byte round trip takes`,
    `${formatNs(m('shmlink-inline', 16))} on the event loop (${formatNs(m('shmlink-inline-sync', 16))} with \`recvSync\`), against`,
    `${formatNs(m('child_process-json', 16))} for \`child_process\` IPC and ${formatNs(m('c-seqpacket-inline', 16))} for a C ping-pong over the same`,
    `socket type. Both processes run on one CPU (\`taskset -c 0\`) on a 2-core virtual machine; the`,
    `figures are medians of one \`npm run bench\` run (${results.finished?.slice(0, 10)}, \`bench/results/latest.json\`).`,
  ].join('\n')
}

/** The "In short" list of docs/BENCHMARKS.md. */
export function inShort(results) {
  const p = results.ratios_placement ?? 'pinned'
  const m = (id, size, placement = p) => rowMedian(results, placement, id, size)
  const ns = (id, size, placement = p) => formatNs(m(id, size, placement))
  const known = m('shmlink-known', MIB64)
  const lines = []
  lines.push(
    `- **Handing over 64 MiB that the peer already knows** (only the region's id travels; the receiver reads one byte per 4 KiB page, then acks): **${formatNs(known)}** with shmlink, against ${ns('child_process-advanced', MIB64)} for \`child_process\` with \`serialization: 'advanced'\` (**${times(m('child_process-advanced', MIB64), known)}**), ${ns('child_process-json', MIB64)} for \`'json'\` with base64 (${times(m('child_process-json', MIB64), known)}), ${ns('net-unix', MIB64)} for a \`net\` UNIX stream (${times(m('net-unix', MIB64), known)}), ${ns('worker_threads', MIB64)} for a \`worker_threads\` MessageChannel in the same process (${times(m('worker_threads', MIB64), known)}) and ${ns('memcpy', MIB64)} for a single \`memcpy\` (${times(m('memcpy', MIB64), known)}). The same hand-over in C takes ${ns('c-seqpacket-shared', MIB64)} (shmlink is ${times(known, m('c-seqpacket-shared', MIB64))} that).`,
  )
  lines.push(
    `- **A 16-byte round trip** takes ${ns('shmlink-inline', 16)} with \`await send()\`/\`await recv()\` and ${ns('shmlink-inline-sync', 16)} with \`sendSync()\`/\`recvSync()\`, against ${ns('c-seqpacket-inline', 16)} for the C \`SOCK_SEQPACKET\` ping-pong (${times(m('shmlink-inline', 16), m('c-seqpacket-inline', 16))} and ${times(m('shmlink-inline-sync', 16), m('c-seqpacket-inline', 16))}), ${ns('child_process-json', 16)} for \`child_process\` \`'json'\` and ${ns('child_process-advanced', 16)} for \`'advanced'\`.`,
  )
  lines.push(
    `- **A new 64 MiB region, the first time** (descriptor passed, receiver maps and reads every page): ${ns('shmlink-first', MIB64)} against ${ns('c-first', MIB64)} for the same in C (${times(m('shmlink-first', MIB64), m('c-first', MIB64))}).`,
  )
  lines.push(
    `- **A pooled stream of 64 MiB frames** (\`RegionPool\`, regions handed back): ${ns('shmlink-pool-stream', MIB64)} per frame against ${ns('c-pool-stream', MIB64)} in C (${times(m('shmlink-pool-stream', MIB64), m('c-pool-stream', MIB64))}) and ${ns('memcpy', MIB64)} for one \`memcpy\` of a frame; ${poolFaults(results, p, 'shmlink-pool-stream')} minor page faults per frame in the busier process. The stream's page loops alone, in one JavaScript process without IPC, take ${ns('js-pool-touch', MIB64)} per frame (${times(m('js-pool-touch', MIB64), m('c-pool-stream', MIB64))} the C stream): the rest, ${times(m('shmlink-pool-stream', MIB64), m('js-pool-touch', MIB64))}, is what two processes and shmlink add. Transferring each frame both ways instead costs ${ns('shmlink-pool-stream-transfer', MIB64)} per frame.`,
  )
  lines.push(
    `- **Copy mode** (Electron's memory cage): 64 MiB copied in, handed over and copied out in ${ns('shmlink-copy', MIB64)}, ${times(m('shmlink-copy', MIB64), m('memcpy', MIB64))} one \`memcpy\` and ${times(m('child_process-advanced', MIB64), m('shmlink-copy', MIB64))} faster than \`child_process\` \`'advanced'\`. A 64 KiB inline payload round trip: ${ns('shmlink-inline', 65536)} against ${ns('c-seqpacket-inline', 65536)} in C; with \`recvSync\` ${ns('shmlink-inline-sync', 65536)} (${ns('shmlink-ring-inline-sync', 65536)} through a ring), and ${ns('shmlink-inline-sync-into', 65536)} (${ns('shmlink-ring-inline-sync-into', 65536)}) when \`recvSync({ into })\` receives into a buffer reused for every message.`,
  )
  const create = results.placements?.[p]?.region_create
  const cCreate = create?.['c-region-create']?.sizes?.[2 ** 20]?.median
  const jsCreate = create?.['shmlink-region-create']?.sizes?.[2 ** 20]?.median
  lines.push(
    `- **Creating a 1 MiB region** (create + view + close): ${formatNs(jsCreate)} against ${formatNs(cCreate)} for the same system calls in C (${times(jsCreate, cCreate)}).`,
  )
  const idle = results.placements?.split?.ring_idle
  const ringRatio = results.ratios_ring ?? {}
  lines.push(
    `- **Rings** (\`ring: true\`, each process on its own CPU): a 16-byte round trip takes ${ns('shmlink-ring-inline', 16, 'split')} on the event loop and ${ns('shmlink-ring-inline-sync', 16, 'split')} with \`recvSync\`, against ${ns('shmlink-inline', 16, 'split')} and ${ns('shmlink-inline-sync', 16, 'split')} on the socket in the same placement, ${ns('js-spin', 16, 'split')} for two Node processes spinning on \`Atomics\` and ${ns('c-spin', 16, 'split')} in C. One-way small messages: ${idle ? `${idle.ring.messages_per_second.toLocaleString('en-US')}/s through the ring against ${idle.socket.messages_per_second.toLocaleString('en-US')}/s on the socket` : '–'}; idle after traffic, both processes together use ${typeof ringRatio.ring_idle_cpu_percent === 'number' ? `${ringRatio.ring_idle_cpu_percent.toFixed(3)} %` : '–'} of one CPU (highest placement).`,
  )
  const cross = Object.entries(results.ratios ?? {})
    .filter(([k, v]) => /^overhead_rtt16_node_.*_vs_node_node$/.test(k) && typeof v === 'number')
    .map(([k, v]) => [k.replace(/^overhead_rtt16_node_|_vs_node_node$/g, ''), v])
  if (cross.length > 0) {
    lines.push(
      `- **Other languages**: a 16-byte echo between Node and a peer in another language, as a multiple of the Node↔Node time: ${cross.map(([lang, v]) => `${lang === 'c' ? 'C' : lang[0].toUpperCase() + lang.slice(1)} ${fmtRatio(v)}×`).join(', ')}.`,
    )
  }
  const judged = [...Object.entries(results.targets ?? {}), ...Object.entries(results.targets_ring ?? {})]
  const met = judged.filter(([, t]) => t.met === true).map(([k]) => `\`${k}\``)
  const missed = judged.filter(([, t]) => t.met === false).map(([k]) => `\`${k}\``)
  lines.push(`- **Targets** met: ${met.join(', ') || 'none'}. **Not met**: ${missed.join(', ') || 'none'} (tables under Results).`)
  return lines.join('\n')
}
