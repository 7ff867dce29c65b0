// Type-checked (not run) in a fresh project: the ESM types resolve through package.json exports.
import shmlink, { Endpoint, Region, isShmlinkError, type Message } from 'shmlink'

const region: Region = Region.create(4096)
const pair: [Endpoint, Endpoint] = Endpoint.pair()
const check: (error: unknown) => boolean = isShmlinkError
const same: typeof Region = shmlink.Region
export type { Message }
export { region, pair, check, same }
