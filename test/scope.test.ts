/**
 * Scopes end to end: each scope flag, through the built CLI, on MariaDB and on the embedded SQLite, rotates
 * exactly the tickets that an independent reading of the three tables puts in scope — date boundaries to the
 * microsecond, soft deletes at each level, look-alike email domains — and changes nothing else.
 */
import type * as mysql from "mysql2/promise"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { CliOptions } from "./support/cli.js"
import { runCli } from "./support/cli.js"
import { adminConnection, createDatabase, servicesAvailable } from "./support/services.js"
import { Sqlite, type SqliteDatabase } from "./support/sqlite.js"
import { describeResult, seedFixture, type Ticket, ticketColumns, toTicket } from "./support/tickets.js"

/** The few statements the test runs on either database (backticks and `?` work on both). */
interface Tables {
  readonly rows: (sql: string, params?: ReadonlyArray<unknown>) => Promise<Array<Record<string, unknown>>>
  readonly exec: (sql: string, params?: ReadonlyArray<unknown>) => Promise<void>
}

const deletedAt = "2026-11-30 12:00:00.000000"
const after = { flag: "2026-06-01T12:00:00.000Z", stored: "2026-06-01 12:00:00.000000" }
const before = { flag: "2026-09-01T00:00:00.000Z", stored: "2026-09-01 00:00:00.000000" }

interface Parents {
  readonly orders: ReadonlyMap<string, { readonly user_id: string; readonly deleted_at: string | null }>
  readonly users: ReadonlyMap<string, { readonly email: string; readonly deleted_at: string | null }>
}

/** Puts the cases a scope can get wrong into the seeded tables. */
const plantEdgeCases = async (db: Tables) => {
  const users = (await db.rows("SELECT `id` FROM `user` ORDER BY `id`")).map((r) => String(r.id))
  const emails = [
    "edge.case@EXAMPLE.COM", // the domain's case does not matter
    "edge.sub@sub.example.com", // a subdomain is another domain
    "edge.lookalike@notexample.com",
    "edge.suffix@example.com.evil.org"
  ]
  for (const [i, email] of emails.entries()) {
    await db.exec("UPDATE `user` SET `email` = ? WHERE `id` = ?", [email, users[i]])
  }
  await db.exec("UPDATE `user` SET `email` = ?, `deleted_at` = ? WHERE `id` = ?", [
    "edge.gone@example.com",
    deletedAt,
    users[4]
  ])
  const orders = (await db.rows("SELECT `id` FROM `order` ORDER BY `id`")).map((r) => String(r.id))
  for (const id of orders.slice(0, 8)) {
    await db.exec("UPDATE `order` SET `deleted_at` = ? WHERE `id` = ?", [deletedAt, id])
  }
  const tickets = (await db.rows("SELECT `id` FROM `ticket` ORDER BY `id`")).map((r) => String(r.id))
  for (const id of tickets.slice(0, 40)) {
    await db.exec("UPDATE `ticket` SET `deleted_at` = ? WHERE `id` = ?", [deletedAt, id])
  }
  // Each boundary, and a microsecond either side of it, spread over the key space.
  const boundaries = [
    after.stored,
    "2026-06-01 11:59:59.999999",
    "2026-06-01 12:00:00.000001",
    before.stored,
    "2026-08-31 23:59:59.999999",
    "2026-09-01 00:00:00.000001",
    // As Django writes a whole second into SQLite: no fraction (MariaDB's datetime(6) adds the zeros).
    "2026-06-01 12:00:00",
    "2026-09-01 00:00:00"
  ]
  for (const [i, at] of boundaries.entries()) {
    await db.exec("UPDATE `ticket` SET `created_at` = ? WHERE `id` = ?", [at, tickets[100 + i * 350]])
  }
}

const readTickets = async (db: Tables) =>
  new Map(
    (await db.rows(`SELECT ${ticketColumns} FROM \`ticket\` ORDER BY \`id\``)).map(toTicket).map((t) => [t.id, t])
  )

const readParents = async (db: Tables): Promise<Parents> => ({
  orders: new Map(
    (await db.rows("SELECT `id`, `user_id`, `deleted_at` FROM `order`")).map((r) => [
      String(r.id),
      { user_id: String(r.user_id), deleted_at: r.deleted_at === null ? null : String(r.deleted_at) }
    ])
  ),
  users: new Map(
    (await db.rows("SELECT `id`, `email`, `deleted_at` FROM `user`")).map((r) => [
      String(r.id),
      { email: String(r.email), deleted_at: r.deleted_at === null ? null : String(r.deleted_at) }
    ])
  )
})

interface ScopeCase {
  readonly flags: ReadonlyArray<string>
  readonly liveOnly?: boolean
  readonly domain?: string
  readonly after?: string
  readonly before?: string
}

const cases: ReadonlyArray<ScopeCase> = [
  { flags: ["--live-only"], liveOnly: true },
  { flags: ["--email-domain", "example.com"], domain: "example.com" },
  { flags: ["--created-after", after.flag], after: after.stored },
  { flags: ["--created-before", before.flag], before: before.stored },
  {
    flags: [
      "--live-only",
      "--email-domain",
      "Example.COM",
      "--created-after",
      after.flag,
      "--created-before",
      before.flag
    ],
    liveOnly: true,
    domain: "example.com",
    after: after.stored,
    before: before.stored
  }
]

/** A stored datetime with its six fraction digits, whichever way it was written (comparable as text). */
const exact = (at: string) => (at.includes(".") ? at : `${at}.000000`)

/** Whether a ticket is in scope, read from the rows themselves (not from the tool's SQL). */
const inScope = (c: ScopeCase, t: Ticket, parents: Parents) => {
  const order = parents.orders.get(t.order_id)!
  const user = parents.users.get(order.user_id)!
  return (!c.liveOnly || (t.deleted_at === null && order.deleted_at === null && user.deleted_at === null)) &&
    (c.domain === undefined || user.email.toLowerCase().endsWith(`@${c.domain}`)) &&
    (c.after === undefined || exact(t.created_at) >= c.after) &&
    (c.before === undefined || exact(t.created_at) < c.before)
}

const scopeSuite = (
  name: string,
  setup: () => Promise<
    { tables: Tables; cli: CliOptions; close: () => Promise<void>; seeded?: () => Promise<void> }
  >
) =>
  describe(name, () => {
    let tables: Tables
    let cli: CliOptions
    let close = async () => {}

    beforeAll(async () => {
      const made = await setup()
      ;({ cli, close, tables } = made)
      await seedFixture(cli, { users: 30, orders: 300, tickets: 3000 })
      await made.seeded?.()
      await plantEdgeCases(tables)
    }, 120_000)

    afterAll(() => close())

    it.each(cases.map((c) => [c.flags.join(" "), c] as const))(
      "regenerate %s rotates exactly the tickets in scope and changes nothing else",
      async (_, c) => {
        const parents = await readParents(tables)
        const old = await readTickets(tables)
        const expected = [...old.values()].filter((t) => inScope(c, t, parents)).map((t) => t.id)
        expect(expected.length, "some tickets are in scope").toBeGreaterThan(0)
        expect(expected.length, "some are not").toBeLessThan(old.size)

        const r = await runCli(["regenerate", ...c.flags, "--batch-size", "97", "--concurrency", "4"], cli)
        expect(r.code, describeResult(r)).toBe(0)

        const now = await readTickets(tables)
        expect(now.size).toBe(old.size)
        const changed = [...now.values()].filter((t) => t.token !== old.get(t.id)!.token).map((t) => t.id)
        expect(changed).toEqual(expected)
        const wanted = new Set(expected)
        for (const t of now.values()) {
          const was = old.get(t.id)!
          if (wanted.has(t.id)) {
            expect({ ...t, token: was.token, updated_at: was.updated_at }).toEqual(was)
            expect(t.updated_at > was.updated_at).toBe(true)
          } else {
            expect(t).toEqual(was)
          }
        }
        expect(new Set([...now.values()].map((t) => t.token)).size).toBe(now.size)
      },
      60_000
    )
  })

describe.skipIf(!servicesAvailable)("scopes on MariaDB", () => {
  scopeSuite("MariaDB", async () => {
    const db = await createDatabase("tt_scope")
    const admin: mysql.Connection = await adminConnection(db.name)
    return {
      cli: { env: { DATABASE_URL: db.url } },
      tables: {
        rows: async (sql, params = []) => (await admin.query(sql, [...params]))[0] as Array<Record<string, unknown>>,
        exec: async (sql, params = []) => void (await admin.query(sql, [...params]))
      },
      // Emails of a binary collation (some apps declare one), where the column itself compares case.
      seeded: async () =>
        void (await admin.query("ALTER TABLE `user` MODIFY `email` varchar(254) COLLATE utf8mb4_bin NOT NULL")),
      close: async () => {
        await admin.end()
        await db.drop()
      }
    }
  })
})

describe("scopes on the embedded SQLite", () => {
  scopeSuite("SQLite", async () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tt-scope-"))
    const file = Path.join(dir, "scope.sqlite")
    let db: SqliteDatabase | undefined
    // Opened after `migrate` has created the file; the CLI runs between statements, never inside one.
    const open = () => (db ??= new Sqlite(file, { fileMustExist: true, timeout: 5000 }))
    return {
      cli: { env: { DATABASE_URL: `sqlite:${file}` } },
      tables: {
        rows: async (sql, params = []) => open().prepare(sql).all(...params),
        exec: async (sql, params = []) => void open().prepare(sql).run(...params)
      },
      close: async () => {
        db?.close()
        Fs.rmSync(dir, { recursive: true, force: true })
      }
    }
  })
})
