// The receiving end of the child_process IPC transports (started with fork() and
// serialization 'json' or 'advanced'). A data message is { d, v }: d is the data (a
// Buffer with 'advanced'; base64 text with 'json', which cannot carry bytes), v asks for
// a full checksum. The child touches one byte per 4 KiB page and answers { p, a, b }.
// { c: 'B' } is a barrier: collect garbage, answer.
import { fullSum, pageSum } from '../lib/data.mjs'

const json = process.argv[2] === 'json'
const NO_SUM = [0, 0]

process.on('message', (message) => {
  if (message.c !== undefined) {
    globalThis.gc?.()
    process.send({ p: 0, a: 0, b: 0 })
    return
  }
  const data = json ? Buffer.from(message.d, 'base64') : message.d
  const page = pageSum(data)
  const full = message.v ? fullSum(data) : NO_SUM
  process.send({ p: page, a: full[0], b: full[1] })
})
process.on('disconnect', () => process.exit(0))
