#!/usr/bin/env node
'use strict'
// Writes index.d.mts, the types of the ESM entry (index.mjs), from index.d.ts, which tsc
// emits for the CommonJS build: the same declarations, with ESM import paths, and the
// module itself as the default export.
//
// It is a copy rather than `export * from './index.js'` because, wherever the package is
// consumed from its source tree (npm link, a file: dependency), TypeScript would resolve
// './index.js' to index.ts and type-check the implementation with the consumer's
// settings. Nothing here refers to a .ts file.
const { readFileSync, writeFileSync } = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
const declarations = readFileSync(path.join(root, 'index.d.ts'), 'utf8').replace(/from '\.\/binding'/g, "from './binding.js'")
writeFileSync(
  path.join(root, 'index.d.mts'),
  `// Generated from index.d.ts by scripts/esm-types.js (npm run build); do not edit.
${declarations}
declare const shmlink: typeof import('./index.mjs')
export default shmlink
`,
)
