// The headline ratios, each a quotient of two medians from the same run and placement.
import { MiB } from './data.mjs'

export const CROSS_LANGUAGES = ['rust', 'go', 'python', 'c']

/** Targets from the benchmark issue: [key, comparison, bound]. */
export const TARGETS = [
  ['overhead_rtt16_vs_c_floor', '<=', 1.3],
  ['overhead_rtt16_sync_vs_c_floor', '<=', 1.1],
  ['speedup_rtt16_vs_cp_json', '>=', 1.4],
  ['speedup_handoff64m_vs_cp_advanced', '>=', 1000],
  ['overhead_handoff64m_vs_rtt16', '<=', 1.2],
  ['overhead_region_create_vs_c', '<=', 1.5],
  ...CROSS_LANGUAGES.map((lang) => [`overhead_rtt16_node_${lang}_vs_node_node`, '<=', 1.2]),
]

/** What each ratio divides, for the JSON and the docs. */
export const DEFINITIONS = {
  overhead_rtt16_vs_c_floor: 'shmlink-inline 16 B ÷ c-seqpacket-inline 16 B (median round trip)',
  overhead_rtt16_sync_vs_c_floor: 'shmlink-inline-sync 16 B ÷ c-seqpacket-inline 16 B',
  speedup_rtt16_vs_cp_json: 'child_process-json 16 B ÷ shmlink-inline 16 B',
  speedup_handoff64m_vs_cp_advanced: 'child_process-advanced 64 MiB ÷ shmlink-known 64 MiB',
  overhead_handoff64m_vs_rtt16: 'shmlink-known 64 MiB ÷ shmlink-inline 16 B',
  overhead_region_create_vs_c: 'shmlink-region-create 1 MiB ÷ c-region-create 1 MiB',
  ...Object.fromEntries(
    CROSS_LANGUAGES.map((lang) => [
      `overhead_rtt16_node_${lang}_vs_node_node`,
      `Node↔${lang} 16 B echo ÷ Node↔Node 16 B echo`,
    ]),
  ),
  // informative
  c_floor_handoff64m_vs_rtt16: 'c-seqpacket-shared 64 MiB ÷ c-seqpacket-inline 16 B: the same quotient as overhead_handoff64m_vs_rtt16, for C',
  overhead_handoff64m_vs_c_floor: 'shmlink-known 64 MiB ÷ c-seqpacket-shared 64 MiB',
  overhead_handoff64m_sync_vs_c_floor: 'shmlink-known-sync 64 MiB ÷ c-seqpacket-shared 64 MiB',
  speedup_rtt16_sync_vs_cp_json: 'child_process-json 16 B ÷ shmlink-inline-sync 16 B',
  speedup_rtt16_vs_cp_advanced: 'child_process-advanced 16 B ÷ shmlink-inline 16 B',
  speedup_handoff64m_vs_net: 'net-unix 64 MiB ÷ shmlink-known 64 MiB',
  speedup_handoff64m_vs_memcpy: 'memcpy 64 MiB ÷ shmlink-known 64 MiB',
  overhead_first_handoff64m_vs_known: 'shmlink-first 64 MiB ÷ shmlink-known 64 MiB',
  overhead_region_create_no_view_vs_c: 'shmlink-region-create-no-view 1 MiB ÷ c-region-create 1 MiB',
  ...Object.fromEntries(
    CROSS_LANGUAGES.map((lang) => [
      `overhead_handoff64m_node_${lang}_vs_node_node`,
      `Node↔${lang} 64 MiB known-region echo ÷ Node↔Node`,
    ]),
  ),
}

function median(table, id, size) {
  const row = table?.[id]?.sizes?.[size]
  return typeof row?.median === 'number' ? row.median : undefined
}

function quotient(a, b) {
  if (a === undefined || b === undefined || b === 0) return null
  return Math.round((a / b) * 1000) / 1000
}

/** { ratios, extra } for one placement's results. */
export function computeRatios(p) {
  const t = p?.transports
  const r = p?.region_create
  const cross = p?.cross_language?.peers ?? {}
  const crossMedian = (lang, row) => cross[lang]?.rows?.[row]?.median
  const M64 = 64 * MiB
  const ratios = {
    overhead_rtt16_vs_c_floor: quotient(median(t, 'shmlink-inline', 16), median(t, 'c-seqpacket-inline', 16)),
    overhead_rtt16_sync_vs_c_floor: quotient(median(t, 'shmlink-inline-sync', 16), median(t, 'c-seqpacket-inline', 16)),
    speedup_rtt16_vs_cp_json: quotient(median(t, 'child_process-json', 16), median(t, 'shmlink-inline', 16)),
    speedup_handoff64m_vs_cp_advanced: quotient(median(t, 'child_process-advanced', M64), median(t, 'shmlink-known', M64)),
    overhead_handoff64m_vs_rtt16: quotient(median(t, 'shmlink-known', M64), median(t, 'shmlink-inline', 16)),
    overhead_region_create_vs_c: quotient(median(r, 'shmlink-region-create', MiB), median(r, 'c-region-create', MiB)),
  }
  const extra = {
    c_floor_handoff64m_vs_rtt16: quotient(median(t, 'c-seqpacket-shared', M64), median(t, 'c-seqpacket-inline', 16)),
    overhead_handoff64m_vs_c_floor: quotient(median(t, 'shmlink-known', M64), median(t, 'c-seqpacket-shared', M64)),
    overhead_handoff64m_sync_vs_c_floor: quotient(median(t, 'shmlink-known-sync', M64), median(t, 'c-seqpacket-shared', M64)),
    speedup_rtt16_sync_vs_cp_json: quotient(median(t, 'child_process-json', 16), median(t, 'shmlink-inline-sync', 16)),
    speedup_rtt16_vs_cp_advanced: quotient(median(t, 'child_process-advanced', 16), median(t, 'shmlink-inline', 16)),
    speedup_handoff64m_vs_net: quotient(median(t, 'net-unix', M64), median(t, 'shmlink-known', M64)),
    speedup_handoff64m_vs_memcpy: quotient(median(t, 'memcpy', M64), median(t, 'shmlink-known', M64)),
    overhead_first_handoff64m_vs_known: quotient(median(t, 'shmlink-first', M64), median(t, 'shmlink-known', M64)),
    overhead_region_create_no_view_vs_c: quotient(
      median(r, 'shmlink-region-create-no-view', MiB),
      median(r, 'c-region-create', MiB),
    ),
  }
  for (const lang of CROSS_LANGUAGES) {
    ratios[`overhead_rtt16_node_${lang}_vs_node_node`] = quotient(crossMedian(lang, 'rtt16'), crossMedian('node', 'rtt16'))
    extra[`overhead_handoff64m_node_${lang}_vs_node_node`] = quotient(
      crossMedian(lang, 'known64m'),
      crossMedian('node', 'known64m'),
    )
  }
  return { ratios, extra }
}

export function judgeTargets(ratios) {
  const out = {}
  for (const [key, op, bound] of TARGETS) {
    const value = ratios[key]
    out[key] = {
      target: `${op} ${bound}`,
      value,
      met: value === null || value === undefined ? null : op === '<=' ? value <= bound : value >= bound,
    }
  }
  return out
}
