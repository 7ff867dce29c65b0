// One list of error codes: the core's (through the binding), index.ts's ErrorCode type
// and docs/ERRORS.md must name the same codes, in the same order.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { errorCodes } from '../binding'
import type { ErrorCode } from '../index'

/** Every ErrorCode once: the compiler refuses this object if the type gains or loses a code. */
const typed: Record<ErrorCode, true> = {
  ERR_SHMLINK_CLOSED: true,
  ERR_SHMLINK_PEER_CLOSED: true,
  ERR_SHMLINK_PEER_REJECTED: true,
  ERR_SHMLINK_WOULD_BLOCK: true,
  ERR_SHMLINK_TIMED_OUT: true,
  ERR_SHMLINK_PROTOCOL_VIOLATION: true,
  ERR_SHMLINK_PEER_INCOMPATIBLE: true,
  ERR_SHMLINK_LIMIT_EXCEEDED: true,
  ERR_SHMLINK_REGION_UNSEALED: true,
  ERR_SHMLINK_REGION_SIZE_MISMATCH: true,
  ERR_SHMLINK_REGION_NOT_MEMFD: true,
  ERR_SHMLINK_REGION_NOT_SHMEM: true,
  ERR_SHMLINK_REGION_WRITABLE: true,
  ERR_SHMLINK_REGION_TRANSFERRED: true,
  ERR_SHMLINK_REGION_FROZEN: true,
  ERR_SHMLINK_REGION_BUSY: true,
  ERR_SHMLINK_REGION_CLOSED: true,
  ERR_SHMLINK_REGION_TOO_LARGE: true,
  ERR_SHMLINK_TOO_MANY_REGIONS: true,
  ERR_SHMLINK_PAYLOAD_TOO_LARGE: true,
  ERR_SHMLINK_FDS_TRUNCATED: true,
  ERR_SHMLINK_INVALID_ARG: true,
  ERR_SHMLINK_ZERO_COPY_UNAVAILABLE: true,
  ERR_SHMLINK_UNSUPPORTED: true,
  ERR_SHMLINK_RUNTIME: true,
  ERR_SHMLINK_OS: true,
  ERR_SHMLINK_BINARY_NOT_FOUND: true,
}

/** The loader's own code, raised in JavaScript before any native code exists. */
const LOADER_ONLY = 'ERR_SHMLINK_BINARY_NOT_FOUND'

test('the core, index.ts and docs/ERRORS.md list the same codes in the same order', (t) => {
  const core = errorCodes()
  const documented = [...readFileSync(join(__dirname, '..', 'docs', 'ERRORS.md'), 'utf8').matchAll(/^\| `(ERR_SHMLINK_[A-Z_]+)` \|/gm)].map((m) => m[1])
  t.deepEqual(Object.keys(typed).filter((code) => code !== LOADER_ONLY), core)
  t.deepEqual(documented.filter((code) => code !== LOADER_ONLY), core)
  t.true(documented.includes(LOADER_ONLY))
})
