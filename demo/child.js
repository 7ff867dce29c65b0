// The demo's child: reads one byte of every 4 KiB page of what it is given and answers
// with their sum, over shmlink and over child_process IPC.
const { Endpoint } = require('../index.js')

const touchPages = (bytes) => {
  let sum = 0
  for (let page = 0; page < bytes.length; page += 4096) sum += bytes[page]
  return sum
}

process.on('message', (bytes) => process.send(touchPages(bytes)))

const endpoint = Endpoint.inherited()
;(async () => {
  for await (const message of endpoint) {
    const region = message.regions[0]
    await endpoint.send(String(touchPages(region.bytes)))
  }
})()
