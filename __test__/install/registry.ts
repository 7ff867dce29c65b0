/**
 * A minimal npm registry on 127.0.0.1, so the install tests resolve shmlink's real
 * dependencies (none today) and the other platforms' packages without any network. Its packages are
 * packed from the checkout's own node_modules; it answers 404 for anything else, as the real
 * registry does for a package that was never published.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { basename, dirname, join } from 'node:path'

import { npm } from './sandbox'

export interface PackedPackage {
  name: string
  version: string
  /** package.json of the packed package. */
  manifest: Record<string, unknown>
  /** Path of the .tgz. */
  tarball: string
}

export interface Registry {
  url: string
  /** Every request path, in order. */
  requests: string[]
  close(): Promise<void>
}

type PackageJson = {
  name: string
  version: string
  dependencies?: Record<string, string>
  optionalDependencies?: Record<string, string>
}

/** Where `name` resolves from `fromDir`, the way Node walks up node_modules. */
function findPackageDir(name: string, fromDir: string, root: string): string {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name)
    if (existsSync(join(candidate, 'package.json'))) return candidate
    if (dir === root || dir === dirname(dir)) break
  }
  throw new Error(`${name} is not installed under ${root}: run npm install`)
}

/** The installed directories of `deps` and everything they depend on, one per name@version. */
export function dependencyClosure(root: string, deps: string[]): string[] {
  const seen = new Map<string, string>()
  const visit = (name: string, fromDir: string, optional: boolean): void => {
    let dir: string
    try {
      dir = findPackageDir(name, fromDir, root)
    } catch (error) {
      if (optional) return
      throw error
    }
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson
    const id = `${pkg.name}@${pkg.version}`
    if (seen.has(id)) return
    seen.set(id, dir)
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, dir, false)
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(dep, dir, true)
  }
  for (const dep of deps) visit(dep, root, false)
  return [...seen.values()]
}

/** `npm pack`s directories (without running their scripts) into `outDir`. */
export async function packDirectories(
  dirs: string[],
  outDir: string,
  env: NodeJS.ProcessEnv,
): Promise<PackedPackage[]> {
  // `npm pack` with no directory would pack the current one.
  if (dirs.length === 0) return []
  const result = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', outDir, ...dirs], {
    cwd: outDir,
    env,
  })
  if (result.code !== 0) throw new Error(`npm pack failed:\n${result.stderr}`)
  const manifests = new Map<string, Record<string, unknown>>()
  for (const dir of dirs) {
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>
    manifests.set(`${String(manifest.name)}@${String(manifest.version)}`, manifest)
  }
  const packed = JSON.parse(result.stdout) as Array<{ name: string; version: string; filename: string }>
  return packed.map((p) => ({
    name: p.name,
    version: p.version,
    manifest: manifests.get(`${p.name}@${p.version}`) ?? { name: p.name, version: p.version },
    tarball: join(outDir, p.filename),
  }))
}

function integrity(file: string): { integrity: string; shasum: string } {
  const data = readFileSync(file)
  return {
    integrity: `sha512-${createHash('sha512').update(data).digest('base64')}`,
    shasum: createHash('sha1').update(data).digest('hex'),
  }
}

export async function startRegistry(packages: PackedPackage[]): Promise<Registry> {
  const requests: string[] = []
  const tarballs = new Map<string, string>()
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0])
    requests.push(`${req.method} ${path}`)
    const tarball = tarballs.get(path)
    if (tarball !== undefined) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      res.end(readFileSync(tarball))
      return
    }
    const doc = packuments.get(path.slice(1))
    if (doc !== undefined) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(doc))
      return
    }
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end('{"error":"Not found"}')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  const packuments = new Map<
    string,
    { name: string; 'dist-tags': { latest: string }; versions: Record<string, unknown> }
  >()
  for (const p of packages) {
    const tarballPath = `/${p.name}/-/${basename(p.tarball)}`
    tarballs.set(tarballPath, p.tarball)
    const doc = packuments.get(p.name) ?? { name: p.name, 'dist-tags': { latest: p.version }, versions: {} }
    doc.versions[p.version] = {
      ...p.manifest,
      _id: `${p.name}@${p.version}`,
      dist: { tarball: `${url}${tarballPath}`, ...integrity(p.tarball) },
    }
    const versions = Object.keys(doc.versions).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    doc['dist-tags'].latest = versions[versions.length - 1]
    packuments.set(p.name, doc)
  }

  return {
    url,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}
