/**
 * `status`: the current or last run, from the checkpoint store alone, so it can be read from another
 * terminal while a run is going.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { Checkpoint, type CheckpointService, type HeldLock, runOf, unknownHolderPid } from "./Checkpoint.js"
import { Db } from "./Db.js"
import type { CheckpointCorrupt, RunRecord, Scope } from "./Domain.js"
import { formatDuration } from "./Progress.js"

export interface StatusReport {
  readonly database: string
  readonly store: string
  /** The scope asked for (its description), or null for the latest run of any scope. */
  readonly scope: string | null
  readonly run: Option.Option<RunRecord>
  readonly lock: Option.Option<HeldLock>
  readonly others: OtherRuns
  readonly now: Date
}

/** An unfinished run of another scope, and the process that holds its lock if one does. */
export interface OtherRun {
  readonly run: RunRecord
  readonly holder: Option.Option<HeldLock>
}

/**
 * The unfinished runs of other scopes, oldest first, and the records that cannot be read (any of which may
 * be one); or why they could not be listed.
 */
export type OtherRuns = Either.Either<
  { readonly runs: ReadonlyArray<OtherRun>; readonly unreadable: ReadonlyArray<CheckpointCorrupt> },
  string
>

/**
 * The unfinished runs on the database besides `run`: a scope left half done must not go unseen. Best
 * effort: a store that cannot list its runs (a Redis user without SMEMBERS, a hiccup) leaves a note instead.
 */
export const otherUnfinished = (
  checkpoint: CheckpointService,
  database: string,
  run: Option.Option<RunRecord>
): Effect.Effect<OtherRuns> =>
  checkpoint.unfinished(database).pipe(
    Effect.flatMap(({ runs, unreadable }) =>
      Effect.map(
        Effect.forEach(
          runs.filter((r) => Option.isNone(run) || r.fingerprint !== run.value.fingerprint),
          (r) => Effect.map(checkpoint.holder({ database, scope: r.scope }), (holder) => ({ run: r, holder }))
        ),
        (others) => ({ runs: others, unreadable })
      )
    ),
    Effect.mapError((error) => `${error.store}: ${error.detail}`),
    Effect.either
  )

/** Whether a live process holds the run's lock: it is going, not to be resumed. */
const going = (other: OtherRun) => Option.exists(other.holder, (held) => !held.stale && held.damage === null)

/**
 * A line for each unfinished run of another scope, going (and where) or how to resume it, and for each
 * record that cannot be read.
 */
export const otherLines = (others: OtherRuns, indent = ""): ReadonlyArray<string> =>
  Either.match(others, {
    onLeft: (reason) => [`${indent}could not list the runs of other scopes: ${reason}`],
    onRight: ({ runs, unreadable }) => [
      ...runs.map((other) => {
        const r = other.run
        const state = going(other)
          ? `in progress, lock held by ${Option.getOrThrow(other.holder).holder.description}`
          : `resume with \`${r.scope.resumeCommand}\``
        return `${indent}also unfinished: run ${r.runId} (${r.scope.description}), ${r.status}, ${r.rotated}` +
          `${r.total === null ? "" : `/${r.total}`} rotated: ${state}`
      }),
      ...unreadable.map((error) => `${indent}also: ${error.otherRunNote}`)
    ]
  })

/** The JSON form of `otherLines` (null when they could not be listed). */
export const othersJson = (others: OtherRuns) =>
  Either.match(others, {
    onLeft: () => null,
    onRight: ({ runs }) =>
      runs.map((other) => ({
        runId: other.run.runId,
        scope: other.run.scope,
        status: other.run.status,
        rotated: other.run.rotated,
        total: other.run.total,
        inProgress: going(other),
        resume: going(other) ? null : other.run.scope.resumeCommand
      }))
  })

/** Records that cannot be read, for JSON. */
export const unreadableJson = (unreadable: ReadonlyArray<CheckpointCorrupt>) =>
  unreadable.map((error) => ({ key: error.key, detail: error.detail }))

/** The JSON form of the unreadable records of `OtherRuns` (null when they could not be listed). */
export const othersUnreadableJson = (others: OtherRuns) =>
  Either.match(others, { onLeft: () => null, onRight: ({ unreadable }) => unreadableJson(unreadable) })

/** The run of `scope`, or (without one) the run most recently started on this database. */
export const status = (scope: Option.Option<Scope>) =>
  Effect.gen(function*() {
    const checkpoint = yield* Checkpoint
    const db = yield* Db
    const run = yield* runOf(checkpoint, db.identity, scope)
    const lock = Option.isSome(run)
      ? yield* checkpoint.holder({ database: db.identity, scope: run.value.scope })
      : Option.none<HeldLock>()
    const others = yield* otherUnfinished(checkpoint, db.identity, run)
    const now = new Date(yield* Clock.currentTimeMillis)
    const asked = Option.getOrNull(Option.map(scope, (s) => s.description))
    return {
      database: db.display,
      store: checkpoint.store,
      scope: asked,
      run,
      lock,
      others,
      now
    } satisfies StatusReport
  })

const rateOf = (run: RunRecord) => (run.activeMillis > 0 ? (run.rotated * 1000) / run.activeMillis : 0)

/** What the state means for the operator. */
const stateLine = (run: RunRecord, lock: Option.Option<HeldLock>): string => {
  const resume = `resume with \`${run.scope.resumeCommand}\``
  if (Option.isSome(lock)) {
    const held = lock.value
    if (held.damage !== null) {
      return `${run.status}, but its lock entry is damaged (${held.damage} at ${held.location}): if no run is ` +
        `going, delete it and ${resume}`
    }
    return held.stale
      ? `${run.status}, but its process is gone (${held.holder.description}): ${resume}`
      : `running, lock held by ${held.holder.description} (lease ${Math.ceil(held.expiresInMillis / 1000)} s left)`
  }
  switch (run.status) {
    case "running":
      return "running, but no process holds its lock (its process was killed, or stopped while the store was " +
        `unreachable): ${resume}`
    case "interrupted":
      return `interrupted: ${resume}`
    case "failed":
      return `failed (${run.error ?? "unknown error"}): ${resume} once the cause is fixed`
    case "completed":
      return "completed"
  }
}

export const render = (report: StatusReport): ReadonlyArray<string> => [
  ...runLines(report),
  ...otherLines(report.others)
]

const runLines = (report: StatusReport): ReadonlyArray<string> =>
  Option.match(report.run, {
    onNone: () => [
      `no run is recorded for ${report.database}${
        report.scope === null ? "" : ` with scope ${report.scope} (without scope flags: the latest run of any scope)`
      } (checkpoints: ${report.store})`
    ],
    onSome: (run) => {
      // The total is counted as the run starts (and again as it resumes): tickets the site adds meanwhile, or
      // that leave the scope before a resume (soft-deleted, say), can take `rotated` past it.
      const total = run.total === null
        ? ""
        : run.total === 0 && run.rotated === 0
        ? " / 0 (no ticket in scope)"
        : ` / ${run.total} (${Math.min(100, (run.rotated / run.total) * 100).toFixed(1)}%` +
          `${run.rotated > run.total ? "; counted at the start, the scope has changed since" : ""})`
      const ago = formatDuration(report.now.getTime() - run.updatedAt.getTime())
      return [
        `run ${run.runId} on ${report.database} (${run.scope.description})`,
        `  state:    ${stateLine(run, report.lock)}`,
        `  rotated:  ${run.rotated}${total}, cursor ${run.cursor || "-"}`,
        `  rate:     ${Math.round(rateOf(run))} rows/s over ${formatDuration(run.activeMillis)} of running, ` +
        `${run.batches} batches, ${run.retries} retries`,
        `  started:  ${run.startedAt.toISOString()}, updated ${run.updatedAt.toISOString()} (${ago} ago)`,
        `  store:    ${report.store}`
      ]
    }
  })

export const toJson = (report: StatusReport) => ({
  database: report.database,
  store: report.store,
  run: Option.getOrNull(Option.map(report.run, (run) => ({
    runId: run.runId,
    scope: run.scope,
    status: run.status,
    rotated: run.rotated,
    total: run.total,
    cursor: run.cursor,
    batches: run.batches,
    retries: run.retries,
    rowsPerSecond: Math.round(rateOf(run)),
    activeSeconds: run.activeMillis / 1000,
    startedAt: run.startedAt.toISOString(),
    updatedAt: run.updatedAt.toISOString(),
    error: run.error
  }))),
  lock: Option.getOrNull(Option.map(report.lock, (held) => ({
    // An entry that is not a lock holder at all names no process: null, not its stand-in's values.
    ...(held.holder.pid === unknownHolderPid
      ? { host: null, pid: null, since: null }
      : { host: held.holder.host, pid: held.holder.pid, since: held.holder.since.toISOString() }),
    expiresInSeconds: Math.ceil(held.expiresInMillis / 1000),
    stale: held.stale,
    damaged: held.damage
  }))),
  otherUnfinished: othersJson(report.others),
  unreadableRuns: othersUnreadableJson(report.others)
})
