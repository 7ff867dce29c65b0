// Writes what the documentation shows of a run: docs/benchmarks.svg, and the generated
// parts of docs/BENCHMARKS.md (results, "In short") and README.md ("Speed"), each between
// `<!-- NAME:begin … -->` and `<!-- NAME:end -->` markers. bench/run.mjs calls it after a
// full run (or with --docs); `node bench/docs.mjs [results.json]` rewrites them from a
// results file.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { inShort, readmeSpeed, resultsSection } from './report.mjs'
import { renderChart } from './svg.mjs'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

/** Replaces what lies between the NAME markers of `file`; false when they are missing. */
function replaceBetween(file, name, text) {
  const doc = fs.readFileSync(file, 'utf8')
  const begin = new RegExp(`<!-- ${name}:begin[^>]*-->`).exec(doc)
  const end = doc.indexOf(`<!-- ${name}:end -->`)
  if (begin === null || end < begin.index) return false
  const from = begin.index + begin[0].length
  fs.writeFileSync(file, `${doc.slice(0, from)}\n${text}\n${doc.slice(end)}`)
  return true
}

export function writeDocsFrom(results, primary, say = console.log) {
  fs.writeFileSync(path.join(ROOT, 'docs', 'benchmarks.svg'), renderChart(results, primary))
  const benchmarks = path.join(ROOT, 'docs', 'BENCHMARKS.md')
  const readme = path.join(ROOT, 'README.md')
  const written = ['docs/benchmarks.svg']
  const missing = []
  for (const [file, name, text] of [
    [benchmarks, 'results', resultsSection(results)],
    [benchmarks, 'in-short', inShort(results)],
    [readme, 'speed', readmeSpeed(results)],
  ]) {
    const label = `${path.relative(ROOT, file)} (${name})`
    if (replaceBetween(file, name, text)) written.push(label)
    else missing.push(label)
  }
  say(`wrote ${written.join(', ')}${missing.length > 0 ? `; no markers in ${missing.join(', ')}, left alone` : ''}`)
}
