/**
 * examples/python-numpy runs: Node hands frames to a Python numpy worker and checks every
 * one that comes back. It runs with the venv `bash peers/build.sh` makes (the installed
 * shmlink wheel, and numpy), on 20 frames instead of 100, so it takes a second or two;
 * `npm run example:numpy` runs all 100 and prints the rate.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

const ROOT = join(__dirname, '..')
const PYTHON = join(ROOT, 'peers', 'python', 'build', 'venv', 'bin', 'python')

const linux = process.platform === 'linux' ? test : test.skip

linux('the numpy example hands frames to Python and gets each back inverted', async (t) => {
  t.timeout(60_000)
  t.true(existsSync(PYTHON), `no venv at ${PYTHON}; run bash peers/build.sh`)
  const child = spawn(process.execPath, [join(ROOT, 'examples', 'python-numpy', 'parent.js')], {
    env: { ...process.env, SHMLINK_EXAMPLE_PYTHON: PYTHON, FRAMES: '20' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.is(code, 0, output)
  t.regex(output, /^20 frames of 1920x1080 RGBA/m)
  t.regex(output, /[\d.]+ frames\/s/)
})
