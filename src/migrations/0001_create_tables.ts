/**
 * The ticket app's tables, as Django creates them on MySQL (uuid hex `char(32)` keys, `datetime(6)`
 * timestamps, soft delete). `IF NOT EXISTS` so that `migrate` against the app's own database is harmless.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

const mysql = [
  `CREATE TABLE IF NOT EXISTS \`user\` (
  \`id\` char(32) NOT NULL,
  \`created_at\` datetime(6) NOT NULL,
  \`updated_at\` datetime(6) NOT NULL,
  \`deleted_at\` datetime(6) NULL,
  \`password\` varchar(128) NOT NULL,
  \`last_login\` datetime(6) NULL,
  \`first_name\` varchar(150) NOT NULL,
  \`last_name\` varchar(150) NOT NULL,
  \`email\` varchar(254) NOT NULL,
  PRIMARY KEY (\`id\`),
  UNIQUE KEY \`email\` (\`email\`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
  `CREATE TABLE IF NOT EXISTS \`order\` (
  \`id\` char(32) NOT NULL,
  \`created_at\` datetime(6) NOT NULL,
  \`updated_at\` datetime(6) NOT NULL,
  \`deleted_at\` datetime(6) NULL,
  \`name\` varchar(255) NOT NULL,
  \`user_id\` char(32) NOT NULL,
  PRIMARY KEY (\`id\`),
  KEY \`order_user_id_fk_user_id\` (\`user_id\`),
  CONSTRAINT \`order_user_id_fk_user_id\` FOREIGN KEY (\`user_id\`) REFERENCES \`user\` (\`id\`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
  `CREATE TABLE IF NOT EXISTS \`ticket\` (
  \`id\` char(32) NOT NULL,
  \`created_at\` datetime(6) NOT NULL,
  \`updated_at\` datetime(6) NOT NULL,
  \`deleted_at\` datetime(6) NULL,
  \`name\` varchar(255) NOT NULL,
  \`token\` varchar(255) NOT NULL,
  \`order_id\` char(32) NOT NULL,
  PRIMARY KEY (\`id\`),
  UNIQUE KEY \`token\` (\`token\`),
  KEY \`ticket_created_at\` (\`created_at\`),
  KEY \`ticket_order_id_fk_order_id\` (\`order_id\`),
  CONSTRAINT \`ticket_order_id_fk_order_id\` FOREIGN KEY (\`order_id\`) REFERENCES \`order\` (\`id\`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`
]

const sqlite = [
  `CREATE TABLE IF NOT EXISTS "user" (
  "id" char(32) NOT NULL PRIMARY KEY,
  "created_at" datetime NOT NULL,
  "updated_at" datetime NOT NULL,
  "deleted_at" datetime NULL,
  "password" varchar(128) NOT NULL,
  "last_login" datetime NULL,
  "first_name" varchar(150) NOT NULL,
  "last_name" varchar(150) NOT NULL,
  "email" varchar(254) NOT NULL UNIQUE
)`,
  `CREATE TABLE IF NOT EXISTS "order" (
  "id" char(32) NOT NULL PRIMARY KEY,
  "created_at" datetime NOT NULL,
  "updated_at" datetime NOT NULL,
  "deleted_at" datetime NULL,
  "name" varchar(255) NOT NULL,
  "user_id" char(32) NOT NULL REFERENCES "user" ("id") DEFERRABLE INITIALLY DEFERRED
)`,
  `CREATE INDEX IF NOT EXISTS "order_user_id" ON "order" ("user_id")`,
  `CREATE TABLE IF NOT EXISTS "ticket" (
  "id" char(32) NOT NULL PRIMARY KEY,
  "created_at" datetime NOT NULL,
  "updated_at" datetime NOT NULL,
  "deleted_at" datetime NULL,
  "name" varchar(255) NOT NULL,
  "token" varchar(255) NOT NULL UNIQUE,
  "order_id" char(32) NOT NULL REFERENCES "order" ("id") DEFERRABLE INITIALLY DEFERRED
)`,
  `CREATE INDEX IF NOT EXISTS "ticket_created_at" ON "ticket" ("created_at")`,
  `CREATE INDEX IF NOT EXISTS "ticket_order_id" ON "ticket" ("order_id")`
]

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const statements = sql.onDialectOrElse({ mysql: () => mysql, orElse: () => sqlite })
  for (const statement of statements) yield* sql.unsafe(statement)
})
