/**
 * What happened, in order, across the in-memory repository and checkpoint store: the record from which
 * the pipeline's invariants are checked at every instant (a crash can happen between any two events).
 */
export type Event =
  | { readonly _tag: "commit"; readonly ids: ReadonlyArray<string> }
  | {
    readonly _tag: "save"
    readonly cursor: string
    readonly done: ReadonlyArray<readonly [string, string]>
    readonly status: string
  }

export class EventLog {
  readonly events: Array<Event> = []
  /** Called with each event's index as it happens, synchronously: a test can act at that exact instant. */
  onEvent: ((index: number) => void) | undefined = undefined
  push(event: Event): void {
    this.events.push(event)
    this.onEvent?.(this.events.length - 1)
  }
}

/** Whether a checkpoint (cursor and committed ranges beyond it) covers an id. */
export const covers =
  (save: { readonly cursor: string; readonly done: ReadonlyArray<readonly [string, string]> }) =>
  (id: string): boolean => id <= save.cursor || save.done.some(([first, last]) => id >= first && id <= last)

/**
 * Replays the log and checks, after every event: (1) every in-scope id the saved checkpoint covers has
 * committed; (2) committed ids it does not cover (what a crash at that instant would redo) are at most
 * `maxRedo`; (3) the cursor never moves back. Returns the first violation, or undefined.
 */
export const checkInvariants = (
  log: EventLog,
  scopeIds: ReadonlyArray<string>,
  maxRedo: number,
  initialCursor = ""
): string | undefined => {
  const committed = new Set<string>()
  let saved: { cursor: string; done: ReadonlyArray<readonly [string, string]> } = { cursor: initialCursor, done: [] }
  for (const [i, event] of log.events.entries()) {
    if (event._tag === "commit") {
      for (const id of event.ids) committed.add(id)
    } else {
      if (event.cursor < saved.cursor) {
        return `event ${i}: the checkpoint moved back from ${saved.cursor} to ${event.cursor}`
      }
      saved = event
      const covered = covers(saved)
      const missing = scopeIds.find((id) => id > initialCursor && covered(id) && !committed.has(id))
      if (missing !== undefined) return `event ${i}: checkpoint ${saved.cursor} covers uncommitted id ${missing}`
    }
    const covered = covers(saved)
    const redo = [...committed].filter((id) => !covered(id)).length
    if (redo > maxRedo) return `event ${i}: ${redo} committed ids not covered by the checkpoint (max ${maxRedo})`
  }
  return undefined
}
