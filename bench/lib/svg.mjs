// A small SVG writer for the log-log chart of median latency against size.
import { sizeLabel } from './data.mjs'
import { formatNs } from './stats.mjs'

const STYLE = {
  'shmlink-inline': { color: '#1f6feb', width: 3 },
  'shmlink-inline-sync': { color: '#1f6feb', width: 2, dash: '6 3' },
  'shmlink-known': { color: '#0b8a3e', width: 3 },
  'shmlink-known-sync': { color: '#0b8a3e', width: 2, dash: '6 3' },
  'shmlink-first': { color: '#7a3fbf', width: 2.5 },
  'shmlink-copy': { color: '#b35900', width: 2, dash: '2 3' },
  'child_process-json': { color: '#d1242f', width: 2 },
  'child_process-advanced': { color: '#e36209', width: 2 },
  'net-unix': { color: '#9a6700', width: 2 },
  worker_threads: { color: '#bf3989', width: 2 },
  'c-seqpacket-inline': { color: '#57606a', width: 1.5, dash: '2 3' },
  'c-seqpacket-shared': { color: '#24292f', width: 1.5, dash: '2 3' },
  memcpy: { color: '#8c959f', width: 1.5, dash: '8 4' },
  'c-first': { color: '#7a3fbf', width: 1.5, dash: '2 3' },
}

/** Rows that are not a round trip per size (a stream period, single-size spin floors): not drawn. */
const NOT_CHARTED = new Set(['c-pool-stream', 'shmlink-pool-stream', 'shmlink-pool-stream-transfer', 'c-spin', 'js-spin'])

/** Legend text (the JSON has the long labels). */
const SHORT = {
  'shmlink-inline': 'inline payload, await recv()',
  'shmlink-inline-sync': 'inline payload, recvSync()',
  'shmlink-known': 'region already known, await recv()',
  'shmlink-known-sync': 'region already known, recvSync()',
  'shmlink-first': 'new region each time (the fd travels)',
  'shmlink-copy': 'copy mode (Electron): write() in, readInto() out',
  'child_process-json': "fork() IPC, 'json' (data as base64)",
  'child_process-advanced': "fork() IPC, 'advanced'",
  'net-unix': 'net stream over a UNIX socket',
  worker_threads: 'MessageChannel, same process',
  'c-seqpacket-inline': 'C floor: data in the record',
  'c-seqpacket-shared': 'C floor: memfd known to the peer',
  memcpy: 'one memcpy, one process',
  'c-first': 'C baseline: new memfd each time (fd travels)',
}

/** A power of ten of nanoseconds, written plainly: 10 ns, 1 µs, 100 ms, 1 s … */
function tick(exponent) {
  const units = [
    [9, 's'],
    [6, 'ms'],
    [3, 'µs'],
    [0, 'ns'],
  ]
  for (const [e, unit] of units) {
    if (exponent >= e) return `${10 ** (exponent - e)} ${unit}`
  }
  return `${10 ** exponent} ns`
}

/** Drawn last, so on top: the lines this chart is about. */
const ON_TOP = ['shmlink-first', 'shmlink-known-sync', 'shmlink-inline-sync', 'shmlink-known', 'shmlink-inline']

function escape(text) {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/** The chart for one placement of a results object (bench/results/latest.json). */
export function renderChart(results, placement = 'pinned') {
  const p = results.placements?.[placement]
  const transports = p?.transports ?? {}
  const series = []
  for (const [id, t] of Object.entries(transports)) {
    if (NOT_CHARTED.has(id)) continue
    const points = Object.entries(t.sizes)
      .filter(([, s]) => typeof s.median === 'number' && s.median > 0)
      .map(([size, s]) => [Number(size), s.median])
      .sort((a, b) => a[0] - b[0])
    if (points.length > 0) series.push({ id, label: t.label, points })
  }
  const sizes = [...new Set(series.flatMap((s) => s.points.map(([x]) => x)))].sort((a, b) => a - b)
  const ys = series.flatMap((s) => s.points.map(([, y]) => y))
  const W = 1000
  const H = 600
  const left = 78
  const right = 330
  const top = 52
  const bottom = 62
  const plotW = W - left - right
  const plotH = H - top - bottom
  const xMin = Math.log10(sizes[0] ?? 16)
  const xMax = Math.log10(sizes[sizes.length - 1] ?? 256 * 1024 * 1024)
  const yMin = Math.floor(Math.log10(Math.max(1, Math.min(...ys, 1e3))))
  const yMax = Math.ceil(Math.log10(Math.max(...ys, 1e4)))
  const x = (size) => left + ((Math.log10(size) - xMin) / (xMax - xMin || 1)) * plotW
  const y = (ns) => top + plotH - ((Math.log10(ns) - yMin) / (yMax - yMin || 1)) * plotH
  const out = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif" font-size="12">`,
  )
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`)
  const machine = results.machine ?? {}
  out.push(
    `<text x="${left}" y="22" font-size="16" font-weight="600" fill="#24292f">Handing a buffer to another process: median time until the receiver has touched it and acked</text>`,
  )
  out.push(
    `<text x="${left}" y="40" fill="#57606a">${escape(
      `${{ pinned: 'both processes pinned to CPU 0', split: 'sender on CPU 0, receiver on CPU 1' }[placement] ?? 'unpinned'} · ${machine.cpu_model ?? ''}, ${machine.cores ?? '?'} cores · Linux ${machine.kernel?.split(' ')[1] ?? ''} · Node ${machine.node ?? ''} · ${results.mode ?? ''} run ${results.finished?.slice(0, 10) ?? ''}`,
    )}</text>`,
  )
  // grid and axes
  for (let e = yMin; e <= yMax; e++) {
    const yy = y(10 ** e)
    out.push(`<line x1="${left}" y1="${yy}" x2="${left + plotW}" y2="${yy}" stroke="#d0d7de" stroke-width="1"/>`)
    out.push(`<text x="${left - 8}" y="${yy + 4}" text-anchor="end" fill="#57606a">${tick(e)}</text>`)
    if (e < yMax) {
      for (const m of [2, 5]) {
        const ym = y(m * 10 ** e)
        out.push(`<line x1="${left}" y1="${ym}" x2="${left + plotW}" y2="${ym}" stroke="#eaeef2" stroke-width="1"/>`)
      }
    }
  }
  let lastLabel = -Infinity
  let lowered = false
  for (const size of sizes) {
    const xx = x(size)
    lowered = xx - lastLabel < 56 && !lowered
    lastLabel = xx
    out.push(`<line x1="${xx}" y1="${top}" x2="${xx}" y2="${top + plotH}" stroke="#eaeef2" stroke-width="1"/>`)
    out.push(
      `<text x="${xx}" y="${top + plotH + (lowered ? 31 : 18)}" text-anchor="middle" fill="#57606a">${sizeLabel(size)}</text>`,
    )
  }
  out.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#8c959f"/>`)
  out.push(
    `<text x="${left + plotW / 2}" y="${H - 10}" text-anchor="middle" fill="#24292f">size handed over (log scale)</text>`,
  )
  out.push(
    `<text transform="translate(18 ${top + plotH / 2}) rotate(-90)" text-anchor="middle" fill="#24292f">median round trip (log scale)</text>`,
  )
  // series: lines (shmlink last, on top), then the legend in table order
  const style = (id) => STYLE[id] ?? { color: '#444', width: 1.5 }
  const dashOf = (st) => (st.dash ? ` stroke-dasharray="${st.dash}"` : '')
  const drawOrder = [...series].sort((a, b) => ON_TOP.indexOf(a.id) - ON_TOP.indexOf(b.id))
  for (const s of drawOrder) {
    const st = style(s.id)
    const d = s.points.map(([sx, sy], k) => `${k === 0 ? 'M' : 'L'}${x(sx).toFixed(1)},${y(sy).toFixed(1)}`).join(' ')
    out.push(`<path d="${d}" fill="none" stroke="${st.color}" stroke-width="${st.width}"${dashOf(st)} stroke-linejoin="round"/>`)
    for (const [sx, sy] of s.points) {
      out.push(
        `<circle cx="${x(sx).toFixed(1)}" cy="${y(sy).toFixed(1)}" r="${st.width >= 2.5 ? 3.5 : 2.5}" fill="${st.color}"><title>${escape(`${s.id} ${sizeLabel(sx)}: ${formatNs(sy)}`)}</title></circle>`,
      )
    }
  }
  series.forEach((s, i) => {
    const st = style(s.id)
    const dash = dashOf(st)
    const ly = top + 8 + i * 36
    const lx = left + plotW + 18
    out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="${st.color}" stroke-width="${st.width}"${dash}/>`)
    out.push(`<text x="${lx + 36}" y="${ly + 4}" fill="#24292f" font-weight="600">${escape(s.id)}</text>`)
    out.push(`<text x="${lx + 36}" y="${ly + 18}" fill="#57606a" font-size="10.5">${escape(SHORT[s.id] ?? s.label)}</text>`)
  })
  out.push('</svg>')
  return `${out.join('\n')}\n`
}
