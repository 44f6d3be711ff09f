/**
 * Pins where token randomness comes from: node:crypto's CSPRNG (randomFillSync), never Math.random.
 */
import { Effect } from "effect"
import { randomFillSync } from "node:crypto"
import { afterEach, describe, expect, it, vi } from "vitest"
import { TokenGen } from "../src/TokenGen.js"

vi.mock("node:crypto", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:crypto")>()
  return { ...actual, randomFillSync: vi.fn(actual.randomFillSync) }
})

const tokens = (count: number) =>
  Effect.runSync(Effect.flatMap(TokenGen, (gen) => gen.tokens(count)).pipe(Effect.provide(TokenGen.layer)))

describe("token randomness", () => {
  afterEach(() => vi.restoreAllMocks())

  it("every token byte comes from node:crypto's randomFillSync, one call per batch", () => {
    const fill = vi.mocked(randomFillSync)
    fill.mockClear()
    fill.mockImplementationOnce(<T>(buffer: T) => {
      ;(buffer as Uint8Array).fill(0x11)
      return buffer
    })
    const mathRandom = vi.spyOn(Math, "random")
    // 0x11 everywhere, with the version (4) and variant (10xx) bits set: the bytes decide the whole token.
    expect(tokens(3)).toEqual(Array(3).fill("11111111111141119111111111111111"))
    expect(fill).toHaveBeenCalledTimes(1)
    expect(mathRandom).not.toHaveBeenCalled()
  })

  it("with the real generator, tokens differ from call to call", () => {
    expect(new Set([...tokens(1000), ...tokens(1000)]).size).toBe(2000)
  })
})
