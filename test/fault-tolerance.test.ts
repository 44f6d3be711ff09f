/**
 * Other people's faults, against the real MariaDB and Redis, through the built CLI: Redis going away and
 * coming back, MySQL connections killed, row locks held past the lock wait timeout, live site traffic, a
 * second runner, corrupt or foreign checkpoints, and secrets that must never show. Every test ends with a
 * snapshot comparison of the ticket table.
 */
import { Redis } from "ioredis"
import type * as mysql from "mysql2/promise"
import { randomBytes } from "node:crypto"
import * as Os from "node:os"
import { setTimeout as sleep } from "node:timers/promises"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { lockWaitSeconds } from "../src/Db.js"
import { type CliResult, runCli, spawnCli } from "./support/cli.js"
import { privateRedis, removePrivateRedisDirs } from "./support/privateRedis.js"
import {
  adminConnection,
  createDatabase,
  createRedisPrefix,
  freezingProxy,
  mysqlHost,
  mysqlPort,
  redisUrl,
  servicesAvailable
} from "./support/services.js"
import {
  describeResult,
  expectAllRotated,
  killWhileRunning,
  parseJsonSummary,
  seedFixture,
  snapshotOn,
  type Ticket,
  ticketsOn,
  until,
  untilRotating
} from "./support/tickets.js"

const ticketCount = 40_000
/** Slow enough that a fault can land in the middle of a run (about 4 s for the whole table). */
const throttle = ["--max-rows-per-second", "10000", "--batch-size", "500"]

afterAll(removePrivateRedisDirs)

describe.skipIf(!servicesAvailable)("fault tolerance on MariaDB + Redis", () => {
  let db: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection
  const prefixes: Array<ReturnType<typeof createRedisPrefix>> = []
  const env = (extra: Record<string, string> = {}) => {
    const prefix = createRedisPrefix("tt-fault")
    prefixes.push(prefix)
    return { DATABASE_URL: db.url, REDIS_URL: redisUrl, REDIS_PREFIX: prefix.name, ...extra }
  }

  const readTickets = () => ticketsOn(admin)
  /** `regenerate --resume` to the end: exit 0, status completed. */
  const resumeToEnd = async (runEnv: Record<string, string>) => {
    const resumed = await runCli(["regenerate", "--resume", "--json"], { env: runEnv })
    expect(resumed.code, resumed.stderr).toBe(0)
    expect(parseJsonSummary(resumed).status).toBe("completed")
  }
  const snapshot = () => snapshotOn(admin)
  /** A run that got to its end by retrying: exit 0, completed, retries counted, every ticket rotated. */
  const expectRetriedToEnd = async (result: CliResult, before: ReadonlyMap<string, Ticket>) => {
    expect(result.code, result.stderr).toBe(0)
    const summary = parseJsonSummary(result)
    expect(summary.status).toBe("completed")
    expect(Number(summary.retries)).toBeGreaterThan(0)
    expectAllRotated(before, await readTickets())
  }
  const expectUnchanged = async (before: ReadonlyMap<string, Ticket>) => {
    const after = await readTickets()
    expect(after.filter((t) => before.get(t.id)?.token !== t.token || before.get(t.id)?.updated_at !== t.updated_at))
      .toEqual([])
  }

  beforeAll(async () => {
    db = await createDatabase("tt_fault")
    admin = await adminConnection(db.name)
    await seedFixture({ env: { DATABASE_URL: db.url } }, { users: 100, orders: 1000, tickets: ticketCount })
  })

  afterAll(async () => {
    await admin?.end()
    await db?.drop()
    for (const p of prefixes) await p.drop()
  })

  /**
   * A run on `redis`, which is stopped for `awayMillis` once the run is rotating and then started again: the
   * run must complete (exit 0) with every ticket rotated. Returns its summary and environment.
   */
  const restartedMidRun = async (redis: ReturnType<typeof privateRedis>, awayMillis: number) => {
    const before = await snapshot()
    const runEnv = env({ REDIS_URL: redis.url })
    const run = spawnCli(["regenerate", "--json", ...throttle], { env: runEnv })
    await untilRotating(admin, before)
    await redis.stop()
    await sleep(awayMillis)
    await redis.start()
    const result = await run.result
    expect(result.code, result.stderr).toBe(0)
    const summary = parseJsonSummary(result)
    expect(summary.status).toBe("completed")
    expectAllRotated(before, await readTickets())
    return { summary, runEnv }
  }

  it("Redis restarted mid-run: checkpoint writes are retried and the run completes", async () => {
    const redis = privateRedis()
    await redis.start()
    try {
      const { summary } = await restartedMidRun(redis, 2500)
      expect(Number(summary.retries)).toBeGreaterThan(0)
    } finally {
      await redis.stop()
    }
  })

  it("Redis down past the run's lease (22 s), its data kept: the run takes its lock back and completes", async () => {
    const redis = privateRedis()
    await redis.start()
    const watcher = redis.client()
    try {
      await watcher.connect()
      const before = await snapshot()
      const runEnv = env({ REDIS_URL: redis.url })
      // About 20 s for the table: still running when Redis comes back.
      const run = spawnCli(["regenerate", "--json", "--max-rows-per-second", "2000", "--batch-size", "500"], {
        env: runEnv,
        timeoutMs: 120_000
      })
      await untilRotating(admin, before)
      const [lockKey] = await watcher.keys(`${runEnv.REDIS_PREFIX}:lock:*`)
      expect(lockKey).toBeDefined()
      // Stop it shortly before the next renewal (one every 10 s of a 30 s lease, at about 20 s left), so that
      // the lease runs out while Redis is away: the key expires by the clock, even across a restart. Back soon
      // after: the checkpoint write waiting meanwhile retries for about 26 s.
      while (await watcher.pttl(lockKey!) > 20_800) await sleep(20)
      const left = await watcher.pttl(lockKey!)
      await redis.stop()
      await sleep(left + 300)
      await redis.start()
      const result = await run.result
      expect(result.code, result.stderr).toBe(0)
      const summary = parseJsonSummary(result)
      expect(summary.status).toBe("completed")
      expect(result.stderr).toMatch(
        /^warning: the run's lock was gone from redis .* no other runner had taken it or written the run: taken back$/m
      )
      expectAllRotated(before, await readTickets())
    } finally {
      watcher.disconnect()
      await redis.stop()
    }
  })

  it("Redis restarted without its data mid-run: the run puts its lock and checkpoint back and completes", async () => {
    const redis = privateRedis({ persist: false })
    await redis.start()
    const watcher = redis.client()
    try {
      const { runEnv } = await restartedMidRun(redis, 1000)
      // The record is back (status sees the completed run), and --resume finds it.
      const status = await runCli(["status", "--json"], { env: runEnv })
      expect(status.code, status.stderr).toBe(0)
      expect(JSON.parse(status.stdout).run).toMatchObject({ status: "completed", rotated: ticketCount })
      const again = await runCli(["regenerate", "--resume"], { env: runEnv })
      expect(again.code, again.stderr).toBe(0)
      expect(again.stdout).toMatch(/already completed/)
      await watcher.connect()
      expect(await watcher.keys(`${runEnv.REDIS_PREFIX}:lock:*`), "the lock released").toEqual([])
    } finally {
      watcher.disconnect()
      await redis.stop()
    }
  })

  /**
   * A run on a private Redis that `disrupt` breaks once it is rotating: it must fail (exit 1) with the error
   * lines `check` expects; then Redis comes back and --resume finishes the rotation.
   */
  const redisOutage = async (
    disrupt: (redis: ReturnType<typeof privateRedis>, run: ReturnType<typeof spawnCli>) => Promise<void>,
    check: (result: CliResult, errorLines: ReadonlyArray<string>, redis: ReturnType<typeof privateRedis>) => void
  ) => {
    const redis = privateRedis()
    await redis.start()
    try {
      const before = await snapshot()
      const runEnv = env({ REDIS_URL: redis.url })
      const run = spawnCli(["regenerate", ...throttle], { env: runEnv, timeoutMs: 180_000 })
      await untilRotating(admin, before)
      const disrupted = Date.now()
      await disrupt(redis, run)
      const result = await run.result
      expect(result.code, result.stderr).toBe(1)
      // The retries are bounded: about 26 s of back-off, each attempt refused at once.
      expect(Date.now() - disrupted, "stopped within a bounded time").toBeLessThan(45_000)
      check(result, result.stderr.split("\n").filter((l) => l.startsWith("error: ")), redis)
      await redis.start()
      await resumeToEnd(runEnv)
      expectAllRotated(before, await readTickets())
    } finally {
      await redis.stop()
    }
  }

  it("Redis down for longer than the retries last: a clean stop (exit 1), then --resume finishes", () =>
    redisOutage((redis) => redis.stop(), (result, lines, redis) => {
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatch(/redis/i)
      expect(lines[0]).toContain("--resume")
      expect(result.stderr + result.stdout).not.toContain(redis.password)
    }))

  it("Redis goes down, then Ctrl-C while the batches in flight wind down: their failure is reported (exit 1, not 130)", () =>
    redisOutage(
      async (redis, run) => {
        // In this order, so that the in-flight checkpoint writes are still failing (and retried) when the
        // stop comes: winding down cannot succeed.
        await redis.stop()
        run.child.kill("SIGINT")
      },
      (result, lines) => {
        expect(result.stderr).toContain("stopping: letting the batches in flight commit")
        // Piped: the plain progress lines end in newlines of their own, so no blank line before it.
        expect(result.stderr).not.toContain("\n\nstopping")
        expect(lines).toEqual([expect.stringMatching(/^error: the checkpoint store \(redis .*--resume/)])
      }
    ))

  it("MySQL connections killed mid-run: batches are retried on fresh connections", async () => {
    const before = await snapshot()
    const run = spawnCli(["regenerate", "--json", ...throttle], { env: env() })
    // Kill connections in the middle of a statement (not idle ones, which the pool just replaces), a few times,
    // once batches run (a kill of a statement before them is retried too, but not counted as a batch's retry).
    await untilRotating(admin, before)
    const kills = await killWhileRunning(admin, db.name, run.child, {
      condition: "`COMMAND` <> 'Sleep'",
      most: 4,
      pause: 300
    })
    expect(kills, "connections killed in the middle of a statement").toBeGreaterThanOrEqual(3)
    await expectRetriedToEnd(await run.result, before)
  })

  it.each(["Redis", "the checkpoint table"])(
    "the server stops answering mid-run (no error, no closed socket), checkpoints in %s: statements time out, are killed, and go on fresh connections",
    async (store) => {
      const proxy = await freezingProxy(db.url)
      try {
        const before = await snapshot()
        // Small batches at concurrency 8: more connections open (and lost) at once, idle ones among them.
        const flags = ["--batch-size", "100", "--concurrency", "8", "--max-rows-per-second", "15000"]
        const run = spawnCli(["regenerate", "--json", "--statement-timeout", "2", ...flags], {
          env: store === "Redis" ? env({ DATABASE_URL: proxy.url }) : { DATABASE_URL: proxy.url }
        })
        await untilRotating(admin, before)
        // Every connection open now is lost for good; new ones hang at their handshake for 4 s.
        proxy.freeze(4_000)
        await expectRetriedToEnd(await run.result, before)
      } finally {
        await proxy.close()
      }
    }
  )

  it("verify against a server that stops answering mid-way: the page read times out, is killed, and is read again", async () => {
    const runEnv = env()
    expect((await runCli(["regenerate"], { env: runEnv })).code).toBe(0)
    const proxy = await freezingProxy(db.url)
    try {
      // The first page's statement is lost with every connection open; new ones are silent for 3 s.
      proxy.freezeOn("THEN 1 ELSE 0 END", 3_000)
      const verified = await runCli(["verify", "--json", "--statement-timeout", "2"], {
        env: { ...runEnv, DATABASE_URL: proxy.url }
      })
      expect(proxy.freezes(), "the proxy saw the page's statement and froze").toBe(1)
      expect(verified.code, verified.stderr).toBe(0)
      expect(JSON.parse(verified.stdout)).toMatchObject({ inScope: ticketCount, notRotated: 0, ok: true })
    } finally {
      await proxy.close()
    }
  })

  /** The sessions whose statement is a schema check of the tool's, waiting for the table. */
  const waitingForTable = async () =>
    ((await admin.query(
      "SELECT `ID` AS `id` FROM information_schema.`PROCESSLIST` " +
        "WHERE `DB` = ? AND `STATE` = 'Waiting for table metadata lock' AND `INFO` LIKE '%FROM `ticket` WHERE 1 = 0%'",
      [db.name]
    ))[0] as Array<{ id: number }>).map((row) => Number(row.id))

  /**
   * Queues a schema change behind a site's transaction that has read the ticket table: the change needs the
   * table alone, and every later statement on the table queues behind it (MariaDB's lock_wait_timeout is a
   * day by default). `release` commits the site's transaction and waits for the change.
   */
  const queueSchemaChange = async () => {
    const site = await adminConnection(db.name)
    const migration = await adminConnection(db.name)
    await site.query("BEGIN")
    await site.query("SELECT COUNT(*) FROM `ticket`")
    const altered = migration.query("ALTER TABLE `ticket` COMMENT = 'changed while a command started'")
    return {
      release: async () => {
        await site.query("COMMIT")
        await altered
      },
      end: async () => {
        await site.end()
        await migration.end()
      }
    }
  }

  it("a schema change queued behind a site's long transaction as the run starts: the schema check waits 10 s at most, says so, and is tried again", async () => {
    const change = await queueSchemaChange()
    try {
      const before = await snapshot()
      const run = spawnCli(["regenerate", "--json"], { env: env() })
      let waiting: Array<number> = []
      await until(
        "the run's schema check waits for the table",
        async () => (waiting = await waitingForTable()).length > 0,
        {
          everyMs: 200
        }
      )
      await until("the run says it is trying again", () => run.output().stderr.includes("trying again"), {
        timeoutMs: 20_000
      })
      expect(run.output().stderr).toContain(
        "database error while checking table ticket: no answer within 10s (the server stopped answering, or the " +
          "table is locked"
      )
      // The statement given up does not stay queued on the server: its session was ended.
      expect(await waitingForTable()).not.toContain(waiting[0])
      await change.release()
      const result = await run.result
      expect(result.code, result.stderr).toBe(0)
      expect(parseJsonSummary(result).status).toBe("completed")
      expectAllRotated(before, await readTickets())
    } finally {
      await change.end()
    }
  })

  it("the same with checkpoints in the table: the run says it waits, Ctrl-C ends it at once (130); status answers meanwhile", async () => {
    const change = await queueSchemaChange()
    try {
      const before = await snapshot()
      const tableEnv = { DATABASE_URL: db.url }
      const run = spawnCli(["regenerate", "--json"], { env: tableEnv })
      await until("the run's schema check waits for the table", async () => (await waitingForTable()).length > 0, {
        everyMs: 200
      })
      // status reads the store alone: the locked table does not hold it up, with either store.
      for (const statusEnv of [tableEnv, env()]) {
        const started = Date.now()
        const status = await runCli(["status", "--json"], { env: statusEnv })
        // Whatever run it finds in the store (none, or an earlier test's): an answer, not a wait.
        expect(status.code, status.stderr).toBe(0)
        expect(JSON.parse(status.stdout)).toHaveProperty("database")
        expect(Date.now() - started).toBeLessThan(5_000)
      }
      await until("the run says it is trying again", () => run.output().stderr.includes("trying again"), {
        timeoutMs: 20_000
      })
      const stopped = Date.now()
      run.child.kill("SIGINT")
      const result = await run.result
      expect(result.code, result.stderr).toBe(130)
      expect(Date.now() - stopped, "not after the 10 s wait for an answer").toBeLessThan(3_000)
      expect(result.stderr).not.toMatch(/^error:/m)
      expect(result.stderr).toContain("stopped before any batch began: nothing was changed")
      // Under --json, still its one object.
      expect(JSON.parse(result.stdout)).toMatchObject({ status: "interrupted", rotated: 0 })
      await until("its statement is not left queued", async () => (await waitingForTable()).length === 0)
      await change.release()
      await expectUnchanged(before)
    } finally {
      await change.end()
    }
  })

  /** How many transactions wait for a row lock that the transaction `trx` holds. */
  const waitsOn = async (trx: string) =>
    Number(
      ((await admin.query(
        "SELECT COUNT(*) AS `n` FROM information_schema.`INNODB_LOCK_WAITS` WHERE `blocking_trx_id` = ?",
        [trx]
      ))[0] as Array<{ n: number }>)[0]!.n
    )
  /** The id of the transaction open on `conn`. */
  const trxOf = async (conn: mysql.Connection) =>
    String(
      ((await conn.query(
        "SELECT `trx_id` FROM information_schema.`INNODB_TRX` WHERE `trx_mysql_thread_id` = CONNECTION_ID()"
      ))[0] as Array<{ trx_id: string | number }>)[0]!.trx_id
    )

  it("rows locked past the tool's lock wait: the batch is rolled back, retried with backoff, and completes", async () => {
    const locker = await adminConnection(db.name)
    try {
      const before = await snapshot()
      const ids = [...before.keys()].sort().slice(20_000, 20_050)
      await locker.query("BEGIN")
      await locker.query("SELECT `id` FROM `ticket` WHERE `id` IN (?) FOR UPDATE", [ids])
      const lockerTrx = await trxOf(locker)
      const run = spawnCli(["regenerate", "--json", "--batch-size", "1000"], { env: env() })
      // A batch comes to wait for the held rows, and waits out the tool's own lock wait at least once.
      // InnoDB refreshes the lock-wait table only when it was not read for 100 ms.
      await until("a batch waits for the held rows", async () => (await waitsOn(lockerTrx)) > 0, { everyMs: 250 })
      await sleep(lockWaitSeconds * 1000 + 2000)
      expect(run.child.exitCode, "the run waits for the locked rows").toBeNull()
      await locker.query("ROLLBACK")
      await expectRetriedToEnd(await run.result, before)
    } finally {
      await locker.end()
    }
  })

  it("a real deadlock with a site transaction: InnoDB rolls back the batch, which is retried and completes", async () => {
    const deadlocks = async () =>
      Number(
        ((await admin.query("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'"))[0] as Array<{ Value: string }>)[0]!.Value
      )
    // The site's transaction has done more work than a batch, so InnoDB picks the batch as the victim.
    await admin.query("CREATE TABLE `site_work` (`n` int PRIMARY KEY, `v` int NOT NULL) ENGINE=InnoDB")
    for (let n = 0; n < 20_000; n += 1000) {
      await admin.query("INSERT INTO `site_work` VALUES ?", [Array.from({ length: 1000 }, (_, i) => [n + i, 0])])
    }
    const site = await adminConnection(db.name)
    let run: ReturnType<typeof spawnCli> | undefined
    try {
      const before = await snapshot()
      const ids = [...before.keys()].sort()
      // Both in the sixth page: the batch's range UPDATE locks rows in id order, so it holds `first` when it
      // comes to wait for `second`, which the site holds; then the site asks for `first`.
      const [first, second] = [ids[5100]!, ids[5500]!]
      const deadlocksBefore = await deadlocks()
      await site.query("BEGIN")
      await site.query("UPDATE `site_work` SET `v` = `v` + 1")
      await site.query("SELECT `id` FROM `ticket` WHERE `id` = ? FOR UPDATE", [second])
      const siteTrx = await trxOf(site)
      run = spawnCli(["regenerate", "--json"], { env: env() })
      // Waiting on the site's transaction itself: the server is shared with other test files' runs.
      await until("a batch comes to wait for the site's row", async () => (await waitsOn(siteTrx)) > 0, {
        everyMs: 250,
        timeoutMs: 30_000
      })
      await site.query("SELECT `id` FROM `ticket` WHERE `id` = ? FOR UPDATE", [first])
      expect(await deadlocks(), "InnoDB saw a deadlock and rolled the batch back").toBeGreaterThan(deadlocksBefore)
      await site.query("ROLLBACK")
      await expectRetriedToEnd(await run.result, before)
    } finally {
      run?.child.kill("SIGKILL") // a no-op once it has exited; else a failed test leaves no run behind
      await site.end()
      await admin.query("DROP TABLE `site_work`")
    }
  })

  it("a second signal exits at once while a batch is stuck (under --json, with its one object); the checkpoint stays right and --resume completes", async () => {
    const locker = await adminConnection(db.name)
    try {
      const before = await snapshot()
      const ids = [...before.keys()].sort().slice(10_000, 10_010)
      await locker.query("BEGIN")
      await locker.query("SELECT `id` FROM `ticket` WHERE `id` IN (?) FOR UPDATE", [ids])
      const runEnv = env()
      const run = spawnCli(["regenerate", "--batch-size", "500", "--json"], { env: runEnv })
      // Ctrl-C once a batch waits for the locked rows (for up to the tool's 5 s lock wait).
      const lockerTrx = await trxOf(locker)
      await until("a batch comes to wait for the locked rows", async () => (await waitsOn(lockerTrx)) > 0, {
        everyMs: 100,
        timeoutMs: 30_000
      })
      run.child.kill("SIGINT")
      await sleep(1500)
      expect(run.child.exitCode, "the first Ctrl-C waits for the batch in flight").toBeNull()
      const second = Date.now()
      run.child.kill("SIGTERM")
      const result = await run.result
      expect(Date.now() - second).toBeLessThan(3000)
      // The second signal decides the exit code.
      expect(result.code).toBe(143)
      const said =
        /^stopped at once \(a second signal\): the checkpoint is at the last recorded commit; resume with: node .*main\.js regenerate --batch-size 500 --json --resume$/m
      expect(result.stderr).toMatch(said)
      expect(parseJsonSummary(result)).toEqual({ status: "interrupted", message: expect.stringMatching(said) })
      await locker.query("ROLLBACK")
      await resumeToEnd(runEnv)
      expectAllRotated(before, await readTickets())
    } finally {
      await locker.end()
    }
  })

  it("live site traffic: no rename is lost, every old ticket is rotated, new tickets keep valid tokens", async () => {
    const before = await snapshot()
    const [orders] = await admin.query("SELECT `id` FROM `order` LIMIT 50")
    const orderIds = (orders as Array<{ id: string }>).map((o) => o.id)
    const site = await adminConnection(db.name)
    const renamed = new Map<string, string>()
    const inserted: Array<string> = []
    const ids = [...before.keys()]
    let running = true
    // As the site's own code would: a statement InnoDB picks as a deadlock's victim is tried again (an
    // INSERT into a span being rotated can meet the batch's locks on the token index in the other order).
    const siteQuery = async (statement: string, params: Array<unknown>) => {
      for (let attempt = 1;; attempt++) {
        try {
          return await site.query(statement, params)
        } catch (error) {
          if ((error as { errno?: number }).errno !== 1213 || attempt === 5) throw error
        }
      }
    }
    const traffic = (async () => {
      for (let n = 0; running; n++) {
        const id = randomBytes(16).toString("hex")
        const now = new Date().toISOString().replace("T", " ").replace("Z", "000")
        await siteQuery(
          "INSERT INTO `ticket` (`id`, `created_at`, `updated_at`, `deleted_at`, `name`, `token`, `order_id`) VALUES (?, ?, ?, NULL, ?, ?, ?)",
          [id, now, now, `walk-in ${n}`, randomBytes(16).toString("hex"), orderIds[n % orderIds.length]]
        )
        inserted.push(id)
        const target = ids[Math.floor(Math.random() * ids.length)]!
        const name = `renamed ${n}`
        await siteQuery("UPDATE `ticket` SET `name` = ?, `updated_at` = ? WHERE `id` = ?", [name, now, target])
        renamed.set(target, name)
        await sleep(10)
      }
    })()
    try {
      const result = await runCli(["regenerate", "--json", ...throttle], { env: env() })
      expect(result.code, result.stderr).toBe(0)
      expect(parseJsonSummary(result).status).toBe("completed")
    } finally {
      running = false
      await traffic
      await site.end()
    }
    expect(renamed.size).toBeGreaterThan(20)
    expect(inserted.length).toBeGreaterThan(20)
    const after = await readTickets()
    expectAllRotated(before, after, (old) => renamed.get(old.id) ?? old.name)
    const fresh = after.filter((t) => !before.has(t.id))
    expect(fresh).toHaveLength(inserted.length)
    expect(fresh.every((t) => /^[0-9a-f]{32}$/.test(t.token))).toBe(true)
  })

  it("a second runner is refused at once, naming the holder; after kill -9 of the first it takes over", async () => {
    const before = await snapshot()
    const runEnv = env()
    // Slow enough (about 40 s; killed long before) to be still running when the checks below are done.
    const first = spawnCli(["regenerate", "--max-rows-per-second", "1000", "--batch-size", "500"], { env: runEnv })
    await untilRotating(admin, before)
    const started = Date.now()
    const second = await runCli(["regenerate", "--resume"], { env: runEnv })
    expect(Date.now() - started).toBeLessThan(10_000)
    expect(second.code, second.stderr).toBe(1)
    expect(second.stderr).toContain(`pid ${first.child.pid} on ${Os.hostname()}`)
    expect(second.stderr).toMatch(/its lock expires within \d+ s: then rerun with --resume\.$/m)
    // A dry run is refused where the run would be, whatever the resume flags.
    for (const flags of [[], ["--resume"], ["--restart"]]) {
      const dry = await runCli(["regenerate", "--dry-run", ...flags], { env: runEnv })
      expect(dry.code, dry.stdout + dry.stderr).toBe(1)
      expect(dry.stderr).toContain(`is in progress: pid ${first.child.pid} on ${Os.hostname()}`)
    }
    expect(first.child.exitCode, "the first run is still going when it is killed").toBeNull()
    first.child.kill("SIGKILL")
    await first.result
    await resumeToEnd(runEnv)
    expectAllRotated(before, await readTickets())
  })

  it("a corrupt or foreign checkpoint is a clear error, nothing is rotated, and --restart recovers", async () => {
    const runEnv = env()
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
    try {
      // A stopped run leaves a record; then the record is damaged.
      const initial = await snapshot()
      const stopped = spawnCli(["regenerate", ...throttle], { env: runEnv })
      await untilRotating(admin, initial)
      stopped.child.kill("SIGINT")
      expect((await stopped.result).code).toBe(130)
      const [key] = await redis.keys(`${runEnv.REDIS_PREFIX}:run:*`)
      expect(key).toBeDefined()
      const record = (await redis.get(key!))!
      await redis.set(key!, "{\"version\":1,\"runId\":")
      const before = await snapshot()
      for (const args of [["regenerate"], ["regenerate", "--resume"], ["status"]]) {
        const r = await runCli(args, { env: runEnv })
        expect(r.code, r.stderr).toBe(2)
        expect(r.stderr).toMatch(/^error: the checkpoint .* cannot be read .*--restart/m)
        // Named so that `redis-cli GET` finds it.
        expect(r.stderr).toContain(`redis key ${key} on `)
      }
      await expectUnchanged(before)

      // Well-formed records that would misstep a resume: a cursor that is no ticket id (it would end the
      // run at once, "completed"), committed ranges inverted or below the cursor (they would skip or redo).
      const parsed = JSON.parse(record) as Record<string, unknown>
      for (
        const damage of [
          { cursor: "zz" },
          { done: [["f".repeat(32), "e".repeat(32)]] },
          { done: [["0".repeat(32), `${"0".repeat(31)}1`]] },
          // Another scope or database than the record was written for (its fingerprint kept).
          { scope: { liveOnly: true, emailDomain: null, createdAfter: null, createdBefore: null } },
          { database: "mysql://elsewhere:3306/tickets" }
        ]
      ) {
        await redis.set(key!, JSON.stringify({ ...parsed, ...damage }))
        const r = await runCli(["regenerate", "--resume"], { env: runEnv })
        expect(r.code, `${JSON.stringify(damage)}: ${r.stderr}`).toBe(2)
        expect(r.stderr).toMatch(/^error: the checkpoint .* cannot be read .*--restart/m)
      }
      // Another program's data under the key: not a string at all (Redis answers WRONGTYPE).
      await redis.del(key!)
      await redis.hset(key!, "a", "b")
      for (const args of [["regenerate", "--resume"], ["status"]]) {
        const r = await runCli(args, { env: runEnv })
        expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2)
        expect(r.stderr).toMatch(/^error: the checkpoint at redis key .* cannot be read \(not a string value\)/m)
      }
      await redis.del(key!)
      await expectUnchanged(before)

      // The pointer to the latest run: garbage, or naming a record that is not there, is damage too.
      const [pointerKey] = await redis.keys(`${runEnv.REDIS_PREFIX}:latest:*`)
      const pointer = (await redis.get(pointerKey!))!
      for (const value of ["garbage", `${pointer.slice(0, -4)}beef`]) {
        await redis.set(pointerKey!, value)
        const r = await runCli(["status"], { env: runEnv })
        expect(r.code, `${value}: ${r.stdout}${r.stderr}`).toBe(2)
        expect(r.stderr).toMatch(new RegExp(`^error: the checkpoint at redis key ${pointerKey} .* cannot be read`, "m"))
      }
      await redis.set(pointerKey!, pointer)

      // The record of "all tickets" under the key of another scope is foreign to it.
      await redis.set(key!, record)
      // Find the --live-only slot's key by letting a run create it, then plant the foreign record there.
      const beforeOwn = await snapshot()
      // (--restart: the run of all tickets is unfinished, and a plain start of another scope is refused.)
      const own = spawnCli(["regenerate", "--live-only", "--restart", ...throttle], { env: runEnv })
      await untilRotating(admin, beforeOwn)
      own.child.kill("SIGINT")
      await own.result
      const liveOnlyKey = (await redis.keys(`${runEnv.REDIS_PREFIX}:run:*`)).find((k) => k !== key)!
      await redis.set(liveOnlyKey, record)
      const beforeForeign = await snapshot()
      const foreign = await runCli(["regenerate", "--live-only", "--resume"], { env: runEnv })
      expect(foreign.code, foreign.stderr).toBe(2)
      expect(foreign.stderr).toContain("belongs to another database or scope")
      await expectUnchanged(beforeForeign)

      const restarted = await runCli(["regenerate", "--restart", "--json"], { env: runEnv })
      expect(restarted.code, restarted.stderr).toBe(0)
      expect(parseJsonSummary(restarted).status).toBe("completed")
      expectAllRotated(beforeForeign, await readTickets())
      const liveRestart = await runCli(["regenerate", "--live-only", "--restart"], { env: runEnv })
      expect(liveRestart.code, liveRestart.stderr).toBe(0)
    } finally {
      redis.disconnect()
    }
  })

  it("garbage in the checkpoint table (no Redis) is a clear error; --restart recovers", async () => {
    const sqlEnv = { DATABASE_URL: db.url }
    const initial = await snapshot()
    const stopped = spawnCli(["regenerate", ...throttle], { env: sqlEnv })
    await untilRotating(admin, initial)
    stopped.child.kill("SIGINT")
    expect((await stopped.result).code).toBe(130)
    await admin.query("UPDATE `ticket_tokens_state` SET `value` = 'not json' WHERE `key` LIKE 'run:%'")
    const before = await snapshot()
    const r = await runCli(["regenerate", "--resume"], { env: sqlEnv })
    expect(r.code, r.stderr).toBe(2)
    expect(r.stderr).toContain("cannot be read")
    await expectUnchanged(before)
    const restarted = await runCli(["regenerate", "--restart"], { env: sqlEnv })
    expect(restarted.code, restarted.stderr).toBe(0)
    expectAllRotated(before, await readTickets())
  })

  it("a failure retries cannot fix stops the run in one line saying where and what to do; --resume finishes after the fix", async () => {
    const runEnv = env()
    const before = await snapshot()
    const ids = [...before.keys()].sort()
    const refusedId = ids[Math.floor(ids.length / 2)]!
    await admin.query(
      "CREATE TRIGGER `tt_refuse` BEFORE UPDATE ON `ticket` FOR EACH ROW BEGIN " +
        `IF OLD.id = '${refusedId}' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a test trigger'; ` +
        "END IF; END"
    )
    try {
      const failed = await runCli(["regenerate", "--json"], { env: runEnv })
      expect(failed.code, failed.stderr).toBe(1)
      // --json: the run's summary, status "failed", with the error (the one-line error still on stderr).
      const summary = JSON.parse(failed.stdout) as Record<string, unknown>
      expect(Object.keys(summary).sort()).toEqual(
        [
          "batches",
          "cursor",
          "error",
          "exitCode",
          "message",
          "note",
          "resumed",
          "retries",
          "rotated",
          "rotatedTotal",
          "rowsPerSecond",
          "runId",
          "scope",
          "seconds",
          "skipped",
          "status",
          "total"
        ]
      )
      expect(summary).toMatchObject({ status: "failed", error: "RunFailed", exitCode: 1, resumed: false })
      expect(Number(summary.rotated)).toBeGreaterThan(0)
      expect(Number(summary.batches)).toBeGreaterThan(0)
      const errors = failed.stderr.split("\n").filter((l) => l.startsWith("error: "))
      expect(errors, failed.stderr).toHaveLength(1)
      const stopped = errors[0]!.match(
        /refused by a test trigger.*\. Run \w+ stopped: every batch up to id (\w+) is committed and recorded \((\d+) rotated in all\)\. Fix the cause, then resume with `regenerate --resume`\.$/
      )
      expect(stopped, errors[0]).not.toBeNull()
      const cursor = stopped![1]!
      expect(summary.cursor).toBe(cursor)
      expect(summary.rotatedTotal).toBe(Number(stopped![2]))
      expect(cursor < refusedId).toBe(true)
      const after = await readTickets()
      const changed = after.filter((t) => before.get(t.id)!.token !== t.token)
      expect(changed.length).toBeGreaterThanOrEqual(Number(stopped![2]))
      // Everything up to the recorded cursor is rotated; the refused ticket is not.
      expect(after.filter((t) => t.id <= cursor && before.get(t.id)!.token === t.token)).toEqual([])
      expect(after.find((t) => t.id === refusedId)!.token).toBe(before.get(refusedId)!.token)
    } finally {
      await admin.query("DROP TRIGGER IF EXISTS `tt_refuse`")
    }
    await resumeToEnd(runEnv)
    expectAllRotated(before, await readTickets())
  })

  it("a damaged run lock (no lease, or not a holder) is one clear line at once, never a hang; deleting it lets --resume go on, --restart replaces it", async () => {
    const leaseless = JSON.stringify({ host: "elsewhere", pid: 1, token: "t", since: "2026-01-01T00:00:00.000Z" })
    /** A stopped run, so that there is a record to resume; returns the table as it was before it. */
    const stoppedRun = async (runEnv: Record<string, string>) => {
      const initial = await snapshot()
      const stopped = spawnCli(["regenerate", ...throttle], { env: runEnv })
      await untilRotating(admin, initial)
      stopped.child.kill("SIGINT")
      expect((await stopped.result).code).toBe(130)
      return initial
    }
    const refused = async (runEnv: Record<string, string>, where: string, damage: RegExp) => {
      const before = await snapshot()
      for (const args of [["regenerate", "--resume"], ["regenerate"], ["regenerate", "--resume", "--dry-run"]]) {
        const r = await runCli(args, { env: runEnv, timeoutMs: 60_000 })
        expect(r.code, r.stderr).toBe(2)
        expect(r.stderr.trim().split("\n"), r.stderr).toHaveLength(1)
        expect(r.stderr).toMatch(/^error: the run lock at .* cannot be read .*--resume.*--restart/)
        expect(r.stderr).toContain(where)
        expect(r.stderr).toMatch(damage)
      }
      const status = await runCli(["status"], { env: runEnv })
      expect(status.stdout).toMatch(/lock entry is damaged/)
      await expectUnchanged(before)
    }

    // Redis: a lock key that is not a holder, then a holder without a TTL.
    const runEnv = env()
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
    try {
      const initial = await stoppedRun(runEnv)
      const [recordKey] = await redis.keys(`${runEnv.REDIS_PREFIX}:run:*`)
      const lockKey = recordKey!.replace(/:run:/, ":lock:")
      await redis.set(lockKey, "garbage")
      await refused(runEnv, `redis key ${lockKey} on `, /a run lock whose value is not a lock holder/)
      await redis.set(lockKey, leaseless)
      await refused(runEnv, `redis key ${lockKey} on `, /a run lock without a lease/)
      // Another program's data under the key: not a string at all (GET would answer WRONGTYPE).
      await redis.del(lockKey)
      await redis.hset(lockKey, "a", "b")
      await refused(runEnv, `redis key ${lockKey} on `, /a run lock whose value is not a lock holder/)
      // What the message says to do when no run is going: delete it, resume.
      await redis.del(lockKey)
      await resumeToEnd(runEnv)
      expectAllRotated(initial, await readTickets())
      expect(await redis.exists(lockKey)).toBe(0)
      // Or --restart, which replaces it, whatever its type.
      const again = await stoppedRun(runEnv)
      await redis.hset(lockKey, "a", "b")
      const restarted = await runCli(["regenerate", "--restart", "--json"], { env: runEnv })
      expect(restarted.code, restarted.stderr).toBe(0)
      expect(parseJsonSummary(restarted).status).toBe("completed")
      expectAllRotated(again, await readTickets())
      expect(await redis.exists(lockKey)).toBe(0)
    } finally {
      redis.disconnect()
    }

    // The checkpoint table: a lock row whose expires_at is NULL; --restart replaces it.
    const sqlEnv = { DATABASE_URL: db.url }
    await stoppedRun(sqlEnv)
    const before = await snapshot()
    const [[row]] = await admin.query(
      "SELECT `key` FROM `ticket_tokens_state` WHERE `key` LIKE 'run:%'"
    ) as unknown as [
      Array<{ key: string }>
    ]
    const sqlLock = row!.key.replace(/^run:/, "lock:")
    await admin.query("INSERT INTO `ticket_tokens_state` (`key`, `value`, `expires_at`) VALUES (?, ?, NULL)", [
      sqlLock,
      leaseless
    ])
    await refused(sqlEnv, `key '${sqlLock}' of table ticket_tokens_state`, /a run lock without a lease/)
    const restarted = await runCli(["regenerate", "--restart", "--json"], { env: sqlEnv })
    expect(restarted.code, restarted.stderr).toBe(0)
    expect(parseJsonSummary(restarted).status).toBe("completed")
    expectAllRotated(before, await readTickets())
    const [[left]] = await admin.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state` WHERE `key` = ?", [
      sqlLock
    ]) as unknown as [Array<{ n: number }>]
    expect(Number(left!.n), "the replaced lock is released at the end").toBe(0)
  })

  it("a user without a grant the run's writes need is refused before anything is written, by its dry run too", async () => {
    const user = `tt_ro_${randomBytes(3).toString("hex")}`
    const password = `Ro-${randomBytes(6).toString("hex")}`
    const hosts = `'${user}'@'%', '${user}'@'localhost'`
    await admin.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${password}'`)
    await admin.query(`CREATE USER '${user}'@'localhost' IDENTIFIED BY '${password}'`)
    await admin.query(`GRANT SELECT ON \`${db.name}\`.* TO ${hosts}`)
    const url = `mysql://${user}:${password}@${mysqlHost}:${mysqlPort}/${db.name}`
    const stateRows = async () => {
      const [[row]] = await admin.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`") as unknown as [
        Array<{ n: number }>
      ]
      return Number(row!.n)
    }
    const before = await snapshot()
    const rowsBefore = await stateRows()
    const refused = async (runEnv: Record<string, string | undefined>, denied: RegExp) => {
      for (const args of [["regenerate", "--dry-run"], ["regenerate"], ["regenerate", "--restart", "--json"]]) {
        const r = await runCli(args, { env: runEnv })
        expect(r.code, describeResult(r)).toBe(2)
        expect(r.stderr.trim().split("\n"), describeResult(r)).toEqual([
          expect.stringMatching(
            new RegExp(`^error: the database user lacks a privilege this command needs: ${denied.source}`)
          )
        ])
        expect(r.stderr).not.toContain(password)
      }
    }
    try {
      // SELECT only: the UPDATE of ticket, with the checkpoint in Redis or in the table.
      const redisEnv = env({ DATABASE_URL: url })
      await refused(redisEnv, /UPDATE command denied to user .* for table .*`ticket`/)
      await refused({ DATABASE_URL: url, REDIS_URL: undefined }, /UPDATE command denied .*`ticket`/)
      // May rotate, but not write the checkpoint table.
      await admin.query(`GRANT UPDATE ON \`${db.name}\`.\`ticket\` TO ${hosts}`)
      await refused({ DATABASE_URL: url, REDIS_URL: undefined }, /INSERT command denied .*`ticket_tokens_state`/)
      await expectUnchanged(before)
      expect(await stateRows()).toBe(rowsBefore)
      expect(await prefixes.at(-1)!.keys()).toEqual([])
      // With Redis, UPDATE on ticket is all a run writes in the database.
      const done = await runCli(["regenerate", "--restart", "--json"], { env: redisEnv })
      expect(done.code, describeResult(done)).toBe(0)
      expectAllRotated(before, await readTickets())
    } finally {
      await admin.query(`DROP USER ${hosts}`)
    }
  })

  it("no output ever shows a password or a token", async () => {
    const password = `Pw-${randomBytes(8).toString("hex")}`
    const user = `tt_secret_${randomBytes(3).toString("hex")}`
    await admin.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${password}'`)
    await admin.query(`CREATE USER '${user}'@'localhost' IDENTIFIED BY '${password}'`)
    await admin.query(`GRANT ALL ON \`${db.name}\`.* TO '${user}'@'%', '${user}'@'localhost'`)
    const redis = privateRedis()
    await redis.start()
    const outputs: Array<string> = []
    const before = await snapshot()
    const tokensBefore = [...before.values()].map((t) => t.token)
    try {
      const url = `mysql://${user}:${encodeURIComponent(password)}@${mysqlHost}:${mysqlPort}/${db.name}`
      const secretEnv = env({ DATABASE_URL: url, REDIS_URL: redis.url })
      // Each command with the exit code it must give, so that every one of them gets past connecting.
      const commands: Array<[ReadonlyArray<string>, number]> = [
        [["regenerate", "--dry-run"], 0],
        [["regenerate", "--json", "--log-level", "debug"], 0],
        [["status"], 0],
        [["status", "--json"], 0],
        [["verify"], 0],
        [["verify", "--json"], 0],
        [["regenerate", "--resume", "--live-only", "--log-level", "debug"], 2],
        [["seed", "tickets", "--count", "10", "--log-level", "debug"], 0]
      ]
      for (const [args, code] of commands) {
        const r = await runCli(args, { env: secretEnv })
        expect(r.code, `${args.join(" ")}: ${r.stdout}${r.stderr}`).toBe(code)
        outputs.push(`${r.stdout}${r.stderr}`)
      }
      expect(outputs[1]).toMatch(new RegExp(`"rotated":${before.size}\\b`))
      expect(outputs[4]).toMatch(/\bOK$/m)
      const after = await readTickets()
      expect(after.length).toBe(before.size + 10)
      expectAllRotated(before, after)
      // Failures too: a wrong password, an unreachable Redis.
      for (
        const bad of [{ DATABASE_URL: url.replace(encodeURIComponent(password), `${password}x`) }, {
          REDIS_URL: redis.url.replace(String(redis.port), "1")
        }]
      ) {
        const r = await runCli(["regenerate", "--log-level", "debug"], { env: { ...secretEnv, ...bad } })
        expect(r.code).not.toBe(0)
        outputs.push(`${r.stdout}${r.stderr}`)
      }
      const all = outputs.join("\n")
      expect(all).not.toContain(password)
      expect(all).not.toContain(redis.password)
      // Neither the tokens the run replaced nor the new ones.
      const tokens = new Set([...tokensBefore, ...after.map((t) => t.token)])
      const leaked = (all.match(/[0-9a-f]{32}/g) ?? []).filter((hex) => tokens.has(hex))
      expect(leaked).toEqual([])
    } finally {
      await redis.stop()
      await admin.query(`DROP USER '${user}'@'%', '${user}'@'localhost'`)
    }
  })
})
