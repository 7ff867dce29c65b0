// Node hands 100 frames of 1920x1080 RGBA to a Python worker that processes them with
// numpy, zero-copy both ways, and measures frames per second. Run: npm run example:numpy
// (run.sh makes a venv with numpy and the shmlink Python package, then runs this file).
const { join } = require('node:path')
const { Region, spawnWithEndpoint } = require('../../index.js')

const WIDTH = 1920
const HEIGHT = 1080
const FRAME_BYTES = WIDTH * HEIGHT * 4
const FRAMES = Number(process.env.FRAMES ?? 100)
const IN_FLIGHT = 4 // a small pool: the worker works on one frame while others travel

async function main() {
  const python = process.env.SHMLINK_EXAMPLE_PYTHON ?? join(__dirname, '.venv', 'bin', 'python')
  // Spawn the interpreter itself, not a wrapper script: the child finds its end of the
  // connection through SHMLINK_FD (fd 3 here; 4 if stdio had an 'ipc' entry).
  const { child, endpoint } = spawnWithEndpoint(python, [join(__dirname, 'worker.py')])
  const exited = new Promise((resolve) => child.on('exit', resolve))
  const pool = Array.from({ length: IN_FLIGHT }, () => Region.create(FRAME_BYTES))

  // A frame: every byte set to its value; the worker sums the red channel and inverts it.
  const value = (frame) => (frame * 37 + 11) & 0xff
  const inFlight = [] // [frame number, region], in the order the worker answers
  let next = 0
  const sendFrame = async (region) => {
    const frame = next++
    region.bytes.fill(value(frame))
    inFlight.push([frame, region])
    await endpoint.send(String(frame), { transfer: [region] })
  }

  const started = process.hrtime.bigint()
  for (const region of pool) if (next < FRAMES) await sendFrame(region)
  for (let done = 0; done < FRAMES; done++) {
    const reply = await endpoint.recv()
    const [frame, region] = inFlight.shift()
    if (reply.regions[0] !== region) throw new Error('the worker did not hand back the frame it was given')
    const v = value(frame)
    if (Number(reply.payload.toString()) !== WIDTH * HEIGHT * v) throw new Error(`frame ${frame}: wrong red sum ${reply.payload}`)
    const bytes = region.bytes
    if (bytes[0] !== 255 - v || bytes[FRAME_BYTES - 1] !== 255 - v) throw new Error(`frame ${frame} was not inverted`)
    if (next < FRAMES) await sendFrame(region)
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9

  endpoint.close()
  await exited
  for (const region of pool) region.close()
  const fps = FRAMES / seconds
  console.log(`${FRAMES} frames of ${WIDTH}x${HEIGHT} RGBA (${(FRAME_BYTES / 1e6).toFixed(1)} MB each), ${IN_FLIGHT} in flight,`)
  console.log(`Node -> Python numpy (sum the red channel, invert in place) -> Node, every frame checked:`)
  console.log(`  ${seconds.toFixed(2)} s, ${fps.toFixed(1)} frames/s (${((fps * FRAME_BYTES) / 1e9).toFixed(2)} GB/s of frames processed, none copied)`)
  if (child.exitCode !== 0) throw new Error(`the worker exited with ${child.exitCode}`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
