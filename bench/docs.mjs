// Rewrites docs/benchmarks.svg and the generated parts of docs/BENCHMARKS.md and README.md
// from a results file (default bench/results/latest.json), without measuring anything.
//   node bench/docs.mjs [results.json]
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { writeDocsFrom } from './lib/docs.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const file = process.argv[2] ?? path.join(here, 'results', 'latest.json')
const results = JSON.parse(fs.readFileSync(file, 'utf8'))
writeDocsFrom(results, results.ratios_placement ?? 'pinned')
