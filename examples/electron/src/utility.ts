// The utility process: connects to the main process by name (utilityProcess.fork cannot
// pass a descriptor), checks that the server runs as this user (the default), and
// measures the frame it is given. It runs under the memory cage too: it copies the frame
// into its own buffer with readInto().
import { Endpoint } from 'shmlink'

async function main(): Promise<void> {
  const endpoint = await Endpoint.connect(process.argv[2])
  const { regions } = await endpoint.recv()
  const pixels = Buffer.alloc(regions[0].size)
  regions[0].readInto(0, pixels)
  let red = 0
  for (let i = 0; i < pixels.length; i += 4) red += pixels[i]
  await endpoint.send((red / (pixels.length / 4)).toFixed(1))
  endpoint.close()
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
