#!/usr/bin/env node
'use strict'
// npm's `install` step for shmlink. It compiles nothing and never fails the install.
//
// The binary normally comes with the optional dependency shmlink-<triple> (linux-x64-gnu, ...),
// which npm picks by os/cpu/libc; then this step only checks that it loads. When no binary
// loads (no package for this platform, or optional dependencies omitted), it runs
// `prebuild-install -r napi`, which downloads
//   <host>/v<version>/shmlink-v<version>-napi-v<N>-<platform><libc>-<arch>.tar.gz
// from npm_config_shmlink_binary_host (or ..._binary_host_mirror, or .npmrc
// `shmlink_binary_host_mirror=`), else from package.json's binary.host, and unpacks
// shmlink.<triple>.node into this package, where binding.js looks first. Whatever happens is
// written to .install-report.json, so that require('shmlink') can explain a missing binary.
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
    const tried = e && Array.isArray(e.tried) ? e.tried.filter((t) => !t.what.startsWith('prebuild-install')) : null
    process.stderr.write(tried ? tried.map((t) => t.where + ': ' + t.result).join('; ') : String((e && e.message) || e).split('\\n')[0])
    process.exit(1)
  }`
  const child = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', timeout: 60_000 })
  if (child.status === 0) return { ok: true }
  return { ok: false, reason: (child.stderr || child.error?.message || `exit ${child.status}`).trim() }
}

function runPrebuildInstall() {
  let bin
  try {
    bin = require.resolve('prebuild-install/bin.js', { paths: [pkgDir] })
  } catch {
    return { ok: false, url: null, reason: 'prebuild-install is not installed', output: '' }
  }
  // --verbose makes prebuild-install print the URL it asks for.
  const child = spawnSync(process.execPath, [bin, '--runtime', 'napi', '--verbose'], {
    cwd: pkgDir,
    encoding: 'utf8',
    timeout: 120_000,
  })
  const output = `${child.stdout || ''}${child.stderr || ''}`
  const url = /GET (\S+)/.exec(output)?.[1] ?? null
  if (child.status === 0) return { ok: true, url, reason: null, output }
  const warning = output
    .split('\n')
    .filter((line) => / (warn|error) /.test(line))
    .map((line) => line.replace(/^prebuild-install (warn|error) /, '').trim())
    .filter(Boolean)
    .join('; ')
  const reason = warning || child.error?.message || `prebuild-install exited with ${child.status}`
  return { ok: false, url, reason, output }
}

function main() {
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
  log(`no prebuilt binary for ${report.triple} loads (${before.reason}); trying prebuild-install`)
  const prebuild = runPrebuildInstall()
  const after = prebuild.ok ? bindingLoads() : before
  report.prebuildInstall = {
    url: prebuild.url,
    ok: prebuild.ok && after.ok,
    reason: prebuild.ok ? (after.ok ? null : `unpacked, but it does not load: ${after.reason}`) : prebuild.reason,
  }
  write()
  if (report.prebuildInstall.ok) {
    log(`installed the prebuilt binary from ${prebuild.url}`)
  } else {
    log(`prebuild-install found no usable binary: ${report.prebuildInstall.reason}`)
    log("the install goes on; require('shmlink') will say how to get a binary")
  }
}

try {
  main()
} catch (error) {
  log(`unexpected error, ignored: ${error && error.stack}`)
}
process.exitCode = 0
