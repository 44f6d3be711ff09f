/**
 * The SQL TicketRepo against real MariaDB: a span of the whole table is rotated as one range of the
 * clustered index (the i-th ticket takes the i-th token); when the site inserted tickets into the span after
 * it was read, the range is refused and its tickets go by key, as do pages of a scope with conditions.
 * Either way exactly the batch's tickets change, nothing else.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { ConfigProvider, Effect, Fiber, Layer, Metric, Option } from "effect"
import type * as mysql from "mysql2/promise"
import { randomBytes } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Db from "../src/Db.js"
import { Scope } from "../src/Domain.js"
import { TicketRepo } from "../src/TicketRepo.js"
import * as TicketRepoSql from "../src/TicketRepo.js"
import { missingTools, startPrivateMariadb } from "./support/privateMariadb.js"
import { adminConnection, createDatabase, servicesAvailable } from "./support/services.js"
import { seedFixture, snapshotOn, type Ticket, until } from "./support/tickets.js"

const noPrivateServer = missingTools("the test on a server of its own").length > 0

const tokens = (n: number) => Array.from({ length: n }, () => randomBytes(16).toString("hex"))

/** A 32-hex id strictly between `low` and `high` (ids are uniform random hex, so neighbours leave room). */
const idBetween = (low: string, high: string) => {
  const id = (BigInt(`0x${low}`) + 1n).toString(16).padStart(32, "0")
  if (!(id > low && id < high)) throw new Error(`no id between ${low} and ${high}`)
  return id
}

describe.skipIf(!servicesAvailable)("the SQL TicketRepo on MariaDB", () => {
  let db: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection

  /** How many batches each UPDATE form rotated while `f` ran (the repository's `rotations` metric). */
  const forms = async (f: () => Promise<unknown>) => {
    const read = () =>
      Promise.all(
        (["range", "key", "key after range"] as const).map((form) =>
          Effect.runPromise(Metric.value(Metric.tagged(TicketRepoSql.rotations, "form", form)))
        )
      )
    const before = await read()
    await f()
    const after = await read()
    return {
      range: after[0].count - before[0].count,
      key: after[1].count - before[1].count,
      fallback: after[2].count - before[2].count
    }
  }

  const run = <A, E>(
    effect: Effect.Effect<A, E, TicketRepo | SqlClient.SqlClient>,
    bounds: TicketRepoSql.ScanBounds = TicketRepoSql.scanBounds
  ) =>
    Effect.runPromise(Effect.scoped(effect.pipe(
      Effect.provide(
        Layer.effect(TicketRepo, TicketRepoSql.makeSql(bounds)).pipe(
          Layer.provideMerge(Db.layer({ maxConnections: 2 })),
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["DATABASE_URL", db.url]]))))
        )
      )
    )))

  const readTickets = () => snapshotOn(admin)

  /** Tickets whose token or updated_at differ between two snapshots. */
  const changedIds = (before: ReadonlyMap<string, Ticket>, after: ReadonlyMap<string, Ticket>) =>
    [...after.values()]
      .filter((t) => before.get(t.id)?.token !== t.token || before.get(t.id)?.updated_at !== t.updated_at)
      .map((t) => t.id)

  const pageOf = (scope: Scope, after: string, limit: number) =>
    run(Effect.flatMap(TicketRepo, (repo) => repo.page(scope, after, limit)))
  const page = async (scope: Scope, after: string, limit: number) => (await pageOf(scope, after, limit)).ids
  const rotate = (ids: ReadonlyArray<string>, values: ReadonlyArray<string>) =>
    run(Effect.flatMap(TicketRepo, (repo) => repo.rotate(ids, values, new Date())))
  const spansOf = (after: string, rows: number, count: number) =>
    run(Effect.flatMap(TicketRepo, (repo) => repo.spans(after, rows, count)))
  const spanOf = async (after: string, rows: number) => Option.fromNullable((await spansOf(after, rows, 1))[0])
  const spans = (scope: Scope) => run(Effect.flatMap(TicketRepo, (repo) => repo.canSpan(scope)))

  /**
   * Rotates a span as the pipeline does: as a range, or when that is refused, the tickets then in it by key
   * (`values` for the first ones, fresh tokens for any more). How many changed, and which forms did it.
   */
  const rotateSpanCounting = async (span: TicketRepoSql.Span, values: ReadonlyArray<string>) => {
    let rotated = 0
    const used = await forms(async () =>
      rotated = await run(Effect.gen(function*() {
        const repo = yield* TicketRepo
        return yield* repo.rotateSpan(span, values, new Date()).pipe(
          Effect.catchTag("SpanChanged", () =>
            Effect.flatMap(repo.spanIds(span), (ids) =>
              repo.rotate(ids, [...values, ...tokens(ids.length - values.length)], new Date())))
        )
      }))
    )
    return { rotated, ...used }
  }

  /** Rotates one page by key: how many tickets changed, and which UPDATE form did it. */
  const rotateCounting = async (ids: ReadonlyArray<string>, values: ReadonlyArray<string>) => {
    let rotated = 0
    const used = await forms(async () => (rotated = await rotate(ids, values)))
    return { rotated, ...used }
  }

  /** What `rotateCounting` gives for one batch of `rotated` tickets done by `form` (a refused span by key). */
  const oneBatch = (rotated: number, form: "range" | "key" | "fallback") => ({
    rotated,
    range: form === "range" ? 1 : 0,
    key: form === "range" ? 0 : 1,
    fallback: form === "fallback" ? 1 : 0
  })

  /** The page's tickets hold exactly the given tokens, and no other ticket changed. */
  const expectRotatedTo = async (
    before: ReadonlyMap<string, Ticket>,
    ids: ReadonlyArray<string>,
    values: ReadonlyArray<string>
  ) => {
    const after = await readTickets()
    expect(ids.map((id) => after.get(id)!.token)).toEqual(values)
    expect(changedIds(before, after)).toEqual(ids)
    return after
  }

  /** The first `limit` tickets, rotated as one span: by `form`, each to its token, no other ticket changed. */
  const expectFirstSpanRotatedBy = async (limit: number, form: "range" | "fallback") => {
    const before = await readTickets()
    const ids = await page(Scope.all, "", limit)
    const span = Option.getOrThrow(await spanOf("", limit))
    expect(span).toEqual({ after: "", through: ids.at(-1), rows: limit })
    const values = tokens(ids.length)
    expect(await rotateSpanCounting(span, values)).toEqual(oneBatch(limit, form))
    await expectRotatedTo(before, ids, values)
  }

  /** What the site does meanwhile: a ticket inserted between two neighbours (a copy of the first). Its id. */
  const insertBetween = async (low: string, high: string) => {
    const id = idBetween(low, high)
    await admin.query(
      "INSERT INTO `ticket` (`id`, `created_at`, `updated_at`, `deleted_at`, `name`, `token`, `order_id`) " +
        "SELECT ?, `created_at`, `updated_at`, NULL, 'inserted by the site', ?, `order_id` FROM `ticket` WHERE `id` = ?",
      [id, randomBytes(16).toString("hex"), low]
    )
    return id
  }

  /** The span, given `count` tokens, is refused as a range (counted so) and nothing changed since `before`. */
  const expectRefused = async (span: TicketRepoSql.Span, count: number, before: ReadonlyMap<string, Ticket>) => {
    const refused = await forms(() =>
      run(Effect.flip(Effect.flatMap(TicketRepo, (repo) => repo.rotateSpan(span, tokens(count), new Date()))))
    )
    expect(refused).toEqual({ range: 0, key: 0, fallback: 1 })
    expect(await readTickets(), "nothing changed").toEqual(before)
  }

  beforeAll(async () => {
    db = await createDatabase("tt_repo")
    admin = await adminConnection(db.name)
    await seedFixture({ env: { DATABASE_URL: db.url } }, { users: 20, orders: 200, tickets: 5000 })
  })

  afterAll(async () => {
    await admin?.end()
    await db?.drop()
  })

  it("rotates a span of the whole table as a range: the i-th ticket gets the i-th token, no other ticket changes", async () => {
    const before = await readTickets()
    const sorted = [...before.keys()].sort()
    const span = Option.getOrThrow(await spanOf(sorted[99]!, 1000))
    expect(span).toEqual({ after: sorted[99], through: sorted[1099], rows: 1000 })
    const ids = sorted.slice(100, 1100)
    const values = tokens(ids.length)
    expect(await rotateSpanCounting(span, values)).toEqual(oneBatch(1000, "range"))
    await expectRotatedTo(before, ids, values)
    // Fewer than a span left: none (the pipeline reads the tail as a page).
    expect(await spanOf(sorted.at(-100)!, 100)).toEqual(Option.none())
    expect(Option.isSome(await spanOf(sorted.at(-101)!, 100))).toBe(true)
    // Several in one statement, consecutive; fewer near the end of the table.
    expect(await spansOf(sorted[99]!, 1000, 3)).toEqual([
      { after: sorted[99], through: sorted[1099], rows: 1000 },
      { after: sorted[1099], through: sorted[2099], rows: 1000 },
      { after: sorted[2099], through: sorted[3099], rows: 1000 }
    ])
    expect(await spansOf(sorted.at(-2501)!, 1000, 4)).toEqual([
      { after: sorted.at(-2501), through: sorted.at(-1501), rows: 1000 },
      { after: sorted.at(-1501), through: sorted.at(-501), rows: 1000 }
    ])
  })

  it("spans only for the whole table: a scope with conditions goes by pages of ids", async () => {
    expect(await spans(Scope.all)).toBe(true)
    expect(await spans(new Scope({ ...Scope.all, liveOnly: true }))).toBe(false)
    expect(await spans(new Scope({ ...Scope.all, createdAfter: "2024-01-01T00:00:00Z" }))).toBe(false)
  })

  it("the range statement gives the i-th row of the range the i-th token, and refuses more rows than tokens", async () => {
    const ids = await page(Scope.all, "", 300)
    const run = (count: number, values: ReadonlyArray<string>, marker = randomBytes(8).toString("hex")) =>
      admin.execute(TicketRepoSql.rangeRotateStatement(count), [
        Buffer.from(values.join(""), "latin1"),
        marker,
        marker,
        Db.datetime(new Date()),
        "",
        ids.at(-1)!
      ])
    const before = await readTickets()
    await expect(run(299, tokens(299)), "a row past the last token is NULL, refused as a whole").rejects.toMatchObject({
      errno: 1048
    })
    expect(await readTickets()).toEqual(before)
    const values = tokens(300)
    const [result] = await run(300, values)
    expect(result).toMatchObject({ affectedRows: 300 })
    await expectRotatedTo(before, ids, values)
  })

  it("tokens that are not 32 ASCII characters: the span is refused as a range and goes by key, each to its own ticket", async () => {
    const ids = await page(Scope.all, "", 100)
    const values = [
      // 32 characters each, but one of them is not ASCII (34 bytes)
      ...tokens(49),
      `é${randomBytes(15).toString("hex")}é`,
      // 16 characters each
      ...tokens(50).map((token) => token.slice(0, 16))
    ]
    const before = await readTickets()
    const span = Option.getOrThrow(await spanOf("", 100))
    expect(await rotateSpanCounting(span, values)).toEqual(oneBatch(100, "fallback"))
    await expectRotatedTo(before, ids, values)
  })

  it("a ticket inserted into a span after it was read: the range is refused, then by key, the new ticket too", async () => {
    const ids = await page(Scope.all, "", 1000)
    const span = Option.getOrThrow(await spanOf("", 1000))
    const intruder = await insertBetween(ids[500]!, ids[501]!)
    const before = await readTickets()
    await expectRefused(span, 1000, before)
    const values = tokens(1000)
    expect(await rotateSpanCounting(span, values)).toEqual(oneBatch(1001, "fallback"))
    const after = await readTickets()
    const now = [...ids.slice(0, 501), intruder, ...ids.slice(501)]
    expect(changedIds(before, after)).toEqual(now)
    expect(new Set(now.map((id) => after.get(id)!.token)).size).toBe(1001)
  })

  it.skipIf(noPrivateServer)(
    "a server whose SQL mode is not strict: the tool's sessions are, so a span the site inserted into is still refused, never an empty token",
    async () => {
      // A private server whose sessions start without strict mode (the shared one's setting stays as it is):
      // this test's database and admin connection are that server's while it runs.
      const server = await startPrivateMariadb("tickets", () => ["--sql-mode="])
      const shared = { db, admin }
      try {
        db = { name: "tickets", url: `mysql://root@127.0.0.1:${server.port}/tickets`, drop: async () => {} }
        admin = await server.admin({ database: "tickets" })
        await seedFixture({ env: { DATABASE_URL: db.url } }, { users: 5, orders: 20, tickets: 300 })
        const [[{ mode }]] = (await admin.query("SELECT @@SESSION.sql_mode AS mode")) as unknown as [[{ mode: string }]]
        expect(mode).not.toMatch(/STRICT/)
        expect(await spans(Scope.all)).toBe(true)
        const ids = await page(Scope.all, "", 100)
        const span = Option.getOrThrow(await spanOf("", 100))
        await insertBetween(ids[50]!, ids[51]!)
        await expectRefused(span, 100, await readTickets())
      } finally {
        if (admin !== shared.admin) await admin.end()
        ;({ db, admin } = shared)
        await server.stop()
      }
    }
  )

  it("a ticket of a span deleted meanwhile: every other one gets its own new token, and is counted", async () => {
    const ids = await page(Scope.all, "", 1000)
    const span = Option.getOrThrow(await spanOf("", 1000))
    await admin.query("DELETE FROM `ticket` WHERE `id` = ?", [ids[700]])
    const before = await readTickets()
    const values = tokens(ids.length)
    expect(await rotateSpanCounting(span, values)).toEqual(oneBatch(999, "range"))
    const after = await readTickets()
    const kept = ids.filter((_, i) => i !== 700)
    const given = new Set(kept.map((id) => after.get(id)!.token))
    expect(given.size, "every remaining ticket has its own token").toBe(999)
    expect([...given].filter((token) => !values.includes(token))).toEqual([])
    expect(changedIds(before, after)).toEqual(kept)
  })

  it("a page of a scope on the ticket alone (--created-after) is rotated by key: older tickets in its range untouched", async () => {
    const before = await readTickets()
    const created = [...before.values()].map((t) => t.created_at).sort()
    const median = created[created.length >> 1]!
    const scope = new Scope({ ...Scope.all, createdAfter: `${median.replace(" ", "T")}Z` })
    const ids = await page(scope, "", 800)
    const inRange = [...before.values()].filter((t) => t.id >= ids[0]! && t.id <= ids.at(-1)!)
    expect(inRange.length).toBeGreaterThan(ids.length)
    const values = tokens(ids.length)
    // As a range the statement would read, and lock, the older tickets between the page's ids too.
    expect(await spans(scope)).toBe(false)
    expect(await rotateCounting(ids, values)).toEqual(oneBatch(800, "key"))
    await expectRotatedTo(before, ids, values)
  })

  it("a sparse scope is read a stretch at a time: short or empty pages before the end, none missed, none twice", async () => {
    const sorted = [...(await readTickets()).values()].sort((a, b) => (a.id < b.id ? -1 : 1))
    const picked = sorted.filter((_, i) => i % 700 === 7)
    const rare = picked.map((t) => t.id)
    const created = "2031-06-01 00:00:00.000000"
    await admin.query("UPDATE `ticket` SET `created_at` = ? WHERE `id` IN (?)", [created, rare])
    try {
      const scope = new Scope({ ...Scope.all, createdAfter: "2031-01-01T00:00:00Z" })
      // Stretches of 40 to 160 tickets, at most about 300 read per page call.
      const bounds = { first: 4, max: 160, perPage: 300 }
      const pages: Array<TicketRepoSql.Page> = []
      for (let after = "", end = false; !end;) {
        const p = await run(Effect.flatMap(TicketRepo, (repo) => repo.page(scope, after, 10)), bounds)
        expect(p.through > after || p.end).toBe(true)
        pages.push(p)
        after = p.through
        end = p.end
      }
      expect(pages.flatMap((p) => p.ids)).toEqual(rare)
      // 5000 tickets read at most ~300 (one stretch more) at a time: many calls, most of them empty.
      expect(pages.length).toBeGreaterThan(5000 / 500)
      expect(pages.filter((p) => p.ids.length === 0 && !p.end).length).toBeGreaterThan(0)
      for (const p of pages) {
        // `through` is never short of what the page holds, and nothing in scope lies between them.
        expect(p.ids.every((id) => id <= p.through)).toBe(true)
      }
      // Unbounded by default: a full page in one call when the scope is dense enough.
      const dense = await pageOf(Scope.all, "", 10)
      expect(dense).toEqual({ ids: sorted.slice(0, 10).map((t) => t.id), through: sorted[9]!.id, end: false })
    } finally {
      for (const t of picked) {
        await admin.query("UPDATE `ticket` SET `created_at` = ? WHERE `id` = ?", [t.created_at, t.id])
      }
    }
  })

  it("a page of a scope that needs orders and users (--live-only) is rotated by key", async () => {
    await admin.query("UPDATE `ticket` SET `deleted_at` = `created_at` WHERE MOD(CONV(RIGHT(`id`, 2), 16, 10), 3) = 0")
    const before = await readTickets()
    const liveOnly = new Scope({ ...Scope.all, liveOnly: true })
    const ids = await page(liveOnly, "", 500)
    const inRange = [...before.values()].filter((t) => t.id >= ids[0]! && t.id <= ids.at(-1)!)
    expect(inRange.length).toBeGreaterThan(ids.length)
    const values = tokens(ids.length)
    expect(await spans(liveOnly)).toBe(false)
    expect(await rotateCounting(ids, values)).toEqual(oneBatch(ids.length, "key"))
    await expectRotatedTo(before, ids, values)
  })

  it("pages and range UPDATEs stay on the ticket's primary key: no sort of the scope per page, no range found by date", async () => {
    const explain = async (text: string, params: ReadonlyArray<unknown>) =>
      (await admin.query(`EXPLAIN ${text}`, [...params] as Array<string>))[0] as Array<Record<string, unknown>>
    const sorted = [...(await readTickets()).keys()]
    const narrow = new Scope({
      ...Scope.all,
      createdAfter: "2026-01-01T00:00:00.000Z",
      createdBefore: "2026-01-10T00:00:00.000Z"
    })
    const scopes = [
      Scope.all,
      new Scope({ ...Scope.all, liveOnly: true }),
      new Scope({ ...Scope.all, liveOnly: true, emailDomain: "example.com" })
    ]
    for (const scope of scopes) {
      const { params, text } = TicketRepoSql.keysetPage("mysql", "", scope, sorted[100]!, 1000)
      const plan = await explain(text, params)
      expect(plan[0], scope.description).toMatchObject({ table: "t", key: "PRIMARY" })
      expect(plan.map((row) => String(row.Extra)).join("; "), scope.description).not.toMatch(/filesort|temporary/)
    }
    // A scoped page within a stretch, the narrow date range included: on the primary key, never the
    // created_at index (which would read, and sort, the whole date range for every page).
    for (const scope of [narrow, ...scopes.slice(1)]) {
      const { params, text } = TicketRepoSql.keysetPage("mysql", "", scope, sorted[100]!, 1000, sorted[4100]!)
      const plan = await explain(text, params)
      expect(plan[0], scope.description).toMatchObject({ table: "t", key: "PRIMARY" })
      expect(plan.map((row) => String(row.Extra)).join("; "), scope.description).not.toMatch(/filesort|temporary/)
    }
    const update = await explain(TicketRepoSql.rangeRotateStatement(1000), [
      Buffer.alloc(32_000),
      "m",
      "m",
      "2026-01-01 00:00:00.000000",
      sorted[0]!,
      sorted[1000]!
    ])
    expect(update[0]).toMatchObject({ table: "t", key: "PRIMARY" })
  })

  it("a new token equal to another ticket's is a DuplicateToken that does not show that token", async () => {
    const before = await readTickets()
    const ids = await page(Scope.all, "", 10)
    const taken = [...before.values()].find((t) => !ids.includes(t.id))!.token
    const values = [...tokens(9), taken]
    const error = await run(
      Effect.flip(Effect.flatMap(TicketRepo, (repo) => repo.rotate(ids, values, new Date())))
    )
    expect(error).toMatchObject({ _tag: "DuplicateToken" })
    expect(error.message).toContain("Duplicate entry for key")
    expect(JSON.stringify(error) + error.message).not.toContain(taken)
    expect(await readTickets()).toEqual(before)
  })

  it("a duplicate token from the range statement refuses the span, whose tickets then go by key", async () => {
    // A trigger makes the first UPDATE statement fail as a duplicate on the token's key, as a server that cut
    // the tokens wrongly would; the by-key statement after it runs clean.
    await admin.query("CREATE TABLE `dup_counter` (`n` int NOT NULL) ENGINE=MyISAM")
    await admin.query("INSERT INTO `dup_counter` VALUES (0)")
    await admin.query(
      "CREATE TRIGGER `dup_once` BEFORE UPDATE ON `ticket` FOR EACH ROW BEGIN " +
        "UPDATE `dup_counter` SET `n` = `n` + 1; " +
        "IF (SELECT `n` FROM `dup_counter`) = 1 THEN " +
        "SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = 'Duplicate entry ''x'' for key ''token'''; " +
        "END IF; END"
    )
    try {
      await expectFirstSpanRotatedBy(100, "fallback")
    } finally {
      await admin.query("DROP TRIGGER `dup_once`")
      await admin.query("DROP TABLE `dup_counter`")
    }
  })

  it("a nullable token column (a row past the last token would silently get NULL): no spans, every batch by key", async () => {
    await expectFirstSpanRotatedBy(1000, "range")
    await admin.query("ALTER TABLE `ticket` MODIFY `token` varchar(255) NULL")
    try {
      expect(await spans(Scope.all)).toBe(false)
    } finally {
      await admin.query("ALTER TABLE `ticket` MODIFY `token` varchar(255) NOT NULL")
    }
  })

  it("a batch waits for a row the site holds at most the tool's short lock wait (not the server's 50 s), then fails as transient", async () => {
    const [[{ timeout }]] = (await admin.query("SELECT @@GLOBAL.innodb_lock_wait_timeout AS timeout")) as unknown as [
      [{ timeout: number }]
    ]
    expect(timeout, "the server's own setting is the longer one").toBeGreaterThan(Db.lockWaitSeconds * 3)
    const ids = await page(Scope.all, "", 200)
    const site = await adminConnection(db.name)
    try {
      await site.query("BEGIN")
      await site.query("SELECT `id` FROM `ticket` WHERE `id` = ? FOR UPDATE", [ids[100]])
      const started = Date.now()
      const error = await run(
        Effect.flip(Effect.flatMap(TicketRepo, (repo) => repo.rotate(ids, tokens(ids.length), new Date())))
      )
      const waited = (Date.now() - started) / 1000
      expect(error).toMatchObject({ _tag: "DatabaseError", transient: true })
      expect(String(error.message)).toContain("Lock wait timeout")
      expect(waited).toBeGreaterThanOrEqual(Db.lockWaitSeconds - 0.5)
      expect(waited).toBeLessThan(Db.lockWaitSeconds * 3)
    } finally {
      await site.query("ROLLBACK")
      await site.end()
    }
  })

  it("a statement whose caller is interrupted is killed on the server, so that closing the pool does not wait for it", async () => {
    const marker = `tt_kill_${randomBytes(4).toString("hex")}`
    const running = async () =>
      ((await admin.query(
        "SELECT `ID` FROM information_schema.PROCESSLIST WHERE `INFO` LIKE ? AND `ID` <> CONNECTION_ID()",
        [`%${marker}%`]
      ))[0] as Array<unknown>).length
    const started = Date.now()
    await run(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const slow = Db.onOwnConnection("mysql")(sql.unsafe(`SELECT SLEEP(60) AS ${marker}`))
      const fiber = yield* Effect.fork(slow)
      yield* Effect.promise(async () => {
        for (let i = 0; i < 50 && await running() === 0; i++) await new Promise((r) => setTimeout(r, 100))
      })
      expect(yield* Effect.promise(running)).toBe(1)
      yield* Fiber.interrupt(fiber)
    }))
    // The layer (and its pool) closed at once rather than after the 60 s statement.
    expect((Date.now() - started) / 1000).toBeLessThan(30)
    // Killed on the server: gone from its process list within moments (KILL CONNECTION returns before that).
    await until("the statement is gone from the server", async () => (await running()) === 0, { timeoutMs: 5_000 })
  })

  it("a page holding an id that is not 32 lowercase hex fails as SchemaMismatch before anything is rotated", async () => {
    const bad = "FFFFFFFFFFFF4FFF8FFFFFFFFFFFFFFF"
    await admin.query(
      "INSERT INTO `ticket` (`id`, `created_at`, `updated_at`, `deleted_at`, `name`, `token`, `order_id`) " +
        "SELECT ?, NOW(6), NOW(6), NULL, 'odd id', ?, `order_id` FROM `ticket` LIMIT 1",
      [bad, randomBytes(16).toString("hex")]
    )
    try {
      // The collation sorts it among the ids starting with f.
      const error = await run(Effect.flip(Effect.flatMap(TicketRepo, (repo) => repo.page(Scope.all, "f", 1000))))
      expect(error._tag).toBe("SchemaMismatch")
      expect(error.message).toMatch(
        new RegExp(`^a ticket's id does not match the ticket app \\(ticket id "${bad}" is `)
      )
    } finally {
      await admin.query("DELETE FROM `ticket` WHERE `id` = ?", [bad])
    }
  })
})
