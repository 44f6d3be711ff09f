/**
 * The command tree. Parses flags, chooses the layers each command needs, and hands over to the modules
 * below; nothing here runs an Effect.
 */
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import type { SqlClient } from "@effect/sql"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Path from "node:path"
import {
  argvProblem,
  helpFirst,
  hoistLogLevel,
  integerBetween,
  withParserErrorsAsLines,
  withPlainTextOffTerminal
} from "./Argv.js"
import * as Checkpoint from "./Checkpoint.js"
import * as Db from "./Db.js"
import { BadUsage, committedUpTo, counted, exitCodeOf, isAppError, Scope, VerifyFailed } from "./Domain.js"
import * as Memory from "./Memory.js"
import { migrate } from "./migrations/index.js"
import * as Progress from "./Progress.js"
import * as Regenerate from "./Regenerate.js"
import * as Replicas from "./Replicas.js"
import * as Seed from "./Seed.js"
import * as Shutdown from "./Shutdown.js"
import * as Status from "./Status.js"
import * as TicketRepo from "./TicketRepo.js"
import { TokenGen } from "./TokenGen.js"
import * as Verify from "./Verify.js"

/**
 * What a first Ctrl-C or SIGTERM does before the work in flight ends: say so, in the progress line too (on
 * a terminal, below the live line, which has no newline of its own yet).
 */
const stopping = (inFlight: string) =>
  Effect.map(Progress.Progress, (progress) =>
    Effect.zipRight(
      progress.emit(Progress.ProgressEvent.Phase({ phase: "stopping" })),
      Console.error(
        `${Progress.detectMode() === "tty" ? "\n" : ""}stopping: letting ${inFlight} (interrupt again to exit at once)`
      )
    ))

let jsonPrinted = false

/**
 * Prints a command's one JSON object (under --json). Whether it has been printed is kept, so that a second
 * signal, which ends the process at once, prints one only when none was (`printedJson`).
 */
const printJson = (value: unknown) =>
  Effect.zipRight(Effect.sync(() => (jsonPrinted = true)), Console.log(JSON.stringify(value)))

export const printedJson = (): boolean => jsonPrinted

/**
 * What a command says when a signal ends it outside a graceful section (while it connects, say): one line
 * on stderr, and under --json its one object on stdout, as a failure's is.
 */
const sayingInterrupted = (message: string, json = false) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.onInterrupt(effect, () =>
    json
      ? Effect.zipRight(
        Console.error(message),
        printJson({ ok: false, error: "Interrupted", message })
      )
      : Console.error(message))

// migrate

const migrateCommand = Command.make("migrate", {}, () =>
  Effect.gen(function*() {
    const db = yield* Db.Db
    const { created, ran } = yield* migrate
    // Tables that existed before (created by hand or another tool) are left alone: say so if they do not fit.
    yield* Db.requireSchema
    // The app's own database (never migrated by us) gets the checkpoint table alone: said plainly, not as a
    // list of migrations that reads as though the app's tables had been made anew.
    const outcome = created.length === 0
      ? "every table was there already, kept as it is"
      : `created ${created.join(", ")}` +
        (created.length < Db.migratedTableNames.length ? "; the other tables were there already, kept as they are" : "")
    // The outcome on stdout, as seed's and regenerate's.
    yield* Console.log(
      ran.length === 0
        ? `schema of ${db.display} is up to date`
        : `migrated ${db.display}: ${outcome} (migrations ${ran.join(", ")})`
    )
  })).pipe(
    Command.withDescription("Create or upgrade the schema (idempotent)."),
    Command.provide(Db.layer({ maxConnections: 1, create: true })),
    Command.transformHandler(
      sayingInterrupted("migrate stopped by a signal: run `migrate` again to finish (each step is safe to repeat)")
    )
  )

// seed

const seedLayer = Layer.mergeAll(
  Db.layer({ maxConnections: 4 }),
  TokenGen.layer,
  Memory.layer(),
  Layer.suspend(() => Progress.layer(Progress.detectMode()))
)

const beforeInserting = (name: string) => `seed ${name} stopped by a signal before inserting: nothing was changed`

const seedCommand = <A>(
  name: "users" | "orders" | "tickets",
  defaultCount: number,
  seed: (
    count: number,
    stopRequested: Effect.Effect<boolean>
  ) => Effect.Effect<Seed.SeedResult, A, Db.Db | SqlClient.SqlClient | TokenGen | Progress.Progress>
) =>
  Command.make(name, {
    count: integerBetween("count", 1, 1_000_000_000).pipe(
      Options.withDefault(defaultCount),
      Options.withDescription(`How many ${name} to insert (default ${defaultCount}).`)
    )
  }, ({ count }) =>
    Effect.gen(function*() {
      const onStop = yield* stopping("the INSERTs in flight finish")
      // The outcome on stdout, as migrate's and regenerate's (the progress lines go to stderr).
      const report = (result: Seed.SeedResult) => {
        const left = count - result.inserted
        const rate = result.seconds > 0 ? Math.round(result.inserted / result.seconds) : result.inserted
        const rows = (n: number) => counted(n, name.slice(0, -1), name)
        return Console.log(
          result.stopped
            ? `stopped: the ${rows(result.inserted)} inserted stay; to add the other ${left}, run ` +
              `\`seed ${name} --count ${left}\``
            : `seeded ${rows(result.inserted)} in ${result.seconds.toFixed(1)} s (${rate} rows/s)`
        )
      }
      yield* Shutdown.graceful(
        (stop) => Effect.tap(seed(count, stop), report).pipe(sayingInterrupted(beforeInserting(name))),
        (result) => result.stopped,
        onStop
      )
    })).pipe(
      Command.withDescription(`Insert ${name} of test data.`),
      // A signal while connecting interrupts; once the graceful section above runs, a signal is a stop
      // request, whose outcome (what stays) `report` says: the stop it ends with is not said again.
      Command.provide(
        Layer.scopedContext(Layer.build(seedLayer).pipe(sayingInterrupted(beforeInserting(name))))
      )
    )

const seed = Command.make("seed").pipe(
  Command.withDescription("Insert test data: users, then orders, then tickets."),
  Command.withSubcommands([
    seedCommand("users", 1000, Seed.users),
    seedCommand("orders", 10000, Seed.orders),
    seedCommand("tickets", 1_000_000, Seed.tickets)
  ])
)

// scope flags (regenerate, status, verify)

/** A flag error, printed by the parser (as one `error:` line, see `withParserErrorsAsLines`). */
const invalid = (message: string) => ValidationError.invalidValue(HelpDoc.p(message))

/** A host name as an email's domain: dotted labels, or one label alone (`localhost`, as Django allows). */
export const isDomainName = (text: string): boolean =>
  /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(text)

/**
 * An ISO date (UTC midnight) or date-time with a zone, as an ISO instant. At most milliseconds: a finer
 * bound would be cut silently, and tickets between the two would fall on the wrong side. Within the years
 * a datetime column holds (1000-9999, in UTC): past them the bound would compare as some other text.
 */
export const parseInstant = (flag: string, text: string): Either.Either<string, string> => {
  const match = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,3})?)?(Z|[+-]\d{2}:?\d{2}))?$/.exec(
    text
  )
  const [, y, mo, d, h = "00", mi = "00", sec = "00", fraction = "", zone = "Z"] = match ?? []
  // Each field within its range (JavaScript would roll 2024-02-30 over to 1 March; and Date.UTC reads a
  // year below 100 as 19xx, which setUTCFullYear does not).
  const wall = new Date(0)
  wall.setUTCFullYear(Number(y), Number(mo) - 1, Number(d))
  wall.setUTCHours(Number(h), Number(mi), Number(sec))
  const instant = new Date(`${y}-${mo}-${d}T${h}:${mi}:${sec}${fraction}${zone}`)
  const valid = match !== null && !Number.isNaN(wall.getTime()) && !Number.isNaN(instant.getTime()) &&
    wall.toISOString().slice(0, 19) === `${y}-${mo}-${d}T${h}:${mi}:${sec}`
  if (!valid) {
    return Either.left(
      `--${flag} must be an ISO date (2024-01-31) or date-time with a zone (2024-01-31T12:00:00Z), ` +
        "to the millisecond at most"
    )
  }
  const year = instant.getUTCFullYear()
  return year >= 1000 && year <= 9999
    ? Either.right(instant.toISOString())
    : Either.left(`--${flag} must fall within the years 1000 to 9999 (UTC), as a datetime column does`)
}

const scopeOptions = Options.all({
  liveOnly: Options.boolean("live-only").pipe(
    Options.withDescription("Only tickets whose ticket, order and user are not soft-deleted.")
  ),
  emailDomain: Options.text("email-domain").pipe(
    Options.optional,
    Options.withDescription("Only tickets of users whose email ends in @DOMAIN.")
  ),
  createdAfter: Options.text("created-after").pipe(
    Options.optional,
    Options.withDescription(
      "Only tickets created at or after this ISO date (2024-01-31: midnight UTC) or date-time with a zone."
    )
  ),
  createdBefore: Options.text("created-before").pipe(
    Options.optional,
    Options.withDescription(
      "Only tickets created before this ISO date (2024-01-31: midnight UTC) or date-time with a zone."
    )
  )
}).pipe(Options.mapEffect((flags) =>
  Effect.gen(function*() {
    const domain = Option.getOrNull(flags.emailDomain)
    if (domain !== null && !isDomainName(domain)) {
      return yield* Effect.fail(invalid("--email-domain must be a domain name such as example.com"))
    }
    const instant = (flag: string, text: Option.Option<string>) =>
      Option.match(text, {
        onNone: () => Effect.succeed(null),
        onSome: (t) => Effect.mapError(parseInstant(flag, t), invalid)
      })
    const createdAfter = yield* instant("created-after", flags.createdAfter)
    const createdBefore = yield* instant("created-before", flags.createdBefore)
    if (createdAfter !== null && createdBefore !== null && createdAfter >= createdBefore) {
      return yield* Effect.fail(invalid("--created-after must be earlier than --created-before"))
    }
    return new Scope({
      liveOnly: flags.liveOnly,
      emailDomain: domain?.toLowerCase() ?? null,
      createdAfter,
      createdBefore
    })
  })
))

/** Seconds a statement may go unanswered (regenerate, verify): `what`, the statements it bounds. */
const statementTimeoutFlag = (what: string) =>
  integerBetween("statement-timeout", 1, 86_400).pipe(
    Options.withDefault(Regenerate.defaults.statementTimeoutSeconds),
    Options.withDescription(
      `Seconds ${what} may go unanswered before it is abandoned (killed on the server, its connection ` +
        `closed) and retried (1-86400, default ${Regenerate.defaults.statementTimeoutSeconds}).`
    )
  )

// regenerate

const regenerateOptions = {
  scope: scopeOptions,
  batchSize: integerBetween("batch-size", 1, 10_000).pipe(
    Options.withDefault(Regenerate.defaults.batchSize),
    Options.withDescription(
      `Tickets per batch: one UPDATE, one transaction (1-10000, default ${Regenerate.defaults.batchSize}).`
    )
  ),
  concurrency: integerBetween("concurrency", 1, 64).pipe(
    Options.withDefault(Regenerate.defaults.concurrency),
    Options.withDescription(`Batches in flight at once (1-64, default ${Regenerate.defaults.concurrency}).`)
  ),
  resume: Options.boolean("resume").pipe(Options.withDescription("Continue the unfinished run of this scope.")),
  restart: Options.boolean("restart").pipe(
    Options.withDescription("Abandon any unfinished run of this scope and start a new one.")
  ),
  maxRowsPerSecond: integerBetween("max-rows-per-second", 1, 100_000_000).pipe(
    Options.optional,
    Options.withDescription("Throttle: rotate at most this many tickets per second (1-100000000).")
  ),
  noCount: Options.boolean("no-count").pipe(
    Options.withDescription("Skip counting the scope (huge tables); progress is estimated from the id key space.")
  ),
  targetBatchMs: integerBetween("target-batch-ms", 10, 60_000).pipe(
    Options.optional,
    Options.withDescription(
      "Adaptive batches: let the batch size (100-10000) follow this time per batch, in ms (10-60000)."
    )
  ),
  statementTimeout: statementTimeoutFlag("a page read or batch"),
  maxReplicaLag: integerBetween("max-replica-lag", 1, Replicas.maxReplicaLag.max).pipe(
    Options.optional,
    Options.withDescription(
      "Hold the batches while a replica of REPLICA_URLS is more than this many seconds behind, not " +
        `replicating, or not answering (1-${Replicas.maxReplicaLag.max}, default ${Replicas.maxReplicaLag.default}).`
    )
  ),
  dryRun: Options.boolean("dry-run").pipe(
    Options.withDescription("Check everything and show the plan; change nothing.")
  ),
  json: Options.boolean("json").pipe(
    Options.withDescription("Print one JSON summary on stdout at the end; human output goes to stderr.")
  )
}

const validatedRegenerateOptions = Options.all(regenerateOptions).pipe(
  Options.mapEffect((flags) =>
    flags.resume && flags.restart
      ? Effect.fail(invalid("--resume and --restart cannot be used together"))
      : Option.isSome(flags.targetBatchMs) && flags.batchSize < Regenerate.defaults.minBatchSize
      ? Effect.fail(invalid(
        `--target-batch-ms keeps batches within ${Regenerate.defaults.minBatchSize}-` +
          `${Regenerate.defaults.maxBatchSize}: give a --batch-size in that range to start from, or leave it out`
      ))
      : Effect.succeed(flags)
  )
)

type RegenerateFlags = typeof validatedRegenerateOptions extends Options.Options<infer A> ? A : never

/** `arg` as a POSIX shell word: quoted unless it is plainly safe. */
const shellWord = (arg: string): string => /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`

/** The command that resumes this one, ready to paste: the same flags, with --resume instead of --restart. */
export const resumeCommand = (argv: ReadonlyArray<string>, cwd: string): string => {
  const [, script = "ticket-tokens", ...args] = argv
  // The script relative to the working directory when it lies below it (`node dist/main.js`), else as the
  // absolute path it is: `../../x/main.js` would paste back only in this directory.
  const below = Path.relative(cwd, script)
  const invocation = script.endsWith(".js")
    ? ["node", below !== "" && !below.startsWith("..") && !Path.isAbsolute(below) ? below : script]
    : [Path.basename(script)]
  const kept = args.filter((arg) => !/^--(restart|resume)(=.*)?$/.test(arg))
  return [...invocation, ...kept, "--resume"].map(shellWord).join(" ")
}

const appLayer = (concurrency: number, mode: Progress.ProgressMode) => {
  const db = Db.layer({ maxConnections: concurrency + 2 })
  return Layer.mergeAll(
    TicketRepo.layerSql,
    Checkpoint.layer,
    TokenGen.layer,
    Progress.layer(mode),
    Memory.layer()
  ).pipe(Layer.provideMerge(db))
}

const printSummary = (summary: Regenerate.RunSummary, json: boolean) =>
  Effect.gen(function*() {
    const out = json ? Console.error : Console.log
    if (summary.note !== null) {
      yield* out(summary.note)
    } else if (summary.status === "completed") {
      yield* out(
        `done: rotated ${counted(summary.rotated, "ticket")} in ${summary.seconds.toFixed(1)} s ` +
          `(${Math.round(summary.rowsPerSecond)} rows/s, ${counted(summary.retries, "retry", "retries")}); ` +
          `run ${summary.runId} completed with ${counted(summary.rotatedTotal, "ticket")} rotated in all`
      )
    } else {
      yield* out(
        `stopped: ${counted(summary.rotated, "ticket")} rotated by this process, ${summary.rotatedTotal} by run ` +
          `${summary.runId} in all; ${committedUpTo(summary.cursor, summary.rotatedTotal)}.`
      )
      yield* out(`resume with: ${resumeCommand(process.argv, process.cwd())}`)
    }
    if (json) yield* printJson(Regenerate.summaryJson(summary))
  })

/** What a run stopped before its first batch says (under --json, its one object too). */
const stoppedBeforeBatches = (json: boolean) => {
  const message = "stopped before any batch began: nothing was changed"
  return json
    ? Effect.zipRight(
      Console.error(message),
      printJson({ status: "interrupted", rotated: 0, message })
    )
    : Console.log(message)
}

const printPlan = (plan: Regenerate.Plan, options: Regenerate.RegenerateOptions, json: boolean) =>
  Effect.gen(function*() {
    const out = json ? Console.error : Console.log
    const run = Option.getOrNull(plan.existing)
    const inScope = Option.getOrNull(plan.total)
    // What is left: a resumed run has done part of the scope already.
    const total = inScope === null || plan.action === "nothing"
      ? (plan.action === "nothing" ? 0 : null)
      : Math.max(0, inScope - (plan.action === "resume" ? run?.rotated ?? 0 : 0))
    const batches = total === null ? null : Math.ceil(total / options.batchSize)
    const described = run === null
      ? ""
      : `run ${run.runId} (${run.status}, ${run.rotated} rotated, cursor ${run.cursor || "-"})`
    yield* out(`dry run on ${plan.database}; nothing will be changed.`)
    yield* out(
      plan.action === "nothing"
        ? `nothing to do: ${described} is complete`
        : plan.action === "resume"
        ? `would resume ${described}`
        : run !== null && !run.finished
        ? `would abandon ${described} and start a new run`
        : run !== null
        ? `would start a new run: run ${run.runId} completed at ${run.updatedAt.toISOString()} (${run.rotated} ` +
          `rotated), and every token in scope would be replaced again`
        : Option.match(plan.replaces, {
          onNone: () => "would start a new run",
          onSome: (unreadable) => `would start a new run: ${unreadable}, and the new run replaces it`
        })
    )
    if (plan.action !== "nothing") {
      const tickets = total === null
        ? `the tickets (${options.scope.description}; not counted: --no-count)`
        : `${counted(total, "ticket")} (${options.scope.description})`
      const sizes = options.targetBatchMillis === undefined
        ? `in ${batches === null ? "batches" : counted(batches, "batch", "batches")} of ${options.batchSize}`
        : `in batches of ${options.batchSize} to start with, then sized to take about ${options.targetBatchMillis} ` +
          `ms each (100-10000)`
      const throttle = options.maxRowsPerSecond === undefined
        ? ""
        : `, at most ${options.maxRowsPerSecond} rows/s` +
          (total === null ? "" : ` (at least ${Progress.formatDuration((total * 1000) / options.maxRowsPerSecond)})`)
      yield* out(
        `would rotate ${tickets} ${sizes}, ${options.concurrency} at a time${throttle}`
      )
      const slowThrottle = Regenerate.throttleNote(options)
      if (slowThrottle !== undefined) yield* out(slowThrottle)
    }
    yield* out(`checkpoint store: ${plan.store}`)
    for (const line of Regenerate.warningLines(plan)) yield* out(line)
    const replicas = yield* Replicas.Replicas
    const holding = yield* replicas.holding
    if (replicas.watched.length > 0) {
      yield* out(
        `replicas watched: ${replicas.watched.join(", ")} (batches wait while one is more than ${replicas.maxLag} s ` +
          `behind); ${holding === undefined ? "none is behind now" : `now: ${holding}`}`
      )
    }
    yield* Option.match(plan.holder, {
      onNone: () => Effect.void,
      onSome: (held) =>
        out(
          held.damage === null
            ? `lock left by ${held.holder.description}: that process is gone, the run would take the lock over`
            : `lock entry damaged (${held.damage} at ${held.location}): the restart would replace it`
        )
    })
    if (json) {
      yield* printJson({
        dryRun: true,
        database: plan.database,
        scope: options.scope,
        action: plan.action,
        total: inScope,
        toRotate: total,
        batches,
        batchSize: options.batchSize,
        targetBatchMs: options.targetBatchMillis ?? null,
        concurrency: options.concurrency,
        maxRowsPerSecond: options.maxRowsPerSecond ?? null,
        store: plan.store,
        schemaWarnings: plan.schemaWarnings,
        storeWarnings: plan.storeWarnings,
        existingRun: run === null ? null : { runId: run.runId, status: run.status, rotated: run.rotated },
        replacesUnreadable: Option.getOrNull(plan.replaces),
        unreadableRuns: Status.unreadableJson(plan.unreadable),
        staleLock: Option.isSome(plan.holder) && plan.holder.value.damage === null,
        damagedLock: Option.getOrNull(Option.map(plan.holder, (held) => held.damage)),
        replicas: replicas.watched,
        replicasHolding: holding ?? null
      })
    }
  })

const runRegenerate = (flags: RegenerateFlags) =>
  Effect.gen(function*() {
    const options: Regenerate.RegenerateOptions = {
      scope: flags.scope,
      batchSize: flags.batchSize,
      concurrency: flags.concurrency,
      mode: flags.resume ? "resume" : flags.restart ? "restart" : "start",
      maxRowsPerSecond: Option.getOrUndefined(flags.maxRowsPerSecond),
      count: !flags.noCount,
      targetBatchMillis: Option.getOrUndefined(flags.targetBatchMs),
      statementTimeout: Duration.seconds(flags.statementTimeout)
    }
    if (flags.dryRun) return yield* printPlan(yield* Regenerate.plan(options), options, flags.json)
    const onStop = yield* stopping("the batches in flight commit")
    yield* Shutdown.graceful(
      (stopRequested) =>
        Effect.tap(Regenerate.regenerate(options, stopRequested), (s) => printSummary(s, flags.json)).pipe(
          // A stop while a step before the batches waited (a locked table, say) ends the run at once.
          Effect.onInterrupt(() => stoppedBeforeBatches(flags.json))
        ),
      (summary) => summary.status === "interrupted",
      onStop
    )
  })

/** A command's failure as the fields of its JSON object under --json. */
const failureJson = (error: unknown) => ({
  error: isAppError(error) ? error._tag : "InternalError",
  message: isAppError(error) ? error.message : String(error),
  exitCode: isAppError(error) ? exitCodeOf(error) : 1
})

const regenerate = Command.make(
  "regenerate",
  { flags: validatedRegenerateOptions },
  ({ flags }) => runRegenerate(flags)
).pipe(
  Command.withDescription("Give every ticket in scope a new random token, in batches, resumably."),
  // Progress is human output: on stderr like the rest of it under --json. A Ctrl-C while the layers connect
  // (before the run's own handling of a stop) is a run stopped before any batch as well, said so.
  Command.provide(({ flags }) => {
    const layers = Layer.merge(
      appLayer(flags.concurrency, flags.dryRun ? "silent" : Progress.detectMode()),
      Replicas.layer(Option.getOrUndefined(flags.maxReplicaLag))
    )
    return flags.dryRun
      ? layers
      : Layer.scopedContext(Effect.onInterrupt(Layer.build(layers), () => stoppedBeforeBatches(flags.json)))
  }),
  // Under --json a failure is a JSON object on stdout too (the one-line error still goes to stderr): the
  // run's summary with status "failed" when it had started, else only the error.
  Command.transformHandler((effect, { flags }) =>
    flags.json
      ? Effect.gen(function*() {
        const failed = yield* Ref.make(Option.none<Regenerate.RunSummary>())
        return yield* effect.pipe(
          Effect.provideService(Regenerate.FailedSummary, failed),
          Effect.tapError((error) =>
            Effect.flatMap(Ref.get(failed), (summary) =>
              printJson({
                ...Option.match(summary, { onNone: () => ({ status: "failed" }), onSome: Regenerate.summaryJson }),
                ...failureJson(error)
              }))
          )
        )
      })
      : effect
  ),
  Command.transformHandler((effect, { flags }) =>
    flags.dryRun
      ? sayingInterrupted("the dry run stopped by a signal (it changes nothing)", flags.json)(effect)
      : effect
  )
)

// status, verify

const jsonFlag = Options.boolean("json").pipe(Options.withDescription("Print one JSON object on stdout."))

/** No scope flags means "the run most recently started on this database". */
const chosenScope = (scope: Scope) => (Scope.all.flags === scope.flags ? Option.none() : Option.some(scope))

/**
 * Under --json, a failure is a JSON object on stdout too (the one-line error still goes to stderr), as for
 * `regenerate`: `{"ok": false, "error": …, "message": …, "exitCode": …}`. A failed verification has printed
 * its report already.
 */
const failingAsJson = <A, E, R>(effect: Effect.Effect<A, E, R>, { json }: { readonly json: boolean }) =>
  json
    ? Effect.tapError(effect, (error) =>
      error instanceof VerifyFailed ? Effect.void : printJson({ ok: false, ...failureJson(error) }))
    : effect

/** Prints a report as JSON or as lines. */
const printReport = <R>(report: R, json: boolean, toJson: (r: R) => unknown, render: (r: R) => ReadonlyArray<string>) =>
  json ? printJson(toJson(report)) : Effect.forEach(render(report), (line) => Console.log(line))

const statusCommand = Command.make(
  "status",
  { scope: scopeOptions, json: jsonFlag },
  ({ json, scope }) =>
    Effect.gen(function*() {
      // A database without the app's tables has no runs to show: say to migrate, as every command does (from
      // the catalogue: a locked ticket table must not hold up a look at the store).
      yield* Db.requireAppTables
      const report = yield* Status.status(chosenScope(scope))
      yield* printReport(report, json, Status.toJson, Status.render)
    })
).pipe(
  Command.withDescription(
    "Show the current or last run: state, progress, rate, lock holder. The scope flags pick the run of that scope."
  ),
  Command.provide(Checkpoint.layer.pipe(Layer.provideMerge(Db.layer({ maxConnections: 1 })))),
  Command.transformHandler(failingAsJson),
  Command.transformHandler((effect, { json }) =>
    sayingInterrupted("status stopped by a signal before it answered (it changes nothing)", json)(effect)
  )
)

const verifyCommand = Command.make(
  "verify",
  { scope: scopeOptions, json: jsonFlag, statementTimeout: statementTimeoutFlag("a page read") },
  ({ json, scope, statementTimeout }) =>
    Effect.gen(function*() {
      const report = yield* Verify.verify(chosenScope(scope), Duration.seconds(statementTimeout))
      yield* printReport(report, json, Verify.toJson, Verify.render)
      if (!Verify.isClean(report)) return yield* new VerifyFailed({ summary: Verify.summary(report) })
    })
).pipe(
  Command.withDescription(
    "Check that the last run rotated every ticket of its scope and that tokens are unique. The scope flags pick " +
      "the run of that scope."
  ),
  Command.provide(({ json }) => appLayer(1, json ? "silent" : Progress.detectMode())),
  Command.transformHandler(failingAsJson),
  Command.transformHandler((effect, { json }) =>
    sayingInterrupted("verify stopped by a signal before it finished (it changes nothing): run it again", json)(effect)
  )
)

const root = Command.make("ticket-tokens").pipe(
  Command.withDescription("Regenerate the secret token of every ticket, in batches, resumably."),
  Command.withSubcommands([migrateCommand, seed, regenerate, statusCommand, verifyCommand])
)

const noColor = (process.env.NO_COLOR ?? "") !== ""

/** Parses argv and runs the chosen command. */
export const run = (version: string) => (argv: ReadonlyArray<string>) => {
  const problem = argvProblem(argv, process.stdin.isTTY === true)
  const checked: Effect.Effect<void, BadUsage> = problem === undefined
    ? Effect.void
    : Effect.fail(new BadUsage({ message: problem }))
  return Effect.zipRight(
    checked,
    withPlainTextOffTerminal(
      withParserErrorsAsLines(Command.run(root, { name: "ticket-tokens", version })(hoistLogLevel(helpFirst(argv)))),
      {
        stdout: process.stdout.isTTY === true && !noColor,
        stderr: process.stderr.isTTY === true && !noColor
      }
    )
  )
}
