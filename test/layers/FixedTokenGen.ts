/**
 * Deterministic tokens for tests: "tok-" and a counter, so a run's tokens are predictable and distinct.
 */
import { Effect, Layer } from "effect"
import { TokenGen } from "../../src/TokenGen.js"

export const fixedTokenGen = (prefix = "tok"): Layer.Layer<TokenGen> => {
  let n = 0
  return Layer.succeed(TokenGen, {
    tokens: (count) =>
      Effect.sync(() => Array.from({ length: count }, () => `${prefix}-${(n++).toString(16).padStart(12, "0")}`))
  })
}
