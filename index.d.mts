// Types for the ESM entry point (index.mjs), which re-exports the CommonJS build.
import * as shmlink from './index.js'

export * from './index.js'
export default shmlink
