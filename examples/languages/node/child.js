// child.js: started by a Node parent; adds 1 to the first byte of each frame, in place,
// and hands the frame back.
const { Endpoint } = require('shmlink')

async function main() {
  const parent = Endpoint.inherited() // the socket SHMLINK_FD names
  for await (const { regions: [frame] } of parent) { // ends when the parent closes
    frame.bytes[0] += 1 // zero copy: the parent's memory
    await parent.send('done', { transfer: [frame] })
  }
}

main()
