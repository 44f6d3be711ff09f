/**
 * The checkpoint store in a table of the database (when REDIS_URL is unset; created by migration 0002):
 * one row per key, leases timed by the database's clock.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { Store } from "../Checkpoint.js"
import {
  affectedRows,
  describe,
  dialectOf,
  inOwnTransaction,
  isTransient,
  onOwnConnection,
  probeTimeout,
  requireGrants,
  stateTable,
  toCount
} from "../Db.js"
import { CheckpointUnavailable } from "../Domain.js"

export const makeSqlStore = (sql: SqlClient.SqlClient, database: string): Effect.Effect<Store> =>
  Effect.gen(function*() {
    const name = `table ${stateTable} in ${database}`
    const dialect = dialectOf(sql)
    /**
     * One call, on a connection of its own (in one transaction when `transaction`), answered within
     * `probeTimeout` (else it counts as a lost connection, retried like one).
     */
    const call = <A, E>(operation: string, effect: Effect.Effect<A, E, SqlClient.SqlClient>, transaction = false) => {
      const unavailable = (detail: string, transient: boolean) =>
        new CheckpointUnavailable({ store: name, operation, detail, transient })
      return (transaction ? inOwnTransaction(dialect)(effect) : onOwnConnection(dialect)(effect)).pipe(
        Effect.provideService(SqlClient.SqlClient, sql),
        Effect.mapError((error) => unavailable(describe(error), isTransient(error))),
        Effect.timeoutFail({
          duration: probeTimeout,
          onTimeout: () => unavailable(`no answer within ${Duration.format(probeTimeout)}`, true)
        })
      )
    }
    // Leases are timed by the database's clock, the one every runner shares: a host whose clock runs ahead
    // must not see a live holder's lease as expired.
    const now = sql.onDialectOrElse({
      // UTC whatever the session's time zone (UNIX_TIMESTAMP(NOW()) would jump an hour at a DST change).
      mysql: () => "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) DIV 1000)",
      orElse: () => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    })
    const upsert = sql.onDialectOrElse({
      mysql: () =>
        "INSERT INTO `ticket_tokens_state` (`key`, `value`, `expires_at`) VALUES (?, ?, NULL) " +
        "ON DUPLICATE KEY UPDATE `value` = VALUES(`value`)",
      orElse: () =>
        "INSERT INTO `ticket_tokens_state` (`key`, `value`, `expires_at`) VALUES (?, ?, NULL) " +
        "ON CONFLICT (`key`) DO UPDATE SET `value` = excluded.`value`"
    })
    const insertIfAbsent = sql.onDialectOrElse({
      mysql: () =>
        `INSERT IGNORE INTO \`ticket_tokens_state\` (\`key\`, \`value\`, \`expires_at\`) VALUES (?, ?, ${now} + ?)`,
      orElse: () =>
        `INSERT OR IGNORE INTO \`ticket_tokens_state\` (\`key\`, \`value\`, \`expires_at\`) VALUES (?, ?, ${now} + ?)`
    })
    // A lock row that can never expire (no number in expires_at: SQLite stores whatever it is given).
    const leaseless = sql.onDialectOrElse({
      mysql: () => "`expires_at` IS NULL",
      orElse: () => "typeof(`expires_at`) NOT IN ('integer', 'real')"
    })
    const forUpdate = sql.onDialectOrElse({ mysql: () => " FOR UPDATE", orElse: () => "" })
    const read = (key: string, suffix = "") =>
      sql.unsafe(`SELECT \`value\` FROM \`ticket_tokens_state\` WHERE \`key\` = ?${suffix}`, [key])
        .values.pipe(Effect.map((rows) => Option.fromNullable(rows[0])))
    const changed = (statement: string, params: ReadonlyArray<unknown>) =>
      Effect.map(sql.unsafe(statement, params).raw, (raw) => affectedRows(raw) > 0)

    /** Takes the lock row if it is missing or expired. */
    const take = (lockKey: string, holder: string, ttl: number) =>
      Effect.gen(function*() {
        const expired = yield* changed(
          `UPDATE \`ticket_tokens_state\` SET \`value\` = ?, \`expires_at\` = ${now} + ? ` +
            `WHERE \`key\` = ? AND \`expires_at\` < ${now}`,
          [holder, ttl, lockKey]
        )
        return expired || (yield* changed(insertIfAbsent, [lockKey, holder, ttl]))
      })

    const table = `\`${stateTable}\``
    const store: Store = {
      name,
      locate: (key) => `key '${key}' of ${name}`,
      mayWrite: requireGrants([
        `INSERT INTO ${table} (\`key\`, \`value\`, \`expires_at\`) VALUES ('', '', NULL)`,
        `UPDATE ${table} SET \`value\` = \`value\`, \`expires_at\` = \`expires_at\` WHERE \`key\` = ''`,
        `DELETE FROM ${table} WHERE \`key\` = ''`
      ]).pipe(
        Effect.provideService(SqlClient.SqlClient, sql),
        Effect.catchTag("DatabaseError", (error) =>
          new CheckpointUnavailable({
            store: name,
            operation: error.operation,
            detail: error.detail,
            transient: error.transient
          }))
      ),
      get: (key) => call("reading", Effect.map(read(key), Option.map((row) => String(row[0])))),
      set: (key, value) => call("writing", Effect.asVoid(sql.unsafe(upsert, [key, value]).raw)),
      list: (prefix) =>
        call(
          "listing runs",
          sql.unsafe("SELECT `key` FROM `ticket_tokens_state` WHERE SUBSTR(`key`, 1, ?) = ?", [prefix.length, prefix])
            .values.pipe(Effect.map((rows) => rows.map((row) => String(row[0]))))
        ),
      setFenced: (key, value, lockKey, holder) =>
        call(
          "writing the checkpoint",
          Effect.gen(function*() {
            const lock = yield* read(lockKey, forUpdate)
            if (Option.isNone(lock) || String(lock.value[0]) !== holder) return false
            yield* sql.unsafe(upsert, [key, value]).raw
            return true
          }),
          true
        ),
      acquire: (lockKey, holder, ttl) => call("taking the lock", take(lockKey, holder, ttl)),
      swap: (lockKey, expected, holder, ttl) =>
        call(
          "taking over a stale lock",
          changed(
            `UPDATE \`ticket_tokens_state\` SET \`value\` = ?, \`expires_at\` = ${now} + ? ` +
              "WHERE `key` = ? AND `value` = ?",
            [holder, ttl, lockKey, expected]
          )
        ),
      renew: (lockKey, holder, ttl) =>
        call(
          "renewing the lock",
          changed(
            `UPDATE \`ticket_tokens_state\` SET \`expires_at\` = ${now} + ? WHERE \`key\` = ? AND \`value\` = ?`,
            [ttl, lockKey, holder]
          )
        ),
      release: (lockKey, holder) =>
        call(
          "releasing the lock",
          Effect.asVoid(
            sql.unsafe("DELETE FROM `ticket_tokens_state` WHERE `key` = ? AND `value` = ?", [lockKey, holder]).raw
          )
        ),
      reclaim: (lockKey, holder, ttl, key, expected) =>
        call(
          "taking the lock back",
          Effect.gen(function*() {
            const record = yield* read(key, forUpdate)
            if (Option.isSome(record) && !expected.includes(String(record.value[0]))) return false
            return yield* take(lockKey, holder, ttl)
          }),
          true
        ),
      inspect: (lockKey) =>
        call(
          "reading the lock",
          sql.unsafe(
            `SELECT \`value\`, \`expires_at\` - ${now}, ${leaseless} FROM \`ticket_tokens_state\` WHERE \`key\` = ?`,
            [lockKey]
          ).values.pipe(Effect.map(([row]) => {
            if (row === undefined) return Option.none()
            if (toCount(row[2]) === 1) return Option.some({ value: String(row[0]), expiresInMillis: null })
            const expiresIn = Number(row[1])
            return expiresIn > 0 ? Option.some({ value: String(row[0]), expiresInMillis: expiresIn }) : Option.none()
          }))
        )
    }
    return store
  })
