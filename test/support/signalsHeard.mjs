// Preloaded into the CLI by a test (NODE_OPTIONS=--import …): once the program listens for SIGTERM (main.ts
// installs its handlers first, before it loads the rest), writes a line to the file SIGNALS_HEARD_FILE
// names, so that the test can send a signal while the program still loads.
import * as Fs from "node:fs"

const on = process.on
process.on = function(name, listener) {
  const result = on.call(this, name, listener)
  const file = process.env.SIGNALS_HEARD_FILE
  if (name === "SIGTERM" && file !== undefined) Fs.appendFileSync(file, "listening\n")
  return result
}
