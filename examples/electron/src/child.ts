// A plain Node child process: its end of the connection comes through SHMLINK_FD, and it
// changes the frame in place through a zero-copy view, then hands it back.
import { Endpoint } from 'shmlink'

async function main(): Promise<void> {
  const parent = Endpoint.inherited()
  for await (const { regions } of parent) {
    const pixels = new Uint32Array(regions[0].bytes.buffer)
    for (let i = 0; i < pixels.length; i++) pixels[i] = ~pixels[i] | 0xff000000
    await parent.send('inverted', { transfer: regions })
  }
}

main()
