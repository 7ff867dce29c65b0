#!/usr/bin/env node
'use strict'
// Packs a built binary as the tarball `prebuild-install -r napi` downloads, for a release's
// binary host (package.json binary.host) or a mirror:
//
//   <out>/shmlink-v<version>-napi-v<N>-<platform><libc>-<arch>.tar.gz
//
// one per N in binary.napi_versions (the binary is the same; prebuild-install asks for the
// highest N the running Node supports). It holds `shmlink.<triple>.node` at its root, so
// prebuild-install unpacks it into the package directory, where binding.js looks first.
//
// Usage: node scripts/pack-prebuild.js [--out prebuilds] [shmlink.<triple>.node ...]
// Without files it packs every shmlink.*.node in the repository root. Prints the tarballs' paths.

const { createWriteStream, mkdirSync, readdirSync, statSync } = require('node:fs')
const path = require('node:path')
const { pipeline } = require('node:stream/promises')
const zlib = require('node:zlib')

const root = path.resolve(__dirname, '..')
const pkg = require(path.join(root, 'package.json'))

// tar-fs is a dependency of prebuild-install, which is one of ours.
const tar = require(
  require.resolve('tar-fs', {
    paths: [path.dirname(require.resolve('prebuild-install/package.json', { paths: [root] }))],
  }),
)

/** `linux-x64-musl` → the {platform}{libc}-{arch} part of prebuild-install's tarball name. */
function prebuildPlatform(triple) {
  const [platform, arch, abi] = triple.split('-')
  const libc = platform === 'linux' && abi && abi.startsWith('musl') ? 'musl' : ''
  return `${platform}${libc}-${arch}`
}

function tarballNames(triple) {
  const name = pkg.name.replace(/^@[^/]+\//, '')
  const versions = (pkg.binary && pkg.binary.napi_versions) || []
  if (versions.length === 0) throw new Error('package.json has no binary.napi_versions')
  return versions.map((n) => `${name}-v${pkg.version}-napi-v${n}-${prebuildPlatform(triple)}.tar.gz`)
}

async function packOne(binary, outDir) {
  const base = path.basename(binary)
  const match = /^(.+)\.([a-z0-9-]+)\.node$/.exec(base)
  if (!match || match[1] !== pkg.napi.binaryName)
    throw new Error(`${binary}: expected ${pkg.napi.binaryName}.<triple>.node`)
  const written = []
  for (const name of tarballNames(match[2])) {
    const out = path.join(outDir, name)
    const stream = tar.pack(path.dirname(path.resolve(binary)), {
      entries: [base],
      // Reproducible: the same binary gives the same tarball.
      map: (header) => Object.assign(header, { mtime: new Date(0), uid: 0, gid: 0, uname: '', gname: '', mode: 0o755 }),
    })
    await pipeline(stream, zlib.createGzip({ level: 9 }), createWriteStream(out))
    written.push(out)
  }
  return written
}

async function main() {
  const args = process.argv.slice(2)
  let outDir = path.join(root, 'prebuilds')
  const binaries = []
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--out') outDir = path.resolve(args[++i])
    else binaries.push(path.resolve(args[i]))
  }
  if (binaries.length === 0) {
    for (const f of readdirSync(root))
      if (f.startsWith(`${pkg.napi.binaryName}.`) && f.endsWith('.node')) binaries.push(path.join(root, f))
  }
  if (binaries.length === 0)
    throw new Error(`no ${pkg.napi.binaryName}.<triple>.node to pack: run \`npm run build\` first`)
  mkdirSync(outDir, { recursive: true })
  for (const binary of binaries) {
    statSync(binary) // fails clearly when it is missing
    for (const out of await packOne(binary, outDir)) console.log(out)
  }
}

module.exports = { prebuildPlatform, tarballNames }

if (require.main === module) {
  main().catch((error) => {
    console.error(`pack-prebuild: ${error.message}`)
    process.exit(1)
  })
}
