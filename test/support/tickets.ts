/**
 * Snapshots of the ticket table and the checks every end-to-end test makes against them.
 */
import type * as mysql from "mysql2/promise"
import { setTimeout as sleep } from "node:timers/promises"
import { expect } from "vitest"
import { type CliOptions, type CliResult, runCli } from "./cli.js"

export interface Ticket {
  readonly id: string
  readonly created_at: string
  readonly updated_at: string
  readonly deleted_at: string | null
  readonly name: string
  readonly token: string
  readonly order_id: string
}

export const ticketColumns = "`id`, `created_at`, `updated_at`, `deleted_at`, `name`, `token`, `order_id`"

export const toTicket = (r: Record<string, unknown>): Ticket => ({
  id: String(r.id),
  created_at: String(r.created_at),
  updated_at: String(r.updated_at),
  deleted_at: r.deleted_at === null ? null : String(r.deleted_at),
  name: String(r.name),
  token: String(r.token),
  order_id: String(r.order_id)
})

export const describeResult = (r: CliResult) => `exit ${r.code} (${r.signal})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`

export const expectExit = async (promise: Promise<CliResult>, code: number) => {
  const r = await promise
  expect(r.code, describeResult(r)).toBe(code)
  return r
}

/** Every ticket, in id order, read on a MariaDB connection. */
export const ticketsOn = async (admin: mysql.Connection): Promise<Array<Ticket>> => {
  const [rows] = await admin.query(`SELECT ${ticketColumns} FROM \`ticket\` ORDER BY \`id\``)
  return (rows as Array<Record<string, unknown>>).map(toTicket)
}

/** The tickets by id: a snapshot to compare a later read with. */
export const snapshotOn = async (admin: mysql.Connection): Promise<Map<string, Ticket>> =>
  new Map((await ticketsOn(admin)).map((t) => [t.id, t]))

/** A migrated database seeded through the CLI; fails the setup with the CLI's output if a step fails. */
export const seedFixture = async (
  options: CliOptions,
  counts: { readonly users: number; readonly orders: number; readonly tickets: number }
) => {
  const steps = [
    ["migrate"],
    ["seed", "users", "--count", String(counts.users)],
    ["seed", "orders", "--count", String(counts.orders)],
    ["seed", "tickets", "--count", String(counts.tickets)]
  ]
  for (const args of steps) {
    const r = await runCli(args, options)
    if (r.code !== 0) throw new Error(`setup ${args.join(" ")} failed: ${describeResult(r)}`)
  }
}

/** Waits until `condition` holds, polling every `everyMs`; fails naming `what` after `timeoutMs`. */
export const until = async (
  what: string,
  condition: () => boolean | Promise<boolean>,
  { everyMs = 20, timeoutMs = 60_000 } = {}
) => {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(everyMs)
  }
}

/**
 * Resolves once a run has committed its first batch: some ticket's `updated_at` is later than every one in
 * the snapshot. By then the run holds its lock and has written its record, so a test can fault it mid-run
 * without guessing how long the CLI takes to start.
 */
export const untilRotating = async (
  admin: mysql.Connection,
  before: ReadonlyMap<string, Ticket>,
  timeoutMs = 60_000
) => {
  const latest = [...before.values()].reduce((m, t) => (t.updated_at > m ? t.updated_at : m), "")
  await until("a batch is committed", async () => {
    const [rows] = await admin.query("SELECT MAX(`updated_at`) AS `m` FROM `ticket`")
    return String((rows as Array<{ m: unknown }>)[0]?.m) > latest
  }, { timeoutMs })
}

export const parseJsonSummary = (r: CliResult) => {
  const lines = r.stdout.split("\n").filter((l) => l.trim() !== "")
  expect(lines, `stdout must be one JSON line: ${r.stdout}`).toHaveLength(1)
  const summary: unknown = JSON.parse(lines[0]!)
  expect(typeof summary === "object" && summary !== null && !Array.isArray(summary)).toBe(true)
  return summary as Record<string, unknown>
}

/**
 * Every ticket of the snapshot has a new, unique, 32-hex token that is none of the old ones, a later
 * updated_at, and every other column as expected (`expectedName` lets a test account for renames made by
 * others while the run went on). Tickets not in the snapshot (inserted meanwhile) are left to the caller.
 */
export const expectAllRotated = (
  before: ReadonlyMap<string, Ticket>,
  after: ReadonlyArray<Ticket>,
  expectedName: (old: Ticket) => string = (old) => old.name
) => {
  const oldTokens = new Set([...before.values()].map((t) => t.token))
  const newTokens = new Set<string>()
  const problems: Array<string> = []
  const seen = new Set<string>()
  for (const t of after) {
    newTokens.add(t.token)
    const old = before.get(t.id)
    if (old === undefined) continue
    seen.add(t.id)
    if (t.token === old.token) problems.push(`${t.id}: token unchanged`)
    if (oldTokens.has(t.token)) problems.push(`${t.id}: new token equals an old token`)
    if (!/^[0-9a-f]{32}$/.test(t.token)) problems.push(`${t.id}: token ${JSON.stringify(t.token)} is not 32 hex`)
    if (!(t.updated_at > old.updated_at)) problems.push(`${t.id}: updated_at ${t.updated_at} <= ${old.updated_at}`)
    if (t.name !== expectedName(old)) {
      problems.push(`${t.id}: name ${JSON.stringify(t.name)}, expected ${expectedName(old)}`)
    }
    for (const column of ["created_at", "deleted_at", "order_id"] as const) {
      if (t[column] !== old[column]) problems.push(`${t.id}: ${column} ${old[column]} -> ${t[column]}`)
    }
    if (problems.length > 20) break
  }
  expect(problems).toEqual([])
  expect(seen.size, "every ticket of the snapshot is still there").toBe(before.size)
  expect(newTokens.size, "tokens are unique").toBe(after.length)
}

/**
 * Kills the connections to `database` that match `condition` (SQL on information_schema.PROCESSLIST) while
 * `child` runs, up to `most` of them — not every one: each retry would be killed too, until the retries ran
 * out — pausing `pause` ms after a kill; returns how many it killed.
 */
export const killWhileRunning = async (
  admin: mysql.Connection,
  database: string,
  child: { readonly exitCode: number | null },
  { condition, most, pause }: { readonly condition: string; readonly most: number; readonly pause: number }
) => {
  let kills = 0
  while (kills < most && child.exitCode === null) {
    const [found] = await admin.query(
      `SELECT \`ID\` AS id FROM information_schema.PROCESSLIST WHERE \`DB\` = ? AND \`ID\` <> CONNECTION_ID() AND ${condition}`,
      [database]
    )
    for (const { id } of found as Array<{ id: unknown }>) {
      await admin.query(`KILL CONNECTION ${Number(id)}`).then(() => kills++, () => undefined)
    }
    await sleep((found as Array<unknown>).length === 0 ? 1 : pause)
  }
  return kills
}
