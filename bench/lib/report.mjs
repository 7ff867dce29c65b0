// Markdown tables from a results object, for docs/BENCHMARKS.md and the console.
import { sizeLabel } from './data.mjs'
import { DEFINITIONS } from './ratios.mjs'
import { formatNs } from './stats.mjs'

function fmtRatio(v) {
  if (v === null || v === undefined) return '–'
  if (v >= 100) return v.toFixed(0)
  if (v >= 10) return v.toFixed(1)
  return v.toFixed(2)
}

export function ratiosTable(results) {
  const lines = [
    '| ratio | what it divides (medians) | target | pinned | met | unpinned |',
    '| --- | --- | --- | ---: | :---: | ---: |',
  ]
  for (const [key, t] of Object.entries(results.targets)) {
    const met = t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'
    lines.push(
      `| \`${key}\` | ${DEFINITIONS[key] ?? ''} | ${t.target.replace('<=', '≤').replace('>=', '≥')} | ${fmtRatio(t.value)} | ${met} | ${fmtRatio(results.ratios_unpinned?.[key])} |`,
    )
  }
  return lines.join('\n')
}

export function extraRatiosTable(results) {
  const lines = ['| ratio | what it divides (medians) | pinned | unpinned |', '| --- | --- | ---: | ---: |']
  for (const [key, value] of Object.entries(results.ratios_extra ?? {})) {
    lines.push(`| \`${key}\` | ${DEFINITIONS[key] ?? ''} | ${fmtRatio(value)} | ${fmtRatio(results.ratios_extra_unpinned?.[key])} |`)
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
    lines.push(`| \`${id}\` | ${cells.join(' | ')} |`)
  }
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
    '### Region creation (create + map + close)',
    '',
    regionTable(results),
    '',
    '### Node against every peer language (role `echo`)',
    '',
    crossTable(results),
    ...(results.errors.length > 0
      ? ['', '### Errors during the run', '', ...results.errors.map((e) => `- ${e.placement} ${e.transport}: ${e.error}`)]
      : []),
  ].join('\n')
}
