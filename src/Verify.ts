/**
 * `verify`: after a run, every ticket of its scope must have been rotated by it (updated at or after the
 * run started, and, for a run not completed, committed by its checkpoint) and no two tickets may share a
 * token. Reads keyset pages; never the whole table at once.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { Checkpoint, runOf } from "./Checkpoint.js"
import { answeredWithin, Db, defaultStatementTimeout, letEventLoopTurn, retryingDatabase } from "./Db.js"
import { NoRun, type RunRecord, type Scope } from "./Domain.js"
import { Progress, ProgressEvent } from "./Progress.js"
import { settled } from "./Regenerate.js"
import { otherLines, type OtherRuns, othersJson, othersUnreadableJson, otherUnfinished } from "./Status.js"
import { checkSchemaWithin, TicketRepo } from "./TicketRepo.js"

const pageSize = 10_000
const sampleSize = 5

export interface VerifyReport {
  readonly database: string
  readonly run: RunRecord
  readonly inScope: number
  readonly notRotated: number
  readonly notRotatedSample: ReadonlyArray<string>
  readonly duplicateTokens: number
  readonly duplicateSample: ReadonlyArray<string>
  /** Unfinished runs of other scopes: their tickets may still hold the leaked tokens. */
  readonly others: OtherRuns
}

export const isClean = (report: VerifyReport): boolean => report.notRotated === 0 && report.duplicateTokens === 0

/**
 * Whether the run's checkpoint says it rotated `id`: any id, once it completed; else one at or below its
 * low-water mark or in a range committed beyond it. The site saves tickets too (Django's `auto_now` sets
 * `updated_at` on every save), so a ticket the run has not reached may look updated since it started while
 * it still holds its leaked token.
 */
const committedBy = (run: RunRecord) => (id: string): boolean =>
  run.finished || id <= run.cursor || run.done.some(([first, last]) => first <= id && id <= last)

/**
 * Verifies the run of `scope`, or (without one) the run most recently started on this database. A page read
 * unanswered for `statementTimeout` is tried again, as after a lost connection.
 */
export const verify = (scope: Option.Option<Scope>, statementTimeout: Duration.Duration = defaultStatementTimeout) =>
  Effect.gen(function*() {
    const repo = yield* TicketRepo
    const checkpoint = yield* Checkpoint
    const progress = yield* Progress
    const db = yield* Db
    // A read that meets a transient failure (a killed connection, a lost server) is tried again on a fresh
    // connection: on a live site, a long verify should not fail for a hiccup (the schema check says so).
    yield* settled(checkSchemaWithin(statementTimeout))
    const found = yield* runOf(checkpoint, db.identity, scope)
    if (Option.isNone(found)) {
      return yield* new NoRun({
        database: db.display,
        scope: Option.getOrNull(Option.map(scope, (s) => s.description))
      })
    }
    const run = found.value
    // Before the long part: the store is at hand now.
    const others = yield* otherUnfinished(checkpoint, db.identity, found)
    yield* progress.emit(ProgressEvent.Started({ label: "verify", base: 0, throttle: undefined }))
    if (run.total !== null) yield* progress.emit(ProgressEvent.Total({ total: run.total }))
    let cursor = ""
    let inScope = 0
    let notRotated = 0
    const notRotatedSample: Array<string> = []
    const committed = committedBy(run)
    while (true) {
      // A page gets an answer in time, or is tried again (a frozen server must not hang a cron job); the look
      // for duplicates below is one statement over the whole table, which may rightly take longer.
      const page = yield* retryingDatabase(
        answeredWithin(statementTimeout, "auditing a page of tickets")(
          repo.audit(run.scope, cursor, pageSize, run.startedAt)
        )
      )
      const stale = new Set(page.stale)
      const missed = page.ids.filter((id) => stale.has(id) || !committed(id))
      inScope += page.ids.length
      notRotated += missed.length
      notRotatedSample.push(...missed.slice(0, sampleSize - notRotatedSample.length))
      yield* progress.emit(ProgressEvent.Advanced({ rows: page.ids.length }))
      if (page.end) break
      cursor = page.through
      yield* letEventLoopTurn(db.dialect)
    }
    const duplicates = yield* retryingDatabase(repo.duplicateTokens)
    yield* progress.emit(ProgressEvent.Finished({ outcome: "done" }))
    return {
      database: db.display,
      run,
      inScope,
      notRotated,
      notRotatedSample,
      duplicateTokens: duplicates.values,
      duplicateSample: duplicates.sample,
      others
    } satisfies VerifyReport
  })

export const summary = (report: VerifyReport): string =>
  `${report.inScope} tickets in scope (${report.run.scope.description}), ` +
  `${report.inScope - report.notRotated} rotated by run ${report.run.runId}, ${report.notRotated} not rotated; ` +
  `${report.duplicateTokens} duplicate token values`

export const render = (report: VerifyReport): ReadonlyArray<string> => [
  `verify ${report.database}: ${summary(report)}`,
  ...(report.run.status === "completed"
    ? []
    : [
      `  note: run ${report.run.runId} is ${report.run.status}, not completed: the tickets its checkpoint does not ` +
      "cover count as not rotated"
    ]),
  ...(report.notRotatedSample.length === 0 ? [] : [`  not rotated, e.g.: ${report.notRotatedSample.join(", ")}`]),
  ...(report.duplicateSample.length === 0 ? [] : [`  sharing a token, e.g.: ${report.duplicateSample.join(", ")}`]),
  // Not this run's to answer for, but its tickets may still hold the leaked tokens.
  ...otherLines(report.others, "  note: "),
  isClean(report) ? "  OK" : "  FAILED"
]

export const toJson = (report: VerifyReport) => ({
  database: report.database,
  runId: report.run.runId,
  scope: report.run.scope,
  runStatus: report.run.status,
  inScope: report.inScope,
  rotated: report.inScope - report.notRotated,
  notRotated: report.notRotated,
  notRotatedSample: report.notRotatedSample,
  duplicateTokens: report.duplicateTokens,
  duplicateSample: report.duplicateSample,
  otherUnfinished: othersJson(report.others),
  unreadableRuns: othersUnreadableJson(report.others),
  ok: isClean(report)
})
