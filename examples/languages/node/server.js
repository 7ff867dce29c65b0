// server.js: answers each client with the text in the region it sent, in upper case.
//   node server.js <socket-path>
const { Endpoint } = require('shmlink')

const server = Endpoint.listen(process.argv[2]) // clients of this user (or root) only
server.on('connection', async (client) => {
  for await (const { regions: [text] } of client) { // frozen: clients are not trusted
    const words = text.read().toString() // a copy, then decode
    await client.send(words.toUpperCase())
  }
})
