/**
 * What a run has completed, as its checkpoint keeps it: the low-water mark and the ranges committed beyond
 * it. Items (batches, and ranges with nothing to do) are numbered from 1 in key order as the page source
 * emits them, and complete in any order.
 */

/** A committed id range beyond the low-water mark, as the checkpoint keeps it (both ends inclusive). */
export type DoneRange = readonly [first: string, last: string]

export interface Ledger {
  /** The first item the low-water mark has not passed. */
  readonly next: number
  /** Items completed beyond the low-water mark, by number. */
  readonly above: ReadonlyMap<number, DoneRange>
  /**
   * Ranges an earlier process committed beyond its low-water mark, kept until this run notes them complete:
   * a second crash must not forget them.
   */
  readonly inherited: ReadonlyArray<DoneRange>
}

export const make = (inherited: ReadonlyArray<DoneRange>): Ledger => ({ next: 1, above: new Map(), inherited })

const same = (a: DoneRange, b: DoneRange) => a[0] === b[0] && a[1] === b[1]

/**
 * Notes item `seq`, covering `range`, complete. The low-water mark moves over every item completed in
 * sequence: `cursor` is its new place (the last id of the last item passed; none when it stays), `passed`
 * how many items it went over, and `done` the ranges the checkpoint keeps beyond it, in key order.
 */
export const complete = (ledger: Ledger, seq: number, range: DoneRange) => {
  const above = new Map(ledger.above).set(seq, range)
  let next = ledger.next
  let cursor: string | undefined
  for (let passing = above.get(next); passing !== undefined; passing = above.get(next)) {
    cursor = passing[1]
    above.delete(next++)
  }
  const inherited = ledger.inherited.filter((r) => !same(r, range))
  const done = [...above.values(), ...inherited].sort((a, b) => (a[0] < b[0] ? -1 : 1))
  return { ledger: { next, above, inherited } satisfies Ledger, cursor, passed: next - ledger.next, done }
}
