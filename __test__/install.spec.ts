/**
 * Installing shmlink the way a user does: from packed tarballs into a fresh project, with no
 * Rust toolchain on PATH and no network beyond 127.0.0.1.
 *
 * - The packages are packed from this checkout as the release does: the files npm packs
 *   from here, plus `napi pre-publish`, which writes optionalDependencies (one package per
 *   napi target) into the main package.json.
 * - shmlink's own dependencies (prebuild-install and what it needs) come from a registry on
 *   127.0.0.1, packed from this checkout's node_modules. It also serves the platform packages
 *   for the other platforms, so npm has to skip them by os/cpu/libc; it never heard of the one
 *   for this platform, as for a platform nobody published a package for.
 * - prebuild-install downloads from a binary mirror on 127.0.0.1.
 *
 * Runs on the platform it was built on (linux-x64-gnu here; the release workflow runs it on
 * each platform it builds) and needs `npm run build` first: index.js, binding.js and
 * shmlink.<triple>.node.
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync } from 'node:child_process'
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'

import {
  dependencyClosure,
  packDirectories,
  startRegistry,
  type PackedPackage,
  type Registry,
} from './install/registry'
import { deadUrl, npm, run, sandbox, serveFiles, type Result } from './install/sandbox'

const ROOT = join(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string
  version: string
  files: string[]
  dependencies: Record<string, string>
  napi: { binaryName: string; targets: string[] }
}
const native = require(join(ROOT, 'scripts', 'native.js')) as {
  currentTriple(): string
  tripleOfRustTarget(target: string): string
  prebuildTarballName(pkg: object): string
}
/** This machine's platform; the release workflow runs these tests on each platform it builds. */
const TRIPLE = native.currentTriple()
const BINARY = `${pkg.napi.binaryName}.${TRIPLE}.node`
const PLATFORM_PACKAGE = `${pkg.name}-${TRIPLE}`
const TRIPLES = pkg.napi.targets.map((target) => native.tripleOfRustTarget(target))

// A platform without a prebuilt package has nothing to pack.
const serial = TRIPLES.includes(TRIPLE) ? test.serial : test.serial.skip

interface Packed {
  /** Paths npm packs from this checkout. */
  checkoutFiles: string[]
  main: string
  platform: string
  prebuild: string
  registry: Registry
}
let work = ''
let packed: Packed | undefined

function tarList(tarball: string): string[] {
  const out = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' })
  return out
    .split('\n')
    .filter(Boolean)
    .map((entry) => entry.replace(/^package\//, ''))
    .sort()
}

function tarManifest(tarball: string): Record<string, unknown> {
  const out = execFileSync('tar', ['-xzOf', tarball, 'package/package.json'], { encoding: 'utf8' })
  return JSON.parse(out) as Record<string, unknown>
}

/** The install step's own lines from npm's output (shown with --foreground-scripts). */
function installLines(result: Result): string[] {
  return `${result.stdout}\n${result.stderr}`.split('\n').filter((line) => line.startsWith('shmlink install:'))
}

function expectOk(result: Result, what: string): void {
  if (result.code !== 0)
    throw new Error(`${what} exited with ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`)
}

async function pack(): Promise<Packed> {
  for (const file of ['index.js', 'index.d.ts', 'binding.js', 'binding.d.ts', BINARY]) {
    if (!existsSync(join(ROOT, file)))
      throw new Error(`${file} is missing: run \`npm run build\` before the install tests`)
  }
  // Packing needs no network: a registry request from here would go to a closed local port.
  const env = {
    ...process.env,
    npm_config_update_notifier: 'false',
    npm_config_audit: 'false',
    npm_config_registry: `${await deadUrl()}/`,
  }

  // What `npm pack` takes from this checkout (scripts are not run: no `prepare` build).
  const dryRun = await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, env })
  expectOk(dryRun, 'npm pack --dry-run')
  const checkoutFiles = (JSON.parse(dryRun.stdout) as Array<{ files: Array<{ path: string }> }>)[0].files
    .map((f) => f.path)
    .sort()

  // Stage those files with the npm/ packages, as the release job has them after `napi artifacts`.
  const stage = join(work, 'stage')
  for (const file of checkoutFiles) {
    mkdirSync(dirname(join(stage, file)), { recursive: true })
    copyFileSync(join(ROOT, file), join(stage, file))
  }
  const wrap = await run(process.execPath, [join(ROOT, 'scripts', 'wrap-binding.js'), join(stage, 'binding.js')], {
    cwd: stage,
  })
  expectOk(wrap, 'wrap-binding')
  for (const triple of TRIPLES) {
    const from = join(ROOT, 'npm', triple)
    const to = join(stage, 'npm', triple)
    mkdirSync(to, { recursive: true })
    for (const file of readdirSync(from)) if (!file.endsWith('.node')) copyFileSync(join(from, file), join(to, file))
    const binary = `${pkg.napi.binaryName}.${triple}.node`
    if (triple === TRIPLE) copyFileSync(join(ROOT, BINARY), join(to, binary))
    else writeFileSync(join(to, binary), `not built here: npm must never install this package on ${TRIPLE}\n`)
  }
  // The release's step: versions and optionalDependencies (publishing skipped).
  const napiCli = join(dirname(require.resolve('@napi-rs/cli/package.json', { paths: [ROOT] })), 'dist', 'cli.js')
  const prePublish = await run(
    process.execPath,
    [napiCli, 'pre-publish', '-t', 'npm', '--skip-optional-publish', '--no-gh-release'],
    { cwd: stage, env },
  )
  expectOk(prePublish, 'napi pre-publish')
  // The release drops `prepare` (it builds from source, for checkouts) from what it publishes.
  expectOk(await npm(['pkg', 'delete', 'scripts.prepare'], { cwd: stage, env }), 'npm pkg delete scripts.prepare')

  const tarballs = join(work, 'tarballs')
  mkdirSync(tarballs)
  const packages = await packDirectories([stage, ...TRIPLES.map((t) => join(stage, 'npm', t))], tarballs, env)
  const main = packages.find((p) => p.name === pkg.name)
  const platform = packages.find((p) => p.name === PLATFORM_PACKAGE)
  if (main === undefined || platform === undefined)
    throw new Error('npm pack did not pack the main and platform packages')

  const prebuilds = join(work, 'prebuilds')
  const prebuild = await run(
    process.execPath,
    [join(ROOT, 'scripts', 'pack-prebuild.js'), '--out', prebuilds, join(ROOT, BINARY)],
    { cwd: ROOT },
  )
  expectOk(prebuild, 'pack-prebuild')

  // The registry: shmlink's dependencies, and the platform packages for other platforms.
  const deps = join(work, 'deps')
  mkdirSync(deps)
  const closure = await packDirectories(dependencyClosure(ROOT, Object.keys(pkg.dependencies)), deps, env)
  const others: PackedPackage[] = packages.filter((p) => p.name !== pkg.name && p.name !== PLATFORM_PACKAGE)
  const registry = await startRegistry([...closure, ...others])

  return {
    checkoutFiles,
    main: main.tarball,
    platform: platform.tarball,
    prebuild: prebuild.stdout.trim().split('\n')[0],
    registry,
  }
}

test.before(async () => {
  if (!TRIPLES.includes(TRIPLE)) return
  work = mkdtempSync(join(tmpdir(), 'shmlink-install-'))
  packed = await pack()
})

test.after.always(async () => {
  await packed?.registry.close()
  if (work !== '') rmSync(work, { recursive: true, force: true })
})

function packedOrThrow(): Packed {
  if (packed === undefined) throw new Error('packing failed')
  return packed
}

/** A fresh consumer project with the test's scripts in it. */
function project(name: string): string {
  const dir = join(work, name, 'project')
  mkdirSync(dir, { recursive: true })
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({ name: `consumer-${name}`, version: '1.0.0', private: true }, null, 2),
  )
  for (const file of readdirSync(join(__dirname, 'install', 'consumer')))
    copyFileSync(join(__dirname, 'install', 'consumer', file), join(dir, file))
  return dir
}

function findDirs(dir: string, name: string, found: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue
    if (entry.name === name) found.push(join(dir, entry.name))
    else findDirs(join(dir, entry.name), name, found)
  }
  return found
}

interface RoundTrip {
  module: string
  unsupported?: boolean
  payload: string
  size: number
  contents: boolean
  shared: boolean
  binaries: string[]
  sameModule?: boolean
  esmNames?: string[]
  cjsNames?: string[]
}

async function roundTrip(dir: string, env: NodeJS.ProcessEnv, script: string): Promise<RoundTrip> {
  const result = await run('node', [script], { cwd: dir, env, timeoutMs: 30_000 })
  expectOk(result, `node ${script}`)
  return JSON.parse(result.stdout.trim().split('\n').pop() ?? '') as RoundTrip
}

/** The region made it across and is the same memory on both sides. */
function assertRoundTrip(t: ExecutionContext, r: RoundTrip): void {
  if (r.unsupported === true) {
    // Only where docs/PLATFORMS.md says so: the binary loaded and answered ERR_SHMLINK_UNSUPPORTED.
    t.not(process.platform, 'linux')
    t.log(`${r.module}: the binary loads; this platform has no backend (ERR_SHMLINK_UNSUPPORTED)`)
    return
  }
  t.like(r, { payload: 'ping', size: 1 << 16, contents: true, shared: true }, `${r.module} round trip`)
}

serial('the tarballs hold only the whitelisted files, and the manifests are ready to publish', (t) => {
  const { checkoutFiles, main, platform } = packedOrThrow()
  const always = ['package.json', ...readdirSync(ROOT).filter((f) => /^(readme|license|licence)(\..*)?$/i.test(f))]
  const expected = [...new Set([...pkg.files, ...always])].sort()
  t.deepEqual(
    checkoutFiles,
    expected,
    'npm pack of the checkout takes exactly package.json "files" (plus README/LICENSE)',
  )
  t.deepEqual(tarList(main), expected)
  for (const file of checkoutFiles) {
    t.notRegex(
      file,
      /\.(rs|toml|lock|node|c|h|go|py)$|^(src-rs|__test__|bench|peers|target|docs|demo|npm|\.github)\//,
      `${file} must not ship`,
    )
  }

  const manifest = tarManifest(main) as {
    license?: string
    repository?: { url?: string }
    keywords?: string[]
    engines?: { node?: string }
    exports?: Record<string, Record<string, Record<string, string>>>
    binary?: { napi_versions?: number[]; host?: string }
    optionalDependencies?: Record<string, string>
    scripts?: Record<string, string>
  }
  t.is(manifest.license, 'MIT')
  t.truthy(manifest.repository?.url)
  t.true((manifest.keywords ?? []).length > 0)
  t.truthy(manifest.engines?.node)
  t.deepEqual(Object.keys(manifest.exports?.['.'] ?? {}), ['import', 'require'])
  t.is(manifest.exports?.['.'].import.types, './index.d.mts')
  t.is(manifest.exports?.['.'].require.types, './index.d.ts')
  t.true((manifest.binary?.napi_versions ?? []).length > 0)
  t.truthy(manifest.binary?.host)
  t.deepEqual(
    manifest.optionalDependencies,
    Object.fromEntries(TRIPLES.map((triple) => [`${pkg.name}-${triple}`, pkg.version])),
    'one optional dependency per napi target, at this version',
  )
  t.is(manifest.scripts?.install, 'node scripts/install.js')
  for (const hook of ['preinstall', 'postinstall', 'prepare', 'prepack', 'postpack']) {
    t.is(manifest.scripts?.[hook], undefined, `the published package has no ${hook} script`)
  }

  // Where prebuild-install looks without a mirror: binary.host, under the release tag, with the
  // name scripts/pack-prebuild.js gives the tarball (the release uploads it there).
  const prebuildUtil = require(require.resolve('prebuild-install/util', { paths: [ROOT] })) as {
    getDownloadUrl(opts: object): string
  }
  const napiVersion = Math.max(
    ...(manifest.binary?.napi_versions ?? []).filter((v) => v <= Number(process.versions.napi)),
  )
  const libcName = TRIPLE.endsWith('-musl') ? 'musl' : ''
  t.is(
    prebuildUtil.getDownloadUrl({
      pkg: manifest,
      runtime: 'napi',
      abi: String(napiVersion),
      platform: process.platform,
      arch: process.arch,
      libc: libcName,
      'tag-prefix': 'v',
    }),
    `${manifest.binary?.host}/v${pkg.version}/${native.prebuildTarballName(pkg)}`,
  )
  t.is(basename(packedOrThrow().prebuild), native.prebuildTarballName(pkg))

  t.deepEqual(tarList(platform), ['README.md', BINARY, 'package.json'].sort())
  const platformManifest = tarManifest(platform)
  const libc = TRIPLE.endsWith('-gnu') ? ['glibc'] : TRIPLE.endsWith('-musl') ? ['musl'] : undefined
  t.like(platformManifest, {
    name: PLATFORM_PACKAGE,
    version: pkg.version,
    os: [process.platform],
    cpu: [process.arch],
    main: BINARY,
    files: [BINARY],
  })
  t.deepEqual(platformManifest.libc, libc)
  t.is(platformManifest.scripts, undefined, 'the platform package runs nothing at install')
})

serial('installing the two tarballs needs no Rust toolchain and no compiler; ESM and CommonJS both work', async (t) => {
  const { main, platform, registry } = packedOrThrow()
  const dir = project('prebuilt')
  const box = sandbox(dirname(dir), registry.url)
  const which = await run('sh', ['-c', 'command -v cargo; command -v rustc'], { cwd: dir, env: box.env })
  t.deepEqual(
    which.stdout.trim().split('\n'),
    [join(dirname(dir), 'shims', 'cargo'), join(dirname(dir), 'shims', 'rustc')],
    'cargo and rustc are shims',
  )
  const install = await npm(['install', '--foreground-scripts', main, platform], { cwd: dir, env: box.env })
  expectOk(install, 'npm install')

  t.deepEqual(box.compilerCalls(), [], 'nothing called a compiler')
  t.deepEqual(findDirs(join(dir, 'node_modules'), 'target'), [], 'no cargo target/ directory')
  const shmlinkDir = join(dir, 'node_modules', 'shmlink')
  t.deepEqual(
    readdirSync(shmlinkDir).filter((f) => f.endsWith('.node')),
    [],
    'the binary is not in the main package',
  )
  t.true(existsSync(join(dir, 'node_modules', PLATFORM_PACKAGE, BINARY)))
  for (const triple of TRIPLES.filter((tr) => tr !== TRIPLE)) {
    t.false(
      existsSync(join(dir, 'node_modules', `${pkg.name}-${triple}`)),
      `npm skipped ${pkg.name}-${triple} by os/cpu/libc`,
    )
  }
  const report = JSON.parse(readFileSync(join(shmlinkDir, '.install-report.json'), 'utf8')) as {
    triple: string
    prebuildInstall?: unknown
  }
  t.is(report.triple, TRIPLE, 'the install step ran')
  t.is(report.prebuildInstall, undefined, 'and did not need prebuild-install')

  const cjs = await roundTrip(dir, box.env, 'roundtrip.cjs')
  const esm = await roundTrip(dir, box.env, 'roundtrip.mjs')
  for (const r of [cjs, esm]) {
    assertRoundTrip(t, r)
    t.deepEqual(
      r.binaries,
      [join(dir, 'node_modules', PLATFORM_PACKAGE, BINARY)],
      `${r.module} loaded the platform package's binary`,
    )
  }
  t.true(esm.sameModule, 'import and require share one module')
  t.deepEqual(esm.esmNames, esm.cjsNames, 'the ESM entry has every CommonJS export')

  // The types resolve through "exports" for both module systems.
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'node16',
        moduleResolution: 'node16',
        target: 'es2022',
        lib: ['es2022', 'esnext.disposable'],
        strict: true,
        noEmit: true,
        types: ['node'],
        typeRoots: [join(ROOT, 'node_modules', '@types')],
      },
      files: ['types.mts', 'types.cts'],
    }),
  )
  const tsc = await run('node', [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], {
    cwd: dir,
    env: box.env,
  })
  t.is(tsc.code, 0, tsc.stdout)
  t.deepEqual(box.compilerCalls(), [])
  t.false(
    registry.requests.some((request) => request.startsWith(`GET /${pkg.name}-`) && request.includes('/-/')),
    "npm read the other platform packages' manifests but downloaded none of them",
  )
})

serial(
  'without the platform package, the install step fetches the binary with prebuild-install from a mirror',
  async (t) => {
    const { main, prebuild, registry } = packedOrThrow()
    const mirror = await serveFiles({ [`/v${pkg.version}/${basename(prebuild)}`]: prebuild })
    try {
      const dir = project('mirror')
      // The mirror setting as a user keeps it, in the project's .npmrc (npm hands it to the
      // install step as npm_config_shmlink_binary_host_mirror; the next test sets that directly).
      writeFileSync(join(dir, '.npmrc'), `shmlink_binary_host_mirror=${mirror.url}\n`)
      const box = sandbox(dirname(dir), registry.url)
      const install = await npm(['install', '--foreground-scripts', main], { cwd: dir, env: box.env })
      expectOk(install, 'npm install')
      t.log(installLines(install).join('\n'))

      t.true(registry.requests.includes(`GET /${PLATFORM_PACKAGE}`), 'npm looked for the platform package')
      t.false(existsSync(join(dir, 'node_modules', PLATFORM_PACKAGE)), 'and found none')
      t.deepEqual(
        mirror.requests,
        [`GET /v${pkg.version}/${native.prebuildTarballName(pkg)}`],
        'prebuild-install asked the mirror for its tarball',
      )
      t.deepEqual(box.compilerCalls(), [], 'nothing called a compiler')
      t.deepEqual(findDirs(join(dir, 'node_modules'), 'target'), [])
      const binary = join(dir, 'node_modules', 'shmlink', BINARY)
      t.true(existsSync(binary), 'prebuild-install unpacked the binary into the package')
      const report = JSON.parse(readFileSync(join(dir, 'node_modules', 'shmlink', '.install-report.json'), 'utf8')) as {
        prebuildInstall: { ok: boolean; url: string }
      }
      t.like(report.prebuildInstall, { ok: true, url: `${mirror.url}/v${pkg.version}/${basename(prebuild)}` })

      for (const script of ['roundtrip.cjs', 'roundtrip.mjs']) {
        const r = await roundTrip(dir, box.env, script)
        assertRoundTrip(t, r)
        t.deepEqual(r.binaries, [binary])
      }
    } finally {
      await mirror.close()
    }
  },
)

serial('with the mirror unreachable the install still succeeds, and require() says what to do', async (t) => {
  const { main, registry } = packedOrThrow()
  const mirror = await deadUrl()
  const dir = project('unreachable')
  const box = sandbox(dirname(dir), registry.url, { npm_config_shmlink_binary_host_mirror: mirror })
  const install = await npm(['install', '--foreground-scripts', main], { cwd: dir, env: box.env })
  expectOk(install, 'npm install')
  t.log(installLines(install).join('\n'))
  t.true(installLines(install).some((line) => line.includes('prebuild-install found no usable binary')))
  t.deepEqual(box.compilerCalls(), [])
  t.false(existsSync(join(dir, 'node_modules', 'shmlink', BINARY)))

  const result = await run('node', ['explain.cjs'], { cwd: dir, env: box.env, timeoutMs: 30_000 })
  expectOk(result, 'node explain.cjs')
  const { required, imported } = JSON.parse(result.stdout) as Record<
    'required' | 'imported',
    {
      code: string
      triple: string
      message: string
      tried: Array<{ what: string; where: string; result: string }>
    } | null
  >
  if (required === null || imported === null) return t.fail('require() and import() should both throw')
  for (const error of [required, imported]) {
    t.is(error.code, 'ERR_SHMLINK_BINARY_NOT_FOUND')
    t.is(error.triple, TRIPLE)
    t.true(error.message.includes(`(${TRIPLE},`), 'names the platform triple')
    t.true(error.message.includes(join(dir, 'node_modules', 'shmlink', BINARY)), 'names the local file it tried')
    t.true(error.message.includes(`${PLATFORM_PACKAGE}: not installed`), 'names the package it tried')
    t.true(
      error.message.includes(`${mirror}/v${pkg.version}/${native.prebuildTarballName(pkg)}: failed`),
      'names the prebuild URL it tried',
    )
    t.true(
      error.message.includes(`npm install ${PLATFORM_PACKAGE}@${pkg.version}`),
      'fix: install the platform package',
    )
    t.true(error.message.includes('npm run build'), 'fix: build with a Rust toolchain')
  }
  t.deepEqual(
    required.tried.map((x) => x.what.split(' ')[0]),
    ['local', 'platform', 'prebuild-install'],
  )

  // The fix for a platform without a package, as the error gives it: a reachable mirror and
  // `npm rebuild shmlink`, which runs the install step again.
  const { prebuild } = packedOrThrow()
  const server = await serveFiles({ [`/v${pkg.version}/${basename(prebuild)}`]: prebuild })
  try {
    const rebuild = await npm(['rebuild', '--foreground-scripts', 'shmlink'], {
      cwd: dir,
      env: { ...box.env, npm_config_shmlink_binary_host_mirror: server.url },
    })
    expectOk(rebuild, 'npm rebuild shmlink')
    t.log(installLines(rebuild).join('\n'))
    t.is(server.requests.length, 1)
    assertRoundTrip(t, await roundTrip(dir, box.env, 'roundtrip.cjs'))
    t.deepEqual(box.compilerCalls(), [])
  } finally {
    await server.close()
  }
})
