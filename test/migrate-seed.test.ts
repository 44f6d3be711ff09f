/**
 * `migrate` and `seed` through the built CLI, on the embedded SQLite file and on MariaDB, and the errors an
 * operator meets before a regeneration ever starts (no schema, unreachable or malformed DATABASE_URL, bad
 * flags): right exit code, one clean line, no secret, nothing written.
 */
import type * as mysql from "mysql2/promise"
import { spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Scope } from "../src/Domain.js"
import { keysetPage } from "../src/TicketRepo.js"
import { type CliResult, mainJs, runCli, spawnCli } from "./support/cli.js"
import { missingTools, startPrivateMariadb } from "./support/privateMariadb.js"
import { adminConnection, createDatabase, createRedisPrefix, redisUrl, servicesAvailable } from "./support/services.js"
import { Sqlite } from "./support/sqlite.js"
import { describeResult, expectExit, killWhileRunning, seedFixture } from "./support/tickets.js"

const hex32 = /^[0-9a-f]{32}$/
const noPrivateServer = missingTools("the test on a server of its own").length > 0

/** Non-empty lines of everything the process printed. */
const linesOf = (r: CliResult) => `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => l.trim() !== "")

// Embedded SQLite (DATABASE_URL unset)

describe("migrate and seed on the embedded SQLite database", () => {
  let cwd: string
  const env = { DATABASE_URL: undefined, REDIS_URL: undefined, REDIS_PREFIX: undefined }
  const cli = (args: ReadonlyArray<string>) => runCli(args, { cwd, env })

  beforeAll(() => {
    cwd = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-seed-"))
  })
  afterAll(() => {
    if (cwd !== undefined) Fs.rmSync(cwd, { recursive: true, force: true })
  })

  it("refuses to seed, regenerate or report before migrate, pointing to migrate, and creates no file", async () => {
    for (const args of [["seed", "tickets", "--count", "10"], ["regenerate"], ["status"], ["verify"]]) {
      const r = await expectExit(cli(args), 2)
      expect(r.stderr).toMatch(/^error: /m)
      expect(r.stderr).toContain("migrate")
      expect(linesOf(r)).toHaveLength(1)
    }
    expect(Fs.existsSync(Path.join(cwd, "data"))).toBe(false)
  })

  it("under --json, a failure is also one JSON object on stdout (regenerate, status, verify alike)", async () => {
    for (const args of [["regenerate", "--json"], ["status", "--json"], ["verify", "--json"]]) {
      const r = await expectExit(cli(args), 2)
      expect(JSON.parse(r.stdout), describeResult(r)).toMatchObject({ error: "SchemaMissing", exitCode: 2 })
      expect(r.stdout.trim().split("\n")).toHaveLength(1)
      expect(r.stderr).toMatch(/^error: .*migrate/)
    }
    expect(Fs.existsSync(Path.join(cwd, "data"))).toBe(false)
  })

  it("migrates, and a second migrate says the schema is up to date", async () => {
    const first = await expectExit(cli(["migrate"]), 0)
    expect(first.stdout.trim()).toBe(
      "migrated sqlite:data/tickets.sqlite: created user, order, ticket, ticket_tokens_state (migrations " +
        "0001_create_tables, 0002_checkpoint_table)"
    )
    const second = await expectExit(cli(["migrate"]), 0)
    expect(second.stdout).toContain("up to date")
    expect(second.stdout).not.toContain("0001_create_tables")
    expect(Fs.existsSync(Path.join(cwd, "data", "tickets.sqlite"))).toBe(true)
  })

  it("a file that cannot be opened (a folder's path, a folder that cannot be made): one line on the file path (exit 1)", async () => {
    Fs.mkdirSync(Path.join(cwd, "a-folder"))
    for (const url of ["sqlite:a-folder", "sqlite:/proc/no-such/tickets.sqlite"]) {
      const r = await expectExit(runCli(["migrate"], { cwd, env: { ...env, DATABASE_URL: url } }), 1)
      expect(linesOf(r), describeResult(r)).toEqual([
        expect.stringMatching(new RegExp(`^error: cannot connect to the database at ${url}: .*Check the file path`))
      ])
    }
  })

  it("refuses children without parents", async () => {
    const tickets = await expectExit(cli(["seed", "tickets", "--count", "10"]), 2)
    expect(tickets.stderr).toContain("no orders: run `seed orders` first")
    const orders = await expectExit(cli(["seed", "orders", "--count", "10"]), 2)
    expect(orders.stderr).toContain("no users: run `seed users` first")
  })

  it("seeds users, orders and tickets with valid keys, references and tokens", async () => {
    await expectExit(cli(["seed", "users", "--count", "49"]), 0)
    expect((await expectExit(cli(["seed", "users", "--count", "1"]), 0)).stdout).toMatch(/^seeded 1 user in /m)
    await expectExit(cli(["seed", "orders", "--count", "500"]), 0)
    const seeded = await expectExit(cli(["seed", "tickets", "--count", "20000"]), 0)
    expect(seeded.stdout).toContain("seeded 20000 tickets")

    const db = new Sqlite(Path.join(cwd, "data", "tickets.sqlite"), { readonly: true, fileMustExist: true })
    try {
      const one = (sql: string) => Number(Object.values(db.prepare(sql).get() ?? {})[0])
      expect(one(`SELECT COUNT(*) FROM "user"`)).toBe(50)
      expect(one(`SELECT COUNT(*) FROM "order"`)).toBe(500)
      expect(one(`SELECT COUNT(*) FROM "ticket"`)).toBe(20000)
      expect(one(`SELECT COUNT(*) FROM "ticket" t LEFT JOIN "order" o ON o.id = t.order_id WHERE o.id IS NULL`))
        .toBe(0)
      expect(one(`SELECT COUNT(*) FROM "order" o LEFT JOIN "user" u ON u.id = o.user_id WHERE u.id IS NULL`)).toBe(0)
      expect(one(`SELECT COUNT(DISTINCT token) FROM "ticket"`)).toBe(20000)
      expect(one(`SELECT COUNT(DISTINCT email) FROM "user"`)).toBe(50)

      const tickets = db.prepare(`SELECT id, token, order_id, created_at, updated_at FROM "ticket"`).all()
      const badTicket = tickets.find((t) =>
        !hex32.test(String(t.id)) || !hex32.test(String(t.token)) || !hex32.test(String(t.order_id))
      )
      expect(badTicket).toBeUndefined()
      // Datetimes as Django stores them: UTC text with microseconds.
      const datetime = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$/
      expect(tickets.find((t) => !datetime.test(String(t.created_at)) || !datetime.test(String(t.updated_at))))
        .toBeUndefined()
      for (const table of ["user", "order"]) {
        const ids = db.prepare(`SELECT id FROM "${table}"`).all().map((r) => String(r.id))
        expect(ids.filter((id) => !hex32.test(id)), table).toEqual([])
      }
    } finally {
      db.close()
    }
  })

  it("keyset pages walk the primary key whatever the scope (no sort of the whole date range per page)", () => {
    const db = new Sqlite(Path.join(cwd, "data", "tickets.sqlite"), { readonly: true, fileMustExist: true })
    try {
      const scopes = [
        Scope.all,
        new Scope({
          ...Scope.all,
          createdAfter: "2020-01-01T00:00:00.000Z",
          createdBefore: "2099-01-01T00:00:00.000Z"
        }),
        new Scope({
          liveOnly: true,
          emailDomain: "example.com",
          createdAfter: "2020-01-01T00:00:00.000Z",
          createdBefore: null
        })
      ]
      for (const scope of scopes) {
        const { params, text } = keysetPage("sqlite", "", scope, "", 1000)
        const plan = db.prepare(`EXPLAIN QUERY PLAN ${text}`).all(...params).map((row) => String(row.detail))
        expect(plan[0], scope.description).toMatch(
          /^SEARCH t USING (COVERING )?INDEX sqlite_autoindex_ticket_1 \(id>\?\)/
        )
        expect(plan.join("; "), scope.description).not.toMatch(/TEMP B-TREE|created_at/)
      }
    } finally {
      db.close()
    }
  })

  it("a dry run warns of a token column without a unique index of its own (a partial one does not count)", async () => {
    const plan = async (url: string) =>
      JSON.parse(
        (await expectExit(
          runCli(["regenerate", "--dry-run", "--json"], { cwd, env: { ...env, DATABASE_URL: url } }),
          0
        )).stdout
      )
        .schemaWarnings
    expect(await plan("sqlite:data/tickets.sqlite")).toEqual([])
    const copy = Path.join(cwd, "copy.sqlite")
    Fs.copyFileSync(Path.join(cwd, "data", "tickets.sqlite"), copy)
    const db = new Sqlite(copy, { fileMustExist: true })
    try {
      for (
        const statement of [
          `ALTER TABLE "ticket" RENAME TO "ticket_old"`,
          `CREATE TABLE "ticket" ("id" char(32) NOT NULL PRIMARY KEY, "created_at" datetime NOT NULL,
            "updated_at" datetime NOT NULL, "deleted_at" datetime NULL, "name" varchar(255) NOT NULL,
            "token" varchar(255) NOT NULL, "order_id" char(32) NOT NULL)`,
          `INSERT INTO "ticket" SELECT * FROM "ticket_old"`,
          `DROP TABLE "ticket_old"`,
          `CREATE UNIQUE INDEX "ticket_live_token" ON "ticket" ("token") WHERE "deleted_at" IS NULL`
        ]
      ) db.prepare(statement).run()
    } finally {
      db.close()
    }
    expect(await plan(`sqlite:${copy}`)).toEqual([expect.stringMatching(/^ticket\.token has no unique index/)])
  })
})

// A database file this user may not write

/**
 * How the test gets a user that may not write a file: itself unless it is root (who may write anything),
 * else `nobody` through runuser, who must be able to run the CLI from where it lies. Undefined with the
 * reason when neither works.
 */
const unprivileged = (): { readonly asUser: string | undefined } | { readonly reason: string } => {
  if (process.getuid?.() !== 0) return { asUser: undefined }
  const probe = spawnSync("runuser", [
    "-u",
    "nobody",
    "--",
    process.execPath,
    "-e",
    `require("fs").accessSync(${JSON.stringify(mainJs)}, 4)`
  ])
  return probe.status === 0
    ? { asUser: "nobody" }
    : {
      reason: `running as root, and nobody cannot run ${mainJs} (${
        probe.error?.message ?? probe.stderr.toString().trim()
      })`
    }
}
const withoutWrite = unprivileged()

describe.skipIf("reason" in withoutWrite)(
  `a SQLite file this user may not write${"reason" in withoutWrite ? ` (skipped: ${withoutWrite.reason})` : ""}`,
  () => {
    const asUser = "asUser" in withoutWrite ? withoutWrite.asUser : undefined
    const env = { DATABASE_URL: undefined, REDIS_URL: undefined }
    /** A seeded embedded database in a folder of its own, for `f`; gone afterwards. */
    const withSeeded = async (f: (cwd: string, file: string) => Promise<void>) => {
      const cwd = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-readonly-"))
      try {
        await seedFixture({ cwd, env }, { users: 3, orders: 3, tickets: 30 })
        await f(cwd, Path.join(cwd, "data", "tickets.sqlite"))
      } finally {
        Fs.chmodSync(Path.join(cwd, "data"), 0o755)
        Fs.rmSync(cwd, { recursive: true, force: true })
      }
    }

    it("regenerate and its dry run say so in one line (exit 2), before anything is written; status still reads it", () =>
      withSeeded(async (cwd, file) => {
        // The folder stays writable (SQLite's shared-memory files go there); the file is not.
        Fs.chmodSync(cwd, 0o777)
        Fs.chmodSync(Path.join(cwd, "data"), 0o777)
        Fs.chmodSync(file, 0o444)
        const before = Fs.readFileSync(file)
        for (const args of [["regenerate", "--dry-run"], ["regenerate"], ["regenerate", "--json"]]) {
          const r = await expectExit(runCli(args, { cwd, env, asUser }), 2)
          expect(r.stderr.trim().split("\n"), describeResult(r)).toEqual([
            `error: the database file ${Fs.realpathSync(file)} may not be written by this user (EACCES): let this ` +
            "user write it and its folder (where SQLite keeps its write-ahead log), and rerun; nothing was changed."
          ])
        }
        expect(Fs.readFileSync(file).equals(before)).toBe(true)
        const status = await expectExit(runCli(["status"], { cwd, env, asUser }), 0)
        expect(status.stdout).toContain("no run is recorded")
      }))

    it("a folder it may not write is no obstacle while the write-ahead log it may write is there (the site has the file open)", () =>
      withSeeded(async (cwd, file) => {
        // Held open in WAL mode, as by the site: its -wal and -shm files stay.
        const site = new Sqlite(file, { fileMustExist: true })
        try {
          site.prepare("PRAGMA journal_mode = WAL").get()
          site.prepare("SELECT COUNT(*) FROM ticket").get()
          for (const path of [file, `${file}-wal`, `${file}-shm`]) Fs.chmodSync(path, 0o666)
          Fs.chmodSync(cwd, 0o755)
          Fs.chmodSync(Path.join(cwd, "data"), 0o555)
          const run = await expectExit(runCli(["regenerate", "--json"], { cwd, env, asUser }), 0)
          expect(JSON.parse(run.stdout)).toMatchObject({ status: "completed", rotated: 30 })
        } finally {
          site.close()
        }
      }))
  }
)

// Signals before the program has loaded

describe("a signal while the program loads", () => {
  it("ends the command at once, saying so (under --json, as its one object), with 130 or 143", async () => {
    const cwd = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-early-"))
    const heard = `${cwd}.heard`
    try {
      const cases = [
        [["status", "--json"], "SIGINT", 130, { ok: false, error: "Interrupted" }],
        [["regenerate", "--json"], "SIGTERM", 143, { status: "interrupted", rotated: 0 }],
        [["seed", "users"], "SIGINT", 130, undefined]
      ] as const
      for (const [args, signal, code, json] of cases) {
        Fs.rmSync(heard, { force: true })
        // The handlers come first, then half a second of loading: the signal lands in it. The preload
        // tells when the program listens.
        const run = spawnCli(args, {
          cwd,
          env: {
            DATABASE_URL: undefined,
            REDIS_URL: undefined,
            NODE_OPTIONS: `--import ${Path.join(import.meta.dirname, "support", "signalsHeard.mjs")}`,
            SIGNALS_HEARD_FILE: heard
          }
        })
        while (!Fs.existsSync(heard) && run.child.exitCode === null) await sleep(2)
        run.child.kill(signal)
        const result = await run.result
        expect(result.code, describeResult(result)).toBe(code)
        expect(result.stderr.trim()).toBe("stopped by a signal while starting: nothing was changed")
        if (json === undefined) {
          expect(result.stdout).toBe("")
        } else {
          expect(JSON.parse(result.stdout)).toEqual({ ...json, message: expect.stringMatching(/^stopped by a signal/) })
        }
      }
      expect(Fs.readdirSync(cwd)).toEqual([])
    } finally {
      Fs.rmSync(cwd, { recursive: true, force: true })
      Fs.rmSync(heard, { force: true })
    }
  })
})

// MariaDB

describe.skipIf(!servicesAvailable)("migrate and seed on MariaDB", () => {
  let db: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection
  const cli = (args: ReadonlyArray<string>) => runCli(args, { env: { DATABASE_URL: db.url } })
  const rows = async (sql: string, params: Array<unknown> = []) =>
    (await admin.query(sql, params))[0] as Array<Record<string, unknown>>
  const one = async (sql: string, params: Array<unknown> = []) =>
    Number(Object.values((await rows(sql, params))[0]!)[0])

  beforeAll(async () => {
    db = await createDatabase("tt_seed")
    admin = await adminConnection(db.name)
  })
  afterAll(async () => {
    await admin?.end()
    await db?.drop()
  })

  it("migrates, and a second migrate says the schema is up to date", async () => {
    const first = await expectExit(cli(["migrate"]), 0)
    expect(first.stdout).toContain("0001_create_tables")
    expect(first.stdout).toContain("0002_checkpoint_table")
    const second = await expectExit(cli(["migrate"]), 0)
    expect(second.stdout).toContain("up to date")
  })

  it("creates the Django schema: types, nullability, unique keys, foreign keys and indexes", async () => {
    const columns = await rows(
      `SELECT TABLE_NAME AS t, COLUMN_NAME AS c, COLUMN_TYPE AS type, IS_NULLABLE AS nullable
       FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN ('user', 'order', 'ticket')`,
      [db.name]
    )
    const actual = Object.fromEntries(columns.map((r) => [`${r.t}.${r.c}`, `${r.type} ${r.nullable}`]))
    const common = (t: string) => ({
      [`${t}.id`]: "char(32) NO",
      [`${t}.created_at`]: "datetime(6) NO",
      [`${t}.updated_at`]: "datetime(6) NO",
      [`${t}.deleted_at`]: "datetime(6) YES"
    })
    expect(actual).toEqual({
      ...common("user"),
      "user.password": "varchar(128) NO",
      "user.last_login": "datetime(6) YES",
      "user.first_name": "varchar(150) NO",
      "user.last_name": "varchar(150) NO",
      "user.email": "varchar(254) NO",
      ...common("order"),
      "order.name": "varchar(255) NO",
      "order.user_id": "char(32) NO",
      ...common("ticket"),
      "ticket.name": "varchar(255) NO",
      "ticket.token": "varchar(255) NO",
      "ticket.order_id": "char(32) NO"
    })

    // Indexes as (table, index) → ordered columns and uniqueness.
    const stats = await rows(
      `SELECT TABLE_NAME AS t, INDEX_NAME AS i, NON_UNIQUE AS nu, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) AS cols
       FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN ('user', 'order', 'ticket')
       GROUP BY TABLE_NAME, INDEX_NAME, NON_UNIQUE`,
      [db.name]
    )
    const indexes = stats.map((r) => ({ table: String(r.t), columns: String(r.cols), unique: Number(r.nu) === 0 }))
    const has = (table: string, columns: string, unique: boolean) =>
      indexes.some((i) => i.table === table && i.columns === columns && i.unique === unique)
    expect(has("user", "id", true) && has("order", "id", true) && has("ticket", "id", true)).toBe(true)
    expect(has("ticket", "token", true), "unique index on ticket.token").toBe(true)
    expect(has("user", "email", true), "unique index on user.email").toBe(true)
    expect(indexes.some((i) => i.table === "ticket" && i.columns.split(",")[0] === "created_at")).toBe(true)
    expect(indexes.some((i) => i.table === "ticket" && i.columns.split(",")[0] === "order_id")).toBe(true)

    const fks = await rows(
      `SELECT TABLE_NAME AS t, COLUMN_NAME AS c, REFERENCED_TABLE_NAME AS rt, REFERENCED_COLUMN_NAME AS rc
       FROM information_schema.KEY_COLUMN_USAGE
       WHERE TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME IS NOT NULL ORDER BY TABLE_NAME`,
      [db.name]
    )
    expect(fks.map((r) => `${r.t}.${r.c}->${r.rt}.${r.rc}`)).toEqual([
      "order.user_id->user.id",
      "ticket.order_id->order.id"
    ])
  })

  it("refuses to seed tickets before any orders, inserting nothing", async () => {
    const r = await expectExit(cli(["seed", "tickets", "--count", "100"]), 2)
    expect(r.stderr).toContain("no orders: run `seed orders` first")
    expect(linesOf(r)).toHaveLength(1)
    expect(await one("SELECT COUNT(*) FROM `ticket`")).toBe(0)
  })

  it("seeds twice without email collisions, then orders and tickets with valid references", async () => {
    await expectExit(cli(["seed", "users", "--count", "300"]), 0)
    await expectExit(cli(["seed", "users", "--count", "300"]), 0)
    await expectExit(cli(["seed", "orders", "--count", "3000"]), 0)
    await expectExit(cli(["seed", "tickets", "--count", "50000"]), 0)

    expect(await one("SELECT COUNT(*) FROM `user`")).toBe(600)
    expect(await one("SELECT COUNT(DISTINCT `email`) FROM `user`")).toBe(600)
    expect(await one("SELECT COUNT(*) FROM `order`")).toBe(3000)
    expect(await one("SELECT COUNT(*) FROM `ticket`")).toBe(50000)
    expect(await one("SELECT COUNT(DISTINCT `token`) FROM `ticket`")).toBe(50000)
    expect(
      await one("SELECT COUNT(*) FROM `ticket` t LEFT JOIN `order` o ON o.`id` = t.`order_id` WHERE o.`id` IS NULL")
    ).toBe(0)
    expect(
      await one("SELECT COUNT(*) FROM `order` o LEFT JOIN `user` u ON u.`id` = o.`user_id` WHERE u.`id` IS NULL")
    ).toBe(0)
    // Every order's user and every ticket's order is among the seeded rows, spread over more than a handful.
    expect(await one("SELECT COUNT(DISTINCT `order_id`) FROM `ticket`")).toBeGreaterThan(2500)
    // BINARY: MariaDB's REGEXP is case-insensitive on a case-insensitive collation.
    for (const [table, column] of [["user", "id"], ["order", "id"], ["ticket", "id"], ["ticket", "token"]]) {
      expect(
        await one(`SELECT COUNT(*) FROM \`${table}\` WHERE BINARY \`${column}\` NOT REGEXP '^[0-9a-f]{32}$'`),
        `${table}.${column}`
      ).toBe(0)
    }
    expect(await one("SELECT COUNT(*) FROM `ticket` WHERE `updated_at` < `created_at`")).toBe(0)
  })

  /** Seeds `count` tickets while killing the seeder's connections that match `condition`: all retried, exact. */
  const seedUnderKills = async (count: number, condition: string, pause: number, leastKills: number) => {
    const start = await one("SELECT COUNT(*) FROM `ticket`")
    const seeding = spawnCli(["seed", "tickets", "--count", String(count)], { env: { DATABASE_URL: db.url } })
    const kills = await killWhileRunning(admin, db.name, seeding.child, { condition, most: 3, pause })
    const result = await seeding.result
    expect(result.code, result.stderr).toBe(0)
    expect(kills, "connections killed while seeding").toBeGreaterThanOrEqual(leastKills)
    expect(await one("SELECT COUNT(*) FROM `ticket`")).toBe(start + count)
    expect(await one("SELECT COUNT(DISTINCT `token`) FROM `ticket`")).toBe(start + count)
  }

  it("connections killed mid-seed: each INSERT is retried on a fresh connection and the count is exact", async () => {
    // Long enough (3-10 s) for several kills to land whatever the host's speed: 150,000 once took 1.2 s.
    await seedUnderKills(400000, "`COMMAND` <> 'Sleep'", 100, 2)
  })

  it("connections killed while the seeder reads the orders' ids: each page read is retried", async () => {
    // Enough orders for a dozen pages of ids to read before the first INSERT.
    await expectExit(cli(["seed", "orders", "--count", "250000"]), 0)
    await seedUnderKills(5000, "`INFO` LIKE 'SELECT `id` FROM `order`%'", 0, 1)
  })

  it("Ctrl-C mid-seed: the INSERTs in flight finish, and the line says how many were kept and how to add the rest", async () => {
    const start = await one("SELECT COUNT(*) FROM `ticket`")
    // New ids are time-ordered: the highest one moves once the first INSERT commits (a COUNT while the seed
    // inserts could take far longer than the seed).
    const highest = async () => String((await rows("SELECT MAX(`id`) AS `m` FROM `ticket`"))[0]?.m)
    const before = await highest()
    const seeding = spawnCli(["seed", "tickets", "--count", "400000"], { env: { DATABASE_URL: db.url } })
    while ((await highest()) === before) {
      expect(seeding.child.exitCode, "still seeding").toBeNull()
      await sleep(20)
    }
    seeding.child.kill("SIGINT")
    const result = await seeding.result
    expect(result.code, result.stderr).toBe(130)
    const kept = (await one("SELECT COUNT(*) FROM `ticket`")) - start
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(400000)
    expect(result.stdout).toContain(
      `stopped: the ${kept} tickets inserted stay; to add the other ${400000 - kept}, run \`seed tickets --count ${
        400000 - kept
      }\``
    )
    // Said once: not also as a stop before inserting.
    expect(result.stderr).not.toContain("stopped by a signal")
  })

  /**
   * `seed tickets --count count` (expected to exit `code`) while a trigger counts the tickets' row attempts
   * in a table of `engine` and, when the count meets `condition`, raises what it says.
   */
  const seedWithTrigger = async (engine: string, condition: string, count: number, code: number) => {
    await admin.query(`CREATE TABLE \`tt_seed_counter\` (\`n\` INT NOT NULL) ENGINE=${engine}`)
    await admin.query("INSERT INTO `tt_seed_counter` VALUES (0)")
    await admin.query(
      "CREATE TRIGGER `tt_seed_trigger` BEFORE INSERT ON `ticket` FOR EACH ROW BEGIN " +
        "UPDATE `tt_seed_counter` SET `n` = `n` + 1; " +
        `IF (SELECT \`n\` FROM \`tt_seed_counter\`) ${condition}; END IF; END`
    )
    try {
      return await expectExit(cli(["seed", "tickets", "--count", String(count)]), code)
    } finally {
      await admin.query("DROP TRIGGER IF EXISTS `tt_seed_trigger`")
      await admin.query("DROP TABLE IF EXISTS `tt_seed_counter`")
    }
  }

  it("a seed that fails for good says how many rows it kept and the command that adds the rest", async () => {
    const start = await one("SELECT COUNT(*) FROM `ticket`")
    // Counts the rows inserted (a failed INSERT's count rolls back with it) and refuses the 9001st.
    const r = await seedWithTrigger(
      "InnoDB",
      "> 9000 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a test trigger'",
      20000,
      1
    )
    const kept = (await one("SELECT COUNT(*) FROM `ticket`")) - start
    const errors = r.stderr.split("\n").filter((l) => l.startsWith("error: "))
    expect(errors, r.stderr).toHaveLength(1)
    expect(errors[0]).toMatch(/^error: database error while inserting into ticket: refused by a test trigger\b/)
    expect(errors[0]).toContain(
      `. Seeding stopped after ${kept} of 20000 tickets: the ${kept} tickets inserted stay; to add the other ` +
        `${20000 - kept}, run \`seed tickets --count ${20000 - kept}\`.`
    )
    expect(kept % 1000, "whole INSERTs only").toBe(0)
    expect(kept).toBe(9000)
    await expectExit(cli(["seed", "tickets", "--count", String(20000 - kept)]), 0)
    expect(await one("SELECT COUNT(*) FROM `ticket`")).toBe(start + 20000)
  })

  it("one INSERT refused by a deadlock is retried, and the progress line counts the retry", async () => {
    const start = await one("SELECT COUNT(*) FROM `ticket`")
    // A counter outside the transaction (MyISAM: not rolled back with the failed INSERT), so that exactly
    // one row attempt, the 5000th, meets the deadlock.
    const r = await seedWithTrigger(
      "MyISAM",
      "= 5000 THEN SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found (test trigger)'",
      12000,
      0
    )
    const last = r.stderr.split("\n").filter((l) => l.startsWith("seed tickets:")).at(-1)
    expect(last, r.stderr).toMatch(/^seed tickets: 12000\/12000 rows .*, retries 1, batch 1000, done$/)
    expect(await one("SELECT COUNT(*) FROM `ticket`")).toBe(start + 12000)
  })
})

// Errors before any work starts

describe.skipIf(!servicesAvailable)("errors before a regeneration starts", () => {
  let empty: Awaited<ReturnType<typeof createDatabase>>
  let seeded: Awaited<ReturnType<typeof createDatabase>>
  let admin: mysql.Connection

  /** A digest of every ticket's token and updated_at, to prove a refused command changed nothing. */
  const ticketsDigest = async () => {
    const [result] = await admin.query("SELECT `id`, `token`, `updated_at` FROM `ticket` ORDER BY `id`")
    const hash = createHash("sha256")
    for (const r of result as Array<Record<string, unknown>>) hash.update(`${r.id}:${r.token}:${r.updated_at}\n`)
    return hash.digest("hex")
  }
  const stateRows = async () =>
    Number(
      ((await admin.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`"))[0] as Array<Record<string, unknown>>)[0]!
        .n
    )

  /** A database of its own with a few seeded tickets, for `f`; dropped afterwards. */
  const withSmallDatabase = async (
    name: string,
    f: (db: mysql.Connection, env: { readonly DATABASE_URL: string }) => Promise<void>
  ) => {
    const scratch = await createDatabase(name)
    const db = await adminConnection(scratch.name)
    try {
      const env = { DATABASE_URL: scratch.url }
      await seedFixture({ env }, { users: 5, orders: 20, tickets: 300 })
      await f(db, env)
    } finally {
      await db.end()
      await scratch.drop()
    }
  }

  beforeAll(async () => {
    empty = await createDatabase("tt_empty")
    seeded = await createDatabase("tt_flags")
    const env = { DATABASE_URL: seeded.url }
    await seedFixture({ env }, { users: 20, orders: 100, tickets: 3000 })
    admin = await adminConnection(seeded.name)
  })
  afterAll(async () => {
    await admin?.end()
    await empty?.drop()
    await seeded?.drop()
  })

  it("a database without tables: regenerate, seed, status and verify point to migrate (exit 2)", async () => {
    const commands = [["regenerate"], ["seed", "users", "--count", "5"], ["status"], ["verify"]]
    // With Redis for checkpoints, as in production: no table of ours is needed to find that.
    const prefix = createRedisPrefix()
    const env = { DATABASE_URL: empty.url, REDIS_URL: redisUrl, REDIS_PREFIX: prefix.name }
    const results = await Promise.all(commands.map((args) => runCli(args, { env })))
    expect(await prefix.keys()).toEqual([])
    for (const r of results) {
      expect(r.code, describeResult(r)).toBe(2)
      expect(r.stderr).toMatch(/^error: .*`migrate`/)
      expect(linesOf(r)).toHaveLength(1)
    }
    const admin = await adminConnection(empty.name)
    try {
      const [tables] = await admin.query("SHOW TABLES")
      expect(tables).toEqual([])
    } finally {
      await admin.end()
    }
  })

  it("a migration that fails says why, is not recorded as applied, and runs again once the cause is fixed", async () => {
    const scratch = await createDatabase("tt_migfail")
    const db = await adminConnection(scratch.name)
    try {
      const env = { DATABASE_URL: scratch.url }
      // A `user` table the `order` foreign key cannot reference (another character set for its key).
      await db.query(
        "CREATE TABLE `user` (`id` char(32) NOT NULL PRIMARY KEY, `created_at` datetime(6) NOT NULL, " +
          "`updated_at` datetime(6) NOT NULL, `deleted_at` datetime(6) NULL, `password` varchar(128) NOT NULL, " +
          "`last_login` datetime(6) NULL, `first_name` varchar(150) NOT NULL, `last_name` varchar(150) NOT NULL, " +
          "`email` varchar(254) NOT NULL UNIQUE) DEFAULT CHARSET=utf8mb3"
      )
      const failed = await expectExit(runCli(["migrate"], { env }), 1)
      expect(linesOf(failed)).toHaveLength(1)
      expect(failed.stderr).toMatch(
        /^error: .*"1_create_tables" failed: .*Foreign key constraint is incorrectly formed/
      )
      const [recorded] = await db.query("SELECT migration_id FROM ticket_tokens_migrations")
      expect(recorded).toEqual([])
      await db.query("DROP TABLE `user`")
      const again = await expectExit(runCli(["migrate"], { env }), 0)
      expect(again.stdout).toContain("0001_create_tables")
      await expectExit(runCli(["seed", "users", "--count", "3"], { env }), 0)
    } finally {
      await db.end()
      await scratch.drop()
    }
  })

  it("migrate recreates the app's tables dropped since it ran, and refuses a table that is not the app's before writing anything", async () => {
    const scratch = await createDatabase("tt_migagain")
    const db = await adminConnection(scratch.name)
    const tables = async () =>
      ((await db.query("SHOW TABLES"))[0] as Array<Record<string, string>>).map((t) => Object.values(t)[0]).sort()
    try {
      const env = { DATABASE_URL: scratch.url }
      await db.query("CREATE TABLE `user` (`id` int NOT NULL PRIMARY KEY)")
      const refused = await expectExit(runCli(["migrate"], { env }), 2)
      expect(linesOf(refused)).toEqual([
        expect.stringMatching(/^error: the database schema does not match .*table user/)
      ])
      expect(await tables()).toEqual(["user"])
      await db.query("DROP TABLE `user`")
      await expectExit(runCli(["migrate"], { env }), 0)
      await db.query("DROP TABLE `ticket`, `order`, `user`")
      const again = await expectExit(runCli(["migrate"], { env }), 0)
      expect(again.stdout).toContain("0001_create_tables")
      expect(await tables()).toEqual(["order", "ticket", "ticket_tokens_migrations", "ticket_tokens_state", "user"])
      await expectExit(runCli(["seed", "users", "--count", "3"], { env }), 0)
      expect((await expectExit(runCli(["migrate"], { env }), 0)).stdout).toContain("is up to date")
      // The checkpoint table alone: a run without Redis points to migrate, which creates it again.
      await db.query("DROP TABLE `ticket_tokens_state`")
      const pointed = await expectExit(runCli(["status"], { env }), 2)
      expect(linesOf(pointed)).toEqual([expect.stringMatching(/^error: table ticket_tokens_state .*run `migrate`/)])
      const recreated = await expectExit(runCli(["migrate"], { env }), 0)
      expect(recreated.stdout).toMatch(
        /: created ticket_tokens_state; the other tables were there already, kept as they are \(migrations /
      )
      expect(await tables()).toContain("ticket_tokens_state")
      await expectExit(runCli(["status"], { env }), 0)
      const [users] = await db.query("SELECT COUNT(*) AS n FROM `user`")
      expect(Number((users as Array<{ n: unknown }>)[0]!.n)).toBe(3)
    } finally {
      await db.end()
      await scratch.drop()
    }
  })

  it("the app's own database (never migrated by us), no REDIS_URL: regenerate and status point to migrate; migrate adds the checkpoint table", async () => {
    await withSmallDatabase("tt_app", async (db, env) => {
      // What the Django app's database looks like: its tables, none of ours.
      await db.query("DROP TABLE `ticket_tokens_state`, `ticket_tokens_migrations`")
      const [before] = await db.query("SELECT `id`, `token`, `updated_at` FROM `ticket` ORDER BY `id`")
      for (const args of [["regenerate"], ["regenerate", "--dry-run"], ["status"]]) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toHaveLength(1)
        expect(r.stderr).toMatch(/^error: table ticket_tokens_state .* does not exist .*: run `migrate` first/)
      }
      const [tables] = await db.query("SHOW TABLES")
      expect((tables as Array<Record<string, string>>).map((t) => Object.values(t)[0]).sort()).toEqual(
        ["order", "ticket", "user"]
      )
      const [unchanged] = await db.query("SELECT `id`, `token`, `updated_at` FROM `ticket` ORDER BY `id`")
      expect(unchanged).toEqual(before)
      const migrated = await expectExit(runCli(["migrate"], { env }), 0)
      expect(migrated.stdout).toMatch(/: created ticket_tokens_state; the other tables were there already, kept as /)
      const [ticketsAfterMigrate] = await db.query("SELECT `id`, `token`, `updated_at` FROM `ticket` ORDER BY `id`")
      expect(ticketsAfterMigrate).toEqual(before)
      const first = await expectExit(runCli(["regenerate", "--json"], { env }), 0)
      expect(JSON.parse(first.stdout).rotated).toBe(300)
      expect(first.stderr).not.toContain("completed at")
      // A plain rerun after a completed run is a new run, and says which one it replaces (so does a dry run).
      const plan = await expectExit(runCli(["regenerate", "--dry-run"], { env }), 0)
      expect(plan.stdout).toContain(`would start a new run: run ${JSON.parse(first.stdout).runId} completed at `)
      const again = await expectExit(runCli(["regenerate", "--json"], { env }), 0)
      expect(JSON.parse(again.stdout).rotated).toBe(300)
      expect(again.stderr).toContain(`run ${JSON.parse(first.stdout).runId} on this scope completed at `)
    })
  })

  it("tables that do not match the app (no token column): every command says so in one line (exit 2), nothing written", async () => {
    await withSmallDatabase("tt_odd", async (db, env) => {
      await db.query("ALTER TABLE `ticket` DROP COLUMN `token`")
      const [before] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      const commands = [
        ["regenerate"],
        ["regenerate", "--dry-run"],
        ["verify"],
        ["seed", "tickets", "--count", "10"],
        ["migrate"]
      ]
      for (const args of commands) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toEqual([
          expect.stringMatching(/^error: the database schema does not match the ticket app \(table ticket: .*token/)
        ])
      }
      const [after] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      expect(after).toEqual(before)
      const [state] = await db.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`")
      expect(Number((state as Array<{ n: unknown }>)[0]!.n)).toBe(0)
      // Without the checkpoint table too, the mismatch is still what is said: `migrate` would refuse.
      await db.query("DROP TABLE `ticket_tokens_state`")
      for (const args of [["regenerate"], ["status"]]) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toEqual([
          expect.stringMatching(/^error: the database schema does not match the ticket app \(table ticket: .*token/)
        ])
      }
    })
  })

  it("a token column narrower than a token: regenerate and its dry run say so in one line (exit 2), nothing written", async () => {
    await withSmallDatabase("tt_narrow", async (db, env) => {
      // Only this session writes short tokens (non-strict): the column can then be narrowed.
      await db.query("SET SESSION sql_mode = ''")
      await db.query("ALTER TABLE `ticket` MODIFY `token` varchar(16) NOT NULL")
      const [before] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      for (const args of [["regenerate"], ["regenerate", "--dry-run"]]) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toEqual([
          expect.stringMatching(/^error: the database schema does not match .*column token holds 16 characters/)
        ])
      }
      const [after] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      expect(after).toEqual(before)
      const [state] = await db.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`")
      expect(Number((state as Array<{ n: unknown }>)[0]!.n)).toBe(0)
      // Without the checkpoint table too, the mismatch is still what is said: `migrate` would refuse.
      await db.query("DROP TABLE `ticket_tokens_state`")
      for (const args of [["regenerate"], ["status"]]) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toEqual([
          expect.stringMatching(/^error: the database schema does not match the ticket app \(table ticket: .*token/)
        ])
      }
    })
  })

  it("an integer ticket id (not the app's uuid): regenerate and its dry run say so in one line (exit 2), nothing written", async () => {
    await withSmallDatabase("tt_intid", async (db, env) => {
      await db.query(
        "ALTER TABLE `ticket` DROP PRIMARY KEY, DROP COLUMN `id`, ADD COLUMN `id` int AUTO_INCREMENT PRIMARY KEY FIRST"
      )
      const [before] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      for (const args of [["regenerate"], ["regenerate", "--dry-run"]]) {
        const r = await expectExit(runCli(args, { env }), 2)
        expect(linesOf(r), describeResult(r)).toEqual([
          expect.stringMatching(/^error: the database schema does not match .*column id is int, not text/)
        ])
      }
      const [after] = await db.query("SELECT * FROM `ticket` ORDER BY `id`")
      expect(after).toEqual(before)
      // No run recorded: a plain run later is not refused as an unfinished one.
      const [state] = await db.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`")
      expect(Number((state as Array<{ n: unknown }>)[0]!.n)).toBe(0)
    })
  })

  it("an updated_at without fractional seconds (an app's table from before MySQL had them): verify compares at its precision", async () => {
    await withSmallDatabase("tt_seconds", async (db, env) => {
      await db.query("ALTER TABLE `ticket` MODIFY `updated_at` datetime NOT NULL")
      const run = await expectExit(runCli(["regenerate", "--json"], { env }), 0)
      expect(JSON.parse(run.stdout).rotated).toBe(300)
      // As every batch written in the second the run started would read: cut to that second.
      const status = await expectExit(runCli(["status", "--json"], { env }), 0)
      const startedAt = new Date(JSON.parse(status.stdout).run.startedAt)
      const second = startedAt.toISOString().slice(0, 19).replace("T", " ")
      await db.query("UPDATE `ticket` SET `updated_at` = ?", [second])
      const verified = await expectExit(runCli(["verify", "--json"], { env }), 0)
      expect(JSON.parse(verified.stdout)).toMatchObject({ inScope: 300, notRotated: 0, ok: true })
      // A ticket put back to a time before the run's second is still found.
      await db.query("UPDATE `ticket` SET `updated_at` = '2020-01-01 00:00:00' ORDER BY `id` LIMIT 1")
      const failed = await expectExit(runCli(["verify", "--json"], { env }), 1)
      expect(JSON.parse(failed.stdout)).toMatchObject({ notRotated: 1, ok: false })
    })
  })

  it("a token column without a unique index of its own: the run and its dry run warn of it, and the run completes", async () => {
    await withSmallDatabase("tt_nounique", async (db, env) => {
      const warning = /^warning: ticket\.token has no unique index \(the app creates one\)/m
      const migrated = await expectExit(runCli(["regenerate", "--dry-run", "--json"], { env }), 0)
      expect(JSON.parse(migrated.stdout).schemaWarnings).toEqual([])
      expect(migrated.stderr).not.toMatch(warning)
      const [keys] = await db.query("SHOW INDEX FROM `ticket` WHERE `Column_name` = 'token' AND `Non_unique` = 0")
      for (const key of keys as Array<{ Key_name: string }>) {
        await db.query(`ALTER TABLE \`ticket\` DROP INDEX \`${key.Key_name}\``)
      }
      // Neither an index that is not unique nor a unique one over more columns keeps a token unique.
      await db.query("ALTER TABLE `ticket` ADD INDEX `ticket_token_plain` (`token`)")
      await db.query("ALTER TABLE `ticket` ADD UNIQUE INDEX `ticket_token_name` (`token`, `name`)")
      const plan = await expectExit(runCli(["regenerate", "--dry-run", "--json"], { env }), 0)
      expect(JSON.parse(plan.stdout).schemaWarnings).toEqual([expect.stringMatching(/^ticket\.token has no unique/)])
      expect(plan.stderr).toMatch(warning)
      const [before] = await db.query("SELECT `id`, `token` FROM `ticket` ORDER BY `id`")
      const run = await expectExit(runCli(["regenerate", "--json"], { env }), 0)
      expect(run.stderr).toMatch(warning)
      expect(JSON.parse(run.stdout).rotated).toBe(300)
      const [after] = await db.query("SELECT `id`, `token` FROM `ticket` ORDER BY `id`")
      const tokens = (after as Array<{ token: string }>).map((row) => row.token)
      expect(new Set(tokens).size).toBe(300)
      expect(tokens.filter((token, i) => token === (before as Array<{ token: string }>)[i]!.token)).toEqual([])
      await expectExit(runCli(["verify"], { env }), 0)
    })
  })

  it.skipIf(noPrivateServer)(
    "a server whose sessions start with autocommit off is refused before anything is written (exit 2)",
    async () => {
      // A private server: init_connect is global, and applies to users without SUPER only.
      const server = await startPrivateMariadb("tickets", () => ["--init-connect=SET autocommit = 0"])
      const root = await server.admin({ database: "tickets" })
      try {
        const rootUrl = `mysql://root@127.0.0.1:${server.port}/tickets`
        await seedFixture({ env: { DATABASE_URL: rootUrl } }, { users: 5, orders: 20, tickets: 300 })
        await root.query("CREATE USER 'app'@'%' IDENTIFIED BY 'Ac0mmitPw', 'app'@'localhost' IDENTIFIED BY 'Ac0mmitPw'")
        await root.query("GRANT ALL ON `tickets`.* TO 'app'@'%', 'app'@'localhost'")
        const [before] = await root.query("SELECT * FROM `ticket` ORDER BY `id`")
        const url = `mysql://app:Ac0mmitPw@127.0.0.1:${server.port}/tickets`
        for (const args of [["regenerate"], ["migrate"], ["seed", "users", "--count", "5"]]) {
          const r = await expectExit(runCli(args, { env: { DATABASE_URL: url } }), 2)
          expect(linesOf(r), describeResult(r)).toEqual([expect.stringMatching(/^error: .*autocommit off/)])
          expect(r.stderr).not.toContain("Ac0mmitPw")
        }
        const [after] = await root.query("SELECT * FROM `ticket` ORDER BY `id`")
        expect(after).toEqual(before)
        const [state] = await root.query("SELECT COUNT(*) AS n FROM `ticket_tokens_state`")
        expect(Number((state as Array<{ n: unknown }>)[0]!.n)).toBe(0)
      } finally {
        await root.end()
        await server.stop()
      }
    }
  )

  it("an unreachable server: non-zero exit, short message, no password, no stack trace", async () => {
    const env = { DATABASE_URL: "mysql://root:s3cretPassw0rd@127.0.0.1:1/x" }
    const commands = [["regenerate"], ["migrate"], ["seed", "users", "--count", "5"]]
    const results = await Promise.all(commands.map((args) => runCli(args, { env, timeoutMs: 60_000 })))
    for (const r of results) {
      const output = `${r.stdout}\n${r.stderr}`
      expect(r.code, describeResult(r)).not.toBe(0)
      expect(r.code).not.toBeNull()
      expect(output).not.toContain("s3cretPassw0rd")
      expect(output).not.toMatch(/^ {4}at /m)
      expect(linesOf(r).length).toBeGreaterThan(0)
      expect(linesOf(r).length).toBeLessThanOrEqual(6)
      expect(r.stderr).toMatch(/^error: /m)
    }
  })

  it("a server that takes the connection and never answers: Ctrl-C ends any command at once, not after the connect timeout, saying so", async () => {
    const sockets: Array<Net.Socket> = []
    const server = Net.createServer((socket) => {
      sockets.push(socket)
      socket.on("error", () => {})
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const env = { DATABASE_URL: `mysql://root@127.0.0.1:${(server.address() as Net.AddressInfo).port}/x` }
    try {
      // Each says that it stopped, and what that leaves (a JSON object too under --json).
      const cases: Array<[Array<string>, RegExp]> = [
        [["regenerate"], /^stopped before any batch began: nothing was changed$/],
        [["regenerate", "--dry-run", "--json"], /^the dry run stopped by a signal \(it changes nothing\)$/],
        [["status", "--json"], /^status stopped by a signal before it answered \(it changes nothing\)$/],
        [["verify", "--json"], /^verify stopped by a signal before it finished \(it changes nothing\): run it again$/],
        [["migrate"], /^migrate stopped by a signal: run `migrate` again to finish/],
        [["seed", "users", "--count", "5"], /^seed users stopped by a signal before inserting: nothing was changed$/]
      ]
      for (const [args, said] of cases) {
        const before = sockets.length
        const run = spawnCli(args, { env })
        let ended = false
        void run.result.finally(() => (ended = true))
        while (sockets.length === before && !ended) await sleep(20)
        expect(ended, `${args.join(" ")} connects before it ends`).toBe(false)
        const stopped = Date.now()
        run.child.kill("SIGINT")
        const result = await run.result
        expect(Date.now() - stopped, `${args.join(" ")}: not waiting out the 5 s connect timeout`).toBeLessThan(1500)
        expect(result.code, describeResult(result)).toBe(130)
        const lines = `${result.stdout}${result.stderr}`.trim().split("\n")
        expect(lines.filter((line) => !line.startsWith("{")), describeResult(result)).toEqual([
          expect.stringMatching(said)
        ])
        if (args.includes("--json")) {
          expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, error: "Interrupted" })
        }
      }
    } finally {
      for (const socket of sockets) socket.destroy()
      server.close()
    }
  })

  it("a password the server refuses: exit 2 (bad input, as for Redis), one line, no password, nothing written", async () => {
    const before = await ticketsDigest()
    const url = seeded.url.replace("mysql://root@", "mysql://root:Wr0ngPassw0rd@")
    expect(url).toContain("Wr0ngPassw0rd")
    for (const args of [["regenerate"], ["migrate"], ["status"], ["seed", "users", "--count", "5"]]) {
      const r = await runCli(args, { env: { DATABASE_URL: url } })
      expect(r.code, describeResult(r)).toBe(2)
      expect(linesOf(r)).toEqual([
        expect.stringMatching(
          /^error: the database at mysql:\/\/[^@]+ refused the connection: Access denied .*DATABASE_URL/
        )
      ])
      expect(`${r.stdout}${r.stderr}`).not.toContain("Wr0ngPassw0rd")
    }
    expect(await ticketsDigest()).toBe(before)
  })

  it("a database the server does not have: exit 2, one line naming it, nothing created", async () => {
    const name = `tt_missing_${Date.now().toString(36)}`
    const url = seeded.url.replace(/\/[^/]*$/, `/${name}`)
    for (const args of [["regenerate"], ["migrate"], ["status"]]) {
      const r = await runCli(args, { env: { DATABASE_URL: url } })
      expect(r.code, describeResult(r)).toBe(2)
      expect(linesOf(r)).toEqual([
        expect.stringMatching(
          new RegExp(
            `^error: there is no database \`${name}\` at mysql://[^/]+: check its name in DATABASE_URL, or create it`
          )
        )
      ])
    }
    const admin = await adminConnection()
    try {
      expect((await admin.query("SHOW DATABASES LIKE ?", [name]))[0]).toEqual([])
    } finally {
      await admin.end()
    }
  })

  it("an unreachable Redis: non-zero exit, no password, tokens unchanged", async () => {
    const before = await ticketsDigest()
    const r = await runCli(["regenerate"], {
      env: { DATABASE_URL: seeded.url, REDIS_URL: "redis://:r3disPassw0rd@127.0.0.1:1" },
      timeoutMs: 60_000
    })
    expect(r.code, describeResult(r)).toBe(1)
    expect(linesOf(r), describeResult(r)).toEqual([
      expect.stringMatching(/^error: Redis at redis:\/\/127\.0\.0\.1:1 is not reachable: .*nothing was changed/)
    ])
    expect(`${r.stdout}${r.stderr}`).not.toContain("r3disPassw0rd")
    expect(`${r.stdout}${r.stderr}`).not.toMatch(/^ {4}at /m)
    expect(await ticketsDigest()).toBe(before)
  })

  it("a malformed REDIS_URL, or a Redis database the server does not have: one line, nothing written", async () => {
    const before = await ticketsDigest()
    const redis = createRedisPrefix("tt-badredis")
    // A parameter ioredis would take for one of its options (and crash on, here) is refused too.
    const urls = [
      "redis//nope",
      "http://127.0.0.1:6379",
      "redis://:pw@127.0.0.1:6379/abc",
      "redis://:pw@127.0.0.1:6379/?connectTimeout=abc"
    ]
    const results = await Promise.all(
      urls.map((url) => runCli(["regenerate"], { env: { DATABASE_URL: seeded.url, REDIS_URL: url } }))
    )
    results.forEach((r, i) => {
      expect(r.code, `${urls[i]}: ${describeResult(r)}`).toBe(2)
      expect(linesOf(r), urls[i]).toEqual([expect.stringMatching(/^error: REDIS_URL is malformed/)])
      expect(`${r.stdout}${r.stderr}`, urls[i]).not.toContain(":pw@")
    })
    // ioredis only warns about an index the server refuses, and would go on in database 0. Given as a
    // parameter, the index is the same.
    for (const db of ["/99", "?db=99"]) {
      const outOfRange = await runCli(["regenerate"], {
        env: { DATABASE_URL: seeded.url, REDIS_URL: `${redisUrl}${db}`, REDIS_PREFIX: redis.name }
      })
      expect(outOfRange.code, describeResult(outOfRange)).toBe(2)
      expect(linesOf(outOfRange)).toEqual([
        expect.stringMatching(/^error: Redis at .*\/99 refused the connection: .*DB index is out of range.*REDIS_URL/)
      ])
    }
    // A user the server does not know: refused too, bad input rather than an outage, and no password shown.
    const wrongUser = await runCli(["regenerate"], {
      env: { DATABASE_URL: seeded.url, REDIS_URL: redisUrl.replace("redis://", "redis://nobody:s3cret@") }
    })
    expect(wrongUser.code, describeResult(wrongUser)).toBe(2)
    expect(linesOf(wrongUser)).toEqual([expect.stringMatching(/^error: Redis at .* refused the connection: WRONGPASS/)])
    expect(`${wrongUser.stdout}${wrongUser.stderr}`).not.toContain("s3cret")
    expect(await redis.keys()).toEqual([])
    expect(await ticketsDigest()).toBe(before)
  })

  it("a malformed DATABASE_URL: exit 2, one line", async () => {
    const urls = ["mysql//nope", "postgres://a@b/c", "mysql://root@127.0.0.1:99999/x", "mysql://root@127.0.0.1:3306/"]
    const results = await Promise.all(urls.map((url) => runCli(["regenerate"], { env: { DATABASE_URL: url } })))
    results.forEach((r, i) => {
      expect(r.code, `${urls[i]}: ${describeResult(r)}`).toBe(2)
      expect(linesOf(r), urls[i]).toHaveLength(1)
      expect(r.stderr, urls[i]).toMatch(/^error: DATABASE_URL is malformed/)
      expect(r.stdout, urls[i]).toBe("")
    })
  })

  it("bad regenerate flags: exit 2 and nothing changes", async () => {
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["--batch-size", "0"], "--batch-size"],
      [["--batch-size", "abc"], "--batch-size must be an integer from 1 to 10000"],
      [["--batch-size", "1.5"], "--batch-size"],
      [["--batch-size", "10001"], "--batch-size"],
      [["--concurrency", "-3"], "--concurrency"],
      [["--concurrency", "0"], "--concurrency"],
      [["--resume", "--restart"], "--restart"],
      [["--target-batch-ms", "50", "--batch-size", "50"], "--target-batch-ms keeps batches within 100-10000"],
      [["--email-domain", "not a domain"], "--email-domain"],
      [["--created-after", "yesterday"], "--created-after"],
      [["--created-before", "2024-01-31T12:00:00.123456Z"], "millisecond"],
      [["--created-after", "2024-02-01", "--created-before", "2024-01-01"], "--created-after"],
      // The parser's own findings, worded as ours.
      [["--bogus"], "error: received unknown argument: '--bogus'"],
      [["extra"], "error: received unknown argument: 'extra'"],
      // With --log-level the parser runs twice and reports twice: still one line.
      [["--bogus", "--log-level", "info"], "error: received unknown argument: '--bogus'"]
    ]
    const before = await ticketsDigest()
    // Three at a time: each is a full process start on a 2-core machine.
    const results: Array<CliResult> = []
    for (let i = 0; i < cases.length; i += 3) {
      results.push(
        ...await Promise.all(
          cases.slice(i, i + 3).map(([flags]) =>
            runCli(["regenerate", ...flags], { env: { DATABASE_URL: seeded.url } })
          )
        )
      )
    }
    results.forEach((r, i) => {
      const [flags, mentioned] = cases[i]!
      const label = flags.join(" ")
      expect(r.code, `${label}: ${describeResult(r)}`).toBe(2)
      expect(linesOf(r), label).toEqual([expect.stringContaining(mentioned)])
      // Exactly one line, "error: " first, nothing after it (not even a blank line), nothing on stdout.
      expect(r.stderr, label).toMatch(/^error: [^\n]+\n$/)
      expect(r.stdout, label).toBe("")
    })
    expect(await ticketsDigest()).toBe(before)
    expect(await stateRows()).toBe(0)
  })

  it("--dry-run reports the plan and changes nothing", async () => {
    const before = await ticketsDigest()
    const r = await expectExit(runCli(["regenerate", "--dry-run", "--json"], { env: { DATABASE_URL: seeded.url } }), 0)
    const plan = JSON.parse(r.stdout) as Record<string, unknown>
    expect(plan).toMatchObject({ dryRun: true, total: 3000, batches: 3, existingRun: null, staleLock: false })
    expect(await ticketsDigest()).toBe(before)
    expect(await stateRows()).toBe(0)
  })
})
