import { describe, expect, it } from "@effect/vitest"
import {
  Cause,
  Chunk,
  Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  FastCheck as FC,
  Fiber,
  Option,
  Random,
  Ref,
  Schema,
  TestClock
} from "effect"
import * as Checkpoint from "../src/Checkpoint.js"
import { eventLoopTurn } from "../src/Db.js"
import { committedUpTo, DatabaseError, LockHolder, RunFailed, RunRecord, SchemaMismatch, Scope } from "../src/Domain.js"
import {
  adaptBatchSize,
  FailedSummary,
  keyFraction,
  nextBatchSize,
  plan,
  regenerate,
  type RegenerateOptions,
  type RunSummary
} from "../src/Regenerate.js"
import * as Shutdown from "../src/Shutdown.js"
import {
  checkInvariants,
  covers,
  duplicateToken,
  type EventLog,
  fatalError,
  type Fault,
  type Faults,
  inScope,
  makeTickets,
  testHost,
  transientError,
  World
} from "./layers/index.js"

const options = (overrides: Partial<RegenerateOptions> = {}): RegenerateOptions => ({
  scope: Scope.all,
  batchSize: 10,
  concurrency: 1,
  mode: "start",
  maxRowsPerSecond: undefined,
  count: true,
  targetBatchMillis: undefined,
  statementTimeout: Duration.minutes(2),
  ...overrides
})

const runIn = (world: World, overrides: Partial<RegenerateOptions> = {}, stop = Effect.succeed(false)) =>
  regenerate(options(overrides), stop).pipe(Effect.provide(world.layer()))

const planIn = (world: World, overrides: Partial<RegenerateOptions> = {}) =>
  plan(options(overrides)).pipe(Effect.provide(world.layer()))

const record = (world: World): RunRecord => {
  const [text] = world.store.records()
  if (text === undefined) throw new Error("no run record")
  return Schema.decodeUnknownSync(Schema.parseJson(RunRecord))(text)
}

const lastSaved = (world: World) => {
  const saves = world.log.events.filter((e) => e._tag === "save")
  return saves[saves.length - 1]
}

/** Yields `n` times: a delay that reorders concurrent batches without a clock. */
const yields = (n: number) => Effect.forEach(Array.from({ length: n }), () => Effect.yieldNow(), { discard: true })

/** Waits `n` turns of the event loop. */
const turns = (n: number) => Effect.forEach(Array.from({ length: n }), () => eventLoopTurn, { discard: true })

/** Waits turns of the event loop until `ready()`, at most `max` of them. */
const turnsUntil = (ready: () => boolean, max = 100) =>
  Effect.gen(function*() {
    for (let i = 0; i < max && !ready(); i++) yield* eventLoopTurn
  })

/** Runs `effect` in a fiber while moving the TestClock on in steps, until it completes. */
const withClock = <A, E>(effect: Effect.Effect<A, E>, step: Duration.DurationInput = "100 millis", maxSteps = 2000) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(effect)
    for (let i = 0; i < maxSteps; i++) {
      const done = yield* Fiber.poll(fiber)
      if (Option.isSome(done)) break
      yield* TestClock.adjust(step)
    }
    return yield* Fiber.await(fiber)
  })

/**
 * Runs `effect` in a fiber, moving the TestClock from one sleep's deadline to the next until it completes,
 * so that every fiber wakes at its own instant and measured delays are exact.
 */
const stepping = <A, E>(effect: Effect.Effect<A, E>, maxSteps = 10_000) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(effect)
    for (let i = 0; i < maxSteps; i++) {
      const exit = yield* Fiber.poll(fiber)
      if (Option.isSome(exit)) return exit.value
      const now = yield* TestClock.currentTimeMillis
      const deadlines = Chunk.toReadonlyArray(yield* TestClock.sleeps())
      yield* TestClock.setTime(deadlines.length === 0 ? now : Math.max(now, Math.min(...deadlines)))
    }
    yield* Fiber.interrupt(fiber)
    return yield* Effect.dieMessage(`still running after ${maxSteps} steps of the clock`)
  })

/** Lets forked fibers run until `done()`, or until `log` has not grown for a few turns of the event loop. */
const untilDoneOrStuck = (log: EventLog, done: () => boolean) =>
  Effect.gen(function*() {
    for (let quiet = 0, seen = -1; !done() && quiet < 3; seen = log.events.length) {
      yield* TestClock.adjust(0)
      quiet = log.events.length === seen ? quiet + 1 : 0
    }
  })

const hour = (h: number | null) => (h === null ? null : new Date(Date.UTC(2024, 0, 1) + h * 3_600_000).toISOString())

/** Scopes over `makeTickets`: live only or not, either email domain or both, a window of creation hours. */
const scopes = FC.record({
  liveOnly: FC.boolean(),
  emailDomain: FC.constantFrom(null, "example.org", "example.com"),
  created: FC.option(FC.tuple(FC.integer({ min: 0, max: 150 }), FC.integer({ min: 30, max: 250 })), { nil: null }),
  openEnded: FC.constantFrom("neither", "after", "before")
}).map(({ created, emailDomain, liveOnly, openEnded }) =>
  new Scope({
    liveOnly,
    emailDomain,
    createdAfter: created === null || openEnded === "after" ? null : hour(created[0]),
    createdBefore: created === null || openEnded === "before" ? null : hour(created[0] + created[1])
  })
)

/**
 * A run to kill: its table and scope, the rotation held until the crash (never the last batch, so that
 * batches after it commit out of order), and the event the crash comes after.
 */
const crashCases = FC.record({
  rows: FC.integer({ min: 40, max: 250 }),
  scope: FC.oneof(scopes, FC.constant(Scope.all))
})
  .map((c) => ({ ...c, inScope: makeTickets(c.rows, c.rows).filter(inScope(c.scope)).length }))
  .filter((c) => c.inScope >= 4)
  .chain((c) =>
    FC.record({
      batchSize: FC.integer({ min: 1, max: Math.floor(c.inScope / 4) }),
      concurrency: FC.integer({ min: 2, max: 8 }),
      heldShare: FC.integer({ min: 0, max: 100 }),
      crashShare: FC.integer({ min: 0, max: 100 }),
      // Tickets a page read examines at most: a sparse scope then gives short and empty pages mid-table.
      scan: FC.option(FC.integer({ min: 1, max: 40 }), { nil: undefined }),
      // Whole-table batches as spans (bounds, rotated as ranges), as on MariaDB, or as pages of ids.
      spans: FC.boolean(),
      delays: FC.array(FC.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 20 })
    }).map(({ crashShare, heldShare, ...r }) => {
      const batches = Math.ceil(c.inScope / r.batchSize)
      const held = 1 + Math.min(batches - 2, Math.floor((heldShare / 100) ** 2 * (batches - 1)))
      // A save and a commit per batch: most crashes come after the held batch, when others committed beyond it.
      return { ...c, ...r, held, crashAt: Math.floor(Math.sqrt(crashShare / 100) * 2 * batches) }
    })
  )

describe("regenerate", () => {
  it.effect("a slow batch does not hold the others back: while it waits, the other slots commit the batches after it, up to the window", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(200), { rotate: (n) => (n === 2 ? Effect.sleep("10 seconds") : undefined) })
      const fiber = yield* Effect.fork(runIn(world, { batchSize: 10, concurrency: 4 }))
      yield* TestClock.adjust("5 seconds")
      // Batch 1 and, behind the slow second, more batches than there are slots, up to the window of 4 ×
      // concurrency beyond the checkpoint; then the run waits for it.
      const whileSlow = world.table.rotations.length
      expect(whileSlow).toBeGreaterThan(1 + 4)
      expect(whileSlow).toBeLessThanOrEqual(1 + 4 * 4)
      yield* TestClock.adjust("5 seconds")
      const summary = yield* Fiber.join(fiber)
      expect(summary).toMatchObject({ status: "completed", rotated: 200, batches: 20 })
      expect(world.table.rotationCounts().size).toBe(200)
    }))

  it.effect("rotates every ticket in scope once, touches nothing else, and completes the checkpoint", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(95))
      const summary = yield* runIn(world, { batchSize: 10, concurrency: 3 })
      expect(summary.status).toBe("completed")
      expect(summary.rotated).toBe(95)
      expect(summary.batches).toBe(10)
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
      expect(world.table.rotationCounts().size).toBe(95)
      expect(world.table.sorted.every((t) => t.token.startsWith("tok-"))).toBe(true)
      const saved = record(world)
      expect(saved.status).toBe("completed")
      expect(saved.cursor).toBe(world.table.sorted[94]!.id)
      expect(saved.rotated).toBe(95)
      expect(saved.total).toBe(95)
    }))

  it.effect("batches that complete while a checkpoint write is on its way share the next write, and none frees its slot before a write holds it", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(200))
      world.store.faults = { latency: () => Effect.sleep("100 millis") }
      const exit = yield* stepping(runIn(world, { batchSize: 10, concurrency: 4 }))
      expect(Exit.isSuccess(exit) && exit.value).toMatchObject({ status: "completed", rotated: 200, batches: 20 })
      expect(world.table.rotationCounts().size).toBe(200)
      // The first write, then 20 batches in fewer writes than one each, then the last.
      const writes = world.log.events.filter((e) => e._tag === "save").length
      expect(writes).toBeLessThan(20 + 2)
      expect(writes).toBeGreaterThanOrEqual(1 + 20 / 4 + 1)
      // At every instant a crash would redo at most the batches in flight: 4 × 10 tickets.
      expect(checkInvariants(world.log, world.table.sorted.map((t) => t.id), 4 * 10)).toBeUndefined()
      expect(record(world)).toMatchObject({ status: "completed", rotated: 200, cursor: world.table.sorted[199]!.id })
    }))

  it.effect("rotates only the tickets of the scope", () =>
    Effect.gen(function*() {
      const tickets = makeTickets(120)
      const scopes = [
        new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null }),
        new Scope({ liveOnly: false, emailDomain: "example.org", createdAfter: null, createdBefore: null }),
        new Scope({
          liveOnly: false,
          emailDomain: null,
          createdAfter: "2024-01-02T00:00:00.000Z",
          createdBefore: "2024-01-04T00:00:00.000Z"
        })
      ]
      for (const scope of scopes) {
        const world = new World(tickets.map((t) => ({ ...t })))
        const expected = world.table.sorted.filter(inScope(scope)).map((t) => t.id)
        expect(expected.length).toBeGreaterThan(0)
        expect(expected.length).toBeLessThan(120)
        const summary = yield* runIn(world, { scope, batchSize: 7, concurrency: 2 })
        expect(summary.rotated).toBe(expected.length)
        expect([...world.table.rotationCounts().keys()].sort()).toEqual(expected)
      }
    }))

  it.effect("a sparse scope read in bounded stretches: empty pages mid-table move the checkpoint, nothing is missed", () =>
    Effect.gen(function*() {
      const scope = new Scope({ ...Scope.all, emailDomain: "example.org" })
      const world = new World(makeTickets(120))
      world.table.scanLimit = 2
      const expected = world.table.sorted.filter(inScope(scope)).map((t) => t.id)
      const summary = yield* runIn(world, { scope, batchSize: 5, concurrency: 3 })
      expect(summary).toMatchObject({ status: "completed", rotated: expected.length })
      expect([...world.table.rotationCounts().keys()].sort()).toEqual(expected)
      // Pages read two tickets at most, so many came back empty before the end; each still moved the cursor.
      expect(world.table.pages.filter((p) => p.ids.length === 0).length).toBeGreaterThan(10)
      const saves = world.log.events.filter((e) => e._tag === "save")
      expect(saves.length).toBeGreaterThan(summary.batches + 10)
      expect(record(world).cursor).toBe(world.table.sorted.at(-1)!.id)
      expect(checkInvariants(world.log, expected, 3 * 5)).toBeUndefined()
    }))

  it.effect("a sparse scope without a count: the key-space estimate moves on over stretches with nothing in scope", () =>
    Effect.gen(function*() {
      const scope = new Scope({ ...Scope.all, emailDomain: "example.org" })
      const world = new World(makeTickets(120))
      world.table.scanLimit = 2
      const summary = yield* runIn(world, { scope, batchSize: 5, concurrency: 2, count: false })
      expect(summary.status).toBe("completed")
      const estimates = world.progress.flatMap((e) => e._tag === "Estimate" ? [e.fraction] : [])
      expect(estimates.length).toBeGreaterThan(summary.batches + 10)
      expect(estimates.every((f, i) => i === 0 || f >= estimates[i - 1]!)).toBe(true)
      expect(estimates.at(-1)).toBe(1)
    }))

  it.effect("whole-table batches as spans: every ticket once, the tail as a page, the checkpoint at the last id", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(95))
      world.table.spans = true
      const summary = yield* runIn(world, { batchSize: 10, concurrency: 3 })
      expect(summary).toMatchObject({ status: "completed", rotated: 95, batches: 10, skipped: 0 })
      // Spans read four at a time: four, four, one; then five tickets, fewer than a span, as a page; then
      // nothing left (a span read and a page read each time).
      expect(world.table.calls).toMatchObject({ span: 5, page: 7 })
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
      expect(world.table.rotationCounts().size).toBe(95)
      expect(record(world)).toMatchObject({ status: "completed", cursor: world.table.sorted[94]!.id, rotated: 95 })
      expect(checkInvariants(world.log, world.table.sorted.map((t) => t.id), 3 * 10)).toBeUndefined()
    }))

  it.effect("a span the site inserted into after it was read goes by key: the new ticket too, none lost or twice", () =>
    Effect.gen(function*() {
      const tickets = makeTickets(100)
      const newcomer = { ...tickets[0]!, id: "", token: "set-by-the-site" }
      const world: World = new World(tickets, {
        // Just before the third batch's UPDATE, the site inserts a ticket into its span.
        rotate: (n, ids) =>
          n === 3
            ? Effect.sync(() =>
              world.table.insert({ ...newcomer, id: (BigInt(`0x${ids[0]}`) + 1n).toString(16).padStart(32, "0") })
            )
            : undefined
      })
      world.table.spans = true
      const summary = yield* runIn(world, { batchSize: 10, concurrency: 1 })
      expect(summary).toMatchObject({ status: "completed", rotated: 101, skipped: 0 })
      expect(world.table.spansChanged).toBe(1)
      const counts = world.table.rotationCounts()
      expect(world.table.sorted.filter((t) => counts.get(t.id) !== 1).map((t) => t.id)).toEqual([])
      expect(world.table.sorted.every((t) => t.token.startsWith("tok-"))).toBe(true)
      // The grown span committed eleven tickets at once, its newcomer included.
      expect(checkInvariants(world.log, tickets.map((t) => t.id), 11)).toBeUndefined()
    }))

  it.effect("under --no-count the first batch is a page of ids (the key-space check), spans after it", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      world.table.spans = true
      const summary = yield* runIn(world, { batchSize: 10, concurrency: 2, count: false })
      expect(summary).toMatchObject({ status: "completed", rotated: 50 })
      // A page, then four spans in one read; then nothing left (a span read and a page read).
      expect(world.table.calls).toMatchObject({ span: 2, page: 4 })
      // The test ids are hashes, not v4 uuids: the first batch's ids were checked, and the estimate is doubted.
      expect(world.progress.some((e) => e._tag === "Notice" && e.text.includes("not random"))).toBe(true)
      // So they are when the id range comes back only after the first batch, and spans alone follow.
      const late = new World(makeTickets(50), { idRange: Effect.sleep("1 hour") })
      late.table.spans = true
      expect(yield* runIn(late, { batchSize: 10, concurrency: 2, count: false })).toMatchObject({ rotated: 50 })
      expect(late.progress.some((e) => e._tag === "Estimate")).toBe(false)
      expect(late.progress.some((e) => e._tag === "Notice" && e.text.includes("not random"))).toBe(true)
    }))

  it.effect("an empty scope completes at once", () =>
    Effect.gen(function*() {
      const world = new World([])
      const summary = yield* runIn(world)
      expect(summary).toMatchObject({ status: "completed", rotated: 0, batches: 0, total: 0 })
    }))

  it.effect.prop(
    "a kill -9 at any event, batches committed out of order: the resume misses nothing, redoes only what the " +
      "checkpoint did not cover (at most concurrency × batch size), and touches nothing outside the scope",
    { c: crashCases },
    ({ c: { batchSize, concurrency, crashAt, delays, held, rows, scan, scope, spans } }) =>
      Effect.gen(function*() {
        const delay = (n: number) => yields(delays[n % delays.length]!)
        // The held rotation never ends in this world: later batches commit beyond it until the window is full.
        const world = new World(makeTickets(rows, rows), { rotate: (n) => (n === held ? Effect.never : delay(n)) })
        world.table.scanLimit = scan
        world.table.spans = spans
        const scopeIds = world.table.sorted.filter(inScope(scope)).map((t) => t.id)
        const run = { scope, batchSize, concurrency }
        // The crash comes after event `crashAt`, or where the run got stuck behind the held batch if sooner.
        let next: World | undefined
        world.log.onEvent = (i) => {
          if (i === crashAt) next = world.afterKill({ rotate: delay })
        }
        const killed = yield* Effect.fork(runIn(world, run))
        yield* untilDoneOrStuck(world.log, () => next !== undefined)
        next ??= world.afterKill({ rotate: delay })
        yield* Fiber.interrupt(killed)

        const maxRedo = concurrency * batchSize
        expect(checkInvariants(next.log, scopeIds, maxRedo)).toBeUndefined()
        const atCrash = lastSaved(next)!
        const redo = [...new Set(next.table.rotations.flat())].filter((id) => !covers(atCrash)(id))
        expect(redo.length).toBeLessThanOrEqual(maxRedo)

        const summary = yield* runIn(next, { ...run, mode: "resume" })
        expect(summary.status).toBe("completed")
        const counts = next.table.rotationCounts()
        expect(scopeIds.filter((id) => !counts.has(id)), "missed").toEqual([])
        expect([...counts.keys()].filter((id) => !scopeIds.includes(id)), "outside the scope").toEqual([])
        expect(scopeIds.filter((id) => counts.get(id)! > 1).sort(), "redone").toEqual(redo.sort())
        // Across both processes: the resumed one adds at most its own batches in flight to what was uncovered.
        expect(checkInvariants(next.log, scopeIds, 2 * maxRedo)).toBeUndefined()
      }),
    { fastCheck: { numRuns: 60 } }
  )

  it.effect.prop(
    "a graceful stop at any point loses nothing and redoes nothing",
    {
      rows: FC.integer({ min: 1, max: 200 }),
      batchSize: FC.integer({ min: 1, max: 30 }),
      concurrency: FC.integer({ min: 1, max: 6 }),
      stopAfter: FC.integer({ min: 0, max: 30 }),
      delays: FC.array(FC.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 10 }),
      scan: FC.option(FC.integer({ min: 1, max: 40 }), { nil: undefined }),
      spans: FC.boolean()
    },
    ({ batchSize, concurrency, delays, rows, scan, spans, stopAfter }) =>
      Effect.gen(function*() {
        const world = new World(makeTickets(rows, rows + 7), {
          rotate: (n) => yields(delays[n % delays.length]!)
        })
        world.table.scanLimit = scan
        world.table.spans = spans
        const stop = Effect.sync(() => world.table.calls.rotate >= stopAfter)
        const first = yield* runIn(world, { batchSize, concurrency }, stop)
        expect(checkInvariants(world.log, world.table.sorted.map((t) => t.id), concurrency * batchSize))
          .toBeUndefined()
        if (first.status === "interrupted") {
          expect(record(world).status).toBe("interrupted")
          // Everything committed is behind the checkpoint.
          expect(world.table.rotations.flat().every((id) => id <= first.cursor)).toBe(true)
          const second = yield* runIn(world, { batchSize, concurrency, mode: "resume" })
          expect(second.status).toBe("completed")
          expect(second.resumed).toBe(true)
          expect(first.rotated + second.rotated).toBe(rows)
        }
        expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
        expect(world.table.rotationCounts().size).toBe(rows)
      }),
    { fastCheck: { numRuns: 60 } }
  )

  /** Runs through `graceful`, asks it to stop while batch 3 is in flight, then lets batch 3 end as `outcome`. */
  const stopDuringBatch3 = (outcome: Fault) =>
    Effect.gen(function*() {
      const inFlight = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const world = new World(makeTickets(100), {
        rotate: (n) =>
          n === 3
            ? Effect.zipRight(Effect.zipRight(Deferred.succeed(inFlight, undefined), Deferred.await(release)), outcome)
            : undefined
      })
      const shutdown = Shutdown.make()
      expect(shutdown.request(), "no graceful section yet: a signal would interrupt").toBe(false)
      const fiber = yield* Effect.fork(
        Shutdown.graceful((stop) => runIn(world, { batchSize: 10, concurrency: 2 }, stop), (s) =>
          s.status === "interrupted")
          .pipe(
            Effect.provide(Shutdown.layer(shutdown))
          )
      )
      yield* Deferred.await(inFlight)
      // The other slot runs ahead until the window fills and the next page, read, waits for a slot.
      for (let seen = -1; seen !== world.table.calls.page;) {
        seen = world.table.calls.page
        for (let i = 0; i < 20; i++) {
          yield* Effect.yieldNow()
        }
      }
      const rotationsBegun = world.table.calls.rotate
      expect(shutdown.request()).toBe(true)
      yield* Effect.yieldNow()
      yield* Deferred.succeed(release, undefined)
      return { world, exit: yield* Fiber.await(fiber), rotationsBegun }
    })

  it.effect("interrupting a run through `graceful` lets the batches in flight commit and records where it stopped", () =>
    Effect.gen(function*() {
      const { exit, rotationsBegun, world } = yield* stopDuringBatch3(Effect.void)
      expect(Exit.isInterrupted(exit)).toBe(true)
      // No batch began after the stop, not even one whose page had been read ahead.
      expect(world.table.calls.page).toBeGreaterThan(rotationsBegun)
      expect(world.table.calls.rotate).toBe(rotationsBegun)
      const saved = record(world)
      expect(saved.status).toBe("interrupted")
      // Batch 3 was in flight when the stop came: it committed and the checkpoint covers it.
      const committed = world.table.rotations.flat()
      expect(committed.length).toBeGreaterThanOrEqual(30)
      expect(saved.rotated).toBe(committed.length)
      expect(saved.cursor).toBe([...committed].sort().at(-1))
      expect(committed.length).toBeLessThan(100)
    }))

  it.effect("a stop that comes after the last page was read lets the run complete: not an interruption", () =>
    Effect.gen(function*() {
      const shutdown = Shutdown.make()
      const world = new World(makeTickets(20), {
        // The last batch: its page, and the empty one after it, have been read by now.
        rotate: (n) => (n === 2 ? Effect.sync(() => void shutdown.request()) : undefined)
      })
      const exit = yield* Effect.exit(
        Shutdown.graceful(
          (stop) => runIn(world, { batchSize: 10, concurrency: 2 }, stop),
          (s) => s.status === "interrupted"
        )
          .pipe(Effect.provide(Shutdown.layer(shutdown)))
      )
      expect(world.table.calls.page).toBe(3)
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "completed", rotated: 20 } })
    }))

  it.effect("a run that fails while it winds down after a stop reports that failure, not an interruption", () =>
    Effect.gen(function*() {
      const { exit, world } = yield* stopDuringBatch3(fatalError())
      expect(Exit.isFailure(exit) && Cause.failureOption(exit.cause)).toMatchObject({
        _tag: "Some",
        value: { _tag: "RunFailed", error: { _tag: "DatabaseError", transient: false } }
      })
      expect(record(world).status).toBe("failed")
    }))
})

describe("failures", () => {
  /** The retry schedule's delay before retry `i` (from 0) without jitter: 100 ms doubling, capped at 5 s. */
  const nominalDelay = (i: number) => Math.min(100 * 2 ** i, 5000)

  const gapsOf = (times: ReadonlyArray<number>) => times.slice(1).map((t, i) => t - times[i]!)

  /** Each gap is its nominal delay jittered by at most ±20 % (to the microsecond). */
  const expectBackoff = (gaps: ReadonlyArray<number>) => {
    expect(gaps.length).toBeGreaterThan(0)
    gaps.forEach((gap, i) => {
      expect(gap, `retry ${i + 1}`).toBeGreaterThanOrEqual(nominalDelay(i) * 0.8 - 0.001)
      expect(gap, `retry ${i + 1}`).toBeLessThanOrEqual(nominalDelay(i) * 1.2 + 0.001)
    })
  }

  it.effect("ten transient failures in a row are retried on the named schedule: from 100 ms doubling, capped at 5 s, jittered", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const world = new World(makeTickets(30), {
        rotate: (n) =>
          Effect.gen(function*() {
            // Calls 2-12 are the second batch: ten failures, then its commit.
            if (n >= 2 && n <= 12) attempts.push(yield* TestClock.currentTimeMillis)
            if (n >= 2 && n <= 11) return yield* transientError()
          })
      })
      const run = runIn(world, { batchSize: 10 }).pipe(Effect.withRandom(Random.make("jitter")))
      const summary = yield* Effect.flatten(stepping(run))
      expect(summary).toMatchObject({ status: "completed", rotated: 30, retries: 10 })
      expect(record(world).retries).toBe(10)
      const gaps = gapsOf(attempts)
      expect(gaps.length).toBe(10)
      expectBackoff(gaps)
      // Capped: no delay beyond 5 s jittered up, and the last ones at the cap jittered down at most.
      expect(Math.max(...gaps)).toBeLessThanOrEqual(5000 * 1.2)
      expect(Math.min(...gaps.slice(6))).toBeGreaterThanOrEqual(5000 * 0.8)
      // Jittered: each delay has its own factor, not the nominal one.
      const factors = new Set(gaps.map((gap, i) => (gap / nominalDelay(i)).toFixed(3)))
      expect(factors.size, "distinct jitter factors").toBeGreaterThan(5)
      expect(world.table.rotationCounts().size).toBe(30)
    }))

  it.effect("a transient failure before the first batch (the schema check) is retried too; a permanent one is not", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(30), { checkSchema: (n) => (n <= 2 ? transientError() : undefined) })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "1 second")
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "completed", rotated: 30 } })
      expect(world.table.calls.checkSchema).toBe(3)

      const broken = new World(makeTickets(30), { checkSchema: () => fatalError() })
      const failed = yield* withClock(runIn(broken, { batchSize: 10 }), "1 second")
      expect(Exit.isFailure(failed)).toBe(true)
      expect(broken.table.calls).toMatchObject({ checkSchema: 1, rotate: 0 })
    }))

  /**
   * Runs in `world` and asks it to stop after 1 s; expects it interrupted (exit 130), not failed, within
   * 100 ms of the stop.
   */
  const expectInterruptedAtOnce = (world: World) =>
    Effect.gen(function*() {
      const stop = yield* Ref.make(false)
      yield* Effect.fork(Effect.delay(Ref.set(stop, true), "1 second"))
      const started = yield* TestClock.currentTimeMillis
      const exit = yield* stepping(runIn(world, { batchSize: 10 }, Ref.get(stop)))
      expect(Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause), String(exit)).toBe(true)
      expect((yield* TestClock.currentTimeMillis) - started).toBeLessThanOrEqual(1100)
    })

  it.effect("Ctrl-C while the schema check is being retried, or waits for its answer, interrupts the run at once", () =>
    Effect.gen(function*() {
      for (const checkSchema of [() => transientError("checking the schema"), () => Effect.never]) {
        const world = new World(makeTickets(30), { checkSchema })
        // Nothing was in flight, nothing is lost; not after ~26 s of retries or a 10 s wait for an answer.
        yield* expectInterruptedAtOnce(world)
        expect(world.table.calls.checkSchema).toBeLessThanOrEqual(4)
        expect(world.table.rotations).toEqual([])
        expect(world.store.records()).toEqual([])
      }
    }))

  it.effect("Ctrl-C while the lock is being taken (its store waits on a locked table): at once, no lock left", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(30))
      // The lock's INSERT waits 20 s, then lands.
      world.store.faults = { acquire: Effect.sleep("20 seconds") }
      yield* expectInterruptedAtOnce(world)
      expect(world.table.rotations).toEqual([])
      expect([...world.store.data.keys()]).toEqual([])
    }))

  it.effect("a step before the batches that fails transiently says what failed and that it is tried again", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.down = true
      yield* Effect.forkDaemon(Effect.delay(Effect.sync(() => void (world.store.down = false)), "1 second"))
      const exit = yield* withClock(runIn(world), "100 millis")
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "completed", rotated: 20 } })
      const notices = world.progress.flatMap((e) => e._tag === "Notice" ? [e.text] : [])
      expect(notices.length).toBeGreaterThan(0)
      // Not the advice for when it stays down (to rerun once it is back), which the retry would belie.
      for (const text of notices) {
        expect(text).toMatch(
          /^the checkpoint store \(memory\) is unavailable while [a-z ]+: connection refused; trying again$/
        )
      }
    }))

  it.effect("the time spent taking the lock is not running time: not in seconds, the rate or activeMillis", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(30), { rotate: () => Effect.sleep("1 second") })
      world.store.faults = { acquire: Effect.sleep("20 seconds") }
      const exit = yield* withClock(runIn(world, { batchSize: 10, concurrency: 1 }), "1 second")
      // Three batches of a second each, after 20 s of waiting for the lock.
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "completed", seconds: 3, rowsPerSecond: 10 } })
      expect(record(world).activeMillis).toBe(3_000)
    }))

  it.effect("a page query or batch that never answers times out and is retried", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50), {
        page: (n) => (n === 2 ? Effect.never : undefined),
        rotate: (n) => (n === 3 ? Effect.never : undefined)
      })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "10 seconds")
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "completed", rotated: 50, retries: 2 } })
      expect(world.table.calls).toMatchObject({ page: 7, rotate: 6 })
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
    }))

  it.effect("the retry schedule is bounded: a failure that stays transient stops the run after 10 retries", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(30), { rotate: (n) => (n >= 2 ? transientError() : undefined) })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "1 second")
      expect(Exit.isFailure(exit)).toBe(true)
      expect(world.table.calls.rotate).toBe(1 + 11)
      const saved = record(world)
      // Ten retries made; the failure that exhausted the schedule is not one.
      expect(saved.retries).toBe(10)
      expect(saved.status).toBe("failed")
      expect(saved.cursor).toBe(world.table.sorted[9]!.id)
      expect(saved.rotated).toBe(10)
    }))

  it("the failure's line says what is recorded, also when the batch that failed was the first", () => {
    const error = new DatabaseError({ operation: "rotating a batch of tokens", transient: false, detail: "refused" })
    const line = (cursor: string, rotated: number) =>
      new RunFailed({ error, runId: "r1", rotated, cursor, resume: "regenerate --resume --live-only" }).message
    expect(line("", 0)).toContain(
      "Run r1 stopped: no batch had committed yet. Fix the cause, then resume with `regenerate --resume --live-only`."
    )
    // A cause that ends in a question mark of its own keeps it alone.
    const question = new RunFailed({
      error: new SchemaMismatch({ detail: "ticket id \"x\" is not a uuid" }),
      runId: "r1",
      rotated: 0,
      cursor: "",
      resume: "regenerate --resume"
    }).message
    expect(question).toContain("is DATABASE_URL the right database? Run r1 stopped")
    expect(line("", 300)).toContain(
      "stopped: its first batch did not commit; the 300 tickets rotated by batches after it are committed and recorded."
    )
    const id = "ab".repeat(16)
    expect(line(id, 300)).toContain(
      `stopped: every batch up to id ${id} is committed and recorded (300 rotated in all).`
    )
    // What a stop (Ctrl-C) says: nothing committed is not "a batch committed beyond it".
    expect(committedUpTo("", 0)).toBe("no batch had committed yet")
    expect(committedUpTo("", 300)).toContain("still at the start (a batch committed beyond it is recorded")
  })

  it.effect("a permanent failure stops at once and leaves the checkpoint at the last commit", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50), { rotate: (n) => (n === 3 ? fatalError() : undefined) })
      const exit = yield* Effect.exit(runIn(world, { batchSize: 10 }))
      const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
      expect(failure).toMatchObject({ _tag: "Some", value: { _tag: "RunFailed", error: { _tag: "DatabaseError" } } })
      expect(world.table.calls.rotate).toBe(3)
      const saved = record(world)
      // The one line says where the run stopped and what to do.
      const message = Option.getOrThrow(failure).message
      expect(message).toContain(`every batch up to id ${saved.cursor} is committed and recorded (20 rotated in all)`)
      expect(message).toMatch(/crashed.*Fix the cause, then resume with `regenerate --resume`\.$/)
      expect(saved.status).toBe("failed")
      expect(saved.retries).toBe(0) // a failure that is not retried is not counted as a retry
      expect(saved.error).toContain("crashed")
      expect(saved.cursor).toBe(world.table.sorted[19]!.id)
      // A resume picks up from there and finishes.
      world.table.faults = {}
      const summary = yield* runIn(world, { batchSize: 10, mode: "resume" })
      expect(summary.rotated).toBe(30)
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
    }))

  it.effect.prop(
    "a failure retries cannot fix, at any concurrency: the batches in flight commit, the failed checkpoint " +
      "covers every commit, no batch begins after it, and a resume redoes nothing",
    {
      rows: FC.integer({ min: 20, max: 120 }),
      batchSize: FC.integer({ min: 1, max: 20 }),
      concurrency: FC.integer({ min: 2, max: 8 }),
      fatalShare: FC.integer({ min: 0, max: 100 }),
      delays: FC.array(FC.integer({ min: 0, max: 6 }), { minLength: 2, maxLength: 20 })
    },
    ({ batchSize, concurrency, delays, fatalShare, rows }) =>
      Effect.gen(function*() {
        const batches = Math.ceil(rows / batchSize)
        const fatal = 1 + Math.floor((fatalShare / 100) * (batches - 1))
        let failed = false
        const begunAfter: Array<number> = []
        const world: World = new World(makeTickets(rows, rows + 3), {
          rotate: (n) =>
            Effect.gen(function*() {
              if (failed) begunAfter.push(n)
              if (n === fatal) {
                // The failure comes once the other slots' batches have begun: they are in flight.
                const inFlight = Math.min(fatal + concurrency - 1, batches)
                yield* turnsUntil(() => world.table.calls.rotate >= inFlight)
                failed = true
                return yield* fatalError()
              }
              yield* turns(delays[n % delays.length]!)
            })
        })
        // An UPDATE the client stops waiting for still commits: interrupting batches in flight would show.
        world.table.outlivesCaller = true
        const exit = yield* Effect.exit(runIn(world, { batchSize, concurrency }))
        yield* world.table.settled
        const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
        expect(error).toMatchObject({
          value: { _tag: "RunFailed", error: { _tag: "DatabaseError", transient: false } }
        })
        const committed = world.table.rotations.flat()
        const last = lastSaved(world)!
        expect(last.status).toBe("failed")
        expect(committed.filter((id) => !covers(last)(id)), "committed, not in the failed checkpoint").toEqual([])
        expect(Option.getOrThrow(error)).toMatchObject({ rotated: committed.length })
        // The engine hears of the failure a moment after it happens: only batches already taken into the other
        // slots may begin in between.
        expect(begunAfter.length).toBeLessThanOrEqual(concurrency - 1)

        world.table.faults = {}
        const summary = yield* runIn(world, { batchSize, concurrency, mode: "resume" })
        expect(summary.status).toBe("completed")
        expect([...world.table.rotationCounts().values()].every((n) => n === 1), "redone").toBe(true)
        expect(world.table.rotationCounts().size).toBe(rows)
      }),
    { fastCheck: { numRuns: 60 } }
  )

  it.effect("a failed page query is an error, never the end of the table", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50), { page: (n) => (n === 3 ? fatalError("page") : undefined) })
      const exit = yield* Effect.exit(runIn(world, { batchSize: 10 }))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(record(world).status).toBe("failed")
      expect(world.table.rotationCounts().size).toBe(20)
    }))

  it.effect("a duplicate token gets fresh tokens and the batch is retried on the named schedule", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const world = new World(makeTickets(20), {
        rotate: (n) =>
          Effect.gen(function*() {
            if (n >= 2 && n <= 5) attempts.push(yield* TestClock.currentTimeMillis)
            if (n >= 2 && n <= 4) return yield* duplicateToken()
          })
      })
      const summary = yield* Effect.flatten(stepping(runIn(world, { batchSize: 10 })))
      expect(summary.retries).toBe(3)
      expect(summary.rotated).toBe(20)
      expectBackoff(gapsOf(attempts))
      // The failed attempts consumed tokens 10-39; the last one used new ones.
      expect(world.table.sorted.some((t) => t.token === "tok-00000000000a")).toBe(false)
    }))

  it.effect("a token another ticket already holds is refused by the table's unique key and retried with fresh ones", () =>
    Effect.gen(function*() {
      const tickets = makeTickets(20)
      // The generator's sixth token is already taken: the first batch collides once.
      tickets[15]!.token = "tok-000000000005"
      const world = new World(tickets)
      const summary = yield* Effect.flatten(stepping(runIn(world, { batchSize: 10 })))
      expect(summary).toMatchObject({ status: "completed", rotated: 20, retries: 1 })
      const tokens = world.table.sorted.map((t) => t.token)
      expect(new Set(tokens).size).toBe(20)
      expect(tokens).not.toContain("tok-000000000005")
    }))

  it.effect("a checkpoint that cannot be written stops the run", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      world.store.faults = { save: (n) => n >= 3 }
      const failed = yield* Ref.make(Option.none<RunSummary>())
      const exit = yield* withClock(
        runIn(world, { batchSize: 10 }).pipe(Effect.provideService(FailedSummary, failed)),
        "1 second"
      )
      expect(Exit.isFailure(exit) && String(exit.cause)).toContain("CheckpointUnavailable")
      // It stopped instead of going on unrecorded: only the batch whose checkpoint failed went in after the
      // first.
      expect(world.table.rotations.length).toBe(2)
      // Saves: 2 good, the failing one and its 10 retries, then one last try to mark the run failed.
      expect(world.store.saves).toBe(2 + 1 + 10 + 1)
      // What the failure reports is the checkpoint as written, the one a resume starts from: not the batch
      // whose write failed.
      const summary = Option.getOrThrow(yield* Ref.get(failed))
      const stored = record(world)
      expect(summary).toMatchObject({
        status: "failed",
        cursor: stored.cursor,
        rotatedTotal: stored.rotated,
        rotated: 10
      })
      expect(stored.rotated).toBe(10)
    }))

  it.effect("checkpoint hiccups are retried on the named schedule and the run completes", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      const attempts: Array<number> = []
      world.store.faults = {
        save: (n, now) => {
          if (n >= 3 && n <= 6) attempts.push(now)
          return n >= 3 && n <= 5
        }
      }
      const summary = yield* Effect.flatten(stepping(runIn(world, { batchSize: 10 })))
      expect(summary.status).toBe("completed")
      expect(summary.retries).toBe(3)
      expectBackoff(gapsOf(attempts))
      expect(record(world).status).toBe("completed")
    }))

  it.effect("Ctrl-C while checkpoint writes are being retried (the store is away) ends the run with that error at once", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      world.store.faults = { save: (n) => n >= 3 }
      const stop = yield* Ref.make(false)
      yield* Effect.fork(Effect.delay(Ref.set(stop, true), "1 second"))
      const started = yield* TestClock.currentTimeMillis
      const exit = yield* stepping(runIn(world, { batchSize: 10 }, Ref.get(stop)))
      expect(Exit.isFailure(exit) && Cause.failureOption(exit.cause)).toMatchObject({
        value: { _tag: "CheckpointUnavailable" }
      })
      // Without the stop the retries would go on for ~26 s.
      expect((yield* TestClock.currentTimeMillis) - started).toBeLessThan(2500)
    }))
})

describe("a stop while a batch is being retried", () => {
  it.effect("Ctrl-C while a batch is retried (a site holds its rows) gives it up: interrupted at once, the resume does it", () =>
    Effect.gen(function*() {
      // Every attempt from the third batch on fails as a lock wait timeout would, until the site lets go.
      const world = new World(makeTickets(50), { rotate: (n) => n >= 3 ? transientError("rotating") : undefined })
      const stop = yield* Ref.make(false)
      yield* Effect.fork(Effect.delay(Ref.set(stop, true), "1 second"))
      const started = yield* TestClock.currentTimeMillis
      const exit = yield* stepping(runIn(world, { batchSize: 10, concurrency: 1 }, Ref.get(stop)))
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "interrupted", rotated: 20 } })
      // The attempt after the stop is the last: not another ~26 s of retries.
      expect((yield* TestClock.currentTimeMillis) - started).toBeLessThan(2500)
      const saved = record(world)
      expect(saved).toMatchObject({ status: "interrupted", rotated: 20 })
      expect(saved.cursor).toBe(world.table.sorted[19]!.id)
      world.table.faults = {}
      const resumed = yield* runIn(world, { batchSize: 10, mode: "resume" })
      expect(resumed).toMatchObject({ status: "completed", rotated: 30, resumed: true })
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
      expect(world.table.rotationCounts().size).toBe(50)
    }))

  it.effect("at concurrency 4 the batches beside the given-up one commit and are recorded", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(200), { rotate: (n) => n === 3 ? transientError("rotating") : undefined })
      const stop = Effect.sync(() => world.table.calls.rotate >= 3)
      const exit = yield* stepping(runIn(world, { batchSize: 10, concurrency: 4 }, stop))
      expect(exit).toMatchObject({ _tag: "Success", value: { status: "interrupted" } })
      const saved = record(world)
      const committed = world.table.rotations.flat()
      expect(saved.rotated).toBe(committed.length)
      // Nothing given up is behind the checkpoint; what committed beyond it is recorded.
      const notDone = world.table.sorted.map((t) => t.id).filter((id) => !committed.includes(id))
      expect(notDone.every((id) => id > saved.cursor)).toBe(true)
      world.table.faults = {}
      yield* runIn(world, { batchSize: 10, concurrency: 4, mode: "resume" })
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
      expect(world.table.rotationCounts().size).toBe(200)
    }))
})

describe("resume rules", () => {
  const interrupted = () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(60))
      const first = yield* runIn(world, { batchSize: 10 }, Effect.sync(() => world.table.calls.rotate >= 2))
      expect(first.status).toBe("interrupted")
      return world
    })

  it.effect("a plain run refuses when an unfinished run exists, naming --resume and --restart", () =>
    Effect.gen(function*() {
      const world = yield* interrupted()
      const error = yield* Effect.flip(runIn(world))
      expect(error._tag).toBe("UnfinishedRun")
      expect(error.message).toContain("--resume")
      expect(error.message).toContain("--restart")
      expect(world.table.rotations.length).toBe(2)
    }))

  it.effect("--resume continues from the checkpoint", () =>
    Effect.gen(function*() {
      const world = yield* interrupted()
      const summary = yield* runIn(world, { mode: "resume" })
      expect(summary).toMatchObject({ status: "completed", rotated: 40, rotatedTotal: 60, resumed: true })
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
    }))

  it.effect("--resume keeps the ranges an earlier process committed beyond its cursor until it passes them", () =>
    Effect.gen(function*() {
      const world = yield* interrupted()
      const ids = world.table.sorted.map((t) => t.id)
      // As if the first process had also committed tickets 40-49 (out of order) before it stopped.
      const key = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      const skipped = [ids[40]!, ids[49]!] as const
      world.store.data.set(key, {
        value: JSON.stringify({ ...JSON.parse(world.store.records()[0]!), done: [skipped] }),
        expiresAt: undefined
      })
      // A resume that stops after one batch must still record that range: a crash now would otherwise redo it.
      const second = yield* runIn(world, { mode: "resume" }, Effect.sync(() => world.table.calls.rotate >= 3))
      expect(second.status).toBe("interrupted")
      expect(record(world)).toMatchObject({ cursor: ids[29], done: [skipped] })
      const third = yield* runIn(world, { mode: "resume" })
      expect(third).toMatchObject({ status: "completed", rotated: 20 })
      expect(ids.slice(40, 50).some((id) => world.table.rotationCounts().has(id))).toBe(false)
    }))

  it.effect("--resume with no run at all is refused", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(10))
      const error = yield* Effect.flip(runIn(world, { mode: "resume" }))
      expect(error._tag).toBe("NoRunToResume")
      expect(world.store.records()).toEqual([])
    }))

  it.effect("--resume after a completed run says so and changes nothing", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(10))
      yield* runIn(world)
      const summary = yield* runIn(world, { mode: "resume" })
      expect(summary.note).toContain("already completed")
      expect(summary.rotated).toBe(0)
      expect(world.table.rotations.length).toBe(1)
    }))

  it.effect("--resume refuses a different scope", () =>
    Effect.gen(function*() {
      const world = yield* interrupted()
      const scope = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      const error = yield* Effect.flip(runIn(world, { mode: "resume", scope }))
      expect(error._tag).toBe("ScopeMismatch")
      expect(error.message).toContain("all tickets")
    }))

  it.effect("--resume of a completed scope refuses while another scope's run is unfinished, naming its flags (not \"nothing to resume\")", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(60))
      expect((yield* runIn(world)).status).toBe("completed")
      const scope = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      const stopped = yield* runIn(world, { scope }, Effect.sync(() => world.table.calls.rotate >= 8))
      expect(stopped.status).toBe("interrupted")
      const rotations = world.table.rotations.length
      for (const dryRun of [false, true]) {
        const error = dryRun
          ? yield* Effect.flip(planIn(world, { mode: "resume" }))
          : yield* Effect.flip(runIn(world, { mode: "resume" }))
        expect(error._tag).toBe("ScopeMismatch")
        expect(error.message).toContain("`regenerate --resume --live-only`")
      }
      expect(world.table.rotations.length).toBe(rotations)
      // Resumed with its flags, the other run completes; then --resume of either scope has nothing to do.
      expect((yield* runIn(world, { mode: "resume", scope })).status).toBe("completed")
      expect((yield* runIn(world, { mode: "resume" })).note).toContain("already completed")
    }))

  it.effect("a plain run of another scope refuses while a run is unfinished (the latest or an older one), naming its flags; --restart starts it and leaves that run resumable", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(60))
      const scope = new Scope({ liveOnly: true, emailDomain: "example.com", createdAfter: null, createdBefore: null })
      const first = yield* runIn(world, { batchSize: 10, scope }, Effect.sync(() => world.table.calls.rotate >= 2))
      expect(first.status).toBe("interrupted")
      for (const dryRun of [false, true]) {
        const error = dryRun ? yield* Effect.flip(planIn(world)) : yield* Effect.flip(runIn(world))
        expect(error._tag).toBe("UnfinishedRun")
        expect(error.message).toContain("`regenerate --resume --live-only --email-domain example.com`")
        expect(error.message).toContain("--restart")
        expect(error.message).not.toContain("no longer going")
      }
      // Recorded as running (going on in another process, or killed): the message says to let it end first.
      const recordKey = Checkpoint.keys({ database: "memory:test", scope }).record
      const text = world.store.data.get(recordKey)!.value
      expect(text).toContain(`"status":"interrupted"`)
      world.store.data.set(recordKey, {
        value: text.replace(`"status":"interrupted"`, `"status":"running"`),
        expiresAt: undefined
      })
      expect((yield* Effect.flip(runIn(world))).message).toContain(
        "example.com` once it is no longer going (`status` shows whether it is), or pass --restart"
      )
      expect(world.table.rotations.length).toBe(2)
      const all = yield* runIn(world, { mode: "restart" })
      expect(all).toMatchObject({ status: "completed", rotated: 60 })
      // No longer the latest run, the unfinished one still stops a plain start and a --resume of a third scope.
      const before = world.table.rotations.length
      const third = new Scope({ liveOnly: false, emailDomain: "example.com", createdAfter: null, createdBefore: null })
      for (const mode of ["start", "resume"] as const) {
        const error = yield* Effect.flip(runIn(world, { mode, scope: third }))
        expect(error._tag).toBe(mode === "start" ? "UnfinishedRun" : "ScopeMismatch")
        expect(error.message).toContain("`regenerate --resume --live-only --email-domain example.com`")
      }
      expect(world.table.rotations.length).toBe(before)
      const resumed = yield* runIn(world, { mode: "resume", scope })
      expect(resumed).toMatchObject({ status: "completed", resumed: true })
    }))

  it.effect("a store that cannot list the runs stops the start (another scope's unfinished run must not go unseen)", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.faults = { list: true }
      for (const mode of ["start", "resume"] as const) {
        const error = yield* Effect.flip(runIn(world, { mode }))
        expect(error._tag).toBe("CheckpointUnavailable")
        expect(error.message).toContain("listing runs")
      }
      expect(world.table.rotations.length).toBe(0)
      expect(world.store.records()).toEqual([])
    }))

  it.effect("--restart abandons the unfinished run and starts a new one, saying which run it replaces", () =>
    Effect.gen(function*() {
      const notices = (world: World) =>
        world.progress.flatMap((e) => e._tag === "Notice" ? [e.text] : []).filter((t) => t.includes("on this scope"))
      const world = yield* interrupted()
      const before = record(world)
      const summary = yield* runIn(world, { mode: "restart" })
      expect(summary.runId).not.toBe(before.runId)
      expect(summary.rotated).toBe(60)
      expect(summary.resumed).toBe(false)
      expect(notices(world)).toEqual([
        `run ${before.runId} on this scope (interrupted, ${before.rotated} rotated) is abandoned; this new run ` +
        "starts over from the first ticket (Ctrl-C stops it, resumably)"
      ])
      // Over a completed run, a restart gives every token again, as a plain rerun does: said the same way.
      const completed = record(world)
      expect(completed).toMatchObject({ runId: summary.runId, status: "completed" })
      world.progress.length = 0
      const again = yield* runIn(world, { mode: "restart" })
      expect(notices(world)).toEqual([
        `run ${completed.runId} on this scope completed at ${completed.updatedAt.toISOString()}; ` +
        "this new run gives every ticket in scope a new token again (Ctrl-C stops it, resumably)"
      ])
      expect(again.rotated).toBe(60)
    }))

  it.effect("a corrupt checkpoint is an error, not 'no checkpoint'; --restart recovers", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      const key = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      world.store.data.set(key, { value: "{not json", expiresAt: undefined })
      for (const mode of ["start", "resume"] as const) {
        const error = yield* Effect.flip(runIn(world, { mode }))
        expect(error._tag).toBe("CheckpointCorrupt")
        expect(error.message).toContain("--restart")
      }
      expect(world.table.rotations.length).toBe(0)
      // The restart, planned and run, names what it replaces.
      const replaced = `the checkpoint at memory key ${key} cannot be read (`
      expect(Option.getOrThrow((yield* planIn(world, { mode: "restart" })).replaces)).toContain(replaced)
      const summary = yield* runIn(world, { mode: "restart" })
      expect(summary.rotated).toBe(20)
      expect(world.progress.flatMap((e) => e._tag === "Notice" ? [e.text] : [])).toContainEqual(
        expect.stringMatching(
          new RegExp(`^${replaced.replace(/[()]/g, "\\$&")}.*: this new run replaces it and starts`)
        )
      )
      expect(Option.isNone((yield* planIn(world, { mode: "restart" })).replaces)).toBe(true)
    }))

  it.effect("the dry run's action: restart only where an unfinished run would be abandoned", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      const action = Effect.map(planIn(world, { mode: "restart" }), (p) => p.action)
      expect(yield* action, "no run at all").toBe("start")
      yield* runIn(world, { batchSize: 5 }, Effect.sync(() => world.table.calls.rotate >= 1))
      expect(record(world).status).toBe("interrupted")
      expect(yield* action).toBe("restart")
      yield* runIn(world, { mode: "resume" })
      expect(yield* action, "over a completed run").toBe("start")
    }))

  it.effect("a checkpoint of another database or scope is refused; --restart replaces it", () =>
    Effect.gen(function*() {
      const other = new World(makeTickets(20))
      yield* runIn(other, {}, Effect.succeed(true))
      const world = new World(makeTickets(20))
      const key = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      // The record of another scope, consistent in itself, under this scope's key.
      const foreign = JSON.parse(other.store.records()[0]!)
      const liveOnly = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      world.store.data.set(key, {
        value: JSON.stringify({
          ...foreign,
          scope: { ...liveOnly },
          fingerprint: Checkpoint.fingerprint({ database: "memory:test", scope: liveOnly })
        }),
        expiresAt: undefined
      })
      const error = yield* Effect.flip(runIn(world))
      expect(error._tag).toBe("ForeignCheckpoint")
      expect(error.message).toMatch(/\(memory:test, --live-only\): nothing was changed; run `regenerate --restart` to /)
      // One whose scope was edited to another (its fingerprint kept) is damage.
      world.store.data.set(key, {
        value: JSON.stringify({ ...foreign, scope: { ...liveOnly } }),
        expiresAt: undefined
      })
      expect((yield* Effect.flip(runIn(world)))._tag).toBe("CheckpointCorrupt")
      expect(world.table.rotations.length).toBe(0)
      expect((yield* runIn(world, { mode: "restart" })).rotated).toBe(20)
    }))
})

describe("locks", () => {
  const holderValue = (host: string, pid: number, pidNamespace = testHost.pidNamespace, bootId = testHost.bootId) =>
    JSON.stringify({ host, pidNamespace, bootId, pid, token: "abc", since: new Date(0).toISOString() })
  const lockKey = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).lock

  it.effect("a second runner on the same scope is refused, naming the holder", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, { value: holderValue("other-host", 4242), expiresAt: 30_000 })
      const error = yield* Effect.flip(runIn(world))
      expect(error._tag).toBe("LockHeld")
      expect(error.message).toContain("pid 4242 on other-host")
      expect(world.table.rotations.length).toBe(0)
    }))

  it.effect("a lock of a dead process on this host is stale and taken over at once", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, { value: holderValue(testHost.hostname, 999_999), expiresAt: 30_000 })
      const summary = yield* runIn(world)
      expect(summary.rotated).toBe(20)
    }))

  it.effect("a stale lock is left as it is by a run the resume rules refuse (a plain start after a kill -9)", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      yield* runIn(world, { batchSize: 5 }, Effect.sync(() => world.table.calls.rotate >= 1))
      const stale = { value: holderValue(testHost.hostname, 999_999), expiresAt: 30_000 }
      world.store.data.set(lockKey, stale)
      expect((yield* Effect.flip(runIn(world)))._tag).toBe("UnfinishedRun")
      expect(world.store.data.get(lockKey)).toEqual(stale)
      expect((yield* runIn(world, { mode: "resume" })).rotated).toBe(15)
      expect(world.store.data.has(lockKey)).toBe(false)
    }))

  it.effect("a lock left with this process's own pid (a restarted container's pid 1) is stale", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, { value: holderValue(testHost.hostname, testHost.pid), expiresAt: 30_000 })
      expect((yield* runIn(world)).rotated).toBe(20)
    }))

  it.effect("pids of another PID namespace (a container sharing the host name) or another boot (a machine sharing the host name) say nothing: its lock lasts its lease", () =>
    Effect.gen(function*() {
      const others = [
        [testHost.pid, "pid:[4026532999]", testHost.bootId],
        [999_999, null, testHost.bootId],
        [999_999, testHost.pidNamespace, "9d1e6f0a-0c3b-4d7a-8f21-5b6c7d8e9f00"]
      ] as const
      for (const [pid, pidNamespace, bootId] of others) {
        const world = new World(makeTickets(20))
        world.store.data.set(lockKey, {
          value: holderValue(testHost.hostname, pid, pidNamespace, bootId),
          expiresAt: 30_000
        })
        const error = yield* Effect.flip(runIn(world))
        expect(error._tag, `pid ${pid} in ${pidNamespace}, boot ${bootId}`).toBe("LockHeld")
        expect(world.table.rotations.length).toBe(0)
      }
    }))

  it.effect("a lock of an earlier version (no boot id) of a dead process on this host is stale, as it was then", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, {
        value: holderValue(testHost.hostname, 999_999, testHost.pidNamespace, null),
        expiresAt: 30_000
      })
      expect((yield* runIn(world)).rotated).toBe(20)
    }))

  it.effect("a live process on this host keeps its lock", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      const alive: Checkpoint.Host = { ...testHost, pid: 2000, isAlive: (pid) => pid === 1000 || pid === 2000 }
      world.store.data.set(lockKey, { value: holderValue(testHost.hostname, 1000), expiresAt: 30_000 })
      const error = yield* Effect.flip(
        regenerate(options(), Effect.succeed(false)).pipe(Effect.provide(world.layer(alive)))
      )
      expect(error._tag).toBe("LockHeld")
    }))

  it.effect("another host's lock expires with its lease", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, { value: holderValue("other-host", 4242), expiresAt: Checkpoint.leaseMillis })
      expect((yield* Effect.flip(runIn(world)))._tag).toBe("LockHeld")
      yield* TestClock.adjust(Checkpoint.leaseMillis)
      expect((yield* runIn(world)).rotated).toBe(20)
    }))

  it.effect("the lock is renewed while a run lasts and released at the end", () =>
    Effect.gen(function*() {
      // The lease left on the lock as each batch begins (a lapsed lock would be taken back at the next save,
      // so the save succeeding alone would not show the renewal).
      const leaseLeft: Array<number> = []
      const world: World = new World(makeTickets(40), {
        rotate: () =>
          Effect.zipRight(
            Effect.map(Clock.currentTimeMillis, (now) => {
              const expiresAt = world.store.data.get(lockKey)?.expiresAt
              leaseLeft.push(expiresAt === undefined ? -1 : expiresAt - now)
            }),
            Effect.sleep("20 seconds")
          )
      })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "1 second")
      expect(Exit.isSuccess(exit)).toBe(true)
      // 80 s of batches with a 30 s lease renewed every 10 s: never less than 20 s left, never lapsed.
      expect(leaseLeft).toHaveLength(4)
      expect(Math.min(...leaseLeft)).toBeGreaterThanOrEqual(20_000)
      expect(record(world).status).toBe("completed")
      expect(world.store.data.has(lockKey)).toBe(false)
    }))

  it.effect("a run that lost its lock stops instead of writing over the new holder's checkpoint", () =>
    Effect.gen(function*() {
      const thief = { store: undefined as undefined | World["store"] }
      const world: World = new World(makeTickets(40), {
        rotate: (n) =>
          n === 2
            ? Effect.sync(() =>
              void thief.store?.data.set(lockKey, { value: holderValue("thief", 1), expiresAt: 1e12 })
            )
            : undefined
      })
      thief.store = world.store
      const error = yield* Effect.flip(runIn(world, { batchSize: 10 }))
      expect(error._tag).toBe("LockLost")
      expect(record(world).cursor).toBe(world.table.sorted[9]!.id)
    }))

  it.effect("a lock that lapsed while the store was unreachable is taken back when no one else came", () =>
    Effect.gen(function*() {
      const world: World = new World(makeTickets(40), {
        rotate: (n) => n === 2 ? Effect.sync(() => void world.store.data.delete(lockKey)) : undefined
      })
      const summary = yield* runIn(world, { batchSize: 10 })
      expect(summary.status).toBe("completed")
      const counts = world.table.rotationCounts()
      expect(world.table.sorted.every((t) => counts.get(t.id) === 1), "every ticket rotated once").toBe(true)
      expect(record(world).status).toBe("completed")
      expect(world.store.data.has(lockKey), "released at the end").toBe(false)
    }))

  it.effect("a lapsed lock that the renewal takes back while a save is refused: the save goes through", () =>
    Effect.gen(function*() {
      let ours: string | undefined
      const world: World = new World(makeTickets(40), {
        rotate: (n) =>
          n === 2
            ? Effect.sync(() => {
              ours = world.store.data.get(lockKey)?.value
              world.store.data.delete(lockKey)
            })
            : undefined
      })
      // Between the save's refused write and its own attempt to take the lock back, the renewal takes it:
      // the save's reclaim is then refused, the lock being held (by this run).
      world.store.faults = {
        refused: () => Effect.sync(() => void world.store.data.set(lockKey, { value: ours!, expiresAt: 30_000 }))
      }
      const summary = yield* runIn(world, { batchSize: 10 })
      expect(ours).toBeDefined()
      expect(summary.status).toBe("completed")
      expect(record(world)).toMatchObject({ status: "completed", rotated: 40 })
    }))

  it.effect("a save applied but unanswered while the lease ran out: the lock is taken back and the run completes", () =>
    Effect.gen(function*() {
      const world: World = new World(makeTickets(40))
      let lost = 0
      world.store.faults = {
        // The third write lands, its answer is lost, and the lease runs out before the retry.
        answerLost: (n) => n === 3 && ++lost === 1 && world.store.data.delete(lockKey)
      }
      const summary = yield* Effect.flatten(stepping(runIn(world, { batchSize: 10 })))
      expect(lost).toBe(1)
      expect(summary.status).toBe("completed")
      expect(record(world)).toMatchObject({ status: "completed", rotated: 40 })
    }))

  it.effect("a store restarted without its data gets the run's lock, record and pointer back", () =>
    Effect.gen(function*() {
      const world: World = new World(makeTickets(40), {
        rotate: (n) => n === 3 ? Effect.sync(() => world.store.data.clear()) : undefined
      })
      const summary = yield* runIn(world, { batchSize: 10 })
      expect(summary.status).toBe("completed")
      expect(record(world)).toMatchObject({ status: "completed", rotated: 40 })
      const latest = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).latest
      expect(world.store.data.get(latest)?.value).toBe(
        Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      )
    }))

  it.effect("a lapsed lock is not taken back once another runner has written the run", () =>
    Effect.gen(function*() {
      const recordKey = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      const world: World = new World(makeTickets(40), {
        rotate: (n) =>
          n === 2
            ? Effect.sync(() => {
              world.store.data.delete(lockKey)
              const other = JSON.parse(world.store.data.get(recordKey)!.value)
              world.store.data.set(recordKey, {
                value: JSON.stringify({ ...other, batches: 99 }),
                expiresAt: undefined
              })
            })
            : undefined
      })
      const error = yield* Effect.flip(runIn(world, { batchSize: 10 }))
      expect(error._tag).toBe("LockLost")
      expect(record(world).batches, "the other runner's record is left as it wrote it").toBe(99)
    }))

  it.effect("a 22 s store outage that outlasts the lease: the run takes its lock back and completes", () =>
    Effect.gen(function*() {
      const world: World = new World(makeTickets(60), {
        rotate: (n) =>
          // One batch a second: the store goes down at 19.5 s, just before the renewal due at 20 s, so the
          // lease (renewed at 10 s) runs out at 40 s, before the store is back at 41.5 s.
          n === 20
            ? Effect.sleep("500 millis").pipe(
              Effect.zipRight(Effect.sync(() => void (world.store.down = true))),
              Effect.zipRight(
                Effect.forkDaemon(Effect.delay(Effect.sync(() => void (world.store.down = false)), "22 seconds"))
              )
            )
            : Effect.sleep("1 second")
      })
      const exit = yield* withClock(runIn(world, { batchSize: 2 }), "250 millis", 4000)
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(record(world)).toMatchObject({ status: "completed", rotated: 60 })
      expect(world.store.data.has(lockKey), "released at the end").toBe(false)
    }))

  it("holder descriptions say who and since when", () => {
    const holder = new LockHolder({ host: "db1", pid: 7, token: "t", since: new Date(0) })
    expect(holder.description).toBe("pid 7 on db1 since 1970-01-01T00:00:00.000Z")
  })
})

describe("waiting for the replicas", () => {
  /** A world whose replicas hold the batches while `behind` is set. */
  const withReplicas = (tickets: number, faults: (behind: Ref.Ref<string | undefined>) => Faults = () => ({})) =>
    Effect.gen(function*() {
      const behind = yield* Ref.make<string | undefined>(undefined)
      const world = new World(makeTickets(tickets), faults(behind))
      world.replicas = { watched: ["db2:3306"], maxLag: 10, holding: Ref.get(behind) }
      return { world, behind }
    })

  it.effect("no batch begins while a replica is behind; the run goes on once it has caught up", () =>
    Effect.gen(function*() {
      // Behind at first, caught up after 3 s; then from the 5th batch on, not replicating for 2 s.
      const { behind, world } = yield* withReplicas(100, (behind) => ({
        rotate: (n) =>
          n === 5
            ? Effect.zipRight(
              Ref.set(behind, "replica db2:3306 does not replicate"),
              Effect.forkDaemon(Effect.delay(Ref.set(behind, undefined), "2 seconds"))
            ).pipe(Effect.asVoid)
            : undefined
      }))
      yield* Ref.set(behind, "replica db2:3306 is 12s behind")
      yield* Effect.fork(Effect.delay(Ref.set(behind, undefined), "3 seconds"))
      const started = yield* TestClock.currentTimeMillis
      const summary = yield* Effect.flatten(withClock(runIn(world, { batchSize: 10, concurrency: 1 }), "100 millis"))
      expect(summary).toMatchObject({ status: "completed", rotated: 100 })
      expect((yield* TestClock.currentTimeMillis) - started).toBeGreaterThanOrEqual(5000)
      // Nothing committed while a replica held the batches: each hold (said in progress, with why) ends
      // before the next commit.
      const events = world.progress.map((e) =>
        e._tag === "Waiting" ? (e.reason === undefined ? "go" : e.reason) : e._tag === "Advanced" ? "commit" : ""
      ).filter((e) => e !== "").filter((e, i, all) => e !== all[i - 1] || e === "commit")
      expect(events.slice(0, 3)).toEqual(["replica db2:3306 is 12s behind", "go", "commit"])
      const second = events.indexOf("replica db2:3306 does not replicate")
      expect(events.slice(second - 5, second + 3)).toEqual([
        "commit",
        "commit",
        "commit",
        "commit",
        "commit",
        "replica db2:3306 does not replicate",
        "go",
        "commit"
      ])
    }))

  it.effect("a stop request ends the wait at once: nothing rotated, the run resumable", () =>
    Effect.gen(function*() {
      const { behind, world } = yield* withReplicas(50)
      yield* Ref.set(behind, "replica db2:3306 is 40s behind")
      const stop = yield* Ref.make(false)
      yield* Effect.fork(Effect.delay(Ref.set(stop, true), "2 seconds"))
      const started = yield* TestClock.currentTimeMillis
      const summary = yield* Effect.flatten(withClock(runIn(world, { batchSize: 10 }, Ref.get(stop)), "100 millis"))
      expect(summary).toMatchObject({ status: "interrupted", rotated: 0 })
      expect((yield* TestClock.currentTimeMillis) - started).toBeLessThan(2500)
      expect(world.table.rotations).toEqual([])
      yield* Ref.set(behind, undefined)
      expect(yield* runIn(world, { mode: "resume" })).toMatchObject({ status: "completed", rotated: 50 })
    }))
})

describe("throttle and adaptive batches", () => {
  it.effect("--max-rows-per-second paces the run and shows as throttled", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(500))
      const started = yield* TestClock.currentTimeMillis
      const summary = yield* Effect.flatten(
        withClock(runIn(world, { batchSize: 50, maxRowsPerSecond: 100 }), "50 millis")
      )
      const elapsed = (yield* TestClock.currentTimeMillis) - started
      expect(summary.rotated).toBe(500)
      // 500 rows at 100 rows/s, the bucket starting empty: every row paid for, at least 5 s.
      expect(elapsed).toBeGreaterThanOrEqual(5000)
      expect(elapsed).toBeLessThan(6000)
      expect(world.progress.some((e) => e._tag === "Phase" && e.phase === "throttled")).toBe(true)
    }))

  it.effect("a stop request ends a throttle's hold at once, and no batch is taken after it", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(500))
      const stop = yield* Ref.make(false)
      yield* Effect.fork(Effect.delay(Ref.set(stop, true), "1 second"))
      const started = yield* TestClock.currentTimeMillis
      // 100 rows at 10 rows/s: the first batch is held for 10 s.
      const summary = yield* Effect.flatten(
        withClock(runIn(world, { batchSize: 100, maxRowsPerSecond: 10 }, Ref.get(stop)), "100 millis")
      )
      expect(summary).toMatchObject({ status: "interrupted", rotated: 0 })
      expect(world.table.calls.rotate).toBe(0)
      expect((yield* TestClock.currentTimeMillis) - started).toBeLessThan(1500)
    }))

  it("the batch size shrinks quickly after a slow batch and grows slowly, within 100-10000", () => {
    expect(adaptBatchSize(1000, 1000, 250)).toBe(500)
    expect(adaptBatchSize(1000, 300, 250)).toBe(800)
    expect(adaptBatchSize(1000, 100, 250)).toBe(1200)
    expect(adaptBatchSize(1000, 250, 250)).toBe(1000)
    expect(adaptBatchSize(100, 10_000, 250)).toBe(100)
    expect(adaptBatchSize(10_000, 1, 250)).toBe(10_000)
    // At most 25 % up, small sizes included.
    expect([100, 125, 150, 200, 300, 975].map((size) => adaptBatchSize(size, 1, 250))).toEqual([
      125,
      150,
      175,
      250,
      375,
      1200
    ])
  })

  it("with batches in flight, feedback from pages read at an older size never compounds", () => {
    // Eight slow batches read at 1000 complete one after another: halved once, not eight times.
    let size = 1000
    for (let i = 0; i < 8; i++) size = nextBatchSize(size, 1000, 1000, 250)
    expect(size).toBe(500)
    // Fast batches read at 1000 do not raise a size already raised to 1200; a fast one of 1200 does.
    expect(nextBatchSize(1200, 1000, 10, 250)).toBe(1200)
    expect(nextBatchSize(1200, 1200, 10, 250)).toBe(1500)
    // A slow batch of the old size still lowers it (to what its own timing asks, if lower).
    expect(nextBatchSize(1200, 1000, 1000, 250)).toBe(500)
    expect(nextBatchSize(400, 1000, 300, 250)).toBe(400)
  })

  it.effect.prop(
    "adaptive batches: sizes within 100-10000, at most 25 % above the largest size timed, progress shows the " +
      "controller's size, and a kill -9 redoes at most concurrency × the largest batch",
    {
      rows: FC.integer({ min: 1500, max: 5000 }),
      concurrency: FC.integer({ min: 1, max: 8 }),
      startSize: FC.integer({ min: 4, max: 12 }).map((n) => n * 25),
      targetBatchMillis: FC.integer({ min: 20, max: 200 }),
      // The batch size that takes the target time: rows take targetBatchMillis / idealSize each.
      idealSize: FC.integer({ min: 50, max: 2500 }),
      // One batch in ten, on average, takes ten times as long.
      spikes: FC.array(FC.integer({ min: 0, max: 9 }), { minLength: 1, maxLength: 10 }),
      crashShare: FC.integer({ min: 0, max: 95 }),
      crashDelay: FC.integer({ min: 0, max: 3 }),
      // Spans read ahead at one size are read again at the next.
      spans: FC.boolean()
    },
    ({ concurrency, crashDelay, crashShare, idealSize, rows, spans, spikes, startSize, targetBatchMillis }) =>
      Effect.gen(function*() {
        const slow = (n: number) => (spikes[n % spikes.length] === 0 ? 10 : 1)
        const delay = (n: number, ids: ReadonlyArray<string>) =>
          Effect.sleep(Duration.millis((ids.length / idealSize) * targetBatchMillis * slow(n)))
        const world = new World(makeTickets(rows, rows), { rotate: delay })
        world.table.spans = spans
        const run = { batchSize: startSize, concurrency, targetBatchMillis }
        // A second process starts from where a kill -9 would have left things once `crashShare` % of the rows
        // committed (`crashDelay` events later); the first runs on to the end, for the sizes it takes.
        let crashAt: number | undefined
        let next: World | undefined
        world.log.onEvent = (i) => {
          crashAt ??= world.table.rotations.flat().length >= (crashShare / 100) * rows ? i + crashDelay : undefined
          if (i === crashAt) next = world.afterKill({ rotate: delay })
        }
        expect(yield* Effect.flatten(stepping(runIn(world, run)))).toMatchObject({ status: "completed", rotated: rows })

        const sizes = world.table.pages.map((p) => p.limit)
        expect(sizes.filter((size) => size < 100 || size > 10_000), "out of range").toEqual([])
        // No page is read at more than 1.25 × the largest size timed (committed) before it: feedback from
        // batches read at an older size never compounds.
        const committedAt = new Map<string, number>()
        world.log.events.forEach((e, i) => e._tag === "commit" && committedAt.set(e.ids[0]!, i))
        const overgrown = world.table.pages.filter((page) => {
          const timed = world.table.pages.filter((p) => (committedAt.get(p.ids[0] ?? "") ?? Infinity) < page.at)
          return page.limit > Math.max(startSize, ...timed.map((p) => p.limit * 1.25))
        })
        expect(overgrown.map((p) => p.limit), "grew beyond what was timed").toEqual([])
        const last = world.table.sorted.at(-1)!.id
        expect(world.table.rotations.filter((ids) => ids.length < 100 && !ids.includes(last)), "short").toEqual([])
        // Progress shows the controller's size (a multiple of 25, like every size it takes), after each change.
        const shown = world.progress.flatMap((e) => (e._tag === "Advanced" ? [e.batchSize ?? -1] : []))
        expect(shown.filter((size) => size < 100 || size > 10_000 || size % 25 !== 0), "not a size").toEqual([])
        expect(shown.slice(1).filter((size, i) => size > shown[i]! * 1.25), "grew more than 25 %").toEqual([])

        // A crash point past the last event is a kill -9 once the run ended: the resume finds it completed.
        next ??= world.afterKill({ rotate: delay })
        const ids = world.table.sorted.map((t) => t.id)
        const maxRedo = concurrency * Math.max(startSize, ...next.table.pages.map((p) => p.limit))
        expect(checkInvariants(next.log, ids, maxRedo)).toBeUndefined()
        const atCrash = lastSaved(next)!
        const redo = [...new Set(next.table.rotations.flat())].filter((id) => !covers(atCrash)(id))
        yield* Effect.flatten(stepping(runIn(next, { ...run, mode: "resume" })))
        const counts = next.table.rotationCounts()
        expect(ids.filter((id) => !counts.has(id)), "missed").toEqual([])
        expect(ids.filter((id) => counts.get(id)! > 1).sort(), "redone").toEqual(redo.sort())
      }),
    { fastCheck: { numRuns: 20 } }
  )

  it.effect("adaptive batches keep resume exact", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(3000), { rotate: (_, ids) => Effect.sleep(`${ids.length / 10} millis`) })
      const stop = Effect.sync(() => world.table.calls.rotate >= 6)
      const first = yield* Effect.flatten(
        withClock(runIn(world, { batchSize: 100, targetBatchMillis: 50 }, stop), "5 millis")
      )
      expect(first.status).toBe("interrupted")
      const sizes = world.table.rotations.map((ids) => ids.length)
      expect(new Set(sizes).size).toBeGreaterThan(1)
      const second = yield* Effect.flatten(
        withClock(runIn(world, { batchSize: 100, targetBatchMillis: 50, mode: "resume" }), "5 millis")
      )
      expect(first.rotated + second.rotated).toBe(3000)
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
    }))

  it.effect("spans read ahead at one size are not taken after the tail went as a page at another", () =>
    Effect.gen(function*() {
      // 210 tickets at 100 a batch: one read gives two spans. The first is fast (the size grows to 125),
      // too few remain for a span of 125, so the tail goes as a page of 125; that one is slow and the size
      // falls back to 100 — the size of the span still read ahead, which the cursor has passed. (At
      // concurrency 1 the next batch is read once the last one is recorded.)
      const delays = [10, 120]
      const world = new World(makeTickets(210), {
        rotate: (n) => Effect.sleep(Duration.millis(delays[n - 1] ?? 10))
      })
      world.table.spans = true
      const summary = yield* Effect.flatten(
        stepping(runIn(world, { batchSize: 100, concurrency: 1, targetBatchMillis: 100 }))
      )
      // Two spans in one read, the tail as a page of 125, then the end, read at 100.
      expect(world.table.pages.map((p) => p.limit)).toEqual([100, 100, 125, 100])
      expect(summary).toMatchObject({ status: "completed", rotated: 210, batches: 2 })
      expect(world.table.rotationCounts().size).toBe(210)
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
      expect(record(world)).toMatchObject({ cursor: world.table.sorted[209]!.id, done: [] })
    }))
})

describe("progress estimate without a count", () => {
  it("places an id in the hex key space", () => {
    expect(keyFraction("8", "0", "f")).toBeCloseTo(8 / 15, 5)
    expect(keyFraction("00000000000000000000000000000000", "0", "ffffffffffffffffffffffffffffffff")).toBe(0)
    expect(keyFraction("ffffffffffffffffffffffffffffffff", "0", "ffffffffffffffffffffffffffffffff")).toBe(1)
    expect(keyFraction("zz", "0", "f")).toBeUndefined()
  })

  it.effect("--no-count reports estimates from the cursor", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(200))
      yield* runIn(world, { batchSize: 20, count: false })
      const estimates = world.progress.flatMap((e) => (e._tag === "Estimate" ? [e.fraction] : []))
      expect(estimates.length).toBeGreaterThan(3)
      expect(estimates.at(-1)).toBeCloseTo(1, 5)
      expect(world.progress.some((e) => e._tag === "Total")).toBe(false)
      expect(world.table.calls.count).toBe(0)
      const summary = record(world)
      expect(summary.total).toBeNull()
    }))

  it.effect("--no-count says when the ids are not random (v4) uuids, for which the estimate is sound", () =>
    Effect.gen(function*() {
      const notices = (world: World) => world.progress.filter((e) => e._tag === "Notice")
      // makeTickets' ids are hashes: their version digit is anything.
      const mixed = new World(makeTickets(100))
      yield* runIn(mixed, { batchSize: 20, count: false })
      expect(notices(mixed)).toMatchObject([{
        text: expect.stringMatching(/^note: many ids here are not random \(v4\)/)
      }])
      const v4 = new World(makeTickets(100).map((t) => ({ ...t, id: `${t.id.slice(0, 12)}4${t.id.slice(13)}` })))
      yield* runIn(v4, { batchSize: 20, count: false })
      expect(notices(v4)).toEqual([])
      // Counted, the estimate is not used: nothing to say.
      const counted = new World(makeTickets(100))
      yield* runIn(counted, { batchSize: 20 })
      expect(notices(counted)).toEqual([])
      // Resumed under --no-count, a run counted before has its total: exact progress, no estimate either.
      const resumed = new World(makeTickets(100))
      yield* runIn(resumed, { batchSize: 20 }, Effect.sync(() => resumed.table.calls.rotate >= 2))
      yield* runIn(resumed, { batchSize: 20, count: false, mode: "resume" })
      expect(notices(resumed)).toEqual([])
      expect(resumed.progress.some((e) => e._tag === "Estimate")).toBe(false)
      expect(record(resumed)).toMatchObject({ status: "completed", total: 100 })
    }))

  it.effect("what the schema check warns of is said before the first batch, and the run goes on", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.table.schemaWarnings = ["ticket.token has no unique index"]
      yield* runIn(world, { batchSize: 10 })
      const first = world.progress.findIndex((e) => e._tag === "Notice")
      expect(world.progress[first]).toMatchObject({ text: "warning: ticket.token has no unique index" })
      expect(world.progress.slice(0, first).some((e) => e._tag === "Advanced")).toBe(false)
      expect(record(world)).toMatchObject({ status: "completed", rotated: 20 })
    }))

  it.effect("a rate below the batch size says how seldom a batch goes, and that a smaller batch helps", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      const run = yield* Effect.fork(runIn(world, { batchSize: 10, maxRowsPerSecond: 4 }))
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(run)
      expect(world.progress.filter((e) => e._tag === "Notice")).toMatchObject([{
        text: "note: --max-rows-per-second 4 is below the batch size 10: one batch every 3 s; a smaller " +
          "--batch-size commits more often"
      }])
    }))
})
