#!/usr/bin/env node
'use strict'
// Lines of TypeScript code in the given files, comments and JSDoc not counted: each file
// is printed by the TypeScript compiler without comments, and its non-blank lines counted.
// `node scripts/count-ts-lines.js index.ts`
const ts = require('typescript')
const { readFileSync } = require('node:fs')

const printer = ts.createPrinter({ removeComments: true })
let total = 0
for (const file of process.argv.slice(2)) {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, false, ts.ScriptKind.TS)
  const lines = printer.printFile(source).split('\n').filter((line) => line.trim() !== '').length
  console.log(`${file}: ${lines}`)
  total += lines
}
if (process.argv.length > 3) console.log(`total: ${total}`)
