'use strict'
// Which native binary this machine needs, and, when none loads, an error that says what was
// tried and how to fix it. Shipped in the npm package: binding.js (scripts/wrap-binding.js) and
// scripts/install.js use it. Plain CommonJS with no dependencies, because it runs when
// nothing else can.

const { existsSync, readFileSync } = require('node:fs')
const path = require('node:path')

/** The file scripts/install.js leaves in the package directory: what the install step did. */
const INSTALL_REPORT = '.install-report.json'

function readJson(file) {
  try {
    return JSON.parse(readFileSync(file, 'utf8'))
  } catch {
    return null
  }
}

function isMusl() {
  if (process.platform !== 'linux') return false
  try {
    const ldd = readFileSync('/usr/bin/ldd', 'utf8')
    if (ldd.includes('musl')) return true
    if (ldd.includes('GNU C Library') || ldd.includes('glibc')) return false
  } catch {
    // No /usr/bin/ldd: ask the process report instead.
  }
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
  if (report?.header?.glibcVersionRuntime) return false
  return Array.isArray(report?.sharedObjects) && report.sharedObjects.some((f) => /libc\.musl-|ld-musl-/.test(f))
}

/**
 * napi-rs's name for a platform ("platform-arch-abi"): linux-x64-gnu, linux-x64-musl,
 * darwin-arm64, win32-x64-msvc... The binary is `shmlink.<triple>.node` and the package
 * that carries it `@shmlink/binding-<triple>` (platformPackageName).
 */
function currentTriple() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const libc = isMusl() ? 'musl' : 'gnu'
    return arch === 'arm' ? `linux-arm-${libc}eabihf` : `linux-${arch}-${libc}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform === 'android' && arch === 'arm') return 'android-arm-eabi'
  return `${platform}-${arch}`
}

const RUST_ARCH = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm', riscv64gc: 'riscv64' }

/** `x86_64-unknown-linux-gnu` → `linux-x64-gnu`, as `napi create-npm-dirs` names the packages. */
function tripleOfRustTarget(target) {
  const [cpu, ...rest] = target.split('-')
  const arch = RUST_ARCH[cpu] ?? cpu
  const system = rest.join('-')
  if (system.endsWith('apple-darwin')) return `darwin-${arch}`
  if (system.includes('windows')) return `win32-${arch}-msvc`
  if (system.includes('freebsd')) return `freebsd-${arch}`
  const linux = /linux-(gnu|musl)(eabihf)?$/.exec(system)
  if (linux) return `linux-${arch}-${linux[1]}${linux[2] ?? ''}`
  return `${cpu}-${system}`
}

/** The platforms with a prebuilt package, from package.json's `napi.targets`. */
function prebuiltTriples(pkg) {
  return ((pkg && pkg.napi && pkg.napi.targets) || []).map(tripleOfRustTarget)
}

/**
 * The npm package that carries the binary for `triple`: napi-rs's `<napi.packageName>-<triple>`,
 * as in binding.js, e.g. `@shmlink/binding-linux-x64-gnu`. The scope is the project's, so
 * nobody else can publish a package binding.js would load.
 */
function platformPackageName(pkg, triple) {
  return `${(pkg && pkg.napi && pkg.napi.packageName) || pkg.name}-${triple}`
}

/**
 * The tarball scripts/install.js downloads on this machine when no platform package loads:
 * `{name}-v{version}-napi-v{N}-{platform}{libc}-{arch}.tar.gz` (scripts/prebuilt.js).
 */
function prebuildTarballName(pkg, napiVersion = Number(process.versions.napi)) {
  return require('./prebuilt.js').prebuildTarballName(pkg, currentTriple(), napiVersion)
}

function errorMessages(error) {
  const messages = []
  for (let e = error; e && messages.length < 20; e = e.cause) {
    const message = String(e && e.message ? e.message : e).split('\n')[0]
    if (!messages.includes(message)) messages.push(message)
  }
  return messages
}

/** Tries `require(id)` and says why it failed, or null when it loads. */
function loadFailure(id) {
  try {
    require(id)
    return null
  } catch (error) {
    return errorMessages(error)[0]
  }
}

/**
 * The error `require('shmlink')` throws when napi-rs's loader found no binary it could load.
 * `pkgDir` is the package directory, `cause` what the generated loader threw.
 */
function missingBindingError(pkgDir, cause) {
  let triple = `${process.platform}-${process.arch}`
  const tried = []
  let lines = []
  try {
    triple = currentTriple()
    const pkg = readJson(path.join(pkgDir, 'package.json')) || { name: 'shmlink', version: '?' }
    const binaryName = (pkg.napi && pkg.napi.binaryName) || 'shmlink'
    const localFile = path.join(pkgDir, `${binaryName}.${triple}.node`)
    const packageName = platformPackageName(pkg, triple)
    const prebuilt = prebuiltTriples(pkg)
    const report = readJson(path.join(pkgDir, INSTALL_REPORT))

    if (process.env.NAPI_RS_NATIVE_LIBRARY_PATH) {
      const file = process.env.NAPI_RS_NATIVE_LIBRARY_PATH
      tried.push({ what: 'NAPI_RS_NATIVE_LIBRARY_PATH', where: file, result: loadFailure(file) ?? 'loads' })
    }
    tried.push({
      what: 'local file (a `npm run build` in a checkout, or the verified download of the install step)',
      where: localFile,
      result: existsSync(localFile) ? `exists but does not load: ${loadFailure(localFile)}` : 'not found',
    })
    let packageResult = `not installed${prebuilt.includes(triple) ? '' : ` (no such package is published: prebuilt packages exist for ${prebuilt.join(', ')})`}`
    try {
      const manifest = require.resolve(`${packageName}/package.json`, { paths: [pkgDir] })
      const version = (readJson(manifest) || {}).version
      const failure = loadFailure(path.dirname(manifest))
      packageResult =
        failure === null ? `installed (${version})` : `installed (${version}) but does not load: ${failure}`
    } catch {
      // not installed: packageResult says so
    }
    tried.push({ what: 'platform package', where: packageName, result: packageResult })
    const download = report && report.download
    if (download) {
      let result = 'downloaded, verified against checksums.json and unpacked'
      if (!download.ok && download.kind === 'checksum-mismatch') {
        result = `refused: its checksum did not match checksums.json, so it was not installed (${download.reason})`
      } else if (!download.ok && download.refused) {
        result = `refused: ${download.reason}`
      } else if (!download.ok) {
        result = `failed: ${download.reason}`
      }
      tried.push({
        what: 'download during `npm install` (checked against checksums.json)',
        where: download.url || download.tarball || prebuildTarballName(pkg),
        result,
      })
    } else {
      tried.push({
        what: 'download during `npm install` (checked against checksums.json)',
        where: prebuildTarballName(pkg),
        result: report
          ? `not run: ${report.reason}`
          : 'not run (install scripts skipped, e.g. --ignore-scripts, or npm allowScripts)',
      })
    }

    const headline = `shmlink: no native binary loads on this platform (${triple}, Node ${process.version}, N-API ${process.versions.napi}).`
    lines = [headline, 'Tried:']
    for (const t of tried) lines.push(`  - ${t.what}: ${t.where}: ${t.result}`)
    lines.push('Fix it with one of:')
    if (prebuilt.includes(triple)) {
      lines.push(
        `  - Install the prebuilt package: \`npm install ${packageName}@${pkg.version}\`. npm skips it when optional`,
        '    dependencies are omitted (--omit=optional, --no-optional) or after installing on another platform',
        '    and copying node_modules: reinstall on this machine, removing node_modules and package-lock.json if',
        '    npm still skips it (npm/cli#4828).',
      )
    } else {
      lines.push(`  - Prebuilt binaries exist for ${prebuilt.join(', ')} only; for ${triple}, build one (below).`)
    }
    if (download && download.kind === 'checksum-mismatch') {
      lines.push(
        "  - The binary host served a file that is not this release's. If you set a mirror",
        `    (npm_config_${pkg.name.replace(/[^a-zA-Z0-9]/g, '_')}_binary_host_mirror or .npmrc), make it serve the release's files unchanged, then`,
        `    \`npm rebuild ${pkg.name}\`; otherwise treat it as an attack on your network or mirror and report it.`,
      )
    }
    lines.push(
      '  - Build it with a Rust toolchain (https://rustup.rs, Rust >= 1.88): in a checkout of the shmlink repository run',
      `    \`npm install\` and \`npm run build\`, then copy ${binaryName}.${triple}.node into ${pkgDir}`,
      '    (or set NAPI_RS_NATIVE_LIBRARY_PATH to its path).',
    )
  } catch (diagnosisError) {
    lines = [
      `shmlink: no native binary loads on this platform (${triple}); install the package @shmlink/binding-${triple}, or build one with a Rust toolchain (\`npm run build\` in a checkout).`,
      `(while diagnosing: ${diagnosisError && diagnosisError.message})`,
    ]
  }
  const underlying = errorMessages(cause)
  if (underlying.length > 0) {
    lines.push("napi-rs's loader reported:")
    for (const message of underlying) lines.push(`  - ${message}`)
  }
  const error = new Error(lines.join('\n'))
  error.code = 'ERR_SHMLINK_BINARY_NOT_FOUND'
  error.triple = triple
  error.tried = tried
  error.cause = cause
  return error
}

module.exports = {
  INSTALL_REPORT,
  currentTriple,
  isMusl,
  missingBindingError,
  platformPackageName,
  prebuildTarballName,
  prebuiltTriples,
  tripleOfRustTarget,
}
