#!/usr/bin/env node
// Redraws the chart from a results file without measuring anything:
//   node bench/chart.mjs [bench/results/latest.json] [docs/benchmarks.svg] [pinned|unpinned|split]
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { renderChart } from './lib/svg.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const [input = path.join(root, 'bench/results/latest.json'), output = path.join(root, 'docs/benchmarks.svg'), placement] =
  process.argv.slice(2)
const results = JSON.parse(fs.readFileSync(input, 'utf8'))
fs.writeFileSync(output, renderChart(results, placement ?? results.ratios_placement ?? 'pinned'))
console.log(`wrote ${output}`)
