/**
 * Test data, fast: multi-row INSERTs of `rowsPerInsert` rows, several in flight on MySQL. Children pick
 * uniformly random existing parents (any number of them), new ids are time-ordered (v7) so inserts append
 * to the primary key, tokens come from TokenGen, and emails stay unique across runs.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import { randomBytes } from "node:crypto"
import {
  databaseError,
  datetime,
  Db,
  letEventLoopTurn,
  probe,
  requireSchema,
  retryingDatabase,
  statementText,
  writeError
} from "./Db.js"
import { DatabaseError, idPattern, NoParents, retryTransient, SchemaMismatch, SeedIncomplete } from "./Domain.js"
import { Progress, ProgressEvent } from "./Progress.js"
import { TokenGen } from "./TokenGen.js"
import * as Uuid from "./Uuid.js"

/** Rows per INSERT statement. */
const rowsPerInsert = 1000

const firstNames = [
  "Ada",
  "Alan",
  "Amara",
  "Ana",
  "Arjun",
  "Beatriz",
  "Bjorn",
  "Camille",
  "Carlos",
  "Chen",
  "Chloe",
  "Dana",
  "Daniel",
  "Diego",
  "Elena",
  "Emma",
  "Fatima",
  "Felix",
  "Grace",
  "Hana",
  "Hugo",
  "Ines",
  "Isaac",
  "Jamal",
  "Jana",
  "Javier",
  "Julia",
  "Kai",
  "Kenji",
  "Lars",
  "Leila",
  "Liam",
  "Lucia",
  "Mai",
  "Marco",
  "Maria",
  "Mateo",
  "Mei",
  "Nadia",
  "Noah",
  "Nora",
  "Olga",
  "Omar",
  "Paula",
  "Priya",
  "Rafael",
  "Rosa",
  "Sara",
  "Sofia",
  "Tomas",
  "Yara",
  "Zoe"
]
const lastNames = [
  "Abe",
  "Almeida",
  "Andersen",
  "Bauer",
  "Becker",
  "Costa",
  "Dubois",
  "Duarte",
  "Fischer",
  "Garcia",
  "Gonzalez",
  "Hansen",
  "Hoffmann",
  "Ivanova",
  "Jensen",
  "Kaur",
  "Kim",
  "Kowalski",
  "Lambert",
  "Larsen",
  "Lopez",
  "Martin",
  "Meyer",
  "Moreau",
  "Muller",
  "Nakamura",
  "Nguyen",
  "Novak",
  "Okafor",
  "Olsen",
  "Patel",
  "Perez",
  "Petrov",
  "Rossi",
  "Santos",
  "Schmidt",
  "Silva",
  "Singh",
  "Suzuki",
  "Tanaka",
  "Torres",
  "Wagner",
  "Weber",
  "Wong",
  "Zhang"
]
const domains = ["example.com", "example.org", "example.net", "mail.example", "corp.example"]
const events = [
  "Summer Jazz Night",
  "City Marathon Expo",
  "Symphony No. 9",
  "Indie Rock Festival",
  "Comedy Club Live",
  "Champions League Final",
  "Tech Conference 2026",
  "Opera Gala",
  "Food & Wine Fair",
  "Open Air Cinema",
  "Ballet: Swan Lake",
  "Harbour Fireworks",
  "Basketball Playoffs",
  "Stand-up Marathon",
  "Electronic Weekend"
]
const sections = ["General Admission", "Floor", "Balcony", "Stalls", "VIP", "Box", "Terrace", "Standing"]

const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(Math.random() * items.length)]!

const yearMillis = 365 * 24 * 3600 * 1000

/** Django's unusable password: "!" followed by 40 random characters. */
const unusablePassword = (): string => "!" + randomBytes(30).toString("base64").replace(/[+/=]/g, "x").slice(0, 40)

interface Timestamps {
  readonly created: string
  readonly deleted: string | null
}

const timestamps = (now: number, deletedShare: number): Timestamps => {
  const created = now - Math.floor(Math.random() * yearMillis)
  return {
    created: datetime(new Date(created)),
    deleted: Math.random() < deletedShare
      ? datetime(new Date(created + Math.floor(Math.random() * (now - created))))
      : null
  }
}

/** Ids of a parent table, packed as 16 bytes each (1M ids ≈ 16 MB), to pick from at random. */
class IdPool {
  private readonly chunks: Array<Buffer> = []
  size = 0
  add(hexIds: ReadonlyArray<string>): void {
    const chunk = Buffer.alloc(hexIds.length * 16)
    hexIds.forEach((id, i) => chunk.write(id, i * 16, 16, "hex"))
    this.chunks.push(chunk)
    this.size += hexIds.length
  }
  random(): string {
    let index = Math.floor(Math.random() * this.size)
    for (const chunk of this.chunks) {
      const n = chunk.length / 16
      if (index < n) return chunk.toString("hex", index * 16, index * 16 + 16)
      index -= n
    }
    throw new Error("IdPool.random on an empty pool")
  }
}

const loadIds = (table: "user" | "order") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const pool = new IdPool()
    let cursor = ""
    while (true) {
      const rows = yield* sql.unsafe(`SELECT \`id\` FROM \`${table}\` WHERE \`id\` > ? ORDER BY \`id\` LIMIT 20000`, [
        cursor
      ])
        .values.pipe(probe(`reading ${table} ids`, databaseError(`reading ${table} ids`)), retryingDatabase)
      if (rows.length === 0) return pool
      const ids = rows.map((row) => String(row[0]))
      const bad = ids.find((id) => !idPattern.test(id))
      if (bad !== undefined) {
        return yield* new SchemaMismatch({ detail: `${table} id ${JSON.stringify(bad)} is not 32 hex characters` })
      }
      pool.add(ids)
      cursor = ids[ids.length - 1]!
    }
  })

const placeholders = (columns: number, rows: number): string =>
  statementText(
    `values:${columns}x${rows}`,
    () => new Array(rows).fill(`(${new Array(columns).fill("?").join(",")})`).join(",")
  )

interface Seeding {
  readonly table: "user" | "order" | "ticket"
  readonly plural: "users" | "orders" | "tickets"
  readonly label: string
  readonly columns: ReadonlyArray<string>
  /** The rows of one INSERT (`count` of them, each with one value per column); `at` dates their new ids. */
  readonly rows: (count: number, offset: number, at: number) => Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>>
}

export interface SeedResult {
  readonly table: string
  readonly inserted: number
  readonly seconds: number
  /** A stop request (Ctrl-C) came before the last INSERT began: `inserted` rows were kept. */
  readonly stopped: boolean
}

/** A duplicate primary key: on a retried INSERT, the first attempt committed before its answer was lost. */
const isDuplicateId = (error: DatabaseError) =>
  /Duplicate entry for key '(?:\w+\.)?PRIMARY'|UNIQUE constraint failed: \w+\.id\b/.test(error.detail)

/**
 * One multi-row INSERT (all or nothing), retried on a transient failure such as a killed connection. A
 * token collision, astronomically unlikely, is reported as the failed insert it is.
 */
const insert = (
  statement: string,
  params: ReadonlyArray<unknown>,
  operation: string,
  onRetry: Effect.Effect<void>
) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    let attempts = 0
    return yield* Effect.suspend(() => {
      attempts++
      return sql.unsafe(statement, params).raw
    }).pipe(
      Effect.mapError((error) => {
        const e = writeError(operation)(error)
        return e._tag === "DuplicateToken" ? new DatabaseError({ operation, transient: false, detail: e.detail }) : e
      }),
      retryTransient((error) => error.transient, () => onRetry),
      Effect.catchIf((error) => attempts > 1 && isDuplicateId(error), () => Effect.void)
    )
  })

const run = (seeding: Seeding, count: number, stopRequested: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const db = yield* Db
    const progress = yield* Progress
    const start = yield* Clock.currentTimeMillis
    const columns = seeding.columns.map((c) => `\`${c}\``).join(", ")
    const batches = Math.ceil(count / rowsPerInsert)
    const inserted = yield* Ref.make(0)
    // The first failure stops new INSERTs; those in flight finish (an interrupted one may still commit on
    // the server), so that the count of rows kept is exact.
    const failure = yield* Ref.make<DatabaseError | undefined>(undefined)
    // A stop request likewise: no INSERT begins after it, those in flight finish.
    const stopped = yield* Ref.make(false)
    yield* progress.emit(ProgressEvent.Started({ label: seeding.label, base: 0, throttle: undefined }))
    yield* progress.emit(ProgressEvent.Total({ total: count }))
    const retried = progress.emit(ProgressEvent.Retried({ reason: "database" }))
    yield* Effect.forEach(
      Array.from({ length: batches }, (_, i) => i),
      (i) =>
        Effect.gen(function*() {
          if ((yield* Ref.get(failure)) !== undefined || (yield* Ref.get(stopped))) return
          if (yield* stopRequested) return yield* Ref.set(stopped, true)
          const size = Math.min(rowsPerInsert, count - i * rowsPerInsert)
          const rows = yield* seeding.rows(size, i * rowsPerInsert, yield* Clock.currentTimeMillis)
          const statement = `INSERT INTO \`${seeding.table}\` (${columns}) VALUES ${
            placeholders(seeding.columns.length, size)
          }`
          yield* insert(statement, rows.flat(), `inserting into ${seeding.table}`, retried).pipe(
            Effect.zipRight(Ref.update(inserted, (n) => n + size)),
            Effect.zipRight(progress.emit(ProgressEvent.Advanced({ rows: size, batchSize: size }))),
            Effect.catchAll((error) => Ref.update(failure, (first) => first ?? error))
          )
          yield* letEventLoopTurn(db.dialect)
        }),
      { concurrency: db.dialect === "mysql" ? 3 : 1, discard: true }
    )
    const failed = yield* Ref.get(failure)
    if (failed !== undefined) {
      return yield* new SeedIncomplete({
        error: failed,
        table: seeding.plural,
        inserted: yield* Ref.get(inserted),
        requested: count
      })
    }
    const wasStopped = yield* Ref.get(stopped)
    yield* progress.emit(ProgressEvent.Finished({ outcome: wasStopped ? "stopped" : "done" }))
    const seconds = ((yield* Clock.currentTimeMillis) - start) / 1000
    return {
      table: seeding.table,
      inserted: yield* Ref.get(inserted),
      seconds,
      stopped: wasStopped
    } satisfies SeedResult
  })

export const users = (count: number, stopRequested: Effect.Effect<boolean> = Effect.succeed(false)) =>
  Effect.gen(function*() {
    yield* requireSchema
    const now = yield* Clock.currentTimeMillis
    // Emails carry this run's tag and a sequence number, so they stay unique when seeding runs again.
    const tag = now.toString(36)
    return yield* run(
      {
        table: "user",
        plural: "users",
        label: "seed users",
        columns: [
          "id",
          "created_at",
          "updated_at",
          "deleted_at",
          "password",
          "last_login",
          "first_name",
          "last_name",
          "email"
        ],
        rows: (n, offset, at) =>
          Effect.sync(() => {
            const ids = Uuid.v7(n, at)
            return ids.map((id, i) => {
              const t = timestamps(now, 0.01)
              const first = pick(firstNames)
              const last = pick(lastNames)
              const email = `${first}.${last}.${tag}${(offset + i).toString(36)}@${pick(domains)}`.toLowerCase()
              const login = Math.random() < 0.7 ? t.created : null
              return [id, t.created, t.created, t.deleted, unusablePassword(), login, first, last, email]
            })
          })
      },
      count,
      stopRequested
    )
  })

export const orders = (count: number, stopRequested: Effect.Effect<boolean> = Effect.succeed(false)) =>
  Effect.gen(function*() {
    yield* requireSchema
    const parents = yield* loadIds("user")
    if (parents.size === 0) return yield* new NoParents({ parent: "users" })
    const now = yield* Clock.currentTimeMillis
    return yield* run(
      {
        table: "order",
        plural: "orders",
        label: "seed orders",
        columns: ["id", "created_at", "updated_at", "deleted_at", "name", "user_id"],
        rows: (n, _offset, at) =>
          Effect.sync(() =>
            Uuid.v7(n, at).map((id) => {
              const t = timestamps(now, 0.02)
              return [id, t.created, t.created, t.deleted, `${pick(events)} order`, parents.random()]
            })
          )
      },
      count,
      stopRequested
    )
  })

export const tickets = (count: number, stopRequested: Effect.Effect<boolean> = Effect.succeed(false)) =>
  Effect.gen(function*() {
    yield* requireSchema
    const parents = yield* loadIds("order")
    if (parents.size === 0) return yield* new NoParents({ parent: "orders" })
    const tokenGen = yield* TokenGen
    const now = yield* Clock.currentTimeMillis
    return yield* run(
      {
        table: "ticket",
        plural: "tickets",
        label: "seed tickets",
        columns: ["id", "created_at", "updated_at", "deleted_at", "name", "token", "order_id"],
        rows: (n, _offset, at) =>
          Effect.map(tokenGen.tokens(n), (tokens) =>
            Uuid.v7(n, at).map((id, i) => {
              const t = timestamps(now, 0.03)
              const seat = `${String.fromCharCode(65 + Math.floor(Math.random() * 20))}${
                1 + Math.floor(Math.random() * 40)
              }`
              return [
                id,
                t.created,
                t.created,
                t.deleted,
                `${pick(events)} - ${pick(sections)} ${seat}`,
                tokens[i],
                parents.random()
              ]
            }))
      },
      count,
      stopRequested
    )
  })
