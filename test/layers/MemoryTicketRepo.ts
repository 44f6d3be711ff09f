/**
 * An in-memory ticket table behind the TicketRepo interface, with fault injection: fail or delay any
 * call, raise a duplicate token, and record every commit in a shared event log. Batches of the whole table
 * are pages of ids unless `spans` is set, as on MariaDB.
 */
import { Effect, Fiber, Layer, Option } from "effect"
import { createHash } from "node:crypto"
import { DatabaseError, DuplicateToken, type GrantMissing, type Scope, SpanChanged } from "../../src/Domain.js"
import { type Page, type Span, TicketRepo, type TicketRepoService } from "../../src/TicketRepo.js"
import type { EventLog } from "./EventLog.js"

export interface MemoryTicket {
  readonly id: string
  token: string
  updatedAt: number
  readonly createdAt: number
  readonly deleted: boolean
  readonly parentDeleted: boolean
  readonly email: string
}

export type Fault = Effect.Effect<void, DatabaseError | DuplicateToken>

/**
 * Decides, per call, whether a repository operation misbehaves. `n` counts calls of that operation from 1;
 * reading a span counts as reading a page, rotating a span (as a range or by key) as rotating.
 */
export interface Faults {
  readonly checkSchema?: (n: number) => Effect.Effect<void, DatabaseError> | undefined
  /** The check that the user may rotate tokens. */
  readonly mayRotate?: Effect.Effect<void, GrantMissing>
  readonly page?: (n: number) => Effect.Effect<void, DatabaseError> | undefined
  readonly rotate?: (n: number, ids: ReadonlyArray<string>) => Fault | undefined
  /** The read of the id range (under --no-count), before it answers. */
  readonly idRange?: Effect.Effect<void, DatabaseError>
  /** `verify`'s reads: its pages, then its look for duplicate tokens, counted together. */
  readonly audit?: (n: number) => Effect.Effect<void, DatabaseError> | undefined
}

export const transientError = (operation = "test") =>
  new DatabaseError({ operation, transient: true, detail: "Deadlock found when trying to get lock (1213)" })
export const fatalError = (operation = "test") =>
  new DatabaseError({ operation, transient: false, detail: "Table 'ticket' is marked as crashed" })
export const duplicateToken = () => new DuplicateToken({ detail: "Duplicate entry for key 'token'" })

export const inScope = (scope: Scope) => (t: MemoryTicket): boolean =>
  (!scope.liveOnly || (!t.deleted && !t.parentDeleted)) &&
  (scope.emailDomain === null || t.email.endsWith(`@${scope.emailDomain}`)) &&
  (scope.createdAfter === null || t.createdAt >= Date.parse(scope.createdAfter)) &&
  (scope.createdBefore === null || t.createdAt < Date.parse(scope.createdBefore))

/** `count` tickets with uniform random-looking hex ids (deterministic per seed); some soft-deleted, a third on example.org. */
export const makeTickets = (count: number, seed = 1): Array<MemoryTicket> =>
  Array.from({ length: count }, (_, i) => ({
    id: createHash("sha256").update(`${seed}:${i}`).digest("hex").slice(0, 32),
    token: `old-${i}`,
    updatedAt: 0,
    createdAt: Date.UTC(2024, 0, 1) + i * 3_600_000,
    deleted: i % 7 === 3,
    parentDeleted: i % 11 === 5,
    email: i % 3 === 0 ? `u${i}@example.org` : `u${i}@example.com`
  })).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))

export class MemoryTable {
  readonly byId = new Map<string, MemoryTicket>()
  readonly sorted: Array<MemoryTicket>
  /** Every commit, in order: the ids of the batch and its new tokens. */
  readonly rotations: Array<ReadonlyArray<string>> = []
  /** Every page read, in order: the size asked for, the ids that came back, and the log's length then. */
  readonly pages: Array<{ readonly limit: number; readonly ids: ReadonlyArray<string>; readonly at: number }> = []
  calls = { checkSchema: 0, page: 0, span: 0, rotate: 0, count: 0, audit: 0 }
  /**
   * When true, a rotation that has begun runs to its end (its fault, then the commit) even if the caller
   * stops waiting, as an UPDATE the server has begun does; `settled` waits for those still running.
   */
  outlivesCaller = false
  /**
   * At most this many tickets examined per page read, as the SQL repository bounds a scoped page: a sparse
   * scope then gives short or empty pages before the end of the table. Unbounded when undefined.
   */
  scanLimit: number | undefined = undefined
  /** Batches of the whole table may be spans (`TicketRepo.canSpan`), rotated as ranges. */
  spans = false
  /** Spans rotated by key because they held more tickets than tokens (the site inserted some). */
  spansChanged = 0
  /** What the schema check warns of (`TicketRepo.checkSchema`). */
  schemaWarnings: ReadonlyArray<string> = []
  private readonly statements: Array<Fiber.RuntimeFiber<number, unknown>> = []

  /** Which ticket holds each token: the unique key on `token`. */
  private readonly byToken = new Map<string, string>()

  constructor(tickets: ReadonlyArray<MemoryTicket>, readonly log: EventLog, public faults: Faults = {}) {
    this.sorted = [...tickets].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    for (const t of this.sorted) {
      this.byId.set(t.id, t)
      this.byToken.set(t.token, t.id)
    }
  }

  /** A token of the batch that another ticket (or another of the batch) would then share, if any. */
  private collision(ids: ReadonlyArray<string>, tokens: ReadonlyArray<string>): string | undefined {
    const batch = new Set(ids)
    const fresh = new Set<string>()
    for (const [i, id] of ids.entries()) {
      if (!this.byId.has(id)) continue
      const token = tokens[i]!
      const holder = this.byToken.get(token)
      if ((holder !== undefined && !batch.has(holder)) || fresh.has(token)) return token
      fresh.add(token)
    }
    return undefined
  }

  /** A keyset page of `scope` after `after`, reading at most `scanLimit` tickets. */
  private read(scope: Scope, after: string, limit: number): Page {
    const rest = this.sorted.filter((t) => t.id > after)
    const examined = this.scanLimit === undefined ? rest : rest.slice(0, this.scanLimit)
    const ids: Array<string> = []
    for (const t of examined) {
      if (!inScope(scope)(t)) continue
      ids.push(t.id)
      if (ids.length === limit) return { ids, through: t.id, end: false }
    }
    return { ids, through: examined.at(-1)?.id ?? after, end: examined.length === rest.length }
  }

  /** A ticket the site inserts. */
  insert(ticket: MemoryTicket): void {
    const at = this.sorted.findIndex((t) => t.id > ticket.id)
    this.sorted.splice(at === -1 ? this.sorted.length : at, 0, ticket)
    this.byId.set(ticket.id, ticket)
    this.byToken.set(ticket.token, ticket.id)
  }

  /** The ids in (after, through], whatever the scope. */
  private idsIn(span: Span): Array<string> {
    return this.sorted.filter((t) => t.id > span.after && t.id <= span.through).map((t) => t.id)
  }

  /**
   * One UPDATE: its fault first, then the commit, one synchronous step (all of the batch or none of it).
   * The tickets it changes are `target()` as the table is then (a span's, after whatever its fault
   * inserted), unless `check` refuses them, as the server does a span that grew.
   */
  private statement<E>(
    target: () => ReadonlyArray<string>,
    tokens: ReadonlyArray<string>,
    at: Date,
    check: (ids: ReadonlyArray<string>) => E | undefined = () => undefined
  ): Effect.Effect<number, DatabaseError | DuplicateToken | E> {
    const statement = Effect.suspend(() => {
      const n = this.calls.rotate += 1
      return this.faults.rotate?.(n, target()) ?? Effect.void
    }).pipe(
      Effect.flatMap((): Effect.Effect<number, DuplicateToken | E> => {
        const ids = target()
        const refused = check(ids)
        if (refused !== undefined) return Effect.fail(refused)
        if (this.collision(ids, tokens) !== undefined) return Effect.fail(duplicateToken())
        return Effect.sync(() => {
          let changed = 0
          ids.forEach((id, i) => {
            const t = this.byId.get(id)
            if (t !== undefined) {
              this.byToken.delete(t.token)
              this.byToken.set(tokens[i]!, id)
              t.token = tokens[i]!
              t.updatedAt = at.getTime()
              changed++
            }
          })
          this.rotations.push(ids)
          this.log.push({ _tag: "commit", ids })
          return changed
        })
      })
    )
    return this.outlivesCaller
      ? Effect.flatMap(Effect.forkDaemon(statement), (fiber) => {
        this.statements.push(fiber)
        return Fiber.join(fiber)
      })
      : statement
  }

  /** How many times each id was rotated. */
  rotationCounts(): Map<string, number> {
    const counts = new Map<string, number>()
    for (const ids of this.rotations) for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1)
    return counts
  }

  get service(): TicketRepoService {
    return {
      checkSchema: Effect.suspend(() => this.faults.checkSchema?.(this.calls.checkSchema += 1) ?? Effect.void).pipe(
        Effect.as(this.schemaWarnings)
      ),
      mayRotate: Effect.suspend(() => this.faults.mayRotate ?? Effect.void),
      page: (scope, after, limit) =>
        Effect.suspend(() => {
          const n = this.calls.page += 1
          return this.faults.page?.(n) ?? Effect.void
        }).pipe(
          Effect.map(() => {
            const page = this.read(scope, after, limit)
            this.pages.push({ limit, ids: page.ids, at: this.log.events.length })
            return page
          })
        ),
      rotate: (ids, tokens, at) => this.statement(() => ids, tokens, at),
      canSpan: (scope) => Effect.sync(() => this.spans && scope.everyTicket),
      spans: (after, rows, count) =>
        Effect.suspend(() => {
          const n = this.calls.page += 1
          this.calls.span += 1
          return this.faults.page?.(n) ?? Effect.void
        }).pipe(
          Effect.map(() => {
            const rest = this.sorted.filter((t) => t.id > after)
            const spans: Array<Span> = []
            for (let k = 1; k <= count && k * rows <= rest.length; k++) {
              const span = { after: spans.at(-1)?.through ?? after, through: rest[k * rows - 1]!.id, rows }
              this.pages.push({ limit: rows, ids: this.idsIn(span), at: this.log.events.length })
              spans.push(span)
            }
            return spans
          })
        ),
      rotateSpan: (span, tokens, at) =>
        this.statement(() => this.idsIn(span), tokens, at, (ids) => {
          if (ids.length <= tokens.length) return undefined
          this.spansChanged++
          return new SpanChanged({ detail: `${ids.length} tickets in the span, ${tokens.length} tokens` })
        }).pipe(
          // The range form cannot collide with itself; a duplicate then is the server's, as a refusal.
          Effect.catchTag("DuplicateToken", (error) => Effect.fail(new SpanChanged({ detail: error.detail })))
        ),
      spanIds: (span) => Effect.sync(() => this.idsIn(span)),
      count: (scope) => Effect.sync(() => ++this.calls.count && this.sorted.filter(inScope(scope)).length),
      idRange: Effect.zipRight(
        Effect.suspend(() => this.faults.idRange ?? Effect.void),
        Effect.sync(() =>
          this.sorted.length === 0
            ? Option.none()
            : Option.some([this.sorted[0]!.id, this.sorted[this.sorted.length - 1]!.id] as const)
        )
      ),
      audit: (scope, after, limit, since) =>
        Effect.zipRight(
          this.auditFault,
          Effect.sync(() => {
            const page = this.read(scope, after, limit)
            return { ...page, stale: page.ids.filter((id) => this.byId.get(id)!.updatedAt < since.getTime()) }
          })
        ),
      duplicateTokens: Effect.zipRight(
        this.auditFault,
        Effect.sync(() => {
          const seen = new Map<string, Array<string>>()
          for (const t of this.sorted) seen.set(t.token, [...(seen.get(t.token) ?? []), t.id])
          const dup = [...seen.values()].filter((ids) => ids.length > 1)
          return { values: dup.length, sample: dup.flat().slice(0, 10) }
        })
      )
    }
  }

  private get auditFault(): Effect.Effect<void, DatabaseError> {
    return Effect.suspend(() => this.faults.audit?.(this.calls.audit += 1) ?? Effect.void)
  }

  /** Waits for every rotation begun under `outlivesCaller` to end, committed or not. */
  get settled(): Effect.Effect<void> {
    return Effect.suspend(() => Fiber.awaitAll(this.statements))
  }

  get layer(): Layer.Layer<TicketRepo> {
    return Layer.sync(TicketRepo, () => this.service)
  }
}
