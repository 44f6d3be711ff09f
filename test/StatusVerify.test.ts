/**
 * `status` and `verify` on the in-memory world: what each says for every state a run can be left in.
 * (Against MariaDB and Redis through the real CLI: operator.test.ts and fault-tolerance.test.ts.)
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, Option, TestClock } from "effect"
import * as Checkpoint from "../src/Checkpoint.js"
import { Scope } from "../src/Domain.js"
import { plan, regenerate, type RegenerateOptions, warningLines } from "../src/Regenerate.js"
import * as Status from "../src/Status.js"
import * as Verify from "../src/Verify.js"
import { fatalError, makeTickets, testHost, transientError, World } from "./layers/index.js"

const options = (overrides: Partial<RegenerateOptions> = {}): RegenerateOptions => ({
  scope: Scope.all,
  batchSize: 10,
  concurrency: 2,
  mode: "start",
  maxRowsPerSecond: undefined,
  count: true,
  targetBatchMillis: undefined,
  statementTimeout: Duration.minutes(2),
  ...overrides
})

const keys = Checkpoint.keys({ database: "memory:test", scope: Scope.all })

/** A world with a run of 40 tickets stopped after `batches` batches (all of them when undefined). */
const afterRun = (batches?: number) =>
  Effect.gen(function*() {
    const world = new World(makeTickets(40))
    // The run starts a minute in, after the tickets were last written.
    yield* TestClock.adjust("1 minute")
    const stop = Effect.sync(() => batches !== undefined && world.table.calls.rotate >= batches)
    yield* regenerate(options(), stop).pipe(Effect.provide(world.layer()))
    return world
  })

const statusLines = (world: World, scope = Option.none<Scope>()) =>
  Effect.map(Status.status(scope).pipe(Effect.provide(world.layer())), Status.render)

/** Rewrites the stored run record's status, as a process that died (or failed) would have left it. */
const setStatus = (world: World, status: string) => {
  const entry = world.store.data.get(keys.record)!
  world.store.data.set(keys.record, { ...entry, value: entry.value.replace(/"status":"\w+"/, `"status":"${status}"`) })
}

const holder = (host: string, pid: number) =>
  JSON.stringify({
    host,
    pidNamespace: testHost.pidNamespace,
    bootId: testHost.bootId,
    pid,
    token: "abc",
    since: new Date(0).toISOString()
  })

describe("status", () => {
  it.effect("no run yet: says so, naming the scope asked for", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(5))
      expect(yield* statusLines(world)).toEqual([
        "no run is recorded for memory (checkpoints: memory)"
      ])
      const scope = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      const [line] = yield* statusLines(world, Option.some(scope))
      expect(line).toContain("with scope --live-only (without scope flags: the latest run of any scope)")
    }))

  it.effect("a completed run: its counts, rate and state", () =>
    Effect.gen(function*() {
      const lines = yield* statusLines(yield* afterRun())
      expect(lines[0]).toMatch(/^run [0-9a-f]{12} on memory \(all tickets\)$/)
      expect(lines[1]).toBe("  state:    completed")
      expect(lines[2]).toMatch(/^ {2}rotated: {2}40 \/ 40 \(100\.0%\), cursor [0-9a-f]{32}$/)
      expect(lines[3]).toMatch(/^ {2}rate: {5}\d+ rows\/s over .* of running, 4 batches, 0 retries$/)
    }))

  it.effect("a completed run of an empty scope: no percentage of nothing", () =>
    Effect.gen(function*() {
      const world = new World([])
      yield* regenerate(options(), Effect.succeed(false)).pipe(Effect.provide(world.layer()))
      const lines = yield* statusLines(world)
      expect(lines[1]).toBe("  state:    completed")
      expect(lines[2]).toBe("  rotated:  0 / 0 (no ticket in scope), cursor -")
    }))

  it.effect("more rotated than counted (the site added tickets after the count): 100 %, and why", () =>
    Effect.gen(function*() {
      const world = yield* afterRun()
      const entry = world.store.data.get(keys.record)!
      expect(entry.value).toContain(`"total":40`)
      world.store.data.set(keys.record, { ...entry, value: entry.value.replace(`"total":40`, `"total":30`) })
      const lines = yield* statusLines(world)
      expect(lines[2]).toMatch(
        /^ {2}rotated: {2}40 \/ 30 \(100\.0%; counted at the start, the scope has changed since\), cursor /
      )
    }))

  it.effect("an interrupted run points to --resume, with the run's scope flags", () =>
    Effect.gen(function*() {
      const lines = yield* statusLines(yield* afterRun(2))
      expect(lines[1]).toBe("  state:    interrupted: resume with `regenerate --resume`")
      expect(lines[2]).toMatch(/^ {2}rotated: {2}20 \/ 40 \(50\.0%\)/)
      const world = new World(makeTickets(40))
      const scope = new Scope({ liveOnly: true, emailDomain: "example.com", createdAfter: null, createdBefore: null })
      const stop = Effect.sync(() => world.table.calls.rotate >= 1)
      yield* regenerate(options({ scope }), stop).pipe(Effect.provide(world.layer()))
      // Asked without scope flags: the latest run, whose flags the command carries.
      expect((yield* statusLines(world))[1]).toBe(
        "  state:    interrupted: resume with `regenerate --resume --live-only --email-domain example.com`"
      )
    }))

  it.effect("every state a run's lock and record can be found in", () =>
    Effect.gen(function*() {
      const world = yield* afterRun(2)
      const state = Effect.map(statusLines(world), (lines) => lines[1])
      // Going on in another process, elsewhere: the holder and the lease left.
      setStatus(world, "running")
      const now = yield* TestClock.currentTimeMillis
      world.store.data.set(keys.lock, { value: holder("other-host", 4242), expiresAt: now + 24_500 })
      expect(yield* state).toBe(
        "  state:    running, lock held by pid 4242 on other-host since 1970-01-01T00:00:00.000Z (lease 25 s left)"
      )
      // Killed on this host: its pid is gone.
      world.store.data.set(keys.lock, { value: holder(testHost.hostname, 4242), expiresAt: now + 24_500 })
      expect(yield* state).toMatch(
        /^ {2}state: {4}running, but its process is gone \(pid 4242 on test-host .*\): resume with `regenerate --resume`$/
      )
      // Killed, and its lease has run out since.
      world.store.data.delete(keys.lock)
      expect(yield* state).toMatch(
        /^ {2}state: {4}running, but no process holds its lock .*: resume with `regenerate --resume`$/
      )
      // A lock entry this tool did not write.
      world.store.data.set(keys.lock, { value: "garbage", expiresAt: undefined })
      expect(yield* state).toMatch(/^ {2}state: {4}running, but its lock entry is damaged \(.*\): if no run is going/)
      const damaged = Status.toJson(yield* Status.status(Option.none()).pipe(Effect.provide(world.layer())))
      expect(damaged.lock).toEqual({
        host: null,
        pid: null,
        since: null,
        expiresInSeconds: 0,
        stale: false,
        damaged: "a run lock whose value is not a lock holder"
      })
      world.store.data.delete(keys.lock)
      setStatus(world, "failed")
      expect(yield* state).toMatch(
        /^ {2}state: {4}failed \(.*\): resume with `regenerate --resume` once the cause is fixed$/
      )
    }))
})

describe("a damaged run record", () => {
  it.effect("status names the restart of its scope where that is certain, else says to use the same flags", () =>
    Effect.gen(function*() {
      const world = new World(makeTickets(40))
      const liveOnly = new Scope({
        liveOnly: true,
        emailDomain: "example.com",
        createdAfter: null,
        createdBefore: null
      })
      yield* regenerate(options({ scope: liveOnly }), Effect.sync(() => world.table.calls.rotate >= 1)).pipe(
        Effect.provide(world.layer())
      )
      const key = Checkpoint.keys({ database: "memory:test", scope: liveOnly }).record
      const intact = JSON.parse(world.store.data.get(key)!.value) as Record<string, unknown>
      const damaged = (value: string, scope = Option.none<Scope>()) =>
        Effect.gen(function*() {
          world.store.data.set(key, { value, expiresAt: undefined })
          const error = yield* Effect.flip(Status.status(scope).pipe(Effect.provide(world.layer())))
          expect(error._tag).toBe("CheckpointCorrupt")
          return error.message
        })
      const named = "run `regenerate --restart --live-only --email-domain example.com` to abandon it"
      const unnamed = "run `regenerate --restart` (with the same scope flags) to abandon it"
      // Its scope still readable, and the one its key is for: named, even found through the latest run.
      const badCursor = yield* damaged(JSON.stringify({ ...intact, cursor: "zz" }))
      expect(badCursor).toContain("(cursor: neither a ticket id (32 lowercase hex characters) nor empty (the start))")
      expect(badCursor).toContain(named)
      // Unreadable: the scope asked for is the one its key is for.
      expect(yield* damaged("{not json")).toContain(unnamed)
      expect(yield* damaged("{not json", Option.some(liveOnly))).toContain(named)
      // A scope edited to another one (which its key is not for): not named.
      expect(yield* damaged(JSON.stringify({ ...intact, scope: { ...Scope.all } }))).toContain(unnamed)
    }))
})

describe("an unfinished run of another scope", () => {
  it.effect("is named, with its resume command, by status and verify (any scope asked), oldest first", () =>
    Effect.gen(function*() {
      // The run of all tickets stopped halfway; then one of live tickets only, restarted and completed.
      const world = yield* afterRun(2)
      const liveOnly = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      yield* TestClock.adjust("1 minute")
      yield* regenerate(options({ scope: liveOnly, mode: "restart" }), Effect.succeed(false)).pipe(
        Effect.provide(world.layer())
      )
      const also =
        /^also unfinished: run [0-9a-f]{12} \(all tickets\), interrupted, 20\/40 rotated: resume with `regenerate --resume`$/
      const lines = yield* statusLines(world)
      expect(lines[0]).toMatch(/\(--live-only\)$/)
      expect(lines[1]).toBe("  state:    completed")
      expect(lines.at(-1)).toMatch(also)
      // Asked for that scope: nothing else unfinished.
      expect((yield* statusLines(world, Option.some(Scope.all))).filter((l) => l.startsWith("also"))).toEqual([])
      const status = Status.toJson(yield* Status.status(Option.none()).pipe(Effect.provide(world.layer())))
      expect(status.otherUnfinished).toMatchObject([{ status: "interrupted", rotated: 20, total: 40 }])

      // verify answers for the run it verifies (clean), and names the other.
      const report = yield* Verify.verify(Option.none()).pipe(Effect.provide(world.layer()))
      expect(Verify.isClean(report)).toBe(true)
      const rendered = Verify.render(report)
      expect(rendered.at(-2)).toMatch(new RegExp(`^ {2}note: ${also.source.slice(1)}`))
      expect(rendered.at(-1)).toBe("  OK")
      expect(Verify.toJson(report).otherUnfinished).toMatchObject([{ resume: "regenerate --resume" }])

      // Going on in another process: said so, not to be resumed.
      const otherLock = Checkpoint.keys({ database: "memory:test", scope: Scope.all }).lock
      const now = yield* TestClock.currentTimeMillis
      world.store.data.set(otherLock, { value: holder("other-host", 4242), expiresAt: now + 20_000 })
      expect((yield* statusLines(world)).at(-1)).toMatch(
        /^also unfinished: run \w+ \(all tickets\), interrupted, 20\/40 rotated: in progress, lock held by pid 4242 on other-host/
      )
      world.store.data.delete(otherLock)
      // A store that cannot list its keys: a note, not a failed status or verify.
      world.store.faults = { list: true }
      expect((yield* statusLines(world)).at(-1)).toMatch(/^could not list the runs of other scopes: .*NOPERM/)
      const unlisted = yield* Verify.verify(Option.none()).pipe(Effect.provide(world.layer()))
      expect(Verify.render(unlisted).at(-2)).toMatch(/^ {2}note: could not list the runs of other scopes: /)
      expect(Verify.toJson(unlisted)).toMatchObject({ otherUnfinished: null, ok: true })
      world.store.faults = {}

      // Once resumed to the end, neither says more.
      yield* regenerate(options({ mode: "resume" }), Effect.succeed(false)).pipe(Effect.provide(world.layer()))
      expect((yield* statusLines(world)).filter((l) => l.startsWith("also"))).toEqual([])
    }))

  it.effect("one whose record cannot be read is not counted, but every command that looks for one says so", () =>
    Effect.gen(function*() {
      // The run of live tickets stopped halfway, its record then damaged; a run of all tickets completed.
      const world = new World(makeTickets(40))
      const liveOnly = new Scope({ liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null })
      const stopped = Effect.sync(() => world.table.calls.rotate >= 1)
      yield* regenerate(options({ scope: liveOnly }), stopped).pipe(Effect.provide(world.layer()))
      const damaged = Checkpoint.keys({ database: "memory:test", scope: liveOnly }).record
      const entry = world.store.data.get(damaged)!
      world.store.data.set(damaged, { ...entry, value: entry.value.replace(/"status":"\w+"/, `"status":"paused"`) })
      const note = new RegExp(
        `^the checkpoint at memory key ${damaged} cannot be read \\(.+\\), so whether it is an unfinished run of ` +
          "another scope is unknown: inspect it, or run `regenerate --restart --live-only` to abandon it$"
      )
      // A run of another scope starts (refusing it would leave only a hand edit), warned.
      const planned = yield* plan(options()).pipe(Effect.provide(world.layer()))
      expect(planned.action).toBe("start")
      expect(planned.unreadable.map((error) => error.otherRunNote)).toEqual([expect.stringMatching(note)])
      expect(warningLines(planned)).toEqual([expect.stringMatching(/^warning: /)])
      yield* regenerate(options(), Effect.succeed(false)).pipe(Effect.provide(world.layer()))
      const notices = world.progress.flatMap((e) => e._tag === "Notice" ? [e.text] : [])
      expect(notices.filter((text) => text.startsWith("warning: "))).toEqual([
        expect.stringMatching(new RegExp(`^warning: ${note.source.slice(1)}`))
      ])
      expect(world.table.rotations.length).toBeGreaterThan(0)
      // status and verify of the completed run name it, in text and JSON.
      expect((yield* statusLines(world)).at(-1)).toMatch(new RegExp(`^also: ${note.source.slice(1)}`))
      const status = Status.toJson(yield* Status.status(Option.none()).pipe(Effect.provide(world.layer())))
      expect(status.unreadableRuns).toEqual([{ key: `memory key ${damaged}`, detail: expect.any(String) }])
      const report = yield* Verify.verify(Option.none()).pipe(Effect.provide(world.layer()))
      expect(Verify.render(report).at(-2)).toMatch(new RegExp(`^ {2}note: also: ${note.source.slice(1)}`))
      expect(Verify.toJson(report).unreadableRuns).toHaveLength(1)
      // Damaged past naming its scope: the restart asks for that run's flags.
      world.store.data.set(damaged, { value: "{not json", expiresAt: undefined })
      expect((yield* statusLines(world)).at(-1)).toMatch(
        /: inspect it, or run `regenerate --restart` with that run's scope flags to abandon it$/
      )
      // Its own scope's commands fail on it, as ever.
      const own = yield* Effect.flip(Status.status(Option.some(liveOnly)).pipe(Effect.provide(world.layer())))
      expect(own._tag).toBe("CheckpointCorrupt")
    }))
})

describe("verify", () => {
  const verifyIn = (world: World) => Verify.verify(Option.none()).pipe(Effect.provide(world.layer()))

  it.effect("after a complete run: every ticket rotated, no duplicate, clean", () =>
    Effect.gen(function*() {
      const report = yield* verifyIn(yield* afterRun())
      expect(report).toMatchObject({ inScope: 40, notRotated: 0, duplicateTokens: 0 })
      expect(Verify.isClean(report)).toBe(true)
      expect(Verify.render(report).at(-1)).toBe("  OK")
    }))

  it.effect("a ticket whose old token and time were put back, and two sharing a token: named, not clean", () =>
    Effect.gen(function*() {
      const world = yield* afterRun()
      const [first, second, third] = world.table.sorted
      first!.token = "old-0"
      first!.updatedAt = 0
      third!.token = second!.token
      const report = yield* verifyIn(world)
      expect(report).toMatchObject({
        inScope: 40,
        notRotated: 1,
        notRotatedSample: [first!.id],
        duplicateTokens: 1,
        duplicateSample: [second!.id, third!.id]
      })
      expect(Verify.isClean(report)).toBe(false)
      const lines = Verify.render(report)
      expect(lines).toContain(`  not rotated, e.g.: ${first!.id}`)
      expect(lines.at(-1)).toBe("  FAILED")
      // Never a token in what it prints.
      expect(lines.join("\n")).not.toContain(second!.token)
    }))

  it.effect("an unfinished run is checked as far as it is, and says it is not completed", () =>
    Effect.gen(function*() {
      const world = yield* afterRun(2)
      const report = yield* verifyIn(world)
      expect(report.notRotated).toBe(20)
      expect(Verify.isClean(report)).toBe(false)
      expect(Verify.render(report)).toContain(
        `  note: run ${report.run.runId} is interrupted, not completed: the tickets its checkpoint does not cover ` +
          "count as not rotated"
      )
      // The site saves tickets the run has not reached (a rename sets updated_at): their tokens are still the
      // leaked ones, and the checkpoint says so.
      const now = yield* Clock.currentTimeMillis
      const untouched = world.table.sorted.filter((ticket) => ticket.updatedAt < report.run.startedAt.getTime())
      expect(untouched).toHaveLength(20)
      for (const ticket of untouched) ticket.updatedAt = now
      const saved = yield* verifyIn(world)
      expect(saved).toMatchObject({
        inScope: 40,
        notRotated: 20,
        notRotatedSample: untouched.slice(0, 5).map((t) => t.id)
      })
      expect(Verify.isClean(saved)).toBe(false)
      // The same when part of what committed is a range beyond the low-water mark (a batch that finished
      // before the one below it).
      const ids = world.table.sorted.map((ticket) => ticket.id)
      const entry = world.store.data.get(keys.record)!
      const record = JSON.parse(entry.value)
      expect(record).toMatchObject({ cursor: ids[19], done: [] })
      world.store.data.set(keys.record, {
        ...entry,
        value: JSON.stringify({ ...record, cursor: ids[9], done: [[ids[10], ids[19]]] })
      })
      expect(yield* verifyIn(world)).toMatchObject({ notRotated: 20, notRotatedSample: ids.slice(20, 25) })
      world.store.data.set(keys.record, entry)
      // Resumed to the end, the run covers them all.
      yield* regenerate(options({ mode: "resume" }), Effect.succeed(false)).pipe(Effect.provide(world.layer()))
      expect(yield* verifyIn(world)).toMatchObject({ inScope: 40, notRotated: 0 })
    }))

  it.effect("a read that fails transiently is tried again; one that fails for good is the error", () =>
    Effect.gen(function*() {
      const world = yield* afterRun()
      // 40 tickets in pages of 10 000: one page, then the look for duplicates.
      world.table.faults = { audit: (n) => n === 1 || n === 3 ? Effect.fail(transientError("reading")) : undefined }
      const retrying = yield* Effect.fork(verifyIn(world))
      yield* TestClock.adjust("1 minute")
      const report = yield* Fiber.join(retrying)
      expect(report).toMatchObject({ inScope: 40, notRotated: 0, duplicateTokens: 0 })
      expect(world.table.calls.audit).toBe(4)

      world.table.faults = { audit: (n) => n === 5 ? Effect.fail(fatalError("reading")) : undefined }
      const error = yield* Effect.flip(verifyIn(world))
      expect(error).toMatchObject({ _tag: "DatabaseError", transient: false })
      expect(world.table.calls.audit).toBe(5)
    }))

  it.effect("no run to check: NoRun", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(verifyIn(new World(makeTickets(5))))
      expect(error._tag).toBe("NoRun")
    }))
})
