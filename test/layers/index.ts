/**
 * A whole in-memory world for the pipeline: tickets, checkpoint store, tokens, a silent progress sink
 * that records events, and the Db description. Tests build one and provide `world.layer`.
 */
import { Effect, Layer, Ref } from "effect"
import type { Host } from "../../src/Checkpoint.js"
import { Db } from "../../src/Db.js"
import { initial, Progress, type ProgressEvent, step } from "../../src/Progress.js"
import { EventLog } from "./EventLog.js"
import { fixedTokenGen } from "./FixedTokenGen.js"
import { MemoryStore, testHost } from "./MemoryCheckpoint.js"
import { type Faults, MemoryTable, type MemoryTicket } from "./MemoryTicketRepo.js"

export * from "./EventLog.js"
export * from "./FixedTokenGen.js"
export * from "./MemoryCheckpoint.js"
export * from "./MemoryTicketRepo.js"

/** Progress that draws nothing and keeps every event. */
export const recordingProgress = (events: Array<ProgressEvent>): Layer.Layer<Progress> =>
  Layer.effect(
    Progress,
    Effect.gen(function*() {
      const state = yield* Ref.make(initial("", 0))
      return {
        emit: (event) =>
          Effect.sync(() => events.push(event)).pipe(Effect.zipRight(Ref.update(state, (s) => step(s, event, 0)))),
        state: Ref.get(state)
      }
    })
  )

export const memoryDb = Layer.succeed(Db, { dialect: "sqlite", identity: "memory:test", display: "memory" })

export class World {
  readonly log = new EventLog()
  readonly table: MemoryTable
  readonly store: MemoryStore
  readonly progress: Array<ProgressEvent> = []

  constructor(tickets: ReadonlyArray<MemoryTicket>, faults: Faults = {}) {
    this.table = new MemoryTable(tickets, this.log, faults)
    this.store = new MemoryStore(this.log)
  }

  layer(host: Host = testHost) {
    return Layer.mergeAll(
      this.table.layer,
      this.store.layer(host),
      fixedTokenGen(),
      recordingProgress(this.progress),
      memoryDb
    )
  }
}
