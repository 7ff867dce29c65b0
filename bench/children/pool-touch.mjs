// The js-pool-touch floor (bench/lib/transports.mjs, JsPoolTouchTransport): the page loops
// of the pooled-stream rows with no IPC. One process holds `count` shmlink regions and per
// frame writes one byte per page of region f % count (the producer's stampPages) and then
// reads one byte per page of the region written two frames earlier (the consumer's
// pageSum, over memory the cache no longer holds, as in the stream). What the pooled
// stream adds to this is the cost of two processes and of shmlink; what this adds to
// c-pool-stream is V8's loops against C's.
//
// It speaks bench/c/'s line protocol (CProcess), on stdin and stdout:
//   setup <size> <count>   -> "ok 0"    regions made and every page written once
//   frames <n>             -> "ok <n> <ns per frame>..."
//   quit
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'
import { PAGE, pageSum } from '../lib/data.mjs'

const require = createRequire(import.meta.url)
const { Region } = require('../../index.js')

let held = []
let regions = []
let frame = 0

function stampPages(bytes, value) {
  for (let k = 0; k < bytes.length; k += PAGE) bytes[k] = value
}

const frameValue = (f) => (f * 7 + 1) & 0xff

function runFrames(n) {
  const count = regions.length
  const times = new Array(n)
  const pages = regions[0].length / PAGE
  for (let i = 0; i < n; i++, frame++) {
    const t0 = process.hrtime.bigint()
    stampPages(regions[frame % count], frameValue(frame))
    const earlier = frame - (count - 1)
    const sum = pageSum(regions[(earlier + count) % count])
    times[i] = Number(process.hrtime.bigint() - t0)
    if (earlier >= 0 && sum !== ((frameValue(earlier) * pages) >>> 0)) throw new Error(`js-pool-touch: frame ${earlier} page sum ${sum}`)
  }
  return times
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  const [command, a, b] = line.split(' ')
  if (command === 'quit') break
  try {
    if (command === 'setup') {
      for (const region of held) region.close()
      held = []
      regions = []
      const size = Number(a)
      const count = Number(b)
      if (!(size > 0 && size % PAGE === 0 && count >= 2)) throw new Error('usage: setup <size, a multiple of 4096> <count, at least 2>')
      held = Array.from({ length: count }, () => Region.create(size))
      regions = held.map((region) => region.bytes)
      for (const bytes of regions) bytes.fill(1)
      frame = 0
      process.stdout.write('ok 0\n')
    } else if (command === 'frames') {
      const times = runFrames(Number(a))
      process.stdout.write(`ok ${times.length} ${times.join(' ')}\n`)
    } else {
      throw new Error(`unknown command ${command}`)
    }
  } catch (error) {
    process.stdout.write(`err ${error.message}\n`)
  }
}
