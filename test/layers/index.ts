/**
 * A whole in-memory world for the pipeline: tickets, checkpoint store, tokens, a silent progress sink
 * that records events, and the Db description. Tests build one and provide `world.layer`.
 */
import { Effect, Layer } from "effect"
import type { Host } from "../../src/Checkpoint.js"
import { Db } from "../../src/Db.js"
import { Progress, type ProgressEvent } from "../../src/Progress.js"
import * as Replicas from "../../src/Replicas.js"
import type { TokenGen } from "../../src/TokenGen.js"
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
  Layer.succeed(Progress, { emit: (event) => Effect.sync(() => void events.push(event)) })

export const memoryDb = Layer.succeed(Db, { dialect: "sqlite", identity: "memory:test", display: "memory" })

export class World {
  readonly log = new EventLog()
  readonly table: MemoryTable
  readonly store: MemoryStore
  readonly progress: Array<ProgressEvent> = []
  /** The replicas a run waits on: none unless a test sets some. */
  replicas: Replicas.ReplicasService = Replicas.none

  /**
   * `host` is the process that runs in this world; `tokens` its token generator, one counter for every run
   * in this world and the worlds after a kill (the table refuses a token it already holds, as the unique
   * key does).
   */
  constructor(
    tickets: ReadonlyArray<MemoryTicket>,
    faults: Faults = {},
    readonly host: Host = testHost,
    readonly tokens: Layer.Layer<TokenGen> = fixedTokenGen()
  ) {
    this.table = new MemoryTable(tickets, this.log, faults)
    this.store = new MemoryStore(this.log)
  }

  /**
   * The world a new process on the same host finds after a kill -9 at this instant: copies of the table,
   * of the checkpoint store's data and of the log as they are now. The killed process's fibers may run on,
   * but only in this world, so nothing it does afterwards (its finalizers releasing the lock included)
   * reaches the new one; its lock stays, held by a pid that is gone.
   */
  afterKill(faults: Faults = {}): World {
    const pid = this.host.pid + 1
    const next = new World(this.table.sorted.map((t) => ({ ...t })), faults, {
      hostname: this.host.hostname,
      pidNamespace: this.host.pidNamespace,
      bootId: this.host.bootId,
      pid,
      isAlive: (p) => p === pid
    }, this.tokens)
    next.log.events.push(...this.log.events)
    next.table.rotations.push(...this.table.rotations)
    next.table.pages.push(...this.table.pages)
    next.table.scanLimit = this.table.scanLimit
    next.table.spans = this.table.spans
    for (const [key, entry] of this.store.data) next.store.data.set(key, { ...entry })
    return next
  }

  layer(host: Host = this.host) {
    return Layer.mergeAll(
      this.table.layer,
      this.store.layer(host),
      this.tokens,
      recordingProgress(this.progress),
      memoryDb,
      Layer.succeed(Replicas.Replicas, this.replicas)
    )
  }
}
