/**
 * Environment configuration: which database and which checkpoint store. Secrets stay `Redacted`; the
 * `display` forms are what messages may show (never a user name or password).
 */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Path from "node:path"
import { BadDatabaseUrl, BadRedisUrl } from "./Domain.js"

export type DatabaseTarget =
  | {
    readonly _tag: "mysql"
    readonly host: string
    readonly port: number
    readonly database: string
    readonly username: string | undefined
    readonly password: Redacted.Redacted | undefined
    readonly display: string
  }
  | {
    readonly _tag: "sqlite"
    readonly filename: string
    readonly display: string
  }

export interface RedisTarget {
  readonly url: Redacted.Redacted
  readonly display: string
}

/** Where the embedded database lives when DATABASE_URL is unset. */
export const defaultSqliteFile = Path.join("data", "tickets.sqlite")

const parseUrl = (raw: string): URL | undefined => {
  try {
    return new URL(raw)
  } catch {
    return undefined
  }
}

const parsePort = (url: URL, fallback: number): number | undefined => {
  if (url.port === "") return fallback
  const port = Number(url.port)
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined
}

const decode = (s: string): string => {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}

export const parseDatabaseUrl = (raw: string | undefined): Either.Either<DatabaseTarget, BadDatabaseUrl> => {
  const value = raw?.trim() ?? ""
  if (value === "") {
    return Either.right({ _tag: "sqlite", filename: defaultSqliteFile, display: `sqlite:${defaultSqliteFile}` })
  }
  if (value.startsWith("sqlite:")) {
    const filename = value.slice("sqlite:".length).replace(/^\/\/(?=\/)/, "")
    return filename === ""
      ? Either.left(new BadDatabaseUrl({ reason: "sqlite: needs a file path, as in sqlite:./data/tickets.sqlite" }))
      : Either.right({ _tag: "sqlite", filename, display: `sqlite:${filename}` })
  }
  const url = parseUrl(value)
  if (url === undefined) return Either.left(new BadDatabaseUrl({ reason: "it is not a URL" }))
  if (url.protocol !== "mysql:" && url.protocol !== "mariadb:") {
    return Either.left(new BadDatabaseUrl({ reason: `unsupported scheme "${url.protocol}"` }))
  }
  if (url.hostname === "") return Either.left(new BadDatabaseUrl({ reason: "no host" }))
  const port = parsePort(url, 3306)
  if (port === undefined) return Either.left(new BadDatabaseUrl({ reason: "the port is not a number in 1-65535" }))
  const database = decode(url.pathname.replace(/^\//, ""))
  if (database === "" || database.includes("/")) {
    return Either.left(new BadDatabaseUrl({ reason: "no database name after the host, as in /tickets" }))
  }
  return Either.right({
    _tag: "mysql",
    host: url.hostname,
    port,
    database,
    username: url.username === "" ? undefined : decode(url.username),
    password: url.password === "" ? undefined : Redacted.make(decode(url.password)),
    display: `mysql://${url.hostname}:${port}/${database}`
  })
}

export const parseRedisUrl = (raw: string): Either.Either<RedisTarget, BadRedisUrl> => {
  const url = parseUrl(raw.trim())
  if (url === undefined) return Either.left(new BadRedisUrl({ reason: "it is not a URL" }))
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    return Either.left(new BadRedisUrl({ reason: `unsupported scheme "${url.protocol}"` }))
  }
  if (url.hostname === "") return Either.left(new BadRedisUrl({ reason: "no host" }))
  const port = parsePort(url, 6379)
  if (port === undefined) return Either.left(new BadRedisUrl({ reason: "the port is not a number in 1-65535" }))
  const db = url.pathname.replace(/^\//, "")
  if (db !== "" && !/^\d+$/.test(db)) return Either.left(new BadRedisUrl({ reason: "the database is not a number" }))
  return Either.right({
    url: Redacted.make(raw.trim()),
    display: `${url.protocol}//${url.hostname}:${port}${db === "" ? "" : `/${db}`}`
  })
}

const optionalString = (name: string) =>
  Config.option(Config.redacted(name)).pipe(Config.map(Option.map(Redacted.value)))

/** The database DATABASE_URL points to (the embedded SQLite file when unset). */
export const databaseTarget: Effect.Effect<DatabaseTarget, BadDatabaseUrl> = optionalString("DATABASE_URL").pipe(
  Effect.orElseSucceed(() => Option.none<string>()),
  Effect.flatMap((raw) => parseDatabaseUrl(Option.getOrUndefined(raw)))
)

/** The Redis server REDIS_URL points to, if any. */
export const redisTarget: Effect.Effect<Option.Option<RedisTarget>, BadRedisUrl> = optionalString("REDIS_URL").pipe(
  Effect.orElseSucceed(() => Option.none<string>()),
  Effect.flatMap(Option.match({
    onNone: () => Effect.succeedNone,
    onSome: (raw) => raw.trim() === "" ? Effect.succeedNone : Effect.asSome(parseRedisUrl(raw))
  }))
)

/** Namespace of every Redis key this tool writes (REDIS_PREFIX, default "ticket-tokens"). */
export const redisPrefix: Effect.Effect<string> = Config.string("REDIS_PREFIX").pipe(
  Config.withDefault("ticket-tokens"),
  Effect.orElseSucceed(() => "ticket-tokens")
)
