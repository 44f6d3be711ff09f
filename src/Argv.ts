/**
 * The command line as the argument parser gets it: checks of what the parser would misreport (a flag
 * without its value or given twice, an integer out of range: said plainly, naming the flag), the argv
 * rewrites that let `--log-level` and `--help` stand anywhere, and the parser's own errors worded as one
 * line of ours.
 */
import * as Options from "@effect/cli/Options"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/** Every integer flag's range and message, by flag: `argvProblem` checks their values first. */
const integerRanges = new Map<string, { readonly min: number; readonly max: number; readonly message: string }>()

/** An integer flag within [min, max]; anything else is refused with a message naming the flag. */
export const integerBetween = (name: string, min: number, max: number): Options.Options<number> => {
  const message = `--${name} must be an integer from ${min} to ${max}`
  integerRanges.set(`--${name}`, { min, max, message })
  return Options.integer(name).pipe(
    Options.filterMap(
      (n) => Number.isSafeInteger(n) && n >= min && n <= max ? Option.some(n) : Option.none(),
      message
    )
  )
}

/**
 * @effect/cli takes its built-in `--log-level` before a subcommand's own options but refuses it after them
 * ("Received unknown argument"), where operators add it: it is moved to the front, where it always works.
 */
export const hoistLogLevel = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const [node = "", script = "", ...args] = argv
  const end = args.includes("--") ? args.indexOf("--") : args.length
  const hoisted: Array<string> = []
  const rest: Array<string> = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (i < end && arg.startsWith("--log-level=")) hoisted.push(arg)
    else if (i < end - 1 && arg === "--log-level") hoisted.push(arg, args[++i]!)
    else rest.push(arg)
  }
  return [node, script, ...hoisted, ...rest]
}

/** Flags that take a value (the parser would read the next flag as that value, or report it as unknown). */
const valueFlags = new Set([
  "--batch-size",
  "--concurrency",
  "--max-rows-per-second",
  "--target-batch-ms",
  "--statement-timeout",
  "--max-replica-lag",
  "--email-domain",
  "--created-after",
  "--created-before",
  "--count",
  "--log-level",
  "--completions"
])

const seedTargets = ["users", "orders", "tickets"]
const commands = ["migrate", "seed", "regenerate", "status", "verify"]
/** The flags that come before a command (@effect/cli's own). */
const topLevelFlags = ["--help", "-h", "--version", "--completions", "--wizard", "--log-level"]
const logLevels = ["all", "trace", "debug", "info", "warning", "error", "fatal", "none"]

/**
 * What the argument parser would report misleadingly (a flag without its value, a flag given twice, both
 * as "unknown argument"), said plainly, and `--wizard` without a terminal to ask on (`interactive`: stdin is
 * one); undefined when argv is fine as far as this goes.
 */
export const argvProblem = (argv: ReadonlyArray<string>, interactive = true): string | undefined => {
  const args = argv.slice(2)
  // The wizard would wait for answers that cannot come.
  if (!interactive && args.includes("--wizard")) {
    return "--wizard asks its questions on a terminal: run it in one, or give the command and its flags (see --help)"
  }
  const end = args.includes("--") ? args.indexOf("--") : args.length
  // The parser would list the top-level commands for an unknown `seed` target.
  const target = args[0] === "seed" ? args[1] : undefined
  if (target !== undefined && !target.startsWith("-") && !seedTargets.includes(target)) {
    return `there is no \`seed ${target}\`: seed one of ${seedTargets.join(", ")} (see seed --help)`
  }
  // A flag before the target (`seed --count 5 users`): the parser would list the top-level commands too.
  if (target?.startsWith("-") === true && !topLevelFlags.includes(target.split("=")[0]!)) {
    return `seed takes the table first, then its flags: seed ${seedTargets.join("|")} --count N (see seed --help)`
  }
  // A command's flag before the command (`--json regenerate`): the parser would call the command invalid.
  const command = args.slice(0, end).findIndex((arg) => commands.includes(arg))
  const early = args.slice(0, Math.max(0, command)).find((arg) =>
    arg.startsWith("-") && !topLevelFlags.includes(arg.split("=")[0]!)
  )
  if (early !== undefined) {
    const name = args[command]!
    return `${early.split("=")[0]} goes after the command: put it after \`${name}\` (see ${name} --help)`
  }
  const level = args.findIndex((arg) => arg === "--log-level" || arg.startsWith("--log-level="))
  const levelValue = level === -1
    ? undefined
    : args[level]!.includes("=")
    ? args[level]!.split("=")[1]
    : args[level + 1]
  if (levelValue !== undefined && !levelValue.startsWith("--") && !logLevels.includes(levelValue)) {
    return `--log-level must be one of ${logLevels.join(", ")}`
  }
  const seen = new Set<string>()
  for (let i = 0; i < end; i++) {
    const arg = args[i]!
    if (!arg.startsWith("--")) continue
    const name = arg.split("=")[0]!
    if (seen.has(name)) return `${name} is given twice: give it once`
    seen.add(name)
    const next = args[i + 1]
    const missingValue = valueFlags.has(arg)
      ? i + 1 >= end || next === undefined || next.startsWith("--")
      : valueFlags.has(name) && arg === `${name}=`
    if (missingValue) return `${name} needs a value (see --help)`
    // The parser's own words for "abc" or "1e3" would not name the flag ("'abc' is not a integer").
    const value = (arg.includes("=") ? arg.slice(arg.indexOf("=") + 1) : next)?.trim() ?? ""
    const range = integerRanges.get(name)
    const n = /^-?\d+$/.test(value) ? Number(value) : Number.NaN
    if (range !== undefined && !(Number.isSafeInteger(n) && n >= range.min && n <= range.max)) return range.message
    if (valueFlags.has(arg)) i++
  }
  return undefined
}

/**
 * `--help` (or `-h`) anywhere among a command's flags asks for that command's help, as it does first: the
 * parser alone would report it as an unknown argument after another flag.
 */
export const helpFirst = (argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const [node = "", script = "", ...args] = argv
  const end = args.includes("--") ? args.indexOf("--") : args.length
  const asked = args.slice(0, end).some((arg, i) => (arg === "--help" || arg === "-h") && !valueFlags.has(args[i - 1]!))
  if (!asked) return argv
  const words = args.slice(0, args.findIndex((arg) => arg.startsWith("-")))
  return [node, script, ...words, "--help"]
}

/**
 * An error the parser printed itself, as one line worded as the program's own: "error: " and the text, without
 * the blank line after it. The parser prints a help paragraph, which ends in a newline, and the program's own
 * messages never do; anything else is printed as it comes.
 */
export const parserErrorLine = (text: string): string | undefined => {
  if (!text.endsWith("\n")) return undefined
  const line = text.trim().replace(/\s*\n\s*/g, " ")
  return line.startsWith("error: ") ? line : `error: ${line.charAt(0).toLowerCase()}${line.slice(1)}`
}

export const withParserErrorsAsLines = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Console.consoleWith((base) => {
    // Given --log-level, the parser parses again without it and reports the same error twice: once is enough.
    let reported: string | undefined
    return Console.withConsole(effect, {
      ...base,
      error: (...args: ReadonlyArray<unknown>) =>
        Effect.suspend(() => {
          const line = args.length === 1 && typeof args[0] === "string" ? parserErrorLine(args[0]) : undefined
          if (line === undefined) return base.error(...args)
          if (line === reported) return Effect.void
          reported = line
          return base.error(line)
        })
    })
  })

const ansiEscape = /\x1b\[[0-9;?]*[A-Za-z]/g

/** The widest usage a help page's command list shows whole; a longer one is the command and `[flags]`. */
const usageShownWhole = 32

/**
 * A help page's command list, readable: @effect/cli pads every entry to its longest usage, and
 * `regenerate`'s, every flag, is some 400 columns wide, so each line of the list wrapped across the
 * terminal. A usage longer than 32 columns is cut to the command and `[flags]` (its own --help lists
 * them), and the descriptions are aligned after the longest usage left.
 */
export const compactCommandList = (text: string): string => {
  const lines = text.split("\n")
  const heading = lines.findIndex((line) => line.replace(ansiEscape, "") === "COMMANDS")
  if (heading === -1) return text
  const end = lines.findIndex((line, i) => i > heading && /^\S/.test(line))
  const list = lines.slice(heading + 1, end === -1 ? lines.length : end)
  const entries = list.map((line) => /^ {2}- (\S.*?)(?: {2,}(\S.*?))?\s*$/.exec(line) ?? undefined)
  const usages = entries.map((entry) => {
    if (entry === undefined) return ""
    const usage = entry[1]!
    if (usage.length <= usageShownWhole) return usage
    const words = usage.split(" ")
    const flagsAt = words.findIndex((word) => /^[[<-]/.test(word))
    return `${words.slice(0, flagsAt === -1 ? words.length : flagsAt).join(" ")} [flags]`
  })
  const width = Math.max(...usages.map((usage) => usage.length))
  const compact = list.map((line, i) => {
    const entry = entries[i]
    return entry === undefined ? line : `  - ${usages[i]!.padEnd(width)}  ${entry[2] ?? ""}`.trimEnd()
  })
  return [...lines.slice(0, heading + 1), ...compact, ...(end === -1 ? [] : lines.slice(end))].join("\n")
}

/**
 * @effect/cli colours its help and completions whatever the output: plain text on a stream that is not a
 * terminal (a pipe, a file, CI's log) or under NO_COLOR. The program's own output carries no colour anyway.
 * Its help pages' command lists are made compact (`compactCommandList`).
 */
export const withPlainTextOffTerminal = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  terminal: { readonly stdout: boolean; readonly stderr: boolean }
) =>
  Console.consoleWith((base) => {
    const tidy = (args: ReadonlyArray<unknown>, colour: boolean) =>
      args.map((arg) => typeof arg === "string" ? compactCommandList(colour ? arg : arg.replace(ansiEscape, "")) : arg)
    return Console.withConsole(effect, {
      ...base,
      log: (...args: ReadonlyArray<unknown>) => base.log(...tidy(args, terminal.stdout)),
      error: (...args: ReadonlyArray<unknown>) => base.error(...tidy(args, terminal.stderr))
    })
  })
