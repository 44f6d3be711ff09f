/**
 * The replicas of the site's database (REPLICA_URLS): a run holds its batches while one of them is more than
 * `--max-replica-lag` seconds behind, does not replicate, or does not answer, so that a site that reads from
 * replicas is not left with tokens minutes old there (as gh-ost and Spirit throttle on replica lag). Each
 * replica must answer and be one as the run starts; then all are polled every second.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { type MysqlTarget, replicaTargets } from "./Config.js"
import { answeredWithin, connectToReplica, databaseError, describe } from "./Db.js"
import { BadUsage, UnsuitableServer } from "./Domain.js"

export interface ReplicasService {
  /** The replicas watched, as messages name them (none without REPLICA_URLS). */
  readonly watched: ReadonlyArray<string>
  /** The lag, in seconds, past which a replica holds the batches. */
  readonly maxLag: number
  /** Why batches must wait now (a replica too far behind, not replicating, not answering); undefined if none. */
  readonly holding: Effect.Effect<string | undefined>
}

export class Replicas extends Context.Tag("Replicas")<Replicas, ReplicasService>() {}

/** Longest lag `--max-replica-lag` takes, and the default. */
export const maxReplicaLag = { max: 3600, default: 10 } as const

/** No replica watched. */
export const none: ReplicasService = { watched: [], maxLag: maxReplicaLag.default, holding: Effect.succeed(undefined) }

export const layerNone = Layer.succeed(Replicas, none)

/** How often the replicas are asked for their lag while a run goes. */
const pollEvery = Duration.seconds(1)

/** How long a replica may take to say how far behind it is. */
const answerWithin = Duration.seconds(5)

/**
 * Seconds behind its source, or null when replication does not run (a channel stopped or broken; the worst
 * of a multi-source replica's); none when the server is not a replica. `SHOW REPLICA STATUS` (MySQL 8.0.22+,
 * MariaDB 10.5.1+), else the older `SHOW SLAVE STATUS`; unprepared, as MySQL does not prepare either.
 */
const readLag = (sql: SqlClient.SqlClient): Effect.Effect<Option.Option<number | null>, SqlError> =>
  Effect.scoped(Effect.flatMap(sql.reserve, (connection) => {
    const show = (statement: string) => connection.executeUnprepared(statement, [], undefined)
    return show("SHOW REPLICA STATUS").pipe(
      Effect.catchIf((error) => /ER_PARSE_ERROR|syntax/i.test(describe(error)), () => show("SHOW SLAVE STATUS"))
    )
  })).pipe(
    Effect.map((rows) => {
      if (rows.length === 0) return Option.none()
      const lags = rows.map((row: Record<string, unknown>) => row.Seconds_Behind_Source ?? row.Seconds_Behind_Master)
      return Option.some(
        lags.some((lag) => lag === null || lag === undefined) ? null : Math.max(...lags.map((lag) => Number(lag)))
      )
    })
  )

/** Why a replica holds the batches, from its last reading; undefined when it is within `maxLag`. */
const holdReason = (
  replica: string,
  reading: Either.Either<Option.Option<number | null>, { readonly detail: string }>,
  maxLag: number
): string | undefined =>
  Either.match(reading, {
    onLeft: (error) => `replica ${replica} cannot say how far behind it is (${error.detail})`,
    onRight: Option.match({
      onNone: () => `${replica} is no longer a replica (SHOW REPLICA STATUS says nothing)`,
      onSome: (lag) =>
        lag === null
          ? `replica ${replica} does not replicate`
          : lag > maxLag
          ? `replica ${replica} is ${lag}s behind`
          : undefined
    })
  })

/** Reads `target`'s lag, bounded in time; a refusal to say (no privilege) is the operator's to fix. */
const lagOf = (target: MysqlTarget, sql: SqlClient.SqlClient) =>
  readLag(sql).pipe(
    Effect.mapError((error) =>
      /ER_SPECIFIC_ACCESS_DENIED|ER_ACCESS_DENIED|1227/.test(describe(error))
        ? new UnsuitableServer({
          target: target.display,
          detail: "its user may not read the replication status (SHOW REPLICA STATUS): grant it REPLICATION " +
            "CLIENT (MySQL) or REPLICA MONITOR (MariaDB), or leave the replica out of REPLICA_URLS"
        })
        : databaseError(`reading the replication status of ${target.display}`)(error)
    ),
    answeredWithin(answerWithin, `reading the replication status of ${target.display}`)
  )

/**
 * The replicas of REPLICA_URLS, watched while the enclosing scope lasts; `maxLag` in seconds (undefined: the
 * default). Each must answer and be a replica now, or the command stops before it writes anything; without
 * REPLICA_URLS, `--max-replica-lag` is refused (it would watch nothing).
 */
export const layer = (maxLag: number | undefined) =>
  Layer.scoped(
    Replicas,
    Effect.gen(function*() {
      const targets = yield* replicaTargets
      if (targets.length === 0) {
        if (maxLag !== undefined) {
          return yield* new BadUsage({
            message: "--max-replica-lag needs the replicas to watch: set REPLICA_URLS (see --help)"
          })
        }
        return none
      }
      const limit = maxLag ?? maxReplicaLag.default
      const replicas = yield* Effect.forEach(targets, (target) =>
        Effect.gen(function*() {
          const sql = yield* connectToReplica(target)
          const lag = yield* lagOf(target, sql)
          if (Option.isNone(lag)) {
            return yield* new UnsuitableServer({
              target: target.display,
              detail: "it is not a replica (SHOW REPLICA STATUS says nothing): REPLICA_URLS lists the replicas " +
                "whose lag a run waits on"
            })
          }
          return { target, sql, lag }
        }))
      /** Why the replicas hold the batches, from one reading of each; undefined when none does. */
      const reasons = (readings: ReadonlyArray<Either.Either<Option.Option<number | null>, { detail: string }>>) =>
        readings
          .map((reading, i) => holdReason(replicas[i]!.target.display, reading, limit))
          .filter((reason) => reason !== undefined)
          .join("; ") || undefined
      const check = Effect.map(
        Effect.forEach(replicas, ({ sql, target }) => Effect.either(lagOf(target, sql)), { concurrency: "unbounded" }),
        reasons
      )
      // The readings that found each to be a replica are the first state.
      const state = yield* Ref.make(reasons(replicas.map(({ lag }) => Either.right(lag))))
      yield* check.pipe(
        Effect.flatMap((reason) => Ref.set(state, reason)),
        Effect.delay(pollEvery),
        Effect.forever,
        Effect.forkScoped
      )
      return { watched: targets.map((target) => target.display), maxLag: limit, holding: Ref.get(state) }
    })
  )
