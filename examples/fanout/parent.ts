// A parent fans work out to two TypeScript children and gathers the results: each job is a
// region of numbers transferred to a child, which sums them in place and hands the region
// back. Run it with `node --import tsx examples/fanout/parent.ts` (after `npm install`).
//
// The children are started as `process.execPath --import tsx child.ts`, the runtime itself:
// a wrapper such as node_modules/.bin/tsx would start the real child with descriptors of
// its own, and Endpoint.inherited() would explain that it cannot find the socket.
import { join } from 'node:path'
import { once } from 'node:events'

import { Region, spawnWithEndpoint, type Endpoint } from '../../index'

const JOBS = 8
const NUMBERS = 1 << 20

function startWorker(name: string): { endpoint: Endpoint; exited: Promise<unknown[]> } {
  const { child, endpoint } = spawnWithEndpoint(process.execPath, ['--import', 'tsx', join(__dirname, 'child.ts'), name], {
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  return { endpoint, exited: once(child, 'exit') }
}

async function main(): Promise<void> {
  const workers = [startWorker('left'), startWorker('right')]
  const jobs = Array.from({ length: JOBS }, (_, job) => {
    const region = Region.create(NUMBERS * 4)
    new Uint32Array(region.bytes.buffer).fill(job + 1)
    return region
  })
  const results = await Promise.all(
    jobs.map(async (region, job) => {
      const { endpoint } = workers[job % workers.length]
      await endpoint.send(String(job), { transfer: [region] })
      return job
    }),
  )
  const sums = new Map<number, number>()
  for (const { endpoint } of workers) {
    for (let i = 0; i < JOBS / workers.length; i++) {
      const reply = await endpoint.recv()
      const [job, sum] = reply.payload.toString().split(' ').map(Number)
      sums.set(job, sum)
      if (reply.regions[0] !== jobs[job]) throw new Error('the region came back as another object')
      jobs[job].close()
    }
    endpoint.close()
  }
  await Promise.all(workers.map((worker) => worker.exited))
  for (const job of results) {
    if (sums.get(job) !== (job + 1) * NUMBERS) throw new Error(`job ${job}: sum ${sums.get(job)}`)
  }
  console.log(`fan-out: ${JOBS} jobs over ${workers.length} TypeScript children, every sum right`)
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
