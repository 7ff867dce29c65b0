// How many rounds each size gets, per mode. Fixed counts, so every run measures the same
// thing; `warm` rounds (one block) are run and discarded before the measured passes, and
// each measured block also discards its own first round. The full plan warms the small
// sizes up for 4 000 rounds: V8 optimizes the hot functions of index.ts and of the
// receiving child only after some thousands of calls. Per 500 ring round trips (split, a
// scratch run): 10.5, 8.0, 4.8, 4.5, 4.2, 4.5, 3.1, 2.9, 2.7 µs median, then flat; with
// 300 warm-up rounds the measured median fell in that slope. The driver records each warm-up
// block's median (`warmup_median`), so the cold start stays visible.
import { KiB, MiB } from './data.mjs'

export const ALL_SIZES = [16, 4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]
export const MAX_INLINE = 64 * KiB

const FULL = {
  sizes: ALL_SIZES,
  rounds(size) {
    if (size <= 64 * KiB) return { warm: 4000, passes: 10, block: 300 }
    if (size <= 1 * MiB) return { warm: 30, passes: 10, block: 40 }
    if (size <= 16 * MiB) return { warm: 4, passes: 8, block: 10 }
    if (size <= 64 * MiB) return { warm: 2, passes: 6, block: 8 }
    return { warm: 1, passes: 4, block: 3 }
  },
  region: { sizes: [4 * KiB, 1 * MiB, 64 * MiB], warm: 300, passes: 10, block: 500 },
  // bench/c/first.c at 64 MiB, all nine populate strategies interleaved (driver.mjs)
  firstStrategies: { size: 64 * MiB, warm: 1, passes: 5, block: 3 },
  cross: {
    rtt16: { warm: 4000, passes: 10, block: 300 },
    known64m: { warm: 2, passes: 6, block: 5 },
  },
}

const QUICK = {
  sizes: ALL_SIZES.filter((s) => s <= 64 * MiB),
  rounds(size) {
    if (size <= 64 * KiB) return { warm: 100, passes: 4, block: 150 }
    if (size <= 1 * MiB) return { warm: 5, passes: 4, block: 10 }
    if (size <= 16 * MiB) return { warm: 2, passes: 3, block: 3 }
    return { warm: 1, passes: 3, block: 2 }
  },
  region: { sizes: [4 * KiB, 1 * MiB, 64 * MiB], warm: 100, passes: 4, block: 250 },
  // not run in quick mode (run.mjs passes --skip-first-strategies); kept for --plan quick by hand
  firstStrategies: { size: 64 * MiB, warm: 0, passes: 2, block: 2 },
  cross: {
    rtt16: { warm: 100, passes: 4, block: 150 },
    known64m: { warm: 1, passes: 3, block: 2 },
  },
}

export function plan(name) {
  if (name === 'quick') return QUICK
  if (name === 'full') return FULL
  throw new Error(`unknown plan ${name}`)
}
