/**
 * Keeps a long run's memory flat. Batches in flight hold their id and token arrays across young-generation
 * collections, so that garbage is promoted, and on a large machine V8 lets the old generation grow to
 * hundreds of MB before a full collection. Capping its growth at 25 % past what survived the last full
 * collection (`--heap-growing-percent`, which V8 reads at every collection, so it can be set at run time)
 * bounds the resident size whatever the table size, at a fraction of the CPU that forcing a full
 * collection every few seconds cost (measured in docs/PERFORMANCE.md).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as V8 from "node:v8"

export const layer = (percent = 25): Layer.Layer<never> =>
  Layer.effectDiscard(Effect.sync(() => V8.setFlagsFromString(`--heap-growing-percent=${percent}`)))
