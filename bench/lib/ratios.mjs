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
  ['overhead_first64m_vs_c_first', '<=', 1.3],
  ['overhead_known64m_vs_c_known', '<=', 1.5],
  ['overhead_inline64k_vs_c', '<=', 2.0],
  ['overhead_pool_stream64m_vs_c', '<=', 1.5],
  ['pool_stream64m_minor_faults_per_frame', '<=', 1],
  ...CROSS_LANGUAGES.map((lang) => [`overhead_rtt16_node_${lang}_vs_node_node`, '<=', 1.2]),
]

/** Ring targets (issue 14), across placements: [key, comparison, bound]. */
export const RING_TARGETS = [
  ['overhead_ring_rtt16_sync_split_vs_js_spin', '<=', 4],
  ['speedup_ring_rtt16_loop_split_vs_c_socket_pinned', '>=', 2],
  ['overhead_ring_rtt16_pinned_vs_socket_pinned', '<=', 1.25],
  ['ring_idle_cpu_percent', '<=', 1],
]

export const RING_DEFINITIONS = {
  overhead_ring_rtt16_sync_split_vs_js_spin: 'shmlink-ring-inline-sync 16 B ÷ js-spin 16 B, both in the split placement',
  overhead_ring_rtt16_sync_split_vs_c_spin: 'shmlink-ring-inline-sync 16 B ÷ c-spin 16 B, both in the split placement',
  overhead_ring_rtt16_sync_into_split_vs_js_spin: 'shmlink-ring-inline-sync-into 16 B ÷ js-spin 16 B, both in the split placement: recvSync into a reused buffer',
  speedup_ring_rtt16_loop_split_vs_c_socket_pinned: 'c-seqpacket-inline 16 B in the pinned placement ÷ shmlink-ring-inline 16 B in the split placement',
  overhead_ring_rtt16_pinned_vs_socket_pinned: 'shmlink-ring-inline 16 B ÷ shmlink-inline 16 B, both in the pinned placement',
  ring_idle_cpu_percent: 'CPU time of both processes over 5 s of idleness right after a stream of 16-byte messages through the ring, as a percent of one CPU; the highest of the placements measured (ring_idle in each placement)',
  ...Object.fromEntries(
    ['pinned', 'unpinned', 'split'].map((name) => [
      `ring_throughput_vs_socket_${name}`,
      `one-way 16-byte messages per second (await send), ring ÷ socket, ${name} placement`,
    ]),
  ),
}

/** The ring ratios of a run's placements; null where a row did not run. */
export function ringRatios(placements) {
  const split = placements?.split?.transports
  const pinned = placements?.pinned?.transports
  return {
    overhead_ring_rtt16_sync_split_vs_js_spin: quotient(median(split, 'shmlink-ring-inline-sync', 16), median(split, 'js-spin', 16)),
    overhead_ring_rtt16_sync_split_vs_c_spin: quotient(median(split, 'shmlink-ring-inline-sync', 16), median(split, 'c-spin', 16)),
    overhead_ring_rtt16_sync_into_split_vs_js_spin: quotient(median(split, 'shmlink-ring-inline-sync-into', 16), median(split, 'js-spin', 16)),
    speedup_ring_rtt16_loop_split_vs_c_socket_pinned: quotient(median(pinned, 'c-seqpacket-inline', 16), median(split, 'shmlink-ring-inline', 16)),
    overhead_ring_rtt16_pinned_vs_socket_pinned: quotient(median(pinned, 'shmlink-ring-inline', 16), median(pinned, 'shmlink-inline', 16)),
    ring_idle_cpu_percent: worstIdle(placements),
    ...Object.fromEntries(
      ['pinned', 'unpinned', 'split'].map((name) => {
        const idle = placements?.[name]?.ring_idle
        return [`ring_throughput_vs_socket_${name}`, quotient(idle?.ring?.messages_per_second, idle?.socket?.messages_per_second)]
      }),
    ),
  }
}

/** The highest idle CPU percent with rings on, over the placements measured. */
function worstIdle(placements) {
  const values = Object.values(placements ?? {})
    .map((p) => p?.ring_idle?.ring?.idle_cpu_percent)
    .filter((v) => typeof v === 'number')
  return values.length === 0 ? null : Math.max(...values)
}

/** What each ratio divides, for the JSON and the docs. */
export const DEFINITIONS = {
  overhead_rtt16_vs_c_floor: 'shmlink-inline 16 B ÷ c-seqpacket-inline 16 B (median round trip)',
  overhead_rtt16_sync_vs_c_floor: 'shmlink-inline-sync 16 B ÷ c-seqpacket-inline 16 B',
  speedup_rtt16_vs_cp_json: 'child_process-json 16 B ÷ shmlink-inline 16 B',
  speedup_handoff64m_vs_cp_advanced: 'child_process-advanced 64 MiB ÷ shmlink-known 64 MiB',
  overhead_handoff64m_vs_rtt16: 'shmlink-known 64 MiB ÷ shmlink-inline 16 B',
  overhead_region_create_vs_c: 'shmlink-region-create 1 MiB ÷ c-region-create 1 MiB',
  overhead_known64m_vs_c_known: 'shmlink-known 64 MiB ÷ c-seqpacket-shared 64 MiB: a region the peer knows, handed over and read, against the same in C',
  overhead_inline64k_vs_c: 'shmlink-inline 64 KiB ÷ c-seqpacket-inline 64 KiB: the largest inline payload, round trip',
  overhead_pool_stream64m_vs_c: 'shmlink-pool-stream 64 MiB ÷ c-pool-stream 64 MiB: time per frame of a pooled stream (regions sent without transfer and sent back, as c-pool-stream hands back indices) against the same in C',
  pool_stream64m_minor_faults_per_frame: 'minor page faults per frame of shmlink-pool-stream 64 MiB, the larger of producer and consumer',
  overhead_pool_stream64m_transfer_vs_c: 'shmlink-pool-stream-transfer 64 MiB ÷ c-pool-stream 64 MiB: the pooled stream with each frame transferred each way (views detached and re-created: V8 collects garbage about once per 64 MiB view)',
  overhead_copy64m_vs_memcpy: 'shmlink-copy 64 MiB ÷ memcpy 64 MiB: copy mode (Electron) costs two copies, one on each side, plus a hand-over',
  speedup_copy64m_vs_cp_advanced: 'child_process-advanced 64 MiB ÷ shmlink-copy 64 MiB: copy mode against Node\'s own IPC with structured clone',
  pool_stream64m_vs_memcpy: 'shmlink-pool-stream 64 MiB (time per frame) ÷ memcpy 64 MiB',
  pool_stream64m_transfer_vs_memcpy: 'shmlink-pool-stream-transfer 64 MiB (time per frame) ÷ memcpy 64 MiB',
  pool_stream64m_transfer_minor_faults_per_frame: 'minor page faults per frame of shmlink-pool-stream-transfer 64 MiB, the larger of producer and consumer',
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
  overhead_inline64k_sync_vs_c: 'shmlink-inline-sync 64 KiB ÷ c-seqpacket-inline 64 KiB: recvSync copies each payload into a new Buffer',
  overhead_inline64k_sync_into_vs_c: 'shmlink-inline-sync-into 64 KiB ÷ c-seqpacket-inline 64 KiB: recvSync into a reused buffer',
  speedup_rtt16_sync_vs_cp_json: 'child_process-json 16 B ÷ shmlink-inline-sync 16 B',
  speedup_rtt16_vs_cp_advanced: 'child_process-advanced 16 B ÷ shmlink-inline 16 B',
  speedup_handoff64m_vs_net: 'net-unix 64 MiB ÷ shmlink-known 64 MiB',
  speedup_handoff64m_vs_memcpy: 'memcpy 64 MiB ÷ shmlink-known 64 MiB',
  overhead_first_handoff64m_vs_known: 'shmlink-first 64 MiB ÷ shmlink-known 64 MiB',
  overhead_region_create_no_view_vs_c: 'shmlink-region-create-no-view 1 MiB ÷ c-region-create 1 MiB',
  overhead_first64m_vs_c_first: 'shmlink-first 64 MiB ÷ c-first 64 MiB: a first-time handoff against the same in C',
  c_first64m_vs_c_known64m: 'c-first 64 MiB ÷ c-seqpacket-shared 64 MiB: the same quotient as overhead_first_handoff64m_vs_known, for C',
  c_pool_stream64m_vs_memcpy: 'c-pool-stream 64 MiB (time per frame) ÷ memcpy 64 MiB',
  overhead_pool_stream64m_vs_js_touch: 'shmlink-pool-stream 64 MiB ÷ js-pool-touch 64 MiB: what two processes and shmlink add to the stream\'s JavaScript page loops',
  js_pool_touch64m_vs_c_pool_stream: 'js-pool-touch 64 MiB ÷ c-pool-stream 64 MiB: the stream\'s page loops alone, in JavaScript, against the whole C stream',
  c_spin_vs_c_seqpacket_rtt16: 'c-spin 16 B ÷ c-seqpacket-inline 16 B: busy-wait against a socket wake-up, in C',
  js_spin_vs_c_spin_rtt16: 'js-spin 16 B ÷ c-spin 16 B: the JavaScript busy-wait against the C one',
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

/** The larger of producer's and consumer's minor faults per frame of a pooled-stream row. */
function faultsPerFrame(table, id, size) {
  const faults = table?.[id]?.sizes?.[size]?.minflt_per_frame
  if (typeof faults?.producer !== 'number' || typeof faults?.consumer !== 'number') return null
  return Math.round(Math.max(faults.producer, faults.consumer) * 1000) / 1000
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
    overhead_first64m_vs_c_first: quotient(median(t, 'shmlink-first', M64), median(t, 'c-first', M64)),
    overhead_known64m_vs_c_known: quotient(median(t, 'shmlink-known', M64), median(t, 'c-seqpacket-shared', M64)),
    overhead_inline64k_vs_c: quotient(median(t, 'shmlink-inline', 64 * 1024), median(t, 'c-seqpacket-inline', 64 * 1024)),
    overhead_pool_stream64m_vs_c: quotient(median(t, 'shmlink-pool-stream', M64), median(t, 'c-pool-stream', M64)),
    pool_stream64m_minor_faults_per_frame: faultsPerFrame(t, 'shmlink-pool-stream', M64),
  }
  const extra = {
    c_floor_handoff64m_vs_rtt16: quotient(median(t, 'c-seqpacket-shared', M64), median(t, 'c-seqpacket-inline', 16)),
    overhead_handoff64m_vs_c_floor: quotient(median(t, 'shmlink-known', M64), median(t, 'c-seqpacket-shared', M64)),
    overhead_handoff64m_sync_vs_c_floor: quotient(median(t, 'shmlink-known-sync', M64), median(t, 'c-seqpacket-shared', M64)),
    overhead_inline64k_sync_vs_c: quotient(median(t, 'shmlink-inline-sync', 64 * 1024), median(t, 'c-seqpacket-inline', 64 * 1024)),
    overhead_inline64k_sync_into_vs_c: quotient(median(t, 'shmlink-inline-sync-into', 64 * 1024), median(t, 'c-seqpacket-inline', 64 * 1024)),
    speedup_rtt16_sync_vs_cp_json: quotient(median(t, 'child_process-json', 16), median(t, 'shmlink-inline-sync', 16)),
    speedup_rtt16_vs_cp_advanced: quotient(median(t, 'child_process-advanced', 16), median(t, 'shmlink-inline', 16)),
    speedup_handoff64m_vs_net: quotient(median(t, 'net-unix', M64), median(t, 'shmlink-known', M64)),
    speedup_handoff64m_vs_memcpy: quotient(median(t, 'memcpy', M64), median(t, 'shmlink-known', M64)),
    overhead_first_handoff64m_vs_known: quotient(median(t, 'shmlink-first', M64), median(t, 'shmlink-known', M64)),
    overhead_region_create_no_view_vs_c: quotient(
      median(r, 'shmlink-region-create-no-view', MiB),
      median(r, 'c-region-create', MiB),
    ),
    overhead_pool_stream64m_transfer_vs_c: quotient(median(t, 'shmlink-pool-stream-transfer', M64), median(t, 'c-pool-stream', M64)),
    overhead_copy64m_vs_memcpy: quotient(median(t, 'shmlink-copy', M64), median(t, 'memcpy', M64)),
    speedup_copy64m_vs_cp_advanced: quotient(median(t, 'child_process-advanced', M64), median(t, 'shmlink-copy', M64)),
    pool_stream64m_vs_memcpy: quotient(median(t, 'shmlink-pool-stream', M64), median(t, 'memcpy', M64)),
    pool_stream64m_transfer_vs_memcpy: quotient(median(t, 'shmlink-pool-stream-transfer', M64), median(t, 'memcpy', M64)),
    pool_stream64m_transfer_minor_faults_per_frame: faultsPerFrame(t, 'shmlink-pool-stream-transfer', M64),
    c_first64m_vs_c_known64m: quotient(median(t, 'c-first', M64), median(t, 'c-seqpacket-shared', M64)),
    c_pool_stream64m_vs_memcpy: quotient(median(t, 'c-pool-stream', M64), median(t, 'memcpy', M64)),
    overhead_pool_stream64m_vs_js_touch: quotient(median(t, 'shmlink-pool-stream', M64), median(t, 'js-pool-touch', M64)),
    js_pool_touch64m_vs_c_pool_stream: quotient(median(t, 'js-pool-touch', M64), median(t, 'c-pool-stream', M64)),
    c_spin_vs_c_seqpacket_rtt16: quotient(median(t, 'c-spin', 16), median(t, 'c-seqpacket-inline', 16)),
    js_spin_vs_c_spin_rtt16: quotient(median(t, 'js-spin', 16), median(t, 'c-spin', 16)),
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

export function judgeTargets(ratios, targets = TARGETS) {
  const out = {}
  for (const [key, op, bound] of targets) {
    const value = ratios[key]
    out[key] = {
      target: `${op} ${bound}`,
      value,
      met: value === null || value === undefined ? null : op === '<=' ? value <= bound : value >= bound,
    }
  }
  return out
}

/**
 * The baselines that later rows are measured against, per placement: `baselines` in
 * bench/results/latest.json. Keys are stable (docs/BENCHMARKS.md lists them); each entry
 * names the transport row and size it summarizes, and a placement where the row did not
 * run is absent or carries `skipped`.
 */
export const BASELINE_ROWS = {
  c_first64m: { transport: 'c-first', size: 64 * MiB, what: 'C first-time handoff of 64 MiB: sendmsg of a new sealed memfd until the ack, the receiver maps it and reads every page (creation and fill untimed, reported as fill)' },
  c_pool_stream64m: { transport: 'c-pool-stream', size: 64 * MiB, what: 'C pooled stream, 3 × 64 MiB regions mapped once: time per frame (producer writes one byte per page, consumer reads one per page and hands the index back)' },
  js_pool_touch64m: { transport: 'js-pool-touch', size: 64 * MiB, what: 'JavaScript floor of the pooled stream: its page loops on 3 × 64 MiB regions in one process, no IPC; time per frame' },
  c_spin_rtt16: { transport: 'c-spin', size: 16, what: 'C busy-wait round trip of 16 bytes through shared memory (acquire/release, one cache line per direction)' },
  js_spin_rtt16: { transport: 'js-spin', size: 16, what: 'JavaScript busy-wait round trip of 16 bytes over a shmlink region (Atomics.load/store)' },
  c_seqpacket_rtt16: { transport: 'c-seqpacket-inline', size: 16, what: 'C SOCK_SEQPACKET ping-pong, 16 bytes (blocking send/recv)' },
  c_seqpacket_known64m: { transport: 'c-seqpacket-shared', size: 64 * MiB, what: 'C SOCK_SEQPACKET ping-pong naming a 64 MiB memfd known to the peer, which reads one byte per page' },
}

const EXTRA_FIELDS = ['strategy', 'fill', 'total', 'recv_minflt', 'latency', 'minflt_per_frame', 'spin_limit', 'yields_per_round', 'nap_after', 'naps_per_round', 'batch', 'count', 'depth']

export function baselinesSummary(placements) {
  const out = {}
  for (const [key, row] of Object.entries(BASELINE_ROWS)) {
    const entry = { transport: row.transport, size: row.size, what: row.what, placements: {} }
    for (const [name, p] of Object.entries(placements ?? {})) {
      const t = p?.transports?.[row.transport]
      if (t === undefined) continue
      if (t.skipped !== undefined) {
        entry.placements[name] = { skipped: t.skipped }
        continue
      }
      const s = t.sizes?.[row.size]
      if (s === undefined) continue
      if (s.error !== undefined) {
        entry.placements[name] = { error: s.error }
        continue
      }
      const e = { median: s.median, min: s.min, p99: s.p99, n: s.n }
      for (const f of EXTRA_FIELDS) {
        const v = s[f] ?? t[f]
        if (v === undefined) continue
        e[f] = v !== null && typeof v === 'object' && 'median' in v ? { median: v.median, min: v.min, p99: v.p99 } : v
      }
      entry.placements[name] = e
    }
    out[key] = entry
  }
  // The best C socket placement, for ratios that compare against the best C can do.
  const socket = Object.entries(out.c_seqpacket_rtt16.placements).filter(([, v]) => typeof v.median === 'number')
  const best = socket.reduce((a, b) => (b[1].median < a[1].median ? b : a), socket[0])
  out.c_seqpacket_rtt16_best = best ? { placement: best[0], median: best[1].median, min: best[1].min } : null
  out.first_strategies = Object.fromEntries(
    Object.entries(placements ?? {})
      .filter(([, p]) => p?.first_strategies?.combinations !== undefined)
      .map(([name, p]) => [
        name,
        {
          default: p.first_strategies.default,
          best_by_handover: p.first_strategies.best_by_handover,
          best_by_total: p.first_strategies.best_by_total,
        },
      ]),
  )
  return out
}
