/**
 * Keeps a long run's memory flat. Batches in flight hold their id and token arrays across young-generation
 * collections, so that garbage is promoted to the old generation. Two V8 settings bound it:
 *
 * - `--heap-growing-percent=25`: after each full collection the old generation may grow 25 % past what
 *   survived before the next one starts, where V8 would otherwise let it reach hundreds of MB on a large
 *   machine. V8 reads it at every collection, so it can be set at run time.
 * - One full collection as the command starts. Until its first full collection V8 sizes the old generation
 *   by start-up heuristics instead of that rule; when the first one came late, a million-row run grew to
 *   171–182 MB resident before it (5 of 32 runs, against 129–133 MB otherwise). Collecting once at the
 *   start puts the rule in force from the first batch, for the cost of collecting a heap of a few MB.
 *
 * Both measured in docs/PERFORMANCE.md. `gc` is V8's own, reached the way test runners reach it without
 * a command-line flag: exposed by a flag set at run time, taken from a fresh context.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as V8 from "node:v8"
import * as Vm from "node:vm"

const collectFully = (): void => {
  V8.setFlagsFromString("--expose-gc")
  const gc: unknown = Vm.runInNewContext("gc")
  if (typeof gc === "function") gc()
}

export const layer = (percent = 25): Layer.Layer<never> =>
  Layer.effectDiscard(Effect.sync(() => {
    V8.setFlagsFromString(`--heap-growing-percent=${percent}`)
    collectFully()
  }))
