#!/usr/bin/env node
'use strict'
// Packs built binaries as the tarballs the install step downloads when no platform package
// loads (scripts/install.js, scripts/prebuilt.js), for the release's binary host
// (package.json binary.host) or a mirror, and writes checksums.json, which the release puts
// in the npm package so that the install step can verify what it downloads:
//
//   <out>/shmlink-v<version>-napi-v<N>-<platform><libc>-<arch>.tar.gz
//
// one per N in binary.napi_versions (the binary is the same; the install step asks for the
// highest N the running Node supports). It holds `shmlink.<triple>.node` at its root. The
// tarballs are reproducible: the same binary gives the same bytes.
//
// Usage: node scripts/pack-prebuild.js [--out prebuilds] [--checksums checksums.json [--partial]]
//                                      [shmlink.<triple>.node ...]
// Without files it packs every shmlink.*.node in the repository root. Prints the tarballs'
// paths. With --checksums it refuses to write a file that misses one of package.json's
// napi.targets, unless --partial (the install test packs only the platform it runs on).

const { mkdirSync, readFileSync, readdirSync, writeFileSync } = require('node:fs')
const path = require('node:path')
const zlib = require('node:zlib')

const { prebuildPlatform, prebuildTarballNames, sha256, writeSingleFileTar } = require('./prebuilt.js')
const { prebuiltTriples } = require('./native.js')

const root = path.resolve(__dirname, '..')
const pkg = require(path.join(root, 'package.json'))

function tarballNames(triple) {
  return prebuildTarballNames(pkg, triple)
}

/** Packs one binary; returns its checksums.json entry and the tarballs written. */
function packOne(binary, outDir) {
  const base = path.basename(binary)
  const match = /^(.+)\.([a-z0-9-]+)\.node$/.exec(base)
  if (!match || match[1] !== pkg.napi.binaryName)
    throw new Error(`${binary}: expected ${pkg.napi.binaryName}.<triple>.node`)
  const triple = match[2]
  const data = readFileSync(binary)
  const gz = zlib.gzipSync(writeSingleFileTar(base, data), { level: 9 })
  const entry = { file: base, sha256: sha256(data), tarballs: {} }
  const written = []
  for (const name of tarballNames(triple)) {
    const out = path.join(outDir, name)
    writeFileSync(out, gz)
    entry.tarballs[name] = sha256(gz)
    written.push(out)
  }
  return { triple, entry, written }
}

function main() {
  const args = process.argv.slice(2)
  let outDir = path.join(root, 'prebuilds')
  let checksums = null
  let partial = false
  const binaries = []
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--out') outDir = path.resolve(args[++i])
    else if (args[i] === '--checksums') checksums = path.resolve(args[++i])
    else if (args[i] === '--partial') partial = true
    else binaries.push(path.resolve(args[i]))
  }
  if (binaries.length === 0) {
    for (const f of readdirSync(root))
      if (f.startsWith(`${pkg.napi.binaryName}.`) && f.endsWith('.node')) binaries.push(path.join(root, f))
  }
  if (binaries.length === 0)
    throw new Error(`no ${pkg.napi.binaryName}.<triple>.node to pack: run \`npm run build:release\` first`)
  mkdirSync(outDir, { recursive: true })
  const sums = { package: pkg.name, version: pkg.version, algorithm: 'sha256', binaries: {} }
  for (const binary of binaries) {
    const { triple, entry, written } = packOne(binary, outDir)
    if (sums.binaries[triple]) throw new Error(`two binaries for ${triple}`)
    sums.binaries[triple] = entry
    for (const out of written) console.log(out)
  }
  if (checksums !== null) {
    const missing = prebuiltTriples(pkg).filter((triple) => !sums.binaries[triple])
    if (missing.length > 0 && !partial)
      throw new Error(
        `no binary for ${missing.join(', ')} (package.json napi.targets): checksums.json would be incomplete`,
      )
    writeFileSync(checksums, `${JSON.stringify(sums, null, 2)}\n`)
  }
}

module.exports = { prebuildPlatform, tarballNames }

if (require.main === module) {
  try {
    main()
  } catch (error) {
    console.error(`pack-prebuild: ${error.message}`)
    process.exit(1)
  }
}
