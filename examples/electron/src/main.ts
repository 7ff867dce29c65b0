// The Electron main process. It creates frames in shared memory and exchanges them
// (a) with a utility process, which cannot inherit a descriptor and so connects by name,
//     with the server's credentials checked, and
// (b) with a plain Node child process started with spawnWithEndpoint,
// then shows what came back in a window through ordinary Electron IPC.
//
// Electron's V8 memory cage refuses external buffers in every process type, so this
// process (and the utility process) use copy mode: region.write() and region.readInto(),
// one memmove each. The plain child reads and writes the same memory zero-copy.
import { app, BrowserWindow, utilityProcess } from 'electron'
import { join } from 'node:path'

import { Endpoint, Region, spawnWithEndpoint, zeroCopy } from 'shmlink'

const WIDTH = 1920
const HEIGHT = 1080
const FRAME = WIDTH * HEIGHT * 4

/** A frame of RGBA pixels: a gradient, so the other side has something to measure. */
function paint(region: Region): void {
  const row = Buffer.alloc(WIDTH * 4)
  for (let x = 0; x < WIDTH; x++) row.writeUInt32LE((((x * 255) / WIDTH) | 0xff000000) >>> 0, x * 4)
  for (let y = 0; y < HEIGHT; y++) region.write(y * row.length, row)
}

/** (a) The utility process connects to a listener in a directory only this user can write. */
async function withUtilityProcess(): Promise<string> {
  const name = join(app.getPath('userData'), 'frames.sock')
  const server = Endpoint.listen(name) // only this user's processes may connect (the default)
  const worker = utilityProcess.fork(join(__dirname, 'utility.js'), [name])
  const endpoint = await server.accept()
  server.close()
  if (endpoint.peer.pid !== worker.pid) throw new Error(`unexpected client ${endpoint.peer.pid}`)
  const frame = Region.create(FRAME)
  paint(frame)
  // The utility process reached us by name, so it accepts only frozen regions: memory we
  // can no longer change under it.
  frame.freeze()
  await endpoint.send('mean red', { regions: [frame] })
  const reply = await endpoint.recv()
  endpoint.close()
  frame.close()
  return `utility process: mean red ${reply.payload.toString()}`
}

/** (b) A plain Node child inherits its end; it inverts the frame in place, zero-copy. */
async function withChildProcess(): Promise<string> {
  const { endpoint } = spawnWithEndpoint('node', [join(__dirname, 'child.js')], { stdio: 'inherit' })
  const frame = Region.create(FRAME)
  paint(frame)
  await endpoint.send('invert', { transfer: [frame] })
  const { regions } = await endpoint.recv()
  const pixel = Buffer.alloc(4)
  regions[0].readInto(4 * (WIDTH - 1), pixel) // the last pixel of the first row
  endpoint.close()
  frame.close()
  return `child process: last pixel after inversion 0x${pixel.readUInt32LE(0).toString(16)}`
}

app.whenReady().then(async () => {
  const window = new BrowserWindow({ width: 640, height: 320, webPreferences: { preload: join(__dirname, 'preload.js') } })
  await window.loadFile(join(__dirname, '..', 'index.html'))
  const lines = [`zero-copy bytes in the main process: ${zeroCopy()}`, await withUtilityProcess(), await withChildProcess()]
  window.webContents.send('results', lines)
})

app.on('window-all-closed', () => app.quit())
