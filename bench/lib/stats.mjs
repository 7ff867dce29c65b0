// Summary statistics over latency samples in nanoseconds.

/** Sorted copy of `samples`. */
function sorted(samples) {
  return Float64Array.from(samples).sort()
}

/** The q-quantile (0..1) of sorted values, linear interpolation between order statistics. */
export function quantile(values, q) {
  if (values.length === 0) return NaN
  const pos = (values.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return values[lo] + (values[hi] - values[lo]) * (pos - lo)
}

/** { n, min, median, p99, max, mean } in nanoseconds (rounded to 1 ns). */
export function summarize(samples) {
  const v = sorted(samples)
  if (v.length === 0) return { n: 0, min: null, median: null, p99: null, max: null, mean: null }
  let total = 0
  for (const x of v) total += x
  const r = (x) => Math.round(x)
  return {
    n: v.length,
    min: r(v[0]),
    median: r(quantile(v, 0.5)),
    p99: r(quantile(v, 0.99)),
    max: r(v[v.length - 1]),
    mean: r(total / v.length),
  }
}

/** Human-readable duration from nanoseconds. */
export function formatNs(ns) {
  if (ns === null || ns === undefined || Number.isNaN(ns)) return '–'
  if (ns < 1e3) return `${ns.toFixed(0)} ns`
  if (ns < 1e6) return `${(ns / 1e3).toFixed(ns < 1e4 ? 2 : 1)} µs`
  if (ns < 1e9) return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`
  return `${(ns / 1e9).toFixed(2)} s`
}
