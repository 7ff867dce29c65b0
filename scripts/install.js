#!/usr/bin/env node
'use strict'
// npm's `install` step for shmlink. It compiles nothing and never fails the install.
//
// The binary normally comes with the optional dependency @shmlink/binding-<triple>
// (linux-x64-gnu, ...), which npm picks by os/cpu/libc; then this step only checks that it
// loads. When no binary loads (no package for this platform, or optional dependencies
// omitted), it downloads
//   <host>/v<version>/shmlink-v<version>-napi-v<N>-<platform><libc>-<arch>.tar.gz
// from npm_config_shmlink_binary_host_mirror (or ..._binary_host, or .npmrc
// `shmlink_binary_host_mirror=`), else from package.json's binary.host, checks its SHA-256
// against checksums.json (written by the release, shipped in this package) and only then
// unpacks shmlink.<triple>.node into this package, where binding.js looks first
// (scripts/prebuilt.js). A file that does not match is refused and nothing of it is written;
// without checksums.json, or for a platform it does not list, nothing is downloaded. Whatever
// happens is written to .install-report.json, so that require('shmlink') can explain a
// missing binary.
//
// In a source checkout (Cargo.toml present) it does nothing: `prepare` builds the addon there.

const { spawnSync } = require('node:child_process')
const { existsSync, writeFileSync } = require('node:fs')
const path = require('node:path')

const pkgDir = path.resolve(__dirname, '..')

function log(message) {
  // npm shows install-script output only with --foreground-scripts or when the script fails.
  process.stderr.write(`shmlink install: ${message}\n`)
}

/** Loads binding.js in a child process, so that a binary that crashes cannot take npm with it. */
function bindingLoads() {
  const binding = path.join(pkgDir, 'binding.js')
  if (!existsSync(binding)) return { ok: false, reason: `${binding} is missing` }
  // On failure the child prints what was tried (binding.js's error has `tried`), on one line.
  const probe = `try { require(${JSON.stringify(binding)}) } catch (e) {
    const tried = e && Array.isArray(e.tried) ? e.tried.filter((t) => !t.what.startsWith('download')) : null
    process.stderr.write(tried ? tried.map((t) => t.where + ': ' + t.result).join('; ') : String((e && e.message) || e).split('\\n')[0])
    process.exit(1)
  }`
  const child = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', timeout: 60_000 })
  if (child.status === 0) return { ok: true }
  return { ok: false, reason: (child.stderr || child.error?.message || `exit ${child.status}`).trim() }
}

/** The download (scripts/prebuilt.js), summarised for .install-report.json. */
async function download(triple) {
  const prebuilt = require('./prebuilt.js')
  const pkg = require('../package.json')
  const tarball = prebuilt.prebuildTarballName(pkg, triple)
  try {
    const { url } = await prebuilt.downloadVerified({ pkgDir, pkg, triple })
    return { ok: true, url, tarball, refused: false, reason: null }
  } catch (error) {
    const refused = error instanceof prebuilt.Refusal
    return {
      ok: false,
      url: error.url || null,
      tarball,
      refused,
      kind: refused ? error.kind : 'failed',
      reason: String(error.message || error),
      ...(error.expected ? { expected: error.expected, actual: error.actual } : {}),
    }
  }
}

async function main() {
  if (existsSync(path.join(pkgDir, 'Cargo.toml'))) {
    // A source checkout: `prepare` (npm run build) compiles the addon after this step.
    return
  }
  const report = { version: require('../package.json').version, triple: null, time: new Date().toISOString() }
  const write = () => {
    try {
      writeFileSync(path.join(pkgDir, '.install-report.json'), `${JSON.stringify(report, null, 2)}\n`)
    } catch (error) {
      log(`could not write .install-report.json: ${error.message}`)
    }
  }
  const native = require('./native.js')
  report.triple = native.currentTriple()

  const before = bindingLoads()
  if (before.ok) {
    report.reason = 'a binary already loads (platform package or local file)'
    write()
    return
  }
  log(`no prebuilt binary for ${report.triple} loads (${before.reason}); downloading one`)
  const fetched = await download(report.triple)
  const after = fetched.ok ? bindingLoads() : before
  report.download = {
    ...fetched,
    ok: fetched.ok && after.ok,
    reason: fetched.ok
      ? after.ok
        ? null
        : `verified and unpacked, but it does not load: ${after.reason}`
      : fetched.reason,
  }
  write()
  if (report.download.ok) {
    log(`installed the prebuilt binary from ${fetched.url} (SHA-256 matches checksums.json)`)
  } else {
    const from = fetched.url && !report.download.reason.includes(fetched.url) ? ` from ${fetched.url}` : ''
    log(`${fetched.refused ? 'refused' : 'no usable binary'}${from}: ${report.download.reason}`)
    log("the install goes on; require('shmlink') will say how to get a binary")
  }
}

main()
  .catch((error) => log(`unexpected error, ignored: ${error && error.stack}`))
  .finally(() => {
    process.exitCode = 0
  })
