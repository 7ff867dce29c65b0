// The Electron example (examples/electron): type-checked against the electron package's own
// types (installed with --ignore-scripts: the Electron binary cannot be downloaded here),
// and its utility-process and child-process sides run under Node in the copy mode
// Electron's memory cage imposes, with this process playing the main process.
import test from 'ava'
import { execFileSync, fork } from 'node:child_process'
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import { join } from 'node:path'

import { Endpoint, Region, spawnWithEndpoint } from '../index'
import { socketPath } from './helpers'

const EXAMPLE = join(__dirname, '..', 'examples', 'electron')
const TSC = join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc')

test.before(() => {
  if (!existsSync(join(EXAMPLE, 'node_modules', 'electron', 'electron.d.ts'))) {
    execFileSync('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: EXAMPLE, stdio: 'inherit' })
  }
  execFileSync(process.execPath, [TSC, '-p', EXAMPLE], { stdio: 'inherit' })
})

test('the example type-checks against electron’s own types and compiles', (t) => {
  for (const file of ['main.js', 'utility.js', 'child.js', 'preload.js']) t.true(existsSync(join(EXAMPLE, 'dist', file)), file)
})

test('the utility-process side: connects by name, accepts the frozen frame, copies it out', async (t) => {
  const name = socketPath('electron')
  const server = Endpoint.listen(name)
  const utility = fork(join(EXAMPLE, 'dist', 'utility.js'), [name], { env: { ...process.env, SHMLINK_FORCE_COPY: '1' } })
  const endpoint = await server.accept()
  server.close()
  t.is(endpoint.peer.pid, utility.pid!)
  const frame = Region.create(16 * 4)
  for (let i = 0; i < 16; i++) frame.write(i * 4, new Uint8Array([i * 16, 0, 0, 255]))
  frame.freeze()
  await endpoint.send('mean red', { regions: [frame] })
  t.is((await endpoint.recv()).payload.toString(), '120.0')
  const [code] = await once(utility, 'exit')
  t.is(code, 0)
  endpoint.close()
})

test('the child-process side: inverts the frame in place, zero-copy, and hands it back', async (t) => {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, [join(EXAMPLE, 'dist', 'child.js')], { stdio: 'inherit' })
  const frame = Region.create(8)
  frame.write(0, new Uint8Array([0x10, 0x20, 0x30, 0xff, 0, 0, 0, 0xff]))
  await endpoint.send('invert', { transfer: [frame] })
  const { regions } = await endpoint.recv()
  t.deepEqual([...regions[0].read(0, 8)], [0xef, 0xdf, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff])
  endpoint.close()
  await once(child, 'exit')
})
