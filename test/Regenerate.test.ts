import { describe, expect, it } from "@effect/vitest"
import {
  Cause,
  Deferred,
  type Duration,
  Effect,
  Exit,
  FastCheck as FC,
  Fiber,
  Option,
  Ref,
  Schema,
  TestClock
} from "effect"
import * as Checkpoint from "../src/Checkpoint.js"
import { LockHolder, RunRecord, Scope } from "../src/Domain.js"
import {
  adaptBatchSize,
  graceful,
  keyFraction,
  nextBatchSize,
  regenerate,
  type RegenerateOptions
} from "../src/Regenerate.js"
import * as Shutdown from "../src/Shutdown.js"
import {
  checkInvariants,
  covers,
  duplicateToken,
  fatalError,
  type Fault,
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
  ...overrides
})

const runIn = (world: World, overrides: Partial<RegenerateOptions> = {}, stop = Effect.succeed(false)) =>
  regenerate(options(overrides), stop).pipe(Effect.provide(world.layer()))

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

describe("regenerate", () => {
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

  it.effect("an empty scope completes at once", () =>
    Effect.gen(function*() {
      const world = new World([])
      const summary = yield* runIn(world)
      expect(summary).toMatchObject({ status: "completed", rotated: 0, batches: 0, total: 0 })
    }))

  it.effect.prop(
    "the checkpoint never passes an uncommitted batch, and a crash at any instant redoes at most concurrency × batch size",
    {
      rows: FC.integer({ min: 0, max: 250 }),
      batchSize: FC.integer({ min: 1, max: 40 }),
      concurrency: FC.integer({ min: 1, max: 8 }),
      delays: FC.array(FC.integer({ min: 0, max: 30 }), { minLength: 1, maxLength: 20 }),
      crashAfter: FC.integer({ min: 0, max: 40 })
    },
    ({ batchSize, concurrency, crashAfter, delays, rows }) =>
      Effect.gen(function*() {
        const crashed = yield* Deferred.make<void>()
        const world = new World(makeTickets(rows, rows), {
          rotate: (n) =>
            Effect.zipRight(
              n > crashAfter ? Deferred.succeed(crashed, undefined) : Effect.void,
              yields(delays[n % delays.length]!)
            )
        })
        const scopeIds = world.table.sorted.map((t) => t.id)
        // First run: "kill -9" (an abrupt interruption, no graceful stop) once `crashAfter` batches went in.
        const fiber = yield* Effect.fork(runIn(world, { batchSize, concurrency }))
        yield* Effect.raceFirst(Deferred.await(crashed), Fiber.await(fiber))
        yield* Fiber.interrupt(fiber)
        const maxRedo = concurrency * batchSize
        expect(checkInvariants(world.log, scopeIds, maxRedo)).toBeUndefined()
        const savedAtCrash = lastSaved(world) ?? { cursor: "", done: [] }
        const committedAtCrash = new Set(world.table.rotations.flat())
        // Resume to the end.
        const completed = world.store.records().length > 0 && record(world).status === "completed"
        const summary = yield* runIn(world, { batchSize, concurrency, mode: completed ? "start" : "resume" })
        expect(summary.status).toBe("completed")
        const counts = world.table.rotationCounts()
        // Nothing missed, nothing outside the scope.
        expect(scopeIds.every((id) => (counts.get(id) ?? 0) >= 1)).toBe(true)
        expect(counts.size).toBe(scopeIds.length)
        if (!completed) {
          // Redone = committed before the crash but not covered by its checkpoint.
          const redone = [...committedAtCrash].filter((id) => !covers(savedAtCrash)(id))
          expect(redone.length).toBeLessThanOrEqual(maxRedo)
          expect(scopeIds.filter((id) => (counts.get(id) ?? 0) > 1).sort()).toEqual(redone.sort())
        }
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
      delays: FC.array(FC.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 10 })
    },
    ({ batchSize, concurrency, delays, rows, stopAfter }) =>
      Effect.gen(function*() {
        const world = new World(makeTickets(rows, rows + 7), {
          rotate: (n) => yields(delays[n % delays.length]!)
        })
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
          expect(second.resumed).toBe(first.cursor !== "")
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
        graceful((stop) => runIn(world, { batchSize: 10, concurrency: 2 }, stop), (s) => s.status === "interrupted")
          .pipe(
            Effect.provide(Shutdown.layer(shutdown))
          )
      )
      yield* Deferred.await(inFlight)
      expect(shutdown.request()).toBe(true)
      yield* Effect.yieldNow()
      yield* Deferred.succeed(release, undefined)
      return { world, exit: yield* Fiber.await(fiber) }
    })

  it.effect("interrupting a run through `graceful` lets the batches in flight commit and records where it stopped", () =>
    Effect.gen(function*() {
      const { exit, world } = yield* stopDuringBatch3(Effect.void)
      expect(Exit.isInterrupted(exit)).toBe(true)
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
        graceful((stop) => runIn(world, { batchSize: 10, concurrency: 2 }, stop), (s) => s.status === "interrupted")
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
  it.effect("transient failures are retried on the named schedule and counted", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const world = new World(makeTickets(30), {
        rotate: (n) =>
          Effect.gen(function*() {
            attempts.push(yield* TestClock.currentTimeMillis)
            if (n >= 2 && n <= 4) return yield* transientError()
          })
      })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "10 millis")
      const summary = yield* exit
      expect(summary.status).toBe("completed")
      expect(summary.retries).toBe(3)
      expect(record(world).retries).toBe(3)
      // Attempts 2..5 are the same batch: exponential from 100 ms, doubled, jittered by ±20%.
      const gaps = [attempts[2]! - attempts[1]!, attempts[3]! - attempts[2]!, attempts[4]! - attempts[3]!]
      expect(gaps[0]).toBeGreaterThanOrEqual(80)
      expect(gaps[0]).toBeLessThanOrEqual(130)
      expect(gaps[1]).toBeGreaterThanOrEqual(160)
      expect(gaps[1]).toBeLessThanOrEqual(250)
      expect(gaps[2]).toBeGreaterThanOrEqual(320)
      expect(gaps[2]).toBeLessThanOrEqual(490)
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
      expect(saved.status).toBe("failed")
      expect(saved.cursor).toBe(world.table.sorted[9]!.id)
      expect(saved.rotated).toBe(10)
    }))

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
      expect(message).toMatch(/crashed.*Fix the cause, then rerun with --resume\.$/)
      expect(saved.status).toBe("failed")
      expect(saved.error).toContain("crashed")
      expect(saved.cursor).toBe(world.table.sorted[19]!.id)
      // A resume picks up from there and finishes.
      world.table.faults = {}
      const summary = yield* runIn(world, { batchSize: 10, mode: "resume" })
      expect(summary.rotated).toBe(30)
      expect([...world.table.rotationCounts().values()].every((n) => n === 1)).toBe(true)
    }))

  it.effect("a failed page query is an error, never the end of the table", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50), { page: (n) => (n === 3 ? fatalError("page") : undefined) })
      const exit = yield* Effect.exit(runIn(world, { batchSize: 10 }))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(record(world).status).toBe("failed")
      expect(world.table.rotationCounts().size).toBe(20)
    }))

  it.effect("a duplicate token gets fresh tokens and the batch is retried", () =>
    Effect.gen(function*() {
      const tokensSeen: Array<ReadonlyArray<string>> = []
      const world = new World(makeTickets(20), { rotate: (n) => (n === 2 ? duplicateToken() : undefined) })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "50 millis")
      const summary = yield* exit
      expect(summary.retries).toBe(1)
      expect(summary.rotated).toBe(20)
      for (const t of world.table.sorted) tokensSeen.push([t.token])
      expect(new Set(tokensSeen.flat()).size).toBe(20)
      // The failed attempt consumed tokens 10-19; the retry used new ones.
      expect(world.table.sorted.some((t) => t.token === "tok-00000000000a")).toBe(false)
    }))

  it.effect("a checkpoint that cannot be written stops the run", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      world.store.faults = { save: (n) => n >= 3 }
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "1 second")
      expect(Exit.isFailure(exit) && String(exit.cause)).toContain("CheckpointUnavailable")
      // It stopped instead of going on unrecorded: at most the batch whose checkpoint failed went in.
      expect(world.table.rotations.length).toBeLessThanOrEqual(2)
      // Saves: 2 good, the failing one and its 10 retries, then one last try to mark the run failed.
      expect(world.store.saves).toBe(2 + 1 + 10 + 1)
    }))

  it.effect("checkpoint hiccups are retried and the run completes", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(50))
      world.store.faults = { save: (n) => n >= 3 && n <= 5 }
      const summary = yield* Effect.flatten(withClock(runIn(world, { batchSize: 10 }), "50 millis"))
      expect(summary.status).toBe("completed")
      expect(summary.retries).toBe(3)
      expect(record(world).status).toBe("completed")
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

  it.effect("--restart abandons the unfinished run and starts a new one", () =>
    Effect.gen(function*() {
      const world = yield* interrupted()
      const before = record(world).runId
      const summary = yield* runIn(world, { mode: "restart" })
      expect(summary.runId).not.toBe(before)
      expect(summary.rotated).toBe(60)
      expect(summary.resumed).toBe(false)
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
      const summary = yield* runIn(world, { mode: "restart" })
      expect(summary.rotated).toBe(20)
    }))

  it.effect("a checkpoint of another database or scope is refused; --restart replaces it", () =>
    Effect.gen(function*() {
      const other = new World(makeTickets(20))
      yield* runIn(other, {}, Effect.succeed(true))
      const world = new World(makeTickets(20))
      const key = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).record
      const foreign = JSON.parse(other.store.records()[0]!)
      world.store.data.set(key, {
        value: JSON.stringify({ ...foreign, fingerprint: "0123456789abcdef" }),
        expiresAt: undefined
      })
      const error = yield* Effect.flip(runIn(world))
      expect(error._tag).toBe("ForeignCheckpoint")
      expect(world.table.rotations.length).toBe(0)
      expect((yield* runIn(world, { mode: "restart" })).rotated).toBe(20)
    }))
})

describe("locks", () => {
  const holderValue = (host: string, pid: number) =>
    JSON.stringify({ host, pid, token: "abc", since: new Date(0).toISOString() })
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

  it.effect("a lock left with this process's own pid (a restarted container's pid 1) is stale", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(20))
      world.store.data.set(lockKey, { value: holderValue(testHost.hostname, testHost.pid), expiresAt: 30_000 })
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
      const world = new World(makeTickets(40), {
        rotate: () => Effect.sleep("20 seconds")
      })
      const exit = yield* withClock(runIn(world, { batchSize: 10 }), "1 second")
      expect(Exit.isSuccess(exit)).toBe(true)
      // 80 s of batches with a 30 s lease: only renewal kept the lock (saves are fenced by it).
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
})
