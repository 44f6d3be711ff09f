/**
 * TLS to MySQL, against a private MariaDB (its own data directory, a spare port, a throwaway CA) that
 * refuses plaintext connections (`require_secure_transport`): the URL's `ssl-mode` and `ssl-ca` decide how
 * the tool connects, a whole run goes through over TLS, and every refusal is one line with a non-zero exit.
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runCli } from "./support/cli.js"
import { missingTools, type PrivateMariadb, startPrivateMariadb } from "./support/privateMariadb.js"
import { expectExit, parseJsonSummary, seedFixture } from "./support/tickets.js"

const missing = missingTools("the TLS tests", ["openssl"])

/** One openssl command, written as one line: no argument below holds a space. */
const openssl = (dir: string, command: string) =>
  execFileSync("openssl", command.split(" "), { cwd: dir, stdio: "ignore" })

/** A throwaway CA `caName`, and a server certificate it signs for each of `names` (`<name>.pem`, `server.key`). */
const makeCertificates = (dir: string, caName: string, names: ReadonlyArray<string>) => {
  openssl(dir, `req -x509 -newkey rsa:2048 -nodes -keyout ${caName}.key -out ${caName}.pem -days 2 -subj /CN=${caName}`)
  if (names.length === 0) return
  openssl(dir, "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=tt-test-server")
  for (const name of names) {
    Fs.writeFileSync(Path.join(dir, "ext.cnf"), `subjectAltName=DNS:${name}\n`)
    openssl(
      dir,
      `x509 -req -in server.csr -CA ${caName}.pem -CAkey ${caName}.key -CAcreateserial -out ${name}.pem -days 2 ` +
        "-extfile ext.cnf"
    )
  }
}

describe.skipIf(missing.length > 0)("TLS to MySQL (a private MariaDB that requires it)", () => {
  let server: PrivateMariadb | undefined
  const dir = () => server!.dir
  const ca = () => Path.join(dir(), "ca.pem")
  const serverCert = () => Path.join(dir(), "server.pem")
  const url = (host: string, query: string) => `mysql://root@${host}:${server!.port}/tickets${query}`
  const cli = (args: ReadonlyArray<string>, databaseUrl: string) => runCli(args, { env: { DATABASE_URL: databaseUrl } })

  /** An admin connection over TLS (the server takes no other). */
  const admin = () => server!.admin()

  // Started in beforeAll, so that a run that filters these tests out leaves no folder behind.
  beforeAll(async () => {
    server = await startPrivateMariadb("tickets", (dir) => {
      makeCertificates(dir, "ca", ["localhost", "db.invalid"])
      makeCertificates(dir, "other-ca", [])
      Fs.copyFileSync(Path.join(dir, "localhost.pem"), Path.join(dir, "server.pem"))
      return [
        `--ssl-ca=${Path.join(dir, "ca.pem")}`,
        `--ssl-cert=${Path.join(dir, "server.pem")}`,
        `--ssl-key=${Path.join(dir, "server.key")}`,
        "--require-secure-transport=ON"
      ]
    }, { ssl: { rejectUnauthorized: false } })
  }, 60_000)

  afterAll(async () => {
    await server?.stop()
  }, 60_000)

  it("a whole run over TLS with the server's name verified (ssl-mode=VERIFY_IDENTITY, ssl-ca)", async () => {
    const verified = url("localhost", `?ssl-mode=VERIFY_IDENTITY&ssl-ca=${encodeURIComponent(ca())}`)
    await seedFixture({ env: { DATABASE_URL: verified } }, { users: 10, orders: 50, tickets: 3000 })
    const run = parseJsonSummary(await expectExit(cli(["regenerate", "--json"], verified), 0))
    expect(run).toMatchObject({ status: "completed", rotated: 3000 })
    expect((await expectExit(cli(["verify"], verified), 0)).stdout).toMatch(/\bOK$/m)
    // Encrypted without checking the certificate, as asked.
    await expectExit(cli(["status"], url("127.0.0.1", "?ssl-mode=REQUIRED")), 0)
  })

  it("refuses, in one line and with nothing done: plaintext, another CA, no CA, a name the certificate does not carry", async () => {
    const refused = async (databaseUrl: string, reason: RegExp, code = 1) => {
      const r = await cli(["status"], databaseUrl)
      expect(r.code, r.stderr).toBe(code)
      expect(r.stderr.trim().split("\n")).toHaveLength(1)
      expect(r.stderr).toMatch(reason)
    }
    // Its user requires TLS: in plaintext, the server refuses the user (bad input, exit 2), and the line says
    // how to ask for TLS.
    await refused(
      url("localhost", ""),
      /^error: the database at mysql:\/\/localhost:\d+\/tickets refused the connection: .*`\?ssl-mode=REQUIRED`/,
      2
    )
    const otherCa = encodeURIComponent(Path.join(dir(), "other-ca.pem"))
    await refused(url("localhost", `?ssl-mode=VERIFY_CA&ssl-ca=${otherCa}`), /certificate/)
    await refused(url("localhost", "?ssl-mode=VERIFY_IDENTITY"), /certificate/)

    // The server now presents a certificate for db.invalid: its CA is still trusted, its name is wrong.
    Fs.copyFileSync(Path.join(dir(), "db.invalid.pem"), serverCert())
    const conn = await admin()
    await conn.query("FLUSH SSL")
    await conn.end()
    const withCa = `ssl-ca=${encodeURIComponent(ca())}`
    await refused(
      url("localhost", `?ssl-mode=VERIFY_IDENTITY&${withCa}`),
      /localhost.*db\.invalid|db\.invalid.*localhost/
    )
    await expectExit(cli(["status"], url("localhost", `?ssl-mode=VERIFY_CA&${withCa}`)), 0)
  })
})
