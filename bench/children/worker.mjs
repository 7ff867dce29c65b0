// The receiving end of the worker_threads transport: a MessagePort handed over in
// workerData. Messages are structured-cloned (copied), as postMessage does by default.
// Same contract as cp-child.mjs: { d, v } gets { p, a, b }; { c } is a barrier.
// workerData.cpu (the split placement): this thread moves itself to that CPU with
// `taskset -p` on its own thread id (Node cannot set a thread's affinity), so the driver's
// main thread stays on CPU 0 and this one runs on CPU 1.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { workerData } from 'node:worker_threads'
import { fullSum, pageSum } from '../lib/data.mjs'

if (workerData.cpu !== undefined) {
  // /proc/thread-self is this thread's /proc/<pid>/task/<tid>; fs.*Sync run on this thread.
  const tid = path.basename(fs.readlinkSync('/proc/thread-self'))
  execFileSync('taskset', ['-p', '-c', String(workerData.cpu), tid], { stdio: 'ignore' })
  const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(fs.readFileSync('/proc/thread-self/status', 'utf8'))?.[1]
  if (allowed !== String(workerData.cpu)) throw new Error(`worker: could not move to CPU ${workerData.cpu} (on ${allowed})`)
}

const port = workerData.port
const NO_SUM = [0, 0]
port.on('message', (message) => {
  if (message.c !== undefined) {
    globalThis.gc?.()
    port.postMessage({ p: 0, a: 0, b: 0 })
    return
  }
  const data = message.d
  const page = pageSum(data)
  const full = message.v ? fullSum(data) : NO_SUM
  port.postMessage({ p: page, a: full[0], b: full[1] })
})
