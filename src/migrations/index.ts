import * as Migrator from "@effect/sql/Migrator"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { databaseError } from "../Db.js"
import { DatabaseError } from "../Domain.js"
import createTables from "./0001_create_tables.js"
import checkpointTable from "./0002_checkpoint_table.js"

/** Every migration, in order. */
export const loader = Migrator.fromRecord({
  "0001_create_tables": createTables,
  "0002_checkpoint_table": checkpointTable
})

/** Creates or upgrades the schema; returns the names of the migrations it ran (none when up to date). */
export const migrate = Migrator.make({})({ loader, table: "ticket_tokens_migrations" }).pipe(
  // The migrator turns a failing migration into a defect; it is an ordinary failure here.
  Effect.catchSomeDefect((defect) =>
    defect instanceof Migrator.MigrationError ? Option.some(Effect.fail(defect)) : Option.none()
  ),
  Effect.map((ran) => ran.map(([id, name]) => `${String(id).padStart(4, "0")}_${name}`)),
  Effect.catchTags({
    SqlError: (error) => Effect.fail(databaseError("migrating")(error)),
    MigrationError: (error) =>
      Effect.fail(new DatabaseError({ operation: "migrating", transient: false, detail: error.message, cause: error }))
  })
)
