/**
 * better-sqlite3 (installed with @effect/sql-sqlite-node) for reading the embedded database in tests. It
 * ships without type declarations: the little of it the tests use is typed here.
 */
import { createRequire } from "node:module"

export interface SqliteStatement {
  all(...params: Array<unknown>): Array<Record<string, unknown>>
  get(...params: Array<unknown>): Record<string, unknown> | undefined
  run(...params: Array<unknown>): unknown
}

export interface SqliteDatabase {
  prepare(sql: string): SqliteStatement
  close(): void
}

type SqliteConstructor = new(
  filename: string,
  options?: { readonly readonly?: boolean; readonly fileMustExist?: boolean; readonly timeout?: number }
) => SqliteDatabase

export const Sqlite = createRequire(import.meta.url)("better-sqlite3") as SqliteConstructor
