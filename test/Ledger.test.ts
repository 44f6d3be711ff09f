import { describe, expect, it } from "@effect/vitest"
import { FastCheck as FC } from "effect"
import * as Ledger from "../src/Ledger.js"

/** Item n covers ids (n-1)·10 .. (n-1)·10 + 9, as 32-digit hex. */
const rangeOf = (n: number): Ledger.DoneRange => [
  ((n - 1) * 10).toString(16).padStart(32, "0"),
  ((n - 1) * 10 + 9).toString(16).padStart(32, "0")
]

describe("Ledger", () => {
  it.prop(
    "items completing in any order: the low-water mark is the end of the longest completed prefix, and done " +
      "holds exactly the items completed beyond it, in key order",
    {
      order: FC.integer({ min: 1, max: 40 }).chain((n) => FC.shuffledSubarray([...Array(n).keys()], { minLength: n }))
    },
    ({ order }) => {
      let ledger = Ledger.make([])
      let low = ""
      const completed = new Set<number>()
      for (const index of order) {
        const seq = index + 1
        const { cursor, done, ledger: next, passed } = Ledger.complete(ledger, seq, rangeOf(seq))
        completed.add(seq)
        let prefix = 0
        while (completed.has(prefix + 1)) prefix++
        expect(passed).toBe(prefix - (ledger.next - 1))
        if (cursor !== undefined) low = cursor
        expect(low).toBe(prefix === 0 ? "" : rangeOf(prefix)[1])
        expect(done).toEqual([...completed].filter((n) => n > prefix).sort((a, b) => a - b).map(rangeOf))
        ledger = next
      }
      expect(ledger.above.size).toBe(0)
    }
  )

  it("keeps an inherited range until it is noted complete, and does not change the ledger it is given", () => {
    const inherited = [rangeOf(5), rangeOf(3)]
    const start = Ledger.make(inherited)
    const first = Ledger.complete(start, 2, rangeOf(2))
    expect(first.cursor).toBeUndefined()
    expect(first.done).toEqual([rangeOf(2), rangeOf(3), rangeOf(5)])
    expect(start.above.size).toBe(0)
    const second = Ledger.complete(first.ledger, 1, rangeOf(1))
    expect([second.cursor, second.passed]).toEqual([rangeOf(2)[1], 2])
    expect(second.done).toEqual([rangeOf(3), rangeOf(5)])
    const third = Ledger.complete(second.ledger, 3, [...rangeOf(3)])
    expect([third.cursor, third.done]).toEqual([rangeOf(3)[1], [rangeOf(5)]])
  })
})
