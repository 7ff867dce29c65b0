// The receiving end of the shmlink transports (started by bench/driver.mjs with
// spawnWithEndpoint). argv[2] is the receive mode (argv[3] 'ring': offer a ring):
//   loop: the event-loop API (await endpoint.recv() / await endpoint.send())
//   sync: endpoint.recvSync() / endpoint.sendSync(), never returning to the event loop
//   sync-into: the same, each payload received into one reused buffer (recvSync({ into }))
//
// Each data message is either inline (the payload is the data) or a 16-byte header with a
// region attached (byte 1 bit 0: close the region after acking: a first-time handoff;
// bit 1: copy mode, as Electron's memory cage imposes: copy the region out with
// readInto() into a buffer reused across messages, and touch that copy).
// The child touches one byte per 4 KiB page of the data, then acks with 16 bytes
// (bench/lib/data.mjs). Payloads shorter than 16 bytes without regions are commands:
// V (checksum the next data message in full), B (barrier: collect garbage, ack),
// F (forget: close every region kept so far, ack).
import { createRequire } from 'node:module'
import { ACK_LEN, fullSum, makeAck, pageSum } from '../lib/data.mjs'

const require = createRequire(import.meta.url)
const { Endpoint } = require('../../index.js')

const mode = process.argv[2]
const endpoint = Endpoint.inherited({ ring: process.argv[3] === 'ring' })
const held = new Set()
let verifyNext = false
let copyTarget = Buffer.alloc(0)
const NO_SUM = [0, 0]

/** Handles one message; returns the ack to send and what to do after sending it. */
function handle(message) {
  const payload = message.payload
  if (message.regions.length === 0 && payload.length < 16) {
    const command = String.fromCharCode(payload[0])
    if (command === 'V') verifyNext = true
    else if (command === 'B') globalThis.gc?.()
    else if (command === 'F') {
      for (const region of held) region.close()
      held.clear()
      globalThis.gc?.()
    }
    return { ack: makeAck(0), close: undefined }
  }
  let data = payload
  let close
  if (message.regions.length > 0) {
    const region = message.regions[0]
    if ((payload[1] & 2) !== 0) {
      if (copyTarget.length !== region.size) copyTarget = Buffer.allocUnsafeSlow(region.size)
      region.readInto(0, copyTarget)
      data = copyTarget
    } else {
      data = region.bytes
    }
    if ((payload[1] & 1) !== 0) close = region
    else held.add(region)
  }
  const page = pageSum(data)
  const full = verifyNext ? fullSum(data) : NO_SUM
  verifyNext = false
  return { ack: makeAck(page, full, Buffer.allocUnsafe(ACK_LEN)), close }
}

function isEnd(error) {
  return error?.code === 'ERR_SHMLINK_PEER_CLOSED' || error?.code === 'ERR_SHMLINK_CLOSED'
}

async function loop() {
  for (;;) {
    let message
    try {
      message = await endpoint.recv()
    } catch (error) {
      if (isEnd(error)) return
      throw error
    }
    const { ack, close } = handle(message)
    await endpoint.send(ack)
    close?.close()
  }
}

function sync(options) {
  for (;;) {
    let message
    try {
      message = endpoint.recvSync(options)
    } catch (error) {
      if (isEnd(error)) return
      throw error
    }
    const { ack, close } = handle(message)
    endpoint.sendSync(ack)
    close?.close()
  }
}

try {
  if (mode === 'sync') sync({})
  else if (mode === 'sync-into') sync({ into: Buffer.alloc(64 * 1024) })
  else await loop()
  endpoint.close()
} catch (error) {
  console.error(`shmlink-child (${mode}):`, error)
  process.exit(1)
}
