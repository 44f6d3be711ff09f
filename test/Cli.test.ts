import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { argvProblem, compactCommandList, helpFirst, hoistLogLevel, parserErrorLine } from "../src/Argv.js"
import { isDomainName, parseInstant, resumeCommand } from "../src/Cli.js"
import { runCli } from "./support/cli.js"

describe("the printed resume command", () => {
  it("repeats the flags with --resume in place of --restart, quoted so that it pastes back as it ran", () => {
    const argv = [
      "/usr/bin/node",
      "/srv/tool/dist/main.js",
      "regenerate",
      "--restart",
      "--created-after",
      "2025-12-01 00:00Z",
      "--email-domain",
      "it's.example"
    ]
    expect(resumeCommand(argv, "/srv/tool")).toBe(
      "node dist/main.js regenerate --created-after '2025-12-01 00:00Z' --email-domain 'it'\\''s.example' --resume"
    )
    // Elsewhere than above the script: its absolute path, which pastes back in any directory.
    expect(resumeCommand(["/usr/bin/node", "/srv/tool/dist/main.js", "regenerate"], "/home/ops")).toBe(
      "node /srv/tool/dist/main.js regenerate --resume"
    )
    expect(resumeCommand(["/usr/bin/node", "/usr/local/bin/ticket-tokens", "regenerate", "--batch-size", "500"], "/"))
      .toBe("ticket-tokens regenerate --batch-size 500 --resume")
    // The parser also takes a boolean flag with a value: that form goes too, or the line would be refused.
    expect(
      resumeCommand(
        ["/usr/bin/node", "/usr/local/bin/ticket-tokens", "regenerate", "--restart=true", "--live-only"],
        "/"
      )
    )
      .toBe("ticket-tokens regenerate --live-only --resume")
  })
})

describe("--email-domain", () => {
  it("takes a host name, dotted or a single label as Django allows (localhost); nothing that is not one", () => {
    for (const ok of ["example.com", "Mail.Example.CO.uk", "localhost", "xn--bcher-kva.example"]) {
      expect(isDomainName(ok), ok).toBe(true)
    }
    for (const bad of ["not a domain", "-a.com", "a..com", "a.com.", "%.com", "a_b.com", "", "x".repeat(64)]) {
      expect(isDomainName(bad), bad).toBe(false)
    }
  })
})

describe("--created-after / --created-before", () => {
  it("takes a date (UTC midnight) or a date-time with a zone, to the millisecond", () => {
    expect(parseInstant("created-after", "2024-01-31")).toEqual(Either.right("2024-01-31T00:00:00.000Z"))
    expect(parseInstant("created-after", "2024-01-31 12:00:00.5+02:00")).toEqual(
      Either.right("2024-01-31T10:00:00.500Z")
    )
  })

  it("refuses what it would have to cut or guess: microseconds, no zone, not a date", () => {
    for (
      const text of [
        "2024-01-31T12:00:00.123456Z",
        "2024-01-31T12:00:00",
        "2024-02-30",
        "2023-02-29T10:00Z",
        "2024-01-31T24:00Z",
        "2024-01-31T12:00:00+25:00",
        "2024-01-31T12:00:00+05:99",
        "yesterday"
      ]
    ) {
      expect(Either.isLeft(parseInstant("created-before", text)), text).toBe(true)
    }
  })

  it("refuses a bound outside the years a datetime column holds, which would compare as other text", () => {
    const range = "--created-after must fall within the years 1000 to 9999 (UTC), as a datetime column does"
    for (const text of ["9999-12-31T23:59:59.999-01:00", "0999-12-31", "0050-06-01", "0000-01-01T00:00Z"]) {
      expect(parseInstant("created-after", text), text).toEqual(Either.left(range))
    }
    expect(parseInstant("created-after", "9999-12-31T23:59:59.999Z")).toEqual(Either.right("9999-12-31T23:59:59.999Z"))
    expect(parseInstant("created-after", "1000-01-01T01:00+01:00")).toEqual(Either.right("1000-01-01T00:00:00.000Z"))
  })
})

describe("--log-level", () => {
  it("is moved in front of the subcommand, where @effect/cli accepts it after the subcommand's own options too", () => {
    const argv = (...args: Array<string>) => ["node", "main.js", ...args]
    expect(hoistLogLevel(argv("regenerate", "--json", "--log-level", "debug"))).toEqual(
      argv("--log-level", "debug", "regenerate", "--json")
    )
    expect(hoistLogLevel(argv("seed", "users", "--log-level=trace", "--count", "3"))).toEqual(
      argv("--log-level=trace", "seed", "users", "--count", "3")
    )
    // Nothing else moves: no value to take, or past `--`.
    expect(hoistLogLevel(argv("status", "--log-level"))).toEqual(argv("status", "--log-level"))
    expect(hoistLogLevel(argv("verify", "--", "--log-level", "debug"))).toEqual(
      argv("verify", "--", "--log-level", "debug")
    )
  })
})

describe("flags the argument parser would misreport", () => {
  const argv = (...args: Array<string>) => ["node", "main.js", ...args]
  it("a flag without its value, or given twice, is named as such", () => {
    expect(argvProblem(argv("regenerate", "--batch-size"))).toBe("--batch-size needs a value (see --help)")
    expect(argvProblem(argv("regenerate", "--email-domain", "--live-only"))).toBe(
      "--email-domain needs a value (see --help)"
    )
    expect(argvProblem(argv("regenerate", "--email-domain="))).toBe("--email-domain needs a value (see --help)")
    expect(argvProblem(argv("regenerate", "--created-after=", "--live-only"))).toBe(
      "--created-after needs a value (see --help)"
    )
    expect(argvProblem(argv("regenerate", "--email-domain=example.com"))).toBeUndefined()
    expect(argvProblem(argv("regenerate", "--batch-size", "5", "--batch-size", "6"))).toBe(
      "--batch-size is given twice: give it once"
    )
    expect(argvProblem(argv("status", "--json", "--json"))).toBe("--json is given twice: give it once")
    expect(argvProblem(argv("regenerate", "--batch-size=5", "--batch-size=6"))).toBe(
      "--batch-size is given twice: give it once"
    )
  })

  it("a command's flag before the command is named as such, not as an invalid command", () => {
    expect(argvProblem(argv("--json", "regenerate"))).toBe(
      "--json goes after the command: put it after `regenerate` (see regenerate --help)"
    )
    expect(argvProblem(argv("--batch-size=5", "regenerate", "--resume"))).toBe(
      "--batch-size goes after the command: put it after `regenerate` (see regenerate --help)"
    )
    expect(argvProblem(argv("--log-level", "debug", "--json", "status"))).toBe(
      "--json goes after the command: put it after `status` (see status --help)"
    )
    // @effect/cli's own flags come first.
    for (const first of [["--log-level", "debug"], ["--version"], ["--completions", "bash"], ["-h"], ["--wizard"]]) {
      expect(argvProblem(argv(...first, "status")), first.join(" ")).toBeUndefined()
    }
  })

  it("an unknown or misplaced seed target and an unknown log level are named as such, not as an unknown top-level command", () => {
    expect(argvProblem(argv("seed", "widgets"))).toBe(
      "there is no `seed widgets`: seed one of users, orders, tickets (see seed --help)"
    )
    expect(argvProblem(argv("seed", "tickets", "--count", "5"))).toBeUndefined()
    expect(argvProblem(argv("seed", "--count", "5", "tickets"))).toBe(
      "seed takes the table first, then its flags: seed users|orders|tickets --count N (see seed --help)"
    )
    for (const args of [["seed", "--help"], ["seed", "-h"], ["seed", "--log-level", "debug", "users"]]) {
      expect(argvProblem(argv(...args)), args.join(" ")).toBeUndefined()
    }
    for (const args of [["regenerate", "--log-level", "loud"], ["status", "--log-level=loud"]]) {
      expect(argvProblem(argv(...args))).toBe(
        "--log-level must be one of all, trace, debug, info, warning, error, fatal, none"
      )
    }
    expect(argvProblem(argv("regenerate", "--log-level", "debug"))).toBeUndefined()
  })

  it("--wizard without a terminal to ask on is refused in one line, at once, through the real CLI", async () => {
    const message =
      "--wizard asks its questions on a terminal: run it in one, or give the command and its flags (see --help)"
    expect(argvProblem(argv("--wizard"), false)).toBe(message)
    expect(argvProblem(argv("--wizard"), true)).toBeUndefined()
    // The test's child has no terminal on stdin: the wizard used to wait for answers forever.
    const r = await runCli(["--wizard"], { timeoutMs: 20_000 })
    expect(r.code, r.stderr).toBe(2)
    expect(r.stderr.trim()).toBe(`error: ${message}`)
    expect(r.stdout).toBe("")
  })

  it("knows every flag that takes a value, as each command's --help lists them", async () => {
    const commands = [["migrate"], ["seed", "users"], ["seed", "orders"], ["seed", "tickets"], ["regenerate"], [
      "status"
    ], ["verify"]]
    let valued = 0
    for (const command of commands) {
      const help = (await runCli([...command, "--help"])).stdout
      const usage = help.split("\n").find((line) => line.startsWith("$ "))
      expect(usage, help).toBeDefined()
      // `[--batch-size integer]` takes a value, `[--json]` does not.
      for (const [, name, value] of usage!.matchAll(/\[--([a-z-]+)( [^\]]+)?\]/g)) {
        const problem = argvProblem(argv(...command, `--${name}`))
        if (value === undefined) expect(problem, `--${name}`).toBeUndefined()
        else expect(problem, `--${name}`).toBe(`--${name} needs a value (see --help)`)
        if (value !== undefined) valued++
      }
    }
    expect(valued, "flags with a value seen in the usage lines").toBeGreaterThanOrEqual(11)
  })

  it("refuses an integer flag's value that is not an integer in its range, as the flag's own message", () => {
    for (const value of ["-3", "0", "65", "abc", "1.5", "1e3", "", "99999999999999999999"]) {
      expect(argvProblem(argv("regenerate", "--concurrency", value)), value).toBe(
        "--concurrency must be an integer from 1 to 64"
      )
    }
    expect(argvProblem(argv("regenerate", "--batch-size=10001"))).toBe(
      "--batch-size must be an integer from 1 to 10000"
    )
    expect(argvProblem(argv("seed", "orders", "--count", "x"))).toBe("--count must be an integer from 1 to 1000000000")
  })

  it("leaves well-formed argv (values, --) to the parser", () => {
    expect(argvProblem(argv("regenerate", "--concurrency", "3", "--max-rows-per-second", " 500", "--json")))
      .toBeUndefined()
    expect(argvProblem(argv("seed", "tickets", "--count", "10"))).toBeUndefined()
    expect(argvProblem(argv("regenerate", "--batch-size=5", "--resume"))).toBeUndefined()
    expect(argvProblem(argv("verify", "--", "--json", "--json"))).toBeUndefined()
  })
})

describe("the parser's own error messages", () => {
  it("become one line worded as the program's errors; the program's own messages pass as they are", () => {
    expect(parserErrorLine("Received unknown argument: '--bogus'\n")).toBe(
      "error: received unknown argument: '--bogus'"
    )
    expect(parserErrorLine("error: --batch-size must be an integer from 1 to 10000\n\n")).toBe(
      "error: --batch-size must be an integer from 1 to 10000"
    )
    expect(parserErrorLine("Expected one of:\n  a\n  b\n")).toBe("error: expected one of: a b")
    expect(parserErrorLine("\nstopping: letting the batches in flight commit")).toBeUndefined()
    expect(parserErrorLine("error: the run failed")).toBeUndefined()
  })
})

describe("--help among other flags", () => {
  const argv = (...args: Array<string>) => ["node", "main.js", ...args]
  it("asks for the command's help, wherever it stands", () => {
    expect(helpFirst(argv("regenerate", "--live-only", "--help"))).toEqual(argv("regenerate", "--help"))
    expect(helpFirst(argv("seed", "users", "--count", "5", "-h"))).toEqual(argv("seed", "users", "--help"))
    expect(helpFirst(argv("regenerate", "--batch-size", "5"))).toEqual(argv("regenerate", "--batch-size", "5"))
    // A value that happens to read "--help", and anything after `--`, is not a request for help.
    expect(helpFirst(argv("regenerate", "--email-domain", "-h"))).toEqual(argv("regenerate", "--email-domain", "-h"))
    expect(helpFirst(argv("verify", "--", "--help"))).toEqual(argv("verify", "--", "--help"))
  })

  it("prints it through the real CLI, in plain text when piped", async () => {
    const r = await runCli(["regenerate", "--live-only", "--batch-size", "5", "--help"])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^\$ regenerate \[--live-only\]/m)
    expect(r.stdout).not.toContain("\x1b")
  })
})

describe("a help page's command list", () => {
  it("shows a long usage as the command and [flags], the descriptions aligned after the longest left", () => {
    const pad = (usage: string) => usage.padEnd(60)
    const top = ["DESCRIPTION", "", "Does things.", "", "\x1b[0;1mCOMMANDS\x1b[0m", ""]
    const page = [
      ...top,
      `  - ${pad("migrate")}  Create the schema.`,
      "",
      `  - ${pad("seed users [--count integer]")}  Insert users.`,
      "",
      `  - ${pad("regenerate [--live-only] [--email-domain text] [--batch-size integer]")}  Rotate the tokens.`,
      `  - ${pad("status")}`,
      ""
    ].join("\n")
    expect(compactCommandList(page)).toBe([
      ...top,
      "  - migrate                       Create the schema.",
      "",
      "  - seed users [--count integer]  Insert users.",
      "",
      "  - regenerate [flags]            Rotate the tokens.",
      "  - status",
      ""
    ].join("\n"))
    // Any other output passes as it is.
    for (const text of ["regenerate: 5/10 rows", "{\"ok\":true}", "  - a  b"]) {
      expect(compactCommandList(text)).toBe(text)
    }
  })

  it("lists every command in the top-level help without padding each to the longest usage", async () => {
    const r = await runCli(["--help"])
    expect(r.code, r.stderr).toBe(0)
    const list = r.stdout.slice(r.stdout.indexOf("COMMANDS"))
    for (const command of ["migrate", "seed users", "regenerate [flags]", "status [flags]", "verify [flags]"]) {
      expect(list).toMatch(new RegExp(`^  - ${command.replace(/[[\]]/g, "\\$&")} +\\S`, "m"))
    }
    // Each entry is its usage, two spaces or more, its description: no padding to a 400-column usage.
    for (const line of list.split("\n").filter((l) => l.startsWith("  - "))) expect(line).not.toMatch(/ {40}/)
  })
})
