// Types resolve to declaration files, never to the package's .ts sources, however the
// package is consumed: a consumer linked to this source tree (npm link, a file:
// dependency) compiles with its own settings (target ES2020, strict, no skipLibCheck)
// through both entry points.
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const ROOT = join(__dirname, '..')
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')

test('a linked consumer with target ES2020 and strict compiles against the declarations only', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shmlink-consumer-'))
  try {
    mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true })
    symlinkSync(ROOT, join(dir, 'node_modules', 'shmlink'))
    symlinkSync(join(ROOT, 'node_modules', '@types', 'node'), join(dir, 'node_modules', '@types', 'node'))
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true }))
    const use = `
const [a, b] = Endpoint.pair()
const region: Region = Region.create(64)
void a.send('x', { transfer: [region] }).then(() => b.recv()).then((m) => console.log(m.descriptors[0]?.id))
a.on('close', (reason?: ShmlinkError) => console.log(reason?.code))
// @ts-expect-error: 'clsoe' is not an event of an Endpoint
a.on('clsoe', () => {})
`
    writeFileSync(join(dir, 'esm.mts'), `import shmlink, { Endpoint, Region, type ShmlinkError } from 'shmlink'\nvoid shmlink.zeroCopy()\n${use}`)
    writeFileSync(join(dir, 'cjs.cts'), `import { Endpoint, Region, type ShmlinkError } from 'shmlink'\n${use}`)
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2020', lib: ['ES2020'], module: 'node16', strict: true, noEmit: true, skipLibCheck: false, types: ['node'] },
        files: ['esm.mts', 'cjs.cts'],
      }),
    )
    let files = ''
    try {
      files = execFileSync(process.execPath, [TSC, '-p', dir, '--listFiles'], { encoding: 'utf8' })
    } catch (error) {
      t.fail(String((error as { stdout?: string }).stdout ?? error))
      return
    }
    const ours = files.split('\n').filter((file) => file.startsWith(ROOT) || file.includes('node_modules/shmlink/'))
    t.true(ours.length > 0)
    t.deepEqual(ours.filter((file) => !file.endsWith('.d.ts') && !file.endsWith('.d.mts')), [], 'only declaration files of the package are read')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('internals are not part of the public classes', (t) => {
  const { Endpoint, Region, Server } = require('../index') as typeof import('../index')
  for (const cls of [Endpoint, Region, Server]) {
    const names = [...Object.getOwnPropertyNames(cls), ...Object.getOwnPropertyNames(cls.prototype)]
    t.deepEqual(names.filter((name) => name.startsWith('_')), [], cls.name)
  }
})

test('the API reference in docs/api is generated from the current JSDoc', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'shmlink-api-'))
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typedoc', 'bin', 'typedoc'), '--out', out], { cwd: ROOT, encoding: 'utf8' })
    const diff = execFileSync('diff', ['-r', out, join(ROOT, 'docs', 'api')], { encoding: 'utf8' }).trim()
    t.is(diff, '', 'run `npm run docs:api` and commit docs/api')
  } catch (error) {
    t.fail(`docs/api is out of date (run \`npm run docs:api\`): ${String((error as { stdout?: string }).stdout ?? error).slice(0, 2000)}`)
  } finally {
    rmSync(out, { recursive: true, force: true })
  }
})
