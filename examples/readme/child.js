// child.js: started by parent.js with its end of the connection (SHMLINK_FD).
const { Endpoint } = require('shmlink')

async function main() {
  const parent = Endpoint.inherited()
  for await (const { regions: [frame] } of parent) {
    frame.bytes[0] += 1 // a zero-copy view of the parent's memory
    await parent.send('done', { transfer: [frame] })
  }
}

main()
