/**
 * What happened, in order, across the in-memory repository and checkpoint store: the record from which
 * the pipeline's invariants are checked at every instant (a crash can happen between any two events).
 */
export type Event =
  | { readonly _tag: "commit"; readonly ids: ReadonlyArray<string> }
  | { readonly _tag: "save"; readonly cursor: string; readonly status: string }

export class EventLog {
  readonly events: Array<Event> = []
  push(event: Event): void {
    this.events.push(event)
  }
}

/**
 * Replays the log and checks, after every event: (1) every in-scope id at or below the saved cursor has
 * committed; (2) committed ids above the saved cursor (what a crash at that instant would redo) are at most
 * `maxRedo`. Returns the first violation, or undefined.
 */
export const checkInvariants = (
  log: EventLog,
  scopeIds: ReadonlyArray<string>,
  maxRedo: number,
  initialCursor = ""
): string | undefined => {
  const sorted = [...scopeIds].sort()
  const committed = new Set<string>()
  let cursor = initialCursor
  let redo = new Set<string>()
  for (const [i, event] of log.events.entries()) {
    if (event._tag === "commit") {
      for (const id of event.ids) {
        committed.add(id)
        if (id > cursor) redo.add(id)
      }
    } else {
      if (event.cursor < cursor) return `event ${i}: the checkpoint moved back from ${cursor} to ${event.cursor}`
      cursor = event.cursor
      const missing = sorted.find((id) => id <= cursor && id > initialCursor && !committed.has(id))
      if (missing !== undefined) return `event ${i}: checkpoint ${cursor} passes uncommitted id ${missing}`
      redo = new Set([...redo].filter((id) => id > cursor))
    }
    if (redo.size > maxRedo) return `event ${i}: ${redo.size} committed ids beyond the checkpoint (max ${maxRedo})`
  }
  return undefined
}
