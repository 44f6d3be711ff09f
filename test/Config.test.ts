import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option, Redacted } from "effect"
import { parseDatabaseUrl, parseRedisUrl, redisPrefix, redisTarget, replicaTargets } from "../src/Config.js"

/** The URL is refused with an error whose line gives `reason` and never shows `secret`. */
const expectRefused = (
  parsed: Either.Either<unknown, { readonly message: string }>,
  reason: string,
  secret: string
) => {
  expect(Either.isLeft(parsed)).toBe(true)
  const error = Either.getLeft(parsed).pipe((o) => (o._tag === "Some" ? o.value : undefined))!
  expect(error.message).toContain(reason)
  expect(error.message).not.toContain(secret)
}

describe("DATABASE_URL", () => {
  it("unset means the embedded SQLite file", () => {
    expect(parseDatabaseUrl(undefined)).toEqual(
      Either.right(expect.objectContaining({ _tag: "sqlite", filename: "data/tickets.sqlite" }))
    )
  })

  it("set but empty is refused, not taken for unset (a variable that expanded to nothing)", () => {
    for (const blank of ["", "  "]) expectRefused(parseDatabaseUrl(blank), "it is set but empty", "s3cret")
  })

  it("parses mysql URLs, keeping the password redacted and out of the display form", () => {
    const parsed = parseDatabaseUrl("mysql://app:p%40ss%3Aword@db.internal:3307/tickets")
    expect(Either.isRight(parsed)).toBe(true)
    const target = Either.getOrThrow(parsed)
    expect(target).toMatchObject({
      _tag: "mysql",
      host: "db.internal",
      port: 3307,
      database: "tickets",
      username: "app"
    })
    if (target._tag !== "mysql") throw new Error("not mysql")
    expect(Redacted.value(target.password!)).toBe("p@ss:word")
    expect(String(target.password)).not.toContain("word")
    expect(target.display).toBe("mysql://db.internal:3307/tickets")
    expect(Either.getOrThrow(parseDatabaseUrl("mysql://root@127.0.0.1/x"))).toMatchObject({ port: 3306 })
    expect(Either.getOrThrow(parseDatabaseUrl("mysql://root@[::1]:3307/x"))).toMatchObject({ host: "::1", port: 3307 })
  })

  it("takes ssl-mode and ssl-ca as the mysql client does (a CA alone means VERIFY_CA); plaintext by default", () => {
    const tls = (query: string) => {
      const target = Either.getOrThrow(parseDatabaseUrl(`mysql://u@db.internal/t${query}`))
      return target._tag === "mysql" ? target.tls : undefined
    }
    expect(tls("")).toEqual({ mode: "disabled", ca: undefined })
    expect(tls("?ssl-mode=required")).toEqual({ mode: "required", ca: undefined })
    expect(tls("?ssl-mode=VERIFY_IDENTITY")).toEqual({ mode: "verify-identity", ca: undefined })
    expect(tls("?ssl-ca=%2Fetc%2Fca.pem")).toEqual({ mode: "verify-ca", ca: "/etc/ca.pem" })
    expect(tls("?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem")).toEqual({ mode: "verify-identity", ca: "/etc/ca.pem" })
    // An address is fine where no host name is checked.
    expect(Either.getOrThrow(parseDatabaseUrl("mysql://u@10.0.0.5/t?ssl-mode=VERIFY_CA&ssl-ca=/ca.pem")))
      .toMatchObject({ host: "10.0.0.5", tls: { mode: "verify-ca" } })
  })

  it("parses sqlite paths", () => {
    expect(Either.getOrThrow(parseDatabaseUrl("sqlite:./x/y.db"))).toMatchObject({ filename: "./x/y.db" })
    expect(Either.getOrThrow(parseDatabaseUrl("sqlite:///abs/y.db"))).toMatchObject({ filename: "/abs/y.db" })
  })

  it.each([
    ["mysql//nope", "not a URL"],
    ["postgres://a@b/c", "unsupported scheme"],
    ["mysql://root:hunter2@host:99999/db", "the port is not a number in 1-65535"],
    ["mysql://root:hunter2@host:33o6/db", "the port is not a number in 1-65535"],
    ["mysql://root:hunter2@:3306/db", "not a URL"],
    ["mysql://root:hunter2@host:3306", "no database"],
    ["mysql://root:hunter2@host:3306/", "no database"],
    ["mysql://root:hunter2@host:3306/db/extra", "the path holds more than a database name: \"db/extra\""],
    ["mysql://root:hunter2%zz@host/db", "the password has a malformed %-escape (write a literal % as %25)"],
    ["mysql://ro%Xot:hunter2@host/db", "the user name has a malformed %-escape"],
    ["mysql://root:hunter2#x@host/db", "it holds a #, which ends a URL there (write a # in the password as %23)"],
    ["mysql://root:hunter2@host/db#x", "it holds a #"],
    ["sqlite:", "file path"],
    ["sqlite::memory:", "lasts only one command"],
    ["sqlite:file:/tmp/x.db?mode=ro", "URIs are not read"],
    ["mysql://root:hunter2@host/db?sslmode=require", "unknown parameter \"sslmode\""],
    ["mysql://root:hunter2@host/db?ssl-mode=PREFERRED", "ssl-mode \"PREFERRED\" is not one of"],
    ["mysql://root:hunter2@host/db?ssl-mode=REQUIRED&ssl-mode=DISABLED", "ssl-mode is given twice"],
    ["mysql://root:hunter2@host/db?ssl-mode=REQUIRED&ssl-ca=/ca.pem", "pass ssl-mode=VERIFY_CA or VERIFY_IDENTITY"],
    ["mysql://root:hunter2@host/db?ssl-ca=", "ssl-ca needs the path"],
    ["mysql://root:hunter2@10.0.0.5/db?ssl-mode=VERIFY_IDENTITY", "not the address 10.0.0.5"],
    ["mysql://root:hunter2@[::1]/db?ssl-mode=verify_identity", "not the address ::1"]
  ])("rejects %s with a reason and never the password", (url, reason) => {
    expectRefused(parseDatabaseUrl(url), reason, "hunter2")
  })
})

describe("REDIS_URL", () => {
  const target = (env: Array<[string, string]>) =>
    redisTarget.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(env))), Effect.either)

  it.effect("unset: checkpoints in the database; set but empty: refused, not taken for unset", () =>
    Effect.gen(function*() {
      expect(yield* target([])).toEqual(Either.right(Option.none()))
      for (const blank of ["", " "]) {
        const refused = yield* target([["REDIS_URL", blank]])
        expectRefused(refused, "REDIS_URL is malformed: it is set but empty", "s3cret")
      }
    }))

  it.effect("REDIS_PREFIX: the default when unset; set but empty is refused (runners would not see each other)", () =>
    Effect.gen(function*() {
      const prefix = (env: Array<[string, string]>) =>
        redisPrefix.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(env))), Effect.either)
      expect(yield* prefix([])).toEqual(Either.right("ticket-tokens"))
      expect(yield* prefix([["REDIS_PREFIX", "tt-a"]])).toEqual(Either.right("tt-a"))
      for (const blank of ["", " "]) {
        expectRefused(yield* prefix([["REDIS_PREFIX", blank]]), "REDIS_PREFIX is set but empty", "s3cret")
      }
    }))

  it("parses redis URLs and hides the password", () => {
    const target = Either.getOrThrow(parseRedisUrl("redis://:s3cret@cache:6380/2"))
    expect(target.display).toBe("redis://cache:6380/2")
    expect(Redacted.value(target.url)).toContain("s3cret")
  })

  it("takes the database as ?db=N too, and hands ioredis the URL without parameters (they would override its options)", () => {
    for (
      const url of [
        "redis://:s3cret@cache:6380?db=2",
        "redis://:s3cret@cache:6380/?db=2",
        "redis://:s3cret@cache:6380/2?db=2"
      ]
    ) {
      const target = Either.getOrThrow(parseRedisUrl(url))
      expect(target.display).toBe("redis://cache:6380/2")
      expect(Redacted.value(target.url)).toBe("redis://:s3cret@cache:6380/2")
    }
    expect(Redacted.value(Either.getOrThrow(parseRedisUrl("rediss://u%40x:p%2Fw@[::1]:6380/")).url))
      .toBe("rediss://u%40x:p%2Fw@[::1]:6380/")
  })

  it.each([
    ["redis://:s3cret@h:6379/?connectTimeout=abc", `unknown parameter "connectTimeout" (the URL takes db)`],
    ["redis://:s3cret@h:6379/?password=s3cret", `unknown parameter "password" (the URL takes db)`],
    ["redis://:s3cret@h:6379/?db=1&db=2", "the parameter db is given twice"],
    ["redis://:s3cret@h:6379/1?db=2", "it gives two database numbers, /1 and ?db=2"],
    ["redis://:s3cret@h:6379/?db=x", "the database is not a number"],
    ["redis://:s3cret@h:6379/?db=", "the database is not a number"],
    ["http://x", "unsupported scheme"],
    ["redis://", "no host"],
    ["redis://h:0", "the port is not a number in 1-65535"],
    ["redis://:s3cret@h:70000", "the port is not a number in 1-65535"],
    ["redis://h/abc", "the database is not a number"],
    ["redis://:s3cret%PW@h:6379/5", "the password has a malformed %-escape (write a literal % as %25)"],
    ["redis://:s3cret#2@h:6379/5", "it holds a #, which ends a URL there (write a # in the password as %23)"],
    ["nonsense", "not a URL"]
  ])("rejects %s with a reason and never the password", (url, reason) => {
    expectRefused(parseRedisUrl(url), reason, "s3cret")
  })
})

describe("REPLICA_URLS", () => {
  const targets = (value?: string) =>
    replicaTargets.pipe(
      Effect.withConfigProvider(
        ConfigProvider.fromMap(new Map(value === undefined ? [] : [["REPLICA_URLS", value]]))
      ),
      Effect.either
    )

  it.effect("unset: no replica; a comma-separated list of MySQL URLs, each parsed as DATABASE_URL is", () =>
    Effect.gen(function*() {
      expect(yield* targets()).toEqual(Either.right([]))
      const two = Either.getOrThrow(yield* targets("mysql://ro:s3cret@db2:3306/app, mysql://db3/app?ssl-mode=REQUIRED"))
      expect(two.map((t) => t.display)).toEqual(["mysql://db2:3306/app", "mysql://db3:3306/app"])
      expect(two[1]!.tls.mode).toBe("required")
    }))

  it.effect("refuses, naming the entry and never the password: empty, an empty entry, not MySQL, malformed", () =>
    Effect.gen(function*() {
      const cases: Array<[string, string]> = [
        [" ", "REPLICA_URLS is malformed: it is set but empty."],
        ["mysql://ro:s3cret@db2/app,", "REPLICA_URLS is malformed: replica 2: it is empty."],
        ["sqlite:./x.sqlite", "replica 1: not a MySQL URL"],
        ["mysql://db2/app,mysql://ro:s3cret@db3:99999/app", "replica 2: the port is not a number in 1-65535"]
      ]
      for (const [value, reason] of cases) expectRefused(yield* targets(value), reason, "s3cret")
    }))
})
