// Type-checked (not run) in a fresh project: the CommonJS types resolve through package.json exports.
import shmlink = require('shmlink')

const region: shmlink.Region = shmlink.Region.create(4096)
const pair: [shmlink.Endpoint, shmlink.Endpoint] = shmlink.Endpoint.pair()
export = { region, pair }
