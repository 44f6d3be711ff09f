/**
 * Environment configuration: which database and which checkpoint store. Secrets stay `Redacted`; the
 * `display` forms are what messages may show (never a user name or password).
 */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Net from "node:net"
import * as Path from "node:path"
import { BadDatabaseUrl, BadRedisUrl, BadUsage } from "./Domain.js"

/** TLS to MySQL, as the `mysql` client's `--ssl-mode` names it (`PREFERRED` has no place in a URL that must mean one thing). */
export type TlsMode = "disabled" | "required" | "verify-ca" | "verify-identity"

export interface Tls {
  readonly mode: TlsMode
  /** A PEM file of the certificate authority to trust (the system's CAs when unset). */
  readonly ca: string | undefined
}

export type DatabaseTarget =
  | {
    readonly _tag: "mysql"
    readonly host: string
    readonly port: number
    readonly database: string
    readonly username: string | undefined
    readonly password: Redacted.Redacted | undefined
    readonly tls: Tls
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
const defaultSqliteFile = Path.join("data", "tickets.sqlite")

const parseUrl = (raw: string): URL | undefined => {
  try {
    return new URL(raw)
  } catch {
    return undefined
  }
}

/**
 * A `#` ends a URL: whatever follows is a fragment, which no server has a use for. Most likely it was meant
 * in the password, where the parser would have cut it short and taken the rest for the host or port.
 */
const hashReason = "it holds a #, which ends a URL there (write a # in the password as %23)"

/** Why `raw` does not parse: a port out of range (the parser's most common refusal), else not a URL at all. */
const notAUrl = (raw: string): string => {
  const parts = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)(.*)$/i.exec(raw)
  const authority = parts?.[2] ?? ""
  const colon = authority.lastIndexOf(":")
  const withoutPort = colon > authority.lastIndexOf("@") && colon > authority.lastIndexOf("]")
    ? `${parts![1]}${authority.slice(0, colon)}${parts![3]}`
    : undefined
  return withoutPort !== undefined && parseUrl(withoutPort)?.hostname
    ? "the port is not a number in 1-65535"
    : "it is not a URL"
}

const parsePort = (url: URL, fallback: number): number | undefined => {
  if (url.port === "") return fallback
  const port = Number(url.port)
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined
}

const decode = (s: string): string | undefined => {
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

/** Why the URL's user name, password or path does not decode (a `%` not followed by two hex digits), if so. */
const badEscape = (url: URL): string | undefined => {
  const part = ([["user name", url.username], ["password", url.password], ["path", url.pathname]] as const)
    .find(([, text]) => decode(text) === undefined)
  return part && `the ${part[0]} has a malformed %-escape (write a literal % as %25)`
}

const sslModes: Record<string, TlsMode> = {
  DISABLED: "disabled",
  REQUIRED: "required",
  VERIFY_CA: "verify-ca",
  VERIFY_IDENTITY: "verify-identity"
}

/**
 * The URL's parameters: `ssl-mode` and `ssl-ca`, as for the `mysql` client (a CA alone means VERIFY_CA).
 * Anything else is refused rather than ignored: a TLS setting spelled another way must not quietly fall back
 * to a plaintext connection.
 */
const parseTls = (params: URLSearchParams, host: string): Either.Either<Tls, BadDatabaseUrl> => {
  const bad = (reason: string) => Either.left(new BadDatabaseUrl({ reason }))
  for (const name of new Set(params.keys())) {
    if (name !== "ssl-mode" && name !== "ssl-ca") {
      return bad(`unknown parameter "${name}" (the URL takes ssl-mode and ssl-ca)`)
    }
    if (params.getAll(name).length > 1) return bad(`the parameter ${name} is given twice`)
  }
  const ca = params.get("ssl-ca") ?? undefined
  if (ca === "") return bad("ssl-ca needs the path of a PEM file")
  const raw = params.get("ssl-mode")
  const mode = raw === null ? (ca === undefined ? "disabled" : "verify-ca") : sslModes[raw.toUpperCase()]
  if (mode === undefined) return bad(`ssl-mode "${raw}" is not one of ${Object.keys(sslModes).join(", ")}`)
  if (ca !== undefined && (mode === "disabled" || mode === "required")) {
    return bad(`ssl-ca is only used to verify the server: pass ssl-mode=VERIFY_CA or VERIFY_IDENTITY with it`)
  }
  // The driver checks a certificate against a host *name* only (for an address it would check "localhost").
  if (mode === "verify-identity" && Net.isIP(host)) {
    return bad(
      `ssl-mode=VERIFY_IDENTITY needs the host name the server's certificate is issued for, not the address ` +
        `${host} (or use VERIFY_CA)`
    )
  }
  return Either.right({ mode, ca })
}

export const parseDatabaseUrl = (raw: string | undefined): Either.Either<DatabaseTarget, BadDatabaseUrl> => {
  if (raw === undefined) {
    return Either.right({ _tag: "sqlite", filename: defaultSqliteFile, display: `sqlite:${defaultSqliteFile}` })
  }
  const value = raw.trim()
  // Set to nothing (`DATABASE_URL="$PROD_URL"` with PROD_URL unset, say): not taken for the embedded default.
  if (value === "") {
    return Either.left(
      new BadDatabaseUrl({ reason: `it is set but empty (unset it for the embedded ${defaultSqliteFile})` })
    )
  }
  if (value.startsWith("sqlite:")) {
    const filename = value.slice("sqlite:".length).replace(/^\/\/(?=\/)/, "")
    const refused = (reason: string) => Either.left(new BadDatabaseUrl({ reason }))
    if (filename === "") return refused("sqlite: needs a file path, as in sqlite:./data/tickets.sqlite")
    // Each command is a process of its own: an in-memory database would be gone before the next one.
    if (filename === ":memory:") return refused("sqlite::memory: lasts only one command; give a file path")
    // Taken as a path, a URI would make a folder named `file:` (its options unread).
    if (filename.startsWith("file:")) return refused("sqlite:file:… URIs are not read; give a plain file path")
    return Either.right({ _tag: "sqlite", filename, display: `sqlite:${filename}` })
  }
  if (value.includes("#")) return Either.left(new BadDatabaseUrl({ reason: hashReason }))
  const url = parseUrl(value)
  if (url === undefined) return Either.left(new BadDatabaseUrl({ reason: notAUrl(value) }))
  if (url.protocol !== "mysql:" && url.protocol !== "mariadb:") {
    return Either.left(new BadDatabaseUrl({ reason: `unsupported scheme "${url.protocol}"` }))
  }
  if (url.hostname === "") return Either.left(new BadDatabaseUrl({ reason: "no host" }))
  const port = parsePort(url, 3306)
  if (port === undefined) return Either.left(new BadDatabaseUrl({ reason: "the port is not a number in 1-65535" }))
  const escape = badEscape(url)
  if (escape !== undefined) return Either.left(new BadDatabaseUrl({ reason: escape }))
  const database = decode(url.pathname.replace(/^\//, "")) ?? ""
  if (database === "") {
    return Either.left(new BadDatabaseUrl({ reason: "no database name after the host, as in /tickets" }))
  }
  if (database.includes("/")) {
    return Either.left(new BadDatabaseUrl({ reason: `the path holds more than a database name: "${database}"` }))
  }
  // An IPv6 address comes bracketed ([::1]); the driver takes it bare.
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1")
  return Either.map(parseTls(url.searchParams, host), (tls) => ({
    _tag: "mysql" as const,
    host,
    port,
    database,
    username: url.username === "" ? undefined : decode(url.username),
    password: url.password === "" ? undefined : Redacted.make(decode(url.password) ?? ""),
    tls,
    display: `mysql://${url.hostname}:${port}/${database}`
  }))
}

export const parseRedisUrl = (raw: string): Either.Either<RedisTarget, BadRedisUrl> => {
  if (raw.includes("#")) return Either.left(new BadRedisUrl({ reason: hashReason }))
  const url = parseUrl(raw.trim())
  if (url === undefined) return Either.left(new BadRedisUrl({ reason: notAUrl(raw.trim()) }))
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    return Either.left(new BadRedisUrl({ reason: `unsupported scheme "${url.protocol}"` }))
  }
  if (url.hostname === "") return Either.left(new BadRedisUrl({ reason: "no host" }))
  const port = parsePort(url, 6379)
  if (port === undefined) return Either.left(new BadRedisUrl({ reason: "the port is not a number in 1-65535" }))
  const escape = badEscape(url)
  if (escape !== undefined) return Either.left(new BadRedisUrl({ reason: escape }))
  // ioredis would take any other parameter for one of its options, over those the tool sets (its timeouts,
  // retries, offline queue): refused, as DATABASE_URL's are.
  for (const name of new Set(url.searchParams.keys())) {
    if (name !== "db") return Either.left(new BadRedisUrl({ reason: `unknown parameter "${name}" (the URL takes db)` }))
    if (url.searchParams.getAll(name).length > 1) {
      return Either.left(new BadRedisUrl({ reason: `the parameter ${name} is given twice` }))
    }
  }
  const path = url.pathname.replace(/^\//, "")
  const query = url.searchParams.get("db")
  if (path !== "" && query !== null && query !== path) {
    return Either.left(new BadRedisUrl({ reason: `it gives two database numbers, /${path} and ?db=${query}` }))
  }
  const db = query ?? path
  if ((db !== "" || query !== null) && !/^\d+$/.test(db)) {
    return Either.left(new BadRedisUrl({ reason: "the database is not a number" }))
  }
  // What ioredis is given: the database as the path, no parameters.
  url.search = ""
  if (db !== "") url.pathname = `/${db}`
  return Either.right({
    url: Redacted.make(url.href),
    display: `${url.protocol}//${url.hostname}:${port}${db === "" ? "" : `/${db}`}`
  })
}

/** An environment variable's text, if set (redacted while read: it may hold a password). */
const optionalVariable = (name: string): Effect.Effect<Option.Option<string>> =>
  Config.option(Config.redacted(name)).pipe(
    Config.map(Option.map(Redacted.value)),
    Effect.orElseSucceed(() => Option.none<string>())
  )

/** The database DATABASE_URL points to (the embedded SQLite file when unset). */
export const databaseTarget: Effect.Effect<DatabaseTarget, BadDatabaseUrl> = optionalVariable("DATABASE_URL").pipe(
  Effect.flatMap((raw) => parseDatabaseUrl(Option.getOrUndefined(raw)))
)

export type MysqlTarget = Extract<DatabaseTarget, { readonly _tag: "mysql" }>

/**
 * The replicas REPLICA_URLS lists (comma-separated, each as DATABASE_URL gives a MySQL server), whose lag a
 * run waits on; none when unset. Set but empty is refused, as DATABASE_URL is.
 */
export const replicaTargets: Effect.Effect<ReadonlyArray<MysqlTarget>, BadUsage> = optionalVariable("REPLICA_URLS")
  .pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.succeed([]),
      onSome: (raw) =>
        Effect.forEach(raw.split(","), (item, i) => {
          const bad = (reason: string) =>
            new BadUsage({
              message: `REPLICA_URLS is malformed: ${raw.trim() === "" ? reason : `replica ${i + 1}: ${reason}`}. ` +
                "List the replicas as mysql://user:password@host:3306/database, separated by commas."
            })
          if (item.trim() === "") return Effect.fail(bad(raw.trim() === "" ? "it is set but empty" : "it is empty"))
          return Either.match(parseDatabaseUrl(item), {
            onLeft: (error) => Effect.fail(bad(error.reason)),
            onRight: (target) => target._tag === "mysql" ? Effect.succeed(target) : Effect.fail(bad("not a MySQL URL"))
          })
        })
    }))
  )

/** The Redis server REDIS_URL points to, if any. */
export const redisTarget: Effect.Effect<Option.Option<RedisTarget>, BadRedisUrl> = optionalVariable("REDIS_URL").pipe(
  Effect.flatMap(Option.match({
    onNone: () => Effect.succeedNone,
    // Set to nothing is not taken for unset: a runner with checkpoints in the database would not see the
    // lock of one using Redis.
    onSome: (raw) =>
      raw.trim() === ""
        ? Effect.fail(
          new BadRedisUrl({ reason: "it is set but empty (unset it to keep checkpoints in the database's table)" })
        )
        : Effect.asSome(parseRedisUrl(raw))
  }))
)

/**
 * Namespace of every Redis key this tool writes (REDIS_PREFIX, default "ticket-tokens"). Set to nothing is
 * refused, as REDIS_URL is: runners with different prefixes do not see each other's lock or runs.
 */
export const redisPrefix: Effect.Effect<string, BadUsage> = optionalVariable("REDIS_PREFIX").pipe(
  Effect.flatMap(Option.match({
    onNone: () => Effect.succeed("ticket-tokens"),
    onSome: (prefix) =>
      prefix.trim() === ""
        ? Effect.fail(
          new BadUsage({
            message: "REDIS_PREFIX is set but empty: unset it for the default prefix ticket-tokens, or give the " +
              "prefix the other runners on this Redis use"
          })
        )
        : Effect.succeed(prefix)
  }))
)
