import test from 'ava'

// kill -9 at random points, in both directions: one kill per scenario and direction here;
// `node bench/kill.mjs --kills 300` (run by `npm run soak`) does hundreds.
// docs/RELIABILITY.md describes the scenarios; fixtures/kill-survivor.cjs lists what the
// survivor checks. A failure names its seed: SHMLINK_KILL_SEED=<seed> repeats the run.

interface Report {
  closeCode: string
  socketReleased: boolean
  after: Record<string, string>
  promiseOutcomes: Record<string, number>
  counts: Record<string, number>
  plan: Record<string, unknown>
  before: { fds: number; mappings: number; regions: number }
  end: { fds: number; mappings: number; regions: number }
}
interface Outcome {
  victimExit?: { code: number | null; signal: string | null }
  report?: Report
  problems: string[]
}
interface KillRun {
  SCENARIOS: string[]
  DIRECTIONS: string[]
  runKill(options: { scenario: string; direction: string; seed: number }): Promise<Outcome>
}

const { SCENARIOS, DIRECTIONS, runKill } = require('./fixtures/kill-run.cjs') as KillRun

const linux = process.platform === 'linux' ? test : test.skip
const PEER_CLOSED = 'ERR_SHMLINK_PEER_CLOSED'
const baseSeed = Number(process.env.SHMLINK_KILL_SEED ?? Math.floor(Math.random() * 2 ** 30))

/** Two runs at a time: each is two processes, and the machine may have two cores. */
let running = 0
const queue: Array<() => void> = []
async function slot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= 2) await new Promise<void>((resolve) => queue.push(resolve))
  running++
  try {
    return await work()
  } finally {
    running--
    queue.shift()?.()
  }
}

let index = 0
for (const scenario of SCENARIOS) {
  for (const direction of DIRECTIONS) {
    const seed = baseSeed + index++
    linux(`${scenario}, ${direction}: the survivor sees the end, keeps nothing pending and leaks nothing`, async (t) => {
      const outcome = await slot(() => runKill({ scenario, direction, seed }))
      const report = outcome.report
      t.log(`seed ${seed}; plan ${JSON.stringify(report?.plan)}; counts ${JSON.stringify(report?.counts)}; promises ${JSON.stringify(report?.promiseOutcomes)}`)
      t.deepEqual(outcome.problems, [], `seed ${seed}`)
      t.is(outcome.victimExit?.signal, 'SIGKILL')
      t.is(report?.closeCode, PEER_CLOSED)
      t.deepEqual(report?.after, { send: PEER_CLOSED, recv: PEER_CLOSED, sendSync: PEER_CLOSED, recvSync: PEER_CLOSED })
      t.true(report?.socketReleased)
      t.is(report?.end.mappings, report?.before.mappings)
      t.is(report?.end.regions, report?.before.regions)
    })
  }
}
