// Run inside a fresh project where shmlink has no binary: prints what require() and import() threw.
'use strict'
function describe(error) {
  return { code: error.code, triple: error.triple, tried: error.tried, message: error.message }
}
let required = null
try {
  require('shmlink')
} catch (error) {
  required = describe(error)
}
import('shmlink').then(
  () => console.log(JSON.stringify({ required, imported: null })),
  (error) => console.log(JSON.stringify({ required, imported: describe(error) })),
)
