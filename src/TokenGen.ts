/**
 * New ticket tokens. Production tokens come from node:crypto only: 32 lowercase hex characters of a
 * random (v4) UUID, the format the Django app writes.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Uuid from "./Uuid.js"

export interface TokenGenService {
  /** `count` fresh tokens, generated together. */
  readonly tokens: (count: number) => Effect.Effect<ReadonlyArray<string>>
}

export class TokenGen extends Context.Tag("TokenGen")<TokenGen, TokenGenService>() {
  /** The CSPRNG generator. */
  static readonly layer: Layer.Layer<TokenGen> = Layer.succeed(TokenGen, {
    tokens: (count) => Effect.sync(() => Uuid.v4(count))
  })
}
