/**
 * Keeps a long run's memory flat. On a large machine V8 lets garbage (per-batch id and token arrays,
 * driver buffers) pile up to hundreds of MB before its first full collection; a full collection every
 * couple of seconds costs a few milliseconds on this small heap and bounds the resident size whatever
 * the table size (measured in docs/PERFORMANCE.md).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as V8 from "node:v8"
import * as Vm from "node:vm"

const collector = (): (() => void) | undefined => {
  try {
    if (typeof globalThis.gc === "function") return globalThis.gc
    V8.setFlagsFromString("--expose-gc")
    const gc: unknown = Vm.runInNewContext("gc")
    return typeof gc === "function" ? () => void gc() : undefined
  } catch {
    return undefined
  }
}

/** A full garbage collection every `millis` while the layer's scope is open. */
export const layer = (millis = 2_000): Layer.Layer<never> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const gc = collector()
    if (gc === undefined) return
    yield* Effect.sync(gc).pipe(Effect.repeat(Schedule.spaced(millis)), Effect.delay(millis), Effect.forkScoped)
  }))
