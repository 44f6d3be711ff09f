import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { TokenGen } from "../src/TokenGen.js"
import * as Uuid from "../src/Uuid.js"

describe("tokens", () => {
  it.effect("are 32 lowercase hex characters of a version 4 UUID, all distinct", () =>
    Effect.gen(function*() {
      const gen = yield* TokenGen
      const tokens = yield* gen.tokens(20_000)
      expect(tokens).toHaveLength(20_000)
      expect(new Set(tokens).size).toBe(20_000)
      for (const t of tokens) {
        expect(t).toMatch(/^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/)
      }
    }).pipe(Effect.provide(TokenGen.layer)))

  it("look uniformly random (every hex digit of the random part roughly equally often)", () => {
    const counts = new Map<string, number>()
    for (const t of Uuid.v4(10_000)) for (const c of t.slice(0, 12)) counts.set(c, (counts.get(c) ?? 0) + 1)
    expect(counts.size).toBe(16)
    for (const n of counts.values()) expect(Math.abs(n - 7500)).toBeLessThan(600)
  })
})

describe("time-ordered ids", () => {
  it("are version 7, increasing within a batch, and start with the millisecond", () => {
    const now = Date.UTC(2026, 0, 1)
    const ids = Uuid.v7(10_000, now)
    expect(ids.every((id) => /^[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$/.test(id))).toBe(true)
    expect([...ids].sort()).toEqual(ids)
    expect(new Set(ids).size).toBe(ids.length)
    expect(parseInt(ids[0]!.slice(0, 12), 16)).toBe(now)
    expect(parseInt(ids[9_999]!.slice(0, 12), 16)).toBe(now + 2)
  })
})
