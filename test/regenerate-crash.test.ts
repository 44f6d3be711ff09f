/**
 * The engine's acceptance test: `regenerate` killed with SIGKILL at random moments and resumed, again and
 * again, must end with every ticket holding a new unique token and every other column untouched; SIGINT
 * must stop it gracefully with a resume hint. Run on MariaDB with a Redis checkpoint and on the embedded
 * SQLite file with the checkpoint table.
 *
 * After every kill the checkpoint itself is checked against the table: every ticket it covers (up to the
 * recorded cursor, or in a committed range recorded beyond it) has a new token, and the new tokens it does
 * not cover (what a resume redoes) are at most concurrency × batch size.
 */
import { Redis } from "ioredis"
import type * as mysql from "mysql2/promise"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type CliOptions, type CliResult, runCli, spawnCli } from "./support/cli.js"
import { adminConnection, createDatabase, createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"
import {
  describeResult,
  expectAllRotated,
  expectExit,
  parseJsonSummary,
  seedFixture,
  snapshotOn,
  type Ticket,
  ticketColumns,
  ticketsOn,
  toTicket,
  until
} from "./support/tickets.js"

import { Sqlite, type SqliteDatabase } from "./support/sqlite.js"

// Helpers

/** What the tests read from a run record (the checkpoint). */
interface RunView {
  readonly runId: string
  readonly cursor: string
  readonly done: ReadonlyArray<readonly [string, string]>
  readonly rotated: number
  readonly status: string
}

const toRunView = (text: string): RunView => {
  const r = JSON.parse(text) as Record<string, unknown>
  return {
    runId: String(r.runId),
    cursor: String(r.cursor),
    done: (r.done as Array<[string, string]>).map(([a, b]) => [String(a), String(b)] as const),
    rotated: Number(r.rotated),
    status: String(r.status)
  }
}

const randomBetween = (min: number, max: number) => min + Math.floor(Math.random() * (max - min))

/**
 * Starts the CLI, lets `waitBeforeKill` decide the moment (it gets a predicate telling whether the process
 * already exited by itself, and its pid), then kills it with SIGKILL unless it is gone.
 */
const runAndKill = async (
  args: ReadonlyArray<string>,
  options: CliOptions,
  waitBeforeKill: (exited: () => boolean, pid: number) => Promise<void>
): Promise<CliResult> => {
  const started = spawnCli(args, options)
  const exited = () => started.child.exitCode !== null || started.child.signalCode !== null
  await waitBeforeKill(exited, started.child.pid!)
  if (!exited()) started.child.kill("SIGKILL")
  return started.result
}

/** Waits `ms`, or less if the process exits. */
const waitMillis = (ms: number) => async (exited: () => boolean) => {
  const until = Date.now() + ms
  while (Date.now() < until && !exited()) await sleep(Math.min(20, until - Date.now()))
}

/** Waits until the checkpoint shows more than `baseline` rotated tickets (this process committed work). */
const waitProgress = (read: () => Promise<RunView | undefined>, baseline: number, timeoutMs = 60_000) =>
async (
  exited: () => boolean
) => {
  const until = Date.now() + timeoutMs
  while (Date.now() < until && !exited()) {
    const run = await read()
    if (run !== undefined && run.rotated > baseline) return
    await sleep(15)
  }
}

/** How a test picks the moment of a kill: it may wait on the process (exited, pid). */
type Wait = (exited: () => boolean, pid: number) => Promise<void>

const sequence = (...waits: ReadonlyArray<Wait>): Wait => async (exited, pid) => {
  for (const wait of waits) await wait(exited, pid)
}

/**
 * The checkpoint against the table: no ticket it covers (up to the cursor, or in a recorded committed range
 * beyond it) still has its old token, and the new tokens it does not cover are at most `maxRedo`.
 */
const expectCheckpointConsistent = (
  label: string,
  tickets: ReadonlyArray<{ readonly id: string; readonly token: string }>,
  before: ReadonlyMap<string, Ticket>,
  checkpoint: Pick<RunView, "cursor" | "done">,
  maxRedo: number
) => {
  const covered = (id: string) =>
    id <= checkpoint.cursor || checkpoint.done.some(([first, last]) => id >= first && id <= last)
  let unchangedCovered = 0
  let changedAhead = 0
  for (const t of tickets) {
    const changed = before.get(t.id)?.token !== t.token
    if (covered(t.id)) {
      if (!changed) unchangedCovered++
    } else if (changed) {
      changedAhead++
    }
  }
  expect(
    unchangedCovered,
    `${label}: tickets covered by the checkpoint (cursor ${checkpoint.cursor}) with their old token`
  )
    .toBe(0)
  expect(
    changedAhead,
    `${label}: ${changedAhead} new tokens not covered by the checkpoint, more than the ${maxRedo} that can be in flight`
  ).toBeLessThanOrEqual(maxRedo)
  return { changedAhead }
}

// MariaDB + Redis

describe.skipIf(!servicesAvailable)("regenerate on MariaDB with a Redis checkpoint", () => {
  const ticketCount = 200_000
  const batchSize = 1000
  const concurrency = 4
  let db: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection
  let redis: Redis
  const prefixes: Array<ReturnType<typeof createRedisPrefix>> = []

  const freshPrefix = () => {
    const prefix = createRedisPrefix("tt-crash")
    prefixes.push(prefix)
    return prefix
  }
  const envFor = (prefix: string) => ({ DATABASE_URL: db.url, REDIS_URL: redisUrl, REDIS_PREFIX: prefix })

  const readRun = async (prefix: string): Promise<RunView | undefined> => {
    const keys = await redis.keys(`${prefix}:run:*`)
    if (keys.length > 1) throw new Error(`more than one run record under ${prefix}: ${keys.join(", ")}`)
    if (keys.length === 0) return undefined
    const text = await redis.get(keys[0]!)
    return text === null ? undefined : toRunView(text)
  }

  /** A run of its own: a fresh key prefix, the CLI's environment for it, and a read of its run record. */
  const freshRun = () => {
    const prefix = freshPrefix()
    return { prefix, env: envFor(prefix.name), read: () => readRun(prefix.name) }
  }

  /** The pid in the run lock of this prefix (the lock value is the holder as JSON), if any. */
  const lockHolderPid = async (prefix: string): Promise<number | undefined> => {
    const keys = await redis.keys(`${prefix}:lock:*`)
    const value = keys.length === 0 ? null : await redis.get(keys[0]!)
    if (value === null) return undefined
    try {
      return Number((JSON.parse(value) as Record<string, unknown>).pid)
    } catch {
      return undefined
    }
  }

  const readTickets = () => ticketsOn(admin)
  const readTokens = async () => {
    const [rows] = await admin.query("SELECT `id`, `token` FROM `ticket` ORDER BY `id`")
    return (rows as Array<Record<string, unknown>>).map((r) => ({ id: String(r.id), token: String(r.token) }))
  }
  const snapshot = () => snapshotOn(admin)
  const expectTokensUnique = async () => {
    const [rows] = await admin.query("SELECT COUNT(*) AS n, COUNT(DISTINCT `token`) AS d FROM `ticket`")
    const [row] = rows as Array<Record<string, unknown>>
    expect(Number(row!.d)).toBe(Number(row!.n))
    expect(Number(row!.n)).toBe(ticketCount)
  }

  beforeAll(async () => {
    db = await createDatabase("tt_crash")
    redis = new Redis(redisUrl, { maxRetriesPerRequest: 2 })
    await seedFixture({ env: { DATABASE_URL: db.url } }, { users: 100, orders: 2000, tickets: ticketCount })
    admin = await adminConnection(db.name)
  }, 180_000)

  afterAll(async () => {
    await admin?.end()
    await db?.drop()
    for (const prefix of prefixes) await prefix.drop()
    redis?.disconnect()
  })

  it("survives kill -9 at random moments and resumes to a complete, exact rotation", { timeout: 300_000 }, async () => {
    const { prefix, env, read } = freshRun()
    // Throttled so that the table outlasts every kill below: unthrottled, 200,000 tickets take about 3 s here.
    const base = [
      "regenerate",
      "--batch-size",
      String(batchSize),
      "--concurrency",
      String(concurrency),
      "--max-rows-per-second",
      "5000"
    ]
    const window = batchSize * concurrency
    const before = await snapshot()

    // 1. A plain run, killed after ~2 s (and not before its first checkpoint, so that it really is a run).
    const first = await runAndKill(base, { env }, sequence(waitMillis(2000), waitProgress(read, 0)))
    expect(first.signal, `the first run must still be running after 2 s: ${describeResult(first)}`).toBe("SIGKILL")
    const afterFirst = await read()
    expect(afterFirst?.status).toBe("running")
    expectCheckpointConsistent("first kill", await readTokens(), before, afterFirst!, window)

    // 2. A plain regenerate now is refused: there is an unfinished run (its dead owner's lock is stale).
    const refused = await expectExit(runCli(base, { env }), 2)
    expect(refused.stderr).toMatch(/^error: /m)
    expect(refused.stderr).toContain("--resume")
    expect(refused.stderr).toContain("--restart")
    expect(await read(), "a refused run leaves the checkpoint alone").toEqual(afterFirst)

    // 3. Resume and kill again, eight times, at moments of three kinds: a random moment after the start
    // (with the CLI's startup time this often lands while it is still starting or taking over the stale
    // lock), a random moment after it took the lock, and a random moment after it committed a batch.
    let next = [...base, "--resume"]
    let kills = 0
    let advanced = 0
    let tookLock = 0
    let noRunAnswers = 0
    let runId: string | undefined = afterFirst!.runId
    const log: Array<string> = []
    const kinds = ["start", "progress", "lock", "progress", "start", "lock", "progress", "progress"] as const
    for (const [cycle, kind] of kinds.entries()) {
      const start = await read()
      const baseline = start?.rotated ?? 0
      let lockSeen = false
      const waitLock: Wait = async (exited, pid) => {
        while (!exited() && !lockSeen) {
          lockSeen = (await lockHolderPid(prefix.name)) === pid
          // Recorded progress also means it holds the lock (and keeps this wait bounded).
          if (!lockSeen && ((await read())?.rotated ?? 0) > baseline) return
          if (!lockSeen) await sleep(10)
        }
      }
      const moment = kind === "start"
        ? waitMillis(randomBetween(300, 2500))
        : kind === "lock"
        ? sequence(waitLock, waitMillis(randomBetween(0, 500)))
        : sequence(waitProgress(read, baseline), waitMillis(randomBetween(0, 400)))
      const r = await runAndKill(next, { env }, moment)
      const end = await read()
      log.push(`cycle ${cycle} (${kind}): ${r.signal ?? `exit ${r.code}`}, rotated ${baseline} -> ${end?.rotated}`)
      if (r.signal === "SIGKILL") {
        kills++
        if ((end?.rotated ?? 0) > baseline) advanced++
        // Progress is only ever recorded through the held lock.
        if (lockSeen || (end?.rotated ?? 0) > baseline) tookLock++
        next = [...base, "--resume"]
      } else if (r.code === 2 && /no run to resume/.test(r.stderr)) {
        // The kill before landed ahead of the tool's first checkpoint: there is legitimately nothing to
        // resume, so the next cycle starts a plain run instead.
        noRunAnswers++
        next = base
        runId = undefined
        continue
      } else {
        expect.fail(`cycle ${cycle}: unexpected ${describeResult(r)}\n${log.join("\n")}`)
      }
      expect(end?.status, log.join("\n")).toBe("running")
      runId ??= end!.runId
      expect(end!.runId, "every resumption continues the same run").toBe(runId)
      expect(end!.cursor >= (start?.cursor ?? ""), "the cursor never moves back").toBe(true)
      expectCheckpointConsistent(`cycle ${cycle}`, await readTokens(), before, end!, window)
    }
    expect(kills, log.join("\n")).toBeGreaterThanOrEqual(6)
    expect(noRunAnswers, log.join("\n")).toBeLessThanOrEqual(1)
    expect(tookLock, `most cycles must really resume (take the lock over)\n${log.join("\n")}`)
      .toBeGreaterThanOrEqual(6)
    expect(advanced, `cycles that committed work\n${log.join("\n")}`).toBeGreaterThanOrEqual(4)
    const beforeFinal = await read()
    expect(beforeFinal!.rotated).toBeLessThan(ticketCount)

    // 4. Resume to the end.
    const final = await expectExit(runCli([...next, "--json"], { env }), 0)
    const summary = parseJsonSummary(final)
    expect(summary).toMatchObject({ status: "completed", resumed: true, runId })
    // Each checkpointed batch is a disjoint id range, so the run's total counts every ticket exactly once.
    expect(summary.rotatedTotal).toBe(ticketCount)
    expect(summary.rotated).toBe(ticketCount - beforeFinal!.rotated)
    expect((await read())?.status).toBe("completed")

    expectAllRotated(before, await readTickets())
    await expectTokensUnique()

    // A completed run has nothing to resume.
    const again = await expectExit(runCli([...base, "--resume"], { env }), 0)
    expect(`${again.stdout}${again.stderr}`).toContain("nothing to resume")
  })

  it(
    "adaptive batches (--target-batch-ms): kill -9 redoes at most concurrency × the largest batch, and the resume completes exactly",
    { timeout: 180_000 },
    async () => {
      const { env, read } = freshRun()
      // From 100 tickets a batch, sized to take about 100 ms each: batches grow far past 100 here. Throttled
      // so that the table outlasts the kills.
      const base = [
        "regenerate",
        "--batch-size",
        "100",
        "--concurrency",
        String(concurrency),
        "--target-batch-ms",
        "100",
        "--max-rows-per-second",
        "20000"
      ]
      const before = await snapshot()
      let next = base
      for (const cycle of [1, 2, 3]) {
        const baseline = (await read())?.rotated ?? 0
        const r = await runAndKill(
          next,
          { env },
          sequence(waitProgress(read, baseline), waitMillis(randomBetween(200, 1500)))
        )
        expect(r.signal, `cycle ${cycle}: ${describeResult(r)}`).toBe("SIGKILL")
        const end = (await read())!
        expect(end.rotated, `cycle ${cycle}`).toBeGreaterThan(baseline)
        expectCheckpointConsistent(`adaptive, cycle ${cycle}`, await readTokens(), before, end, concurrency * 10_000)
        next = [...base, "--resume"]
      }
      const beforeFinal = (await read())!
      expect(beforeFinal.rotated).toBeLessThan(ticketCount)
      const summary = parseJsonSummary(await expectExit(runCli([...next, "--json"], { env }), 0))
      expect(summary).toMatchObject({ status: "completed", rotatedTotal: ticketCount })
      expect(summary.rotated).toBe(ticketCount - beforeFinal.rotated)
      // The sizes did follow the target: far fewer batches than at the starting size.
      expect(Number(summary.batches)).toBeLessThan(Number(summary.rotated) / 200)
      expectAllRotated(before, await readTickets())
      await expectTokensUnique()
    }
  )

  it(
    "kill -9 while a slow batch holds the low-water mark back: the ranges committed beyond it are recorded and skipped on resume",
    {
      timeout: 180_000
    },
    async () => {
      const { env, read } = freshRun()
      const before = await snapshot()
      const ids = [...before.keys()].sort()
      // A site transaction holds one row of the third batch: that batch waits while later ones commit.
      const site = await adminConnection(db.name)
      try {
        await site.query("BEGIN")
        await site.query("SELECT `id` FROM `ticket` WHERE `id` = ? FOR UPDATE", [ids[2 * batchSize + 10]])
        const args = ["regenerate", "--batch-size", String(batchSize), "--concurrency", String(concurrency)]
        const killed = await runAndKill(args, { env }, async (exited) => {
          const until = Date.now() + 30_000
          while (Date.now() < until && !exited() && ((await read())?.done.length ?? 0) < concurrency - 1) {
            await sleep(15)
          }
        })
        expect(killed.signal, describeResult(killed)).toBe("SIGKILL")
        const crashed = (await read())!
        expect(crashed.done.length, "committed ranges beyond the low-water mark are recorded").toBeGreaterThan(0)
        expect(crashed.cursor < ids[2 * batchSize]!, "the low-water mark stays before the held batch").toBe(true)
        expectCheckpointConsistent("kill -9 out of order", await readTokens(), before, crashed, batchSize * concurrency)
        await site.query("ROLLBACK")

        const resumed = await expectExit(runCli([...args, "--resume", "--json"], { env }), 0)
        const summary = parseJsonSummary(resumed)
        expect(summary.status).toBe("completed")
        // The recorded ranges were skipped, not redone: this process rotated only what the checkpoint did not cover.
        const covered = ids.filter((id) =>
          id <= crashed.cursor || crashed.done.some(([first, last]) => id >= first && id <= last)
        ).length
        expect(summary.rotated).toBe(ticketCount - covered)
        expect(summary.rotatedTotal).toBe(ticketCount)
        expectAllRotated(before, await readTickets())
        await expectTokensUnique()
      } finally {
        await site.end()
      }
    }
  )

  it.each([["SIGINT", 130], ["SIGTERM", 143]] as const)(
    "stops gracefully on %s (exit %i, resume hint) and --resume completes",
    { timeout: 120_000 },
    async (signal, exitCode) => {
      const { env, read } = freshRun()
      const before = await snapshot()

      const started = spawnCli(["regenerate", "--batch-size", "500"], { env })
      const exited = () => started.child.exitCode !== null || started.child.signalCode !== null
      // ~1.5 s, and at least one committed batch, so that the signal reaches a running regeneration.
      await sequence(waitMillis(1500), waitProgress(read, 0))(exited, started.child.pid!)
      expect(exited(), "the run must still be going when the signal is sent").toBe(false)
      started.child.kill(signal)
      const r = await started.result

      expect(r.code, describeResult(r)).toBe(exitCode)
      // Soft: when the stop is not graceful, every symptom below is worth seeing, and the resume must still work.
      expect.soft(`${r.stdout}${r.stderr}`).toContain("--resume")
      expect.soft(r.stdout, "stdout names the command that resumes").toMatch(/^resume with: .*regenerate.*--resume$/m)
      expect.soft(r.stdout).toMatch(/^stopped: /m)
      const stopped = await read()
      expect.soft(stopped?.status, "the checkpoint records the interruption").toBe("interrupted")
      // A graceful stop lets the batches in flight commit and records them: no new token beyond the cursor.
      expect.soft(
        expectCheckpointConsistent(`after ${signal}`, await readTokens(), before, stopped!, 0).changedAhead
      ).toBe(0)

      const resumed = await expectExit(runCli(["regenerate", "--batch-size", "500", "--resume"], { env }), 0)
      expect(resumed.stdout).toMatch(/^done: rotated \d+ tickets/m)
      expect((await read())?.status).toBe("completed")
      expectAllRotated(before, await readTickets())
      await expectTokensUnique()
    }
  )

  it("--json prints exactly one JSON object on stdout", { timeout: 120_000 }, async () => {
    const prefix = freshPrefix()
    const r = await expectExit(
      runCli(["regenerate", "--json", "--batch-size", "2000"], { env: envFor(prefix.name) }),
      0
    )
    const summary = parseJsonSummary(r)
    expect(typeof summary.rotated).toBe("number")
    expect(summary.rotated).toBe(ticketCount)
    expect(summary.status).toBe("completed")
    expect(summary.rotatedTotal).toBe(ticketCount)
    expect(summary.resumed).toBe(false)
    // Human output goes to stderr in JSON mode.
    expect(r.stderr).toContain("done: rotated")
    await expectTokensUnique()
  })
})

// Embedded SQLite, checkpoint table

describe("regenerate on the embedded SQLite database with the checkpoint table", () => {
  const ticketCount = 60_000
  const batchSize = 1000
  const concurrency = 4
  let cwd: string
  let sqlite: SqliteDatabase | undefined
  const env = { DATABASE_URL: undefined, REDIS_URL: undefined, REDIS_PREFIX: undefined }

  const readRun = async (): Promise<RunView | undefined> => {
    const rows = sqlite!.prepare("SELECT `value` FROM `ticket_tokens_state` WHERE `key` LIKE 'run:%'").all()
    if (rows.length > 1) throw new Error(`more than one run record: ${rows.length}`)
    return rows.length === 0 ? undefined : toRunView(String(rows[0]!.value))
  }
  const readTickets = () =>
    sqlite!.prepare(`SELECT ${ticketColumns} FROM \`ticket\` ORDER BY \`id\``).all().map(toTicket)
  const readTokens = () =>
    sqlite!.prepare("SELECT `id`, `token` FROM `ticket` ORDER BY `id`").all().map((r) => ({
      id: String(r.id),
      token: String(r.token)
    }))

  beforeAll(async () => {
    cwd = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-crash-"))
    await seedFixture({ cwd, env }, { users: 50, orders: 500, tickets: ticketCount })
    // WAL mode (set by the tool): this reader never blocks its writes.
    sqlite = new Sqlite(Path.join(cwd, "data", "tickets.sqlite"), {
      readonly: true,
      fileMustExist: true,
      timeout: 5000
    })
  }, 120_000)

  afterAll(() => {
    sqlite?.close()
    if (cwd !== undefined) Fs.rmSync(cwd, { recursive: true, force: true })
  })

  it("survives kill -9 five times and resumes to a complete, exact rotation", { timeout: 180_000 }, async () => {
    const base = ["regenerate", "--batch-size", String(batchSize), "--concurrency", String(concurrency)]
    const window = batchSize * concurrency
    const before = new Map(readTickets().map((t) => [t.id, t]))
    expect(before.size).toBe(ticketCount)
    const opts = { cwd, env }

    // A whole run takes ~1.5 s here, so every kill waits for this process's first commit and then a random
    // moment more, which lands it in the middle of the run.
    const first = await runAndKill(base, opts, sequence(waitProgress(readRun, 0), waitMillis(randomBetween(0, 250))))
    expect(first.signal, describeResult(first)).toBe("SIGKILL")
    const afterFirst = await readRun()
    expectCheckpointConsistent("first kill", readTokens(), before, afterFirst!, window)

    const refused = await expectExit(runCli(base, opts), 2)
    expect(refused.stderr).toContain("--resume")
    expect(refused.stderr).toContain("--restart")

    for (let cycle = 0; cycle < 4; cycle++) {
      const start = await readRun()
      const r = await runAndKill(
        [...base, "--resume"],
        opts,
        sequence(waitProgress(readRun, start!.rotated), waitMillis(randomBetween(0, 150)))
      )
      expect(r.signal, `cycle ${cycle}: ${describeResult(r)}`).toBe("SIGKILL")
      const end = await readRun()
      expect(end!.runId).toBe(afterFirst!.runId)
      expect(end!.rotated).toBeGreaterThan(start!.rotated)
      expectCheckpointConsistent(`cycle ${cycle}`, readTokens(), before, end!, window)
    }
    const beforeFinal = await readRun()
    expect(beforeFinal!.rotated).toBeLessThan(ticketCount)

    const final = await expectExit(runCli([...base, "--resume", "--json"], opts), 0)
    const summary = parseJsonSummary(final)
    expect(summary).toMatchObject({ status: "completed", resumed: true, rotatedTotal: ticketCount })
    expect((await readRun())?.status).toBe("completed")

    expectAllRotated(before, readTickets())
    const counts = sqlite!.prepare("SELECT COUNT(*) AS n, COUNT(DISTINCT `token`) AS d FROM `ticket`").get()!
    expect(Number(counts.d)).toBe(ticketCount)
    expect(Number(counts.n)).toBe(ticketCount)
  })

  // SQLite calls are synchronous: the run must still let Node see the signal between batches.
  it(
    "Ctrl-C at full speed stops the run before its end (exit 130, resume hint), and --resume completes",
    { timeout: 120_000 },
    async () => {
      const before = new Map(readTickets().map((t) => [t.id, t]))
      const previous = (await readRun())?.runId
      const started = spawnCli(["regenerate", "--restart", "--batch-size", String(batchSize)], { cwd, env })
      // Once this run has committed its first batch.
      const running = async () => {
        const run = await readRun()
        return run !== undefined && run.runId !== previous && run.rotated > 0
      }
      await until("the run commits its first batch", running, { everyMs: 5 })
      started.child.kill("SIGINT")
      const r = await started.result
      expect(r.code, describeResult(r)).toBe(130)
      expect(r.stdout).toContain("resume with: ")
      expect((await readRun())!.rotated).toBeLessThan(ticketCount)
      await expectExit(runCli(["regenerate", "--batch-size", String(batchSize), "--resume"], { cwd, env }), 0)
      expectAllRotated(before, readTickets())
    }
  )

  // The driver waits for a lock synchronously, Node's event loop stopped: at most 100 ms at a time.
  it(
    "while another writer holds the file's lock, Ctrl-C is seen at once; the run ends saying the checkpoint " +
      "cannot be written, and --resume completes once the lock goes",
    { timeout: 120_000 },
    async () => {
      const before = new Map(readTickets().map((t) => [t.id, t]))
      const previous = (await readRun())?.runId
      const run = spawnCli(["regenerate", "--restart", "--batch-size", "500", "--max-rows-per-second", "5000"], {
        cwd,
        env
      })
      await until("the run commits its first batch", async () => {
        const record = await readRun()
        return record !== undefined && record.runId !== previous && record.rotated > 0
      }, { everyMs: 5 })
      const writer = new Sqlite(Path.join(cwd, "data", "tickets.sqlite"), { timeout: 10_000 })
      try {
        writer.prepare("BEGIN IMMEDIATE").run()
        // Its 8 batches in flight now meet the lock, again and again.
        await sleep(2_500)
        const stopped = Date.now()
        run.child.kill("SIGINT")
        await until("the stop request is seen", () => run.output().stderr.includes("stopping:"), {
          everyMs: 10,
          timeoutMs: 20_000
        })
        expect(Date.now() - stopped, "seen while the lock is held").toBeLessThan(2_500)
        const r = await run.result
        expect(Date.now() - stopped, "no retry after the stop request").toBeLessThan(5_000)
        // The last checkpoint write meets the lock too: said, resumably (exit 1).
        expect(r.code, describeResult(r)).toBe(1)
        expect(r.stderr).toMatch(/^error: the checkpoint store .* is unavailable while .*database is locked.*--resume/m)
      } finally {
        writer.prepare("COMMIT").run()
        writer.close()
      }
      await expectExit(runCli(["regenerate", "--resume"], { cwd, env }), 0)
      expectAllRotated(before, readTickets())
    }
  )
})
