// The receiving end of the worker_threads transport: a MessagePort handed over in
// workerData. Messages are structured-cloned (copied), as postMessage does by default.
// Same contract as cp-child.mjs: { d, v } gets { p, a, b }; { c } is a barrier.
import { workerData } from 'node:worker_threads'
import { fullSum, pageSum } from '../lib/data.mjs'

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
