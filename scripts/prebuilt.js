'use strict'
// The prebuilt-binary download that scripts/install.js falls back to when no platform package
// loads, and the file that makes it safe: checksums.json.
//
// The release workflow packs each binary as a one-file tarball (scripts/pack-prebuild.js)
//   shmlink-v<version>-napi-v<N>-<platform><libc>-<arch>.tar.gz   (prebuild-install's name)
// uploads it to the release, and writes the SHA-256 of every tarball and binary into
// checksums.json, which ships in the npm package. A download is hashed in memory and refused
// unless it matches; only then is it unpacked, into a temporary name, and renamed to
// shmlink.<triple>.node where binding.js looks. Without checksums.json, or with no entry for
// this platform, nothing is downloaded at all. The host can be changed (a mirror); what it
// serves cannot.
//
// Plain CommonJS with no dependencies (node:https, node:zlib and a 40-line tar reader), because
// it runs at install time before anything else is there. It goes through an HTTP proxy when
// npm's proxy settings or HTTPS_PROXY/HTTP_PROXY name one (proxyFor).

const { createHash } = require('node:crypto')
const { readFileSync, renameSync, rmSync, writeFileSync } = require('node:fs')
const http = require('node:http')
const https = require('node:https')
const net = require('node:net')
const path = require('node:path')
const tls = require('node:tls')
const zlib = require('node:zlib')

const CHECKSUMS = 'checksums.json'
/** Refuse anything larger: the binaries are about 1 MiB. */
const MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
const MAX_BINARY_BYTES = 256 * 1024 * 1024
const MAX_REDIRECTS = 5

/** An error meaning "refused, on purpose": the message says why; the install goes on without it. */
class Refusal extends Error {
  constructor(message, details = {}) {
    super(message)
    this.name = 'Refusal'
    Object.assign(this, details)
  }
}

function sha256(data) {
  return createHash('sha256').update(data).digest('hex')
}

/** `linux-x64-musl` → the `{platform}{libc}-{arch}` part of the tarball name. */
function prebuildPlatform(triple) {
  const [platform, arch, abi] = triple.split('-')
  const libc = platform === 'linux' && abi && abi.startsWith('musl') ? 'musl' : ''
  return `${platform}${libc}-${arch}`
}

/** The N-API versions a tarball exists for (package.json binary.napi_versions). */
function napiVersions(pkg) {
  const versions = (pkg.binary && pkg.binary.napi_versions) || []
  if (versions.length === 0) throw new Error('package.json has no binary.napi_versions')
  return versions
}

/**
 * The tarball for `triple` that a Node with N-API `napiVersion` uses: the highest of
 * binary.napi_versions it supports (prebuild-install's rule and name).
 */
function prebuildTarballName(pkg, triple, napiVersion = Number(process.versions.napi)) {
  const versions = napiVersions(pkg)
  const usable = versions.filter((v) => v <= napiVersion)
  const napi = usable.length > 0 ? Math.max(...usable) : Math.min(...versions)
  const name = pkg.name.replace(/^@[^/]+\//, '')
  return `${name}-v${pkg.version}-napi-v${napi}-${prebuildPlatform(triple)}.tar.gz`
}

/** Every tarball name for `triple`, one per binary.napi_versions entry. */
function prebuildTarballNames(pkg, triple) {
  return napiVersions(pkg).map((n) => prebuildTarballName(pkg, triple, n))
}

/** `npm_config_shmlink_binary_host_mirror`: npm hands .npmrc's `shmlink_binary_host_mirror=` over as this. */
function hostSettings(pkg) {
  const key = pkg.name.replace(/^@[^/]+\//, '').replace(/[^a-zA-Z0-9]/g, '_')
  return [`npm_config_${key}_binary_host_mirror`, `npm_config_${key}_binary_host`]
}

/** Where the tarball is fetched from: a mirror setting, else package.json binary.host, then `/v<version>/<tarball>`. */
function downloadUrl(pkg, tarball, env = process.env) {
  let host = null
  for (const setting of hostSettings(pkg)) {
    if (env[setting]) {
      host = env[setting]
      break
    }
  }
  host = host || (pkg.binary && pkg.binary.host)
  if (!host) throw new Refusal('no binary host: package.json has no binary.host and no mirror is set')
  return `${String(host).replace(/\/+$/, '')}/v${pkg.version}/${tarball}`
}

/**
 * What checksums.json says the tarball and binary for `triple` must hash to. Throws a Refusal
 * when the file is missing or unreadable, is for another version, or has no entry.
 */
function expectedHashes(pkgDir, pkg, triple, tarball) {
  const file = path.join(pkgDir, CHECKSUMS)
  let sums
  try {
    sums = JSON.parse(readFileSync(file, 'utf8'))
  } catch (error) {
    throw new Refusal(
      `${CHECKSUMS} is ${error.code === 'ENOENT' ? 'missing' : `unreadable (${error.message})`}, so no download can be verified; nothing was downloaded`,
      { kind: 'no-checksums' },
    )
  }
  if (!sums || sums.version !== pkg.version || typeof sums.binaries !== 'object' || sums.binaries === null) {
    throw new Refusal(`${CHECKSUMS} is not for ${pkg.name}@${pkg.version}; nothing was downloaded`, {
      kind: 'no-checksums',
    })
  }
  const entry = Object.prototype.hasOwnProperty.call(sums.binaries, triple) ? sums.binaries[triple] : null
  const tarballSha256 = entry && entry.tarballs && entry.tarballs[tarball]
  if (!entry || typeof entry.sha256 !== 'string' || typeof tarballSha256 !== 'string') {
    const known = Object.keys(sums.binaries).join(', ')
    throw new Refusal(
      `this release has no prebuilt binary for ${triple} (${CHECKSUMS} lists ${known || 'none'}); nothing was downloaded`,
      { kind: 'unknown-triple' },
    )
  }
  return { tarballSha256, file: entry.file, binarySha256: entry.sha256 }
}

/** Does `hostname` match an entry of a NO_PROXY-style list ("example.com,.internal,*")? */
function bypassesProxy(hostname, list) {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, '')
  return list
    .split(/[\s,]+/)
    .filter(Boolean)
    .some((entry) => {
      if (entry === '*') return true
      const domain = entry
        .toLowerCase()
        .replace(/:\d+$/, '')
        .replace(/^\*?\./, '')
      return host === domain || host.endsWith(`.${domain}`)
    })
}

/**
 * The HTTP proxy for `target`, as npm and curl read it: npm's `https-proxy`/`proxy` settings
 * (npm hands them to install scripts as npm_config_https_proxy/npm_config_proxy), else
 * HTTPS_PROXY/HTTP_PROXY; none for a host listed in npm's `noproxy` or NO_PROXY.
 */
function proxyFor(target, env = process.env) {
  const pick = (...names) => {
    for (const name of names) if (env[name]) return env[name]
    return null
  }
  const noProxy = pick('npm_config_noproxy', 'NO_PROXY', 'no_proxy')
  if (noProxy && bypassesProxy(target.hostname, noProxy)) return null
  const raw =
    target.protocol === 'https:'
      ? pick('npm_config_https_proxy', 'HTTPS_PROXY', 'https_proxy', 'npm_config_proxy', 'HTTP_PROXY', 'http_proxy')
      : pick('npm_config_proxy', 'HTTP_PROXY', 'http_proxy')
  if (!raw) return null
  const proxy = new URL(raw.includes('://') ? raw : `http://${raw}`)
  if (proxy.protocol !== 'http:') throw new Error(`unsupported proxy ${proxy.origin} (http:// proxies only)`)
  return proxy
}

function proxyHeaders(proxy) {
  if (!proxy.username) return {}
  const credentials = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`
  return { 'proxy-authorization': `Basic ${Buffer.from(credentials).toString('base64')}` }
}

/**
 * Sends GET `target`, directly or through `proxy` (absolute-form GET for http:, a CONNECT
 * tunnel for https:), and calls `onResponse` with the response; failures go to `onError`.
 */
function sendGet(target, proxy, timeout, onResponse, onError) {
  const client = target.protocol === 'https:' ? https : http
  const watch = (request, what) => {
    request.on('timeout', () => request.destroy(new Error(`no answer from ${what} in time`)))
    request.on('error', onError)
    return request
  }
  if (proxy === null) return watch(client.get(target, { timeout }, onResponse), target.href)
  const proxyPort = Number(proxy.port) || 80
  if (target.protocol === 'http:') {
    const headers = { host: target.host, ...proxyHeaders(proxy) }
    const options = { host: proxy.hostname, port: proxyPort, path: target.href, headers, timeout }
    return watch(http.get(options, onResponse), `the proxy ${proxy.origin}`)
  }
  const authority = `${target.hostname}:${Number(target.port) || 443}`
  const connect = http.request({
    host: proxy.hostname,
    port: proxyPort,
    method: 'CONNECT',
    path: authority,
    headers: { host: authority, ...proxyHeaders(proxy) },
    timeout,
  })
  connect.on('connect', (response, socket) => {
    if (response.statusCode !== 200) {
      socket.destroy()
      onError(new Error(`the proxy ${proxy.origin} refused to connect to ${authority}: HTTP ${response.statusCode}`))
      return
    }
    // No `agent`: with createConnection that makes the request use the tunnel (an agent,
    // even `agent: false`, would open its own connection and leave the tunnel open).
    const host = target.hostname.replace(/^\[|\]$/g, '')
    const tunnel = () => tls.connect({ socket, host, servername: net.isIP(host) ? undefined : host })
    watch(https.get(target, { createConnection: tunnel, timeout }, onResponse), target.href)
  })
  watch(connect, `the proxy ${proxy.origin}`).end()
  return connect
}

/**
 * GET `url` into memory, following redirects, with a size cap and a deadline, through the
 * proxy the environment names (proxyFor).
 */
function fetchBuffer(url, { timeoutMs = 120_000, maxBytes = MAX_DOWNLOAD_BYTES, env = process.env } = {}) {
  const deadline = Date.now() + timeoutMs
  const get = (current, redirectsLeft) =>
    new Promise((resolve, reject) => {
      let parsed
      let proxy
      try {
        parsed = new URL(current)
        if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')
          throw new Error(`unsupported protocol ${parsed.protocol} in ${current} (http: and https: only)`)
        proxy = proxyFor(parsed, env)
      } catch (error) {
        reject(error instanceof TypeError ? new Error(`not a URL: ${current}`) : error)
        return
      }
      const onResponse = (response) => {
        const status = response.statusCode || 0
        if ([301, 302, 303, 307, 308].includes(status) && response.headers.location) {
          response.resume()
          if (redirectsLeft === 0) {
            reject(new Error(`too many redirects from ${url}`))
            return
          }
          resolve(get(new URL(response.headers.location, current).href, redirectsLeft - 1))
          return
        }
        if (status !== 200) {
          response.resume()
          reject(new Error(`${current} answered HTTP ${status}`))
          return
        }
        const declared = Number(response.headers['content-length'])
        if (declared > maxBytes) {
          response.destroy()
          reject(new Error(`${current} is ${declared} bytes, more than the ${maxBytes} allowed`))
          return
        }
        const chunks = []
        let length = 0
        response.on('data', (chunk) => {
          length += chunk.length
          if (length > maxBytes) {
            response.destroy(new Error(`${current} sent more than the ${maxBytes} bytes allowed`))
            return
          }
          chunks.push(chunk)
        })
        response.on('error', reject)
        response.on('end', () => resolve({ url: current, data: Buffer.concat(chunks) }))
      }
      sendGet(parsed, proxy, Math.max(1, deadline - Date.now()), onResponse, reject)
    })
  return get(url, MAX_REDIRECTS)
}

// ---- a ustar archive holding one regular file (what scripts/pack-prebuild.js writes) ----

const BLOCK = 512

function field(header, offset, length) {
  const raw = header.subarray(offset, offset + length)
  const end = raw.indexOf(0)
  return raw.subarray(0, end === -1 ? length : end).toString('utf8')
}

function octal(header, offset, length) {
  const text = field(header, offset, length).trim()
  if (!/^[0-7]+$/.test(text)) throw new Error(`bad number ${JSON.stringify(text)} in a tar header`)
  return Number.parseInt(text, 8)
}

/**
 * The content of `name` in a tar archive that holds exactly that one regular file. Anything
 * else (other entries, links, a bad header checksum) is an error.
 */
function readSingleFileTar(tar, name) {
  if (tar.length < 3 * BLOCK) throw new Error('the archive is too short')
  const header = tar.subarray(0, BLOCK)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]
  if (sum !== octal(header, 148, 8)) throw new Error('the tar header checksum does not match')
  const prefix = field(header, 345, 155)
  const entry = prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100)
  const type = String.fromCharCode(header[156] || 0x30)
  if (type !== '0') throw new Error(`the archive's entry is not a regular file (type ${type})`)
  if (entry !== name) throw new Error(`the archive holds ${JSON.stringify(entry)}, not ${name}`)
  const size = octal(header, 124, 12)
  if (size > MAX_BINARY_BYTES || BLOCK + size > tar.length) throw new Error('the archive is truncated')
  const next = BLOCK + Math.ceil(size / BLOCK) * BLOCK
  if (tar.subarray(next, next + BLOCK).some((byte) => byte !== 0))
    throw new Error('the archive holds more than one file')
  return tar.subarray(BLOCK, BLOCK + size)
}

function writeField(header, offset, length, text) {
  const bytes = Buffer.from(text, 'utf8')
  if (bytes.length > length) throw new Error(`${text} does not fit a tar header field`)
  bytes.copy(header, offset)
}

/** A reproducible ustar archive of one file: mode 0755, owner 0, mtime 0. */
function writeSingleFileTar(name, data) {
  const header = Buffer.alloc(BLOCK)
  writeField(header, 0, 100, name)
  writeField(header, 100, 8, '0000755\0')
  writeField(header, 108, 8, '0000000\0')
  writeField(header, 116, 8, '0000000\0')
  writeField(header, 124, 12, `${data.length.toString(8).padStart(11, '0')}\0`)
  writeField(header, 136, 12, '00000000000\0')
  header[156] = 0x30
  writeField(header, 257, 8, 'ustar\x0000')
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]
  writeField(header, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `)
  const padding = Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK)
  return Buffer.concat([header, data, padding, Buffer.alloc(2 * BLOCK)])
}

/**
 * Downloads the binary for `triple`, verifies it against checksums.json and puts it at
 * `<pkgDir>/<file>`. Resolves to { url, tarball, file }; rejects with a Refusal (checksums,
 * mismatch) or an Error (network, archive). Nothing is written unless every check passed.
 */
async function downloadVerified({ pkgDir, pkg, triple, env = process.env, timeoutMs }) {
  const tarball = prebuildTarballName(pkg, triple)
  const expected = expectedHashes(pkgDir, pkg, triple, tarball)
  const url = downloadUrl(pkg, tarball, env)
  let fetched
  try {
    fetched = await fetchBuffer(url, { timeoutMs, env })
  } catch (error) {
    error.url = url
    throw error
  }
  const actual = sha256(fetched.data)
  if (actual !== expected.tarballSha256) {
    throw new Refusal(
      `checksum mismatch: ${url} has SHA-256 ${actual}, but ${CHECKSUMS} says ${expected.tarballSha256}; the file was refused and nothing of it was unpacked`,
      { kind: 'checksum-mismatch', url, expected: expected.tarballSha256, actual },
    )
  }
  // Verified: from here on the bytes are the release's own.
  const binary = readSingleFileTar(
    zlib.gunzipSync(fetched.data, { maxOutputLength: MAX_BINARY_BYTES + 4 * BLOCK }),
    expected.file,
  )
  if (sha256(binary) !== expected.binarySha256) {
    throw new Refusal(`checksum mismatch: ${expected.file} inside ${url} does not match ${CHECKSUMS}`, {
      kind: 'checksum-mismatch',
      url,
    })
  }
  const destination = path.join(pkgDir, expected.file)
  const temporary = path.join(pkgDir, `.${expected.file}.${process.pid}.download`)
  try {
    writeFileSync(temporary, binary, { mode: 0o755 })
    renameSync(temporary, destination)
  } finally {
    rmSync(temporary, { force: true })
  }
  return { url, tarball, file: destination }
}

module.exports = {
  CHECKSUMS,
  Refusal,
  downloadUrl,
  downloadVerified,
  expectedHashes,
  fetchBuffer,
  hostSettings,
  proxyFor,
  prebuildPlatform,
  prebuildTarballName,
  prebuildTarballNames,
  readSingleFileTar,
  sha256,
  writeSingleFileTar,
}
