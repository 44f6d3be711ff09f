// How driver errors are classified at the adapter boundary: which ones are retried, which collision means
// "fresh tokens", and what an error message may show. Pure: errors shaped as mysql2 and better-sqlite3 raise them.
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Ref, TestClock } from "effect"
import * as Db from "../src/Db.js"
import type { DatabaseError } from "../src/Domain.js"

const mysqlError = (errno: number, code: string, sqlMessage: string, fatal = false) =>
  new SqlError({
    message: "Failed to execute statement",
    cause: Object.assign(new Error(sqlMessage), { errno, code, sqlMessage, fatal })
  })
const sqliteError = (code: string, message: string) =>
  new SqlError({ message: "Failed to execute statement", cause: Object.assign(new Error(message), { code }) })

describe("driver errors", () => {
  it("lock conflicts, killed or lost connections and a busy SQLite file are transient; the rest are not", () => {
    expect(Db.isTransient(mysqlError(1213, "ER_LOCK_DEADLOCK", "Deadlock found"))).toBe(true)
    expect(Db.isTransient(mysqlError(1205, "ER_LOCK_WAIT_TIMEOUT", "Lock wait timeout exceeded"))).toBe(true)
    expect(Db.isTransient(mysqlError(1927, "ER_CONNECTION_KILLED", "Connection was killed"))).toBe(true)
    expect(Db.isTransient(mysqlError(0, "PROTOCOL_CONNECTION_LOST", "Connection lost", true))).toBe(true)
    // A connection failure is wrapped once more by the pool.
    expect(Db.isTransient(new SqlError({ cause: new SqlError({ cause: { code: "ECONNREFUSED" } }) }))).toBe(true)
    expect(Db.isTransient(sqliteError("SQLITE_BUSY", "database is locked"))).toBe(true)

    expect(Db.isTransient(mysqlError(1146, "ER_NO_SUCH_TABLE", "Table 'x.ticket' doesn't exist"))).toBe(false)
    // Marked fatal by the driver like a lost connection, but no retry mends a refused login.
    expect(Db.isTransient(mysqlError(1045, "ER_ACCESS_DENIED_ERROR", "Access denied for user", true))).toBe(false)
    expect(Db.isTransient(mysqlError(1049, "ER_BAD_DB_ERROR", "Unknown database 'x'", true))).toBe(false)
    expect(Db.isTransient(mysqlError(1064, "ER_PARSE_ERROR", "You have an error in your SQL syntax"))).toBe(false)
    expect(Db.isTransient(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'x' for key 'token'"))).toBe(false)
    expect(Db.isTransient(sqliteError("SQLITE_CONSTRAINT_UNIQUE", "UNIQUE constraint failed: ticket.token"))).toBe(
      false
    )
  })

  it("only a collision on the token's unique key asks for fresh tokens", () => {
    const tag = (error: SqlError) => Db.writeError("rotating")(error)._tag
    expect(tag(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'ab12' for key 'token'"))).toBe("DuplicateToken")
    expect(tag(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'ab12' for key 'ticket.token'"))).toBe(
      "DuplicateToken"
    )
    expect(tag(sqliteError("SQLITE_CONSTRAINT_UNIQUE", "UNIQUE constraint failed: ticket.token"))).toBe(
      "DuplicateToken"
    )
    // The name Django gives a unique key that a later migration added.
    expect(tag(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'ab12' for key 'ticket.ticket_token_5c4f9d5e_uniq'")))
      .toBe("DuplicateToken")
    expect(tag(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'ab12' for key 'PRIMARY'"))).toBe("DatabaseError")
    expect(tag(mysqlError(1062, "ER_DUP_ENTRY", "Duplicate entry 'x' for key 'token_backup'"))).toBe(
      "DatabaseError"
    )
    expect(tag(sqliteError("SQLITE_CONSTRAINT_UNIQUE", "UNIQUE constraint failed: ticket.id"))).toBe("DatabaseError")
  })

  it("messages keep the driver's words but never a duplicated value (which may be a token)", () => {
    const token = "0123456789abcdef0123456789abcdef"
    const text = Db.describe(mysqlError(1062, "ER_DUP_ENTRY", `Duplicate entry '${token}' for key 'token'.`))
    expect(text).toBe("Duplicate entry for key 'token' (ER_DUP_ENTRY)")
    expect(text).not.toContain(token)
    expect(Db.describe(new SqlError({ cause: { code: "ECONNREFUSED" } }))).toBe("ECONNREFUSED")
  })
})

describe("retryingDatabase", () => {
  const failingFirst = (failures: number, error: DatabaseError) =>
    Effect.gen(function*() {
      const attempts = yield* Ref.make(0)
      const effect = Ref.updateAndGet(attempts, (n) => n + 1).pipe(
        Effect.flatMap((n) => n <= failures ? Effect.fail(error) : Effect.succeed(`done after ${n}`))
      )
      return { attempts, effect }
    })
  const killed = Db.databaseError("testing")(mysqlError(1927, "ER_CONNECTION_KILLED", "Connection was killed"))

  it.effect("tries a killed statement again on the one retry schedule (from 100 ms, doubling, jittered), then succeeds", () =>
    Effect.gen(function*() {
      const { attempts, effect } = yield* failingFirst(2, killed)
      const fiber = yield* Effect.fork(Db.retryingDatabase(effect))
      // First delay 100 ms ± 20 %, the second 200 ms ± 20 %.
      yield* TestClock.adjust("79 millis")
      expect(yield* Ref.get(attempts)).toBe(1)
      yield* TestClock.adjust("41 millis")
      expect(yield* Ref.get(attempts)).toBe(2)
      yield* TestClock.adjust("120 millis")
      expect(yield* Ref.get(attempts)).toBe(2)
      yield* TestClock.adjust("120 millis")
      expect(yield* Fiber.join(fiber)).toBe("done after 3")
    }))

  it.effect("gives up after ten retries, with the last error", () =>
    Effect.gen(function*() {
      const { attempts, effect } = yield* failingFirst(100, killed)
      const fiber = yield* Effect.fork(Db.retryingDatabase(effect))
      yield* TestClock.adjust("2 minutes")
      expect(yield* Fiber.await(fiber)).toEqual(Exit.fail(killed))
      expect(yield* Ref.get(attempts)).toBe(11)
    }))

  it.effect("does not retry an error that a retry cannot fix", () =>
    Effect.gen(function*() {
      const missing = Db.databaseError("testing")(
        mysqlError(1146, "ER_NO_SUCH_TABLE", "Table 'x.ticket' doesn't exist")
      )
      const { attempts, effect } = yield* failingFirst(1, missing)
      expect(yield* Effect.exit(Db.retryingDatabase(effect))).toEqual(Exit.fail(missing))
      expect(yield* Ref.get(attempts)).toBe(1)
    }))
})
