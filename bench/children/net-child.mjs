// The receiving end of the net transport: a stream over a UNIX socket, so messages are
// framed: an 8-byte header (u32 length, u8 flags: 1 = checksum in full, 2 = barrier)
// then the data. The child touches one byte per 4 KiB page of each message as its
// chunks arrive (no reassembly copy) and answers with a 16-byte ack.
import net from 'node:net'
import { ACK_LEN, fullSum, makeAck, pageSumFrom } from '../lib/data.mjs'

const socket = net.connect(process.argv[2])
socket.setNoDelay?.(true)
const header = Buffer.alloc(8)
let headerHave = 0
let remaining = -1 // bytes of data still to come; -1 while reading a header
let offset = 0
let flags = 0
let page = 0
let full = [0, 0]

function finish() {
  if ((flags & 2) !== 0) globalThis.gc?.()
  socket.write(makeAck(page, (flags & 1) !== 0 ? full : [0, 0], Buffer.allocUnsafe(ACK_LEN)))
  remaining = -1
  headerHave = 0
}

socket.on('data', (chunk) => {
  let at = 0
  while (at < chunk.length) {
    if (remaining < 0) {
      const take = Math.min(8 - headerHave, chunk.length - at)
      chunk.copy(header, headerHave, at, at + take)
      headerHave += take
      at += take
      if (headerHave < 8) return
      remaining = header.readUInt32LE(0)
      flags = header[4]
      offset = 0
      page = 0
      full = [0, 0]
      if (remaining === 0) finish()
      continue
    }
    const take = Math.min(remaining, chunk.length - at)
    const part = chunk.subarray(at, at + take)
    page = pageSumFrom(part, offset, page)
    if ((flags & 1) !== 0) fullSum(part, full)
    offset += take
    remaining -= take
    at += take
    if (remaining === 0) finish()
  }
})
socket.on('error', () => process.exit(0))
socket.on('close', () => process.exit(0))
