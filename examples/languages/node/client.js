// client.js: sends a server a frozen region with some text, prints the answer.
//   node client.js <socket-path>
const { Endpoint, Region } = require('shmlink')

async function main() {
  const server = await Endpoint.connect(process.argv[2]) // checks who serves there
  const words = Buffer.from('hello from node')
  const text = Region.create(words.length)
  text.write(0, words)
  text.freeze() // read-only for every process from now on
  await server.send('upper', { regions: [text] })
  const { payload } = await server.recv()
  console.log(payload.toString()) // HELLO FROM NODE
  server.close()
}

main()
