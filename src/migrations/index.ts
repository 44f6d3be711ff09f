import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { databaseError, describe, missingTable, missingTables, toCount } from "../Db.js"
import { DatabaseError } from "../Domain.js"
import createTables from "./0001_create_tables.js"
import checkpointTable from "./0002_checkpoint_table.js"

/** Every migration, in order. */
const loader = Migrator.fromRecord({
  "0001_create_tables": createTables,
  "0002_checkpoint_table": checkpointTable
})

const table = "ticket_tokens_migrations"

/** The last migration recorded as applied (0 when none is, or the table does not exist yet). */
const lastRecorded = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    sql.unsafe(`SELECT MAX(migration_id) FROM ${table}`).values.pipe(
      Effect.map((rows) => toCount(rows[0]?.[0])),
      Effect.catchAll((error) =>
        missingTable(error) ? Effect.succeed(0) : Effect.fail(databaseError("migrating")(error))
      )
    )
)

/** Removes the records of the migrations after `last`, so that they run again (every one is idempotent). */
const unrecordAfter = (last: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(`DELETE FROM ${table} WHERE migration_id > ?`, [last]))

/**
 * The migrator records the migrations it is about to run before running them, in a transaction that
 * MySQL's DDL commits implicitly: a migration that fails would stay recorded as applied and never run
 * again. Its rows are removed after a failure, so that `migrate` reruns it.
 */
const forgetFailed = (before: number) =>
  unrecordAfter(before).pipe(
    Effect.catchAll((error) =>
      Effect.logWarning(`could not unrecord the failed migrations (${describe(error)}): rerun \`migrate\``)
    )
  )

/**
 * Creates or upgrades the schema; returns the names of the migrations it ran (none when up to date) and
 * the tables it created (those there already are kept as they are). Refuses, writing nothing, when an app
 * table that exists is not the app's; when one of its tables (the checkpoint table too) was dropped since
 * the migrations ran, they all run again.
 */
export const migrate = Effect.gen(function*() {
  const recorded = yield* lastRecorded
  const missing = yield* missingTables
  const dropped = missing.length > 0 && recorded > 0
  if (dropped) yield* Effect.mapError(unrecordAfter(0), databaseError("migrating"))
  const before = dropped ? 0 : recorded
  return yield* Migrator.make({})({ loader, table }).pipe(
    // The migrator turns a failing migration into a defect; it is an ordinary failure here.
    Effect.catchSomeDefect((defect) =>
      defect instanceof Migrator.MigrationError ? Option.some(Effect.fail(defect)) : Option.none()
    ),
    Effect.tapError((error) =>
      error instanceof Migrator.MigrationError && error.reason === "failed" ? forgetFailed(before) : Effect.void
    ),
    Effect.map((ran) => ({
      ran: ran.map(([id, name]) => `${String(id).padStart(4, "0")}_${name}`),
      created: ran.length === 0 ? [] : missing
    })),
    Effect.catchTags({
      SqlError: (error) => Effect.fail(databaseError("migrating")(error)),
      MigrationError: (error) =>
        Effect.fail(
          new DatabaseError({
            operation: "migrating",
            transient: false,
            // The migration's own failure says what is wrong ("Migration … failed" alone does not).
            detail: error.cause === undefined ? error.message : `${error.message}: ${describe(error.cause)}`,
            cause: error
          })
        )
    })
  )
})
