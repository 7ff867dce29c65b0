// ESM entry point. The API is the CommonJS build (index.js, compiled from index.ts); this
// re-exports it, so `import { Region } from 'shmlink'`, `import shmlink from 'shmlink'` and
// `require('shmlink')` share one copy of the module and its native binding.
//
// It loads index.js with require() rather than `export * from './index.js'`: when no native
// binary loads, Node 20 would otherwise report that error as uncaught even to a caller that
// catches the rejected import(). Keep the names below in step with index.ts's exports
// (__test__/install.spec.ts compares them).
import { createRequire } from 'node:module'

const shmlink = createRequire(import.meta.url)('./index.js')

export const { Endpoint, Region, RegionPool, Server, isShmlinkError, processStats, setProcessLimits, spawnWithEndpoint, wakeupBackend, zeroCopy } = shmlink
export default shmlink
