/**
 * The regeneration run: a Stream of keyset pages → bounded-concurrency batch rotations → in-order
 * checkpoints of the low-water mark. Pure wiring of the services; every decision about resuming is here.
 *
 * Invariants (see test/Regenerate.test.ts):
 * - the checkpoint's low-water mark only moves over batches that committed, and the ranges committed
 *   beyond it are recorded with it, so a resume skips them;
 * - a batch keeps its slot (one of `concurrency`) until its commit is recorded, so a crash redoes at most
 *   concurrency × batch size tickets and misses none;
 * - a stop request, or a failure retries cannot fix, ends the page source, and no batch begins after it
 *   (pages read ahead are left for a resume); batches in flight still commit and are checkpointed.
 */
import * as Arr from "effect/Array"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import { Checkpoint, fingerprint, type HeldLock, refusal, type RunKey } from "./Checkpoint.js"
import { answeredWithin, Db, defaultStatementTimeout, letEventLoopTurn } from "./Db.js"
import {
  type CheckpointCorrupt,
  type CheckpointUnavailable,
  DatabaseError,
  type DuplicateToken,
  type LockLost,
  NoRunToResume,
  retryTransient,
  RunFailed,
  RunRecord,
  type RunStatus,
  type SchemaMismatch,
  type Scope,
  ScopeMismatch,
  UnfinishedRun
} from "./Domain.js"
import * as Ledger from "./Ledger.js"
import { Progress, ProgressEvent } from "./Progress.js"
import { Replicas } from "./Replicas.js"
import { checkSchemaWithin, type Span, TicketRepo } from "./TicketRepo.js"
import { TokenGen } from "./TokenGen.js"
import * as Uuid from "./Uuid.js"

export type StartMode = "start" | "resume" | "restart"

export interface RegenerateOptions {
  readonly scope: Scope
  readonly batchSize: number
  readonly concurrency: number
  readonly mode: StartMode
  /** Throttle: at most this many rows per second. */
  readonly maxRowsPerSecond: number | undefined
  /** Count the scope for progress (concurrently); without it progress is estimated from the key space. */
  readonly count: boolean
  /** Adaptive batches: the batch size follows the time each batch takes toward this target. */
  readonly targetBatchMillis: number | undefined
  /**
   * How long a page read or a batch UPDATE may go unanswered before it counts as a lost connection: the
   * statement is killed on the server, its connection closed, and the batch retried.
   */
  readonly statementTimeout: Duration.Duration
}

export const defaults = {
  batchSize: 1000,
  concurrency: 8,
  minBatchSize: 100,
  maxBatchSize: 10_000,
  statementTimeoutSeconds: Duration.toSeconds(defaultStatementTimeout)
} as const

export interface RunSummary {
  readonly runId: string
  readonly scope: Scope
  readonly status: RunStatus
  /** Tickets rotated by this process. */
  readonly rotated: number
  /** Tickets rotated by the run, over all its resumptions. */
  readonly rotatedTotal: number
  /** Ids paged in scope but not changed (deleted between the page read and the update). */
  readonly skipped: number
  readonly retries: number
  readonly batches: number
  readonly seconds: number
  readonly rowsPerSecond: number
  readonly cursor: string
  readonly total: number | null
  readonly resumed: boolean
  /** Set when nothing ran, with the reason (a completed run asked to resume). */
  readonly note: string | null
}

/** Where a run that fails after it started leaves its summary (status "failed"), for `--json`. Optional. */
export class FailedSummary extends Context.Tag("FailedSummary")<FailedSummary, Ref.Ref<Option.Option<RunSummary>>>() {}

/** The `--json` summary: one object, with `error`, `message` and `exitCode` added when the run failed. */
export const summaryJson = (summary: RunSummary) => ({
  runId: summary.runId,
  scope: summary.scope,
  status: summary.status,
  rotated: summary.rotated,
  rotatedTotal: summary.rotatedTotal,
  skipped: summary.skipped,
  retries: summary.retries,
  batches: summary.batches,
  seconds: Number(summary.seconds.toFixed(3)),
  rowsPerSecond: Math.round(summary.rowsPerSecond),
  cursor: summary.cursor,
  total: summary.total,
  resumed: summary.resumed,
  note: summary.note
})

const isRetryable = (error: { readonly _tag: string; readonly transient?: boolean }): boolean =>
  error._tag === "DuplicateToken" || error.transient === true

/** Completes once a stop has been requested (a flag, looked at every 100 ms, first after 100 ms). */
const stopSignalled = (stopRequested: Effect.Effect<boolean>) =>
  Effect.repeat(Effect.delay(stopRequested, "100 millis"), { until: (stop) => stop })

/**
 * A step before the batches (the schema check, the lock, reading the checkpoint) or beside them (the count,
 * the id range), of a run, a dry run or a verify: a transient failure — a killed connection, a Redis
 * hiccup, no answer in time — is retried on the same schedule as a batch, uncounted, each retry said in a
 * notice (nothing else shows yet that the command is waiting). Given
 * `stopRequested` (a run's graceful stop), a stop while the step waits interrupts it (its statement killed
 * on the server) and the run within 100 ms: nothing is in flight yet (exit 130/143), and a step waiting on
 * a locked table or an absent server does not hold the exit up.
 */
export const settled = <
  A,
  E extends {
    readonly _tag: string
    readonly transient?: boolean
    readonly message: string
    readonly problem?: string
  },
  R
>(effect: Effect.Effect<A, E, R>, stopRequested?: Effect.Effect<boolean>) => {
  const retried = retryTransient(
    (error: E) => isRetryable(error),
    (error: E) =>
      Effect.flatMap(
        Progress,
        // What went wrong, not the advice for when it stays wrong (to rerun later), which the retry belies.
        (progress) => progress.emit(ProgressEvent.Notice({ text: `${error.problem ?? error.message}; trying again` }))
      )
  )(effect)
  return stopRequested === undefined
    ? retried
    : Effect.raceFirst(retried, Effect.zipRight(stopSignalled(stopRequested), Effect.interrupt))
}

/** Position of an id in the uniform hex key space between `min` and `max` (0..1), from its first 13 digits. */
export const keyFraction = (cursor: string, min: string, max: string): number | undefined => {
  const value = (id: string) => {
    const n = parseInt(id.slice(0, 13).padEnd(13, "0"), 16)
    return Number.isFinite(n) ? n : undefined
  }
  const [c, lo, hi] = [value(cursor), value(min), value(max)]
  if (c === undefined || lo === undefined || hi === undefined || hi <= lo) return undefined
  return Math.min(1, Math.max(0, (c - lo) / (hi - lo)))
}

/**
 * Whether ids look like random (v4) uuids, the version digit being 4 in at least 9 of 10: only then is the
 * key-space estimate of `--no-count` sound.
 */
const uniformIds = (ids: ReadonlyArray<string>): boolean =>
  ids.filter((id) => id[12] === "4").length * 10 >= ids.length * 9

/**
 * The batch size after a batch of `size` took `millis`, toward `target`: at once down to half (or in
 * proportion), up by at most 25 %, within 100-10000. Sizes are multiples of 25 below 1000 and of 100 from
 * there (a few distinct statements, not one per size).
 */
export const adaptBatchSize = (size: number, millis: number, target: number): number => {
  const ratio = target / Math.max(1, millis)
  const step = size < 1000 ? 25 : 100
  const wanted = Math.floor((size * (ratio < 1 ? Math.max(0.5, ratio) : Math.min(1.25, ratio))) / step) * step
  return Math.min(defaults.maxBatchSize, Math.max(defaults.minBatchSize, wanted))
}

/**
 * The controller's next size after a batch read at `size` took `millis`. Several batches are in flight,
 * some read before the last change: a slow one lowers the size (never below what its own timing asks),
 * and only a batch of the current size may raise it, so changes never compound on stale feedback.
 */
export const nextBatchSize = (current: number, size: number, millis: number, target: number): number => {
  const asked = adaptBatchSize(size, millis, target)
  return asked < size ? Math.min(current, asked) : size === current ? asked : current
}

/**
 * What the page source emits, numbered in key order: a batch to rotate, named by its ids (a page) or by its
 * bounds (a span of the whole table), or a range with nothing to do — one an earlier process already
 * committed and recorded, or a stretch of the table with no ticket in scope (either only moves the
 * low-water mark).
 */
type Item =
  | {
    readonly _tag: "Batch"
    readonly seq: number
    readonly ids: ReadonlyArray<string>
    /** The page size it was read with (the batch may be shorter: the end of the table, a range to skip). */
    readonly size: number
    /** How far the batch covers the table: its last id, or beyond (no ticket in scope in between). */
    readonly through: string
  }
  | { readonly _tag: "Span"; readonly seq: number; readonly span: Span }
  | { readonly _tag: "Done"; readonly seq: number; readonly range: Ledger.DoneRange }

/** The smallest id above `id` (all zeros above the empty cursor): a span's first id, as a range bound. */
const successor = (id: string): string =>
  id === "" ? "0".repeat(32) : (BigInt(`0x${id}`) + 1n).toString(16).padStart(32, "0")

const rangeOf = (item: Item): Ledger.DoneRange =>
  item._tag === "Done"
    ? item.range
    : item._tag === "Span"
    ? [successor(item.span.after), item.span.through]
    : [item.ids[0]!, item.through]

/** Tickets a batch held when it was read. */
const rowsOf = (item: Exclude<Item, { _tag: "Done" }>): number =>
  item._tag === "Span" ? item.span.rows : item.ids.length

/**
 * Spans read by one statement: a fourth of the round trips, each of which costs the tool and the server
 * about as much as a span's UPDATE does beyond its rows (see docs/PERFORMANCE.md).
 */
const spansPerRead = 4

/** Batches allowed beyond the low-water mark (committed or in flight), per unit of concurrency. */
const windowPerConcurrency = 4

/**
 * A token bucket over rows; waiting shows as "throttled" in progress. It starts empty and holds at most
 * one batch (`burst`), so no stretch of the run goes faster than the cap by more than one batch.
 */
const makeThrottle = (rowsPerSecond: number | undefined, burst: number, stopRequested: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const bucket = yield* Ref.make({ available: 0, at: yield* Clock.currentTimeMillis })
    return (rows: number) =>
      rowsPerSecond === undefined ? Effect.void : Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { available } = yield* Ref.updateAndGet(bucket, (b) => ({
          available: Math.min(burst, b.available + ((now - b.at) * rowsPerSecond) / 1000) - rows,
          at: now
        }))
        if (available >= 0) return
        yield* progress.emit(ProgressEvent.Phase({ phase: "throttled" }))
        // In short slices, so that a stop request does not wait out a long hold.
        const until = now + (-available * 1000) / rowsPerSecond
        for (let t = now; t < until && !(yield* stopRequested); t = yield* Clock.currentTimeMillis) {
          yield* Effect.sleep(Duration.millis(Math.min(until - t, 200)))
        }
        yield* progress.emit(ProgressEvent.Phase({ phase: "running" }))
      })
  })

/**
 * Waits while a replica holds the batches back (see `Replicas`), saying why in progress, until it no
 * longer does or a stop is requested; batches in flight go on meanwhile.
 */
const waitForReplicas = (stopRequested: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const replicas = yield* Replicas
    return Effect.gen(function*() {
      let reason = yield* replicas.holding
      if (reason === undefined) return
      while (reason !== undefined && !(yield* stopRequested)) {
        yield* progress.emit(ProgressEvent.Waiting({ reason }))
        yield* Effect.sleep("200 millis")
        reason = yield* replicas.holding
      }
      yield* progress.emit(ProgressEvent.Waiting({ reason: undefined }))
    })
  })

/** A throttle below the batch size lets a whole batch through every batchSize / rate seconds: said so. */
export const throttleNote = (options: Pick<RegenerateOptions, "batchSize" | "maxRowsPerSecond">) => {
  const rate = options.maxRowsPerSecond
  if (rate === undefined || rate >= options.batchSize) return undefined
  return `note: --max-rows-per-second ${rate} is below the batch size ${options.batchSize}: one batch every ` +
    `${Math.round(options.batchSize / rate)} s; a smaller --batch-size commits more often`
}

/** What a run (or its plan) warns of before it starts: the schema, the store's setup, records it cannot read. */
export const warningLines = (
  { schemaWarnings, storeWarnings, unreadable }: Pick<Plan, "schemaWarnings" | "storeWarnings" | "unreadable">
) =>
  [...schemaWarnings, ...storeWarnings, ...unreadable.map((error) => error.otherRunNote)].map((warning) =>
    `warning: ${warning}`
  )

/**
 * Before a run or its plan: the schema, then whether the user may make the run's writes, asked without
 * making any — a user that may not is refused before anything is written, not at the first write. Returns
 * what the schema check warns of.
 */
const preflight = (options: RegenerateOptions, stopRequested?: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const schemaWarnings = yield* settled(checkSchemaWithin(options.statementTimeout), stopRequested)
    const repo = yield* TicketRepo
    const checkpoint = yield* Checkpoint
    yield* settled(Effect.zipRight(repo.mayRotate, checkpoint.mayWrite), stopRequested)
    return schemaWarnings
  })

const freshRecord = (key: RunKey, options: RegenerateOptions, now: number) =>
  new RunRecord({
    version: 1,
    runId: Uuid.v4(1)[0]!.slice(0, 12),
    fingerprint: fingerprint(key),
    database: key.database,
    scope: key.scope,
    batchSize: options.batchSize,
    cursor: "",
    done: [],
    rotated: 0,
    batches: 0,
    retries: 0,
    total: null,
    activeMillis: 0,
    startedAt: new Date(now),
    updatedAt: new Date(now),
    status: "running",
    error: null
  })

/** Applies the resume rules: the record to run, or (`done`) the completed run there is nothing to do for. */
const startingRecord = (key: RunKey, options: RegenerateOptions) =>
  Effect.gen(function*() {
    const supersedes = Option.none<RunRecord>() // nothing replaced, unless the run is a new one
    const replaces = Option.none<string>() // an unreadable checkpoint, which only a restart replaces
    // Records of other scopes that cannot be read, when the rules looked for unfinished runs among them.
    let unreadable: ReadonlyArray<CheckpointCorrupt> = []
    const checkpoint = yield* Checkpoint
    const now = yield* Clock.currentTimeMillis
    if (options.mode === "restart") {
      // Whatever is there (unfinished, corrupt, foreign) is abandoned and replaced, and named.
      const cannotRead = (what: string) =>
        Effect.succeed({ existing: Option.none<RunRecord>(), unreadable: Option.some(what) })
      const found = yield* checkpoint.load(key).pipe(
        Effect.map((existing) => ({ existing, unreadable: replaces })),
        Effect.catchTags({
          CheckpointCorrupt: (error) => cannotRead(`the checkpoint at ${error.key} cannot be read (${error.detail})`),
          ForeignCheckpoint: (error) =>
            cannotRead(
              `the checkpoint at ${error.key} belongs to another database or scope (${error.run.database}, ` +
                `${error.run.scope.description})`
            )
        })
      )
      const record = freshRecord(key, options, now)
      return { record, done: false, supersedes: found.existing, replaces: found.unreadable, unreadable }
    }
    const existing = yield* checkpoint.load(key)
    // The most recently started unfinished run of another scope, the latest run or an older one: an operator
    // who left out its scope flags must not start another run unawares (it would also become the one
    // `status` and `verify` show), nor be told that there is nothing to resume.
    const otherUnfinished = Effect.map(checkpoint.unfinished(key.database), (found) => {
      unreadable = found.unreadable
      return Arr.findLast(found.runs, (run) => run.fingerprint !== fingerprint(key))
    })
    if (options.mode === "start") {
      if (Option.isSome(existing) && !existing.value.finished) {
        return yield* new UnfinishedRun({ run: existing.value, asked: key.scope })
      }
      const other = yield* otherUnfinished
      if (Option.isSome(other)) return yield* new UnfinishedRun({ run: other.value, asked: key.scope })
      return { record: freshRecord(key, options, now), done: false, supersedes: existing, replaces, unreadable }
    }
    if (Option.isNone(existing) || existing.value.finished) {
      const other = yield* otherUnfinished
      if (Option.isSome(other)) return yield* new ScopeMismatch({ run: other.value, asked: key.scope })
      if (Option.isNone(existing)) return yield* new NoRunToResume({ scope: key.scope })
      return { record: existing.value, done: true, supersedes, replaces, unreadable }
    }
    const record = new RunRecord({ ...existing.value, status: "running", error: null, batchSize: options.batchSize })
    return { record, done: false, supersedes, replaces, unreadable }
  })

const summaryOf = (
  record: RunRecord,
  counters: { rotated: number; skipped: number; retries: number; batches: number },
  seconds: number,
  resumed: boolean,
  note: string | null
): RunSummary => ({
  runId: record.runId,
  scope: record.scope,
  status: record.status,
  rotated: counters.rotated,
  rotatedTotal: record.rotated,
  skipped: counters.skipped,
  retries: counters.retries,
  batches: counters.batches,
  seconds,
  rowsPerSecond: seconds > 0 ? counters.rotated / seconds : 0,
  cursor: record.cursor,
  total: record.total,
  resumed,
  note
})

/**
 * Runs (or resumes) the regeneration of `options.scope` until the table is done or `stopRequested`
 * turns true, and returns what happened. Holds the slot's lock throughout.
 */
export const regenerate = (options: RegenerateOptions, stopRequested: Effect.Effect<boolean>) =>
  Effect.scoped(Effect.gen(function*() {
    const repo = yield* TicketRepo
    const checkpoint = yield* Checkpoint
    const tokenGen = yield* TokenGen
    const progress = yield* Progress
    const db = yield* Db

    const schemaWarnings = yield* preflight(options, stopRequested)
    const spanning = yield* repo.canSpan(options.scope)
    const key: RunKey = { database: db.identity, scope: options.scope }
    // A lock a gone process of this host left is taken over, but not by a run the resume rules refuse
    // (a plain start after a kill -9, say): that entry, and what `status` says of it, stay as they were.
    if (options.mode !== "restart") {
      const left = yield* settled(checkpoint.holder(key), stopRequested)
      if (Option.exists(left, (held) => held.stale)) yield* settled(startingRecord(key, options), stopRequested)
    }
    const lock = yield* settled(checkpoint.lock(key, options.mode === "restart"), stopRequested)
    const { done, record: starting, replaces, supersedes, unreadable } = yield* settled(
      startingRecord(key, options),
      stopRequested
    )
    if (Option.isSome(supersedes)) {
      // A rerun (from the shell's history, say) replaces every token just issued, and a restart the progress
      // of the run it abandons: say so before it does.
      const previous = supersedes.value
      yield* progress.emit(ProgressEvent.Notice({
        text: previous.finished
          ? `run ${previous.runId} on this scope completed at ${previous.updatedAt.toISOString()}; this new ` +
            `run gives every ticket in scope a new token again (Ctrl-C stops it, resumably)`
          : `run ${previous.runId} on this scope (${previous.status}, ${previous.rotated} rotated) is abandoned; ` +
            `this new run starts over from the first ticket (Ctrl-C stops it, resumably)`
      }))
    }
    if (Option.isSome(replaces)) {
      yield* progress.emit(ProgressEvent.Notice({
        text: `${replaces.value}: this new run replaces it and starts from the first ticket (Ctrl-C stops it, ` +
          `resumably)`
      }))
    }
    for (const text of warningLines({ schemaWarnings, storeWarnings: checkpoint.storeWarnings, unreadable })) {
      yield* progress.emit(ProgressEvent.Notice({ text }))
    }
    const slowThrottle = throttleNote(options)
    if (slowThrottle !== undefined) yield* progress.emit(ProgressEvent.Notice({ text: slowThrottle }))
    const counters = yield* Ref.make({ rotated: 0, skipped: 0, retries: 0, batches: 0 })
    const answered = (operation: string) => answeredWithin(options.statementTimeout, operation)
    if (done) {
      const note = `run ${starting.runId} already completed at ${starting.updatedAt.toISOString()}; nothing to resume`
      return summaryOf(starting, yield* Ref.get(counters), 0, true, note)
    }
    // The run's clock starts here: connecting, the checks and a wait for the lock are not running time (a
    // rate over them would say the batches were slower than they were).
    const startedAt = yield* Clock.currentTimeMillis
    // This process continues a run an earlier one began (whether or not that one had committed anything).
    const resumed = options.mode === "resume"
    const state = yield* Ref.make(starting)
    // The record as last written: what a resume would start from, and what a failure reports (the one in
    // memory may be ahead of it, when the write is what failed).
    const saved = yield* Ref.make(starting)

    const retrying = <A, E extends { readonly _tag: string; readonly transient?: boolean }, R>(
      effect: Effect.Effect<A, E, R>
    ) =>
      retryTransient(
        // After Ctrl-C no retry: not another half minute for a store that stays away (the failure is the
        // answer; what committed meanwhile is redone by the resume, at most the batches in flight), nor for
        // a batch stuck behind a site's row lock (given up, above the checkpoint: see `givenUp`).
        (error: E) => isRetryable(error) ? Effect.map(stopRequested, (stop) => !stop) : false,
        (error: E) =>
          Effect.zipRight(
            Ref.update(counters, (c) => ({ ...c, retries: c.retries + 1 })),
            progress.emit(ProgressEvent.Retried({
              reason: error._tag === "DuplicateToken"
                ? "duplicate token"
                : error._tag === "DatabaseError"
                ? "database"
                : "checkpoint"
            }))
          )
      )(effect)

    type Patch = Partial<Pick<RunRecord, "cursor" | "done" | "rotated" | "batches" | "total" | "status" | "error">>

    /** Applies `patch` to the run record in memory (built from valid parts, so not validated again here). */
    const amend = (patch: (record: RunRecord) => Partial<RunRecord>) =>
      Ref.updateAndGet(state, (r) => new RunRecord({ ...r, ...patch(r) }, true))

    /** Writes the run record with `patch` applied, retrying transient store errors unless `once`. */
    const persist = (patch: (record: RunRecord) => Patch, once = false) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const c = yield* Ref.get(counters)
        const record = yield* amend((r) => ({
          ...patch(r),
          updatedAt: new Date(now),
          retries: starting.retries + c.retries,
          activeMillis: starting.activeMillis + Math.round(now - startedAt)
        }))
        yield* (once ? lock.save(record) : retrying(lock.save(record)))
        yield* Ref.set(saved, record)
        return record
      })

    /** On a failure after the run started: the progress line ends so, and `FailedSummary` gets the counts. */
    const publishing = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.tapError(effect, () =>
        Effect.gen(function*() {
          yield* progress.emit(ProgressEvent.Finished({ outcome: "failed" }))
          const target = yield* Effect.serviceOption(FailedSummary)
          if (Option.isNone(target)) return
          const seconds = ((yield* Clock.currentTimeMillis) - startedAt) / 1000
          const record = new RunRecord({ ...(yield* Ref.get(saved)), status: "failed" }, true)
          yield* Ref.set(target.value, Option.some(summaryOf(record, yield* Ref.get(counters), seconds, resumed, null)))
        }))

    yield* publishing(persist(() => ({})))
    yield* progress.emit(
      ProgressEvent.Started({ label: "regenerate", base: starting.rotated, throttle: options.maxRowsPerSecond })
    )
    if (starting.total !== null) yield* progress.emit(ProgressEvent.Total({ total: starting.total }))

    // Progress denominators, off the critical path: the count runs beside the first batches.
    const range = yield* Ref.make(Option.none<readonly [string, string]>())
    const estimating = !options.count && starting.total === null
    if (options.count) {
      yield* settled(repo.count(options.scope)).pipe(
        Effect.tap((total) => amend(() => ({ total }))),
        Effect.tap((total) => progress.emit(ProgressEvent.Total({ total }))),
        Effect.catchAll((error) => Effect.logWarning(`could not count the scope: ${error.message}`)),
        Effect.forkScoped
      )
    } else if (estimating) {
      // Without a count (a resumed run counted before has its total: progress is exact, no estimate).
      yield* settled(repo.idRange).pipe(
        Effect.tap((r) => Ref.set(range, r)),
        Effect.catchAll((error) => Effect.logWarning(`could not read the id range: ${error.message}`)),
        Effect.forkScoped
      )
    }

    // With --no-count, whether the first batch's ids look uniform enough for the key-space estimate.
    const idsChecked = yield* Ref.make(false)
    const batchSize = yield* Ref.make(options.batchSize)
    const throttle = yield* makeThrottle(options.maxRowsPerSecond, options.batchSize, stopRequested)
    const replicasCaughtUp = yield* waitForReplicas(stopRequested)
    const window = yield* Effect.makeSemaphore(options.concurrency * windowPerConcurrency)
    const halted = yield* Ref.make(false)
    const ledger = yield* Ref.make(Ledger.make(starting.done))

    interface Source {
      readonly cursor: string
      readonly seq: number
      readonly skips: ReadonlyArray<Ledger.DoneRange>
      /** Spans read after the cursor, not yet emitted. */
      readonly ahead: ReadonlyArray<Span>
    }

    /** The end of the stream on a stop request (no batch is taken after it), recorded as such. */
    const halt = Effect.as(Ref.set(halted, true), Option.none())

    // The first failure that retries could not fix. No batch is taken after it, but those in flight commit
    // and are recorded (an interrupted UPDATE might still commit on the server, unrecorded); then the run
    // fails with it, its checkpoint at the last commit.
    const failure = yield* Ref.make(Option.none<DatabaseError | DuplicateToken | SchemaMismatch>())
    const failed = (error: DatabaseError | DuplicateToken | SchemaMismatch) =>
      Effect.zipRight(
        Ref.update(failure, Option.orElse(() => Option.some(error))),
        // A batch taken after this one may be waiting for the slot this one will never free.
        window.release(1)
      )

    /**
     * After a stop request, a read or batch whose transient failure is no longer retried is left undone
     * rather than failing the run: not recorded, it stays above the checkpoint and the resume takes it (a
     * batch whose answer was lost may have committed: the resume gives it new tokens again).
     */
    const givenUp = (error: DatabaseError | DuplicateToken | SchemaMismatch) =>
      Effect.map(stopRequested, (stop) => stop && isRetryable(error))

    /** A read that failed: the end of the stream, as a stop or as the run's failure. */
    const unread = (error: DatabaseError | DuplicateToken | SchemaMismatch) =>
      Effect.flatMap(givenUp(error), (gave) => gave ? halt : Effect.as(failed(error), Option.none()))

    const nextItem = (s: Source): Effect.Effect<Option.Option<readonly [Item, Source]>> =>
      Effect.gen(function*() {
        if (yield* stopRequested) return yield* halt
        if (Option.isSome(yield* Ref.get(failure))) return Option.none()
        yield* replicasCaughtUp
        if (yield* stopRequested) return yield* halt
        const limit = yield* Ref.get(batchSize)
        // Spans once past the ranges an earlier process committed (a page stops a batch short of one), and
        // after the first batch under --no-count, whose ids tell whether the key-space estimate holds.
        if (spanning && s.skips.length === 0 && (options.count || s.seq > 0)) {
          // Spans read ahead of the current batch size (it may have changed since) are read again.
          let ahead = s.ahead[0]?.rows === limit ? s.ahead : []
          if (ahead.length === 0) {
            const read = yield* Effect.either(retrying(
              answered("reading spans of tickets")(repo.spans(s.cursor, limit, spansPerRead))
            ))
            if (Either.isLeft(read)) return yield* unread(read.left)
            ahead = read.right
          }
          // None: fewer than a batch remain, read as a page.
          const span = ahead[0]
          if (span !== undefined) {
            yield* throttle(span.rows)
            if (yield* stopRequested) return yield* halt
            const seq = s.seq + 1
            return Option.some(
              [{ _tag: "Span", seq, span }, { ...s, cursor: span.through, seq, ahead: ahead.slice(1) }] as const
            )
          }
        }
        const page = yield* Effect.either(retrying(
          answered("reading a page of ticket ids")(repo.page(options.scope, s.cursor, limit))
        ))
        if (Either.isLeft(page)) return yield* unread(page.left)
        const { end, ids, through } = page.right
        const skip = s.skips[0]
        const seq = s.seq + 1
        // Stop the batch before a range committed by an earlier process; once there, step over the range.
        const cut = skip === undefined ? -1 : ids.findIndex((id) => id >= skip[0])
        const batch = cut === -1 ? ids : ids.slice(0, cut)
        const reachesSkip = skip !== undefined && (cut !== -1 || through >= skip[0] || end)
        // Where the source goes on from after this page. Spans read ahead (at another batch size) start behind
        // the cursor now: a page drops them.
        const next = (cursor: string, skips = s.skips): Source => ({ cursor, seq, skips, ahead: [] })
        if (batch.length === 0) {
          if (reachesSkip) {
            return Option.some([{ _tag: "Done", seq, range: skip }, next(skip[1], s.skips.slice(1))] as const)
          }
          if (end) return Option.none()
          // A stretch without a ticket in scope (a sparse scope): the low-water mark moves over it.
          return Option.some([{ _tag: "Done", seq, range: [through, through] }, next(through)] as const)
        }
        yield* throttle(batch.length)
        if (yield* stopRequested) return yield* halt
        const covered = reachesSkip ? batch.at(-1)! : through
        return Option.some([{ _tag: "Batch", seq, ids: batch, size: limit, through: covered }, next(covered)] as const)
      })

    // Fresh tokens on every attempt: a retried duplicate gets new ones.
    const byKey = (ids: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const tokens = yield* tokenGen.tokens(ids.length)
        const now = yield* Clock.currentTimeMillis
        return yield* answered("rotating a batch of tokens")(repo.rotate(ids, tokens, new Date(now)))
      })

    /** A span as one range; when it changed since it was read, the tickets now in it by key. */
    const bySpan = (span: Span) =>
      Effect.gen(function*() {
        const tokens = yield* tokenGen.tokens(span.rows)
        const now = yield* Clock.currentTimeMillis
        return yield* answered("rotating a batch of tokens")(repo.rotateSpan(span, tokens, new Date(now)))
      }).pipe(Effect.catchTag("SpanChanged", (changed) =>
        Effect.gen(function*() {
          yield* Effect.logDebug(`${changed.message}; rotating its tickets by key`)
          const ids = yield* answered("reading the ids of a span")(repo.spanIds(span))
          let rotated = 0
          for (let i = 0; i < ids.length; i += defaults.maxBatchSize) {
            rotated += yield* byKey(ids.slice(i, i + defaults.maxBatchSize))
          }
          return rotated
        })))

    const rotate = (item: Exclude<Item, { _tag: "Done" }>) =>
      retrying(item._tag === "Span" ? bySpan(item.span) : byKey(item.ids))

    // Group commit of the checkpoint: a completed item is noted in the run record at once, and one write
    // records every item noted before it began, so the items that complete while a write is on its way share
    // the next one. Each batch keeps its slot until a write that holds its commit is acknowledged: at most
    // `concurrency` committed batches are ever unrecorded (the crash redo bound), as with a write per batch.
    const notes = yield* Ref.make({ noted: 0, saved: 0, writes: 0 })
    const saving = yield* Effect.makeSemaphore(1)
    const noting = yield* Effect.makeSemaphore(1)

    /**
     * Notes a completed item in the run record (see `Ledger.complete`). Returns the note's number and how
     * many items the low-water mark passed.
     */
    const note = (item: Item, rotated: number) =>
      noting.withPermits(1)(Effect.gen(function*() {
        const { cursor, done, ledger: next, passed } = Ledger.complete(yield* Ref.get(ledger), item.seq, rangeOf(item))
        yield* Ref.set(ledger, next)
        yield* amend((r) => ({
          cursor: cursor ?? r.cursor,
          done,
          rotated: r.rotated + rotated,
          batches: r.batches + (item._tag === "Done" ? 0 : 1)
        }))
        const { noted } = yield* Ref.updateAndGet(notes, (n) => ({ ...n, noted: n.noted + 1 }))
        return { number: noted, passed }
      }))

    /** Writes the run record, unless a write begun after note `number` was taken has already recorded it. */
    const saveThrough = (number: number) =>
      saving.withPermits(1)(Effect.gen(function*() {
        const { noted, saved } = yield* Ref.get(notes)
        if (saved >= number) return
        // The notes counted before the record is read: the write holds at least these.
        yield* persist(() => ({}))
        yield* Ref.update(notes, (n) => ({ ...n, saved: noted, writes: n.writes + 1 }))
      }))

    /**
     * Records a completed item: noted, then written to the checkpoint (alone or with others) before its slot
     * and its place in the window free.
     */
    const record = (item: Item, rotated: number) =>
      Effect.gen(function*() {
        const { number, passed } = yield* note(item, rotated)
        yield* saveThrough(number)
        yield* window.release(passed)
        if (item._tag !== "Done") {
          yield* Ref.update(counters, (c) => ({
            ...c,
            rotated: c.rotated + rotated,
            // A span the site inserted into was rotated by key, its new tickets too.
            skipped: c.skipped + Math.max(0, rowsOf(item) - rotated),
            batches: c.batches + 1
          }))
          yield* progress.emit(ProgressEvent.Advanced({ rows: rotated, batchSize: yield* Ref.get(batchSize) }))
        } else {
          // Not a stall: a sparse scope can go a while between batches while its pages read on.
          yield* progress.emit(ProgressEvent.Advanced({ rows: 0 }))
        }
        // Whether or not the id range has come back yet: the batches after the first may all be spans.
        if (estimating && item._tag === "Batch" && !(yield* Ref.getAndSet(idsChecked, true)) && !uniformIds(item.ids)) {
          yield* progress.emit(ProgressEvent.Notice({
            text: "note: many ids here are not random (v4) uuids — time-ordered ids cluster in the key space, " +
              "so the estimated % and ETA may be far off; without --no-count progress is exact"
          }))
        }
        const bounds = yield* Ref.get(range)
        if (Option.isSome(bounds)) {
          const fraction = keyFraction((yield* Ref.get(state)).cursor, bounds.value[0], bounds.value[1])
          if (fraction !== undefined) {
            yield* progress.emit(ProgressEvent.Estimate({ fraction }))
          }
        }
      })

    // A batch's slot, one of `concurrency`: taken before the batch leaves the source (so the source reads on
    // only as slots free) and held until its commit is recorded, so at most `concurrency` batches are ever
    // committed but unrecorded (the crash redo bound). A batch that fails gives it back too; that failure ends
    // the run, and every batch after it returns before beginning.
    const slots = yield* Effect.makeSemaphore(options.concurrency)

    const processItem = (item: Item) =>
      item._tag === "Done" ? record(item, 0) : Effect.zipLeft(
        Effect.gen(function*() {
          if (Option.isSome(yield* Ref.get(failure))) return
          // A page read ahead before the stop: not begun, so not taken; or a batch given up after it. Either
          // stays above the checkpoint (a resume takes it), and its place in the window is freed, as it will
          // never be recorded.
          const undone = Effect.zipRight(Ref.set(halted, true), window.release(1))
          if (yield* stopRequested) return yield* undone
          const start = yield* Clock.currentTimeMillis
          const outcome = yield* Effect.either(rotate(item))
          if (Either.isLeft(outcome)) return yield* ((yield* givenUp(outcome.left)) ? undone : failed(outcome.left))
          const rotated = outcome.right
          const millis = (yield* Clock.currentTimeMillis) - start
          if (options.targetBatchMillis !== undefined) {
            const target = options.targetBatchMillis
            const size = item._tag === "Span" ? item.span.rows : item.size
            yield* Ref.update(batchSize, (current) => nextBatchSize(current, size, millis, target))
          }
          yield* record(item, rotated)
          yield* letEventLoopTurn(db.dialect)
        }),
        slots.release(1)
      )

    const start: Source = { cursor: starting.cursor, seq: 0, skips: starting.done, ahead: [] }
    const stopped = yield* Stream.unfoldEffect(start, nextItem).pipe(
      Stream.tap((item) => item._tag === "Done" ? window.take(1) : Effect.zipRight(window.take(1), slots.take(1))),
      // Batches complete and record themselves in any order, so a slow one does not hold the others back:
      // they run on in their slots until the window is full. The stream passes them on in order, in the
      // cheaper of mapEffect's two forms (the unordered one merges a stream per item: a third of the Effect
      // runtime's work per batch, measured in docs/PERFORMANCE.md); its own bound is the window's, so the
      // window and the slots decide. At concurrency 1, one item after another: the next is read once the
      // batch before it is recorded.
      Stream.mapEffect(processItem, {
        concurrency: options.concurrency === 1 ? 1 : options.concurrency * windowPerConcurrency
      }),
      Stream.runDrain,
      Effect.zipRight(Effect.flatMap(
        Ref.get(failure),
        Option.match({ onNone: () => Ref.get(halted), onSome: (error) => Effect.fail(error) })
      )),
      Effect.catchAll((error): Effect.Effect<never, LockLost | CheckpointUnavailable | RunFailed> =>
        error._tag === "LockLost" ? Effect.fail(error) : Effect.gen(function*() {
          // One attempt, briefly: the store may be what failed, and the failure itself is what to report.
          yield* Effect.ignore(
            Effect.timeout(persist(() => ({ status: "failed", error: error.message }), true), "3 seconds")
          )
          if (error._tag === "CheckpointUnavailable") return yield* error
          // Every commit before the failure was recorded (else the failure would be the store's).
          const { cursor, rotated, runId, scope } = yield* Ref.get(saved)
          return yield* new RunFailed({ error, runId, rotated, cursor, resume: scope.resumeCommand })
        })
      ),
      publishing
    )
    const final = yield* publishing(persist(() => ({ status: stopped ? "interrupted" : "completed" })))
    const { noted, writes } = yield* Ref.get(notes)
    yield* Effect.logDebug(`the checkpoint was written ${writes + 2} times for ${noted} completed items`)
    yield* progress.emit(ProgressEvent.Finished({ outcome: stopped ? "stopped" : "done" }))
    const seconds = ((yield* Clock.currentTimeMillis) - startedAt) / 1000
    return summaryOf(final, yield* Ref.get(counters), seconds, resumed, null)
  }))

export interface Plan {
  readonly database: string
  readonly store: string
  readonly schemaWarnings: ReadonlyArray<string>
  readonly storeWarnings: ReadonlyArray<string>
  /**
   * What the run would do: start a new run, resume one, restart (abandon an unfinished one for a new one),
   * or nothing (it completed).
   */
  readonly action: "start" | "resume" | "restart" | "nothing"
  /** The run it would resume (or find completed), the one a restart would abandon, or the completed run a new one replaces. */
  readonly existing: Option.Option<RunRecord>
  /** An unreadable checkpoint a restart would replace, described. */
  readonly replaces: Option.Option<string>
  /** Records of other scopes that cannot be read (any may be an unfinished run). */
  readonly unreadable: ReadonlyArray<CheckpointCorrupt>
  /** A lock the run would take over: left by a process of this host that is gone, or damaged (a restart). */
  readonly holder: Option.Option<HeldLock>
  readonly total: Option.Option<number>
}

/**
 * What a run would do, without doing it (`--dry-run`): the same checks, the same resume rules (refused
 * where the run would be refused), and nothing written, not even the checkpoint.
 */
export const plan = (options: RegenerateOptions) =>
  Effect.gen(function*() {
    const repo = yield* TicketRepo
    const checkpoint = yield* Checkpoint
    const db = yield* Db
    const schemaWarnings = yield* preflight(options)
    const key: RunKey = { database: db.identity, scope: options.scope }
    // Refused first where the run would be: while another live process holds the lock, or the lock entry is
    // damaged (which only a restart replaces).
    const holder = yield* checkpoint.holder(key)
    if (Option.isSome(holder)) {
      const refused = refusal(holder.value, options.scope, options.mode === "restart")
      if (refused !== undefined) return yield* refused
    }
    const starting = yield* startingRecord(key, options)
    // The record as stored (a resume would mark it running), or the one the new run replaces.
    const existing = options.mode === "resume" ? yield* checkpoint.load(key) : starting.supersedes
    const total = options.count ? Option.some(yield* repo.count(options.scope)) : Option.none<number>()
    // A restart with no unfinished run to abandon starts a run like any other (and says so).
    const abandons = Option.exists(starting.supersedes, (run) => !run.finished)
    const action = starting.done ? "nothing" : options.mode === "restart" && !abandons ? "start" : options.mode
    const { store, storeWarnings } = checkpoint
    const { replaces, unreadable } = starting
    return {
      database: db.display,
      store,
      schemaWarnings,
      storeWarnings,
      action,
      existing,
      replaces,
      unreadable,
      holder,
      total
    } satisfies Plan
  })
