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
      : id === 'js-spin'
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
