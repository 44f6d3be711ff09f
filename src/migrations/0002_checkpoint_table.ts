/**
 * Where run records and run locks live when REDIS_URL is unset: one small key-value table with expiry.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.onDialectOrElse({
    mysql: () =>
      sql.unsafe(`CREATE TABLE IF NOT EXISTS \`ticket_tokens_state\` (
  \`key\` varchar(191) NOT NULL,
  \`value\` text NOT NULL,
  \`expires_at\` bigint NULL,
  PRIMARY KEY (\`key\`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`),
    orElse: () =>
      sql.unsafe(`CREATE TABLE IF NOT EXISTS "ticket_tokens_state" (
  "key" varchar(191) NOT NULL PRIMARY KEY,
  "value" text NOT NULL,
  "expires_at" bigint NULL
)`)
  })
})
